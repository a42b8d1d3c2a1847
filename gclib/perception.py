"""Do generative classifiers see more like people? Analogs of model-vs-human's tests for 28x28 images.

Jaini, Clark and Geirhos (ICLR 2024) report that generative classifiers have a human-like shape bias,
near-human accuracy under the model-vs-human distortions and the highest error consistency with people.
Their benchmark (bethgelab/model-vs-human) needs ImageNet, style transfer and human data; none exists
for Fashion-MNIST. This module builds the analogs that can be built honestly at 28x28, for any
classifier of gclib (anything whose ``model(x)`` gives logits or log-posteriors):

- **Cue conflict** (:func:`cue_conflict`): the silhouette of one image filled with the texture of an
  image of another class, made two ways: ``"patch"`` tiles the most textured-looking interior patch of
  the texture image inside the shape image's silhouette; ``"spectrum"`` combines the Fourier phase of
  the shape image (which carries edges and layout) with the amplitude spectrum of the texture image.
  :func:`shape_bias` = shape decisions / (shape + texture decisions). The controls
  :func:`silhouette_only` and :func:`texture_only` say how much class information each cue carries on
  its own: Fashion-MNIST textures carry far less than ImageNet's, which bounds what a shape bias means.
- **Frequency** (:func:`lowpass`, :func:`highpass`, :func:`hybrid`): ideal (brick-wall) filters
  defined by a cut-off in cycles per image (at 28 px the Nyquist limit is 14), and hybrid images with
  the low frequencies of one class and the high frequencies of another.
- **Distortions** (:data:`DISTORTIONS`, :func:`distort`): the model-vs-human conditions that make sense
  at 28x28: contrast, low-pass, uniform noise, phase scrambling, power equalisation, rotation. One
  change: model-vs-human lowers contrast toward mid-grey (and adds its uniform noise to images at
  contrast 0.3); Fashion-MNIST garments lie on a black background, and a grey one is a shift no model
  has seen (every model, GC or DC, averaged 10-17 % over those contrast levels, measured on 200 test
  images), so contrast here falls toward the black background and the noise is added to the images
  as they are.
- **Error consistency** between every pair of models (:func:`consistency_matrix`): Cohen's kappa of
  Geirhos et al. (2020) (:func:`gclib.robust.error_consistency`), computed per condition and averaged
  over the conditions in an accuracy band, with bootstrap intervals over images, and a hierarchical
  clustering of the models by it (:func:`plot_error_consistency`).

The Fourier operations are written here with ``torch.fft`` (a few lines each; no maintained library
offers phase scrambling or amplitude/phase swaps for tensors), in float64 so that the tests can check
the spectra exactly; images shown to models are clipped to [0, 1] and put on the 8-bit grid like
:func:`gclib.robust.corrupt`'s.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .errors import InputError
from .robust import _check_images

__all__ = [
    "DISTORTIONS",
    "DISTORTION_UNITS",
    "FOREGROUND_THRESHOLD",
    "PATCH_SIZE",
    "band_energy",
    "cluster_order",
    "consistency_conditions",
    "consistency_matrix",
    "cue_conflict",
    "distort",
    "highpass",
    "hybrid",
    "kappa_matrix",
    "lowpass",
    "pair_other_class",
    "phase_scramble",
    "plot_distortions",
    "plot_error_consistency",
    "plot_frequency",
    "plot_shape_bias",
    "power_equalise",
    "radial_frequency",
    "shape_bias",
    "silhouette",
    "silhouette_only",
    "swap_spectrum",
    "texture_only",
    "texture_patch",
    "to_grid",
]

FOREGROUND_THRESHOLD = 0.1  # a pixel brighter than this belongs to the garment (the background is 0)
PATCH_SIZE = 8  # side of the texture patch, pixels: the largest that fits inside most garments

# The model-vs-human distortions rebuilt for 28x28 greyscale, each with its strengths (first: none).
DISTORTIONS: dict[str, tuple[float, ...]] = {
    "contrast": (1.0, 0.5, 0.3, 0.15, 0.1, 0.05, 0.03),  # blend toward the black background: c x
    "low_pass": (20, 8, 5, 4, 3, 2, 1.5),  # ideal low-pass cut-off, cycles per image (20 > 14 sqrt 2: none)
    "uniform_noise": (0.0, 0.05, 0.1, 0.2, 0.35, 0.6, 0.9),  # + U(-w, w), clipped
    "phase_scrambling": (0, 30, 60, 90, 120, 150, 180),  # phase noise U(-w, w), degrees (mvh)
    "power_equalisation": (0.0, 0.25, 0.5, 0.75, 1.0),  # amplitude -> (1 - a)|F| + a * mean |F| of the set
    "rotation": (0, 90, 180, 270),  # degrees (mvh)
}
DISTORTION_UNITS = {"contrast": "contrast level", "low_pass": "cut-off (cycles/image)",
                    "uniform_noise": "noise width", "phase_scrambling": "phase noise (degrees)",
                    "power_equalisation": "share of the mean spectrum", "rotation": "rotation (degrees)"}


def to_grid(x: Tensor) -> Tensor:
    """``x`` clipped to [0, 1] and rounded to the 8-bit grid, float32 (what the models are shown)."""
    return (torch.round(x.clamp(0, 1) * 255) / 255).float().contiguous()


# -- cue conflict ---------------------------------------------------------------------------------------------
def silhouette(x: Tensor, threshold: float = FOREGROUND_THRESHOLD) -> Tensor:
    """The foreground mask of images ``x`` [N, C, H, W]: bool [N, 1, H, W], True where any channel > threshold."""
    _check_images(x)
    return (x > threshold).any(1, keepdim=True)


def texture_patch(x: Tensor, size: int = PATCH_SIZE, threshold: float = FOREGROUND_THRESHOLD) -> Tensor:
    """The ``size`` x ``size`` window of each image with the most foreground pixels [N, C, size, size].

    Ties go to the window nearest the image centre, so a garment's interior is taken, not its edge.
    """
    _check_images(x)
    _, _, h, w = x.shape
    if not 1 <= size <= min(h, w):
        raise InputError(f"patch size must be from 1 to {min(h, w)}, got {size}")
    mask = silhouette(x, threshold).double()
    counts = torch.nn.functional.avg_pool2d(mask, size, stride=1) * size * size  # [N, 1, h-s+1, w-s+1]
    oh, ow = counts.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(oh), torch.arange(ow), indexing="ij")
    distance = ((ys - (oh - 1) / 2) ** 2 + (xs - (ow - 1) / 2) ** 2).double()
    score = counts[:, 0] - 1e-6 * distance  # the centre breaks ties; counts are integers
    best = score.flatten(1).argmax(1)
    top, left = best // ow, best % ow
    return torch.stack([x[i, :, int(t):int(t) + size, int(l):int(l) + size] for i, (t, l) in
                        enumerate(zip(top, left))])


def _tile(patch: Tensor, h: int, w: int) -> Tensor:
    s_h, s_w = patch.shape[-2:]
    return patch.repeat(1, 1, math.ceil(h / s_h), math.ceil(w / s_w))[..., :h, :w]


def silhouette_only(x: Tensor, threshold: float = FOREGROUND_THRESHOLD) -> Tensor:
    """The shape cue alone: each image's silhouette filled with its mean foreground intensity per channel."""
    mask = silhouette(x, threshold).to(x.dtype)
    mean = (x * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True).clamp(min=1)
    return to_grid(mask * mean)


