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
# # The diffusion classifier: accuracy against cost
#
# A class-conditional denoiser eps(x_t, t, y) classifies an image by the class whose denoising error is
# smallest over a fixed bank of (t, eps) pairs, the same pairs for every class (Li et al., ICCV 2023). Every
# class costs one network evaluation per pair, so the rule's price is set by the bank: the shipped model
# has 100 pairs, 1,000 evaluations per image for all ten classes. Li et al.'s adaptive pruning scores all
# classes on a few pairs, keeps the best, and continues with more pairs for the survivors only.
#
# Nothing here runs the network on the whole subset: the zoo ships the model's full error matrix (every
# class on every pair) for a seeded subset of the test set as an evaluation artifact
# (`checkpoints/<dataset>/evals/<model>.errors`, naming the weights' sha256), and the pruned rule is read
# off it exactly (`gclib.diffusion.classify_from_errors`: a stage scores bank prefixes, which the matrix
# holds). The notebook recomputes `n_live` of its images from the model and checks them; the tests do the
# same for a random sample. The model's published accuracy comes from the second artifact (`.test`: its
# pruned rule on a larger subset). It writes `fig_diffusion_cost` and `table_diffusion_cost` and glues
# the numbers the chapter cites (keys `diffusion_*`).

# %% tags=["parameters"]
dataset = "fashion-mnist"
model_name = "diffusion-unet32"  # a zoo model of the diffusion family
pairs = "1,2,5,10,20,30,50,100"  # bank prefixes for the unpruned rule (all classes on the first k pairs)
first = "2,5,10,20"  # pruning: pairs of the first stage (all classes)
keep = "1,2,3,5"  # pruning: classes kept after it, which then see the last stage's pairs
last = "30,60,100"  # pruning: pairs of the last stage
n_live = 2  # artifact images recomputed from the model here (5-10 s each on a CPU core)
compare = "gc-beta-8,gc-large-beta-1,gc-large-beta-8,gc-large-beta-1536,gc-large-beta-inf,resnet18"  # zoo models beside it
n_bootstrap = 200  # resamples of the images for the SEs of kappa and ECE
n_live_score = 1  # images of the score-based artifact recomputed here (about 7 s each on a CPU core)
ibinn_ood = "gc-large-beta-8"  # the IB-INN read beside the two densities on the same OoD and test images
max_ratio = 10.0  # "both": the runner-up class at least 1/max_ratio as likely as the best (the gc_vs_dc chapter's)
coverage = 0.99  # the typical range of bits/dim holds this share of the reference test images
corrupt_shipped = "abs-vae8"  # other models whose shipped corruption artifacts cover the same images
corrupt_live = "gc-beta-8,gc-large-beta-8,resnet18"  # models that classify the corrupted images here
figures = "figures"  # output folder for figures and tables

# %%
import itertools
import math
import time

import pandas as pd
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import calibration, evals, plotting, robust
from gclib.diffusion import classify_from_errors, elbo_weighted_scores

start = time.time()
test = gclib.data.load(dataset)[2]
model = gclib.get_model(model_name, dataset, device="cpu").eval()
manifest = model.manifest
record = manifest["info"]["test"]
m, m_manifest = evals.load(evals.path_of(model_name, "errors", dataset), model_sha256=manifest["sha256"])
t, _ = evals.load(evals.path_of(model_name, "test", dataset), model_sha256=manifest["sha256"])
errors, labels = m["errors"], m["labels"]
n, n_classes, n_pairs = errors.shape
print(f"{model_name}: {manifest['info']['parameters']:,} parameters, {manifest['info']['epochs']} epochs, "
      f"trained {manifest['info']['wall_time_s'] / 60:.0f} min on {manifest['info']['device']}")
print(f"error matrix: {n} test images x {n_classes} classes x {n_pairs} pairs "
      f"(computed with {m_manifest['info']['torch_threads']} threads)")

# %% [markdown]
# ## Recomputed here
# The first stage of trust: `n_live` images of the artifact, drawn at random, recomputed from the shipped
# weights. Float32 rounding depends on the batch, so the check allows a relative 1e-4.

# %%
g = torch.Generator().manual_seed(int(time.time()))
pick = torch.randperm(n, generator=g)[:n_live]
if n_live:
    live = model.error_matrix(test.batch(m["indices"][pick])[0])
    worst = float(((live - errors[pick]).abs() / errors[pick].abs().clamp_min(1e-6)).max())
    print(f"test images {m['indices'][pick].tolist()}: largest relative difference {worst:.1e}")
    assert torch.allclose(live, errors[pick], rtol=1e-4, atol=1e-6), "the artifact does not match the model"

# %% [markdown]
# ## Accuracy against network evaluations
# The unpruned rule on the first k pairs costs 10 k evaluations per image. A pruning schedule
# (p, k | q) scores all classes on p pairs, keeps the k best and scores those on q pairs. Every rule is
# evaluated on the same images, so differences between rules are paired: their standard error is that of
# the per-image difference, much smaller than either accuracy's.


# %%
def rule_row(stages, kind):
    pred, cost = classify_from_errors(errors, stages)
    right = (pred == labels).double()
    return {"rule": kind, "stages": " | ".join(f"{p} pairs, keep {k}" for p, k in stages), "first": stages[0][0],
            "keep": stages[0][1] if len(stages) > 1 else n_classes, "last": stages[-1][0],
            "evaluations": float(cost.double().mean()), "accuracy": float(right.mean()),
            "accuracy_se": float(right.std() / math.sqrt(n)), "_right": right}


