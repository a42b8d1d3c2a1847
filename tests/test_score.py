"""The score-based classifier: the ODE likelihood is the exact density of a Gaussian, Hutchinson's trace."""

import math

import pytest
import torch

import gclib
from gclib.classifier import check_classifier
from gclib.diffusion import TinyUNet, VPSchedule
from gclib.score import ScoreClassifier, exact_divergence, hutchinson_divergence, probability_flow_log_likelihood

SCHEDULE = VPSchedule()


def gaussian_eps(mean, std):
    """The exact noise predictor of data N(mean, std^2 I) under the VP-SDE (its score in closed form)."""

    def eps(xt, t):
        shape = (-1,) + (1,) * (xt.dim() - 1)
        a, s2 = SCHEDULE.abar(t).view(shape), SCHEDULE.sigma(t).view(shape) ** 2
        var = a * std**2 + s2
        return SCHEDULE.sigma(t).view(shape) * (xt - a.sqrt() * mean) / var

    return eps


@pytest.mark.parametrize("probes", [None, "hutchinson"])
def test_ode_log_likelihood_is_the_exact_log_density_of_a_gaussian(probes):
    torch.manual_seed(0)
    d, mean, std = 6, 0.3, 0.5
    x = mean + std * torch.randn(4, d, dtype=torch.float64)
    exact = torch.distributions.Normal(mean, std).log_prob(x).sum(1)
    z = None
    if probes:
        # Many Rademacher probes: for this isotropic field the estimator is exact (J is a multiple of I).
        z = (torch.randint(0, 2, (4, d), generator=torch.Generator().manual_seed(1)) * 2 - 1).double()
    one = torch.ones((), dtype=torch.float64)
    a1 = SCHEDULE.abar(one)
    marginal = torch.distributions.Normal(a1.sqrt() * mean, (a1 * std**2 + 1 - a1).sqrt())
    got = probability_flow_log_likelihood(gaussian_eps(mean, std), x, SCHEDULE, steps=50, probes=z,
                                          prior=lambda x1: marginal.log_prob(x1).sum(1))
    torch.testing.assert_close(got, exact, atol=1e-4, rtol=0)
    # With the usual N(0, I) prior: the VP-SDE's small bias at t = 1 (abar(1) = 4.3e-5), < 0.02 nats here.
    plain = probability_flow_log_likelihood(gaussian_eps(mean, std), x, SCHEDULE, steps=50, probes=z)
    assert (plain - exact).abs().max() < 0.02


def test_hutchinson_estimator_against_the_exact_trace_on_a_small_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5)).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    _, exact = exact_divergence(net, x)
    jac = torch.stack([torch.autograd.functional.jacobian(net, x[i]) for i in range(3)])
    torch.testing.assert_close(exact, jac.diagonal(dim1=1, dim2=2).sum(1))
    probes = (torch.randint(0, 2, (4000, 3, 5), generator=torch.Generator().manual_seed(0)) * 2 - 1).double()
    _, estimate = hutchinson_divergence(net, x, probes)
    # Rademacher variance = 2 * sum of squared off-diagonal entries; 4 standard errors.
    off = jac - torch.diag_embed(jac.diagonal(dim1=1, dim2=2))
    se = (2 * off.square().sum((1, 2)) / 4000).sqrt()
    assert ((estimate - exact).abs() <= 4 * se + 1e-9).all()


def test_score_classifier_interface_and_shared_probes():
    clf = ScoreClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 28, 28), steps=2, n_probes=1)
    check_classifier(clf)
    assert clf.score_kind == clf.density_kind == "estimate"
    x = torch.rand(2, 1, 28, 28)
    scores = clf.class_scores(x)
    assert scores.shape == (2, 3) and torch.isfinite(scores).all()
    # The untrained net predicts eps = 0 (zero-initialised output): every class gets the same likelihood.
    torch.testing.assert_close(scores[:, 0], scores[:, 1])
    torch.testing.assert_close(clf.log_px(x), torch.logsumexp(scores - math.log(3), 1))


def test_score_classifier_reads_a_diffusion_classifiers_network():
    from gclib.diffusion import DiffusionClassifier

    schedule = VPSchedule(beta_max=10.0)
    dc = DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 8, 8), n_pairs=2, elbo_pairs=2,
                             schedule=schedule).eval()
    clf = ScoreClassifier.from_diffusion(dc, steps=2, n_probes=2, seed=1)
    check_classifier(clf)
    assert clf.denoiser is dc.denoiser and clf.schedule is schedule and clf.input_shape == (1, 8, 8)
    assert len(clf.probes) == 2 and not clf.training
    with pytest.raises(gclib.InputError, match="DiffusionClassifier"):
        ScoreClassifier.from_diffusion(TinyUNet(1, 3, width=8, emb=16))
