"""The score-based classifier: the ODE likelihood is the exact density of a Gaussian, Hutchinson's trace."""

import copy
import math
import re

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


class GaussianClassDenoiser(torch.nn.Module):
    """The exact noise predictor of class-conditional data N(mu_y, std^2 I) (on the [-1, 1] scale)."""

    def __init__(self, means, std):
        super().__init__()
        self.register_buffer("means", torch.as_tensor(means, dtype=torch.float64))
        self.std = std

    def forward(self, xt, t, y):
        shape = (-1,) + (1,) * (xt.dim() - 1)
        a, s = SCHEDULE.abar(t).view(shape), SCHEDULE.sigma(t).view(shape)
        mean = self.means[y].view(shape)
        return s * (xt - a.sqrt() * mean) / (a * self.std**2 + s**2)


@pytest.mark.parametrize("grid", ["log-snr", "uniform"])
def test_score_classifier_class_scores_are_the_exact_class_conditional_log_densities(grid):
    # Three classes N(mu_y, 0.3^2 I) on a 1x2x2 "image" in [-1, 1]; the classifier's scores are log p(x | y) of
    # the [0, 1] image = log N(2x - 1; mu_y, 0.3^2 I) + D log 2, up to the VP prior's bias at t = 1 (the N(0, I)
    # prior is not exactly the marginal there: up to 0.05 nats here, growing with the distance from mu_y).
    std, means = 0.3, [-0.4, 0.0, 0.5]
    clf = ScoreClassifier(GaussianClassDenoiser(means, std), 3, (1, 2, 2), steps=40, n_probes=0, t_min=1e-5,
                          grid=grid).double()
    x = torch.tensor([0.3, 0.5, 0.75, 0.2], dtype=torch.float64).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    x[:, 0, 0, 1] += 0.05
    exact = torch.stack([torch.distributions.Normal(m, std).log_prob(2 * x - 1).flatten(1).sum(1) for m in means], 1)
    exact = exact + 4 * math.log(2.0)
    got = clf.class_scores(x)
    assert (got - exact).abs().max() < 0.06
    assert torch.equal(got.argmax(1), exact.argmax(1))
    assert clf.score_kind == "exact"


def test_time_grids_and_bad_settings():
    from gclib.score import time_grid

    for grid in ("log-snr", "uniform"):
        t = time_grid(SCHEDULE, 8, 1e-3, grid)
        assert len(t) == 9 and t[0] == 1e-3 and t[-1] == 1.0 and (t.diff() > 0).all()
    lam = SCHEDULE.log_snr(time_grid(SCHEDULE, 8, 1e-3, "log-snr"))
    torch.testing.assert_close(lam.diff(), torch.full((8,), float(lam.diff().mean()), dtype=torch.float64))
    with pytest.raises(gclib.InputError, match="grid must be"):
        ScoreClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 28, 28), grid="cosine")
    with pytest.raises(gclib.InputError, match="t_min"):
        time_grid(SCHEDULE, 8, 0.0)
    with pytest.raises(gclib.InputError, match="steps"):
        time_grid(SCHEDULE, 0, 1e-3)


def _publish_tiny_diffusion(tmp_path, fashion):
    """A tiny diffusion classifier trained for a moment and published as "tiny-diffusion" under
    ``tmp_path / "ckpt"``, evaluated on 30 test images: ``(root, those images)``."""
    from gclib import zoo
    from gclib.diffusion import DiffusionClassifier, fit

    train, _, test = fashion
    torch.manual_seed(0)
    model = DiffusionClassifier(TinyUNet(1, 10, width=8, emb=8), 10, (1, 28, 28), n_pairs=4,
                                stages=((2, 3), (4, 1)), elbo_pairs=4)
    fit(model, train.subset(64, 0), None, epochs=1, batch_size=32, out=tmp_path / "run", progress=False)
    root = tmp_path / "ckpt"
    small = test.subset(30, seed=3)
    zoo.publish(tmp_path / "run", "tiny-diffusion", root=root, test=small)
    return root, small


