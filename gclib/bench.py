"""Throughput and memory benchmark: ``python -m gclib.bench --config fashion-mnist``.

Measures, on real-shaped random inputs: training images/s (forward + IB loss + backward + Adam step),
evaluation images/s (all-class log-likelihoods under ``torch.no_grad``) and the peak memory of the
process (CPU: peak resident set size; CUDA: peak allocated). Each figure is the median over
``--repeats`` timed windows after a warm-up, because shared 2-core machines are noisy. Prints JSON
and writes it to ``--json`` if given.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from .checkpoints import environment
from .configs import get_config
from .model import GenerativeClassifier
from .train import default_device, ib_loss

__all__ = ["benchmark", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_rate(fn, images_per_call: int, calls: int, repeats: int, device: torch.device) -> tuple[float, list]:
    rates = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        rates.append(images_per_call * calls / (time.perf_counter() - start))
    return statistics.median(rates), [round(r) for r in rates]


def benchmark(config: str = "fashion-mnist", device=None, batch_size: int | None = None, eval_batch_size: int = 500,
              steps: int = 10, repeats: int = 5, beta: float = 8.0) -> dict:
    """Training and evaluation throughput of a freshly initialised GC of ``config`` on ``device``."""
    device = torch.device(device) if device else default_device()
    cfg = get_config(config)
    batch_size = batch_size or cfg.train.batch_size
    model = GenerativeClassifier.from_config(cfg, seed=0).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    shape = cfg.model.input_shape
    x = torch.rand(batch_size, *shape, device=device)
    y = torch.randint(0, cfg.model.num_classes, (batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step():
        cll, _ = model._class_log_likelihoods(x)
        loss, _, _ = ib_loss(cll, model.head.log_prior, y, beta, model.n_dims)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()

    x_eval = torch.rand(eval_batch_size, *shape, device=device)

    @torch.no_grad()
    def eval_step():
        model._class_log_likelihoods(x_eval)

    model.train()
    for _ in range(3):
        train_step()
    train_rate, train_runs = _median_rate(train_step, batch_size, steps, repeats, device)
    model.eval()
    eval_step()
    eval_rate, eval_runs = _median_rate(eval_step, eval_batch_size, max(1, steps // 3), repeats, device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        peak_kind = "cuda max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        peak_kind = "process peak RSS"
    return {
        "config": cfg.name,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_images_per_s": round(train_rate),
        "train_images_per_s_runs": train_runs,
        "eval_images_per_s": round(eval_rate),
        "eval_images_per_s_runs": eval_runs,
        "peak_memory_gib": round(peak / 2**30, 3),
        "peak_memory_kind": peak_kind,
        "environment": environment(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gclib.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="fashion-mnist")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--batch-size", type=int, help="training batch (default: the config's)")
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--steps", type=int, default=10, help="training steps per timed window")
    p.add_argument("--repeats", type=int, default=5, help="timed windows; the median is reported")
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)
    result = benchmark(args.config, args.device, args.batch_size, args.eval_batch_size, args.steps, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
