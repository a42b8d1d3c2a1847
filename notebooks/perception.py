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
# # Shape bias, frequency reliance, distortions and error consistency
#
# Jaini, Clark and Geirhos (ICLR 2024) find that generative classifiers decide by shape like people,
# resist the model-vs-human distortions and make human-like errors. This notebook builds the analogs
# that exist for Fashion-MNIST without human data or a style-transfer network (`gclib.perception`) and
# runs every shipped model of the zoo through them: the IB-INN at every β (and its extra seeds) and the
# ResNet-18 DC. Every model sees the same images, so all comparisons are paired. It writes
# `table_shape_bias`, `fig_shape_bias`, `table_frequency`, `fig_frequency`, `table_distortions`,
# `fig_distortions`, `table_error_consistency` and `fig_error_consistency`, and glues the numbers the
# chapter cites.

# %% tags=["parameters"]
dataset = "fashion-mnist"
models = "all"  # comma-separated zoo names; "all": every shipped model, "small": the small zoo and its ResNet-18
n_test = 200  # test images (each seen under every condition)
hybrid_cutoff = 3.0  # cycles per image: hybrids take the low frequencies of one class up to here
highpass_cutoffs = "1,2,3,4,6,9"  # cycles per image
band = "0.5,0.8"  # error consistency over the conditions whose mean accuracy lies in this band
min_clean_accuracy = 0.5  # models below this clean accuracy (near chance) are left out of the consistency
n_bootstrap = 200  # resamples of the images for the intervals of the error consistency
seed = 0
device = None  # None: CUDA if available, else CPU
figures = "figures"  # output folder for figures and tables

# %%
import math
import time
from pathlib import Path

import numpy as np
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import explain, plotting
from gclib import perception as P
from gclib.robust import accuracy_se

start = time.time()
_, _, test = gclib.data.load(dataset)
x, y = test.subset(min(n_test, len(test)), seed).tensors()
groups = {"all": gclib.list_models(dataset),
          "small": [n for n in gclib.list_models(dataset) if n.startswith("gc-beta-") or n == "resnet18"]}
names = list(dict.fromkeys(n for m in models.split(",") if m.strip() for n in groups.get(m.strip(), [m.strip()])))
loaded = {name: gclib.get_model(name, dataset, device=device) for name in names}


def order(name):  # GCs by beta and seed, then the feed-forward models
    info = loaded[name].manifest["info"]
    beta = info.get("beta")
    return (beta is None, math.inf if beta in ("inf", None) else float(beta), name.count("large"), info.get("seed", 0))


names = sorted(names, key=order)


def kind_of(name):
    """'large', or '' for the small zoo (config fashion-mnist-small, recorded as fashion-mnist by the older
    manifests: checkpoints.config_name reads both as today's name)."""
    kind = gclib.zoo.variant(gclib.checkpoints.config_name(loaded[name].manifest))
    return "" if kind == "small" else kind


def label(name):
    """Short labels: 'GC β=8', 'GC β=8 s1' for the extra seeds, 'ResNet-18 DC'."""
    if name.startswith("resnet"):
        return "ResNet-18 DC" if name == "resnet18" else f"ResNet-18 DC ({name.removeprefix('resnet18-')})"
    beta = loaded[name].manifest["info"]["beta"]
    seed_ = loaded[name].manifest["info"].get("seed", 0)
    kind = kind_of(name)
    return f"GC{'-' + kind if kind else ''} β={'∞' if beta == 'inf' else beta}" + (f" s{seed_}" if seed_ else "")


def beta_of(name):
    return None if name.startswith("resnet") else loaded[name].manifest["info"]["beta"]


def recipe(name):  # models that differ only in their seed share it
    return kind_of(name), beta_of(name)


labels = [label(n) for n in names]
colors = {label(n): plotting.DC_COLOR if beta_of(n) is None else plotting.BETA_COLORS.get(beta_of(n), "#7f7f7f")
          for n in names}
for n in names:
    d = gclib.classifier.describe(loaded[n])
    print(f"{label(n):>16}: family {d['family']}, class scores {d['score_kind']}")
print(f"{len(names)} models, {len(y)} test images")

# %% [markdown]
# **The conditions.** Every image below is built from the same test images and shown to every model:
# the clean images; the cue-conflict images and their controls; low-pass and high-pass versions at
# several cut-offs; hybrids; the six distortions at every strength. Conditions shared between the
# analyses (the distortions' low-pass sweep is the frequency analysis's) are classified once.

