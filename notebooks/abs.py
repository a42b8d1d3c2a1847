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
# # Analysis by synthesis: one VAE per class, and what its decoders reconstruct
#
# The ABS model (Schott et al., ICLR 2019) keeps a VAE per class and classifies an image by the class whose
# decoder explains it best: for every class the latent is optimised at test time (the best of 8,000 cached
# prior samples, then Adam steps on the latent), and the class score is a bound on log p(x|y) at the
# latent found. An Ju's thesis found such classifiers failing on complex images because each class's
# generator is too good: it reconstructs images outside its class ("out-of-domain reconstruction"). This
# notebook measures that on Fashion-MNIST: how well each class's decoder reconstructs test images of the
# other classes and images of the OoD sets, what that does to accuracy, and the same reading of an IB-INN's
# class-conditional densities.
#
# ABS's rule costs hundreds of decoder passes per image, so the zoo ships its per-image results on a seeded
# test subset as evaluation artifacts (`checkpoints/<dataset>/evals/<model>.abs-*`, naming the weights'
# sha256); the notebook recomputes `n_live` of them from the model and checks them, and runs the
# reconstruction figure and the IB-INN live. It writes `fig_ood_reconstruction`, `fig_reconstruction_matrix`,
# `table_abs_rules`, `table_ood_reconstruction` and `table_abs_compare` and glues the numbers the chapter
# cites (keys `abs_*`).

# %% tags=["parameters"]
dataset = "fashion-mnist"
model_name = "abs-vae8"  # a zoo model of the ABS family
ibinn = "gc-large-beta-8"  # the IB-INN whose class-conditional densities are read the same way
compare = "gc-beta-8,gc-large-beta-8,gc-large-beta-1536,resnet18"  # zoo models beside it (same images)
diffusion = "diffusion-unet32"  # its shipped predictions cover the same seeded images ("" to skip)
n_live = 2  # artifact images recomputed from the model here (about 1 s each on a CPU core)
n_examples = 3  # test images in the reconstruction figure (beside one image of each OoD set shown)
n_bootstrap = 200  # resamples of the images for the SEs of kappa and ECE
attacked = "gc-beta-8,gc-large-beta-8,resnet18"  # models whose shipped minimal-L2 attacks stand beside ABS's
figures = "figures"  # output folder for figures and tables

# %%
import math
import time

import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from myst_nb import glue
from sklearn.metrics import roc_auc_score

import gclib
from gclib import calibration, detect, evals, plotting, robust, zoo
from gclib.model import nats_to_bits_per_dim

start = time.time()
test = gclib.data.load(dataset)[2]
classes = test.classes
model = gclib.get_model(model_name, dataset, device="cpu").eval()
manifest = model.manifest
record = manifest["info"]["test"]
sha = manifest["sha256"]
t, t_manifest = evals.load(evals.path_of(model_name, "abs-test", dataset), model_sha256=sha)
extra, _ = evals.load(evals.path_of(model_name, "abs-extra", dataset), model_sha256=sha)
ood, _ = evals.load(evals.path_of(model_name, "abs-ood", dataset), model_sha256=sha)
labels, n = t["labels"], len(t["labels"])
D = math.prod(model.input_shape)
print(f"{model_name}: {manifest['info']['parameters']:,} parameters ({model.num_classes} VAEs, latent "
      f"{model.config.latent_dim}), {manifest['info']['epochs']} epochs, trained "
      f"{manifest['info']['wall_time_s'] / 60:.0f} min on {manifest['info']['device']}")
print(f"artifacts: {n} test images (seeded subset), {record['ood_n']} images of each OoD set; inference "
      f"{record['inference']}")

# %% [markdown]
# ## Recomputed here
# `n_live` test images of the artifact, drawn at random, recomputed from the shipped weights. The search is
# 50 Adam steps on each latent, and float32 rounding depends on the batch, so scores must agree to a
# relative 1e-3 (`gclib.zoo.ABS_RTOL`).

# %%
g = torch.Generator().manual_seed(int(time.time()))
pick = torch.randperm(n, generator=g)[:n_live]
if n_live:
    with torch.no_grad():
        live = zoo._abs_outputs(model, test.batch(t["indices"][pick])[0])
    for key in ("scores", "reconstruction_mse"):
        worst = float(((live[key] - t[key][pick]).abs() / t[key][pick].abs().clamp_min(1e-6)).max())
        print(f"test images {t['indices'][pick].tolist()}: {key} largest relative difference {worst:.1e}")
        assert torch.allclose(live[key], t[key][pick], rtol=zoo.ABS_RTOL, atol=1e-5), "the artifact does not match"

