"""The information-bottleneck loss and one plain training loop (also a CLI: ``python -m gclib.train``).

    L = L_X / (1 + beta) + beta * L_Y / (1 + beta)

with L_X = -log p(x) per dimension (nats, on dequantized inputs) and L_Y the cross-entropy of the class
posterior. beta = 0 trains a pure generative model, beta = inf pure cross-entropy (the feed-forward
equivalent of the same network). The loop reads top to bottom: data order and dequantization noise
are functions of (seed, epoch, step), so a seeded run on the CPU is deterministic and a run killed and
resumed from its last checkpoint ends with bit-identical weights.

Multi-GPU (or multi-process CPU) training uses PyTorch's DistributedDataParallel:

    torchrun --nproc_per_node=4 -m gclib.train --config imagenet --data-root /data/imagenet --beta 8 --out runs/in-b8

Each process takes ``--batch-size`` images a step (the effective batch is N times larger) from its own
shard of the epoch's seeded permutation (``shard_indices``: what ``DistributedSampler`` does); only rank 0
logs, evaluates and writes checkpoints, which load, and resume, on a single process.

Speed (see the book's scaling chapter and ``python -m gclib.bench``): the step makes no host sync (the
non-finite check runs on the device through the fused optimizer's ``found_inf``; losses are summed on
the device and read at logging intervals); ``amp`` runs the coupling subnetworks in bfloat16 with the
log-det and the Gaussian-mixture head in float32; ``channels_last`` and ``compile`` (``torch.compile``)
are options; the training DataLoader keeps its worker processes across epochs and pins memory on CUDA.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm  # text bars: tqdm.auto needs ipywidgets in notebooks and warns without them

from . import checkpoints
from .configs import Config, TrainConfig, config_names, dataset_of, get_config, override_model
from .data import ImageDataset, augment, collate, dequantize
from .errors import ConfigError, TrainingError
from .model import FeedForwardClassifier, GenerativeClassifier, evaluation_point, nats_to_bits_per_dim

__all__ = ["parse_beta", "ib_loss", "learning_rate", "fit", "evaluate", "shard_indices", "make_optimizer",
           "optimizer_step", "tune_cpu_allocator", "main"]


def parse_beta(beta) -> float:
    """beta as a float in [0, inf]; accepts numbers and strings such as "8" or "inf"."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise ConfigError(f"beta must be a number >= 0 or 'inf', got {beta!r}") from None
    if math.isnan(value) or value < 0:
        raise ConfigError(f"beta must be a number >= 0 or 'inf', got {beta!r}")
    return value


def beta_label(beta: float) -> str:
    return "inf" if math.isinf(beta) else f"{beta:g}"


def ib_loss(class_log_likelihoods: Tensor, log_prior: Tensor, labels: Tensor, beta: float, n_dims: int,
            label_smoothing: float = 0.0):
    """The IB-INN loss. Returns ``(loss, L_X, L_Y)``; L_X in nats per dim, L_Y in nats.

    ``label_smoothing`` replaces the one-hot target of L_Y by (1 - s) one-hot + s / C: the optimal
    log-posterior margin is then log((1 - s + s/C) / (s/C)) instead of unbounded, so the class term
    stops pushing the latents of a class ever further from the other classes' means (IB-INN: s = 0.01
    on MNIST, 0.02 on CIFAR-10).

    Arguments:
        class_log_likelihoods: log p(x|y), [B, C], nats.
        log_prior: log p(y), [C].
        labels: [B] int64.
        beta: in [0, inf]; 0 gives L_X alone, inf gives L_Y alone.
        n_dims: dimensions of x (to make L_X per dimension).
        label_smoothing: s in [0, 1) on the class term.
    """
    log_joint = class_log_likelihoods + log_prior
    l_x = -torch.logsumexp(log_joint, dim=1).mean() / n_dims
    # cross_entropy applies the log-softmax: the posterior
    l_y = F.cross_entropy(log_joint, labels, label_smoothing=label_smoothing)
    if math.isinf(beta):
        loss = l_y
    elif beta == 0:
        loss = l_x
    else:
        loss = (l_x + beta * l_y) / (1 + beta)
    return loss, l_x, l_y


