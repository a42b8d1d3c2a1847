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
# # Does model strength change the headline numbers?
#
# The explainability and robustness chapters draw their conclusions from the small IB-INN zoo (144k
# parameters, 10 epochs) and the ResNet-18 DC. This notebook recomputes every headline number of those
# chapters for a list of models, small and large GCs (`gc-large-beta-*`: 3.2M parameters) and the ResNet, on
# the same fixed test images for every model (paired), with the chapters' own `gclib` functions and
# definitions and their standard errors. The book's time budget sets the sample sizes: the clean-image
# measurements use the first `n_test` images of the seeded test subset, the costlier ones (corruptions,
# attacks, integrated gradients) its first `n_corrupt`, `n_attack` and `n_attr` images. Each row of the
# table states its n. It writes `table_model_strength` and `fig_model_strength` and glues the numbers the
# chapter cites (keys `strength_*`).

# %% tags=["parameters"]
dataset = "fashion-mnist"
models = "gc-beta-1,gc-large-beta-1,gc-beta-8,resnet18"  # comma-separated zoo names (GCs small or large, DCs)
n_test = 500  # test images for accuracy, calibration, both/neither, OoD (in-distribution) and counterfactuals
n_val = 300  # held-out validation images: the typical range and the detectors' reference
n_ood = 100  # images per OoD set
n_corrupt = 40  # the first test images, each seen clean and under every corruption at every severity
n_attack = 40  # the first test images, attacked where a model classifies them correctly
n_attr = 32  # the first test images, attributed by integrated gradients and scored by deletion/insertion
eps_linf = "1/16,1/4,1,4,16"  # the adversarial chapter's PGD-Linf budgets (x 1/255); the table reports 1 and 4
steps = 10  # PGD steps (step size 2.5 eps / steps), plain and adaptive
detect_eps = "1,4"  # the adaptive attacker's budgets (x 1/255), from the smallest up; the table reports 4
adaptive_weight = 10.0  # the adaptive attack's penalty in nats per bit/dim outside the typical band
n_bins = 15  # confidence bins of the ECE
n_ig_steps = 16  # integration points of integrated gradients
del_steps = 10  # deletion and insertion steps
margin = 1.0  # nats by which the runner-up must lead at the counterfactual
n_bootstrap = 200  # resamples of the images for the bootstrap SEs (ECE, kappa)
seed = 0
device = None  # None: CUDA if available, else CPU
figures = "figures"  # output folder for figures and tables

# %%
import math
import re
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import attacks, attribution, calibration, detect, explain, latent, plotting, robust

start = time.time()
timings = {}
train, val, test = gclib.data.load(dataset)
x, y = test.subset(min(n_test, len(test)), seed).tensors()
x_val, _ = val.subset(min(n_val, len(val)), seed).tensors()
shape = tuple(x.shape[1:])
n_c, n_a, n_h = (min(k, len(x)) for k in (n_corrupt, n_attack, n_attr))
names = [m.strip() for m in models.split(",") if m.strip()]
loaded = {name: gclib.get_model(name, dataset, device=device).eval() for name in names}
info = {name: gclib.classifier.describe(m) for name, m in loaded.items()}


def beta_of(name):
    return loaded[name].manifest["info"].get("beta")


def kind_of(name):
    """The GC's variant from its zoo name: 'gc-large-beta-1' -> 'large', 'gc-beta-8' -> '' (the small zoo).

    Read from the name, not from the stored config's name, which changes when configs are renamed."""
    match = re.match(r"gc-(?:([a-z]+)-)?beta-", name)
    return (match.group(1) or "") if match else ""


def is_gc(name):  # an IB-INN: exact class likelihoods, a density and an invertible latent space
    return info[name]["family"] == "ibinn"


def order(name):  # the GCs by beta (small before large), then the feed-forward models
    beta = beta_of(name)
    return (not is_gc(name), math.inf if beta in ("inf", None) else float(beta), kind_of(name),
            loaded[name].manifest["info"].get("seed", 0), name)


names = sorted(names, key=order)


# the DC that the chapters compare with (error consistency, counterfactuals judged by a second model): the first
# ResNet of the list; a second one (e.g. resnet18-long, the same recipe trained longer) is its stronger twin
dc_name = next((n for n in [m.strip() for m in models.split(",")] if n in info and info[n]["family"] == "resnet"), None)


