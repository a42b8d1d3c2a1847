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
# # Training a generative classifier
#
# This notebook loads the shipped model of the zoo for the requested β when it exists (and
# `retrain` is off), and trains it with gclib's training loop otherwise. It is the path to retrain
# a model on a GPU, with another seed, or on CIFAR-10 / ImageNet (`dataset`).
#
# Rerun it with other parameters, for example:
#
# ```bash
# papermill notebooks/train_model.ipynb out.ipynb -p beta 16 -p retrain True -p device cuda
# ```
# (convert the source first with `jupytext --to ipynb notebooks/train_model.py`).

# %% tags=["parameters"]
dataset = "fashion-mnist"  # fashion-mnist, cifar10 or imagenet (data: see gclib.data.load)
beta = "8"  # IB trade-off: 0 ... "inf"
model_kind = "gc"  # "gc" or "resnet" (the feed-forward baseline)
epochs = None  # None: the zoo's recipe for this model, else the config's default
seed = 0
device = None  # None: CUDA if available, else CPU
retrain = False  # True: train even if a shipped model exists
out = "runs/notebooks"  # run folders go to OUT/<dataset>/<name>
train_subset = None  # train on N images only (smoke runs)
max_steps = None  # stop after N steps (smoke runs)
n_test = None  # evaluate on the first N test images only (None: all 10,000)

# %%
import json
from pathlib import Path

import gclib
from gclib import plotting, zoo

name = zoo.model_name(beta, model_kind, seed)
shipped = name in zoo.available(dataset)
train_set, val_set, test_set = gclib.data.load(dataset)
if n_test:
    test_set = test_set.subset(int(n_test), seed=0)

if shipped and not retrain:
    model = gclib.pretrained(dataset, beta, model=model_kind, seed=seed, device=device)
    history = model.manifest["info"].get("history", [])
    source = f"the shipped checkpoint checkpoints/{dataset}/{name} (sha256 verified)"
else:
    run = Path(out) / dataset / name
    args = zoo.train_command(dataset, beta, model_kind, seed, epochs, out=run) + ["--resume"]
    args += ["--device", device] if device else []
    args += ["--max-steps", str(max_steps)] if max_steps else []
    args += ["--train-subset", str(train_subset)] if train_subset else []
    print("python -m gclib.train " + " ".join(args))
    if gclib.train.main(args) != 0:
        raise RuntimeError(f"training failed; see the error above (run folder {run})")
    model = gclib.load(run / "final", device=device)
    history = zoo.read_history(run)
    source = f"a model trained now in {run}"
print(f"{name}: {source}")

# %% [markdown]
# ## Test-set figures
# Accuracy on the clean test images; bits/dim on the images dequantized with noise seeded with 0
# (the same computation the tests use to check the shipped manifests).

# %%
metrics = gclib.train.evaluate(model, test_set, batch_size=zoo.EVAL_BATCH, seed=zoo.EVAL_SEED, progress=True)
print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}, indent=1))
if shipped and not retrain and not n_test:
    stated = model.manifest["info"]["test"]
    assert metrics["correct"] == stated["correct"], (metrics, stated)
    print(f"matches the manifest: {stated['correct']} / {stated['n']} correct")

# %% [markdown]
# ## Training curves
# Validation accuracy and bits/dim after every epoch (dotted: accuracy on the augmented training
# batches during the epoch).

# %%
label = f"β={beta}" if model_kind == "gc" else name
fig = plotting.plot_training_curves({label: history})
Path(out).mkdir(parents=True, exist_ok=True)
fig.savefig(Path(out) / f"training_curves_{dataset}_{name}.png")
