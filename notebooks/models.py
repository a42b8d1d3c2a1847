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
# # The model zoo: accuracy and bits/dim across β
#
# Every shipped model's figures come from its manifest, which the tests check against a fresh
# evaluation on the full test set. This notebook writes `table_models` and `fig_beta_tradeoff`,
# and the training curves of the released models (`fig_training_curves`).

# %% tags=["parameters"]
dataset = "fashion-mnist"
figures = "figures"  # output folder for figures and tables
checkpoints = None  # None: the repository's checkpoints/ (or $GCLIB_CHECKPOINTS)

# %%
from IPython.display import Markdown, display

from gclib import plotting, zoo

rows = zoo.model_rows(dataset, root=checkpoints)
if not rows:
    raise RuntimeError(f"no shipped models for {dataset!r}; train and publish them first "
                       "(python -m gclib.zoo train NAME; python -m gclib.zoo publish NAME --run DIR)")
table = zoo.table_rows(rows)
csv_path, md_path = zoo.write_table(table, figures)
display(Markdown(md_path.read_text()))

# %% [markdown]
# The trade-off: small β weights the density (bits/dim) more, large β the classification. The middle
# panel puts our Fashion-MNIST curve beside the paper's ImageNet numbers, both relative to β = ∞.

# %%
fig = plotting.plot_beta_tradeoff(rows, paper_top1=zoo.PAPER_IMAGENET_TOP1)
plotting.savefig(fig, "fig_beta_tradeoff", figures)

# %% [markdown]
# Training curves of the released models (seed 0). The accuracy axis starts at 75 %: β = 0 trains
# the density alone and its classes stay near chance.

# %%
gc_rows = {r["beta"]: r for r in rows if r["model"] == "GC" and r["seed"] == 0}
released = {f"β={b}": gc_rows[b]["history"] for b in zoo.BETAS if b in gc_rows}
colors = {f"β={b}": c for b, c in plotting.BETA_COLORS.items()}
fig = plotting.plot_training_curves(released, colors, accuracy_floor=75)
plotting.savefig(fig, "fig_training_curves", figures)
