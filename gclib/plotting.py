"""One figure style for the book, and the figures drawn from the model zoo.

``savefig(fig, "fig_beta_tradeoff")`` writes ``figures/fig_beta_tradeoff.png`` and ``.svg``; the ids
are the file names listed in the design (and the labels in the book). Both files are byte for byte the
same when the figure is: the PNG without a software stamp, the SVG without a date, with a fixed hash salt
for matplotlib's content-hashed ids, its clip paths numbered in order, and the layout rounded below what
the files show (see :func:`savefig`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from pathlib import Path

__all__ = [
    "BETA_COLORS",
    "DC_COLOR",
    "DETERMINISTIC_RC",
    "DIFFUSION_COLOR",
    "PAPER_BETA_FACTOR",
    "beta_color",
    "figure",
    "plot_beta_tradeoff",
    "plot_both_or_neither",
    "plot_gc_vs_dc",
    "plot_ood_scores",
    "plot_training_curves",
    "save_table",
    "savefig",
    "stable_svg_ids",
]

FIGURES_ENV = "GCLIB_FIGURES"
_BETA_ORDER = ["0", "1", "2", "4", "8", "16", "32", "inf"]
# A sequential palette over beta (viridis), so "more classification weight" reads as one direction; its
# end (#fde725) is too pale for thin lines on white, so beta = inf takes a darker gold.
BETA_COLORS = dict(zip(_BETA_ORDER, ["#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d",
                                     "#a0da39", "#d4a600"]))
DC_COLOR = "#d62728"
DIFFUSION_COLOR = "#333333"  # the diffusion family's GC: dark grey, apart from the IB-INN's viridis β scale and the DC's red
PAPER_COLOR = "#7f7f7f"
# The paper's L_X is per dimension and its L_Y per image: on ImageNet (3 x 224 x 224 = 150,528 dimensions)
# beta puts 150,528 / 784 = 192 times more weight per image on the class term than the same beta here.
PAPER_BETA_FACTOR = 3 * 224 * 224 / (28 * 28)
# What makes matplotlib's files differ between runs of the same figure: the SVG's ids are hashes salted
# with uuid4() unless svg.hashsalt is set, its root gets an id from svg.id, the SVG records a date and
# the PNG the software version unless the metadata say otherwise.
DETERMINISTIC_RC = {"svg.hashsalt": "gclib", "svg.id": None}


def _plt():
    import matplotlib.pyplot as plt  # headless machines fall back to Agg by themselves

    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "legend.frameon": False, "svg.fonttype": "none", **DETERMINISTIC_RC,
    })
    return plt


def figure(ncols: int = 1, nrows: int = 1, width: float = 3.2, height: float = 2.8):
    """``(fig, axes)`` in the book's style; ``width``/``height`` per panel, in inches."""
    plt = _plt()
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                        layout="constrained")


_CLIP_DEF = re.compile(r'<clipPath id="([^"]+)">')
_ID_USE = re.compile(r'(id="|url\(#)([^")]+)(?=[")])')


def stable_svg_ids(svg: str) -> str:
    """``svg`` with its clip paths renamed ``clip1``, ``clip2``, ... in the order they are defined.

    Matplotlib names a clip path by a hash of its rectangle at full float precision, while the file holds
    the coordinates to 6 decimals: a difference in the last bits of the layout, which constrained layout
    gives from one run to the next, renamed every clip path of ``fig_evidence`` although its drawing had
    not changed. Numbered, they change only when the figure does.
    """
    names = {old: f"clip{i}" for i, old in enumerate(dict.fromkeys(_CLIP_DEF.findall(svg)), 1)}
    return _ID_USE.sub(lambda m: m.group(1) + names.get(m.group(2), m.group(2)), svg)


# Figure-relative positions are rounded to this many decimals after the layout engine has placed them.
LAYOUT_DECIMALS = 12


