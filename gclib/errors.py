"""Exception types raised by gclib.

Every error a user can cause (bad input, unknown names, broken files) raises one of these, with a
message that says what was wrong and how to fix it. They subclass the matching built-in exception
too, so ``except ValueError`` keeps working for code that does not know about gclib.
"""

__all__ = [
    "GclibError",
    "ConfigError",
    "InputError",
    "DataError",
    "CheckpointError",
    "TrainingError",
    "BookError",
    "check_batch",
    "check_batch_size",
]


class GclibError(Exception):
    """Base class of every error gclib raises on purpose."""


class ConfigError(GclibError, ValueError):
    """An unknown config name or an invalid hyper-parameter (e.g. beta < 0)."""


class InputError(GclibError, ValueError):
    """A tensor that does not fit the model: shape, channels, dtype, range, NaN/inf, empty batch."""


class DataError(GclibError, FileNotFoundError):
    """A dataset that cannot be found or read."""


class CheckpointError(GclibError, OSError):
    """A checkpoint that is missing, truncated, tampered with, pickled or from another config."""


class TrainingError(GclibError, RuntimeError):
    """Training cannot go on, e.g. the loss stayed non-finite; the last good checkpoint is kept."""


class BookError(GclibError, RuntimeError):
    """The book pipeline stopped: an unknown parameter set, a failing notebook or a failing build."""


def check_batch(x, what: str = "images [N, C, H, W]", dim: int = 4, floating: bool = False):
    """Return ``x`` if it is a non-empty tensor of rank ``dim`` (and floating-point if asked), else raise.

    The one shape check of the analysis modules (explain, latent, attribution, robust, attacks); value checks
    for a particular model are :func:`gclib.model.check_images`'s.
    """
    import torch

    if not isinstance(x, torch.Tensor) or x.dim() != dim or x.numel() == 0 or (floating and not x.is_floating_point()):
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        kind = "float " if floating else ""
        raise InputError(f"expected a non-empty {kind}batch of {what}, got {got}")
    return x


def check_batch_size(batch_size) -> int:
    """Return ``batch_size`` if it is an integer >= 1, else raise :class:`InputError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size