def label(name):
    """'GC β=8', 'GC-large β=1', 'GC β=8 s1' for an extra seed, 'ResNet-18 DC' (another ResNet: with its epochs)."""
    if not is_gc(name):
        if not name.startswith("resnet"):
            return name
        return "ResNet-18 DC" + ("" if name == dc_name else f", {loaded[name].manifest['info']['epochs']} epochs")
    beta, kind = beta_of(name), kind_of(name)
    s = loaded[name].manifest["info"].get("seed", 0)
    return f"GC{'-' + kind if kind else ''} β={'∞' if beta == 'inf' else beta}" + (f" s{s}" if s else "")


def key(name):
    """Glue key of a model: 'beta_8', 'large_beta_1', 'beta_8_s1', 'dc' for the ResNet."""
    if not is_gc(name):
        if name == dc_name:
            return "dc"
        return ("dc_" + re.sub(r"^resnet\d*-?", "", name) if name.startswith("resnet") else name).replace("-", "_")
    s = loaded[name].manifest["info"].get("seed", 0)
    return (kind_of(name) + "_" if kind_of(name) else "") + f"beta_{beta_of(name)}" + (f"_s{s}" if s else "")


gcs = [n for n in names if is_gc(n)]
for n in names:
    print(f"{label(n):>14}: {n}, family {info[n]['family']}, {info[n]['parameters']:,} parameters, "
          f"density {info[n]['density_kind']}")
print(f"{len(y)} test images ({n_c} under corruptions, {n_a} attacked, {n_h} attributed), {len(x_val)} validation "
      f"images, {n_ood} per OoD set")

# %% [markdown]
# **What exists for which model.** The ResNet has no density and no invertible latent space: the rows that
# need them (the density's OoD tests, the density as the detector of the adaptive attack, the attack on it,
# the latent counterfactuals) are "–" for it. Where a chapter gives the DC a score of its own (minus its
# max-softmax for "both" and "neither", max-softmax and energy for OoD inputs, integrated gradients of its
# logit difference for deletion/insertion) the ResNet's column holds that score. The energy of a GC's
# logits is its one-tailed log p(x) test again, so that row is "–" for the GCs; the error consistency of
# the DC with itself is "–" too. The AUROCs of "both" and "neither" rank by the scores and do not depend on
# the thresholds of the chapter's regions (`coverage`, `max_ratio`), so those are not parameters here.
#
# ## Clean images, validation images and the OoD sets: one pass per model
#
# The in-distribution and OoD inputs are the chapters' own: the five sets that need no download
# (`gclib.data.ood`) and four transforms of another draw of test images (`gclib.data.transformed`), as
# in the OoD chapter; "both"/"neither" pools the first five, as the Figure 1 notebook does.

# %%
ood = {name: gclib.data.ood(name, n_ood, shape, seed) for name in gclib.data.ood_names()}
x_other, _ = test.subset(min(n_ood, len(test)), seed + 1).tensors()
ood.update({name: gclib.data.transformed(x_other, name) for name in gclib.data.TRANSFORMS})
ood_names = list(ood)
bn_sets = gclib.data.ood_names()  # the sets of the both/neither analysis
out = {}  # model -> {"test", "val", set: outputs}
t0 = time.time()
for n in names:
    m = loaded[n]
    if is_gc(n):
        out[n] = {k: explain.gc_outputs(m, v) for k, v in {"test": x, "val": x_val, **ood}.items()}
    else:
        out[n] = {k: {"logits": explain.logits(m, v)} for k, v in {"test": x, **ood}.items()}
    out[n]["probs"] = calibration.predict_probs(m, x)
timings["clean and OoD passes"] = time.time() - t0

# %% [markdown]
# ## The metrics
#
# Each metric is a row; each model's cell is `(value, SE)`, or `None` where the metric does not exist for
# it. The standard errors are the chapters': Hanley-McNeil for AUROCs (`gclib.detect.auroc_se`), bootstrap
# over images for ECE and κ, over images for accuracies (the 60 corrupted versions of an image count as one
# sample), binomial for rates, the SEM over images for deletion/insertion AUCs.

# %%
rows = []  # {"key", "chapter", "metric", "score", "n", "digits", "values": {model: (value, se) or None}, "per_image"}