def learning_rate(step: int, total_steps: int, base_lr: float, schedule: str = "onecycle",
                  warmup_fraction: float = 0.05, burn_in_steps: int = 0) -> float:
    """Learning rate at ``step`` (0-based): a pure function, so resuming needs only the step.

    ``onecycle``: linear warm-up over ``warmup_fraction`` of the run, then cosine decay to 0;
    ``cosine``: cosine decay from the start; ``constant``. During the first ``burn_in_steps`` the rate
    is divided by 10 (lets a deep flow settle before the full rate).
    """
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "constant":
        lr = base_lr
    elif schedule == "cosine":
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "onecycle":
        if progress < warmup_fraction:
            lr = base_lr * (progress / warmup_fraction)
        else:
            rest = (progress - warmup_fraction) / max(1 - warmup_fraction, 1e-12)
            lr = base_lr * 0.5 * (1 + math.cos(math.pi * rest))
        lr = max(lr, base_lr * 1e-3) if step < total_steps else lr
    else:
        raise ConfigError(f"unknown schedule {schedule!r}; use onecycle, cosine or constant")
    return lr / 10 if step < burn_in_steps else lr


class _Objective(nn.Module):
    """Model + loss in one module, so DistributedDataParallel sees one forward per step."""

    def __init__(self, model: nn.Module, beta: float, label_smoothing: float = 0.0):
        super().__init__()
        self.model, self.beta, self.label_smoothing = model, beta, label_smoothing
        self.generative = isinstance(model, GenerativeClassifier)

    def forward(self, x: Tensor, y: Tensor):
        if self.generative:
            cll, _ = self.model._class_log_likelihoods(x)
            loss, l_x, l_y = ib_loss(cll, self.model.head.log_prior, y, self.beta, self.model.n_dims,
                                     self.label_smoothing)
            logits = cll
        else:
            logits = self.model._logits(x)
            loss = l_y = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            l_x = torch.zeros((), device=x.device)
        correct = (logits.argmax(1) == y).sum()
        return loss, l_x.detach(), l_y.detach(), correct


def _loader(dataset: Dataset, sampler, batch_size: int, device: torch.device, num_workers: int,
            drop_last: bool, persistent: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=persistent and num_workers > 0,
        collate_fn=collate,
    )


class _EpochSampler(Sampler[int]):
    """The indices of the current epoch, set before each pass, so that one DataLoader (and its worker
    processes) serves the whole run; DataLoader re-reads the sampler whenever a pass starts."""

    def __init__(self):
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _default_workers(dataset: Dataset, world: int) -> int:
    # In-memory images are sliced a whole batch at a time (ImageDataset.__getitems__): worker processes
    # would only add copies. Files (ImageNet JPEGs) need decoding in parallel to keep a GPU fed.
    if isinstance(dataset, ImageDataset):
        return 0
    return min(8, max(1, (os.cpu_count() or 1) // world - 1))


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def shard_indices(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1, batch_size: int = 1) -> Tensor:
    """The image indices process ``rank`` of ``world`` trains on in ``epoch``, in order.

    The epoch's permutation of all ``n`` images (a function of seed and epoch) is dealt round-robin over
    the processes, as ``torch.utils.data.DistributedSampler`` does, and each share is cut to whole
    batches so that every process takes the same number of steps. Shares are disjoint; together they
    cover all but fewer than ``world * batch_size`` images of the epoch.

    Args:
        n: images in the training set.
        seed: the run's seed.
        epoch: 0-based epoch.
        rank: this process.
        world: number of processes.
        batch_size: images per step and process.

    Returns:
        int64 indices, ``(n // world) // batch_size * batch_size`` of them.
    """
    steps = (n // world) // batch_size
    return _epoch_order(n, seed, epoch)[rank::world][: steps * batch_size]


def _step_generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed * 7_919 + 1) * 1_000_003 + step)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Let glibc's malloc keep freed memory in the process instead of returning it to the OS at once.

    With its defaults, glibc gives large freed blocks back to the kernel (``munmap``, heap trimming) and
    the next tensor of the same size page-faults its memory in again. The profile of a Fashion-MNIST
    evaluation pass on the CPU spent over a third of its time in those page faults (kernel time). This
    sets ``M_MMAP_THRESHOLD`` to 32 MiB (the most glibc allows) and ``M_TRIM_THRESHOLD`` to 1 GiB, the
    in-process form of ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``; jemalloc or tcmalloc
    (``LD_PRELOAD``) do the same job. Numbers are unchanged; the process's resident memory after its
    peak stays higher. Process-wide and idempotent; ``fit``, ``evaluate`` and ``gclib.bench`` call it
    for CPU work. Set ``GCLIB_MALLOC_TUNING=0`` to leave malloc alone.

    Returns:
        True if the settings are in effect (glibc), else False.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if os.environ.get("GCLIB_MALLOC_TUNING", "1") == "0" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1 and libc.mallopt(m_mmap_threshold, 32 << 20) == 1
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED


def make_optimizer(name: str, params: list, lr: float, weight_decay: float = 0.0) -> tuple[torch.optim.Optimizer, bool]:
    """Adam or SGD (momentum 0.9, Nesterov), fused where PyTorch has a fused kernel for the parameters.

    The fused kernels update all tensors in one call (fewer kernel launches on a GPU, about half of
    Adam's time per step on the CPU) and accept a ``found_inf`` flag, which ``optimizer_step`` uses to
    skip a step on the device.

    Args:
        name: ``"adam"`` or ``"sgd"``.
        params: the parameters to train.
        lr: learning rate.
        weight_decay: L2 penalty.

    Returns:
        ``(optimizer, fused)``.
    """
    cls, kwargs = {
        "adam": (torch.optim.Adam, {}),
        "sgd": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    }.get(name, (None, None))
    if cls is None:
        raise ConfigError(f"unknown optimizer {name!r}; use adam or sgd")
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True, **kwargs), True
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or dtype
        return cls(params, lr=lr, weight_decay=weight_decay, **kwargs), False