# %%
partner = P.pair_other_class(y, seed)  # the image of another class that lends texture / high frequencies
conditions = {("clean", 0): x,
              ("cue", "patch"): P.cue_conflict(x, x[partner], "patch"),
              ("cue", "spectrum"): P.cue_conflict(x, x[partner], "spectrum"),
              ("cue", "silhouette only"): P.silhouette_only(x),
              ("cue", "texture only"): P.texture_only(x),
              ("hybrid", hybrid_cutoff): P.to_grid(P.hybrid(x, x[partner], hybrid_cutoff))}
hp_cutoffs = [float(c) for c in highpass_cutoffs.split(",")]
for c in hp_cutoffs:
    conditions[("high_pass", c)] = P.to_grid(P.highpass(x, c))
for name, strengths in P.DISTORTIONS.items():
    for s in strengths:
        conditions[(name, s)] = P.distort(x, name, s, seed)
keys = list(conditions)
x_all = torch.cat([conditions[k] for k in keys])
print(f"{len(keys)} conditions x {len(y)} images = {len(x_all)} classifications per model")

predictions = {}
for n in names:
    t = time.time()
    predictions[n] = explain.logits(loaded[n], x_all).argmax(1).reshape(len(keys), len(y))
    print(f"{label(n):>16}: {time.time() - t:.1f} s")
index = {k: i for i, k in enumerate(keys)}


def correct(n, key):
    return predictions[n][index[key]] == y


# %% [markdown]
# ## Cue conflict: shape or texture?
#
# Each cue-conflict image has the silhouette of a test image (its *shape class*) and the texture of an
# image of another class (its *texture class*). Texture comes two ways: `patch` tiles the 8x8 window with
# the most garment pixels of the texture image inside the silhouette; `spectrum` keeps the shape image's
# Fourier phase (edges and layout) and takes the texture image's amplitude spectrum. Shape bias = shape
# decisions / (shape + texture decisions), over the decisions that follow either cue ("cue share"), with
# its binomial SE. The controls say how much each cue alone tells a model: the silhouette filled with its
# mean intensity, and the texture patch tiled over the whole frame (chance is 10 %).

# %%
examples = {"shape": [x[i] for i in range(4)], "texture": [x[partner[i]] for i in range(4)],
            "patch": [conditions[("cue", "patch")][i] for i in range(4)],
            "spectrum": [conditions[("cue", "spectrum")][i] for i in range(4)],
            "silhouette only": [conditions[("cue", "silhouette only")][i] for i in range(4)],
            "texture only": [conditions[("cue", "texture only")][i] for i in range(4)]}
shape_rows, bias_rows = [], []
for n in names:
    clean_acc, clean_se = accuracy_se(correct(n, ("clean", 0)))
    sil, sil_se = accuracy_se(correct(n, ("cue", "silhouette only")))
    tex, tex_se = accuracy_se(correct(n, ("cue", "texture only")))
    row = {"model": label(n), "n": len(y), "clean_pct": round(100 * clean_acc, 1),
           "silhouette_pct": round(100 * sil, 1), "silhouette_se": round(100 * sil_se, 1),
           "texture_pct": round(100 * tex, 1), "texture_se": round(100 * tex_se, 1)}
    for method in ("patch", "spectrum"):
        b = P.shape_bias(predictions[n][index[("cue", method)]], y, y[partner])
        row[f"bias_{method}"] = round(b["shape_bias"], 3)
        row[f"bias_{method}_se"] = round(b["se"], 3)
        row[f"cue_share_{method}"] = round(100 * b["cue_share"], 1)
        bias_rows.append({"model": label(n), "method": method, "shape_bias": b["shape_bias"], "se": b["se"]})
    shape_rows.append(row)
plotting.save_table(shape_rows, "table_shape_bias", figures, headers={
    "model": "model", "n": "n", "clean_pct": "clean acc. (%)", "silhouette_pct": "silhouette only (%)",
    "silhouette_se": "± SE", "texture_pct": "texture only (%)", "texture_se": "± SE",
    "bias_patch": "shape bias, patch", "bias_patch_se": "± SE", "cue_share_patch": "cue share (%)",
    "bias_spectrum": "shape bias, spectrum", "bias_spectrum_se": "± SE", "cue_share_spectrum": "cue share (%)"})