def texture_only(x: Tensor, size: int = PATCH_SIZE, threshold: float = FOREGROUND_THRESHOLD) -> Tensor:
    """The texture cue alone: each image's :func:`texture_patch` tiled over the whole frame."""
    return to_grid(_tile(texture_patch(x, size, threshold), *x.shape[-2:]))


def pair_other_class(labels, seed: int = 0) -> Tensor:
    """For each image, the index of an image of another class (a fixed, seeded pairing) [N].

    Raises:
        InputError: fewer than two classes among ``labels``.
    """
    y = torch.as_tensor(labels).long().flatten()
    if y.unique().numel() < 2:
        raise InputError("cue conflict needs images of at least two classes")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(y), generator=generator).tolist()
    position = {i: p for p, i in enumerate(order)}
    partner = torch.empty(len(y), dtype=torch.long)
    for i in range(len(y)):
        # the first image after i in the seeded order whose class differs (wrapping around)
        p = position[i] + 1
        while y[order[p % len(y)]] == y[i]:
            p += 1
        partner[i] = order[p % len(y)]
    return partner


def swap_spectrum(phase_from: Tensor, amplitude_from: Tensor) -> Tensor:
    """The real image with the Fourier phase of ``phase_from`` and the amplitude of ``amplitude_from``.

    Float64, not clipped (its amplitude spectrum is exactly ``amplitude_from``'s).
    """
    f_p = torch.fft.fft2(phase_from.double())
    f_a = torch.fft.fft2(amplitude_from.double())
    # ifft2 of a Hermitian spectrum is real: |F_a| and angle(F_p) are both Hermitian-symmetric
    return torch.fft.ifft2(f_a.abs() * torch.exp(1j * f_p.angle())).real


