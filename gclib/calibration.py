"""Calibration of a classifier's posterior: reliability diagrams, ECE, MCE, overconfidence and NLL.

Functions, tensors in, numbers or tensors out. Every metric takes ``probs`` (the posterior p(y|x),
[N, C], rows summing to one) and ``labels`` ([N], integers in ``[0, C)``), so a generative classifier
and a feed-forward one are measured the same way. The book's ``table_calibration`` and
``fig_calibration`` (``notebooks/calibration.py``) are built from :func:`calibration_row`,
:func:`reliability` and :func:`plot_calibration`.

Definitions (N predictions, confidence = the largest probability of a row, a prediction is correct when
its arg-max is the label):

- Reliability: the confidences are put into ``n_bins`` equal-width bins on [0, 1] (right-closed,
  (0, 1/n], (1/n, 2/n], ...); per bin the mean confidence, the accuracy and the count.
- ECE (expected calibration error): the count-weighted mean over bins of
  abs(accuracy - mean confidence) (Guo et al. 2017).
- MCE (maximum calibration error): the largest abs(accuracy - mean confidence) over non-empty bins.
- Overconfidence (the IB-INN paper's definition, Ardizzone et al. 2020): among the predictions with
  confidence above 1 - ``threshold``, the error rate divided by ``threshold``. A calibrated model has
  at most 1 (its confident predictions are wrong at most ``threshold`` of the time); 10 means they are
  wrong ten times as often as the threshold allows.
- NLL: the mean of -log p(label | x), in nats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import explain
from .errors import InputError

__all__ = ["reliability", "ece", "mce", "overconfidence", "nll", "bootstrap_se", "calibration_row",
           "predict_probs", "plot_calibration", "CALIBRATION_HEADERS", "OVERCONFIDENCE_THRESHOLD"]

OVERCONFIDENCE_THRESHOLD = 0.003
SUM_TOLERANCE = 1e-3

CALIBRATION_HEADERS = {
    "model": "model", "beta": "β", "n": "n",
    "accuracy_pct": "accuracy (%)", "accuracy_se": "± SE",
    "ece_pct": "ECE (%)", "ece_se": "± SE",
    "mce_pct": "MCE (%)", "mce_se": "± SE",
    "overconfidence": "overconfidence", "overconfidence_se": "± SE", "n_confident": "n conf. > 0.997",
    "nll": "NLL (nats)", "nll_se": "± SE",
}


# -- checks --------------------------------------------------------------------------------------
def _check(probs, labels) -> tuple[Tensor, Tensor]:
    """``probs`` as float64 [N, C] and ``labels`` as int64 [N] on the CPU, or an InputError."""
    if not isinstance(probs, Tensor):
        probs = torch.as_tensor(probs)
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise InputError(f"probs must be a non-empty [N, C] tensor of probabilities with C >= 2, "
                         f"got shape {tuple(probs.shape)}")
    if labels.dim() != 1 or labels.shape[0] != probs.shape[0]:
        raise InputError(f"labels must be [N] with N = {probs.shape[0]} (the rows of probs), "
                         f"got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels must be integer class indices, got dtype {labels.dtype}")
    probs, labels = probs.detach().cpu().double(), labels.detach().cpu().long()
    n_classes = probs.shape[1]
    if labels.min() < 0 or labels.max() >= n_classes:
        raise InputError(f"labels must be in [0, {n_classes}) for {n_classes} classes, "
                         f"got values from {int(labels.min())} to {int(labels.max())}")
    if not torch.isfinite(probs).all():
        raise InputError("probs contains NaN or inf")
    if probs.min() < 0 or probs.max() > 1 + SUM_TOLERANCE:
        raise InputError(f"probs must lie in [0, 1], got values from {float(probs.min()):.4g} to "
                         f"{float(probs.max()):.4g} (pass softmax probabilities, not logits)")
    off = (probs.sum(1) - 1).abs()
    if off.max() > SUM_TOLERANCE:
        i = int(off.argmax())
        raise InputError(f"every row of probs must sum to 1 within {SUM_TOLERANCE}; row {i} sums to "
                         f"{float(probs[i].sum()):.6g} (pass softmax probabilities, not logits)")
    return probs, labels


def _check_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise InputError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return n_bins


def _check_threshold(threshold) -> float:
    if not 0 < threshold < 1:
        raise InputError(f"threshold must be in (0, 1), got {threshold!r}")
    return float(threshold)


# -- the metrics, vectorised over rows of resamples ------------------------------------------------
def _summary(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Confidence [N], correctness [N] (bool) and the probability of the label [N], from checked inputs."""
    conf, pred = probs.max(1)
    return conf, pred == labels, probs.gather(1, labels[:, None])[:, 0]


