"""Out-of-distribution detection: scores from a GC's density or a classifier's logits, and their metrics.

Every score is "higher = more out-of-distribution". The GC's scores use its bits/dim (-log2 p(x) per
dim) against held-out in-distribution images (the validation split, never trained on):

- ``one_tailed``: the bits/dim themselves (low likelihood = OoD), the plain likelihood test;
- ``two_tailed``: how far the input's bits/dim lie in either tail of the held-out distribution
  (``|2 F(bpd) - 1|`` with F the empirical CDF), so that *too likely* inputs are flagged too;
- ``typicality``: the distance of the bits/dim from their mean on held-out data (Nalisnick et al.'s
  typicality test for a batch of one).

A classifier's logits give ``max_softmax`` (minus the largest posterior), ``entropy`` of the posterior
and ``energy`` (minus logsumexp of the logits), for the DCs and for the GC's posterior alike.
The metrics come from scikit-learn (torchmetrics' AUROC would squash raw log-likelihoods with a sigmoid).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import InputError

__all__ = ["one_tailed", "two_tailed", "typicality", "max_softmax", "entropy", "energy", "auroc", "auroc_se",
           "gc_scores", "dc_scores", "detection_row", "density_detection_auroc",
           "fpr_at_tpr", "GC_SCORES", "LOGIT_SCORES"]


def _flat(x) -> np.ndarray:
    a = np.asarray(torch.as_tensor(x, dtype=torch.float64).flatten())
    if a.size == 0 or not np.isfinite(a).all():
        raise InputError("scores must be a non-empty array of finite values")
    return a


def one_tailed(bpd, reference=None) -> np.ndarray:
    """The bits/dim themselves: high = unlikely = out-of-distribution."""
    return _flat(bpd)


def two_tailed(bpd, reference) -> np.ndarray:
    """``|2 F(bpd) - 1|`` with F the empirical CDF of the held-out ``reference`` bits/dim: 0 at the median,
    1 beyond either end."""
    ref, x = np.sort(_flat(reference)), _flat(bpd)
    cdf = (np.searchsorted(ref, x, side="left") + np.searchsorted(ref, x, side="right")) / (2 * len(ref))
    return np.abs(2 * cdf - 1)


def typicality(bpd, reference) -> np.ndarray:
    """``|bpd - mean(reference)|``: the distance from the typical bits/dim of held-out data."""
    return np.abs(_flat(bpd) - _flat(reference).mean())


def max_softmax(logits) -> np.ndarray:
    """Minus the largest posterior (Hendrycks and Gimpel's baseline)."""
    return -torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).max(1).values.numpy()


def entropy(logits) -> np.ndarray:
    """Entropy of the posterior, nats."""
    logp = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1)
    return -(logp.exp() * logp).sum(1).numpy()


def energy(logits) -> np.ndarray:
    """Minus logsumexp of the logits (Liu et al.'s energy score at temperature 1)."""
    return -torch.logsumexp(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()


GC_SCORES = {"one-tailed log p(x)": one_tailed, "two-tailed log p(x)": two_tailed, "typicality": typicality}
LOGIT_SCORES = {"max-softmax": max_softmax, "entropy": entropy, "energy": energy}


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve for telling OoD (positive) from in-distribution inputs by their scores."""
    from sklearn.metrics import roc_auc_score

    s_in, s_out = _flat(scores_in), _flat(scores_out)
    labels = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    return float(roc_auc_score(labels, np.r_[s_in, s_out]))


def density_detection_auroc(model, x_clean, x_adv, batch_size: int = 10) -> float | None:
    """How well a model's own density tells its adversarial images from clean ones: the AUROC of
    ``-model.log_px(x)`` (the density at the image itself; a bound for ABS and the diffusion model), adversarial
    positive. None for a model without a density (:func:`gclib.classifier.supports`). The simplest form of
    the robustness chapter's detection test: no threshold, no adaptive attacker."""
    from .classifier import supports
    from .errors import check_batch_size

    if not supports(model, "density"):
        return None
    check_batch_size(batch_size)
    if len(x_clean) == 0 or len(x_adv) == 0:
        raise InputError("density_detection_auroc needs at least one clean and one adversarial image")
    with torch.no_grad():
        nll = [-torch.cat([model.log_px(b) for b in x.split(batch_size)]) for x in (x_clean, x_adv)]
    return auroc(nll[0], nll[1])


def auroc_se(area: float, n_in: int, n_out: int) -> float:
    """Standard error of an AUROC (Hanley and McNeil, 1982), from the area and the two sample sizes."""
    q1, q2 = area / (2 - area), 2 * area**2 / (1 + area)
    var = (area * (1 - area) + (n_out - 1) * (q1 - area**2) + (n_in - 1) * (q2 - area**2)) / (n_in * n_out)
    return math.sqrt(max(var, 0.0))


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """The share of OoD inputs still accepted when the threshold accepts ``tpr`` of in-distribution inputs.

    In-distribution is the positive class here, as in Hendrycks and Gimpel's "FPR at 95 % TPR": the
    threshold is the ``tpr`` quantile of the in-distribution scores; an OoD input is a false positive when
    its score is at or below it.
    """
    if not 0 < tpr < 1:
        raise InputError(f"tpr must be in (0, 1), got {tpr}")
    s_in, s_out = _flat(scores_in), _flat(scores_out)
    threshold = np.quantile(s_in, tpr, method="higher")
    return float((s_out <= threshold).mean())


def gc_scores(bpd, log_posterior, reference_bpd) -> dict[str, np.ndarray]:
    """A GC's scores for some inputs: the three density tests, and max-softmax and entropy of its posterior.

    (The energy of a GC's logits would be minus log p(x), the one-tailed test again.)
    """
    scores = {name: fn(bpd, reference_bpd) for name, fn in GC_SCORES.items()}
    scores.update({name: LOGIT_SCORES[name](log_posterior) for name in ("max-softmax", "entropy")})
    return scores


def dc_scores(logits) -> dict[str, np.ndarray]:
    """A DC's scores for some inputs: max-softmax, entropy and energy of its logits."""
    return {name: fn(logits) for name, fn in LOGIT_SCORES.items()}


def detection_row(model: str, score: str, scores_in, scores_out: dict[str, np.ndarray], tpr: float = 0.95) -> dict:
    """One row of ``table_ood``: AUROC (%) per OoD set, their mean, the mean FPR at ``tpr`` TPR (%), and the
    largest Hanley-McNeil standard error of the row's AUROCs (%)."""
    row: dict = {"model": model, "score": score}
    areas, fprs, ses = [], [], []
    for name, out in scores_out.items():
        area = auroc(scores_in, out)
        areas.append(area)
        fprs.append(fpr_at_tpr(scores_in, out, tpr))
        ses.append(auroc_se(area, len(_flat(scores_in)), len(_flat(out))))
        row[name] = round(100 * area, 1)
    row["mean AUROC"] = round(100 * float(np.mean(areas)), 1)
    row["mean FPR95"] = round(100 * float(np.mean(fprs)), 1)
    row["max SE"] = round(100 * max(ses), 1)
    return row
