"""Sample quality, measured rather than eyeballed: does a discriminative model recognise a GC's samples?

For any model with class-conditional sampling (``supports(model, "sample")``): draw samples of every
class at several temperatures (and the decoded class means, where the family has them), let a
discriminative classifier (the zoo's ResNet) classify them, and count the pixels outside [0, 1] (a
flow's inverse is not bounded: far from the data it decodes to values no image has).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .classifier import require
from .errors import InputError

__all__ = ["sample_quality", "class_sample_quality", "class_sample_judgements", "judge", "quality_of",
           "quality_rows", "sample_labels"]


@torch.no_grad()
def judge(samples: Tensor, classifier, batch_size: int = 500) -> dict[str, Tensor]:
    """Per-sample judgements of decoded samples [N, C, H, W] (not clamped): ``prediction`` [N] (int64, the
    ``classifier``'s class of the sample clipped to [0, 1]), ``margin`` [N] (its top-two logit margin, float32)
    ``outside`` [N] (int64, how many of the sample's values lie outside [0, 1]) and ``values`` (a 0-d int64
    tensor: values per sample, C x H x W)."""
    if samples.dim() != 4 or len(samples) == 0:
        raise InputError(f"expected samples [N, C, H, W], got {tuple(samples.shape)}")
    outside = ((samples < 0) | (samples > 1)).flatten(1).sum(1).cpu()
    device = next(classifier.parameters()).device
    x = samples.clamp(0, 1).to(device, torch.float32)
    logits = torch.cat([classifier(b).float().cpu() for b in x.split(batch_size)])
    top2 = logits.topk(2, dim=1).values
    return {"prediction": logits.argmax(1), "margin": top2[:, 0] - top2[:, 1], "outside": outside,
            "values": torch.tensor(samples[0].numel())}


def quality_of(judgements: dict[str, Tensor], labels: Tensor) -> dict:
    """:func:`sample_quality`'s figures from :func:`judge`'s per-sample judgements."""
    if len(judgements["prediction"]) != len(labels) or len(labels) == 0:
        raise InputError(f"expected judgements of {len(labels)} samples, got {len(judgements['prediction'])}")
    hit = (judgements["prediction"] == labels.cpu()).double()
    n = len(hit)
    acc = float(hit.mean())
    outside = float(judgements["outside"].double().sum()) / (n * int(judgements["values"]))
    return {"accuracy": acc, "accuracy_se": (acc * (1 - acc) / n) ** 0.5, "outside": outside, "n": n}


@torch.no_grad()
def sample_quality(samples: Tensor, labels: Tensor, classifier) -> dict:
    """How recognisable class-conditional samples are, judged by a discriminative ``classifier``.

    Args:
        samples: decoded samples [N, C, H, W], not clamped (values outside [0, 1] are counted, then clipped
            before classification).
        labels: the class each sample was drawn from, [N].
        classifier: a model whose ``model(x)`` gives logits for images in [0, 1].

    Returns:
        dict with ``accuracy`` (share classified as their own class), ``accuracy_se`` (binomial standard
        error), ``outside`` (share of pixels outside [0, 1]) and ``n``.
    """
    if samples.dim() != 4 or len(samples) != len(labels) or len(samples) == 0:
        raise InputError(f"expected samples [N, C, H, W] and N labels, got {tuple(samples.shape)} and {len(labels)}")
    return quality_of(judge(samples, classifier), labels)


def sample_labels(num_classes: int, n_per_class: int) -> Tensor:
    """The classes of :func:`class_sample_judgements`' samples, in their order: 0, 1, ..., C - 1, 0, 1, ..."""
    return torch.arange(num_classes).repeat(n_per_class)


@torch.no_grad()
def class_sample_judgements(model, classifier, temperatures=(0.5, 0.7, 1.0), n_per_class: int = 50, seed: int = 0,
                            batch_size: int = 500, rows=None) -> dict[str, dict[str, Tensor]]:
    """:func:`judge` of ``model``'s class-conditional samples at each temperature, and of its decoded class means.

    The samples of a temperature are drawn with one generator seeded with ``seed``, in batches of
    ``batch_size`` of the labels :func:`sample_labels` (so the same for every model of a size). Returns
    ``{"T=0.7": judgements, ..., "class means": judgements}`` (the means where the model has a latent
    space); ``rows`` limits it to those keys (what a check of a stored result recomputes).
    """
    require(model, "sample", "class_sample_quality")
    if n_per_class < 1:
        raise InputError(f"n_per_class must be >= 1, got {n_per_class}")
    labels = sample_labels(model.num_classes, n_per_class)
    out = {}
    for t in temperatures:
        if rows is not None and f"T={t:g}" not in rows:
            continue
        g = torch.Generator(device=model.device).manual_seed(seed)
        samples = torch.cat([model.sample(b, float(t), generator=g).float().cpu() for b in labels.split(batch_size)])
        out[f"T={t:g}"] = judge(samples, classifier)
    if "latent" in model.capabilities and (rows is None or "class means" in rows):
        out["class means"] = judge(model.inverse(model.head.means().to(model.device)).float().cpu(), classifier)
    return out


def quality_rows(judgements: dict[str, dict[str, Tensor]], num_classes: int, n_per_class: int) -> list[dict]:
    """:func:`class_sample_quality`'s rows from :func:`class_sample_judgements`."""
    rows = []
    for what, j in judgements.items():
        means = what == "class means"
        labels = torch.arange(num_classes) if means else sample_labels(num_classes, n_per_class)
        rows.append({"what": what, "temperature": None if means else float(what[2:]),
                     **quality_of(j, labels)})
    return rows


def class_sample_quality(model, classifier, temperatures=(0.5, 0.7, 1.0), n_per_class: int = 50, seed: int = 0,
                         batch_size: int = 500) -> list[dict]:
    """:func:`sample_quality` of ``model``'s samples at each temperature, and of its decoded class means.

    Args:
        model: a GC with ``"sample"`` capability; samples are decoded in float32 on its device.
        classifier: the judge, ``classifier(x)`` -> logits.
        temperatures: latent noise scales (1 = the model's own distribution).
        n_per_class: samples per class and temperature (the same seeded draws for every model of a size).
        seed: seed of the draws.

    Returns:
        one dict per row: ``what`` ("T=0.7", ... and "class means" where the model has a latent space),
        ``temperature`` (None for the means) and the keys of :func:`sample_quality`.
    """
    judgements = class_sample_judgements(model, classifier, temperatures, n_per_class, seed, batch_size)
    return quality_rows(judgements, model.num_classes, n_per_class)
