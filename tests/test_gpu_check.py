"""make gpu-check: the prepared command for a CUDA machine (its CPU-side contract)."""

from pathlib import Path

import pytest
import torch

from gclib import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_without_cuda_it_stops_with_one_clear_error_and_writes_nothing(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "g.json")]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()


def test_steps_fit_eight_minutes_and_name_real_files(tmp_path):
    steps = gpu_check.steps(tmp_path / "g.json", 3000)
    assert sum(limit for _, _, limit in steps) <= 8 * 60
    for path in gpu_check.CUDA_TESTS:
        assert Path(path).is_file()
    train = dict((name, cmd) for name, cmd, _ in steps)["train_large"]
    assert train[train.index("--config") + 1] == "fashion-mnist-large" and "--eval-test" in train
