"""Throughput and memory benchmark of a GC beside its ResNet DC: ``python -m gclib.bench --config fashion-mnist``.

For one config, device and batch size, both models are built fresh (seed 0) and timed on random inputs
of the config's shape:

- training images/s: forward, loss (the IB loss for the GC, cross-entropy for the DC), backward,
  gradient clipping and an optimizer step (the config's optimizer, fused as in ``gclib.train``);
- evaluation images/s: the GC's log-likelihoods of all classes (the DC's logits) under ``no_grad``;
- peak memory of training: on CUDA the peak of ``torch.cuda.max_memory_allocated`` (weights, gradients,
  optimizer state and activations); on the CPU the peak resident memory above the process's memory
  before the model was built (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``).

The DC is the torchvision ResNet that ``FeedForwardClassifier`` builds for the config: ResNet-18 below
64 px (with the model zoo's stride-2 stem unless ``--dc-stem-stride 1``), ResNet-50 for ImageNet; the
ratio GC/DC of the two throughputs is reported. Each rate is the median over ``--repeats`` timed windows
after a warm-up; the process CPU time per image over the same windows (user + system of all threads, from
``time.process_time``, nanosecond resolution) is kept too, because on a shared machine the wall-clock rate
depends on the other jobs while the CPU time much less.

Results accumulate in ``FIGURES/table_throughput.json`` (one record per config x device x batch x
precision; re-running replaces the matching record), from which ``table_throughput.csv`` and ``.md`` are
rewritten, so CPU and GPU measurements can sit in one table. ``--suite`` runs the standard set for the
current device (what ``make bench`` runs): Fashion-MNIST at its training batch, and ImageNet at batch 2
on a CPU or at 32, 64 and 128 in bf16 on a GPU.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import gc as garbage
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoints import environment
from .configs import get_config
from .errors import ConfigError
from .model import FeedForwardClassifier, GenerativeClassifier
from .train import default_device, ib_loss, make_optimizer, optimizer_step, tune_cpu_allocator

__all__ = ["benchmark", "measure_model", "suite", "record_key", "merge_records", "load_records", "save_results",
           "plot_throughput",
           "table_rows", "TABLE_HEADERS", "main"]

TABLE_ID = "table_throughput"
FIGURE_ID = "fig_throughput"

#: Markdown column titles of ``table_rows`` (the CSV keeps the keys).
TABLE_HEADERS: dict[str, str] = {
    "config": "config",
    "device": "device",
    "batch_size": "train batch",
    "eval_batch_size": "eval batch",
    "precision": "precision",
    "gc_train_images_per_s": "GC train img/s",
    "dc_train_images_per_s": "DC train img/s",
    "train_ratio": "GC/DC train",
    "gc_eval_images_per_s": "GC eval img/s",
    "dc_eval_images_per_s": "DC eval img/s",
    "eval_ratio": "GC/DC eval",
    "gc_train_cpu_ms_per_image": "GC train CPU ms/img",
    "gc_eval_cpu_ms_per_image": "GC eval CPU ms/img",
    "gc_train_memory_mib": "GC train memory (MiB)",
    "dc_train_memory_mib": "DC train memory (MiB)",
    "memory_measure": "memory measured as",
    "dc": "DC",
    "load_1min": "load (1 min)",
    "torch": "torch",
    "commit": "gclib commit",
    "date": "date",
}


# -- machine description and memory --------------------------------------------------------------
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU {_cpu_name()}, {threads} thread{'s' if threads > 1 else ''}"


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_memory() -> None:
    # Give freed heap memory back to the OS (the allocator tuning keeps it otherwise), so that the next
    # model's peak is measured from the memory it really needs.
    garbage.collect()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class _PeakMemory:
    """Peak memory of a block: CUDA allocated bytes, or the resident set's high-water mark above its start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "CUDA peak allocated" if device.type == "cuda" else "peak RSS increase"

    def start(self) -> None:
        _release_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = 0
            return
        try:  # writing 5 resets VmHWM to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _status_kib("VmRSS") * 1024
        except (OSError, TypeError):
            self.kind, self.base = "process peak RSS", 0

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind == "process peak RSS":
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        return (_status_kib("VmHWM") * 1024 - self.base) / 2**20


