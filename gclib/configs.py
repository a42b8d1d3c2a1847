"""Named, typed configurations of the generative classifier and its training.

A config fixes the architecture (so that a checkpoint can be rebuilt from its name and fields) and the
training defaults. Defined:

- ``fashion-mnist`` (default): 1x28x28, the strong model: IB-INN's recipe in 24 coupling blocks, 3.2 M
  parameters, about 90 minutes of one CPU core for its 10 epochs (the zoo's ``gc-large-*`` models).
- ``fashion-mnist-small``: the small model of the first zoo (``gc-beta-*``), 144k parameters, minutes
  on a CPU; for tests, quick runs and the comparison of small and strong models. Checkpoints written
  before the strong recipe became the default name it ``fashion-mnist`` and load as this config.
- ``fashion-mnist-large``: the strong architecture with the recipe ablation's Gaussian input noise
  (σ = 0.01, which cost 0.9 bits/dim); the shipped large models were trained from it with
  ``--input-noise 0``, which is the default's recipe.
- ``cifar10``: 3x32x32.
- ``imagenet``: 3x224x224, 1000 classes, the paper's invertible ResNet-50: stages [3, 4, 6, 3],
  strides [1, 2, 2, 2], DCT pooling, 3072 latent dims with full class means and 147456 with rank-128
  class means.

>>> cfg = get_config("fashion-mnist")
>>> cfg.model.latent_shape
(16, 7, 7)
>>> get_config("imagenet").model.n_fc_dims
3072
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError

__all__ = ["ModelConfig", "TrainConfig", "Config", "get_config", "config_names", "register_config", "dataset_of",
           "override_model"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an IB-INN generative classifier.

    The invertible backbone is: a fixed per-channel normalisation, ``entry_downsamples`` Haar
    downsamplings (each: channels x4, height and width /2), then stages of affine coupling blocks;
    a stage with stride 2 starts with one more Haar downsampling. Each coupling block's subnetwork is
    a small ResNet block of the stage's width. The last layer is the orthogonal DCT pooling, whose
    output (the latent z, DC terms first) feeds the Gaussian-mixture head.
    """

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    entry_downsamples: int
    stage_blocks: tuple[int, ...]
    stage_strides: tuple[int, ...]
    stage_widths: tuple[int, ...]
    n_fc_dims: int  # latent dims (DC terms first) with a free class mean each
    low_rank: int  # rank of the class means on the remaining dims (0: those means are zero)
    # "resnet": conv-[res block]-conv; "bottleneck": 1x1-3x3-1x1 res block; "ibinn": IB-INN's subnet,
    # conv3x3-ReLU-conv3x3-ReLU-conv1x1 (with subnet_batchnorm: BN after each 3x3 conv, as in IB-INN)
    subnet: str = "resnet"
    subnet_depth: int = 1  # residual blocks per subnetwork
    clamp: float = 2.0  # soft clamp of the coupling log-scales (FrEIA AllInOneBlock)
    mu_init: float = 3.0  # initial spacing of the class means (scaled one-hot blocks)
    data_mean: tuple[float, ...] = (0.5,)
    data_std: tuple[float, ...] = (0.5,)
    permutation_seed: int = 0  # fixes the channel permutations so an architecture is reproducible
    # -- the IB-INN recipe (vislearn/IB-INN inn_architecture.py); the defaults reproduce gclib's small model --
    permutation: str = "hard"  # "hard": channel shuffle; "soft": a fixed random orthogonal 1x1 map (IB-INN)
    act_norm: float = 1.0  # initial global scale of every coupling block (FrEIA global_affine_init; IB-INN 0.8)
    subnet_batchnorm: bool = False  # BatchNorm after each hidden convolution of the coupling subnets
    stage_dropout: tuple[float, ...] = ()  # Dropout2d in the subnets per stage (empty: none; IB-INN: 0.25 last)
    fc_blocks: int = 0  # fully connected affine couplings on the DCT output (IB-INN: 1, each after a permutation)
    fc_width: int = 1024  # hidden width of the fully connected couplings' subnetworks
    fc_dropout: float = 0.5  # dropout inside them (IB-INN: 0.5)
    fc_clamp: float = 2.0  # soft clamp of their log-scales

    def __post_init__(self) -> None:
        n = len(self.stage_blocks)
        if not (len(self.stage_strides) == len(self.stage_widths) == n) or n == 0:
            raise ConfigError(
                f"config {self.name!r}: stage_blocks, stage_strides and stage_widths must have the "
                f"same non-zero length, got {self.stage_blocks}, {self.stage_strides}, {self.stage_widths}"
            )
        if any(s not in (1, 2) for s in self.stage_strides):
            raise ConfigError(f"config {self.name!r}: strides must be 1 or 2, got {self.stage_strides}")
        if self.image_size % (2**self.num_downsamples):
            raise ConfigError(
                f"config {self.name!r}: image_size {self.image_size} is not divisible by "
                f"2**{self.num_downsamples} (one factor 2 per Haar downsampling)"
            )
        c, h, w = self.latent_shape
        if not 0 < self.n_fc_dims <= c * h * w:
            raise ConfigError(f"config {self.name!r}: n_fc_dims must be in 1..{c * h * w}")
        if self.low_rank < 0:
            raise ConfigError(f"config {self.name!r}: low_rank must be >= 0")
        if self.subnet not in ("resnet", "bottleneck", "ibinn"):
            raise ConfigError(f"config {self.name!r}: subnet must be 'resnet', 'bottleneck' or 'ibinn'")
        if self.permutation not in ("hard", "soft"):
            raise ConfigError(f"config {self.name!r}: permutation must be 'hard' or 'soft', got {self.permutation!r}")
        if self.stage_dropout and len(self.stage_dropout) != n:
            raise ConfigError(f"config {self.name!r}: stage_dropout needs one value per stage ({n}), "
                              f"got {self.stage_dropout}")
        if any(not 0 <= p < 1 for p in (*self.stage_dropout, self.fc_dropout)):
            raise ConfigError(f"config {self.name!r}: dropout probabilities must be in [0, 1)")
        if self.fc_blocks < 0 or self.fc_width < 1 or not self.act_norm > 0 or not self.clamp > 0:
            raise ConfigError(f"config {self.name!r}: fc_blocks >= 0, fc_width >= 1, act_norm > 0 and clamp > 0 needed")
        if len(self.data_mean) != self.in_channels or len(self.data_std) != self.in_channels:
            raise ConfigError(f"config {self.name!r}: data_mean/data_std need one value per channel")

    @property
    def num_downsamples(self) -> int:
        return self.entry_downsamples + sum(s == 2 for s in self.stage_strides)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the last feature map, before DCT pooling."""
        k = self.num_downsamples
        return (self.in_channels * 4**k, self.image_size // 2**k, self.image_size // 2**k)

    @property
    def n_dims(self) -> int:
        c, h, w = self.input_shape
        return c * h * w


@dataclass(frozen=True)
class TrainConfig:
    """Training defaults of a config; every field can be overridden in ``fit`` or on the CLI."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9, as the paper's ImageNet runs)
    weight_decay: float = 0.0
    schedule: str = "onecycle"  # "onecycle" (linear warm-up, cosine decay), "cosine", "constant"
    warmup_fraction: float = 0.05
    grad_clip: float = 10.0
    burn_in_steps: int = 0  # steps with lr/10 at the very start (helps deep flows settle)
    augment_flip: bool = False  # random horizontal flips of the training images
    augment_shift: int = 0  # random translations by up to this many pixels
    # -- the IB-INN recipe (vislearn/IB-INN default.ini / data.py); the defaults reproduce gclib's small model --
    label_smoothing: float = 0.0  # on the class term L_Y (IB-INN: 0.01 MNIST, 0.02 CIFAR; ImageNet code: 0.05)
    input_noise: float = 0.0  # std of Gaussian noise added to training images on the [0, 1] scale (IB-INN 0.01)
    head_lr_scale: float = 1.0  # learning rate of the class means relative to the rest
    head_weight_decay: float | None = None  # weight decay of the class means (None: the same as the rest)

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.input_noise >= 0:
            raise ConfigError(f"input_noise must be >= 0, got {self.input_noise}")
        if not self.head_lr_scale > 0:
            raise ConfigError(f"head_lr_scale must be > 0, got {self.head_lr_scale}")
        if self.head_weight_decay is not None and not self.head_weight_decay >= 0:
            raise ConfigError(f"head_weight_decay must be >= 0 or None, got {self.head_weight_decay}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def name(self) -> str:
        return self.model.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        def tuples(section: dict) -> dict:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}

        try:
            model, train = ModelConfig(**tuples(d["model"])), TrainConfig(**tuples(d.get("train", {})))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"not a gclib config ({err}); expected the dict written by Config.to_dict()") from err
        return cls(_current_name(model), train)


