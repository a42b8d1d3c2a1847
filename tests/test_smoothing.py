"""gclib.smoothing: certificates of a constant and of a linear base classifier with known answers, the
Clopper-Pearson bound against the beta quantile, certified accuracy by hand, the largest certifiable radius,
input errors, reproducibility, and a real (untrained) gclib model."""

import math

import pytest
import torch
from scipy import stats

import gclib
from gclib import smoothing
from gclib.errors import InputError
from gclib.smoothing import SmoothedClassifier, certified_accuracy, clopper_pearson_lower, max_certifiable_radius


class Constant(torch.nn.Module):
    """Always class 2 of 4, whatever the input."""

    num_classes = 4

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype, device=x.device)
        logits[:, 2] = 1.0
        return logits


class Threshold(torch.nn.Module):
    """Two classes on the first pixel: f(x) = [x_0 > 0.5]. Its smoothing at x_0 = 0.5 + d predicts class 1 with
    probability Phi(d / sigma), and g's decision boundary is still x_0 = 0.5, so g's true L2 radius is d."""

    num_classes = 2

    def forward(self, x):
        v = x.flatten(1)[:, 0]
        return torch.stack([0.5 - v, v - 0.5], dim=1)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("sigma", [0.25, 0.5])
def test_constant_base_certifies_the_all_votes_radius_and_predicts_its_class(sigma):
    n, alpha = 1000, 0.001
    g = SmoothedClassifier(Constant(), sigma)
    x = torch.rand(3, 1, 5, 5, generator=seeded(0))
    prediction, radius = g.certify(x, n0=10, n=n, alpha=alpha, batch_size=256, generator=seeded(1))
    assert prediction.tolist() == [2, 2, 2]
    expected = sigma * stats.norm.ppf(alpha ** (1 / n))  # p_lower = alpha^(1/n) when all n votes agree
    assert radius.tolist() == pytest.approx([expected] * 3, abs=1e-9)
    assert radius.tolist() == pytest.approx([max_certifiable_radius(n, alpha, sigma)] * 3, abs=1e-9)
    assert g.predict(x, n=n, alpha=alpha, batch_size=256, generator=seeded(2)).tolist() == [2, 2, 2]
    assert g.counts(x, n=7, batch_size=3, generator=seeded(3)).tolist() == [[0, 0, 7, 0]] * 3


@pytest.mark.parametrize("sigma, d", [(0.25, 0.25), (0.5, 0.25), (0.25, 0.5)])
def test_threshold_base_vote_share_is_phi_d_over_sigma_and_its_certificate_is_conservative_but_tight(sigma, d):
    g = SmoothedClassifier(Threshold(), sigma)
    x = torch.full((1, 1, 1, 1), 0.5 + d, dtype=torch.float64)
    n = 4000
    p = stats.norm.cdf(d / sigma)
    counts = g.counts(x, n=n, batch_size=n, generator=seeded(0))
    assert counts.dtype == torch.long and counts.shape == (1, 2) and int(counts.sum()) == n
    assert abs(int(counts[0, 1]) / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    # n = 100,000: p_lower ~ p - 3.1 SE, so the radius is ~0.97-0.99 d (checked by hand); a true certificate
    # lies below d (each fails with probability <= alpha), and it is close to d.
    for seed in range(3):
        prediction, radius = g.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=50_000, generator=seeded(seed))
        assert prediction.tolist() == [1]
        assert 0.9 * d < float(radius[0]) < d


def test_clopper_pearson_lower_is_the_one_sided_beta_quantile():
    for k, n in [(0, 10), (1, 10), (5, 10), (10, 10), (0, 1), (1, 1), (37, 100), (99_990, 100_000)]:
        for alpha in (0.001, 0.05, 0.3, 0.5, 0.7):
            expected = 0.0 if k == 0 else stats.beta.ppf(alpha, k, n - k + 1)
            assert clopper_pearson_lower(k, n, alpha) == pytest.approx(expected, abs=1e-9), (k, n, alpha)
    assert clopper_pearson_lower(10, 10, 0.001) == pytest.approx(0.001 ** (1 / 10), abs=1e-12)
    # The bound holds: at p = the bound, seeing >= k successes has probability alpha.
    assert stats.binom.sf(36, 100, clopper_pearson_lower(37, 100, 0.01)) == pytest.approx(0.01, rel=1e-6)


