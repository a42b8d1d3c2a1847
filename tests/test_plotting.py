"""Figure files are reproducible: the same figure gives the same PNG and SVG bytes in every process and run,
so that after `make book` a changed file in figures/ means a changed figure."""

import filecmp
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from gclib import plotting  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# A figure with what the book's figures hold: lines, bars, a hatch, an image, markers, a scatter (a path
# collection), a log axis, a legend, subfigures and constrained layout.
DRAW = """
import sys
import numpy as np
import matplotlib.pyplot as plt
from gclib import plotting

style = sys.argv[2]
if style == "plain":  # a figure made without gclib's style: savefig alone must make it reproducible
    fig = plt.figure(figsize=(6, 4), layout="constrained")
else:
    fig = plotting.figure()[0]  # the book's style
    fig.clf()
    fig.set_size_inches(6, 4)
top, bottom = fig.subfigures(2, 1)
a, b = top.subplots(1, 2)
rng = np.random.default_rng(0)
a.plot(np.arange(10), rng.normal(size=10), marker="o", label="line")
a.bar([1, 2, 3], [3, 1, 2], hatch="//", label="bars")
a.legend()
b.imshow(rng.random((8, 8)), cmap="RdBu_r")
c, d = bottom.subplots(1, 2)
c.scatter(rng.random(30), rng.random(30), s=8, c=rng.random(30))
c.set_xscale("log")
d.boxplot([rng.normal(size=20), rng.normal(size=20)])
plotting.savefig(fig, "fig_test", sys.argv[1])
"""


def _draw(folder: Path, style: str, hash_seed: str) -> None:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, "-c", DRAW, str(folder), style], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=600)  # a hang guard: seconds on an idle machine
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("style", ["gclib", "plain"])
def test_the_same_figure_gives_the_same_bytes_in_two_processes(tmp_path, style):
    _draw(tmp_path / "a", style, "1")
    _draw(tmp_path / "b", style, "2")  # another process, another string-hash seed
    for name in ("fig_test.png", "fig_test.svg"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
    svg = (tmp_path / "a" / "fig_test.svg").read_text()
    assert "<dc:date>" not in svg and 'clip-path="url(#clip1)"' in svg
    assert b"Software" not in (tmp_path / "a" / "fig_test.png").read_bytes()


def test_clip_path_ids_ignore_float_noise_below_the_printed_precision():
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    def svg(nudge):
        fig = plt.figure(figsize=(4, 3))
        ax = fig.add_axes([0.1 + nudge, 0.1, 0.8, 0.8])  # the axes moved by 4e-11 px: the same drawing
        ax.plot([0, 1, 2], [1, 3, 2])
        ax.imshow([[0, 1], [1, 0]], extent=(0, 1, 0, 1))
        ax.set_xticks([]), ax.set_yticks([])  # text sits on a 1/64 px grid, at the 6 decimals' rounding edge
        buffer = io.StringIO()
        with mpl.rc_context(plotting.DETERMINISTIC_RC):
            fig.savefig(buffer, format="svg", metadata={"Date": None})
        plt.close(fig)
        return buffer.getvalue()

    a, b = svg(0.0), svg(1e-13)
    assert a != b  # matplotlib alone names the clip paths by a hash of their full-precision rectangles
    assert plotting.stable_svg_ids(a) == plotting.stable_svg_ids(b)
    fixed = plotting.stable_svg_ids(a)
    assert fixed.count('<clipPath id="clip1">') == 1 and fixed.count("url(#clip1)") == a.count("url(#")


def test_the_same_figure_drawn_again_in_one_process_gives_the_same_bytes(tmp_path):
    # fig_evidence's layout: subfigures under constrained layout, whose solver (kiwisolver) returns positions
    # that differ in the last bits with the process's memory; one of them sits at a rounding tie of the SVG's
    # 6 decimals, so without the rounded layout the first and the later drawings differ.
    import matplotlib.pyplot as plt
    import torch

    from gclib import latent

    g = torch.Generator().manual_seed(0)
    rows = [{"image": torch.rand(1, 28, 28, generator=g), "evidence": torch.randn(784, generator=g), "a": 1, "b": 2,
             "dims": torch.arange(3), "kind": "x", "changes": 0.1 * torch.randn(3, 1, 28, 28, generator=g)}
            for _ in range(6)]
    betas = ["1", "8", "32", "∞"]
    curves = {f"GC β={b}": torch.linspace(0, 1, 784) ** (i + 1) for i, b in enumerate(betas)}
    shares = {f"GC β={b}": torch.rand(1000, generator=g) for b in betas}
    files = []
    for run in range(3):
        fig = latent.plot_evidence(rows, [f"d{i}" for i in range(784)], curves, shares, 16)
        files.append([p.read_bytes() for p in plotting.savefig(fig, "fig_evidence", tmp_path / str(run))])
        plt.close(fig)
        other, axes = plotting.figure(2, 2)  # something else drawn in between, as in a notebook
        axes[0][0].plot(range(10))
        plotting.savefig(other, "other", tmp_path / "other")
        plt.close(other)
    assert files[0] == files[1] == files[2]


# What the models notebook draws from the shipped manifests alone (no model is run), so the same on every machine.
FROM_MANIFESTS = [f"{i}{s}" for i in ("fig_beta_tradeoff", "fig_training_curves") for s in (".png", ".svg")] + \
    ["table_models.csv", "table_models.md"]


def test_a_notebook_run_twice_writes_the_same_files_as_the_repository(tmp_path):
    """The models notebook (the smallest that draws figures), run twice, writes the same bytes, and those of the
    figures it draws from the manifests are the repository's: a rebuild leaves them unchanged."""
    pytest.importorskip("papermill")
    from gclib import book

    for run in ("a", "b"):
        book.run_notebooks("smoke", executed=tmp_path / run / "executed", figures=tmp_path / run / "figures",
                           work=tmp_path / run / "work", only=["models"], log=lambda *a: None)
    written = sorted(p.name for p in (tmp_path / "a" / "figures").iterdir())
    assert set(FROM_MANIFESTS) <= set(written)
    for name in written:
        assert filecmp.cmp(tmp_path / "a" / "figures" / name, tmp_path / "b" / "figures" / name, shallow=False), name
    for name in FROM_MANIFESTS:
        assert filecmp.cmp(tmp_path / "a" / "figures" / name, ROOT / "figures" / name, shallow=False), \
            f"figures/{name} is not what notebooks/models.py writes from the manifests now: run make book"


def test_every_svg_in_the_repository_has_numbered_clip_paths():
    for path in sorted((ROOT / "figures").glob("*.svg")):
        text = path.read_text()
        assert plotting.stable_svg_ids(text) == text, f"{path.name}: clip paths not numbered (saved without savefig?)"


def test_save_frame_writes_markdown_and_csv(tmp_path):
    import pandas as pd

    from gclib import plotting

    table = pd.DataFrame([{"model": "a", "acc": 1.5}, {"model": "b", "acc": 2.0}])
    md = plotting.save_frame(table, "table_x", tmp_path / "out")
    assert (tmp_path / "out" / "table_x.md").read_text() == md + "\n" and md.splitlines()[0].startswith("| model")
    assert pd.read_csv(tmp_path / "out" / "table_x.csv").equals(table)