# -- timing ---------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_windows(fn, images_per_call: int, calls: int, repeats: int, device: torch.device) -> dict:
    """Images/s in each of ``repeats`` windows of ``calls`` calls, and CPU ms per image over all windows."""
    rates = []
    # CPU time of the whole process (all threads, user + system) from CLOCK_PROCESS_CPUTIME_ID, with
    # nanosecond resolution: os.times() counts clock ticks (10 ms), more than a small window takes.
    cpu_start = time.process_time()
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        rates.append(images_per_call * calls / (time.perf_counter() - start))
    cpu_s = time.process_time() - cpu_start
    return {"images_per_s": statistics.median(rates), "runs": [round(r, 1) for r in rates],
            "cpu_ms_per_image": 1e3 * cpu_s / (images_per_call * calls * repeats)}


def measure_model(kind: str, config: str, device: torch.device, batch_size: int, eval_batch_size: int,
                  steps: int = 10, repeats: int = 5, warmup: int = 3, amp: bool = False,
                  channels_last: bool = False, compile: bool = False, dc_stem_stride: int = 2,
                  beta: float = 8.0) -> dict:
    """Training and evaluation throughput and training memory of one freshly built model.

    Args:
        kind: ``"gc"`` or ``"dc"``.
        config: a config name.
        device: where to run.
        batch_size: training images per step.
        eval_batch_size: images per evaluation call.
        steps: training steps per timed window (evaluation: a third as many calls, at least 1).
        repeats: timed windows; the median rate is reported.
        warmup: untimed training steps (and evaluation calls) first; with ``compile`` they include the
            compilation, whose time is reported as ``warmup_s``.
        amp: bfloat16 autocast.
        channels_last: NHWC memory format.
        compile: ``torch.compile`` the training and evaluation functions.
        dc_stem_stride: the DC's stem stride below 64 px.
        beta: the GC's IB trade-off in the loss (does not change the cost).

    Returns:
        A dict: ``train`` and ``eval`` (each ``images_per_s``, ``runs``, ``cpu_ms_per_image``),
        ``train_memory_mib``, ``memory_measure``, ``parameters``, ``arch``, ``warmup_s``.
    """
    cfg = get_config(config)
    memory = _PeakMemory(device)
    memory.start()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if kind == "gc":
        model = GenerativeClassifier.from_config(cfg, seed=0)
        arch = "GC"
    else:
        model = FeedForwardClassifier.from_config(cfg, seed=0, stem_stride=dc_stem_stride)
        arch = model.arch if cfg.model.image_size >= 64 else f"{model.arch}, stem stride {dc_stem_stride}"
    model = model.to(device=device, memory_format=memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, fused = make_optimizer(cfg.train.optimizer, params, 1e-4, cfg.train.weight_decay)
    generator = torch.Generator(device=device).manual_seed(0)
    shape = cfg.model.input_shape
    x = torch.rand(batch_size, *shape, device=device, generator=generator).contiguous(memory_format=memory_format)
    y = torch.randint(0, cfg.model.num_classes, (batch_size,), device=device, generator=generator)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)

    def loss_fn(x, y):
        if kind == "gc":
            cll, _ = model._class_log_likelihoods(x)
            return ib_loss(cll, model.head.log_prior, y, beta, model.n_dims)[0]
        return F.cross_entropy(model._logits(x), y)

    def scores(x):
        return model._class_log_likelihoods(x)[0] if kind == "gc" else model._logits(x)

    if compile:
        loss_fn, scores = torch.compile(loss_fn, dynamic=False), torch.compile(scores, dynamic=False)

    def train_step():
        with autocast:
            loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer_step(opt, grad_norm, fused)

    model.train()
    start = time.perf_counter()
    for _ in range(warmup):
        train_step()
    _sync(device)
    warmup_s = time.perf_counter() - start
    train = _timed_windows(train_step, batch_size, steps, repeats, device)
    train_memory = memory.peak_mib()

    model.eval()
    x_eval = torch.rand(eval_batch_size, *shape, device=device, generator=generator)
    x_eval = x_eval.contiguous(memory_format=memory_format)

    @torch.no_grad()
    def eval_step():
        with autocast:
            scores(x_eval)

    start = time.perf_counter()
    for _ in range(max(1, warmup // 3)):
        eval_step()
    _sync(device)
    warmup_s += time.perf_counter() - start
    evaluation = _timed_windows(eval_step, eval_batch_size, max(1, steps // 3), repeats, device)
    result = {"arch": arch, "parameters": sum(p.numel() for p in model.parameters()),
              "trainable_parameters": sum(p.numel() for p in params), "optimizer": cfg.train.optimizer,
              "train": train, "eval": evaluation, "train_memory_mib": round(train_memory, 1),
              "memory_measure": memory.kind, "warmup_s": round(warmup_s, 2)}
    return result  # the caller releases the memory once this frame (model, optimizer, inputs) is gone


def _precision(amp: bool, channels_last: bool, compile: bool) -> str:
    parts = ["bf16 autocast" if amp else "fp32"]
    if channels_last:
        parts.append("channels_last")
    if compile:
        parts.append("compiled")
    return ", ".join(parts)


def benchmark(config: str = "fashion-mnist", device=None, batch_size: int | None = None,
              eval_batch_size: int | None = None, steps: int = 10, repeats: int = 5, warmup: int = 3,
              amp: bool = False, channels_last: bool = False, compile: bool = False, dc: bool = True,
              dc_stem_stride: int = 2, beta: float = 8.0) -> dict:
    """Measure the GC of ``config`` and (with ``dc``) its ResNet DC at one batch size on ``device``.

    Args:
        config: a config name (``gclib.configs.config_names``).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA if available).
        batch_size: training batch (default: the config's).
        eval_batch_size: evaluation batch (default: 500 below 64 px, else the training batch).
        steps, repeats, warmup, amp, channels_last, compile, dc_stem_stride, beta: see ``measure_model``.
        dc: also measure the DC.

    Returns:
        One record: the settings, ``device``, ``gc`` and ``dc`` (``measure_model`` results), the GC/DC
        ratios ``train_ratio`` and ``eval_ratio``, the 1-minute load average, the date and
        ``environment`` (library versions and git commit).
    """
    device = torch.device(device) if device else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but torch.cuda.is_available() is False; use --device cpu")
    if device.type == "cpu":
        tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = get_config(config)
    batch_size = batch_size or cfg.train.batch_size
    eval_batch_size = eval_batch_size or (500 if cfg.model.image_size < 64 else batch_size)
    if min(batch_size, eval_batch_size, steps, repeats) < 1 or warmup < 0:
        raise ConfigError("batch sizes, steps and repeats must be >= 1 and warmup >= 0")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    options = dict(steps=steps, repeats=repeats, warmup=warmup, amp=amp, channels_last=channels_last,
                   compile=compile, dc_stem_stride=dc_stem_stride)
    gc_result = measure_model("gc", cfg.name, device, batch_size, eval_batch_size, beta=beta, **options)
    _release_memory()
    dc_result = measure_model("dc", cfg.name, device, batch_size, eval_batch_size, **options) if dc else None
    _release_memory()

    def ratio(part: str):
        return round(gc_result[part]["images_per_s"] / dc_result[part]["images_per_s"], 3) if dc_result else None

    return {
        "config": cfg.name,
        "device": _device_name(device),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
        "precision": _precision(amp, channels_last, compile),
        "amp": amp, "channels_last": channels_last, "compile": compile,
        "steps": steps, "repeats": repeats, "warmup": warmup,
        "gc": gc_result,
        "dc": dc_result,
        "train_ratio": ratio("train"),
        "eval_ratio": ratio("eval"),
        "load_1min": round(load, 2) if load is not None else None,
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "environment": environment(),
    }


# -- the standard set ---------------------------------------------------------------------------
def suite(device: torch.device) -> list[dict]:
    """The measurements ``make bench`` runs on ``device``: a list of ``benchmark`` keyword arguments.

    CPU: the small Fashion-MNIST model at its training batch (64), fp32, eager and (where a C++ compiler
    is on PATH) compiled, and the strong default in fp32; ImageNet at batch 2 (2 steps x 3 windows).
    CUDA: both Fashion-MNIST models in fp32 and in bf16 with channels_last; ImageNet in bf16 with channels_last at
    batches 32, 64 and 128, and in fp32 at 32.
    """
    if device.type == "cuda":
        fast = dict(amp=True, channels_last=True)
        return [dict(config="fashion-mnist-small"), dict(config="fashion-mnist-small", **fast),
                dict(config="fashion-mnist"), dict(config="fashion-mnist", **fast),
                *(dict(config="imagenet", batch_size=b, steps=5, repeats=3, **fast) for b in (32, 64, 128)),
                dict(config="imagenet", batch_size=32, steps=5, repeats=3)]
    compiled = [dict(config="fashion-mnist-small", compile=True)] if _cxx_compiler() else []
    return [dict(config="fashion-mnist-small"), *compiled, dict(config="fashion-mnist"),
            dict(config="imagenet", batch_size=2, eval_batch_size=2, steps=2, repeats=3, warmup=1)]


def _cxx_compiler() -> str | None:
    import shutil

    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


# -- results: JSON records -> table ---------------------------------------------------------------
def record_key(record: dict) -> tuple:
    """What makes two records the same measurement: config, device, batch sizes and precision."""
    return (record["config"], record["device"], record["batch_size"], record["eval_batch_size"], record["precision"])


def merge_records(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with each record of ``new`` replacing the one with the same ``record_key`` (else appended)."""
    merged = {record_key(r): r for r in old}
    for r in new:
        merged[record_key(r)] = r
    return sorted(merged.values(), key=lambda r: (r["device_type"] != "cpu", r["config"], r["device"],
                                                   r["batch_size"], r["precision"]))


def load_records(path: str | os.PathLike) -> list[dict]:
    """The records in a results JSON (``[]`` if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return data["records"] if isinstance(data, dict) else data


def _round(value, digits: int = 0):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return int(round(value)) if digits == 0 else round(value, digits)


def _significant(value, digits: int = 3):
    if value is None:
        return ""
    rounded = float(f"{value:.{digits}g}")
    return int(rounded) if abs(rounded) >= 10 ** (digits - 1) else rounded


def _commit() -> str:
    """The git commit of the code, with "+changes" when gclib's tracked files differ from it."""
    import subprocess

    commit = environment().get("git_commit") or ""
    try:
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                                 capture_output=True, text=True, timeout=10, cwd=Path(__file__).resolve().parent).stdout
    except (OSError, subprocess.SubprocessError):
        return commit
    return commit + ("+changes" if commit and changed.strip() else "")


def table_rows(records: list[dict]) -> list[dict]:
    """One row of ``table_throughput`` per record (keys: ``TABLE_HEADERS``)."""
    rows = []
    for r in records:
        gc, dc = r["gc"], r.get("dc") or {}
        dc_train, dc_eval = dc.get("train", {}), dc.get("eval", {})
        commit = r.get("commit") or r["environment"].get("git_commit") or ""
        rows.append({
            "config": r["config"],
            "device": r["device"],
            "batch_size": r["batch_size"],
            "eval_batch_size": r["eval_batch_size"],
            "precision": r["precision"],
            "gc_train_images_per_s": _significant(gc["train"]["images_per_s"]),
            "dc_train_images_per_s": _significant(dc_train.get("images_per_s")),
            "train_ratio": _significant(r.get("train_ratio")),
            "gc_eval_images_per_s": _significant(gc["eval"]["images_per_s"]),
            "dc_eval_images_per_s": _significant(dc_eval.get("images_per_s")),
            "eval_ratio": _significant(r.get("eval_ratio")),
            "gc_train_cpu_ms_per_image": _significant(gc["train"]["cpu_ms_per_image"]),
            "gc_eval_cpu_ms_per_image": _significant(gc["eval"]["cpu_ms_per_image"]),
            "gc_train_memory_mib": _round(gc["train_memory_mib"]),
            "dc_train_memory_mib": _round(dc.get("train_memory_mib")),
            "memory_measure": gc["memory_measure"],
            "dc": dc.get("arch", ""),
            "load_1min": _round(r.get("load_1min"), 2),
            "torch": r["environment"].get("torch", ""),
            "commit": commit[:10] + ("+changes" if commit.endswith("+changes") else ""),
            "date": r.get("date", ""),
        })
    return rows


def save_results(records: list[dict], folder: str | os.PathLike = "figures") -> tuple[Path, ...]:
    """Merge ``records`` into ``folder/table_throughput.json``, rewrite the table's CSV and Markdown and
    draw ``fig_throughput`` (``plot_throughput``) from all records.

    Returns:
        The paths of the JSON, CSV and Markdown files, then the figure's PNG and SVG.
    """
    from .checkpoints import atomic_write_text
    from .plotting import _plt, save_table, savefig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"{TABLE_ID}.json"
    merged = merge_records(load_records(json_path), records)
    atomic_write_text(json_path, json.dumps({"records": merged}, indent=1) + "\n")
    csv_path, md_path = save_table(table_rows(merged), TABLE_ID, folder, headers=TABLE_HEADERS)
    fig = plot_throughput(merged)
    figure_paths = savefig(fig, FIGURE_ID, folder)
    _plt().close(fig)
    return (json_path, csv_path, md_path, *figure_paths)


def plot_throughput(records: list[dict]):
    """Training and evaluation images/s of the GC and its DC, one panel per config and phase.

    One pair of horizontal bars (GC, DC) per record, labelled with device, batch and precision, on a
    linear axis from zero (each config has its own panels: their rates differ by orders of magnitude),
    with the GC/DC ratio written at the end of each pair.

    Args:
        records: benchmark records (``load_records`` / ``benchmark``).

    Returns:
        The matplotlib figure.
    """
    from .plotting import BETA_COLORS, DC_COLOR, figure

    if not records:
        raise ConfigError("no benchmark records to plot; run python -m gclib.bench first")
    configs = list(dict.fromkeys(r["config"] for r in records))
    most = max(sum(r["config"] == c for r in records) for c in configs)
    fig, axes = figure(ncols=2, nrows=len(configs), width=4.4, height=0.5 + 0.42 * most)
    for row, config in zip(axes, configs):
        mine = [r for r in records if r["config"] == config]
        labels = [f"{r['device']}, batch {r['batch_size']}, {r['precision']}" for r in mine]
        dc_name = next((r["dc"]["arch"].split(",")[0] for r in mine if r.get("dc")), "DC")
        y = list(range(len(mine)))
        for ax, phase in zip(row, ("train", "eval")):
            phase_name = {"train": "training", "eval": "evaluation"}[phase]
            gc_rates = [r["gc"][phase]["images_per_s"] for r in mine]
            dc_rates = [r["dc"][phase]["images_per_s"] if r.get("dc") else math.nan for r in mine]
            ax.barh([v - 0.2 for v in y], gc_rates, height=0.38, color=BETA_COLORS["8"], label="GC")
            ax.barh([v + 0.2 for v in y], dc_rates, height=0.38, color=DC_COLOR, label=dc_name)
            for v, gc_rate, dc_rate in zip(y, gc_rates, dc_rates):
                if not math.isnan(dc_rate):
                    ax.text(max(gc_rate, dc_rate) * 1.03, v, f"{gc_rate / dc_rate:.2f}x", va="center", fontsize=7)
            ax.set_xlim(0, 1.25 * max(gc_rates + [d for d in dc_rates if not math.isnan(d)]))
            ax.set_yticks(y, labels if phase == "train" else [""] * len(y), fontsize=7)
            ax.invert_yaxis()
            ax.set_xlabel(f"{phase_name} images/s")
            ax.set_title(f"{config}: {phase_name}")
            ax.grid(axis="y", visible=False)
        row[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, title="GC/DC at bar end",
                      title_fontsize=7)
    return fig


def _summary(record: dict) -> str:
    gc, dc = record["gc"], record.get("dc")
    line = (f"{record['config']} on {record['device']}, batch {record['batch_size']}, {record['precision']}: "
            f"GC train {gc['train']['images_per_s']:.1f} img/s ({gc['train']['cpu_ms_per_image']:.3f} CPU ms/img), "
            f"eval {gc['eval']['images_per_s']:.1f} img/s ({gc['eval']['cpu_ms_per_image']:.3f} CPU ms/img), "
            f"memory {gc['train_memory_mib']:.0f} MiB")
    if dc:
        line += (f"; DC ({dc['arch']}) train {dc['train']['images_per_s']:.1f}, eval {dc['eval']['images_per_s']:.1f} "
                 f"img/s, memory {dc['train_memory_mib']:.0f} MiB; GC/DC train {record['train_ratio']:.2f}, "
                 f"eval {record['eval_ratio']:.2f}")
    return line


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gclib.bench", description=__doc__.split("\n\n")[0],
                                epilog="Example (ImageNet memory on a GPU): python -m gclib.bench --config imagenet "
                                "--device cuda --batch-size 32,64,128 --amp --channels-last")
    p.add_argument("--config", default="fashion-mnist", help="config name (default %(default)s)")
    p.add_argument("--suite", action="store_true", help="run the standard set for this device (what make bench runs)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's, usually the core count)")
    p.add_argument("--batch-size", type=_int_list, help="training batch, or several: 32,64,128 (default: config's)")
    p.add_argument("--eval-batch-size", type=int, help="evaluation batch (default: 500 below 64 px, else the "
                   "training batch)")
    p.add_argument("--steps", type=int, default=10, help="training steps per timed window (default 10)")
    p.add_argument("--repeats", type=int, default=5, help="timed windows; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (log-dets and the Gaussian head stay float32)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (compile time not timed)")
    p.add_argument("--no-dc", action="store_true", help="measure the GC only")
    p.add_argument("--dc-stem-stride", type=int, choices=[1, 2], default=2,
                   help="the ResNet-18 DC's stem stride below 64 px (default 2, as the model zoo's)")
    p.add_argument("--figures", default="figures",
                   help="folder of table_throughput.{json,csv,md}, updated in place (default %(default)s)")
    p.add_argument("--no-table", action="store_true", help="do not update the table (print and --json only)")
    p.add_argument("--json", help="also write this run's records to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    if args.suite:
        runs = suite(device)
    else:
        common = dict(config=args.config, eval_batch_size=args.eval_batch_size, steps=args.steps,
                      repeats=args.repeats, warmup=args.warmup, amp=args.amp, channels_last=args.channels_last,
                      compile=args.compile, dc=not args.no_dc, dc_stem_stride=args.dc_stem_stride)
        runs = [dict(common, batch_size=b) for b in (args.batch_size or [None])]
    records = []
    try:
        for run in runs:
            record = benchmark(device=device, **run)
            print(_summary(record), file=sys.stderr)
            records.append(record)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(records, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    if not args.no_table:
        for path in save_results(records, args.figures):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
