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

- ``"elbo"``: the continuous-time VP ELBO (Kingma et al., "Variational Diffusion Models", 2021),
  ``log p(x|y) >= -KL(prior) - decoder - 1/2 int ||eps - eps(x_t, t, y)||^2 d log-SNR``, the integral
  estimated on a second fixed bank stratified in log-SNR (:meth:`NoiseBank.log_snr_strata`,
  :func:`negative_elbo_from_errors`): a lower bound on log p(x|y), with its Monte-Carlo standard error;
- ``"uniform"`` (Li et al.'s rule): -D/2 times the mean squared error per dim, unweighted: better for
  classification in their experiments, but not a bound (``score_kind = "surrogate"``).

The density (``log_px``, ``bits_per_dim``) is the ELBO in either case (``density_kind = "bound"``).
Training: :func:`fit` (DDPM's epsilon loss, classifier-free label dropout, EMA, resumable), saving and
loading: ``gclib.save`` / ``gclib.load``; :meth:`gclib.score.ScoreClassifier.from_diffusion` reads the
same trained network with exact likelihoods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .errors import InputError

__all__ = [
    "NETWORKS",
    "DiffusionClassifier",
    "NoiseBank",
    "TinyUNet",
    "VPSchedule",
    "classify",
    "classify_from_errors",
    "denoising_errors",
    "elbo_weighted_scores",
    "denoising_loss",
    "fit",
    "negative_elbo",
    "negative_elbo_from_errors",
    "sample_times",
]


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

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(abar / sigma^2), decreasing in t; ``-d lambda / dt = beta / sigma^2``."""
        log_abar = self.log_abar(t)
        return log_abar - torch.log(-torch.expm1(log_abar))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """The inverse of :meth:`log_snr`: abar = sigmoid(lambda), then the root of the quadratic log_abar(t)."""
        c = -nn.functional.logsigmoid(log_snr)  # = beta_min t + (beta_max - beta_min) t^2 / 2 > 0
        slope = self.beta_max - self.beta_min
        if slope == 0:
            return c / self.beta_min
        return 2 * c / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * slope * c))  # stable root form

    def to_dict(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "steps": self.steps}


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
    def make(cls, n: int, shape: tuple[int, ...], seed: int = 0, t_min: float = 1e-3) -> NoiseBank:
        if n < 1:
            raise InputError(f"a noise bank needs n >= 1 pairs, got {n}")
        grid = t_min + (1 - t_min) * (torch.arange(n, dtype=torch.float64) + 0.5) / n
        order = _interleaved(n)
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn((n, *shape), generator=g)
        return cls(grid[order].float(), eps)

    def __len__(self) -> int:
        return len(self.t)

    def prefix(self, k: int) -> NoiseBank:
        return NoiseBank(self.t[:k], self.eps[:k])

    @classmethod
    def log_snr_strata(cls, n: int, shape: tuple[int, ...], schedule: VPSchedule, seed: int = 0,
                       t_min: float = 1e-3) -> NoiseBank:
        """The ELBO's pairs: t stratified in log-SNR over [t_min, 1], one seeded uniform point per stratum.

        The continuous-time ELBO's diffusion term is ``1/2 int ||eps - eps_hat||^2 d lambda`` over
        lambda(1) .. lambda(t_min) (Kingma et al., "Variational Diffusion Models", 2021): sampled uniformly in
        lambda every pair has the same weight, which in t would range over four orders of magnitude. One
        seeded point in each of n equal strata makes the mean over the pairs an unbiased estimate of that
        integral. Sorted by t (adjacent pairs are neighbouring strata: :func:`negative_elbo_from_errors`
        estimates the noise's variance from their differences).
        """
        if n < 1:
            raise InputError(f"an ELBO noise bank needs n >= 1 pairs, got {n}")
        if not 0 < t_min < 1:
            raise InputError(f"t_min must lie in (0, 1), got {t_min}")
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(n, generator=g, dtype=torch.float64)
        eps = torch.randn((n, *shape), generator=g)
        # decreasing log-SNR (t increasing) from the stratum's point
        t = _t_uniform_in_log_snr(schedule, (torch.arange(n, dtype=torch.float64) + u) / n, t_min)
        return cls(t.float(), eps)


def _t_uniform_in_log_snr(schedule: VPSchedule, v: Tensor, t_min: float) -> Tensor:
    """t (float64) whose log-SNR is the fraction ``v`` in [0, 1] of the way from lambda(t_min) down to lambda(1).

    The one mapping of the ELBO's noise bank (:meth:`NoiseBank.log_snr_strata`, v stratified) and of the
    ``"log-snr"`` training times (:func:`sample_times`, v uniform). float64: the inverse is steep near t_min.
    """
    lo, hi = _log_snr_range(schedule, t_min)
    return schedule.t_from_log_snr(hi - (hi - lo) * v.to(torch.float64)).clamp(t_min, 1.0)


def _log_snr_range(schedule: VPSchedule, t_min: float) -> tuple[float, float]:
    """(lambda(1), lambda(t_min)) in float64."""
    ends = schedule.log_snr(torch.tensor([1.0, t_min], dtype=torch.float64))
    return float(ends[0]), float(ends[1])


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
                     batch_size: int = 128) -> Tensor:
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
    # Batches of 128 in channels_last: on a CPU core the U-Net ran 1.3-2x faster so than in batches of 512 in
    # the default layout (cache-sized activations; oneDNN's NHWC kernels), measured with torch 2.14.
    xt = xt.contiguous(memory_format=torch.channels_last) if xt.dim() == 4 else xt
    # A gradient through the classifier (the attacks) spans C x pairs network evaluations per image: autograd
    # would keep every one's activations (10 images x 1000 evaluations ran out of 24 GiB). torch's activation
    # checkpointing keeps only each batch's inputs and recomputes its activations in the backward pass
    # (measured: 2.0 GB for 4 images, about 10 s per image for forward and backward on one core).
    remat = torch.is_grad_enabled() and xt.requires_grad
    for start in range(0, len(xt), batch_size):
        sl = slice(start, start + batch_size)
        if remat:
            pred = torch.utils.checkpoint.checkpoint(eps_model, xt[sl], tt[sl], yy[sl], use_reentrant=False)
        else:
            pred = eps_model(xt[sl], tt[sl], yy[sl])
        out.append((pred - target[sl]).square().flatten(1).mean(1))
    return torch.cat(out).view(b, k, n)


def _chunked_errors(eps_model, x: Tensor, classes: Tensor, bank: NoiseBank, schedule: VPSchedule,
                    max_inputs: int = 4096) -> Tensor:
    """:func:`denoising_errors` over slices of the bank, so that at most ``max_inputs`` noisy images
    [B * K * pairs] exist at once (the ELBO's 1000 pairs for 10 classes would otherwise need B x 31 MB)."""
    chunk = max(1, max_inputs // max(1, classes.numel()))
    if chunk >= len(bank):
        return denoising_errors(eps_model, x, classes, bank, schedule)
    return torch.cat([denoising_errors(eps_model, x, classes, NoiseBank(bank.t[i:i + chunk], bank.eps[i:i + chunk]),
                                       schedule) for i in range(0, len(bank), chunk)], dim=2)


def negative_elbo_from_errors(errors: Tensor, x: Tensor, schedule: VPSchedule,
                              t_min: float = 1e-3) -> tuple[Tensor, Tensor]:
    """An upper bound on -log p(x) in nats (the negative continuous-time ELBO) from denoising errors.

    For the VP diffusion with the Gaussian decoder p(x | x_0) = N(x_0 / a_0, sigma_0^2 / a_0^2 I) at
    t_0 = ``t_min`` (a_0 = sqrt(abar(t_0)); Kingma et al.'s choice, which needs no network and whose
    expectation is exact) and the prior N(0, I) at t = 1,

        -log p(x) <= KL(q(x_1 | x) || N(0, I)) + D/2 log(2 pi e sigma_0^2 / a_0^2)
                     + 1/2 int_{lambda(1)}^{lambda(t_0)} E ||eps - eps_hat(x_t, t)||^2 d lambda,

    lambda = log-SNR. The bound holds for every x and every eps-network; it is tight when the network is
    the data's optimal denoiser and t_0 -> 0 (the decoder's gap is about sigma_0^2 / 2 times the data's
    Fisher information per dim: 2.2e-4 nats/dim for N(0, 0.5^2) data at t_0 = 1e-3, as the tests measure).
    The integral is estimated on a bank from :meth:`NoiseBank.log_snr_strata`: the mean over its pairs,
    unbiased. (DDPM's discrete-time bound with T = 1000 steps of this schedule and the fixed reverse
    variances is looser: 0.3 to 0.5 nats/dim above the exact NLL for such Gaussian data, most of it in the
    first steps, where the linear grid in t is coarse in log-SNR; hence the continuous-time bound.)

    Args:
        errors: [B, K, N] mean squared errors per dim (:func:`denoising_errors`) on a log-SNR bank with
            the same ``t_min``, sorted by t; or their expectations over the noise (tests).
        x: the data points [B, ...] (the diffusion's own scale), for the prior term.
        schedule: the noise schedule.
        t_min: where the decoder reads x_0.

    Returns:
        ``(bound [B, K], standard error [B, K])`` in nats. The standard error is the Monte-Carlo one of the
        noise draws, from the differences of neighbouring strata (the mean over strata is a stratified
        estimate; the smooth trend of the error over lambda cancels in the differences); NaN for N = 1.
    """
    n = errors.shape[2]
    d = x[0].numel()
    lo, hi = _log_snr_range(schedule, t_min)
    terms = (0.5 * (hi - lo) * d) * errors.double()  # [B, K, N]: each pair's estimate of the diffusion term
    diffusion = terms.mean(2)
    if n > 1:
        noise_var = (terms[..., 1:] - terms[..., :-1]).square().sum(2) / (2 * (n - 1))
        se = (noise_var / n).sqrt()
    else:
        se = torch.full_like(diffusion, float("nan"))
    one = torch.ones((), dtype=torch.float64, device=x.device)
    log_abar_1, log_abar_0 = schedule.log_abar(one), schedule.log_abar(t_min * one)
    sigma2_1, sigma2_0 = -torch.expm1(log_abar_1), -torch.expm1(log_abar_0)
    prior = 0.5 * (log_abar_1.exp() * x.double().flatten(1).square().sum(1)
                   + d * (sigma2_1 - 1 - torch.log(sigma2_1)))  # [B]
    decoder = 0.5 * d * (math.log(2 * math.pi) + 1 + torch.log(sigma2_0) - log_abar_0)
    bound = diffusion + (prior + decoder)[:, None]
    return bound.to(errors.dtype), se.to(errors.dtype)


def negative_elbo(eps_model, x: Tensor, classes: Tensor, bank: NoiseBank, schedule: VPSchedule,
                  t_min: float = 1e-3) -> tuple[Tensor, Tensor]:
    """``negative_elbo_from_errors`` of ``eps_model``'s errors on ``bank`` (a :meth:`NoiseBank.log_snr_strata`
    bank with this ``t_min``): an upper bound on -log p(x | y) in nats and its standard error, [B, K], for
    data ``x`` [B, ...] on the diffusion's scale and candidate ``classes`` [B, K]. The same pairs serve every
    class and image, so class differences carry far less noise than the standard error says."""
    return negative_elbo_from_errors(_chunked_errors(eps_model, x, classes, bank, schedule), x, schedule, t_min)


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
    done = torch.zeros(batch, num_classes, dtype=torch.long, device=device)  # pairs scored per image and class
    errors = None
    for n_pairs, keep in stages:
        if keep < 1:
            raise InputError(f"every stage must keep >= 1 class, got {keep}")
        errors = errors_fn(candidates, n_pairs)  # [B, K]
        k = candidates.shape[1]
        # A prefix already scored for a class costs only its new pairs.
        prev = done.gather(1, candidates)
        evaluations += (n_pairs - prev).clamp_min(0).sum(1)
        done.scatter_(1, candidates, prev.clamp_min(n_pairs))
        keep = min(keep, k)
        best = errors.topk(keep, dim=1, largest=False).indices
        candidates = candidates.gather(1, best)
        errors = errors.gather(1, best)
    return candidates[:, 0], evaluations, errors


def classify_from_errors(errors: Tensor, stages) -> tuple[Tensor, Tensor]:
    """Li et al.'s pruned rule read off a precomputed error matrix ``errors`` [B, C, N] (every class on the
    whole bank): ``(prediction [B], network evaluations [B])``, exactly what :meth:`DiffusionClassifier.predict`
    returns with these ``stages`` (its stages score bank prefixes, which the matrix holds), so one matrix
    gives the accuracy of every pruning schedule and of the unpruned rule at every budget."""
    b, c, n = errors.shape

    def errors_fn(classes, n_pairs):
        return errors[:, :, :min(n_pairs, n)].mean(2).gather(1, classes)

    pred, evaluations, _ = classify(errors_fn, b, c, stages, device=errors.device)
    return pred, evaluations


def elbo_weighted_scores(errors: Tensor, t: Tensor, schedule: VPSchedule, dims: int) -> Tensor:
    """The ELBO's class term read off an error matrix on a bank uniform in t (:meth:`NoiseBank.make`):
    ``-D/2 int ||eps - eps_hat||^2 d(-lambda)`` over the bank's t range, estimated as that range times the
    mean over pairs of the errors weighted by ``-d lambda / dt = beta(t) / sigma(t)^2``.

    Args:
        errors: [B, C, N] mean squared errors per dim (:meth:`DiffusionClassifier.error_matrix`).
        t: [N] the bank's times.
        schedule: the noise schedule.
        dims: D, the image's dimension.

    Returns:
        [B, C] float64 nats, higher = more likely: the bound's class-dependent part (the prior and decoder
        terms it leaves out are the same for every class), restricted to the bank's t range. Li et al.'s rule
        weights every pair equally instead; this is the bound's own weighting of the same errors.
    """
    t = torch.as_tensor(t, dtype=torch.float64, device=errors.device)
    if errors.dim() != 3 or errors.shape[2] != len(t):
        raise InputError(f"errors must be [B, C, N] with N = len(t) = {len(t)}, got {tuple(errors.shape)}")
    weight = schedule.beta(t) / schedule.sigma(t) ** 2
    return -0.5 * dims * float(t.max() - t.min()) * (errors.double() * weight).mean(2)


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
        if width < 8 or width % 8 or emb < 2 or emb % 2:
            raise InputError(f"TinyUNet needs width a multiple of 8 (GroupNorm(8)) and an even emb, got {width}, {emb}")
        self.num_classes = num_classes
        self.null_class = num_classes  # the unconditional embedding (classifier-free dropout trains it)
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width, "emb": emb}
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


NETWORKS = {"TinyUNet": TinyUNet}  # denoiser classes a checkpoint may name (built from their ``config``)


class DiffusionClassifier(nn.Module):
    """A class-conditional denoiser read as a classifier, behind gclib's common interface.

    Args:
        denoiser: ``denoiser(x_t, t, y)`` -> eps, on data scaled to [-1, 1].
        num_classes: C.
        input_shape: (C, H, W) of the images in [0, 1].
        n_pairs: size of the shared noise bank (the unpruned rule's evaluations per class).
        weighting: ``"uniform"`` (Li et al.'s rule, ``score_kind = "surrogate"``) or ``"elbo"`` (class scores
            are the ELBO, ``score_kind = "bound"``).
        stages: pruning stages for :meth:`predict` (see :func:`classify`); ``None``: no pruning.
        seed: seed of the noise banks.
        schedule: the noise schedule (default :class:`VPSchedule`).
        elbo_pairs: pairs of the ELBO's log-SNR bank (default: the schedule's ``steps``, 1000).
        elbo_t_min: where the ELBO's decoder reads x_0 (:func:`negative_elbo_from_errors`).

    ``class_scores`` scores every class on the whole bank (C * n_pairs evaluations per image, or
    C * elbo_pairs with ``weighting="elbo"``); ``predict`` prunes with Li et al.'s unweighted errors
    whatever the weighting. The density (:meth:`log_px`, :meth:`bits_per_dim`, :meth:`elbo`) is always the
    ELBO, a lower bound on log p(x) (``density_kind = "bound"``).
    """

    family = "diffusion"
    density_kind = "bound"  # log_px is the ELBO: a lower bound on log p(x), never the density itself
    capabilities = frozenset()

    def __init__(self, denoiser: nn.Module, num_classes: int, input_shape: tuple[int, int, int], n_pairs: int = 100,
                 weighting: str = "uniform", stages=((10, 5), (40, 2), (100, 1)), seed: int = 0,
                 schedule: VPSchedule | None = None, elbo_pairs: int | None = None, elbo_t_min: float = 1e-3):
        super().__init__()
        if weighting not in ("uniform", "elbo"):
            raise InputError(f"weighting must be 'uniform' or 'elbo', got {weighting!r}")
        self.denoiser, self.num_classes, self.input_shape = denoiser, num_classes, tuple(input_shape)
        self.weighting = weighting
        self.stages = tuple((int(n), int(k)) for n, k in stages) if stages else None
        self.schedule = schedule or VPSchedule()
        self.seed, self.elbo_t_min = int(seed), float(elbo_t_min)
        bank = NoiseBank.make(n_pairs, self.input_shape, seed=seed)
        self.register_buffer("bank_t", bank.t)
        self.register_buffer("bank_eps", bank.eps)
        self.register_buffer("log_prior", torch.full((num_classes,), -math.log(num_classes)))
        # The ELBO's bank is rebuilt from (seed, size, t_min, schedule), not stored in checkpoints (1000 noise
        # images would outweigh a small network); gclib.checkpoints records its sha256 and checks it on load.
        elbo = NoiseBank.log_snr_strata(elbo_pairs or self.schedule.steps, self.input_shape, self.schedule,
                                        seed=seed, t_min=self.elbo_t_min)
        self.register_buffer("elbo_t", elbo.t, persistent=False)
        self.register_buffer("elbo_eps", elbo.eps, persistent=False)

    @property
    def score_kind(self) -> str:
        return "bound" if self.weighting == "elbo" else "surrogate"

    @property
    def evaluations_per_image(self) -> int:
        return self.num_classes * len(self.elbo_t if self.weighting == "elbo" else self.bank_t)

    @property
    def device(self) -> torch.device:
        return self.bank_t.device

    @property
    def bank(self) -> NoiseBank:
        return NoiseBank(self.bank_t, self.bank_eps)

    @property
    def elbo_bank(self) -> NoiseBank:
        return NoiseBank(self.elbo_t, self.elbo_eps)

    def spec(self) -> dict:
        """Everything but the weights that rebuilds this model (JSON types): the checkpoint manifest's record."""
        name = type(self.denoiser).__name__
        config = getattr(self.denoiser, "config", None)
        if NETWORKS.get(name) is not type(self.denoiser) or not isinstance(config, dict):
            raise InputError(f"only a DiffusionClassifier of a {' or '.join(NETWORKS)} can be described for a "
                             f"checkpoint, not of a {name}; add its class to gclib.diffusion.NETWORKS with a "
                             "`config` dict of its constructor arguments")
        return {"family": self.family, "network": {"class": name, **config}, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "n_pairs": len(self.bank_t), "weighting": self.weighting,
                "stages": [list(s) for s in self.stages] if self.stages else None, "seed": self.seed,
                "elbo_pairs": len(self.elbo_t), "elbo_t_min": self.elbo_t_min, "schedule": self.schedule.to_dict()}

    @classmethod
    def from_spec(cls, spec: dict) -> DiffusionClassifier:
        """A freshly initialised model of :meth:`spec`'s description (the checkpoint loader fills in the weights)."""
        net = dict(spec["network"])
        network = NETWORKS.get(net.pop("class"))
        if network is None:
            raise InputError(f"unknown denoiser class in {spec['network']}; known: {', '.join(NETWORKS)}")
        return cls(network(**net), spec["num_classes"], tuple(spec["input_shape"]), n_pairs=spec["n_pairs"],
                   weighting=spec["weighting"], stages=spec["stages"], seed=spec["seed"],
                   schedule=VPSchedule(**spec["schedule"]), elbo_pairs=spec["elbo_pairs"],
                   elbo_t_min=spec["elbo_t_min"])

    def train(self, mode: bool = True) -> DiffusionClassifier:
        """``train()``/``eval()``; in eval mode the denoiser's weights are kept channels_last, the layout
        :func:`denoising_errors` feeds it (faster on CPU; training keeps the default layout)."""
        super().train(mode)
        self.denoiser.to(memory_format=torch.contiguous_format if mode else torch.channels_last)
        return self

    def _check(self, x: Tensor) -> Tensor:
        from .model import check_images

        return check_images(x, self.input_shape, self.device)

    def _errors(self, x: Tensor, classes: Tensor, bank: NoiseBank) -> Tensor:
        return _chunked_errors(self.denoiser, 2 * x - 1, classes, bank, self.schedule)

    def _all_classes(self, x: Tensor) -> Tensor:
        return torch.arange(self.num_classes, device=x.device).repeat(len(x), 1)

    def elbo(self, x: Tensor, pairs: int | None = None) -> tuple[Tensor, Tensor]:
        """The ELBO of every class, a lower bound on log p(x|y) in nats (its unbiased estimate on the fixed
        log-SNR bank), and that estimate's standard error: [B, C] each.

        ``x`` in [0, 1] is read as given (a continuous point: pass dequantized images, see
        :meth:`bits_per_dim`); the [-1, 1] scaling adds D log 2. The shared log-SNR bank makes it a fixed,
        deterministic function of x; the standard error is the Monte-Carlo one of that bank's noise
        (:func:`negative_elbo_from_errors`). ``pairs``: estimate on a smaller log-SNR bank of that many pairs
        (same seed and ``t_min``; C * pairs evaluations an image instead of C * ``elbo_pairs``), still unbiased,
        with a larger standard error.
        """
        x = self._check(x)
        bank = self.elbo_bank
        if pairs is not None:
            if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
                raise InputError(f"pairs must be an integer >= 1, got {pairs!r}")
            small = NoiseBank.log_snr_strata(pairs, self.input_shape, self.schedule, seed=self.seed,
                                             t_min=self.elbo_t_min)
            bank = NoiseBank(small.t.to(x.device), small.eps.to(x.device))
        bound, se = negative_elbo(self.denoiser, 2 * x - 1, self._all_classes(x), bank, self.schedule,
                                  self.elbo_t_min)
        return -bound + math.prod(self.input_shape) * math.log(2.0), se

    def class_scores(self, x: Tensor) -> Tensor:
        """Class scores [B, C], nats: -D/2 x mean error (uniform) or the ELBO, a bound on log p(x|y) (elbo)."""
        if self.weighting == "elbo":
            return self.elbo(x)[0]
        x = self._check(x)
        errors = self._errors(x, self._all_classes(x), self.bank)  # [B, C, N], mean over dims
        return -0.5 * math.prod(self.input_shape) * errors.mean(2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.class_scores(x) + self.log_prior, dim=1)

    @torch.no_grad()
    def error_matrix(self, x: Tensor) -> Tensor:
        """Denoising errors (mean over dims) of every class on every pair of the bank, [B, C, n_pairs]:
        what :meth:`class_scores` averages and :func:`classify_from_errors` prunes with."""
        x = self._check(x)
        return self._errors(x, self._all_classes(x), self.bank)

    @torch.no_grad()
    def predict(self, x: Tensor, stages=None) -> Tensor:
        """Most likely class with adaptive pruning (``stages``: the model's by default)."""
        return self.predict_with_evaluations(x, stages)[0]

    @torch.no_grad()
    def predict_with_evaluations(self, x: Tensor, stages=None) -> tuple[Tensor, Tensor]:
        """``(prediction [B], network evaluations per image [B])`` of the pruned rule (:func:`classify`).

        A stage scores its surviving classes on a longer prefix of the bank; they were all scored on the
        previous prefix, so only the new pairs are evaluated (the count is the work done, not an estimate).
        """
        x = self._check(x)
        stages = stages or self.stages or ((len(self.bank_t), 1),)
        bank = self.bank
        rows = torch.arange(len(x), device=x.device)[:, None]
        cache = x.new_zeros(len(x), self.num_classes, len(bank))
        have = 0  # pairs scored for every current candidate

        def errors_fn(classes, n_pairs):
            nonlocal have
            n_pairs = min(n_pairs, len(bank))
            if n_pairs > have:
                cache[rows, classes, have:n_pairs] = self._errors(
                    x, classes, NoiseBank(bank.t[have:n_pairs], bank.eps[have:n_pairs]))
                have = n_pairs
            return cache[rows, classes, :n_pairs].mean(2)

        pred, evaluations, _ = classify(errors_fn, len(x), self.num_classes, stages, device=x.device)
        return pred, evaluations

    def log_px(self, x: Tensor) -> Tensor:
        """A lower bound on log p(x) in nats, [B]: log sum_y p(y) exp(ELBO_y) (each ELBO_y <= log p(x|y)).

        A bound, not the density (``density_kind = "bound"``); ``x`` is read as given, as in :meth:`elbo`.
        """
        return torch.logsumexp(self.elbo(x)[0] + self.log_prior, dim=1)

    def bits_per_dim(self, x: Tensor, dequantization: str = "seeded", seed: int = 0) -> Tensor:
        """An upper bound on -log2 p(x) per dim on the 8-bit scale, [B], from the ELBO (:meth:`log_px`).

        Read at the same point as an IB-INN's figure (``gclib.model.evaluation_point``: by default the 8-bit
        image dequantized with noise seeded by ``seed`` and the image), so the two compare directly, the
        diffusion's being a bound.
        """
        from .model import evaluation_point, nats_to_bits_per_dim

        point = evaluation_point(self._check(x), dequantization, seed)
        return nats_to_bits_per_dim(self.log_px(point), math.prod(self.input_shape))


# -- training ---------------------------------------------------------------------------------------
TIME_SAMPLING = ("continuous", "discrete", "log-snr")
# "log-snr" draws lambda = log-SNR uniformly between lambda(1) and lambda(LOG_SNR_T_MIN), the range of the ELBO's
# bank (NoiseBank.log_snr_strata's default t_min), so that the unweighted loss is the bound's own weighting.
LOG_SNR_T_MIN = 1e-3
#: the learning-rate schedules of :func:`fit`.
LR_SCHEDULES = ("constant", "cosine")


def sample_times(schedule: VPSchedule, n: int, generator: torch.Generator | None = None, device=None,
                 dtype=torch.float32, time: str = "continuous") -> Tensor:
    """The diffusion times ``t`` [n] of a training batch, drawn with ``generator``.

    ``time``: ``"continuous"``: t ~ U(0, 1], the limit of DDPM's uniform step of T (Ho et al.'s "L_simple"
    weighting); ``"discrete"``: DDPM's t = i / T, i uniform in 1..T with T = ``schedule.steps``; ``"log-snr"``:
    the ELBO's weighting by importance sampling (Kingma et al., "Variational Diffusion Models", 2021; Song et
    al.'s likelihood weighting, "Maximum Likelihood Training of Score-Based Diffusion Models", 2021): t has
    the density ``-d lambda/dt / (lambda(t_min) - lambda(1)) = beta(t) / sigma(t)^2 / ...`` on
    [LOG_SNR_T_MIN, 1], i.e. lambda(t) is uniform, so the mean unweighted ``||eps - eps_hat||^2`` is, up to the
    constant ``D (lambda(t_min) - lambda(1)) / 2``, an unbiased estimate of the negative ELBO's diffusion term:
    training on it maximises the bound on log p(x|y) that :meth:`DiffusionClassifier.elbo` reads.
    """
    from .errors import ConfigError

    if time == "continuous":
        return 1 - torch.rand(n, generator=generator, device=device, dtype=dtype)  # (0, 1]
    if time == "discrete":
        steps = schedule.steps
        return torch.randint(1, steps + 1, (n,), generator=generator, device=device).to(dtype) / steps
    if time == "log-snr":
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return _t_uniform_in_log_snr(schedule, u, LOG_SNR_T_MIN).to(dtype)
    raise ConfigError(f"time must be one of {', '.join(TIME_SAMPLING)}, got {time!r}")


def _check_probability(name: str, value) -> float:
    from .errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _rewrite_log(out, rows: list[dict]) -> None:
    import csv
    import io

    from .checkpoints import atomic_write_text

    if not rows:
        (out / "log.csv").unlink(missing_ok=True)
        return
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "log.csv", text.getvalue())


def denoising_loss(model: DiffusionClassifier, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
                   class_dropout: float = 0.0, time: str = "continuous", denoiser: nn.Module | None = None) -> Tensor:
    """DDPM's epsilon-prediction loss (Ho et al. 2020, "L_simple"): mean over the batch and dims of
    ``||eps - eps(x_t, t, y)||^2`` with x_t = sqrt(abar_t) (2x - 1) + sigma_t eps.

    Args:
        model: the classifier whose ``denoiser`` is trained.
        x: images [B, C, H, W] in [0, 1] (:func:`fit` passes them dequantized).
        y: labels [B].
        generator: draws t, eps and the dropout mask, in that order.
        class_dropout: probability of replacing a label by the denoiser's ``null_class`` (classifier-free
            dropout: it also trains eps(x_t, t) without a class); 0 leaves every label as it is.
        time: how t is drawn (:func:`sample_times`): ``"continuous"`` (U(0, 1]), ``"discrete"`` (DDPM's
            grid of ``schedule.steps``) or ``"log-snr"`` (the ELBO's weighting).
        denoiser: the network to evaluate (default ``model.denoiser``; :func:`fit` passes its EMA copy).
    """
    from .errors import ConfigError

    denoiser = model.denoiser if denoiser is None else denoiser
    if time not in TIME_SAMPLING:
        raise ConfigError(f"time must be one of {', '.join(TIME_SAMPLING)}, got {time!r}")
    if class_dropout > 0 and not isinstance(getattr(denoiser, "null_class", None), int):
        raise ConfigError(f"class_dropout needs a denoiser with a null_class (an unconditional embedding); a "
                          f"{type(denoiser).__name__} has none")
    data = 2 * x - 1
    b, device = len(x), x.device
    t = sample_times(model.schedule, b, generator, device, x.dtype, time)
    eps = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    if class_dropout > 0:
        drop = torch.rand(b, generator=generator, device=device) < class_dropout
        y = torch.where(drop, torch.full_like(y, denoiser.null_class), y)
    pred = denoiser(model.schedule.noisy(data, t, eps), t, y)
    return (pred - eps).square().mean()


def _ema(denoiser: nn.Module, decay: float):
    # torch's own EMA (AveragedModel + get_ema_multi_avg_fn): update_parameters copies the weights on its first
    # call, then ema <- decay * ema + (1 - decay) * w; its state (the copy and n_averaged) saves as tensors.
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(denoiser, multi_avg_fn=get_ema_multi_avg_fn(decay))


@torch.no_grad()
def _val_loss(model: DiffusionClassifier, denoiser: nn.Module, val, batch_size: int, device, seed: int,
              time: str) -> float:
    """The loss of ``denoiser`` on ``val`` with the same seeded dequantization, t and eps at every call."""
    from .data import dequantize
    from .train import _loader

    was_training = denoiser.training
    denoiser.eval()
    g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 999_983)
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in _loader(val, None, batch_size, device, 0, drop_last=False):
        x, y = x.to(device), y.to(device)
        x = dequantize(x, g)
        total += denoising_loss(model, x, y, g, 0.0, time, denoiser=denoiser).double() * len(y)
        n += len(y)
    denoiser.train(was_training)
    return float(total) / max(n, 1)


def fit(model: DiffusionClassifier, train, val=None, *, epochs: int, batch_size: int = 128, lr: float = 2e-4,
        ema_decay: float = 0.999, class_dropout: float = 0.1, grad_clip: float = 1.0, time: str = "continuous",
        lr_schedule: str = "constant", out, resume: bool = False, seed: int = 0, device=None, max_steps: int | None = None,
        progress: bool = True, num_workers: int | None = None, init_from=None) -> list[dict]:
    """Train a :class:`DiffusionClassifier`'s denoiser with DDPM's epsilon loss; returns the epoch log.

    Every step: a batch of the epoch's seeded permutation, dequantized like the IB-INN's training data
    (so the ELBO is a bound on the density :meth:`DiffusionClassifier.bits_per_dim` reads), t uniform
    (:func:`denoising_loss`; ``"continuous"`` by default so that the network can be read at any t: the
    ELBO's log-SNR bank and the probability-flow ODE of :mod:`gclib.score` evaluate it off DDPM's grid),
    the label dropped to the null class with probability ``class_dropout``, Adam at the rate ``lr``
    (``lr_schedule="constant"``, DDPM's) or decayed from ``lr`` to 0 along a half cosine over the run's
    ``epochs`` (``"cosine"``: the annealing that a warm-started fine-tune needs), gradients clipped to norm ``grad_clip`` (a step with a non-finite gradient is skipped), then
    the EMA of the weights updated. All randomness is a function of (seed, epoch) for the data order and
    of (seed, step) for the noise, so the resumable state is the weights, the EMA, the optimizer and the
    step (no generator state): a run killed and resumed ends with bit-identical weights (CPU).

    Writes ``out/log.csv`` (a row per epoch: epoch, step, lr, train_loss, val_loss (the EMA network's loss
    on ``val`` with fixed seeded noise), epoch_time_s, train_images_per_s), the training state
    (``out/last.json``, atomically, at every epoch end and when ``max_steps`` stops the run) and
    ``out/final`` (the model with the EMA weights, for ``gclib.load``). At the end ``model`` holds the EMA
    weights too, in eval mode. Runs on CUDA when available (``device``), else the CPU; one process.

    Args:
        model: the classifier (its denoiser needs a ``null_class`` for ``class_dropout`` > 0, as
            :class:`TinyUNet` has).
        train, val: datasets of (image in [0, 1], label), e.g. :class:`gclib.data.ImageDataset`.
        epochs: passes over ``train`` (whole batches only).
        batch_size, lr, ema_decay, class_dropout, grad_clip, time, lr_schedule: see above (``time``:
            :func:`sample_times`; ``lr_schedule``: one of :data:`LR_SCHEDULES`).
        out: the run folder.
        resume: continue the run in ``out``; a fresh start if it holds none.
        seed: of the data order, the dequantization, t, eps and dropout.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA if available).
        max_steps: stop after this many steps in total (the state is saved: ``resume`` continues).
        progress: tqdm bars and a JSON line per epoch.
        num_workers: DataLoader workers (default 0 for in-memory datasets).
        init_from: warm start: a diffusion checkpoint of the same architecture (e.g. a shipped zoo model)
            whose weights start the run (and its EMA), with a fresh optimizer; its path, sha256 and training
            record are kept in the manifest (``info.init_from``, nested like :func:`gclib.train.fit`'s).
            Ignored when resuming (the run's state already holds the weights and the record).

    Raises:
        ConfigError: a bad argument. TrainingError: ``out`` holds a run and ``resume`` is off.
    """
    import json
    import sys
    import time as clock
    import warnings
    from pathlib import Path

    from tqdm import tqdm

    from . import checkpoints
    from .data import dequantize
    from .errors import ConfigError, TrainingError
    from .train import (
        _default_workers,
        _EpochSampler,
        _loader,
        _read_log,
        _step_generator,
        _use_fused,
        _write_log,
        default_device,
        make_optimizer,
        optimizer_step,
        shard_indices,
        tune_cpu_allocator,
    )

    if not isinstance(model, DiffusionClassifier):
        raise ConfigError(f"gclib.diffusion.fit trains a DiffusionClassifier, got {type(model).__name__}; "
                          "use gclib.train.fit for IB-INNs and ResNets")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ConfigError(f"max_steps must be an integer >= 1 or None, got {max_steps!r}")
    for name, value in (("lr", lr), ("grad_clip", grad_clip)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (0 < value < math.inf):
            raise ConfigError(f"{name} must be a positive number, got {value!r}")
    ema_decay = _check_probability("ema_decay", ema_decay)
    class_dropout = _check_probability("class_dropout", class_dropout)
    if time not in TIME_SAMPLING:
        raise ConfigError(f"time must be one of {', '.join(TIME_SAMPLING)}, got {time!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
    if out is None:
        raise ConfigError("out must name a run folder (for log.csv, the training state and final)")
    out = Path(out)
    has_run = (out / "last.json").exists()
    if has_run and not resume:  # before any work (a warm start's load)
        raise TrainingError(f"{out} already holds a training run; resume it (resume=True) or choose another out")
    try:
        model.spec()  # what the training state and final record: refuse an unsavable model before training
    except InputError as err:
        raise ConfigError(str(err)) from err
    if class_dropout > 0 and not isinstance(getattr(model.denoiser, "null_class", None), int):
        warnings.warn(f"{type(model.denoiser).__name__} has no null_class (an unconditional embedding): training "
                      "without class dropout", stacklevel=2)
        class_dropout = 0.0
    shape = getattr(train, "image_shape", None) or tuple(train[0][0].shape)
    if tuple(shape) != model.input_shape:
        raise ConfigError(f"the training images are {tuple(shape)}, the model expects {model.input_shape}")
    steps_per_epoch = len(train) // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"the training set ({len(train)} images) is smaller than one batch ({batch_size}); "
                          "lower batch_size")

    device = torch.device(device) if device else default_device()
    if device.type == "cpu":
        tune_cpu_allocator()
    lineage = None
    if init_from is not None and not has_run:
        from .train import lineage_record

        source = checkpoints.read_manifest(init_from)  # refuses a missing or malformed checkpoint
        theirs, ours = (source.get("diffusion") or {}).get("network"), model.spec()["network"]
        if source.get("kind") != "diffusion" or theirs != ours:
            raise ConfigError(f"init_from {init_from} is not a diffusion network of this architecture (its "
                              f"manifest: kind {source.get('kind')!r}, network {theirs}; this model: {ours}); "
                              "pass the source's --width and --emb")
        # Only the network's weights: the classifier's reading (noise banks, pruning stages) stays this model's.
        model.denoiser.load_state_dict(checkpoints.load(init_from, device="cpu").denoiser.state_dict())
        lineage = lineage_record(init_from, source)
    model.to(device).train()
    ema = _ema(model.denoiser, ema_decay)
    params = [p for p in model.denoiser.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"the denoiser ({type(model.denoiser).__name__}) has no trainable parameters")
    opt, fused = make_optimizer("adam", params, lr)
    out.mkdir(parents=True, exist_ok=True)
    step, start_epoch, start_batch, elapsed, history, record = 0, 0, 0, 0.0, [], {}
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # the epoch's loss x images, images
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
                "class_dropout": class_dropout, "grad_clip": grad_clip, "time": time, "seed": seed}
    if lr_schedule != "constant":  # (recorded only when set: the shipped runs' settings stay as they were)
        settings["lr_schedule"] = lr_schedule
    if has_run:
        saved = checkpoints.read_training_state(out, verify=False).get("settings", {})
        # epochs may change, except under a cosine schedule (whose every step's rate depends on them)
        fixed = [k for k in settings if k != "epochs" or lr_schedule != "constant"]
        changed = sorted(k for k in fixed if saved.get(k) != settings[k])
        if changed:
            raise ConfigError(f"{out} was trained with other {', '.join(changed)} ({saved}); resume with the same "
                              "settings (only epochs may change, and not under a cosine schedule) or use a new "
                              "out folder")
        record = checkpoints.load_training_state(out, model, opt, extra={"ema": ema})
        lineage = record.get("init_from")
        _use_fused(opt, fused)
        step, start_epoch, start_batch = record["step"], record["epoch"], record["batch_in_epoch"]
        elapsed = record.get("elapsed_s", 0.0)
        if start_batch:
            sums = torch.tensor(record["epoch_sums"], dtype=torch.float64, device=device)
        history = [row for row in _read_log(out) if row["epoch"] <= start_epoch]
        _rewrite_log(out, history)  # without the row of an epoch stopped part-way (it is redone in full)
        if progress:
            print(f"resuming {out} at epoch {start_epoch + 1}, step {step}", file=sys.stderr)
    sampler = _EpochSampler()
    workers = _default_workers(train, 1) if num_workers is None else num_workers
    loader = _loader(train, sampler, batch_size, device, workers, drop_last=True, persistent=True)
    t_start = clock.perf_counter()

    def save_state(epoch: int, batch_in_epoch: int) -> None:
        checkpoints.save_training_state(out, model, opt, {
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "epoch_sums": sums.tolist(),
            "settings": settings, "elapsed_s": elapsed + clock.perf_counter() - t_start, "init_from": lineage},
            extra={"ema": ema})

    total_steps = epochs * steps_per_epoch

    def lr_at(k: int) -> float:  # the rate of step k (0-based); no warm-up (DDPM has none)
        if lr_schedule == "constant":
            return lr
        return lr * 0.5 * (1 + math.cos(math.pi * min(k, total_steps) / total_steps))

    stopped = bool(max_steps and step >= max_steps)
    for epoch in range(start_epoch, epochs):
        if stopped:
            break
        skip = start_batch if epoch == start_epoch else 0
        if not skip:
            sums.zero_()
        sampler.indices = shard_indices(len(train), seed, epoch, batch_size=batch_size)[skip * batch_size:].tolist()
        t_start = clock.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                   disable=not progress, dynamic_ncols=True, mininterval=1.0)
        batch_in_epoch, images_now = skip, 0
        for batch_in_epoch, (x, y) in enumerate(loader, start=skip + 1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            generator = _step_generator(device, seed, step)
            x = dequantize(x, generator)
            loss = denoising_loss(model, x, y, generator, class_dropout, time)
            current_lr = lr_at(step)
            for group in opt.param_groups:
                group["lr"] = current_lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            finite = optimizer_step(opt, grad_norm, fused)
            ema.update_parameters(model.denoiser)  # (a skipped step leaves the weights, the EMA still decays to them)
            batch_sums = torch.stack([loss.detach().double() * len(y), loss.new_full((), len(y)).double()])
            sums += torch.where(finite, batch_sums, 0.0)
            step, images_now = step + 1, images_now + len(y)
            bar.update(1)
            if step % 20 == 0 and not bar.disable:
                bar.set_postfix(loss=f"{float(sums[0] / sums[1].clamp_min(1)):.4f}")
            if max_steps and step >= max_steps:
                stopped = True
                break
        bar.close()
        epoch_time = clock.perf_counter() - t_start
        elapsed += epoch_time
        seen = float(sums[1])
        row = {"epoch": epoch + 1, "step": step, "lr": lr_at(step - 1), "train_loss": float(sums[0]) / max(seen, 1),
               "val_loss": _val_loss(model, ema.module, val, batch_size, device, seed, time) if val is not None
               else float("nan"), "epoch_time_s": epoch_time,
               "train_images_per_s": images_now / max(epoch_time, 1e-9)}
        history.append(row)
        _write_log(out, row)
        if progress:
            tqdm.write(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}))
        t_start = clock.perf_counter()
        if batch_in_epoch >= steps_per_epoch:
            save_state(epoch + 1, 0)
        else:  # stopped by max_steps inside the epoch
            save_state(epoch, batch_in_epoch)

    model.denoiser.load_state_dict(ema.module.state_dict())
    info = {**settings, "steps": step, "wall_time_s": round(elapsed, 1), "n_train": len(train),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "threads": torch.get_num_threads(), "weights": "ema", "val": history[-1] if history else None,
            "init_from": lineage}
    checkpoints.save(model, out / "final", **info)
    model.eval()
    return history