def cue_conflict(shape_x: Tensor, texture_x: Tensor, method: str = "patch", size: int = PATCH_SIZE,
                 threshold: float = FOREGROUND_THRESHOLD) -> Tensor:
    """Images with the shape of ``shape_x`` and the texture of ``texture_x`` (same shape [N, C, H, W]).

    ``"patch"``: ``texture_x``'s :func:`texture_patch` tiled inside ``shape_x``'s silhouette (background 0).
    ``"spectrum"``: ``shape_x``'s Fourier phase with ``texture_x``'s amplitude spectrum.
    The result is clipped to [0, 1] and on the 8-bit grid.
    """
    _check_images(shape_x)
    _check_images(texture_x)
    if shape_x.shape != texture_x.shape:
        raise InputError(f"shape and texture images must have the same shape, got {tuple(shape_x.shape)} "
                         f"and {tuple(texture_x.shape)}")
    if method == "patch":
        tiles = _tile(texture_patch(texture_x, size, threshold), *shape_x.shape[-2:])
        return to_grid(silhouette(shape_x, threshold) * tiles)
    if method == "spectrum":
        return to_grid(swap_spectrum(shape_x, texture_x))
    raise InputError(f"unknown cue-conflict method {method!r}: use 'patch' or 'spectrum'")


def shape_bias(predictions, shape_labels, texture_labels) -> dict[str, float]:
    """Shape bias of decisions on cue-conflict images (Geirhos et al., 2019).

    Only images whose two cues disagree count. Returns ``shape_bias`` = shape / (shape + texture)
    decisions with its binomial standard error ``se``, ``cue_share`` (the share of decisions that
    follow either cue), and the counts ``n``, ``n_shape``, ``n_texture``. ``shape_bias`` is NaN when no
    decision follows either cue.
    """
    pred, s, t = (torch.as_tensor(v).long().flatten() for v in (predictions, shape_labels, texture_labels))
    if not len(pred) == len(s) == len(t):
        raise InputError(f"predictions, shape_labels and texture_labels must have one entry per image, got "
                         f"{len(pred)}, {len(s)} and {len(t)}")
    keep = s != t
    if not keep.any():
        raise InputError("no cue-conflict images: every shape label equals its texture label")
    pred, s, t = pred[keep], s[keep], t[keep]
    n_shape, n_texture = int((pred == s).sum()), int((pred == t).sum())
    decided = n_shape + n_texture
    bias = n_shape / decided if decided else math.nan
    se = math.sqrt(bias * (1 - bias) / decided) if decided else math.nan
    return {"shape_bias": bias, "se": se, "cue_share": decided / len(pred), "n": len(pred),
            "n_shape": n_shape, "n_texture": n_texture}


