"""The benchmark command runs and reports its figures (the figures themselves are not asserted)."""

import json

from gclib import bench


def test_benchmark_reports_throughput_and_memory(tmp_path):
    result = bench.benchmark("fashion-mnist", device="cpu", batch_size=8, eval_batch_size=16, steps=1, repeats=1)
    assert result["train_images_per_s"] > 0 and result["eval_images_per_s"] > 0
    assert 0 < result["peak_memory_gib"] < 24
    assert bench.main(["--device", "cpu", "--batch-size", "8", "--eval-batch-size", "8", "--steps", "1",
                       "--repeats", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["config"] == "fashion-mnist"
