"""Retrain the whole model zoo, several models at a time, in the order their warm starts allow.

``python -m gclib.zoo retrain --jobs 2`` (``make retrain-zoo``) trains and publishes every zoo entry
(``python -m gclib.zoo train NAME --resume``, then ``publish``), ``jobs`` at a time, each process with
``cores // jobs`` threads (one process per core with one thread each trained faster than one process with two
on the project's machine). A model that starts from another zoo model (``--init-from checkpoints/<dataset>/
<name>``: the large GCs' fine-tunes, the smoothing bases) waits until that model has been published again;
among the models that may start, the longest (by the shipped manifests' measured training times) goes first.
A failed model lets the running ones finish and starts no other; ``--resume`` (always passed) continues every
run from its last checkpoint, so calling it again picks up where it stopped.

``--plan`` prints the schedule that the measured times give, without training anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from .book import THREAD_VARS  # the variables a process's CPU threads are set through
from .errors import ConfigError

__all__ = ["dependencies", "estimated_seconds", "plan", "retrain"]


def dependencies(entry) -> list[str]:
    """The zoo models ``entry`` is warm-started from (``--init-from checkpoints/<dataset>/<name>``)."""
    args = [a for stage in entry.commands("OUT") for a in stage]
    prefix = f"checkpoints/{entry.dataset}/"
    return [args[i + 1][len(prefix):] for i, a in enumerate(args[:-1])
            if a == "--init-from" and args[i + 1].startswith(prefix)]


def estimated_seconds(entry, root=None) -> float | None:
    """Training seconds of ``entry``'s shipped model (its manifest's ``wall_time_s``, with those of its own earlier
    stages), or None if it is not shipped or did not record them. Evaluation at publish is not included."""
    from . import checkpoints
    from .zoo import checkpoint_root, own_training

    path = Path(root or checkpoint_root()) / entry.dataset / entry.name
    try:
        info = checkpoints.read_manifest(path)["info"]
    except Exception:  # noqa: BLE001 - not shipped, or unreadable: no estimate
        return None
    if info.get("wall_time_s") is None:
        return None
    return float(own_training(info, entry.name)["wall_time_s"])  # with its own earlier stages, not a warm start


def _selected(dataset: str, names) -> list:
    from .zoo import entries

    everything = entries(dataset)
    if not names:
        return everything
    known = {e.name: e for e in everything}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"not in the {dataset} zoo: {', '.join(unknown)}; `python -m gclib.zoo list` shows it")
    return [known[n] for n in names]


def _next(ready: list, estimate: dict) -> object:
    """Longest first; models without an estimate before all others (they may be the longest)."""
    return max(ready, key=lambda e: (estimate[e.name] is None, estimate[e.name] or 0.0, e.name))


def _ready(pending: list, done: set, selected: set) -> list:
    return [e for e in pending if all(d in done or d not in selected for d in dependencies(e))]


def _schedule(chosen: list, estimate: dict, jobs: int, start, next_done) -> tuple[set, int]:
    """The one scheduling loop of :func:`plan` (simulated) and :func:`retrain` (real).

    Starts ``chosen`` ``jobs`` at a time, each after the selected models it is warm-started from, the longest
    first; ``start(entry)`` starts one, ``next_done()`` waits for a started one to end and returns
    ``(entry, exit status)``. A failure starts no other model and lets the started ones end. Returns the names
    that ended with status 0 and the first failure's status (0 if none).
    """
    selected = {e.name for e in chosen}
    pending, done, running, failure = list(chosen), set(), 0, 0
    while pending or running:
        ready = [] if failure else _ready(pending, done, selected)
        while ready and running < jobs:
            e = _next(ready, estimate)
            ready.remove(e)
            pending.remove(e)
            start(e)
            running += 1
        if not running:
            if failure:
                break
            raise ConfigError(f"the zoo's warm starts form a cycle among {', '.join(e.name for e in pending)}")
        e, rc = next_done()
        running -= 1
        if rc:
            failure = failure or rc
        else:
            done.add(e.name)
    return done, failure


def plan(dataset: str = "fashion-mnist", names=None, jobs: int = 1, root=None) -> dict:
    """The schedule :func:`retrain` follows, simulated with the shipped models' measured training times.

    Returns ``{"jobs", "rows": [{"name", "start_s", "end_s", "depends_on"}], "wall_s", "core_s", "unknown"}``
    (``unknown``: models without a measured time, counted as 0 s).
    """
    import heapq

    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    chosen = _selected(dataset, names)
    estimate = {e.name: estimated_seconds(e, root) for e in chosen}
    selected = {e.name for e in chosen}
    by_name = {e.name: e for e in chosen}
    clock, ends, rows = [0.0], [], []

    def start(e) -> None:
        end = clock[0] + (estimate[e.name] or 0.0)
        heapq.heappush(ends, (end, e.name))
        rows.append({"name": e.name, "start_s": round(clock[0], 1), "end_s": round(end, 1),
                     "depends_on": [d for d in dependencies(e) if d in selected]})

    def next_done() -> tuple[object, int]:
        clock[0], name = heapq.heappop(ends)
        return by_name[name], 0

    _schedule(chosen, estimate, jobs, start, next_done)
    return {"jobs": jobs, "rows": rows, "wall_s": round(clock[0], 1),
            "core_s": round(sum(v or 0.0 for v in estimate.values()), 1),
            "unknown": sorted(n for n, v in estimate.items() if v is None)}


def _run_one(entry, out: Path, env: dict, log_path: Path) -> tuple[int, float]:
    start = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        for args in (["train", entry.name, "--out", str(out), "--resume"],
                     ["publish", entry.name, "--run", str(out)]):
            cmd = [sys.executable, "-m", "gclib.zoo", "--dataset", entry.dataset, *args]
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            if rc:
                return rc, time.perf_counter() - start
    return 0, time.perf_counter() - start


def retrain(dataset: str = "fashion-mnist", names=None, jobs: int = 1, runs: str | os.PathLike = "runs/zoo",
            log=print) -> int:
    """Train and publish the zoo's models (``names``: default all), ``jobs`` at a time (see the module's text).

    Each model trains in ``runs/<name>`` and logs to ``runs/logs/<name>.log``; ``runs/retrain-timings.json``
    records every model's wall time and the whole run's. Returns 0, or the first failed command's exit status.
    """
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    chosen = _selected(dataset, names)
    estimate = {e.name: estimated_seconds(e) for e in chosen}
    runs = Path(runs)
    env = dict(os.environ)
    if jobs > 1:
        env.update({v: str(max(1, (os.cpu_count() or 1) // jobs)) for v in THREAD_VARS})
    timings, started = {}, [0]
    wall = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:  # threads only wait for the training processes
        running = {}

        def start(e) -> None:
            started[0] += 1
            log(f"start {e.name} ({started[0]}/{len(chosen)}): log {runs / 'logs' / e.name}.log")
            running[pool.submit(_run_one, e, runs / e.name, env, runs / "logs" / f"{e.name}.log")] = e

        def next_done() -> tuple[object, int]:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            f = next(iter(finished))
            e = running.pop(f)
            rc, seconds = f.result()
            timings[e.name] = {"seconds": round(seconds, 1), "rc": rc}
            if rc:
                log(f"FAILED {e.name} (exit status {rc}) after {seconds:.0f} s: see {runs / 'logs' / e.name}.log; "
                    "no further model starts")
            else:
                log(f"done {e.name} in {seconds:.0f} s")
            return e, rc

        done, failure = _schedule(chosen, estimate, jobs, start, next_done)
    record = {"dataset": dataset, "jobs": jobs, "wall_s": round(time.perf_counter() - wall, 1), "models": timings}
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "retrain-timings.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"{len(done)} of {len(chosen)} models retrained and published in {record['wall_s'] / 3600:.2f} h")
    return failure
