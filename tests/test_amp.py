"""The fast paths: bf16 autocast keeps log p(x) accurate, channels_last and torch.compile give the same
numbers, the training step reads nothing back from the device between logging intervals, and the
on-device skip of non-finite steps equals the host-side one."""

import shutil

import sys

import pytest
import torch

import gclib
from gclib import train
from gclib.modules import float32

from .conftest import randomize, tiny_config

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)  # CPU autocast: the same code path as CUDA's, runs in CI


def _bits_per_dim_error(model, x):
    with torch.no_grad():
        reference = model.bits_per_dim(x)
        with torch.autocast(**BF16):
            mixed = model.bits_per_dim(x)
    assert mixed.dtype == torch.float32
    return (mixed - reference).abs()


def test_gaussian_head_is_float32_under_autocast():
    model = randomize(gclib.GenerativeClassifier("fashion-mnist-small"), scale=0.05)
    z = 3 * torch.randn(16, model.n_dims)
    reference = model.head.log_density(z)
    with torch.autocast(**BF16):
        mixed = model.head.log_density(z)
    # bitwise: autocast would otherwise run the z @ mu products in bf16
    assert mixed.dtype == torch.float32 and torch.equal(mixed, reference)


def test_float32_helper_switches_autocast_off():
    x = torch.ones(2, dtype=torch.bfloat16)
    with torch.autocast(**BF16):
        y, ctx = float32(x)
        with ctx:
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert y.dtype == torch.float32


def test_bf16_log_px_of_a_shipped_model_is_close_to_float32():
    model = gclib.pretrained("fashion-mnist", beta="8", device="cpu")
    x, _ = gclib.data.load("fashion-mnist")[2].subset(128, seed=0).tensors()
    x = gclib.data.dequantize(x, torch.Generator().manual_seed(0))
    error = _bits_per_dim_error(model, x)
    # With the whole flow in bf16 (before the float32 paths) this was 0.0048 (median) and 0.021 (max)
    # bits/dim on these images; with the subnetworks alone in bf16 it is about 8 times smaller.
    assert float(error.median()) < 0.002 and float(error.max()) < 0.01
    with torch.no_grad(), torch.autocast(**BF16):
        mixed = model.predict(x)
    assert (mixed == model.predict(x)).float().mean() >= 0.99


def test_amp_training_keeps_float32_weights(fashion, tmp_path):
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    fit_kw = dict(beta=8, epochs=1, batch_size=16, max_steps=3, progress=False, device="cpu")
    train.fit(model, fashion[0].subset(64), None, amp=True, out=tmp_path / "amp", **fit_kw)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert gclib.checkpoints.read_manifest(tmp_path / "amp" / "final")["info"]["amp"] is True


def test_channels_last_gives_the_same_numbers(fashion, tmp_path):
    x, _ = fashion[2][:32]
    model = randomize(gclib.GenerativeClassifier("fashion-mnist-small"), scale=0.05).eval()
    reference = model.class_log_likelihoods(x).detach()
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model.class_log_likelihoods(x).detach(), reference, rtol=1e-5, atol=1e-3)
    # training in NHWC writes an ordinary checkpoint that loads into a fresh (NCHW) model
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    train.fit(model, fashion[0].subset(64), None, beta=8, epochs=1, batch_size=16, max_steps=2, progress=False,
              device="cpu", channels_last=True, out=tmp_path / "cl")
    loaded = gclib.load(tmp_path / "cl" / "final")
    # The trained model is NHWC, the loaded one NCHW: their convolutions round differently (float32).
    torch.testing.assert_close(loaded.class_log_likelihoods(x), model.eval().class_log_likelihoods(x), rtol=1e-5,
                               atol=1e-3)


def _cxx_compiler() -> str | None:
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.skipif(_cxx_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler (none on PATH)")
def test_fit_compile_trains_like_eager_mode(tmp_path):
    # A 4x4 config with one block per stage keeps the compilation short; the Fashion-MNIST model takes
    # minutes on 2 cores. One compilation: the training graph (forward and backward of model and loss).
    images = gclib.data.ImageDataset((torch.rand(48, 1, 4, 4) * 255).to(torch.uint8), torch.randint(0, 3, (48,)))
    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model = gclib.GenerativeClassifier.from_config(tiny_config(stage_blocks=(1, 1)), seed=0)
        runs[compiled] = train.fit(model, images, None, beta=8, epochs=1, batch_size=16, lr=1e-3, progress=False,
                                   device="cpu", compile=compiled, out=tmp_path / str(compiled))[0], model
    torch._dynamo.reset()
    (eager_row, eager), (compiled_row, compiled) = runs[False], runs[True]
    assert compiled_row["train_loss"] == pytest.approx(eager_row["train_loss"], rel=1e-4)
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert gclib.checkpoints.read_manifest(tmp_path / "True" / "final")["info"]["compile"] is True


def _steps(fused_path: bool, optimizer: str):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt, fused = train.make_optimizer(optimizer, list(model.parameters()), lr=0.1, weight_decay=1e-4)
    assert fused  # CPU has fused Adam and SGD kernels
    for step in range(5):
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        if step == 2:
            model.weight.grad[0, 0] = float("nan")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        finite = train.optimizer_step(opt, grad_norm, fused=fused_path)
        assert bool(finite) == (step != 2)
    return model.state_dict(), opt.state_dict()["state"]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_on_device_skip_equals_the_host_check(optimizer):
    weights_a, state_a = _steps(True, optimizer)
    weights_b, state_b = _steps(False, optimizer)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    for index in state_a:
        for key, value in state_a[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[index][key])), (optimizer, key)
    if optimizer == "adam":
        assert float(state_a[0]["step"]) == 4  # the skipped step is not counted


def test_training_step_reads_from_the_device_only_at_logging_intervals(fashion, monkeypatch):
    # On a GPU the loop reads device values every log_every steps; force that schedule on the CPU and
    # count every way a tensor reaches the host.
    monkeypatch.setattr(train, "_check_interval", lambda device, log_every: log_every)
    reads = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *args, _real=real, **kwargs):
            # The dataset's own fetch turns its CPU labels into Python ints (PyTorch's __getitems__ contract:
            # a list of samples) before the batch goes to the device: that is no device sync, not counted.
            if sys._getframe(1).f_code.co_filename != gclib.data.__file__:
                reads["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    model = gclib.GenerativeClassifier.from_config("fashion-mnist-small", seed=0)
    train.fit(model, fashion[0].subset(24 * 8), None, beta=8, epochs=1, batch_size=8, log_every=8, progress=False,
              device="cpu")
    # 24 steps: 3 checks of the non-finite counter (2 reads each), the optimizer's first step, the epoch's
    # sums and the final check (12 reads when written); one read per step would be 24 or more.
    assert reads["n"] <= 14, reads


def test_cpu_allocator_tuning_is_idempotent():
    import platform

    first, second = train.tune_cpu_allocator(), train.tune_cpu_allocator()
    assert first == second
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert first

