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
# # Randomized smoothing: certified L2 robustness of a GC and its discriminative twin
#
# Randomized smoothing (Cohen, Rosenfeld, Kolter, ICML 2019) turns any classifier f into a classifier g whose
# prediction provably cannot change within an L2 ball: g(x) is the class f picks most often under Gaussian
# noise of std sigma, and if f picks it with probability p_A > 1/2, g is constant within sigma Phi^-1(p_A).
# An Ju's thesis uses it as the bridge between generative and discriminative classifiers. Here the base
# models are the small zoo's IB-INN at beta = 8 (a GC) and at beta = inf (the same flow trained with
# cross-entropy only: a discriminative classifier of the same architecture), each fine-tuned with the noise
# it is certified at (Cohen et al. train their bases that way; clean bases are useless at these sigmas).
#
# The certificates come from Cohen et al.'s CERTIFY (`gclib.smoothing`): n0 = 100 votes guess the class,
# n = 1,000 fresh votes count it, and the one-sided Clopper-Pearson bound at alpha = 0.001 gives the radius.
# The votes (per image, noise seeded by the image) ship as evaluation artifacts; `n_live` images per model
# are recounted here from the shipped weights and must give the same counts. Writes `fig_certified` and
# `table_certified`; glues `certified_*`.

# %% tags=["parameters"]
dataset = "fashion-mnist"
betas = "8,inf"  # base models gc-sigma-<sigma>-beta-<beta>
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
beta_list = [b.strip() for b in betas.split(",") if b.strip()]
sigma_list = [s.strip() for s in sigmas.split(",") if s.strip()]
grid = np.round(np.linspace(0, 1.5, 61), 4)
results = {}
g = torch.Generator().manual_seed(int(time.time()))
for sd in sigma_list:
    for b in beta_list:
        name = zoo.smoothing_name(b, sd)
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
n = len(next(iter(results.values()))["right"])
spec = next(iter(results.values()))["spec"]
print(f"{n} test images (seeded subset), n0 = {spec['n0']}, n = {spec['n_samples']}, alpha = {spec['alpha']}")

# %% [markdown]
# ## Certified accuracy against radius
# The share of test images that g classifies correctly with a certified radius of at least r. A curve
# cannot pass the dotted line, the largest radius n = 1,000 votes can certify at that sigma (all votes for
# one class), whatever the base model: the sample count, not the model, ends each curve there.

# %%
fig, axes = plotting.figure(len(sigma_list), width=3.3, height=2.9)
names = {"8": "GC (β = 8)", "inf": "DC twin (β = ∞)"}
for ax, sd in zip(axes[0], sigma_list):
    for b, color in zip(beta_list, ("C0", "C3", "C2")):
        r = results[(b, sd)]
        acc = np.array([float((r["right"] & (r["radius"] >= t)).double().mean()) for t in grid])
        se = np.sqrt(acc * (1 - acc) / n)
        ax.plot(grid, 100 * acc, color=color, label=names.get(b, f"β = {b}"))
        ax.fill_between(grid, 100 * (acc - se), 100 * (acc + se), color=color, alpha=0.2, lw=0)
    ax.axvline(max_certifiable_radius(spec["n_samples"], spec["alpha"], float(sd)), color="0.4", ls=":", lw=1)
    ax.set_title(f"σ = {sd}", fontsize=9)
    ax.set_xlabel("L2 radius r")
    ax.set_ylim(0, 100)
axes[0][0].set_ylabel(f"certified accuracy (%, {n} images)")
axes[0][0].legend(fontsize=7)
plotting.savefig(fig, "fig_certified", figures)
glue("fig_certified", fig, display=False)

# %% [markdown]
# ## The table
# Certified accuracy (%, with its binomial SE) at the radii of Cohen et al.'s tables, the paired difference
# GC minus DC twin on the same images (with its SE), the clean accuracy of the base model on the full test
# set, and how many images g abstains on.

# %%
radii = list(zoo.CERTIFY_RADII)
rows = []
for sd in sigma_list:
    for b in beta_list:
        r = results[(b, sd)]
        row = {"sigma": float(sd), "base": r["name"], "base_clean_acc_pct": round(100 * r["clean"]["accuracy"], 2),
               "abstained": r["abstained"], "n": n, "n0": r["spec"]["n0"], "n_votes": r["spec"]["n_samples"],
               "alpha": r["spec"]["alpha"],
               "max_certifiable_radius": round(max_certifiable_radius(r["spec"]["n_samples"], r["spec"]["alpha"],
                                                                      float(sd)), 3)}
        for t in radii:
            hit = (r["right"] & (r["radius"] >= t)).double()
            row[f"acc_at_{t:g}_pct"] = round(100 * float(hit.mean()), 1)
            row[f"se_at_{t:g}_pct"] = round(100 * math.sqrt(float(hit.mean()) * (1 - float(hit.mean())) / n), 1)
        rows.append(row)
    if "8" in beta_list and "inf" in beta_list:
        diff_row = {"sigma": float(sd), "base": "GC minus DC twin (paired)"}
        for t in radii:
            d = ((results[("8", sd)]["right"] & (results[("8", sd)]["radius"] >= t)).double()
                 - (results[("inf", sd)]["right"] & (results[("inf", sd)]["radius"] >= t)).double())
            diff_row[f"acc_at_{t:g}_pct"] = round(100 * float(d.mean()), 1)
            diff_row[f"se_at_{t:g}_pct"] = round(100 * float(d.std() / math.sqrt(n)), 1)
            key = f"{sd}_{t:g}".replace(".", "")
            glue(f"certified_diff_{key}", f"{100 * float(d.mean()):+.1f}", display=False)
            glue(f"certified_diff_se_{key}", f"{100 * float(d.std() / math.sqrt(n)):.1f}", display=False)
        rows.append(diff_row)
table = pd.DataFrame(rows).astype(object).fillna("")
md = table.to_markdown(index=False)
with open(f"{figures}/table_certified.md", "w") as f:
    f.write(md + "\n")
table.to_csv(f"{figures}/table_certified.csv", index=False)
glue("table_certified", table, display=False)
display(Markdown(md))
for row in rows:
    if row["base"].startswith("gc-sigma-"):
        b = row["base"].rsplit("-", 1)[1]
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
