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
# # Out-of-distribution detection: the GC's density against the DC's confidence
#
# In-distribution: Fashion-MNIST test images. Out-of-distribution: sets that need no download
# (`gclib.data.ood`) and Fashion-MNIST transformed (`gclib.data.transformed`). The GC's scores compare
# its bits/dim with held-out validation images (`gclib.detect`); the DCs' scores use their logits.
# Writes `table_ood` and `fig_ood_scores` and glues the numbers the book cites.

# %% tags=["parameters"]
dataset = "fashion-mnist"
betas = "1,8,32,inf"  # the GCs, comma-separated shipped betas (inf: the feed-forward twin of the GC)
dcs = "resnet"  # the feed-forward references
hist_beta = "8"  # whose bits/dim the histograms show
n_test = 5000  # in-distribution test images
n_val = 5000  # held-out images that define "typical"
n_ood = 1000  # images per OoD set
seed = 0
device = None  # None: CUDA if available, else CPU
figures = "figures"  # output folder for figures and tables

# %%
from pathlib import Path

from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import detect, explain, plotting

_, val, test = gclib.data.load(dataset)
x_val, _ = val.subset(min(n_val, len(val)), seed).tensors()
x_test, _ = test.subset(min(n_test, len(test)), seed).tensors()
shape = tuple(x_test.shape[1:])
sets = {name: gclib.data.ood(name, n_ood, shape, seed) for name in gclib.data.ood_names()}
x_other, _ = test.subset(min(n_ood, len(test)), seed + 1).tensors()  # another draw of test images
sets.update({name: gclib.data.transformed(x_other, name) for name in gclib.data.TRANSFORMS})
names = list(sets)
print(f"{len(x_test)} test images against {len(names)} OoD sets of {n_ood}: {', '.join(names)}")

# %% [markdown]
# Every model's scores on the test images and on every OoD set.

# %%
rows, hist = [], {}
for beta in betas.split(","):
    gc = gclib.pretrained(dataset, beta=beta, device=device)
    ref = explain.gc_outputs(gc, x_val)["bits_per_dim"]

    def scores(x):
        out = explain.gc_outputs(gc, x)
        return detect.gc_scores(out["bits_per_dim"], out["posterior"].log(), ref), out["bits_per_dim"]

    s_in, bpd_in = scores(x_test)
    s_out = {}
    for name, x in sets.items():
        s_out[name], bpd = scores(x)
        if beta == hist_beta:
            hist[name] = bpd
    if beta == hist_beta:
        hist = {"test (in-distribution)": bpd_in, **hist}
    for score in s_in:
        rows.append(detect.detection_row(f"GC β={beta}", score, s_in[score], {n: s[score] for n, s in s_out.items()}))
for dc in dcs.split(","):
    model = gclib.pretrained(dataset, dc, device=device)
    s_in = detect.dc_scores(explain.logits(model, x_test))
    s_out = {name: detect.dc_scores(explain.logits(model, x)) for name, x in sets.items()}
    for score in s_in:
        rows.append(detect.detection_row(f"DC {dc}", score, s_in[score], {n: s[score] for n, s in s_out.items()}))

plotting.save_table(rows, "table_ood", figures)
display(Markdown((Path(figures) / "table_ood.md").read_text()))

# %% [markdown]
# The figure: where each set's bits/dim fall under one GC, and every score's AUROC on every set.

# %%
fig = plotting.plot_ood_scores(hist, rows, names, title=f"GC β={hist_beta}: bits/dim per input set")
plotting.savefig(fig, "fig_ood_scores", figures)

# For the book's prose.
for r in rows:
    key = f"{r['model']}_{r['score']}".replace("GC β=", "beta_").replace("DC ", "").replace(" ", "_")
    key = key.replace("-", "_").replace("(", "").replace(")", "")
    glue(f"ood_{key}_mean", r["mean AUROC"], display=False)
    for name in names:
        glue(f"ood_{key}_{name.replace('-', '_')}", r[name], display=False)
glue("ood_n_test", len(x_test), display=False)
glue("ood_n_ood", n_ood, display=False)
glue("ood_max_se", max(r["max SE"] for r in rows), display=False)
