"""Per-pixel attributions of a decision (top class against the runner-up) and how faithful they are.

The explained quantity is the margin ``f(x) = s_top(x) - s_runner(x)`` between the two most likely classes of
the clean image. For a GC the scores ``s`` are its class log-likelihoods, so ``f`` is the log-likelihood
ratio ``log p(x|top) - log p(x|runner-up)`` (nats; with the uniform prior it equals the difference of the GC's
logits, and the log-det of the flow cancels). For a feed-forward classifier ``s`` are its logits.

Attributions come from captum (:data:`METHODS`): saliency ``|df/dx|``, integrated gradients from a baseline
image ``b`` (complete: the attributions add up to ``f(x) - f(b)`` up to captum's convergence delta) and
gradient times (input - baseline), which is captum's ``InputXGradient`` taken with the baseline as the origin.
For a GC, integrated gradients of the log-likelihood ratio is the GC-native explanation: it splits the
GC's evidence for its decision, in nats, over the pixels.

Faithfulness is scored with deletion and insertion curves (Petsiuk et al., "RISE", BMVC 2018): the pixels
are set to the baseline (deletion) or copied onto it (insertion) in order of decreasing attribution, in
``steps`` equal steps, and the model's margin is recorded after each. :func:`decision_probability` maps the
margin to the two-class posterior ``sigmoid(f) = p(top | x, {top, runner-up})`` in [0, 1] (0.5: a tie), so
that curves of different models share one scale. A faithful attribution makes the deletion curve fall
fast (low area) and the insertion curve rise fast (high area). Written here rather than taken from quantus
(broken on numpy 2.4): the metric is a few vectorised lines and is tested on a model whose answer is known.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .errors import InputError, check_batch, check_batch_size

__all__ = ["METHODS", "FAITHFULNESS_HEADERS", "Margin", "decision_pair", "margin", "attribute", "completeness_gap",
           "random_attribution", "pixel_order", "perturbation_curves", "decision_probability", "auc",
           "faithfulness_study", "STUDY_METHODS", "faithfulness_row", "pick_examples", "plot_heatmaps"]

METHODS = {"saliency": "saliency (absolute gradient)", "integrated_gradients": "integrated gradients",
           "input_x_gradient": "gradient × (input − baseline)"}

FAITHFULNESS_HEADERS = {
    "model": "model", "method": "attribution", "n": "n",
    "deletion_auc": "deletion AUC ↓", "deletion_sem": "± SEM",
    "insertion_auc": "insertion AUC ↑", "insertion_sem": "± SEM",
    "difference": "insertion − deletion ↑", "difference_sem": "± SEM",
    "flipped_pct": "flipped by the first deletion step (%)", "flipped_se": "± SE",
    "completeness_gap": "completeness gap: median abs(Σ attr − f(x) + f(b)) (nats)",
}


def _device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _check_images(x, name: str = "x") -> Tensor:
    return check_batch(x, f"images [N, C, H, W] for {name}", floating=True)


def _check_baseline(baseline, x: Tensor) -> Tensor:
    if not isinstance(baseline, Tensor) or baseline.dim() != 4 or tuple(baseline.shape[1:]) != tuple(x.shape[1:]) \
            or len(baseline) not in (1, len(x)):
        shape = tuple(baseline.shape) if isinstance(baseline, Tensor) else type(baseline).__name__
        raise InputError(f"baseline must be one image [1, {', '.join(map(str, x.shape[1:]))}] or one per input "
                         f"[{len(x)}, ...], got {shape}")
    return baseline.to(x.dtype)


def _check_pair(top, runner, n: int) -> tuple[Tensor, Tensor]:
    top, runner = torch.as_tensor(top).long().reshape(-1), torch.as_tensor(runner).long().reshape(-1)
    if len(top) != n or len(runner) != n:
        raise InputError(f"top and runner need one class per image ({n}), got {len(top)} and {len(runner)}")
    if bool((top == runner).any()):
        raise InputError("top and runner must differ for every image; take them from decision_pair()")
    return top, runner


_check_batch_size = check_batch_size


class Margin(nn.Module):
    """``f(x) = s(x) @ weights`` per image, [B]: with ``weights = onehot(top) - onehot(runner)`` the margin.

    ``s`` is ``model.class_log_likelihoods`` where the model has it (a GC: ``f`` is then the log-likelihood
    ratio) and ``model(x)`` (logits) otherwise. The weights are a forward argument so that captum repeats
    them with the inputs it builds (``additional_forward_args``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def scores(self, x: Tensor) -> Tensor:
        """The per-class scores [B, C]: class log-likelihoods of a GC, logits of any other model."""
        if hasattr(self.model, "class_log_likelihoods"):
            return self.model.class_log_likelihoods(x)
        return self.model(x)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return (self.scores(x) * weights.to(x.dtype)).sum(1)


class _Shifted(nn.Module):
    """``g(d) = f(baseline + d)``: captum's InputXGradient on ``d = x - baseline`` gives (x - b) * df/dx."""

    def __init__(self, margin_fn: Margin, baseline: Tensor):
        super().__init__()
        self.margin_fn, self.baseline = margin_fn, baseline

    def forward(self, d: Tensor, weights: Tensor) -> Tensor:
        return self.margin_fn(self.baseline + d, weights)  # = x up to rounding (models allow 1e-6)


def _weights(top: Tensor, runner: Tensor, num_classes: int) -> Tensor:
    if int(torch.cat([top, runner]).min()) < 0 or int(torch.cat([top, runner]).max()) >= num_classes:
        raise InputError(f"top and runner must be class indices in 0..{num_classes - 1}")
    eye = torch.eye(num_classes)
    return eye[top] - eye[runner]


@torch.no_grad()
def decision_pair(model: nn.Module, x: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """The most likely and the second most likely class of every image, ``(top, runner)``, each [N] int64.

    Ranked by the scores :class:`Margin` explains (for a GC its class log-likelihoods, which with the
    uniform prior rank the classes like its posterior).
    """
    _check_images(x)
    m, device = Margin(model), _device(model)
    scores = torch.cat([m.scores(b.to(device)).float().cpu() for b in x.split(_check_batch_size(batch_size))])
    if scores.shape[1] < 2:
        raise InputError(f"a decision needs at least two classes, the model gives {scores.shape[1]}")
    top2 = scores.topk(2, dim=1).indices
    return top2[:, 0], top2[:, 1]


@torch.no_grad()
def margin(model: nn.Module, x: Tensor, top, runner, batch_size: int = 500) -> Tensor:
    """``f(x) = s_top(x) - s_runner(x)`` [N] on the CPU (float32): the quantity the attributions explain."""
    _check_images(x)
    top, runner = _check_pair(top, runner, len(x))
    m, device = Margin(model), _device(model)
    out = []
    for xb, t, r in zip(x.split(batch_size), top.split(batch_size), runner.split(batch_size)):
        s = m.scores(xb.to(device)).float().cpu()
        if int(torch.cat([t, r]).min()) < 0 or int(torch.cat([t, r]).max()) >= s.shape[1]:
            raise InputError(f"top and runner must be class indices in 0..{s.shape[1] - 1}")
        out.append(s.gather(1, t[:, None])[:, 0] - s.gather(1, r[:, None])[:, 0])
    return torch.cat(out)


def attribute(model: nn.Module, x: Tensor, method: str, baseline: Tensor, top, runner, n_steps: int = 16,
              batch_size: int = 100, return_delta: bool = False):
    """Per-pixel attributions of the margin ``f`` (top class against runner-up) with a captum method.

    Args:
        model: a GC (its log-likelihood ratio is explained) or a classifier returning logits.
        x: images [N, C, H, W].
        method: a key of :data:`METHODS`: ``saliency`` (captum ``Saliency``, absolute gradient),
            ``integrated_gradients`` (``IntegratedGradients`` from ``baseline``, Gauss-Legendre rule) or
            ``input_x_gradient`` (``InputXGradient`` on ``x - baseline``: (x - b) * df/dx at x).
        baseline: the reference image, [1, C, H, W] or [N, C, H, W].
        top, runner: the two classes of each image [N], e.g. from :func:`decision_pair`.
        n_steps: integration points of integrated gradients.
        batch_size: images per call (integrated gradients evaluates ``batch_size`` images at a time).
        return_delta: also return captum's convergence delta [N] (integrated gradients only):
            ``sum(attributions) - (f(x) - f(baseline))``.

    Returns:
        attributions [N, C, H, W] on the CPU, float32 (and the deltas [N] with ``return_delta``).

    Raises:
        InputError: an unknown method, mismatched shapes, ``top == runner``, ``n_steps`` < 1, or
            ``return_delta`` for a method that has no delta.
    """
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    _check_images(x)
    baseline = _check_baseline(baseline, x)
    top, runner = _check_pair(top, runner, len(x))
    batch_size = _check_batch_size(batch_size)
    if method not in METHODS:
        raise InputError(f"unknown attribution method {method!r}; use one of {', '.join(METHODS)}")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise InputError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if return_delta and method != "integrated_gradients":
        raise InputError(f"only integrated_gradients has a convergence delta, not {method!r}")
    device, f = _device(model), Margin(model)
    weights = None
    attrs, deltas = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device)
        bb = (baseline if len(baseline) == 1 else baseline[start:start + batch_size]).to(device)
        if weights is None:
            with torch.no_grad():
                num_classes = f.scores(xb[:1]).shape[1]
            weights = _weights(top, runner, num_classes)
        wb = weights[start:start + batch_size].to(device)
        if method == "saliency":
            a = Saliency(f).attribute(xb.clone().requires_grad_(True), additional_forward_args=(wb,), abs=True)
        elif method == "input_x_gradient":
            a = InputXGradient(_Shifted(f, bb)).attribute((xb - bb).requires_grad_(True), additional_forward_args=(wb,))
        else:
            a, d = IntegratedGradients(f).attribute(xb, bb.expand_as(xb), additional_forward_args=(wb,),
                                                    n_steps=n_steps, internal_batch_size=batch_size,
                                                    return_convergence_delta=True)
            deltas.append(d.detach().float().cpu())
        attrs.append(a.detach().float().cpu())
    attributions = torch.cat(attrs)
    return (attributions, torch.cat(deltas)) if return_delta else attributions


def _check_attributions(attributions, x: Tensor) -> None:
    if not isinstance(attributions, Tensor) or attributions.shape != x.shape:
        raise InputError(f"attributions must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(attributions.shape) if isinstance(attributions, Tensor) else attributions}")


def completeness_gap(model: nn.Module, x: Tensor, attributions: Tensor, baseline: Tensor, top, runner,
                     batch_size: int = 500) -> Tensor:
    """``sum(attributions) - (f(x) - f(baseline))`` per image [N] (float64): 0 for a complete attribution."""
    _check_images(x)
    _check_attributions(attributions, x)
    baseline = _check_baseline(baseline, x)
    top, runner = _check_pair(top, runner, len(x))
    f_x = margin(model, x, top, runner, batch_size).double()
    f_b = margin(model, baseline.expand_as(x), top, runner, batch_size).double()
    return attributions.double().flatten(1).sum(1) - (f_x - f_b)


def random_attribution(x: Tensor, seed: int = 0) -> Tensor:
    """Uniform random attributions of the shape of ``x``: the reference order that knows nothing."""
    _check_images(x)
    g = torch.Generator().manual_seed(seed)
    return torch.rand(x.shape, generator=g)


def pixel_order(attributions: Tensor, seed: int = 0) -> Tensor:
    """Pixel indices (of the flattened H x W grid) by decreasing attribution, [N, H * W].

    A pixel's attribution is the sum over its channels (a pixel is removed in every channel at once);
    equal attributions (e.g. zeros) come in a seeded random order rather than top-left first.
    """
    _check_images(attributions, "attributions")
    a = attributions.detach().float().cpu().sum(1).flatten(1)  # [N, HW]
    perm = torch.randperm(a.shape[1], generator=torch.Generator().manual_seed(seed))
    idx = torch.argsort(a[:, perm], dim=1, descending=True, stable=True)
    return perm[idx]


@torch.no_grad()
def perturbation_curves(model: nn.Module, x: Tensor, attributions: Tensor, baseline: Tensor, top, runner,
                        steps: int = 10, batch_size: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    """Deletion and insertion curves of the margin ``f`` for pixels taken in order of decreasing attribution.

    Step ``j`` of ``steps`` takes the first ``round(j * H * W / steps)`` pixels of :func:`pixel_order`:
    deletion sets them to the baseline in ``x``, insertion copies them from ``x`` onto the baseline. Step 0
    of deletion (and the last of insertion) is ``x`` itself, the last of deletion (first of insertion) the
    baseline.

    Args:
        model, x, baseline, top, runner: as in :func:`attribute`.
        attributions: [N, C, H, W], larger = more evidence for the top class.
        steps: number of steps k (the curves have k + 1 points).
        batch_size: images per forward pass.
        seed: seed of the order among equal attributions.

    Returns:
        dict with ``fraction`` (of the pixels taken, [k + 1]) and the margins ``deletion`` and ``insertion``
        [N, k + 1] (float64, nats for a GC); map them with :func:`decision_probability` before :func:`auc`.
    """
    _check_images(x)
    _check_attributions(attributions, x)
    baseline = _check_baseline(baseline, x)
    top, runner = _check_pair(top, runner, len(x))
    batch_size = _check_batch_size(batch_size)
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    n, c, h, w = x.shape
    counts = torch.round(torch.linspace(0, h * w, steps + 1, dtype=torch.float64)).long()
    rank = torch.empty((n, h * w), dtype=torch.long)
    rank.scatter_(1, pixel_order(attributions, seed), torch.arange(h * w).expand(n, -1).contiguous())
    f_x = margin(model, x, top, runner, batch_size).double()
    f_b = margin(model, baseline.expand_as(x), top, runner, batch_size).double()
    inner = counts[1:-1]  # the steps between x and the baseline
    deletion, insertion = [], []
    per_chunk = max(1, batch_size // max(1, 2 * len(inner)))  # images whose perturbed copies fill one batch
    for start in range(0, n, per_chunk):
        sl = slice(start, start + per_chunk)
        xb, m = x[sl], len(x[sl])
        bb = baseline if len(baseline) == 1 else baseline[sl]
        taken = (rank[sl][:, None, :] < inner[None, :, None]).view(m, len(inner), 1, h, w)  # [m, k-1, 1, H, W]
        deleted = torch.where(taken, bb[:, None], xb[:, None])
        inserted = torch.where(taken, xb[:, None], bb[:, None])
        both = torch.cat([deleted, inserted], 1).flatten(0, 1)  # [m * 2(k-1), C, H, W]
        t = top[sl].repeat_interleave(2 * len(inner))
        r = runner[sl].repeat_interleave(2 * len(inner))
        f = margin(model, both, t, r, batch_size).double().view(m, 2, len(inner)) if len(inner) else \
            torch.zeros(m, 2, 0, dtype=torch.float64)
        deletion.append(torch.cat([f_x[sl, None], f[:, 0], f_b[sl, None]], 1))
        insertion.append(torch.cat([f_b[sl, None], f[:, 1], f_x[sl, None]], 1))
    return {"fraction": (counts.double() / (h * w)).numpy(), "deletion": torch.cat(deletion).numpy(),
            "insertion": torch.cat(insertion).numpy()}


#: the orders :func:`faithfulness_study` scores, in its order: the captum methods, then the random reference.
STUDY_METHODS = ("integrated_gradients", "saliency", "input_x_gradient", "random")
#: the methods that claim completeness (their attributions add up to f(x) - f(b)).
COMPLETE_METHODS = ("integrated_gradients", "input_x_gradient")


def faithfulness_study(model: nn.Module, x: Tensor, baseline: Tensor, *, n_steps: int = 16, steps: int = 10,
                       batch_size: int = 250, seed: int = 0, keep_maps: bool = True) -> dict:
    """The heatmaps chapter's study of one model: its decisions, every method's attributions and their
    deletion/insertion curves.

    For each image the decision pair (:func:`decision_pair`); the attributions of :data:`STUDY_METHODS`
    (integrated gradients with ``n_steps`` points and its convergence delta, saliency, gradient x (input -
    baseline), and a seeded random order); and the :func:`perturbation_curves` of each (``steps`` steps,
    pixel-order seed ``seed``). What ``python -m gclib.zoo evaluate NAME --what faithfulness`` stores for
    models too costly to study live in the book (their maps are not stored: ``keep_maps=False``).

    Returns:
        dict with ``top``, ``runner`` [N]; ``delta`` [N] (captum's convergence delta of integrated gradients);
        ``sums`` {method: [N] float64, the sum of its attributions}; ``curves`` {method:
        :func:`perturbation_curves`}; ``gaps`` {method: [N]} for :data:`COMPLETE_METHODS`: the sum of the
        attributions minus the curves' own ``f(x) - f(b)``; and ``maps`` {method: [N, C, H, W]} with
        ``keep_maps``.
    """
    top, runner = decision_pair(model, x, batch_size)
    maps = {}
    maps["integrated_gradients"], delta = attribute(model, x, "integrated_gradients", baseline, top, runner,
                                                    n_steps=n_steps, batch_size=batch_size, return_delta=True)
    for method in ("saliency", "input_x_gradient"):
        maps[method] = attribute(model, x, method, baseline, top, runner, batch_size=batch_size)
    maps["random"] = random_attribution(x, seed)
    curves, sums, gaps = {}, {}, {}
    for method in STUDY_METHODS:
        curves[method] = perturbation_curves(model, x, maps[method], baseline, top, runner, steps, batch_size, seed)
        sums[method] = maps[method].double().flatten(1).sum(1).numpy()
        if method in COMPLETE_METHODS:
            d = curves[method]["deletion"]
            gaps[method] = sums[method] - (d[:, 0] - d[:, -1])
    out = {"top": top, "runner": runner, "delta": delta, "sums": sums, "curves": curves, "gaps": gaps}
    if keep_maps:
        out["maps"] = maps
    return out


def decision_probability(margins) -> np.ndarray:
    """``sigmoid(margin)``: the two-class posterior p(top | x, {top, runner-up}), in [0, 1]."""
    from scipy.special import expit

    return expit(np.asarray(margins, dtype=np.float64))


def auc(curves, fraction) -> np.ndarray:
    """Area under each curve over the fraction of pixels taken, by the trapezoid rule, [N] (or a float)."""
    curves, fraction = np.asarray(curves, dtype=np.float64), np.asarray(fraction, dtype=np.float64)
    if fraction.ndim != 1 or len(fraction) < 2 or curves.shape[-1] != len(fraction) or np.any(np.diff(fraction) < 0):
        raise InputError(f"curves [..., k + 1] need k + 1 >= 2 increasing fractions, got curves {curves.shape} "
                         f"and fractions {fraction.shape}")
    if not np.isfinite(curves).all():
        raise InputError("the curves contain NaN or inf values")
    return np.trapezoid(curves, fraction, axis=-1)


def _mean_sem(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    sem = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), sem


def faithfulness_row(model: str, method: str, curves: dict, completeness=None, digits: int = 3) -> dict:
    """One row of ``table_faithfulness``: mean and standard error of the mean of the per-image AUCs.

    Args:
        model, method: the row's names.
        curves: :func:`perturbation_curves` of N images (margins); the AUCs are taken of their
            :func:`decision_probability`, on the same [0, 1] scale for every model.
        completeness: per-image :func:`completeness_gap` [N], or None where the method makes no such claim.
        digits: rounding of the numbers.

    Returns:
        dict with the keys of :data:`FAITHFULNESS_HEADERS`; ``difference`` is the per-image insertion AUC
        minus deletion AUC (higher = more faithful), its SEM computed over the same images (paired);
        ``flipped_pct`` is the share of images whose decision the first deletion step already turns to the
        runner-up (margin < 0; scale-free, unlike the AUCs), with its binomial standard error.
    """
    fraction, deletion, insertion = curves["fraction"], curves["deletion"], curves["insertion"]
    d_auc = auc(decision_probability(deletion), fraction)
    i_auc = auc(decision_probability(insertion), fraction)
    if d_auc.shape != i_auc.shape or d_auc.ndim != 1 or len(fraction) < 3:
        raise InputError(f"deletion and insertion need the same [N, k + 1] shape with k >= 2, got "
                         f"{np.shape(deletion)} and {np.shape(insertion)}")
    row = {"model": model, "method": method, "n": len(d_auc)}
    for key, values in (("deletion", d_auc), ("insertion", i_auc), ("difference", i_auc - d_auc)):
        mean, sem = _mean_sem(values)
        row["difference" if key == "difference" else f"{key}_auc"] = round(mean, digits)
        row[f"{key}_sem"] = round(sem, digits)
    flipped = float((np.asarray(deletion)[:, 1] < 0).mean())
    row["flipped_pct"] = round(100 * flipped, 1)
    row["flipped_se"] = round(100 * math.sqrt(flipped * (1 - flipped) / len(d_auc)), 1)
    gap = "" if completeness is None else round(float(np.median(np.abs(np.asarray(completeness)))), digits)
    row["completeness_gap"] = gap
    return row


def pick_examples(correct: Tensor, n_correct: int = 3, seed: int = 0) -> list[int]:
    """Indices of the figure's images by a fixed rule: in a seeded random order of the images, the first
    ``n_correct`` that every model classifies correctly, then the first the first model gets wrong.

    Args:
        correct: [N, M] bool, whether model m classifies image i correctly (column 0: the GC).
        n_correct: how many correctly classified images.
        seed: seed of the order.

    Raises:
        InputError: too few images meet the rule.
    """
    correct = torch.as_tensor(correct, dtype=torch.bool)
    if correct.dim() != 2 or len(correct) == 0:
        raise InputError(f"correct must be a [N, M] bool matrix, got shape {tuple(correct.shape)}")
    order = torch.randperm(len(correct), generator=torch.Generator().manual_seed(seed))
    all_right = [int(i) for i in order if bool(correct[i].all())][:n_correct]
    wrong = [int(i) for i in order if not bool(correct[i, 0])][:1]
    if len(all_right) < n_correct or not wrong:
        raise InputError(f"need {n_correct} images all models get right and one the first model gets wrong; "
                         f"found {len(all_right)} and {len(wrong)}: use more images")
    return all_right + wrong


def plot_heatmaps(images: Tensor, labels, columns: list[dict], curves: dict, class_names,
                  colors: dict | None = None):
    """``fig_heatmaps``: attribution maps of a few images, and the mean deletion and insertion curves.

    Args:
        images: [R, C, H, W] in [0, 1]; their true ``labels`` [R].
        columns: one dict per heatmap column with ``title``, ``maps`` ([R, C, H, W] attributions) and
            ``pairs`` ((top [R], runner [R]) of the model that column explains).
        curves: ``{model: {method: {"fraction": [k + 1], "deletion": [k + 1], "insertion": [k + 1]}}}``,
            the mean curves (on the two-class posterior scale), one panel per model.
        class_names: names of the classes.
        colors: ``{method: color}`` of the curves.

    Each map uses a diverging colour map centred at 0, scaled to the 99th percentile of its own absolute
    values (the few pixels beyond saturate): red pixels are evidence for the top class, blue for the
    runner-up (saliency is the absolute gradient: red only).
    """
    from .plotting import _plt

    plt = _plt()
    n_rows, n_cols = len(images), len(columns) + 1
    fig = plt.figure(figsize=(1.25 * n_cols + 0.3, 1.45 * n_rows + 2.9), layout="constrained")
    top_fig, bottom_fig = fig.subfigures(2, 1, height_ratios=[1.45 * n_rows, 2.9])
    axes = top_fig.subplots(n_rows, n_cols, squeeze=False)

    def short(k):
        return str(class_names[int(k)])

    for i in range(n_rows):
        ax = axes[i, 0]
        ax.imshow(images[i].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"label: {short(labels[i])}", fontsize=7.5)
        for j, col in enumerate(columns, start=1):
            ax = axes[i, j]
            a = col["maps"][i].sum(0).numpy()
            scale = float(np.quantile(np.abs(a), 0.99)) or float(np.abs(a).max()) or 1.0  # a few pixels saturate
            ax.imshow(a, cmap="RdBu_r", vmin=-scale, vmax=scale)
            top, runner = col["pairs"]
            wrong = int(top[i]) != int(labels[i])
            ax.set_xlabel(f"{short(top[i])} vs {short(runner[i])}", fontsize=6.5, labelpad=1,
                          color="#c0392b" if wrong else "black")
            if i == 0:
                ax.set_title(col["title"], fontsize=7.5)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
    top_fig.suptitle("attributions of the decision top class vs runner-up (under each map; red: a wrong top "
                     "class). Red: evidence for the top class, blue: for the runner-up", fontsize=8)

    panels = bottom_fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (model_name, by_method) in zip(panels, curves.items()):
        for j, (method, c) in enumerate(by_method.items()):
            color, lw = (colors or {}).get(method), 2.6 if j == 0 else 1.3  # the first drawn wide: never hidden
            (line,) = ax.plot(c["fraction"], c["deletion"], "-", color=color, lw=lw, label=method)
            ax.plot(c["fraction"], c["insertion"], "--", color=line.get_color(), lw=lw)
        ax.set_title(model_name, fontsize=9)
        ax.set_xlabel("fraction of pixels deleted / inserted")
        ax.set_ylim(-0.02, 1.02)
    panels[0].set_ylabel("mean p(top | x, {top, runner-up})")
    handles, names = panels[0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [Line2D([], [], color="k", ls="-"), Line2D([], [], color="k", ls="--")]
    names += ["deletion (lower = more faithful)", "insertion (higher = more faithful)"]
    bottom_fig.legend(handles, names, loc="outside right center", fontsize=7)
    return fig
