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
# # Adversarial attacks: how easily each model is fooled, and whether the GC's density notices
#
# Untargeted attacks on Fashion-MNIST test images (pixels in [0, 1]) with `gclib.attacks`: FGSM, PGD in the
# $L_\infty$ ball and PGD in the $L_2$ ball, at a grid of budgets $\epsilon$, against GCs at several β
# (attacked through their logits `model(x)`, the log-posterior) and the two feed-forward references: the
# ResNet-18 DC and the GC trained with β = ∞. The success rate at $\epsilon$ is the share of the images a
# model classified correctly *before* the attack that it misclassifies after it (images it got wrong already
# are left out of n). PGD: one uniformly random start, `steps` steps of size 2.5 ε / steps, an image is no
# longer attacked once it is fooled, and the budgets are attacked from the largest down: an image PGD could
# not fool at some ε is not attacked at the smaller ones (counted as not fooled there).
#
# Then, for one GC, detection: the AUROC of telling the successful adversarial images from clean test images
# by the GC's bits/dim (the log p(x) test) and by their distance from the typical bits/dim of held-out
# validation images (the typicality test), as in `gclib.detect`, for three attackers: plain PGD run for all
# its steps, plain PGD stopped as soon as the image is fooled, and an adaptive attacker who knows the
# detector (PGD on the cross-entropy minus a penalty on the bits/dim leaving a band around their typical
# value; it stops once the image is fooled *and* inside the band). Writes `fig_adversarial`,
# `table_adversarial`, `fig_adv_detection` and `table_adv_detection` and glues the numbers the book cites.

# %% tags=["parameters"]
dataset = "fashion-mnist"
betas = "1,8,32,inf"  # the GCs to attack (inf: the feed-forward twin of the GC)
dcs = "resnet"  # the feed-forward references
# Models too costly to attack live (the diffusion classifier: 1,000 network evaluations a forward pass, about 5 s
# of a core per image and PGD step): their shipped PGD-Linf artifacts (evals/<model>.attack-pgd, computed by
# `python -m gclib.zoo evaluate NAME --what attack-pgd`, the same attack on their own subset) join the table and
# the PGD-Linf panel, and their attack-transfer artifacts make table_adv_transfer
shipped = "diffusion-unet32"
n_test = 500  # test images drawn (the attacks run on those classified correctly)
n_val = 500  # held-out images that define typical bits/dim for the detectors
eps_linf = "1/16,1/4,1,4,16"  # FGSM and PGD-Linf budgets in units of 1/255
eps_l2 = "0.004,0.016,0.0625,0.25,1,4"  # PGD-L2 budgets (pixel values in 0..1, 784 pixels)
steps = 10  # PGD steps (step size 2.5 eps / steps)
detect_beta = "8"  # the GC whose density is tested as a detector
detect_eps = "1,4,16"  # PGD-Linf budgets of the detection study, units of 1/255
adaptive_weight = 10.0  # the adaptive attack: penalty in nats per bit/dim outside the typical band
seed = 0
device = None  # None: CUDA if available, else CPU
figures = "figures"  # output folder for figures and tables

# %%
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import attacks, checkpoints, detect, evals, explain, plotting, zoo

t_start = time.time()
_, val, test = gclib.data.load(dataset)
x_test, y_test = test.subset(min(n_test, len(test)), seed).tensors()
x_val, _ = val.subset(min(n_val, len(val)), seed).tensors()
beta_list = [b.strip() for b in betas.split(",") if b.strip()]
dc_list = [d.strip() for d in dcs.split(",") if d.strip()]
linf_255 = [float(Fraction(e)) for e in eps_linf.split(",")]
l2 = [float(e) for e in eps_l2.split(",")]
detect_255 = [float(Fraction(e)) for e in detect_eps.split(",")]
assert detect_beta in beta_list and all(e in linf_255 for e in detect_255), "detect_* must be in betas / eps_linf"
DC_NAMES = {"resnet": "ResNet-18 DC"}
SHIPPED_NAMES = {"diffusion-unet32": "GC (diffusion)"}
shipped_list = [m.strip() for m in shipped.split(",") if m.strip()]