# -- frequency ------------------------------------------------------------------------------------------------
def radial_frequency(h: int, w: int) -> Tensor:
    """Radial spatial frequency of every FFT coefficient of an ``h`` x ``w`` image, cycles per image."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64) * h
    fx = torch.fft.fftfreq(w, dtype=torch.float64) * w
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def _filter(x: Tensor, keep: Tensor) -> Tensor:
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * keep).real


def lowpass(x: Tensor, cutoff: float) -> Tensor:
    """Ideal low-pass: keeps the frequencies at or below ``cutoff`` cycles per image (float64, unclipped)."""
    r = radial_frequency(*x.shape[-2:])
    return _filter(x, (r <= cutoff).double())


def highpass(x: Tensor, cutoff: float) -> Tensor:
    """Ideal high-pass: keeps the frequencies above ``cutoff`` and the mean (the 0 frequency), unclipped.

    Keeping the mean keeps each image's brightness, as model-vs-human's high-pass images keep a grey
    background; without it most pixels would be negative.
    """
    r = radial_frequency(*x.shape[-2:])
    return _filter(x, ((r > cutoff) | (r == 0)).double())


def hybrid(low_x: Tensor, high_x: Tensor, cutoff: float) -> Tensor:
    """Hybrid images: ``low_x``'s frequencies up to ``cutoff`` (its mean included) plus ``high_x``'s above."""
    r = radial_frequency(*low_x.shape[-2:])
    return _filter(low_x, (r <= cutoff).double()) + _filter(high_x, (r > cutoff).double())


def band_energy(x: Tensor, low: float, high: float) -> Tensor:
    """Per image, the spectral energy ``sum |F|^2`` at radial frequencies in (``low``, ``high``] [N]."""
    r = radial_frequency(*x.shape[-2:])
    band = ((r > low) & (r <= high)).double()
    return (torch.fft.fft2(x.double()).abs() ** 2 * band).flatten(1).sum(1)


# -- distortions ----------------------------------------------------------------------------------------------
def _hermitian_phase_noise(shape, width_rad: float, generator: torch.Generator) -> Tensor:
    # The angle of the FFT of real white noise is uniform in (-pi, pi] and odd (phi(-f) = -phi(f)), so
    # scaling it keeps the scrambled spectrum Hermitian and the image real. At the self-conjugate
    # frequencies (the mean and, for even sides, the Nyquist lines) the angle is 0 or pi, and a scaled pi
    # would break the symmetry: the noise is 0 there.
    angle = torch.fft.fft2(torch.rand(shape, generator=generator, dtype=torch.float64)).angle()
    h, w = shape[-2:]
    rows = torch.tensor([i == (-i) % h for i in range(h)])
    cols = torch.tensor([j == (-j) % w for j in range(w)])
    angle[..., rows[:, None] & cols[None, :]] = 0
    return angle * (width_rad / math.pi)


def phase_scramble(x: Tensor, degrees: float, seed: int = 0) -> Tensor:
    """Adds phase noise uniform in (-``degrees``, ``degrees``) to every frequency; the power spectrum stays.

    Float64, unclipped; the same ``seed`` gives the same noise at every strength.
    """
    generator = torch.Generator().manual_seed(int(seed))
    f = torch.fft.fft2(x.double())
    noise = _hermitian_phase_noise(tuple(x.shape), math.radians(float(degrees)), generator)
    return torch.fft.ifft2(f * torch.exp(1j * noise)).real


def power_equalise(x: Tensor, amount: float = 1.0, reference: Tensor | None = None) -> Tensor:
    """Moves each image's amplitude spectrum toward the mean amplitude of ``reference`` (default: ``x``).

    ``amount`` 1 gives every image the same power spectrum (model-vs-human's power equalisation); the
    phase is kept. Float64, unclipped.
    """
    f = torch.fft.fft2(x.double())
    ref = torch.fft.fft2((x if reference is None else reference).double()).abs().mean(0, keepdim=True)
    amplitude = (1 - amount) * f.abs() + amount * ref
    return torch.fft.ifft2(amplitude * torch.exp(1j * f.angle())).real


def distort(x: Tensor, name: str, strength: float, seed: int = 0) -> Tensor:
    """Images ``x`` [N, C, H, W] in [0, 1] under distortion ``name`` (:data:`DISTORTIONS`) at ``strength``.

    Returns float32 images clipped to [0, 1] on the 8-bit grid.
    """
    _check_images(x)
    if name not in DISTORTIONS:
        raise InputError(f"unknown distortion {name!r}; valid names: {', '.join(DISTORTIONS)}")
    s = float(strength)
    if name == "contrast":
        out = s * x.double()
    elif name == "low_pass":
        out = lowpass(x, s)
    elif name == "uniform_noise":
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.rand(x.shape, generator=generator, dtype=torch.float64) * 2 - 1
        out = x.double() + s * noise
    elif name == "phase_scrambling":
        out = phase_scramble(x, s, seed)
    elif name == "power_equalisation":
        out = power_equalise(x, s)
    else:
        if s % 90:
            raise InputError(f"rotation must be a multiple of 90 degrees, got {strength}")
        out = torch.rot90(x, int(s // 90) % 4, (-2, -1))
    return to_grid(out)


# -- error consistency ----------------------------------------------------------------------------------------
def kappa_matrix(correct: np.ndarray) -> np.ndarray:
    """Cohen's kappa of every pair of models, per condition: ``correct`` [M, K, N] bool -> [K, M, M].

    The same numbers as :func:`gclib.robust.error_consistency` for each pair and condition (checked by the
    tests); vectorised because the bootstrap calls it hundreds of times. NaN where a pair's expected
    agreement is 1.
    """
    a = np.asarray(correct, dtype=np.float64)
    if a.ndim != 3:
        raise InputError(f"correct must be [models, conditions, images], got shape {a.shape}")
    n = a.shape[-1]
    p = a.mean(-1)  # [M, K]
    agree = (np.einsum("ikn,jkn->kij", a, a) + np.einsum("ikn,jkn->kij", 1 - a, 1 - a)) / n
    p_k = p.T  # [K, M]
    expected = p_k[:, :, None] * p_k[:, None, :] + (1 - p_k[:, :, None]) * (1 - p_k[:, None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(expected < 1, (agree - expected) / (1 - expected), np.nan)
    return kappa


def consistency_conditions(accuracy: np.ndarray, low: float = 0.5, high: float = 0.8) -> np.ndarray:
    """Conditions whose accuracy, averaged over the models, lies in [``low``, ``high``]: ``accuracy`` [M, K].

    Geirhos et al. measure error consistency where errors are frequent enough to be informative and rare
    enough to be errors of a working classifier; one shared set keeps every pair comparable.
    """
    mean = np.asarray(accuracy, dtype=np.float64).mean(0)
    return (mean >= low) & (mean <= high)


def consistency_matrix(correct: np.ndarray, n_bootstrap: int = 200, seed: int = 0,
                       coverage: float = 0.95) -> dict[str, np.ndarray]:
    """Mean kappa over conditions for every pair of models, with bootstrap intervals over images.

    Args:
        correct: [M, K, N] correctness of M models on the same N images under K conditions.
        n_bootstrap: resamples of the images (the same resample for every model and condition).

    Returns:
        dict with ``kappa`` [M, M] (the diagonal is 1), ``low``/``high`` [M, M] (the central ``coverage``
        bootstrap interval), ``se`` [M, M] and ``samples`` [n_bootstrap, M, M].
    """
    a = np.asarray(correct, dtype=bool)
    if a.ndim != 3 or a.shape[1] == 0:
        raise InputError(f"correct must be [models, conditions >= 1, images], got shape {a.shape}")
    if n_bootstrap < 2:
        raise InputError(f"n_bootstrap must be >= 2, got {n_bootstrap}")
    kappa = np.nanmean(kappa_matrix(a), 0)
    rng = np.random.default_rng(seed)
    samples = np.stack([np.nanmean(kappa_matrix(a[:, :, rng.integers(0, a.shape[2], a.shape[2])]), 0)
                        for _ in range(n_bootstrap)])
    tail = (1 - coverage) / 2
    return {"kappa": kappa, "low": np.nanquantile(samples, tail, 0), "high": np.nanquantile(samples, 1 - tail, 0),
            "se": np.nanstd(samples, 0, ddof=1), "samples": samples}


def cluster_order(kappa: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Average-linkage clustering of the models by distance 1 - kappa: ``(leaf order, scipy linkage)``."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    d = 1 - np.asarray(kappa, dtype=np.float64)
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    link = linkage(squareform(np.clip(d, 0, None), checks=False), method="average")
    return [int(i) for i in leaves_list(link)], link


# -- figures --------------------------------------------------------------------------------------------------
def plot_shape_bias(rows: list[dict], examples: dict[str, list[Tensor]], colors: dict[str, str]):
    """Left: example cue-conflict images and controls; right: shape bias per model and method with SEs."""
    from . import plotting

    plt = plotting._plt()
    fig = plt.figure(figsize=(9.5, 3.6), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 2])
    names = list(examples)
    n_cols = max(len(v) for v in examples.values())
    axes = left.subplots(len(names), n_cols, squeeze=False)
    for r, name in enumerate(names):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(examples[name]):
                ax.imshow(examples[name][c][0].cpu(), cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(name, fontsize=7, loc="left")
    ax = right.subplots()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    width = 0.8 / len(methods)
    hatches = ["", "//", "..", "xx"]
    for m, method in enumerate(methods):
        for i, model in enumerate(models):
            row = next(r for r in rows if r["model"] == model and r["method"] == method)
            ax.bar(i + (m - (len(methods) - 1) / 2) * width, row["shape_bias"], width, yerr=row["se"],
                   color=colors.get(model, "#7f7f7f"), hatch=hatches[m % len(hatches)], edgecolor="white",
                   label=method if i == 0 else None, capsize=2)
    ax.axhline(0.5, color="black", lw=0.6, ls=":")
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("shape bias (shape / (shape + texture))")
    ax.legend(fontsize=7, title="texture from", title_fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0),
              ncol=len(methods))
    return fig


def plot_frequency(curves: dict[str, dict[str, list[float]]], cutoffs: dict[str, list[float]],
                   hybrid_rows: list[dict], colors: dict[str, str], examples: dict[str, list[Tensor]]):
    """Accuracy under low-pass and high-pass filtering against the cut-off, and the hybrid-image choice."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    from . import plotting

    plt = plotting._plt()
    fig = plt.figure(figsize=(10, 3.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 4])
    ex = top.subplots(1, sum(len(v) for v in examples.values()), squeeze=False)[0]
    k = 0
    for name, images in examples.items():
        for i, img in enumerate(images):
            ex[k].imshow(img[0].cpu(), cmap="gray", vmin=0, vmax=1)
            ex[k].set_axis_off()
            if i == 0:
                ex[k].set_title(name, fontsize=7, loc="left")
            k += 1
    axes = bottom.subplots(1, 3, squeeze=False)[0]
    for ax, kind in zip(axes[:2], ("low-pass", "high-pass")):
        for model, c in curves[kind].items():
            ax.plot(cutoffs[kind], [100 * v for v in c], marker="o", ms=2.5, color=colors.get(model, "#7f7f7f"),
                    label=model, lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(cutoffs[kind]))
        ax.xaxis.set_major_formatter(FixedFormatter([f"{c:g}" for c in cutoffs[kind]]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("cut-off (cycles per image)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(kind + (" (keeps ≤ cut-off)" if kind == "low-pass" else " (keeps > cut-off, and the mean)"))
        ax.axhline(10, color="black", lw=0.6, ls=":")
    ax = axes[2]
    models = [r["model"] for r in hybrid_rows]
    y = np.arange(len(models))
    ax.barh(y, [r["low_share"] for r in hybrid_rows], xerr=[r["low_se"] for r in hybrid_rows],
            color=[colors.get(m, "#7f7f7f") for m in models], capsize=2)
    ax.axvline(0.5, color="black", lw=0.6, ls=":")
    ax.set_yticks(y, models, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("low-frequency class / (low + high)")
    ax.set_title("hybrid images")
    axes[0].legend(fontsize=6, ncol=2)
    return fig


def plot_distortions(curves: dict[str, dict[str, list[float]]], colors: dict[str, str],
                     examples: dict[str, list[Tensor]]):
    """Accuracy against strength for every distortion (one panel each) with example images above."""
    from . import plotting

    plt = plotting._plt()
    names = list(DISTORTIONS)
    fig = plt.figure(figsize=(12, 4.2), layout="constrained")
    body, foot = fig.subfigures(2, 1, height_ratios=[6, 1])
    cols = body.subfigures(1, len(names))
    for col, name in zip(cols, names):
        top, ax = col.subplots(2, 1, height_ratios=[1, 3])
        top.set_axis_off()
        strip = torch.cat([img[0] for img in examples[name]], dim=1)
        top.imshow(strip.cpu(), cmap="gray", vmin=0, vmax=1)
        xs = list(range(len(DISTORTIONS[name])))
        for model, c in curves[name].items():
            ax.plot(xs, [100 * v for v in c], marker="o", ms=2.5, lw=1, color=colors.get(model, "#7f7f7f"),
                    label=model)
        ax.set_xticks(xs, [f"{v:g}" for v in DISTORTIONS[name]], fontsize=6, rotation=45)
        ax.set_xlabel(DISTORTION_UNITS[name], fontsize=7)
        ax.set_ylim(0, 100)
        ax.axhline(10, color="black", lw=0.6, ls=":")
        top.set_title(name.replace("_", " "), fontsize=8)
        if name == names[0]:
            ax.set_ylabel("accuracy (%)")
    handles, labels = cols[0].axes[-1].get_legend_handles_labels()
    foot.legend(handles, labels, loc="center", ncol=min(8, len(labels)), fontsize=7)
    return fig


def plot_error_consistency(result: dict, labels: list[str], generative: list[bool], beta_rows: list[dict]):
    """The kappa matrix in cluster order with its dendrogram, and kappa with the DC against beta."""
    from scipy.cluster.hierarchy import dendrogram

    from . import plotting

    plt = plotting._plt()
    order, link = cluster_order(result["kappa"])
    fig = plt.figure(figsize=(10, 4.2), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.6, 1])
    ax_d, ax_m = left.subplots(1, 2, width_ratios=[1, 3])
    dendrogram(link, orientation="left", ax=ax_d, no_labels=True, color_threshold=0, above_threshold_color="k")
    ax_d.invert_yaxis()
    ax_d.set_axis_off()
    k = result["kappa"][np.ix_(order, order)]
    im = ax_m.imshow(k, cmap="viridis", vmin=min(0.0, float(np.nanmin(k))), vmax=1)
    names = [labels[i] for i in order]
    ax_m.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=6)
    ax_m.set_yticks(range(len(names)), names, fontsize=6)
    for t, i in zip(ax_m.get_yticklabels(), order):
        t.set_color("#1f4e9c" if generative[i] else plotting.DC_COLOR)
    for t, i in zip(ax_m.get_xticklabels(), order):
        t.set_color("#1f4e9c" if generative[i] else plotting.DC_COLOR)
    for a in range(len(names)):
        for b in range(len(names)):
            if a != b:
                ax_m.text(b, a, f"{k[a, b]:.2f}", ha="center", va="center", fontsize=4.5,
                          color="white" if k[a, b] < 0.6 else "black")
    ax_m.grid(False)
    left.colorbar(im, ax=ax_m, shrink=0.7, label="error consistency κ")
    ax = right.subplots()
    for row in beta_rows:
        ax.errorbar(row["x"], row["kappa"], yerr=[[row["kappa"] - row["low"]], [row["high"] - row["kappa"]]],
                    fmt="o", color=row["color"], capsize=2, ms=4)
    ax.set_xticks([r["x"] for r in beta_rows], [r["label"] for r in beta_rows])
    ax.set_xlabel("IB-INN β")
    ax.set_ylabel("κ with the ResNet DC (95 % interval)")
    ax.set_title("does the GC err like the DC?")
    return fig