def add(k, chapter, metric, score, n, values, digits=1, per_image=None):
    """One metric. ``per_image``: {model: per-image values [N] on the same N images for every model, in the
    metric's unit}, where the metric is their mean; it gives the small-vs-large differences a paired SE."""
    rows.append({"key": k, "chapter": chapter, "metric": metric, "score": score, "n": n, "digits": digits,
                 "values": {name: values.get(name) for name in names}, "per_image": per_image or {}})


def auroc_pct(pos, neg):
    """AUROC (%) of telling ``pos`` (positives, higher score) from ``neg``, with its Hanley-McNeil SE (%)."""
    area = detect.auroc(neg, pos)
    return 100 * area, 100 * detect.auroc_se(area, len(detect._flat(neg)), len(detect._flat(pos)))


correct_test = {n: (out[n]["probs"].argmax(1) == y).numpy() for n in names}
add("accuracy", "context", "clean accuracy (%)", "", len(y),
    {n: tuple(100 * v for v in robust.accuracy_se(correct_test[n])) for n in names},
    per_image={n: 100. * correct_test[n] for n in names})

# %% [markdown]
# ### Both or neither (Figure 1 notebook)
#
# "Both" as a ranking of the model's own test errors: for a GC by minus the log-likelihood ratio of its two
# most likely classes, for the DC by minus its max-softmax. "Neither" as a ranking of the pooled OoD images
# against the test images: for a GC by the two-tailed atypicality of its bits/dim against the validation
# images, for the DC by minus its max-softmax. And whether a score tells "neither" from "both": the pooled
# OoD images against the model's test errors.

# %%
both, neither, separate = {}, {}, {}
for n in names:
    o = out[n]
    if is_gc(n):
        ref = o["val"]["bits_per_dim"]
        wrong = (o["test"]["prediction"] != y).numpy()
        gap = explain.top2(o["test"]["log_likelihoods"], loaded[n].n_dims)["log_ratio"].numpy()
        doubt_test = -gap  # higher = the two best classes closer = more "both"
        atyp = {k: detect.two_tailed(o[k]["bits_per_dim"], ref) for k in ["test", *bn_sets]}
        pooled, atyp_test = np.concatenate([atyp[k] for k in bn_sets]), atyp["test"]
    else:
        wrong = (o["test"]["logits"].argmax(1) != y).numpy()
        score = {k: detect.max_softmax(o[k]["logits"]) for k in ["test", *bn_sets]}  # minus max-softmax
        doubt_test, atyp_test = score["test"], score["test"]
        pooled = np.concatenate([score[k] for k in bn_sets])
    both[n] = auroc_pct(doubt_test[wrong], doubt_test[~wrong])
    neither[n] = auroc_pct(pooled, atyp_test)
    separate[n] = auroc_pct(pooled, atyp_test[wrong])
n_pooled = n_ood * len(bn_sets)
add("both_auroc", "explainability", '"both" finds the model\'s test errors: AUROC (%)',
    "GC: −log-likelihood ratio; DC: −max-softmax", len(y), both)
add("neither_auroc", "explainability", '"neither" finds the OoD images, 5 sets pooled (vs test): AUROC (%)',
    "GC: two-tailed bits/dim; DC: −max-softmax", f"{len(y)} + {n_pooled}", neither)
add("separate_auroc", "explainability", '"neither" vs "both": pooled OoD vs the test errors: AUROC (%)',
    "as above", f"errors + {n_pooled}", separate)

# %% [markdown]
# ### Deletion and insertion (heatmaps notebook)
#
# The GC's native attribution, integrated gradients of its log-likelihood ratio, and the DC's integrated
# gradients of its logit difference (its best method in the chapter), both from the mean training image;
# the areas under the deletion and insertion curves of the two-class posterior, and a random pixel order as
# the reference (part of the GC's lead in the chapter is that any deletion flips it more easily).