def test_score_artifact_publish_verify_rows_and_worker_count(tmp_path, fashion, monkeypatch):
    """zoo evaluate --what score on a tiny published diffusion model: chunks computed in one thread each, so
    two worker processes write the same scores as one; verify recomputes an image and catches tampering;
    the reading gets a table_models row and a name in get_model."""
    import json

    from gclib import evals, zoo
    from gclib.errors import ConfigError

    root, small = _publish_tiny_diffusion(tmp_path, fashion)
    monkeypatch.setattr(zoo, "SCORE_BATCH", 2)
    monkeypatch.setattr(zoo, "SCORE_READINGS", {"tiny-score": "tiny-diffusion"})
    shipped = zoo.get_model("tiny-diffusion", root=root)
    record, one = zoo.evaluate_score(shipped, small, n=3, progress=False, partial=tmp_path / "partial")
    kept = sorted(p.name for p in (tmp_path / "partial").iterdir())
    assert [re.fullmatch(r"chunk-(\d{6})-[0-9a-f]{16}\.safetensors", k)[1] for k in kept] == ["000000", "000002"]
    other = copy.deepcopy(shipped)  # another model's chunks in the same folder are computed, not reused
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    other_record, _ = zoo.evaluate_score(other, small, n=3, progress=False, partial=tmp_path / "partial")
    assert other_record["seconds_per_image"] is not None and len(list((tmp_path / "partial").iterdir())) == 4
    _, two = zoo.evaluate_score(shipped, small, n=3, jobs=2, source=root / "fashion-mnist" / "tiny-diffusion",
                                progress=False)
    assert torch.equal(one["scores"], two["scores"]) and one["scores"].shape == (3, 2, 10)
    assert record["settings"] == zoo.score_reading(shipped).settings() and record["n"] == 3
    assert record["evaluations_per_image"] == 10 * 4 * 20 * 3
    torch.testing.assert_close(one["predictions"], one["scores"].mean(1).argmax(1))
    with pytest.raises(ConfigError, match="needs source"):
        zoo.evaluate_score(shipped, small, n=3, jobs=2)
    path = zoo.evaluate_shipped("tiny-diffusion", "score", root=root, test=small, n=3, progress=False,
                                partial=tmp_path / "partial")  # every chunk found again: nothing recomputed
    art = json.loads(path.read_text())
    assert art["info"]["seconds_per_image"] is None and art["model_sha256"] == shipped.manifest["sha256"]
    result = zoo.verify("tiny-diffusion", root=root, test=small)
    assert zoo._mismatches(result) == [], result
    rows = zoo.model_rows(root=root)
    score_row = next(r for r in zoo.table_rows(rows) if r["model"].startswith("GC (score-based"))
    assert score_row["n_test"] == 3 and score_row["bits_per_dim_kind"].startswith("exact up to the estimator")
    assert isinstance(zoo.get_model("tiny-score", root=root), ScoreClassifier)
    t, manifest = evals.load(evals.path_of("tiny-diffusion", "score", root=root))
    t["scores"][:, :, 0] += 0.1  # tampered scores: the recomputed image no longer matches
    evals.save(evals.path_of("tiny-diffusion", "score", root=root), t, model_sha256=manifest["model_sha256"],
               inputs=manifest["inputs"], **manifest["info"])
    assert zoo._mismatches(zoo.verify("tiny-diffusion", root=root, test=small))
    with pytest.raises(ConfigError, match="diffusion model's network"):
        zoo.evaluate_shipped("gc-beta-8", "score", n=1)


def test_the_shipped_reading_loads_by_name():
    from gclib import zoo

    reading = gclib.get_model("score-unet32", device="cpu")
    network = gclib.get_model("diffusion-unet32", device="cpu")
    assert isinstance(reading, ScoreClassifier) and not reading.training
    assert reading.manifest["sha256"] == network.manifest["sha256"]
    assert reading.settings()["steps"] == zoo.SCORE_READING["steps"] and len(reading.probes) == 2
    assert reading.evaluations_per_image == 10 * 20 * 4 * 3
    with pytest.raises(gclib.CheckpointError, match="score-unet64"):
        gclib.get_model("score-unet64")


def test_mixture_bits_per_dim_and_small_elbo_bank():
    import math

    from gclib.diffusion import DiffusionClassifier
    from gclib.model import nats_to_bits_per_dim
    from gclib.score import mixture_bits_per_dim

    ll = torch.tensor([[-1000.0, -1010.0, -990.0]], dtype=torch.float64)
    want = nats_to_bits_per_dim(torch.logsumexp(ll, 1) - math.log(3), 784)
    torch.testing.assert_close(mixture_bits_per_dim(ll, 784), want)
    probes = torch.stack([ll - 4, ll + 4], 1)  # [B, P, C]: the mean over probes first
    torch.testing.assert_close(mixture_bits_per_dim(probes, 784), want)
    with pytest.raises(gclib.InputError, match=r"\[B, C\] or \[B, P, C\]"):
        mixture_bits_per_dim(ll[0], 784)

    torch.manual_seed(0)
    model = DiffusionClassifier(TinyUNet(1, 3, width=8, emb=8), 3, (1, 28, 28), n_pairs=4, elbo_pairs=6).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        full, full_se = model.elbo(x)
        same, same_se = model.elbo(x, pairs=6)  # the same seed and size: the model's own bank
        small, small_se = model.elbo(x, pairs=2)
    torch.testing.assert_close(same, full)
    torch.testing.assert_close(same_se, full_se)
    assert small.shape == (2, 3) and not torch.equal(small, full) and torch.isfinite(small).all()
    with pytest.raises(gclib.InputError, match="pairs must be"):
        model.elbo(x, pairs=0)


