"""gclib.calibration: hand-worked metrics, a calibrated synthetic case, input errors, and the notebook."""

import math

import pytest
import torch

from gclib import calibration as cal
from gclib.errors import InputError

# Four predictions over 4 classes, label 0 each time. Confidences (max prob) and correctness:
#   0.4 correct, 0.3 wrong  -> bin (0, 0.5]: mean conf 0.35, accuracy 0.5, gap 0.15
#   0.9 correct, 0.7 wrong  -> bin (0.5, 1]: mean conf 0.80, accuracy 0.5, gap 0.30
# ECE = 2/4 * 0.15 + 2/4 * 0.30 = 0.225; MCE = max(0.15, 0.30) = 0.30.
HAND_PROBS = torch.tensor([[0.4, 0.2, 0.2, 0.2],
                           [0.25, 0.3, 0.25, 0.2],
                           [0.9, 0.05, 0.03, 0.02],
                           [0.1, 0.7, 0.1, 0.1]])
HAND_LABELS = torch.tensor([0, 0, 0, 0])


def test_hand_worked_ece_mce_and_reliability():
    assert cal.ece(HAND_PROBS, HAND_LABELS, n_bins=2) == pytest.approx(0.225)
    assert cal.mce(HAND_PROBS, HAND_LABELS, n_bins=2) == pytest.approx(0.30)
    rel = cal.reliability(HAND_PROBS, HAND_LABELS, n_bins=2)
    assert rel["count"].tolist() == [2, 2]
    assert rel["confidence"].tolist() == pytest.approx([0.35, 0.8])
    assert rel["accuracy"].tolist() == pytest.approx([0.5, 0.5])
    assert rel["edges"].tolist() == pytest.approx([0, 0.5, 1])


def test_bins_are_right_closed_and_empty_bins_are_nan():
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    rel = cal.reliability(probs, torch.tensor([0, 0]), n_bins=4)
    assert rel["count"].tolist() == [0, 1, 0, 1]  # 0.5 falls in (0.25, 0.5], 1.0 in (0.75, 1]
    assert math.isnan(rel["accuracy"][0]) and math.isnan(rel["confidence"][2])


def test_perfectly_calibrated_synthetic_data_has_small_ece():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(20000, 10, generator=g), dim=1)
    labels = torch.multinomial(probs, 1, generator=g)[:, 0]
    assert cal.ece(probs, labels) < 0.02
    # and a sharpened copy of the same posterior is measurably overconfident
    sharp = torch.softmax(3 * probs.log(), dim=1)
    assert cal.ece(sharp, labels) > 0.05


def test_overconfidence_hand_case():
    # 5 predictions with confidence 0.999 > 1 - 0.003; 1 of them is wrong: error rate 0.2, / 0.003 = 66.67.
    # The sixth (confidence 0.6) is below the threshold and does not count.
    confident = torch.tensor([0.999, 0.001])
    probs = torch.stack([confident] * 5 + [torch.tensor([0.6, 0.4])])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    value, count = cal.overconfidence(probs, labels, return_count=True)
    assert count == 5
    assert value == pytest.approx(0.2 / 0.003)
    assert cal.overconfidence(probs[:4], labels[:4]) == 0.0
    assert math.isnan(cal.overconfidence(probs[5:], labels[5:]))  # nothing that confident: undefined


def test_nll_matches_torch():
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(100, 10, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(10, (100,), generator=g)
    assert cal.nll(logp.exp(), labels) == pytest.approx(float(torch.nn.functional.nll_loss(logp, labels)), rel=1e-9)
    # a probability of the label that is exactly 0 is clamped, not inf
    assert math.isfinite(cal.nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1])))


def test_bootstrap_se_is_positive_deterministic_and_matches_calibration_row():
    g = torch.Generator().manual_seed(2)
    probs = torch.softmax(2 * torch.randn(500, 10, generator=g), dim=1)
    labels = torch.multinomial(probs, 1, generator=g)[:, 0]
    se = cal.bootstrap_se(cal.ece, probs, labels, n=50, seed=3)
    assert se > 0
    assert cal.bootstrap_se(cal.ece, probs, labels, n=50, seed=3) == se
    assert cal.bootstrap_se(cal.ece, probs, labels, n=50, seed=4) != se
    row = cal.calibration_row("m", probs, labels, n_bins=15, n_bootstrap=50, seed=3)
    assert row["ece_se"] == round(100 * se, 2)
    assert row["nll_se"] == round(cal.bootstrap_se(cal.nll, probs, labels, n=50, seed=3), 4)
    assert row["ece_pct"] == round(100 * cal.ece(probs, labels), 2)
    assert row["n"] == 500 and set(row) == set(cal.CALIBRATION_HEADERS)


@pytest.mark.parametrize("probs, labels, match", [
    (torch.full((4, 3), 1 / 3), torch.tensor([0, 1, 2]), "labels must be"),
    (torch.full((4,), 0.25), torch.tensor([0, 1, 2, 3]), r"\[N, C\]"),
    (torch.full((2, 3), 0.5), torch.tensor([0, 1]), "sum to 1"),
    (torch.randn(2, 3), torch.tensor([0, 1]), "probs"),
    (torch.full((2, 3), 1 / 3), torch.tensor([0, 3]), r"in \[0, 3\)"),
    (torch.full((2, 3), 1 / 3), torch.tensor([-1, 0]), r"in \[0, 3\)"),
    (torch.full((2, 3), 1 / 3), torch.tensor([0.0, 1.0]), "integer"),
    (torch.tensor([[math.nan, 1.0]]), torch.tensor([0]), "NaN"),
])
def test_input_errors(probs, labels, match):
    for fn in (cal.ece, cal.mce, cal.nll, cal.overconfidence, cal.reliability):
        with pytest.raises(InputError, match=match):
            fn(probs, labels)


def test_parameter_errors():
    with pytest.raises(InputError, match="n_bins"):
        cal.ece(HAND_PROBS, HAND_LABELS, n_bins=0)
    with pytest.raises(InputError, match="threshold"):
        cal.overconfidence(HAND_PROBS, HAND_LABELS, threshold=1.5)
    with pytest.raises(InputError, match="resamples"):
        cal.bootstrap_se(cal.ece, HAND_PROBS, HAND_LABELS, n=1)


def test_notebook_writes_the_table_and_the_figure(tmp_path):
    from tests.test_notebooks import run_notebook

    nb = run_notebook("calibration", tmp_path, figures=str(tmp_path), betas="8,inf", n_test=300, n_bootstrap=20)
    assert (tmp_path / "fig_calibration.png").stat().st_size > 10_000
    md = (tmp_path / "table_calibration.md").read_text()
    assert "GC β=8" in md and "ResNet-18 DC" in md and "ECE (%)" in md
    csv = (tmp_path / "table_calibration.csv").read_text().splitlines()
    assert len(csv) == 4  # header, two GCs, the ResNet
    glued = {o["metadata"]["scrapbook"]["name"] for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})}
    for model in ("beta_8", "beta_inf", "resnet"):
        assert {f"ece_{model}", f"mce_{model}", f"overconf_{model}", f"nll_{model}"} <= glued
    assert "best_ece_beta" in glued
