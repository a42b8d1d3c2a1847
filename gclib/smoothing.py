"""Randomized smoothing: certified L2 robustness of a smoothed classifier (Cohen et al., 2019).

Given any base classifier f (``base(x) -> logits [B, C]``), the smoothed classifier

    g(x) = argmax_c P(f(x + eps) = c),   eps ~ N(0, sigma^2 I),

is robust in L2: if the top class c_A has probability p_A = P(f(x + eps) = c_A) > 1/2, then g(x + delta) = c_A
for every ||delta||_2 < sigma * Phi^-1(p_A) (Cohen, Rosenfeld and Kolter, "Certified Adversarial Robustness via
Randomized Smoothing", ICML 2019, Theorem 1 with p_B = 1 - p_A). What is certified is the radius of **g, the
smoothed classifier, not of the base classifier f**: f itself may be fooled by far smaller perturbations, and
using the certificate means classifying with g (many noisy forward passes per image), not with f.

g cannot be evaluated exactly, so :class:`SmoothedClassifier` follows the paper's Monte Carlo algorithms
(reference implementation: locuslab/smoothing, ``code/core.py``):

- :meth:`SmoothedClassifier.predict` (PREDICT): the top class of n noisy votes if a two-sided binomial test of
  the top count against the runner-up's rejects "equally likely" at level ``alpha``, else :data:`ABSTAIN`.
  With probability at least 1 - alpha a returned class equals g(x).
- :meth:`SmoothedClassifier.certify` (CERTIFY): guess the top class from ``n0`` votes, count it in ``n`` fresh
  votes, take the one-sided (1 - alpha) Clopper-Pearson lower bound p_lower on p_A, and return the class with
  radius sigma * Phi^-1(p_lower), or :data:`ABSTAIN` (radius 0) if p_lower < 1/2. With probability at least
  1 - alpha (over the noise) the certificate is true.

**The sample counts matter.** The radius is computed from a lower confidence bound, so it can never exceed
:func:`max_certifiable_radius` (n, alpha, sigma) = sigma * Phi^-1(alpha^(1/n)), the radius of an image whose
n votes all went to one class: with alpha = 0.001 and sigma = 0.25 that is 0.38 at n = 100, 0.62 at n = 1,000,
0.80 at n = 10,000 and 0.95 at n = 100,000 (the paper's n). Even a perfect base needs
n >= log(alpha) / log Phi(r / sigma) votes to certify radius r: 301 for r = 0.5, 43,412 for r = 0.9 (same alpha
and sigma). A certified-accuracy curve is a statement about (f, sigma, n, alpha) together; report all four.

Noise is added in the image space, to images in [0, 1], and is **not clamped**: x + eps leaves [0, 1], as in
the paper and the reference code (clamping would change the noise distribution and void Theorem 1). The base
classifier must accept such inputs; a gclib model's input check (``check_inputs``) is switched off while the
noisy batches are classified and restored afterwards. A base trained on clean images only is usually poor under
noise of the sigma certified here; the paper trains f with Gaussian noise augmentation at the same sigma.

Abstention is encoded as the class :data:`ABSTAIN` = -1 (radius 0.0), as in the reference code.
"""

from __future__ import annotations

import contextlib
import math
from numbers import Integral, Real

import torch
from torch import Tensor

from .errors import InputError, check_batch, check_batch_size

__all__ = ["ABSTAIN", "SmoothedClassifier", "certificates", "certified_accuracy", "clopper_pearson_lower",
           "max_certifiable_radius", "seeded_votes"]

ABSTAIN = -1


# -- checks --------------------------------------------------------------------------------------
def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum} (a number of noise draws per image), "
                         f"got {value!r}")
    return int(value)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 < alpha < 1:
        raise InputError(f"alpha must be a failure probability strictly between 0 and 1 (the paper uses 0.001), "
                         f"got {alpha!r}")
    return float(alpha)


def _check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, Real) or not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma must be a finite noise standard deviation > 0 (on the [0, 1] pixel scale, "
                         f"e.g. 0.25), got {sigma!r}")
    return float(sigma)