def _bin_index(conf: Tensor, n_bins: int) -> Tensor:
    inner = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1]
    return torch.bucketize(conf, inner, right=False)  # right-closed bins: (lo, hi]


def _bin_sums(bins: Tensor, conf: Tensor, correct: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of [R, N] inputs: count, sum of confidences and number correct per bin, each [R, n_bins]."""
    rows = bins.shape[0]
    flat = (bins + n_bins * torch.arange(rows)[:, None]).flatten()
    size = rows * n_bins
    count = torch.bincount(flat, minlength=size).view(rows, n_bins).double()
    sum_conf = torch.bincount(flat, weights=conf.flatten(), minlength=size).view(rows, n_bins)
    sum_acc = torch.bincount(flat, weights=correct.flatten().double(), minlength=size).view(rows, n_bins)
    return count, sum_conf, sum_acc


def _ece_mce(bins: Tensor, conf: Tensor, correct: Tensor, n_bins: int) -> tuple[Tensor, Tensor]:
    count, sum_conf, sum_acc = _bin_sums(bins, conf, correct, n_bins)
    gap_sum = (sum_acc - sum_conf).abs()
    ece_ = gap_sum.sum(1) / conf.shape[1]
    mce_ = torch.where(count > 0, gap_sum / count.clamp(min=1), torch.zeros_like(count)).max(1).values
    return ece_, mce_


def _overconfidence(conf: Tensor, correct: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    confident = conf > 1 - threshold
    n = confident.sum(1)
    errors = (confident & ~correct).sum(1).double()
    value = torch.where(n > 0, errors / n.clamp(min=1) / threshold, torch.full_like(errors, math.nan))
    return value, n


def _nll(p_label: Tensor) -> Tensor:
    tiny = torch.finfo(p_label.dtype).tiny
    return -p_label.clamp(min=tiny).log().mean(-1)


# -- public metrics --------------------------------------------------------------------------------
def reliability(probs, labels, n_bins: int = 15) -> dict[str, Tensor]:
    """The reliability diagram's numbers: equal-width bins on the confidence (the largest probability).

    Args:
        probs: posterior p(y|x), [N, C], rows summing to one (within 1e-3).
        labels: class indices [N].
        n_bins: number of equal-width, right-closed bins on [0, 1].

    Returns:
        dict with ``edges`` ([n_bins + 1]), ``confidence`` (mean confidence per bin), ``accuracy``
        (fraction correct per bin; both NaN for an empty bin) and ``count`` (predictions per bin, int64),
        each [n_bins].

    Raises:
        InputError: shapes do not match, rows do not sum to one, labels out of range, or bad ``n_bins``.
    """
    probs, labels = _check(probs, labels)
    n_bins = _check_bins(n_bins)
    conf, correct, _ = _summary(probs, labels)
    count, sum_conf, sum_acc = _bin_sums(_bin_index(conf, n_bins)[None], conf[None], correct[None], n_bins)
    count, sum_conf, sum_acc = count[0], sum_conf[0], sum_acc[0]
    empty = count == 0
    nan = torch.full_like(count, math.nan)
    return {"edges": torch.linspace(0, 1, n_bins + 1, dtype=torch.float64),
            "confidence": torch.where(empty, nan, sum_conf / count.clamp(min=1)),
            "accuracy": torch.where(empty, nan, sum_acc / count.clamp(min=1)),
            "count": count.long()}


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error: the count-weighted mean of abs(accuracy - confidence) over the bins.

    Bins as in :func:`reliability`. Returns a fraction in [0, 1] (not a percentage).

    Raises:
        InputError: as :func:`reliability`.
    """
    probs, labels = _check(probs, labels)
    n_bins = _check_bins(n_bins)
    conf, correct, _ = _summary(probs, labels)
    return float(_ece_mce(_bin_index(conf, n_bins)[None], conf[None], correct[None], n_bins)[0][0])


def mce(probs, labels, n_bins: int = 15) -> float:
    """Maximum calibration error: the largest abs(accuracy - confidence) over the non-empty bins.

    Bins as in :func:`reliability`. A bin with few predictions can dominate it: read it with its count.

    Raises:
        InputError: as :func:`reliability`.
    """
    probs, labels = _check(probs, labels)
    n_bins = _check_bins(n_bins)
    conf, correct, _ = _summary(probs, labels)
    return float(_ece_mce(_bin_index(conf, n_bins)[None], conf[None], correct[None], n_bins)[1][0])


def overconfidence(probs, labels, threshold: float = OVERCONFIDENCE_THRESHOLD,
                   return_count: bool = False):
    """The IB-INN overconfidence: the error rate among predictions with confidence above 1 - ``threshold``,
    divided by ``threshold``.

    1 means the confident predictions are wrong exactly as often as the threshold allows; a calibrated
    model has at most 1 and an overconfident one more.

    Args:
        probs: posterior p(y|x), [N, C], rows summing to one (within 1e-3).
        labels: class indices [N].
        threshold: the allowed error rate (0.003 in the paper: confidence above 99.7 %).
        return_count: also return how many predictions are that confident.

    Returns:
        The overconfidence as a float; NaN when no prediction is that confident (the ratio is then
        undefined, not 0). With ``return_count``, a tuple ``(value, count)``.

    Raises:
        InputError: as :func:`reliability`, or ``threshold`` outside (0, 1).
    """
    probs, labels = _check(probs, labels)
    threshold = _check_threshold(threshold)
    conf, correct, _ = _summary(probs, labels)
    value, n = _overconfidence(conf[None], correct[None], threshold)
    return (float(value[0]), int(n[0])) if return_count else float(value[0])


def nll(probs, labels) -> float:
    """Negative log-likelihood of the labels: the mean of -log p(label | x), in nats.

    The probabilities are used in float64 and clamped below at the smallest positive float64
    (about 2.2e-308), so a probability that underflowed to 0 counts as about 708 nats instead of inf.
    Pass float64 probabilities (e.g. from :func:`predict_probs`) so that only true underflow is clamped.

    Raises:
        InputError: as :func:`reliability`.
    """
    probs, labels = _check(probs, labels)
    return float(_nll(_summary(probs, labels)[2]))


def _resample_indices(n_items: int, n: int, seed: int) -> Tensor:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InputError(f"the number of bootstrap resamples must be an integer >= 2, got {n!r}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randint(n_items, (n, n_items), generator=generator)


def _se(values: Tensor) -> float:
    values = values[torch.isfinite(values)]
    return float(values.std()) if values.numel() >= 2 else math.nan


def bootstrap_se(metric_fn, probs, labels, n: int = 200, seed: int = 0) -> float:
    """Bootstrap standard error of ``metric_fn(probs, labels)``: the standard deviation of the metric
    over ``n`` resamples of the images (drawn with replacement, same size, fixed ``seed``).

    Resamples where the metric is NaN (e.g. :func:`overconfidence` with no confident prediction) are
    left out; NaN if fewer than two remain.

    Args:
        metric_fn: a function ``(probs, labels) -> float``, e.g. :func:`ece`.
        probs: posterior p(y|x), [N, C].
        labels: class indices [N].
        n: number of resamples (at least 2).
        seed: seed of the resampling; the same seed gives the same SE.

    Raises:
        InputError: as :func:`reliability`, or ``n`` < 2.
    """
    probs, labels = _check(probs, labels)
    idx = _resample_indices(len(labels), n, seed)
    return _se(torch.tensor([float(metric_fn(probs[i], labels[i])) for i in idx], dtype=torch.float64))


def calibration_row(name: str, probs, labels, n_bins: int = 15, n_bootstrap: int = 200, seed: int = 0,
                    threshold: float = OVERCONFIDENCE_THRESHOLD, beta: str = "") -> dict:
    """One row of ``table_calibration``: every metric with its bootstrap standard error.

    The resamples are the ones :func:`bootstrap_se` draws for the same ``n_bootstrap`` and ``seed``
    (computed at once, vectorised), so each SE equals ``bootstrap_se(metric, probs, labels, n_bootstrap,
    seed)``.

    Args:
        name: the model's name (column ``model``).
        probs: posterior p(y|x), [N, C], rows summing to one (within 1e-3).
        labels: class indices [N].
        n_bins: bins of ECE and MCE.
        n_bootstrap: bootstrap resamples of the images for the standard errors.
        seed: seed of the resampling.
        threshold: the overconfidence threshold.
        beta: the model's beta (column ``β``; empty for a DC).

    Returns:
        dict with the keys of ``CALIBRATION_HEADERS``: ``accuracy_pct``, ``ece_pct``, ``mce_pct``
        (percent), ``overconfidence`` (NaN if no prediction is confident enough; ``n_confident`` says
        how many are), ``nll`` (nats), each followed by its ``_se``, and ``n``.

    Raises:
        InputError: as :func:`reliability`, or ``n_bootstrap`` < 2.
    """
    probs, labels = _check(probs, labels)
    n_bins, threshold = _check_bins(n_bins), _check_threshold(threshold)
    conf, correct, p_label = _summary(probs, labels)
    bins = _bin_index(conf, n_bins)
    idx = torch.cat([torch.arange(len(labels))[None], _resample_indices(len(labels), n_bootstrap, seed)])
    conf, correct, p_label, bins = conf[idx], correct[idx], p_label[idx], bins[idx]  # row 0: the data itself
    ece_, mce_ = _ece_mce(bins, conf, correct, n_bins)
    over, n_conf = _overconfidence(conf, correct, threshold)
    metrics = {"accuracy_pct": 100 * correct.double().mean(1), "ece_pct": 100 * ece_, "mce_pct": 100 * mce_,
               "overconfidence": over, "nll": _nll(p_label)}
    row = {"model": name, "beta": beta, "n": len(labels)}
    for key, values in metrics.items():
        digits = 4 if key == "nll" else 2
        row[key] = round(float(values[0]), digits)
        row[f"{key.removesuffix('_pct')}_se"] = round(_se(values[1:]), digits)
        if key == "overconfidence":
            row["n_confident"] = int(n_conf[0])
    return row


# -- evaluation and plotting -----------------------------------------------------------------------
@torch.no_grad()
def predict_probs(model, x: Tensor, batch_size: int = 500) -> Tensor:
    """Posterior p(y|x) [N, C] in float64 on the CPU: softmax of ``model(x)`` (a DC's logits or a GC's
    log-posteriors) computed in float64, so that tiny probabilities of the label do not underflow.

    Raises:
        InputError: ``x`` is not a non-empty [N, C, H, W] batch or ``batch_size`` < 1.
    """
    return torch.softmax(explain.logits(model, x, batch_size, dtype=torch.float64), dim=1)


_BETA_ORDER = ["0", "1", "2", "4", "8", "16", "32", "inf"]


def _beta_label(beta: str) -> str:
    return "∞" if beta == "inf" else beta


def plot_calibration(diagrams: dict[str, dict], rows: list[dict], colors: dict[str, str] | None = None,
                     ncols: int = 4):
    """``fig_calibration``: one reliability diagram per model, then ECE, overconfidence and NLL against beta.

    Args:
        diagrams: panel title to a :func:`reliability` dict, in panel order (e.g. a few betas and the DC).
        rows: :func:`calibration_row` rows of every model; rows with a ``beta`` are GCs (plotted against
            beta; beta = 0, which does not train the classes, is only noted as off scale), rows without
            are DCs (drawn as horizontal lines with a band of one SE).
        colors: panel title (or row ``model``) to a color; missing ones are grey.
        ncols: panels per row.

    In each reliability diagram the bars are the accuracy per bin (bins with no prediction are left
    out), the diagonal is perfect calibration, the red shading is the gap between accuracy and mean
    confidence, and the inset is the histogram of confidences (log scale: most predictions are near 1).
    """
    import numpy as np

    from .plotting import DC_COLOR, figure

    colors = colors or {}
    n_panels = len(diagrams) + 3
    nrows = math.ceil(n_panels / ncols)
    fig, axes = figure(ncols, nrows, width=2.7, height=2.6)
    flat = list(axes.flatten())
    row_by_name = {r["model"]: r for r in rows}
    for ax, (title, rel) in zip(flat, diagrams.items()):
        edges = rel["edges"].numpy()
        width = edges[1] - edges[0]
        centers = (edges[:-1] + edges[1:]) / 2
        acc, conf, count = rel["accuracy"].numpy(), rel["confidence"].numpy(), rel["count"].numpy()
        full = count > 0
        color = colors.get(title, "#7f7f7f")
        ax.bar(centers[full], acc[full], width=width, color=color, alpha=0.8, edgecolor="k", linewidth=0.4,
               label="accuracy")
        lo, hi = np.minimum(acc, conf)[full], np.maximum(acc, conf)[full]
        ax.bar(centers[full], hi - lo, bottom=lo, width=width, facecolor=(1, 1, 1, 0.55), hatch="////",
               edgecolor="k", linewidth=0, label="gap")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        row = row_by_name.get(title)
        ax.set_title(f"{title}: ECE {row['ece_pct']:.2f} %" if row else title, fontsize=9)
        inset = ax.inset_axes([0.1, 0.64, 0.36, 0.3])
        inset.bar(centers, np.maximum(count, 0), width=width, color=color, edgecolor="k", linewidth=0.3)
        inset.set_yscale("log")
        inset.set_ylim(0.8, max(count.max(), 1) * 2)
        inset.set_xlim(0, 1)
        inset.set_xticks([0, 1])
        inset.tick_params(labelsize=5, length=2, pad=1)
        inset.set_title("confidences", fontsize=6, pad=1)
        inset.grid(False)
    if diagrams:
        flat[0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(0.0, 0.62))

    gc = sorted((r for r in rows if r.get("beta")), key=lambda r: _BETA_ORDER.index(r["beta"])
                if r["beta"] in _BETA_ORDER else len(_BETA_ORDER))
    off_scale = [r for r in gc if r["beta"] == "0"]  # beta = 0 does not train the classes: noted, not plotted
    gc = [r for r in gc if r["beta"] != "0"]
    dcs = [r for r in rows if not r.get("beta")]
    summary = [("ece_pct", "ece_se", "ECE (%)", "ECE against β"),
               ("overconfidence", "overconfidence_se", "overconfidence (1 = calibrated)", "overconfidence against β"),
               ("nll", "nll_se", "NLL of the labels (nats)", "NLL against β")]
    xs = list(range(len(gc)))
    for ax, (key, se_key, ylabel, title) in zip(flat[len(diagrams):], summary):
        ys = np.array([r[key] for r in gc], dtype=float)
        es = np.array([r[se_key] for r in gc], dtype=float)
        ax.errorbar(xs, ys, yerr=np.nan_to_num(es), fmt="-", color="k", lw=0.8, capsize=2, zorder=2)
        ax.scatter(xs, ys, c=[colors.get(r["model"], "#7f7f7f") for r in gc], s=22, edgecolor="k",
                   linewidth=0.4, zorder=3, label="GC")
        for r in dcs:
            v, e = r[key], r[se_key]
            if not math.isfinite(v):
                continue
            c = colors.get(r["model"], DC_COLOR)
            ax.axhline(v, color=c, ls="--", lw=1, label=r["model"])
            if math.isfinite(e):
                ax.axhspan(v - e, v + e, color=c, alpha=0.12, lw=0)
        missing = [_beta_label(r["beta"]) for r in gc if not math.isfinite(r[key])]
        if missing:
            ax.annotate(f"undefined (no confident prediction): β = {', '.join(missing)}", (0.02, 0.97),
                        xycoords="axes fraction", fontsize=6, va="top")
        if off_scale:
            ax.annotate(f"β=0 (off scale): {off_scale[0][key]:g}", (0.98, 0.97), xycoords="axes fraction",
                        fontsize=6, ha="right", va="top")
        if key == "overconfidence":
            ax.axhline(1, color="k", lw=0.5, ls=":")
        finite = ys[np.isfinite(ys)]
        if key != "ece_pct" and finite.size and finite.min() > 0 and finite.max() > 20 * finite.min():
            ax.set_yscale("log")
        ax.set_xticks(xs, [_beta_label(r["beta"]) for r in gc])
        ax.set_xlabel("β")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6, loc="upper right", bbox_to_anchor=(1.0, 0.9))
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig
