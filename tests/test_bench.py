"""The benchmark command: its record, the GC/DC ratios, and the table that accumulates across runs
(the measured rates themselves are machine-dependent and not asserted)."""

import csv
import json

import pytest
import torch

from gclib import bench

TINY = dict(batch_size=4, eval_batch_size=8, steps=1, repeats=2, warmup=1)


@pytest.fixture(scope="module")
def record():
    return bench.benchmark("fashion-mnist-small", device="cpu", **TINY)


def test_record_has_both_models_and_their_ratios(record):
    gc, dc = record["gc"], record["dc"]
    for result in (gc, dc):
        for part in ("train", "eval"):
            assert result[part]["images_per_s"] > 0 and len(result[part]["runs"]) == 2
            assert result[part]["cpu_ms_per_image"] > 0
        assert 0 < result["train_memory_mib"] < 8 * 1024
    assert gc["arch"] == "GC" and dc["arch"] == "resnet18, stem stride 2"
    assert record["train_ratio"] == pytest.approx(gc["train"]["images_per_s"] / dc["train"]["images_per_s"], rel=1e-2)
    assert record["eval_ratio"] == pytest.approx(gc["eval"]["images_per_s"] / dc["eval"]["images_per_s"], rel=1e-2)
    # parameters: the GC of table_architectures, ResNet-18 on one channel
    assert gc["parameters"] == 147_936 and dc["parameters"] == 11_172_810
    assert record["device"].startswith("CPU") and record["precision"] == "fp32"
    assert record["environment"]["torch"] == torch.__version__


def test_cpu_time_resolves_a_window_far_shorter_than_a_clock_tick():
    # A window of ~0.1 ms of work: a tick-based clock (os.times, 10 ms) reads 0 for it almost always, so on a
    # fast machine the record's CPU time per image was 0.0. process_time resolves it.
    timed = bench._timed_windows(lambda: sum(range(2000)), 1, 1, 1, torch.device("cpu"))
    assert 0 < timed["cpu_ms_per_image"] < 1000


def test_records_merge_by_config_device_batch_and_precision(record):
    other = dict(record, batch_size=8)
    replaced = dict(record, gc=dict(record["gc"], arch="replaced"))
    merged = bench.merge_records([record, other], [replaced])
    assert len(merged) == 2 and [r["gc"]["arch"] for r in merged] == ["replaced", "GC"]
    assert len(bench.merge_records(merged, [dict(record, precision="bf16 autocast")])) == 3


def test_table_rows_accumulate_across_invocations(tmp_path, record):
    bench.save_results([record], tmp_path)
    bench.save_results([dict(record, device="NVIDIA H100", device_type="cuda")], tmp_path)
    json_path, csv_path, md_path, png_path, svg_path = bench.save_results([record], tmp_path)  # replaces row 1
    records = bench.load_records(json_path)
    assert [r["device"] for r in records] == [record["device"], "NVIDIA H100"]  # CPU rows first
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and list(rows[0]) == list(bench.TABLE_HEADERS)
    assert float(rows[0]["train_ratio"]) == pytest.approx(record["train_ratio"], rel=0.01)  # 3 significant digits
    md = md_path.read_text()
    assert md.count("\n") == 4 and "GC/DC train" in md and "NVIDIA H100" in md


def test_command_line_writes_json_and_table(tmp_path):
    args = ["--device", "cpu", "--batch-size", "2,4", "--eval-batch-size", "4", "--steps", "1", "--repeats", "1",
            "--warmup", "0", "--no-dc", "--figures", str(tmp_path / "fig"), "--json", str(tmp_path / "run.json")]
    assert bench.main(args) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert [r["batch_size"] for r in run] == [2, 4] and all(r["dc"] is None for r in run)
    table = (tmp_path / "fig" / "table_throughput.md").read_text()
    assert table.count("| fashion-mnist |") == 2
    assert bench.main(args[:3] + ["2"] + args[4:]) == 0  # the same measurement again: replaced, not added
    assert (tmp_path / "fig" / "table_throughput.md").read_text().count("| fashion-mnist |") == 2
    assert (tmp_path / "fig" / "fig_throughput.png").stat().st_size > 0  # GC-only records plot too
    assert (tmp_path / "fig" / "fig_throughput.svg").is_file()


def test_throughput_figure_draws_each_record_and_its_ratio(record):
    other = dict(record, device="CPU, 9 threads", gc={**record["gc"], "train": {**record["gc"]["train"],
                                                                                 "images_per_s": 123.0}})
    fig = bench.plot_throughput([record, other])
    (train_ax, eval_ax), = [fig.axes[:2]]
    widths = [bar.get_width() for bar in train_ax.patches]
    assert widths == pytest.approx([record["gc"]["train"]["images_per_s"], 123.0,
                                    record["dc"]["train"]["images_per_s"], record["dc"]["train"]["images_per_s"]])
    ratios = [t.get_text() for t in train_ax.texts]
    assert ratios == [f"{r['gc']['train']['images_per_s'] / r['dc']['train']['images_per_s']:.2f}x"
                      for r in (record, other)]
    assert len(eval_ax.patches) == 4 and train_ax.get_xlim()[0] == 0  # linear axis from zero
    with pytest.raises(bench.ConfigError, match="no benchmark records"):
        bench.plot_throughput([])


def test_suite_measures_fashion_mnist_and_a_small_imagenet_batch_on_cpu():
    runs = bench.suite(torch.device("cpu"))
    assert runs[0] == {"config": "fashion-mnist-small"} and runs[-1]["config"] == "imagenet"
    assert runs[-1]["batch_size"] <= 4
    gpu = bench.suite(torch.device("cuda"))
    assert {r["batch_size"] for r in gpu if r["config"] == "imagenet"} == {32, 64, 128}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_one_clear_error(tmp_path, capsys):
    assert bench.main(["--device", "cuda", "--no-table"]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


def test_table_architectures_takes_its_measured_columns_from_the_records(record):
    from gclib import architectures

    empty = architectures.measured_columns("cifar10", [record])
    assert set(empty) == set(architectures.MEASURED_HEADERS) and set(empty.values()) == {""}
    gpu = dict(record, device="NVIDIA H100", device_type="cuda", batch_size=2)
    columns = architectures.measured_columns("fashion-mnist-small", [record, gpu])
    assert columns["measured_on"].startswith("NVIDIA H100, batch 2")  # a GPU's record first
    assert columns["gc_train_images_per_s"] == bench.table_rows([gpu])[0]["gc_train_images_per_s"]
    (row,) = architectures.architecture_rows("fashion-mnist-small", flops=False, records=[record])
    assert row["measured_on"].startswith("CPU") and list(row)[-5:] == list(architectures.MEASURED_HEADERS)
    # the table's DC has a stride-1 stem, the benchmark's the model zoo's stride 2: the cell says so
    assert row["dc_arch"] != record["dc"]["arch"] and row["measured_on"].endswith(f"; DC {record['dc']['arch']}")
    two_threads = dict(record, device="CPU, 2 threads", threads=record["threads"] + 1)
    assert architectures.measured_columns("fashion-mnist-small", [record, two_threads])["measured_on"].startswith("CPU, 2")
