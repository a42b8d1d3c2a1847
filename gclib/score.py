"""The score-based classifier (Zimmermann, Schott, Song, Dunn, Klindt, "Score-Based Generative Classifiers", 2021).

The diffusion classifier's epsilon-network, read as the score of a VP-SDE: s(x, t, y) = -eps(x, t, y) /
sigma(t). The probability-flow ODE dx/dt = v(x, t) = -1/2 beta(t) (x + s(x, t, y)) carries the data to
the N(0, I) prior at t = 1 with the same marginals as the SDE, and by the instantaneous change of
variables

    log p_t0(x | y) = log N(x_1; 0, I) + int_t0^1 div v(x_t, t) dt,

the exact log-likelihood of the model's marginal at t0 = ``t_min`` (up to the solver's error and, with the
Hutchinson-Skilling estimator div v ~ z^T (dv/dx) z, its Monte-Carlo error); as t0 -> 0 it tends to the
density at the data, where the score is singular. The solver steps are equally spaced in log-SNR
(:func:`time_grid`). One probe set z is shared by every class, so
the class scores differ only by what the network says about each class. The solver here is a fixed-step
classical Runge-Kutta method (RK4, ``steps`` steps from ``t_min`` to 1): no adaptive error control, so
its accuracy is stated by its step count (torchdiffeq's adaptive solvers are the alternative; the fixed
grid keeps the cost per image fixed and the scores deterministic).

One network with two readings (:mod:`gclib.diffusion` and this module) keeps the comparison fair.
Reference: Yang Song's ``likelihood.py`` (score_sde_pytorch); the dequantization and [0, 1] -> [-1, 1]
scaling terms are derived here rather than hard-coded: for x in [0, 1] and data x~ = 2x - 1,
log p(x) = log p(x~) + D log 2, and bits/dim follows as for the IB-INN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .diffusion import VPSchedule
from .errors import InputError

__all__ = ["ScoreClassifier", "exact_divergence", "hutchinson_divergence", "mixture_bits_per_dim",
           "probability_flow_log_likelihood", "time_grid"]


def mixture_bits_per_dim(class_log_likelihoods: Tensor, dims: int) -> Tensor:
    """Bits/dim [B] of the uniform class mixture, -log2(sum_y exp(l_y) / C) / ``dims``, from class
    log-likelihoods in nats: [B, C], or [B, P, C] (P estimates of each, averaged first, as
    :meth:`ScoreClassifier.log_px` does). Computed in float64."""
    from .model import nats_to_bits_per_dim

    ll = class_log_likelihoods.double()
    if ll.dim() == 3:
        ll = ll.mean(1)
    if ll.dim() != 2:
        raise InputError("class log-likelihoods must be [B, C] or [B, P, C], got shape "
                         f"{tuple(class_log_likelihoods.shape)}")
    return nats_to_bits_per_dim(torch.logsumexp(ll, dim=1) - math.log(ll.shape[1]), dims)


def hutchinson_divergence(fn, x: Tensor, probes: Tensor, reduce: bool = True) -> tuple[Tensor, Tensor]:
    """``(fn(x), mean over probes z of z^T (d fn / dx) z)`` per sample; ``probes`` ``[P, *x.shape]``.

    One forward pass and P backward passes. ``reduce=False``: each probe's estimate, ``[P, B]``.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        terms = []
        for i, z in enumerate(probes):
            (vjp,) = torch.autograd.grad(out, x, z, retain_graph=i < len(probes) - 1)
            terms.append((vjp * z).flatten(1).sum(1))
    terms = torch.stack(terms)
    return out.detach(), terms.mean(0) if reduce else terms


def exact_divergence(fn, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(fn(x), trace(d fn / dx))`` per sample by D backward passes: for small D (tests)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        flat = out.flatten(1)
        d = flat.shape[1]
        div = torch.zeros(len(x), dtype=out.dtype, device=out.device)
        for j in range(d):
            (g,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=j < d - 1)
            div = div + g.flatten(1)[:, j]
    return out.detach(), div


GRIDS = ("log-snr", "uniform")


def time_grid(schedule: VPSchedule, steps: int, t_min: float, grid: str = "log-snr") -> Tensor:
    """The ``steps + 1`` solver times from ``t_min`` to 1 (float64).

    ``"uniform"``: equal steps in t. ``"log-snr"``: equal steps in the log-SNR lambda(t). Near t = 0 the
    probability-flow field grows like t^(-1/2) and its divergence like 1/t, so equal steps in t spend
    almost all of their budget where nothing happens; lambda ~ -log t there, so equal lambda steps are
    geometric in t near 0 and about equal in t near 1.
    """
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if not 0 < t_min < 1:
        raise InputError(f"t_min must lie in (0, 1), got {t_min}")
    if grid == "uniform":
        return torch.linspace(t_min, 1.0, steps + 1, dtype=torch.float64)
    if grid == "log-snr":
        ends = schedule.log_snr(torch.tensor([t_min, 1.0], dtype=torch.float64))
        t = schedule.t_from_log_snr(torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64))
        t[0], t[-1] = t_min, 1.0  # exact ends (the inverse is accurate to ~1e-15)
        return t
    raise InputError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")