def gc_name(beta):
    return f"GC β={'∞' if beta == 'inf' else beta}"


models = {gc_name(b): gclib.pretrained(dataset, beta=b, device=device).eval() for b in beta_list}
# channels_last: the same float32 model, about twice as fast for the ResNet's convolutions on a CPU
for d in dc_list:
    dc = gclib.pretrained(dataset, d, device=device).eval()
    models[DC_NAMES.get(d, d)] = dc.to(memory_format=torch.channels_last)
print(f"{len(x_test)} test images, {len(models)} models: {', '.join(models)}; PGD with {steps} steps")

# %% [markdown]
# Every attack on every model at every budget. FGSM takes one gradient per image for all budgets.

# %%
GRIDS = {"FGSM": [e / 255 for e in linf_255], "PGD-Linf": [e / 255 for e in linf_255], "PGD-L2": l2}
SCALE = {"FGSM": 255, "PGD-Linf": 255, "PGD-L2": 1}
curves, rows = {}, []
for name, model in models.items():
    t0 = time.time()
    for attack, eps in GRIDS.items():
        kind, norm = attacks.ATTACKS[attack]
        curves[name, attack] = attacks.success_curve(model, x_test, y_test, eps, kind, norm, steps=steps, seed=seed)
        rows += attacks.curve_rows(name, attack, curves[name, attack], scale=SCALE[attack])
    n_ok = int(curves[name, "FGSM"].correct.sum())
    print(f"{name}: {n_ok} of {len(x_test)} test images correct before the attacks; {time.time() - t0:.1f} s")
n_of = {name: int(curves[name, "FGSM"].correct.sum()) for name in models}

# %% [markdown]
# The shipped PGD-$L_\infty$ artifacts: loading checks that they were computed from the shipped weights (sha256)
# and are intact; every attacked image must lie in its ball and in [0, 1], and the shipped logits must say fooled
# exactly where the artifact does (the tests and `python -m gclib.zoo verify` also recompute a random sample of
# those logits from the weights). Their images are the first ones of the seeded test subset, not the `n_test`
# drawn above: a smaller, different sample, with a larger standard error.

# %%
shipped_info = {}
for m_name in shipped_list:
    label = SHIPPED_NAMES.get(m_name, m_name)
    stem = evals.path_of(m_name, "attack-pgd", dataset)
    if not stem.with_name(stem.name + ".json").is_file():
        print(f"{m_name}: no shipped attack-pgd artifact (python -m gclib.zoo evaluate {m_name} --what attack-pgd)")
        continue
    sha = checkpoints.read_manifest(zoo.checkpoint_root() / dataset / m_name)["sha256"]
    a, a_manifest = evals.load(stem, model_sha256=sha)
    info = a_manifest["info"]
    x_a, y_a = test.batch(a["indices"])
    eps_a = [e / 255 for e in info["eps_255"]]
    assert steps <= info["steps"], "the artifact ran fewer PGD steps than the live attacks"
    dist = (a["x_adv"] - x_a[None]).flatten(2).abs().amax(2)
    assert (dist <= torch.tensor(eps_a)[:, None] + 1e-6).all() and 0 <= float(a["x_adv"].min()) <= float(
        a["x_adv"].max()) <= 1
    wrong = a["logits_adv"].argmax(2) != y_a[None]
    assert torch.equal(a["fooled"], a["attacked"] & wrong), f"{m_name}: fooled flags disagree with the logits"
    curve = attacks.Curve(eps_a, a["correct"], a["fooled"], a["attacked"], a["x_adv"])
    curves[label, "PGD-Linf"] = curve
    rows += attacks.curve_rows(label, "PGD-Linf", curve, scale=255)
    n_of[label] = int(a["correct"].sum())
    shipped_info[label] = {"model": m_name, "n": len(a["indices"]), "indices": a["indices"], **info}
    print(f"{label}: {n_of[label]} of {len(a['indices'])} seeded test images correct; PGD-Linf at "
          f"{info['eps_255']}/255, {info['steps']} steps, {info['seconds_per_image']} s of a core per image")