display(Markdown((Path(figures) / "table_shape_bias.md").read_text()))
fig = P.plot_shape_bias(bias_rows, examples, colors)
plotting.savefig(fig, "fig_shape_bias", figures)

# %% [markdown]
# ## Frequency: which band does each model use?
#
# Accuracy under ideal low-pass filters (the frequencies at or below the cut-off kept) and high-pass
# filters (above the cut-off kept, with the image mean), the cut-off in cycles per image (at 28 px the
# highest frequency is 14). The hybrids take the frequencies up to `hybrid_cutoff` from the test image
# and those above from an image of another class; the share of decisions for the low-frequency class
# among the decisions for either says which band a model follows.

# %%
lp_cutoffs = sorted(P.DISTORTIONS["low_pass"])
curves = {"low-pass": {}, "high-pass": {}}
freq_rows, hybrid_rows = [], []
for n in names:
    curves["low-pass"][label(n)] = [float(correct(n, ("low_pass", c)).float().mean()) for c in lp_cutoffs]
    curves["high-pass"][label(n)] = [float(correct(n, ("high_pass", c)).float().mean()) for c in hp_cutoffs]
    pred = predictions[n][index[("hybrid", hybrid_cutoff)]]
    low, high = int((pred == y).sum()), int((pred == y[partner]).sum())
    share = low / (low + high) if low + high else math.nan
    se = math.sqrt(share * (1 - share) / (low + high)) if low + high else math.nan
    hybrid_rows.append({"model": label(n), "low_share": share, "low_se": se})
    row = {"model": label(n), "n": len(y)}
    for c in (2, 3, 5):
        a, s = accuracy_se(correct(n, ("low_pass", c)))
        row[f"lp{c}"], row[f"lp{c}_se"] = round(100 * a, 1), round(100 * s, 1)
    for c in (3, 6):
        a, s = accuracy_se(correct(n, ("high_pass", float(c))))
        row[f"hp{c}"], row[f"hp{c}_se"] = round(100 * a, 1), round(100 * s, 1)
    row["hybrid_low"], row["hybrid_low_se"] = round(share, 3), round(se, 3)
    row["hybrid_share"] = round(100 * (low + high) / len(y), 1)
    freq_rows.append(row)
plotting.save_table(freq_rows, "table_frequency", figures, headers={
    "model": "model", "n": "n", "lp2": "low-pass 2 (%)", "lp2_se": "± SE", "lp3": "low-pass 3 (%)",
    "lp3_se": "± SE", "lp5": "low-pass 5 (%)", "lp5_se": "± SE", "hp3": "high-pass 3 (%)", "hp3_se": "± SE",
    "hp6": "high-pass 6 (%)", "hp6_se": "± SE", "hybrid_low": f"hybrid ({hybrid_cutoff:g}): low share",
    "hybrid_low_se": "± SE", "hybrid_share": "cue share (%)"})
display(Markdown((Path(figures) / "table_frequency.md").read_text()))
freq_examples = {"low-pass 20, 5, 3, 2": [conditions[("low_pass", c)][0] for c in (20, 5, 3, 2)],
                 "high-pass 1, 3, 6": [conditions[("high_pass", float(c))][0] for c in (1, 3, 6)],
                 "hybrid": [conditions[("hybrid", hybrid_cutoff)][0]]}
fig = P.plot_frequency(curves, {"low-pass": lp_cutoffs, "high-pass": hp_cutoffs}, hybrid_rows, colors,
                       freq_examples)
plotting.savefig(fig, "fig_frequency", figures)

# %% [markdown]
# ## The model-vs-human distortions
#
# Accuracy against strength for the six distortions that make sense at 28x28 (parameters in
# `gclib.perception.DISTORTIONS`: contrast blends toward grey, uniform noise follows a contrast reduction
# to 0.3 as in model-vs-human, phase noise keeps the power spectrum, power equalisation moves every
# image's amplitude spectrum toward the mean one, rotations are by quarter turns). The mean is over every
# distorted condition (the undistorted strength of each left out), its SE over images.

