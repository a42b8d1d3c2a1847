"""gclib: generative classifiers (IB-INNs) for trustworthy image classification, in modern PyTorch.

The reproducible companion to Mackowiak, Ardizzone, Köthe, Rother, "Generative Classifiers as a Basis
for Trustworthy Image Classification" (CVPR 2021).

>>> import gclib
>>> model = gclib.GenerativeClassifier.from_config("fashion-mnist", seed=0)
>>> model.config.latent_shape
(16, 7, 7)
"""

__version__ = "0.1.0"

from . import classifier, configs, data, errors  # noqa: E402
from .checkpoints import load, load_into, save  # noqa: E402
from .configs import Config, ModelConfig, TrainConfig, get_config  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, GclibError, InputError, TrainingError  # noqa: E402
from .model import FeedForwardClassifier, GenerativeClassifier  # noqa: E402

__all__ = [
    "__version__",
    "GenerativeClassifier",
    "FeedForwardClassifier",
    "Config",
    "ModelConfig",
    "TrainConfig",
    "get_config",
    "load",
    "load_into",
    "save",
    "configs",
    "data",
    "errors",
    "train",
    "zoo",
    "pretrained",
    "get_model",
    "list_models",
    "classifier",
    "GclibError",
    "ConfigError",
    "InputError",
    "DataError",
    "CheckpointError",
    "TrainingError",
]


def __getattr__(name):
    # gclib.train, gclib.bench and gclib.zoo (with gclib.pretrained) are imported on first use, so that
    # `python -m gclib.train` does not find the module already imported (runpy warns about that).
    import importlib

    if name in ("train", "bench", "zoo"):
        return importlib.import_module(f".{name}", __name__)
    if name in ("pretrained", "get_model", "list_models"):
        return getattr(importlib.import_module(".zoo", __name__), name)
    raise AttributeError(f"module 'gclib' has no attribute {name!r}")