def test_certified_accuracy_by_hand_and_abstains_count_as_wrong():
    labels = torch.tensor([0, 1, 2, 3, 4])
    prediction = torch.tensor([0, 1, smoothing.ABSTAIN, 3, 0])
    radius = torch.tensor([0.0, 0.3, 0.0, 1.0, 2.0], dtype=torch.float64)
    rows = certified_accuracy(radius, prediction == labels, [0.0, 0.25, 0.5, 1.0, 1.5])
    # correct: images 0 (r 0), 1 (r 0.3), 3 (r 1.0); image 2 abstained, image 4 is wrong with a large radius.
    assert [row["accuracy"] for row in rows] == pytest.approx([3 / 5, 2 / 5, 1 / 5, 1 / 5, 0.0])
    assert [row["radius"] for row in rows] == [0.0, 0.25, 0.5, 1.0, 1.5]
    assert [row["n"] for row in rows] == [5] * 5
    assert rows[0]["se"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5)) and rows[-1]["se"] == 0.0
    assert certified_accuracy([0.5, 0.5], [1, 0], [0.5])[0]["accuracy"] == 0.5  # 0/1 integers work too


def test_max_certifiable_radius():
    for n, alpha, sigma in [(100, 0.001, 0.25), (10_000, 0.01, 0.5), (100_000, 0.001, 0.25)]:
        via_bound = sigma * stats.norm.ppf(clopper_pearson_lower(n, n, alpha))
        assert max_certifiable_radius(n, alpha, sigma) == pytest.approx(via_bound, abs=1e-9)
    # The paper's setting certifies at most 0.953 at sigma = 0.25, enough for radius 0.5; n = 300 is not.
    assert max_certifiable_radius(100_000, 0.001, 0.25) == pytest.approx(0.9529, abs=1e-4)
    assert max_certifiable_radius(100_000, 0.001, 0.25) > 0.5
    assert max_certifiable_radius(300, 0.001, 0.25) < 0.5 < max_certifiable_radius(301, 0.001, 0.25)
    assert max_certifiable_radius(9, 0.001, 0.25) < 0  # alpha^(1/9) < 1/2: every image abstains


def test_bad_input_raises_input_error_with_the_fix():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(InputError, match="sigma must be a finite noise standard deviation > 0"):
        SmoothedClassifier(Constant(), sigma=0.0)
    with pytest.raises(InputError, match="sigma must be"):
        SmoothedClassifier(Constant(), sigma=-0.25)
    with pytest.raises(InputError, match="pass num_classes="):
        SmoothedClassifier(torch.nn.Identity(), sigma=0.25)
    g = SmoothedClassifier(Constant(), sigma=0.25)
    with pytest.raises(InputError, match="n0 must be an integer >= 1"):
        g.certify(x, n0=0, n=10)
    with pytest.raises(InputError, match="n must be an integer >= 1"):
        g.certify(x, n0=1, n=0)
    with pytest.raises(InputError, match="n must be an integer >= 1"):
        g.predict(x, n=0)
    for alpha in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(InputError, match="alpha must be a failure probability strictly between 0 and 1"):
            g.certify(x, n0=1, n=10, alpha=alpha)
        with pytest.raises(InputError, match="alpha must be"):
            g.predict(x, n=10, alpha=alpha)
    with pytest.raises(InputError, match=r"images \[B, C, H, W\], got \(1, 4, 4\)"):
        g.certify(x[0], n0=1, n=10)
    with pytest.raises(InputError, match="images"):
        g.counts(torch.rand(4, 16), n=10)
    with pytest.raises(InputError, match="batch_size must be an integer >= 1"):
        g.counts(x, n=10, batch_size=0)
    with pytest.raises(InputError, match="generator must be"):
        g.counts(x, n=10, generator="seed")
    with pytest.raises(InputError, match="must return logits"):
        SmoothedClassifier(Constant(), sigma=0.25, num_classes=3).counts(x, n=2)
    with pytest.raises(InputError, match="k must be an integer count"):
        clopper_pearson_lower(11, 10, 0.001)
    with pytest.raises(InputError, match="correct must have the shape of radii"):
        certified_accuracy([0.1, 0.2], [True], [0.0])


