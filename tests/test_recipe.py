"""The IB-INN recipe switches (issue 14): each changes what it should, and the new blocks stay exact flows."""

import dataclasses
import math

import pytest
import torch
from FrEIA.modules import GLOWCouplingBlock
from torch.autograd.functional import jacobian

import gclib
from gclib.ablation import VARIANTS, write_table
from gclib.samples import class_sample_quality, sample_quality
from gclib.configs import ModelConfig, TrainConfig, get_config, override_model
from gclib.errors import ConfigError, InputError
from gclib.modules import CouplingBlock, FCSubnet, ResNetSubnet
from gclib.train import _param_groups, ib_loss

from .conftest import randomize, tiny_config


def _soft_coupling(channels=4):
    return CouplingBlock([(channels, 2, 2)], subnet_constructor=lambda ci, co: ResNetSubnet(ci, co, 6, 0),
                         affine_clamping=0.7, permute_soft=True)


def test_soft_permutation_is_orthogonal_with_log_det_zero_and_inverts():
    torch.manual_seed(0)
    block = _soft_coupling().double()
    w = block.w_perm.detach().reshape(4, 4)
    torch.testing.assert_close(w @ w.T, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert not torch.allclose(w.abs(), (w.abs() > 0.5).double())  # not a hard permutation
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    # Only the permutation (and the global scale 1): the coupling part is the identity at zero init.
    (y,), log_det = block((x,))
    # (the global scale starts at 1 up to float32 rounding of its softplus parameter)
    torch.testing.assert_close(log_det, torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), atol=1e-6, rtol=1e-6)  # an orthogonal map of the channels
    randomize(block, scale=0.3)
    (y,), log_det = block((x,))
    (x_back,), log_det_rev = block((y.clone(),), rev=True)
    # FrEIA draws the orthogonal matrix in float32 and inverts by its transpose: exact up to float32 rounding.
    assert (x_back - x).abs().max() <= 1e-6
    torch.testing.assert_close(log_det, -log_det_rev, atol=1e-7, rtol=0)
    for i in range(3):
        jac = jacobian(lambda v: block((v[None],))[0][0][0].reshape(-1), x[i]).reshape(16, 16)
        assert abs(float(torch.linalg.slogdet(jac)[1]) - float(log_det[i].detach())) <= 1e-6


def test_fc_coupling_is_invertible_with_the_right_log_det():
    torch.manual_seed(0)
    block = GLOWCouplingBlock([(6,)], subnet_constructor=lambda d_in, d_out: FCSubnet(d_in, d_out, 8, 0.0),
                              clamp=2.0).double()
    randomize(block, scale=0.3)
    x = torch.randn(4, 6, dtype=torch.float64)
    (y,), log_det = block((x,))
    (x_back,), log_det_rev = block((y.clone(),), rev=True)
    assert (x_back - x).abs().max() <= 1e-10
    torch.testing.assert_close(log_det, -log_det_rev, atol=1e-10, rtol=0)
    for i in range(4):
        jac = jacobian(lambda v: block((v[None],))[0][0][0], x[i])
        assert abs(float(torch.linalg.slogdet(jac)[1]) - float(log_det[i].detach())) <= 1e-8


@pytest.mark.parametrize("over", [
    {"permutation": "soft"},
    {"fc_blocks": 1, "fc_width": 8, "fc_dropout": 0.5},
    {"subnet": "ibinn", "subnet_batchnorm": True, "stage_dropout": (0.0, 0.25)},
    {"permutation": "soft", "fc_blocks": 2, "fc_width": 8, "subnet": "ibinn", "subnet_batchnorm": True,
     "clamp": 0.7, "act_norm": 0.8},
])
def test_recipe_models_are_exact_flows_in_eval_mode(over):
    torch.manual_seed(0)
    model = randomize(gclib.GenerativeClassifier(tiny_config(**over)).double(), scale=0.2).eval()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    z, log_det = model._encode(x)
    assert (model.inverse(z) - x).abs().max() <= 1e-5  # soft permutations: float32-exact (see above)
    for i in range(3):
        jac = jacobian(lambda v: model._encode(v[None])[0][0], x[i]).reshape(16, 16)
        assert abs(float(torch.linalg.slogdet(jac)[1]) - float(log_det[i].detach())) <= 1e-6
    model.class_log_likelihoods(x).sum().backward()  # every parameter reachable
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_dropout_and_batchnorm_act_only_in_training_mode():
    torch.manual_seed(0)
    model = randomize(gclib.GenerativeClassifier(tiny_config(
        fc_blocks=1, fc_width=16, fc_dropout=0.5, subnet="ibinn", subnet_batchnorm=True)), scale=0.2)
    x = torch.rand(8, 1, 4, 4)
    model.train()
    assert not torch.equal(model.encode(x), model.encode(x))  # dropout draws differ
    model.eval()
    torch.testing.assert_close(model.encode(x), model.encode(x), rtol=0, atol=0)