# %% [markdown]
# ## Accuracy by rule and similarity
# One search per image and class gives every rule below on the same images (so their differences are
# paired): the shipped rule (an importance-weighted bound on log p(x|y) at the latent found), ABS's own
# score (-L_y = log p(x|z*) - |z*|^2/2), the best reconstruction alone (the class whose decoder's mean has the
# smallest squared error: no prior term), and the same weights with SSIM as the similarity (searched again,
# on the first images). The accuracy after s search steps shows what the optimisation adds to the best
# cached prior sample (s = 0).

# %%
right = (t["predictions"] == labels).double()


def rate_row(rule, hit, note=""):
    hit = torch.as_tensor(hit, dtype=torch.float64)
    a = float(hit.mean())
    row = {"rule": rule, "n": len(hit), "accuracy_pct": round(100 * a, 2),
           "accuracy_se_pct": round(100 * math.sqrt(a * (1 - a) / len(hit)), 2), "note": note}
    if len(hit) == n:
        diff = hit - right
        row["vs_shipped_pct"] = round(100 * float(diff.mean()), 2)
        row["vs_shipped_se_pct"] = round(100 * float(diff.std() / math.sqrt(n)), 2)
    else:
        diff = hit - right[:len(hit)]
        row["vs_shipped_pct"] = round(100 * float(diff.mean()), 2)
        row["vs_shipped_se_pct"] = round(100 * float(diff.std() / math.sqrt(len(hit))), 2)
    return row


k_bound = record["inference"]["n_bound_samples"]
rule_rows = [
    rate_row("shipped: importance-weighted bound (MSE similarity)", right, f"K = {k_bound}, the model's rule"),
    rate_row("ABS's score -L_y(x, z*)", t["abs_scores"].argmax(1) == labels, "log p(x|z*) - |z*|^2 / 2"),
    rate_row("best reconstruction (MSE only)", t["reconstruction_mse"].argmin(1) == labels, "no prior term"),
    rate_row("SSIM similarity", extra["ssim_predictions"] == labels[:len(extra["ssim_predictions"])],
             "searched again with SSIM; first images only"),
]
marks = [int(m) for m in record["accuracy_by_step"]]
for i, s in enumerate(marks):
    rule_rows.append(rate_row(f"ABS's score after {s} search steps", t["loss_by_step"][:, i].argmin(1) == labels,
                              "the best cached prior sample" if s == 0 else ""))
rules = pd.DataFrame(rule_rows)
md = plotting.save_frame(rules, "table_abs_rules", figures)
glue("table_abs_rules", rules, display=False)
display(Markdown(md))

acc, se = 100 * record["accuracy"], 100 * record["accuracy_se"]
glue("abs_acc", f"{acc:.2f}", display=False)
glue("abs_acc_se", f"{se:.2f}", display=False)
glue("abs_n", f"{n:,}", display=False)
glue("abs_evals", f"{record['evaluations_per_image']:,}", display=False)
glue("abs_ms", f"{record['ms_per_image']:.0f}", display=False)
glue("abs_threads", str(record["torch_threads"]), display=False)
glue("abs_bpd", f"{record['bits_per_dim']:.3f}", display=False)
glue("abs_bpd_se", f"{record['bits_per_dim_se']:.3f}", display=False)
glue("abs_bpd_n", str(record["bits_per_dim_n"]), display=False)
glue("abs_params", f"{manifest['info']['parameters']:,}", display=False)
glue("abs_train_min", f"{manifest['info']['wall_time_s'] / 60:.0f}", display=False)
for key, row in zip(("abs_score", "abs_recon", "abs_ssim"), rule_rows[1:4]):
    glue(f"{key}_acc", f"{row['accuracy_pct']:.2f}", display=False)
    glue(f"{key}_se", f"{row['accuracy_se_pct']:.2f}", display=False)
    glue(f"{key}_vs", f"{row['vs_shipped_pct']:+.2f}", display=False)
    glue(f"{key}_vs_se", f"{row['vs_shipped_se_pct']:.2f}", display=False)
glue("abs_ssim_n", str(rule_rows[3]["n"]), display=False)
glue("abs_step0_acc", f"{rule_rows[4]['accuracy_pct']:.2f}", display=False)
glue("abs_steps_last", str(marks[-1]), display=False)
glue("abs_steps_last_acc", f"{rule_rows[-1]['accuracy_pct']:.2f}", display=False)

# %% [markdown]
# ## Out-of-domain reconstruction
# Each class's decoder, searched for the image it is shown. Rows: the input (test images of three classes,
# then one image of each OoD set), then the reconstruction of every class's decoder, with its mean squared
# error per pixel; the frame marks the class the rule picks.