def _round_layout(fig, decimals: int = LAYOUT_DECIMALS) -> None:
    # Constrained layout solves for the positions with kiwisolver, whose results differ in the last bits
    # (1e-16) with the process's memory layout, with subfigures; a coordinate at a rounding tie of the SVG's
    # 6 decimals then flips from run to run. Rounded, every run draws from the same positions.
    import numpy as np
    from matplotlib.transforms import Bbox

    def rounded(bbox):
        return Bbox(np.round(bbox.get_points(), decimals))

    for ax in fig.get_axes():
        active, original = ax.get_position(original=False), ax.get_position(original=True)
        ax._set_position(rounded(original), which="original")
        ax._set_position(rounded(active), which="active")
    figures = [fig]
    while figures:
        f = figures.pop()
        figures += list(getattr(f, "subfigs", []))
        if f is not fig:
            f._redo_transform_rel_fig(bbox=rounded(f.bbox_relative))
        for text in (getattr(f, name, None) for name in ("_suptitle", "_supxlabel", "_supylabel")):
            if text is not None:
                text.set_position(tuple(np.round(text.get_position(), decimals)))


@contextlib.contextmanager
def _rounded_layout(fig):
    """While saving: every run of ``fig``'s layout engine ends with :func:`_round_layout`."""
    engine = fig.get_layout_engine()
    if engine is None:
        yield
        return
    execute = engine.execute

    def execute_and_round(figure):
        result = execute(figure)
        _round_layout(figure)
        return result

    engine.execute = execute_and_round
    try:
        yield
    finally:
        del engine.execute


