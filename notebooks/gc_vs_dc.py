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
# `fig_gc_vs_dc_outputs` and glues its numbers for the book.

# %% tags=["parameters"]
dataset = "fashion-mnist"
beta = "8"  # the GC (a shipped beta)
dc = "resnet"  # the feed-forward reference: the shipped ResNet-18
ood_sets = "photos,uniform-noise"  # the unrelated inputs: one row each (gclib.data.ood_names())
n_test = 10000  # test images searched for the normal and ambiguous examples
n_val = 5000  # held-out images that define the typical range of bits/dim
n_ood = 1000  # images per out-of-distribution set
coverage = 0.99  # the typical range holds this fraction of held-out images
seed = 0
device = None  # None: CUDA if available, else CPU
figures = "figures"  # output folder for figures and tables

# %%
from pathlib import Path

import torch
from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import explain, plotting

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
fig = plotting.plot_gc_vs_dc(examples, names, val_out["bits_per_dim"], bpd_range)
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
glue("bpd_low", round(bpd_range[0], 3), display=False)
glue("bpd_high", round(bpd_range[1], 3), display=False)
glue("coverage_pct", round(100 * coverage), display=False)
glue("beta", beta, display=False)