# %%
baseline = (train.images.double() / 255).mean(0, keepdim=True).float()
x_h = x[:n_h]
faith, faith_auc = {}, {}
t0 = time.time()
for n in names:
    m = loaded[n]
    top, runner = attribution.decision_pair(m, x_h, 250)
    ig = attribution.attribute(m, x_h, "integrated_gradients", baseline, top, runner, n_steps=n_ig_steps,
                               batch_size=250)
    curves_h = {method: attribution.perturbation_curves(m, x_h, a, baseline, top, runner, del_steps, 250, seed)
                for method, a in (("integrated_gradients", ig), ("random", attribution.random_attribution(x_h, seed)))}
    faith[n] = {method: attribution.faithfulness_row(label(n), method, c) for method, c in curves_h.items()}
    faith_auc[n] = {(method, kind): attribution.auc(attribution.decision_probability(c[kind]), c["fraction"])
                    for method, c in curves_h.items() for kind in ("deletion", "insertion")}
timings["integrated gradients, deletion/insertion"] = time.time() - t0
score = "integrated gradients (GC: of the log-likelihood ratio; DC: of the logit difference)"
for k, kind, method, metric, sc in (
        ("deletion_auc", "deletion", "integrated_gradients", "deletion AUC ↓", score),
        ("insertion_auc", "insertion", "integrated_gradients", "insertion AUC ↑", score),
        ("deletion_random", "deletion", "random", "deletion AUC, random pixel order (reference)", "random order")):
    add(k, "explainability", metric, sc, n_h, {n: (f[method][f"{kind}_auc"], f[method][f"{kind}_sem"])
                                               for n, f in faith.items()}, 3,
        per_image={n: a[method, kind] for n, a in faith_auc.items()})

# %% [markdown]
# ### Counterfactuals (latent-space notebook)
#
# Every test image moved in the GC's latent space toward its runner-up class until the runner-up leads by
# `margin` nats (`gclib.latent.counterfactual_stats`): how often the decision stays flipped once the
# counterfactual is rounded to 8 bits (the chapter's flip rate), and how often the ResNet-18 reads the
# decoded runner-up mean as the runner-up.

# %%
cf = {}
t0 = time.time()
for n in gcs:
    cf[n] = latent.counterfactual_stats(loaded[n], x, None, loaded[dc_name] if dc_name else None, margin)
timings["counterfactuals"] = time.time() - t0


def rate_se(flags):
    p = float(torch.as_tensor(flags).double().mean())
    return 100 * p, 100 * attacks.binomial_se(p, len(flags))


add("cf_flipped", "explainability", "counterfactual still flipped after 8-bit rounding (%)",
    f"latent move to the runner-up, margin {margin:g} nat", len(y),
    {n: rate_se(s["cf_kept_8bit"]) for n, s in cf.items()},
    per_image={n: 100. * s["cf_kept_8bit"].numpy() for n, s in cf.items()})
add("cf_target_dc", "explainability", "ResNet-18 reads the decoded runner-up mean as the runner-up (%)",
    "latent: the runner-up's mean, 8-bit", len(y),
    {n: rate_se(s["target_dc"]) for n, s in cf.items() if "target_dc" in s},
    per_image={n: 100. * s["target_dc"].numpy() for n, s in cf.items() if "target_dc" in s})

# %% [markdown]
# ### Calibration (calibration notebook)
#
# ECE over `n_bins` equal-width confidence bins, with its bootstrap SE (`gclib.calibration.calibration_row`).
# On a few hundred images the ECE is biased upward (a few images per bin); the comparison between models on
# the same images is what counts here, not the level.

# %%
cal = {n: calibration.calibration_row(label(n), out[n]["probs"], y, n_bins, n_bootstrap, seed) for n in names}
add("ece", "robustness", "ECE (%)", f"{n_bins} bins", len(y), {n: (r["ece_pct"], r["ece_se"]) for n, r in cal.items()},
    2)

# %% [markdown]
# ### Out-of-distribution detection (OoD notebook)
#
# Per OoD set, the AUROC (OoD positive) of the GC's density scores against the validation images
# (`gclib.detect.gc_scores`: the one-tailed log p(x) and the typicality test) and of max-softmax (the GC's
# posterior or the DC's); the DC's energy, whose GC analogue is the one-tailed test again. The mean over
# the sets has the SE of a mean of independent AUROCs, sqrt(Σ SE²)/k; the sets share the test images, so
# this is approximate.

