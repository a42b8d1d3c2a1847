# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The model zoo: accuracy and bits/dim across β
#
# Every shipped model's figures come from its manifest, which the tests check against a fresh
# evaluation on the full test set. This notebook writes `table_models` and `fig_beta_tradeoff`,
# and the training curves of the released models (`fig_training_curves`).

# %% tags=["parameters"]
dataset = "fashion-mnist"
figures = "figures"  # output folder for figures and tables
checkpoints = None  # None: checkpoints/ in the repository (or $GCLIB_CHECKPOINTS)
n_per_class = 50  # samples per class and temperature for the sample-quality table
shipped_quality = True  # read a GC's shipped "sample-quality" artifact where it has one for these parameters

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from gclib import plotting, zoo

rows = zoo.model_rows(dataset, root=checkpoints)
if not rows:
    raise RuntimeError(f"no shipped models for {dataset!r}; train and publish them first "
                       "(python -m gclib.zoo train NAME; python -m gclib.zoo publish NAME --run DIR)")
table = zoo.table_rows(rows)
csv_path, md_path = zoo.write_table(table, figures)
display(Markdown(md_path.read_text()))
# For the book: the table, and the numbers its prose cites (myst-nb glue, never retyped).
glue("table_models", pd.DataFrame(table).rename(columns=zoo.TABLE_HEADERS).fillna(""), display=False)
def kind_of(config):
    """The glue-key and label prefix of a config: "" for the small zoo (the book's keys predate the others),
    "large" for fashion-mnist-large, "default" for the strong default config."""
    return {"small": "", "": "default"}.get(zoo.variant(config), zoo.variant(config))


for r in table:
    kind = kind_of(r["config"])
    if r["beta"] != "":  # an IB-INN: its variant and beta
        key = (f"{kind}_" if kind else "") + f"beta_{r['beta']}"
    elif r["model"] == "DC (resnet18)":  # the book's first baseline keeps its old key
        key = "resnet"
    else:  # the other families and baselines: their label, e.g. "dc_resnet18_long"
        key = "".join(ch if ch.isalnum() else "_" for ch in r["model"].lower()).strip("_").replace("__", "_")
    glue(f"acc_{key}", r["test_accuracy_pct"], display=False)
    if r["bits_per_dim"] != "":
        glue(f"bpd_{key}", r["bits_per_dim"], display=False)
    if r["reconstruction_error_float32"] != "":
        glue(f"recon_{key}", r["reconstruction_error_float32"], display=False)
    if r["accuracy_mean_pct"] != "":
        glue(f"acc_mean_{key}", r["accuracy_mean_pct"], display=False)
        glue(f"acc_std_{key}", r["accuracy_std_pct"], display=False)
glue("n_models", len(rows), display=False)
by_beta = {r["beta"]: r for r in table if r["beta"] != "" and not kind_of(r["config"])}
if "1" in by_beta and "inf" in by_beta:
    glue("gap_inf_1", round(by_beta["inf"]["test_accuracy_pct"] - by_beta["1"]["test_accuracy_pct"], 2), display=False)
    paper = zoo.PAPER_IMAGENET_TOP1
    glue("paper_gap_inf_1", round(paper["inf"] - paper["1"], 2), display=False)
glue("acc_best_gc", max(r["test_accuracy_pct"] for r in by_beta.values()), display=False)

# %% [markdown]
# Longer-trained twins of zoo models (`ZooEntry.twin_of`) are not rows of the table, whose models at each
# β were trained alike: they answer "what does more training give?" beside it.

# %%
from gclib import checkpoints as ckpt

twin_lines = []
for name in zoo.available(dataset, checkpoints):
    e = zoo.ZOO.get((dataset, name))
    if e is None or not e.twin_of or e.twin_of not in zoo.available(dataset, checkpoints):
        continue
    folder = zoo.checkpoint_root() if checkpoints is None else Path(checkpoints)
    info = ckpt.read_manifest(folder / dataset / name)["info"]
    base = ckpt.read_manifest(folder / dataset / e.twin_of)["info"]
    key = name.replace("-", "_")
    acc, n = info["test"]["accuracy"], info["test"]["n"]
    glue(f"acc_{key}", round(100 * acc, 2), display=False)
    glue(f"acc_se_{key}", round(100 * (acc * (1 - acc) / n) ** 0.5, 2), display=False)
    glue(f"bpd_{key}", round(info["test"]["bits_per_dim"], 3), display=False)
    own, base_own = zoo.own_training(info, name), zoo.own_training(base, e.twin_of)
    glue(f"epochs_{key}", own["epochs"], display=False)
    glue(f"stages_{key}", own["stages"], display=False)
    glue(f"acc_gain_{key}", round(100 * (acc - base["test"]["accuracy"]), 2), display=False)
    twin_lines.append(f"- `{name}`: {own['epochs']} epochs in {own['stages']} stage(s) where `{e.twin_of}` had "
                      f"{base_own['epochs']} (both from {own['init_from'] or 'scratch'}): test accuracy "
                      f"{100 * acc:.2f} % against {100 * base['test']['accuracy']:.2f} %, bits/dim "
                      f"{info['test']['bits_per_dim']:.3f} against {base['test']['bits_per_dim']:.3f}")
display(Markdown("\n".join(twin_lines) or "(no twins shipped)"))

# %% [markdown]
# ## Sample quality
# Are the models' class-conditional samples garments of their class? Measured, not eyeballed: the shipped
# ResNet DC classifies `n_per_class` samples per class at temperatures 0.5, 0.7 and 1 (the same seeded draws
# for every model) and the decoded class means; the share of sample pixels outside [0, 1] shows how far the
# flow's inverse leaves the image range (they are clipped before the DC sees them). Chance is 10 %. Judging
# 17 GCs' samples costs the judge about 70 s of a CPU core, so each GC's judgements ship as an evaluation
# artifact (`python -m gclib.zoo evaluate NAME --what sample-quality`: the same seeded draws, the same judge,
# named by both models' sha256; the tests redraw and judge a random row of each); `shipped_quality=False`
# draws and judges them all here.