rows = [rule_row(((k, 1),), "unpruned") for k in (int(v) for v in pairs.split(",")) if k <= n_pairs]
full = rule_row(((n_pairs, 1),), "unpruned")
for p, k, q in itertools.product(*(map(int, v.split(",")) for v in (first, keep, last))):
    if p < q <= n_pairs and k < n_classes:
        rows.append(rule_row(((p, k), (q, 1)), "pruned"))
shipped_stages = tuple(tuple(s) for s in record["stages"])
shipped = rule_row(shipped_stages, "shipped")
for r in rows + [shipped]:
    diff = r["_right"] - full["_right"]
    r["vs_unpruned_pct"] = round(100 * float(diff.mean()), 2)
    r["vs_unpruned_se_pct"] = round(100 * float(diff.std() / math.sqrt(n)), 2)
    r["share_of_unpruned_cost"] = round(r["evaluations"] / full["evaluations"], 3)
table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
table["accuracy_pct"], table["accuracy_se_pct"] = (100 * table["accuracy"]).round(2), (100 * table["accuracy_se"]).round(2)
table = table.drop(columns=["accuracy", "accuracy_se"]).sort_values(["rule", "evaluations"], ascending=[False, True])
table.to_csv(f"{figures}/table_diffusion_cost.csv", index=False)
cols = ["rule", "stages", "evaluations", "share_of_unpruned_cost", "accuracy_pct", "accuracy_se_pct",
        "vs_unpruned_pct", "vs_unpruned_se_pct"]
md = table[cols].to_markdown(index=False, floatfmt=".3g")
with open(f"{figures}/table_diffusion_cost.md", "w") as f:
    f.write(md + "\n")
display(Markdown(md))
glue("table_diffusion_cost", table[cols], display=False)

# %% [markdown]
# Within one point of the full budget at the lowest cost: the cheapest schedule whose paired difference to
# the unpruned rule on all pairs is above -1 point (the target is at most 20 % of the evaluations).

# %%
pruned = [r for r in rows if r["rule"] == "pruned"]
ok = [r for r in pruned if r["vs_unpruned_pct"] > -1.0]
cheapest = min(ok, key=lambda r: r["evaluations"]) if ok else None
if cheapest:
    print(f"cheapest within 1 point: {cheapest['stages']}: {cheapest['evaluations']:.0f} evaluations "
          f"({100 * cheapest['share_of_unpruned_cost']:.0f} % of {full['evaluations']:.0f}), "
          f"{100 * cheapest['accuracy']:.1f} % vs {100 * full['accuracy']:.1f} % "
          f"(paired difference {cheapest['vs_unpruned_pct']:+.1f} ± {cheapest['vs_unpruned_se_pct']:.1f})")

fig, axes = plotting.figure(1, width=5.2, height=3.4)
ax = axes[0][0]
un = [r for r in rows if r["rule"] == "unpruned"]
ax.errorbar([r["evaluations"] for r in un], [100 * r["accuracy"] for r in un],
            yerr=[100 * r["accuracy_se"] for r in un], marker="o", color="0.2", label="all classes on k pairs")
for k_kept, marker in zip(sorted({r["keep"] for r in pruned}), "v^sD"):
    group = [r for r in pruned if r["keep"] == k_kept]
    ax.scatter([r["evaluations"] for r in group], [100 * r["accuracy"] for r in group], marker=marker, s=22,
               alpha=0.8, label=f"pruned: keep {k_kept}")
ax.scatter([shipped["evaluations"]], [100 * shipped["accuracy"]], s=160, facecolors="none", edgecolors="C3",
           linewidths=1.5, label="the shipped rule", zorder=5)
ax.axhline(100 * full["accuracy"] - 1, color="C3", lw=0.8, ls=":", label="1 point below all pairs")
ax.set_xscale("log")
ax.set_xlabel("network evaluations per image")
ax.set_ylabel(f"test accuracy (%, {n} images)")
ax.set_title(f"{model_name}: accuracy against cost")
ax.legend(fontsize=7, loc="lower right")
plotting.savefig(fig, "fig_diffusion_cost", figures)
glue("fig_diffusion_cost", fig, display=False)

# %% [markdown]
# ## The published figures
# The shipped rule on the larger subset of the `.test` artifact, its ELBO bits/dim (an upper bound on
# -log2 p(x) per dim: the continuous-time bound on a stratified log-SNR bank), and what a prediction costs.

# %%
acc, se = 100 * record["accuracy"], 100 * record["accuracy_se"]
print(f"accuracy {acc:.2f} ± {se:.2f} % on {record['n']} test images (the shipped rule, "
      f"{record['evaluations_per_image']:.0f} evaluations, {record['ms_per_image']:.0f} ms per image with "
      f"{record['torch_threads']} thread(s)); bits/dim <= {record['bits_per_dim']:.3f} ± {record['bits_per_dim_se']:.3f} "
      f"({record['bits_per_dim_n']} images)")