# %%
scores = {}  # model -> score -> {"test": .., set: ..}
for n in names:
    o = out[n]
    if is_gc(n):
        ref = o["val"]["bits_per_dim"]
        per = {k: detect.gc_scores(o[k]["bits_per_dim"], o[k]["posterior"].log(), ref) for k in ["test", *ood_names]}
    else:
        per = {k: detect.dc_scores(o[k]["logits"]) for k in ["test", *ood_names]}
    scores[n] = {s: {k: v[s] for k, v in per.items()} for s in per["test"]}
OOD_SCORES = {"one-tailed log p(x)": "onetailed", "typicality": "typicality", "max-softmax": "maxsoftmax",
              "energy": "energy"}
ood_auroc = {}
for s, sk in OOD_SCORES.items():
    for k in ood_names:
        vals = {n: auroc_pct(sc[s][k], sc[s]["test"]) for n, sc in scores.items() if s in sc}
        ood_auroc[sk, k] = vals
        if s != "energy":
            add(f"ood_{sk}_{k.replace('-', '_')}", "robustness", f"OoD AUROC (%): {k}", s, f"{len(y)} + {n_ood}", vals)
    mean = {n: (float(np.mean([ood_auroc[sk, k][n][0] for k in ood_names])),
                math.sqrt(sum(ood_auroc[sk, k][n][1] ** 2 for k in ood_names)) / len(ood_names))
            for n in names if n in ood_auroc[sk, ood_names[0]]}
    add(f"ood_{sk}_mean", "robustness", f"OoD AUROC (%): mean over the {len(ood_names)} sets", s,
        f"{len(y)} + {len(ood_names)} × {n_ood}", mean)

# %% [markdown]
# ### Corruptions (corruptions notebook)
#
# The first `n_corrupt` test images under the 12 corruptions at severities 1 to 5 (`gclib.robust.corrupt`,
# the same corrupted images for every model): the mean corruption accuracy and Cohen's κ of the model's
# right/wrong pattern with the ResNet DC's on the corrupted images (`gclib.robust.corruption_row`).

# %%
x_c, y_c = x[:n_c], y[:n_c]
corruption_names = list(robust.CORRUPTIONS)
severities = list(range(1, robust.MAX_SEVERITY + 1))
sets = [x_c] + [robust.corrupt(x_c, name, s, seed) for name in corruption_names for s in severities]
x_all = torch.cat(sets)
correct_c = {}
t0 = time.time()
for n in names:
    right = (explain.logits(loaded[n], x_all).argmax(1) == y_c.repeat(len(sets))).reshape(len(sets), n_c)
    correct_c[n] = {"clean": right[0], **{name: right[1 + 5 * k:6 + 5 * k] for k, name in enumerate(corruption_names)}}
timings["corruptions"] = time.time() - t0
corr_rows = {}
for n in names:
    c = correct_c[n]
    if dc_name and n != dc_name:
        ref = correct_c[dc_name]
        corr_rows[n] = robust.corruption_row(label(n), c["clean"], {k: c[k] for k in corruption_names}, ref["clean"],
                                             {k: ref[k] for k in corruption_names}, n_bootstrap, seed)
    else:
        corr_rows[n] = robust.corruption_row(label(n), c["clean"], {k: c[k] for k in corruption_names})
per_image_mca = {n: 100 * torch.cat([c[k] for k in corruption_names]).double().mean(0).numpy()
                 for n, c in correct_c.items()}
add("mca", "robustness", "mean corruption accuracy (%)", f"{len(corruption_names)} corruptions × 5 severities", n_c,
    {n: (r["mca_pct"], r["mca_se"]) for n, r in corr_rows.items()}, per_image=per_image_mca)
add("mca_delta", "robustness", "Δ mean corruption accuracy vs the ResNet DC (points, paired)", "model − DC", n_c,
    {n: (r["delta_pct"], r["delta_se"]) for n, r in corr_rows.items() if r["delta_pct"] != ""})
add("kappa", "robustness", "error consistency κ with the ResNet DC, corrupted images", "Cohen's κ", n_c,
    {n: (r["kappa_corrupted"], r["kappa_corrupted_se"]) for n, r in corr_rows.items() if r["kappa_corrupted"] != ""},
    2)