def savefig(fig, fig_id: str, folder: str | os.PathLike | None = None) -> list[Path]:
    """Write ``folder/fig_id.png`` and ``.svg`` (folder: ``$GCLIB_FIGURES`` or ``figures/``).

    The same figure gives the same bytes in every run: the settings of ``DETERMINISTIC_RC`` apply while
    saving, the positions the layout engine computes are rounded to ``LAYOUT_DECIMALS`` decimals of the
    figure, the PNG has no software stamp, the SVG no date, and its clip paths are numbered
    (:func:`stable_svg_ids`), so that a changed file means a changed figure.
    """
    import matplotlib as mpl

    folder = Path(folder or os.environ.get(FIGURES_ENV, "figures"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{fig_id}.png", folder / f"{fig_id}.svg"]
    with mpl.rc_context(DETERMINISTIC_RC), _rounded_layout(fig):
        fig.savefig(paths[0], metadata={"Software": None})
        svg = io.StringIO()
        fig.savefig(svg, format="svg", metadata={"Date": None})
    paths[1].write_text(stable_svg_ids(svg.getvalue()), encoding="utf-8")
    return paths


def save_frame(table, table_id: str, folder: str | os.PathLike | None = None) -> str:
    """Write a pandas DataFrame as ``folder/table_id.md`` (pandas' Markdown) and ``.csv``; returns the Markdown
    (the notebooks display it and glue the frame under ``table_id``)."""
    folder = Path(folder or os.environ.get(FIGURES_ENV, "figures"))
    folder.mkdir(parents=True, exist_ok=True)
    md = table.to_markdown(index=False)
    (folder / f"{table_id}.md").write_text(md + "\n")
    table.to_csv(folder / f"{table_id}.csv", index=False)
    return md


def save_table(rows: list[dict], table_id: str, folder: str | os.PathLike | None = None,
               headers: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``rows`` (dicts with the same keys) as ``folder/table_id.csv`` and a Markdown ``.md``.

    ``headers`` maps keys to the Markdown column titles (the CSV keeps the keys). Integers of 10,000 and
    more are written with thousands separators in the Markdown table.
    """
    import csv

    if not rows:
        raise ValueError(f"save_table({table_id!r}): no rows to write")
    folder = Path(folder or os.environ.get(FIGURES_ENV, "figures"))
    folder.mkdir(parents=True, exist_ok=True)
    keys, headers = list(rows[0]), headers or {}
    csv_path, md_path = folder / f"{table_id}.csv", folder / f"{table_id}.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v):
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) and v >= 10000 else str(v)

    lines = ["| " + " | ".join(headers.get(k, k) for k in keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _beta_x(beta: str) -> int:
    return _BETA_ORDER.index(beta)


def beta_color(beta: str) -> str:
    """The colour of a beta: the small zoo's palette, and for the large zoo's paper-scale betas (192 and
    up, between the small zoo's largest finite beta and infinity) shades between 32's and inf's."""
    if beta in BETA_COLORS:
        return BETA_COLORS[beta]
    if beta in (None, ""):
        return "#7f7f7f"
    import matplotlib
    from matplotlib.colors import to_hex

    # viridis between the positions of 32 and inf in the small palette, by log beta up to 6144
    t = min(1.0, max(0.0, math.log(float(beta) / 32) / math.log(6144 / 32))) if float(beta) > 32 else 0.0
    return to_hex(matplotlib.colormaps["viridis"](0.86 + 0.12 * t))


def _variant_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """GC rows by config variant, the small zoo first (``zoo.variant``: "small", "large", ...)."""
    from .zoo import variant, variant_rank

    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["model"] == "GC":
            groups.setdefault(variant(r.get("config", "")) or "default", []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: variant_rank(kv[0])))


_VARIANT_MARKERS = {"small": "o", "default": "D", "large": "*"}


def plot_beta_tradeoff(rows: list[dict], paper_top1: dict | None = None):
    """The information-bottleneck trade-off across beta, from ``gclib.zoo.model_rows`` rows.

    Left: test accuracy per beta (log axis; every seed as a point, the mean as a line) for each config's
    zoo (the small zoo as dots, the large one as stars) with the ResNet baselines. Middle: accuracy
    relative to the same zoo's beta = inf, beside the paper's ImageNet numbers at the same beta and at
    the per-image-equivalent beta (x192). Right: accuracy against bits/dim (up-left is better).
    beta = 0 trains no classes and is noted, off the accuracy scale.
    """
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    groups = _variant_rows(rows)
    dc = [r for r in rows if r["model"] not in ("GC", "diffusion", "score", "ABS")]  # the discriminative baselines
    finite = sorted({float(r["beta"]) for g in groups.values() for r in g if r["beta"] not in ("0", "inf")})
    paper_finite = [float(b) for b in (paper_top1 or {}) if b not in ("0", "inf", "resnet")]
    top = max(finite + [v * PAPER_BETA_FACTOR for v in paper_finite] + [32.0])
    x_inf = top * 8  # where beta = inf is drawn, one marked step right of the largest finite beta

    def bx(b):
        return x_inf if b == "inf" else float(b)

    def log_beta_axis(ax):
        ax.set_xscale("log")
        ticks = [t for t in (1, 10, 100, 1000, 10000) if t <= top * 1.5]
        ax.xaxis.set_major_locator(FixedLocator([*ticks, x_inf]))
        ax.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks] + ["∞"]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("β")

    fig, axes = figure(3, width=3.4)
    ax_acc, ax_rel, ax_bpd = axes[0]
    means: dict[str, dict[str, float]] = {}
    zero_notes = []
    for kind, group in groups.items():
        marker, size = _VARIANT_MARKERS.get(kind, "s"), (60 if kind == "large" else 16)
        betas = sorted({r["beta"] for r in group}, key=float)  # float("inf") sorts last
        means[kind] = {}
        for b in betas:
            accs = [100 * r["test_accuracy"] for r in group if r["beta"] == b]
            means[kind][b] = sum(accs) / len(accs)
            if b == "0":
                zero_notes.append(f"{kind} β=0: {means[kind][b]:.1f} %")
                continue
            ax_acc.scatter([bx(b)] * len(accs), accs, color=beta_color(b), marker=marker, s=size, zorder=3,
                           edgecolor="k" if kind == "large" else "none", linewidth=0.4)
        trained = [b for b in betas if b != "0"]
        ax_acc.plot([bx(b) for b in trained], [means[kind][b] for b in trained], color="k", zorder=2,
                    lw=1, ls="-" if kind == "small" else "--", label=f"GC, {kind} zoo (mean over seeds)")
    for r in dc:
        ax_acc.axhline(100 * r["test_accuracy"], color=DC_COLOR, ls="--" if "-" not in r.get("name", "") else ":",
                       lw=1, label=f"DC ({r.get('name') or r['model']})")
    log_beta_axis(ax_acc)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Fashion-MNIST: accuracy per β")
    trained_acc = [v for m in means.values() for b, v in m.items() if b != "0"]
    ax_acc.set_ylim(min(trained_acc or [0]) - 2, max([*trained_acc, *[100 * r["test_accuracy"] for r in dc]]) + 1)
    if zero_notes:
        ax_acc.annotate("off scale: " + ", ".join(zero_notes), (0.02, 0.02), xycoords="axes fraction", fontsize=6.5)
    ax_acc.legend(fontsize=6, loc="lower right")

    # The middle panel: the paper's ImageNet numbers at both readings of beta: the same beta (L_X per
    # dimension, L_Y per image: the same number), and the beta that puts the same weight on the class
    # term per image (x 150,528 / 784 = 192 on Fashion-MNIST).
    for kind, m in means.items():
        if "inf" in m:
            rel = [(b, v - m["inf"]) for b, v in m.items() if b != "0"]
            ax_rel.plot([bx(b) for b, _ in rel], [v for _, v in rel], ("o-" if kind == "small" else "*--"),
                        color="k", ms=4 if kind == "small" else 7, label=f"ours, {kind} zoo")
    if paper_top1:
        pb = sorted((b for b in paper_top1 if b not in ("0", "resnet")), key=float)  # float("inf") sorts last
        rel = [paper_top1[b] - paper_top1["inf"] for b in pb]
        ax_rel.plot([bx(b) for b in pb], rel, "s:", color=PAPER_COLOR, ms=3.5, mfc="white",
                    label="paper, ImageNet, same β")
        ax_rel.plot([x_inf if b == "inf" else float(b) * PAPER_BETA_FACTOR for b in pb], rel, "s--",
                    color=PAPER_COLOR, ms=4, label=f"paper at per-image-equivalent β (×{PAPER_BETA_FACTOR:g})")
    ax_rel.axhline(0, color="k", lw=0.5)
    log_beta_axis(ax_rel)
    ax_rel.set_ylabel("accuracy − accuracy at β=∞ (points)")
    ax_rel.set_title("shape of the trade-off")
    ax_rel.legend(fontsize=6, loc="lower right")

    bpd_means = []
    for kind, group in groups.items():
        marker, size = _VARIANT_MARKERS.get(kind, "s"), (60 if kind == "large" else 18)
        line = []
        for b in sorted({r["beta"] for r in group}, key=float):  # float("inf") sorts last
            pts = [(r["bits_per_dim"], 100 * r["test_accuracy"]) for r in group if r["beta"] == b and r["bits_per_dim"]]
            if not pts or b == "0":
                continue
            ax_bpd.scatter(*zip(*pts), color=beta_color(b), marker=marker, s=size, zorder=3, edgecolor="k",
                           linewidth=0.3, label=f"{kind}, β={b if b != 'inf' else '∞'}")
            line.append((sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)))
        if line:
            ax_bpd.plot(*zip(*line), color="k", lw=0.8, ls="-" if kind == "small" else "--", zorder=2)
            bpd_means += line
    zero = [(kind, r) for kind, g in groups.items() for r in g if r["beta"] == "0" and r["bits_per_dim"]]
    if zero:
        text = "β=0 (off scale): " + "; ".join(f"{kind} {r['bits_per_dim']:.2f} bits/dim" for kind, r in zero)
        ax_bpd.annotate(text, (0.98, 0.02), xycoords="axes fraction", fontsize=6.5, ha="right")
    ax_bpd.set_xlabel("test bits/dim (lower: better density model)")
    ax_bpd.set_ylabel("test accuracy (%)")
    ax_bpd.set_title("accuracy against bits/dim")
    ax_bpd.legend(fontsize=5, ncol=2, loc="center right")
    finite_bpd = [m[0] for m in bpd_means if math.isfinite(m[0])]
    if finite_bpd and max(finite_bpd) > 2.5 * min(finite_bpd):
        from matplotlib.ticker import NullFormatter

        ax_bpd.set_xscale("log")
        ticks = [t for t in (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30)
                 if 0.9 * min(finite_bpd) <= t <= 1.1 * max(finite_bpd)]
        ax_bpd.xaxis.set_major_locator(FixedLocator(ticks))
        ax_bpd.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks]))
        ax_bpd.xaxis.set_minor_locator(NullLocator())
        ax_bpd.xaxis.set_minor_formatter(NullFormatter())
    return fig