def _optimal_margin(smoothing, classes=3, steps=3000):
    """Free logits of one example trained with smoothed cross-entropy: the margin they converge to."""
    logits = torch.zeros(1, classes, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(steps):
        _, _, l_y = ib_loss(logits, torch.zeros(classes), torch.tensor([0]), math.inf, 1, smoothing)
        opt.zero_grad()
        l_y.backward()
        opt.step()
    return float((logits[0, 0] - logits[0, 1:].max()).detach())


def test_label_smoothing_bounds_the_optimal_margin():
    s, c = 0.05, 3
    expected = math.log((1 - s + s / c) / (s / c))  # the minimiser of the smoothed cross-entropy
    assert abs(_optimal_margin(s, c) - expected) < 0.05
    assert _optimal_margin(0.0, c, steps=1500) > 2 * expected  # unsmoothed: keeps growing


def test_class_means_get_their_own_learning_rate_and_weight_decay():
    model = gclib.GenerativeClassifier(tiny_config())
    groups = _param_groups(model, weight_decay=1e-4, head_lr_scale=10.0, head_weight_decay=0.0)
    head = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups[1]["params"]} == head
    assert groups[1]["lr_scale"] == 10.0 and groups[1]["weight_decay"] == 0.0
    assert groups[0]["weight_decay"] == 1e-4 and not head & {id(p) for p in groups[0]["params"]}


def test_training_uses_label_smoothing_noise_and_head_groups(fashion, tmp_path):
    train, val, _ = fashion
    model = gclib.GenerativeClassifier(get_config("fashion-mnist-small").model)
    log = gclib.train.fit(model, train.subset(256), val.subset(64), beta=1, epochs=1, batch_size=64,
                          label_smoothing=0.02, input_noise=0.01, head_lr_scale=10, head_weight_decay=0.0,
                          out=tmp_path / "run", progress=False, seed=0)
    assert math.isfinite(log[-1]["train_loss"])
    info = gclib.checkpoints.read_manifest(tmp_path / "run" / "final")["info"]
    assert (info["label_smoothing"], info["input_noise"], info["head_lr_scale"]) == (0.02, 0.01, 10)


def test_bad_recipe_values_are_rejected_with_one_clear_error():
    with pytest.raises(ConfigError, match="permutation"):
        tiny_config(permutation="random")
    with pytest.raises(ConfigError, match="stage_dropout"):
        tiny_config(stage_dropout=(0.1,))
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ConfigError, match="input_noise"):
        TrainConfig(input_noise=-1)
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        override_model(tiny_config(), ["nonsense=1"])
    with pytest.raises(ConfigError, match="expected a value like"):
        override_model(tiny_config(), ["fc_blocks=many"])


def test_override_model_parses_by_field_type():
    cfg = override_model(tiny_config(), ["permutation=soft", "subnet_batchnorm=true", "stage_dropout=0,0.25",
                                         "clamp=0.7", "stage_blocks=3,1"])
    assert (cfg.permutation, cfg.subnet_batchnorm, cfg.stage_dropout, cfg.clamp, cfg.stage_blocks) == (
        "soft", True, (0.0, 0.25), 0.7, (3, 1))


def test_defaults_reproduce_the_shipped_small_model():
    # The new fields default to the small model's behaviour: shipped checkpoints load and give their numbers.
    cfg = get_config("fashion-mnist-small").model
    assert (cfg.permutation, cfg.fc_blocks, cfg.subnet_batchnorm, cfg.stage_dropout, cfg.act_norm) == (
        "hard", 0, False, (), 1.0)
    assert isinstance(get_config("fashion-mnist-large").model, ModelConfig)


def test_the_default_config_is_the_strong_recipe_and_old_checkpoints_keep_the_small_one():
    default, large = get_config("fashion-mnist"), get_config("fashion-mnist-large")
    assert dataclasses.replace(default.model, name=large.model.name) == large.model
    assert default.train.input_noise == 0.0 and default.train.label_smoothing == 0.02
    # a manifest written before the rename names the small architecture "fashion-mnist"
    old = gclib.Config(dataclasses.replace(get_config("fashion-mnist-small").model, name="fashion-mnist"))
    assert gclib.Config.from_dict(old.to_dict()).name == "fashion-mnist-small"
    # ... but a model of today's default keeps its name, and so does an unknown architecture
    assert gclib.Config.from_dict(default.to_dict()).name == "fashion-mnist"
    odd = gclib.Config(dataclasses.replace(old.model, low_rank=8))
    assert gclib.Config.from_dict(odd.to_dict()).name == "fashion-mnist"


