"""The model zoo: trained models shipped in ``checkpoints/<dataset>/`` and ``gclib.pretrained()``.

Every shipped model is ``NAME.safetensors`` + ``NAME.json``. Its manifest holds the config, the
training record (beta, seed, epochs, steps, wall time, device, threads, the per-epoch log), the
environment of the training run (library versions, git commit of the training code) and the
figures measured on the full test set when the model was published: number of test images, correct
predictions, accuracy, bits/dim (dequantization noise seeded with 0) and, for a GC, the largest
reconstruction error ``max |f^-1(f(x)) - x|``. The tests recompute all of them.

The zoo is also a recipe: ``ZOO`` lists every model with the exact ``python -m gclib.train``
arguments it was trained with, so ``python -m gclib.zoo train NAME`` retrains it and
``python -m gclib.zoo publish NAME --run DIR`` evaluates and ships the result.

>>> sorted(e.beta for e in entries("fashion-mnist") if e.name.startswith("gc-beta-") and e.seed == 0)[:3]
['0', '1', '16']
>>> entry("fashion-mnist", "gc-beta-8").command("runs/x")[:6]
['-m', 'gclib.train', '--config', 'fashion-mnist-small', '--model', 'gc']
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import checkpoints
from .errors import CheckpointError, ConfigError
from .model import GenerativeClassifier

__all__ = [
    "BETAS",
    "CI_SUBSET",
    "PAPER_IMAGENET_TOP1",
    "ZOO",
    "ZooEntry",
    "available",
    "checkpoint_root",
    "ci_subset",
    "entries",
    "entry",
    "evaluate_model",
    "get_model",
    "list_models",
    "model_name",
    "model_rows",
    "pretrained",
    "publish",
    "read_history",
    "reconstruction_error",
    "reconstruction_errors",
    "reevaluate",
    "convert",
    "storage_copy",
    "SCORE_READING",
    "evaluate_score",
    "score_images",
    "score_reading",
    "table_rows",
    "train_command",
    "variant",
    "variant_rank",
    "verify",
    "write_table",
]

BETAS = ("0", "1", "2", "4", "8", "16", "32", "inf")
LARGE_BETAS: tuple[str, ...] = ("0", "1")  # the large config's models trained from scratch (entries below)
# The large config's other betas: warm-started from gc-large-beta-1 (its 10 epochs) and trained 2 more
# epochs at the new beta (fresh one-cycle schedule at half the peak lr), which the manifests record as
# lineage (info.init_from). The paper's ImageNet betas 1, 8 and 32 correspond to 192, 1536 and 6144 here.
FINETUNED_BETAS: tuple[str, ...] = ("4", "8", "32", "192", "1536", "6144", "inf")
FINETUNE_FROM = "gc-large-beta-1"
# Trained longer than the rest (issue 14's targets are on these two): beta = 0 in five stages (its own entry
# below); beta = inf 30 epochs in three stages from gc-large-beta-1 instead of 2, shipped as a twin
# (gc-large-beta-inf-long), so that the sweep's fine-tunes still compare at 2 epochs each.
# Stored with float16 trainable weights (storage_copy: half the file, float32 invertibility kept), to fit the
# checkpoint budget: all but gc-large-beta-8 (its shipped attack artifacts name its float32 weights). Those
# shipped in float32 before were converted (`python -m gclib.zoo convert`; info.converted_from keeps the
# float32 file's sha256 and figures): the fine-tunes started from gc-large-beta-1's float32 weights, as their
# manifests' info.init_from records; a retrain from scratch starts them from its float16-stored weights.
LARGE_DTYPE = {b: "float16" for b in ("0", "1", "4", "32", "192", "1536", "6144", "inf")}
# The paper's ImageNet numbers (Mackowiak et al. 2021, Table 1): top-1 accuracy (%) per beta, and the
# ResNet-50 baseline. beta=0 is not reported there.
PAPER_IMAGENET_TOP1 = {"1": 67.30, "2": 71.73, "4": 73.69, "8": 74.59, "16": 75.54, "32": 76.18, "inf": 76.27,
                       "resnet": 76.1}
PAPER_IMAGENET_BPD = {"1": 4.34}
CHECKPOINTS_ENV = "GCLIB_CHECKPOINTS"
EVAL_BATCH = 500
EVAL_SEED = 0
# Every manifest also records the figures on a fixed subset of the test set (CI_SUBSET images drawn with
# EVAL_SEED), so that the tests can check large models exactly in minutes; `python -m gclib.zoo verify`
# checks the full test set.
CI_SUBSET = 1000


def ci_subset(test):
    """The fixed test subset whose figures every manifest records under ``info.test_subset``."""
    return test.subset(min(CI_SUBSET, len(test)), EVAL_SEED)


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo and how it is trained (arguments of ``python -m gclib.train``)."""

    dataset: str
    name: str  # file stem in checkpoints/<dataset>/
    model: str  # "gc" or "resnet"
    beta: str | None  # "0" ... "inf"; None for the ResNet
    seed: int
    epochs: int
    extra_args: tuple[str, ...] = ()
    dtype: str = "float32"  # storage dtype of the shipped weights
    config: str | None = None  # the named config (gclib.configs); None: the dataset's default
    # diffusion family only: the shipped classifier's pruning stages and ELBO bank size (set at publish)
    stages: tuple[tuple[int, int], ...] | None = None
    elbo_pairs: int | None = None
    # ABS family only: ABSConfig fields of the shipped classifier's inference (set at publish), e.g. n_steps
    inference: tuple[tuple[str, object], ...] = ()
    # randomized smoothing's base models only: the sigma publish certifies them at (their training noise)
    certify_sigma: float | None = None
    certify_n: int | None = None  # images certified (default CERTIFY_N)
    # Earlier stages, each trained into OUT/stage-<k> and each starting from the previous one's final model
    # (--init-from); this entry's own arguments are the last stage, which starts from OUT/stage-<n>/final.
    # Each stage is (epochs, extra arguments): e.g. a model trained from scratch and then continued with fresh
    # schedules, as the paper's ImageNet runs were resumed between learning-rate stages.
    earlier_stages: tuple[tuple[int, tuple[str, ...]], ...] = ()
    # A longer-trained twin of another zoo model (its name): left out of table_models and the beta sweep,
    # which compare models trained alike; loaded by name like any other.
    twin_of: str | None = None

    def commands(self, out: str | os.PathLike) -> list[list[str]]:
        """Arguments for ``python`` of every stage that trains this model into ``out``, in order."""
        out = Path(out)
        cmds, previous = [], None
        for k, (epochs, extra) in enumerate(self.earlier_stages, 1):
            init = ("--init-from", str(previous / "final")) if previous is not None else ()
            stage = replace(self, epochs=epochs, extra_args=(*extra, *init), earlier_stages=())
            previous = self.stage_dir(out, k)
            cmds.append(stage.command(previous))
        return cmds + [self.command(out)]

    @staticmethod
    def stage_dir(out: str | os.PathLike, k: int) -> Path:
        """Where earlier stage ``k`` (1-based) of a multi-stage entry trains."""
        return Path(out) / f"stage-{k}"

    def command(self, out: str | os.PathLike) -> list[str]:
        """Arguments for ``python`` that train this model into ``out`` (its last stage: see ``commands``)."""
        if self.earlier_stages:
            last = self.stage_dir(out, len(self.earlier_stages)) / "final"
            return replace(self, earlier_stages=(), extra_args=(
                *self.extra_args, "--init-from", str(last))).command(out)
        if self.model == "abs":
            return ["-m", "gclib.abs", "--dataset", self.dataset, "--seed", str(self.seed), "--epochs",
                    str(self.epochs), *self.extra_args, "--out", str(out)]
        if self.model == "diffusion":
            return ["-m", "gclib.diffusion", "--dataset", self.dataset, "--seed", str(self.seed), "--epochs",
                    str(self.epochs), *self.extra_args, "--out", str(out)]
        args = ["-m", "gclib.train", "--config", self.config or self.dataset, "--model", self.model]
        if self.beta is not None:
            args += ["--beta", self.beta]
        args += ["--seed", str(self.seed), "--epochs", str(self.epochs), *self.extra_args, "--out", str(out),
                 "--eval-test"]
        return args


def _fashion_mnist() -> list[ZooEntry]:
    # 10 epochs of the config's defaults (Adam 1e-2, one-cycle, batch 64, flips + 2-px shifts): about
    # 9 minutes per GC on one CPU core. The ResNet-18 uses a stride-2 stem (4x fewer FLOPs than stride 1)
    # and SGD, the usual recipe for ResNets; it is stored in fp16 to fit the 40 MB budget.
    small = "fashion-mnist-small"  # called fashion-mnist when these were trained
    # Stored with float16 trainable weights (converted after training, like the large GCs; see LARGE_DTYPE),
    # except gc-beta-8, whose shipped attack artifacts name its float32 weights.
    out = [ZooEntry("fashion-mnist", f"gc-beta-{b}", "gc", b, 0, 10, config=small,
                    dtype="float32" if b == "8" else "float16") for b in BETAS]
    out += [ZooEntry("fashion-mnist", f"gc-beta-{b}-seed{s}", "gc", b, s, 10, config=small, dtype="float16")
            for b in ("1", "8", "inf") for s in (1, 2)]
    out.append(ZooEntry("fashion-mnist", "resnet18", "resnet", None, 0, 4,
                        ("--arch", "resnet18", "--stem-stride", "2", "--optimizer", "sgd", "--lr", "0.1",
                         "--weight-decay", "5e-4", "--batch-size", "128"), dtype="float16", config=small))
    # The same recipe to convergence (issue 14: a well-trained CNN is the DC the GCs should be compared with):
    # 8 epochs, about 80 minutes on one CPU core beside a second run.
    out.append(ZooEntry("fashion-mnist", "resnet18-long", "resnet", None, 0, 8,
                        ("--arch", "resnet18", "--stem-stride", "2", "--optimizer", "sgd", "--lr", "0.1",
                         "--weight-decay", "5e-4", "--batch-size", "128"), dtype="float16", config=small))
    # The strong candidates (issue 14): fashion-mnist-large without its Gaussian input noise, which cost
    # 0.9 bits/dim in the recipe ablation (table_recipe_ablation). 10 epochs, one process per CPU core:
    # about 100 minutes each on the 2-core machine with a second run beside it.
    # beta = 0, the density model: 10 epochs from scratch, then continued four times with a fresh one-cycle
    # schedule: 6 and 8 epochs at peak lr 1e-3, then 14 at 5e-4 and 14 at 3e-4 (each later stage started from
    # the one before's shipped float16-stored weights).
    continued = ("--input-noise", "0", "--lr", "1e-3")
    out.append(ZooEntry("fashion-mnist", "gc-large-beta-0", "gc", "0", 0, 14,
                        ("--input-noise", "0", "--lr", "3e-4"), config="fashion-mnist-large", dtype=LARGE_DTYPE["0"],
                        earlier_stages=((10, ("--input-noise", "0")), (6, continued), (8, continued),
                                        (14, ("--input-noise", "0", "--lr", "5e-4")))))
    out.append(ZooEntry("fashion-mnist", "gc-large-beta-1", "gc", "1", 0, 10, ("--input-noise", "0"),
                        config="fashion-mnist-large", dtype=LARGE_DTYPE["1"]))
    out += [ZooEntry("fashion-mnist", f"gc-large-beta-{b}", "gc", b, 0, 2,
                     ("--input-noise", "0", "--lr", "1e-3", "--init-from", f"checkpoints/fashion-mnist/{FINETUNE_FROM}"),
                     config="fashion-mnist-large", dtype=LARGE_DTYPE.get(b, "float32")) for b in FINETUNED_BETAS]
    # The longer-trained beta = inf twin: 8 epochs from the beta = 1 model (peak lr 1e-3), then 12 more from
    # those (peak 5e-4) and 10 more (peak 3e-4), as beta = 0 was continued.
    out.append(ZooEntry("fashion-mnist", "gc-large-beta-inf-long", "gc", "inf", 0, 10,
                        ("--input-noise", "0", "--lr", "3e-4"), config="fashion-mnist-large", dtype="float16",
                        twin_of="gc-large-beta-inf", earlier_stages=((8, (
                            "--input-noise", "0", "--lr", "1e-3",
                            "--init-from", f"checkpoints/fashion-mnist/{FINETUNE_FROM}")),
                            (12, ("--input-noise", "0", "--lr", "5e-4")))))
    # The diffusion classifier (issue 15): a TinyUNet (width 32, 0.38 M parameters) trained from scratch
    # with DDPM's epsilon loss, no class dropout (the classifier only uses conditional scores), Adam 1e-3
    # and an EMA of the weights; 10 epochs on one CPU core. Pruning: all 10 classes on 10 pairs, the best
    # 2 on 60 (200 network evaluations per image, a fifth of the unpruned rule's 1000); fig_diffusion_cost
    # shows the alternatives, from the shipped error matrix.
    out.append(ZooEntry("fashion-mnist", "diffusion-unet32", "diffusion", None, 0, 10,
                        ("--lr", "1e-3", "--class-dropout", "0"), stages=DIFFUSION_STAGES, elbo_pairs=100))
    # The ABS model (issue 16): a VAE per class (latent 8, width 32, ABS's architecture), maximum ELBO with a
    # Gaussian likelihood of sigma 0.1, 20 epochs on one CPU core; ABS's inference (8,000 cached prior samples,
    # 50 Adam steps on each class's latent, the importance-weighted bound with K = 8 at the latent found).
    out.append(ZooEntry("fashion-mnist", "abs-vae8", "abs", None, 0, 20))
    # Base models for randomized smoothing (Cohen et al. train the base with the noise it is certified at):
    # the small zoo's GC (beta = 8) and its discriminative counterpart (beta = inf, the same flow trained with
    # cross-entropy only) fine-tuned 3 epochs with Gaussian input noise of each sigma, from the shipped models
    # (gc-beta-inf's float32 weights, before it was stored in float16: their manifests' info.init_from).
    out += [ZooEntry("fashion-mnist", smoothing_name(b, sd), "gc", b, 0, 3,
                     ("--input-noise", sd, "--lr", "1e-3", "--init-from", f"checkpoints/fashion-mnist/gc-beta-{b}"),
                     config=small, certify_sigma=float(sd)) for b in SMOOTHING_BETAS for sd in SMOOTHING_SIGMAS]
    # The DC's smoothing bases: He et al.'s CIFAR ResNet-20 (0.27 M parameters; Cohen et al. smooth its deeper
    # sibling ResNet-110 on CIFAR-10; three noise-trained ResNet-18s would take 66 MB of the checkpoint
    # budget) with the zoo's ResNet recipe. sigma = 0.25 is trained from scratch with its noise, as Cohen et
    # al. do; 0.12 and 0.5 are fine-tuned from it (the lineage is in their manifests).
    resnet20 = ("--arch", "resnet20", "--optimizer", "sgd", "--weight-decay", "5e-4", "--batch-size", "128")
    out.append(ZooEntry("fashion-mnist", "resnet20-sigma-0.25", "resnet", None, 0, RESNET20_EPOCHS,
                        (*resnet20, "--lr", "0.1", "--input-noise", "0.25"), config=small, certify_sigma=0.25))
    out += [ZooEntry("fashion-mnist", f"resnet20-sigma-{sd}", "resnet", None, 0, 2,
                     (*resnet20, "--lr", "0.02", "--input-noise", sd,
                      "--init-from", "checkpoints/fashion-mnist/resnet20-sigma-0.25"), config=small,
                     certify_sigma=float(sd)) for sd in ("0.12", "0.5")]
    # ABS's smoothing bases: abs-vae8 fine-tuned 3 epochs on noisy images, with the likelihood's sigma widened
    # to sqrt(0.1^2 + sigma^2) (the VAEs then model the noisy images' density). Each vote of the smoothed
    # classifier scores every class by ABS's point loss at its encoder's latent (no test-time search: the
    # search costs 0.44 s an image, and CERTIFY takes 1,100 votes an image). Even so a vote costs 20 network
    # passes (about 15 ms on a core), so ABS is certified on the first ABS_CERTIFY_N images of the others'
    # subset, and not at sigma = 0.12, where 1,000 votes cannot certify radius 0.5 for any model.
    out += [ZooEntry("fashion-mnist", f"abs-sigma-{sd}", "abs", None, 0, 3,
                     ("--sigma", f"{math.sqrt(0.01 + float(sd) ** 2):.4f}", "--input-noise", sd,
                      "--init-from", "checkpoints/fashion-mnist/abs-vae8"),
                     inference=ABS_SMOOTHING_INFERENCE, certify_sigma=float(sd), certify_n=ABS_CERTIFY_N)
            for sd in ABS_SMOOTHING_SIGMAS]
    return out


RESNET20_EPOCHS = 6
ABS_SMOOTHING_SIGMAS, ABS_CERTIFY_N = ("0.25", "0.5"), 100
ABS_SMOOTHING_INFERENCE = (("start", "encoder"), ("n_steps", 0), ("score", "abs"))


SMOOTHING_BETAS, SMOOTHING_SIGMAS = ("8", "inf"), ("0.12", "0.25", "0.5")
# Certification (gclib.smoothing, Cohen et al.'s CERTIFY) of the smoothing base models at publish, on the
# first CERTIFY_N images of the seeded test subset: n0 votes to guess, n to count, level alpha. The votes ship
# as an evaluation artifact; the tests recount CERTIFY_CHECK_N random images exactly (per-image seeded noise).
CERTIFY_N, CERTIFY_N0, CERTIFY_SAMPLES, CERTIFY_ALPHA, CERTIFY_CHECK_N = 200, 100, 1000, 0.001, 2


def smoothing_name(beta: str, sigma: str) -> str:
    """Zoo name of a smoothing base model: ``smoothing_name("8", "0.25") == "gc-sigma-0.25-beta-8"``;
    ``beta`` may also name another family's base: ``"resnet20"`` or ``"abs"``
    (``smoothing_name("abs", "0.5") == "abs-sigma-0.5"``)."""
    if beta in ("resnet20", "abs"):
        return f"{beta}-sigma-{sigma}"
    return f"gc-sigma-{sigma}-beta-{beta}"


# What each kind of smoothing base is, for tables and legends (smoothing_name's first argument).
SMOOTHING_LABELS = {"8": "GC (IB-INN, β = 8)", "inf": "DC twin (IB-INN, β = ∞)", "resnet20": "DC (ResNet-20)",
                    "abs": "GC (ABS, encoder latents)"}


DIFFUSION_STAGES = ((10, 2), (60, 1))
# The diffusion family's published figures, on seeded subsets of the test set (its rule costs hundreds of
# network evaluations per image): accuracy of the shipped pruned rule on DIFFUSION_TEST_N images, the full
# error matrix (every class on every pair) on the first DIFFUSION_ERRORS_N of them, the ELBO bits/dim on
# the first DIFFUSION_BPD_N. The tests recompute DIFFUSION_CHECK_N random images of each.
DIFFUSION_TEST_N, DIFFUSION_ERRORS_N, DIFFUSION_BPD_N, DIFFUSION_CHECK_N = 2000, 200, 50, 6
# Logits of a shipped "corrupt" artifact recomputed for one image, where the artifact computed batches of 50:
# the class scores (-D/2 x mean squared error, hundreds of nats) may round differently in float32 (on this
# machine three recomputed pairs were bit-identical).
DIFFUSION_RTOL = 1e-4

