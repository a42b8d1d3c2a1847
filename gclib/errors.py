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
