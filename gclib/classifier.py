"""One interface for every classifier of the project: generative (every family) and discriminative.

Everything downstream (the zoo, the analyses, the notebooks, the benchmark) talks to a model through
this interface only, so that a new family is one module and a zoo entry. A model implements:

- ``class_scores(x)`` [B, C], nats: log p(x|y) for a generative classifier (exact, a bound, an
  estimate, or a surrogate that is none of these: ``score_kind`` says which), the logits for a
  discriminative one (``score_kind = "logits"``);
- ``forward(x)`` = ``model(x)``: the logits, log p(y|x) = log-softmax(scores + log prior) for a GC, so
  captum, torchmetrics and attack libraries work unchanged;
- ``log_px(x)`` [B], nats, where the family has a density (``density_kind`` is then ``"exact"``,
  ``"bound"`` or ``"estimate"``; ``None`` otherwise, and ``log_px`` raises ``CapabilityError``);
- ``evaluations_per_image``: network evaluations one call of ``class_scores`` costs per image
  (1 for a flow or a ResNet; many for a diffusion classifier);
- ``capabilities``: what else it offers (``"latent"``: an invertible latent space with ``encode`` /
  ``inverse`` and class means; ``"sample"``: class-conditional sampling). An analysis that needs a
  capability asks :func:`require`, which raises a clear error, or :func:`supports` to skip a model.

Inputs are images [B, C, H, W] in [0, 1], checked once in :func:`gclib.model.check_images`.

>>> import gclib
>>> gc = gclib.GenerativeClassifier.from_config("fashion-mnist", seed=0)
>>> describe(gc)["score_kind"], describe(gc)["density_kind"], supports(gc, "latent")
('exact', 'exact', True)
>>> dc = gclib.FeedForwardClassifier("fashion-mnist")
>>> describe(dc)["family"], supports(dc, "latent")
('resnet', False)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .errors import GclibError

__all__ = ["Classifier", "CapabilityError", "SCORE_KINDS", "DENSITY_KINDS", "CAPABILITIES", "describe", "supports",
           "require", "is_generative", "check_classifier"]

# "surrogate": a class score that ranks like a likelihood but is none (Li et al.'s unweighted denoising error).
SCORE_KINDS = ("exact", "bound", "estimate", "surrogate", "logits")
DENSITY_KINDS = ("exact", "bound", "estimate", None)
CAPABILITIES = ("latent", "sample")


class CapabilityError(GclibError, TypeError):
    """An analysis asked a model for something its family does not have (a density, a latent space)."""


@runtime_checkable
class Classifier(Protocol):
    """What every gclib model provides (see the module docstring)."""

    family: str
    score_kind: str
    density_kind: str | None
    capabilities: frozenset
    evaluations_per_image: float

    @property
    def num_classes(self) -> int: ...

    def class_scores(self, x: Tensor) -> Tensor: ...

    def forward(self, x: Tensor) -> Tensor: ...

    def log_px(self, x: Tensor) -> Tensor: ...


def is_generative(model) -> bool:
    """Whether ``model``'s class scores are class-conditional log-likelihoods (or their bound/estimate)."""
    return getattr(model, "score_kind", "logits") != "logits"


def supports(model, capability: str) -> bool:
    """Whether ``model`` has ``capability`` (``"density"``, or one of :data:`CAPABILITIES`)."""
    if capability == "density":
        return getattr(model, "density_kind", None) is not None
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; known: density, {', '.join(CAPABILITIES)}")
    return capability in getattr(model, "capabilities", frozenset())


def require(model, capability: str, analysis: str) -> None:
    """Raise :class:`CapabilityError` unless ``model`` has ``capability``, naming the analysis and the model."""
    if not supports(model, capability):
        what = {"density": "a density log p(x)", "latent": "an invertible latent space",
                "sample": "class-conditional sampling"}[capability]
        raise CapabilityError(f"{analysis} needs {what}; a {getattr(model, 'family', type(model).__name__)} "
                              f"model has none. Pick a model with supports(model, {capability!r}) first")


def describe(model) -> dict:
    """The interface facts of ``model`` as a dict (for tables and manifests)."""
    return {"family": model.family, "score_kind": model.score_kind, "density_kind": model.density_kind,
            "capabilities": sorted(model.capabilities), "evaluations_per_image": model.evaluations_per_image,
            "num_classes": model.num_classes,
            "parameters": sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else None}


def check_classifier(model) -> None:
    """Raise TypeError unless ``model`` implements the interface with valid declared kinds."""
    if not isinstance(model, Classifier):
        missing = [a for a in ("family", "score_kind", "density_kind", "capabilities", "evaluations_per_image",
                               "num_classes", "class_scores", "forward", "log_px") if not hasattr(model, a)]
        raise TypeError(f"{type(model).__name__} is not a gclib classifier: missing {', '.join(missing)}")
    if model.score_kind not in SCORE_KINDS:
        raise TypeError(f"score_kind must be one of {SCORE_KINDS}, got {model.score_kind!r}")
    if model.density_kind not in DENSITY_KINDS:
        raise TypeError(f"density_kind must be one of {DENSITY_KINDS}, got {model.density_kind!r}")
    unknown = set(model.capabilities) - set(CAPABILITIES)
    if unknown:
        raise TypeError(f"unknown capabilities {sorted(unknown)}; known: {CAPABILITIES}")
    if not model.evaluations_per_image > 0:
        raise TypeError(f"evaluations_per_image must be > 0, got {model.evaluations_per_image}")