# -- statistics ----------------------------------------------------------------------------------
def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on a binomial proportion, k successes of n.

    Equals ``scipy.stats.beta.ppf(alpha, k, n - k + 1)``, and 0.0 for k = 0. Computed as the lower end of
    scipy's exact two-sided interval at confidence 1 - 2 alpha (the reference code's
    ``proportion_confint(k, n, alpha=2 * alpha, method="beta")``); for k = n it is alpha^(1/n).
    """
    from scipy import stats

    n = _check_count("n", n)
    if isinstance(k, bool) or not isinstance(k, Integral) or not 0 <= k <= n:
        raise InputError(f"k must be an integer count of successes in [0, n] = [0, {n}], got {k!r}")
    alpha = _check_alpha(alpha)
    k = int(k)
    if k == 0:
        return 0.0
    if alpha < 0.5:
        return float(stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low)
    # A two-sided interval at confidence 1 - 2 alpha <= 0 does not exist; the one-sided bound still does.
    return float(stats.beta.ppf(alpha, k, n - k + 1))


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius :meth:`SmoothedClassifier.certify` can return with ``n`` samples: sigma * Phi^-1(alpha^(1/n)).

    That is the radius of an image all of whose n votes went to one class (p_lower = alpha^(1/n)). It is
    negative when n is too small for any certificate (alpha^(1/n) < 1/2, i.e. n < log2(1/alpha)): then every
    image abstains. E.g. n = 100,000, alpha = 0.001, sigma = 0.25 gives 0.953.
    """
    from scipy import stats

    n, alpha, sigma = _check_count("n", n), _check_alpha(alpha), _check_sigma(sigma)
    return sigma * float(stats.norm.ppf(alpha ** (1.0 / n)))


