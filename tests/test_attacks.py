"""gclib.attacks: budgets and ranges kept, FGSM by hand, PGD's loss rising, success counted on correct images."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import gclib
from gclib import attacks
from gclib.errors import InputError

from .conftest import randomize, tiny_config

TOL = 1e-5  # float tolerance on the budgets


class Linear(nn.Module):
    """A linear classifier on flattened images: logits = W x + b (its cross-entropy is convex in x)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(torch.zeros(len(weight)) if bias is None else bias.clone())

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


def seeded_linear(n_classes: int = 3, dims: int = 16, seed: int = 0) -> Linear:
    g = torch.Generator().manual_seed(seed)
    return Linear(torch.randn(n_classes, dims, generator=g), torch.randn(n_classes, generator=g))


def tiny_gc(seed: int = 0):
    torch.manual_seed(seed)
    return randomize(gclib.GenerativeClassifier(tiny_config()), scale=0.3, seed=seed).eval()


def images(n: int = 32, seed: int = 0) -> torch.Tensor:
    """[n, 1, 4, 4] in [0, 1] with a third of the pixels exactly 0 or 1, so clamping is exercised."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    edge = torch.rand(n, 1, 4, 4, generator=g)
    x[edge < 0.15] = 0.0
    x[edge > 0.85] = 1.0
    return x


def labels(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("model_fn", [seeded_linear, tiny_gc], ids=["linear", "tiny-gc"])
@pytest.mark.parametrize("attack,norm", [("fgsm", "inf"), ("pgd", "inf"), ("pgd", "2")])
@pytest.mark.parametrize("eps", [0.02, 0.3, 2.0])
def test_attacks_never_exceed_eps_and_keep_the_unit_range(model_fn, attack, norm, eps):
    model, x, y = model_fn(), images(), labels()
    if attack == "fgsm":
        x_adv = attacks.fgsm(model, x, y, eps)
    else:
        x_adv = attacks.pgd(model, x, y, eps, norm, steps=3, step_size=eps, early_stop=False).x_adv
    assert float(attacks.perturbation_norm(x_adv, x, norm).max()) <= eps + TOL
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert not torch.equal(x_adv, x)  # it did move


@pytest.mark.parametrize("norm", attacks.NORMS)
def test_eps_zero_returns_the_input(norm):
    model, x, y = tiny_gc(), images(), labels()
    assert torch.equal(attacks.fgsm(model, x, y, 0.0), x)
    result = attacks.pgd(model, x, y, 0.0, norm, steps=4, random_start=True)
    assert torch.equal(result.x_adv, x)
    assert (result.steps_run == 0).all()
    curve = attacks.success_curve(model, x, y, [0.0, 0.1], "pgd", norm, steps=3)
    assert torch.equal(curve.x_adv[0], x) and not curve.fooled[0].any() and curve.rate(0)[0] == 0.0


def test_fgsm_moves_a_linear_model_by_exactly_eps_times_the_gradient_sign():
    # Two classes, logits w_k . x: for true class 0 the cross-entropy's gradient is p1 (w1 - w0),
    # so FGSM moves every pixel by eps * sign(w1 - w0), worked out here by hand.
    w0 = torch.tensor([1.0, -2.0, 0.5, 3.0])
    w1 = torch.tensor([-1.0, 1.0, 2.0, 1.0])  # w1 - w0 = [-2, 3, 1.5, -2]: signs -, +, +, -
    model = Linear(torch.stack([w0, w1]))
    x = torch.full((1, 1, 2, 2), 0.5)
    eps = 0.1
    x_adv = attacks.fgsm(model, x, torch.tensor([0], dtype=torch.int32), eps)  # any integer labels
    expected = torch.tensor([-1.0, 1.0, 1.0, -1.0]).view(1, 1, 2, 2) * eps
    torch.testing.assert_close(x_adv - x, expected, rtol=0, atol=1e-7)
    # at the border of [0, 1] the step is clamped, never reflected
    x_edge = torch.tensor([0.0, 1.0, 0.95, 0.02]).view(1, 1, 2, 2)
    out = attacks.fgsm(model, x_edge, torch.tensor([0]), eps)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 1.0, 1.0, 0.0]), rtol=0, atol=1e-7)


def test_pgd_linf_loss_never_decreases_on_a_linear_model():
    # Cross-entropy of a linear model is convex in x, so a step whose every coordinate moves along the
    # gradient's sign (clamping to the box only shortens it) cannot lower the loss: per image, exactly.
    model, x, y = seeded_linear(), images(), labels()
    result = attacks.pgd(model, x, y, 0.3, "inf", steps=12, seed=3, early_stop=False)
    assert result.losses.shape == (13, len(x))
    assert (result.losses.diff(dim=0) >= -1e-6).all()
    assert (result.losses[-1] - result.losses[0]).mean() > 0.1


@pytest.mark.parametrize("norm", attacks.NORMS)
def test_pgd_loss_does_not_decrease_across_steps_on_a_seeded_gc(norm):
    model, x, y = tiny_gc(seed=1), images(64, seed=1), labels(64, seed=1)
    eps = 0.05 if norm == "inf" else 0.2
    result = attacks.pgd(model, x, y, eps, norm, steps=10, seed=0, early_stop=False)
    mean = result.losses.mean(1)
    assert (mean.diff() >= -1e-6).all(), mean.tolist()
    assert mean[-1] > mean[0] + 0.05
    # and every image ends at least as high as it started
    assert (result.losses[-1] >= result.losses[0] - 1e-6).all()


def test_pgd_is_deterministic_given_the_seed():
    model, x, y = tiny_gc(), images(), labels()
    a = attacks.pgd(model, x, y, 0.1, "inf", steps=3, seed=7)
    b = attacks.pgd(model, x, y, 0.1, "inf", steps=3, seed=7)
    c = attacks.pgd(model, x, y, 0.1, "inf", steps=3, seed=8)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.losses, b.losses)
    assert not torch.equal(a.x_adv, c.x_adv)  # the random start depends on the seed


def test_pgd_is_untargeted_and_stops_once_an_image_is_fooled():
    # Class 0 against two rivals: image A lies near class 1, image B near class 2. The untargeted attack
    # takes each to its own nearest rival; nothing asks for a particular wrong class.
    model = Linear(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.35, 0.0, 0.0]))
    x = torch.tensor([[0.3, 0.0], [0.0, 0.3]]).view(2, 1, 1, 2)
    y = torch.tensor([0, 0])
    assert (model(x).argmax(1) == 0).all()
    result = attacks.pgd(model, x, y, 0.2, "inf", steps=10, random_start=False)
    assert model(result.x_adv).argmax(1).tolist() == [1, 2]
    assert result.done.all() and (result.steps_run < 10).all()  # early stop: fooled before the last step
    assert (result.losses[-1] == result.losses[result.steps_run.max()]).all()  # frozen once fooled


def test_success_rate_counts_only_images_classified_correctly_before():
    rate, n, se = attacks.success_rate([True, True, True, False], [True, False, False, True])
    assert (rate, n) == (1 / 3, 3)  # the image that was wrong already is neither success nor failure
    assert se == pytest.approx(math.sqrt(1 / 3 * 2 / 3 / 3))
    with pytest.raises(InputError, match="no image was classified correctly"):
        attacks.success_rate([False, False], [True, True])


def test_success_curve_attacks_only_correct_images():
    model, x, y = seeded_linear(), images(64, seed=2), labels(64, seed=2)
    correct = model(x).argmax(1) == y
    assert 0 < correct.sum() < len(y)  # some images are wrong before any attack
    for attack in ("fgsm", "pgd"):
        curve = attacks.success_curve(model, x, y, [0.0, 0.05, 0.2, 1.0], attack, "inf", steps=5)
        assert torch.equal(curve.correct, correct)
        assert not curve.fooled[:, ~correct].any() and not curve.attacked[:, ~correct].any()
        for e in range(4):
            rate, n, _ = curve.rate(e)
            assert n == int(correct.sum())
            assert rate == pytest.approx(float(curve.fooled[e].sum()) / n)
        assert curve.rate(0)[0] == 0.0 and curve.rate(3)[0] > 0.5


def test_monotone_curve_skips_images_that_survived_a_larger_eps():
    model, x, y = tiny_gc(), images(48), labels(48)
    eps = [0.0, 0.01, 0.03, 0.1]
    mono = attacks.success_curve(model, x, y, eps, "pgd", "inf", steps=3, monotone=True)
    full = attacks.success_curve(model, x, y, eps, "pgd", "inf", steps=3, monotone=False)
    assert torch.equal(full.attacked[1:], full.correct.expand(3, -1))
    for e in (1, 2):  # attacked at eps[e] only if fooled at eps[e + 1]
        assert torch.equal(mono.attacked[e], mono.fooled[e + 1])
    rates = [mono.rate(e)[0] for e in range(4)]
    assert rates == sorted(rates)
    # where both attacked an image at the same eps (same seed, same start), they agree
    both = mono.attacked & full.attacked
    assert torch.equal(mono.fooled[both], full.fooled[both])


def test_typical_objective_is_cross_entropy_inside_the_band_and_penalised_outside():
    gc, x, y = tiny_gc(), images(8), labels(8)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(gc(x), y, reduction="none")
        bpd = gc.bits_per_dim(x, "none")  # the attack reads the density at the attacked point itself
        loss, done = attacks.typical_objective(gc, float(bpd.mean()), weight=5.0, tolerance=1e6)(x, y)
        torch.testing.assert_close(loss, ce)
        assert torch.equal(done, gc(x).argmax(1) != y)
        ref = float(bpd.mean()) + 3.0
        loss, done = attacks.typical_objective(gc, ref, weight=5.0, tolerance=0.5)(x, y)
    torch.testing.assert_close(loss, ce - 5.0 * ((bpd - ref).abs() - 0.5).clamp_min(0))
    assert not (done & ((bpd - ref).abs() > 0.5)).any()


def test_adaptive_attack_keeps_what_works_and_never_ranks_lower_at_a_larger_budget():
    gc, x, y = tiny_gc(), images(24), labels(24)
    with torch.no_grad():
        bpd = gc.bits_per_dim(x, "none")
    objective = attacks.typical_objective(gc, float(bpd.mean()), weight=5.0, tolerance=float(bpd.std()))

    @torch.no_grad()
    def rank(x_adv):
        _, works = objective(x_adv, y)
        return 2 * works.long() + ((gc.predict(x_adv) != y) & ~works).long()

    eps = [0.1, 0.02, 0.05]  # any order; the result follows it
    out = attacks.adaptive_attack(gc, x, y, eps, objective, steps=3, seed=0)
    assert len(out) == 3 and all(o.shape == x.shape for o in out)
    for e, x_adv in zip(eps, out):
        assert float((x_adv - x).abs().max()) <= e + TOL and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    small, middle, large = out[1], out[2], out[0]
    assert (rank(middle) >= rank(small)).all() and (rank(large) >= rank(middle)).all()
    done = rank(small) == 2  # kept as they are at the larger budgets
    assert torch.equal(middle[done], small[done]) and torch.equal(large[done], small[done])
    # the smallest budget alone is plain PGD with the objective from the clean image, where it ranks higher
    new = attacks.pgd(gc, x, y, 0.02, "inf", steps=3, seed=0, objective=objective, random_start=False).x_adv
    better = rank(new) > rank(x)
    assert torch.equal(small[better], new[better]) and torch.equal(small[~better], x[~better])
    assert rank(small).sum() > 0


def test_detection_row_by_hand():
    ref = np.linspace(1.0, 3.0, 101)  # mean 2; the 95 % quantile of the bits/dim is 2.9
    correct = torch.tensor([True, True, True, True, False])
    fooled = torch.tensor([True, True, True, False, False])
    clean = np.array([2.0, 2.1, 1.9, 2.0, 2.2])
    far = np.array([9.0, 9.5, 2.0, 2.0, 2.0])  # two adversarials far out, one typical
    row = attacks.detection_row(correct, fooled, clean, far, ref)
    assert (row["n"], row["n_fooled"], row["success_pct"]) == (4, 3, 75.0)
    assert row["evade_logpx"] == 25.0 and row["evade_typicality"] == 25.0  # the typical one gets through
    assert 50 < row["auroc_logpx"] < 100 and row["auroc_se_logpx"] > 0
    row = attacks.detection_row(correct, torch.tensor([True, False, False, False, False]), clean, far, ref)
    assert row["auroc_logpx"] is None and row["evade_logpx"] == 0.0  # one adversarial: no AUROC


@pytest.mark.parametrize("call,match", [
    (lambda m, x, y: attacks.pgd(m, x[0], y, 0.1), r"\[N, C, H, W\]"),
    (lambda m, x, y: attacks.pgd(m, x * 2, y, 0.1), r"\[0, 1\]"),
    (lambda m, x, y: attacks.pgd(m, x.masked_fill(x > 0.5, float("nan")), y, 0.1), "NaN"),
    (lambda m, x, y: attacks.pgd(m, x, y[:-1], 0.1), "labels"),
    (lambda m, x, y: attacks.pgd(m, x, y.float(), 0.1), "integer labels"),
    (lambda m, x, y: attacks.pgd(m, x, y, -0.1), "eps"),
    (lambda m, x, y: attacks.pgd(m, x, y, float("inf")), "eps"),
    (lambda m, x, y: attacks.pgd(m, x, y, 0.1, norm="1"), "unknown norm"),
    (lambda m, x, y: attacks.pgd(m, x, y, 0.1, steps=0), "steps"),
    (lambda m, x, y: attacks.pgd(m, x, y, 0.1, step_size=0.0), "step_size"),
    (lambda m, x, y: attacks.fgsm(m, x, y, -1.0), "eps"),
    (lambda m, x, y: attacks.success_curve(m, x, y, [0.1], "fgsm", norm="2"), "L-inf"),
    (lambda m, x, y: attacks.success_curve(m, x, y, [0.1], "cw"), "unknown attack"),
    (lambda m, x, y: attacks.success_curve(m, x, y, []), "empty"),
    (lambda m, x, y: attacks.adaptive_attack(m, x, y, [], attacks.cross_entropy_objective(m)), "empty"),
    (lambda m, x, y: attacks.typical_objective(m, 2.0, weight=-1.0, tolerance=0.1), "weight"),
])
def test_bad_input_raises_input_error(call, match):
    with pytest.raises(InputError, match=match):
        call(tiny_gc(), images(4), labels(4))