def probability_flow_log_likelihood(eps_fn, x: Tensor, schedule: VPSchedule, steps: int = 100, t_min: float = 1e-5,
                                    probes: Tensor | None = None, prior=None, grid: str = "uniform",
                                    per_probe: bool = False) -> Tensor:
    """log p_0(x) in nats, [B], of the VP-SDE whose noise predictor is ``eps_fn(x_t, t)`` (data space).

    Args:
        eps_fn: ``eps_fn(x_t [B, ...], t [B])`` -> predicted noise.
        x: data points [B, ...] (the diffusion's own scale).
        schedule: the VP noise schedule.
        steps: RK4 steps from ``t_min`` to 1.
        t_min: start of the integration (the score is singular at t = 0): the result is the log-density of
            the model's marginal at ``t_min``, which tends to p_0 as ``t_min`` -> 0.
        grid: where the steps lie (:func:`time_grid`): ``"uniform"`` in t or ``"log-snr"``.
        probes: Hutchinson probes ``[P, *x.shape[1:]]``, shared by the whole batch and trajectory (and, in the
            classifier, by every class); ``None``: the exact divergence (D backward passes per evaluation).
        prior: log-density of x_1, ``prior(x_1)`` -> [B]; default N(0, I). (The VP marginal at t = 1 is
            N(sqrt(abar(1)) x, (1 - abar(1)) I) with abar(1) = 4.3e-5, not exactly N(0, I): a bias of the
            order of 1e-2 nats per image, measured in the tests.)
        per_probe: return each probe's estimate, ``[P, B]`` (their mean is the estimate; their spread gives its
            standard error; the trajectory is the same for every probe, so this costs nothing extra).

    Returns:
        prior(x_1) + int div v dt, per point: ``[B]``, or ``[P, B]`` with ``per_probe`` (``[1, B]`` when exact).
    """
    times = time_grid(schedule, steps, t_min, grid).tolist()

    def velocity(xt: Tensor, t: float) -> Tensor:
        tt = torch.full((len(xt),), t, dtype=xt.dtype, device=xt.device)
        shape = (-1,) + (1,) * (xt.dim() - 1)
        score = -eps_fn(xt, tt) / schedule.sigma(tt).view(shape)
        return -0.5 * schedule.beta(tt).view(shape) * (xt + score)

    def field(xt: Tensor, t: float) -> tuple[Tensor, Tensor]:
        fn = lambda v: velocity(v, t)
        if probes is None:
            out, div = exact_divergence(fn, xt)
            return out, div[None]
        batch_probes = probes.to(xt.device, xt.dtype)[:, None].expand(len(probes), *xt.shape)
        return hutchinson_divergence(fn, xt, batch_probes, reduce=False)

    xt, integral = x.detach(), torch.zeros(len(x), dtype=x.dtype, device=x.device)  # integral: [P, B] after a step
    for t, t_next in zip(times[:-1], times[1:]):  # classical RK4 on the augmented state (x, int div v)
        h = t_next - t
        k1, d1 = field(xt, t)
        k2, d2 = field(xt + 0.5 * h * k1, t + 0.5 * h)
        k3, d3 = field(xt + 0.5 * h * k2, t + 0.5 * h)
        k4, d4 = field(xt + h * k3, t + h)
        xt = xt + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        integral = integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    if prior is not None:
        log_prior = prior(xt)
    else:
        log_prior = -0.5 * xt.flatten(1).square().sum(1) - 0.5 * xt[0].numel() * math.log(2 * math.pi)
    per = log_prior + integral
    return per if per_probe else per.mean(0)