assert int((t["predictions"] == t["labels"]).sum()) == record["correct"]
glue("diffusion_acc", round(acc, 2), display=False)
glue("diffusion_acc_se", round(se, 2), display=False)
glue("diffusion_n", record["n"], display=False)
glue("diffusion_evals", round(record["evaluations_per_image"]), display=False)
glue("diffusion_ms", round(record["ms_per_image"]), display=False)
glue("diffusion_bpd", round(record["bits_per_dim"], 3), display=False)
glue("diffusion_bpd_se", round(record["bits_per_dim_se"], 3), display=False)
glue("diffusion_bpd_n", record["bits_per_dim_n"], display=False)
glue("diffusion_errors_n", n, display=False)
glue("diffusion_full_acc", round(100 * full["accuracy"], 2), display=False)
glue("diffusion_full_acc_se", round(100 * full["accuracy_se"], 2), display=False)
glue("diffusion_full_evals", round(full["evaluations"]), display=False)
glue("diffusion_shipped_subset_acc", round(100 * shipped["accuracy"], 2), display=False)
glue("diffusion_shipped_vs_full", shipped["vs_unpruned_pct"], display=False)
glue("diffusion_shipped_vs_full_se", shipped["vs_unpruned_se_pct"], display=False)
glue("diffusion_params", manifest["info"]["parameters"], display=False)
glue("diffusion_train_min", round(manifest["info"]["wall_time_s"] / 60), display=False)
one = next(r for r in un if r["evaluations"] == 10 * min(int(v) for v in pairs.split(",")))
glue("diffusion_one_pair_acc", round(100 * one["accuracy"], 1), display=False)
if cheapest:
    glue("diffusion_cheapest_stages", cheapest["stages"], display=False)
    glue("diffusion_cheapest_evals", round(cheapest["evaluations"]), display=False)
    glue("diffusion_cheapest_acc", round(100 * cheapest["accuracy"], 2), display=False)


# %% [markdown]
# ## Beside the other classifiers, on the same images
# The IB-INNs and the ResNet classify the same seeded test images as the diffusion classifier's `.test`
# artifact, so every accuracy difference is paired. Error consistency (Cohen's kappa of correctness,
# Geirhos et al. 2020) asks whom the diffusion classifier errs like; the perception chapter found IB-INNs
# of different recipes agreeing with each other more than with the DC. Calibration uses the error matrix's
# images: the diffusion classifier's posterior is the softmax of its class scores, -D/2 times the mean
# squared error per dim, which Li et al.'s rule uses unweighted: a surrogate, not a likelihood, so nothing
# makes its temperature right.

# %%
x_t, y_t = test.batch(t["indices"])
diff_right = (t["predictions"] == y_t).numpy()
others = [name.strip() for name in compare.split(",") if name.strip()]
compare_rows = []
right = {}
probs_sub = {model_name: torch.softmax(-0.5 * math.prod(model.input_shape) * errors.double().mean(2)
                                       + model.log_prior.double(), dim=1)}
for name in others:
    other = gclib.get_model(name, dataset, device="cpu").eval()
    probs = calibration.predict_probs(other, x_t)
    right[name] = (probs.argmax(1) == y_t).numpy()
    probs_sub[name] = probs[:n]
    kappa = robust.error_consistency(diff_right, right[name])["kappa"]
    diff = torch.as_tensor(diff_right, dtype=torch.float64) - torch.as_tensor(right[name], dtype=torch.float64)
    compare_rows.append({"model": name, "accuracy_pct": round(100 * float(right[name].mean()), 2),
                         "diffusion_minus_model_pct": round(100 * float(diff.mean()), 2),
                         "difference_se_pct": round(100 * float(diff.std() / math.sqrt(len(diff))), 2),
                         "kappa_with_diffusion": round(kappa, 3),
                         "kappa_se": round(robust.error_consistency_se(diff_right, right[name], n_bootstrap), 3)})
dcs = [name for name in others if name.startswith("resnet")]
gcs = [name for name in others if not name.startswith("resnet")]
for name in gcs:  # the IB-INNs' own consistency with the DC, for reference
    for dc in dcs:
        compare_rows.append({"model": f"{name} vs {dc}", "accuracy_pct": "", "diffusion_minus_model_pct": "",
                             "difference_se_pct": "", "kappa_with_diffusion": "",
                             "kappa_se": "", "kappa_between": round(robust.error_consistency(right[name], right[dc])["kappa"], 3)})
compare_table = pd.DataFrame(compare_rows).astype(object).fillna("")
md = plotting.save_frame(compare_table, "table_diffusion_compare", figures)
glue("table_diffusion_compare", compare_table, display=False)
display(Markdown(f"On {len(y_t)} test images (the diffusion classifier: {100 * diff_right.mean():.2f} %):\n\n" + md))

cal_rows = [calibration.calibration_row(name, p, labels, n_bootstrap=n_bootstrap) for name, p in probs_sub.items()]
cal_table = pd.DataFrame(cal_rows)[["model", "n", "accuracy_pct", "accuracy_se", "ece_pct", "ece_se", "nll", "nll_se"]]
md = plotting.save_frame(cal_table, "table_diffusion_calibration", figures)
glue("table_diffusion_calibration", cal_table, display=False)
display(Markdown(md))
for r in compare_rows:
    if "vs" not in r["model"]:
        k = r["model"].replace("-", "_")
        glue(f"diffusion_kappa_{k}", r["kappa_with_diffusion"], display=False)
        glue(f"diffusion_kappa_se_{k}", r["kappa_se"], display=False)
        glue(f"diffusion_minus_{k}", r["diffusion_minus_model_pct"], display=False)
        glue(f"diffusion_minus_se_{k}", r["difference_se_pct"], display=False)
    else:
        glue(f"kappa_{r['model'].replace(' vs ', '_vs_').replace('-', '_')}", r["kappa_between"], display=False)