def test_diffusion_ood_artifact_resumes_is_worker_independent_and_verified(tmp_path, fashion, monkeypatch):
    """zoo evaluate --what diffusion-ood on a tiny published diffusion model: every OoD set and the score
    artifact's test images, chunks resumed from --partial, two workers write what one does, verify recomputes
    a test and an OoD image and catches tampering, a non-diffusion model is refused."""
    import json

    from gclib import evals, zoo
    from gclib.errors import ConfigError
    from gclib.score import mixture_bits_per_dim

    root, small = _publish_tiny_diffusion(tmp_path, fashion)
    for name, value in (("SCORE_BATCH", 2), ("SCORE_N", 3), ("OOD_ELBO_PAIRS", 3)):
        monkeypatch.setattr(zoo, name, value)
    shipped = zoo.get_model("tiny-diffusion", root=root)
    record, one = zoo.evaluate_diffusion_ood(shipped, small, n=2, progress=False, partial=tmp_path / "partial")
    sets = gclib.data.ood_names()
    assert record["sets"] == sets and record["n"] == 3 and record["images_computed"] == 3 + 2 * len(sets)
    assert one["elbo"].shape == (3, 10) and one["digits.ode"].shape == (2, 2, 10)
    assert one["constant.scores"].shape == (2, 10) and torch.equal(one["indices"], zoo._test_index(30, 3))
    assert math.isclose(record["mean_bits_per_dim"]["photos"]["ode_bits_per_dim"],
                        float(mixture_bits_per_dim(one["photos.ode"], 784).mean()))
    _, two = zoo.evaluate_diffusion_ood(shipped, small, n=2, jobs=2, progress=False,
                                        source=root / "fashion-mnist" / "tiny-diffusion")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    path = zoo.evaluate_shipped("tiny-diffusion", "diffusion-ood", root=root, test=small, n=2, progress=False,
                                partial=tmp_path / "partial")  # every chunk found again: nothing recomputed
    assert json.loads(path.read_text())["info"]["images_computed"] == 0
    monkeypatch.setattr(zoo, "CORRUPT_N", 2)  # the corruption artifact of a diffusion model is verified too
    zoo.evaluate_shipped("tiny-diffusion", "corrupt", root=root, test=small, progress=False)
    assert zoo._mismatches(zoo.verify("tiny-diffusion", root=root, test=small)) == []
    c, c_manifest = evals.load(evals.path_of("tiny-diffusion", "corrupt", root=root))
    c["logits"] = c["logits"] * 1.01 - 0.01  # 1 %: beyond the check's rtol whatever the logits' size
    evals.save(evals.path_of("tiny-diffusion", "corrupt", root=root), c, model_sha256=c_manifest["model_sha256"],
               inputs=c_manifest["inputs"], **c_manifest["info"])
    assert any(p.startswith("corrupt") for p in zoo._mismatches(zoo.verify("tiny-diffusion", root=root, test=small)))
    t, manifest = evals.load(evals.path_of("tiny-diffusion", "diffusion-ood", root=root))
    t["elbo"] *= 1.01  # tampered ELBOs, the summary rewritten to follow: only the recomputed image can tell
    summary = manifest["info"]["mean_bits_per_dim"]
    summary["test"]["elbo_bits_per_dim"] = float(mixture_bits_per_dim(t["elbo"], 784).mean())
    evals.save(evals.path_of("tiny-diffusion", "diffusion-ood", root=root), t, model_sha256=manifest["model_sha256"],
               inputs=manifest["inputs"], **manifest["info"])
    problems = zoo._mismatches(zoo.verify("tiny-diffusion", root=root, test=small))
    assert any("ELBOs of test image" in p for p in problems), problems
    with pytest.raises(ConfigError, match="diffusion model's network"):
        zoo.evaluate_shipped("gc-beta-8", "diffusion-ood", n=1)
    with pytest.raises(ConfigError, match="n must be"):
        zoo.evaluate_diffusion_ood(shipped, small, n=0)