# %%
x_show, y_show = [], []
for c in range(min(n_examples, len(classes))):
    i = int((labels == [0, 3, 7, 9, 1, 2, 4, 5, 6, 8][c]).nonzero()[0])
    x_show.append(test.batch(t["indices"][i:i + 1])[0])
    y_show.append(classes[int(labels[i])])
for name in gclib.data.ood_names():
    x_show.append(gclib.data.ood(name, 1, tuple(model.input_shape), seed=zoo.EVAL_SEED))
    y_show.append(name)
x_show = torch.cat(x_show)
with torch.no_grad():
    found = model.infer(x_show)
    recon = torch.sigmoid(found.logits)
    show_scores = model._bound(x_show, found.z) if model.config.score == "bound" else -found.loss
mse_show = (x_show[:, None] - recon).square().flatten(2).mean(2)

# reconstruction-error matrix of the test images (true class x decoder) and the OoD sets' best decoder
mse = t["reconstruction_mse"].double()
matrix = torch.stack([mse[labels == c].mean(0) for c in range(len(classes))])  # [true, decoder]
own = mse.gather(1, labels[:, None]).squeeze(1)
best_other = mse.masked_fill(torch.nn.functional.one_hot(labels, len(classes)).bool(), math.inf).min(1).values
other_better = float((best_other < own).double().mean())
sets = ["test"] + gclib.data.ood_names()
best_mse = {"test": mse.min(1).values}
for name in gclib.data.ood_names():
    best_mse[name] = ood[f"{name}.reconstruction_mse"].double().min(1).values

fig = plotting._plt().figure(figsize=(10.0, 0.92 * len(x_show) + 2.8))
fig.subplots_adjust(top=0.97, bottom=0.07, left=0.1, right=0.98)
grid = fig.add_gridspec(2, 1, height_ratios=[1.0 * len(x_show), 2.6], hspace=0.25)
top = grid[0].subgridspec(len(x_show), len(classes) + 1, wspace=0.05, hspace=0.3)
for r in range(len(x_show)):
    pick_r = int(show_scores[r].argmax())
    for c in range(len(classes) + 1):
        ax = fig.add_subplot(top[r, c])
        image = x_show[r, 0] if c == 0 else recon[r, c - 1, 0]
        ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if c == 0:
            ax.set_ylabel(y_show[r], fontsize=7, rotation=0, ha="right", va="center")
        else:
            ax.set_xlabel(f"{float(mse_show[r, c - 1]):.3f}", fontsize=6, labelpad=1)
            if c - 1 == pick_r:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_edgecolor("C3")
                    spine.set_linewidth(2)
        if r == 0:
            ax.set_title("input" if c == 0 else classes[c - 1], fontsize=7)
ax = fig.add_subplot(grid[1])
means = [float(best_mse[s].mean()) for s in sets]
ses = [float(best_mse[s].std() / math.sqrt(len(best_mse[s]))) for s in sets]
own_mean = float(own.mean())
ax.bar(range(len(sets)), means, yerr=ses, color=["0.3"] + ["C0"] * (len(sets) - 1), capsize=3)
ax.axhline(own_mean, color="C3", lw=1, ls="--", label=f"test images, their own class's decoder ({own_mean:.4f})")
ax.set_xticks(range(len(sets)))
ax.set_xticklabels([f"{s}\n(n = {len(best_mse[s])})" for s in sets], fontsize=7)
ax.set_ylabel("best decoder's MSE per pixel")
ax.set_yscale("log")
ax.legend(fontsize=7)
ax.set_title(f"{model_name}: how well the best class decoder reconstructs each set (mean ± SE)", fontsize=9)
plotting.savefig(fig, "fig_ood_reconstruction", figures)
glue("fig_ood_reconstruction", fig, display=False)
print(f"another class's decoder reconstructs the test image better than its own class's on "
      f"{100 * other_better:.1f} % of {n} images")
glue("abs_other_better_pct", f"{100 * other_better:.1f}", display=False)
glue("abs_own_mse", f"{own_mean:.4f}", display=False)

# %% [markdown]
# ## The same reading of an IB-INN, and detection
# Both families give a class-conditional score on the same scale: the IB-INN its exact log p(x|y), ABS a
# bound on it. How much worse the other classes' models explain an image, in bits/dim,
# (score of its own class - score of class j) / (D ln 2), averaged per true class, is the matrix below for
# both; small off-diagonal entries mean the other classes' models explain the image nearly as well. For the
# OoD sets, the table gives each family's density (bits/dim at the images as given, on the 8-bit scale) and
# how well each score separates the set from the test images: the AUROC with the OoD images as positives,
# scored as more out-of-distribution by a larger reconstruction error or more bits/dim (0.5 is chance,
# below 0.5 means the OoD images look more typical than the test images).