confidence = float(probs_sub[model_name].max(1).values.mean())
print(f"the diffusion classifier's mean confidence {100 * confidence:.1f} % at {100 * cal_rows[0]['accuracy_pct'] / 100:.1f} % "
      "accuracy: underconfident where below, overconfident where above")
glue("diffusion_mean_confidence", round(100 * confidence, 1), display=False)
for r in cal_rows:
    glue(f"diffusion_ece_{r['model'].replace('-', '_')}", r["ece_pct"], display=False)
    glue(f"diffusion_ece_se_{r['model'].replace('-', '_')}", r["ece_se"], display=False)

# %% [markdown]
# ## The same network read as a score model: exact likelihoods
# Zimmermann et al.'s score-based classifier reads the network as the score of the variance-preserving SDE,
# s(x, t, y) = -eps(x, t, y) / sigma(t), and classifies by the exact log-likelihood log p(x | y) that the
# probability-flow ODE gives (`gclib.score`: 20 RK4 steps equally spaced in log-SNR from t = 1e-3, the
# Hutchinson-Skilling trace estimator with 2 Rademacher probes shared by every class, at the seeded
# dequantized image). It costs about 7 s of a CPU core an image, so the zoo ships its per-probe class
# scores for a seeded subset (`evals/<model>.score`, `python -m gclib.zoo evaluate <model> --what score`);
# `n_live_score` images are recomputed here. The first images of that subset are the error matrix's, so
# the diffusion rules compare with it image by image. Beside it: the bound's own class term, the ELBO
# weighting of the denoising errors (weight beta(t) / sigma(t)^2 = -d log-SNR / dt on the uniform bank, so
# t from 0.006 to 0.995: the bound restricted to the bank's range), read off the shipped error matrix.

# %%
from gclib import zoo as zoo_module
from gclib.data import FASHION_MNIST_CLASSES

s_t, s_manifest = evals.load(evals.path_of(model_name, "score", dataset), model_sha256=manifest["sha256"])
s_info = s_manifest["info"]
assert s_info["settings"] == zoo_module.score_reading(model).settings(), "artifact of another reading"
if n_live_score:
    pick_s = torch.randperm(len(s_t["indices"]), generator=g)[:n_live_score]
    for i in pick_s.tolist():
        live = zoo_module.score_images(model, test.batch(s_t["indices"][i:i + 1])[0])
        worst = float((live - s_t["scores"][i:i + 1]).abs().max())
        print(f"score-based reading, test image {int(s_t['indices'][i])}: largest difference {worst:.1e} nats")
        assert torch.allclose(live, s_t["scores"][i:i + 1], rtol=1e-5, atol=1e-3), "the artifact does not match the model"

n_s = len(s_t["indices"])
n_c = min(n, n_s)  # images in both the error matrix and the score artifact (the first ones of the subset)
assert torch.equal(s_t["indices"], t["indices"][:n_s]) and torch.equal(m["indices"][:n_c], s_t["indices"][:n_c])
score_right = (s_t["predictions"] == s_t["labels"]).double()
li_right = (t["predictions"][:n_s] == t["labels"][:n_s]).double()
schedule = model.schedule
d_dims = math.prod(model.input_shape)
elbo_scores = elbo_weighted_scores(errors, model.bank_t[:n_pairs], schedule, d_dims)  # [n, C], nats
elbo_pred = elbo_scores.argmax(1)
elbo_right = (elbo_pred == labels).double()[:n_c]
score_sub = score_right[:n_c]


def paired(a, b):
    diff = a - b
    return round(100 * float(diff.mean()), 2), round(100 * float(diff.std() / math.sqrt(len(diff))), 2)


def pct(right):
    return round(100 * float(right.mean()), 2), round(100 * float(right.std() / math.sqrt(len(right))), 2)


