"""The diffusion classifier's rule: shared noise, the right answer on a denoiser with a known optimum, pruning."""

import math

import pytest
import torch

from gclib.classifier import CapabilityError, check_classifier
from gclib.diffusion import DiffusionClassifier, NoiseBank, TinyUNet, VPSchedule, classify, denoising_errors

SCHEDULE = VPSchedule()


class PointMassDenoiser(torch.nn.Module):
    """The optimal eps-predictor when class y's data is the single image means[y]: eps = (x_t - a mu_y) / s."""

    def __init__(self, means):
        super().__init__()
        self.register_buffer("means", means)
        self.calls = []

    def forward(self, xt, t, y):
        self.calls.append((xt.clone(), t.clone(), y.clone()))
        a = SCHEDULE.abar(t).sqrt().view(-1, 1, 1, 1)
        return (xt - a * self.means[y]) / SCHEDULE.sigma(t).view(-1, 1, 1, 1)


def _means(c=4, shape=(1, 4, 4), seed=0):
    return torch.rand((c, *shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_schedule_is_ddpm_linear_on_its_grid_and_variance_preserving():
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    abar = SCHEDULE.abar(t)
    beta_discrete = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    assert abs(float(beta_discrete[0]) - 1e-4) < 2e-5 and abs(float(beta_discrete[-1]) - 0.02) < 1e-3
    torch.testing.assert_close(abar + SCHEDULE.sigma(t) ** 2, torch.ones_like(t))


def test_noise_bank_is_stratified_seeded_and_prefixes_spread_out():
    bank = NoiseBank.make(16, (1, 4, 4), seed=3)
    assert sorted(bank.t.tolist()) == pytest.approx(sorted(((torch.arange(16) + 0.5) / 16 * 0.999 + 1e-3).tolist()))
    assert torch.equal(bank.eps, NoiseBank.make(16, (1, 4, 4), seed=3).eps)
    first4 = bank.prefix(4).t
    assert float(first4.min()) < 0.25 and float(first4.max()) > 0.5  # a prefix covers the range


def test_the_same_noise_is_used_for_every_class():
    means = _means()
    model = PointMassDenoiser(means)
    x = means[:2].clone()
    bank = NoiseBank.make(5, (1, 4, 4))
    denoising_errors(model, x, torch.arange(4).repeat(2, 1), bank, SCHEDULE)
    xt, t, y = (torch.cat(v) for v in zip(*model.calls))
    xt = xt.view(2, 4, 5, -1)
    for c in range(1, 4):  # every class sees exactly the same x_t for an image and pair
        assert torch.equal(xt[:, c], xt[:, 0])
    assert torch.equal(y.view(2, 4, 5)[0, :, 0], torch.arange(4))


def test_classification_rule_finds_the_class_of_a_known_optimum():
    means = _means()
    clf = DiffusionClassifier(PointMassDenoiser(means), 4, (1, 4, 4), n_pairs=20)
    x = (means + 1) / 2  # the class means as [0, 1] images
    scores = clf.class_scores(x)
    assert torch.equal(scores.argmax(1), torch.arange(4))
    # For the true class the optimal denoiser's error is exactly 0.
    torch.testing.assert_close(scores.diagonal(), torch.zeros(4), atol=1e-5, rtol=0)
    assert torch.equal(clf.predict(x), torch.arange(4))
    assert torch.equal(clf.predict(x, stages=((20, 1),)), torch.arange(4))
    torch.testing.assert_close(clf(x).exp().sum(1), torch.ones(4))


def test_pruning_never_drops_the_true_best_class_and_saves_evaluations():
    # errors_fn gives class c the error |c - best| + noise/(pairs): the best class wins at every stage.
    best = torch.tensor([3, 7, 0])
    g = torch.Generator().manual_seed(0)
    offsets = torch.rand(3, 10, generator=g) * 0.4

    def errors_fn(classes, n_pairs):
        return (classes - best[:, None]).abs().float() + offsets.gather(1, classes) / n_pairs

    pred, evals, _ = classify(errors_fn, 3, 10, stages=((4, 5), (16, 2), (64, 1)))
    assert torch.equal(pred, best)
    full_pred, full_evals, _ = classify(errors_fn, 3, 10, stages=((64, 1),))
    assert torch.equal(full_pred, best)
    assert torch.equal(full_evals, torch.full((3,), 640))
    assert torch.equal(evals, torch.full((3,), 10 * 4 + 5 * 12 + 2 * 48))  # prefixes reused
    assert (evals < 0.35 * full_evals).all()  # 196 of 640


def test_interface_and_errors():
    clf = DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 28, 28), n_pairs=4)
    check_classifier(clf)
    assert clf.score_kind == "surrogate" and clf.evaluations_per_image == 12
    x = torch.rand(2, 1, 28, 28)
    assert clf.class_scores(x).shape == (2, 3) and clf(x).shape == (2, 3)
    with pytest.raises(CapabilityError):
        clf.log_px(x)
    with pytest.raises(Exception, match=r"\[0, 1\]"):
        clf.class_scores(x + 2)
    assert DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 28, 28), weighting="elbo").score_kind == "bound"
    elbo = DiffusionClassifier(PointMassDenoiser(_means()), 4, (1, 4, 4), n_pairs=8, weighting="elbo")
    assert math.isfinite(float(elbo.class_scores(torch.rand(2, 1, 4, 4)).sum()))