# %% [markdown]
# Gradient masking would make a white-box attack look weak: a model whose gradients mislead PGD still falls to
# images that need no gradient of it. The shipped `attack-transfer` artifacts hold PGD-$L_\infty$ images crafted
# on other shipped models (all steps, no early stop) for the same seeded images, and the model's logits on them;
# a transfer attack that fools the model more often than its own white-box PGD at the same budget would be the
# sign (`table_adv_transfer`).

# %%
transfer_rows = []
for m_name in shipped_list:
    label = SHIPPED_NAMES.get(m_name, m_name)
    stem = evals.path_of(m_name, "attack-transfer", dataset)
    if label not in shipped_info or not stem.with_name(stem.name + ".json").is_file():
        print(f"{m_name}: no shipped attack-transfer artifact (python -m gclib.zoo evaluate {m_name} "
              "--what attack-transfer)")
        continue
    sha = checkpoints.read_manifest(zoo.checkpoint_root() / dataset / m_name)["sha256"]
    tr, tr_manifest = evals.load(stem, model_sha256=sha)
    tr_info = tr_manifest["info"]
    x_t, y_t = test.batch(tr["indices"])
    assert torch.equal(tr["indices"], shipped_info[label]["indices"]), "the two artifacts attack other images"
    correct_t = tr["logits_clean"].argmax(1) == y_t
    white = curves[label, "PGD-Linf"]
    assert torch.equal(correct_t, white.correct), "the two artifacts disagree on the clean predictions"
    for i, src in enumerate(tr_info["sources"]):
        for k, e in enumerate(tr_info["eps_255"]):
            assert (tr["x_adv"][i, k] - x_t).abs().max() <= e / 255 + 1e-6
            fooled = correct_t & (tr["logits_adv"][i, k].argmax(1) != y_t)
            rate, n_t, se = attacks.success_rate(correct_t, fooled)
            src_rate = float((tr["source_logits"][i, k].argmax(1) != y_t).double().mean())
            w = white.epsilons.index(e / 255) if e / 255 in white.epsilons else None
            w_rate = white.rate(w) if w is not None else None
            transfer_rows.append({"model": label, "source": src, "eps": f"{e:g}/255", "n": n_t,
                                  "source_fooled_pct": round(100 * src_rate, 1),
                                  "transfer_pct": round(100 * rate, 1), "transfer_se": round(100 * se, 1),
                                  "white_box_pct": "—" if w_rate is None else round(100 * w_rate[0], 1),
                                  "white_box_se": "—" if w_rate is None else round(100 * w_rate[2], 1)})
if transfer_rows:
    plotting.save_table(transfer_rows, "table_adv_transfer", figures, headers={
        "model": "model", "source": "crafted on", "eps": "ε", "n": "n",
        "source_fooled_pct": f"fools the source (% of all {len(tr['indices'])} images)",
        "transfer_pct": "transfer success (%)",
        "transfer_se": "SE", "white_box_pct": "its own PGD (%)", "white_box_se": "SE "})
    display(Markdown((Path(figures) / "table_adv_transfer.md").read_text()))

# %% [markdown]
# The table: success rate (%) ± its binomial standard error, per attack and budget (rows) and model
# (columns); n is the number of test images the model classified correctly, on which the rate is counted.


# %%
def eps_text(attack, eps):
    if SCALE[attack] != 255:
        return f"{eps:g}"
    frac = Fraction(eps).limit_denominator(64)
    return f"{frac}/255" if frac.denominator == 1 else f"({frac})/255"


columns = [*models, *shipped_info]
wide = []
for attack in GRIDS:
    for eps in sorted({r["eps"] for r in rows if r["attack"] == attack}):
        row = {"attack": attack, "eps": eps_text(attack, eps), **{name: "—" for name in columns}}
        for r in rows:
            if r["attack"] == attack and r["eps"] == eps:
                row[r["model"]] = f"{r['success_pct']:.1f} ± {r['se_pct']:.1f}"
        wide.append(row)