def certified_accuracy(radii, correct, grid) -> list[dict]:
    """Certified accuracy at each radius r of ``grid``: the share of images classified correctly with radius >= r.

    Arguments:
        radii: [N] certified radii (from :meth:`SmoothedClassifier.certify`; 0.0 for abstains).
        correct: [N] booleans, ``prediction == label``. An abstain (prediction :data:`ABSTAIN` = -1) never equals
            a label, so it counts as wrong at every radius, including 0.
        grid: radii to evaluate at (>= 0).

    Returns one dict per grid radius: ``radius``, ``accuracy`` (in [0, 1]), ``se`` (its binomial standard error,
    sqrt(a (1 - a) / N)) and ``n`` (N, the number of images).
    """
    radii = torch.as_tensor(radii).detach().cpu().double()
    correct = torch.as_tensor(correct).detach().cpu()
    if radii.dim() != 1 or radii.numel() == 0:
        raise InputError(f"radii must be a non-empty 1-D array [N], got shape {tuple(radii.shape)}")
    if correct.shape != radii.shape:
        raise InputError(f"correct must have the shape of radii {tuple(radii.shape)}, got {tuple(correct.shape)}")
    if correct.dtype != torch.bool:
        if correct.is_floating_point() or not bool(((correct == 0) | (correct == 1)).all()):
            raise InputError("correct must be booleans (prediction == label), not predictions or scores")
        correct = correct.bool()
    if not bool(torch.isfinite(radii).all()) or float(radii.min()) < 0:
        raise InputError("radii must be finite and >= 0 (certify gives 0.0 to an abstain)")
    grid = [float(r) for r in grid]
    if not grid or not all(math.isfinite(r) and r >= 0 for r in grid):
        raise InputError(f"grid must be a non-empty list of finite radii >= 0, got {grid}")
    n = radii.numel()
    rows = []
    for r in grid:
        acc = float((correct & (radii >= r)).double().mean())
        rows.append({"radius": r, "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / n), "n": n})
    return rows


# -- the smoothed classifier ---------------------------------------------------------------------
@contextlib.contextmanager
def _evaluating(base: torch.nn.Module):
    """Eval mode and no input range check for ``base`` (noisy images leave [0, 1]); both restored afterwards."""
    modes = [(m, m.training) for m in base.modules()]
    checked = [m for m in base.modules() if getattr(m, "check_inputs", False) is True]
    own = [("check_inputs" in vars(m)) for m in checked]
    base.eval()
    for m in checked:
        m.check_inputs = False
    try:
        yield base
    finally:
        for m, had in zip(checked, own):
            if had:
                m.check_inputs = True
            else:
                del m.check_inputs
        for m, training in modes:
            m.training = training


class SmoothedClassifier(torch.nn.Module):
    """The smoothed classifier g of a base classifier f under Gaussian noise N(0, sigma^2 I) (Cohen et al., 2019).

    Arguments:
        base: any module mapping images [B, C, H, W] (values in [0, 1]; noisy ones outside) to logits [B, K].
        sigma: the noise standard deviation, on the [0, 1] pixel scale (the paper: 0.12, 0.25, 0.5, 1.0).
        num_classes: K; read from ``base.num_classes`` if not given.

    The noise is drawn in the image space and not clamped (see the module docstring). The base is run in eval
    mode under ``torch.no_grad`` on its own device (that of its first parameter or buffer, else the images');
    its modes are restored afterwards. Counts, predictions and radii come back on the CPU. Every method takes
    ``generator``: a ``torch.Generator`` (the noise is drawn on its device, then moved), an int seed, or None
    (torch's global RNG). The same generator state and batch_size give the same noise and the same result.

    >>> from gclib import GenerativeClassifier
    >>> g = SmoothedClassifier(GenerativeClassifier.from_config("fashion-mnist-small", seed=0), sigma=0.25)
    >>> prediction, radius = g.certify(torch.rand(2, 1, 28, 28), n0=4, n=16, generator=0)  # the paper: 100, 100_000
    >>> prediction.shape, prediction.dtype, radius.dtype
    (torch.Size([2]), torch.int64, torch.float64)
    """

    ABSTAIN = ABSTAIN

    def __init__(self, base: torch.nn.Module, sigma: float, num_classes: int | None = None):
        super().__init__()
        if not callable(base):
            raise InputError(f"base must be a classifier module mapping images to logits, got {type(base).__name__}")
        self.base = base
        self.sigma = _check_sigma(sigma)
        if num_classes is None:
            num_classes = getattr(base, "num_classes", None)
            if num_classes is None:
                raise InputError(f"{type(base).__name__} has no attribute num_classes; pass num_classes= to "
                                 "SmoothedClassifier")
        if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
            raise InputError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = int(num_classes)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, num_classes={self.num_classes}"

    @property
    def device(self) -> torch.device | None:
        """The base's device (of its first parameter or buffer), or None for a base without any."""
        for t in (*self.base.parameters(), *self.base.buffers()):
            return t.device
        return None

    # -- sampling ---------------------------------------------------------------------------------
    @staticmethod
    def _generator(generator) -> torch.Generator | None:
        if generator is None or isinstance(generator, torch.Generator):
            return generator
        if isinstance(generator, Integral) and not isinstance(generator, bool):
            return torch.Generator().manual_seed(int(generator))
        raise InputError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")

    def counts(self, x: Tensor, n: int = 100_000, batch_size: int = 1000, generator=None) -> Tensor:
        """Votes of the base under noise: [B, K] int64, how often argmax f(x_i + eps) = c in ``n`` draws per image.

        The B * n noisy images are classified ``batch_size`` at a time (a batch may mix images).
        """
        x = check_batch(x, "images [B, C, H, W]", floating=True)
        if not bool(torch.isfinite(x).all()):
            raise InputError("the images contain NaN or inf values")
        n, batch_size = _check_count("n", n), check_batch_size(batch_size)
        generator = self._generator(generator)
        device = self.device if self.device is not None else x.device
        x = x.detach().to(device)
        b, k = x.shape[0], self.num_classes
        counts = torch.zeros(b * k, dtype=torch.long, device=device)
        total = b * n
        with torch.no_grad(), _evaluating(self.base):
            for start in range(0, total, batch_size):
                index = torch.arange(start, min(start + batch_size, total), device=device) // n  # image of each draw
                batch = x[index]
                if generator is None:
                    noise = torch.randn(batch.shape, dtype=batch.dtype, device=device)
                else:
                    noise = torch.randn(batch.shape, dtype=batch.dtype, device=generator.device, generator=generator)
                logits = self.base(batch + self.sigma * noise.to(device))
                if not isinstance(logits, Tensor) or logits.dim() != 2 or tuple(logits.shape) != (len(index), k):
                    got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                    raise InputError(f"the base classifier must return logits [batch, num_classes] = "
                                     f"[{len(index)}, {k}], got {got}; check num_classes")
                counts.index_add_(0, index * k + logits.argmax(1), torch.ones_like(index))
        return counts.view(b, k).cpu()

    # -- Cohen et al.'s PREDICT and CERTIFY -------------------------------------------------------
    def predict(self, x: Tensor, n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
                generator=None) -> Tensor:
        """PREDICT: g(x) per image, [B] int64, or :data:`ABSTAIN` (-1) where the top two classes are not told apart.

        Returns the top class of ``n`` votes when ``scipy.stats.binomtest(top, top + second, 0.5).pvalue <= alpha``
        (top and second: the two largest counts); then it equals g(x) with probability at least 1 - alpha.
        """
        from scipy import stats

        alpha = _check_alpha(alpha)
        counts = self.counts(x, n, batch_size, generator)
        top2 = counts.topk(2, dim=1)
        out = torch.full((counts.shape[0],), ABSTAIN, dtype=torch.long)
        for i, ((top, second), (cls, _)) in enumerate(zip(top2.values.tolist(), top2.indices.tolist())):
            if stats.binomtest(top, top + second, 0.5).pvalue <= alpha:
                out[i] = cls
        return out

    def certify(self, x: Tensor, n0: int = 100, n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
                generator=None) -> tuple[Tensor, Tensor]:
        """CERTIFY: (prediction [B] int64, radius [B] float64), the L2 radius around x within which g is constant.

        The class is guessed from ``n0`` votes and counted in ``n`` fresh ones; p_lower is
        :func:`clopper_pearson_lower` (count, n, alpha). If p_lower < 1/2 the image abstains (prediction
        :data:`ABSTAIN` = -1, radius 0.0); else the radius is sigma * Phi^-1(p_lower). With probability at least
        1 - alpha per image, g predicts that class everywhere in the ball. The radius is at most
        :func:`max_certifiable_radius` (n, alpha, sigma), whatever the base.
        """
        n0, n, alpha = _check_count("n0", n0), _check_count("n", n), _check_alpha(alpha)
        counts0 = self.counts(x, n0, batch_size, generator)
        return certificates(counts0, self.counts(x, n, batch_size, generator), n, alpha, self.sigma)

    def forward(self, x: Tensor) -> Tensor:
        """:meth:`predict` with its defaults (n = 100,000, alpha = 0.001): classes [B], -1 for abstain; not logits."""
        return self.predict(x)


# -- votes that can be recomputed one image at a time ----------------------------------------------
def seeded_votes(smoothed: SmoothedClassifier, x: Tensor, ids, n0: int = 100, n: int = 100_000, seed: int = 0,
                 batch_size: int = 1000, progress: bool = False) -> tuple[Tensor, Tensor]:
    """CERTIFY's two vote counts per image, ``(counts0 [B, K], counts [B, K])`` int64, with noise seeded per image.

    Image i's noise comes from a generator seeded by ``(seed, ids[i])`` (e.g. its index in the dataset), its
    n0 guessing votes first, then its n counting votes, classified ``batch_size`` at a time, one image per
    call: so one image's votes are the same whichever images are counted with it, and a shipped result can
    be checked by recounting a sample. :func:`certificates` turns the counts into CERTIFY's output.
    """
    from tqdm import tqdm

    ids = [int(i) for i in torch.as_tensor(ids).reshape(-1).tolist()]
    if len(ids) != len(x):
        raise InputError(f"ids must give one id per image: {len(ids)} ids for {len(x)} images")
    device = smoothed.device if smoothed.device is not None else x.device
    first, second = [], []
    for i, image_id in enumerate(tqdm(ids, desc=f"votes, sigma {smoothed.sigma:g}", disable=not progress)):
        g = torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + image_id)
        first.append(smoothed.counts(x[i:i + 1], n0, batch_size, g))
        second.append(smoothed.counts(x[i:i + 1], n, batch_size, g))
    return torch.cat(first), torch.cat(second)


def certificates(counts0: Tensor, counts: Tensor, n: int, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
    """CERTIFY from vote counts: ``(prediction [B], radius [B])`` as :meth:`SmoothedClassifier.certify` gives
    them (the class with most of the ``counts0`` votes; its count among the n ``counts`` votes; radius
    sigma * Phi^-1(p_lower), or :data:`ABSTAIN` and 0.0 where p_lower < 1/2)."""
    from scipy import stats

    n, alpha, sigma = _check_count("n", n), _check_alpha(alpha), _check_sigma(sigma)
    counts0, counts = torch.as_tensor(counts0), torch.as_tensor(counts)
    if counts0.shape != counts.shape or counts.dim() != 2:
        raise InputError(f"counts0 and counts must both be [B, K], got {tuple(counts0.shape)} and {tuple(counts.shape)}")
    guess = counts0.argmax(1)
    votes = counts.gather(1, guess[:, None])[:, 0]
    prediction = torch.full_like(guess, ABSTAIN)
    radius = torch.zeros(guess.shape[0], dtype=torch.float64)
    for i, (cls, k) in enumerate(zip(guess.tolist(), votes.tolist())):
        p_lower = clopper_pearson_lower(k, n, alpha)
        if p_lower >= 0.5:
            prediction[i] = cls
            radius[i] = sigma * float(stats.norm.ppf(p_lower))
    return prediction, radius