# Configs renamed since checkpoints were written: the name then -> the name now. A stored architecture
# gets the new name only when it is exactly the renamed config's (the small model was called
# "fashion-mnist" until the strong recipe became the default).
RENAMED = {"fashion-mnist": "fashion-mnist-small"}


def _current_name(model: ModelConfig) -> ModelConfig:
    new = RENAMED.get(model.name)
    if new in _CONFIGS and dataclasses.replace(model, name=new) == _CONFIGS[new].model:
        return dataclasses.replace(model, name=new)
    return model


_CONFIGS: dict[str, Config] = {}


def register_config(config: Config) -> Config:
    """Add a config under ``config.name`` so ``get_config`` and checkpoints can find it."""
    _CONFIGS[config.name] = config
    return config


def config_names() -> list[str]:
    return sorted(_CONFIGS)


def override_model(model: ModelConfig, assignments: list[str]) -> ModelConfig:
    """``model`` with fields changed by ``"field=value"`` strings (the CLI's ``--set``).

    Values are parsed by the field's current type: ``stage_blocks=8,16``, ``fc_blocks=1``,
    ``subnet_batchnorm=true``, ``permutation=soft``, ``stage_dropout=0,0.25``.

    >>> override_model(get_config("fashion-mnist").model, ["fc_blocks=1", "stage_blocks=2,4"]).stage_blocks
    (2, 4)
    """
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    changes = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or key not in fields or key == "name":
            raise ConfigError(f"cannot set {text!r}: use FIELD=VALUE with FIELD one of "
                              f"{', '.join(k for k in fields if k != 'name')}")
        current = getattr(model, key)
        try:
            if isinstance(current, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                parsed = value.lower() in ("true", "1")
            elif isinstance(current, tuple):
                kind = type(current[0]) if current else float
                parsed = tuple(kind(v) for v in value.split(",") if v.strip())
            else:
                parsed = type(current)(value)
        except ValueError:
            raise ConfigError(f"cannot set {key}={value!r}: expected a value like {current!r}") from None
        changes[key] = parsed
    return dataclasses.replace(model, **changes)


def dataset_of(config_name: str) -> str:
    """The dataset a named config is for: ``fashion-mnist-large`` -> ``fashion-mnist``."""
    for dataset in ("fashion-mnist", "cifar10", "imagenet"):
        if config_name == dataset or config_name.startswith(dataset + "-"):
            return dataset
    return config_name


def get_config(name: str | Config) -> Config:
    """The config called ``name`` (a Config is returned unchanged)."""
    if isinstance(name, Config):
        return name
    if not isinstance(name, str) or name not in _CONFIGS:
        raise ConfigError(f"unknown config {name!r}; known configs: {', '.join(config_names())}")
    return _CONFIGS[name]


# fashion-mnist-small (called fashion-mnist until the strong recipe became the default): chosen by
# measurement on 2 CPU cores (beta = 8, full training set; see book/models.md):
# - subnets conv3x3-ReLU-conv3x3 (subnet_depth=0: the residual branch of a ResNet basic block, the
#   coupling's additive update acting as the skip). One extra residual block per subnet made a step
#   5.5x slower for +0.4 points at equal epochs (85.8 vs 85.4 %, 2 epochs on 20k images, beta = inf).
# - widths (32, 64) vs (32, 128) and n_fc_dims 16 vs 160 changed accuracy by < 0.5 points.
# - what mattered: a higher learning rate (1e-2 vs 2e-3: +2 points in short runs), batch 64 (more steps),
#   and flips + 2-pixel shifts, without which the model overfits (train 95 %, val 90.9 % after 8 epochs)
#   and with which it reaches 91.2 % val in 8 epochs (4.3 minutes).
register_config(
    Config(
        ModelConfig(
            name="fashion-mnist-small",
            in_channels=1,
            image_size=28,
            num_classes=10,
            entry_downsamples=1,  # 1x28x28 -> 4x14x14
            stage_blocks=(4, 8),
            stage_strides=(1, 2),  # 4x14x14, then 16x7x7
            stage_widths=(32, 64),
            subnet_depth=0,
            n_fc_dims=16,  # the DC term of each of the 16 channels
            low_rank=32,
            mu_init=3.0,
            data_mean=(0.286,),
            data_std=(0.353,),
        ),
        TrainConfig(epochs=8, batch_size=64, lr=1e-2, optimizer="adam", weight_decay=1e-5, augment_flip=True,
                    augment_shift=2),
    )
)

# fashion-mnist-large: the IB-INN recipe (vislearn/IB-INN, MNIST config) scaled to what 2 CPU cores can
# train: 24 coupling blocks (IB-INN: 48) with IB-INN's subnets (two 3x3 convs with BatchNorm, a 1x1 out),
# soft (random orthogonal) permutations, clamp 0.7, act-norm 0.8, one fully connected coupling of width
# 1024 with dropout 0.5 on the DCT output; label smoothing 0.02, Gaussian input noise 0.01, class means
# without weight decay. 3.2 M parameters, ~150 training images/s on one CPU core (the small model: ~760).
register_config(
    Config(
        ModelConfig(
            name="fashion-mnist-large",
            in_channels=1,
            image_size=28,
            num_classes=10,
            entry_downsamples=1,
            stage_blocks=(8, 16),
            stage_strides=(1, 2),
            stage_widths=(32, 64),
            subnet="ibinn",
            subnet_batchnorm=True,
            n_fc_dims=16,
            low_rank=32,
            clamp=0.7,
            act_norm=0.8,
            mu_init=5.0,
            permutation="soft",
            fc_blocks=1,
            fc_width=1024,
            fc_dropout=0.5,
            data_mean=(0.286,),
            data_std=(0.353,),
        ),
        TrainConfig(epochs=10, batch_size=64, lr=2e-3, optimizer="adam", weight_decay=1e-5, augment_flip=True,
                    augment_shift=2, burn_in_steps=200, label_smoothing=0.02, input_noise=0.01,
                    head_weight_decay=0.0),
    )
)

# fashion-mnist (the default): fashion-mnist-large's architecture with the recipe the shipped large
# models were trained with (no Gaussian input noise). 10 epochs take 86-103 minutes on one CPU core.
_LARGE = get_config("fashion-mnist-large")
register_config(Config(dataclasses.replace(_LARGE.model, name="fashion-mnist"),
                       dataclasses.replace(_LARGE.train, input_noise=0.0)))

register_config(
    Config(
        ModelConfig(
            name="cifar10",
            in_channels=3,
            image_size=32,
            num_classes=10,
            entry_downsamples=1,  # 3x32x32 -> 12x16x16
            stage_blocks=(4, 6, 4),
            stage_strides=(1, 2, 2),  # 12x16x16, 48x8x8, 192x4x4
            stage_widths=(64, 128, 256),
            n_fc_dims=192,
            low_rank=64,
            data_mean=(0.491, 0.482, 0.447),
            data_std=(0.247, 0.243, 0.262),
        ),
        TrainConfig(epochs=100, batch_size=128, lr=1e-3, augment_flip=True, augment_shift=2),
    )
)

register_config(
    Config(
        ModelConfig(
            name="imagenet",
            in_channels=3,
            image_size=224,
            num_classes=1000,
            entry_downsamples=2,  # 3x224x224 -> 48x56x56 (the ResNet stem's stride 4)
            stage_blocks=(3, 4, 6, 3),
            stage_strides=(1, 2, 2, 2),  # 48x56x56, 192x28x28, 768x14x14, 3072x7x7
            stage_widths=(64, 128, 256, 512),  # bottleneck widths of ResNet-50
            subnet="bottleneck",
            n_fc_dims=3072,  # the DC term of every channel
            low_rank=128,
            data_mean=(0.485, 0.456, 0.406),
            data_std=(0.229, 0.224, 0.225),
        ),
        # The paper: SGD, momentum 0.9, lr 0.07, batch 384, 50 epochs.
        TrainConfig(epochs=50, batch_size=384, lr=0.07, optimizer="sgd", weight_decay=1e-4, schedule="cosine",
                    burn_in_steps=500),
    )
)