headers = {"attack": "attack", "eps": "ε", **{name: f"{name} (n = {n_of[name]})" for name in columns}}
plotting.save_table(wide, "table_adversarial", figures, headers=headers)
display(Markdown((Path(figures) / "table_adversarial.md").read_text()))

# %% [markdown]
# The figure: success rate against ε (log scale), one panel per attack (bars: ± one SE).

# %%
colors = {gc_name(b): plotting.BETA_COLORS.get(b, "#7f7f7f") for b in beta_list}
colors.update({DC_NAMES.get(d, d): plotting.DC_COLOR for d in dc_list})
colors.update({label: plotting.DIFFUSION_COLOR for label in shipped_info})
fig = attacks.plot_success_curves(rows, colors, {"FGSM": "ε (L∞, ×1/255)", "PGD-Linf": "ε (L∞, ×1/255)",
                                                 "PGD-L2": "ε (L2)"})
plotting.savefig(fig, "fig_adversarial", figures)

# %% [markdown]
# Detection, for the GC with β = `detect_beta`: its bits/dim on held-out validation images define "typical"
# (their mean; the adaptive attacker aims for the band of half-width equal to the median distance of those
# images from the mean). Three attackers at each ε: plain PGD for all its steps (the usual attack, blind
# to the detector), plain PGD stopped as soon as the image is fooled (the curves above), and the adaptive
# attack, which starts from the clean image (a random start in the ball only raises the bits/dim) and keeps
# an image that already works at a smaller budget. The positives are the successful adversarial images, the
# negatives all clean test images.

# %%
gc = models[gc_name(detect_beta)]
ref = explain.gc_outputs(gc, x_val)["bits_per_dim"]
bpd_clean = explain.gc_outputs(gc, x_test)["bits_per_dim"]
mu = float(ref.mean())
tolerance = float(np.median(detect.typicality(ref, ref)))
objective = attacks.typical_objective(gc, mu, adaptive_weight, tolerance)
curve = curves[gc_name(detect_beta), "PGD-Linf"]
correct, idx = curve.correct, torch.where(curve.correct)[0]
det_rows, hist = [], {}
t0 = time.time()
# The adaptive attacker (gclib.attacks.adaptive_attack) goes from the smallest budget up: it keeps an image
# that already fools and is typical at a smaller budget (it lies inside this ball too) and attacks the others
# anew, from the clean image (a random start in the ball would only raise the bits/dim); it takes the new
# image where it ranks higher: fooled and typical, then fooled, then neither.
adaptive = dict(zip(sorted(detect_255), attacks.adaptive_attack(
    gc, x_test[idx], y_test[idx], [e / 255 for e in sorted(detect_255)], objective, steps=steps, seed=seed)))
