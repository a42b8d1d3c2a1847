"""table_architectures: parameter counts, latent split and FLOPs of the named configs, and its notebook."""

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gclib import architectures
from gclib.configs import get_config
from gclib.model import FeedForwardClassifier, GenerativeClassifier

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rows():
    # FLOPs for all three: the ImageNet forward passes (1 and 2 images) take well under a second.
    return {r["config"]: r for r in architectures.architecture_rows(flops=True)}


def test_rows_have_every_column_in_order(rows):
    for row in rows.values():
        assert list(row) == list(architectures.HEADERS)
        assert all(type(v) in (int, float, str) for v in row.values()), row
    assert list(architectures.headers(["config", "unknown"]).values()) == ["config", "unknown"]


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10"])
def test_parameter_counts_match_fresh_models(rows, name):
    row = rows[name]
    gc, dc = GenerativeClassifier(name), FeedForwardClassifier(name)
    assert row["gc_params"] == sum(p.numel() for p in gc.parameters())
    assert row["gc_trainable_params"] == sum(p.numel() for p in gc.parameters() if p.requires_grad)
    assert row["gc_head_params"] == sum(p.numel() for p in gc.head.parameters())
    assert row["dc_params"] == sum(p.numel() for p in dc.parameters())
    assert row["dc_arch"].startswith("resnet18")


def test_imagenet_row(rows):
    row = rows["imagenet"]
    assert row["dc_arch"] == "resnet50" and row["dc_params"] == 25_557_032  # torchvision's ResNet-50
    assert row["dc_gflops"] == pytest.approx(8.18, abs=0.01)  # 4.09 GMACs, the usual ResNet-50 figure
    # head: mu_fc [1000, 3072] + coeff [1000, 128] + basis [128, 147456]
    assert row["gc_head_params"] == 1000 * 3072 + 1000 * 128 + 128 * 147456
    assert row["gc_trainable_params"] < row["gc_params"]  # FrEIA's fixed permutation matrices


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "imagenet"])
def test_latent_split(rows, name):
    row, cfg = rows[name], get_config(name).model
    assert row["latent_dims"] == math.prod(cfg.input_shape) == math.prod(cfg.latent_shape)
    assert row["full_mean_dims"] + row["low_rank_dims"] == row["latent_dims"]
    assert row["full_mean_dims"] == cfg.n_fc_dims and row["low_rank"] == cfg.low_rank
    assert row["coupling_blocks"] == sum(int(b) for b in row["stages"].split("+"))
    assert row["input_shape"] == "x".join(map(str, cfg.input_shape))


def test_flop_counter_matches_hand_counts():
    assert architectures.forward_flops(nn.Linear(5, 3), torch.zeros(4, 5)) == 2 * 4 * 5 * 3
    conv = nn.Conv2d(2, 3, 3, padding=1)
    assert architectures.forward_flops(conv, torch.zeros(1, 2, 8, 8)) == 2 * 8 * 8 * 3 * 2 * 9
    assert architectures.forward_flops(torch.relu, torch.zeros(100)) == 0  # elementwise: not counted


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "imagenet"])
def test_gc_flops_are_affine_in_the_batch(rows, name):
    row = rows[name]
    # the per-call part is exactly basis @ basis.T and coeff @ (.) of the low-rank class means
    assert row["gc_fixed_gflops"] == pytest.approx(architectures.low_rank_norm_flops(name) / 1e9, rel=1e-3)
    assert row["gc_gflops"] > 0 and row["dc_gflops"] > 0
    if name == "imagenet":
        return
    gc = GenerativeClassifier(name).eval()
    per_image, per_call = architectures.batch_flops(gc.class_log_likelihoods, gc.config.input_shape)
    three = architectures.forward_flops(gc.class_log_likelihoods, torch.rand(3, *gc.config.input_shape))
    assert three == per_call + 3 * per_image


def test_flops_false_leaves_out_the_flop_columns():
    (row,) = architectures.architecture_rows("fashion-mnist", flops=False)
    assert not any(k.endswith("gflops") for k in row)


def test_notebook_writes_the_table(tmp_path):
    jupytext = pytest.importorskip("jupytext")
    papermill = pytest.importorskip("papermill")
    pytest.importorskip("myst_nb")
    pytest.importorskip("pandas")
    import nbformat

    nb = jupytext.read(ROOT / "notebooks" / "architectures.py")
    source = tmp_path / "architectures.ipynb"
    nbformat.write(nb, source)
    papermill.execute_notebook(str(source), str(tmp_path / "architectures.out.ipynb"), kernel_name="python3",
                               cwd=str(ROOT), progress_bar=False,
                               parameters={"figures": str(tmp_path / "fig"), "configs": "fashion-mnist-small,cifar10"})
    with open(tmp_path / "fig" / "table_architectures.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["config"] for r in table] == ["fashion-mnist-small", "cifar10"]
    md = (tmp_path / "fig" / "table_architectures.md").read_text()
    assert "GC parameters" in md and "147,936" in md