# The score-based reading of the diffusion network (gclib.score, Zimmermann et al.): exact class log-likelihoods
# from the probability-flow ODE, SCORE_READING's solver and probes, read at the seeded dequantized image (where
# every family's bits/dim is read). 10 classes x 20 RK4 steps x 4 stages x (1 forward + 2 backward passes) is
# about 7 s of a CPU core an image, so the artifact covers the first SCORE_N images of the seeded test subset
# (the first 200 are the diffusion error matrix's, for paired comparisons), in chunks of SCORE_BATCH images,
# each computed in one thread (the artifact does not depend on --jobs). The tests recompute one random chunk
# image (SCORE_CHECK_N).
SCORE_READING = {"steps": 20, "n_probes": 2, "seed": 0, "t_min": 1e-3, "grid": "log-snr"}
SCORE_READINGS = {"score-unet32": "diffusion-unet32"}  # the reading's name -> the network's zoo name
SCORE_N, SCORE_BATCH, SCORE_CHECK_N = 800, 10, 1

# Out-of-distribution detection with the diffusion network's densities (the "diffusion-ood" artifact): for the
# first OOD_N images of every set of gclib.data.ood (seed EVAL_SEED), Li et al.'s class scores (the unpruned rule,
# C x 100 evaluations), the class ELBOs on a log-SNR bank of OOD_ELBO_PAIRS pairs (C x 20 evaluations: the bound
# with a larger but stated noise SE) and the score-based reading's class log-likelihoods (SCORE_READING), all at
# the seeded evaluation point like the test images'; plus the same small-bank ELBOs of the score artifact's
# SCORE_N test images (the in-distribution side; their ODE likelihoods are the score artifact's). About 10 s of
# a CPU core an OoD image, 0.6 s a test image; chunks of SCORE_BATCH images in one thread each.
OOD_N, OOD_ELBO_PAIRS = 50, 20


ZOO: dict[tuple[str, str], ZooEntry] = {(e.dataset, e.name): e for e in _fashion_mnist()}


def entries(dataset: str | None = None) -> list[ZooEntry]:
    return [e for e in ZOO.values() if dataset is None or e.dataset == dataset]


def entry(dataset: str, name: str) -> ZooEntry:
    try:
        return ZOO[(dataset, name)]
    except KeyError:
        known = ", ".join(e.name for e in entries(dataset)) or "none"
        raise ConfigError(f"the zoo has no model {name!r} for {dataset!r}; it has: {known}") from None


def train_command(dataset: str = "fashion-mnist", beta="8", model: str = "gc", seed: int = 0,
                  epochs: int | None = None, out: str | os.PathLike = "runs/model") -> list[str]:
    """Arguments of ``python -m gclib.train`` for a model: the zoo's recipe when the zoo has it
    (``epochs`` overrides its epochs), else the config's defaults.

    >>> train_command("fashion-mnist", "inf", out="runs/x")[:8]
    ['--config', 'fashion-mnist-small', '--model', 'gc', '--beta', 'inf', '--seed', '0']
    """
    from .configs import get_config
    from .train import beta_label, parse_beta

    name = model_name(beta, model, seed)
    e = ZOO.get((dataset, name))
    if e is None:
        label = beta_label(parse_beta(beta)) if model == "gc" else None
        e = ZooEntry(dataset, name, model, label, seed, epochs or get_config(dataset).train.epochs)
    elif epochs:
        e = replace(e, epochs=epochs)
    return e.command(out)[2:]


def checkpoint_root() -> Path:
    """``$GCLIB_CHECKPOINTS`` if set, else the repository's ``checkpoints/`` folder."""
    if os.environ.get(CHECKPOINTS_ENV):
        return Path(os.environ[CHECKPOINTS_ENV])
    return Path(__file__).resolve().parent.parent / "checkpoints"


def available(dataset: str = "fashion-mnist", root: str | os.PathLike | None = None) -> list[str]:
    """Names of the models shipped for ``dataset`` (manifests present in checkpoints/<dataset>/)."""
    folder = Path(root or checkpoint_root()) / dataset
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def model_name(beta, model: str, seed: int) -> str:
    from .train import beta_label, parse_beta

    if model in ("resnet", "resnet18"):
        return "resnet18"
    if model != "gc":
        raise ConfigError(f"model must be 'gc' or 'resnet', got {model!r}")
    name = f"gc-beta-{beta_label(parse_beta(beta))}"
    return name if seed == 0 else f"{name}-seed{seed}"


def pretrained(dataset: str = "fashion-mnist", beta=8, *, model: str = "gc", seed: int = 0, device=None,
               root: str | os.PathLike | None = None):
    """A shipped model, ready on ``device`` (default: CUDA if available), sha256 verified first.

    ``pretrained("fashion-mnist", beta=8)`` is the GC trained with beta = 8 (``beta`` also takes
    ``"inf"``); ``pretrained("fashion-mnist", "resnet")`` or ``model="resnet"`` is the ResNet baseline;
    ``pretrained("fashion-mnist", "gc-beta-8")`` takes a zoo name (see ``list_models``, ``get_model``);
    ``seed=1`` or ``2`` picks the extra seeds where they exist. The manifest is ``model.manifest``.

    Raises:
        CheckpointError: nothing is shipped under that name (the message lists what is), or the file
            does not match its sha256.
    """
    if isinstance(beta, str) and beta.lower().startswith("resnet"):
        model = "resnet"
    if isinstance(beta, str) and "-" in beta:  # a zoo name: pretrained("fashion-mnist", "gc-beta-8")
        return get_model(beta, dataset, device=device, root=root)
    name = model_name(beta, model, seed)
    return get_model(name, dataset, device=device, root=root)


def list_models(dataset: str = "fashion-mnist", family: str | None = None,
                root: str | os.PathLike | None = None) -> list[str]:
    """Names of the shipped models of ``dataset`` (of one ``family``, e.g. ``"ibinn"`` or ``"resnet"``).

    Like torchvision's ``list_models``; the family is read from each manifest, nothing is loaded.
    """
    names = available(dataset, root)
    if family is None:
        return names
    base = Path(root or checkpoint_root()) / dataset
    return [n for n in names if _family(checkpoints.read_manifest(base / n)) == family]


def _family(manifest: dict) -> str:
    return (manifest.get("info", {}).get("family") or manifest.get("family")
            or {"feedforward": "resnet"}.get(manifest.get("kind"), "ibinn"))


def get_model(name: str, dataset: str = "fashion-mnist", *, device=None, root: str | os.PathLike | None = None):
    """The shipped model ``name`` of ``dataset`` (any family), ready on ``device``, sha256 verified first.

    Like torchvision's ``get_model``: ``get_model("gc-beta-8")``, ``get_model("resnet18")``;
    ``list_models()`` gives the names. The manifest (metrics, recipe, environment) is ``model.manifest``.
    ``get_model("score-unet32")`` is the score-based reading (:func:`score_reading`) of the shipped diffusion
    network (:data:`SCORE_READINGS`); its ``manifest`` is the network's.

    Raises:
        CheckpointError: nothing is shipped under that name (the message lists what is), or the file
            does not match its sha256.
    """
    from .configs import dataset_of

    base = Path(root or checkpoint_root())
    if name in SCORE_READINGS:  # a reading of a shipped network, not a checkpoint of its own
        reading = score_reading(get_model(SCORE_READINGS[name], dataset, device=device, root=root))
        reading.manifest = checkpoints.read_manifest(base / dataset / SCORE_READINGS[name])  # the weights' manifest
        return reading
    shipped = available(dataset, base)
    if not shipped:
        datasets = (sorted(p.name for p in base.iterdir() if p.is_dir() and any(p.glob("*.json")))
                    if base.is_dir() else [])
        raise CheckpointError(
            f"no shipped models for dataset {dataset!r} in {base}"
            + (f"; datasets with models: {', '.join(datasets)}" if datasets else
               f" (set ${CHECKPOINTS_ENV} to a clone's checkpoints/ folder)")
            + f". Train one with: python -m gclib.train --config {dataset} --beta 8 --out runs/mine")
    if name not in shipped:
        raise CheckpointError(f"no shipped model {name!r} for {dataset!r}; shipped: {', '.join(shipped)}")
    model = checkpoints.load(base / dataset / name, device=device, verify=True)
    name_of_config = getattr(getattr(model, "config", None), "name", None)  # IB-INN and ResNet configs only
    trained_on = (dataset_of(name_of_config) if name_of_config is not None
                  else model.manifest["info"].get("dataset", dataset))
    if trained_on != dataset:
        raise CheckpointError(f"{base / dataset / name} holds a model for {trained_on!r}, not one for {dataset!r}")
    return model


# -- evaluation ----------------------------------------------------------------------------------
RECONSTRUCTION_TOLERANCE = 1e-4


