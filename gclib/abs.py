"""Analysis by synthesis (ABS): one VAE per class, classified by optimising each class's latent at test time.

The model of Schott, Rauber, Bethge, Brendel, "Towards the first adversarially robust neural network model
on MNIST" (ICLR 2019), and the VAE-based generative classifier of An Ju's thesis, behind gclib's common
interface (:mod:`gclib.classifier`), for 28x28 images (Fashion-MNIST).

**Model.** Class y has its own VAE: prior p(z) = N(0, I) with ``latent_dim`` dimensions (8, as in ABS), a
small convolutional decoder f_y(z) (pixel logits) and an encoder q_y(z|x) = N(mu_y(x), diag sigma_y(x)^2)
used for training only. The likelihood p(x|z, y) is chosen by ``ABSConfig.similarity``:

- ``"mse"`` (default): Gaussian, x ~ N(sigmoid(f_y(z)), s^2 I) with a fixed ``sigma`` = s on the [0, 1]
  pixel scale: the squared pixel error ABS uses, as a normalised density (nats, constants included);
- ``"edge"``: Gaussian with the structured precision (I + lambda G^T G) / s^2, G the horizontal and vertical
  pixel differences, i.e. -log p = (||r||^2 + lambda ||G r||^2) / (2 s^2) + const: a fixed-filter edge
  (gradient) similarity that is still a normalised density (its log-determinant is exact, closed form);
- ``"bernoulli"``: the Bernoulli cross-entropy of the grey values. For non-binary x it is not a
  normalised density, but it integrates to at most 1 over [0, 1]^D, so the bound below is also a lower
  bound on the log-density of the same VAE with a continuous-Bernoulli decoder;
- ``"ssim"``: ``ssim_weight * D * (1 - SSIM(x, mean))`` (structural similarity, Gaussian window 11,
  sigma 1.5, as torchmetrics' default) in place of -log p: a surrogate, not a density. Trained as ``"mse"``,
  and the search starts from the best prior sample under ``"mse"``.

**Training** (:func:`fit`): each VAE maximises its ELBO (analytic KL, reparameterised reconstruction term)
on its class's images; ``beta_kl`` weights the KL term (1: the ELBO). The images are used as given
(8-bit values / 255, not dequantized): the bounds are of the continuous density at those points.

**Classification** (as ABS): for every class, the latent is found by optimisation, not by the encoder
(which an attacker could fool): start from the best of a cached, seeded set of prior samples
(``n_prior_samples``, 8000 as in ABS; the ``fraction_to_dismiss`` least probable draws are dropped), then
``n_steps`` Adam steps on ABS's per-class loss ``L_y(x, z) = -log p(x | f_y(z)) + ||z||^2 / 2`` (its
"ELBO" with q = N(z, I) and the reconstruction term read at q's mean), keeping the best point seen (the
loss never increases), with the latent's norm clipped to ``latent_clip`` after each step (``start`` can add
or use the class encoder's mean as a start instead: not ABS's rule, see :class:`ABSConfig`). The class score
(``ABSConfig.score``) at the found z*:

- ``"bound"`` (default): the importance-weighted bound (Burda et al.) with q = N(z*, diag s_y^2) and
  ``n_bound_samples`` K fixed, seeded draws shared by all images and classes (K = 1: the ELBO). s_y is the
  geometric mean of the encoder's standard deviations over class y's training images, recorded by
  :func:`fit`. Any q gives a lower bound on log p(x|y) in expectation over the draws, so
  ``score_kind = density_kind = "bound"``; ``log_px`` is the log-sum-exp over classes with the uniform
  prior, again a bound. As the draws are fixed (the same number for an image every time), one image's score
  can exceed its log p(x|y) by up to about the estimator's spread (a few nats at K = 4, about one at
  K = 16 on the small test models); the mean over many images, or over draw sets, is below it.
- ``"abs"``: ABS's own number, ``-L_y(x, z*)``: not a bound (``score_kind = "surrogate"``, no density).

With ``similarity = "ssim"`` every score is a surrogate. The posterior is ABS's scaled softmax,
``log_softmax(logit_scale * (scores + log p(y)))``: ``logit_scale = 1`` (default) is Bayes' rule on the
scores; ABS used a scale alpha = 440 on its per-pixel loss (squared error with unit KL weight), which here
corresponds to ``logit_scale = 2 alpha sigma^2 / D`` for ``"mse"`` (:func:`abs_logit_scale`).

Gradients: by default z* is treated as a constant (ABS does the same), and the score is differentiable in x
at it, so ``model(x)`` works with captum and gradient attacks (which then see the gradient at the found
latents). With ``ABSConfig.unroll`` the gradient also flows *through* the search, d score / d x including
d z* / d x: the ``n_steps`` Adam updates are then written as differentiable tensor arithmetic (the same
updates as ``torch.optim.Adam``, with the latent gradient taken with ``create_graph=True``), and only the
search's discrete choices are constants: the starting prior sample (an argmin over the cached samples) and
which step was best (the argmin over the steps). That is the adaptive attacker's model of the search (an
attack through the unrolled optimisation); a forward and backward pass then takes a few times as long as
with z* constant (2.5 to 4 times for the shipped model on one CPU thread) and keeps every step's graph in
memory (about 0.26 GB per image for the shipped model). Values do not change, and without a gradient to x
(``torch.no_grad``, or an input that does not require grad) the unrolled model runs the ordinary search.

Cost per image (``evaluations_per_image``): C (n_steps + 1) decoder passes (n_steps of them with a
backward pass to z) plus C K for the bound; the prior samples are decoded once per model (C N passes,
kept in memory as C x N x D floats: 250 MB at the defaults) and compared with each image by one
matrix product.

>>> model = ABSClassifier(ABSConfig(width=4, n_prior_samples=16, n_steps=2, n_bound_samples=2), seed=0)
>>> x = torch.rand(2, 1, 28, 28)
>>> model.class_scores(x).shape, model(x).exp().sum(1).round().tolist(), model.evaluations_per_image
(torch.Size([2, 10]), [1.0, 1.0], 50)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from . import checkpoints
from .errors import CheckpointError, ConfigError, InputError, TrainingError

__all__ = [
    "SCORES",
    "SIMILARITIES",
    "STARTS",
    "VAE",
    "ABSClassifier",
    "ABSConfig",
    "Inference",
    "abs_logit_scale",
    "calibrate_posterior_std",
    "fit",
    "gaussian_kl",
    "load",
    "log_likelihood",
    "prior_samples",
    "save",
    "ssim",
]

SIMILARITIES = ("mse", "edge", "bernoulli", "ssim")
SCORES = ("bound", "abs")
STARTS = ("prior", "encoder", "both")
IMAGE_SIZE = 28
LOG_2PI = math.log(2 * math.pi)
FORMAT = "gclib-abs-checkpoint"
FORMAT_VERSION = 1
STATE_FORMAT = "gclib-abs-training-state"


@dataclass(frozen=True)
class ABSConfig:
    """Architecture and inference settings of an :class:`ABSClassifier` (see the module docstring).

    Args:
        num_classes: C, one VAE each.
        channels: image channels (the images are 28x28).
        latent_dim: latent dimensions per VAE (ABS: 8).
        width: channels of the first conv layers (the last encoder / first decoder layer has 2 x width).
        similarity: ``"mse"``, ``"edge"``, ``"bernoulli"`` or ``"ssim"``: the likelihood / distance.
        sigma: std of the Gaussian likelihood on the [0, 1] scale (``"mse"``, ``"edge"``, ``"ssim"``'s training).
        edge_weight: lambda of ``"edge"``.
        ssim_weight: scale of ``"ssim"``'s loss, ``ssim_weight * D * (1 - SSIM)``.
        n_prior_samples: N cached prior samples per class, the starting points of the search (ABS: 8000).
        fraction_to_dismiss: fraction of the least probable prior draws dropped (ABS: 0.1).
        n_steps: Adam steps on each class's latent (ABS's n_iter - 1); 0: the best prior sample.
        step_lr: Adam's learning rate for the latents.
        latent_clip: after each step the latent's norm is clipped to this (None: no clipping).
        start: ``"prior"`` (ABS: the best cached prior sample), ``"encoder"`` (the class encoder's mean) or
            ``"both"`` (the better of the two). The encoder is fast and close for the true class but can be
            fooled by an attacker, which is why ABS does not use it.
        score: ``"bound"`` (importance-weighted bound at z*) or ``"abs"`` (ABS's -L_y(x, z*)).
        n_bound_samples: K draws of the bound.
        logit_scale: factor on the scores in the softmax (1: Bayes' rule).
        seed: seed of the prior samples and the bound's draws (not of the weights).
        unroll: let gradients to the input flow through the search (d z* / d x, see the module docstring):
            the Adam steps become differentiable arithmetic whenever the input requires grad; the starting
            prior sample and the best-step selection stay constants. Scores do not change. Default False
            (ABS: z* is a constant).
    """

    num_classes: int = 10
    channels: int = 1
    latent_dim: int = 8
    width: int = 32
    similarity: str = "mse"
    sigma: float = 0.1
    edge_weight: float = 1.0
    ssim_weight: float = 1.0
    n_prior_samples: int = 8000
    fraction_to_dismiss: float = 0.1
    n_steps: int = 50
    step_lr: float = 0.1
    latent_clip: float | None = 5.0
    start: str = "prior"
    score: str = "bound"
    n_bound_samples: int = 8
    logit_scale: float = 1.0
    seed: int = 0
    unroll: bool = False

    def __post_init__(self):
        def integer(name, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"ABSConfig.{name} must be an integer >= {low}, got {value!r}")

        def positive(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"ABSConfig.{name} must be a finite number > 0, got {value!r}")

        for name, low in (("num_classes", 2), ("channels", 1), ("latent_dim", 1), ("width", 1),
                          ("n_prior_samples", 1), ("n_steps", 0), ("n_bound_samples", 1), ("seed", 0)):
            integer(name, low)
        for name in ("sigma", "edge_weight", "ssim_weight", "step_lr", "logit_scale"):
            positive(name)
        if self.latent_clip is not None:
            positive("latent_clip")
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"ABSConfig.similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}")
        if self.start not in STARTS:
            raise ConfigError(f"ABSConfig.start must be one of {', '.join(STARTS)}, got {self.start!r}")
        if self.score not in SCORES:
            raise ConfigError(f"ABSConfig.score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if not isinstance(self.unroll, bool):
            raise ConfigError(f"ABSConfig.unroll must be True or False, got {self.unroll!r}")
        f = self.fraction_to_dismiss
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ConfigError(f"ABSConfig.fraction_to_dismiss must be in [0, 1), got {f!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, IMAGE_SIZE, IMAGE_SIZE)

    @property
    def n_dims(self) -> int:
        return self.channels * IMAGE_SIZE * IMAGE_SIZE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ABSConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown ABSConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> ABSConfig:
        return dataclasses.replace(self, **changes)


def abs_logit_scale(config: ABSConfig, alpha: float = 440.0) -> float:
    """The ``logit_scale`` that makes the posterior ABS's scaled softmax with scale ``alpha`` (ABS: 440).

    ABS's logits are -alpha (||x - x_hat||^2 + ||z||^2 / 2) / D; for ``"mse"`` the score is
    -(||x - x_hat||^2 / (2 sigma^2) + ...), so the factor on the squared error matches at
    ``2 alpha sigma^2 / D`` (the KL terms differ by the factor 2 sigma^2: ABS weights them as if sigma^2 = 1/2).
    """
    if config.similarity != "mse":
        raise ConfigError(f"abs_logit_scale is defined for similarity 'mse' (ABS's), got {config.similarity!r}")
    return 2 * alpha * config.sigma**2 / config.n_dims


# -- likelihoods -----------------------------------------------------------------------------------------
def _differences(r: Tensor) -> tuple[Tensor, Tensor]:
    return r[..., :, 1:] - r[..., :, :-1], r[..., 1:, :] - r[..., :-1, :]


def _edge_energy(r: Tensor) -> Tensor:
    """||G r||^2 over the last three dims: squared horizontal and vertical pixel differences."""
    dh, dv = _differences(r)
    return dh.square().sum((-3, -2, -1)) + dv.square().sum((-3, -2, -1))


def _edge_laplacian(x: Tensor) -> Tensor:
    """G^T G x (the grid graph's Laplacian with free boundaries), same shape as x."""
    dh, dv = _differences(x)
    return (F.pad(dh, (1, 0)) - F.pad(dh, (0, 1))) + (F.pad(dv, (0, 0, 1, 0)) - F.pad(dv, (0, 0, 0, 1)))


def _edge_logdet(channels: int, height: int, width: int, weight: float) -> float:
    """log det(I + weight G^T G) in closed form: the grid Laplacian's eigenvalues are a_i + b_j with
    a_i = 2 - 2 cos(pi i / H) (the path graph's), b_j likewise."""
    a = 2 - 2 * torch.cos(math.pi * torch.arange(height, dtype=torch.float64) / height)
    b = 2 - 2 * torch.cos(math.pi * torch.arange(width, dtype=torch.float64) / width)
    return channels * float(torch.log1p(weight * (a[:, None] + b[None, :])).sum())


def _gaussian_window(size: int, sigma: float, dtype, device) -> Tensor:
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: Tensor, b: Tensor, kernel_size: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Mean structural similarity of image pairs [N, C, H, W] -> [N] (Wang et al. 2004; Gaussian window,
    valid positions only, K1 = 0.01, K2 = 0.03: torchmetrics' defaults). Differentiable in both."""
    # Written here (20 lines) rather than taken from torchmetrics: gclib does not depend on torchmetrics,
    # and the test search needs SSIM per image pair in batches of latents, with gradients to the latents.
    c = a.shape[1]
    window = _gaussian_window(kernel_size, sigma, a.dtype, a.device).expand(c, 1, kernel_size, kernel_size)

    def blur(t):
        return F.conv2d(t, window, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def log_likelihood(x: Tensor, logits: Tensor, config: ABSConfig) -> Tensor:
    """log p(x | decoder logits), nats, summed over the last three dims (C, H, W); x and logits broadcast.

    For ``"ssim"`` the negative of its surrogate loss (see the module docstring).
    """
    x, logits = torch.broadcast_tensors(x, logits)
    kind = config.similarity
    if kind == "bernoulli":
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((-3, -2, -1))
    mean = torch.sigmoid(logits)
    d = math.prod(logits.shape[-3:])
    if kind == "ssim":
        shape = logits.shape[:-3]
        s = ssim(x.reshape(-1, *x.shape[-3:]), mean.reshape(-1, *mean.shape[-3:])).view(shape)
        return -config.ssim_weight * d * (1 - s)
    r = x - mean
    energy = r.square().sum((-3, -2, -1))
    log_norm = -d * math.log(config.sigma) - 0.5 * d * LOG_2PI
    if kind == "edge":
        energy = energy + config.edge_weight * _edge_energy(r)
        log_norm += 0.5 * _edge_logdet(*logits.shape[-3:], config.edge_weight)
    return -0.5 * energy / config.sigma**2 + log_norm


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the last dim, nats."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)


def _log_normal(z: Tensor, mu: Tensor | float = 0.0, logvar: Tensor | float = 0.0) -> Tensor:
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * ((z - mu).square() / logvar.exp() + logvar + LOG_2PI).sum(-1)


# -- networks --------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """28x28 -> (mu, logvar) [B, latent_dim]: ABS's conv stack (5x5, 4x4/2, 3x3/2, 5x5), ELU, no batch norm."""

    def __init__(self, channels: int, width: int, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 5), nn.ELU(),  # 28 -> 24
            nn.Conv2d(width, width, 4, stride=2), nn.ELU(),  # -> 11
            nn.Conv2d(width, 2 * width, 3, stride=2), nn.ELU(),  # -> 5
            nn.Conv2d(2 * width, 2 * latent_dim, 5),  # -> 1
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(x).flatten(1).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)


class Decoder(nn.Module):
    """z [N, latent_dim] -> pixel logits [N, C, 28, 28]: transposed convs mirroring the encoder, ELU."""

    def __init__(self, channels: int, width: int, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 2 * width, 5), nn.ELU(),  # 1 -> 5
            nn.ConvTranspose2d(2 * width, width, 4, stride=2), nn.ELU(),  # -> 12
            nn.ConvTranspose2d(width, width, 4, stride=2), nn.ELU(),  # -> 26
            nn.ConvTranspose2d(width, channels, 3),  # -> 28
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z[:, :, None, None])


class VAE(nn.Module):
    """One class's VAE: ``encoder`` (training only), ``decoder`` and the likelihood of ``config``."""

    def __init__(self, config: ABSConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.channels, config.width, config.latent_dim)
        self.decoder = Decoder(config.channels, config.width, config.latent_dim)

    def _train_config(self) -> ABSConfig:
        # "ssim" is a test-time distance; its VAEs are trained with the Gaussian ("mse") likelihood.
        return self.config.replace(similarity="mse") if self.config.similarity == "ssim" else self.config

    def elbo(self, x: Tensor, n_samples: int = 1, beta: float = 1.0,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(elbo, log_lik, kl)``, each [B], nats: E_q[log p(x|z)] by ``n_samples`` reparameterised draws,
        KL(q(z|x) || p(z)) analytic, elbo = log_lik - beta kl (beta = 1: a lower bound on log p(x))."""
        mu, logvar = self.encoder(x)
        eps = torch.randn((n_samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + (0.5 * logvar).exp() * eps  # [S, B, d]
        logits = self.decoder(z.flatten(0, 1)).view(n_samples, *x.shape)
        log_lik = log_likelihood(x, logits, self._train_config()).mean(0)
        kl = gaussian_kl(mu, logvar)
        return log_lik - beta * kl, log_lik, kl

    def iwae(self, x: Tensor, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """The importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), [B], nats:
        a lower bound on log p(x) that tightens with K (and is >= the ELBO in expectation)."""
        mu, logvar = self.encoder(x)
        eps = torch.randn((n_samples, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + (0.5 * logvar).exp() * eps
        logits = self.decoder(z.flatten(0, 1)).view(n_samples, *x.shape)
        log_w = log_likelihood(x, logits, self._train_config()) + _log_normal(z) - _log_normal(z, mu, logvar)
        return torch.logsumexp(log_w, 0) - math.log(n_samples)


def prior_samples(n: int, dim: int, fraction_to_dismiss: float = 0.1,
                  generator: torch.Generator | None = None) -> Tensor:
    """n draws from N(0, I) [n, dim]: ceil(n / (1 - f)) draws, the f least probable (largest norm) dropped."""
    total = math.ceil(n / (1 - fraction_to_dismiss))
    z = torch.randn(total, dim, generator=generator)
    keep = z.square().sum(1).argsort(stable=True)[:n]
    return z[keep]


def _call(module: nn.Module, x: Tensor, frozen: bool):
    """``module(x)``; ``frozen``: with the module's parameters detached (the graph reaches x, not the weights)."""
    if not frozen:
        return module(x)
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, (x,))


@dataclass
class Inference:
    """What the latent search found for every (image, class): ``z`` [B, C, d], decoder ``logits`` at z
    [B, C, ch, H, W], the per-class ``loss`` L_y(x, z) [B, C] (nats), and ``history`` [n_steps + 1, B, C],
    the best loss after each evaluation (non-increasing)."""

    z: Tensor
    logits: Tensor
    loss: Tensor
    history: Tensor


class ABSClassifier(nn.Module):
    """ABS: a VAE per class, classified by per-class latent optimisation (see the module docstring).

    Args:
        config: an :class:`ABSConfig` (default: the ABS settings for Fashion-MNIST).
        seed: seed of the weights (None: the caller's RNG).
    """

    family = "abs"
    capabilities = frozenset({"sample"})
    check_inputs: bool = True

    def __init__(self, config: ABSConfig | None = None, seed: int | None = None):
        super().__init__()
        config = ABSConfig() if config is None else config
        if not isinstance(config, ABSConfig):
            raise ConfigError(f"config must be an ABSConfig, got {type(config).__name__}")
        self.config = config
        if seed is None:
            self.vaes = nn.ModuleList(VAE(config) for _ in range(config.num_classes))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.vaes = nn.ModuleList(VAE(config) for _ in range(config.num_classes))
        g = torch.Generator().manual_seed(config.seed)
        self.register_buffer("prior_z", prior_samples(config.n_prior_samples, config.latent_dim,
                                                      config.fraction_to_dismiss, g))
        self.register_buffer("bound_eps", torch.randn(config.n_bound_samples, config.latent_dim, generator=g))
        self.register_buffer("posterior_std", torch.ones(config.num_classes, config.latent_dim))
        self.register_buffer("log_prior", torch.full((config.num_classes,), -math.log(config.num_classes)))
        self._cache = None

    # -- interface facts ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.config.input_shape

    @property
    def device(self) -> torch.device:
        return self.prior_z.device

    @property
    def score_kind(self) -> str:
        return "bound" if self.config.score == "bound" and self.config.similarity != "ssim" else "surrogate"

    @property
    def density_kind(self) -> str | None:
        return "bound" if self.score_kind == "bound" else None

    @property
    def evaluations_per_image(self) -> int:
        """Network passes per image of one ``class_scores`` call (the cached prior samples not counted): per
        class n_steps + 1 decoder passes, K for the bound, 1 encoder pass for ``start="encoder"``, and 1 encoder
        and 2 decoder passes for ``"both"``."""
        k = self.config.n_bound_samples if self.config.score == "bound" else 0
        start = {"prior": 0, "encoder": 1, "both": 3}[self.config.start]
        return self.num_classes * (self.config.n_steps + 1 + k + start)

    @property
    def cache_evaluations(self) -> int:
        """Decoder passes of the prior-sample cache, once per model (and after every weight change)."""
        return self.num_classes * self.config.n_prior_samples

    def _dtype(self) -> torch.dtype:
        return self.prior_z.dtype

    def _check(self, x: Tensor) -> Tensor:
        from .model import check_images

        if self.check_inputs:
            check_images(x, self.input_shape, self.device)
        return x if x.dtype == self._dtype() else x.to(self._dtype())

    # -- the search ---------------------------------------------------------------------------------------
    def decode(self, z: Tensor, differentiable: bool = False) -> Tensor:
        """Decoder logits of every class's latent: z [B, C, d] -> [B, C, ch, H, W] (``differentiable``: with the
        weights as constants, for the unrolled search)."""
        return torch.stack([_call(vae.decoder, z[:, c], differentiable) for c, vae in enumerate(self.vaes)], 1)

    def point_loss(self, x: Tensor, logits: Tensor, z: Tensor) -> Tensor:
        """ABS's per-class loss L_y(x, z) = -log p(x | logits) + ||z||^2 / 2, [B, C]; x [B, ch, H, W]."""
        return -log_likelihood(x[:, None], logits, self.config) + 0.5 * z.square().sum(-1)

    def _cache_key(self):
        return (self.device, self._dtype(), tuple(id(v.decoder) for v in self.vaes),
                tuple((p.data_ptr(), p._version) for p in self.vaes.parameters()))

    @torch.no_grad()
    def _prior_bank(self) -> tuple[Tensor, Tensor]:
        """The decoded prior samples of every class as features [C, N, D] and constants [C, N] such that the
        point loss of image x at sample n is, up to terms without n, (const - 2 feat . Px) / (2 s^2) + |z|^2/2
        (Gaussian; P = I or the edge precision) or const - feat . x (Bernoulli). Rebuilt after weight changes."""
        key = self._cache_key()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        kind, feats, consts = self.config.similarity, [], []
        for vae in self.vaes:
            logits = torch.cat([vae.decoder(chunk) for chunk in self.prior_z.split(1000)])
            if kind == "bernoulli":
                feats.append(logits.flatten(1))
                consts.append(F.softplus(logits).flatten(1).sum(1))
            else:
                mean = torch.sigmoid(logits)
                const = mean.square().flatten(1).sum(1)
                if kind == "edge":
                    const = const + self.config.edge_weight * _edge_energy(mean)
                feats.append(mean.flatten(1))
                consts.append(const)
        bank = (torch.stack(feats), torch.stack(consts))
        self._cache = (key, bank)
        return bank

    @torch.no_grad()
    def initial_latents(self, x: Tensor) -> Tensor:
        """Where the search starts, [B, C, d] (``ABSConfig.start``): the best cached prior sample of every
        class under the point loss (``"prior"``, ABS's), the class encoder's mean (``"encoder"``), or
        whichever of the two has the lower point loss (``"both"``)."""
        return self._start(x)

    def _start(self, x: Tensor, differentiable: bool = False) -> Tensor:
        """:meth:`initial_latents`; ``differentiable``: the encoder's mean keeps its graph to x (the choice of
        prior sample and of ``"both"``'s winner are constants either way)."""
        start = self.config.start
        if start == "prior":
            return self.best_prior_samples(x)
        mu = torch.stack([_call(vae.encoder, x, differentiable)[0] for vae in self.vaes], 1)
        if start == "encoder":
            return mu
        z = self.best_prior_samples(x)
        with torch.no_grad():
            better = self.point_loss(x, self.decode(mu), mu) < self.point_loss(x, self.decode(z), z)
        return torch.where(better[..., None], mu, z)

    @torch.no_grad()
    def best_prior_samples(self, x: Tensor) -> Tensor:
        """The best cached prior sample of every class under the point loss (ABS's start), [B, C, d].

        For ``"ssim"`` the start is the best under the Gaussian (``"mse"``) loss.
        """
        feats, consts = self._prior_bank()
        kind, s2 = self.config.similarity, self.config.sigma**2
        prior = 0.5 * self.prior_z.square().sum(1)  # [N]
        if kind == "edge":
            x = x + self.config.edge_weight * _edge_laplacian(x)
        best = []
        for chunk in x.flatten(1).split(64):
            dots = torch.einsum("bd,cnd->bcn", chunk, feats)
            if kind == "bernoulli":
                loss = consts[None] - dots + prior
            else:
                loss = (consts[None] - 2 * dots) / (2 * s2) + prior
            best.append(loss.argmin(2))
        return self.prior_z[torch.cat(best)]  # [B, C, d]

    def infer(self, x: Tensor) -> Inference:
        """ABS's search for every class's latent (the images are treated as constants): the best prior
        sample, then ``n_steps`` Adam steps on the point loss, keeping the best point seen.

        With ``ABSConfig.unroll``, grad enabled and an ``x`` that requires grad, the same search as
        differentiable arithmetic (:meth:`_infer_unrolled`): the returned z, logits and loss depend on x."""
        cfg = self.config
        if cfg.unroll and torch.is_grad_enabled() and isinstance(x, Tensor) and x.requires_grad:
            return self._infer_unrolled(x)
        with torch.inference_mode(False), torch.enable_grad():
            x0 = self._check(x).detach().clone()
            z = self.initial_latents(x0).clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=cfg.step_lr)
            best_loss = torch.full(z.shape[:2], math.inf, dtype=z.dtype, device=z.device)
            best_z = z.detach().clone()
            best_logits = None
            history = []
            for step in range(cfg.n_steps + 1):
                last = step == cfg.n_steps
                with torch.set_grad_enabled(not last):
                    logits = self.decode(z)
                    loss = self.point_loss(x0, logits, z)
                better = loss.detach() < best_loss
                best_loss = torch.where(better, loss.detach(), best_loss)
                best_z = torch.where(better[..., None], z.detach(), best_z)
                logits = logits.detach()
                best_logits = logits if best_logits is None else torch.where(
                    better[..., None, None, None], logits, best_logits)
                history.append(best_loss)
                if not last:
                    (grad,) = torch.autograd.grad(loss.sum(), z)
                    z.grad = grad
                    opt.step()
                    if cfg.latent_clip is not None:
                        with torch.no_grad():
                            norm = z.norm(dim=-1, keepdim=True)
                            z.mul_(torch.clamp(cfg.latent_clip / norm.clamp_min(1e-12), max=1.0))
        return Inference(best_z, best_logits, best_loss, torch.stack(history))

    def _infer_unrolled(self, x: Tensor) -> Inference:
        """:meth:`infer`'s search with every step differentiable in x (``ABSConfig.unroll``).

        The Adam updates of ``torch.optim.Adam`` (betas 0.9 and 0.999, eps 1e-8, no weight decay) are written
        out on tensors, with the latent gradient taken with ``create_graph=True``; the norm clipping and the
        best-so-far selection (``torch.where`` on the losses) are as in :meth:`infer`. Constants: the start
        (the prior sample is an argmin over the cache; an encoder start keeps its graph) and which step was
        best. The weights enter as constants, so a backward pass leaves their ``.grad`` alone, as in
        :meth:`infer`. The path of z is :meth:`infer`'s up to rounding, hence so are the values.
        """
        cfg = self.config
        beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, which infer uses
        x = self._check(x)
        z = self._start(x, differentiable=True)
        if not z.requires_grad:  # the best prior samples: a constant start
            z = z.detach().clone().requires_grad_(True)
        tiny = torch.finfo(z.dtype).tiny  # sqrt's derivative at an exactly zero second moment
        m, v = torch.zeros_like(z), torch.zeros_like(z)
        best_loss = torch.full(z.shape[:2], math.inf, dtype=z.dtype, device=z.device)
        best_z, best_logits, history = z, None, []
        for step in range(cfg.n_steps + 1):
            logits = self.decode(z, differentiable=True)
            loss = self.point_loss(x, logits, z)
            better = loss.detach() < best_loss.detach()
            best_loss = torch.where(better, loss, best_loss)
            best_z = torch.where(better[..., None], z, best_z)
            best_logits = logits if best_logits is None else torch.where(
                better[..., None, None, None], logits, best_logits)
            history.append(best_loss.detach())
            if step == cfg.n_steps:
                break
            (grad,) = torch.autograd.grad(loss.sum(), z, create_graph=True)
            t = step + 1
            m = m.lerp(grad, 1 - beta1)
            v = v * beta2 + (1 - beta2) * grad * grad
            denom = v.clamp_min(tiny).sqrt() / math.sqrt(1 - beta2**t) + eps
            z = z - (cfg.step_lr / (1 - beta1**t)) * m / denom
            if cfg.latent_clip is not None:
                z = z * torch.clamp(cfg.latent_clip / z.norm(dim=-1, keepdim=True).clamp_min(1e-12), max=1.0)
        return Inference(best_z, best_logits, best_loss, torch.stack(history))

    def _bound(self, x: Tensor, z: Tensor) -> Tensor:
        """The importance-weighted bound at q = N(z, diag posterior_std^2), [B, C], differentiable in x."""
        k = len(self.bound_eps)
        scores = []
        for c, vae in enumerate(self.vaes):
            std = self.posterior_std[c].to(z.dtype)
            zk = z[None, :, c] + std * self.bound_eps[:, None].to(z.dtype)  # [K, B, d]
            if z.requires_grad:  # unrolled: z* depends on x, and the decoder passes that on
                logits = _call(vae.decoder, zk.flatten(0, 1), True).view(k, *x.shape)
            else:
                with torch.no_grad():
                    logits = vae.decoder(zk.flatten(0, 1)).view(k, *x.shape)
            log_w = (log_likelihood(x[None], logits, self.config) + _log_normal(zk)
                     - _log_normal(zk, z[None, :, c], 2 * std.log()))
            scores.append(torch.logsumexp(log_w, 0) - math.log(k))
        return torch.stack(scores, 1)

    # -- the interface ------------------------------------------------------------------------------------
    def class_scores(self, x: Tensor) -> Tensor:
        """Per-class scores [B, C], nats, at the latents found by :meth:`infer`: the importance-weighted
        bound on log p(x|y) (``score="bound"``) or ABS's -L_y(x, z*) (``score="abs"``)."""
        x = self._check(x)
        found = self.infer(x)
        if self.config.score == "abs":
            return -self.point_loss(x, found.logits, found.z)
        return self._bound(x, found.z)

    def forward(self, x: Tensor) -> Tensor:
        """Logits = ABS's scaled-softmax posterior, log_softmax(logit_scale (scores + log p(y))), [B, C]."""
        return torch.log_softmax(self.config.logit_scale * (self.class_scores(x) + self.log_prior), dim=1)

    def log_px(self, x: Tensor) -> Tensor:
        """A lower bound on log p(x) [B], nats: logsumexp_y (bound_y + log p(y)), uniform prior."""
        from .classifier import require

        require(self, "density", "log_px (set ABSConfig.score='bound' and a likelihood similarity)")
        return torch.logsumexp(self.class_scores(x) + self.log_prior, dim=1)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Most likely class [B] (int64)."""
        return self.class_scores(x).argmax(1)

    @torch.no_grad()
    def amortised_elbo(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Every class's encoder-based ELBO [B, C], nats (one draw): cheap, for training logs, not ABS's rule."""
        x = self._check(x)
        return torch.stack([vae.elbo(x, 1, 1.0, generator)[0] for vae in self.vaes], 1)

    @torch.no_grad()
    def sample(self, y: Tensor | int | list, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Decoder means sigmoid(f_y(z)), z ~ N(0, temperature^2 I), [len(y), ch, H, W] (without pixel noise)."""
        y = torch.as_tensor(y, device=self.device).reshape(-1).long()
        if y.numel() == 0 or int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise InputError(f"class labels must be in 0..{self.num_classes - 1}, got {y.tolist()[:10]}")
        if not temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {temperature}")
        z = temperature * torch.randn(len(y), self.config.latent_dim, generator=generator, device=self.device,
                                      dtype=self._dtype())
        out = torch.empty(len(y), *self.input_shape, device=self.device, dtype=self._dtype())
        for c in y.unique().tolist():
            index = (y == c).nonzero().squeeze(1)
            out[index] = torch.sigmoid(self.vaes[c].decoder(z[index]))
        return out


# -- training -------------------------------------------------------------------------------------------------
def _batch(dataset, indices: Tensor) -> tuple[Tensor, Tensor]:
    if hasattr(dataset, "batch"):
        return dataset.batch(indices)
    from torch.utils.data import default_collate

    return default_collate([dataset[int(i)] for i in indices])


def _labels(dataset) -> Tensor:
    if hasattr(dataset, "labels"):
        return torch.as_tensor(dataset.labels)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


@torch.no_grad()
def calibrate_posterior_std(model: ABSClassifier, dataset, n_per_class: int = 500, batch_size: int = 250) -> Tensor:
    """Set ``model.posterior_std`` [C, d] (the bound's q) to the geometric mean of each class's encoder
    standard deviations over up to ``n_per_class`` of its images in ``dataset``; returns it."""
    labels = _labels(dataset)
    std = model.posterior_std.clone()
    for c, vae in enumerate(model.vaes):
        index = (labels == c).nonzero().squeeze(1)[:n_per_class]
        if len(index) == 0:
            continue
        logvars = []
        for chunk in index.split(batch_size):
            x, _ = _batch(dataset, chunk)
            logvars.append(vae.encoder(x.to(model.device, model._dtype()))[1])
        std[c] = (0.5 * torch.cat(logvars).mean(0)).exp()
    model.posterior_std.copy_(std)
    return std


def _save_state(out: Path, model: ABSClassifier, opt: torch.optim.Optimizer, state: dict) -> None:
    """Model + optimizer tensors for ``state['step']``, committed by renaming last.json (as gclib.checkpoints)."""
    step = int(state["step"])
    model_path = out / f"state-{step:09d}.safetensors"
    optim_path = out / f"state-{step:09d}.optim.safetensors"
    checkpoints._atomic_save_model(model, model_path)
    opt_state = opt.state_dict()
    tensors, scalars = {}, {}
    for index, param_state in opt_state["state"].items():
        for key, value in param_state.items():
            (tensors if torch.is_tensor(value) else scalars)[f"{index}.{key}"] = value
    checkpoints._atomic_save_tensors(tensors, optim_path)
    record = {"format": STATE_FORMAT, "model": model_path.name, "model_sha256": checkpoints.sha256(model_path),
              "optimizer": optim_path.name, "optimizer_sha256": checkpoints.sha256(optim_path),
              "param_groups": opt_state["param_groups"], "optimizer_scalars": scalars,
              "config": model.config.to_dict(), **state}
    last = out / "last.json"
    previous = json.loads(last.read_text()) if last.is_file() else None
    checkpoints.atomic_write_text(last, json.dumps(record, indent=2))
    if previous and previous.get("model") != record["model"]:
        for name in (previous.get("model"), previous.get("optimizer")):
            if name:
                (out / name).unlink(missing_ok=True)


def _load_state(out: Path, model: ABSClassifier, opt: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file

    record = checkpoints.read_training_state(out)  # checks both files' sha256
    if record.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{out / 'last.json'} is not an ABS training state; use another out folder")
    if ABSConfig.from_dict(record["config"]) != model.config:
        raise CheckpointError(f"{out} was trained with other ABSConfig settings than this model; resume with the "
                              "same config or use a new out folder")
    device = model.device
    _load_weights(model, out / record["model"])
    tensors = load_file(str(out / record["optimizer"]), device=str(device))
    state: dict = {}
    for key, value in list(tensors.items()) + list(record["optimizer_scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for param_state in state.values():  # Adam keeps its step counters on the CPU
        if torch.is_tensor(param_state.get("step")):
            param_state["step"] = param_state["step"].cpu()
    opt.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    return record


def fit(model: ABSClassifier, train, val=None, *, epochs: int = 20, batch_size: int = 128, lr: float = 1e-3,
        beta_kl: float = 1.0, out: str | os.PathLike | None = None, resume: bool = False, seed: int = 0,
        device=None, max_steps: int | None = None, progress: bool = True, checkpoint_every: int | None = None,
        schedule: str = "cosine", grad_clip: float = 10.0, log_every: int = 20,
        max_bad_steps: int = 20, input_noise: float = 0.0) -> list[dict]:
    """Train every class's VAE on its class's images (maximum ELBO); returns the epoch log.

    One loop over the data: each step takes ``batch_size`` images of all classes (a seeded permutation of
    the epoch, :func:`gclib.train.shard_indices`) and each image trains its own class's VAE; the loss is
    the mean over the batch of -(log-lik - beta_kl KL), nats per image. Data order and the reparameterisation
    noise are functions of (seed, epoch, step), so a run on the CPU resumed from its last state ends with
    the same weights. At the end ``posterior_std`` is calibrated on ``train``
    (:func:`calibrate_posterior_std`).

    Args:
        model: an :class:`ABSClassifier`.
        train, val: datasets of (image [ch, 28, 28] in [0, 1], label); ``dataset.batch(indices)`` is used
            where it exists (:class:`gclib.data.ImageDataset`). After every epoch ``val`` gives the mean
            amortised ELBO of the true class and the accuracy of the amortised ELBOs (not ABS's rule).
        epochs, batch_size, lr: Adam's schedule (``schedule``: cosine decay, constant or onecycle).
        beta_kl: the KL weight (1: the ELBO).
        out: run folder: ``log.csv``, the training state (``last.json``, ``state-*.safetensors``) and
            ``final.{safetensors,json}`` (:func:`load` reads it). None: nothing written.
        resume: continue from ``out/last.json`` (a fresh start if there is none).
        seed: of the data order and the noise (the weights are the model's).
        device: default CUDA if available, else the CPU.
        max_steps: stop after this many steps in total (smoke runs).
        checkpoint_every: also save the state every N steps (always at each epoch's end).
        grad_clip: max gradient norm.
        max_bad_steps: consecutive non-finite steps (skipped) before giving up.
        input_noise: std of Gaussian noise added to every training image (seeded by step): the VAEs then
            fit the density of the noisy images, as randomized smoothing's base models must (0: none).

    Raises:
        ConfigError: a bad argument; TrainingError: ``out`` holds a run and ``resume`` is off, or the loss
        stayed non-finite.
    """
    from .train import _read_log, _write_log, default_device, learning_rate, shard_indices

    if not isinstance(model, ABSClassifier):
        raise ConfigError(f"fit trains an ABSClassifier, got {type(model).__name__}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in (("lr", lr), ("grad_clip", grad_clip)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    if not (isinstance(beta_kl, (int, float)) and math.isfinite(beta_kl) and beta_kl >= 0):
        raise ConfigError(f"beta_kl must be a finite number >= 0, got {beta_kl!r}")
    if schedule not in ("cosine", "constant", "onecycle"):
        raise ConfigError(f"unknown schedule {schedule!r}; use cosine, constant or onecycle")
    if not (isinstance(input_noise, (int, float)) and math.isfinite(input_noise) and input_noise >= 0):
        raise ConfigError(f"input_noise must be a finite number >= 0, got {input_noise!r}")
    steps_per_epoch = len(train) // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"the training set ({len(train)} images) is smaller than one batch ({batch_size}); "
                          "lower batch_size")
    device = torch.device(device) if device else default_device()
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    total_steps = epochs * steps_per_epoch
    out = Path(out) if out is not None else None
    step, start_epoch, start_batch, elapsed, history = 0, 0, 0, 0.0, []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if (out / "last.json").exists():
            if not resume:
                raise TrainingError(f"{out} already holds a training run; resume it (resume=True) or choose "
                                    "another out folder")
            record = _load_state(out, model, opt)
            step, start_epoch, start_batch = record["step"], record["epoch"], record["batch_in_epoch"]
            elapsed = record.get("elapsed_s", 0.0)
            history = [row for row in _read_log(out) if row["epoch"] <= start_epoch]
            if progress:
                print(f"resuming {out} at epoch {start_epoch + 1}, step {step}", file=sys.stderr)
    t_start = time.perf_counter()

    def save_state(epoch: int, batch_in_epoch: int) -> None:
        if out is not None:
            _save_state(out, model, opt, {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                          "seed": seed, "beta_kl": beta_kl, "lr": lr, "batch_size": batch_size,
                                          "elapsed_s": elapsed + time.perf_counter() - t_start})

    bad_run = 0
    current_lr = lr
    for epoch in range(start_epoch, epochs):
        skip = start_batch if epoch == start_epoch else 0
        order = shard_indices(len(train), seed, epoch, 0, 1, batch_size)
        sums = torch.zeros(4, dtype=torch.float64)  # loss, log-lik, kl, images
        t_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"abs epoch {epoch + 1}/{epochs}", unit="step",
                   disable=not progress, dynamic_ncols=True, mininterval=1.0)
        batch_in_epoch = skip
        for batch_in_epoch in range(skip, steps_per_epoch):
            x, y = _batch(train, order[batch_in_epoch * batch_size:(batch_in_epoch + 1) * batch_size])
            x, y = x.to(device, model._dtype()), y.to(device)
            generator = torch.Generator(device=device).manual_seed((seed * 7_919 + 1) * 1_000_003 + step)
            if input_noise:
                x = x + input_noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            current_lr = learning_rate(step, total_steps, lr, schedule)
            for group in opt.param_groups:
                group["lr"] = current_lr
            loss = x.new_zeros(())
            log_lik_sum, kl_sum = 0.0, 0.0
            for c, vae in enumerate(model.vaes):
                index = (y == c).nonzero().squeeze(1)
                if len(index) == 0:
                    continue
                _, log_lik, kl = vae.elbo(x[index], 1, 1.0, generator)
                loss = loss - (log_lik - beta_kl * kl).sum()
                log_lik_sum += float(log_lik.detach().sum())
                kl_sum += float(kl.detach().sum())
            loss = loss / len(y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            if torch.isfinite(loss) and torch.isfinite(grad_norm):
                opt.step()
                bad_run = 0
                sums += torch.tensor([float(loss.detach()) * len(y), log_lik_sum, kl_sum, len(y)], dtype=torch.float64)
            else:
                bad_run += 1
                tqdm.write(f"step {step + 1}: non-finite loss or gradient, step skipped")
                if bad_run > max_bad_steps:
                    raise TrainingError(f"the loss was non-finite for {bad_run} steps in a row (step {step + 1}); "
                                        f"the last good state in {out} is intact. Try a lower lr")
            step += 1
            bar.update(1)
            if step % log_every == 0 and not bar.disable:
                seen = max(float(sums[3]), 1.0)
                bar.set_postfix(loss=f"{float(sums[0]) / seen:.1f}", lr=f"{current_lr:.2g}")
            if checkpoint_every and step % checkpoint_every == 0:
                save_state(epoch, batch_in_epoch + 1)
            if max_steps and step >= max_steps:
                break
        bar.close()
        epoch_time = time.perf_counter() - t_start
        finished_epoch = batch_in_epoch + 1 >= steps_per_epoch
        seen = max(float(sums[3]), 1.0)
        row = {"epoch": epoch + 1, "step": step, "lr": current_lr, "train_loss": float(sums[0]) / seen,
               "train_log_lik": float(sums[1]) / seen, "train_kl": float(sums[2]) / seen,
               "epoch_time_s": epoch_time, "train_images_per_s": float(sums[3]) / max(epoch_time, 1e-9)}
        if val is not None:
            row.update(_evaluate_amortised(model, val, seed))
        history.append(row)
        if out is not None:
            _write_log(out, row)
        if progress:
            tqdm.write(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
        elapsed += epoch_time
        t_start = time.perf_counter()
        if finished_epoch:
            save_state(epoch + 1, 0)
        else:
            save_state(epoch, batch_in_epoch + 1)
        if max_steps and step >= max_steps:
            break
    model.eval()
    calibrate_posterior_std(model, train)
    if out is not None:
        save(model, out / "final", seed=seed, epochs=epochs, steps=step, batch_size=batch_size, lr=lr,
             beta_kl=beta_kl, input_noise=input_noise, init_from=getattr(model, "init_from", None),
             schedule=schedule, wall_time_s=round(elapsed, 1), n_train=len(train),
             device=str(device), threads=torch.get_num_threads(), val=history[-1] if history else None)
    return history


@torch.no_grad()
def _evaluate_amortised(model: ABSClassifier, dataset, seed: int = 0, batch_size: int = 250) -> dict:
    was_training = model.training
    model.eval()
    n, correct, elbo_sum = 0, 0, 0.0
    g = torch.Generator(device=model.device).manual_seed(seed)
    for chunk in torch.arange(len(dataset)).split(batch_size):
        x, y = _batch(dataset, chunk)
        x, y = x.to(model.device, model._dtype()), y.to(model.device)
        elbos = model.amortised_elbo(x, g)
        correct += int((elbos.argmax(1) == y).sum())
        elbo_sum += float(elbos.gather(1, y[:, None]).sum())
        n += len(y)
    model.train(was_training)
    return {"val_elbo": elbo_sum / max(n, 1), "val_accuracy_amortised": correct / max(n, 1)}


# -- saving --------------------------------------------------------------------------------------------------
def _load_weights(model: ABSClassifier, weights: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        load_model(model, str(weights), strict=True, device=str(model.device))
    except SafetensorError as err:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({err}); "
                              "it is truncated or corrupt") from err
    except RuntimeError as err:
        raise CheckpointError(f"{weights} does not fit this ABSClassifier ({str(err).splitlines()[0][:300]})") from err


def save(model: ABSClassifier, path: str | os.PathLike, **info) -> Path:
    """Write ``PATH.safetensors`` (weights and buffers) and ``PATH.json`` (format, family, config, sha256,
    environment, ``info``); returns the JSON path. Nothing is pickled."""
    if not isinstance(model, ABSClassifier):
        raise CheckpointError(f"gclib.abs.save saves an ABSClassifier, got {type(model).__name__}")
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.with_name(path.name + ".safetensors")
    checkpoints._atomic_save_model(model, weights)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "abs", "family": model.family,
                "config": model.config.to_dict(), "weights": weights.name, "sha256": checkpoints.sha256(weights),
                "dtype": str(model._dtype()).replace("torch.", ""), "environment": checkpoints.environment(),
                "info": info}
    json_path = path.with_name(path.name + ".json")
    checkpoints.atomic_write_text(json_path, json.dumps(manifest, indent=2, default=checkpoints._jsonable))
    return json_path


def load(path: str | os.PathLike, device: str | torch.device | None = None, verify: bool = True) -> ABSClassifier:
    """Load what :func:`save` wrote (``PATH``, ``PATH.json``, ``PATH.safetensors`` or a run folder's final),
    checking the format and the weights' sha256; returns the model in eval mode."""
    json_path, _ = checkpoints._resolve(path)
    if not json_path.is_file():
        raise CheckpointError(f"no ABS checkpoint manifest {json_path}")
    try:
        manifest = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{json_path} is not valid JSON ({err}); the file is truncated or corrupt") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not an ABS checkpoint manifest (no \"format\": \"{FORMAT}\")")
    weights = json_path.with_name(manifest["weights"])
    if not weights.is_file():
        raise CheckpointError(f"weights file {weights} named by {json_path} is missing")
    checkpoints._check_not_pickle(weights)
    if verify and checkpoints.sha256(weights) != manifest.get("sha256"):
        raise CheckpointError(f"{weights} does not match the sha256 in {json_path}: the file is truncated, corrupt "
                              "or was replaced")
    try:
        config = ABSConfig.from_dict(manifest["config"])
    except (ConfigError, TypeError, KeyError) as err:
        raise CheckpointError(f"{json_path} holds an invalid ABSConfig ({err})") from err
    model = ABSClassifier(config)
    if manifest.get("dtype") == "float64":
        model = model.double()
    _load_weights(model, weights)
    model.manifest = manifest
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(device).eval()


# -- command line ---------------------------------------------------------------------------------------------
def _parser():
    import argparse

    p = argparse.ArgumentParser(prog="python -m gclib.abs", description=(
        "Train an analysis-by-synthesis classifier (one VAE per class, maximum ELBO) and measure it: writes "
        "OUT/log.csv, the resumable state and OUT/final (load it with gclib.abs.load or gclib.load)."))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv layers (default 32)")
    p.add_argument("--latent-dim", type=int, default=8, help="latent dimensions per class (ABS: 8)")
    p.add_argument("--sigma", type=float, default=0.1, help="std of the Gaussian likelihood on [0, 1] (default 0.1)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta-kl", type=float, default=1.0, help="KL weight (1: the ELBO)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (resumable)")
    p.add_argument("--train-subset", type=int, help="train on this many images (seeded subset)")
    p.add_argument("--eval-test", type=int, default=0, metavar="N",
                   help="after training, classify N test images (seeded subset) by ABS's rule and print the accuracy")
    p.add_argument("--input-noise", type=float, default=0.0,
                   help="std of Gaussian noise on the training images (randomized smoothing's base models)")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="warm start: an ABS checkpoint of the same architecture whose weights start the run "
                        "(its sha256 is recorded in the manifest's info.init_from)")
    p.add_argument("--no-progress", action="store_true")
    return p


def warm_start(model: ABSClassifier, checkpoint: str | os.PathLike) -> dict:
    """Copy the weights of an ABS checkpoint of the same architecture into ``model`` (its likelihood
    ``sigma`` and inference settings may differ); returns the lineage record kept in the manifest."""
    source = load(checkpoint, device="cpu")
    ours, theirs = model.config, source.config
    for name in ("num_classes", "channels", "latent_dim", "width"):
        if getattr(ours, name) != getattr(theirs, name):
            raise ConfigError(f"--init-from {checkpoint}: its {name} is {getattr(theirs, name)}, this run's is "
                              f"{getattr(ours, name)}; warm starts need the same architecture")
    model.load_state_dict(source.state_dict())
    model.init_from = {"checkpoint": str(checkpoint), "sha256": source.manifest["sha256"],
                       "info": {k: source.manifest.get("info", {}).get(k) for k in ("epochs", "lr", "input_noise")}}
    return model.init_from


def main(argv: list[str] | None = None) -> int:
    from . import data
    from .errors import GclibError

    args = _parser().parse_args(argv)
    try:
        train, val, test = data.load(args.dataset)
        if args.train_subset:
            train = train.subset(args.train_subset, args.seed)
        shape = tuple(train[0][0].shape)
        config = ABSConfig(num_classes=len(train.classes), channels=shape[0], latent_dim=args.latent_dim,
                           width=args.width, sigma=args.sigma, seed=args.seed)
        model = ABSClassifier(config, seed=args.seed)
        if args.init_from and not (Path(args.out) / "last.json").exists():
            warm_start(model, args.init_from)
        fit(model, train, val.subset(min(1000, len(val)), args.seed), epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, beta_kl=args.beta_kl, out=args.out, resume=args.resume, seed=args.seed, device=args.device,
            max_steps=args.max_steps, progress=not args.no_progress, input_noise=args.input_noise)
        if args.eval_test:
            x, y = test.subset(min(args.eval_test, len(test)), args.seed).tensors()
            x, y = x.to(model.device), y.to(model.device)
            correct = int((model.predict(x) == y).sum())
            print(f"test accuracy (ABS's rule) {correct / len(y):.4f} ({correct}/{len(y)})")
    except GclibError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # As in gclib.diffusion: run the package module's main so that saved classes are gclib.abs's.
    from gclib.abs import main as _package_main

    raise SystemExit(_package_main())