reading_rows = [
    {"reading": "score-based: the ODE log-likelihood of each class (exact up to the estimator)", "images": n_s,
     "accuracy_pct": pct(score_right)[0], "accuracy_se_pct": pct(score_right)[1],
     "minus_li_rule_pct": paired(score_right, li_right)[0], "minus_li_rule_se_pct": paired(score_right, li_right)[1],
     "bits_per_dim": round(s_info["bits_per_dim"], 3), "bits_per_dim_se": round(s_info["bits_per_dim_se"], 3),
     "bits_per_dim_is": "exact up to the estimator", "evaluations_per_image": s_info["evaluations_per_image"]},
    {"reading": "diffusion, Li et al.'s rule (the shipped, pruned)", "images": n_s,
     "accuracy_pct": pct(li_right)[0], "accuracy_se_pct": pct(li_right)[1], "minus_li_rule_pct": 0.0,
     "minus_li_rule_se_pct": 0.0, "bits_per_dim": round(record["bits_per_dim"], 3),
     "bits_per_dim_se": round(record["bits_per_dim_se"], 3), "bits_per_dim_is": f"upper bound (ELBO, {record['bits_per_dim_n']} images)",
     "evaluations_per_image": round(record["evaluations_per_image"])},
    {"reading": "score-based, on the error matrix's images", "images": n_c, "accuracy_pct": pct(score_sub)[0],
     "accuracy_se_pct": pct(score_sub)[1], "minus_li_rule_pct": "", "minus_li_rule_se_pct": "",
     "bits_per_dim": "", "bits_per_dim_se": "", "bits_per_dim_is": "", "evaluations_per_image": ""},
    {"reading": "diffusion, ELBO-weighted errors (the bound's class term)", "images": n_c,
     "accuracy_pct": pct(elbo_right)[0], "accuracy_se_pct": pct(elbo_right)[1],
     "minus_li_rule_pct": "", "minus_li_rule_se_pct": "", "bits_per_dim": "", "bits_per_dim_se": "",
     "bits_per_dim_is": "", "evaluations_per_image": n_classes * n_pairs},
    {"reading": "diffusion, unweighted errors on all pairs (Li et al., unpruned)", "images": n_c,
     "accuracy_pct": pct(full["_right"][:n_c])[0], "accuracy_se_pct": pct(full["_right"][:n_c])[1],
     "minus_li_rule_pct": "", "minus_li_rule_se_pct": "", "bits_per_dim": "", "bits_per_dim_se": "",
     "bits_per_dim_is": "", "evaluations_per_image": n_classes * n_pairs},
]
reading_table = pd.DataFrame(reading_rows).astype(object)
md = plotting.save_frame(reading_table, "table_score_reading", figures)
glue("table_score_reading", reading_table, display=False)
display(Markdown(md))

score_vs_elbo = paired(score_sub, elbo_right)
agree = float((s_t["predictions"][:n_s] == t["predictions"][:n_s]).double().mean())
kappa_score = robust.error_consistency(score_right.numpy().astype(bool), li_right.numpy().astype(bool))["kappa"]
counts = torch.bincount(s_t["predictions"], minlength=n_classes)
top_class = int(counts.argmax())
print(f"score-based reading: {pct(score_right)[0]} ± {pct(score_right)[1]} % on {n_s} images; Li et al.'s rule "
      f"{pct(li_right)[0]} %; same prediction on {100 * agree:.1f} %; on the error matrix's {n_c} images: "
      f"score {pct(score_sub)[0]} %, ELBO-weighted errors {pct(elbo_right)[0]} % (paired {score_vs_elbo[0]:+.1f} ± "
      f"{score_vs_elbo[1]:.1f}); most predicted class {FASHION_MNIST_CLASSES[top_class]} ({int(counts[top_class])} of {n_s})")
for key, value in {"score_acc": pct(score_right)[0], "score_acc_se": pct(score_right)[1], "score_n": n_s,
                   "score_li_acc": pct(li_right)[0], "score_minus_li": paired(score_right, li_right)[0],
                   "score_minus_li_se": paired(score_right, li_right)[1],
                   "score_bpd": round(s_info["bits_per_dim"], 3), "score_bpd_se": round(s_info["bits_per_dim_se"], 3),
                   "score_estimator_se": round(s_info["estimator_se_bits_per_dim"], 3),
                   "score_evals": s_info["evaluations_per_image"],
                   "score_s_per_image": s_info.get("seconds_per_image") or "",
                   "score_sub_acc": pct(score_sub)[0], "elbo_weighted_acc": pct(elbo_right)[0],
                   "elbo_weighted_acc_se": pct(elbo_right)[1], "score_minus_elbo": score_vs_elbo[0],
                   "score_minus_elbo_se": score_vs_elbo[1], "score_agree_pct": round(100 * agree, 1),
                   "score_kappa_li": round(kappa_score, 3), "score_top_class": FASHION_MNIST_CLASSES[top_class],
                   "score_top_class_pct": round(100 * float(counts[top_class]) / n_s, 1)}.items():
    glue(key, value, display=False)

# %% [markdown]
# Where the two readings part: the score-based reading's confusion matrix, and, image by image on the error
# matrix's images, the true class's margin (its log-likelihood minus the best other class's) under the exact
# ODE likelihood against the margin under the ELBO-weighted errors. Both are in nats; an image right under
# both readings lies top right.

# %%
import matplotlib.ticker
import numpy as np

conf = torch.zeros(n_classes, n_classes)
conf.index_put_((s_t["labels"], s_t["predictions"]), torch.ones(n_s), accumulate=True)
conf = conf / conf.sum(1, keepdim=True).clamp_min(1)


def margins(scores):
    true = scores.gather(1, labels[:n_c, None]).squeeze(1)
    other = scores.scatter(1, labels[:n_c, None], -math.inf).max(1).values
    return (true - other).numpy()


