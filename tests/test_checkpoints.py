"""Checkpoints: safetensors + JSON, verified by sha256, never unpickled, written atomically."""

import json

import pytest
import torch

import gclib
from gclib import checkpoints

from .conftest import randomize, tiny_config


@pytest.fixture
def saved(tmp_path):
    model = randomize(gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0), scale=0.01)
    checkpoints.save(model, tmp_path / "m", beta="8", seed=0)
    return model, tmp_path / "m"


def test_round_trip_gives_identical_outputs(saved):
    model, path = saved
    x = torch.rand(3, 1, 28, 28)
    for p in [path, str(path) + ".json", str(path) + ".safetensors"]:
        loaded = gclib.load(p, device="cpu")
        torch.testing.assert_close(loaded.class_log_likelihoods(x), model.class_log_likelihoods(x), rtol=0, atol=0)
    manifest = json.loads((path.parent / "m.json").read_text())
    assert manifest["format"] == "gclib-checkpoint" and manifest["kind"] == "generative"
    assert manifest["config"]["model"]["name"] == "fashion-mnist-small" and manifest["info"]["beta"] == "8"
    assert len(manifest["sha256"]) == 64 and manifest["environment"]["torch"] == torch.__version__


def test_a_run_folder_loads_its_final_model(saved, tmp_path):
    model, _ = saved
    checkpoints.save(model, tmp_path / "run" / "final")
    assert isinstance(gclib.load(tmp_path / "run"), gclib.GenerativeClassifier)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(gclib.CheckpointError, match="no checkpoint manifest"):
        gclib.load(tmp_path / "nothing")


def test_truncated_weights_fail_the_sha256_check(saved):
    _, path = saved
    weights = path.parent / "m.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(gclib.CheckpointError, match="sha256"):
        gclib.load(path)
    with pytest.raises(gclib.CheckpointError, match="truncated or corrupt"):
        gclib.load(path, verify=False)


def test_truncated_manifest(saved):
    _, path = saved
    manifest = path.parent / "m.json"
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(gclib.CheckpointError, match="not valid JSON"):
        gclib.load(path)


def test_checkpoint_from_another_config(saved):
    _, path = saved
    other = gclib.GenerativeClassifier(tiny_config())
    with pytest.raises(gclib.CheckpointError, match="another config|differs"):
        gclib.load_into(other, path)
    with pytest.raises(gclib.CheckpointError, match="not 'cifar10'"):
        gclib.load(path, expect_config="cifar10")


def test_weights_of_another_architecture_under_a_valid_manifest(saved, tmp_path):
    _, path = saved
    small = gclib.GenerativeClassifier(tiny_config())
    checkpoints.save(small, tmp_path / "small")
    # put the tiny model's weights behind the fashion-mnist manifest (sha256 updated to pass)
    manifest = json.loads((path.parent / "m.json").read_text())
    (path.parent / "m.safetensors").write_bytes((tmp_path / "small.safetensors").read_bytes())
    manifest["sha256"] = checkpoints.sha256(path.parent / "m.safetensors")
    (path.parent / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(gclib.CheckpointError, match="does not fit"):
        gclib.load(path)


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])
def test_pickle_files_are_refused_not_unpickled(tmp_path, name):
    model = gclib.GenerativeClassifier(tiny_config())
    torch.save(model.state_dict(), tmp_path / name)
    with pytest.raises(gclib.CheckpointError, match="never unpickles"):
        gclib.load(tmp_path / "m")


