"""``make gpu-check``: one prepared command for a lent CUDA machine, at most about 8 minutes.

Steps, each with its own time limit, each recorded in one JSON file whether it passes or not:

1. the CUDA-only tests (``pytest -m`` is not needed: they skip themselves without CUDA, so the command
   runs the test files that contain them);
2. the benchmark suite on the GPU (``python -m gclib.bench --suite``): GC and ResNet DC images/s and
   memory, rows added to ``figures/table_throughput.*``;
3. a short fixed-budget training run of the strong config (``fashion-mnist-large``, beta = 1, bf16,
   ``--max-steps``) with the test-set evaluation, so a session sees what a GPU does for the zoo's
   training before it plans ``make retrain-zoo`` there.

Usage::

    python -m gclib.gpu_check --out runs/gpu-check.json [--train-steps 3000]

Without CUDA it stops at once with one clear error (exit code 2) and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

__all__ = ["steps", "main"]

# Test files holding CUDA-only tests (skipped without CUDA); kept short so the step fits its limit.
CUDA_TESTS = ("tests/test_robust.py", "tests/test_amp.py", "tests/test_bench.py")


def steps(out: Path, train_steps: int) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in s) of every step."""
    py = sys.executable
    run = out.parent / "gpu-check-train"
    return [
        ("cuda_tests", [py, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *CUDA_TESTS], 150),
        ("bench", [py, "-m", "gclib.bench", "--suite", "--device", "cuda", "--json", str(out.parent / "bench.json")],
         150),
        ("train_large", [py, "-m", "gclib.train", "--config", "fashion-mnist-large", "--beta", "1", "--device", "cuda",
                         "--amp", "--batch-size", "256", "--epochs", "100", "--max-steps", str(train_steps),
                         "--out", str(run), "--eval-test", "--no-progress"], 180),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gclib.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/gpu-check.json")
    p.add_argument("--train-steps", type=int, default=3000)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: gpu-check needs a CUDA device and none is visible (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": {}}
    failed = 0
    for name, cmd, limit in steps(out, args.train_steps):
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-4000:]
        except subprocess.TimeoutExpired as err:
            rc, tail = "timeout", ((err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes)
                                   else (err.stdout or ""))[-4000:]
        report["steps"][name] = {"command": cmd, "returncode": rc, "seconds": round(time.perf_counter() - start, 1),
                                 "output_tail": tail}
        failed += rc != 0
        out.write_text(json.dumps(report, indent=2))  # after every step: a killed run keeps what it did
        print(f"{name}: rc={rc} in {report['steps'][name]['seconds']} s", file=sys.stderr)
    final = out.parent / "gpu-check-train" / "final.json"
    if final.exists():
        report["train_large_result"] = json.loads(final.read_text())["info"]
        out.write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
