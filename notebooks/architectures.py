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
# # The architectures: parameters, latent split and FLOPs
#
# For each named config, the generative classifier (GC) beside the feed-forward ResNet (DC) that
# `gclib.model.FeedForwardClassifier` builds for it: the latent size (the same as the input's, the flow
# being invertible), how many latent dims get a full class mean and how many a low-rank one, the
# parameters, and the forward GFLOPs (matrix products and convolutions, 2 per multiply-add). The GC's
# FLOPs are those of the class log-likelihoods of all classes; the part computed once per call (the
# norms of the low-rank class means) is given apart. The GC's parameters are every tensor in
# `model.parameters()`, including the fixed (untrained) permutation matrices that FrEIA registers as
# parameters, so the trainable ones are given too. The DC is the default one: for the small inputs a
# ResNet-18 with a stride-1 stem (the zoo's Fashion-MNIST ResNet-18 has a stride-2 stem: same
# parameters, 4x fewer FLOPs). The last columns are measured, not counted: training images/s and memory of
# both models, read from the benchmark's records (`python -m gclib.bench`, `figures/table_throughput.json`;
# one setting per config, a GPU's where there is one; all of them are in `table_throughput`). Empty
# cells: that config was not benchmarked. This notebook writes `table_architectures`.

# %%
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from gclib import architectures, bench, plotting

# %% tags=["parameters"]
configs = "fashion-mnist-small,fashion-mnist,cifar10,imagenet"  # comma-separated config names
flops = True  # count the forward FLOPs (a pass on 1 and on 2 images per model)
throughput = "figures/table_throughput.json"  # benchmark records for the measured columns (make bench)
figures = "figures"  # output folder for figures and tables

# %%
rows = architectures.architecture_rows(configs, flops=flops, records=bench.load_records(throughput))
headers = architectures.headers(rows[0])
csv_path, md_path = plotting.save_table(rows, "table_architectures", figures, headers=headers)
display(Markdown(md_path.read_text()))

# %% [markdown]
# Values for the book's prose: the whole table, and parameter counts in millions.

# %%
by_name = {r["config"]: r for r in rows}
glue("table_architectures", pd.DataFrame(rows).rename(columns=headers), display=False)
for name, r in by_name.items():
    key = name.replace("-", "_").replace("fashion_mnist", "fm")
    glue(f"{key}_gc_params", r["gc_params"], display=False)
    glue(f"{key}_gc_params_m", round(r["gc_params"] / 1e6, 2), display=False)
    glue(f"{key}_gc_trainable_params_m", round(r["gc_trainable_params"] / 1e6, 2), display=False)
    glue(f"{key}_dc_params_m", round(r["dc_params"] / 1e6, 2), display=False)
    if flops:
        glue(f"{key}_gc_gflops", r["gc_gflops"], display=False)
        glue(f"{key}_dc_gflops", r["dc_gflops"], display=False)