def test_failed_save_keeps_the_previous_checkpoint(saved, monkeypatch):
    model, path = saved
    before = (path.parent / "m.safetensors").read_bytes()

    def broken(model, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_model", broken)
    with pytest.raises(OSError):
        checkpoints.save(model, path)
    assert (path.parent / "m.safetensors").read_bytes() == before
    assert not list(path.parent.glob(".m*tmp"))  # no temporary file left behind
    monkeypatch.undo()
    gclib.load(path)  # still valid


def test_fp64_model_round_trip(tmp_path):
    model = randomize(gclib.GenerativeClassifier(tiny_config()).double())
    checkpoints.save(model, tmp_path / "d")
    loaded = gclib.load(tmp_path / "d", device="cpu")
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    assert next(loaded.parameters()).dtype == torch.float64
    torch.testing.assert_close(loaded.log_px(x), model.log_px(x), rtol=0, atol=0)


# -- diffusion classifiers ----------------------------------------------------------------------------------
def _diffusion(weighting="uniform"):
    from gclib.diffusion import DiffusionClassifier, TinyUNet

    torch.manual_seed(0)
    return randomize(DiffusionClassifier(TinyUNet(1, 3, width=8, emb=16), 3, (1, 8, 8), n_pairs=6,
                                         weighting=weighting, stages=((3, 2), (6, 1)), seed=4, elbo_pairs=12))


@pytest.mark.parametrize("weighting", ["uniform", "elbo"])
def test_diffusion_round_trip_gives_identical_scores(tmp_path, weighting):
    from gclib.diffusion import DiffusionClassifier
    from gclib.score import ScoreClassifier

    model = _diffusion(weighting).eval()
    json_path = checkpoints.save(model, tmp_path / "dc", seed=4)
    manifest = json.loads(json_path.read_text())
    assert manifest["kind"] == "diffusion" and manifest["family"] == "diffusion" and len(manifest["sha256"]) == 64
    spec = manifest["diffusion"]
    assert spec["network"] == {"class": "TinyUNet", "in_channels": 1, "num_classes": 3, "width": 8, "emb": 16}
    assert (spec["seed"], spec["n_pairs"], spec["elbo_pairs"], spec["schedule"]["steps"]) == (4, 6, 12, 1000)
    loaded = gclib.load(tmp_path / "dc", device="cpu")
    assert isinstance(loaded, DiffusionClassifier) and loaded.weighting == weighting and not loaded.training
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.class_scores(x), model.class_scores(x))
        assert torch.equal(loaded.elbo(x)[0], model.elbo(x)[0]) and torch.equal(loaded.predict(x), model.predict(x))
        assert torch.equal(loaded.bits_per_dim(x), model.bits_per_dim(x))
    # One trained network, two readings: the score-based classifier of the loaded denoiser.
    score = ScoreClassifier.from_diffusion(loaded, steps=2)
    assert score.denoiser is loaded.denoiser and score.schedule == loaded.schedule and score.num_classes == 3
    assert torch.isfinite(score.class_scores(x)).all()
    # load_into an equal model; another model's checkpoint is refused
    fresh = _diffusion(weighting)
    with torch.no_grad():
        fresh.denoiser.out[-1].weight.add_(1.0)
    gclib.load_into(fresh, tmp_path / "dc")
    fresh.eval()  # eval mode keeps the weights channels_last, as the model's: the same kernels, the same bits
    assert torch.equal(fresh.class_scores(x), model.class_scores(x))
    other = _diffusion("elbo" if weighting == "uniform" else "uniform")
    with pytest.raises(gclib.CheckpointError, match="another diffusion model"):
        gclib.load_into(other, tmp_path / "dc")
    with pytest.raises(gclib.CheckpointError, match="diffusion"):
        gclib.load_into(gclib.GenerativeClassifier(tiny_config()), tmp_path / "dc")


def test_diffusion_checkpoint_is_verified_and_refuses_unknown_networks(tmp_path):
    from gclib.diffusion import DiffusionClassifier

    checkpoints.save(_diffusion(), tmp_path / "dc")
    weights = tmp_path / "dc.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(gclib.CheckpointError, match="sha256"):
        gclib.load(tmp_path / "dc")
    net = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(gclib.CheckpointError, match="TinyUNet"):
        checkpoints.save(DiffusionClassifier(net, 3, (1, 8, 8), n_pairs=2, elbo_pairs=2), tmp_path / "other")
    assert not (tmp_path / "other.json").exists()
    checkpoints.save(_diffusion(), tmp_path / "dc")  # the ELBO bank, rebuilt from its seed, must match its sha256
    good = json.loads((tmp_path / "dc.json").read_text())
    (tmp_path / "dc.json").write_text(json.dumps({**good, "elbo_bank_sha256": "0" * 64}))
    with pytest.raises(gclib.CheckpointError, match="noise bank"):
        gclib.load(tmp_path / "dc")