def _warm_start(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load the weights of checkpoint ``path`` into ``model``; return its lineage record for the manifest."""
    checkpoints.load_into(model, path)
    return lineage_record(path, checkpoints.read_manifest(path))


def lineage_record(path: str | os.PathLike, manifest: dict) -> dict:
    """What a warm-started run records of its source checkpoint (``info.init_from``): where it was, its
    weights' sha256, its zoo name and training, and its own ``init_from`` (so the records nest)."""
    info = manifest.get("info", {})
    return {"path": str(path), "sha256": manifest.get("sha256"), "zoo_name": info.get("zoo_name"),
            "beta": info.get("beta"), "epochs": info.get("epochs"), "steps": info.get("steps"),
            "wall_time_s": info.get("wall_time_s"), "init_from": info.get("init_from")}


def _param_groups(model: nn.Module, weight_decay: float, head_lr_scale: float, head_weight_decay: float) -> list:
    """One group for the class means of a GC (own lr factor and weight decay), one for the rest."""
    head = getattr(model, "head", None) if isinstance(model, GenerativeClassifier) else None
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": rest, "weight_decay": weight_decay, "lr_scale": 1.0}]
    if head_ids:
        groups.append({"params": [p for p in head.parameters() if p.requires_grad],
                       "weight_decay": head_weight_decay, "lr_scale": head_lr_scale})
    return groups


def optimizer_step(opt: torch.optim.Optimizer, grad_norm: Tensor, fused: bool) -> Tensor:
    """``opt.step()`` unless ``grad_norm`` is non-finite, without reading the flag on the host.

    A fused optimizer gets the flag as ``found_inf`` (the attribute ``torch.amp.GradScaler`` sets): its
    kernel leaves parameters, moments and step counts untouched when the flag is 1, so no host sync is
    needed. Other optimizers, and a fused one before its first step (SGD initialises its momentum
    buffers then), read the flag on the host. Both ways give the same weights.

    Args:
        opt: the optimizer (its gradients are set).
        grad_norm: the total gradient norm, e.g. from ``clip_grad_norm_``.
        fused: whether ``opt`` was built with ``fused=True``.

    Returns:
        The 0-dim bool tensor ``isfinite(grad_norm)``, on the device.
    """
    finite = torch.isfinite(grad_norm)
    if fused and opt.state:
        opt.found_inf = (~finite).to(torch.float32)
        opt.step()
    else:
        opt.found_inf = None
        if finite:  # host sync
            opt.step()
    return finite


def _use_fused(opt: torch.optim.Optimizer, fused: bool) -> None:
    # A resumed optimizer takes the saved param_groups, including their 'fused' flag: restore ours, and
    # put fused Adam's step counters on the parameters' device, where its kernel reads them.
    for group in opt.param_groups:
        group["fused"], group["foreach"] = (True, None) if fused else (None, group.get("foreach"))
        for p in group["params"]:
            state = opt.state.get(p, {})
            if fused and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(p.device, torch.float32)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 500, device=None, seed: int = 0,
             progress: bool = False, num_workers: int = 0, amp: bool = False) -> dict:
    """Accuracy, label NLL and (for a GC) bits/dim of ``model`` on ``dataset``.

    Predictions use the images as given (like ``model.predict``); bits/dim is the mean of
    ``model.bits_per_dim(x, "seeded", seed)``: the images dequantized with uniform noise seeded per image
    by ``seed`` and its pixels (see ``gclib.model.evaluation_point``), so the figure is reproducible and
    independent of the batch size and order. Sums stay on the device (in float64) and are read once at the end.

    Args:
        model: a ``GenerativeClassifier`` or ``FeedForwardClassifier`` (or one wrapped in DDP).
        dataset: (image in [0, 1], label) pairs.
        batch_size: images per forward pass.
        device: where to run (default: the model's device).
        seed: seed of the dequantization noise.
        progress: show a progress bar.
        num_workers: DataLoader worker processes.
        amp: bfloat16 autocast (the GC's log-dets and Gaussian head stay float32).

    Returns:
        dict with ``n``, ``correct``, ``accuracy``, ``nll`` (nats) and, for a GC, ``bits_per_dim``.
    """
    model = getattr(model, "module", model)
    device = torch.device(device) if device else next(model.parameters()).device
    if device.type == "cpu":
        tune_cpu_allocator()
    was_training = model.training
    model.eval()
    generative = isinstance(model, GenerativeClassifier)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct, nll, bits/dim, n
    loader = _loader(dataset, None, batch_size, device, num_workers, drop_last=False)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
    for x, y in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        noise_input = evaluation_point(x, "seeded", seed) if generative else None
        bpd = sums.new_zeros(())
        with autocast:
            if generative:
                cll, _ = model._class_log_likelihoods(x.to(model.head.mu_fc.dtype))
                log_joint = cll + model.head.log_prior
                cll_deq, _ = model._class_log_likelihoods(noise_input.to(device, model.head.mu_fc.dtype))
                log_px = torch.logsumexp(cll_deq + model.head.log_prior, dim=1)
                bpd = nats_to_bits_per_dim(log_px, model.n_dims).double().sum()
            else:
                log_joint = model._logits(x).float()
        nll = F.cross_entropy(log_joint.double(), y, reduction="sum")
        correct = (log_joint.argmax(1) == y).sum()
        sums += torch.stack([correct.double(), nll, bpd, nll.new_full((), len(y))])
    correct, nll, bpd_sum, n = sums.tolist()
    correct, n = int(correct), int(n)
    model.train(was_training)
    result = {"n": n, "correct": correct, "accuracy": correct / max(n, 1), "nll": nll / max(n, 1)}
    if generative:
        result["bits_per_dim"] = bpd_sum / max(n, 1)
    return result