# %%
gc = gclib.get_model(ibinn, dataset, device="cpu").eval()
x_t = test.batch(t["indices"])[0]


def class_scores(m, x, batch=250):
    with torch.no_grad():
        return torch.cat([m.class_scores(x[s:s + batch]).double() for s in range(0, len(x), batch)])


gc_scores = class_scores(gc, x_t)
abs_scores = t["scores"].double()
to_bits = 1 / (D * math.log(2))


def delta_matrix(scores):
    own_s = scores.gather(1, labels[:, None])
    return torch.stack([((own_s - scores) * to_bits)[labels == c].mean(0) for c in range(len(classes))])


delta_abs, delta_gc = delta_matrix(abs_scores), delta_matrix(gc_scores)
off = ~torch.eye(len(classes), dtype=torch.bool)
print(f"mean off-diagonal gap: ABS {float(delta_abs[off].mean()):.3f} bits/dim, {ibinn} "
      f"{float(delta_gc[off].mean()):.3f} bits/dim")
glue("abs_ibinn", ibinn, display=False)
glue("abs_gap_abs", f"{float(delta_abs[off].mean()):.3f}", display=False)
glue("abs_gap_gc", f"{float(delta_gc[off].mean()):.3f}", display=False)

fig, axes = plotting.figure(3, width=3.6, height=3.4)
for ax, mat, title, fmt in ((axes[0][0], matrix, "ABS: decoder's MSE per pixel", "{:.3f}"),
                            (axes[0][1], delta_abs, "ABS: gap to own class (bits/dim)", "{:.2f}"),
                            (axes[0][2], delta_gc, f"{ibinn}: gap (bits/dim)", "{:.2f}")):
    im = ax.imshow(mat.numpy(), cmap="viridis")
    ax.grid(False)
    ax.set_xticks(range(len(classes)))
    ax.set_yticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=90, fontsize=6)
    ax.set_yticklabels(classes, fontsize=6)
    ax.set_xlabel("class model (decoder / density)", fontsize=7)
    ax.set_ylabel("true class of the test image", fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
plotting.savefig(fig, "fig_reconstruction_matrix", figures)
glue("fig_reconstruction_matrix", fig, display=False)

gc_bpd = {"test": nats_to_bits_per_dim(torch.logsumexp(gc_scores + gc.head.log_prior.double(), 1), D)}
abs_bpd = {"test": nats_to_bits_per_dim(torch.logsumexp(abs_scores + model.log_prior.double(), 1), D)}
rows = []
for name in sets:
    if name != "test":
        xo = gclib.data.ood(name, record["ood_n"], tuple(model.input_shape), seed=zoo.EVAL_SEED)
        sg = class_scores(gc, xo)
        gc_bpd[name] = nats_to_bits_per_dim(torch.logsumexp(sg + gc.head.log_prior.double(), 1), D)
        abs_bpd[name] = nats_to_bits_per_dim(torch.logsumexp(ood[f"{name}.scores"].double()
                                                             + model.log_prior.double(), 1), D)
    row = {"set": name, "n": len(best_mse[name]),
           "abs_best_decoder_mse": round(float(best_mse[name].mean()), 5),
           "abs_best_decoder_mse_se": round(float(best_mse[name].std() / math.sqrt(len(best_mse[name]))), 5),
           "abs_bits_per_dim_bound": round(float(abs_bpd[name].mean()), 3),
           f"{ibinn}_bits_per_dim": round(float(gc_bpd[name].mean()), 3)}
    if name != "test":
        def auroc(ood_score, test_score):  # OoD positive, larger score = more OoD
            y_true = np.r_[np.zeros(len(test_score)), np.ones(len(ood_score))]
            return round(float(roc_auc_score(y_true, np.r_[test_score.numpy(), ood_score.numpy()])), 3)

        row["auroc_abs_mse"] = auroc(best_mse[name], best_mse["test"])
        row["auroc_abs_bpd"] = auroc(abs_bpd[name], abs_bpd["test"])
        row[f"auroc_{ibinn}_bpd"] = auroc(gc_bpd[name], gc_bpd["test"])
    rows.append(row)
ood_table = pd.DataFrame(rows).astype(object).fillna("")
md = plotting.save_frame(ood_table, "table_ood_reconstruction", figures)
glue("table_ood_reconstruction", ood_table, display=False)
display(Markdown(md))
for r in rows[1:]:
    k = r["set"].replace("-", "_")
    glue(f"abs_auroc_mse_{k}", f"{r['auroc_abs_mse']:.3f}", display=False)
    glue(f"abs_auroc_bpd_{k}", f"{r['auroc_abs_bpd']:.3f}", display=False)
    glue(f"abs_auroc_gc_{k}", f"{r[f'auroc_{ibinn}_bpd']:.3f}", display=False)
    glue(f"abs_mse_{k}", f"{r['abs_best_decoder_mse']:.4f}", display=False)
glue("abs_mse_test", f"{rows[0]['abs_best_decoder_mse']:.4f}", display=False)

# %% [markdown]
# ## Beside the other classifiers, on the same images
# The IB-INNs, the ResNet and (from its shipped predictions, whose seeded subset starts with these images)
# the diffusion classifier on the same test images: paired accuracy differences, error consistency with
# ABS (Cohen's kappa of correctness) and calibration. ABS's posterior is the softmax of its bounds
# (Bayes' rule, ABS's scale 1); with a Gaussian likelihood of fixed sigma, nothing makes that temperature
# right either.

# %%
abs_right = right.numpy().astype(bool)
probs = {model_name: torch.softmax(model.config.logit_scale * (abs_scores + model.log_prior.double()), 1)}
correct = {}
for name in [c.strip() for c in compare.split(",") if c.strip()]:
    other = gclib.get_model(name, dataset, device="cpu").eval()
    probs[name] = calibration.predict_probs(other, x_t)
    correct[name] = (probs[name].argmax(1) == labels).numpy()
if diffusion:
    d_model = gclib.get_model(diffusion, dataset, device="cpu")
    d, _ = evals.load(evals.path_of(diffusion, "test", dataset), model_sha256=d_model.manifest["sha256"])
    if torch.equal(d["indices"][:n], t["indices"]):
        correct[diffusion] = (d["predictions"][:n] == labels).numpy()
compare_rows = []
for name, hit in correct.items():
    diff = torch.as_tensor(abs_right, dtype=torch.float64) - torch.as_tensor(hit, dtype=torch.float64)
    cal = calibration.calibration_row(name, probs[name], labels, n_bootstrap=n_bootstrap) if name in probs else {}
    compare_rows.append({"model": name, "accuracy_pct": round(100 * float(hit.mean()), 2),
                         "abs_minus_model_pct": round(100 * float(diff.mean()), 2),
                         "difference_se_pct": round(100 * float(diff.std() / math.sqrt(n)), 2),
                         "kappa_with_abs": round(robust.error_consistency(abs_right, hit)["kappa"], 3),
                         "kappa_se": round(robust.error_consistency_se(abs_right, hit, n_bootstrap), 3),
                         "ece_pct": cal.get("ece_pct", ""), "ece_se": cal.get("ece_se", "")})
own_cal = calibration.calibration_row(model_name, probs[model_name], labels, n_bootstrap=n_bootstrap)
compare_rows.insert(0, {"model": model_name, "accuracy_pct": round(100 * float(right.mean()), 2),
                        "abs_minus_model_pct": "", "difference_se_pct": "", "kappa_with_abs": "", "kappa_se": "",
                        "ece_pct": own_cal["ece_pct"], "ece_se": own_cal["ece_se"]})
compare_table = pd.DataFrame(compare_rows).astype(object).fillna("")
md = plotting.save_frame(compare_table, "table_abs_compare", figures)
glue("table_abs_compare", compare_table, display=False)
display(Markdown(f"On {n} test images:\n\n" + md))
glue("abs_ece", f"{own_cal['ece_pct']:.1f}", display=False)
glue("abs_ece_se", f"{own_cal['ece_se']:.1f}", display=False)
confidence = float(probs[model_name].max(1).values.mean())
glue("abs_mean_confidence", f"{100 * confidence:.1f}", display=False)
for r in compare_rows[1:]:
    k = r["model"].replace("-", "_")
    glue(f"abs_minus_{k}", f"{r['abs_minus_model_pct']:+.2f}", display=False)
    glue(f"abs_minus_se_{k}", f"{r['difference_se_pct']:.2f}", display=False)
    glue(f"abs_kappa_{k}", f"{r['kappa_with_abs']:.3f}", display=False)
    glue(f"abs_kappa_se_{k}", f"{r['kappa_se']:.3f}", display=False)
print(f"mean confidence {100 * confidence:.1f} % at {100 * float(right.mean()):.1f} % accuracy")

# %% [markdown]
# ## Under corruption: the robustness chapter's protocol
# The corruption chapter's twelve corruptions (`gclib.robust`) at severity 3 on the first
# `zoo.CORRUPT_N` images of the same seeded subset. ABS's rule costs 0.44 s an image, so its logits on the
# 13 versions of each image ship as an evaluation artifact (`evals/<model>.corrupt`, computed by
# `python -m gclib.zoo evaluate abs-vae8 --what corrupt`); three random (version, image) pairs are
# recomputed here. The other models classify the same corrupted images live. Columns as in
# `table_corruptions`: clean and mean corruption accuracy with their SEs over images, the paired
# difference to the ResNet DC and the error consistency (kappa) with it, clean and corrupted.

# %%
c_art, c_manifest = evals.load(evals.path_of(model_name, "corrupt", dataset), model_sha256=sha)
c_problems = zoo._verify_corruptions(model, model_name, dataset, None, test, torch.Generator().manual_seed(
    int(time.time())), zoo.ABS_RTOL)
assert not c_problems, c_problems
print(f"{model_name}: 3 corrupted images recomputed from the model, logits as shipped")
live_c = {name: gclib.get_model(name, dataset, device="cpu") for name in
          [c.strip() for c in compare.split(",") if c.strip()]}
corr_rows, nc, versions = robust.shipped_corruption_rows({model_name: (c_art, c_manifest)}, live_c, test,
                                                         n_bootstrap=n_bootstrap)
corr_table = pd.DataFrame(corr_rows).astype(object).fillna("")
md = plotting.save_frame(corr_table, "table_abs_corruptions", figures)
glue("table_abs_corruptions", corr_table, display=False)
display(Markdown(f"On {nc} test images x {len(versions) - 1} corruptions at severity "
                 f"{c_manifest['info']['severities']}:\n\n" + md))
glue("abs_corrupt_n", str(nc), display=False)
for r in corr_rows:
    k = r["model"].replace("-", "_")
    for col in ("clean_pct", "mca_pct", "mca_se", "delta_pct", "delta_se", "kappa_corrupted", "kappa_corrupted_se"):
        glue(f"abs_corrupt_{col}_{k}", str(r[col]), display=False)

# %% [markdown]
# ## Adversarial examples: the median L2 distance, as ABS reports it
# Schott et al. judge ABS by the median L2 size of the smallest adversarial perturbation an attack finds, the
# smallest over several attacks per image. Here two attacks of `gclib.attacks.minimal_l2`, with the same
# budget and on the same first `zoo.ATTACK_N` images of the seeded subset for every model:
# - FMN (fast minimum-norm): a gradient attack on the logit margin, started from a misclassified image and
#   shrunk towards the boundary; for ABS the gradient runs through its unrolled latent search
#   (`ABSConfig.unroll`), so the search cannot hide it;
# - HopSkipJump (HSJ): decision-based, it sees only the predicted label of the model as deployed (ABS: the
#   full search), so no gradient can be masked; 10 iterations, about 2,450 label queries per image.
#
# and, per image, the best of both. Images a model gets wrong already count as broken at distance 0. The
# attacks cost minutes per image for ABS, so they ship as evaluation artifacts (`evals/<model>.attack-l2`,
# `evals/<model>.attack-hsj`); here every adversarial image of each model is classified again from the
# shipped weights (it must be misclassified, or, for HSJ's points on the boundary, within 0.001 nats of a
# tie) and its distance recomputed. "Shrink" is the median ratio of the distance of the attack's
# misclassified start to the distance it ended at (how far the attack worked its way in; recorded for the
# HSJ artifacts); "hsj_over_fmn" the median ratio of HSJ's distance to FMN's
# on the images both broke: above 1 where the gradient attack is the stronger one, below 1 where the
# gradient misleads FMN (masking would show here). The last column is the detection test of the robustness
# chapter in its simplest form: how well each model's own density (the negative log-likelihood at the
# image; ABS: its bound) tells its adversarial images from the clean ones (AUROC; with 10 + 10 images its SE
# is about 0.1).

# %%
from gclib.attacks import median_l2

ATTACK_KINDS = {"attack-l2": "FMN", "attack-hsj": "HSJ"}
BOUNDARY_TOL = 1e-3  # nats of logit margin: float rounding at the decision boundary
attack_models = [model_name] + [c.strip() for c in attacked.split(",") if c.strip()]
attack = {}  # model -> attack ("FMN", "HSJ", "best") -> what the table and figure need
models_attacked = {}
for name in attack_models:
    m = model if name == model_name else gclib.get_model(name, dataset, device="cpu").eval()
    models_attacked[name] = m
    attack[name] = {}
    for kind, label in ATTACK_KINDS.items():
        stem = evals.path_of(name, kind, dataset)
        if not stem.with_name(stem.name + ".json").is_file():
            print(f"{name}: no shipped {kind} artifact (python -m gclib.zoo evaluate {name} --what {kind}); skipped")
            continue
        a, a_manifest = evals.load(stem, model_sha256=m.manifest["sha256"])
        x_a, y_a = test.batch(a["indices"])
        found = ~(a["misclassified"] | a["failed"])
        with torch.no_grad():
            again = torch.cat([m(a["x_adv"][found][s:s + 10]) for s in range(0, int(found.sum()), 10)]).float()
        # HSJ ends on the decision boundary to float precision (logit margins of 0-5e-4 nats in the shipped
        # artifacts, ties included), so another batch size or thread count can put a few on the other side by
        # rounding: each must be misclassified or within BOUNDARY_TOL of the boundary.
        true_logit = again.gather(1, y_a[found][:, None])[:, 0]
        best_other = again.scatter(1, y_a[found][:, None], float("-inf")).max(1).values
        assert (true_logit - best_other <= BOUNDARY_TOL).all(), \
            f"{name} {label}: a shipped adversarial image is classified correctly beyond float rounding"
        norms = (a["x_adv"].double() - x_a.double()).flatten(1).norm(dim=1)
        assert torch.allclose(norms[found], a["distance"][found], rtol=1e-5, atol=1e-6)
        broken = torch.where(a["misclassified"], 0.0, a["distance"])
        attack[name][label] = {"a": a, "info": a_manifest["info"], "broken": broken, "x": x_a, "y": y_a,
                               "x_adv": a["x_adv"], "found": found}
    done = attack[name]
    if {"FMN", "HSJ"} <= done.keys() and torch.equal(done["FMN"]["a"]["indices"], done["HSJ"]["a"]["indices"]):
        use_hsj = done["HSJ"]["broken"] < done["FMN"]["broken"]
        done["best"] = {"broken": torch.where(use_hsj, done["HSJ"]["broken"], done["FMN"]["broken"]),
                        "x_adv": torch.where(use_hsj[:, None, None, None], done["HSJ"]["x_adv"], done["FMN"]["x_adv"]),
                        "found": done["HSJ"]["found"] | done["FMN"]["found"], "x": done["FMN"]["x"],
                        "hsj_wins": int((use_hsj & done["HSJ"]["found"]).sum())}
        both = done["HSJ"]["found"] & done["FMN"]["found"]
        ratio = done["HSJ"]["broken"][both] / done["FMN"]["broken"][both]
        done["best"]["hsj_over_fmn"] = round(float(ratio.median()), 2) if both.any() else ""
print("every shipped adversarial image is misclassified by its model (HSJ's: or on the boundary within "
      f"{BOUNDARY_TOL} nats), distances recomputed")


def attack_label(label, info):
    if label == "FMN":
        return f"FMN, {info['steps']} steps" + (", unrolled search" if info["unrolled_search"] else "")
    return f"HSJ, {info['steps']} iterations"


attack_rows = []
for name, by in attack.items():
    m = models_attacked[name]
    for label, r in by.items():
        med, (lo, hi) = median_l2(r["broken"])
        found = r["found"]
        auroc = detect.density_detection_auroc(m, r["x"][found], r["x_adv"][found]) if found.sum() > 1 else None
        row = {"model": name, "n": len(r["broken"])}
        if label == "best":
            row.update(attack=f"best of both (HSJ closer on {r['hsj_wins']})", clean_errors=by["FMN"]["info"]
                       ["misclassified_clean"], failed=int((torch.isinf(r["broken"])).sum()), mean_queries="",
                       s_per_image="", shrink="", hsj_over_fmn=r["hsj_over_fmn"])
        else:
            info, a = r["info"], r["a"]
            shrink = ""
            if "start_distance" in a and found.any():
                shrink = round(float((a["start_distance"][found] / a["distance"][found]).median()), 1)
            row.update(attack=attack_label(label, info), clean_errors=info["misclassified_clean"],
                       failed=info["failed"], mean_queries=round(info["queries_per_image"], 1),
                       s_per_image=info["seconds_per_image"], shrink=shrink, hsj_over_fmn="")
        row.update(median_l2=round(med, 3), interval_68_lo=round(lo, 3), interval_68_hi=round(hi, 3),
                   density_detection_auroc="" if auroc is None else round(auroc, 2))
        row["key"] = label
        attack_rows.append(row)
attack_table = pd.DataFrame(attack_rows)[["model", "attack", "n", "clean_errors", "failed", "median_l2",
                                          "interval_68_lo", "interval_68_hi", "shrink", "hsj_over_fmn", "mean_queries",
                                          "s_per_image", "density_detection_auroc"]]
md = plotting.save_frame(attack_table, "table_abs_attacks", figures)
glue("table_abs_attacks", attack_table, display=False)
display(Markdown(md))
glue("abs_attack_n", str(attack_rows[0]["n"]), display=False)
glue("abs_attack_steps", str(attack[model_name]["FMN"]["info"]["steps"]), display=False)
hsj_ref = attack[model_name].get("HSJ")
glue("abs_hsj_steps", str(hsj_ref["info"]["steps"]) if hsj_ref else "n/a", display=False)
glue("abs_hsj_queries", f"{hsj_ref['info']['queries_per_image']:,.0f}" if hsj_ref else "n/a", display=False)
for name in attack_models:
    k = name.replace("-", "_")
    for label, prefix in (("FMN", "abs"), ("HSJ", "abs_hsj"), ("best", "abs_best")):
        row = next((r for r in attack_rows if r["model"] == name and r["key"] == label), None)
        glue(f"{prefix}_median_l2_{k}", "n/a" if row is None else f"{row['median_l2']:.3f}", display=False)
        glue(f"{prefix}_median_l2_interval_{k}", "n/a" if row is None else
             f"{row['interval_68_lo']:.3f}-{row['interval_68_hi']:.3f}", display=False)
        if label != "best":
            glue(f"{prefix}_attack_s_{k}" if label == "FMN" else f"{prefix}_s_{k}",
                 "n/a" if row is None else f"{row['s_per_image']:.1f}", display=False)
            glue(f"{prefix}_attack_auroc_{k}" if label == "FMN" else f"{prefix}_auroc_{k}",
                 "n/a" if row is None else str(row["density_detection_auroc"]), display=False)
        if label == "HSJ":
            glue(f"abs_hsj_shrink_{k}", "n/a" if row is None else str(row["shrink"]), display=False)
        if label == "best":
            glue(f"abs_best_hsj_wins_{k}", "n/a" if row is None else str(attack[name]["best"]["hsj_wins"]),
                 display=False)
            glue(f"abs_hsj_over_fmn_{k}", "n/a" if row is None else str(row["hsj_over_fmn"]), display=False)

# %% [markdown]
# Paired on the same images: on how many of them ABS's closest adversarial example (the best of both attacks;
# a clean error counts as 0) lies further out than another model's, with a two-sided sign test (ties,
# e.g. both wrong already, dropped).

# %%
from scipy.stats import binomtest


def closest(by):
    return by.get("best", by.get("FMN", by.get("HSJ")))["broken"]


for name in attack_models[1:]:
    k = name.replace("-", "_")
    d_abs, d_other = closest(attack[model_name]), closest(attack[name])
    further, closer = int((d_abs > d_other).sum()), int((d_abs < d_other).sum())
    p_value = binomtest(further, further + closer).pvalue if further + closer else float("nan")
    print(f"{model_name} further out than {name} on {further} of {further + closer} images (sign test p = {p_value:.3f})")
    glue(f"abs_further_{k}", f"{further} of {further + closer}", display=False)
    glue(f"abs_further_p_{k}", f"{p_value:.2f}", display=False)

# %% [markdown]
# Left: the share of the attacked images each model still classifies correctly within an L2 budget, from
# the closer of the two attacks per image (solid; FMN alone where HSJ is not shipped) and from HSJ alone
# (dotted): an upper bound on the true
# robust accuracy. Right: the first image every model classifies correctly, and each model's closest
# adversarial example of it with its distance.

# %%
n_models = len(attack)
fig, axes = plotting.figure(1 + n_models, width=2.2, height=2.4)
ax = axes[0][0]
curves = {name: by.get("best", by.get("FMN", by.get("HSJ"))) for name, by in attack.items()}
finite = torch.cat([r["broken"][torch.isfinite(r["broken"])] for by in attack.values() for r in by.values()])
grid_l2 = np.linspace(0, max(float(finite.max()) * 1.05 if len(finite) else 1.0, 1e-3), 200)
for (name, by), color in zip(attack.items(), ("C1", "C0", "C4", "C2", "C3", "C5")):
    for r, style in ((curves[name], "-"), (by.get("HSJ"), ":")):
        if r is not None:
            still = [float((r["broken"] > e).double().mean()) for e in grid_l2]
            ax.plot(grid_l2, [100 * v for v in still], color=color, ls=style, label=name if style == "-" else None)
ax.set_xlabel("L2 budget")
ax.set_ylabel(f"robust accuracy (%, {attack_rows[0]['n']} images)")
ax.set_xscale("symlog", linthresh=0.01)
ax.legend(fontsize=6)
ok_all = torch.stack([r["broken"] > 0 for r in curves.values()]).all(0)
pick = int(ok_all.nonzero()[0]) if ok_all.any() else 0
for ax, (name, r) in zip(axes[0][1:], curves.items()):
    ax.imshow(r["x_adv"][pick, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{name}\nL2 {float(r['broken'][pick]):.3f}", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
plotting.savefig(fig, "fig_abs_attacks", figures)
glue("fig_abs_attacks", fig, display=False)
print(f"notebook time {time.time() - start:.0f} s")
