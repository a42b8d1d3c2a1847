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
# # Figure 1 on real data: what a GC can say that a DC cannot
#
# For three inputs (a normal test image, an ambiguous one and an unrelated one) this notebook puts the
# ResNet-18 DC's posterior beside the GC's class likelihoods and the GC's density of the input. The
# three inputs are chosen by fixed rules (`gclib.explain.pick_examples`), not by hand. It writes
# `fig_gc_vs_dc_outputs`, then sorts every test and OoD image into the GC's three answers (confident,
# both, neither) for `fig_both_or_neither` and `table_both_or_neither`, and glues the numbers for the book.

# %% tags=["parameters"]
dataset = "fashion-mnist"
beta = "8"  # the GC (a shipped beta)
dc = "resnet"  # the feed-forward reference: the shipped ResNet-18
diffusion = "diffusion-unet32"  # a second GC family in Figure 1 (its class ELBOs and density); "" leaves it out
ood_sets = "photos,uniform-noise"  # the unrelated inputs: one row each (gclib.data.ood_names())
n_test = 10000  # test images searched for the normal and ambiguous examples
n_val = 5000  # held-out images that define the typical range of bits/dim
n_ood = 1000  # images per out-of-distribution set
coverage = 0.99  # the typical range holds this fraction of held-out images
max_ratio = 10.0  # both: the runner-up class is at least 1/max_ratio as likely as the best
n_examples = 4  # example images per region in fig_both_or_neither
seed = 0
device = None  # None: CUDA if available, else CPU
figures = "figures"  # output folder for figures and tables

# %%
from pathlib import Path

import numpy as np
import torch
from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import detect, explain, plotting

_, val, test = gclib.data.load(dataset)
val, test = val.subset(min(n_val, len(val)), seed), test.subset(min(n_test, len(test)), seed)
gc = gclib.pretrained(dataset, beta=beta, device=device)
feedforward = gclib.pretrained(dataset, dc, device=device)
x_val, _ = val.tensors()
x_test, y_test = test.tensors()
shape = tuple(x_test.shape[1:])

val_out = explain.gc_outputs(gc, x_val)
bpd_range = explain.typical_range(val_out["bits_per_dim"], coverage)
test_out = explain.gc_outputs(gc, x_test)
ood = {name: gclib.data.ood(name, n_ood, shape, seed) for name in gclib.data.ood_names()}
ood_out = {name: explain.gc_outputs(gc, x) for name, x in ood.items()}
ood_dc = {name: explain.dc_posterior(feedforward, x) for name, x in ood.items()}
picked = explain.pick_examples(test_out, y_test, bpd_range)
unrelated = {name: explain.most_confident(ood_dc[name]) for name in ood_sets.split(",")}
print(f"typical range of bits/dim ({coverage:.0%} of {len(x_val)} validation images): "
      f"{bpd_range[0]:.3f} to {bpd_range[1]:.3f}; test images {picked}, unrelated {unrelated}")

# %% [markdown]
# How often does the GC's density say "neither" (bits/dim outside the typical range), per input set, and
# how confident is the DC on the same inputs? The DC has no density: its only output is a posterior.

# %%
sets = {"test": (test_out, explain.dc_posterior(feedforward, x_test))}
sets.update({name: (ood_out[name], ood_dc[name]) for name in ood})
rows = [explain.summary_row(name, gc_out, dc_post, bpd_range) for name, (gc_out, dc_post) in sets.items()]
plotting.save_table(rows, "table_gc_vs_dc_inputs", figures, headers=explain.SUMMARY_HEADERS)
display(Markdown((Path(figures) / "table_gc_vs_dc_inputs.md").read_text()))
for r in rows:
    glue(f"atypical_pct_{r['inputs'].replace('-', '_')}", r["gc_atypical_pct"], display=False)
    glue(f"dc_conf_{r['inputs'].replace('-', '_')}", r["dc_max_softmax_median"], display=False)

# %% [markdown]
# The figure.

# %%
names = list(test.classes) or [str(k) for k in range(gc.num_classes)]
i, j = picked["normal"], picked["ambiguous"]
test_dc = sets["test"][1]


def example(title, images, gc_out, dc_post, index):
    return {"title": title, "image": images[index], "dc_posterior": dc_post[index],
            "gc_log_likelihoods": gc_out["log_likelihoods"][index], "bits_per_dim": gc_out["bits_per_dim"][index]}


examples = [example(f"normal: {names[y_test[i]]}", x_test, test_out, test_dc, i),
            example(f"ambiguous: {names[y_test[j]]}", x_test, test_out, test_dc, j),
            *[example(f"unrelated ({name})", ood[name], ood_out[name], ood_dc[name], k)
              for name, k in unrelated.items()]]
