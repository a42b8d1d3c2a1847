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
# # Calibration: are the confidences trustworthy?
#
# A classifier is calibrated when, among the predictions it makes with confidence $c$, a fraction $c$ is
# correct. This notebook measures it on the Fashion-MNIST test set for every shipped GC (one per β) and
# for the feed-forward references: the ResNet-18 DC, and the GC trained with β = ∞ (no density term, so it
# is a feed-forward classifier in all but architecture). The metrics (`gclib.calibration`): expected and
# maximum calibration error over 15 equal-width confidence bins (ECE, MCE), the IB-INN paper's
# overconfidence (the error rate among predictions with confidence above 99.7 %, divided by 0.3 %; at most
# 1 when calibrated) and the negative log-likelihood of the labels, each with a bootstrap standard error
# over test images. It writes `table_calibration` and `fig_calibration` and glues the numbers for the book.

# %% tags=["parameters"]
dataset = "fashion-mnist"
betas = "0,1,2,4,8,16,32,inf"  # the shipped GCs to measure
dcs = "resnet"  # the feed-forward references (shipped names)
n_test = 10000  # test images
n_bins = 15  # equal-width confidence bins of the reliability diagrams, ECE and MCE
n_bootstrap = 200  # resamples of the test images for the standard errors
seed = 0
device = None  # None: CUDA if available, else CPU
figures = "figures"  # output folder for figures and tables

# %%
import math
from pathlib import Path

from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import calibration, plotting

_, _, test = gclib.data.load(dataset)
test = test.subset(min(n_test, len(test)), seed)
x_test, y_test = test.tensors()
beta_list = [b.strip() for b in betas.split(",") if b.strip()]
dc_list = [d.strip() for d in dcs.split(",") if d.strip()]
DC_NAMES = {"resnet": "ResNet-18 DC"}


def gc_name(beta):
    return f"GC β={'∞' if beta == 'inf' else beta}"


probs = {gc_name(b): calibration.predict_probs(gclib.pretrained(dataset, beta=b, device=device), x_test)
         for b in beta_list}
probs.update({DC_NAMES.get(d, d): calibration.predict_probs(gclib.pretrained(dataset, d, device=device), x_test)
              for d in dc_list})
print(f"{len(probs)} models on {len(y_test)} test images")

# %% [markdown]
# The table: every metric with its bootstrap standard error (± SE, over resamples of the test images).
# ECE, MCE and accuracy in percent; "n conf. > 0.997" is the number of predictions the overconfidence is
# computed from (empty when there are none: the ratio is then undefined).

# %%
beta_of = {gc_name(b): b for b in beta_list}
rows = [calibration.calibration_row(name, p, y_test, n_bins, n_bootstrap, seed, beta=beta_of.get(name, ""))
        for name, p in probs.items()]
plotting.save_table(rows, "table_calibration", figures, headers=calibration.CALIBRATION_HEADERS)
display(Markdown((Path(figures) / "table_calibration.md").read_text()))


def key(name):
    return f"beta_{beta_of[name]}" if name in beta_of else next(d for d in dc_list if DC_NAMES.get(d, d) == name)


for r in rows:
    k = key(r["model"])
    glue(f"ece_{k}", r["ece_pct"], display=False)
    glue(f"mce_{k}", r["mce_pct"], display=False)
    glue(f"overconf_{k}", r["overconfidence"], display=False)
    glue(f"nll_{k}", r["nll"], display=False)
    glue(f"acc_{k}", r["accuracy_pct"], display=False)
gc_rows = [r for r in rows if r["beta"]]
best = min(gc_rows, key=lambda r: r["ece_pct"])
glue("best_ece_beta", "∞" if best["beta"] == "inf" else best["beta"], display=False)
print(f"lowest ECE among the GCs: {best['model']} ({best['ece_pct']:.2f} ± {best['ece_se']:.2f} %)")
for r in rows:
    if not r["beta"]:
        print(f"{r['model']}: ECE {r['ece_pct']:.2f} ± {r['ece_se']:.2f} %, overconfidence "
              f"{r['overconfidence']:.2f} ± {r['overconfidence_se']:.2f}, NLL {r['nll']:.4f} nats")

# %% [markdown]
# The figure: reliability diagrams of a few models (bars: accuracy per confidence bin; red: the gap to
# the diagonal; inset: how many predictions fall in each bin, log scale), then ECE, overconfidence and NLL
# against β for every GC, with the DCs as dashed lines (band: ± one SE).

# %%
shown = [b for b in ["1", "8", "32", "inf"] if b in beta_list] or beta_list[:4]
panels = [gc_name(b) for b in shown] + [DC_NAMES.get(d, d) for d in dc_list]
diagrams = {name: calibration.reliability(probs[name], y_test, n_bins) for name in panels}
colors = {gc_name(b): plotting.BETA_COLORS.get(b, "#7f7f7f") for b in beta_list}
colors.update({DC_NAMES.get(d, d): plotting.DC_COLOR for d in dc_list})
fig = calibration.plot_calibration(diagrams, rows, colors)
plotting.savefig(fig, "fig_calibration", figures)
glue("fig_calibration", fig, display=False)
assert all(math.isfinite(r["ece_pct"]) for r in rows)