@torch.no_grad()
def reconstruction_errors(model: GenerativeClassifier, dataset, batch_size: int = EVAL_BATCH,
                          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per image ``max |f^-1(f(x)) - x|`` over ``dataset`` (images in [0, 1]), [N], computed in the
    model's dtype or in ``dtype`` (on a copy of the model, e.g. ``torch.float64``)."""
    if dtype is not None and dtype != model.head.mu_fc.dtype:
        model = copy.deepcopy(model).to(dtype)
    errors = []
    for start in range(0, len(dataset), batch_size):
        x, _ = dataset[start:start + batch_size]
        x = x.to(model.device, model.head.mu_fc.dtype)
        errors.append((model.inverse(model.encode(x)) - x).abs().flatten(1).amax(1).double().cpu())
    return torch.cat(errors)


def reconstruction_error(model: GenerativeClassifier, dataset, batch_size: int = EVAL_BATCH,
                         dtype: torch.dtype | None = None) -> float:
    """``max |f^-1(f(x)) - x|`` over the whole ``dataset``."""
    return float(reconstruction_errors(model, dataset, batch_size, dtype).max())


def evaluate_model(model, test) -> dict:
    """The published figures of a model on the test set, computed as the tests recompute them.

    Accuracy on the clean images, bits/dim on images dequantized with noise seeded with ``EVAL_SEED``,
    batches of ``EVAL_BATCH``; for a GC also the reconstruction error ``max |f^-1(f(x)) - x|``, in float32
    (what a user gets) and in float64 (whether the weights define an invertible map at all). The two
    differ where the flow is badly conditioned: at beta = inf nothing in the loss stops the flow from
    contracting the latent dims the classes do not use, and float32 can no longer invert it.
    """
    from .train import evaluate

    result = evaluate(model, test, batch_size=EVAL_BATCH, seed=EVAL_SEED)
    if isinstance(model, GenerativeClassifier):
        errors = reconstruction_errors(model, test)
        result["reconstruction_max_abs_error"] = float(errors.max())
        result["reconstruction_median_abs_error"] = float(errors.median())
        result["reconstruction_images_over_1e-4"] = int((errors > RECONSTRUCTION_TOLERANCE).sum())
        result["reconstruction_max_abs_error_float64"] = reconstruction_error(model, test, dtype=torch.float64)
    return result


def read_history(run: str | os.PathLike) -> list[dict]:
    """The per-epoch rows of a training run's ``log.csv`` (empty if there is none)."""
    from .train import _read_log

    run = Path(run)
    return _read_log(run) if (run / "log.csv").is_file() else []


def storage_copy(model, dtype: str):
    """A copy of ``model`` whose trainable weights are rounded to ``dtype`` (float32, float16 or bfloat16), as
    the zoo stores them; frozen parameters and buffers stay as they are.

    Frozen tensors are kept because some must match each other exactly: FrEIA's soft permutation stores a
    fixed orthogonal matrix and its transpose as two frozen parameters, and rounded separately they no longer
    invert each other (casting the whole large GC to float16 broke its float32 invertibility). Rounding only
    the trainable weights leaves the flow exactly invertible, since its inverse uses the same rounded weights:
    measured on gc-large-beta-8, 200 test images, float32 reconstruction error 2.3e-6, every prediction the
    same, mean bits/dim 3.9785 vs 3.9795 unrounded. ``checkpoints.load`` casts the weights back to float32.
    """
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    stored = copy.deepcopy(model)
    target = getattr(torch, dtype)
    with torch.no_grad():
        for p in stored.parameters():
            if p.requires_grad and p.is_floating_point():
                p.data = p.data.to(target)
    return stored


def publish(run: str | os.PathLike, name: str, dataset: str = "fashion-mnist",
            root: str | os.PathLike | None = None, dtype: str | None = None, test=None) -> Path:
    """Ship the final model of training run ``run`` as ``checkpoints/<dataset>/<name>``.

    Writes the weights (in ``dtype``; default the zoo entry's), evaluates the written file on the full
    test set on CPU and records the result in the manifest, with the training record and environment.
    Returns the manifest path.
    """
    from .diffusion import DiffusionClassifier

    from .abs import ABSClassifier

    run = Path(run)
    trained = checkpoints.load(run / "final", device="cpu")
    if isinstance(trained, DiffusionClassifier):
        return _publish_diffusion(trained, run, name, dataset, root, test)
    if isinstance(trained, ABSClassifier):
        return _publish_abs(trained, run, name, dataset, root, test)
    record = trained.manifest
    dtype = dtype or (entry(dataset, name).dtype if (dataset, name) in ZOO else "float32")
    info = dict(record["info"])
    if not isinstance(trained, GenerativeClassifier):
        info["beta"] = None  # older runs recorded the CLI default beta for a ResNet too
    info["history"] = read_history(run)
    info["parameters"] = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    info["zoo_name"] = name
    if (dataset, name) in ZOO:
        info["train_command"] = " && ".join("python " + " ".join(c) for c in entry(dataset, name).commands("OUT"))
    return _ship(trained, info, record["environment"], name, dataset, root, dtype, test)


def _ship(trained, info: dict, env: dict, name: str, dataset: str, root, dtype: str, test) -> Path:
    """Store ``trained`` (trainable weights in ``dtype``) as zoo model ``name`` with manifest ``info``, evaluated
    on the full test set and the CI subset (and certified, for a smoothing base model)."""
    from . import data

    stored = storage_copy(trained, dtype)
    dest = Path(root or checkpoint_root()) / dataset / name
    info = {k: v for k, v in info.items() if k not in ("test", "test_subset", "certified")}  # measured below
    # Write and evaluate in a scratch folder next to the destination, then move the weights and (last,
    # the commit point) the manifest into place: an interrupted publish leaves the old model intact.
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".publish-{name}.", dir=dest.parent))
    try:
        checkpoints.save(stored, scratch / name, env=env, **info)
        shipped = checkpoints.load(scratch / name, device="cpu")
        if test is None:
            test = data.load(dataset)[2]
        info["test"] = evaluate_model(shipped, test)
        info["test"]["torch_threads"] = torch.get_num_threads()
        info["test_subset"] = {**evaluate_model(shipped, ci_subset(test)), "subset_seed": EVAL_SEED}
        e = ZOO.get((dataset, name))
        if e is not None and e.certify_sigma:  # a smoothing base model: its certificates, votes shipped
            info["certified"] = _certify_and_ship(shipped, name, dataset, root, test, e)
        _rewrite_info(scratch / name, info)
        _commit(scratch, name, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest.with_name(f"{name}.json")


def convert(name: str, dtype: str, dataset: str = "fashion-mnist", root: str | os.PathLike | None = None,
            test=None) -> Path:
    """Store shipped model ``name`` again with its trainable weights in ``dtype`` (see :func:`storage_copy`).

    For the checkpoint budget without retraining: the training record is kept, the model is evaluated again
    on the full test set and the CI subset (rounding the weights changes its figures slightly), and the
    previous file's sha256, dtype and test figures are kept under ``info.converted_from``. Refused for a
    model with shipped evaluation artifacts (they name its sha256) or certificates, and for the diffusion
    and ABS families. Returns the manifest path.
    """
    from . import evals

    path = Path(root or checkpoint_root()) / dataset / name
    model = checkpoints.load(path, device="cpu", verify=True)
    manifest = model.manifest
    if manifest.get("kind") not in ("generative", "feedforward"):
        raise ConfigError(f"{name} is a {manifest.get('kind')} model: only GCs and feed-forward models convert")
    artifacts = sorted(p.name for p in evals.folder(dataset, root).glob(f"{name}.*.json"))
    if artifacts or "certified" in manifest["info"]:
        raise ConfigError(f"{name} has evaluation artifacts or certificates ({', '.join(artifacts) or 'certified'}) "
                          "computed from its current weights; convert it and recompute them together")
    if manifest.get("dtype") == dtype:
        raise ConfigError(f"{name} is stored in {dtype} already")
    info = dict(manifest["info"])
    previous = info.get("test", {})
    info["converted_from"] = {"sha256": manifest["sha256"], "dtype": manifest.get("dtype"),
                              **{k: previous[k] for k in ("n", "correct", "accuracy", "bits_per_dim") if k in previous}}
    return _ship(model, info, manifest["environment"], name, dataset, root, dtype, test)


# -- the diffusion family ----------------------------------------------------------------------------
def _test_index(n_total: int, n: int) -> torch.Tensor:
    """The seeded test subset of ``n`` images every diffusion figure uses (``test.subset(n, EVAL_SEED)``'s)."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(EVAL_SEED))[:n]


@torch.no_grad()
def evaluate_diffusion(model, test, n: int = DIFFUSION_TEST_N, n_errors: int = DIFFUSION_ERRORS_N,
                       n_bpd: int = DIFFUSION_BPD_N, batch: int = 20, errors: torch.Tensor | None = None,
                       progress: bool = True) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """The published figures of a diffusion classifier on the seeded test subset, and its per-image artifacts.

    Accuracy of the model's own pruned rule on ``n`` images (with its binomial standard error, the mean
    network evaluations per image and the milliseconds per image on this machine's threads); the full error
    matrix (every class, every pair: the unpruned rule) of the first ``n_errors`` (pass ``errors`` to reuse
    a shipped matrix of the same weights); the ELBO bits/dim, an upper bound, of the first ``n_bpd``.
    Returns ``(record, {"test": tensors, "errors": tensors})``.
    """
    import time

    from tqdm import tqdm

    from .diffusion import classify_from_errors

    n, n_errors, n_bpd = min(n, len(test)), min(n_errors, n, len(test)), min(n_bpd, n, len(test))
    index = _test_index(len(test), n)
    x, y = test.batch(index)
    model.eval()
    if errors is None:
        errors = torch.cat([model.error_matrix(x[s:s + batch]) for s in
                            tqdm(range(0, n_errors, batch), desc="error matrix", disable=not progress)])
    preds, evaluations = [], []
    start = time.perf_counter()
    for s in tqdm(range(0, n, batch), desc="pruned rule", disable=not progress):
        p, e = model.predict_with_evaluations(x[s:s + batch])
        preds.append(p)
        evaluations.append(e)
    seconds = time.perf_counter() - start
    pred, evaluations = torch.cat(preds), torch.cat(evaluations)
    bpd = torch.cat([model.bits_per_dim(x[s:min(s + batch, n_bpd)]) for s in range(0, n_bpd, batch)]).double()
    correct = int((pred == y).sum())
    acc = correct / n
    unpruned = classify_from_errors(errors, ((errors.shape[2], 1),))[0]
    record = {
        "n": n, "correct": correct, "accuracy": acc, "accuracy_se": math.sqrt(acc * (1 - acc) / n),
        "subset_seed": EVAL_SEED, "rule": "pruned", "stages": [list(st) for st in model.stages or ()],
        "evaluations_per_image": float(evaluations.double().mean()),
        "ms_per_image": round(1000 * seconds / n, 1), "torch_threads": torch.get_num_threads(),
        "bits_per_dim": float(bpd.mean()), "bits_per_dim_se": float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1
        else math.nan, "bits_per_dim_n": len(bpd), "bits_per_dim_kind": "upper bound (ELBO)",
        "errors_n": n_errors, "unpruned_evaluations_per_image": errors.shape[1] * errors.shape[2],
        "unpruned_correct_on_errors_subset": int((unpruned == y[:n_errors]).sum()),
        "pruned_correct_on_errors_subset": int((pred[:n_errors] == y[:n_errors]).sum()),
    }
    artifacts = {"test": {"indices": index, "labels": y, "predictions": pred, "evaluations": evaluations,
                          "bits_per_dim": bpd.float()},
                 "errors": {"indices": index[:n_errors], "labels": y[:n_errors], "errors": errors.float()}}
    return record, artifacts


def _publish_diffusion(trained, run: Path, name: str, dataset: str, root, test) -> Path:
    """publish() for the diffusion family: the entry's stages and ELBO bank, figures on seeded subsets,
    per-image artifacts in ``checkpoints/<dataset>/evals/`` (an error matrix already shipped for the same
    weights is reused: it is the costly part)."""
    from . import data, evals
    from .diffusion import DiffusionClassifier

    e = ZOO.get((dataset, name))
    spec = trained.spec()
    if e is not None:
        spec.update(stages=[list(st) for st in e.stages] if e.stages else spec["stages"],
                    elbo_pairs=e.elbo_pairs or spec["elbo_pairs"])
    model = DiffusionClassifier.from_spec(spec)
    model.load_state_dict(trained.state_dict())
    dest = Path(root or checkpoint_root()) / dataset / name
    info = dict(trained.manifest["info"])
    info.update(family="diffusion", dataset=dataset, zoo_name=name, history=read_history(run),
                parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    if e is not None:
        info["train_command"] = "python " + " ".join(e.command("OUT"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".publish-{name}.", dir=dest.parent))
    try:
        checkpoints.save(model, scratch / name, env=trained.manifest["environment"], **info)
        shipped = checkpoints.load(scratch / name, device="cpu")
        sha = shipped.manifest["sha256"]
        if test is None:
            test = data.load(dataset)[2]
        errors = None
        try:
            old, _ = evals.load(evals.path_of(name, "errors", dataset, root), model_sha256=sha)
            if len(old["indices"]) == min(DIFFUSION_ERRORS_N, len(test)):
                errors = old["errors"]
        except CheckpointError:
            pass
        info["test"], artifacts = evaluate_diffusion(shipped, test, errors=errors)
        inputs = {"dataset": dataset, "split": "test", "subset_seed": EVAL_SEED}
        for kind, tensors in artifacts.items():
            evals.save(evals.path_of(name, kind, dataset, root), tensors, model_sha256=sha,
                       inputs={**inputs, "n": len(tensors["indices"])}, model=name, what=evals.KINDS[kind],
                       stages=info["test"]["stages"], noise_bank_seed=shipped.seed,
                       torch_threads=torch.get_num_threads())
        _rewrite_info(scratch / name, info)
        _commit(scratch, name, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest.with_name(f"{name}.json")


def _check_subset(t: dict, test, what: str = "the artifact") -> list[str]:
    """The problem, if any, of an artifact's ``indices`` and ``labels``: they must be the seeded test subset."""
    n = len(t["indices"])
    if torch.equal(t["indices"], _test_index(len(test), n)) and torch.equal(t["labels"], test.labels[t["indices"]]):
        return []
    return [f"{what}: the artifact's images are not the seeded test subset it names"]


def _check_test_artifact(t: dict, record: dict, test) -> list[str]:
    """Problems of a per-image test artifact: its images must be the seeded subset it names, and its
    predictions must give the manifest's number correct."""
    problems = _check_subset(t, test, "test")
    n = len(t["indices"])
    correct = int((t["predictions"] == t["labels"]).sum())
    if (record.get("n"), record.get("correct")) != (n, correct):
        problems.append(f"manifest n={record.get('n')}, correct={record.get('correct')}; artifact {n}, {correct}")
    return problems


@torch.no_grad()
def _verify_diffusion(model, name: str, dataset: str, root, test, sample: int = DIFFUSION_CHECK_N,
                      seed: int | None = None) -> dict:
    """Recompute a random sample of a diffusion model's shipped per-image results and compare.

    Predictions and evaluation counts must be equal; the error matrix and bits/dim agree to float32
    rounding (rtol 1e-4: another batch composition rounds differently). The sample's seed is random
    unless given, and is returned, so a failure can be rerun.
    """
    import random

    from . import evals

    sha = model.manifest["sha256"]
    record = model.manifest["info"].get("test", {})
    t, _ = evals.load(evals.path_of(name, "test", dataset, root), model_sha256=sha)
    m, _ = evals.load(evals.path_of(name, "errors", dataset, root), model_sha256=sha)
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    g = torch.Generator().manual_seed(seed)
    n, correct = len(t["indices"]), int((t["predictions"] == t["labels"]).sum())
    problems = _check_test_artifact(t, record, test)
    pick = torch.randperm(n, generator=g)[:sample]
    x, _ = test.batch(t["indices"][pick])
    pred, evaluations = model.predict_with_evaluations(x)
    if not torch.equal(pred, t["predictions"][pick]) or not torch.equal(evaluations, t["evaluations"][pick]):
        problems.append(f"pruned rule on test images {t['indices'][pick].tolist()}: predictions {pred.tolist()}, "
                        f"shipped {t['predictions'][pick].tolist()}")
    pick_e = torch.randperm(len(m["indices"]), generator=g)[:max(1, sample // 3)]
    got = model.error_matrix(test.batch(m["indices"][pick_e])[0])
    if not torch.allclose(got, m["errors"][pick_e], rtol=1e-4, atol=1e-6):
        problems.append(f"error matrix of test images {m['indices'][pick_e].tolist()} differs by up to "
                        f"{float((got - m['errors'][pick_e]).abs().max()):.2e}")
    pick_b = torch.randperm(len(t["bits_per_dim"]), generator=g)[:1]
    bpd = model.bits_per_dim(test.batch(t["indices"][pick_b])[0])
    if not torch.allclose(bpd, t["bits_per_dim"][pick_b], rtol=1e-4):
        problems.append(f"bits/dim of test image {t['indices'][pick_b].tolist()}: {bpd.tolist()}, "
                        f"shipped {t['bits_per_dim'][pick_b].tolist()}")
    if not math.isclose(float(t["bits_per_dim"].double().mean()), record.get("bits_per_dim", math.nan), rel_tol=1e-6):
        problems.append("the manifest's bits/dim is not the artifact's mean")
    stem = evals.path_of(name, "score", dataset, root)
    if stem.with_name(stem.name + ".json").is_file():
        problems += _verify_score(model, name, dataset, root, test, g)
    stem = evals.path_of(name, "diffusion-ood", dataset, root)
    if stem.with_name(stem.name + ".json").is_file():
        problems += _verify_diffusion_ood(model, name, dataset, root, test, g)
    problems += _verify_artifacts(model, name, dataset, root, test, g, DIFFUSION_RTOL)
    return {"manifest": record, "measured": {"n": n, "correct": correct, "sample_seed": seed, "checked": pick.numel()},
            "problems": problems}


@torch.no_grad()
def _verify_score(model, name: str, dataset: str, root, test, g: torch.Generator, sample: int = SCORE_CHECK_N
                  ) -> list[str]:
    """Check a shipped score-based artifact: its images are the seeded subset, it was computed with today's
    :data:`SCORE_READING`, its predictions, bits/dim and manifest figures follow from its scores, and the
    scores of ``sample`` random images recomputed alone match (to 1e-3 nats + 1e-5 relative: the artifact's
    chunks of SCORE_BATCH images round differently, by up to 1e-3 nats of about 3,000 measured)."""
    from . import evals
    from .score import mixture_bits_per_dim

    t, art = evals.load(evals.path_of(name, "score", dataset, root), model_sha256=model.manifest["sha256"])
    info = art["info"]
    problems = _check_subset(t, test, "score")
    if info.get("settings") != score_reading(model).settings():
        problems.append(f"score: computed with {info.get('settings')}, not today's reading {SCORE_READING}")
    scores = t["scores"]
    if not torch.equal(scores.mean(1).argmax(1), t["predictions"]):
        problems.append("score: the predictions are not the best class of the scores")
    bpd = mixture_bits_per_dim(scores, math.prod(model.input_shape))
    if not torch.allclose(bpd, t["bits_per_dim"], rtol=1e-9, atol=1e-9):
        problems.append("score: bits_per_dim do not follow from the scores")
    correct = int((t["predictions"] == t["labels"]).sum())
    if (info.get("n"), info.get("correct")) != (len(t["indices"]), correct):
        problems.append(f"score: manifest n={info.get('n')}, correct={info.get('correct')}; artifact "
                        f"{len(t['indices'])}, {correct}")
    if not math.isclose(float(t["bits_per_dim"].mean()), info.get("bits_per_dim", math.nan), rel_tol=1e-9):
        problems.append("score: the manifest's bits/dim is not the artifact's mean")
    for i in torch.randperm(len(t["indices"]), generator=g)[:sample].tolist():
        x, _ = test.batch(t["indices"][i:i + 1])
        got = score_images(model, x)
        if not torch.allclose(got, scores[i:i + 1], rtol=1e-5, atol=1e-3):
            problems.append(f"score of test image {int(t['indices'][i])}: differs by up to "
                            f"{float((got - scores[i:i + 1]).abs().max()):.2e} nats")
    return problems


def _ood_summary(tensors: dict[str, torch.Tensor], sets: list[str], dims: int) -> dict[str, dict[str, float]]:
    """The ``diffusion-ood`` manifest's mean bits/dim: of the test images' ELBOs, and of every OoD set's ELBOs
    and ODE likelihoods (class mixtures, :func:`gclib.score.mixture_bits_per_dim`)."""
    from .score import mixture_bits_per_dim

    summary = {"test": {"elbo_bits_per_dim": float(mixture_bits_per_dim(tensors["elbo"], dims).mean())}}
    for s in sets:
        summary[s] = {"elbo_bits_per_dim": float(mixture_bits_per_dim(tensors[f"{s}.elbo"], dims).mean()),
                      "ode_bits_per_dim": float(mixture_bits_per_dim(tensors[f"{s}.ode"], dims).mean())}
    return summary


def _verify_diffusion_ood(model, name: str, dataset: str, root, test, g: torch.Generator) -> list[str]:
    """Check a shipped ``diffusion-ood`` artifact: its test images are the seeded subset, it was computed with
    today's settings, the manifest's mean bits/dim follow from its tensors, and one random test image's ELBOs
    and one random OoD image's every part recomputed alone match (ELBOs and class scores to float32 rounding,
    rtol 1e-4; the ODE likelihoods to rtol 1e-3)."""
    from . import evals

    t, art = evals.load(evals.path_of(name, "diffusion-ood", dataset, root), model_sha256=model.manifest["sha256"])
    info = art["info"]
    problems = _check_subset(t, test, "diffusion-ood")
    if info.get("elbo_pairs") != OOD_ELBO_PAIRS or info.get("score_settings") != score_reading(model).settings():
        problems.append(f"diffusion-ood: computed with elbo_pairs={info.get('elbo_pairs')} and "
                        f"{info.get('score_settings')}, not today's {OOD_ELBO_PAIRS} and {SCORE_READING}")
    want = _ood_summary(t, info["sets"], math.prod(model.input_shape))
    got_summary = info.get("mean_bits_per_dim", {})
    if set(got_summary) != set(want) or any(not math.isclose(got_summary[k][m], v, rel_tol=1e-9)
                                            for k in want for m, v in want[k].items()):
        problems.append("diffusion-ood: the manifest's mean bits/dim do not follow from the tensors")
    i = int(torch.randint(len(t["indices"]), (1,), generator=g))
    x, _ = test.batch(t["indices"][i:i + 1])
    got = ood_images(model, x, "elbo", info["elbo_pairs"])
    if not torch.allclose(got["elbo"], t["elbo"][i:i + 1], rtol=1e-4, atol=1e-3):
        problems.append(f"diffusion-ood: ELBOs of test image {int(t['indices'][i])} differ by up to "
                        f"{float((got['elbo'] - t['elbo'][i:i + 1]).abs().max()):.2e} nats")
    s = info["sets"][int(torch.randint(len(info["sets"]), (1,), generator=g))]
    j = int(torch.randint(info["n_per_set"], (1,), generator=g))
    x = ood_sets(info["n_per_set"], model.input_shape)[s][j:j + 1]
    got = ood_images(model, x, "all", info["elbo_pairs"])
    # The ODE's 2,400 passes round differently in a chunk of SCORE_BATCH images than alone: measured up to
    # 1.5e-4 relative on a constant image of a barely trained tiny model (4.5e-7 on the shipped network).
    for k, rtol, atol in (("elbo", 1e-4, 1e-3), ("scores", 1e-4, 1e-3), ("ode", 1e-3, 1e-3)):
        shipped = t[f"{s}.{k}"][j:j + 1]
        if not torch.allclose(got[k], shipped, rtol=rtol, atol=atol):
            problems.append(f"diffusion-ood: {k} of {s} image {j} differ by up to "
                            f"{float((got[k] - shipped).abs().max()):.2e} nats")
    return problems


# -- randomized smoothing's base models -------------------------------------------------------------------
CERTIFY_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def evaluate_certified(model, test, sigma: float, n: int | None = None, progress: bool = True
                       ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Cohen et al.'s CERTIFY for ``model`` smoothed at ``sigma`` on the first ``n`` (default CERTIFY_N) images
    of the seeded test subset, with CERTIFY_N0 / CERTIFY_SAMPLES votes at level CERTIFY_ALPHA and per-image
    seeded noise (:func:`gclib.smoothing.seeded_votes`). Returns ``(record, votes artifact)``."""
    import time

    from .smoothing import SmoothedClassifier, certificates, certified_accuracy, max_certifiable_radius, seeded_votes

    n = min(CERTIFY_N if n is None else n, len(test))
    index = _test_index(len(test), n)
    x, y = test.batch(index)
    smoothed = SmoothedClassifier(model, sigma)
    start = time.perf_counter()
    counts0, counts = seeded_votes(smoothed, x, index, CERTIFY_N0, CERTIFY_SAMPLES, seed=EVAL_SEED, progress=progress)
    seconds = time.perf_counter() - start
    pred, radius = certificates(counts0, counts, CERTIFY_SAMPLES, CERTIFY_ALPHA, sigma)
    base_right = torch.cat([model.predict(x[s:s + EVAL_BATCH]) for s in range(0, n, EVAL_BATCH)]) == y
    record = {"n": n, "subset_seed": EVAL_SEED, "sigma": sigma, "n0": CERTIFY_N0, "n_samples": CERTIFY_SAMPLES,
              "alpha": CERTIFY_ALPHA, "noise_seed": EVAL_SEED,
              "max_certifiable_radius": max_certifiable_radius(CERTIFY_SAMPLES, CERTIFY_ALPHA, sigma),
              "abstained": int((pred == -1).sum()), "correct": int((pred == y).sum()),
              "base_correct_clean": int(base_right.sum()),
              "certified_accuracy": certified_accuracy(radius, pred == y, CERTIFY_RADII),
              "ms_per_image": round(1000 * seconds / n, 1), "torch_threads": torch.get_num_threads()}
    return record, {"indices": index, "labels": y, "counts0": counts0, "counts": counts}


def _certify_and_ship(shipped, name: str, dataset: str, root, test, e: ZooEntry) -> dict:
    """Certify a smoothing base model (:func:`evaluate_certified` at the entry's sigma and image count), write
    its votes as the evaluation artifact ``evals/<name>.certify`` and return the record for ``info.certified``."""
    from . import evals

    record, votes = evaluate_certified(shipped, test, e.certify_sigma, e.certify_n)
    evals.save(evals.path_of(name, "certify", dataset, root), votes, model_sha256=shipped.manifest["sha256"],
               inputs={"dataset": dataset, "split": "test", "subset_seed": EVAL_SEED, "n": len(votes["indices"])},
               model=name, what=evals.KINDS["certify"], **{k: record[k] for k in
                                                           ("sigma", "n0", "n_samples", "alpha", "noise_seed")})
    return record


@torch.no_grad()
def evaluate_abs_base(model, test, batch: int = 500) -> dict:
    """Accuracy of an ABS model's own rule (its config's inference) on ``test``, exactly as recounted by
    :func:`verify`: for the smoothing bases, whose rule is cheap (the class encoders' latents)."""
    pred = torch.cat([model.predict(test.batch(torch.arange(s, min(s + batch, len(test))))[0])
                      for s in range(0, len(test), batch)])
    correct = int((pred == test.labels).sum())
    acc = correct / len(test)
    return {"n": len(test), "correct": correct, "accuracy": acc, "accuracy_se": math.sqrt(acc * (1 - acc) / len(test)),
            "rule": f"{model.config.score} scores at the {model.config.start} start, {model.config.n_steps} steps",
            "inference": {k: getattr(model.config, k) for k in ("start", "n_steps", "score", "n_bound_samples",
                                                                "similarity")}}


def _verify_certified(model, name: str, dataset: str, root, test, e: ZooEntry, seed: int | None = None) -> list[str]:
    """Recount CERTIFY_CHECK_N random images of a smoothing base model's shipped votes (exactly) and check the
    manifest's certificates against the votes."""
    import random

    from . import evals
    from .smoothing import SmoothedClassifier, certificates, seeded_votes

    v, art = evals.load(evals.path_of(name, "certify", dataset, root), model_sha256=model.manifest["sha256"])
    record = model.manifest["info"].get("certified", {})
    problems = []
    if not torch.equal(v["indices"], _test_index(len(test), len(v["indices"]))):
        problems.append("the votes' images are not the seeded test subset they name")
    pred, _ = certificates(v["counts0"], v["counts"], art["info"]["n_samples"], art["info"]["alpha"], e.certify_sigma)
    if int((pred == v["labels"]).sum()) != record.get("correct"):
        problems.append(f"certified correct: manifest {record.get('correct')}, from the votes {int((pred == v['labels']).sum())}")
    g = torch.Generator().manual_seed(random.SystemRandom().randrange(2**31) if seed is None else seed)
    pick = torch.randperm(len(v["indices"]), generator=g)[:CERTIFY_CHECK_N]
    x, _ = test.batch(v["indices"][pick])
    c0, c = seeded_votes(SmoothedClassifier(model, e.certify_sigma), x, v["indices"][pick], art["info"]["n0"],
                         art["info"]["n_samples"], seed=art["info"]["noise_seed"])
    if not (torch.equal(c0, v["counts0"][pick]) and torch.equal(c, v["counts"][pick])):
        problems.append(f"votes of test images {v['indices'][pick].tolist()} differ from the shipped ones")
    return problems


# -- the ABS family ----------------------------------------------------------------------------------------
# ABS's rule optimises every class's latent per image (hundreds of decoder passes), so its published figures
# are on the seeded test subset too: the rule's class scores (importance-weighted bound), ABS's own scores
# and every class decoder's reconstruction error on ABS_TEST_N images (accuracy after each search step of
# ABS_STEP_MARKS too), the bits/dim bound of the first ABS_BPD_N, the SSIM rule on the first ABS_SSIM_N,
# and the reconstruction errors of ABS_OOD_N images of every gclib.data OoD set. The tests recompute
# ABS_CHECK_N random images of the test artifact and one of each of the others.
ABS_TEST_N, ABS_BPD_N, ABS_SSIM_N, ABS_OOD_N, ABS_CHECK_N = 1000, 100, 200, 100, 4
ABS_STEP_MARKS = (0, 1, 2, 5, 10, 20, 30, 50)
ABS_RTOL = 1e-3  # the search is 50 Adam steps: another batch composition rounds differently along the path


def _abs_outputs(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One search per (image, class): the rule's scores, ABS's scores, reconstruction MSE, best loss by step."""
    found = model.infer(x)
    bound = model._bound(x, found.z) if model.config.score == "bound" else -found.loss
    mse = (x[:, None] - torch.sigmoid(found.logits)).square().flatten(2).mean(2)
    marks = [m for m in ABS_STEP_MARKS if m < len(found.history)]
    return {"scores": bound, "abs_scores": -found.loss, "reconstruction_mse": mse,
            "loss_by_step": found.history[marks].permute(1, 0, 2).contiguous()}


def _abs_batches(model, x: torch.Tensor, batch: int, desc: str, progress: bool) -> dict[str, torch.Tensor]:
    from tqdm import tqdm

    parts = [_abs_outputs(model, x[s:s + batch]) for s in
             tqdm(range(0, len(x), batch), desc=desc, disable=not progress, unit="batch")]
    return {k: torch.cat([p[k] for p in parts]).float() for k in parts[0]} if parts else {}


def _abs_variant(model, **changes):
    """The same weights under other ABSConfig settings (similarity, steps, ...)."""
    from .abs import ABSClassifier

    other = ABSClassifier(model.config.replace(**changes)).to(model.device)
    # prior_z and bound_eps are drawn from the config's seed and sizes: the new config's own
    state = {k: v for k, v in model.state_dict().items() if k not in ("prior_z", "bound_eps")}
    other.load_state_dict(state, strict=False)
    other.manifest = getattr(model, "manifest", None)
    same_bank = all(getattr(other.config, k) == getattr(model.config, k) for k in
                    ("n_prior_samples", "fraction_to_dismiss", "seed", "latent_dim")) and \
        {other.config.similarity, model.config.similarity} <= {"mse", "ssim"}
    if same_bank:  # share the VAEs and their decoded prior samples (80,000 decoder passes at the defaults)
        other.vaes = model.vaes
        other._cache = model._cache
    return other.eval()


@torch.no_grad()
def evaluate_abs(model, test, n: int | None = None, n_bpd: int | None = None, n_ssim: int | None = None,
                 n_ood: int | None = None, batch: int = 50, progress: bool = True
                 ) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """The published figures of an ABS classifier on the seeded test subset, and its per-image artifacts.

    Accuracy of its rule on ``n`` images (binomial SE, ms per image on this machine's threads), the
    accuracy of ABS's own score and of the best-reconstruction (MSE) rule on the same images, the bits/dim
    bound of the first ``n_bpd`` (at gclib's evaluation point), the SSIM rule on the first ``n_ssim``, and
    the reconstruction errors of ``n_ood`` images of every OoD set. Returns ``(record, artifacts)``.
    """
    import time

    from . import data
    from .model import evaluation_point, nats_to_bits_per_dim

    n = min(ABS_TEST_N if n is None else n, len(test))  # defaults read at call time (the tests shrink them)
    n_bpd, n_ssim = min(ABS_BPD_N if n_bpd is None else n_bpd, n), min(ABS_SSIM_N if n_ssim is None else n_ssim, n)
    n_ood = ABS_OOD_N if n_ood is None else n_ood
    index = _test_index(len(test), n)
    x, y = test.batch(index)
    model.eval()
    model._prior_bank()  # decoded once per model; not part of the per-image time
    start = time.perf_counter()
    out = _abs_batches(model, x, batch, "ABS rule", progress)
    seconds = time.perf_counter() - start
    pred = (out["scores"] + model.log_prior.float()).argmax(1)
    correct = int((pred == y).sum())
    acc = correct / n

    def rate(hit: torch.Tensor) -> dict:
        a = float(hit.double().mean())
        return {"correct": int(hit.sum()), "accuracy": a, "accuracy_se": math.sqrt(a * (1 - a) / len(hit))}

    point = evaluation_point(x[:n_bpd], "seeded", EVAL_SEED)
    lpx = torch.cat([model.log_px(point[s:s + batch]) for s in range(0, n_bpd, batch)])
    bpd = nats_to_bits_per_dim(lpx, math.prod(model.input_shape)).double()
    ssim_model = _abs_variant(model, similarity="ssim")
    ssim_pred = torch.cat([ssim_model.predict(x[s:min(s + batch, n_ssim)]) for s in range(0, n_ssim, batch)])
    ood = {}
    for set_name in data.ood_names():
        xo = data.ood(set_name, n_ood, tuple(model.input_shape), seed=EVAL_SEED)
        for k, v in _abs_batches(model, xo, batch, f"OoD {set_name}", progress).items():
            ood[f"{set_name}.{k}"] = v
    steps_acc = [float((out["loss_by_step"][:, i].argmin(1) == y).double().mean())
                 for i in range(out["loss_by_step"].shape[1])]
    record = {
        "n": n, "correct": correct, "accuracy": acc, "accuracy_se": math.sqrt(acc * (1 - acc) / n),
        "subset_seed": EVAL_SEED, "rule": f"{model.config.score} scores, {model.config.similarity} similarity",
        "inference": {k: getattr(model.config, k) for k in ("n_prior_samples", "n_steps", "step_lr", "latent_clip",
                                                            "start", "score", "n_bound_samples", "similarity")},
        "evaluations_per_image": model.evaluations_per_image, "cache_evaluations": model.cache_evaluations,
        "ms_per_image": round(1000 * seconds / n, 1), "torch_threads": torch.get_num_threads(),
        "abs_score": rate(out["abs_scores"].argmax(1) == y),
        "reconstruction_rule": rate(out["reconstruction_mse"].argmin(1) == y),
        "accuracy_by_step": dict(zip([str(m) for m in ABS_STEP_MARKS], steps_acc)),
        "ssim": {"n": n_ssim, **rate(ssim_pred == y[:n_ssim])},
        "bits_per_dim": float(bpd.mean()), "bits_per_dim_se": float(bpd.std() / math.sqrt(len(bpd)))
        if len(bpd) > 1 else math.nan, "bits_per_dim_n": len(bpd),
        "bits_per_dim_kind": f"upper bound (importance-weighted, K = {model.config.n_bound_samples})",
        "ood_n": n_ood, "ood_sets": data.ood_names(),
    }
    artifacts = {
        "abs-test": {"indices": index, "labels": y, "predictions": pred, **out},
        "abs-extra": {"indices": index[:max(n_bpd, n_ssim)], "labels": y[:max(n_bpd, n_ssim)],
                      "bits_per_dim": bpd.float(), "ssim_predictions": ssim_pred},
        "abs-ood": ood,
    }
    return record, artifacts


def _publish_abs(trained, run: Path, name: str, dataset: str, root, test) -> Path:
    """publish() for the ABS family: the entry's inference settings, figures on seeded subsets, per-image
    artifacts in ``checkpoints/<dataset>/evals/``."""
    from . import abs as abs_family
    from . import data, evals

    e = ZOO.get((dataset, name))
    model = _abs_variant(trained, **dict(e.inference)) if e is not None and e.inference else trained
    dest = Path(root or checkpoint_root()) / dataset / name
    info = dict(trained.manifest["info"])
    info.update(family="abs", dataset=dataset, zoo_name=name, history=read_history(run),
                parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    if e is not None:
        info["train_command"] = "python " + " ".join(e.command("OUT"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".publish-{name}.", dir=dest.parent))
    try:
        abs_family.save(model, scratch / name, **info)
        shipped = checkpoints.load(scratch / name, device="cpu")
        sha = shipped.manifest["sha256"]
        if test is None:
            test = data.load(dataset)[2]
        if e is not None and e.certify_sigma:  # a smoothing base: its cheap rule's accuracy and certificates
            info["test"] = evaluate_abs_base(shipped, test)
            info["test_subset"] = {**evaluate_abs_base(shipped, ci_subset(test)), "subset_seed": EVAL_SEED}
            info["certified"] = _certify_and_ship(shipped, name, dataset, root, test, e)
            _rewrite_info(scratch / name, info)
            _commit(scratch, name, dest)
            return dest.with_name(f"{name}.json")
        info["test"], artifacts = evaluate_abs(shipped, test)
        for kind, tensors in artifacts.items():
            inputs = ({"ood_sets": data.ood_names(), "n_per_set": info["test"]["ood_n"], "seed": EVAL_SEED}
                      if kind == "abs-ood"
                      else {"dataset": dataset, "split": "test", "subset_seed": EVAL_SEED, "n": len(tensors["indices"])})
            evals.save(evals.path_of(name, kind, dataset, root), tensors, model_sha256=sha, inputs=inputs, model=name,
                       what=evals.KINDS[kind], inference=info["test"]["inference"],
                       torch_threads=torch.get_num_threads())
        _rewrite_info(scratch / name, info)
        _commit(scratch, name, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest.with_name(f"{name}.json")


@torch.no_grad()
def _verify_abs(model, name: str, dataset: str, root, test, sample: int | None = None, seed: int | None = None) -> dict:
    """Recompute a random sample of an ABS model's shipped per-image results and compare (scores to
    ``ABS_RTOL``; a prediction must agree unless its two best classes are closer than that)."""
    import random

    from . import data, evals

    sha = model.manifest["sha256"]
    record = model.manifest["info"].get("test", {})
    t, _ = evals.load(evals.path_of(name, "abs-test", dataset, root), model_sha256=sha)
    extra, _ = evals.load(evals.path_of(name, "abs-extra", dataset, root), model_sha256=sha)
    ood, _ = evals.load(evals.path_of(name, "abs-ood", dataset, root), model_sha256=sha)
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    g = torch.Generator().manual_seed(seed)
    n, correct = len(t["indices"]), int((t["predictions"] == t["labels"]).sum())
    problems = _check_test_artifact(t, record, test)

    def compare(what: str, got: dict, shipped: dict, rows: torch.Tensor) -> None:
        for key in ("scores", "abs_scores", "reconstruction_mse"):
            a, b = got[key], shipped[key][rows]
            if not torch.allclose(a, b, rtol=ABS_RTOL, atol=1e-5):
                problems.append(f"{what} {rows.tolist()}: {key} differs by up to {float((a - b).abs().max()):.3e}")
        top2 = shipped["scores"][rows].topk(2, 1).values
        clear = (top2[:, 0] - top2[:, 1]) > ABS_RTOL * top2[:, 0].abs()
        if not torch.equal(got["scores"].argmax(1)[clear], shipped["scores"][rows].argmax(1)[clear]):
            problems.append(f"{what} {rows.tolist()}: another best class")

    pick = torch.randperm(n, generator=g)[:ABS_CHECK_N if sample is None else sample]
    compare("test images", _abs_outputs(model, test.batch(t["indices"][pick])[0]), t, pick)
    if not torch.equal(t["predictions"], (t["scores"] + model.log_prior.float()).argmax(1)):
        problems.append("the shipped predictions are not the argmax of the shipped scores")
    set_name = data.ood_names()[int(torch.randint(len(data.ood_names()), (1,), generator=g))]
    n_ood = len(ood[f"{set_name}.scores"])
    xo = data.ood(set_name, n_ood, tuple(model.input_shape), seed=EVAL_SEED)
    row = torch.randint(n_ood, (1,), generator=g)
    compare(f"OoD {set_name} images", _abs_outputs(model, xo[row]),
            {k.split(".", 1)[1]: v for k, v in ood.items() if k.startswith(set_name + ".")}, row)
    problems += _verify_artifacts(model, name, dataset, root, test, g, ABS_RTOL)
    row = torch.randint(len(extra["ssim_predictions"]), (1,), generator=g)
    x1 = test.batch(extra["indices"][row])[0]
    if not torch.equal(_abs_variant(model, similarity="ssim").predict(x1), extra["ssim_predictions"][row]):
        problems.append(f"SSIM rule on test image {extra['indices'][row].tolist()}: another prediction")
    if not math.isclose(float(extra["bits_per_dim"].double().mean()), record.get("bits_per_dim", math.nan), rel_tol=1e-6):
        problems.append("the manifest's bits/dim is not the artifact's mean")
    return {"manifest": record, "measured": {"n": n, "correct": correct, "sample_seed": seed, "checked": pick.numel()},
            "problems": problems}


# -- robustness artifacts of the expensive families ---------------------------------------------------------
# ABS's rule costs about 0.44 s an image on a CPU core: too much for the corruption chapter's live runs (500
# images x 61 versions). Its results on a seeded subset ship instead, as the artifact kind "corrupt": the
# logits (log-posteriors) of the first CORRUPT_N images of the seeded test subset, clean and under every
# corruption of gclib.robust at CORRUPT_SEVERITIES (corruption seed EVAL_SEED, the same corrupted images any
# other model gets from robust.corrupt). `python -m gclib.zoo evaluate NAME --what corrupt` computes it for a
# shipped model; verify recomputes CORRUPT_CHECK_N random (version, image) pairs when it is there.
CORRUPT_N, CORRUPT_SEVERITIES, CORRUPT_CHECK_N = 100, (3,), 3
# The kinds "attack-l2" and "attack-hsj": the minimal-L2 adversarial examples that FMN (a gradient attack; for
# ABS through its unrolled search) and HopSkipJump (decision-based: it sees only the predicted label, so the
# model as deployed, search included) find for the first ATTACK_N images of the seeded subset, with their
# distances, start distances, query counts and the model's logits on them; verify recomputes the logits of
# ATTACK_CHECK_N random adversarial images. The same images and budget for every model: a median adversarial
# distance that can be compared, as ABS (Schott et al.) reports it. The images are attacked in chunks of
# ATTACK_BATCH, chunk c with seed EVAL_SEED + c, so that `evaluate --jobs K` gives the same artifact for any K.
# HSJ's budget, 10 iterations (about 2,450 label queries an image), is what ABS affords on a CPU: about 21 min
# of a core an attacked image (0.5 s a query).
ATTACK_N, ATTACK_CHECK_N = 10, 2
# The kind "attack-pgd": the robustness chapter's PGD-Linf (gclib.attacks.success_curve: 10 steps of 2.5 eps /
# steps, a seeded random start, early stop, budgets from the largest down) on the first PGD_N images of the
# seeded subset, through the model's full logits (a diffusion classifier: every class on its whole fixed noise
# bank, 1,000 network evaluations per forward pass; the gradient runs through all of them). Models too costly
# for the chapter's live runs ship it (the diffusion classifier: about 5 s of a core per image and gradient
# step in chunks of 4; its artifact took 121 s of a core per image, 36 min of wall time on 2 cores); in
# chunks of PGD_BATCH images, chunk c with seed EVAL_SEED + c, so that `--jobs K` gives the same artifact.
# verify recomputes the logits of PGD_CHECK_N random attacked images.
PGD_N, PGD_BATCH, PGD_CHECK_N = 40, 4, 2
PGD_EPS_255, PGD_STEPS = (1.0, 4.0, 16.0), 10
# The kind "attack-transfer": a check against gradient masking that needs no gradient of the model (Carlini et
# al.'s guidelines): PGD-Linf adversarial images crafted on other shipped models (TRANSFER_SOURCES, all PGD_STEPS
# steps, no early stop, seed EVAL_SEED + budget index) for the same first PGD_N images, and the model's logits on
# them. If they fool it more often than its own white-box PGD at the same budget, its gradients mislead.
TRANSFER_SOURCES, TRANSFER_EPS_255 = ("resnet18", "gc-large-beta-8"), (4.0, 16.0)
ATTACK_METHODS = {"attack-l2": "fmn", "attack-hsj": "hsj"}
ATTACK_STEPS = {"fmn": 100, "hsj": 10}
ATTACK_BATCH = {"fmn": 10, "hsj": 5}
# The kind "faithfulness": the heatmaps chapter's study (gclib.attribution.faithfulness_study) of a model too
# costly to study live in the book's time budget: the ResNet-18 DC takes 150 s of a CPU core for it, 72 % of
# the chapter's notebook. The first FAITHFULNESS_N images of the seeded subset, the mean training image as the
# baseline, FAITHFULNESS_IG_STEPS points of integrated gradients, FAITHFULNESS_STEPS deletion/insertion steps,
# batches of FAITHFULNESS_BATCH (the notebook's parameters); stored: the decisions, the curves of every
# method, the attributions' sums and IG's convergence delta (not the maps: the chapter recomputes the few it
# shows). verify recomputes the whole study of FAITHFULNESS_CHECK_N random images.
FAITHFULNESS_N, FAITHFULNESS_IG_STEPS, FAITHFULNESS_STEPS, FAITHFULNESS_BATCH, FAITHFULNESS_CHECK_N = 500, 16, 10, 250, 2
# The kind "corrupt-predictions": the corruption chapter's whole grid for a model too costly to run live there
# (the ResNet-18 DC: 81 s of a core for 500 images x 61 versions): the predictions and the top-two logit margins
# of the first CORRUPT_FULL_N images of the seeded subset, clean and under every corruption at every severity
# (corruption_versions' order; the chapter's images and noise), in batches of one version (as the chapter
# classifies them). Predictions and float16 margins, not logits: 92 kB instead of 1.2 MB. verify recomputes
# CORRUPT_CHECK_N random (version, image) pairs: the same class unless the stored margin is below 1e-3.
CORRUPT_FULL_N = 500
# The kind "sample-quality": the models chapter's sample-quality study of a GC (gclib.samples.
# class_sample_judgements: SAMPLE_N_PER_CLASS samples of every class at each of SAMPLE_TEMPERATURES, seed
# EVAL_SEED, batches of SAMPLE_BATCH, and the decoded class means, judged by the shipped SAMPLE_JUDGE), whose
# judge costs the chapter 68 s of a core for 17 GCs: the judge's prediction and float16 top-two margin and the
# number of values outside [0, 1] of every sample (9 kB a GC). The manifest names the judge's sha256 too.
# verify redraws one random row (temperature or means) and judges it again.
SAMPLE_TEMPERATURES, SAMPLE_N_PER_CLASS, SAMPLE_BATCH, SAMPLE_JUDGE = (0.5, 0.7, 1.0), 50, 500, "resnet18"
# any family's; _verify_artifacts checks them
ROBUSTNESS_KINDS = ("corrupt", "corrupt-predictions", "attack-l2", "attack-hsj", "attack-pgd", "attack-transfer")
ARTIFACT_KINDS = (*ROBUSTNESS_KINDS, "faithfulness", "sample-quality")
EVALUATE_KINDS = (*ARTIFACT_KINDS, "score", "diffusion-ood")  # the last two: a diffusion network's only


def score_reading(model):
    """The zoo's score-based reading (:class:`gclib.score.ScoreClassifier`, :data:`SCORE_READING`) of a diffusion
    classifier's network."""
    from .score import ScoreClassifier

    return ScoreClassifier.from_diffusion(model, **SCORE_READING).eval()


@contextlib.contextmanager
def _one_thread(model):
    """Compute in one thread, as every chunk of an artifact is (so that worker processes give the same results),
    with ``model`` itself or, in a worker process, the copy loaded from its checkpoint path."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if isinstance(model, (str, Path)):
            model = checkpoints.load(model, device="cpu", verify=False).eval()
        yield model
    finally:
        torch.set_num_threads(threads)


def score_images(model, x: torch.Tensor) -> torch.Tensor:
    """The zoo's score-based reading of images ``x`` [B, C, H, W] in [0, 1]: each probe's class log-likelihoods
    [B, P, C] (nats, float64) at the seeded evaluation point, computed in one thread as the ``score`` artifact's
    chunks are (``model``: a diffusion classifier, or its checkpoint path, as in a worker process)."""
    from .model import evaluation_point

    with _one_thread(model) as model, torch.no_grad():
        return score_reading(model).class_scores_per_probe(evaluation_point(x, "seeded", EVAL_SEED)).double()


def _chunk_fingerprints(work, model, settings: dict | None, chunks: list[tuple[str, tuple, torch.Tensor]]) -> dict:
    """``{key: fingerprint}``: what each chunk's result depends on, hashed: the work function, the model's weights
    and buffers, the caller's settings and the chunk's arguments (images included). A kept chunk is reused only
    when this matches, so a ``--partial`` folder left by another model, setting or code path is never read as
    this one. The model is hashed once and the hash state copied for each chunk."""
    import hashlib

    h = hashlib.sha256(f"{work.__module__}.{work.__qualname__}".encode())
    h.update(json.dumps(settings or {}, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {key: _args_fingerprint(h.copy(), args) for key, args, _ in chunks}


def _args_fingerprint(h, args: tuple) -> str:
    """``h`` (a hash state of its own) updated with one chunk's arguments, as 16 hex digits."""
    for a in args:
        if isinstance(a, torch.Tensor):
            h.update(str((a.dtype, tuple(a.shape))).encode())
            h.update(a.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(a).encode())
    return h.hexdigest()[:16]


def _map_chunks(work, model, source, chunks: list[tuple[str, tuple, torch.Tensor]], jobs: int = 1,
                partial: str | os.PathLike | None = None, progress: bool = True, desc: str = "chunks",
                settings: dict | None = None) -> tuple[dict[str, dict[str, torch.Tensor]], float, int]:
    """Run ``work(model, *args) -> dict of tensors`` on every chunk ``(key, args, indices)``.

    With ``jobs`` > 1 the chunks run in that many spawned processes, each given ``source`` (the model's
    checkpoint path) instead of the model; ``work`` must then be a module-level function that loads it and
    computes in one thread, so the result does not depend on ``jobs``. ``partial``: a folder where every
    finished chunk is kept as ``chunk-<key>-<fingerprint>.safetensors`` (with its ``indices``) and found again
    when the run is repeated after an interruption; the fingerprint (:func:`_chunk_fingerprints`) covers the
    model's weights, ``settings`` and the chunk's inputs, so a chunk computed otherwise is recomputed, not
    reused. Returns ``(results by key, seconds of the computed chunks x workers, images computed)``.
    """
    import time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from tqdm import tqdm

    _check_jobs(jobs, source, desc, need_source=False)
    folder = Path(partial) if partial is not None else None
    done: dict[str, dict[str, torch.Tensor]] = {}
    if folder is not None:
        from safetensors.torch import load_file

        folder.mkdir(parents=True, exist_ok=True)
        files = {key: folder / f"chunk-{key}-{fp}.safetensors"
                 for key, fp in _chunk_fingerprints(work, model, settings, chunks).items()}
        for key, _, index in chunks:
            f = files[key]
            if f.is_file():
                part = load_file(str(f))
                if torch.equal(part.pop("indices"), index):
                    done[key] = part
    todo = [c for c in chunks if c[0] not in done]
    if jobs > 1 and len(todo) > 1 and source is None:
        raise ConfigError("with jobs > 1 the workers need source, the model's checkpoint path")

    def keep(key: str, index: torch.Tensor, result: dict[str, torch.Tensor]) -> None:
        done[key] = result
        if folder is not None:
            checkpoints._atomic_save_tensors({"indices": index, **result}, files[key])

    bar = tqdm(total=sum(len(c[2]) for c in todo), desc=desc, unit="image", disable=not progress)
    start = time.perf_counter()
    workers = min(jobs, len(todo)) if todo else 1
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_by_value, work, str(source), *[_Array(a) if isinstance(a, torch.Tensor) else a
                                                                   for a in args]) for _, args, _ in todo]
            for (key, _, index), future in zip(todo, futures):
                keep(key, index, {k: torch.from_numpy(v.array) for k, v in future.result().items()})
                bar.update(len(index))
    else:
        for key, args, index in todo:
            keep(key, index, work(model, *args))
            bar.update(len(index))
    bar.close()
    return done, (time.perf_counter() - start) * workers, sum(len(c[2]) for c in todo)


class _Array:
    """A tensor sent to a worker process by value (numpy's pickle, the bytes themselves). torch's own pickling
    hands a worker a file descriptor that the parent's resource sharer must serve when the worker picks the task
    up; a worker of `evaluate --what attack-pgd --jobs 2` once died at that step with "Connection refused"."""

    def __init__(self, tensor: torch.Tensor):
        self.array = tensor.detach().cpu().numpy()


def _by_value(work, source, *args) -> dict:
    """Run ``work`` in a worker on arguments sent as :class:`_Array`, and send its tensors back the same way."""
    out = work(source, *[torch.from_numpy(a.array) if isinstance(a, _Array) else a for a in args])
    return {k: _Array(v) for k, v in out.items()}


def _check_jobs(jobs, source, what: str, need_source: bool = True) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1, got {jobs!r}")
    if need_source and jobs > 1 and source is None:
        raise ConfigError(f"{what} with jobs > 1 needs source, the model's checkpoint path, for the workers")


def _score_work(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"scores": score_images(model, x)}


def ood_images(model, x: torch.Tensor, parts: str = "all", elbo_pairs: int | None = None
               ) -> dict[str, torch.Tensor]:
    """A diffusion classifier's densities and class scores of images ``x`` [B, C, H, W] in [0, 1], as the
    ``diffusion-ood`` artifact holds them (float64, computed in one thread; ``model``: the classifier or its
    checkpoint path, as in a worker process).

    ``elbo``, ``elbo_se`` [B, C]: each class's ELBO (a lower bound on log p(x|y), nats) on a log-SNR bank of
    ``elbo_pairs`` pairs (default :data:`OOD_ELBO_PAIRS`), and its noise SE, at the seeded evaluation point.
    With ``parts="all"`` also ``scores`` [B, C] (Li et al.'s unpruned class scores of x as given, what the
    classifier's logits are made of) and ``ode`` [B, P, C] (the score-based reading, :func:`score_images`).
    """
    from .model import evaluation_point

    if parts not in ("all", "elbo"):
        raise ConfigError(f"parts must be 'all' or 'elbo', got {parts!r}")
    with _one_thread(model) as model:
        point = evaluation_point(x, "seeded", EVAL_SEED)
        with torch.no_grad():
            elbo, se = model.elbo(point, pairs=OOD_ELBO_PAIRS if elbo_pairs is None else elbo_pairs)
            out = {"elbo": elbo.double(), "elbo_se": se.double()}
            if parts == "all":
                out["scores"] = model.class_scores(x).double()
        if parts == "all":
            out["ode"] = score_images(model, x)
        return out


def ood_sets(n: int = OOD_N, shape=(1, 28, 28)) -> dict[str, torch.Tensor]:
    """The ``diffusion-ood`` artifact's out-of-distribution images: the first ``n`` of every set of
    :func:`gclib.data.ood` (seed :data:`EVAL_SEED`)."""
    from . import data

    return {name: data.ood(name, n, tuple(shape), EVAL_SEED) for name in data.ood_names()}


def evaluate_diffusion_ood(model, test, n: int | None = None, jobs: int = 1, source: str | os.PathLike | None = None,
                           progress: bool = True, partial: str | os.PathLike | None = None
                           ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The ``diffusion-ood`` artifact of a diffusion classifier (see :data:`OOD_N`): :func:`ood_images` of the
    first ``n`` images of every OoD set (``SET.elbo``, ``SET.elbo_se``, ``SET.scores``, ``SET.ode``) and the
    small-bank ELBOs of the score artifact's :data:`SCORE_N` test images (``indices``, ``labels``, ``elbo``,
    ``elbo_se``). ``jobs``, ``source``, ``partial``: as in :func:`evaluate_score`."""
    _check_jobs(jobs, source, "evaluate_diffusion_ood")
    n = OOD_N if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be an integer >= 1, got {n!r}")
    sets = ood_sets(n, model.input_shape)
    n_test = min(SCORE_N, len(test))
    index = _test_index(len(test), n_test)
    x, y = test.batch(index)
    chunks = [(f"test-{s:06d}", (x[s:s + SCORE_BATCH], "elbo", OOD_ELBO_PAIRS), index[s:s + SCORE_BATCH])
              for s in range(0, n_test, SCORE_BATCH)]
    chunks += [(f"{name}-{s:06d}", (xs[s:s + SCORE_BATCH], "all", OOD_ELBO_PAIRS),
                torch.arange(s, min(s + SCORE_BATCH, n)))
               for name, xs in sets.items() for s in range(0, n, SCORE_BATCH)]
    done, seconds, computed = _map_chunks(ood_images, model, source, chunks, jobs, partial, progress,
                                          "diffusion OoD", settings=score_reading(model).settings())

    def gather(prefix: str, total: int) -> dict[str, torch.Tensor]:
        parts = [done[f"{prefix}-{s:06d}"] for s in range(0, total, SCORE_BATCH)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    tensors = {"indices": index, "labels": y, **gather("test", n_test)}
    for name in sets:
        for k, v in gather(name, n).items():
            tensors[f"{name}.{k}"] = v
    summary = _ood_summary(tensors, list(sets), math.prod(model.input_shape))
    record = {"n": n_test, "n_per_set": n, "subset_seed": EVAL_SEED, "ood_seed": EVAL_SEED, "sets": list(sets),
              "dequantization": f"seeded ({EVAL_SEED})", "elbo_pairs": OOD_ELBO_PAIRS,
              "score_settings": score_reading(model).settings(), "mean_bits_per_dim": summary,
              "seconds": round(seconds, 1), "images_computed": computed, "jobs": jobs, "torch_threads": 1,
              "chunk": SCORE_BATCH}
    return record, tensors


def evaluate_score(model, test, n: int | None = None, jobs: int = 1, source: str | os.PathLike | None = None,
                   progress: bool = True, partial: str | os.PathLike | None = None
                   ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The score-based reading of a diffusion classifier on the first ``n`` images of the seeded test subset.

    Returns ``(record, tensors)``: ``scores`` [N, P, C] (each probe's log p(x|y) in nats at the seeded
    dequantized image), ``predictions`` [N] (the best class of the probes' mean), ``bits_per_dim`` [N] (of the
    class mixture, an estimate) and its per-image standard error over the probes ``bits_per_dim_se`` [N]. With
    ``jobs`` > 1 the chunks run in that many processes loading ``source``. ``partial``: a folder where every
    finished chunk is kept (and found again when the run is repeated after an interruption).
    """
    from .model import nats_to_bits_per_dim
    from .score import mixture_bits_per_dim

    _check_jobs(jobs, source, "evaluate_score")
    n = min(SCORE_N if n is None else n, len(test))
    index = _test_index(len(test), n)
    x, y = test.batch(index)
    starts = list(range(0, n, SCORE_BATCH))
    chunks = [(f"{s:06d}", (x[s:s + SCORE_BATCH],), index[s:s + SCORE_BATCH]) for s in starts]
    done, seconds, computed = _map_chunks(_score_work, model, source, chunks, jobs, partial, progress,
                                          "score-based reading", settings=score_reading(model).settings())
    scores = torch.cat([done[f"{s:06d}"]["scores"] for s in starts])  # [N, P, C]
    log_prior = -math.log(scores.shape[2])
    per_probe = torch.logsumexp(scores + log_prior, dim=2)  # [N, P]: log p(x) of each probe's estimate
    d = math.prod(x.shape[1:])
    bpd = mixture_bits_per_dim(scores, d)  # as ScoreClassifier.log_px
    p = scores.shape[1]
    bpd_se = (nats_to_bits_per_dim(per_probe, d).std(1) / math.sqrt(p)) if p > 1 else torch.full_like(bpd, math.nan)
    pred = scores.mean(1).argmax(1)
    correct = int((pred == y).sum())
    acc = correct / n
    reading = score_reading(model)
    record = {"n": n, "correct": correct, "accuracy": acc, "accuracy_se": math.sqrt(acc * (1 - acc) / n),
              "subset_seed": EVAL_SEED, "dequantization": f"seeded ({EVAL_SEED})", "settings": reading.settings(),
              "bits_per_dim": float(bpd.mean()), "bits_per_dim_se": float(bpd.std() / math.sqrt(n)) if n > 1
              else math.nan, "bits_per_dim_n": n,
              "bits_per_dim_kind": f"exact up to the estimator ({p} Hutchinson probes, {reading.steps} RK4 steps)",
              "estimator_se_bits_per_dim": float(bpd_se.mean()),
              "evaluations_per_image": reading.evaluations_per_image,
              "seconds_per_image": round(seconds / computed, 2) if computed else None, "jobs": jobs,
              "torch_threads": 1, "chunk": SCORE_BATCH}
    tensors = {"indices": index, "labels": y, "scores": scores, "predictions": pred, "bits_per_dim": bpd,
               "bits_per_dim_se": bpd_se}
    return record, tensors


def corruption_versions(severities=CORRUPT_SEVERITIES) -> list[tuple[str, int]]:
    """The image versions of a "corrupt" artifact, in its order: ``("clean", 0)``, then every corruption of
    :data:`gclib.robust.CORRUPTIONS` at every severity."""
    from . import robust

    return [("clean", 0)] + [(c, int(s)) for c in robust.CORRUPTIONS for s in severities]


def _version_images(x: torch.Tensor, version: tuple[str, int]) -> torch.Tensor:
    from . import robust

    name, severity = version
    return x if name == "clean" else robust.corrupt(x, name, severity, EVAL_SEED)


def _logits_in_batches(model, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(x[s:s + batch]).float() for s in range(0, len(x), batch)])


@torch.no_grad()
def evaluate_corruptions(model, test, n: int | None = None, severities=None, batch: int = 50,
                         progress: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """A model's logits on the first ``n`` images of the seeded test subset, clean and corrupted (see
    :func:`corruption_versions`); returns ``(record, artifact tensors)``: ``logits`` [versions, n, C]."""
    import time

    from tqdm import tqdm

    n = min(CORRUPT_N if n is None else n, len(test))
    severities = tuple(CORRUPT_SEVERITIES if severities is None else severities)
    index = _test_index(len(test), n)
    x, y = test.batch(index)
    versions = corruption_versions(severities)
    start = time.perf_counter()
    logits = torch.stack([_logits_in_batches(model, _version_images(x, v), batch)
                          for v in tqdm(versions, desc="corruptions", unit="version", disable=not progress)])
    seconds = time.perf_counter() - start
    right = logits.argmax(2) == y
    record = {"n": n, "subset_seed": EVAL_SEED, "corruption_seed": EVAL_SEED, "severities": list(severities),
              "versions": [f"{c}:{s}" for c, s in versions], "clean_correct": int(right[0].sum()),
              "corrupted_accuracy": float(right[1:].double().mean()),
              "ms_per_image": round(1000 * seconds / (n * len(versions)), 1), "torch_threads": torch.get_num_threads()}
    return record, {"indices": index, "labels": y, "logits": logits}


def faithfulness_baseline(train) -> torch.Tensor:
    """The heatmaps chapter's baseline image: the mean training image, [1, C, H, W] float32."""
    return (train.images.double() / 255).mean(0, keepdim=True).float()


def evaluate_faithfulness(model, train, test, n: int | None = None, progress: bool = True
                          ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The "faithfulness" artifact of a model (see FAITHFULNESS_N): ``(record, tensors)``; the curves are
    stored as float32 (the margins they hold are the model's float32 outputs)."""
    import time

    from . import attribution

    n = min(FAITHFULNESS_N if n is None else n, len(test))
    index = _test_index(len(test), n)
    x, y = test.batch(index)
    start = time.perf_counter()
    study = attribution.faithfulness_study(model, x, faithfulness_baseline(train), n_steps=FAITHFULNESS_IG_STEPS,
                                           steps=FAITHFULNESS_STEPS, batch_size=FAITHFULNESS_BATCH, seed=EVAL_SEED,
                                           keep_maps=False)
    seconds = time.perf_counter() - start
    methods = attribution.STUDY_METHODS
    curves = {k: torch.stack([torch.from_numpy(study["curves"][m][k]).float() for m in methods])
              for k in ("deletion", "insertion")}
    record = {"n": n, "subset_seed": EVAL_SEED, "methods": list(methods), "baseline": "the mean training image",
              "n_steps": FAITHFULNESS_IG_STEPS, "steps": FAITHFULNESS_STEPS, "batch_size": FAITHFULNESS_BATCH,
              "order_seed": EVAL_SEED, "correct": int((study["top"] == y).sum()),
              "seconds_per_image": round(seconds / n, 3), "torch_threads": torch.get_num_threads()}
    return record, {"indices": index, "labels": y, "top": study["top"], "runner": study["runner"],
                    "delta": study["delta"], **curves,
                    "fraction": torch.from_numpy(study["curves"][methods[0]]["fraction"]),
                    "sums": torch.stack([torch.from_numpy(study["sums"][m]) for m in methods])}


def shipped_faithfulness(name: str, model_sha256: str, n: int, *, dataset: str = "fashion-mnist",
                         root: str | os.PathLike | None = None, n_steps: int, steps: int, batch_size: int,
                         seed: int) -> dict | None:
    """A shipped "faithfulness" artifact of ``name`` as :func:`gclib.attribution.faithfulness_study` returns it
    (without maps) for the first ``n`` images of the seeded test subset, or None where none is shipped or it was
    computed with other parameters or on fewer images (study the model live then). The artifact must name
    ``model_sha256`` (the loaded weights'): :func:`gclib.evals.load` refuses it otherwise."""
    from . import attribution, evals

    stem = evals.path_of(name, "faithfulness", dataset, root)
    if not stem.with_name(stem.name + ".json").is_file():
        return None
    t, art = evals.load(stem, model_sha256=model_sha256)
    info = art["info"]
    wanted = {"n_steps": n_steps, "steps": steps, "batch_size": batch_size, "order_seed": seed, "subset_seed": seed,
              "methods": list(attribution.STUDY_METHODS)}
    if any(info.get(k) != v for k, v in wanted.items()) or info["n"] < n:
        return None
    methods = info["methods"]
    curves = {m: {"fraction": t["fraction"].numpy(), "deletion": t["deletion"][k, :n].double().numpy(),
                  "insertion": t["insertion"][k, :n].double().numpy()} for k, m in enumerate(methods)}
    sums = {m: t["sums"][k, :n].numpy() for k, m in enumerate(methods)}
    gaps = {m: sums[m] - (curves[m]["deletion"][:, 0] - curves[m]["deletion"][:, -1])
            for m in attribution.COMPLETE_METHODS}
    return {"top": t["top"][:n], "runner": t["runner"][:n], "delta": t["delta"][:n], "sums": sums, "curves": curves,
            "gaps": gaps, "indices": t["indices"][:n], "artifact": art}


def _verify_faithfulness(model, name: str, dataset: str, root, test, g: torch.Generator, rtol: float) -> list[str]:
    """Recompute the study of FAITHFULNESS_CHECK_N random images of a shipped "faithfulness" artifact: the
    decisions exactly; the margins of the random order (no attribution in it) and of every curve's two ends
    to ``rtol``; every method's curves by their areas, to 2e-3 (an order's near-ties may fall either side of
    a step's boundary in another batch: measured differences 1e-6 for the ResNet-18)."""
    from . import attribution, data, evals

    t, art = evals.load(evals.path_of(name, "faithfulness", dataset, root), model_sha256=model.manifest["sha256"])
    problems = _check_subset(t, test, "faithfulness")
    info = art["info"]
    if list(info["methods"]) != list(attribution.STUDY_METHODS):
        return [*problems, f"faithfulness: methods {info['methods']}, expected {list(attribution.STUDY_METHODS)}"]
    x, _ = test.batch(t["indices"])
    baseline = faithfulness_baseline(data.load(dataset)[0])
    for i in torch.randperm(len(x), generator=g)[:FAITHFULNESS_CHECK_N].tolist():
        study = attribution.faithfulness_study(model, x[i:i + 1], baseline, n_steps=info["n_steps"],
                                               steps=info["steps"], batch_size=info["batch_size"],
                                               seed=info["order_seed"], keep_maps=True)
        if int(study["top"]) != int(t["top"][i]) or int(study["runner"]) != int(t["runner"][i]):
            problems.append(f"faithfulness image {i}: decision pair differs")
            continue
        # the random order of image i: row i of the seeded draw for all N images
        rand = attribution.random_attribution(x, info["order_seed"])[i:i + 1]
        study["curves"]["random"] = attribution.perturbation_curves(
            model, x[i:i + 1], rand, baseline, study["top"], study["runner"], info["steps"], info["batch_size"],
            info["order_seed"])
        for m, method in enumerate(attribution.STUDY_METHODS):
            for k in ("deletion", "insertion"):
                got = torch.from_numpy(study["curves"][method][k][0]).float()
                want = t[k][m, i]
                ends = [0, -1]
                if method == "random" and not torch.allclose(got, want, rtol=rtol, atol=1e-4):
                    problems.append(f"faithfulness image {i}, random order, {k}: margins differ by up to "
                                    f"{float((got - want).abs().max()):.3e}")
                elif not torch.allclose(got[ends], want[ends], rtol=rtol, atol=1e-4):
                    problems.append(f"faithfulness image {i}, {method}, {k}: f(x) or f(b) differs")
                else:
                    fraction = study["curves"][method]["fraction"]
                    areas = [float(attribution.auc(attribution.decision_probability(c.double().numpy()), fraction))
                             for c in (got, want)]
                    if abs(areas[0] - areas[1]) > 2e-3:
                        problems.append(f"faithfulness image {i}, {method}, {k}: area {areas[0]:.4f}, shipped "
                                        f"{areas[1]:.4f}")
    return problems


def _top_two(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted class and the margin of its logit over the runner-up's, along the last dimension."""
    top2 = logits.float().topk(2, dim=-1).values
    return logits.argmax(-1), top2[..., 0] - top2[..., 1]


def evaluate_corrupt_predictions(model, test, n: int | None = None, progress: bool = True
                                 ) -> tuple[dict, dict[str, torch.Tensor]]:
    """The "corrupt-predictions" artifact of a model (see CORRUPT_FULL_N): ``(record, tensors)``."""
    from . import robust

    n = min(CORRUPT_FULL_N if n is None else n, len(test))
    record, t = evaluate_corruptions(model, test, n=n, severities=range(1, robust.MAX_SEVERITY + 1), batch=n,
                                     progress=progress)
    predictions, margin = _top_two(t["logits"])
    return record, {"indices": t["indices"], "labels": t["labels"], "predictions": predictions.to(torch.uint8),
                    "margin": margin.to(torch.float16)}


def shipped_corrupt_predictions(name: str, model_sha256: str, n: int, versions: list[tuple[str, int]], seed: int, *,
                                dataset: str = "fashion-mnist", root: str | os.PathLike | None = None
                                ) -> torch.Tensor | None:
    """A shipped "corrupt-predictions" artifact's predictions [versions, n] (int64) of the first ``n`` images of
    the seeded test subset, or None where none is shipped, or it has other versions (``versions``: the
    caller's, in its order), another seed or another number of images (run the model live then). The artifact
    must name ``model_sha256``: :func:`gclib.evals.load` refuses it otherwise."""
    from . import evals

    stem = evals.path_of(name, "corrupt-predictions", dataset, root)
    if not stem.with_name(stem.name + ".json").is_file():
        return None
    t, art = evals.load(stem, model_sha256=model_sha256)
    info = art["info"]
    # the same number of images, not a prefix: gclib.robust.corrupt draws its noise for the whole set
    if (info["versions"] != [f"{c}:{s}" for c, s in versions] or info["n"] != n or seed != EVAL_SEED
            or info["corruption_seed"] != seed):
        return None
    return t["predictions"].long()


def evaluate_sample_quality(model, judge, judge_name: str = SAMPLE_JUDGE) -> tuple[dict, dict[str, torch.Tensor]]:
    """The "sample-quality" artifact of a GC (see SAMPLE_TEMPERATURES): ``(record, tensors)``; row k of the
    manifest's ``rows`` is stored as ``row<k>.prediction`` (uint8), ``.margin`` (float16) and ``.outside``
    (int16)."""
    import time

    from . import samples

    start = time.perf_counter()
    judgements = samples.class_sample_judgements(model, judge, SAMPLE_TEMPERATURES, SAMPLE_N_PER_CLASS, EVAL_SEED,
                                                 SAMPLE_BATCH)
    seconds = time.perf_counter() - start
    quality = samples.quality_rows(judgements, model.num_classes, SAMPLE_N_PER_CLASS)
    tensors = {}
    for k, j in enumerate(judgements.values()):
        tensors[f"row{k}.prediction"] = j["prediction"].to(torch.uint8)
        tensors[f"row{k}.margin"] = j["margin"].to(torch.float16)
        tensors[f"row{k}.outside"] = j["outside"].to(torch.int16)
    values = int(next(iter(judgements.values()))["values"])
    record = {"n": SAMPLE_N_PER_CLASS * model.num_classes, "temperatures": list(SAMPLE_TEMPERATURES),
              "n_per_class": SAMPLE_N_PER_CLASS, "seed": EVAL_SEED, "batch_size": SAMPLE_BATCH, "values": values,
              "judge": judge_name, "judge_sha256": judge.manifest["sha256"], "rows": list(judgements),
              "quality": {q["what"]: {"accuracy": q["accuracy"], "outside": q["outside"]} for q in quality},
              "seconds": round(seconds, 1), "torch_threads": torch.get_num_threads()}
    return record, tensors


def _sample_judgements(t: dict, info: dict) -> dict[str, dict[str, torch.Tensor]]:
    return {what: {"prediction": t[f"row{k}.prediction"].long(), "margin": t[f"row{k}.margin"].float(),
                   "outside": t[f"row{k}.outside"].long(), "values": torch.tensor(info["values"])}
            for k, what in enumerate(info["rows"])}


def shipped_sample_quality(name: str, model_sha256: str, judge_sha256: str, temperatures, n_per_class: int,
                           seed: int, *, dataset: str = "fashion-mnist", root: str | os.PathLike | None = None
                           ) -> dict[str, dict[str, torch.Tensor]] | None:
    """A shipped "sample-quality" artifact's judgements as :func:`gclib.samples.class_sample_judgements`
    returns them, or None where none is shipped or it was computed with other temperatures, sample counts, seed
    or judge (study the model live then). The artifact must name ``model_sha256``: :func:`gclib.evals.load`
    refuses it otherwise."""
    from . import evals

    stem = evals.path_of(name, "sample-quality", dataset, root)
    if not stem.with_name(stem.name + ".json").is_file():
        return None
    t, art = evals.load(stem, model_sha256=model_sha256)
    info = art["info"]
    if ([float(x) for x in info["temperatures"]] != [float(x) for x in temperatures]
            or (info["n_per_class"], info["seed"], info["judge_sha256"]) != (n_per_class, seed, judge_sha256)):
        return None
    return _sample_judgements(t, info)


@torch.no_grad()
def _verify_sample_quality(model, name: str, dataset: str, root, test, g: torch.Generator, rtol: float
                           ) -> list[str]:
    """Redraw one random row of a shipped "sample-quality" artifact and judge it again: the same class unless
    the stored margin is below 1e-3, the margin to float16's precision, the values outside [0, 1] to one per
    sample; the judge must be the shipped one the manifest names."""
    from . import evals, samples

    kind = "sample-quality"
    t, art = evals.load(evals.path_of(name, kind, dataset, root), model_sha256=model.manifest["sha256"])
    info = art["info"]
    judge = get_model(info["judge"], dataset, device="cpu", root=root).eval()
    if judge.manifest["sha256"] != info["judge_sha256"]:
        return [f"{kind}: judged by {info['judge']} of sha256 {info['judge_sha256'][:12]}, shipped now "
                f"{judge.manifest['sha256'][:12]}: recompute it"]
    k = int(torch.randint(len(info["rows"]), (1,), generator=g))
    what = info["rows"][k]
    got = samples.class_sample_judgements(model, judge, info["temperatures"], info["n_per_class"], info["seed"],
                                          info["batch_size"], rows=[what])[what]
    want = _sample_judgements(t, info)[what]
    differ = (got["prediction"] != want["prediction"]) & (want["margin"] >= 1e-3)
    problems = []
    if bool(differ.any()):
        problems.append(f"{kind} {what}: {int(differ.sum())} samples judged another class")
    if bool(((got["margin"] - want["margin"]).abs() > 1e-3 * want["margin"].abs().clamp_min(1)).any()):
        problems.append(f"{kind} {what}: margins differ by up to {float((got['margin'] - want['margin']).abs().max()):.3e}")
    if bool(((got["outside"] - want["outside"]).abs() > 1).any()):
        problems.append(f"{kind} {what}: values outside [0, 1] differ")
    return problems


def _attack_chunk(model, x: torch.Tensor, y: torch.Tensor, method: str, steps: int, seed: int, batch: int):
    """One chunk of an attack artifact: ``minimal_l2`` on the model as the artifact attacks it (an ABS model
    through its unrolled search for FMN; HSJ needs no gradient and queries the model as deployed)."""
    from .abs import ABSClassifier
    from .attacks import minimal_l2

    if isinstance(model, (str, Path)):  # a worker of evaluate_attacks(jobs > 1): one thread, its own copy
        torch.set_num_threads(1)
        model = checkpoints.load(model, device="cpu", verify=False).eval()
    attacked = _abs_variant(model, unroll=True) if method == "fmn" and isinstance(model, ABSClassifier) else model
    return minimal_l2(attacked, x, y, method=method, steps=steps, seed=seed, batch_size=batch)


def evaluate_attacks(model, test, n: int | None = None, steps: int | None = None, batch: int | None = None,
                     method: str = "fmn", jobs: int = 1, source: str | os.PathLike | None = None
                     ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Minimal-L2 adversarial examples (``method``: ``"fmn"`` or ``"hsj"``, see :func:`gclib.attacks.minimal_l2`)
    for the first ``n`` images of the seeded test subset; returns ``(record, artifact tensors)``.

    The images are attacked in chunks of ``batch`` (default :data:`ATTACK_BATCH`), chunk c with seed
    ``EVAL_SEED + c``; with ``jobs`` > 1 the chunks run in that many processes (one thread each), which load
    the model from ``source`` (its checkpoint path): the result does not depend on ``jobs``.
    """
    import time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from .abs import ABSClassifier
    from .attacks import MINIMAL_L2_METHODS, median_l2

    if method not in MINIMAL_L2_METHODS:
        raise ConfigError(f"unknown attack {method!r}; use one of {', '.join(MINIMAL_L2_METHODS)}")
    n = min(ATTACK_N if n is None else n, len(test))
    steps = ATTACK_STEPS[method] if steps is None else steps
    batch = ATTACK_BATCH[method] if batch is None else batch
    _check_jobs(jobs, source, "evaluate_attacks")
    index = _test_index(len(test), n)
    x, y = test.batch(index)
    chunks = [(x[s:s + batch], y[s:s + batch], method, steps, EVAL_SEED + c, batch)
              for c, s in enumerate(range(0, n, batch))]
    start, threads = time.perf_counter(), torch.get_num_threads()
    if jobs > 1:
        with ProcessPoolExecutor(min(jobs, len(chunks)), mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(_attack_chunk, [str(source)] * len(chunks), *zip(*chunks)))
    else:
        try:  # one thread, as in the workers: a decision near the boundary can flip with the summation order
            torch.set_num_threads(1)
            parts = [_attack_chunk(model, *c) for c in chunks]
        finally:
            torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    r = {k: torch.cat([getattr(p, k) for p in parts]) for k in
         ("x_adv", "distance", "misclassified", "failed", "queries", "gradients", "start_distance")}
    with torch.no_grad():
        logits = _logits_in_batches(model, r["x_adv"], batch)
    broken = torch.where(r["misclassified"], 0.0, r["distance"])  # clean errors count as broken at distance 0
    median, (lo, hi) = median_l2(broken)
    settings = {**parts[0].settings, "seed": f"{EVAL_SEED} + chunk index (chunks of {batch})"}
    unrolled = method == "fmn" and isinstance(model, ABSClassifier)
    record = {"n": n, "subset_seed": EVAL_SEED, "method": method, "steps": steps, "unrolled_search": unrolled,
              "settings": json.loads(json.dumps(settings, default=str)),
              "misclassified_clean": int(r["misclassified"].sum()), "failed": int(r["failed"].sum()),
              "median_l2": median, "median_l2_interval_68": [lo, hi],
              "queries_per_image": float(r["queries"].double().mean()),
              "seconds_per_image": round(seconds * min(jobs, len(chunks)) / n, 2), "jobs": jobs,
              "torch_threads": 1}
    tensors = {"indices": index, "labels": y, "x_adv": r["x_adv"].float().contiguous(), "distance": r["distance"],
               "start_distance": r["start_distance"], "misclassified": r["misclassified"], "failed": r["failed"],
               "queries": r["queries"], "gradients": r["gradients"], "logits_adv": logits}
    return record, tensors


def _pgd_work(model, x: torch.Tensor, y: torch.Tensor, epsilons: tuple, steps: int, seed: int
              ) -> dict[str, torch.Tensor]:
    """One chunk of an "attack-pgd" artifact, in one thread: PGD-Linf at every budget (``epsilons`` in [0, 1]
    units) and the model's logits on every attacked image (``model``: a model, or its checkpoint path, as in a
    worker process)."""
    from .attacks import success_curve

    with _one_thread(model) as model:
        c = success_curve(model, x, y, list(epsilons), "pgd", "inf", steps=steps, seed=seed, batch_size=len(x))
        with torch.no_grad():
            logits = torch.stack([model(c.x_adv[e]).float() for e in range(len(epsilons))])
    return {"correct": c.correct, "fooled": c.fooled, "attacked": c.attacked, "x_adv": c.x_adv.float(),
            "logits_adv": logits}


def evaluate_pgd(model, test, n: int | None = None, eps_255=PGD_EPS_255, steps: int = PGD_STEPS,
                 batch: int = PGD_BATCH, jobs: int = 1, source: str | os.PathLike | None = None,
                 progress: bool = True, partial: str | os.PathLike | None = None
                 ) -> tuple[dict, dict[str, torch.Tensor]]:
    """PGD-Linf (the robustness chapter's attack, see :data:`PGD_N`) on the first ``n`` images of the seeded
    test subset at budgets ``eps_255`` (units of 1/255); returns ``(record, artifact tensors)``: ``correct``
    [N], ``fooled`` and ``attacked`` [E, N], ``x_adv`` [E, N, C, H, W] and the model's ``logits_adv``
    [E, N, C]. Chunks of ``batch`` images, chunk c seeded ``EVAL_SEED + c``: the result does not depend on
    ``jobs`` (worker processes loading ``source``); ``partial`` keeps finished chunks for a resumed run."""
    from .attacks import binomial_se

    _check_jobs(jobs, source, "evaluate_pgd")
    n = min(PGD_N if n is None else n, len(test))
    eps = tuple(float(e) / 255 for e in eps_255)
    index = _test_index(len(test), n)
    x, y = test.batch(index)
    starts = list(range(0, n, batch))
    chunks = [(f"{s:06d}", (x[s:s + batch], y[s:s + batch], eps, steps, EVAL_SEED + c), index[s:s + batch])
              for c, s in enumerate(starts)]
    done, seconds, computed = _map_chunks(_pgd_work, model, source, chunks, jobs, partial, progress, "PGD-Linf",
                                          settings={"eps": eps, "steps": steps, "batch": batch})
    t = {k: torch.cat([done[f"{s:06d}"][k] for s in starts], dim=0 if k == "correct" else 1)
         for k in ("correct", "fooled", "attacked", "x_adv", "logits_adv")}
    correct = t["correct"]
    rates = []
    for e, budget in enumerate(eps_255):
        k = int((correct & t["fooled"][e]).sum())
        rate = k / max(int(correct.sum()), 1)
        rates.append({"eps_255": float(budget), "fooled": k, "success": rate,
                      "success_se": binomial_se(rate, int(correct.sum()))})
    record = {"n": n, "subset_seed": EVAL_SEED, "attack": "PGD-Linf (gclib.attacks.success_curve)",
              "eps_255": [float(e) for e in eps_255], "steps": steps, "step_size": "2.5 eps / steps",
              "random_start": f"uniform in the ball, seed {EVAL_SEED} + chunk index (chunks of {batch}) + budget index",
              "early_stop": True, "monotone": True, "correct_clean": int(correct.sum()), "success": rates,
              "evaluations_per_forward": int(getattr(model, "evaluations_per_image", 1)),
              "seconds_per_image": round(seconds / computed, 1) if computed else None, "jobs": jobs,
              "torch_threads": 1}
    return record, {"indices": index, "labels": y, **t}


def _logits_work(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A model's logits of images ``x`` in one thread (``model``: a model or its checkpoint path)."""
    with _one_thread(model) as model, torch.no_grad():
        return {"logits": model(x).float()}


def transfer_images(test, sources=TRANSFER_SOURCES, n: int | None = None, eps_255=TRANSFER_EPS_255,
                    steps: int = PGD_STEPS, dataset: str = "fashion-mnist", root: str | os.PathLike | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The "attack-transfer" artifact's adversarial images: PGD-Linf on each shipped source model (all ``steps``,
    no early stop, seed ``EVAL_SEED + budget index``, one thread) for the first ``n`` images of the seeded
    subset; returns ``x_adv`` [S, E, N, C, H, W] and the sources' logits on them [S, E, N, C]."""
    from .attacks import pgd

    n = min(PGD_N if n is None else n, len(test))
    x, y = test.batch(_test_index(len(test), n))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, logits = [], []
        for name in sources:
            src = checkpoints.load(Path(root or checkpoint_root()) / dataset / name, device="cpu", verify=True).eval()
            adv = [pgd(src, x, y, float(e) / 255, "inf", steps=steps, seed=EVAL_SEED + k, early_stop=False,
                       batch_size=n).x_adv for k, e in enumerate(eps_255)]
            images.append(torch.stack(adv))
            with torch.no_grad():
                logits.append(torch.stack([src(a).float() for a in adv]))
        return torch.stack(images), torch.stack(logits)
    finally:
        torch.set_num_threads(threads)


def evaluate_transfer(model, test, sources=TRANSFER_SOURCES, n: int | None = None, eps_255=TRANSFER_EPS_255,
                      steps: int = PGD_STEPS, batch: int = PGD_BATCH, jobs: int = 1,
                      source: str | os.PathLike | None = None, progress: bool = True,
                      partial: str | os.PathLike | None = None, dataset: str = "fashion-mnist",
                      root: str | os.PathLike | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """The model's logits on the clean images and on :func:`transfer_images`; returns ``(record, tensors)``:
    ``logits_clean`` [N, C], ``x_adv`` [S, E, N, C, H, W], ``source_logits`` and ``logits_adv`` [S, E, N, C].
    The model's forward passes run in chunks of ``batch`` images (``jobs``, ``source``, ``partial``: as in
    :func:`evaluate_pgd`)."""
    from .attacks import binomial_se

    _check_jobs(jobs, source, "evaluate_transfer")
    n = min(PGD_N if n is None else n, len(test))
    index = _test_index(len(test), n)
    x, y = test.batch(index)
    x_adv, source_logits = transfer_images(test, sources, n, eps_255, steps, dataset, root)
    flat = torch.cat([x, x_adv.flatten(0, 2)])  # the clean images, then every (source, budget, image)
    starts = list(range(0, len(flat), batch))
    chunks = [(f"{s:06d}", (flat[s:s + batch],), torch.arange(s, min(s + batch, len(flat)))) for s in starts]
    done, seconds, computed = _map_chunks(_logits_work, model, source, chunks, jobs, partial, progress,
                                          "transfer images", settings={"what": "logits"})
    logits = torch.cat([done[f"{s:06d}"]["logits"] for s in starts])
    clean, adv = logits[:n], logits[n:].view(*x_adv.shape[:3], -1)
    correct = clean.argmax(1) == y
    rates = []
    for i, name in enumerate(sources):
        for k, e in enumerate(eps_255):
            src_fooled = source_logits[i, k].argmax(1) != y
            fooled = correct & (adv[i, k].argmax(1) != y)
            rate = int(fooled.sum()) / max(int(correct.sum()), 1)
            rates.append({"source": name, "eps_255": float(e), "source_fooled": int(src_fooled.sum()),
                          "fooled": int(fooled.sum()), "success": rate,
                          "success_se": binomial_se(rate, int(correct.sum()))})
    record = {"n": n, "subset_seed": EVAL_SEED, "sources": list(sources), "eps_255": [float(e) for e in eps_255],
              "attack": "PGD-Linf on the source (gclib.attacks.pgd)", "steps": steps, "early_stop": False,
              "random_start": f"uniform in the ball, seed {EVAL_SEED} + budget index", "correct_clean":
              int(correct.sum()), "success": rates,
              "seconds_per_image": round(seconds / computed, 1) if computed else None, "jobs": jobs,
              "torch_threads": 1}
    return record, {"indices": index, "labels": y, "logits_clean": clean, "x_adv": x_adv,
                    "source_logits": source_logits, "logits_adv": adv}


@torch.no_grad()
def _verify_transfer(model, name: str, dataset: str, root, test, g: torch.Generator, rtol: float) -> list[str]:
    """Check a shipped "attack-transfer" artifact: its images are the seeded subset, every adversarial image lies
    in its Linf ball and in [0, 1], and the sources' and the model's logits on PGD_CHECK_N random ones are the
    shipped ones (to ``rtol``). The attacks themselves are not rerun: a sign of a near-zero gradient may round
    the other way on another CPU, and the images are what the model was shown."""
    from . import evals

    t, art = evals.load(evals.path_of(name, "attack-transfer", dataset, root), model_sha256=model.manifest["sha256"])
    info = art["info"]
    problems = _check_subset(t, test, "attack-transfer")
    x, _ = test.batch(t["indices"])
    eps = torch.tensor(info["eps_255"], dtype=torch.float64) / 255
    dist = (t["x_adv"].double() - x.double()).flatten(3).abs().amax(3)  # [S, E, N]
    if bool((dist > eps[None, :, None] + 1e-6).any()):
        problems.append("attack-transfer: an adversarial image lies outside its Linf ball")
    if float(t["x_adv"].min()) < 0 or float(t["x_adv"].max()) > 1:
        problems.append("attack-transfer: adversarial images outside [0, 1]")
    s_count, e_count, n = t["x_adv"].shape[:3]
    picks = torch.randperm(s_count * e_count * n, generator=g)[:PGD_CHECK_N].tolist()
    for j in picks:
        i, k, m = j // (e_count * n), (j // n) % e_count, j % n
        src = checkpoints.load(Path(root or checkpoint_root()) / dataset / info["sources"][i], device="cpu",
                               verify=True).eval()
        for who, net, want in (("the source", src, t["source_logits"]), ("the model", model, t["logits_adv"])):
            got = net(t["x_adv"][i, k, m:m + 1]).float()
            if not torch.allclose(got, want[i, k, m:m + 1], rtol=rtol, atol=1e-4):
                problems.append(f"attack-transfer source {i} budget {k} image {m}: {who}'s logits differ by up to "
                                f"{float((got - want[i, k, m:m + 1]).abs().max()):.3e}")
    return problems


@torch.no_grad()
def _verify_pgd(model, name: str, dataset: str, root, test, g: torch.Generator, rtol: float) -> list[str]:
    """Check a shipped "attack-pgd" artifact: its images are the seeded subset, every attacked image lies in its
    Linf ball and in [0, 1], the shipped logits say fooled exactly where the artifact does, and the model's logits
    on PGD_CHECK_N random attacked images are the shipped ones (to ``rtol``)."""
    from . import evals

    t, art = evals.load(evals.path_of(name, "attack-pgd", dataset, root), model_sha256=model.manifest["sha256"])
    problems = _check_subset(t, test, "attack-pgd")
    x, y = test.batch(t["indices"])
    eps = torch.tensor(art["info"]["eps_255"], dtype=torch.float64) / 255
    dist = (t["x_adv"].double() - x.double()[None]).flatten(2).abs().amax(2)  # [E, N]
    if bool((dist > eps[:, None] + 1e-6).any()):
        problems.append("attack-pgd: an attacked image lies outside its Linf ball")
    if float(t["x_adv"].min()) < 0 or float(t["x_adv"].max()) > 1:
        problems.append("attack-pgd: attacked images outside [0, 1]")
    wrong = t["logits_adv"].argmax(2) != y[None]
    if bool((t["fooled"] & ~wrong).any()) or bool((t["attacked"] & wrong & ~t["fooled"]).any()):
        problems.append("attack-pgd: the shipped logits disagree with the fooled flags")
    if bool((t["fooled"] & ~t["correct"][None]).any()):
        problems.append("attack-pgd: an image counted as fooled was misclassified before the attack")
    rows = t["attacked"].nonzero()
    for e, i in rows[torch.randperm(len(rows), generator=g)[:PGD_CHECK_N]].tolist():
        got = model(t["x_adv"][e, i:i + 1]).float()
        want = t["logits_adv"][e, i:i + 1]
        if not torch.allclose(got, want, rtol=rtol, atol=1e-4):
            problems.append(f"attack-pgd budget {e} image {i}: logits differ by up to "
                            f"{float((got - want).abs().max()):.3e}")
    return problems


def evaluate_shipped(name: str, what: str = "corrupt", dataset: str = "fashion-mnist",
                     root: str | os.PathLike | None = None, test=None, progress: bool = True, jobs: int = 1,
                     n: int | None = None, partial: str | os.PathLike | None = None) -> Path:
    """Compute an evaluation artifact (``what``: one of :data:`EVALUATE_KINDS`) for shipped model ``name`` and
    write it to ``checkpoints/<dataset>/evals/<name>.<what>``, naming the weights' sha256 (``jobs``: worker
    processes of the attacks and the score-based reading; ``n``, ``partial``: see :func:`evaluate_score`)."""
    from . import data, evals

    if what not in EVALUATE_KINDS:
        raise ConfigError(f"unknown evaluation {what!r}; use one of {', '.join(EVALUATE_KINDS)}")
    path = Path(root or checkpoint_root()) / dataset / name
    model = checkpoints.load(path, device="cpu", verify=True).eval()
    if test is None:
        test = data.load(dataset)[2]
    if what in ("score", "diffusion-ood") and model.manifest.get("kind") != "diffusion":
        raise ConfigError(f"the {what} evaluation needs a diffusion model's network; {name} is a "
                          f"{model.manifest.get('kind')} model")
    if what == "corrupt":
        record, tensors = evaluate_corruptions(model, test, progress=progress)
    elif what == "corrupt-predictions":
        record, tensors = evaluate_corrupt_predictions(model, test, n=n, progress=progress)
    elif what == "sample-quality":
        record, tensors = evaluate_sample_quality(model, get_model(SAMPLE_JUDGE, dataset, device="cpu",
                                                                   root=root).eval())
    elif what == "faithfulness":
        record, tensors = evaluate_faithfulness(model, data.load(dataset)[0], test, n=n, progress=progress)
    elif what == "score":
        record, tensors = evaluate_score(model, test, n=n, jobs=jobs, source=path, progress=progress, partial=partial)
    elif what == "diffusion-ood":
        record, tensors = evaluate_diffusion_ood(model, test, n=n, jobs=jobs, source=path, progress=progress,
                                                 partial=partial)
    elif what == "attack-pgd":
        record, tensors = evaluate_pgd(model, test, n=n, jobs=jobs, source=path, progress=progress, partial=partial)
    elif what == "attack-transfer":
        record, tensors = evaluate_transfer(model, test, n=n, jobs=jobs, source=path, progress=progress,
                                            partial=partial, dataset=dataset, root=root)
    else:
        record, tensors = evaluate_attacks(model, test, method=ATTACK_METHODS[what], jobs=jobs, source=path)
    inputs = {"dataset": dataset, "split": "test", "subset_seed": EVAL_SEED, "n": record["n"]}
    if what == "sample-quality":  # the model's own samples, not test images
        inputs = {"dataset": dataset, "samples": "the model's own, seeded", "seed": EVAL_SEED, "n": record["n"]}
    return evals.save(evals.path_of(name, what, dataset, root), tensors, model_sha256=model.manifest["sha256"],
                      inputs=inputs, model=name, what=evals.KINDS[what], **record)


def _corruption_pairs(model, name: str, kind: str, dataset: str, root, test, g: torch.Generator):
    """A shipped corruption artifact of ``kind`` ("corrupt" or "corrupt-predictions"), the problems of its
    subset, and CORRUPT_CHECK_N random pairs ``(v, i, version, image [1, C, H, W])`` to recompute."""
    from . import evals

    t, art = evals.load(evals.path_of(name, kind, dataset, root), model_sha256=model.manifest["sha256"])
    problems = _check_subset(t, test, kind)
    n = len(t["indices"])
    versions = [(v.split(":")[0], int(v.split(":")[1])) for v in art["info"]["versions"]]
    x, _ = test.batch(t["indices"])
    pairs = []
    for _ in range(CORRUPT_CHECK_N):
        v = int(torch.randint(len(versions), (1,), generator=g))
        i = int(torch.randint(n, (1,), generator=g))
        pairs.append((v, i, versions[v], _version_images(x, versions[v])[i:i + 1]))
    return t, problems, pairs


@torch.no_grad()
def _verify_corruptions(model, name: str, dataset: str, root, test, g: torch.Generator, rtol: float) -> list[str]:
    """Recompute CORRUPT_CHECK_N random (version, image) pairs of a shipped "corrupt" artifact (logits to
    ``rtol``; the best class must agree unless its margin is below that)."""
    t, problems, pairs = _corruption_pairs(model, name, "corrupt", dataset, root, test, g)
    for v, i, version, image in pairs:
        got = model(image).float()
        want = t["logits"][v, i:i + 1]
        if not torch.allclose(got, want, rtol=rtol, atol=1e-4):
            problems.append(f"corrupt {version} image {i}: logits differ by up to {float((got - want).abs().max()):.3e}")
    return problems


@torch.no_grad()
def _verify_corrupt_predictions(model, name: str, dataset: str, root, test, g: torch.Generator, rtol: float
                                ) -> list[str]:
    """Recompute CORRUPT_CHECK_N random (version, image) pairs of a shipped "corrupt-predictions" artifact: the
    same class unless the stored margin is below 1e-3, and the margin to ``rtol`` (float16: at least 1e-3)."""
    kind = "corrupt-predictions"
    t, problems, pairs = _corruption_pairs(model, name, kind, dataset, root, test, g)
    for v, i, version, image in pairs:
        prediction, margin = _top_two(model(image))
        shipped, want_margin = int(t["predictions"][v, i]), float(t["margin"][v, i])
        if int(prediction) != shipped and want_margin >= 1e-3:
            problems.append(f"{kind} {version} image {i}: class {int(prediction)}, shipped {shipped}")
        elif abs(float(margin) - want_margin) > max(rtol, 1e-3) * max(1.0, abs(want_margin)):
            problems.append(f"{kind} {version} image {i}: margin {float(margin):.4f}, shipped {want_margin:.4f}")
    return problems


@torch.no_grad()
def _verify_attacks(model, name: str, dataset: str, root, test, g: torch.Generator, rtol: float,
                    kind: str = "attack-l2") -> list[str]:
    """Check a shipped attack artifact (``kind``: "attack-l2" or "attack-hsj"): its images are the seeded subset,
    every stated distance is the L2 norm of its perturbation and no larger than the start's, the shipped logits
    put every attacked image in another class, and the model's logits on ATTACK_CHECK_N random adversarial
    images are the shipped ones (to ``rtol``)."""
    from . import evals

    t, _ = evals.load(evals.path_of(name, kind, dataset, root), model_sha256=model.manifest["sha256"])
    problems = _check_subset(t, test, kind)
    x, y = test.batch(t["indices"])
    found = ~(t["misclassified"] | t["failed"])
    norms = (t["x_adv"].double() - x.double()).flatten(1).norm(dim=1)
    if not torch.allclose(norms[found], t["distance"][found], rtol=1e-5, atol=1e-6):
        problems.append(f"{kind}: a stated distance is not the norm of its perturbation")
    if "start_distance" in t and bool((t["distance"][found] > t["start_distance"][found]).any()):
        problems.append(f"{kind}: a stated distance is larger than the attack's start")
    if bool((t["logits_adv"][found].argmax(1) == y[found]).any()):
        problems.append(f"{kind}: an adversarial image is classified correctly by the shipped logits")
    if float(t["x_adv"].min()) < 0 or float(t["x_adv"].max()) > 1:
        problems.append(f"{kind}: adversarial images outside [0, 1]")
    rows = found.nonzero().squeeze(1)
    for i in rows[torch.randperm(len(rows), generator=g)[:ATTACK_CHECK_N]].tolist():
        got = model(t["x_adv"][i:i + 1]).float()
        want = t["logits_adv"][i:i + 1]
        if not torch.allclose(got, want, rtol=rtol, atol=1e-4):
            problems.append(f"{kind} image {i}: logits differ by up to {float((got - want).abs().max()):.3e}")
    return problems


def _verify_artifacts(model, name: str, dataset: str, root, test, g: torch.Generator, rtol: float) -> list[str]:
    """The checks of the per-image artifacts a shipped model has (kinds in :data:`ARTIFACT_KINDS`)."""
    from . import evals

    def check(kind: str) -> list[str]:
        if kind == "corrupt":
            return _verify_corruptions(model, name, dataset, root, test, g, rtol)
        if kind == "corrupt-predictions":
            return _verify_corrupt_predictions(model, name, dataset, root, test, g, rtol)
        if kind == "attack-pgd":
            return _verify_pgd(model, name, dataset, root, test, g, rtol)
        if kind == "attack-transfer":
            return _verify_transfer(model, name, dataset, root, test, g, rtol)
        if kind == "faithfulness":
            return _verify_faithfulness(model, name, dataset, root, test, g, rtol)
        if kind == "sample-quality":
            return _verify_sample_quality(model, name, dataset, root, test, g, rtol)
        return _verify_attacks(model, name, dataset, root, test, g, rtol, kind=kind)

    def shipped(kind: str) -> bool:
        stem = evals.path_of(name, kind, dataset, root)
        return stem.with_name(stem.name + ".json").is_file()

    return [p for kind in ARTIFACT_KINDS if shipped(kind) for p in check(kind)]


def _commit(scratch: Path, name: str, dest: Path) -> None:
    """Move a published model from its scratch folder into place: the weights, then (the commit point) the
    manifest, so an interrupted publish leaves the old model intact."""
    os.replace(scratch / f"{name}.safetensors", dest.with_name(f"{name}.safetensors"))
    os.replace(scratch / f"{name}.json", dest.with_name(f"{name}.json"))


def _rewrite_info(dest: Path, info: dict) -> Path:
    json_path = dest.with_name(dest.name + ".json")
    manifest = json.loads(json_path.read_text())
    manifest["info"] = info
    checkpoints.atomic_write_text(json_path, json.dumps(manifest, indent=2))
    return json_path


def verify(name: str, dataset: str = "fashion-mnist", root: str | os.PathLike | None = None, test=None,
           subset: bool = False) -> dict:
    """Load shipped model ``name`` (sha256 checked) and recompute its figures on the test set.

    Returns ``{"manifest": <its test record>, "measured": <recomputed>}``; compare them yourself or use
    ``python -m gclib.zoo verify``. ``subset=True`` checks the fixed :func:`ci_subset` against the
    manifest's ``test_subset`` record instead (what the tests do for large models).
    """
    from . import data

    model = checkpoints.load(Path(root or checkpoint_root()) / dataset / name, device="cpu", verify=True)
    if test is None:
        test = data.load(dataset)[2]
    if model.manifest.get("kind") == "diffusion":  # a random sample of its shipped per-image results
        return _verify_diffusion(model, name, dataset, root, test)
    e = ZOO.get((dataset, name))
    abs_base = model.manifest.get("kind") == "abs" and "certified" in model.manifest["info"]
    if model.manifest.get("kind") == "abs" and not abs_base:
        return _verify_abs(model, name, dataset, root, test)
    key = "test_subset" if subset else "test"
    if subset and key not in model.manifest["info"]:
        raise CheckpointError(f"{name} has no test_subset record: run python -m gclib.zoo reevaluate --subset {name}")
    evaluate = evaluate_abs_base if abs_base else evaluate_model
    result = {"manifest": model.manifest["info"].get(key, {}),
              "measured": evaluate(model, ci_subset(test) if subset else test)}
    if e is not None and e.certify_sigma and "certified" in model.manifest["info"]:
        result["certify_problems"] = _verify_certified(model, name, dataset, root, test, e)
    import random

    seed = random.SystemRandom().randrange(2**31)
    artifact_problems = _verify_artifacts(model, name, dataset, root, test, torch.Generator().manual_seed(seed), 1e-4)
    if artifact_problems:
        result["artifact_problems"] = [f"{p} (sample seed {seed})" for p in artifact_problems]
    return result


def reevaluate(name: str, dataset: str = "fashion-mnist", root: str | os.PathLike | None = None, test=None,
               subset_only: bool = False) -> dict:
    """Recompute a shipped model's test record with today's definitions and write it into its manifest.

    For when a metric's definition changes (as bits/dim's evaluation point did in gclib 0.2): the weights
    and their sha256 are untouched, the old figures are kept under ``info.test_previous``. Returns the new
    test record. ``subset_only=True`` only writes the fixed-subset record ``info.test_subset``.
    """
    from . import data

    path = Path(root or checkpoint_root()) / dataset / name
    model = checkpoints.load(path, device="cpu", verify=True)
    if test is None:
        test = data.load(dataset)[2]
    from .train import evaluate

    info = dict(model.manifest["info"])
    if subset_only:  # add (or refresh) the fixed-subset record only; the full-test figures stay as they are
        info["test_subset"] = {**evaluate_model(model, ci_subset(test)), "subset_seed": EVAL_SEED}
        _rewrite_info(path, info)
        return info["test_subset"]
    previous = info.get("test", {})
    # Only evaluate()'s figures changed definition; the reconstruction errors are kept as measured.
    info["test"] = {**previous, **evaluate(model, test, batch_size=EVAL_BATCH, seed=EVAL_SEED),
                    "torch_threads": torch.get_num_threads()}
    info["test_previous"] = {k: previous[k] for k in ("n", "correct", "accuracy", "nll", "bits_per_dim")
                             if k in previous}
    _rewrite_info(path, info)
    return info["test"]


def _mismatches(result: dict) -> list[str]:
    if "problems" in result:  # the diffusion and ABS families' checks (_verify_diffusion, _verify_abs)
        return list(result["problems"])
    want, got = result["manifest"], result["measured"]
    problems = list(result.get("certify_problems", [])) + list(result.get("artifact_problems", []))
    for key in ("n", "correct"):
        if want.get(key) != got[key]:
            problems.append(f"{key}: manifest {want.get(key)}, measured {got[key]}")
    if "bits_per_dim" in got and round(want.get("bits_per_dim", math.nan), 3) != round(got["bits_per_dim"], 3):
        problems.append(f"bits/dim: manifest {want.get('bits_per_dim')}, measured {got['bits_per_dim']}")
    if "reconstruction_max_abs_error" in got:
        f32, f64 = got["reconstruction_max_abs_error"], got["reconstruction_max_abs_error_float64"]
        stated = want.get("reconstruction_max_abs_error", math.nan)
        if not f64 <= RECONSTRUCTION_TOLERANCE:
            problems.append(f"not invertible: reconstruction error {f64:.2e} in float64 > {RECONSTRUCTION_TOLERANCE}")
        # float32 rounding differs between machines and thread counts: only a factor of 10 is a change.
        if not (max(f32, stated) <= RECONSTRUCTION_TOLERANCE or stated / 10 <= f32 <= 10 * stated):
            problems.append(f"float32 reconstruction error {f32:.2e}, manifest {stated:.2e}")
    return problems


# -- the table ----------------------------------------------------------------------------------
def model_rows(dataset: str = "fashion-mnist", root: str | os.PathLike | None = None,
               smoothing_bases: bool = False, twins: bool = False) -> list[dict]:
    """One dict per shipped model, read from the manifests (nothing is evaluated).

    The noise-trained base models of randomized smoothing (``gc-sigma-*``) are left out unless
    ``smoothing_bases``: they are fine-tunes of small-zoo models for one analysis, not models of the zoo's
    comparisons (the smoothing chapter lists them). Longer-trained twins (``ZooEntry.twin_of``, e.g.
    ``gc-large-beta-inf-long``) are left out unless ``twins``: the table and the beta sweep compare models
    trained alike.
    """
    rows = []
    folder = Path(root or checkpoint_root()) / dataset
    for name in available(dataset, root):
        manifest = checkpoints.read_manifest(folder / name)
        info = manifest["info"]
        entry_ = ZOO.get((dataset, name))
        if not smoothing_bases and ("certified" in info or (entry_ is not None and entry_.certify_sigma)):
            continue
        if not twins and entry_ is not None and entry_.twin_of:
            continue
        test = info.get("test")
        if not test:
            raise CheckpointError(f"{manifest['_path']} has no test figures; ship models with "
                                  f"python -m gclib.zoo publish {name} --run RUN_DIR")
        rows.append({
            "name": name,
            "model": {"generative": "GC", "diffusion": "diffusion", "abs": "ABS"}.get(manifest["kind"])
            or manifest.get("feedforward", {}).get("arch", "DC"),
            "family": _family(manifest),
            "config": checkpoints.config_name(manifest) or "",  # "": a family without a gclib config
            "beta": info.get("beta"),
            "seed": info.get("seed"),
            "epochs": info.get("epochs"),
            "test_accuracy": test.get("accuracy"),
            "test_correct": test.get("correct"),
            "n_test": test.get("n"),
            "bits_per_dim": test.get("bits_per_dim"),
            "bits_per_dim_se": test.get("bits_per_dim_se"),
            "bits_per_dim_n": test.get("bits_per_dim_n", test.get("n")),
            "bits_per_dim_kind": test.get("bits_per_dim_kind", "exact" if manifest["kind"] == "generative" else None),
            "accuracy_se": test.get("accuracy_se"),
            "evaluations_per_image": test.get("evaluations_per_image", 1),
            "ms_per_image": test.get("ms_per_image"),
            "reconstruction_float32": test.get("reconstruction_max_abs_error"),
            "reconstruction_over_tolerance": test.get("reconstruction_images_over_1e-4"),
            "parameters": info.get("parameters"),
            "train_minutes": round(info["wall_time_s"] / 60, 1) if info.get("wall_time_s") else None,
            "device": info.get("device"),
            "threads": info.get("threads"),
            "dtype": manifest.get("dtype"),
            "history": info.get("history", []),
            "init_from": (info.get("init_from") or {}).get("zoo_name") or (info.get("init_from") or {}).get("path"),
            "own_training": own_training(info, name),
            **_lineage_totals(info),
        })
    rows += _score_rows(dataset, root, rows)
    return rows


def _score_rows(dataset: str, root, rows: list[dict]) -> list[dict]:
    """``model_rows`` rows of the score-based readings whose network and artifact are shipped: the network's
    training record with the artifact's figures."""
    from . import evals

    out = []
    for reading, network in SCORE_READINGS.items():
        stem = evals.path_of(network, "score", dataset, root)
        base = next((r for r in rows if r["name"] == network), None)
        if base is None or not stem.with_name(stem.name + ".json").is_file():
            continue
        rec = json.loads(stem.with_name(stem.name + ".json").read_text())["info"]
        out.append({**base, "name": reading, "model": "score", "family": "score", "test_accuracy": rec["accuracy"],
                    "test_correct": rec["correct"], "n_test": rec["n"], "bits_per_dim": rec["bits_per_dim"],
                    "bits_per_dim_se": rec["bits_per_dim_se"], "bits_per_dim_n": rec["bits_per_dim_n"],
                    "bits_per_dim_kind": rec["bits_per_dim_kind"], "accuracy_se": rec["accuracy_se"],
                    "evaluations_per_image": rec["evaluations_per_image"],
                    "ms_per_image": round(1000 * rec["seconds_per_image"]) if rec.get("seconds_per_image") else None})
    return out


def _lineage(info: dict) -> list[dict]:
    """A manifest's ``info`` followed by every ``init_from`` record nested in it: the model, then what it was
    warm-started from, and so on back to the stage trained from scratch."""
    nodes, node = [], info
    while node:
        nodes.append(node)
        node = node.get("init_from")
    return nodes


def own_training(info: dict, name: str) -> dict:
    """What zoo model ``name`` trained itself: ``{"epochs", "wall_time_s", "stages", "init_from"}`` summed over its
    manifest's ``info`` and its own earlier stages (the lineage's levels named ``name``), ``init_from`` the zoo
    model (or path) it was warm-started from, None for a model trained from scratch."""
    nodes = _lineage(info)
    own = 1 + next((i for i, n in enumerate(nodes[1:]) if n.get("zoo_name") != name), len(nodes) - 1)
    source = nodes[own] if own < len(nodes) else None
    return {"epochs": sum(n.get("epochs") or 0 for n in nodes[:own]),
            "wall_time_s": sum(n.get("wall_time_s") or 0.0 for n in nodes[:own]), "stages": own,
            "init_from": (source.get("zoo_name") or source.get("path")) if source else None}


def _warm_start_text(own: dict) -> str:
    """``table_models``' warm-start cell: "gc-large-beta-1 + 2 epochs", "(4 stages)" for a model continued
    from its own earlier stages, "" for one trained from scratch in one go."""
    stages = f" ({own['stages']} stages)" if own.get("stages", 1) > 1 else ""
    if own.get("init_from"):
        return f"{own['init_from']} + {own['epochs']} epochs{stages}"
    return stages.strip()


def _lineage_totals(info: dict) -> dict:
    """Epochs and training minutes of a model including every warm start it descends from."""
    nodes = _lineage(info)
    epochs, seconds = sum(n.get("epochs") or 0 for n in nodes), sum(n.get("wall_time_s") or 0.0 for n in nodes)
    return {"total_epochs": epochs, "total_train_minutes": round(seconds / 60, 1) if seconds else None}


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def _beta_key(beta) -> float:
    return math.inf if beta in ("inf", None) else float(beta)


def table_rows(rows: list[dict]) -> list[dict]:
    """The ``table_models`` rows: one per released model (seed 0), seeds summarised as mean ± std.

    Models of a named variant config (``fashion-mnist-small``, ``fashion-mnist-large``) are rows of their
    own, labelled by it; a DC's config only fixes its input shape and is not shown.
    """
    out = []

    def config_of(r):
        return r.get("config") or ""

    def order(r):  # IB-INN GCs first (the small zoo, the default config, the other variants), the other GC
        kind = variant(config_of(r))  # families, then the DCs
        family = {"GC": 0, "diffusion": 1, "score": 2, "ABS": 3}.get(r["model"], 4)
        return family, variant_rank(kind), kind, _beta_key(r["beta"]), r.get("name", "")

    released = sorted((r for r in rows if r["seed"] == 0), key=order)

    def recipe(r):  # models that differ only in their seed share a row
        return r["model"], r["beta"], config_of(r), re.sub(r"-seed\d+$", "", r.get("name", ""))

    for r in released:
        same = [s for s in rows if recipe(s) == recipe(r)]
        other = r.get("name", "")[len(r["model"]) + 1:] if r.get("name", "").startswith(r["model"] + "-") else ""
        acc = [100 * s["test_accuracy"] for s in same]
        bpd = [s["bits_per_dim"] for s in same if s["bits_per_dim"] is not None]
        acc_mean, acc_std = _mean_std(acc)
        if r["model"] == "GC":
            label = "GC (IB-INN)" + (f", {variant(config_of(r))}" if variant(config_of(r)) else "")
        elif r["model"] == "diffusion":
            label = "GC (diffusion, Li et al.'s rule)"
        elif r["model"] == "score":
            label = "GC (score-based: the diffusion network's ODE likelihood; its weights, so its training)"
        elif r["model"] == "ABS":
            label = "GC (ABS, a VAE per class)"
        else:
            label = f"DC ({r['model']}{', ' + other if other else ''})"
        generative = r["model"] in ("GC", "diffusion", "score", "ABS")
        row = {
            "model": label,
            "beta": r["beta"] if r["model"] == "GC" else "",
            "test_accuracy_pct": round(100 * r["test_accuracy"], 2),
            "accuracy_se_pct": round(100 * (r.get("accuracy_se") or math.sqrt(
                r["test_accuracy"] * (1 - r["test_accuracy"]) / r["n_test"])), 2) if r.get("n_test") else "",
            "n_test": r.get("n_test"),
            "bits_per_dim": round(r["bits_per_dim"], 3) if r["bits_per_dim"] is not None else "",
            "bits_per_dim_kind": (r.get("bits_per_dim_kind") or "") + (
                f", {r['bits_per_dim_n']} images, SE {r['bits_per_dim_se']:.3f}" if r.get("bits_per_dim_se") else ""),
            "evaluations_per_image": round(r["evaluations_per_image"]) if generative else 1,
            "ms_per_image": r.get("ms_per_image") or "",
            "seeds": len(same),
            "accuracy_mean_pct": round(acc_mean, 2) if len(same) > 1 else "",
            "accuracy_std_pct": round(acc_std, 2) if len(same) > 1 else "",
            "bits_per_dim_mean": round(_mean_std(bpd)[0], 3) if len(bpd) > 1 else "",
            "bits_per_dim_std": round(_mean_std(bpd)[1], 3) if len(bpd) > 1 else "",
            "reconstruction_error_float32": f"{r['reconstruction_float32']:.1e}"
            if r["reconstruction_float32"] is not None else "",
            "reconstruction_images_over_1e-4": r["reconstruction_over_tolerance"]
            if r["reconstruction_over_tolerance"] is not None else "",
            "parameters": r["parameters"],
            "train_minutes": r.get("total_train_minutes") or r["train_minutes"],
            "train_device": f"{r['device']} ({r['threads']} thread{'s' if r['threads'] != 1 else ''})"
            if r["device"] == "cpu" else r["device"],
            "epochs": r.get("total_epochs") or r["epochs"],
            "warm_start": _warm_start_text(r.get("own_training") or {}),
            "config": config_of(r),
            "paper_imagenet_top1_pct": PAPER_IMAGENET_TOP1.get(r["beta"], "") if r["model"] == "GC"
            else "" if r["model"] in ("diffusion", "score", "ABS") else PAPER_IMAGENET_TOP1["resnet"],
            "paper_equivalent_beta": _paper_beta(r["beta"]) if r["model"] == "GC" else "",
            "paper_imagenet_top1_equivalent_pct": PAPER_IMAGENET_TOP1.get(_paper_beta(r["beta"]), "")
            if r["model"] == "GC" else "",
        }
        out.append(row)
    return out


def variant_rank(kind: str) -> int:
    """Where a config variant's models go in tables and figures: the small zoo, the default config, the rest.

    >>> sorted(["large", "", "small"], key=variant_rank)
    ['small', '', 'large']
    """
    return {"small": 0, "": 1, "default": 1}.get(kind, 2)


def variant(config_name: str) -> str:
    """The variant a config names beside its dataset's default: ``fashion-mnist-large`` -> ``large``.

    >>> variant("fashion-mnist-large"), variant("fashion-mnist-small"), variant("fashion-mnist")
    ('large', 'small', '')
    """
    from .configs import dataset_of

    return config_name[len(dataset_of(config_name)) + 1:] if config_name else ""


def _paper_beta(beta: str) -> str:
    """The paper's beta (ImageNet) with the same per-image weight on the class term as ``beta`` here.

    >>> _paper_beta("1536"), _paper_beta("8"), _paper_beta("inf")
    ('8', '0.0417', 'inf')
    """
    from .plotting import PAPER_BETA_FACTOR

    if beta == "inf":
        return "inf"
    value = float(beta) / PAPER_BETA_FACTOR
    return f"{value:g}" if value == int(value) else f"{value:.3g}"


TABLE_HEADERS = {
    "model": "model", "beta": "β", "test_accuracy_pct": "test acc. (%)", "accuracy_se_pct": "acc. SE (%)",
    "n_test": "test images", "bits_per_dim": "bits/dim", "bits_per_dim_kind": "bits/dim is",
    "evaluations_per_image": "network evaluations per image", "ms_per_image": "ms per image (CPU, when measured)",
    "seeds": "seeds", "accuracy_mean_pct": "acc. mean (%)", "accuracy_std_pct": "acc. std",
    "bits_per_dim_mean": "bits/dim mean", "bits_per_dim_std": "bits/dim std",
    "reconstruction_error_float32": "max. reconstruction error, float32",
    "reconstruction_images_over_1e-4": "test images with error > 1e-4, float32", "parameters": "parameters",
    "train_minutes": "training steps (min, with the warm start's)", "train_device": "trained on",
    "epochs": "epochs (with the warm start's)",
    "warm_start": "warm start (then epochs at this β)",
    "config": "config",
    "paper_imagenet_top1_pct": "paper, ImageNet top-1 at the same β (%)",
    "paper_equivalent_beta": "paper's β with the same per-image weight (β / 192)",
    "paper_imagenet_top1_equivalent_pct": "paper, ImageNet top-1 at that β (%)",
}


def write_table(rows: list[dict], folder: str | os.PathLike, stem: str = "table_models") -> tuple[Path, Path]:
    """Write ``rows`` as ``folder/stem.csv`` and a Markdown table ``folder/stem.md``."""
    from . import plotting

    return plotting.save_table(rows, stem, folder, headers=TABLE_HEADERS)


# -- CLI ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gclib.zoo", description="List, retrain, publish and verify "
                                "the shipped models (checkpoints/<dataset>/).")
    p.add_argument("--dataset", default="fashion-mnist")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the zoo's models, whether shipped, and their test figures")
    t = sub.add_parser("train", help="retrain a zoo model with its recorded arguments")
    t.add_argument("name")
    t.add_argument("--out", help="run folder (default runs/<dataset>/<name>)")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--device")
    rt = sub.add_parser("retrain", help="train and publish every zoo model (or NAMES), --jobs at a time, each after "
                        "the model it is warm-started from (make retrain-zoo)")
    rt.add_argument("names", nargs="*", help="default: every zoo model")
    rt.add_argument("--jobs", type=int, default=1, help="models trained at once, each with cores/jobs threads")
    rt.add_argument("--runs", default="runs/zoo", help="folder of the training runs and their logs")
    rt.add_argument("--plan", action="store_true", help="print the schedule the shipped models' measured training "
                    "times give, and train nothing")
    pb = sub.add_parser("publish", help="evaluate a finished run and ship it as checkpoints/<dataset>/<name>")
    pb.add_argument("name")
    pb.add_argument("--run", required=True, help="the training run folder")
    cv = sub.add_parser("convert", help="store shipped models again with their trainable weights in another dtype "
                        "(float16 halves a file; re-evaluated, the training record kept)")
    cv.add_argument("names", nargs="+")
    cv.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    r = sub.add_parser("reevaluate", help="recompute shipped models' test figures and write them into their "
                       "manifests (after a change of a metric's definition; weights untouched)")
    r.add_argument("names", nargs="*", help="default: every shipped model")
    r.add_argument("--subset", action="store_true", help=f"only (re)write the record on the fixed {CI_SUBSET}-image "
                   "test subset the tests check")
    ev = sub.add_parser("evaluate", help="compute an evaluation artifact of a shipped model (what: "
                        f"{', '.join(EVALUATE_KINDS)})")
    ev.add_argument("name")
    ev.add_argument("--what", default="corrupt", choices=EVALUATE_KINDS)
    ev.add_argument("--jobs", type=int, default=1, help="worker processes for the attacks, the score-based "
                    "reading and diffusion-ood (one thread each); the artifact does not depend on it")
    ev.add_argument("--n", type=int, help=f"score: images of the seeded test subset (default {SCORE_N}); "
                    f"attack-pgd, attack-transfer: (default {PGD_N}); faithfulness: (default {FAITHFULNESS_N}); "
                    f"corrupt-predictions: (default {CORRUPT_FULL_N}); "
                    f"diffusion-ood: images per OoD set (default {OOD_N})")
    ev.add_argument("--partial", help="score, diffusion-ood, attack-pgd, attack-transfer: a folder keeping finished chunks, so an interrupted "
                    "run resumes")
    v = sub.add_parser("verify", help="recompute the test figures of shipped models and compare")
    v.add_argument("names", nargs="*", help="default: every shipped model")
    v.add_argument("--subset", action="store_true", help=f"check the fixed {CI_SUBSET}-image subset only (fast)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "list":
            shipped = set(available(args.dataset))
            for e in entries(args.dataset):
                line = f"{e.name:22s} {'shipped' if e.name in shipped else 'missing'}"
                if e.name in shipped:
                    test = checkpoints.read_manifest(checkpoint_root() / args.dataset / e.name)["info"].get("test", {})
                    line += f"  acc {test.get('accuracy', math.nan):.4f}"
                    if "bits_per_dim" in test:
                        line += f"  bits/dim {test['bits_per_dim']:.3f}"
                print(line)
        elif args.cmd == "train":
            e = entry(args.dataset, args.name)
            out = Path(args.out or f"runs/{args.dataset}/{e.name}")
            stages = e.commands(out)
            for k, stage in enumerate(stages, 1):
                if k < len(stages) and args.resume and (e.stage_dir(out, k) / "final.json").is_file():
                    continue  # this earlier stage finished in an earlier call
                cmd = [sys.executable, *stage]
                cmd += (["--resume"] if args.resume else []) + (["--device", args.device] if args.device else [])
                print(" ".join(cmd), file=sys.stderr)
                rc = subprocess.call(cmd)
                if rc:
                    return rc
            return 0
        elif args.cmd == "retrain":
            from . import retrain

            if not args.plan:
                return retrain.retrain(args.dataset, args.names, args.jobs, args.runs)
            schedule = retrain.plan(args.dataset, args.names, args.jobs)
            for row in schedule["rows"]:
                after = f"  (after {', '.join(row['depends_on'])})" if row["depends_on"] else ""
                print(f"{row['start_s'] / 3600:6.2f} h - {row['end_s'] / 3600:6.2f} h  {row['name']}{after}")
            print(f"{len(schedule['rows'])} models, {schedule['jobs']} at a time: {schedule['wall_s'] / 3600:.2f} h of "
                  f"training ({schedule['core_s'] / 3600:.2f} h one after another), from the shipped manifests' "
                  "measured times; evaluation at publish not included"
                  + (f"; no measured time for {', '.join(schedule['unknown'])}" if schedule["unknown"] else ""))
        elif args.cmd == "publish":
            path = publish(args.run, args.name, args.dataset)
            print(f"shipped {path}: {json.dumps(json.loads(path.read_text())['info']['test'])}")
        elif args.cmd == "convert":
            for name in args.names:
                path = convert(name, args.dtype, args.dataset)
                test = json.loads(path.read_text())["info"]["test"]
                print(f"{name}: {args.dtype}, {json.dumps({k: test[k] for k in ('accuracy', 'bits_per_dim') if k in test})}")
        elif args.cmd == "reevaluate":
            for name in args.names or available(args.dataset):
                test = reevaluate(name, args.dataset, subset_only=args.subset)
                print(f"{name}: {json.dumps({k: test[k] for k in ('accuracy', 'bits_per_dim') if k in test})}")
        elif args.cmd == "evaluate":
            print(f"wrote {evaluate_shipped(args.name, args.what, args.dataset, jobs=args.jobs, n=args.n, partial=args.partial)}")
        elif args.cmd == "verify":
            failed = 0
            for name in args.names or available(args.dataset):
                problems = _mismatches(verify(name, args.dataset, subset=args.subset))
                print(f"{name}: {'OK' if not problems else 'MISMATCH ' + '; '.join(problems)}")
                failed += bool(problems)
            return 1 if failed else 0
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
