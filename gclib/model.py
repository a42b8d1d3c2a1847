"""The IB-INN generative classifier and its feed-forward baseline.

A generative classifier (GC) models p(x|y). Here an invertible network f maps an image x to a latent
z = f(x) of the same size, and z follows a Gaussian mixture with one mean mu_y per class and unit
covariance, so that

    log p(x|y) = -||f(x) - mu_y||^2 / 2 - D/2 log(2 pi) + log|det J_f(x)|.

The class posterior follows from Bayes' rule with a uniform prior; ``model(x)`` returns its logarithm,
so captum, torchmetrics and attack libraries work on a GC unchanged. Reference: Mackowiak et al.,
"Generative Classifiers as a Basis for Trustworthy Image Classification", CVPR 2021; Ardizzone et al.,
"Training Normalizing Flows with the Information Bottleneck for Competitive Generative Classification",
NeurIPS 2020.
"""

from __future__ import annotations

import contextlib
import hashlib
import math

import numpy as np
import torch
import torchvision
from FrEIA.framework import SequenceINN
from FrEIA.modules import GLOWCouplingBlock, PermuteRandom
from torch import Tensor, nn

from .configs import Config, ModelConfig, get_config
from .errors import ConfigError, InputError
from .modules import (BottleneckSubnet, CouplingBlock, DCTPooling, FCSubnet, Float32Haar, IBINNSubnet, Normalize,
                      ResNetSubnet, float32)

__all__ = ["GenerativeClassifier", "GaussianMixtureHead", "FeedForwardClassifier", "check_images", "evaluation_point",
           "nats_to_bits_per_dim"]

LOG_2PI = math.log(2 * math.pi)


def check_images(x, input_shape: tuple[int, ...], device: torch.device | None = None) -> Tensor:
    """Validate a batch of images for a model with ``input_shape`` (C, H, W); return it unchanged.

    Raises InputError naming the problem and the fix: not a tensor, integer dtype, wrong rank,
    channels or size, empty batch, NaN/inf, values outside [0, 1], or a tensor on another device.
    """
    c, h, w = input_shape
    if not isinstance(x, Tensor):
        raise InputError(f"expected a torch.Tensor of shape [B, {c}, {h}, {w}], got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(
            f"expected floating-point images in [0, 1], got dtype {x.dtype}; for 8-bit images use x.float() / 255"
        )
    if x.dim() == 3 and tuple(x.shape) == (c, h, w):
        raise InputError(f"expected a batch [B, {c}, {h}, {w}], got one image {tuple(x.shape)}; use x.unsqueeze(0)")
    if x.dim() != 4:
        raise InputError(f"expected a 4-D batch [B, {c}, {h}, {w}], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError("empty batch: x has 0 images")
    if x.shape[1] != c:
        raise InputError(
            f"the model expects {c} channel(s), got {x.shape[1]} (shape {tuple(x.shape)}); "
            + ("convert to grayscale first" if c == 1 else "repeat or convert the channels first")
        )
    if tuple(x.shape[2:]) != (h, w):
        raise InputError(f"the model expects {h}x{w} images, got {x.shape[2]}x{x.shape[3]}; resize them first")
    if device is not None and x.device.type != device.type:
        raise InputError(f"the images are on {x.device} but the model is on {device}; use x.to(model.device)")
    with torch.no_grad():
        if not torch.isfinite(x).all():
            raise InputError("the images contain NaN or inf values")
        lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(f"pixel values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]; rescale (x / 255?)")
    return x


@contextlib.contextmanager
def _seeded(seed: int | None):
    """Seed torch and numpy (FrEIA draws its permutations from numpy) for a block, then restore them."""
    if seed is None:
        yield
        return
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)