def test_same_generator_seed_same_counts():
    g = SmoothedClassifier(Threshold(), sigma=0.5)
    x = torch.tensor([0.45, 0.5, 0.6]).view(3, 1, 1, 1)
    a = g.counts(x, n=500, batch_size=128, generator=seeded(7))
    assert torch.equal(a, g.counts(x, n=500, batch_size=128, generator=seeded(7)))
    assert torch.equal(a, g.counts(x, n=500, batch_size=128, generator=7))  # an int seed is the same
    assert not torch.equal(a, g.counts(x, n=500, batch_size=128, generator=seeded(8)))
    assert a.sum(1).tolist() == [500, 500, 500]
    assert a[0, 0] > a[0, 1] and a[2, 1] > a[2, 0]  # each image's votes are its own, across mixed batches
    p1, r1 = g.certify(x, n0=20, n=500, batch_size=128, generator=seeded(3))
    p2, r2 = g.certify(x, n0=20, n=500, batch_size=128, generator=seeded(3))
    assert torch.equal(p1, p2) and torch.equal(r1, r2)


def test_wraps_a_gclib_model_and_restores_its_modes():
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    model.train()
    g = SmoothedClassifier(model, sigma=0.25)
    assert g.num_classes == 10 and g.device == model.device
    x = torch.rand(2, 1, 28, 28, generator=seeded(0))
    prediction, radius = g.certify(x, n0=4, n=16, alpha=0.001, batch_size=8, generator=seeded(1))
    assert prediction.shape == (2,) and prediction.dtype == torch.long
    assert radius.shape == (2,) and radius.dtype == torch.float64
    for cls, r in zip(prediction.tolist(), radius.tolist()):
        assert (cls == smoothing.ABSTAIN and r == 0.0) or (0 <= cls < 10 and 0.0 <= r <= max_certifiable_radius(
            16, 0.001, 0.25) + 1e-12)
    assert model.training and "check_inputs" not in vars(model) and model.check_inputs  # put back as found


def test_seeded_votes_do_not_depend_on_the_other_images_and_give_certify_s_answer():
    from gclib.smoothing import certificates, seeded_votes

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    smoothed = SmoothedClassifier(base, 0.5, num_classes=3)
    x = torch.rand(3, 1, 2, 2)
    c0, c = seeded_votes(smoothed, x, [7, 8, 9], n0=20, n=200, seed=1, batch_size=64)
    c0_one, c_one = seeded_votes(smoothed, x[1:2], [8], n0=20, n=200, seed=1, batch_size=64)
    assert torch.equal(c0[1:2], c0_one) and torch.equal(c[1:2], c_one)
    assert (c0.sum(1) == 20).all() and (c.sum(1) == 200).all()
    pred, radius = certificates(c0, c, 200, 0.001, 0.5)
    g = torch.Generator().manual_seed(1 * 1_000_003 + 8)
    want = smoothed.certify(x[1:2], n0=20, n=200, alpha=0.001, batch_size=64, generator=g)
    assert pred[1] == want[0][0] and radius[1] == want[1][0]
    with pytest.raises(InputError, match="one id per image"):
        seeded_votes(smoothed, x, [1, 2], n0=2, n=2)


def test_publish_certifies_a_smoothing_base_and_verify_recounts_its_votes(tmp_path, fashion, monkeypatch):
    import json

    import gclib
    from gclib import evals, zoo

    train, val, test = fashion
    test = test.subset(60, seed=0)
    entry = zoo.ZooEntry("fashion-mnist", "gc-sigma-0.25-beta-tiny", "gc", "8", 0, 1, ("--input-noise", "0.25"),
                         config="fashion-mnist-small", certify_sigma=0.25)
    monkeypatch.setitem(zoo.ZOO, ("fashion-mnist", entry.name), entry)
    for name, value in (("CERTIFY_N", 5), ("CERTIFY_N0", 10), ("CERTIFY_SAMPLES", 60), ("CERTIFY_CHECK_N", 2),
                        ("CI_SUBSET", 20)):
        monkeypatch.setattr(zoo, name, value)
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    gclib.train.fit(model, train.subset(128, seed=0), None, beta=8, epochs=1, batch_size=64, input_noise=0.25,
                    out=tmp_path / "run", progress=False)
    root = tmp_path / "ckpt"
    path = zoo.publish(tmp_path / "run", entry.name, root=root, test=test)
    record = json.loads(path.read_text())["info"]["certified"]
    assert (record["n"], record["n0"], record["n_samples"], record["sigma"]) == (5, 10, 60, 0.25)
    assert [r["radius"] for r in record["certified_accuracy"]] == list(zoo.CERTIFY_RADII)
    assert all(r["accuracy"] == 0 for r in record["certified_accuracy"]
               if r["radius"] > record["max_certifiable_radius"])
    result = zoo.verify(entry.name, root=root, test=test)
    assert result["certify_problems"] == [] and zoo._mismatches(result) == [], result
    assert zoo.model_rows(root=root) == [] and len(zoo.model_rows(root=root, smoothing_bases=True)) == 1
    votes, manifest = evals.load(evals.path_of(entry.name, "certify", root=root))
    votes["counts"] = votes["counts"].roll(1, dims=1).contiguous()  # a tampered artifact fails verification
    evals.save(evals.path_of(entry.name, "certify", root=root), votes, model_sha256=manifest["model_sha256"],
               inputs=manifest["inputs"], **manifest["info"])
    assert zoo._mismatches(zoo.verify(entry.name, root=root, test=test))


