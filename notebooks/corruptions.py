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
# # Dataset shift: accuracy under common corruptions, and error consistency
#
# Do generative classifiers generalise better when the test images are corrupted? The paper (Mackowiak et
# al. 2021) reports they do not. Here every model classifies the same Fashion-MNIST test images clean and
# under 12 corruptions (noise, blur, JPEG, contrast, brightness, pixelation, elastic warps, rotation, shear)
# at severities 1 to 5 (`gclib.robust`, parameters in `gclib.robust.SEVERITIES`). Reported per model: the
# clean accuracy, the mean corruption accuracy (over every corruption and severity) with its standard error
# over images, the paired difference to the ResNet DC, and the error consistency with the DC (Geirhos et al.
# 2020: Cohen's kappa between the two models' right/wrong patterns, on clean and on corrupted images).
# Writes `table_corruptions` and `fig_corruptions` and glues the numbers the book cites.

# %% tags=["parameters"]
dataset = "fashion-mnist"
betas = "1,2,4,8,16,32,inf"  # the GCs, comma-separated shipped betas (beta 0 left out: see below)
dc = "resnet"  # the feed-forward reference every GC is compared with
n_test = 500  # test images, each seen clean and under every corruption at every severity
example_class = "Ankle boot"  # the figure shows the first image of this class that every model gets right
n_bootstrap = 200  # resamples of the images for the kappa standard errors
seed = 0
device = None  # None: CUDA if available, else CPU
shipped_predictions = True  # read a model's shipped "corrupt-predictions" artifact where it has one for these images
figures = "figures"  # output folder for figures and tables

# %%
import time
from pathlib import Path

import torch
from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import explain, plotting, robust, zoo

start = time.time()
_, _, test = gclib.data.load(dataset)
x_test, y_test = test.subset(min(n_test, len(test)), seed).tensors()
beta_list = [b.strip() for b in betas.split(",") if b.strip()]
n, names = len(y_test), list(robust.CORRUPTIONS)
severities = list(range(1, robust.MAX_SEVERITY + 1))
print(f"{n} test images x ({len(names)} corruptions x {len(severities)} severities + clean) = "
      f"{n * (len(names) * len(severities) + 1)} classifications per model")

# %% [markdown]
# **Models.** The shipped GCs from β = 1 to ∞ (β = ∞ is the feed-forward twin of the GC: the same network
# trained by cross-entropy alone) and the ResNet-18 DC. β = 0 is left out: at 14 % clean accuracy, near
# chance, its accuracy under corruption says nothing about robustness. Every model classifies 61 versions of
# every image; the sample size is set by the book's time budget (the ResNet costs as much as four GCs).
#
# **Corruptions.** Every image is corrupted once per corruption and severity, with the seed shared across
# severities (the same noise, stronger), and put back on the 8-bit grid. The same corrupted images go to
# every model, so the model comparisons are paired.

# %%
sets = [x_test]  # clean first, then corruption by corruption, severity 1..5
for name in names:
    sets += [robust.corrupt(x_test, name, s, seed) for s in severities]
x_all = torch.cat(sets)
print(f"corrupted {len(sets) - 1} sets in {time.time() - start:.1f} s")

models = {f"GC β={'∞' if b == 'inf' else b}": gclib.pretrained(dataset, beta=b, device=device) for b in beta_list}
dc_name = f"DC {'ResNet-18' if dc == 'resnet' else dc}"
models[dc_name] = gclib.pretrained(dataset, dc, device=device)

# The ResNet costs as much as four GCs here (81 s of a core): its predictions on these images ship as an evaluation
# artifact (`python -m gclib.zoo evaluate resnet18 --what corrupt-predictions`: the same images, corruptions and
# seed; loading checks that it names the shipped weights' sha256, and the tests recompute random pairs of it).
versions = [("clean", 0)] + [(name, s) for name in names for s in severities]
zoo_names = {label: zoo.model_name(b, "gc", 0) for label, b in zip(models, beta_list)}
zoo_names[dc_name] = dc if "-" in dc else zoo.model_name(dc, "resnet" if dc.startswith("resnet") else "gc", 0)
correct = {}  # model -> {"clean": [N], corruption: [severities, N]}, bool
for label, model in models.items():
    t = time.time()
    shipped = zoo.shipped_corrupt_predictions(zoo_names[label], model.manifest["sha256"], n, versions, seed,
                                              dataset=dataset) if shipped_predictions else None
    predictions = explain.logits(model, x_all).argmax(1).reshape(len(sets), n) if shipped is None else shipped
    right = predictions == y_test
    correct[label] = {"clean": right[0], **{name: right[1 + 5 * k:6 + 5 * k] for k, name in enumerate(names)}}
    print(f"{label}: {len(x_all)} classifications in {time.time() - t:.1f} s"
          + (" (read from its shipped corrupt-predictions artifact)" if shipped is not None else ""))

