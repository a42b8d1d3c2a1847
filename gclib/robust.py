"""Dataset shift: common corruptions at five severities, accuracy under them, and error consistency.

``corrupt(x, name, severity, seed)`` returns a batch of images [N, C, H, W] in [0, 1] corrupted by one of
:data:`CORRUPTIONS` at severity 1 (mild) to 5 (strong, the image still recognisable to a person);
severity 0 returns the images unchanged. The corruptions follow the families of ImageNet-C (Hendrycks and
Dietterich, 2019) and MNIST-C (Mu and Gilmer, 2019) and are built for 28x28 images: the maths comes from
``torchvision.transforms.v2`` wherever it has the operation (blur, contrast, resizing, elastic warps,
rotations, shears) and from Pillow for JPEG; noise and the other few lines written here are marked with
the reason.
The parameters of every severity sit in one table, :data:`SEVERITIES`. Every corrupted image is put back
on the 8-bit grid, as the training data were.

Randomness (noise, directions, warps) comes from one ``torch.Generator`` seeded by ``seed``: the same seed
gives the same images, and the severities of one seed share their random draws (severity 5 is severity 1's
noise, stronger), so the accuracy-against-severity curves are not jagged by redrawn noise.

``error_consistency`` is Geirhos et al.'s (2020) Cohen's kappa between two classifiers' trial-by-trial
correctness: do they get the *same* images wrong, beyond what their accuracies alone imply?
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .errors import InputError, check_batch

__all__ = ["CORRUPTIONS", "SEVERITIES", "MAX_SEVERITY", "CORRUPTION_HEADERS", "corrupt", "error_consistency",
           "error_consistency_se", "accuracy_se", "corruption_row", "shipped_corruption_rows", "plot_corruptions"]

MAX_SEVERITY = 5

# The parameter of each corruption at severities 1..5 (severity 0 is the clean image). Chosen by looking at
# Fashion-MNIST test images (the notebook shows one at severities 1, 3 and 5): severity 5 is strong, yet a
# person still tells a shirt from a shoe. Units as in each comment; "random sign" = drawn per image.
SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26),  # std of additive Gaussian noise, intensity in [0, 1]
    "shot_noise": (60, 25, 12, 6, 3),  # photons at full intensity: Poisson(x * value) / value (fewer: noisier)
    "impulse_noise": (0.02, 0.05, 0.09, 0.14, 0.2),  # share of pixels set to black or white (salt and pepper)
    "gaussian_blur": (0.6, 0.9, 1.2, 1.6, 2.0),  # std of the Gaussian kernel, pixels (kernel 2 ceil(3 std) + 1)
    "motion_blur": (3, 5, 7, 9, 11),  # length of a straight blur line at a random angle per image, pixels
    "jpeg": (30, 18, 12, 8, 5),  # JPEG quality (1-100, lower is stronger)
    "contrast": (0.6, 0.45, 0.3, 0.2, 0.12),  # contrast factor around the image mean (1: unchanged)
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to every pixel, clipped at 1 (lifts the black background)
    "pixelate": (22, 18, 14, 11, 9),  # side of the coarse grid the 28 px image is averaged onto, pixels
    "elastic": (1.0, 1.5, 2.0, 2.5, 3.0),  # rms displacement of a smooth random warp (smoothing std 4 px), px
    "rotate": (8, 15, 22, 30, 40),  # rotation, degrees, random sign
    "shear": (8, 15, 22, 30, 38),  # horizontal shear angle, degrees, random sign
}
CORRUPTIONS: tuple[str, ...] = tuple(SEVERITIES)

CORRUPTION_HEADERS = {"model": "model", "n": "n", "clean_pct": "clean acc. (%)", "clean_se": "± SE",
                      "mca_pct": "mean corr. acc. (%)", "mca_se": "± SE", "delta_pct": "Δ vs DC (points)",
                      "delta_se": "± SE", **{name: name.replace("_", " ") for name in CORRUPTIONS},
                      "kappa_clean": "κ vs DC, clean", "kappa_clean_se": "± SE",
                      "kappa_corrupted": "κ vs DC, corrupted", "kappa_corrupted_se": "± SE"}

_ELASTIC_SMOOTHING = 4.0  # std (px) of the Gaussian that smooths the random displacement field


# -- the corruptions, each f(x [N, C, H, W] float in [0, 1] on the CPU, value, generator) ---------------------
def _random_sign(n: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n,), generator=generator) * 2 - 1


def _per_sign(x: Tensor, signs: Tensor, fn) -> Tensor:
    # torchvision's geometric functions take one angle per call: apply +angle and -angle to their halves.
    out = torch.empty_like(x)
    for s in (-1, 1):
        mask = signs == s
        if mask.any():
            out[mask] = fn(x[mask], s)
    return out


def _gaussian_noise(x, sigma, generator):
    # Written here: torchvision's gaussian_noise draws from the global RNG and takes no generator.
    return x + sigma * torch.randn(x.shape, generator=generator)


def _shot_noise(x, photons, generator):
    # Poisson (photon) noise; torchvision has none.
    return torch.poisson(x * photons, generator=generator) / photons


def _impulse_noise(x, amount, generator):
    # Salt and pepper; torchvision has none.
    hit = torch.rand(x.shape, generator=generator) < amount
    salt = (torch.rand(x.shape, generator=generator) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def _gaussian_blur(x, sigma, generator):
    from torchvision.transforms.v2 import functional as F

    size = 2 * math.ceil(3 * sigma) + 1
    return F.gaussian_blur(x, [size, size], [sigma, sigma])


def _motion_blur(x, length, generator):
    # torchvision has no motion blur: a centred line kernel, drawn with torchvision's rotate at a random
    # angle per image, applied by a grouped convolution (one kernel per image).
    from torchvision.transforms.v2 import functional as F

    n, c, _, _ = x.shape
    size = int(length) + 2 + (int(length) % 2 == 0)  # odd, with a free pixel at each end
    line = torch.zeros(1, 1, size, size)
    line[..., size // 2, 1:-1] = 1.0
    angles = torch.rand(n, generator=generator) * 180
    kernels = torch.cat([F.rotate(line, float(a), interpolation=F.InterpolationMode.BILINEAR) for a in angles])
    kernels = kernels / kernels.sum(dim=(2, 3), keepdim=True)
    kernels = kernels.repeat_interleave(c, dim=0)  # [N * C, 1, k, k]
    pad = size // 2
    padded = torch.nn.functional.pad(x.reshape(1, n * c, *x.shape[2:]), (pad,) * 4, mode="replicate")
    return torch.nn.functional.conv2d(padded, kernels, groups=n * c).reshape(x.shape)


def _jpeg(x, quality, generator):
    # Pillow's JPEG codec, image by image: torchvision's F.jpeg calls its JPEG encoder, deprecated since
    # torchvision 0.29 (a warning per image, and removal announced).
    import io

    from PIL import Image

    pixels = torch.round(x * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=int(quality))
        decoded = np.asarray(Image.open(buffer))
        out.append(decoded.reshape(image.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def _contrast(x, factor, generator):
    from torchvision.transforms.v2 import functional as F

    return F.adjust_contrast(x, factor)


def _brightness(x, delta, generator):
    # Additive, as ImageNet-C's (on the value channel): torchvision's adjust_brightness multiplies, which would
    # leave Fashion-MNIST's black background black and only saturate the garment.
    return x + delta


def _pixelate(x, side, generator):
    from torchvision.transforms.v2 import functional as F

    small = F.resize(x, [int(side), int(side)], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    return F.resize(small, list(x.shape[2:]), interpolation=F.InterpolationMode.NEAREST)


def _elastic(x, rms_px, generator):
    # torchvision warps (F.elastic); the displacement field is drawn as in its ElasticTransform (uniform noise,
    # Gaussian-smoothed) but from our generator, per image, and scaled to the given rms displacement in pixels.
    from torchvision.transforms.v2 import functional as F

    n, _, h, w = x.shape
    k = int(8 * _ELASTIC_SMOOTHING + 1) | 1
    field = torch.rand(n, 2, h, w, generator=generator) * 2 - 1
    field = F.gaussian_blur(field, [k, k], [_ELASTIC_SMOOTHING, _ELASTIC_SMOOTHING])
    field = field / field.pow(2).sum(1).mean(dim=(1, 2)).sqrt()[:, None, None, None]  # rms length 1 px
    scale = torch.tensor([2.0 / w, 2.0 / h])[None, :, None, None]  # pixels -> grid_sample's [-1, 1] units
    displacement = (rms_px * field * scale).permute(0, 2, 3, 1)  # [N, H, W, 2]
    return torch.cat([F.elastic(x[i:i + 1], displacement[i:i + 1]) for i in range(n)])


def _rotate(x, degrees, generator):
    from torchvision.transforms.v2 import functional as F

    return _per_sign(x, _random_sign(len(x), generator),
                     lambda part, s: F.rotate(part, s * degrees, interpolation=F.InterpolationMode.BILINEAR))


def _shear(x, degrees, generator):
    from torchvision.transforms.v2 import functional as F

    return _per_sign(x, _random_sign(len(x), generator),
                     lambda part, s: F.affine(part, angle=0.0, translate=[0, 0], scale=1.0, shear=[s * degrees, 0.0],
                                              interpolation=F.InterpolationMode.BILINEAR))


_FUNCTIONS = {"gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
              "gaussian_blur": _gaussian_blur, "motion_blur": _motion_blur, "jpeg": _jpeg, "contrast": _contrast,
              "brightness": _brightness, "pixelate": _pixelate, "elastic": _elastic, "rotate": _rotate,
              "shear": _shear}
assert set(_FUNCTIONS) == set(SEVERITIES)


def _check_images(x) -> None:
    check_batch(x)
    if not x.is_floating_point():
        raise InputError(f"expected float images in [0, 1], got dtype {x.dtype} (divide uint8 images by 255)")
    if not torch.isfinite(x).all():
        raise InputError("images contain NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise InputError(f"images must lie in [0, 1], got values from {lo:.4g} to {hi:.4g}")
    if x.shape[1] not in (1, 3):
        raise InputError(f"images must have 1 or 3 channels (got {x.shape[1]}): expected [N, C, H, W]")


def corrupt(x: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """Images ``x`` corrupted by ``name`` at ``severity``.

    Args:
        x: images [N, C, H, W] (C = 1 or 3), float in [0, 1], on any device.
        name: one of :data:`CORRUPTIONS`.
        severity: 0 (the images unchanged) to 5 (strongest); parameters in :data:`SEVERITIES`.
        seed: seeds the noise, directions and warps (same seed, same output).

    Returns:
        A new tensor of the shape, dtype and device of ``x``, in [0, 1], on the 8-bit grid (severity >= 1).

    Raises:
        InputError: unknown ``name``, ``severity`` outside 0..5, or ``x`` not [N, C, H, W] in [0, 1].
    """
    if name not in SEVERITIES:
        raise InputError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= severity <= MAX_SEVERITY:
        raise InputError(f"severity must be an integer from 0 (clean) to {MAX_SEVERITY}, got {severity!r}")
    _check_images(x)
    if severity == 0:
        return x.clone()
    generator = torch.Generator().manual_seed(int(seed))
    value = SEVERITIES[name][int(severity) - 1]
    with torch.no_grad():
        out = _FUNCTIONS[name](x.detach().float().cpu(), value, generator)
        out = torch.round(out.clamp(0, 1) * 255) / 255  # the 8-bit grid of the data (as gclib.data's OoD sets)
    return out.to(device=x.device, dtype=x.dtype).contiguous()


# -- metrics -------------------------------------------------------------------------------------------------
def _correct(values, name: str) -> np.ndarray:
    a = np.asarray(torch.as_tensor(values).detach().cpu())
    if a.size == 0:
        raise InputError(f"{name} is empty")
    if a.dtype != bool:
        if not np.isin(a, (0, 1)).all():
            raise InputError(f"{name} must be correct/incorrect indicators (bool or 0/1), got other values")
        a = a.astype(bool)
    return a


def error_consistency(correct_a, correct_b) -> dict[str, float]:
    """Error consistency of two classifiers (Geirhos et al., 2020): Cohen's kappa of their correctness.

    Over the same trials (same images, same corruptions), ``observed`` is the share of trials on which both
    are right or both wrong; ``expected`` = p_a p_b + (1 - p_a)(1 - p_b) is that share for independent
    classifiers with the same accuracies p_a, p_b; kappa = (observed - expected) / (1 - expected): 0 for
    errors no more shared than chance, 1 for identical error patterns, negative for complementary ones.
    Undefined (NaN) when ``expected`` is 1 (both always right, or both always wrong).

    Args:
        correct_a, correct_b: the two classifiers' correctness per trial, bool or 0/1, same shape (any).

    Returns:
        dict with ``kappa``, ``observed``, ``expected`` and ``n`` (the number of trials).
    """
    a, b = _correct(correct_a, "correct_a"), _correct(correct_b, "correct_b")
    if a.shape != b.shape:
        raise InputError(f"correct_a and correct_b must have the same shape, got {a.shape} and {b.shape}")
    p_a, p_b = a.mean(), b.mean()
    observed = float((a == b).mean())
    expected = float(p_a * p_b + (1 - p_a) * (1 - p_b))
    kappa = (observed - expected) / (1 - expected) if expected < 1 else math.nan
    return {"kappa": float(kappa), "observed": observed, "expected": expected, "n": int(a.size)}


def error_consistency_se(correct_a, correct_b, n_bootstrap: int = 200, seed: int = 0) -> float:
    """Bootstrap standard error of :func:`error_consistency`'s kappa, resampling along the first axis.

    Pass [N] or [N, ...] arrays with the images on the first axis: the trials of one image (its corrupted
    versions) are resampled together, since they are not independent.
    """
    a, b = _correct(correct_a, "correct_a"), _correct(correct_b, "correct_b")
    if a.shape != b.shape:
        raise InputError(f"correct_a and correct_b must have the same shape, got {a.shape} and {b.shape}")
    if n_bootstrap < 2:
        raise InputError(f"n_bootstrap must be >= 2, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    kappas = []
    for _ in range(n_bootstrap):
        index = rng.integers(0, len(a), len(a))
        kappas.append(error_consistency(a[index], b[index])["kappa"])
    kappas = np.asarray(kappas)
    kappas = kappas[np.isfinite(kappas)]
    return float(kappas.std(ddof=1)) if len(kappas) > 1 else math.nan


def accuracy_se(correct) -> tuple[float, float]:
    """Accuracy and its standard error over images: ``correct`` is [N] or [N, T] (T trials per image).

    The SE is that of the mean of the per-image accuracies (std / sqrt(N)), so the trials of one image count
    as one sample, not T independent ones.
    """
    a = _correct(correct, "correct").astype(float)
    per_image = a.reshape(len(a), -1).mean(1)
    se = per_image.std(ddof=1) / math.sqrt(len(per_image)) if len(per_image) > 1 else math.nan
    return float(per_image.mean()), float(se)


def _stack(corrupted: dict, n: int) -> np.ndarray:
    """``{corruption: [S, N]}`` -> [N, K * S] bool, the images on the first axis."""
    if not corrupted:
        raise InputError("corrupted must map at least one corruption name to its [severities, N] correctness")
    parts = []
    for name, c in corrupted.items():
        c = _correct(c, f"corrupted[{name!r}]")
        if c.ndim != 2 or c.shape[1] != n:
            raise InputError(f"corrupted[{name!r}] must be [severities, N] with N = {n}, got {c.shape}")
        parts.append(c.T)
    return np.concatenate(parts, axis=1)


def corruption_row(model: str, clean, corrupted: dict, reference_clean=None, reference_corrupted=None,
                   n_bootstrap: int = 200, seed: int = 0) -> dict:
    """One row of ``table_corruptions``.

    Args:
        model: the row's label.
        clean: correctness on the clean images, [N] bool.
        corrupted: ``{corruption name: correctness [S, N]}`` (severities 1..S on the same N images).
        reference_clean, reference_corrupted: the same for the reference DC; without them (the DC's own row)
            the columns that compare with it are left empty.
        n_bootstrap, seed: for the kappa standard errors.

    Returns:
        dict with accuracies in % (clean; mean corruption accuracy over every corruption and severity; per
        corruption, the mean over its severities), their image-level standard errors, the paired difference
        in mean corruption accuracy to the reference (Δ, points), and kappa against the reference on clean
        and on corrupted images, with bootstrap standard errors (images resampled).
    """
    clean = _correct(clean, "clean")
    if clean.ndim != 1:
        raise InputError(f"clean must be [N], got shape {clean.shape}")
    n = len(clean)
    stacked = _stack(corrupted, n)
    acc, acc_se = accuracy_se(clean)
    mca, mca_se = accuracy_se(stacked)
    row: dict = {"model": model, "n": n, "clean_pct": round(100 * acc, 1), "clean_se": round(100 * acc_se, 1),
                 "mca_pct": round(100 * mca, 1), "mca_se": round(100 * mca_se, 1), "delta_pct": "", "delta_se": ""}
    for name, c in corrupted.items():
        row[name] = round(100 * float(_correct(c, name).mean()), 1)
    row.update({"kappa_clean": "", "kappa_clean_se": "", "kappa_corrupted": "", "kappa_corrupted_se": ""})
    if reference_clean is not None and reference_corrupted is not None:
        ref_clean = _correct(reference_clean, "reference_clean")
        same = "the reference's correctness must cover the same images, corruptions and severities"
        if ref_clean.shape != clean.shape or list(reference_corrupted) != list(corrupted):
            raise InputError(f"{same}: got {ref_clean.shape} and {list(reference_corrupted)} for the reference, "
                             f"{clean.shape} and {list(corrupted)} for {model!r}")
        ref_stacked = _stack(reference_corrupted, n)
        if ref_stacked.shape != stacked.shape:
            raise InputError(f"{same}: got {ref_stacked.shape} trials for the reference, {stacked.shape} for {model!r}")
        diff = stacked.mean(1) - ref_stacked.mean(1)  # paired by image
        row["delta_pct"] = round(100 * float(diff.mean()), 1)
        row["delta_se"] = round(100 * float(diff.std(ddof=1) / math.sqrt(n)), 1)
        for key, a, b in (("kappa_clean", clean, ref_clean), ("kappa_corrupted", stacked, ref_stacked)):
            row[key] = round(error_consistency(a, b)["kappa"], 3)
            row[f"{key}_se"] = round(error_consistency_se(a, b, n_bootstrap, seed), 3)
    return row


# -- figure --------------------------------------------------------------------------------------------------
@torch.no_grad()
def shipped_corruption_rows(shipped: dict, live: dict, test, n_bootstrap: int = 200, batch: int = 500
                            ) -> tuple[list[dict], int, list[tuple[str, int]]]:
    """``table_corruptions``'s rows for models whose logits on the corrupted images ship as ``corrupt``
    evaluation artifacts, beside models that classify the same corrupted images now.

    Args:
        shipped: ``{name: (tensors, manifest)}`` as :func:`gclib.evals.load` returns the artifacts; all must
            cover the same test images and versions (corruption, severity).
        live: ``{name: model}``: classified here, in batches of ``batch``, on the versions rebuilt from the
            seeded corruptions (``gclib.zoo._version_images``, the images the artifacts were computed on).
        test: the test set the artifacts index.
        n_bootstrap: for the kappa standard errors.

    The reference DC (paired difference and kappa) is the first model whose name starts with ``resnet``.
    Returns ``(rows, images, versions)``.
    """
    from .zoo import _version_images

    if not shipped:
        raise ValueError("shipped_corruption_rows needs at least one shipped corruption artifact")
    right, index, y, versions = {}, None, None, None
    for name, (tensors, manifest) in shipped.items():
        v = [(s.split(":")[0], int(s.split(":")[1])) for s in manifest["info"]["versions"]]
        if index is None:
            index, y, versions = tensors["indices"], tensors["labels"], v
        if not torch.equal(tensors["indices"], index) or v != versions:
            raise ValueError(f"{name}'s corruption artifact covers other images or versions than "
                             f"{next(iter(shipped))}'s; they cannot share a table")
        right[name] = tensors["logits"].argmax(2) == y  # [versions, N]
    n = len(index)
    if live:
        x = test.batch(index)[0]
        x_versions = torch.cat([_version_images(x, v) for v in versions])
        for name, model in live.items():
            model.eval()
            pred = torch.cat([model(x_versions[s:s + batch]).argmax(1) for s in range(0, len(x_versions), batch)])
            right[name] = pred.view(len(versions), n) == y

    def split(r):
        return r[0].numpy(), {c: r[i:i + 1].numpy() for i, (c, _) in enumerate(versions) if c != "clean"}

    dc = next((name for name in right if name.startswith("resnet")), None)
    ref = split(right[dc]) if dc else (None, None)
    rows = [corruption_row(name, *split(r), *(ref if name != dc else (None, None)), n_bootstrap=n_bootstrap)
            for name, r in right.items()]
    return rows, n, versions


def plot_corruptions(curves: dict[str, dict[str, list[float]]], examples: dict[str, list[Tensor]], rows: list[dict],
                     colors: dict[str, str] | None = None, severities_shown: tuple[int, ...] = (1, 3, 5),
                     ncols: int = 4):
    """``fig_corruptions``: accuracy against severity per corruption, a summary, and error consistency.

    Args:
        curves: ``{model: {corruption: [accuracy (%) at severity 0 (clean), 1, ..., 5]}}``.
        examples: ``{corruption: [image [C, H, W] at each of severities_shown]}``, shown above each panel.
        rows: :func:`corruption_row` rows (kappa against the DC, with SEs; empty for the DC itself).
        colors: a colour per model.
        severities_shown: the severities of the example images.
        ncols: corruption panels per row.

    One panel per corruption (one line per model, the example image above it), then the mean over all
    corruptions against severity, and kappa against the DC on clean and on corrupted images.
    """
    import numpy as np

    from .plotting import _plt

    plt = _plt()
    names = list(next(iter(curves.values())))
    nrows = math.ceil(len(names) / ncols)
    fig = plt.figure(figsize=(3.1 * ncols, 3.05 * (nrows + 1)), layout="constrained")
    subs = fig.subfigures(nrows + 1, 1, height_ratios=[1] * nrows + [1.05])
    colors = colors or {}
    handles = None
    for r in range(nrows):
        cells = subs[r].subfigures(1, ncols)
        for c in range(ncols):
            i = r * ncols + c
            if i >= len(names):
                continue
            name = names[i]
            grid = cells[c].add_gridspec(2, len(severities_shown), height_ratios=[1, 2.3])
            for j, (s, img) in enumerate(zip(severities_shown, examples.get(name, []))):
                ax = cells[c].add_subplot(grid[0, j])
                ax.imshow(torch.as_tensor(img).float().permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray",
                          vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
                ax.set_title(f"severity {s}", fontsize=7, pad=2)
            ax = cells[c].add_subplot(grid[1, :])
            for model, per in curves.items():
                ax.plot(range(len(per[name])), per[name], "o-", ms=3, lw=1.3, color=colors.get(model), label=model)
            ax.set_title(name.replace("_", " "), fontsize=9)
            ax.set_xticks(range(MAX_SEVERITY + 1), ["clean"] + [str(s) for s in range(1, MAX_SEVERITY + 1)],
                          fontsize=7)
            ax.set_ylim(0, 100)
            if c == 0:
                ax.set_ylabel("accuracy (%)")
            if r == nrows - 1:
                ax.set_xlabel("severity", fontsize=8)
            handles = ax.get_legend_handles_labels()
    ax_mean, ax_kappa, ax_leg = subs[nrows].subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 1.6, 0.7]})
    for model, per in curves.items():
        mean = np.mean([per[n] for n in names], axis=0)
        ax_mean.plot(range(len(mean)), mean, "o-", ms=3, lw=1.5, color=colors.get(model), label=model)
    ax_mean.set_xticks(range(MAX_SEVERITY + 1), ["clean"] + [str(s) for s in range(1, MAX_SEVERITY + 1)])
    ax_mean.set_xlabel("severity")
    ax_mean.set_ylabel("accuracy (%)")
    ax_mean.set_title(f"mean over the {len(names)} corruptions")
    compared = [r for r in rows if r["kappa_clean"] != ""]
    x = np.arange(len(compared))
    for k, (key, label, alpha) in enumerate((("kappa_clean", "clean", 0.45), ("kappa_corrupted", "corrupted", 1.0))):
        ax_kappa.bar(x + (k - 0.5) * 0.38, [r[key] for r in compared], 0.38, yerr=[r[f"{key}_se"] for r in compared],
                     color=[colors.get(r["model"], "#7f7f7f") for r in compared], alpha=alpha,
                     edgecolor="black", lw=0.5, capsize=2, label=label)
    ax_kappa.set_xticks(x, [r["model"] for r in compared], fontsize=8)
    ax_kappa.axhline(0, color="black", lw=0.8)
    ax_kappa.set_ylim(min(0, *(r["kappa_corrupted"] for r in compared), *(r["kappa_clean"] for r in compared)) - 0.05,
                      1)
    ax_kappa.set_ylabel("error consistency κ with the DC")
    ax_kappa.set_title("same errors as the DC? pale: clean, dark: corrupted\n(0: no more than chance, 1: identical)",
                       fontsize=8)
    ax_leg.axis("off")
    if handles:
        ax_leg.legend(*handles, loc="center left", fontsize=8, title="model")
    return fig