def test_abs_smoothing_base_trains_on_noise_from_a_warm_start_and_publish_certifies_it(tmp_path, fashion, monkeypatch):
    """An ABS smoothing base (zoo entry abs-sigma-*): warm-started from another ABS checkpoint (lineage kept),
    fine-tuned on noisy images, published with its cheap rule's accuracy and its certificates, verified."""
    import json

    from gclib import abs as abs_family
    from gclib import zoo
    from gclib.errors import ConfigError

    train, val, test = fashion
    test = test.subset(40, seed=0)
    cfg = abs_family.ABSConfig(width=4, n_prior_samples=16, n_steps=1, n_bound_samples=2)
    source = abs_family.ABSClassifier(cfg, seed=0)
    abs_family.fit(source, train.subset(128, seed=0), None, epochs=1, batch_size=64, out=tmp_path / "source",
                   progress=False)
    model = abs_family.ABSClassifier(cfg.replace(sigma=0.27), seed=1)
    record = abs_family.warm_start(model, tmp_path / "source" / "final")
    assert record["sha256"] == json.loads((tmp_path / "source" / "final.json").read_text())["sha256"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    with pytest.raises(ConfigError, match="same architecture"):
        abs_family.warm_start(abs_family.ABSClassifier(cfg.replace(width=5)), tmp_path / "source" / "final")
    # The noise enters training: the same run without it ends elsewhere.
    clean = abs_family.ABSClassifier(cfg.replace(sigma=0.27), seed=1)
    clean.load_state_dict(model.state_dict())
    for m, noise, out in ((model, 0.25, "run"), (clean, 0.0, "clean")):
        abs_family.fit(m, train.subset(128, seed=0), None, epochs=1, batch_size=64, input_noise=noise,
                       out=tmp_path / out, progress=False)
    assert not torch.equal(model.vaes[0].decoder.net[0].weight, clean.vaes[0].decoder.net[0].weight)
    manifest = json.loads((tmp_path / "run" / "final.json").read_text())
    assert manifest["info"]["input_noise"] == 0.25 and manifest["info"]["init_from"]["sha256"] == record["sha256"]
    with pytest.raises(ConfigError, match="input_noise"):
        abs_family.fit(clean, train.subset(128, seed=0), None, epochs=1, input_noise=-1.0)

    entry = zoo.ZooEntry("fashion-mnist", "abs-sigma-0.25-tiny", "abs", None, 0, 1, ("--input-noise", "0.25"),
                         inference=zoo.ABS_SMOOTHING_INFERENCE, certify_sigma=0.25)
    monkeypatch.setitem(zoo.ZOO, ("fashion-mnist", entry.name), entry)
    for name, value in (("CERTIFY_N", 4), ("CERTIFY_N0", 10), ("CERTIFY_SAMPLES", 40), ("CERTIFY_CHECK_N", 2),
                        ("CI_SUBSET", 20)):
        monkeypatch.setattr(zoo, name, value)
    root = tmp_path / "ckpt"
    info = json.loads(zoo.publish(tmp_path / "run", entry.name, root=root, test=test).read_text())["info"]
    assert (info["test"]["n"], info["test_subset"]["n"], info["certified"]["n"]) == (40, 20, 4)
    assert info["test"]["inference"]["start"] == "encoder" and info["test"]["inference"]["n_steps"] == 0
    for subset in (False, True):
        result = zoo.verify(entry.name, root=root, test=test, subset=subset)
        assert result["certify_problems"] == [] and zoo._mismatches(result) == [], result
    assert zoo.model_rows(root=root) == []
