"""What a generative classifier can show that a feed-forward one cannot: functions, tensors in, tensors out.

A GC gives, for every input, the class log-likelihoods log p(x|y). From them come both the class
posterior p(y|x) (which a DC gives too, and which must sum to one) and the input's own density
log p(x), which says whether the input looks like the training data at all. The functions here
compute these outputs in batches, pick the examples of the book's Figure 1
(``fig_gc_vs_dc_outputs``) by stated rules, and sort inputs into the regions of ``fig_both_or_neither``:
"confident" (typical density, one class clearly most likely), "both" (typical density, the runner-up class
nearly as likely: ambiguous) and "neither" (atypical density: unlike any class).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import InputError, check_batch, check_batch_size
from .model import nats_to_bits_per_dim

__all__ = ["gc_outputs", "logits", "dc_posterior", "typical_range", "atypical_fraction", "summary_row", "pick_examples",
           "most_confident", "SUMMARY_HEADERS", "REGIONS", "top2", "regions", "region_shares", "pick_per_region",
           "separation_row", "SEPARATION_HEADERS"]

SUMMARY_HEADERS = {"inputs": "inputs", "n": "n", "gc_atypical_pct": "GC: outside the typical range (%)",
                   "gc_bpd_median": "GC: median bits/dim", "dc_max_softmax_median": "DC: median max-softmax"}


def _batches(x: Tensor, batch_size: int):
    return check_batch(x).split(check_batch_size(batch_size))


@torch.no_grad()
def gc_outputs(model, x: Tensor, batch_size: int = 500) -> dict[str, Tensor]:
    """A GC's outputs for images ``x`` [N, C, H, W] in [0, 1], on the CPU.

    Returns:
        dict with ``log_likelihoods`` (log p(x|y), [N, C], nats), ``posterior`` (p(y|x), [N, C], rows sum
        to one), ``bits_per_dim`` (-log2 p(x) per dim on the 8-bit scale, [N]; lower is more likely)
        and ``prediction`` ([N], int64).
    """
    cll = torch.cat([model.class_log_likelihoods(b.to(model.device)).float().cpu()
                     for b in _batches(x, batch_size)])
    log_prior = model.head.log_prior.float().cpu()
    log_px = torch.logsumexp(cll + log_prior, dim=1)
    return {"log_likelihoods": cll, "posterior": torch.softmax(cll + log_prior, dim=1),
            "bits_per_dim": nats_to_bits_per_dim(log_px, model.n_dims), "prediction": cll.argmax(1)}


@torch.no_grad()
def logits(model, x: Tensor, batch_size: int = 500, dtype: torch.dtype = torch.float32) -> Tensor:
    """``model(x)`` in batches, on the CPU in ``dtype``, [N, C]: a DC's logits or a GC's log-posteriors."""
    device = getattr(model, "device", None) or next(model.parameters()).device
    return torch.cat([model(b.to(device)).to(dtype).cpu() for b in _batches(x, batch_size)])


def dc_posterior(model, x: Tensor, batch_size: int = 500) -> Tensor:
    """Softmax posterior p(y|x) [N, C] of a feed-forward classifier (or a GC's logits), on the CPU."""
    return torch.softmax(logits(model, x, batch_size), dim=1)


def typical_range(bits_per_dim: Tensor, coverage: float = 0.99) -> tuple[float, float]:
    """The central ``coverage`` interval of held-out in-distribution bits/dim: ``(low, high)``.

    An input whose bits/dim falls outside it is atypical for the training distribution (a two-sided
    typicality test; too likely is as suspicious as too unlikely, e.g. for constant images).
    """
    if not 0 < coverage < 1:
        raise InputError(f"coverage must be in (0, 1), got {coverage}")
    values = torch.as_tensor(bits_per_dim, dtype=torch.float64).flatten()
    if values.numel() < 2 or not torch.isfinite(values).all():
        raise InputError("typical_range needs at least two finite bits/dim values")
    tail = (1 - coverage) / 2
    low, high = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high


def atypical_fraction(bits_per_dim: Tensor, bpd_range: tuple[float, float]) -> float:
    """Fraction of inputs whose bits/dim fall outside ``bpd_range`` (the GC's "agrees with neither")."""
    bpd = torch.as_tensor(bits_per_dim)
    return float(((bpd < bpd_range[0]) | (bpd > bpd_range[1])).double().mean())


def summary_row(name: str, gc: dict[str, Tensor], dc_post: Tensor, bpd_range: tuple[float, float]) -> dict:
    """One row of the inputs table: how often the GC calls a set atypical, and the DC's median confidence."""
    return {"inputs": name, "n": len(dc_post),
            "gc_atypical_pct": round(100 * atypical_fraction(gc["bits_per_dim"], bpd_range), 1),
            "gc_bpd_median": round(float(gc["bits_per_dim"].median()), 3),
            "dc_max_softmax_median": round(float(dc_post.max(1).values.median()), 3)}


def pick_examples(gc: dict[str, Tensor], labels: Tensor, bpd_range: tuple[float, float],
                  min_confidence: float = 0.99) -> dict[str, int]:
    """Indices of Figure 1's normal and ambiguous test images, chosen by fixed rules (no hand-picking).

    - ``normal``: a test image the GC classifies correctly with posterior >= ``min_confidence`` and
      typical bits/dim; of these, the one whose bits/dim is closest to the median of the typical range.
    - ``ambiguous``: a test image with typical bits/dim whose two most likely classes include its label;
      the one whose two largest posteriors are closest to each other.

    The unrelated inputs are chosen with :func:`most_confident`.

    Args:
        gc: :func:`gc_outputs` of the test images.
        labels: their labels [N].
        bpd_range: :func:`typical_range` of held-out in-distribution images.
        min_confidence: the posterior a "normal" example needs.

    Raises:
        InputError: no test image meets a rule (e.g. a model that is never confident).
    """
    low, high = bpd_range
    bpd, post = gc["bits_per_dim"], gc["posterior"]
    typical = (bpd >= low) & (bpd <= high)
    top2 = post.topk(2, dim=1)
    correct = gc["prediction"] == labels
    normal = typical & correct & (top2.values[:, 0] >= min_confidence)
    if not normal.any():
        raise InputError(f"no test image is classified correctly with posterior >= {min_confidence} and typical "
                         "bits/dim; lower min_confidence")
    middle = (low + high) / 2
    i_normal = int(torch.where(normal, (bpd - middle).abs(), torch.full_like(bpd, math.inf)).argmin())
    label_in_top2 = (top2.indices == labels[:, None]).any(1)
    ambiguous = typical & label_in_top2
    if not ambiguous.any():
        raise InputError("no typical test image has its label among the two most likely classes")
    gap = top2.values[:, 0] - top2.values[:, 1]
    i_ambiguous = int(torch.where(ambiguous, gap, torch.full_like(gap, math.inf)).argmin())
    return {"normal": i_normal, "ambiguous": i_ambiguous}


def most_confident(posterior: Tensor) -> int:
    """Index of the input with the largest max-posterior: the DC's most confident answer on a set.

    Figure 1 takes each unrelated input by this rule: the input on which the DC is most sure of itself,
    whatever the GC says about it.
    """
    return int(torch.as_tensor(posterior).max(1).values.argmax())


REGIONS = ("confident", "both", "neither")


def top2(log_likelihoods: Tensor, n_dims: int) -> dict[str, Tensor]:
    """The two largest class log-likelihoods of every input, on the bits/dim scale, and their gap in nats.

    Args:
        log_likelihoods: log p(x|y) [N, C] in nats (:func:`gc_outputs`).
        n_dims: the model's input dimension (``model.n_dims``).

    Returns:
        dict with ``classes`` ([N, 2], the most and second most likely class), ``bits_per_dim`` ([N, 2],
        -log2 p(x|y) per dim on the 8-bit scale of those two classes; the first column is the lower) and
        ``log_ratio`` ([N], log p(x|first) - log p(x|second) in nats, >= 0).
    """
    ll = torch.as_tensor(log_likelihoods)
    if ll.dim() != 2 or ll.shape[1] < 2:
        raise InputError(f"expected class log-likelihoods [N, C] with C >= 2, got {tuple(ll.shape)}")
    values, classes = ll.double().topk(2, dim=1)
    return {"classes": classes, "bits_per_dim": nats_to_bits_per_dim(values, n_dims),
            "log_ratio": values[:, 0] - values[:, 1]}


def regions(log_likelihoods: Tensor, bits_per_dim: Tensor, bpd_range: tuple[float, float],
            max_ratio: float = 10.0) -> Tensor:
    """Sort inputs into the GC's three answers: 0 "confident", 1 "both", 2 "neither" (see :data:`REGIONS`).

    - "neither": the input's bits/dim lie outside ``bpd_range`` (:func:`typical_range`): no class explains
      it as well as it explains held-out training-distribution images.
    - "both": typical, and the runner-up class is at least ``1 / max_ratio`` times as likely as the best
      (log-likelihood ratio <= log ``max_ratio``): the input fits two classes.
    - "confident": typical, and one class is more than ``max_ratio`` times as likely as any other.

    Returns:
        int64 region codes [N].
    """
    if not max_ratio > 1:
        raise InputError(f"max_ratio must be > 1 (the runner-up may be at most this many times less likely), "
                         f"got {max_ratio}")
    ll = torch.as_tensor(log_likelihoods)
    bpd = torch.as_tensor(bits_per_dim).double().flatten()
    if len(bpd) != len(ll):
        raise InputError(f"{len(ll)} rows of log-likelihoods but {len(bpd)} bits/dim values")
    gap = top2(ll, 1)["log_ratio"]
    low, high = bpd_range
    out = torch.where(gap <= math.log(max_ratio), 1, 0)
    return torch.where((bpd < low) | (bpd > high), 2, out).long()


def region_shares(codes: Tensor) -> dict[str, float]:
    """Percent of inputs in each region, ``{"confident": .., "both": .., "neither": ..}``."""
    codes = torch.as_tensor(codes).flatten()
    if codes.numel() == 0:
        raise InputError("region_shares needs at least one input")
    return {name: 100 * float((codes == k).double().mean()) for k, name in enumerate(REGIONS)}


def pick_per_region(codes: Tensor, k: int = 4, seed: int = 0) -> dict[str, list[int]]:
    """Up to ``k`` indices per region, drawn uniformly at random with ``seed`` (no hand-picking)."""
    codes = torch.as_tensor(codes).flatten()
    order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(seed))
    return {name: order[codes[order] == r][:k].tolist() for r, name in enumerate(REGIONS)}