# %% [markdown]
# ### Adversarial attacks and their detection (adversarial notebook)
#
# PGD-L∞ through the logits on the first `n_attack` test images, over the chapter's grid of budgets
# (`gclib.attacks.success_curve`: early stopping, the budgets from the largest down, so the rates at 1/255
# and 4/255 are those the chapter's procedure gives), counted on the images the model classifies
# correctly. Then, for every GC, the adaptive attacker of the chapter (`gclib.attacks.adaptive_attack` with
# `typical_objective`: the cross-entropy minus `adaptive_weight` nats per bit/dim outside a band of the
# median validation distance around the validation mean), and the AUROC of the GC's own density against
# it (`gclib.attacks.detection_row`: the successful adversarial images against all clean attacked-subset
# images). A rate of 100 % has a binomial SE of 0; with n of about 40 the data only say it is above about
# 93 % (the rule of three, 3/n).

# %%
x_a, y_a = x[:n_a], y[:n_a]
linf = [float(Fraction(e)) for e in eps_linf.split(",")]
det = sorted(float(Fraction(e)) for e in detect_eps.split(","))
assert 1 in linf and 4 in linf and 4 in det, "eps_linf must hold 1 and 4, detect_eps 4"
curves, det_rows = {}, {}
t0 = time.time()
for n in names:
    curves[n] = attacks.success_curve(loaded[n], x_a, y_a, [e / 255 for e in linf], "pgd", "inf", steps=steps,
                                      seed=seed)
timings["PGD"] = time.time() - t0
t0 = time.time()
for n in gcs:
    gc = loaded[n]
    ref = out[n]["val"]["bits_per_dim"]
    objective = attacks.typical_objective(gc, float(ref.mean()), adaptive_weight,
                                          float(np.median(detect.typicality(ref, ref))))
    correct, idx = curves[n].correct, torch.where(curves[n].correct)[0]
    adv = attacks.adaptive_attack(gc, x_a[idx], y_a[idx], [e / 255 for e in det], objective, steps=steps, seed=seed)
    x_adv = adv[det.index(4)]
    fooled = torch.zeros_like(correct)
    fooled[idx] = gc.predict(x_adv.to(gc.device)).cpu() != y_a[idx]
    bpd_clean = explain.gc_outputs(gc, x_a)["bits_per_dim"]
    bpd_adv = bpd_clean.clone()
    bpd_adv[idx] = explain.gc_outputs(gc, x_adv)["bits_per_dim"]
    det_rows[n] = attacks.detection_row(correct, fooled, bpd_clean, bpd_adv, ref)
timings["adaptive attack"] = time.time() - t0
for eps in (1, 4):
    e = linf.index(eps)
    add(f"pgd_{eps}", "robustness", f"PGD-L∞ success at {eps}/255 (%)", f"{steps} steps, of the images classified "
        "correctly", n_a, {n: tuple(100 * v for v in c.rate(e)[::2]) for n, c in curves.items()})
rows.append({"key": "pgd_n", "chapter": "robustness", "metric": "… images attacked (classified correctly)",
             "score": "", "n": n_a, "digits": 0, "values": {n: (int(curves[n].correct.sum()), None) for n in names}})
add("adaptive_success", "robustness", "adaptive attack at 4/255: success (%)", "fooled, whether typical or not",
    n_a, {n: (r["success_pct"], r["success_se"]) for n, r in det_rows.items()})
for s, label_s in (("typicality", "typicality"), ("logpx", "log p(x)")):
    add(f"adaptive_auroc_{s}", "robustness", f"detection AUROC vs the adaptive attack at 4/255 (%): {label_s}",
        "the GC's own bits/dim", f"fooled + {n_a}",
        {n: (r[f"auroc_{s}"], r[f"auroc_se_{s}"]) for n, r in det_rows.items() if r[f"auroc_{s}"] is not None})
timings["all"] = time.time() - start
print({k: round(v, 1) for k, v in timings.items()})

# %% [markdown]
# ## Small against large at the same β
#
# For every large GC whose small twin (same β, seed 0) is in the list: the difference large − small per
# metric; likewise for a second, longer-trained ResNet against the reference DC (longer − reference). Where the metric is a mean over the same images for both models (accuracies, deletion/insertion
# AUCs, counterfactual rates) its SE is that of the mean per-image difference: paired. Elsewhere (AUROCs,
# ECE, κ, attack rates, which are not means over one shared set of images) it is the SE of a difference of
# two independent estimates, sqrt(SE₁² + SE₂²); the images are shared, so where the two models agree on
# which images are hard the true SE is smaller: this one is conservative.