# %% [markdown]
# The table. Accuracies in %, "± SE" over the images (the 60 corrupted versions of an image count as one
# sample, as they are not independent). "Δ vs DC" is the paired difference in mean corruption accuracy to
# the DC (negative: the GC is worse). The per-corruption columns average over the five severities. κ is the
# error consistency with the DC (0: errors shared no more than chance predicts from the two accuracies,
# 1: the same errors), with bootstrap SEs over images.

# %%
ref = correct[dc_name]
rows = []
for label, c in correct.items():
    corrupted = {name: c[name] for name in names}
    if label == dc_name:
        rows.append(robust.corruption_row(label, c["clean"], corrupted))
    else:
        rows.append(robust.corruption_row(label, c["clean"], corrupted, ref["clean"], {k: ref[k] for k in names},
                                          n_bootstrap, seed))
plotting.save_table(rows, "table_corruptions", figures, headers=robust.CORRUPTION_HEADERS)
display(Markdown((Path(figures) / "table_corruptions.md").read_text()))
per_type_se = max(robust.accuracy_se(c[name].T)[1] for c in correct.values() for name in names)
print(f"n = {n} images; largest SE of a per-corruption accuracy: {100 * per_type_se:.1f} points")

# %% [markdown]
# Error consistency between the GCs themselves and with the feed-forward twin (β = ∞), on corrupted
# images: do the GCs err like each other more than like the DC?

# %%
stacked = {label: torch.cat([c[name] for name in names]) for label, c in correct.items()}
labels = list(stacked)
kappa_pairs = {}
for i, a in enumerate(labels):
    for b in labels[i + 1:]:
        kappa_pairs[(a, b)] = robust.error_consistency(stacked[a], stacked[b])["kappa"]
        print(f"κ({a}, {b}) on corrupted images: {kappa_pairs[(a, b)]:.3f}")

# %% [markdown]
# The figure: accuracy against severity per corruption (above each panel: one test image at severities 1,
# 3 and 5, the first of class `example_class` in the sample that every model classifies correctly when
# clean), the mean over all corruptions, and the error consistency with the DC.

# %%
curves = {label: {name: [100 * float(c["clean"].float().mean())]
                  + [100 * float(v) for v in c[name].float().mean(1)] for name in names}
          for label, c in correct.items()}
eligible = torch.stack([c["clean"] for c in correct.values()]).all(0)
eligible &= y_test == test.classes.index(example_class)
shown = int(eligible.nonzero()[0]) if eligible.any() else 0
shown_sev = (1, 3, 5)
examples = {name: [sets[1 + 5 * k + s - 1][shown] for s in shown_sev] for k, name in enumerate(names)}
colors = {f"GC β={'∞' if b == 'inf' else b}": plotting.BETA_COLORS.get(b, "#7f7f7f") for b in beta_list}
colors[dc_name] = plotting.DC_COLOR
fig = robust.plot_corruptions(curves, examples, rows, colors, shown_sev)
plotting.savefig(fig, "fig_corruptions", figures)

# %%
# For the book's prose.
def key(label):
    return "dc" if label == dc_name else "beta_" + label.split("=")[1].replace("∞", "inf")


for r in rows:
    k = key(r["model"])
    for col in ("clean_pct", "clean_se", "mca_pct", "mca_se"):
        glue(f"corr_{col}_{k}", f"{r[col]:.1f}", display=False)
    glue(f"corr_drop_{k}", f"{r['clean_pct'] - r['mca_pct']:.1f}", display=False)
    if r["delta_pct"] != "":
        glue(f"corr_delta_{k}", f"{r['delta_pct']:.1f}", display=False)
        glue(f"corr_delta_se_{k}", f"{r['delta_se']:.1f}", display=False)
        for col in ("kappa_clean", "kappa_clean_se", "kappa_corrupted", "kappa_corrupted_se"):
            glue(f"corr_{col}_{k}", f"{r[col]:.2f}", display=False)
    for name in names:
        glue(f"corr_{name}_{k}", f"{r[name]:.1f}", display=False)
for (a, b), v in kappa_pairs.items():
    glue(f"corr_kappa_{key(a)}_{key(b)}", f"{v:.2f}", display=False)
gc_rows = [r for r in rows if r["model"] != dc_name]
best = max(gc_rows, key=lambda r: r["mca_pct"])
glue("corr_best_gc", best["model"], display=False)
glue("corr_n_better", str(sum(r["delta_pct"] - 2 * r["delta_se"] > 0 for r in gc_rows)), display=False)
glue("corr_n_gc", str(len(gc_rows)), display=False)
glue("corr_n_test", str(n), display=False)
glue("corr_n_types", str(len(names)), display=False)
glue("corr_per_type_max_se", f"{100 * per_type_se:.1f}", display=False)
print(f"done in {time.time() - start:.1f} s")