def plot_training_curves(histories: dict[str, list[dict]], colors: dict[str, str] | None = None,
                         accuracy_floor: float | None = None, dashed: set[str] | frozenset = frozenset()):
    """Validation accuracy and bits/dim per epoch for each labelled run (rows of a run's ``log.csv``).

    ``accuracy_floor`` cuts the accuracy axis there (runs below it, such as beta = 0, are noted); the
    runs named in ``dashed`` (another config's) are drawn dashed.
    """
    fig, axes = figure(2, width=3.6)
    ax_acc, ax_bpd = axes[0]
    for label, history in histories.items():
        if not history:
            continue
        color = (colors or {}).get(label)
        epochs = [row["epoch"] for row in history]
        style = "--" if label in dashed else "-"
        (line,) = ax_acc.plot(epochs, [100 * row["val_accuracy"] for row in history], style, color=color, label=label)
        color = line.get_color()
        ax_acc.plot(epochs, [100 * row["train_accuracy"] for row in history], ":", color=color)
        if history[0].get("val_bits_per_dim") not in (None, ""):
            ax_bpd.plot(epochs, [row["val_bits_per_dim"] for row in history], style, color=color, label=label)
    if accuracy_floor is not None:
        below = [label for label, h in histories.items()
                 if h and max(100 * r["val_accuracy"] for r in h) < accuracy_floor]
        ax_acc.set_ylim(bottom=accuracy_floor)
        if below:
            ax_acc.annotate(f"below the axis: {', '.join(below)}", (0.98, 0.02), xycoords="axes fraction",
                            ha="right", fontsize=7)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy: validation (solid),\ntraining batches, augmented (dotted)")
    ax_bpd.set_xlabel("epoch")
    ax_bpd.set_ylabel("validation bits/dim")
    ax_bpd.set_title("density during training")
    ax_bpd.legend(*ax_acc.get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_gc_vs_dc(examples: list[dict], class_names: list[str], reference_bpd, bpd_range: tuple[float, float],
                  second: dict | None = None):
    """The book's Figure 1: for each input, the DC's posterior beside the GC's class likelihoods.

    Args:
        examples: one dict per row with ``title``, ``image`` ([C, H, W] in [0, 1]), ``dc_posterior`` ([K]),
            ``gc_log_likelihoods`` ([K], nats) and ``bits_per_dim`` (the GC's -log2 p(x) per dim); with
            ``second`` also ``second_log_likelihoods`` and ``second_bits_per_dim``.
        class_names: the K class names.
        reference_bpd: bits/dim of held-out in-distribution images (the histogram in the density column).
        bpd_range: their typical range (shaded).
        second: another GC family beside the first: ``{"label", "reference_bpd", "bpd_range"}`` (its own
            reference images and typical range; ``color`` optional), drawn in two more columns.

    Columns: the input; the DC's posterior (sums to one); the GC's class likelihoods relative to the most
    likely class, p(x|y) / max_y p(x|y) (each in [0, 1], they need not sum to one: two classes at 1 is
    "both"); and where the input's p(x) falls among in-distribution inputs (outside the band: "neither").
    """
    import numpy as np
    import torch

    plt = _plt()
    n = len(examples)
    ratios = [0.8, 1.6, 1.6, 1.5] + ([1.6, 1.5] if second else [])
    fig, axes = plt.subplots(n, len(ratios), figsize=(2.9 * sum(ratios), 2.3 * n), squeeze=False,
                             layout="constrained", gridspec_kw={"width_ratios": ratios})
    ks = np.arange(len(class_names))

    def likelihood_panel(ax, ll, color, label):
        ll = torch.as_tensor(ll).double()
        ax.bar(ks, torch.exp(ll - ll.max()).numpy(), color=color)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"{label}: p(x|y) / max p(x|y)", fontsize=8)

    def density_panel(ax, bpd, ref, band, color, label):
        ref = np.asarray(ref, dtype=float)
        low, high = band
        all_bpd = np.concatenate([ref, [float(e) for e in bpd[1]]])
        bins = np.linspace(min(all_bpd.min(), low) - 0.2, max(all_bpd.max(), high) + 0.2, 60)
        ax.hist(ref, bins=bins, color=PAPER_COLOR, alpha=0.6)
        ax.axvspan(low, high, color=color, alpha=0.12, lw=0)
        value = float(bpd[0])
        typical = low <= value <= high
        ax.axvline(value, color="black" if typical else DC_COLOR, lw=2)
        ax.set_yticks([])
        ax.set_xlabel(f"{label}: bits/dim of the input (lower = more likely)", fontsize=8)
        ax.set_title(f"{value:.2f} bits/dim: {'typical' if typical else 'atypical'}", fontsize=8,
                     color="black" if typical else DC_COLOR)

    gc_bpd = [e["bits_per_dim"] for e in examples]
    for row, ex in zip(axes, examples):
        img = torch.as_tensor(ex["image"]).float()
        row[0].imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        row[0].set_xticks([]), row[0].set_yticks([]), row[0].grid(False)
        row[0].set_title(ex["title"], fontsize=9)
        dc = torch.as_tensor(ex["dc_posterior"]).float().numpy()
        row[1].bar(ks, dc, color=DC_COLOR)
        row[1].set_ylim(0, 1.05)
        row[1].set_ylabel("DC: p(y|x)")
        likelihood_panel(row[2], ex["gc_log_likelihoods"], BETA_COLORS["8"], "GC")
        bar_axes = [row[1], row[2]]
        if second:
            likelihood_panel(row[4], ex["second_log_likelihoods"], second.get("color", DIFFUSION_COLOR),
                             second["label"])
            bar_axes.append(row[4])
        for ax in bar_axes:
            ax.set_xticks(ks, class_names, rotation=60, ha="right", fontsize=7)
            ax.grid(axis="x", visible=False)
        top = dc.argmax()
        row[1].text(top, min(dc[top] + 0.02, 0.98), f"{dc[top]:.2f}", ha="center", va="bottom", fontsize=7)
        density_panel(row[3], (ex["bits_per_dim"], gc_bpd), reference_bpd, bpd_range, BETA_COLORS["8"], "GC")
        if second:
            density_panel(row[5], (ex["second_bits_per_dim"], [e["second_bits_per_dim"] for e in examples]),
                          second["reference_bpd"], second["bpd_range"], second.get("color", DIFFUSION_COLOR),
                          second["label"])
    return fig