ode_margin = margins(s_t["scores"][:n_c].mean(1))
elbo_margin = margins(elbo_scores[:n_c])
fig, axes = plotting.figure(2, width=4.2, height=3.8)
ax = axes[0][0]
ax.imshow(100 * conf.numpy(), cmap="Blues", vmin=0, vmax=100)
ax.set_xticks(range(n_classes), FASHION_MNIST_CLASSES, rotation=90, fontsize=7)
ax.set_yticks(range(n_classes), FASHION_MNIST_CLASSES, fontsize=7)
for i in range(n_classes):
    for j in range(n_classes):
        if conf[i, j] >= 0.05:
            ax.text(j, i, f"{100 * conf[i, j]:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if conf[i, j] > 0.5 else "black")
ax.grid(False)
ax.set_xlabel("predicted (ODE likelihood)")
ax.set_ylabel("true class")
ax.set_title(f"score-based reading, {n_s} images (row %)")
ax = axes[0][1]
ax.scatter(elbo_margin, ode_margin, s=8, alpha=0.6, color="C0")
ax.axhline(0, color="0.5", lw=0.8)
ax.axvline(0, color="0.5", lw=0.8)
ax.set_xscale("symlog", linthresh=10)
ax.set_yscale("symlog", linthresh=10)
for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_locator(matplotlib.ticker.FixedLocator([-1000, -100, -10, 0, 10, 100, 1000]))
ax.set_xlabel("true-class margin, ELBO-weighted errors (nats)")
ax.set_ylabel("true-class margin, ODE likelihood (nats)")
ax.set_title(f"the two likelihood readings, {n_c} images")
plotting.savefig(fig, "fig_score_reading", figures)
glue("fig_score_reading", fig, display=False)
corr = float(np.corrcoef(elbo_margin, ode_margin)[0, 1])
print(f"correlation of the margins: {corr:.2f}")
glue("score_margin_corr", round(corr, 2), display=False)
glue("score_common_n", n_c, display=False)
# %% [markdown]
# ## Out of distribution: the bound, the exact likelihood and the class scores
# The OoD chapter's question for this network's two densities. The zoo ships `evals/<model>.diffusion-ood`
# (`python -m gclib.zoo evaluate <model> --what diffusion-ood`, about 10 s of a CPU core an OoD image): for the
# first images of every set of `gclib.data.ood`, every class's ELBO (on a log-SNR bank of 20 pairs: a lower
# bound on log p(x|y) with a larger, stated noise SE than the 1,000-pair bank of the table above), the
# score-based reading's class log-likelihoods and Li et al.'s class scores; and the same small-bank ELBOs of
# the score artifact's test images. All are read at the seeded dequantized image, as every family's
# bits/dim. The first half of those test images plays the OoD chapter's held-out validation images (it
# defines "typical"), the second half is the in-distribution side of every AUROC. The IB-INN `ibinn_ood`
# reads the same images here, at the same point. Scores: one-tailed (bits/dim: higher is more OoD),
# typicality (distance from the reference's mean bits/dim) and max-softmax of the class posterior (for Li
# et al.'s rule the in-distribution side is the error matrix's images, the first of the subset).

# %%
from gclib import detect, explain
from gclib.model import evaluation_point
from gclib.score import mixture_bits_per_dim

o_t, o_manifest = evals.load(evals.path_of(model_name, "diffusion-ood", dataset), model_sha256=manifest["sha256"])
o_info = o_manifest["info"]
assert torch.equal(o_t["indices"], s_t["indices"]), "the OoD artifact's test images are not the score artifact's"
assert o_info["score_settings"] == s_info["settings"], "the OoD artifact used another score-based reading"
set_names = o_info["sets"]
ood_x = zoo_module.ood_sets(o_info["n_per_set"], model.input_shape)
j = int(torch.randint(o_info["n_per_set"], (1,), generator=g))
live = zoo_module.ood_images(model, ood_x[set_names[0]][j:j + 1], "elbo", o_info["elbo_pairs"])["elbo"]
print(f"{set_names[0]} image {j}: ELBOs recomputed, largest difference "
      f"{float((live - o_t[f'{set_names[0]}.elbo'][j:j + 1]).abs().max()):.1e} nats")
assert torch.allclose(live, o_t[f"{set_names[0]}.elbo"][j:j + 1], rtol=1e-4, atol=1e-3), "the artifact does not match"

half = n_s // 2
ref, ind = slice(0, half), slice(half, n_s)
x_s = test.batch(s_t["indices"])[0]
ib = gclib.get_model(ibinn_ood, dataset, device="cpu").eval()
with torch.no_grad():
    ib_out = {"test": explain.gc_outputs(ib, evaluation_point(x_s, "seeded", zoo_module.EVAL_SEED))}
    ib_out.update({k: explain.gc_outputs(ib, evaluation_point(v, "seeded", zoo_module.EVAL_SEED))
                   for k, v in ood_x.items()})
# per reading: class log-likelihoods (or their bound) of the test images and of every OoD set, nats
readings = {
    "diffusion: ELBO (bound)": {"test": o_t["elbo"], **{k: o_t[f"{k}.elbo"] for k in set_names}},
    "score-based: ODE (exact up to the estimator)": {"test": s_t["scores"].mean(1),
                                                     **{k: o_t[f"{k}.ode"].mean(1) for k in set_names}},
    f"IB-INN {ibinn_ood} (exact)": {k: v["log_likelihoods"].double() for k, v in ib_out.items()},
}
bpd_of = {r: {k: mixture_bits_per_dim(v, d_dims) for k, v in ll.items()} for r, ll in readings.items()}
ood_rows = []
for r, b in bpd_of.items():
    for score, fn in (("one-tailed", detect.one_tailed), ("typicality", detect.typicality)):
        ood_rows.append(detect.detection_row(r, score, fn(b["test"][ind], b["test"][ref]),
                                             {k: fn(b[k], b["test"][ref]) for k in set_names}))
    post = {k: torch.log_softmax(v, 1) for k, v in readings[r].items()}
    ood_rows.append(detect.detection_row(r, "max-softmax", detect.max_softmax(post["test"][ind]),
                                         {k: detect.max_softmax(post[k]) for k in set_names}))
li_test = -0.5 * d_dims * errors.double().mean(2)  # Li et al.'s class scores of the error matrix's images
ood_rows.append(detect.detection_row("diffusion: Li et al.'s class scores", "max-softmax",
                                     detect.max_softmax(li_test), {k: detect.max_softmax(o_t[f"{k}.scores"])
                                                                   for k in set_names}))
ood_table = pd.DataFrame(ood_rows)
md = plotting.save_frame(ood_table, "table_diffusion_ood", figures)
glue("table_diffusion_ood", ood_table, display=False)
display(Markdown(f"AUROC (%) against {n_s - half} test images (Li et al.'s scores: {n}), "
                 f"{o_info['n_per_set']} images per OoD set:\n\n" + md))
keys = {"diffusion: ELBO (bound)": "elbo", "score-based: ODE (exact up to the estimator)": "ode"}
for row in ood_rows:
    k = keys.get(row["model"], "ibinn" if row["model"].startswith("IB-INN") else "li")
    for col in ["mean AUROC", "max SE", *set_names]:
        glue(f"diffusion_ood_{k}_{row['score'].replace('-', '_')}_{col.replace(' ', '_').replace('-', '_')}",
             row[col], display=False)
for r, k in (*keys.items(), (f"IB-INN {ibinn_ood} (exact)", "ibinn")):
    for name, b in bpd_of[r].items():
        glue(f"diffusion_ood_{k}_bpd_{name.replace('-', '_')}", round(float(b.mean()), 2), display=False)
glue("diffusion_ood_n", o_info["n_per_set"], display=False)
glue("diffusion_ood_ref_n", half, display=False)

# %% [markdown]
# Every image's bits/dim under each reading: the test images (reference half) set the shaded typical range,
# which holds `coverage` of them. Then the three answers of the Figure 1 chapter (`gclib.explain.regions`):
# **neither** (bits/dim outside the typical range), **both** (typical, and the runner-up class at least
# 1/`max_ratio` as likely as the best: for the diffusion readings, the class differences of one network on
# one shared bank) or **confident**; and the test accuracy within "confident" and within "both".

# %%
import matplotlib.pyplot as plt
import numpy as np

groups = ["test", *set_names]
fig, axes = plt.subplots(1, len(readings), figsize=(4.2 * len(readings), 3.2), sharey=True)
bn_rows = []
for ax, (r, ll) in zip(axes, readings.items()):
    b = bpd_of[r]
    lo, hi = explain.typical_range(b["test"][ref], coverage)
    ax.axvspan(lo, hi, color="0.85", zorder=0)
    jitter = np.random.default_rng(0)
    for i, k in enumerate(groups):
        v = (b[k][ind] if k == "test" else b[k]).numpy()
        ax.scatter(v, i + jitter.uniform(-0.25, 0.25, len(v)), s=5, alpha=0.5, color=f"C{i}")
    ax.set_yticks(range(len(groups)), groups)
    ax.set_xlabel("bits/dim")
    ax.set_title(r.replace(" (", "\n("), fontsize=9)
    codes = {k: explain.regions(v[ind] if k == "test" else v, b[k][ind] if k == "test" else b[k], (lo, hi),
                                max_ratio) for k, v in ll.items()}
    right_t = (ll["test"][ind].argmax(1) == s_t["labels"][ind]).numpy()
    c_t = codes["test"].numpy()
    row = {"reading": r, "typical_bpd": f"{lo:.2f} to {hi:.2f}",
           **{f"test_{name}_pct": round(v, 1) for name, v in explain.region_shares(codes["test"]).items()},
           "test_accuracy_pct": round(100 * float(right_t.mean()), 1),
           "accuracy_confident_pct": round(100 * float(right_t[c_t == 0].mean()), 1) if (c_t == 0).any() else "",
           "accuracy_both_pct": round(100 * float(right_t[c_t == 1].mean()), 1) if (c_t == 1).any() else "",
           "n_both": int((c_t == 1).sum())}
    row.update({f"{k}_neither_pct": round(explain.region_shares(codes[k])["neither"], 1) for k in set_names})
    bn_rows.append(row)
axes[0].invert_yaxis()
fig.tight_layout()
plotting.savefig(fig, "fig_diffusion_ood", figures)
glue("fig_diffusion_ood", fig, display=False)
bn_table = pd.DataFrame(bn_rows).astype(object)
md = plotting.save_frame(bn_table, "table_diffusion_both_or_neither", figures)
glue("table_diffusion_both_or_neither", bn_table, display=False)
display(Markdown(f"On {n_s - half} test images and {o_info['n_per_set']} per OoD set:\n\n" + md))
for row, k in zip(bn_rows, ("elbo", "ode", "ibinn")):
    for col, v in row.items():
        if col not in ("reading", "typical_bpd"):
            glue(f"diffusion_bn_{k}_{col.replace('-', '_')}", v, display=False)

# %% [markdown]
# Figure 1's view of every image (`fig_both_or_neither` in the explainability chapter) for the ELBO reading
# (the diffusion classifier's own, on the small bank; the ODE reading ranks the classes poorly, see above):
# its two most likely classes (bits/dim of the best, how many times more likely it is than the
# runner-up), the regions, the ResNet DC's max-softmax on the same images, and random examples per region.

# %%
ll_s, b_s = readings["diffusion: ELBO (bound)"], bpd_of["diffusion: ELBO (bound)"]
lo, hi = explain.typical_range(b_s["test"][ref], coverage)
labels_ind = s_t["labels"][ind]
right_s = ll_s["test"][ind].argmax(1) == labels_ind
dc_fig = gclib.get_model(next(iter(dcs), "resnet18"), dataset, device="cpu").eval()
images = {"test": x_s[ind], **{k: ood_x[k] for k in set_names}}
with torch.no_grad():
    dc_max = {k: torch.softmax(dc_fig(v), 1).max(1).values for k, v in images.items()}
fig_groups = {}
for name, mask in (("test (correct)", right_s), ("test (error)", ~right_s)):
    t2 = explain.top2(ll_s["test"][ind][mask], d_dims)
    fig_groups[name] = {"bits_per_dim": t2["bits_per_dim"][:, 0], "log_ratio": t2["log_ratio"],
                        "dc_max": dc_max["test"][mask]}
for k in set_names:
    t2 = explain.top2(ll_s[k], d_dims)
    fig_groups[k] = {"bits_per_dim": t2["bits_per_dim"][:, 0], "log_ratio": t2["log_ratio"], "dc_max": dc_max[k]}
all_ll = torch.cat([ll_s["test"][ind], *[ll_s[k] for k in set_names]])
all_b = torch.cat([b_s["test"][ind], *[b_s[k] for k in set_names]])
all_codes = explain.regions(all_ll, all_b, (lo, hi), max_ratio)
all_images = torch.cat(list(images.values()))
all_sets = [k for k, v in images.items() for _ in range(len(v))]
examples = {region: [{"image": all_images[i], "caption": f"{all_sets[i]}\n{FASHION_MNIST_CLASSES[int(all_ll[i].argmax())]}"}
                     for i in idx] for region, idx in explain.pick_per_region(all_codes, 4, zoo_module.EVAL_SEED).items()}
fig = plotting.plot_both_or_neither(fig_groups, (lo, hi), max_ratio, examples,
                                    title=f"{model_name}, ELBO (a bound): the two most likely classes of every image")
plotting.savefig(fig, "fig_diffusion_both_or_neither", figures)
glue("fig_diffusion_both_or_neither", fig, display=False)
glue("diffusion_fig_bn_test_errors", int((~right_s).sum()), display=False)
glue("diffusion_fig_bn_test_n", len(right_s), display=False)

# %% [markdown]
# ## Under corruption: the robustness chapter's protocol
# The corruption chapter's twelve corruptions (`gclib.robust`) at severity 3 on the first `zoo.CORRUPT_N`
# images of the seeded subset. The classifier's logits (the log-softmax of Li et al.'s unpruned class scores,
# 1,000 network evaluations an image, 3 s of a CPU core) on the 13 versions of each image ship as
# `evals/<model>.corrupt` (`python -m gclib.zoo evaluate <model> --what corrupt`), and so do ABS's on the
# same images; the tests recompute three random (version, image) pairs of each. The other models classify
# the same corrupted images here. Columns as in `table_corruptions`: clean and mean corruption accuracy with
# their SEs over images, the paired difference to the ResNet DC and the error consistency (kappa) with it.

# %%
shipped_c = {}
for name in [model_name, *[c.strip() for c in (corrupt_shipped or "").split(",") if c.strip()]]:
    sha = manifest["sha256"] if name == model_name else gclib.get_model(name, dataset, device="cpu").manifest["sha256"]
    shipped_c[name] = evals.load(evals.path_of(name, "corrupt", dataset), model_sha256=sha)
live_c = {name: gclib.get_model(name, dataset, device="cpu") for name in
          [c.strip() for c in corrupt_live.split(",") if c.strip()]}
corr_rows, nc, c_versions = robust.shipped_corruption_rows(shipped_c, live_c, test, n_bootstrap=n_bootstrap)
corr_table = pd.DataFrame(corr_rows).astype(object).fillna("")
md = plotting.save_frame(corr_table, "table_diffusion_corruptions", figures)
glue("table_diffusion_corruptions", corr_table, display=False)
display(Markdown(f"On {nc} test images x {len(c_versions) - 1} corruptions at severity 3:\n\n" + md))
glue("diffusion_corrupt_n", nc, display=False)
for r in corr_rows:
    k = r["model"].replace("-", "_")
    for col in ("clean_pct", "clean_se", "mca_pct", "mca_se", "delta_pct", "delta_se", "kappa_corrupted",
                "kappa_corrupted_se"):
        glue(f"diffusion_corrupt_{col}_{k}", r[col], display=False)
# How far the diffusion classifier's paired difference to the DC lies below each other model's, in units of
# their SEs combined (as if independent: the same images make them correlated, so this is a rough guide).
own = next(r for r in corr_rows if r["model"] == model_name)
for r in corr_rows:
    if (r["model"] != model_name and isinstance(r["delta_se"], float) and isinstance(own["delta_se"], float)
            and math.hypot(r["delta_se"], own["delta_se"]) > 0):
        z = (float(r["delta_pct"]) - float(own["delta_pct"])) / math.hypot(r["delta_se"], own["delta_se"])
        glue(f"diffusion_corrupt_gap_z_{r['model'].replace('-', '_')}", f"{z:.1f}", display=False)

print(f"notebook time {time.time() - start:.0f} s")