class ScoreClassifier(torch.nn.Module):
    """Exact class likelihoods from a class-conditional eps-network, behind gclib's common interface.

    ``class_scores(x)`` = log p(x|y) in nats for x in [0, 1] (the density of the [-1, 1]-scaled data plus
    D log 2), one ODE solve per class with the same probes; ``score_kind = "estimate"`` when a
    Hutchinson estimator is used (``n_probes`` > 0), ``"exact"`` with the exact divergence (small images).
    The network sees ``(x_t, t, y)`` like in :class:`gclib.diffusion.DiffusionClassifier`.

    Args:
        denoiser: ``denoiser(x_t, t, y)`` -> eps, on data scaled to [-1, 1].
        num_classes, input_shape: C and (C, H, W).
        steps: RK4 steps of the probability-flow ODE from ``t_min`` to 1 (4 network evaluations each).
        n_probes: Rademacher probes of the Hutchinson-Skilling estimator, seeded by ``seed`` and shared by
            every image, step and class; 0: the exact divergence (D backward passes an evaluation: tests only).
        t_min: where the ODE starts; the scores are the log-density of the model's marginal at ``t_min``
            (the default 1e-3, noise sigma 0.011 on the [-1, 1] scale, is where the ELBO's decoder reads x_0,
            so the two densities of the network compare directly).
        grid: ``"log-snr"`` (default) or ``"uniform"`` steps (:func:`time_grid`).

    The zoo's settings (20 steps, 2 probes) came from measuring the solver and the probes on the shipped
    network: see ``gclib.zoo.SCORE_READING`` and the diffusion chapter.
    """

    family = "score"
    capabilities = frozenset()

    def __init__(self, denoiser: torch.nn.Module, num_classes: int, input_shape: tuple[int, int, int],
                 steps: int = 20, n_probes: int = 2, seed: int = 0, schedule: VPSchedule | None = None,
                 t_min: float = 1e-3, grid: str = "log-snr"):
        super().__init__()
        if n_probes < 0:
            raise InputError(f"n_probes must be >= 0 (0: the exact divergence), got {n_probes}")
        self.denoiser, self.num_classes, self.input_shape = denoiser, num_classes, tuple(input_shape)
        self.steps, self.schedule = steps, schedule or VPSchedule()
        self.t_min, self.grid, self.seed = float(t_min), grid, int(seed)
        time_grid(self.schedule, steps, self.t_min, grid)  # refuse a bad grid now, not at the first call
        g = torch.Generator().manual_seed(seed)
        # Rademacher probes (lower variance than Gaussian ones for the same cost).
        probes = torch.randint(0, 2, (n_probes, *self.input_shape), generator=g).float() * 2 - 1
        self.register_buffer("probes", probes)
        self.register_buffer("log_prior", torch.full((num_classes,), -math.log(num_classes)))

    @classmethod
    def from_diffusion(cls, model, steps: int = 20, n_probes: int = 2, seed: int = 0, t_min: float = 1e-3,
                       grid: str = "log-snr") -> ScoreClassifier:
        """The score-based reading of a :class:`gclib.diffusion.DiffusionClassifier`'s network (e.g. one
        ``gclib.load`` gave): the same denoiser object (shared, not copied), classes, image shape and schedule.
        Its device follows the denoiser's; put it in eval mode as the diffusion model is."""
        from .diffusion import DiffusionClassifier

        if not isinstance(model, DiffusionClassifier):
            raise InputError(f"from_diffusion needs a DiffusionClassifier, got {type(model).__name__}")
        score = cls(model.denoiser, model.num_classes, model.input_shape, steps=steps, n_probes=n_probes, seed=seed,
                    schedule=model.schedule, t_min=t_min, grid=grid)
        return score.to(model.device).train(model.training)

    def settings(self) -> dict:
        """What the scores depend on besides the network (recorded in evaluation artifacts)."""
        return {"steps": self.steps, "n_probes": len(self.probes), "probe_seed": self.seed, "t_min": self.t_min,
                "grid": self.grid, "solver": "RK4 (fixed steps)", "schedule": self.schedule.to_dict()}

    @property
    def score_kind(self) -> str:
        return "estimate" if len(self.probes) else "exact"

    density_kind = property(lambda self: self.score_kind)

    @property
    def evaluations_per_image(self) -> int:
        # 4 RK4 stages per step, each a forward and a backward pass per probe, for every class.
        per_solve = 4 * self.steps * (1 + max(len(self.probes), math.prod(self.input_shape) if not len(self.probes)
                                              else 0))
        return self.num_classes * per_solve

    @property
    def device(self) -> torch.device:
        return self.log_prior.device

    def class_scores_per_probe(self, x: Tensor) -> Tensor:
        """Each probe's estimate of log p(x|y), ``[B, P, C]`` nats (``P = 1`` when exact); their mean over P is
        :meth:`class_scores`, their spread the estimator's standard error. ``x`` in [0, 1], read as given."""
        from .model import check_images

        x = check_images(x, self.input_shape, self.device)
        data = 2 * x - 1
        d = math.prod(self.input_shape)
        probes = self.probes if len(self.probes) else None
        scores = []
        for y in range(self.num_classes):
            labels = torch.full((len(x),), y, dtype=torch.long, device=x.device)
            ll = probability_flow_log_likelihood(lambda xt, t: self.denoiser(xt, t, labels), data, self.schedule,
                                                 self.steps, t_min=self.t_min, probes=probes, grid=self.grid,
                                                 per_probe=True)
            scores.append(ll.T + d * math.log(2.0))
        return torch.stack(scores, 2)

    def class_scores(self, x: Tensor) -> Tensor:
        return self.class_scores_per_probe(x).mean(1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.class_scores(x) + self.log_prior, dim=1)

    def log_px(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self.class_scores(x) + self.log_prior, dim=1)

    def bits_per_dim(self, x: Tensor, dequantization: str = "seeded", seed: int = 0) -> Tensor:
        """-log2 p(x) per dim on the 8-bit scale, [B], read where an IB-INN's figure is read
        (``gclib.model.evaluation_point``: by default the 8-bit image dequantized with noise seeded by ``seed``
        and the image). An estimate when Hutchinson probes are used: each class's log-likelihood is unbiased,
        the mixture over classes (a log-sum-exp of them) only approximately so."""
        from .model import check_images, evaluation_point, nats_to_bits_per_dim

        point = evaluation_point(check_images(x, self.input_shape, self.device), dequantization, seed)
        return nats_to_bits_per_dim(self.log_px(point), math.prod(self.input_shape))
