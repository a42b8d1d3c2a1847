"""gclib.detect: OoD scores and metrics against scikit-learn and hand-worked cases; transformed sets."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import gclib
from gclib import detect
from gclib.errors import DataError, InputError


def test_auroc_equals_roc_auc_score_and_handles_raw_log_likelihood_scales():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(5000, 300, 400), rng.normal(5300, 300, 300)  # raw nats: far outside [0, 1]
    expected = roc_auc_score(np.r_[np.zeros(400), np.ones(300)], np.r_[s_in, s_out])
    assert detect.auroc(s_in, s_out) == pytest.approx(expected, abs=1e-12)
    assert detect.auroc([0, 1], [2, 3]) == 1.0 and detect.auroc([2, 3], [0, 1]) == 0.0


def test_fpr_at_95_tpr_on_a_known_case():
    s_in = np.arange(100)  # the threshold that keeps 95 % of them is 95 (method "higher")
    assert detect.fpr_at_tpr(s_in, np.array([10, 50, 95, 96, 200])) == pytest.approx(3 / 5)
    assert detect.fpr_at_tpr(s_in, np.array([1000, 2000])) == 0.0
    with pytest.raises(InputError, match="tpr"):
        detect.fpr_at_tpr(s_in, s_in, tpr=1.0)


def test_auroc_se_agrees_with_the_bootstrap():
    rng = np.random.default_rng(1)
    s_in, s_out = rng.normal(0, 1, 200), rng.normal(1, 1, 200)
    area = detect.auroc(s_in, s_out)
    boot = [detect.auroc(rng.choice(s_in, 200), rng.choice(s_out, 200)) for _ in range(300)]
    assert detect.auroc_se(area, 200, 200) == pytest.approx(np.std(boot), rel=0.2)
    assert detect.auroc_se(1.0, 50, 50) == 0.0


def test_gc_density_scores():
    ref = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    x = np.array([3.0, 0.0, 10.0])
    assert detect.one_tailed(x).tolist() == [3.0, 0.0, 10.0]
    assert detect.typicality(x, ref).tolist() == [0.0, 3.0, 7.0]
    two = detect.two_tailed(x, ref)
    assert two[0] == pytest.approx(0.0) and two[1] == two[2] == 1.0  # both tails count
    with pytest.raises(InputError, match="finite"):
        detect.one_tailed([np.nan])


def test_logit_scores():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert detect.max_softmax(logits)[0] < detect.max_softmax(logits)[1]  # confident = less OoD
    assert detect.entropy(logits)[1] == pytest.approx(np.log(3))
    assert detect.energy(logits)[1] == pytest.approx(-(1 + np.log(3)))
    scores = detect.gc_scores(torch.tensor([5.0, 9.0]), torch.log_softmax(logits, 1), torch.tensor([4.0, 5.0, 6.0]))
    assert set(scores) == set(detect.GC_SCORES) | {"max-softmax", "entropy"}
    assert set(detect.dc_scores(logits)) == set(detect.LOGIT_SCORES)


def test_detection_row():
    row = detect.detection_row("m", "s", np.arange(100), {"far": np.arange(1000, 1100), "same": np.arange(100)})
    assert row["far"] == 100.0 and row["same"] == 50.0 and row["mean AUROC"] == 75.0
    assert row["mean FPR95"] == pytest.approx(50.0, abs=3) and row["max SE"] > 0


@pytest.mark.parametrize("name", list(gclib.data.TRANSFORMS))
def test_transformed_sets_keep_shape_range_and_grid(name):
    x = torch.rand(6, 1, 28, 28)
    out = gclib.data.transformed(x, name)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    torch.testing.assert_close(out, torch.round(out * 255) / 255)
    assert not torch.allclose(out, torch.round(x * 255) / 255)


def test_transformed_unknown_name():
    with pytest.raises(DataError, match="unknown transform 'sheared'"):
        gclib.data.transformed(torch.rand(1, 1, 28, 28), "sheared")


def test_density_detection_auroc_reads_the_models_own_density_and_skips_models_without_one():
    class Density(torch.nn.Module):
        density_kind = "exact"

        def __init__(self):
            super().__init__()
            self.batches = []

        def log_px(self, x):
            self.batches.append(len(x))
            return -x.flatten(1).sum(1)  # brighter = less likely

    m = Density()
    clean, adv = torch.zeros(5, 1, 4, 4), torch.ones(3, 1, 4, 4)
    adv[0] = 0.0  # one adversarial image as likely as the clean ones: a tie with all five
    # AUROC = P(nll_adv > nll_clean) + ties / 2 = (2 * 5 + 0.5 * 5) / 15
    assert detect.density_detection_auroc(m, clean, adv, batch_size=2) == pytest.approx(12.5 / 15)
    assert m.batches == [2, 2, 1, 2, 1]
    assert detect.density_detection_auroc(torch.nn.Linear(2, 2), clean, adv) is None
    with pytest.raises(InputError, match="at least one"):
        detect.density_detection_auroc(m, clean[:0], adv)
