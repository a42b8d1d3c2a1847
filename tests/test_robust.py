"""gclib.robust: corruptions (shape, range, grid, identity, strength, determinism), error consistency against a
hand-worked case and scikit-learn, the table row, the figure, and input errors."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score

from gclib import robust
from gclib.errors import InputError

# Corruptions that draw random numbers (noise, directions, warps); the others are deterministic maps.
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "elastic", "rotate", "shear"}


@pytest.fixture(scope="module")
def images(fashion):
    _, _, test = fashion
    x, _ = test.subset(64, 0).tensors()
    return x


def test_severity_table_covers_every_corruption_with_five_levels():
    assert len(robust.CORRUPTIONS) >= 10 and robust.CORRUPTIONS == tuple(robust.SEVERITIES)
    assert all(len(v) == robust.MAX_SEVERITY for v in robust.SEVERITIES.values())
    assert RANDOM <= set(robust.CORRUPTIONS)


@pytest.mark.parametrize("name", robust.CORRUPTIONS)
def test_corruption_keeps_shape_dtype_range_and_8bit_grid_and_severity_0_is_identity(name, images):
    assert torch.equal(robust.corrupt(images, name, 0), images)
    assert robust.corrupt(images, name, 0) is not images  # a copy: the caller's tensor is never aliased
    for severity in range(1, robust.MAX_SEVERITY + 1):
        out = robust.corrupt(images, name, severity, seed=3)
        assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        torch.testing.assert_close(out, torch.round(out * 255) / 255, rtol=0, atol=1e-6)
    x64 = images[:4].double()
    assert robust.corrupt(x64, name, 3).dtype == torch.float64


@pytest.mark.parametrize("name", robust.CORRUPTIONS)
def test_strength_grows_with_severity(name, images):
    change = [float((robust.corrupt(images, name, s) - images).abs().mean()) for s in range(robust.MAX_SEVERITY + 1)]
    assert change[0] == 0
    assert all(b > a for a, b in zip(change, change[1:])), f"{name}: mean |x_c - x| per severity {change}"


@pytest.mark.parametrize("name", robust.CORRUPTIONS)
def test_deterministic_given_a_seed(name, images):
    x = images[:16]
    torch.testing.assert_close(robust.corrupt(x, name, 4, seed=7), robust.corrupt(x, name, 4, seed=7), rtol=0, atol=0)
    other = robust.corrupt(x, name, 4, seed=8)
    assert torch.equal(other, robust.corrupt(x, name, 4, seed=7)) == (name not in RANDOM)


def test_colour_images_and_the_global_rng_is_untouched():
    x = torch.rand(3, 3, 28, 28)
    state = torch.get_rng_state()
    out = robust.corrupt(x, "gaussian_noise", 2, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert out.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_output_stays_on_the_input_device(images):
    x = images[:4].cuda()
    out = robust.corrupt(x, "elastic", 2)
    assert out.device == x.device
    torch.testing.assert_close(out.cpu(), robust.corrupt(images[:4], "elastic", 2))


def test_bad_input_raises_input_error():
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(InputError, match="unknown corruption 'fog'.*gaussian_noise.*shear"):
        robust.corrupt(x, "fog", 1)
    for severity in (-1, 6, 2.5, True, "3"):
        with pytest.raises(InputError, match="severity"):
            robust.corrupt(x, "jpeg", severity)
    for bad in (torch.rand(1, 28, 28), torch.rand(0, 1, 28, 28), x * 2, x - 0.5, (255 * x).to(torch.uint8),
                torch.full((1, 1, 4, 4), math.nan), torch.rand(1, 2, 8, 8), x.numpy()):
        with pytest.raises(InputError):
            robust.corrupt(bad, "contrast", 1)


# Eight trials. a right on 1-5, b right on 1-3 and 6-7:
#   both right: 1, 2, 3; both wrong: 8 -> observed = 4 / 8 = 0.5
#   p_a = 5/8, p_b = 5/8 -> expected = 25/64 + 9/64 = 34/64 = 0.53125
#   kappa = (0.5 - 0.53125) / (1 - 0.53125) = -0.03125 / 0.46875 = -1/15
HAND_A = [1, 1, 1, 1, 1, 0, 0, 0]
HAND_B = [1, 1, 1, 0, 0, 1, 1, 0]


def test_error_consistency_hand_worked_case():
    ec = robust.error_consistency(HAND_A, HAND_B)
    assert ec["observed"] == pytest.approx(0.5)
    assert ec["expected"] == pytest.approx(34 / 64)
    assert ec["kappa"] == pytest.approx(-1 / 15)
    assert ec["n"] == 8
    assert robust.error_consistency(HAND_A, HAND_A)["kappa"] == pytest.approx(1.0)
    # complementary errors: never both right or both wrong, observed 0, expected 0.5 -> kappa -1
    assert robust.error_consistency([1, 1, 0, 0], [0, 0, 1, 1])["kappa"] == pytest.approx(-1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_consistency_equals_cohen_kappa_score(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(500) < 0.8
    b = np.where(rng.random(500) < 0.6, a, rng.random(500) < 0.7)  # partly the same errors
    assert robust.error_consistency(a, b)["kappa"] == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    grid_a, grid_b = torch.as_tensor(a).reshape(50, 10), torch.as_tensor(b).reshape(50, 10)  # any shape
    assert robust.error_consistency(grid_a, grid_b)["kappa"] == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_error_consistency_undefined_and_bad_input():
    assert math.isnan(robust.error_consistency([1, 1, 1], [1, 1, 1])["kappa"])  # both always right
    with pytest.raises(InputError, match="same shape"):
        robust.error_consistency([1, 0, 1], [1, 0])
    with pytest.raises(InputError, match="0/1"):
        robust.error_consistency([1, 2, 0], [1, 0, 0])
    with pytest.raises(InputError, match="empty"):
        robust.error_consistency([], [])


def test_error_consistency_se_agrees_with_the_large_sample_formula():
    # For independent trials: SE(kappa) ~ sqrt(p_o (1 - p_o) / n) / (1 - p_e) (Cohen, 1960).
    rng = np.random.default_rng(0)
    n = 2000
    a = rng.random(n) < 0.85
    b = np.where(rng.random(n) < 0.5, a, rng.random(n) < 0.85)
    ec = robust.error_consistency(a, b)
    formula = math.sqrt(ec["observed"] * (1 - ec["observed"]) / n) / (1 - ec["expected"])
    assert robust.error_consistency_se(a, b, n_bootstrap=300) == pytest.approx(formula, rel=0.25)
    with pytest.raises(InputError, match="n_bootstrap"):
        robust.error_consistency_se(a, b, n_bootstrap=1)


def test_accuracy_se_counts_images_not_trials():
    acc, se = robust.accuracy_se(torch.tensor([[1, 1], [0, 0], [1, 0]]))  # per image: 1, 0, 0.5
    assert acc == pytest.approx(0.5) and se == pytest.approx(0.5 / math.sqrt(3))
    acc, se = robust.accuracy_se([True, False, True, True])
    assert acc == 0.75 and se == pytest.approx(np.std([1, 0, 1, 1], ddof=1) / 2)


def _fake_correctness(rng, n, p):
    clean = torch.as_tensor(rng.random(n) < p)
    corrupted = {name: torch.as_tensor(rng.random((robust.MAX_SEVERITY, n)) < p - 0.1 * k / len(robust.CORRUPTIONS))
                 for k, name in enumerate(robust.CORRUPTIONS)}
    return clean, corrupted


def test_corruption_row():
    rng = np.random.default_rng(0)
    dc_clean, dc_corr = _fake_correctness(rng, 400, 0.9)
    gc_clean, gc_corr = _fake_correctness(rng, 400, 0.7)
    row = robust.corruption_row("GC", gc_clean, gc_corr, dc_clean, dc_corr, n_bootstrap=50)
    assert list(row) == list(robust.CORRUPTION_HEADERS)
    assert row["n"] == 400
    stacked = torch.cat([gc_corr[k] for k in robust.CORRUPTIONS]).float()
    assert row["mca_pct"] == pytest.approx(100 * float(stacked.mean()), abs=0.051)
    assert row["shear"] == pytest.approx(100 * float(gc_corr["shear"].float().mean()), abs=0.051)
    assert row["delta_pct"] < -10 and 0 < row["delta_se"] < 3  # 20 points worse, measured on 400 images
    assert abs(row["kappa_corrupted"]) < 0.1  # independent draws: no shared errors beyond chance
    dc_row = robust.corruption_row("DC", dc_clean, dc_corr)
    assert dc_row["kappa_clean"] == "" and dc_row["delta_pct"] == ""
    with pytest.raises(InputError, match="same images"):
        robust.corruption_row("GC", gc_clean[:300], {k: v[:, :300] for k, v in gc_corr.items()}, dc_clean, dc_corr)
    with pytest.raises(InputError, match=r"\[severities, N\]"):
        robust.corruption_row("GC", gc_clean, {"jpeg": gc_corr["jpeg"][:, :10]})


def test_plot_corruptions_draws_one_panel_per_corruption():
    rng = np.random.default_rng(1)
    dc_clean, dc_corr = _fake_correctness(rng, 50, 0.9)
    gc_clean, gc_corr = _fake_correctness(rng, 50, 0.8)
    rows = [robust.corruption_row("GC", gc_clean, gc_corr, dc_clean, dc_corr, n_bootstrap=10),
            robust.corruption_row("DC", dc_clean, dc_corr)]
    curves = {m: {k: list(np.linspace(90, 40, 6)) for k in robust.CORRUPTIONS} for m in ("GC", "DC")}
    examples = {k: [torch.rand(1, 28, 28)] * 3 for k in robust.CORRUPTIONS}
    fig = robust.plot_corruptions(curves, examples, rows, {"GC": "#1fa187", "DC": "#d62728"})
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert sum(t.replace(" ", "_") in robust.CORRUPTIONS for t in titles) == len(robust.CORRUPTIONS)
    assert len(fig.get_axes()) == 4 * len(robust.CORRUPTIONS) + 3


def test_shipped_corruption_rows_join_artifacts_and_live_models(fashion):
    """Rows from shipped logits beside a live model that classifies the same rebuilt corrupted images; the
    first resnet* is the reference; artifacts of other images refuse to share a table."""
    from gclib.robust import shipped_corruption_rows

    test = fashion[2]
    index = torch.tensor([3, 1, 4, 5])
    _, y = test.batch(index)
    versions = [("clean", 0), ("gaussian_noise", 3), ("contrast", 3)]
    right_logits = torch.nn.functional.one_hot(y, 10).float().expand(3, 4, 10).clone()
    wrong = right_logits.roll(1, dims=2)
    manifest = {"info": {"versions": [f"{c}:{s}" for c, s in versions]}}
    shipped = {"resnet-fake": ({"indices": index, "labels": y, "logits": right_logits}, manifest),
               "always-wrong": ({"indices": index, "labels": y, "logits": wrong}, manifest)}

    class Constant(torch.nn.Module):  # predicts class 0 for every image
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float()

    rows, n, got_versions = shipped_corruption_rows(shipped, {"zero": Constant()}, test, n_bootstrap=5)
    assert n == 4 and got_versions == versions and [r["model"] for r in rows] == ["resnet-fake", "always-wrong", "zero"]
    assert rows[0]["clean_pct"] == 100 and rows[1]["clean_pct"] == 0
    assert rows[2]["clean_pct"] == pytest.approx(100 * float((y == 0).float().mean()))
    assert rows[0]["delta_pct"] == "" and rows[1]["delta_pct"] == -100.0  # the reference has no difference to itself
    other = {"indices": index.flip(0), "labels": y.flip(0), "logits": right_logits}
    with pytest.raises(ValueError, match="other images or versions"):
        shipped_corruption_rows({**shipped, "other": (other, manifest)}, {}, test)