def _setup_distributed(device: torch.device) -> tuple[int, int, torch.device, bool]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device, False
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device, created


def _write_log(out: Path, row: dict) -> None:
    path = out / "log.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _read_log(out: Path) -> list[dict]:
    path = out / "log.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def fit(model: nn.Module, train: Dataset, val: Dataset | None = None, *, beta=8.0, epochs: int | None = None,
        out: str | os.PathLike | None = None, batch_size: int | None = None, lr: float | None = None,
        optimizer: str | None = None, weight_decay: float | None = None, schedule: str | None = None,
        warmup_fraction: float | None = None, grad_clip: float | None = None, burn_in_steps: int | None = None,
        augment_flip: bool | None = None, augment_shift: int | None = None, label_smoothing: float | None = None,
        input_noise: float | None = None, head_lr_scale: float | None = None, head_weight_decay: float | None = None,
        seed: int = 0, device=None,
        resume: bool = False, checkpoint_every: int | None = None,
        num_workers: int | None = None, amp: bool = False, channels_last: bool = False, compile: bool = False,
        progress: bool = True, log_every: int = 20,
        max_bad_steps: int = 20, max_steps: int | None = None, callback=None, test: Dataset | None = None,
        dataset_name: str | None = None, init_from: str | os.PathLike | None = None) -> list[dict]:
    """Train a GC with the IB loss (or a feed-forward model with cross-entropy); returns the epoch log.

    Arguments left unset (epochs, batch size, learning rate, optimizer, schedule, augmentation, ...) come
    from the model's config (``gclib.configs``).

    Args:
        model: a ``GenerativeClassifier`` or ``FeedForwardClassifier``.
        train, val: datasets of (image in [0, 1], label); ``val`` is evaluated after every epoch.
        beta: IB trade-off in [0, inf] (ignored for a feed-forward model).
        out: run folder for ``log.csv``, the training state (``last.json``) and ``final.{safetensors,json}``.
        resume: continue from ``out/last.json``; a fresh start if there is none.
        checkpoint_every: also save the training state every N steps (always at each epoch end).
        num_workers: DataLoader worker processes, kept across epochs (default: 0 for in-memory datasets,
            else up to 8 per process).
        amp: bf16 autocast (the coupling subnetworks in bf16; the GMM head and log-dets stay float32).
            Fast on GPUs; on a CPU only where it has bf16 instructions.
        channels_last: NHWC memory format for the convolutions (for GPUs; no gain measured on the CPU).
        compile: ``torch.compile`` the model and loss (minutes of compilation first; needs a C++ compiler
            on the CPU). Numbers differ from eager mode by float32 rounding only.
        augment_flip, augment_shift: random horizontal flips / translations (pixels) of training images.
        label_smoothing: smoothing of the class term L_Y (also of a feed-forward model's cross-entropy).
        input_noise: std of Gaussian noise added to the (dequantized) training images, [0, 1] scale.
        head_lr_scale, head_weight_decay: learning-rate factor and weight decay of the GC's class means
            (IB-INN trains them faster and without weight decay).
        log_every: steps between progress-bar updates; on a GPU also between the host reads of the
            running sums and of the non-finite-step counter (the step itself never waits for the GPU).
        max_bad_steps: consecutive non-finite steps (skipped, weights untouched) before giving up.
        max_steps: stop after this many steps in total (for smoke runs).
        callback: ``callback(step, loss)`` after every optimizer step (tests use it to simulate a crash).
        test: if given, evaluated at the end and recorded in the final manifest.
        init_from: warm start: a checkpoint (same config) whose weights start the run, with a fresh
            optimizer and schedule (e.g. fine-tuning one beta from a trained neighbour). Its name, beta,
            sha256 and training record are kept in the manifest (``info.init_from``, with the source's own
            lineage), so the zoo records how a model was made. Ignored when resuming a run.

    Raises:
        TrainingError: the loss stayed non-finite, or ``out`` holds another run and ``resume`` is off.
    """
    beta = parse_beta(beta)
    defaults = get_config(model.config.name).train if model.config.name in config_names() else None
    pick = lambda value, field, fallback: value if value is not None else getattr(defaults, field, fallback)  # noqa: E731
    epochs = pick(epochs, "epochs", 10)
    batch_size = pick(batch_size, "batch_size", 128)
    base_lr = pick(lr, "lr", 1e-3)
    optimizer_name = pick(optimizer, "optimizer", "adam")
    weight_decay = pick(weight_decay, "weight_decay", 0.0)
    schedule = pick(schedule, "schedule", "onecycle")
    warmup_fraction = pick(warmup_fraction, "warmup_fraction", 0.05)
    grad_clip = pick(grad_clip, "grad_clip", 10.0)
    burn_in_steps = pick(burn_in_steps, "burn_in_steps", 0)
    augment_flip = pick(augment_flip, "augment_flip", False)
    augment_shift = pick(augment_shift, "augment_shift", 0)
    label_smoothing = pick(label_smoothing, "label_smoothing", 0.0)
    input_noise = pick(input_noise, "input_noise", 0.0)
    head_lr_scale = pick(head_lr_scale, "head_lr_scale", 1.0)
    head_weight_decay = pick(head_weight_decay, "head_weight_decay", None)
    if head_weight_decay is None:
        head_weight_decay = weight_decay
    # Validated like a config (one clear error for a bad override).
    TrainConfig(label_smoothing=label_smoothing, input_noise=input_noise, head_lr_scale=head_lr_scale,
                head_weight_decay=head_weight_decay)
    if epochs < 1 or batch_size < 1 or not base_lr > 0:
        raise ConfigError(f"epochs, batch_size and lr must be positive, got {epochs}, {batch_size}, {base_lr}")

    device = torch.device(device) if device else default_device()
    rank, world, device, created_group = _setup_distributed(device)
    if device.type == "cpu":
        tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels once
    if num_workers is None:
        num_workers = _default_workers(train, world)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format).train()
    objective: nn.Module = _Objective(model, beta, label_smoothing)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device] if device.type == "cuda" else None)
    if compile:
        objective = torch.compile(objective, dynamic=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, fused = make_optimizer(optimizer_name, _param_groups(model, weight_decay, head_lr_scale, head_weight_decay),
                                base_lr, weight_decay)

    steps_per_epoch = (len(train) // world) // batch_size  # = len(shard_indices(...)) // batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"the training set ({len(train)} images over {world} process(es)) is smaller than "
                          f"one batch ({batch_size}); lower batch_size")
    total_steps = epochs * steps_per_epoch
    out = Path(out) if out else None
    step, start_epoch, start_batch, elapsed, history, record = 0, 0, 0, 0.0, [], {}
    if out:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        if (out / "last.json").exists():
            if not resume:
                raise TrainingError(f"{out} already holds a training run; resume it (resume=True / --resume) "
                                    "or choose another out folder")
            record = checkpoints.load_training_state(out, model, opt)
            _use_fused(opt, fused)
            step, start_epoch, start_batch = record["step"], record["epoch"], record["batch_in_epoch"]
            start_batch = _rebatch(start_batch, record.get("processes", 1), world, rank)
            elapsed = record.get("elapsed_s", 0.0)
            history = [row for row in _read_log(out) if row["epoch"] <= start_epoch]
            if rank == 0:
                print(f"resuming {out} at epoch {start_epoch + 1}, step {step}", file=sys.stderr)
    lineage = record.get("init_from")
    if init_from is not None and step == 0 and lineage is None:
        lineage = _warm_start(model, init_from)
    generative = isinstance(model, GenerativeClassifier)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
    sampler = _EpochSampler()
    loader = _loader(train, sampler, batch_size, device, num_workers, drop_last=True, persistent=True)
    check_every = _check_interval(device, log_every)

    def save_state(epoch: int, batch_in_epoch: int) -> None:
        if out and rank == 0:
            checkpoints.save_training_state(out, model, opt, {
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "beta": beta_label(beta),
                "init_from": lineage,
                "seed": seed, "processes": world, "elapsed_s": elapsed + time.perf_counter() - t_start})

    bad_run = torch.zeros((), dtype=torch.int64, device=device)  # consecutive non-finite steps
    bad_total = torch.zeros((), dtype=torch.int64, device=device)
    reported_bad, checked_step = 0, step

    def check_bad_steps(epoch: int) -> None:
        nonlocal reported_bad, checked_step
        run, total = int(bad_run), int(bad_total)  # host sync
        if total > reported_bad and rank == 0:
            steps = f"step {step}" if step == checked_step + 1 else f"steps {checked_step + 1}-{step}"
            tqdm.write(f"{steps}: {total - reported_bad} step(s) with a non-finite loss or gradient skipped, "
                       "weights untouched")
        reported_bad, checked_step = total, step
        if run > max_bad_steps:
            raise TrainingError(
                f"the loss was non-finite for {run} steps in a row (last at step {step}, epoch "
                f"{epoch + 1}); training stopped, the last good checkpoint in {out} is intact. Try a lower "
                "lr, a smaller affine clamp, more burn_in_steps or a stronger grad_clip"
            )

    for epoch in range(start_epoch, epochs):
        skip = start_batch if epoch == start_epoch else 0
        order = shard_indices(len(train), seed, epoch, rank, world, batch_size)
        sampler.indices = order[skip * batch_size :].tolist()
        # Sums of loss, L_X, L_Y, correct and images over the good steps, kept on the device.
        sums = torch.zeros(5, dtype=torch.float64, device=device)
        t_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                   disable=not progress or rank != 0, dynamic_ncols=True, mininterval=1.0)
        for batch_in_epoch, (x, y) in enumerate(loader, start=skip):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            generator = _step_generator(device, seed, step)
            if augment_flip or augment_shift:
                x = augment(x, generator, flip=augment_flip, max_shift=augment_shift)
            if generative:
                x = dequantize(x, generator).to(model.head.mu_fc.dtype)
            if input_noise:
                x = x + input_noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            current_lr = learning_rate(step, total_steps, base_lr, schedule, warmup_fraction, burn_in_steps)
            for group in opt.param_groups:
                group["lr"] = current_lr * group.get("lr_scale", 1.0)
            with autocast:
                loss, l_x, l_y, correct = objective(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            # A non-finite loss or gradient must not touch the weights: the step is skipped on the device.
            # Gradients are all-reduced first, so every process takes the same decision.
            finite = optimizer_step(opt, grad_norm, fused)
            n = len(y)
            batch_sums = torch.stack([loss.detach() * n, l_x * n, l_y * n, correct, correct.new_full((), n)]).double()
            sums += torch.where(finite, batch_sums, 0.0)
            bad_run = torch.where(finite, 0, bad_run + 1)
            bad_total += (~finite).long()
            step += 1
            bar.update(1)
            if step % check_every == 0:
                check_bad_steps(epoch)
            if step % log_every == 0 and bar.n and not bar.disable:
                s = sums.tolist()  # host sync, at logging intervals only
                seen = max(s[4], 1)
                bar.set_postfix(loss=f"{s[0] / seen:.3f}", acc=f"{s[3] / seen:.3f}", lr=f"{current_lr:.2g}")
            if callback is not None:
                callback(step, loss.detach())
            if checkpoint_every and step % checkpoint_every == 0:
                check_bad_steps(epoch)
                save_state(epoch, batch_in_epoch + 1)
            if max_steps and step >= max_steps:
                break
        bar.close()
        check_bad_steps(epoch)
        epoch_time = time.perf_counter() - t_start
        finished_epoch = not (max_steps and step >= max_steps and batch_in_epoch + 1 < steps_per_epoch)
        if rank == 0:
            totals = sums.tolist()
            seen = int(totals[4])
            s = [v / max(seen, 1) for v in totals[:4]]
            row = {"epoch": epoch + 1, "step": step, "lr": current_lr, "train_loss": s[0], "train_l_x": s[1],
                   "train_l_y": s[2], "train_accuracy": s[3], "epoch_time_s": epoch_time,
                   "train_images_per_s": seen * world / max(epoch_time, 1e-9)}
            if val is not None:
                metrics = evaluate(model, val, device=device, num_workers=num_workers, amp=amp)
                row.update({"val_accuracy": metrics["accuracy"], "val_nll": metrics["nll"]})
                if generative:
                    row["val_bits_per_dim"] = metrics["bits_per_dim"]
            history.append(row)
            if out:
                _write_log(out, row)
            if progress:
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                tqdm.write(json.dumps(shown))
        elapsed += epoch_time
        t_start = time.perf_counter()
        if finished_epoch:
            save_state(epoch + 1, 0)
        if world > 1:
            dist.barrier()
        if max_steps and step >= max_steps:
            break

    if out and rank == 0:
        info = {"beta": beta_label(beta) if generative else None, "seed": seed, "epochs": epochs, "steps": step,
                "batch_size": batch_size, "lr": base_lr, "optimizer": optimizer_name, "schedule": schedule,
                "init_from": lineage, "label_smoothing": label_smoothing, "input_noise": input_noise,
                "head_lr_scale": head_lr_scale,
                "head_weight_decay": head_weight_decay, "weight_decay": weight_decay,
                "augment_flip": augment_flip, "augment_shift": augment_shift,
                "wall_time_s": round(elapsed, 1),
                "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                "processes": world, "threads": torch.get_num_threads(), "n_train": len(train),
                "dataset": dataset_name or model.config.name, "amp": amp, "channels_last": channels_last,
                "compile": compile,
                "val": history[-1] if history else None}
        if test is not None:
            info["test"] = evaluate(model, test, device=device, num_workers=num_workers)
        checkpoints.save(model, out / "final", **info)
    if created_group:
        dist.destroy_process_group()
    return history


def _check_interval(device: torch.device, log_every: int) -> int:
    """Steps between host reads of the non-finite-step counter: every step on the CPU (a read costs
    nothing there), every ``log_every`` steps on a GPU (a read waits for all queued work)."""
    return 1 if device.type == "cpu" else max(1, log_every)


def _rebatch(batch_in_epoch: int, saved_world: int, world: int, rank: int) -> int:
    """Where to continue an epoch saved mid-way by ``saved_world`` processes, now run by ``world``."""
    if saved_world == world or batch_in_epoch == 0:
        return batch_in_epoch
    # The shards differ with the number of processes, so the rest of the epoch cannot be the exact
    # complement of what was seen: continue after as many images as were done in all.
    done = batch_in_epoch * saved_world // world
    if rank == 0:
        warnings.warn(f"resuming an epoch saved by {saved_world} process(es) on {world}: the epoch continues "
                      f"after batch {done} of this process's new share, so some images of this epoch may be "
                      "seen twice or not at all", stacklevel=3)
    return done


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gclib.train",
        description="Train an IB-INN generative classifier (or the ResNet baseline) with the information-"
        "bottleneck loss. Writes OUT/log.csv, the resumable training state OUT/last.json and the final model "
        "OUT/final.safetensors + OUT/final.json (load it with gclib.load('OUT/final')).",
        epilog="Multi-GPU: torchrun --nproc_per_node=N -m gclib.train ... (DistributedDataParallel; the "
        "batch size is per process).",
    )
    p.add_argument("--config", default="fashion-mnist",
                   help="named config: %(default)s (default: the strong IB-INN recipe, 3.2 M parameters), "
                        "fashion-mnist-small (the small model, minutes on a CPU), fashion-mnist-large, cifar10, "
                        "imagenet")
    p.add_argument("--model", choices=["gc", "resnet"], default="gc",
                   help="gc: the generative classifier (default); resnet: the torchvision ResNet baseline")
    p.add_argument("--arch", choices=["resnet18", "resnet34", "resnet50", "resnet20"],
                   help="--model resnet: the torchvision ResNet, or resnet20 (He et al.'s CIFAR ResNet, 0.27 M parameters) "
                        "(default: resnet18 below 64 px, else resnet50)")
    p.add_argument("--stem-stride", type=int, choices=[1, 2], default=1,
                   help="--model resnet on small images: stride of the 3x3 stem (2 is 4x cheaper; default 1)")
    p.add_argument("--beta", default="8", help="IB trade-off beta >= 0, or 'inf' for pure cross-entropy (default 8)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one architecture field of the config (gclib.configs.ModelConfig), e.g. "
                   "--set permutation=soft --set fc_blocks=1 --set stage_blocks=8,16; repeatable")
    p.add_argument("--epochs", type=int, help="epochs (default: the config's)")
    p.add_argument("--out", required=True, help="run folder for logs, checkpoints and the final model")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.json (fresh start if absent)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, data order and noise (default 0)")
    p.add_argument("--batch-size", type=int, help="images per step and process (default: the config's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the config's)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], help="default: the config's")
    p.add_argument("--weight-decay", type=float, help="default: the config's")
    p.add_argument("--schedule", choices=["onecycle", "cosine", "constant"], help="lr schedule (default: config's)")
    p.add_argument("--grad-clip", type=float, help="max gradient norm (default: the config's)")
    p.add_argument("--burn-in-steps", type=int, help="steps at lr/10 at the start (default: the config's)")
    p.add_argument("--augment-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips of training images (default: the config's)")
    p.add_argument("--augment-shift", type=int, help="random translations by up to N pixels (default: config's)")
    p.add_argument("--label-smoothing", type=float, help="label smoothing of the class term (default: config's)")
    p.add_argument("--input-noise", type=float, help="std of Gaussian noise on training images (default: config's)")
    p.add_argument("--head-lr-scale", type=float, help="lr factor of the class means (default: config's)")
    p.add_argument("--head-weight-decay", type=float, help="weight decay of the class means (default: config's)")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="warm start from a checkpoint of the same config (fresh optimizer and schedule; the "
                   "lineage is recorded in the manifest), e.g. checkpoints/fashion-mnist/gc-beta-8")
    p.add_argument("--checkpoint-every", type=int, help="also save the training state every N steps")
    p.add_argument("--max-steps", type=int, help="stop after N steps in total (smoke runs)")
    p.add_argument("--train-subset", type=int, help="train on a fixed random subset of N images")
    p.add_argument("--data-root", help="dataset folder (default: $GCLIB_DATA, then the dataset's defaults)")
    p.add_argument("--num-workers", type=int,
                   help="DataLoader worker processes per process, kept across epochs (default: 0 for Fashion-MNIST "
                   "and CIFAR-10, which are held in memory; up to 8 for ImageNet)")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast: subnetworks in bf16, log-dets and the Gaussian head in float32 (GPUs)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for the convolutions (GPUs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model and loss (compiles for minutes first; needs a C++ compiler on CPU)")
    p.add_argument("--eval-test", action="store_true", help="evaluate on the test set at the end (into final.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p


def main(argv: list[str] | None = None) -> int:
    from . import data

    args = _parser().parse_args(argv)
    try:
        config = get_config(args.config)
        if args.overrides:
            config = Config(override_model(config.model, args.overrides), config.train)
        beta = parse_beta(args.beta)
        dataset = dataset_of(config.name)
        train_set, val_set, test_set = data.load(dataset, root=args.data_root)
        if args.train_subset:
            train_set = train_set.subset(args.train_subset, seed=args.seed)
        if args.model == "gc":
            model = GenerativeClassifier.from_config(config, seed=args.seed)
        else:
            model = FeedForwardClassifier.from_config(config, seed=args.seed, arch=args.arch,
                                                      stem_stride=args.stem_stride)
        fit(model, train_set, val_set, beta=beta, epochs=args.epochs, out=args.out, batch_size=args.batch_size,
            lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay, schedule=args.schedule,
            grad_clip=args.grad_clip, burn_in_steps=args.burn_in_steps, augment_flip=args.augment_flip,
            augment_shift=args.augment_shift, label_smoothing=args.label_smoothing, input_noise=args.input_noise,
            head_lr_scale=args.head_lr_scale, head_weight_decay=args.head_weight_decay, seed=args.seed,
            device=args.device,
            resume=args.resume, checkpoint_every=args.checkpoint_every, num_workers=args.num_workers,
            amp=args.amp, channels_last=args.channels_last, compile=args.compile,
            progress=not args.no_progress, max_steps=args.max_steps,
            test=test_set if args.eval_test else None, dataset_name=dataset, init_from=args.init_from)
    except (ConfigError, TrainingError, checkpoints.CheckpointError, data.DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = checkpoints.read_manifest(Path(args.out) / "final")
    if manifest["info"].get("test"):
        test = manifest["info"]["test"]
        line = f"test accuracy {test['accuracy']:.4f} ({test['correct']}/{test['n']})"
        if "bits_per_dim" in test:
            line += f", test bits/dim {test['bits_per_dim']:.3f}"
        print(line)
    print(f"final model: {Path(args.out) / 'final.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
