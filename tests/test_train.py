"""The IB loss, the training loop: learning, determinism, kill/resume, non-finite losses, DDP."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gclib
from gclib.train import fit, ib_loss, learning_rate, shard_indices

from .conftest import randomize, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_ib_loss_against_hand_computed_values():
    cll = torch.tensor([[-10.0, -12.0, -11.0], [-20.0, -19.0, -25.0]], dtype=torch.float64)
    log_prior = torch.full((3,), -math.log(3), dtype=torch.float64)
    y = torch.tensor([0, 2])
    n_dims = 4
    # by hand: log p(x) = log(sum_y exp(cll) / 3); L_X = -mean log p(x) / D; L_Y = mean -log p(y|x)
    lpx = [math.log((math.exp(-10) + math.exp(-12) + math.exp(-11)) / 3),
           math.log((math.exp(-20) + math.exp(-19) + math.exp(-25)) / 3)]
    l_x = -(lpx[0] + lpx[1]) / 2 / n_dims
    l_y = -((-10 - math.log(3) - lpx[0]) + (-25 - math.log(3) - lpx[1])) / 2
    for beta, expected in [(0.0, l_x), (1.0, (l_x + l_y) / 2), (8.0, (l_x + 8 * l_y) / 9), (math.inf, l_y)]:
        loss, lx, ly = ib_loss(cll, log_prior, y, beta, n_dims)
        assert abs(float(lx) - l_x) < 1e-12 and abs(float(ly) - l_y) < 1e-12
        assert abs(float(loss) - expected) < 1e-12, beta


def test_every_parameter_receives_a_gradient():
    model = randomize(gclib.GenerativeClassifier(tiny_config()), scale=0.1)
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    cll, _ = model._class_log_likelihoods(x)
    loss, _, _ = ib_loss(cll, model.head.log_prior, y, 8.0, model.n_dims)
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_learning_rate_schedule_is_a_pure_function():
    lrs = [learning_rate(s, 100, 1.0, "onecycle", 0.1) for s in range(101)]
    assert lrs[0] < lrs[5] < lrs[10] and max(lrs) == pytest.approx(1.0) and lrs[100] < 1e-3
    assert learning_rate(3, 100, 1.0, "constant", burn_in_steps=5) == pytest.approx(0.1)
    assert learning_rate(50, 100, 1.0, "cosine") == pytest.approx(0.5)


def test_short_training_run_learns_fashion_mnist(fashion, tmp_path):
    train, val, test = fashion
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    history = fit(model, train.subset(3000), val.subset(500), beta=8, epochs=2, batch_size=64, lr=2e-3,
                  out=tmp_path / "run", progress=False)
    assert len(history) == 2 and history[-1]["val_accuracy"] > history[0]["val_accuracy"] - 0.05
    result = gclib.train.evaluate(model, test.subset(1000))
    assert result["accuracy"] > 0.6  # chance is 0.1
    assert math.isfinite(result["bits_per_dim"])
    loaded = gclib.load(tmp_path / "run" / "final")
    assert gclib.train.evaluate(loaded, test.subset(1000))["correct"] == result["correct"]
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3


def _small_run(train, out, **kw):
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=1)
    fit(model, train, None, beta=4, epochs=2, batch_size=32, lr=1e-3, seed=1, out=out, progress=False, **kw)
    return model.state_dict()


def test_seeded_runs_are_deterministic(fashion, tmp_path):
    train = fashion[0].subset(256)
    a = _small_run(train, tmp_path / "a")
    b = _small_run(train, tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_and_resumed_run_gives_bit_identical_weights(fashion, tmp_path):
    train = fashion[0].subset(256)
    reference = _small_run(train, tmp_path / "ref", checkpoint_every=3)

    class Crash(Exception):
        pass

    def crash(step, loss):
        if step == 13:  # after the checkpoint at step 12, in the second epoch
            raise Crash

    with pytest.raises(Crash):
        _small_run(train, tmp_path / "run", checkpoint_every=3, callback=crash)
    assert not (tmp_path / "run" / "final.json").exists()
    resumed = _small_run(train, tmp_path / "run", checkpoint_every=3, resume=True)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_worker_processes_kept_across_epochs_give_the_same_run(fashion, tmp_path):
    # One DataLoader serves every epoch (persistent workers); it must still read each epoch's order.
    train = fashion[0].subset(96)
    a = _small_run(train, tmp_path / "a")
    b = _small_run(train, tmp_path / "b", num_workers=1)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_process_shards_are_disjoint_whole_batches_of_the_epoch_order(world):
    n, batch = 103, 8
    shards = [shard_indices(n, seed=5, epoch=1, rank=r, world=world, batch_size=batch) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) % batch == 0
    seen = torch.cat(shards)
    assert len(set(seen.tolist())) == len(seen) and n - len(seen) < world * batch  # disjoint, nearly all
    order = shard_indices(n, seed=5, epoch=1, batch_size=1)
    assert torch.equal(shards[0], order[::world][: len(shards[0])])  # DistributedSampler's round-robin deal
    assert not torch.equal(order, shard_indices(n, seed=5, epoch=2, batch_size=1))  # a new order each epoch


def test_resuming_mid_epoch_on_another_number_of_processes_warns():
    assert gclib.train._rebatch(6, 2, 2, 0) == 6 and gclib.train._rebatch(0, 2, 1, 0) == 0
    with pytest.warns(UserWarning, match="2 process"):
        assert gclib.train._rebatch(3, 2, 1, 0) == 6  # 3 batches on each of 2 processes = 6 on one


def test_existing_run_is_not_overwritten_without_resume(fashion, tmp_path):
    train = fashion[0].subset(64)
    _small_run(train, tmp_path / "run")
    with pytest.raises(gclib.TrainingError, match="resume"):
        _small_run(train, tmp_path / "run")


def test_a_transient_non_finite_loss_is_skipped(fashion, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = gclib.train.ib_loss

    def sometimes_nan(*args):
        calls["n"] += 1
        loss, l_x, l_y = real(*args)
        return (loss * float("nan"), l_x, l_y) if calls["n"] == 3 else (loss, l_x, l_y)

    monkeypatch.setattr(gclib.train, "ib_loss", sometimes_nan)
    state = _small_run(fashion[0].subset(128), tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_persistent_non_finite_loss_stops_and_keeps_the_last_checkpoint(fashion, tmp_path, monkeypatch):
    train = fashion[0].subset(128)
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=1)
    fit(model, train, None, beta=4, epochs=1, batch_size=32, out=tmp_path / "run", progress=False)
    good = (tmp_path / "run" / "last.json").read_text()
    real = gclib.train.ib_loss
    monkeypatch.setattr(gclib.train, "ib_loss", lambda *a: tuple(v * float("nan") for v in real(*a)))
    with pytest.raises(gclib.TrainingError, match="non-finite"):
        fit(model, train, None, beta=4, epochs=3, batch_size=32, out=tmp_path / "run", resume=True,
            progress=False, max_bad_steps=3)
    assert (tmp_path / "run" / "last.json").read_text() == good
    record = gclib.checkpoints.read_training_state(tmp_path / "run")  # sha256s still match
    assert record["epoch"] == 1


def test_feed_forward_baseline_trains(fashion, tmp_path):
    train, _, test = fashion
    model = gclib.FeedForwardClassifier.from_config("fashion-mnist-small", seed=0, stem_stride=2)
    fit(model, train.subset(1024), None, epochs=2, batch_size=64, lr=2e-3, out=tmp_path / "dc", progress=False)
    assert gclib.train.evaluate(model, test.subset(500))["accuracy"] > 0.5
    loaded = gclib.load(tmp_path / "dc" / "final")
    assert isinstance(loaded, gclib.FeedForwardClassifier)
    x, _ = test[:8]
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_cli_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "gclib.train", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for option in ["--config", "--beta", "--epochs", "--out", "--resume", "--device", "--seed", "torchrun"]:
        assert option in out.stdout


def test_cli_rejects_a_bad_beta_with_one_clear_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gclib.train", "--beta", "-1", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "beta must be a number >= 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_torchrun_two_cpu_processes_then_resume_on_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    # --standalone: a free port (a fixed one collides with another suite running beside this one)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "gclib.train", "--config", "fashion-mnist-small", "--train-subset", "256", "--epochs", "1",
           "--batch-size", "32", "--device", "cpu", "--out", str(tmp_path / "ddp"), "--no-progress", "--beta", "8"]
    # the limit guards against a hang: about 20 s on idle cores, many times that beside a CPU-heavy job
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = gclib.checkpoints.read_manifest(tmp_path / "ddp" / "final")
    assert manifest["info"]["processes"] == 2 and manifest["info"]["steps"] == 4  # 256 / 2 / 32
    # rank 0 alone logs and checkpoints: one log row for the epoch, one training state
    assert (tmp_path / "ddp" / "log.csv").read_text().count("\n") == 2
    assert len(list((tmp_path / "ddp").glob("state-*.optim.safetensors"))) == 1
    state = gclib.checkpoints.read_training_state(tmp_path / "ddp")
    assert state["processes"] == 2 and state["step"] == 4
    # the state written by 2 processes resumes in 1
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    history = fit(model, gclib.data.load()[0].subset(256, seed=0), None, beta=8, epochs=2, batch_size=32,
                  out=tmp_path / "ddp", resume=True, progress=False, device="cpu")
    assert [row["epoch"] for row in history] == [1, 2]
