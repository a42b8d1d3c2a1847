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
# # Randomized smoothing: certified L2 robustness of generative and discriminative classifiers
#
# Randomized smoothing (Cohen, Rosenfeld, Kolter, ICML 2019) turns any classifier f into a classifier g whose
# prediction provably cannot change within an L2 ball: g(x) is the class f picks most often under Gaussian
# noise of std sigma, and if f picks it with probability p_A > 1/2, g is constant within sigma Phi^-1(p_A).
# An Ju's thesis uses it as the bridge between generative and discriminative classifiers. Here the base
# models are the small zoo's IB-INN at beta = 8 (a GC) and at beta = inf (the same flow trained with
# cross-entropy only: a discriminative classifier of the same architecture), a ResNet-20 DC and the ABS model
# (a VAE per class), each trained or fine-tuned with the noise it is certified at (Cohen et al. train their
# bases that way; clean bases are useless at these sigmas).
#
# The certificates come from Cohen et al.'s CERTIFY (`gclib.smoothing`): n0 = 100 votes guess the class,
# n = 1,000 fresh votes count it, and the one-sided Clopper-Pearson bound at alpha = 0.001 gives the radius.
# The votes (per image, noise seeded by the image) ship as evaluation artifacts; `n_live` images per model
# are recounted here from the shipped weights and must give the same counts. Writes `fig_certified` and
# `table_certified`; glues `certified_*`.

# %% tags=["parameters"]
dataset = "fashion-mnist"
bases = "8,inf,resnet20,abs"  # base models zoo.smoothing_name(base, sigma): gc-sigma-<sigma>-beta-<beta>, ...
sigmas = "0.12,0.25,0.5"
n_live = 1  # images per model recounted here (about 1 s each on a CPU core)
figures = "figures"  # output folder for figures and tables

# %%
import math
import time

import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import evals, plotting, zoo
from gclib.smoothing import SmoothedClassifier, certificates, max_certifiable_radius, seeded_votes

start = time.time()
test = gclib.data.load(dataset)[2]
base_list = [b.strip() for b in bases.split(",") if b.strip()]
sigma_list = [s.strip() for s in sigmas.split(",") if s.strip()]
grid = np.round(np.linspace(0, 1.5, 61), 4)
results = {}
g = torch.Generator().manual_seed(int(time.time()))
shipped = set(zoo.available(dataset))
for sd in sigma_list:
    for b in base_list:
        name = zoo.smoothing_name(b, sd)
        if name not in shipped:  # ABS has no sigma = 0.12 base (see gclib.zoo)
            print(f"{name}: not in the zoo, left out")
            continue
        model = gclib.get_model(name, dataset, device="cpu").eval()
        votes, art = evals.load(evals.path_of(name, "certify", dataset), model_sha256=model.manifest["sha256"])
        spec = art["info"]
        pred, radius = certificates(votes["counts0"], votes["counts"], spec["n_samples"], spec["alpha"], float(sd))
        right = pred == votes["labels"]
        if n_live:
            pick = torch.randperm(len(pred), generator=g)[:n_live]
            c0, c = seeded_votes(SmoothedClassifier(model, float(sd)), test.batch(votes["indices"][pick])[0],
                                 votes["indices"][pick], spec["n0"], spec["n_samples"], seed=spec["noise_seed"])
            assert torch.equal(c0, votes["counts0"][pick]) and torch.equal(c, votes["counts"][pick]), \
                f"{name}: the shipped votes do not match the model"
            print(f"{name}: votes of test images {votes['indices'][pick].tolist()} recounted, identical")
        results[(b, sd)] = {"name": name, "radius": radius, "right": right, "spec": spec,
                            "clean": model.manifest["info"]["test"], "abstained": int((pred == -1).sum())}
n = max(len(r["right"]) for r in results.values())
spec = next(iter(results.values()))["spec"]
assert all((r["spec"]["n0"], r["spec"]["n_samples"], r["spec"]["alpha"]) == (spec["n0"], spec["n_samples"],
                                                                              spec["alpha"]) for r in results.values())
for r in results.values():
    print(f"{r['name']}: {len(r['right'])} test images (the first of the seeded subset)")
print(f"n0 = {spec['n0']}, n = {spec['n_samples']}, alpha = {spec['alpha']}")

# %% [markdown]
# ## Certified accuracy against radius
# The share of test images that g classifies correctly with a certified radius of at least r. A curve
# cannot pass the dotted line, the largest radius n = 1,000 votes can certify at that sigma (all votes for
# one class), whatever the base model: the sample count, not the model, ends each curve there.