# %%
pairs = []  # (weaker, stronger, pair id): "beta_<b>" for a small and a large GC, "dc" for the two ResNets
for n in gcs:
    if kind_of(n):
        twin = next((m for m in gcs if not kind_of(m) and beta_of(m) == beta_of(n)
                     and not loaded[m].manifest["info"].get("seed", 0)), None)
        if twin:
            pairs.append((twin, n, f"beta_{beta_of(n)}"))
pairs += [(dc_name, n, "dc") for n in names if not is_gc(n) and n != dc_name and n.startswith("resnet")][:1]
diffs = {}  # (metric key, pair id) -> (difference, SE, "paired" or "independent")
for small, large, pid in pairs:
    for r in rows:
        a, b = r["values"][small], r["values"][large]
        if a is None or b is None or a[1] is None or b[1] is None:
            continue
        if small in r["per_image"] and large in r["per_image"]:
            per = np.asarray(r["per_image"][large], float) - np.asarray(r["per_image"][small], float)
            diffs[r["key"], pid] = (float(per.mean()), float(per.std(ddof=1) / math.sqrt(len(per))), "paired")
        else:
            diffs[r["key"], pid] = (b[0] - a[0], math.sqrt(a[1] ** 2 + b[1] ** 2), "independent")


def z_of(d, se):
    return abs(d) / se if se > 0 else (0.0 if abs(d) < 1e-12 else math.inf)


for (k, pid), (d, se, how) in diffs.items():
    r = next(r for r in rows if r["key"] == k)
    print(f"{pid:<8} {r['metric'][:62]:<62} {r['score'][:22]:<22} stronger − weaker = {d:+.{r['digits'] + 1}f} ± "
          f"{se:.{r['digits'] + 1}f} ({z_of(d, se):.1f} SE, {how})")

# %% [markdown]
# ## The table
#
# Rows: the headline metrics, with the chapter they come from, the score each model is measured by, and n
# (the images of the row; for the attacks, those of the first `n_attack` that each model classifies
# correctly, in the row "images attacked"). Columns: the models, "mean ± SE"; "–" where the metric does
# not exist for a model (see above); then, per pair, large − small ± the SE of the difference (paired or
# independent, as above).


# %%
def cell(v, digits):
    if v is None:
        return "–"
    mean, se = v
    if se is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{mean:.{digits}f}"


def diff_cell(k, pid, digits):
    if (k, pid) not in diffs:
        return "–"
    d, se, how = diffs[k, pid]
    return f"{d:+.{digits}f} ± {se:.{digits}f}" + (" (p)" if how == "paired" else "")


table = [{"chapter": r["chapter"], "metric": r["metric"], "score": r["score"], "n": r["n"],
          **{n: cell(r["values"][n], r["digits"]) for n in names},
          **{f"diff_{pid}": diff_cell(r["key"], pid, r["digits"]) for _, _, pid in pairs}}
         for r in rows]
plotting.save_table(table, "table_model_strength", figures, headers={
    "chapter": "chapter", "metric": "metric", "score": "score", "n": "n", **{n: label(n) for n in names},
    **{f"diff_{pid}": f"{label(b)} − {label(a)}" for a, b, pid in pairs}})
display(Markdown((Path(figures) / "table_model_strength.md").read_text()))

# %% [markdown]
# ## The figure
#
# One panel per headline metric: every model with ± one SE; a small GC and the large GC of the same β are
# joined by a line (stars: the large GCs; the ResNets in red, the reference DC a square, a longer-trained one a
# diamond, joined to it).

# %%
PANELS = ["accuracy", "both_auroc", "neither_auroc", "separate_auroc", "deletion_auc", "insertion_auc",
          "cf_flipped", "cf_target_dc", "ece", "ood_onetailed_mean", "ood_typicality_mean", "ood_maxsoftmax_mean",
          "mca", "mca_delta", "kappa", "pgd_1", "pgd_4", "adaptive_auroc_typicality"]