def plot_ood_scores(bpd_by_set: dict, rows: list[dict], set_names: list[str], title: str = ""):
    """``fig_ood_scores``: histograms of a GC's bits/dim per input set, and the AUROC of every score.

    Args:
        bpd_by_set: ``{set name: bits/dim}``; the first entry is the in-distribution test set.
        rows: ``gclib.detect.detection_row`` rows (AUROC in % per OoD set).
        set_names: the OoD sets, in column order.
        title: title of the histogram panel.
    """
    import numpy as np

    plt = _plt()
    fig, (ax_h, ax_m) = plt.subplots(1, 2, figsize=(12, 0.34 * len(rows) + 2.2), layout="constrained",
                                     gridspec_kw={"width_ratios": [1, 1.5]})
    values = np.concatenate([np.asarray(v, dtype=float) for v in bpd_by_set.values()])
    bins = np.linspace(np.quantile(values, 0.001), np.quantile(values, 0.999), 70)
    cmap = plt.get_cmap("tab10")
    for i, (name, bpd) in enumerate(bpd_by_set.items()):
        ax_h.hist(np.asarray(bpd, dtype=float), bins=bins, density=True, histtype="step", lw=2 if i == 0 else 1.2,
                  color="black" if i == 0 else cmap(i % 10), label=name)
    ax_h.set_xlabel("bits/dim (lower = more likely)")
    ax_h.set_yticks([])
    ax_h.set_title(title)
    ax_h.legend(fontsize=7)
    grid = np.array([[r[s] for s in set_names] for r in rows], dtype=float)
    image = ax_m.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax_m.set_xticks(range(len(set_names)), set_names, rotation=45, ha="right", fontsize=7)
    ax_m.set_yticks(range(len(rows)), [f"{r['model']}: {r['score']}" for r in rows], fontsize=7)
    ax_m.grid(False)
    for (i, j), v in np.ndenumerate(grid):
        ax_m.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6.5)
    fig.colorbar(image, ax=ax_m, label="AUROC (%): 50 = chance, 100 = perfect")
    return fig