# %%
fig, axes = plotting.figure(len(sigma_list), width=3.3, height=2.9)
colors = {"8": "C0", "inf": "C3", "resnet20": "C2", "abs": "C1"}
for ax, sd in zip(axes[0], sigma_list):
    for b in base_list:
        color = colors.get(b, "C4")
        if (b, sd) not in results:
            continue
        r = results[(b, sd)]
        acc = np.array([float((r["right"] & (r["radius"] >= t)).double().mean()) for t in grid])
        se = np.sqrt(acc * (1 - acc) / len(r["right"]))
        ax.plot(grid, 100 * acc, color=color, label=zoo.SMOOTHING_LABELS.get(b, b))
        ax.fill_between(grid, 100 * (acc - se), 100 * (acc + se), color=color, alpha=0.2, lw=0)
    ax.axvline(max_certifiable_radius(spec["n_samples"], spec["alpha"], float(sd)), color="0.4", ls=":", lw=1)
    ax.set_title(f"σ = {sd}", fontsize=9)
    ax.set_xlabel("L2 radius r")
    ax.set_ylim(0, 100)
axes[0][0].set_ylabel(f"certified accuracy (%, up to {n} images)")
legend = {}  # every base once, whichever panel has it (ABS has no sigma = 0.12 panel)
for ax in axes[0]:
    for handle, label in zip(*ax.get_legend_handles_labels()):
        legend.setdefault(label, handle)
axes[0][0].legend(list(legend.values()), list(legend), fontsize=7)
plotting.savefig(fig, "fig_certified", figures)
glue("fig_certified", fig, display=False)

# %% [markdown]
# ## The table
# Certified accuracy (%, with its binomial SE) at the radii of Cohen et al.'s tables, the paired differences
# GC minus DC on the same images (with their SE: the IB-INN against its twin and against the ResNet-20, ABS
# against the ResNet-20), the clean accuracy of the base model on the full test set, and how many images g
# abstains on.

# %%
radii = list(zoo.CERTIFY_RADII)
rows = []
for sd in sigma_list:
    for b in base_list:
        if (b, sd) not in results:
            continue
        r = results[(b, sd)]
        m = len(r["right"])
        row = {"sigma": float(sd), "base": r["name"], "kind": zoo.SMOOTHING_LABELS.get(b, b),
               "base_clean_acc_pct": round(100 * r["clean"]["accuracy"], 2), "abstained": r["abstained"], "n": m, "n0": r["spec"]["n0"], "n_votes": r["spec"]["n_samples"],
               "alpha": r["spec"]["alpha"],
               "max_certifiable_radius": round(max_certifiable_radius(r["spec"]["n_samples"], r["spec"]["alpha"],
                                                                      float(sd)), 3)}
        for t in radii:
            hit = (r["right"] & (r["radius"] >= t)).double()
            row[f"acc_at_{t:g}_pct"] = round(100 * float(hit.mean()), 1)
            row[f"se_at_{t:g}_pct"] = round(100 * math.sqrt(float(hit.mean()) * (1 - float(hit.mean())) / m), 1)
        rows.append(row)
    for gc_base, dc_base in (("8", "inf"), ("8", "resnet20"), ("abs", "resnet20")):
        if (gc_base, sd) not in results or (dc_base, sd) not in results:
            continue
        m = min(len(results[(gc_base, sd)]["right"]), len(results[(dc_base, sd)]["right"]))  # the common images
        tag = "" if (gc_base, dc_base) == ("8", "inf") else f"_{gc_base}_{dc_base}"
        diff_row = {"sigma": float(sd), "base": f"{results[(gc_base, sd)]['name']} minus {results[(dc_base, sd)]['name']}",
                    "kind": "paired difference", "n": m}
        for t in radii:
            gc_r, dc_r = results[(gc_base, sd)], results[(dc_base, sd)]
            d = ((gc_r["right"][:m] & (gc_r["radius"][:m] >= t)).double()
                 - (dc_r["right"][:m] & (dc_r["radius"][:m] >= t)).double())
            diff_row[f"acc_at_{t:g}_pct"] = round(100 * float(d.mean()), 1)
            diff_row[f"se_at_{t:g}_pct"] = round(100 * float(d.std() / math.sqrt(m)), 1)
            key = f"{sd}_{t:g}".replace(".", "") + tag
            glue(f"certified_diff_{key}", f"{100 * float(d.mean()):+.1f}", display=False)
            glue(f"certified_diff_se_{key}", f"{100 * float(d.std() / math.sqrt(m)):.1f}", display=False)
        rows.append(diff_row)
table = pd.DataFrame(rows).astype(object).fillna("")
md = plotting.save_frame(table, "table_certified", figures)
glue("table_certified", table, display=False)
display(Markdown(md))
for row in rows:
    if row["kind"] != "paired difference":
        b = next(b for b in base_list if zoo.smoothing_name(b, f"{row['sigma']:g}") == row["base"])
        key = f"{row['sigma']:g}".replace(".", "") + f"_{b}"
        for t in radii:
            glue(f"certified_{key}_{t:g}".replace(".", ""), f"{row[f'acc_at_{t:g}_pct']:.1f}", display=False)
        glue(f"certified_clean_{key}", f"{row['base_clean_acc_pct']:.2f}", display=False)
glue("certified_n", str(n), display=False)
glue("certified_votes", f"{spec['n_samples']:,}", display=False)
for sd in sigma_list:
    glue(f"certified_max_radius_{sd.replace('.', '')}",
         f"{max_certifiable_radius(spec['n_samples'], spec['alpha'], float(sd)):.2f}", display=False)
print(f"notebook time {time.time() - start:.0f} s")