def test_sample_quality_on_a_known_case():
    class Oracle(torch.nn.Module):  # says "class k" for an image of constant brightness k/10
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            k = (x.mean((1, 2, 3)) * 10).round().long().clamp(0, 9)
            return torch.nn.functional.one_hot(k, 10).float()

    labels = torch.arange(10).repeat(4)
    samples = (labels.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    samples[:10] = samples[:10].roll(1, 0)  # 10 of 40 drawn from the wrong class -> 75 %
    samples[0, 0, 0, 0] = 1.5  # one pixel of 640 outside [0, 1] (clipped before classifying)
    q = sample_quality(samples, labels, Oracle())
    assert q["accuracy"] == 0.75 and q["n"] == 40
    assert q["outside"] == pytest.approx(1 / 640)
    assert q["accuracy_se"] == pytest.approx((0.75 * 0.25 / 40) ** 0.5)
    with pytest.raises(InputError):
        sample_quality(samples[:3], labels, Oracle())


def test_ablation_variants_are_distinct_and_the_table_is_written(tmp_path):
    assert len({v.name for v in VARIANTS}) == len(VARIANTS)
    assert len({(v.config, v.args) for v in VARIANTS}) == len(VARIANTS)
    row = {"variant": "x", "accuracy": 0.9, "accuracy_se": 0.003, "bits_per_dim": 3.5, "latent_rms": 1.2,
           "sample_accuracy": 0.5, "sample_accuracy_se": 0.02, "sample_outside": 0.1, "train_time_s": 600.0,
           "epochs": 4, "beta": "1"}
    csv_path, md_path = write_table([row], tmp_path)
    assert "| x | 90.00 ± 0.30 | 3.500 | 1.20 | 50.0 ± 2.0 | 10.0 | 10.0 |" in md_path.read_text()
    assert csv_path.read_text().splitlines()[0].startswith("variant,accuracy")


def test_class_sample_quality_rows_and_capability_check():
    gc = randomize(gclib.GenerativeClassifier(tiny_config()), scale=0.05).eval()
    dc = gclib.FeedForwardClassifier.from_config(tiny_config(), seed=0).eval()
    rows = class_sample_quality(gc, dc, temperatures=(0.5, 1.0), n_per_class=4)
    assert [r["what"] for r in rows] == ["T=0.5", "T=1", "class means"]
    assert [r["n"] for r in rows] == [12, 12, 3]
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["outside"] <= 1 for r in rows)
    again = class_sample_quality(gc, dc, temperatures=(0.5, 1.0), n_per_class=4)
    assert rows == again  # seeded
    with pytest.raises(gclib.classifier.CapabilityError, match="sampling"):
        class_sample_quality(dc, dc)


def test_warm_start_records_its_lineage_and_starts_from_the_source(fashion, tmp_path):
    train, val, _ = fashion
    source = gclib.GenerativeClassifier(tiny_config(in_channels=1, image_size=28, num_classes=10, entry_downsamples=1,
                                                    stage_blocks=(1, 1), stage_widths=(4, 4), n_fc_dims=16,
                                                    low_rank=0))
    gclib.train.fit(source, train.subset(128), beta=1, epochs=1, batch_size=64, out=tmp_path / "a", progress=False)
    model = gclib.GenerativeClassifier(source.config)
    # lr ~ 0: the fine-tuned weights are the source's (a fresh model's means differ from them).
    gclib.train.fit(model, train.subset(128), beta=8, epochs=1, batch_size=64, out=tmp_path / "b", progress=False,
                    init_from=tmp_path / "a" / "final", lr=1e-12)
    torch.testing.assert_close(model.state_dict()["head.mu_fc"], source.state_dict()["head.mu_fc"])
    info = gclib.checkpoints.read_manifest(tmp_path / "b" / "final")["info"]
    assert info["init_from"]["beta"] == "1" and info["init_from"]["steps"] == 2
    assert info["init_from"]["sha256"] == gclib.checkpoints.read_manifest(tmp_path / "a" / "final")["sha256"]
    other = gclib.GenerativeClassifier(tiny_config())
    with pytest.raises(gclib.CheckpointError, match="differs"):
        gclib.train.fit(other, train.subset(128), epochs=1, batch_size=64, out=tmp_path / "c", progress=False,
                        init_from=tmp_path / "a" / "final")