class GaussianMixtureHead(nn.Module):
    """Unit-covariance Gaussian mixture over the latent z with learnable class means.

    The first ``n_fc_dims`` dims have a free mean per class, initialised as scaled one-hot blocks; the
    remaining ``D - n_fc_dims`` dims have rank-``low_rank`` means ``coeff[y] @ basis`` (zero if rank 0).
    The means are never materialised as a [C, D] matrix (1000 x 150528 floats for ImageNet): squared
    distances are expanded as ||z||^2 - 2 z.mu + ||mu||^2. Computed in float32 even under autocast.
    """

    def __init__(self, n_dims: int, num_classes: int, n_fc_dims: int, low_rank: int = 0, mu_init: float = 3.0):
        super().__init__()
        self.n_dims, self.num_classes, self.n_fc_dims = n_dims, num_classes, n_fc_dims
        mu_fc = torch.zeros(num_classes, n_fc_dims)
        block = n_fc_dims // num_classes
        if block >= 1:
            for y in range(num_classes):
                mu_fc[y, y * block : (y + 1) * block] = mu_init / math.sqrt(block)
        else:  # fewer dims than classes: random means of the same norm
            mu_fc = torch.randn(num_classes, n_fc_dims)
            mu_fc = mu_init * mu_fc / mu_fc.norm(dim=1, keepdim=True)
        self.mu_fc = nn.Parameter(mu_fc)
        n_rest = n_dims - n_fc_dims
        self.low_rank = low_rank if n_rest > 0 else 0
        if self.low_rank:
            self.mu_coeff = nn.Parameter(torch.zeros(num_classes, self.low_rank))
            self.mu_basis = nn.Parameter(torch.randn(self.low_rank, n_rest) / math.sqrt(n_rest))
        self.register_buffer("log_prior", torch.full((num_classes,), -math.log(num_classes)))

    def means(self, y: Tensor | None = None) -> Tensor:
        """Class means, [C, D] (or [len(y), D] for the classes in ``y``)."""
        fc = self.mu_fc if y is None else self.mu_fc[y]
        if not self.low_rank:
            return torch.cat([fc, fc.new_zeros(fc.shape[0], self.n_dims - self.n_fc_dims)], dim=1)
        coeff = self.mu_coeff if y is None else self.mu_coeff[y]
        return torch.cat([fc, coeff @ self.mu_basis], dim=1)

    def log_density(self, z: Tensor) -> Tensor:
        """log N(z; mu_y, I) for every class, [B, C], in float32 (float64 if z is), also under autocast."""
        z, ctx = float32(z)
        with ctx:
            return self._log_density(z)

    def _log_density(self, z: Tensor) -> Tensor:
        dtype = z.dtype
        z_fc, z_rest = z[:, : self.n_fc_dims], z[:, self.n_fc_dims :]
        mu_fc = self.mu_fc.to(dtype)
        cross = z_fc @ mu_fc.T
        mu_sq = (mu_fc**2).sum(1)
        if self.low_rank:
            coeff, basis = self.mu_coeff.to(dtype), self.mu_basis.to(dtype)
            cross = cross + (z_rest @ basis.T) @ coeff.T
            mu_sq = mu_sq + ((coeff @ (basis @ basis.T)) * coeff).sum(1)
        sq_dist = (z**2).sum(1, keepdim=True) - 2 * cross + mu_sq
        return -0.5 * sq_dist - 0.5 * self.n_dims * LOG_2PI

    def sample(self, y: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        mu = self.means(y)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + temperature * noise


class GenerativeClassifier(nn.Module):
    """IB-INN generative classifier: FrEIA invertible backbone + DCT pooling + Gaussian-mixture head.

    Arguments:
        config: a config name (``"fashion-mnist"``, ``"cifar10"``, ``"imagenet"``), a ``Config`` or a
            ``ModelConfig``.

    All public methods take images ``x`` of shape [B, C, H, W] with values in [0, 1] and check them
    (``check_inputs = False`` skips the check, e.g. inside attacks that step outside [0, 1]).

    >>> model = GenerativeClassifier.from_config("fashion-mnist", seed=0)
    >>> x = torch.rand(2, 1, 28, 28)
    >>> model.class_log_likelihoods(x).shape, model(x).shape, model.log_px(x).shape
    (torch.Size([2, 10]), torch.Size([2, 10]), torch.Size([2]))
    >>> z = model.encode(x)
    >>> bool((model.inverse(z) - x).abs().max() < 1e-4)
    True
    """

    check_inputs: bool = True
    # The common classifier interface (gclib.classifier).
    family = "ibinn"
    score_kind = "exact"  # class_scores are exact log p(x|y)
    density_kind = "exact"
    capabilities = frozenset({"latent", "sample"})
    evaluations_per_image = 1

    def __init__(self, config: str | Config | ModelConfig = "fashion-mnist"):
        super().__init__()
        if not isinstance(config, ModelConfig):
            config = get_config(config).model
        self.config = config
        with _seeded(config.permutation_seed + 12345):
            self.flow = self._build_flow(config)
        # The head's random part (the low-rank basis) is drawn from the caller's RNG, like the subnets' convs.
        self.head = GaussianMixtureHead(
            config.n_dims, config.num_classes, config.n_fc_dims, config.low_rank, config.mu_init
        )

    @classmethod
    def from_config(cls, config: str | Config | ModelConfig = "fashion-mnist", seed: int | None = None):
        """Build a freshly initialised model; with ``seed`` the weights are reproducible."""
        with _seeded(seed):
            return cls(config)

    @staticmethod
    def _build_flow(cfg: ModelConfig) -> SequenceINN:
        flow = SequenceINN(*cfg.input_shape)
        flow.append(Normalize, mean=cfg.data_mean, std=cfg.data_std)
        for _ in range(cfg.entry_downsamples):
            flow.append(Float32Haar)
        subnet_cls = {"resnet": ResNetSubnet, "bottleneck": BottleneckSubnet, "ibinn": IBINNSubnet}[cfg.subnet]
        dropouts = cfg.stage_dropout or (0.0,) * len(cfg.stage_blocks)
        for blocks, stride, width, dropout in zip(cfg.stage_blocks, cfg.stage_strides, cfg.stage_widths, dropouts):
            if stride == 2:
                flow.append(Float32Haar)
            for _ in range(blocks):
                flow.append(
                    CouplingBlock,
                    subnet_constructor=lambda c_in, c_out, w=width, p=dropout: subnet_cls(
                        c_in, c_out, w, cfg.subnet_depth, batchnorm=cfg.subnet_batchnorm, dropout=p),
                    affine_clamping=cfg.clamp,
                    global_affine_init=cfg.act_norm,
                    permute_soft=cfg.permutation == "soft",
                )
        flow.append(DCTPooling)
        # IB-INN's fully connected part: a fixed random permutation of all D dims, then an affine coupling
        # with an MLP subnet, per block. Its output is the latent (the DC terms are no longer first).
        for k in range(cfg.fc_blocks):
            flow.append(PermuteRandom, seed=cfg.permutation_seed * 1000 + k)
            flow.append(GLOWCouplingBlock, subnet_constructor=lambda d_in, d_out: FCSubnet(
                d_in, d_out, cfg.fc_width, cfg.fc_dropout), clamp=cfg.fc_clamp)
        return flow

    # -- properties ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.head.mu_fc.device

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def n_dims(self) -> int:
        return self.config.n_dims

    @property
    def class_means(self) -> Tensor:
        """[C, D] class means in latent space (materialised: avoid for ImageNet-size models)."""
        return self.head.means()

    def _check(self, x: Tensor) -> Tensor:
        if self.check_inputs:
            check_images(x, self.config.input_shape, self.device)
        dtype = self.head.mu_fc.dtype
        return x if x.dtype == dtype else x.to(dtype)

    # -- the maths ----------------------------------------------------------------------------
    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # FrEIA returns a Python float log-det for modules without parameters; make it a tensor.
        z, log_det = self.flow(x)
        if not torch.is_tensor(log_det) or log_det.dim() == 0:
            log_det = torch.as_tensor(log_det, device=z.device, dtype=z.dtype).expand(z.shape[0])
        return z, log_det

    def _class_log_likelihoods(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(log p(x|y) [B, C] in nats, z [B, D]) without input checks; used by training."""
        z, log_det = self._encode(x)
        log_density = self.head.log_density(z)
        return log_density + log_det.to(log_density.dtype)[:, None], z

    def encode(self, x: Tensor) -> Tensor:
        """Latent z = f(x), [B, D] (DC terms of every channel first)."""
        return self._encode(self._check(x))[0]

    def log_det_jacobian(self, x: Tensor) -> Tensor:
        """log|det df/dx| per image, [B]."""
        return self._encode(self._check(x))[1]

    def inverse(self, z: Tensor) -> Tensor:
        """x = f^-1(z) for latents [B, D]; the exact inverse of ``encode``."""
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.n_dims:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise InputError(f"expected latents of shape [B, {self.n_dims}], got {shape}")
        # clone: FrEIA's HaarDownsampling scales its input in place when run in reverse.
        x, _ = self.flow(z.to(self.head.mu_fc.dtype).clone(), rev=True)
        return x

    def class_log_likelihoods(self, x: Tensor) -> Tensor:
        """log p(x|y) for every class, [B, C], in nats (Gaussian constant and log-det included)."""
        return self._class_log_likelihoods(self._check(x))[0]

    def class_scores(self, x: Tensor) -> Tensor:
        """The interface's class scores: ``class_log_likelihoods`` (exact log p(x|y), nats), [B, C]."""
        return self.class_log_likelihoods(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits = log p(y|x), [B, C] (log-softmax of log p(x|y) + log p(y))."""
        cll = self.class_log_likelihoods(x)
        return torch.log_softmax(cll + self.head.log_prior, dim=1)

    def log_px(self, x: Tensor) -> Tensor:
        """log p(x) = logsumexp_y log p(x|y) + log p(y), [B], nats, for x on the [0, 1] scale."""
        return torch.logsumexp(self.class_log_likelihoods(x) + self.head.log_prior, dim=1)

    def bits_per_dim(self, x: Tensor, dequantization: str = "seeded", seed: int = 0) -> Tensor:
        """-log2 p(x) per dim on the 8-bit scale, [B]: the figure in the zoo's manifests and the book.

        The model was trained on uniformly dequantized images (k + u) / 256, so the density is evaluated
        at such a point, not at the raw k / 255 (which for black and white pixels lies on the edge of the
        training support and gives a different, meaningless number). ``dequantization``:

        - ``"seeded"`` (default): (round(255 x) + u) / 256 with uniform noise u drawn per image from a
          generator seeded by ``seed`` and the image's own 8-bit pixels: the usual dequantized estimate,
          independent across images, and the same for an image in any batch or order. Over the test set
          its mean is the manifest's ``bits_per_dim``.
        - ``"centre"``: the cell centres (round(255 x) + 1/2) / 256.
        - ``"none"``: the continuous density at ``x`` as given (for inputs off the 8-bit grid, e.g. attacked
          images, or images you dequantized yourself).

        The first two snap ``x`` to the 8-bit grid first.
        """
        return nats_to_bits_per_dim(self.log_px(evaluation_point(self._check(x), dequantization, seed)),
                                    self.n_dims)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Most likely class, [B] (int64)."""
        return self.class_log_likelihoods(x).argmax(1)

    @torch.no_grad()
    def sample(self, y: Tensor | int | list, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Images drawn from p(x|y) with the latent noise scaled by ``temperature``, [len(y), C, H, W]."""
        y = torch.as_tensor(y, device=self.device).reshape(-1).long()
        if y.numel() == 0 or int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise InputError(f"class labels must be in 0..{self.num_classes - 1}, got {y.tolist()[:10]}")
        if not temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {temperature}")
        return self.inverse(self.head.sample(y, temperature, generator))


def evaluation_point(x: Tensor, dequantization: str = "seeded", seed: int = 0) -> Tensor:
    """Where a GC's density is read for 8-bit images ``x`` in [0, 1]: see ``GenerativeClassifier.bits_per_dim``.

    >>> x = torch.tensor([[[[0.0, 1.0]]], [[[0.5, 0.2]]]])
    >>> evaluation_point(x, "centre").mul(256).tolist()
    [[[[0.5, 255.5]]], [[[128.5, 51.5]]]]
    >>> bool(torch.equal(evaluation_point(x)[1], evaluation_point(x.flip(0))[0]))  # any batch, any order
    True
    """
    if dequantization == "none":
        return x
    cells = torch.round(x * 255)
    if dequantization == "centre":
        return (cells + 0.5) / 256
    if dequantization == "seeded":
        return (cells + _image_seeded_uniform(cells, seed).to(x.device, x.dtype)) / 256
    raise InputError(f"dequantization must be 'seeded', 'centre' or 'none', got {dequantization!r}")


def _image_seeded_uniform(cells: Tensor, seed: int) -> Tensor:
    # One generator per image, seeded by a hash of (seed, the image's 8-bit values): the noise of an image
    # does not depend on its batch or position, unlike one generator per batch (the figure would change
    # with the batch size), and differs between images, unlike one noise field shared by all (whose
    # single draw moved the test-set mean by 0.018 bits/dim for the beta = 0 model). ~10 us per image.
    data = cells.detach().to("cpu", torch.uint8).reshape(len(cells), -1).numpy()
    noise = torch.empty(cells.shape, dtype=torch.float64)
    for i, row in enumerate(data):
        digest = hashlib.blake2b(row.tobytes(), digest_size=8, key=seed.to_bytes(8, "little", signed=True))
        g = torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
        noise[i] = torch.rand(cells.shape[1:], generator=g, dtype=torch.float64)
    return noise


def nats_to_bits_per_dim(log_px: Tensor, n_dims: int) -> Tensor:
    """Bits/dim on the 8-bit scale from log p(x) in nats for x on the [0, 1] scale.

    A density on [0, 1]^D is a density on [0, 256]^D divided by 256^D, hence the D log 256 term.
    """
    return -(log_px - n_dims * math.log(256.0)) / (n_dims * math.log(2.0))


ARCHS = ("resnet18", "resnet34", "resnet50", "resnet20")


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (2016, section 4.2): a 3x3 stem of 16 channels, three stages of ``blocks``
    basic blocks with 16, 32 and 64 channels (stride 2 between stages), global average pooling and a
    linear layer. ``blocks=3`` is ResNet-20 (0.27 M parameters); Cohen et al. smooth its deeper sibling
    ResNet-110 (``blocks=18``) on CIFAR-10. Written here because torchvision has only the ImageNet ResNets,
    whose 11 M parameters (22 MB in fp16) per model would not fit three noise-trained copies in the
    checkpoint budget.

    >>> net = CifarResNet(1, 10)
    >>> net(torch.zeros(2, 1, 28, 28)).shape, sum(p.numel() for p in net.parameters())
    (torch.Size([2, 10]), 272186)
    """

    def __init__(self, in_channels: int, num_classes: int, blocks: int = 3, stem_stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, c_in = [], 16
        for stage, c_out in enumerate((16, 32, 64)):
            for b in range(blocks):
                layers.append(_BasicBlock(c_in, c_out, 2 if stage > 0 and b == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(out.mean((2, 3)))


class FeedForwardClassifier(nn.Module):
    """The discriminative baseline: a torchvision ResNet adapted to the input size and channels, or
    (``arch="resnet20"``) He et al.'s small CIFAR ResNet (:class:`CifarResNet`).

    For small inputs (< 64 px) the stem is a 3x3 convolution with ``stem_stride`` and no max-pool, as
    is usual for CIFAR-sized images. The input normalisation is part of the model, so it takes images
    in [0, 1] like the GC and ``model(x)`` returns logits.
    """

    check_inputs: bool = True
    # The common classifier interface (gclib.classifier): a discriminative model, no density.
    family = "resnet"
    score_kind = "logits"
    density_kind = None
    capabilities = frozenset()
    evaluations_per_image = 1

    def __init__(self, config: str | Config | ModelConfig = "fashion-mnist", arch: str | None = None,
                 stem_stride: int = 1):
        super().__init__()
        if not isinstance(config, ModelConfig):
            config = get_config(config).model
        self.config = config
        self.arch = arch or ("resnet50" if config.image_size >= 64 else "resnet18")
        self.stem_stride = stem_stride
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown arch {self.arch!r}; use one of {', '.join(ARCHS)}")
        if self.arch == "resnet20":
            net = CifarResNet(config.in_channels, config.num_classes, stem_stride=stem_stride)
        else:
            net = getattr(torchvision.models, self.arch)(weights=None, num_classes=config.num_classes)
            if config.image_size < 64:
                net.conv1 = nn.Conv2d(config.in_channels, 64, 3, stride=stem_stride, padding=1, bias=False)
                net.maxpool = nn.Identity()
            elif config.in_channels != 3:
                net.conv1 = nn.Conv2d(config.in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.net = net
        self.register_buffer("mean", torch.tensor(config.data_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.data_std).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, config="fashion-mnist", seed: int | None = None, **kwargs):
        with _seeded(seed):
            return cls(config, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def _logits(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        """Logits, [B, C]."""
        if self.check_inputs:
            check_images(x, self.config.input_shape, self.device)
        return self._logits(x)

    def class_scores(self, x: Tensor) -> Tensor:
        """The interface's class scores: the logits, [B, C] (``score_kind = "logits"``)."""
        return self(x)

    def log_px(self, x: Tensor) -> Tensor:
        from .classifier import require

        require(self, "density", "log_px")

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self(x).argmax(1)
