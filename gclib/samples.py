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

__all__ = ["sample_quality", "class_sample_quality"]


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
    outside = float(((samples < 0) | (samples > 1)).double().mean())
    device = next(classifier.parameters()).device
    x = samples.clamp(0, 1).to(device, torch.float32)
    pred = torch.cat([classifier(b).argmax(1).cpu() for b in x.split(500)])
    hit = (pred == labels.cpu()).double()
    n = len(hit)
    acc = float(hit.mean())
    return {"accuracy": acc, "accuracy_se": (acc * (1 - acc) / n) ** 0.5, "outside": outside, "n": n}



@torch.no_grad()
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
    require(model, "sample", "class_sample_quality")
    if n_per_class < 1:
        raise InputError(f"n_per_class must be >= 1, got {n_per_class}")
    labels = torch.arange(model.num_classes).repeat(n_per_class)
    rows = []
    for t in temperatures:
        g = torch.Generator(device=model.device).manual_seed(seed)
        samples = torch.cat([model.sample(b, float(t), generator=g).float().cpu() for b in labels.split(batch_size)])
        rows.append({"what": f"T={t:g}", "temperature": float(t), **sample_quality(samples, labels, classifier)})
    if "latent" in model.capabilities:
        means = model.inverse(model.head.means().to(model.device)).float().cpu()
        rows.append({"what": "class means", "temperature": None,
                     **sample_quality(means, torch.arange(model.num_classes), classifier)})
    return rows
