"""The diffusion classifier (Li et al., "Your Diffusion Model is Secretly a Zero-Shot Classifier", ICCV 2023).

A class-conditional epsilon-prediction network eps(x_t, t, y) of a variance-preserving diffusion,
x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps, classifies an image by the class whose denoising error
``||eps - eps(x_t, t, y)||^2`` is smallest on average over a *fixed* set of (t_i, eps_i) pairs: the same
pairs for every class (:class:`NoiseBank`), because the error's variance over noise draws dwarfs its
differences between classes (the reference code refuses to run without its fixed noise file). Adaptive
pruning (:func:`classify`) evaluates all classes on a few pairs, keeps the best k, and continues on more.

Here the network is trained from scratch on the project's data (Imagen or Stable Diffusion cannot be
used offline): this is the method of Li et al., not their zero-shot setting.

Noise schedule: the VP-SDE of Song et al. (beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1],
beta_min = 0.1, beta_max = 20), whose grid t_i = i / T with T = 1000 is DDPM's linear schedule
(beta_i = 1e-4 ... 0.02). One schedule object serves the diffusion classifier and the score-based one
(:mod:`gclib.score`), which reads the same network as a score model.

Class scores (nats) come in two weightings:

- ``"elbo"``: the continuous-time VP ELBO,
  ``log p(x|y) >= E_t[-beta(t) / (2 (1 - abar_t)) ||eps - eps(.)||^2]`` plus terms without y,
  estimated on the noise bank: a bound up to class-independent terms (the decoder and prior terms,
  not implemented yet, so this family has no bits/dim of its own);
- ``"uniform"`` (Li et al.'s rule): -D/2 times the mean squared error per dim, unweighted: better for
  classification in their experiments, but not a bound (``score_kind = "surrogate"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import InputError

__all__ = ["VPSchedule", "NoiseBank", "denoising_errors", "classify", "DiffusionClassifier", "TinyUNet"]


@dataclass(frozen=True)
class VPSchedule:
    """The variance-preserving SDE's schedule: ``abar(t) = exp(-int_0^t beta)``, ``sigma(t)^2 = 1 - abar(t)``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    steps: int = 1000  # T of the DDPM discretisation

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_abar(self, t: Tensor) -> Tensor:
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def abar(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_abar(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_abar(t)))

    def noisy(self, x: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = sqrt(abar) x + sigma eps, with ``t`` [B] broadcast over the image dims."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        return torch.exp(0.5 * self.log_abar(t)).view(shape) * x + self.sigma(t).view(shape) * eps

    def elbo_weight(self, t: Tensor) -> Tensor:
        """beta(t) / (2 sigma(t)^2): the weight of ``||eps - eps_hat||^2`` in the continuous-time ELBO."""
        return self.beta(t) / (2 * self.sigma(t) ** 2)


@dataclass
class NoiseBank:
    """A fixed set of (t_i, eps_i) shared by every class and image: t on a stratified grid, eps seeded.

    ``t`` [N] in (0, 1]: the midpoints of N equal strata of [t_min, 1] (Li et al. use evenly spaced
    timesteps); ``eps`` [N, C, H, W]. The order is interleaved (coarse to fine), so a prefix of k pairs
    is itself a spread-out subset: adaptive pruning uses prefixes.
    """

    t: Tensor
    eps: Tensor

    @classmethod
    def make(cls, n: int, shape: tuple[int, ...], seed: int = 0, t_min: float = 1e-3) -> "NoiseBank":
        if n < 1:
            raise InputError(f"a noise bank needs n >= 1 pairs, got {n}")
        grid = t_min + (1 - t_min) * (torch.arange(n, dtype=torch.float64) + 0.5) / n
        order = _interleaved(n)
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn((n, *shape), generator=g)
        return cls(grid[order].float(), eps)

    def __len__(self) -> int:
        return len(self.t)

    def prefix(self, k: int) -> "NoiseBank":
        return NoiseBank(self.t[:k], self.eps[:k])


def _interleaved(n: int) -> Tensor:
    """0..n-1 in bit-reversal-like order: every prefix covers the range evenly."""
    order, seen = [], set()
    step = 1 << max(n - 1, 1).bit_length()
    while step >= 1:
        for i in range(0, n, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
        step //= 2
    return torch.tensor(order)


def denoising_errors(eps_model, x: Tensor, classes: Tensor, bank: NoiseBank, schedule: VPSchedule,
                     batch_size: int = 512) -> Tensor:
    """Mean squared error per dim of ``eps_model`` for images ``x`` [B, ...] and candidate ``classes``.

    Args:
        eps_model: ``eps_model(x_t, t, y)`` -> predicted noise, shapes [M, ...], [M], [M].
        x: images on the model's scale (the diffusion's data space), [B, C, H, W].
        classes: [B, K] the classes to score for each image (K may be 1; pruning passes the survivors).
        bank: the shared (t_i, eps_i); the same x_t = noisy(x, t_i, eps_i) is used for every class.
        schedule: the noise schedule.

    Returns:
        [B, K, N] errors (mean over dims) for every image, class and pair of the bank.
    """
    b, k = classes.shape
    n = len(bank)
    t = bank.t.to(x.device, x.dtype)
    eps = bank.eps.to(x.device, x.dtype)
    # x_t for every (image, pair), then repeated for each class: the noise is shared by the classes.
    xt = schedule.noisy(x[:, None].expand(b, n, *x.shape[1:]).reshape(b * n, *x.shape[1:]), t.repeat(b),
                        eps.repeat(b, *([1] * (eps.dim() - 1))))
    xt = xt.view(b, 1, n, *x.shape[1:]).expand(b, k, n, *x.shape[1:]).reshape(b * k * n, *x.shape[1:])
    tt = t.repeat(b * k)
    yy = classes[:, :, None].expand(b, k, n).reshape(-1)
    target = eps[None, None].expand(b, k, n, *eps.shape[1:]).reshape(b * k * n, *eps.shape[1:])
    out = []
    for start in range(0, len(xt), batch_size):
        sl = slice(start, start + batch_size)
        pred = eps_model(xt[sl], tt[sl], yy[sl])
        out.append((pred - target[sl]).square().flatten(1).mean(1))
    return torch.cat(out).view(b, k, n)


def classify(errors_fn, batch: int, num_classes: int, stages=((10, 5), (40, 2), (200, 1)),
             device=None) -> tuple[Tensor, Tensor, Tensor]:
    """Li et al.'s adaptive classification: all classes on a few pairs, keep the best, continue on more.

    Args:
        errors_fn: ``errors_fn(classes [B, K], n_pairs)`` -> mean errors [B, K] over the first ``n_pairs``
            pairs of the shared bank (a prefix, so earlier stages' pairs are reused, not redrawn).
        batch: number of images B.
        num_classes: C.
        stages: ``(n_pairs, keep)``: score the surviving classes on ``n_pairs`` pairs, keep the ``keep``
            best; the last stage should keep 1. ``((n, 1),)`` is the unpruned rule on n pairs.
        device: of the returned tensors.

    Returns:
        ``(prediction [B], evaluations [B] network evaluations used per image, final mean errors of the
        last stage's candidates [B, K_last])``.
    """
    if not stages:
        raise InputError("stages must not be empty")
    candidates = torch.arange(num_classes, device=device).repeat(batch, 1)
    evaluations = torch.zeros(batch, dtype=torch.long, device=device)
    done_pairs = {}  # class -> pairs already scored, per image (to count evaluations honestly)
    errors = None
    for n_pairs, keep in stages:
        if keep < 1:
            raise InputError(f"every stage must keep >= 1 class, got {keep}")
        errors = errors_fn(candidates, n_pairs)  # [B, K]
        k = candidates.shape[1]
        # A prefix already scored for a class costs only its new pairs.
        for j in range(k):
            prev = torch.tensor([done_pairs.get((i, int(candidates[i, j])), 0) for i in range(batch)], device=device)
            evaluations += (n_pairs - prev).clamp_min(0)
            for i in range(batch):
                done_pairs[(i, int(candidates[i, j]))] = max(n_pairs, int(prev[i]))
        keep = min(keep, k)
        best = errors.topk(keep, dim=1, largest=False).indices
        candidates = candidates.gather(1, best)
        errors = errors.gather(1, best)
    return candidates[:, 0], evaluations, errors


class _SinusoidalTime(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(torch.nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class TinyUNet(nn.Module):
    """A small class-conditional U-Net for 28x28 (or 32x32) images: eps(x_t, t, y).

    Two resolutions below the input (28 -> 14 -> 7), one residual block per level and direction, GroupNorm,
    SiLU, sinusoidal time embedding plus a learned class embedding; class ``num_classes`` is the null
    class (classifier-free dropout, for unconditional scores). Written by hand rather than diffusers'
    UNet2DModel to keep the dependency list short and the network small enough for 2 CPU cores.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, emb: int = 128):
        super().__init__()
        self.num_classes = num_classes
        self.time = nn.Sequential(_SinusoidalTime(emb), nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = nn.Embedding(num_classes + 1, emb)
        w1, w2, w3 = width, 2 * width, 2 * width
        self.inp = nn.Conv2d(in_channels, w1, 3, padding=1)
        self.down1, self.down2 = _ResBlock(w1, w1, emb), _ResBlock(w1, w2, emb)
        self.mid = _ResBlock(w2, w3, emb)
        self.up2, self.up1 = _ResBlock(w3 + w2, w2, emb), _ResBlock(w2 + w1, w1, emb)
        self.out = nn.Sequential(nn.GroupNorm(8, w1), nn.SiLU(), nn.Conv2d(w1, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        e = self.time(t) + self.label(y)
        h1 = self.down1(self.inp(x), e)  # 28
        h2 = self.down2(nn.functional.avg_pool2d(h1, 2), e)  # 14
        m = self.mid(nn.functional.avg_pool2d(h2, 2), e)  # 7
        u2 = self.up2(torch.cat([nn.functional.interpolate(m, size=h2.shape[-2:]), h2], 1), e)
        u1 = self.up1(torch.cat([nn.functional.interpolate(u2, size=h1.shape[-2:]), h1], 1), e)
        return self.out(u1)


class DiffusionClassifier(nn.Module):
    """A class-conditional denoiser read as a classifier, behind gclib's common interface.

    Args:
        denoiser: ``denoiser(x_t, t, y)`` -> eps, on data scaled to [-1, 1].
        num_classes: C.
        input_shape: (C, H, W) of the images in [0, 1].
        n_pairs: size of the shared noise bank (the unpruned rule's evaluations per class).
        weighting: ``"uniform"`` (Li et al.'s rule, ``score_kind = "surrogate"``) or ``"elbo"`` (a bound).
        stages: pruning stages for :meth:`predict` (see :func:`classify`); ``None``: no pruning.
        seed: seed of the noise bank.

    ``class_scores`` scores every class on the whole bank (C * n_pairs evaluations per image);
    ``predict`` prunes.
    """

    family = "diffusion"
    density_kind = None  # the ELBO in bits/dim (decoder and prior terms) is not implemented yet
    capabilities = frozenset()

    def __init__(self, denoiser: nn.Module, num_classes: int, input_shape: tuple[int, int, int], n_pairs: int = 100,
                 weighting: str = "uniform", stages=((10, 5), (40, 2), (100, 1)), seed: int = 0,
                 schedule: VPSchedule | None = None):
        super().__init__()
        if weighting not in ("uniform", "elbo"):
            raise InputError(f"weighting must be 'uniform' or 'elbo', got {weighting!r}")
        self.denoiser, self.num_classes, self.input_shape = denoiser, num_classes, tuple(input_shape)
        self.weighting, self.stages = weighting, stages
        self.schedule = schedule or VPSchedule()
        bank = NoiseBank.make(n_pairs, self.input_shape, seed=seed)
        self.register_buffer("bank_t", bank.t)
        self.register_buffer("bank_eps", bank.eps)
        self.register_buffer("log_prior", torch.full((num_classes,), -math.log(num_classes)))

    @property
    def score_kind(self) -> str:
        return "bound" if self.weighting == "elbo" else "surrogate"

    @property
    def evaluations_per_image(self) -> int:
        return self.num_classes * len(self.bank_t)

    @property
    def device(self) -> torch.device:
        return self.bank_t.device

    @property
    def bank(self) -> NoiseBank:
        return NoiseBank(self.bank_t, self.bank_eps)

    def _check(self, x: Tensor) -> Tensor:
        from .model import check_images

        return check_images(x, self.input_shape, self.device)

    def _errors(self, x: Tensor, classes: Tensor, bank: NoiseBank) -> Tensor:
        return denoising_errors(self.denoiser, 2 * x - 1, classes, bank, self.schedule)

    def class_scores(self, x: Tensor) -> Tensor:
        """Class scores [B, C], nats: -D/2 x mean error (uniform) or the ELBO's class-dependent part (elbo)."""
        x = self._check(x)
        classes = torch.arange(self.num_classes, device=x.device).repeat(len(x), 1)
        errors = self._errors(x, classes, self.bank)  # [B, C, N], mean over dims
        d = math.prod(self.input_shape)
        if self.weighting == "uniform":
            return -0.5 * d * errors.mean(2)
        # E_t[w(t) ||.||^2] with t uniform on (0, 1]: the bank's stratified t make this an unbiased estimate.
        weight = self.schedule.elbo_weight(self.bank_t.to(x.dtype))
        return -(weight * errors * d).mean(2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.class_scores(x) + self.log_prior, dim=1)

    @torch.no_grad()
    def predict(self, x: Tensor, stages=None) -> Tensor:
        """Most likely class with adaptive pruning (``stages``: the model's by default)."""
        x = self._check(x)
        stages = stages or self.stages or ((len(self.bank_t), 1),)
        bank = self.bank

        def errors_fn(classes, n_pairs):
            return self._errors(x, classes, bank.prefix(min(n_pairs, len(bank)))).mean(2)

        return classify(errors_fn, len(x), self.num_classes, stages, device=x.device)[0]

    def log_px(self, x: Tensor) -> Tensor:
        from .classifier import require

        require(self, "density", "log_px (the ELBO's decoder and prior terms are not implemented yet; "
                "gclib.score reads the same network with exact likelihoods)")