# -- command line ---------------------------------------------------------------------------------------------
def _parser():
    import argparse

    p = argparse.ArgumentParser(prog="python -m gclib.diffusion", description=(
        "Train a class-conditional diffusion classifier (TinyUNet, DDPM epsilon loss, EMA) from scratch and "
        "measure it: writes OUT/log.csv, the resumable state and OUT/final (load it with gclib.load)."))
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--width", type=int, default=32, help="TinyUNet base width (multiple of 8; default 32)")
    p.add_argument("--emb", type=int, default=128, help="time/class embedding size (default 128)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                   help="constant (DDPM's; default) or cosine (decays from --lr to 0 over --epochs)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--class-dropout", type=float, default=0.1)
    p.add_argument("--n-pairs", type=int, default=100, help="fixed (t, eps) pairs shared by every class")
    p.add_argument("--time", default="continuous", choices=TIME_SAMPLING,
                   help="how training draws t: continuous (uniform, DDPM's L_simple; default), discrete (DDPM's "
                        "grid) or log-snr (the ELBO's own weighting, by importance sampling)")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="warm start from this diffusion checkpoint (same --width and --emb), e.g. "
                        "checkpoints/fashion-mnist/diffusion-unet32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (resumable)")
    p.add_argument("--train-subset", type=int, help="train on this many images (seeded subset)")
    p.add_argument("--eval-test", type=int, default=0, metavar="N",
                   help="after training, classify N test images (seeded subset) and print the accuracy")
    p.add_argument("--eval-bpd", type=int, default=0, metavar="M",
                   help="and the ELBO bits/dim of the first M of them (costly: every class's ELBO per image)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    import sys

    from . import data
    from .errors import GclibError

    args = _parser().parse_args(argv)
    try:
        train, val, test = data.load(args.dataset)
        if args.train_subset:
            train = train.subset(args.train_subset, args.seed)
        shape = tuple(train[0][0].shape)
        torch.manual_seed(args.seed)
        net = TinyUNet(shape[0], len(train.classes), width=args.width, emb=args.emb)
        model = DiffusionClassifier(net, len(train.classes), shape, n_pairs=args.n_pairs, seed=args.seed)
        fit(model, train, val.subset(min(1000, len(val)), args.seed), epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, ema_decay=args.ema_decay, class_dropout=args.class_dropout, time=args.time,
            lr_schedule=args.lr_schedule, out=args.out,
            resume=args.resume, seed=args.seed, device=args.device, max_steps=args.max_steps,
            progress=not args.no_progress, init_from=args.init_from)
        if args.eval_test:
            x, y = test.subset(min(args.eval_test, len(test)), args.seed).tensors()
            x, y = x.to(model.bank_t.device), y.to(model.bank_t.device)
            with torch.no_grad():
                correct = int((model.predict(x) == y).sum())
            print(f"test accuracy {correct / len(y):.4f} ({correct}/{len(y)})")
            if args.eval_bpd:
                with torch.no_grad():
                    bpd = model.bits_per_dim(x[:args.eval_bpd])
                print(f"test bits/dim (ELBO, an upper bound) {float(bpd.mean()):.3f} "
                      f"± {float(bpd.std() / len(bpd) ** 0.5) if len(bpd) > 1 else float('nan'):.3f} "
                      f"over {len(bpd)} images")
    except GclibError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run as `python -m gclib.diffusion`, this file is __main__ and its classes are not gclib.diffusion's, which
    # gclib.save checks for ("can only save gclib models"): run the package module's main instead.
    from gclib.diffusion import main as _package_main

    raise SystemExit(_package_main())