def plot_both_or_neither(groups: dict[str, dict], bpd_range: tuple[float, float], max_ratio: float,
                         examples: dict[str, list[dict]], title: str = ""):
    """``fig_both_or_neither``: the GC's two largest class likelihoods per input, its regions, and the DC.

    Args:
        groups: ``{name: {"bits_per_dim": [N] of the most likely class, "log_ratio": [N] nats between the two
            most likely classes, "dc_max": [N] the DC's max-softmax}}``; the first groups are in-distribution
            (drawn grey/orange), the rest OoD sets.
        bpd_range: the typical range of bits/dim (the "neither" region lies outside it).
        max_ratio: the likelihood ratio under which two classes count as "both".
        examples: ``{region: [{"image": [C, H, W], "caption": str}, ...]}`` shown in the bottom row.
        title: title of the scatter panel.

    Left: x = bits/dim of the most likely class, y = how many times more likely it is than the runner-up
    (log scale). Right: the DC's max-softmax for the same groups: it has one number per input, so a
    low confidence cannot say whether the input is ambiguous or unrelated.
    """
    import numpy as np
    import torch

    plt = _plt()
    n_ex = max((len(v) for v in examples.values()), default=0)
    fig = plt.figure(figsize=(12, 7.0 if n_ex else 5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.8, 1]) if n_ex else (fig, None)
    ax_s, ax_d = top.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
    cmap = plt.get_cmap("tab10")
    ood_colors = [cmap(k) for k in (4, 5, 6, 8, 9, 2, 0, 3)]  # tab10 without the grey and orange of the test sets
    colors, n_in = {}, 0
    for name in groups:
        if name.startswith("test") and n_in < 2:
            colors[name], n_in = [PAPER_COLOR, "#ff7f0e"][n_in], n_in + 1
        else:
            colors[name] = ood_colors[(len(colors) - n_in) % len(ood_colors)]
    low, high = bpd_range
    floor = 1e-3  # ratios of exactly one (a tie) on the log axis
    ys = np.concatenate([np.exp(np.clip(np.asarray(g["log_ratio"], float), None, 700)) for g in groups.values()])
    y_top = float(np.quantile(ys, 0.995)) * 3
    xs = np.concatenate([np.asarray(g["bits_per_dim"], float) for g in groups.values()])
    x_lo, x_hi = min(low, np.quantile(xs, 0.001)) - 0.6, max(high, np.quantile(xs, 0.999)) + 0.6
    for name, g in groups.items():
        x = np.clip(np.asarray(g["bits_per_dim"], float), x_lo, x_hi)  # the rare extremes sit on the edge
        ratio = np.clip(np.exp(np.clip(np.asarray(g["log_ratio"], float), None, 700)), 1 + floor, y_top)
        ax_s.scatter(x, ratio, s=3 if len(x) > 2000 else 5, alpha=0.5, color=colors[name], lw=0, rasterized=True,
                     label=f"{name} ({len(x)})")
    ax_s.set_yscale("log")
    ax_s.axvspan(low, high, color=BETA_COLORS["8"], alpha=0.08, lw=0)
    ax_s.axvline(low, color="black", lw=0.8, ls="--"), ax_s.axvline(high, color="black", lw=0.8, ls="--")
    ax_s.plot([low, high], [max_ratio, max_ratio], color="black", lw=0.8, ls="--")
    ax_s.set_xlabel("bits/dim of the most likely class, -log2 p(x|y1) / D (lower = more likely)")
    ax_s.set_ylabel("p(x|y1) / p(x|y2): most likely class over runner-up")
    ax_s.set_xlim(x_lo, x_hi)
    ax_s.set_ylim(1, y_top)
    for text, x, y in [("confident", (low + high) / 2, max_ratio * 30), ("both", (low + high) / 2, 1.4),
                       ("neither", (high + x_hi) / 2, max_ratio * 30), ("neither", (x_lo + low) / 2, max_ratio * 30)]:
        if text != "neither" or abs(x - (low if x < low else high)) > 0.4:  # room for the label
            ax_s.text(x, y, text, ha="center", fontsize=11, weight="bold", alpha=0.7)
    ax_s.set_title(title)
    ax_s.legend(fontsize=7, markerscale=3, loc="upper right")
    names = list(groups)
    data = [np.asarray(groups[n]["dc_max"], float) for n in names]
    parts = ax_d.violinplot(data, vert=False, showmedians=True, widths=0.8)
    for body, name in zip(parts["bodies"], names):
        body.set_facecolor(colors[name]), body.set_alpha(0.6)
    ax_d.set_yticks(range(1, len(names) + 1), names, fontsize=8)
    ax_d.invert_yaxis()
    ax_d.set_xlim(0, 1.02)
    ax_d.set_xlabel("DC (ResNet-18): max-softmax")
    ax_d.set_title("the DC on the same inputs: one confidence")
    if bottom is not None:
        axes = bottom.subplots(1, len(examples) * n_ex + len(examples) - 1, squeeze=False)[0]
        col = 0
        for region, items in examples.items():
            for k in range(n_ex):
                ax = axes[col + k]
                ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if k < len(items):
                    img = torch.as_tensor(items[k]["image"]).float()
                    ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
                    ax.set_xlabel(items[k]["caption"], fontsize=6.5)
                if k == 0:
                    ax.set_title(f"{region}: {len(items)} random examples" if items else f"{region}: none",
                                 fontsize=9, loc="left")
            col += n_ex
            if col < len(axes):
                axes[col].axis("off")
                col += 1
    return fig