second = None
if diffusion:
    # The diffusion GC's reading of the same inputs: each class's ELBO (a lower bound on log p(x|y)) on the small
    # log-SNR bank of its shipped diffusion-ood artifact, at the same seeded evaluation point, so that the
    # artifact's test images are its reference (they are test images, not held-out ones: the subset the zoo
    # evaluated, about a minute of a core per 10 images). Four inputs cost a few seconds here.
    import math

    from gclib import evals, zoo
    from gclib.score import mixture_bits_per_dim

    diff = gclib.get_model(diffusion, dataset, device="cpu").eval()
    o_t, o_manifest = evals.load(evals.path_of(diffusion, "diffusion-ood", dataset),
                                 model_sha256=diff.manifest["sha256"])
    d_dims = math.prod(shape)
    diff_ref = mixture_bits_per_dim(o_t["elbo"], d_dims)
    diff_range = explain.typical_range(diff_ref, coverage)
    diff_elbo = zoo.ood_images(diff, torch.stack([torch.as_tensor(e["image"]).cpu() for e in examples]), "elbo",
                               o_manifest["info"]["elbo_pairs"])["elbo"]
    for ex, ll in zip(examples, diff_elbo):
        ex["second_log_likelihoods"] = ll
        ex["second_bits_per_dim"] = float(mixture_bits_per_dim(ll[None], d_dims)[0])
    second = {"label": "diffusion", "reference_bpd": diff_ref, "bpd_range": diff_range}
    print(f"diffusion GC: typical range ({coverage:.0%} of its {len(diff_ref)} reference test images) "
          f"{diff_range[0]:.3f} to {diff_range[1]:.3f} bits/dim (an upper bound)")
fig = plotting.plot_gc_vs_dc(examples, names, val_out["bits_per_dim"], bpd_range, second=second)
plotting.savefig(fig, "fig_gc_vs_dc_outputs", figures)
glue("fig_gc_vs_dc_outputs", fig, display=False)
for name, ex in zip(["normal", "ambiguous", *[n.replace("-", "_") for n in unrelated]], examples):
    top2 = torch.topk(ex["gc_log_likelihoods"], 2)
    glue(f"{name}_gc_llr", float(top2.values[0] - top2.values[1]), display=False)
    glue(f"{name}_bpd", round(float(ex["bits_per_dim"]), 3), display=False)
    glue(f"{name}_dc_max", round(float(torch.as_tensor(ex["dc_posterior"]).max()), 3), display=False)
    glue(f"{name}_dc_class", names[int(torch.as_tensor(ex["dc_posterior"]).argmax())], display=False)
    glue(f"{name}_gc_class", names[int(ex["gc_log_likelihoods"].argmax())], display=False)
    glue(f"{name}_gc_max", round(float(torch.softmax(ex["gc_log_likelihoods"].double(), 0).max()), 3), display=False)
    if second:
        glue(f"{name}_diff_class", names[int(ex["second_log_likelihoods"].argmax())], display=False)
        glue(f"{name}_diff_bpd", round(ex["second_bits_per_dim"], 2), display=False)
        typical = diff_range[0] <= ex["second_bits_per_dim"] <= diff_range[1]
        glue(f"{name}_diff_typical", "typical" if typical else "atypical", display=False)
if second:
    glue("diff_bpd_low", round(diff_range[0], 2), display=False)
    glue("diff_bpd_high", round(diff_range[1], 2), display=False)
    glue("diff_ref_n", len(diff_ref), display=False)
glue("bpd_low", round(bpd_range[0], 3), display=False)
glue("bpd_high", round(bpd_range[1], 3), display=False)
glue("coverage_pct", round(100 * coverage), display=False)
glue("beta", beta, display=False)

# %% [markdown]
# ## Both or neither, for every image
#
# Every test image and every OoD image goes into one of the GC's three answers
# (`gclib.explain.regions`): **neither** (bits/dim outside the typical range), **both** (typical, and the
# runner-up class at least 1/`max_ratio` as likely as the best) or **confident**. The DC gives one
# number per image, its max-softmax. How well does each answer pick out what it should: "neither" the
# OoD images, "both" the test errors? And can a score tell the two apart?

# %%
ref_bpd = val_out["bits_per_dim"]
codes = {"test": explain.regions(test_out["log_likelihoods"], test_out["bits_per_dim"], bpd_range, max_ratio)}
codes.update({name: explain.regions(o["log_likelihoods"], o["bits_per_dim"], bpd_range, max_ratio)
              for name, o in ood_out.items()})
gc_wrong = test_out["prediction"] != y_test
dc_wrong = test_dc.argmax(1) != y_test
atypical = {name: detect.two_tailed(o["bits_per_dim"], ref_bpd) for name, o in [("test", test_out), *ood_out.items()]}
dc_doubt = {name: -sets[name][1].max(1).values.numpy() for name in sets}  # minus max-softmax: higher = less sure
neither = {name: c.numpy() == 2 for name, c in codes.items()}
gap = explain.top2(test_out["log_likelihoods"], gc.n_dims)["log_ratio"].numpy()
both_test = codes["test"].numpy() == 1
gw, dw = gc_wrong.numpy(), dc_wrong.numpy()