# %%
dist_curves = {name: {} for name in P.DISTORTIONS}
dist_rows = []
distorted = [(name, s) for name, ss in P.DISTORTIONS.items() for s in ss[1:]]
for n in names:
    for name, ss in P.DISTORTIONS.items():
        dist_curves[name][label(n)] = [float(correct(n, (name, s)).float().mean()) for s in ss]
    per_image = torch.stack([correct(n, k) for k in distorted], 1)  # [N, conditions]
    mean, se = accuracy_se(per_image)
    row = {"model": label(n), "n": len(y), "mean_pct": round(100 * mean, 1), "mean_se": round(100 * se, 1)}
    for name, ss in P.DISTORTIONS.items():
        row[name] = round(100 * float(torch.stack([correct(n, (name, s)) for s in ss[1:]]).float().mean()), 1)
    dist_rows.append(row)
plotting.save_table(dist_rows, "table_distortions", figures, headers={
    "model": "model", "n": "n", "mean_pct": "mean acc. (%)", "mean_se": "± SE",
    **{name: name.replace("_", " ") + " (%)" for name in P.DISTORTIONS}})
display(Markdown((Path(figures) / "table_distortions.md").read_text()))
dist_examples = {name: [conditions[(name, s)][1] for s in ss[:: max(1, len(ss) // 4)]][:4]
                 for name, ss in P.DISTORTIONS.items()}
fig = P.plot_distortions(dist_curves, colors, dist_examples)
plotting.savefig(fig, "fig_distortions", figures)

# %% [markdown]
# ## Error consistency between every pair of models
#
# Cohen's kappa of two models' right/wrong patterns (Geirhos et al. 2020), per distorted condition, then
# averaged over the conditions whose accuracy (averaged over the models) lies in the `band`, where errors
# are frequent but the models still work. Models near chance on clean images (β = 0) are left out: the
# kappa of a guesser is 0 by construction. The 95 % intervals resample the images (the same resample for
# every model and condition). Average-linkage clustering on 1 − κ orders the matrix. The groups: the
# IB-INN at finite β (generative), and the discriminative models: the ResNet-18 DC and the IB-INN trained
# by cross-entropy alone (β = ∞, the GC's feed-forward twin: same architecture, no density term). The
# table gives the mean κ within the GCs (pairs of different β) and across the groups, the twin and the
# ResNet apart (the twin shares the GC's architecture, the ResNet shares nothing), and between two
# seeds of the same β: how consistent one recipe is with itself, the ceiling for any pair.

# %%
low_band, high_band = (float(v) for v in band.split(","))
kept = [n for n in names if float(correct(n, ("clean", 0)).float().mean()) >= min_clean_accuracy]
left_out = [label(n) for n in names if n not in kept]
acc = np.array([[float(correct(n, k).float().mean()) for k in distorted] for n in kept])
use = P.consistency_conditions(acc, low_band, high_band)
chosen = [k for k, u in zip(distorted, use) if u]
print(f"{len(chosen)} of {len(distorted)} distorted conditions in the band: "
      + ", ".join(f"{k[0]} {k[1]:g}" for k in chosen))
print("left out (near chance on clean images):", ", ".join(left_out) or "none")
corr = np.stack([np.stack([correct(n, k).numpy() for k in chosen]) for n in kept])  # [M, K, N]
ec = P.consistency_matrix(corr, n_bootstrap, seed)
kept_labels = [label(n) for n in kept]
generative = [beta_of(n) not in (None, "inf") for n in kept]
is_resnet = [beta_of(n) is None for n in kept]
gen_idx = [i for i, g in enumerate(generative) if g]
dc_idx = [i for i, g in enumerate(generative) if not g]


def group_mean(kappa, a_idx, b_idx):
    # pairs of two different recipes: two seeds of one beta are the "same beta, other seed" row
    pairs = [(i, j) for i in a_idx for j in b_idx if i != j and not (generative[i] and generative[j]
                                                                       and recipe(kept[i]) == recipe(kept[j]))]
    return float(np.nanmean([kappa[i, j] for i, j in pairs])) if pairs else math.nan


def interval(fn):
    values = np.array([fn(s) for s in ec["samples"]])
    return fn(ec["kappa"]), *np.nanquantile(values, [0.025, 0.975])


twin_idx = [i for i, n in enumerate(kept) if beta_of(n) == "inf"]
resnet_idx = [i for i, r in enumerate(is_resnet) if r]
same_beta = [(i, j) for i in gen_idx for j in gen_idx if i < j and recipe(kept[i]) == recipe(kept[j])]
summary = {  # name -> (estimate, 95 % low, 95 % high)
    "GC-GC": interval(lambda k: group_mean(k, gen_idx, gen_idx)),
    "GC-DC": interval(lambda k: group_mean(k, gen_idx, dc_idx)),
    "GC-twin": interval(lambda k: group_mean(k, gen_idx, twin_idx)),
    "GC-ResNet": interval(lambda k: group_mean(k, gen_idx, resnet_idx)),
    "GC-GC minus GC-DC": interval(lambda k: group_mean(k, gen_idx, gen_idx) - group_mean(k, gen_idx, dc_idx)),
    "GC-GC minus GC-ResNet": interval(lambda k: group_mean(k, gen_idx, gen_idx)
                                      - group_mean(k, gen_idx, resnet_idx)),
    "same β, other seed": interval(lambda k: float(np.nanmean([k[i, j] for i, j in same_beta]))
                                   if same_beta else math.nan),
}
for name, (v, lo, hi) in summary.items():
    print(f"mean κ {name:>22}: {v:.3f} (95 % interval {lo:.3f} to {hi:.3f})")

ec_rows = [{"pairs": name, "kappa": round(v, 3), "low": round(lo, 3), "high": round(hi, 3)}
           for name, (v, lo, hi) in summary.items()]
plotting.save_table(ec_rows, "table_error_consistency", figures, headers={
    "pairs": "pairs of models", "kappa": "mean κ", "low": "95 % low", "high": "95 % high"})
display(Markdown((Path(figures) / "table_error_consistency.md").read_text()))
resnet = is_resnet.index(True) if any(is_resnet) else None
beta_rows = []
for i, n in enumerate(kept):
    if resnet is not None and i != resnet and not loaded[n].manifest["info"].get("seed", 0) and not recipe(n)[0]:
        b = beta_of(n)
        beta_rows.append({"x": plotting._beta_x(b) if b in plotting._BETA_ORDER else i,
                          "label": "∞" if b == "inf" else b, "kappa": float(ec["kappa"][i, resnet]),
                          "low": float(ec["low"][i, resnet]), "high": float(ec["high"][i, resnet]),
                          "color": colors[kept_labels[i]]})
fig = P.plot_error_consistency(ec, kept_labels, generative, beta_rows)
plotting.savefig(fig, "fig_error_consistency", figures)

# %%
# For the chapter's prose.
def key(lbl):
    if lbl.startswith("ResNet"):
        return "dc"
    kind = lbl.split(" ")[0][3:]  # "GC-large β=1" -> "large"
    return (kind + "_" if kind else "") + "beta_" + lbl.split("=")[1].replace("∞", "inf").replace(" ", "_")


for r in shape_rows:
    for col in ("clean_pct", "silhouette_pct", "silhouette_se", "texture_pct", "texture_se",
                "bias_patch", "bias_patch_se", "cue_share_patch", "bias_spectrum", "bias_spectrum_se",
                "cue_share_spectrum"):
        glue(f"perc_{col}_{key(r['model'])}", f"{r[col]}", display=False)
for r in freq_rows:
    for col in ("lp2", "lp3", "lp5", "hp3", "hp6", "hybrid_low", "hybrid_low_se", "hybrid_share"):
        glue(f"perc_{col}_{key(r['model'])}", f"{r[col]}", display=False)
for r in dist_rows:
    for col in ("mean_pct", "mean_se", *P.DISTORTIONS):
        glue(f"perc_dist_{col}_{key(r['model'])}", f"{r[col]}", display=False)
for row in beta_rows:
    glue(f"perc_kappa_dc_{row['label'].replace('∞', 'inf')}", f"{row['kappa']:.2f}", display=False)
    glue(f"perc_kappa_dc_{row['label'].replace('∞', 'inf')}_ci", f"{row['low']:.2f} to {row['high']:.2f}",
         display=False)
for name, (v, lo, hi) in summary.items():
    k = "perc_kappa_" + name.replace(" ", "_").replace("-", "_").replace("β", "beta").replace(",", "")
    glue(k, f"{v:.2f}", display=False)
    glue(k + "_ci", f"{lo:.2f} to {hi:.2f}", display=False)
glue("perc_n_conditions", str(len(chosen)), display=False)
glue("perc_n_distorted", str(len(distorted)), display=False)
glue("perc_conditions", ", ".join(f"{k[0].replace('_', ' ')} {k[1]:g}" for k in chosen), display=False)
glue("perc_n_test", str(len(y)), display=False)
glue("perc_n_models", str(len(names)), display=False)
glue("perc_left_out", ", ".join(left_out) or "none", display=False)
print(f"done in {time.time() - start:.1f} s")