# %%
import torch

from gclib import samples

torch.manual_seed(0)
dc = zoo.pretrained(dataset, model="resnet", root=checkpoints, device="cpu").eval()
quality, n_shipped = [], 0
temperatures = (0.5, 0.7, 1.0)
for r in sorted(rows, key=lambda r: (kind_of(r["config"]) != "", r["config"])):
    if r["model"] != "GC" or r["seed"] != 0:
        continue
    gc = zoo.get_model(r["name"], dataset, root=checkpoints, device="cpu").eval()
    judged = zoo.shipped_sample_quality(r["name"], gc.manifest["sha256"], dc.manifest["sha256"], temperatures,
                                        n_per_class, 0, dataset=dataset, root=checkpoints) if shipped_quality else None
    n_shipped += judged is not None
    if judged is None:
        judged = samples.class_sample_judgements(gc, dc, temperatures, n_per_class)
    for q in samples.quality_rows(judged, gc.num_classes, n_per_class):
        quality.append({"config": r["config"], "beta": r["beta"], **q})
print(f"{n_shipped} of {len({(q['config'], q['beta']) for q in quality})} GCs' judgements read from their shipped "
      "sample-quality artifacts")
quality_table = pd.DataFrame(quality)
quality_table["beta"] = pd.Categorical(quality_table["beta"], sorted(set(quality_table["beta"]),
                                                                     key=lambda b: float(b)))  # "inf" -> inf
quality_table = quality_table.sort_values(["config", "beta"], kind="stable",
                                          key=lambda c: c.map(lambda v: kind_of(v) != "") if c.name == "config" else c)
quality_table["model"] = [f"{kind_of(c) + ', ' if kind_of(c) else ''}β = {b}"
                          for c, b in zip(quality_table["config"], quality_table["beta"])]
wide = quality_table.assign(
    cell=[f"{100 * a:.1f} ± {100 * s:.1f} ({100 * o:.0f} %)" for a, s, o in
          zip(quality_table["accuracy"], quality_table["accuracy_se"], quality_table["outside"])]
).pivot(index="model", columns="what", values="cell")[["T=0.5", "T=0.7", "T=1", "class means"]]
wide = wide.loc[list(dict.fromkeys(quality_table["model"]))]  # the table's order, not pivot's alphabetical one
quality_table.to_csv(f"{figures}/table_sample_quality.csv", index=False, float_format="%.4f")
md = ("| GC | " + " | ".join(wide.columns) + " |\n|---|" + "---|" * len(wide.columns) + "\n"
      + "".join(f"| {i} | " + " | ".join(row) + " |\n" for i, row in zip(wide.index, wide.values)))
with open(f"{figures}/table_sample_quality.md", "w") as f:
    f.write(md)
display(Markdown("DC accuracy on the samples (%, ± SE; in brackets: pixels outside [0, 1])\n\n" + md))
glue("table_sample_quality", wide, display=False)
by = {(q["beta"], q["what"]): q for q in quality if not kind_of(q["config"])}
for q in quality:
    if kind_of(q["config"]) and q["what"] == "T=0.7":
        glue(f"sample_acc_{kind_of(q['config'])}_beta_{q['beta']}_t07", round(100 * q["accuracy"], 1),
             display=False)
        glue(f"sample_outside_{kind_of(q['config'])}_beta_{q['beta']}_t07", round(100 * q["outside"], 1),
             display=False)
if ("1", "T=0.7") in by:
    glue("sample_acc_beta_1_t07", round(100 * by[("1", "T=0.7")]["accuracy"], 1), display=False)
if ("8", "T=0.7") in by:
    glue("sample_acc_beta_8_t07", round(100 * by[("8", "T=0.7")]["accuracy"], 1), display=False)
    glue("sample_outside_beta_8_t07", round(100 * by[("8", "T=0.7")]["outside"], 1), display=False)

# %% [markdown]
# The trade-off: small β weights the density (bits/dim) more, large β the classification. The middle
# panel puts our Fashion-MNIST curve beside the paper's ImageNet numbers, both relative to β = ∞.

# %%
fig = plotting.plot_beta_tradeoff(rows, paper_top1=zoo.PAPER_IMAGENET_TOP1)
plotting.savefig(fig, "fig_beta_tradeoff", figures)
glue("fig_beta_tradeoff", fig, display=False)

# %% [markdown]
# Training curves of the released models (seed 0; other configs dashed). The accuracy axis starts at
# 75 %: β = 0 trains the density alone and its classes stay near chance.

# %%
gc_rows = {r["beta"]: r for r in rows if r["model"] == "GC" and r["seed"] == 0 and not kind_of(r["config"])}
released = {f"β={b}": gc_rows[b]["history"] for b in zoo.BETAS if b in gc_rows}
colors = {f"β={b}": c for b, c in plotting.BETA_COLORS.items()}
for r in rows:  # the other configs' models trained from scratch beside them (warm starts continue a curve)
    if r["model"] == "GC" and r["seed"] == 0 and kind_of(r["config"]) and not r.get("init_from"):
        label = f"{kind_of(r['config'])} β={r['beta']}"
        released[label], colors[label] = r["history"], plotting.beta_color(r["beta"])
fig = plotting.plot_training_curves(released, colors, accuracy_floor=75,
                                    dashed={k for k in released if not k.startswith("β")})
plotting.savefig(fig, "fig_training_curves", figures)
glue("fig_training_curves", fig, display=False)