rows = []
for name in ood:
    rows.append(explain.separation_row(f'"neither" catches {name} (vs test)', (atypical[name], atypical["test"]),
                                       (dc_doubt[name], dc_doubt["test"]), (neither[name], neither["test"])))
pooled = np.concatenate([atypical[n] for n in ood]), np.concatenate([dc_doubt[n] for n in ood])
pooled_neither = np.concatenate([neither[n] for n in ood])
rows.append(explain.separation_row('"neither" catches all OoD sets pooled (vs test)', (pooled[0], atypical["test"]),
                                   (pooled[1], dc_doubt["test"]), (pooled_neither, neither["test"])))
rows.append(explain.separation_row('"both" catches the test errors (vs correct test images)', (-gap[gw], -gap[~gw]),
                                   (dc_doubt["test"][dw], dc_doubt["test"][~dw]), (both_test[gw], both_test[~gw])))
rows.append(explain.separation_row('"neither" vs "both": OoD pooled (vs test errors)',
                                   (pooled[0], atypical["test"][gw]),
                                   (pooled[1], dc_doubt["test"][dw]), (pooled_neither, neither["test"][gw])))
plotting.save_table(rows, "table_both_or_neither", figures, headers=explain.SEPARATION_HEADERS)
display(Markdown((Path(figures) / "table_both_or_neither.md").read_text()))
shares = {name: explain.region_shares(c) for name, c in codes.items()}
print("percent of each set per region:", {n: {k: round(v, 1) for k, v in sh.items()} for n, sh in shares.items()})

# %% [markdown]
# The figure: every image on the GC's two axes (density of the best class, and how much better it is than
# the runner-up), the DC's max-softmax for the same images, and random examples from each region.

# %%
groups = {}
for name, mask in (("test (GC correct)", ~gc_wrong), ("test (GC error)", gc_wrong)):
    t2 = explain.top2(test_out["log_likelihoods"][mask], gc.n_dims)
    groups[name] = {"bits_per_dim": t2["bits_per_dim"][:, 0], "log_ratio": t2["log_ratio"],
                    "dc_max": test_dc[mask].max(1).values}
for name, o in ood_out.items():
    t2 = explain.top2(o["log_likelihoods"], gc.n_dims)
    groups[name] = {"bits_per_dim": t2["bits_per_dim"][:, 0], "log_ratio": t2["log_ratio"],
                    "dc_max": ood_dc[name].max(1).values}
all_images = torch.cat([x_test, *ood.values()])
all_codes = torch.cat(list(codes.values()))
all_names = ["test"] * len(x_test) + [n for n, x in ood.items() for _ in range(len(x))]
all_ll = torch.cat([test_out["log_likelihoods"], *[o["log_likelihoods"] for o in ood_out.values()]])
picked_regions = explain.pick_per_region(all_codes, n_examples, seed)
examples = {region: [{"image": all_images[i], "caption": f"{all_names[i]}\nGC: {names[int(all_ll[i].argmax())]}"}
                     for i in idx] for region, idx in picked_regions.items()}
fig = plotting.plot_both_or_neither(groups, bpd_range, max_ratio, examples,
                                    title=f"GC β={beta}: the two most likely classes of every image")
plotting.savefig(fig, "fig_both_or_neither", figures)

# For the book's prose.
for r in rows:
    key = r["question"].split(" catches ")[-1].split(" (")[0] if "catches" in r["question"] else "separate"
    key = {"all OoD sets pooled": "pooled", "the test errors": "errors"}.get(key, key).replace("-", "_")
    for col in ("gc_auroc", "dc_auroc", "gc_region_pos", "gc_region_neg", "gc_se", "dc_se"):
        glue(f"bn_{key}_{col}", r[col], display=False)
for name, sh in shares.items():
    for region, pct in sh.items():
        glue(f"bn_share_{name.replace('-', '_')}_{region}", round(pct, 1), display=False)
glue("bn_max_ratio", f"{max_ratio:g}", display=False)
glue("bn_test_both_pct", round(shares["test"]["both"], 1), display=False)
glue("bn_test_neither_pct", round(shares["test"]["neither"], 1), display=False)
glue("bn_n_errors", int(gc_wrong.sum()), display=False)
glue("bn_n_test", len(x_test), display=False)
glue("bn_gap_median", round(float(np.median(gap)), 1), display=False)
glue("bn_bpd_spread", round(float(np.subtract(*np.quantile(test_out["bits_per_dim"].numpy(), [0.99, 0.01]))), 2),
     display=False)