SEPARATION_HEADERS = {"question": "question", "n_pos": "n (positives)", "n_neg": "n (negatives)",
                      "gc_region_pos": "GC: positives in the region (%)",
                      "gc_region_neg": "GC: negatives in the region (%)",
                      "gc_auroc": "GC: AUROC (%)", "gc_se": "GC: SE", "dc_auroc": "DC: AUROC (%)", "dc_se": "DC: SE"}


def separation_row(question: str, gc: tuple, dc: tuple, in_region: tuple) -> dict:
    """One row of ``table_both_or_neither``: how well a GC score and a DC score pick out the positives.

    Args:
        question: the row's label, e.g. '"neither" catches digits'.
        gc: ``(scores of the positives, scores of the negatives)`` for the GC, higher = more positive.
        dc: the same for the DC.
        in_region: ``(bool [n_pos], bool [n_neg])``: which positives and negatives fall in the GC's region.

    Returns:
        dict: sample sizes, percent of each side in the region, AUROC (%) and its Hanley-McNeil SE for GC and DC.
    """
    from .detect import auroc, auroc_se

    row = {"question": question, "n_pos": len(gc[0]), "n_neg": len(gc[1])}
    pos, neg = (torch.as_tensor(r).flatten().double() for r in in_region)
    row["gc_region_pos"] = round(100 * float(pos.mean()), 1)
    row["gc_region_neg"] = round(100 * float(neg.mean()), 1)
    for name, (s_pos, s_neg) in (("gc", gc), ("dc", dc)):
        area = auroc(s_neg, s_pos)
        row[f"{name}_auroc"] = round(100 * area, 1)
        row[f"{name}_se"] = round(100 * auroc_se(area, len(s_neg), len(s_pos)), 1)
    return row
