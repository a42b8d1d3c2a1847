"""The GC's invertible latent space as an explanation: prototypes, counterfactuals, a 2-D view, evidence.

A GC maps an image x to z = f(x) with an invertible f and models z ~ N(mu_y, I) per class, so anything
done to z can be looked at as an image, x = f^-1(z). Functions here, tensors in, tensors out; the
book's ``fig_prototypes``, ``fig_counterfactuals``, ``fig_latent_space``, ``fig_evidence`` and
``table_latent`` (``notebooks/latent.py``) are built from them.

**The class-carrying subspace.** With unit covariance the log-determinant and the Gaussian constant
cancel between classes, and the log-likelihood ratio of classes a and b is

    log p(x|a) - log p(x|b) = sum_d [(z_d - mu_bd)^2 - (z_d - mu_ad)^2] / 2 = (z - (mu_a + mu_b)/2) . (mu_a - mu_b).

The decision therefore depends on z only through its projection onto the span of the differences of
the class means: at most C - 1 dims (9 for Fashion-MNIST). In the ``fashion-mnist`` config the means are
*not* confined to the ``n_fc_dims`` = 16 DC terms: the other 768 dims carry rank-``low_rank`` (32) means,
which the shipped models use as much as the free ones. :func:`class_subspace` finds the affine span of
the means (an SVD of the centred means) and works for any config; its orthogonal complement is the part
of z that every class models alike. A *counterfactual* (:func:`move`) replaces the class-carrying
coordinates of z by a convex combination of its own and the target class mean's and keeps the rest.

**Out-of-range pixels.** A decoded latent that the network never saw in training can lie outside [0, 1].
Functions return decoded images *unclamped*; :func:`to_8bit` clamps and rounds them to the 8-bit grid
(what a viewer sees, and what the figures show), and :func:`out_of_range` reports how much was cut off.
:func:`predict_unchecked` classifies the raw decoded images (the model's input check would reject them).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import InputError, check_batch, check_batch_size

__all__ = ["ClassSubspace", "class_subspace", "latents", "decode", "class_scores", "top_two", "move", "flip_point",
           "to_8bit", "out_of_range", "predict_unchecked", "predict_8bit", "counterfactuals", "counterfactual_stats",
           "evidence", "evidence_summary", "neutralize_dims", "dim_labels", "prototypes", "class_fit",
           "nearest_mean_distance", "latent_view", "pick_examples", "latent_row", "counterfactual_row",
           "plot_prototypes", "plot_counterfactuals", "plot_latent_space", "plot_evidence", "LATENT_HEADERS",
           "COUNTERFACTUAL_HEADERS"]

LATENT_HEADERS = {
    "model": "model", "n": "n", "accuracy_pct": "accuracy (%)",
    "rms_class": "class dims: RMS from own class mean (model: 1)",
    "centroid_scale": "class centroids / class means (distance from centre)",
    "rms_rest": "other dims: RMS (model: 1)",
    "evidence_fc_pct": "evidence in the DC dims (median %)",
    "evidence_half_dims": "dims for half the evidence (median)",
    "means_outside_pct": "decoded means: pixels outside [0,1] (%)",
    "samples_outside_pct": "T=1 samples: pixels outside [0,1] (%)",
}
COUNTERFACTUAL_HEADERS = {
    "model": "model", "n": "n", "t_flip_median": "median flip point (exact, margin 0)",
    "cf_dx": "counterfactual: mean abs(Δx)", "cf_kept_8bit_pct": "… still flipped after 8-bit (%)",
    "outside_pct": "at the target mean: pixels outside [0,1] (%)",
    "target_raw_pct": "… GC says target (%)", "target_8bit_pct": "… GC says target after 8-bit (%)",
    "target_dc_pct": "… ResNet-18 says target after 8-bit (%)",
}


# -- the subspace -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassSubspace:
    """The affine span of a GC's class means, in float64 on the CPU.

    Attributes:
        center: the mean of the class means, [D].
        basis: orthonormal rows spanning the differences of the class means, [K, D] (K <= C - 1).
        means: the class means in these coordinates, [C, K].
        full_means: the class means themselves, [C, D].
    """

    center: Tensor
    basis: Tensor
    means: Tensor
    full_means: Tensor

    @property
    def n_dims(self) -> int:
        return self.basis.shape[0]

    def coords(self, z: Tensor) -> Tensor:
        """Class-carrying coordinates of latents ``z`` [N, D], [N, K]."""
        return (_as64(z) - self.center) @ self.basis.T

    def residual(self, z: Tensor) -> Tensor:
        """The part of ``z - center`` orthogonal to the class-carrying subspace, [N, D]."""
        z = _as64(z) - self.center
        return z - (z @ self.basis.T) @ self.basis


def _as64(z: Tensor) -> Tensor:
    return z.detach().to("cpu", torch.float64)


@torch.no_grad()
def class_subspace(model, tol: float = 1e-8) -> ClassSubspace:
    """The class-carrying subspace of a GC: the affine span of its class means (see the module docstring).

    Materialises the [C, D] means: meant for models of the size of the ``fashion-mnist`` and ``cifar10``
    configs. Directions whose singular value is below ``tol`` times the largest are dropped.
    """
    means = _as64(model.head.means())
    center = means.mean(0)
    _, s, vh = torch.linalg.svd(means - center, full_matrices=False)
    keep = s > tol * s.max()
    basis = vh[keep]
    return ClassSubspace(center, basis, (means - center) @ basis.T, means)


# -- encode, decode, classify -----------------------------------------------------------------
_check_batch, _check_batch_size = check_batch, check_batch_size


@torch.no_grad()
def latents(model, x: Tensor, batch_size: int = 500) -> Tensor:
    """z = f(x) of images ``x`` [N, C, H, W] in [0, 1] (checked by the model), [N, D] float64 on the CPU."""
    _check_batch(x)
    _check_batch_size(batch_size)
    return torch.cat([_as64(model.encode(b.to(model.device))) for b in x.split(batch_size)])


@torch.no_grad()
def decode(model, z: Tensor, batch_size: int = 500) -> Tensor:
    """x = f^-1(z) of latents ``z`` [N, D], [N, C, H, W] float32 on the CPU, *not* clamped to [0, 1]."""
    _check_batch(z, f"latents [N, {model.n_dims}]", dim=2)
    _check_batch_size(batch_size)
    return torch.cat([model.inverse(b.to(model.device)).float().cpu() for b in z.split(batch_size)])


def class_scores(space: ClassSubspace, z: Tensor) -> Tensor:
    """-||z - mu_c||^2 / 2 for every class, [N, C] float64: log p(x|c) up to a class-independent term.

    The model's own prediction is its arg-max (the log-det and the Gaussian constant are the same for
    every class; the prior is uniform).
    """
    return -0.5 * torch.cdist(_as64(z), space.full_means).square()


def top_two(scores: Tensor) -> tuple[Tensor, Tensor]:
    """The most likely class and the runner-up per row of ``scores`` [N, C]: two [N] int64 tensors."""
    idx = scores.topk(2, dim=1).indices
    return idx[:, 0], idx[:, 1]


def _check_classes(space: ClassSubspace, y: Tensor, n: int, name: str) -> Tensor:
    y = torch.as_tensor(y).long().reshape(-1)
    c = space.means.shape[0]
    if len(y) != n:
        raise InputError(f"{name} must have one class per latent ({n}), got {len(y)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= c):
        raise InputError(f"{name} must be class indices in 0..{c - 1}, got {y.tolist()[:10]}")
    return y


def move(space: ClassSubspace, z: Tensor, target: Tensor, t) -> Tensor:
    """Counterfactual latents: the class-carrying coordinates of ``z`` moved a fraction ``t`` toward ``target``.

    ``z(t) = z + t P (mu_target - z)`` with P the orthogonal projection onto the class-carrying subspace:
    t = 0 is ``z`` itself (bit for bit), t = 1 puts the class-carrying part exactly on the target mean,
    and the rest of z is never changed.

    Args:
        space: :func:`class_subspace` of the model.
        z: latents [N, D].
        target: the target class per latent [N].
        t: a number or one per latent [N].

    Returns:
        [N, D] float64.
    """
    z = _as64(z)
    target = _check_classes(space, target, len(z), "target")
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(len(z))
    if t.shape != (len(z),) or not torch.isfinite(t).all():
        raise InputError(f"t must be a finite number or one per latent ({len(z)}), got shape {tuple(t.shape)}")
    step = (space.means[target] - space.coords(z)) @ space.basis
    return z + t[:, None] * step


def flip_point(space: ClassSubspace, z: Tensor, source: Tensor, target: Tensor,
               margin: float = 0.0) -> tuple[Tensor, Tensor]:
    """Where the decision leaves ``source`` along the path of :func:`move` toward ``target``, exactly.

    Along the path every score difference s_k - s_source is linear in t, so the smallest t at which some
    class k beats ``source`` by ``margin`` nats is solved for in closed form (no grid, no decoding).

    Returns:
        ``(t, k)``: [N] float64 (0 if ``source`` is already not ahead by ``margin``; may exceed 1 when
        ``margin`` is more than the target's lead at its own mean; inf if never) and the class that
        takes over [N] (-1 where t is inf).
    """
    z = _as64(z)
    source = _check_classes(space, source, len(z), "source")
    mu = space.full_means
    direction = move(space, z, target, 1.0) - z  # [N, D]
    d_mu = mu[None] - mu[source][:, None]  # mu_k - mu_source, [N, C, D]
    gap0 = torch.einsum("nd,ncd->nc", z, d_mu) - 0.5 * (mu.square().sum(1)[None] - mu[source].square().sum(1)[:, None])
    slope = torch.einsum("nd,ncd->nc", direction, d_mu)
    t = torch.where(gap0 >= margin, torch.zeros_like(gap0),
                    torch.where(slope > 0, (margin - gap0) / slope.clamp_min(1e-300), torch.full_like(gap0, math.inf)))
    t[torch.arange(len(z)), source] = math.inf
    t_min, k = t.min(1)
    return t_min, torch.where(torch.isfinite(t_min), k, torch.full_like(k, -1))


def to_8bit(x: Tensor) -> Tensor:
    """Decoded images as a viewer sees them: NaN/inf replaced, clamped to [0, 1], rounded to the 8-bit grid."""
    x = torch.nan_to_num(x.float(), nan=0.5, posinf=1.0, neginf=0.0)
    return torch.round(x.clamp(0, 1) * 255) / 255


def out_of_range(x: Tensor) -> dict[str, float]:
    """How much of decoded images ``x`` lies outside [0, 1] (what :func:`to_8bit` cuts off).

    Returns:
        ``fraction``: share of pixels outside [0, 1] (NaN and inf count as outside); ``mean_excess``: the
        mean over all pixels of the distance to [0, 1] (the mass clamped away, on the [0, 1] scale);
        ``max_excess``: the largest such distance (inf if any value is not finite).
    """
    x = x.double()
    finite = torch.isfinite(x)
    excess = torch.where(finite, (x - x.clamp(0, 1)).abs(), torch.full_like(x, math.inf))
    outside = excess > 0
    return {"fraction": float(outside.double().mean()), "mean_excess": float(excess.mean()),
            "max_excess": float(excess.max())}


@contextlib.contextmanager
def _unchecked(model):
    had = "check_inputs" in vars(model)
    old = model.check_inputs
    model.check_inputs = False
    try:
        yield model
    finally:
        if had:
            model.check_inputs = old
        else:
            del model.check_inputs


@torch.no_grad()
def predict_unchecked(model, x: Tensor, batch_size: int = 500) -> Tensor:
    """The GC's prediction for raw decoded images (values outside [0, 1] allowed), [N] on the CPU.

    Equals the latent decision up to the numerical error of f(f^-1(z)); where that error is large (far
    from the data, e.g. beta = inf) the two differ.
    """
    _check_batch(x)
    with _unchecked(model):
        return torch.cat([model.class_log_likelihoods(b.to(model.device)).argmax(1).cpu() for b in x.split(batch_size)])


@torch.no_grad()
def predict_8bit(model, x: Tensor, batch_size: int = 500) -> Tensor:
    """A classifier's prediction (GC or DC) for ``to_8bit(x)``, [N] on the CPU."""
    _check_batch(x)
    device = getattr(model, "device", None) or next(model.parameters()).device
    return torch.cat([model(to_8bit(b).to(device)).argmax(1).cpu() for b in x.split(batch_size)])


# -- counterfactuals --------------------------------------------------------------------------
def _steps(steps) -> Tensor:
    s = torch.as_tensor(steps, dtype=torch.float64).reshape(-1)
    if len(s) == 0 or not torch.isfinite(s).all():
        raise InputError(f"steps must be a non-empty list of finite numbers, got {steps}")
    return s


def counterfactuals(model, z: Tensor, steps=(0.0, 0.25, 0.5, 0.75, 1.0), target: Tensor | None = None,
                    margin: float = 1.0, space: ClassSubspace | None = None, batch_size: int = 500) -> dict:
    """Counterfactual paths of latents ``z`` [N, D] from the predicted class toward ``target`` (default: the runner-up).

    Args:
        model: the GC.
        z: latents of the images, [N, D] (:func:`latents`).
        steps: the fractions t of the way to the target mean to decode (t = 0 is the input, t = 1 the mean).
        target: target class per image [N]; default the second most likely class.
        margin: the counterfactual proper is decoded at the smallest t where some class beats the
            predicted one by ``margin`` nats (:func:`flip_point`; 1 nat = odds of e to 1).
        space: :func:`class_subspace` of the model (computed if not given).
        batch_size: images per forward pass.

    Returns:
        dict with ``source`` and ``target`` [N]; ``steps`` [S]; ``images`` [N, S, C, H, W] decoded, not
        clamped; ``prediction`` [N, S] of the GC on their 8-bit versions; ``t_flip`` [N] (exact, margin 0),
        ``t_cf`` [N] (with ``margin``, at most 1), ``flip_class`` [N]; ``counterfactual`` [N, C, H, W]
        decoded at ``t_cf`` and ``cf_prediction`` [N] of its 8-bit version.
    """
    space = space or class_subspace(model)
    z = _as64(z)
    _check_batch(z, f"latents [N, {model.n_dims}]", dim=2)
    source, runner_up = top_two(class_scores(space, z))
    target = runner_up if target is None else _check_classes(space, target, len(z), "target")
    steps = _steps(steps)
    t_flip, flip_class = flip_point(space, z, source, target)
    t_cf = flip_point(space, z, source, target, margin)[0].clamp(max=1.0)
    zs = torch.cat([move(space, z, target, t) for t in steps] + [move(space, z, target, t_cf)])
    images = decode(model, zs, batch_size)
    pred = predict_8bit(model, images, batch_size)
    n, s = len(z), len(steps)
    images, pred = images.view(s + 1, n, *images.shape[1:]), pred.view(s + 1, n)
    return {"source": source, "target": target, "steps": steps, "images": images[:s].transpose(0, 1),
            "prediction": pred[:s].T, "t_flip": t_flip, "t_cf": t_cf, "flip_class": flip_class,
            "counterfactual": images[s], "cf_prediction": pred[s]}


def counterfactual_stats(model, x: Tensor, z: Tensor | None = None, dc=None, margin: float = 1.0,
                         space: ClassSubspace | None = None, batch_size: int = 500) -> dict:
    """Per-image counterfactual measurements for images ``x`` [N, C, H, W] toward their runner-up class.

    Returns:
        dict of [N] tensors: ``source``, ``target``, ``t_flip``, ``t_cf``; ``cf_kept_8bit`` (the 8-bit
        counterfactual at ``t_cf`` is still not classified as ``source``); ``cf_dx`` (its mean absolute
        pixel change from the input); at the target mean (t = 1): ``target_raw`` (the raw decoded image
        is classified as the target: exact inversion would make this always true), ``target_8bit``,
        ``target_dc`` (the DC ``dc`` on the 8-bit image; absent without ``dc``) and ``outside`` (share
        of its pixels outside [0, 1]).
    """
    space = space or class_subspace(model)
    z = latents(model, x, batch_size) if z is None else _as64(z)
    if len(z) != len(x):
        raise InputError(f"z has {len(z)} latents for {len(x)} images")
    source, target = top_two(class_scores(space, z))
    t_flip = flip_point(space, z, source, target)[0]
    t_cf = flip_point(space, z, source, target, margin)[0].clamp(max=1.0)
    x_cf = decode(model, move(space, z, target, t_cf), batch_size)
    x_mean = decode(model, move(space, z, target, 1.0), batch_size)
    out = {"source": source, "target": target, "t_flip": t_flip, "t_cf": t_cf,
           "cf_kept_8bit": predict_8bit(model, x_cf, batch_size) != source,
           "cf_dx": (to_8bit(x_cf) - x).abs().flatten(1).mean(1),
           "target_raw": predict_unchecked(model, x_mean, batch_size) == target,
           "target_8bit": predict_8bit(model, x_mean, batch_size) == target,
           "outside": (~((x_mean >= 0) & (x_mean <= 1))).flatten(1).double().mean(1)}
    if dc is not None:
        out["target_dc"] = predict_8bit(dc, x_mean, batch_size) == target
    return out


# -- evidence ---------------------------------------------------------------------------------
def evidence(space: ClassSubspace, z: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """The log-likelihood ratio log p(x|a) - log p(x|b), split exactly over the latent dims, [N, D] float64.

    Per dim d: ``[(z_d - mu_bd)^2 - (z_d - mu_ad)^2] / 2``; the rows sum to the ratio because the
    log-det and the Gaussian constant are the same for both classes (unit covariance).
    """
    z = _as64(z)
    a = _check_classes(space, a, len(z), "a")
    b = _check_classes(space, b, len(z), "b")
    mu = space.full_means
    return 0.5 * ((z - mu[b]).square() - (z - mu[a]).square())


def evidence_summary(e: Tensor, n_fc_dims: int) -> dict[str, Tensor]:
    """How the evidence ``e`` [N, D] (:func:`evidence`) is spread over the dims, per image.

    Returns:
        ``fc_share``: share of the absolute evidence ``sum_d |e_d|`` in the first ``n_fc_dims`` dims (the DC
        terms with free class means), [N]; ``half_dims``: the fewest dims holding half of it, [N];
        ``cumulative``: its cumulative share over the dims sorted by ``|e_d|``, [N, D].
    """
    mag = e.abs()
    total = mag.sum(1, keepdim=True).clamp_min(1e-300)
    cumulative = mag.sort(1, descending=True).values.cumsum(1) / total
    return {"fc_share": (mag[:, :n_fc_dims].sum(1, keepdim=True) / total).squeeze(1),
            "half_dims": (cumulative < 0.5).sum(1) + 1, "cumulative": cumulative}


@torch.no_grad()
def neutralize_dims(model, space: ClassSubspace, z: Tensor, a: Tensor, b: Tensor, dims: Tensor,
                    batch_size: int = 500) -> Tensor:
    """Decoded images with one latent dim at a time set to the midpoint of the two class means.

    At the midpoint (mu_ad + mu_bd) / 2 the dim's evidence is exactly zero and every other dim is kept,
    so the difference to the input shows what that dim's evidence looks like in image space.

    Args:
        z: latents [N, D]; a, b: the two classes [N]; dims: the dims to neutralise per image [N, k].

    Returns:
        [N, k, C, H, W] decoded, not clamped.
    """
    z = _as64(z)
    a = _check_classes(space, a, len(z), "a")
    b = _check_classes(space, b, len(z), "b")
    dims = torch.as_tensor(dims).long()
    if dims.dim() != 2 or len(dims) != len(z) or int(dims.min()) < 0 or int(dims.max()) >= z.shape[1]:
        raise InputError(f"dims must be [N, k] latent indices in 0..{z.shape[1] - 1}, got shape {tuple(dims.shape)}")
    n, k = dims.shape
    mid = (space.full_means[a] + space.full_means[b]) / 2  # [N, D]
    zs = z[:, None].repeat(1, k, 1)
    rows = torch.arange(n)[:, None].expand(n, k)
    zs[rows, torch.arange(k)[None].expand(n, k), dims] = mid[rows, dims]
    images = decode(model, zs.reshape(n * k, -1), batch_size)
    return images.view(n, k, *images.shape[1:])


def dim_labels(model) -> list[str]:
    """A name per latent dim: ``"ch 3 DC"`` or ``"ch 3 (0,1)"`` (the channel of the last feature map and the
    DCT frequency (u, v) of ``DCTPooling``: frequency-major, channel-minor, low frequencies first)."""
    channels, height, width = model.config.latent_shape
    order = sorted(((u, v) for u in range(height) for v in range(width)), key=lambda t: (t[0] + t[1], t[0]))
    return [f"ch {c} DC" if f == 0 else f"ch {c} ({order[f][0]},{order[f][1]})"
            for f in range(height * width) for c in range(channels)]


# -- prototypes and the 2-D view ---------------------------------------------------------------
@torch.no_grad()
def prototypes(model, temperatures=(0.5, 0.8, 1.0), n_samples: int = 2, seed: int = 0,
               batch_size: int = 500) -> dict:
    """What the model thinks each class looks like: decoded class means and samples at several temperatures.

    The samples are z = mu_c + T eps with the *same* standard-normal eps (drawn with ``seed``) at every
    temperature T and for every model of the same size, so rows and models can be compared directly.

    Returns:
        dict with ``means`` [C, ...] and ``samples`` [len(temperatures), C, n_samples, ...] (decoded, not
        clamped) and ``temperatures``.
    """
    temps = [float(t) for t in temperatures]
    if not temps or any(not (t >= 0 and math.isfinite(t)) for t in temps):
        raise InputError(f"temperatures must be finite numbers >= 0, got {list(temperatures)}")
    if n_samples < 1:
        raise InputError(f"n_samples must be >= 1, got {n_samples}")
    mu = _as64(model.head.means())
    c, d = mu.shape
    eps = torch.randn((c, n_samples, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    zs = torch.cat([mu] + [(mu[:, None] + t * eps).reshape(c * n_samples, d) for t in temps])
    images = decode(model, zs, batch_size)
    return {"means": images[:c], "samples": images[c:].view(len(temps), c, n_samples, *images.shape[1:]),
            "temperatures": temps}


def class_fit(space: ClassSubspace, z: Tensor, labels: Tensor) -> dict:
    """How the latents ``z`` [N, D] of labelled images fit the model's unit-variance Gaussians.

    Returns:
        ``rms_class``: root-mean-square per dim of the class-carrying coordinates' deviation from the
        image's own class mean (the model assumes 1); ``rms_rest``: the same for the other dims, where
        every class has the same mean (the model assumes 1); ``spread_class``: as ``rms_class`` but around
        the class's centroid (the mean of its latents) instead of the model's mean; ``centroid_scale``:
        how much farther from the centre of the means the centroids lie than the means themselves
        (sum of distances, class-carrying coordinates; 1 if they coincide); ``centroids``: the class
        centroids [C, D] (classes without images: NaN).
    """
    z = _as64(z)
    labels = _check_classes(space, labels, len(z), "labels")
    n_classes = space.means.shape[0]
    counts = torch.bincount(labels, minlength=n_classes).double()
    centroids = torch.zeros(n_classes, z.shape[1], dtype=torch.float64).index_add_(0, labels, z) / counts[:, None]
    coords, c_coords = space.coords(z), space.coords(centroids)
    rest = space.residual(z)  # the class means have no component here
    k, d = space.n_dims, z.shape[1]
    seen = counts > 0
    return {"rms_class": float((coords - space.means[labels]).square().mean().sqrt()),
            "rms_rest": float((rest.square().sum(1).mean() / (d - k)).sqrt()),
            "spread_class": float((coords - c_coords[labels]).square().mean().sqrt()),
            "centroid_scale": float(c_coords[seen].norm(dim=1).sum() / space.means[seen].norm(dim=1).sum()),
            "centroids": centroids}


def nearest_mean_distance(space: ClassSubspace, z: Tensor) -> Tensor:
    """Distance of each latent's class-carrying coordinates from the nearest class mean, [N] (latent units)."""
    return torch.cdist(space.coords(z), space.means).min(1).values


def latent_view(space: ClassSubspace, z: Tensor, others: dict[str, Tensor] | None = None) -> dict:
    """A 2-D view of the class-carrying coordinates: PCA (scikit-learn) fit on the latents ``z`` [N, D].

    PCA is an orthonormal projection, so distances stay in latent units and the model's unit-variance
    classes stay circles of radius 1. ``others`` (e.g. OoD latents) are projected with the same fit.

    Returns:
        dict with ``points`` [N, 2], ``means`` [C, 2], ``others`` {name: [M, 2]} and ``explained`` (the
        share of the class-coordinate variance of ``z`` the two axes keep).
    """
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(space.coords(z).numpy())

    def proj(v):
        return torch.as_tensor(pca.transform(v.numpy()))

    return {"points": proj(space.coords(z)), "means": proj(space.means),
            "others": {name: proj(space.coords(v)) for name, v in (others or {}).items()},
            "explained": float(pca.explained_variance_ratio_.sum())}


def pick_examples(prediction: Tensor, labels: Tensor, k: int = 3) -> dict[str, list[int]]:
    """The first ``k`` correctly classified and the first ``k`` misclassified images, in data order.

    Raises:
        InputError: fewer than ``k`` of either kind.
    """
    correct = torch.as_tensor(prediction) == torch.as_tensor(labels)
    picked = {"correct": torch.where(correct)[0][:k].tolist(), "misclassified": torch.where(~correct)[0][:k].tolist()}
    for kind, idx in picked.items():
        if len(idx) < k:
            raise InputError(f"only {len(idx)} {kind} images among {len(correct)}, need {k}; use more images")
    return picked


def _pct_se(flags: Tensor) -> str:
    p, n = float(flags.double().mean()), len(flags)
    return f"{100 * p:.1f} ± {100 * math.sqrt(p * (1 - p) / n):.1f}"


def latent_row(name: str, labels: Tensor, prediction: Tensor, fit: dict, ev: dict, proto_ranges: dict) -> dict:
    """One row of ``table_latent``: how one GC's latents fit its Gaussians, its evidence, its prototypes' range.

    Args:
        name: the model's name; labels, prediction: true and predicted classes of the n test images.
        fit: :func:`class_fit`; ev: :func:`evidence_summary`; proto_ranges: ``{"means": out_of_range,
            "samples": out_of_range}`` of its :func:`prototypes` (the samples at T = 1).
    """
    return {"model": name, "n": len(labels), "accuracy_pct": _pct_se(torch.as_tensor(prediction) == labels),
            "rms_class": round(fit["rms_class"], 2), "centroid_scale": round(fit["centroid_scale"], 2),
            "rms_rest": round(fit["rms_rest"], 2),
            "evidence_fc_pct": round(100 * float(ev["fc_share"].median()), 1),
            "evidence_half_dims": int(ev["half_dims"].median()),
            "means_outside_pct": round(100 * proto_ranges["means"]["fraction"], 1),
            "samples_outside_pct": round(100 * proto_ranges["samples"]["fraction"], 1)}


def counterfactual_row(name: str, stats: dict) -> dict:
    """One row of ``table_counterfactuals`` from :func:`counterfactual_stats` (percentages "value ± binomial SE")."""
    row = {"model": name, "n": len(stats["source"]),
           "t_flip_median": round(float(stats["t_flip"].median()), 2),
           "cf_dx": round(float(stats["cf_dx"].mean()), 3),
           "cf_kept_8bit_pct": _pct_se(stats["cf_kept_8bit"]),
           "outside_pct": round(100 * float(stats["outside"].mean()), 1),
           "target_raw_pct": _pct_se(stats["target_raw"]), "target_8bit_pct": _pct_se(stats["target_8bit"])}
    if "target_dc" in stats:
        row["target_dc_pct"] = _pct_se(stats["target_dc"])
    return row


# -- figures ----------------------------------------------------------------------------------
def _gray(ax, img, title=None, **kw):
    img = torch.as_tensor(img).float()
    ax.imshow(to_8bit(img).permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    if title:
        ax.set_title(title, **kw)


def _mosaic(tiles: Tensor, pad: int = 2) -> Tensor:
    """[R, K, C, H, W] tiles (8-bit) as one [H', W'] grey image with white gaps."""
    r, k, _, h, w = tiles.shape
    out = torch.ones(r * (h + pad) - pad, k * (w + pad) - pad)
    for i in range(r):
        for j in range(k):
            out[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = tiles[i, j, 0]
    return out


def plot_prototypes(protos: dict[str, dict], class_names: list[str], rows: list[int] | None = None):
    """``fig_prototypes``: per model a block of decoded class means and temperature samples, one row per class.

    Args:
        protos: panel title (e.g. ``"β=8"``) to a :func:`prototypes` dict, optionally with ``centroids``
            [C, ...] (decoded class centroids of data latents, shown after the means).
        class_names: the C class names (rows).
        rows: the row of panels each panel goes in, in the order of ``protos`` (e.g. the small zoo in row
            0, the large models in row 1); default: all in one row.

    Every image is clamped to [0, 1] for display, except the "stretched" column, which maps each decoded
    mean's own range to black..white so that its shape shows. Each column group's label gives the share
    of its pixels that lay outside [0, 1].
    """
    from .plotting import _plt

    plt = _plt()
    rows = list(rows) if rows is not None else [0] * len(protos)
    if len(rows) != len(protos) or min(rows, default=0) < 0:
        raise InputError(f"rows must give a row index >= 0 for each of the {len(protos)} panels, got {rows}")
    n_rows = max(rows, default=0) + 1
    slots = [(r, rows[:i].count(r)) for i, r in enumerate(rows)]  # (row, column) of each panel
    n = max(c for _, c in slots) + 1  # panels per row
    first = next(iter(protos.values()))
    extra = 2 + ("centroids" in first)
    n_cols = extra + len(first["temperatures"]) * first["samples"].shape[2]
    fig, axes = plt.subplots(n_rows, n, figsize=(0.4 * n_cols * n + 1.0, n_rows * (0.4 * len(class_names) + 1.0)),
                             squeeze=False, layout="constrained")
    for r in range(n_rows):
        for c in range(n):
            if (r, c) not in slots:
                axes[r, c].set_axis_off()
    for (r, j), (title, p) in zip(slots, protos.items()):
        ax = axes[r, j]
        temps, ns = p["temperatures"], p["samples"].shape[2]
        means = torch.nan_to_num(p["means"].double())
        lo, hi = means.flatten(1).min(1).values, means.flatten(1).max(1).values
        stretched = ((means - lo[:, None, None, None]) / (hi - lo).clamp_min(1e-12)[:, None, None, None]).float()
        cols = [to_8bit(p["means"])[:, None], stretched[:, None]]
        labels = [f"mean\n{100 * out_of_range(p['means'])['fraction']:.0f}%", "mean\nstretched"]
        if "centroids" in p:
            cols.append(to_8bit(p["centroids"])[:, None])
            labels.append(f"centroid\n{100 * out_of_range(p['centroids'])['fraction']:.0f}%")
        cols.append(to_8bit(p["samples"].permute(1, 0, 2, 3, 4, 5).flatten(1, 2)))
        for i, t in enumerate(temps):
            frac = out_of_range(p["samples"][i])["fraction"]
            labels += [f"T={t:g}\n{100 * frac:.0f}%"] + [""] * (ns - 1)
        tiles = torch.cat(cols, dim=1)
        ax.imshow(_mosaic(tiles).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.grid(False)
        step = tiles.shape[-1] + 2
        ax.set_xticks([step * i + step / 2 - 1 + (step / 2 if lab.startswith("T=") and ns > 1 else 0)
                       for i, lab in enumerate(labels)], labels, fontsize=6.5)
        ax.xaxis.tick_top()
        ax.tick_params(axis="x", length=0)
        ax.set_yticks([step * i + step / 2 - 1 for i in range(len(class_names))],
                      class_names if j == 0 else [""] * len(class_names), fontsize=8)
        for g in [extra] + [extra + i * ns for i in range(1, len(temps))]:  # separators between the groups
            ax.axvline(step * g - 1.5, color="tab:blue", lw=1)
        ax.set_title(title, fontsize=10)
    fig.supxlabel("the % in each column label: the share of that column group's pixels that lay outside [0, 1] "
                  "(clamped for display)", fontsize=7)
    return fig


def plot_counterfactuals(cf: dict, examples: list[dict], class_names: list[str], title: str = ""):
    """``fig_counterfactuals``: each row an image moved toward its runner-up class, decoded at every step.

    Args:
        cf: :func:`counterfactuals` of the examples' latents.
        examples: per row ``{"label": true class, "kind": "correct" or "misclassified"}``.
        class_names: the class names.
        title: the figure's title.

    Columns: the decoded steps (t = 0 is the input; each titled with the GC's prediction on the 8-bit
    image, in red once it differs from the input's, the first such step framed), the counterfactual at
    t_cf, and its signed pixel difference from the input (red: brighter, blue: darker).
    """
    from .plotting import _plt

    plt = _plt()
    n, s = cf["images"].shape[:2]
    fig, axes = plt.subplots(n, s + 2, figsize=(1.15 * (s + 2) + 1.2, 1.35 * n + 0.5), squeeze=False,
                             layout="constrained")
    x0 = to_8bit(cf["images"][:, 0])
    for i, (row, ex) in enumerate(zip(axes, examples)):
        src, tgt = int(cf["source"][i]), int(cf["target"][i])
        flipped = False
        for j in range(s):
            pred = int(cf["prediction"][i, j])
            color = "black" if pred == src else "#d62728"
            _gray(row[j], cf["images"][i, j], f"t={float(cf['steps'][j]):g}: {class_names[pred]}", fontsize=7,
                  color=color)
            if pred != src and not flipped:
                flipped = True
                for spine in row[j].spines.values():
                    spine.set_visible(True), spine.set_color("#d62728"), spine.set_linewidth(2.5)
        pred = int(cf["cf_prediction"][i])
        _gray(row[s], cf["counterfactual"][i], f"t*={float(cf['t_cf'][i]):.2f}: {class_names[pred]}", fontsize=7,
              color="black" if pred == src else "#d62728")
        diff = (to_8bit(cf["counterfactual"][i]) - x0[i])[0].numpy()
        lim = max(float(abs(diff).max()), 1e-3)
        row[s + 1].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
        row[s + 1].set_xticks([]), row[s + 1].set_yticks([]), row[s + 1].grid(False)
        row[s + 1].spines[:].set_visible(False)
        row[s + 1].set_title(f"Δx (max {lim:.2f})", fontsize=7)
        row[0].set_ylabel(f"{ex['kind']}\ntrue: {class_names[ex['label']]}\n→ {class_names[tgt]}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_latent_space(views: dict[str, dict], labels: Tensor, class_names: list[str], fits: dict | None = None):
    """``fig_latent_space``: per model the 2-D view (:func:`latent_view`) of test and OoD latents.

    Test latents are dots coloured by true class, the class means numbered circles of radius 1 (the
    model's unit variance), the OoD sets dark markers. All panels share latent units. ``fits`` (panel
    title to :func:`class_fit`) adds the RMS deviation and the centroid scale to the titles.
    """
    import numpy as np

    from .plotting import _plt

    plt = _plt()
    n = len(views)
    fig, axes = plt.subplots(1, n, figsize=(3.1 * n + 1.6, 3.4), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("tab10")
    markers = ["x", "+", "^", "s", "D", "v", "*"]
    labels = torch.as_tensor(labels).numpy()
    lim = max(float(np.quantile(np.abs(v["points"].numpy()), 0.995)) for v in views.values()) * 1.1
    for ax, (title, v) in zip(axes[0], views.items()):
        p = v["points"].numpy()
        for c in range(len(class_names)):
            sel = labels == c
            ax.scatter(p[sel, 0], p[sel, 1], s=3, color=cmap(c), alpha=0.35, lw=0,
                       label=f"{c}: {class_names[c]}" if ax is axes[0][0] else None)
        for i, (name, o) in enumerate(v["others"].items()):  # black, one marker per set, hollow where filled
            o, marker = o.numpy(), markers[i % len(markers)]
            filled = marker not in ("x", "+")
            style = {"facecolors": "none", "edgecolors": "black"} if filled else {"color": "black"}
            ax.scatter(o[:, 0], o[:, 1], s=8, marker=marker, lw=0.6, alpha=0.7, **style,
                       label=name if ax is axes[0][-1] else None)
        m = v["means"].numpy()
        for c, (mx, my) in enumerate(m):
            ax.add_patch(plt.Circle((mx, my), 1.0, fill=False, color=cmap(c), lw=1.2))
            ax.text(mx, my, str(c), ha="center", va="center", fontsize=7, fontweight="bold", color=cmap(c))
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
        sub = f"2 axes keep {100 * v['explained']:.0f}% of the class-dim variance"
        if fits and title in fits:
            sub += (f"\nRMS from own class mean {fits[title]['rms_class']:.2f} (model: 1)"
                    f"\nclass centroids {fits[title]['centroid_scale']:.1f}× as far out as the means")
        ax.set_title(f"{title}\n{sub}", fontsize=8)
        ax.set_xlabel("PC 1 (latent units)", fontsize=8)
    axes[0][0].set_ylabel("PC 2 (latent units)", fontsize=8)
    handles, names = [], []
    for ax in dict.fromkeys((axes[0][0], axes[0][-1])):
        h, lab = ax.get_legend_handles_labels()
        handles += h
        names += lab
    legend = fig.legend(handles, names, loc="outside right center", fontsize=7, markerscale=2)
    for h in legend.legend_handles:
        h.set_alpha(1)
    return fig


def plot_evidence(rows: list[dict], labels: list[str], curves: dict[str, Tensor], fc_shares: dict[str, Tensor],
                  fc_dims: int, n_bars: int = 8, class_names: list[str] | None = None):
    """``fig_evidence``: per example the evidence of its top two classes per latent dim, and the top dims decoded.

    Args:
        rows: per example ``{"image", "evidence" [D], "a", "b", "changes" [k, C, H, W] (decoded with the
            top-k dims neutralised, minus the input), "dims" [k], "kind"}``.
        labels: :func:`dim_labels` of the model.
        curves: model name to the median cumulative share of ``|evidence|`` over sorted dims, [D].
        fc_shares: model name to the per-image share of ``|evidence|`` in the ``fc_dims`` DC dims, [N].
        fc_dims: dims with free class means (drawn in a darker colour).
        n_bars: dims shown per example (the rest summed in one bar).
        class_names: the class names.
    """
    import numpy as np

    from .plotting import BETA_COLORS, _plt

    plt = _plt()
    names = class_names or [str(i) for i in range(100)]
    n, k = len(rows), rows[0]["changes"].shape[0]
    fig = plt.figure(figsize=(10.5, 1.55 * n + 2.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.55 * n, 2.2])
    axes = top.subplots(n, 2 + k, squeeze=False, gridspec_kw={"width_ratios": [0.8, 3.2] + [0.8] * k})
    for row, ex in zip(axes, rows):
        a, b = int(ex["a"]), int(ex["b"])
        _gray(row[0], ex["image"], f"{ex['kind']}", fontsize=7)
        row[0].set_ylabel(f"{names[a]}\nvs {names[b]}", fontsize=7)
        e = torch.as_tensor(ex["evidence"]).double()
        order = e.abs().argsort(descending=True)
        shown = order[:n_bars]
        vals = [float(e[d]) for d in shown] + [float(e[order[n_bars:]].sum()), float(e.sum())]
        ticks = [labels[int(d)] for d in shown] + [f"other {len(e) - n_bars}", "total"]
        colors = ["#1f4e79" if int(d) < fc_dims else "#6baed6" for d in shown] + ["#bbbbbb", "black"]
        row[1].bar(range(len(vals)), vals, color=colors)
        row[1].axhline(0, color="black", lw=0.6)
        row[1].set_xticks(range(len(vals)), ticks, rotation=35, ha="right", fontsize=6)
        row[1].tick_params(axis="y", labelsize=6)
        row[1].set_ylabel("nats toward\n" + names[a], fontsize=6)
        row[1].grid(axis="x", visible=False)
        ch = torch.as_tensor(ex["changes"]).float()
        lim = max(float(ch.abs().max()), 1e-3)
        for j in range(k):
            row[2 + j].imshow(ch[j, 0].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            row[2 + j].set_xticks([]), row[2 + j].set_yticks([]), row[2 + j].grid(False)
            row[2 + j].spines[:].set_visible(False)
            d = int(ex["dims"][j])
            row[2 + j].set_title(f"{labels[d]}\n{float(e[d]):+.2f} nats", fontsize=6)
    axes[0][1].set_title("dark blue: DC dims (free means); light blue: other dims; grey: the remaining dims "
                         "summed; black: total", fontsize=7)
    top.suptitle(f"left: the two most likely classes; middle: log p(x|a) - log p(x|b) per latent dim, largest "
                 f"{n_bars} and the rest; right: Δx when one dim is set to the midpoint of the two means "
                 "(red: brighter)", fontsize=8)
    ax_c, ax_s = bottom.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    for name, curve in curves.items():
        beta = name.split("=")[-1].replace("∞", "inf")
        c = curve.numpy()
        ax_c.plot(np.arange(1, len(c) + 1), c, color=BETA_COLORS.get(beta, "#7f7f7f"), label=name)
    ax_c.set_xscale("log")
    ax_c.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax_c.set_xlabel("number of latent dims (sorted by abs evidence)")
    ax_c.set_ylabel("share of abs evidence\n(median over test images)")
    ax_c.legend(fontsize=7)
    shares = [v.numpy() * 100 for v in fc_shares.values()]
    ax_s.boxplot(shares, showfliers=False)
    ax_s.set_xticks(range(1, len(shares) + 1), list(fc_shares), fontsize=7)
    ax_s.axhline(100 * fc_dims / len(labels), color="grey", lw=0.6, ls=":")
    ax_s.set_ylabel(f"share of abs evidence in\nthe {fc_dims} DC dims (%)")
    ax_s.set_title(f"dotted: {fc_dims} of {len(labels)} dims", fontsize=7)
    return fig