for eps in sorted(detect_255):
    e = linf_255.index(eps)
    runs = {}
    full = attacks.pgd(gc, x_test[idx], y_test[idx], eps / 255, "inf", steps=steps, seed=seed, early_stop=False)
    runs["plain, all steps"] = full.x_adv
    runs["plain, stops when fooled"] = curve.x_adv[e, idx]
    runs["adaptive"] = adaptive[eps]
    for attacker, x_adv in runs.items():
        fooled = torch.zeros_like(correct)
        fooled[idx] = gc.predict(x_adv.to(gc.device)).cpu() != y_test[idx]
        bpd_adv = bpd_clean.clone()
        bpd_adv[idx] = explain.gc_outputs(gc, x_adv)["bits_per_dim"]
        det_rows.append({"eps": eps, "attacker": attacker,
                         **attacks.detection_row(correct, fooled, bpd_clean, bpd_adv, ref)})
        if eps == detect_255[len(detect_255) // 2] and attacker != "plain, stops when fooled":
            hist.setdefault("clean test images", bpd_clean.numpy())
            hist[f"{attacker} (fooled)"] = bpd_adv[fooled].numpy()
print(f"detection study: {time.time() - t0:.1f} s")

DET_HEADERS = {"eps": "ε (×1/255)", "attacker": "attacker", "n": "n", "n_fooled": "fooled",
               "success_pct": "success (%)", "success_se": "SE", "dbpd_median": "median Δ bits/dim",
               "auroc_logpx": "AUROC log p(x) (%)", "auroc_se_logpx": "SE",
               "auroc_typicality": "AUROC typicality (%)", "auroc_se_typicality": "SE ",
               "evade_logpx": "fooled, passes log p(x) test (%)", "evade_typicality": "fooled, passes typicality (%)"}
table = [{k: ("—" if r[k] is None else r[k]) for k in DET_HEADERS} for r in det_rows]
for r in table:
    r["eps"] = f"{Fraction(r['eps']).limit_denominator(64)}"
plotting.save_table(table, "table_adv_detection", figures, headers=DET_HEADERS)
display(Markdown((Path(figures) / "table_adv_detection.md").read_text()))

# %% [markdown]
# The figure: where the adversarial images' bits/dim fall (middle budget), the detectors' AUROC against ε,
# and how many attacked images end up fooled, and fooled *and* accepted by the typicality test (flagging
# 5 % of held-out images).

# %%
s_ref = detect.typicality(ref, ref)
half = float(np.quantile(s_ref, 0.95))
mid = Fraction(detect_255[len(detect_255) // 2]).limit_denominator(64)
fig = attacks.plot_detection(det_rows, hist, (mu - half, mu + half),
                             f"{gc_name(detect_beta)}, PGD-L∞ at ε = {mid}/255")
plotting.savefig(fig, "fig_adv_detection", figures)


# %% [markdown]
# Numbers for the book.

# %%
def key(name):
    return (name.replace("GC β=∞", "beta_inf").replace("GC β=", "beta_").replace("ResNet-18 DC", "resnet")
            .replace("GC (diffusion)", "diffusion"))


def eps_key(attack, eps):
    return f"{eps:g}".replace(".", "_") if SCALE[attack] == 1 else f"{Fraction(eps).limit_denominator(64)}".replace(
        "/", "_")


for r in rows:
    glue(f"adv_{r['attack'].lower().replace('-', '_')}_{key(r['model'])}_{eps_key(r['attack'], r['eps'])}",
         f"{r['success_pct']:.1f}", display=False)
for name in columns:
    glue(f"adv_n_{key(name)}", n_of[name], display=False)
for r in transfer_rows:
    k = f"adv_transfer_{key(r['model'])}_{r['source'].replace('-', '_')}_{r['eps'].replace('/', '_')}"
    glue(k, f"{r['transfer_pct']:.1f}", display=False)
    glue(f"{k}_source", f"{r['source_fooled_pct']:.1f}", display=False)
for label, info in shipped_info.items():
    glue(f"adv_shipped_n_{key(label)}", info["n"], display=False)
    glue(f"adv_shipped_s_per_image_{key(label)}", f"{info['seconds_per_image']:.0f}", display=False)
glue("adv_n_test", len(x_test), display=False)
glue("adv_n_val", len(x_val), display=False)
glue("adv_steps", steps, display=False)
glue("adv_max_se", f"{max(r['se_pct'] for r in rows):.1f}", display=False)
ATT_KEY = {"plain, all steps": "plain", "plain, stops when fooled": "early", "adaptive": "adaptive"}
for r in det_rows:
    k = f"advdet_{ATT_KEY[r['attacker']]}_{eps_key('PGD-Linf', r['eps'])}"
    for field in ("success_pct", "auroc_logpx", "auroc_typicality", "evade_logpx", "evade_typicality",
                  "dbpd_median", "n_fooled"):
        glue(f"{k}_{field}", "—" if r[field] is None else r[field], display=False)
glue("advdet_beta", detect_beta, display=False)
glue("advdet_weight", f"{adaptive_weight:g}", display=False)
glue("advdet_tolerance", f"{tolerance:.2f}", display=False)
max_auroc_se = max(r[k] or 0 for r in det_rows for k in ("auroc_se_logpx", "auroc_se_typicality"))
glue("advdet_max_auroc_se", f"{max_auroc_se:.1f}", display=False)
print(f"total {time.time() - t_start:.1f} s")
