"""gclib.explain (Figure 1's outputs and example rules) and the no-download OoD sets of gclib.data."""

import math

import pytest
import torch

import gclib
from gclib import explain
from gclib.errors import DataError, InputError


@pytest.fixture(scope="module")
def gc():
    return gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0).eval()


def test_gc_outputs_agree_with_the_model(gc):
    x = torch.rand(7, 1, 28, 28)
    out = explain.gc_outputs(gc, x, batch_size=3)  # batching must not change anything
    torch.testing.assert_close(out["log_likelihoods"], gc.class_log_likelihoods(x).detach(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out["posterior"].sum(1), torch.ones(7))
    torch.testing.assert_close(out["bits_per_dim"], gc.bits_per_dim(x, "none").detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(out["prediction"], gc.predict(x))
    torch.testing.assert_close(explain.dc_posterior(gc, x, batch_size=2), torch.exp(gc(x)).detach())


def test_bad_batches_are_clear_errors(gc):
    with pytest.raises(InputError, match="non-empty batch"):
        explain.gc_outputs(gc, torch.rand(0, 1, 28, 28))
    with pytest.raises(InputError, match="batch_size"):
        explain.dc_posterior(gc, torch.rand(2, 1, 28, 28), batch_size=0)


def test_typical_range_and_atypical_fraction_on_known_values():
    values = torch.arange(1, 1002, dtype=torch.float64)  # 1..1001
    low, high = explain.typical_range(values, coverage=0.9)
    assert (low, high) == pytest.approx((51.0, 951.0))
    assert explain.atypical_fraction(torch.tensor([0.0, 51.0, 500.0, 951.0, 2000.0]), (low, high)) == 0.4
    with pytest.raises(InputError, match="coverage"):
        explain.typical_range(values, coverage=1.0)
    with pytest.raises(InputError, match="finite"):
        explain.typical_range(torch.tensor([1.0, float("nan")]))


def _outputs(posterior, bpd):
    posterior = torch.tensor(posterior)
    return {"posterior": posterior, "bits_per_dim": torch.tensor(bpd), "prediction": posterior.argmax(1),
            "log_likelihoods": posterior.log()}


def test_pick_examples_follows_its_rules():
    gc = _outputs([[0.995, 0.005, 0.0], [0.999, 0.001, 0.0], [0.5, 0.45, 0.05], [0.48, 0.47, 0.05],
                   [0.49, 0.49, 0.02], [0.999, 0.001, 0.0]],
                  [5.0, 5.9, 5.0, 5.0, 9.0, 5.5])
    labels = torch.tensor([0, 0, 1, 2, 1, 1])
    picked = explain.pick_examples(gc, labels, (4.0, 7.0))
    # normal: correct, confident, typical; closest to the middle (5.5) -> 0 (5.0) vs 1 (5.9): 1 is 0.4 away
    assert picked["normal"] == 1
    # ambiguous: typical and label in the top two; 3 has its label (2) outside the top two, 4 is atypical
    assert picked["ambiguous"] == 2
    assert explain.most_confident(torch.tensor([[0.6, 0.4], [0.1, 0.9], [0.8, 0.2]])) == 1
    with pytest.raises(InputError, match="min_confidence"):
        explain.pick_examples(gc, labels, (4.0, 7.0), min_confidence=0.9999)


@pytest.mark.parametrize("name", gclib.data.ood_names())
def test_ood_sets_fit_the_model_input(name):
    x = gclib.data.ood(name, n=40, seed=1)
    assert x.shape == (40, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    torch.testing.assert_close(x, torch.round(x * 255) / 255)  # on the 8-bit grid, like the data
    assert torch.equal(x, gclib.data.ood(name, n=40, seed=1))  # same seed, same images
    rgb = gclib.data.ood(name, n=3, shape=(3, 32, 32))
    assert rgb.shape == (3, 3, 32, 32)


def test_ood_errors():
    with pytest.raises(DataError, match="unknown out-of-distribution set 'mnist'.*digits"):
        gclib.data.ood("mnist")
    with pytest.raises(DataError, match="n must be"):
        gclib.data.ood("digits", n=0)


def test_top2_and_regions_on_hand_made_log_likelihoods():
    n_dims = 784
    ll = torch.tensor([[-10.0, -2.0, -50.0],  # class 1 by 8 nats: confident
                       [-3.0, -3.5, -40.0],  # 0.5 nats apart: both
                       [-1.0, -20.0, -30.0]])  # confident classes, but atypical density: neither
    t2 = explain.top2(ll, n_dims)
    assert t2["classes"].tolist() == [[1, 0], [0, 1], [0, 1]]
    assert torch.allclose(t2["log_ratio"], torch.tensor([8.0, 0.5, 19.0], dtype=torch.float64))
    expected = gclib.model.nats_to_bits_per_dim(torch.tensor([-2.0, -10.0], dtype=torch.float64), n_dims)
    assert torch.allclose(t2["bits_per_dim"][0], expected)
    assert (t2["bits_per_dim"][:, 0] <= t2["bits_per_dim"][:, 1]).all()
    bpd = torch.tensor([5.0, 5.0, 9.0])
    codes = explain.regions(ll, bpd, (4.0, 7.0), max_ratio=10.0)
    assert codes.tolist() == [0, 1, 2]
    # the boundary: a ratio of exactly max_ratio is still "both"
    tie = torch.tensor([[0.0, -math.log(10.0)]], dtype=torch.float64)
    assert explain.regions(tie, torch.tensor([5.0]), (4.0, 7.0), 10.0).tolist() == [1]
    assert explain.region_shares(codes) == pytest.approx({"confident": 100 / 3, "both": 100 / 3, "neither": 100 / 3})


def test_pick_per_region_is_seeded_and_respects_regions():
    codes = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 2])
    picked = explain.pick_per_region(codes, k=2, seed=3)
    assert picked == explain.pick_per_region(codes, k=2, seed=3)
    for r, name in enumerate(explain.REGIONS):
        assert len(picked[name]) == 2 and all(int(codes[i]) == r for i in picked[name])
    assert explain.pick_per_region(torch.tensor([0, 0]), k=3)["neither"] == []


def test_separation_row_against_scikit_learn():
    from sklearn.metrics import roc_auc_score

    pos, neg = torch.tensor([3.0, 2.0, 0.5]), torch.tensor([1.0, 0.0, -1.0, 0.7])
    row = explain.separation_row("q", (pos, neg), (-pos, -neg), (torch.tensor([1, 1, 0]), torch.tensor([0, 0, 0, 1])))
    expected = roc_auc_score([1, 1, 1, 0, 0, 0, 0], torch.cat([pos, neg]).numpy())
    assert row["gc_auroc"] == pytest.approx(round(100 * expected, 1))
    assert row["dc_auroc"] == pytest.approx(round(100 * (1 - expected), 1))
    assert (row["n_pos"], row["n_neg"], row["gc_region_pos"], row["gc_region_neg"]) == (3, 4, 66.7, 25.0)


def test_region_errors():
    ll = torch.zeros(2, 3)
    with pytest.raises(InputError, match="max_ratio"):
        explain.regions(ll, torch.zeros(2), (0, 1), max_ratio=1.0)
    with pytest.raises(InputError, match="bits/dim"):
        explain.regions(ll, torch.zeros(3), (0, 1))
    with pytest.raises(InputError, match=r"\[N, C\]"):
        explain.top2(torch.zeros(4), 10)