TITLES = {"accuracy": "clean accuracy (%)", "both_auroc": '"both" finds errors: AUROC', "neither_auroc":
          '"neither" finds OoD: AUROC', "separate_auroc": '"neither" vs "both": AUROC', "deletion_auc":
          "deletion AUC ↓ (IG)", "insertion_auc": "insertion AUC ↑ (IG)", "cf_flipped":
          "counterfactual flipped\nafter 8 bits (%)", "cf_target_dc": "ResNet reads the decoded\nrunner-up mean (%)",
          "mca_delta": "Δ corruption acc.\nvs the DC (points)", "ece": "ECE (%)", "ood_onetailed_mean":
          "OoD AUROC, mean:\none-tailed log p(x)", "ood_typicality_mean": "OoD AUROC, mean:\ntypicality",
          "ood_maxsoftmax_mean": "OoD AUROC, mean:\nmax-softmax", "mca": "mean corruption acc. (%)",
          "kappa": "κ with the ResNet DC\n(corrupted)", "pgd_1": "PGD-L∞ 1/255: success (%)",
          "pgd_4": "PGD-L∞ 4/255: success (%)", "adaptive_auroc_typicality": "adaptive attack 4/255:\n"
          "typicality AUROC"}
def tick(n):  # short x labels: 'GC\nβ=1', 'large\nβ=1', 'DC', 'DC\n8 ep.'
    if is_gc(n):
        return label(n).replace("GC-", "").replace(" β", "\nβ")
    if n.startswith("resnet"):
        return "DC" if n == dc_name else f"DC\n{loaded[n].manifest['info']['epochs']} ep."
    return n


colors = {n: plotting.DC_COLOR if not is_gc(n) else plotting.BETA_COLORS.get(beta_of(n), "#7f7f7f") for n in names}
by_key = {r["key"]: r for r in rows}
ncols = 6
fig, axes = plotting.figure(ncols, math.ceil(len(PANELS) / ncols), width=2.0, height=2.0)
for ax, k in zip(axes.flat, PANELS):
    r = by_key[k]
    for i, n in enumerate(names):
        v = r["values"][n]
        if v is None:
            continue
        marker = ("s" if n == dc_name else "D") if not is_gc(n) else "*" if kind_of(n) else "o"
        ax.errorbar([i], [v[0]], yerr=[v[1] or 0], color=colors[n], marker=marker, ms=9 if marker == "*" else 5,
                    capsize=2, lw=1.2)
    for small, large, _ in pairs:
        a, b = r["values"][small], r["values"][large]
        if a is not None and b is not None:
            ax.plot([names.index(small), names.index(large)], [a[0], b[0]], color=colors[small], lw=1, alpha=0.7)
    if k == "mca_delta":
        ax.axhline(0, color="#7f7f7f", lw=0.8, ls=":")
    ax.set_title(TITLES[k], fontsize=8)
    ax.set_xticks(range(len(names)), [tick(n) for n in names], fontsize=6)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.tick_params(axis="y", labelsize=7)
for ax in list(axes.flat)[len(PANELS):]:
    ax.set_visible(False)
plotting.savefig(fig, "fig_model_strength", figures)

# %%
# For the chapter's prose.
for r in rows:
    for n in names:
        glue(f"strength_{r['key']}_{key(n)}", cell(r["values"][n], r["digits"]), display=False)
for _, _, pid in pairs:  # every pair and row, "–" where a difference does not exist
    for r in rows:
        glue(f"strength_{r['key']}_diff_{pid}", diff_cell(r["key"], pid, r["digits"]).removesuffix(" (p)"),
             display=False)
        glue(f"strength_{r['key']}_z_{pid}",
             f"{z_of(*diffs[r['key'], pid][:2]):.1f}" if (r["key"], pid) in diffs else "–", display=False)
glue("strength_n_test", str(len(y)), display=False)
glue("strength_n_val", str(len(x_val)), display=False)
glue("strength_n_ood", str(n_ood), display=False)
glue("strength_n_corrupt", str(n_c), display=False)
glue("strength_n_attack", str(n_a), display=False)
glue("strength_n_attr", str(n_h), display=False)
glue("strength_steps", str(steps), display=False)
glue("strength_n_models", str(len(names)), display=False)
glue("strength_models", ", ".join(label(n) for n in names), display=False)
glue("strength_seconds", f"{time.time() - start:.0f}", display=False)
print(f"done in {time.time() - start:.1f} s")
