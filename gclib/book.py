"""The book pipeline: every notebook run with papermill under a named parameter set, then the Jupyter Book.

The notebooks in ``notebooks/`` are jupytext percent-format sources. A *parameter set* (``paper``: the
full figures from the shipped models; ``smoke``: tiny, for the tests) in ``notebooks/params.yml`` lists
the runs in order: which notebook, the name of its executed copy and its parameters::

    python -m gclib.book run --params paper      # notebooks -> book/executed/, figures -> figures/
    python -m gclib.book build                   # jupyter-book build . (warnings are errors) -> _build/html
    python -m gclib.book all --params smoke --root /tmp/book --figures /tmp/book/figures

Notebooks run one after the other, in the parameter set's order, with every thread; ``--jobs N`` runs N at a
time (each kernel gets its share of the cores as threads), longest first by the last run's
``timings-<params>.json``: the book's notebooks do not read each other's outputs.
A notebook that fails stops the pipeline with a :class:`~gclib.errors.BookError` that names the notebook,
the run and the failing cell; its executed copy (with the traceback) stays in the executed folder.
The cells tagged ``parameters`` and papermill's ``injected-parameters`` are collapsed in the book.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import BookError

__all__ = ["REPO", "parameter_sets", "runs", "run_notebooks", "default_jobs", "build", "copy_sources", "main"]

REPO = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO / "notebooks" / "params.yml"
EXECUTED = "book/executed"
# Book sources copied by copy_sources(): everything Jupyter Book reads except the executed notebooks.
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")
# Figures that no notebook writes, because they are measurements of a machine (``make bench``) or of training
# runs that are not shipped (``make ablation``): copied with the sources, so that a book built elsewhere
# shows the repository's tables.
MEASURED_FIGURES = ("table_throughput.json", "table_throughput.csv", "table_throughput.md", "fig_throughput.png",
                    "fig_throughput.svg", "table_recipe_ablation.csv", "table_recipe_ablation.md")
HIDDEN_TAGS = {"parameters", "injected-parameters"}
# Seconds a notebook's kernel may take to start (papermill's default, 60, is too little beside a CPU-heavy job).
KERNEL_START_TIMEOUT_S = 600
# What a kernel's CPU threads are set through when notebooks run in parallel (torch reads OMP_NUM_THREADS).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def parameter_sets(path: str | os.PathLike = PARAMS_FILE) -> dict[str, list[dict]]:
    """The named parameter sets of ``notebooks/params.yml``: ``{name: [run, ...]}``."""
    import yaml

    with open(path) as f:
        sets = yaml.safe_load(f)
    if not isinstance(sets, dict):
        raise BookError(f"{path}: expected a mapping from parameter-set names to lists of runs")
    return sets


def runs(params: str, only: list[str] | None = None, path: str | os.PathLike = PARAMS_FILE) -> list[dict]:
    """The runs of parameter set ``params`` (restricted to the run names or notebooks in ``only``)."""
    sets = parameter_sets(path)
    if params not in sets:
        raise BookError(f"unknown parameter set {params!r}; {path} defines {', '.join(sets)}")
    selected = []
    for run in sets[params]:
        run = {"parameters": {}, **run}
        run.setdefault("name", run["notebook"])
        if only and run["name"] not in only and run["notebook"] not in only:
            continue
        if not (REPO / "notebooks" / f"{run['notebook']}.py").is_file():
            raise BookError(f"parameter set {params!r} names notebook {run['notebook']!r}, "
                            f"but notebooks/{run['notebook']}.py does not exist")
        selected.append(run)
    if only and not selected:
        raise BookError(f"--only {' '.join(only)} matches no run of parameter set {params!r}")
    return selected


def _declared_parameters(nb) -> dict:
    """``{name: default}`` of the notebook's ``parameters`` cell (defaults that are not literals: None)."""
    import ast

    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            declared = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign):
                    try:
                        default = ast.literal_eval(node.value)
                    except ValueError:
                        default = None
                    declared.update({t.id: default for t in node.targets if isinstance(t, ast.Name)})
            return declared
    raise BookError("the notebook has no cell tagged 'parameters'")


def _typed(value, default):
    """A command-line string read as the type of the parameter's default (``beta = "8"`` stays a string)."""
    import yaml

    if not isinstance(value, str) or isinstance(default, str):
        return value
    parsed = yaml.safe_load(value)
    if isinstance(default, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
        return float(parsed)
    return parsed


def _hide_parameter_cells(path: Path) -> None:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if HIDDEN_TAGS & set(tags) and "hide-cell" not in tags:
            tags.append("hide-cell")
    nbformat.write(nb, path)


def default_jobs() -> int:
    """Notebooks run at once by default: 2 where there are at least 2 cores (one thread each), else 1.

    Measured on the project's 2-core machine, same checkout (925a96c), fresh roots, the paper notebooks: two at
    a time 792 s of wall time (1,501 s of notebook time), one at a time with two threads 951 s; a notebook on
    one thread takes longer than on two (the ResNet-18's convolutions use both), but not twice as long, so two
    at a time keep both cores busier. More than 2 is not the default: the heaviest notebooks then set the wall
    time, and memory grows with every kernel; ``--jobs N`` chooses."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _execute(source: str, output: str, parameters: dict, threads: int | None) -> dict:
    """Execute one notebook with papermill (in a worker process when runs go in parallel).

    ``threads``: the kernel's CPU threads (OMP/MKL), set through the environment the kernel inherits; None
    leaves the environment as it is. Returns ``{"seconds": s}`` or ``{"error": (exec_count, cell_index, ename,
    evalue)}`` (papermill's exception does not survive pickling between processes).
    """
    import papermill

    os.environ["TQDM_DISABLE"] = "1"  # the kernels inherit it: no progress bars in the book's outputs
    if threads is not None:
        for var in THREAD_VARS:
            os.environ[var] = str(threads)
    start = time.perf_counter()
    try:
        # The kernel's log level ERROR: ipykernel warns on every start that local TCP is unencrypted.
        papermill.execute_notebook(source, output, parameters=parameters, kernel_name="python3", cwd=str(REPO),
                                   progress_bar=False, log_output=False, start_timeout=KERNEL_START_TIMEOUT_S,
                                   extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except papermill.PapermillExecutionError as err:
        return {"error": (err.exec_count, err.cell_index, err.ename, err.evalue)}
    return {"seconds": time.perf_counter() - start}


def run_notebooks(params: str = "paper", executed: str | os.PathLike | None = None,
                  figures: str | os.PathLike | None = None, work: str | os.PathLike | None = None,
                  only: list[str] | None = None, log=print,
                  params_file: str | os.PathLike = PARAMS_FILE, overrides: dict | None = None,
                  jobs: int | None = None) -> list[dict]:
    """Execute the runs of parameter set ``params``; return one ``{name, notebook, seconds, jobs}`` per run, in
    the parameter set's order (``jobs``: how many notebooks ran at once, which the seconds depend on).

    Args:
        params: the parameter set's name in ``notebooks/params.yml``.
        executed: folder of the executed notebooks (default: the repository's ``book/executed``).
        figures: passed as the ``figures`` parameter to every notebook that declares it
            (default: the repository's ``figures/``).
        work: notebooks that declare ``out`` write their runs to ``work/runs``
            (default: ``runs/book-<params>``).
        only: run names or notebook names to run (default: all).
        log: where progress lines go.
        params_file: the YAML file that defines the parameter sets.
        overrides: parameters that replace the parameter set's in every selected run, as ``-p beta 16``
            on the command line; a string value is read as the type of the parameter's default.
        jobs: notebooks executed at once (default :func:`default_jobs`). With more than one, each kernel
            gets ``cpu_count // jobs`` threads and the longest runs (by the last ``timings-<params>.json``)
            start first; the runs must not read each other's outputs (none of the book's do). A failure
            lets the running notebooks finish and starts no other. ``jobs=1`` runs them in order in the
            threads the environment gives.

    Raises:
        BookError: a notebook failed; the message names it, its run and the failing cell.
    """
    import jupytext
    import nbformat

    jobs = default_jobs() if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise BookError(f"jobs must be an integer >= 1, got {jobs!r}")
    executed = Path(executed or REPO / EXECUTED)
    figures = Path(figures or REPO / "figures")
    work = Path(work or REPO / "runs" / f"book-{params}")
    executed.mkdir(parents=True, exist_ok=True)
    selected = runs(params, only, params_file)
    prepared = []  # (run, source, output, parameters), every notebook checked before any runs
    for run in selected:
        source_py = REPO / "notebooks" / f"{run['notebook']}.py"
        nb = jupytext.read(source_py)
        declared = _declared_parameters(nb)
        parameters = {**run["parameters"],
                      **{k: _typed(v, declared.get(k)) for k, v in (overrides or {}).items()}}
        if "figures" in declared:
            parameters.setdefault("figures", str(figures))
        if "out" in declared:
            parameters.setdefault("out", str(work / "runs"))
        unknown = set(parameters) - set(declared)
        if unknown:
            raise BookError(f"parameter set {params!r}, run {run['name']!r}: notebooks/{run['notebook']}.py "
                            f"has no parameter {', '.join(sorted(unknown))} (it declares "
                            f"{', '.join(sorted(declared))})")
        source = executed / f"{run['notebook']}.source.ipynb"
        nbformat.write(nb, source)
        prepared.append((run, source, executed / f"{run['name']}.ipynb", parameters))
    timings_path = executed / f"timings-{params}.json"
    last = _read_timings(timings_path)
    jobs = min(jobs, len(prepared)) or 1
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    if jobs > 1:
        # this machine's last timings where it has them, the shipped ones (a fresh checkout) otherwise
        order = longest_first([run["name"] for run, *_ in prepared], {**shipped_timings(params), **last})
        log(f"{len(prepared)} runs, {jobs} at a time, {threads} thread(s) each")
    else:
        order = list(range(len(prepared)))
    done: dict[int, dict] = {}
    failure = None
    wall = time.perf_counter()

    def finish(i: int, result: dict, k: int) -> None:
        nonlocal failure
        run, _, output, _ = prepared[i]
        shown = " ".join(f"{key}={v}" for key, v in {**run["parameters"], **(overrides or {})}.items())
        if "error" in result:
            exec_count, cell_index, ename, evalue = result["error"]
            failure = failure or BookError(
                f"notebook notebooks/{run['notebook']}.py (run {run['name']!r}, parameter set {params!r}) "
                f"failed in cell {exec_count} (cell index {cell_index}): {ename}: {evalue}\n"
                f"The executed notebook with the full traceback: {output}")
            log(f"[{k}/{len(prepared)}] notebooks/{run['notebook']}.py -> {output}  {shown}: FAILED".rstrip())
            return
        _hide_parameter_cells(output)
        done[i] = {"name": run["name"], "notebook": run["notebook"], "seconds": round(result["seconds"], 1),
                   "jobs": jobs}
        log(f"[{k}/{len(prepared)}] notebooks/{run['notebook']}.py -> {output}  {shown}".rstrip()
            + f"  {result['seconds']:.1f} s")

    if jobs == 1:
        for k, i in enumerate(order, 1):
            run, source, output, parameters = prepared[i]
            log(f"[{k}/{len(prepared)}] notebooks/{run['notebook']}.py ...")
            env_before = os.environ.get("TQDM_DISABLE")
            try:
                finish(i, _execute(str(source), str(output), parameters, None), k)
            finally:
                if env_before is None:
                    os.environ.pop("TQDM_DISABLE", None)
                else:
                    os.environ["TQDM_DISABLE"] = env_before
            if failure:
                break
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # Spawned workers (not forked from a process that may hold threads); each runs one kernel at a time.
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending = list(order)
            running = {}
            k = 0
            while pending or running:
                while pending and len(running) < jobs and failure is None:
                    i = pending.pop(0)
                    _, source, output, parameters = prepared[i]
                    running[pool.submit(_execute, str(source), str(output), parameters, threads)] = i
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    k += 1
                    i = running.pop(future)
                    try:
                        result = future.result()
                    except Exception as err:  # the worker itself died (killed, out of memory, ...)
                        result = {"error": ("?", "?", type(err).__name__, f"{err} (the worker process running "
                                            "it failed; rerun with --jobs 1 to see more)")}
                    finish(i, result, k)
    if failure is not None:
        raise failure
    timings = [done[i] for i in range(len(prepared))]
    kept = []
    if only:  # a partial run keeps the other notebooks' last timings
        names = {t["name"] for t in timings}
        kept = [t for name, t in last.items() if name not in names]
    timings_path.write_text(json.dumps(kept + timings, indent=1) + "\n")
    log(f"{len(timings)} notebooks in {time.perf_counter() - wall:.0f} s wall ({sum(t['seconds'] for t in timings):.0f} s "
        f"of notebook time, {jobs} at a time; parameter set {params!r})")
    return timings


def shipped_timings(params: str) -> dict[str, dict]:
    """``{run name: entry}`` of ``notebooks/timings-<params>.json``: a full run's timings kept in git.

    A fresh checkout has no ``book/executed/timings-<params>.json`` to schedule by; without this file the
    notebooks ran in the file's order. With the shipped paper timings, two at a time, the order matters
    little (simulated: 851 s longest first, 863 s in the file's order, 849 s at best). Refresh the file by
    copying ``book/executed/timings-<params>.json`` after a full run.
    """
    return _read_timings(REPO / "notebooks" / f"timings-{params}.json")


def longest_first(names: list[str], timings: dict[str, dict]) -> list[int]:
    """Indices of ``names`` longest first by ``timings`` (longest-processing-time scheduling).

    Runs without a timing come first of all (they may be long); ties keep the given order.
    """
    return sorted(range(len(names)), key=lambda i: -timings.get(names[i], {}).get("seconds", math.inf))


def _read_timings(path: Path) -> dict[str, dict]:
    """``{run name: entry}`` of an earlier ``timings-<params>.json`` (empty when absent or unreadable)."""
    try:
        entries = json.loads(path.read_text())
        return {t["name"]: t for t in entries if isinstance(t, dict) and isinstance(t.get("name"), str)
                and isinstance(t.get("seconds"), (int, float))}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def copy_sources(root: str | os.PathLike) -> Path:
    """Copy the book's sources (``_config.yml``, ``_toc.yml``, ``book/`` without executed notebooks) to ``root``.

    Used to build the book from another set of executed notebooks (the tests' ``smoke`` run) without
    touching the repository's ``book/executed``. The benchmark's table (``MEASURED_FIGURES``, written by
    ``python -m gclib.bench``, not by a notebook) is copied into ``root/figures`` as well.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in BOOK_SOURCES:
        src, dst = REPO / name, root / name
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("executed", "__pycache__"))
        else:
            shutil.copy2(src, dst)
    for name in MEASURED_FIGURES:
        src = REPO / "figures" / name
        if src.is_file():
            (root / "figures").mkdir(exist_ok=True)
            shutil.copy2(src, root / "figures" / name)
    return root


def build(root: str | os.PathLike | None = None, strict: bool = True, log=print) -> Path:
    """``jupyter-book build root`` with warnings as errors; returns ``root/_build/html``.

    Raises:
        BookError: the build failed or warned; the message has the build's last lines.
    """
    root = Path(root or REPO)
    missing = [p for p in ("_config.yml", "_toc.yml") if not (root / p).is_file()]
    if missing:
        raise BookError(f"{root} is not a book: {', '.join(missing)} missing")
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "--all"]
    if strict:
        cmd += ["--warningiserror", "--keep-going"]
    log(" ".join(cmd))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        problems = [line for line in lines if "WARNING" in line or "ERROR" in line] or lines[-40:]
        raise BookError(f"jupyter-book build {root} failed (warnings are errors):\n" + "\n".join(problems[:40]))
    html = root / "_build" / "html"
    log(f"book built in {time.perf_counter() - start:.1f} s: {html / 'book' / 'intro.html'}")
    return html


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gclib.book", description="Run the notebooks with papermill "
                                "under a named parameter set and build the Jupyter Book.")
    p.add_argument("command", choices=["run", "build", "all", "list"],
                   help="run: execute the notebooks; build: jupyter-book build; all: both; list: the runs")
    p.add_argument("--params", default="paper", help="parameter set in notebooks/params.yml (paper, smoke)")
    p.add_argument("--only", nargs="+", help="run only these runs or notebooks")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                   help="override a notebook parameter in every selected run, as papermill's -p "
                   "(VALUE is read as YAML: 16, true, inf...); e.g. --only gc_vs_dc -p beta 16")
    p.add_argument("--root", help="build the book in this folder (default: the repository); with 'run' or "
                   "'all', the book sources are copied there and the notebooks executed into ROOT/book/executed")
    p.add_argument("--figures", help="output folder for figures and tables (default: figures/)")
    p.add_argument("--work", help="folder for training runs made by notebooks (default: runs/book-PARAMS)")
    p.add_argument("--jobs", type=int, help="notebooks executed at once, each with cores/JOBS threads (default: "
                   f"{default_jobs()}: in order, with every thread)")
    args = p.parse_args(argv)
    try:
        if args.command == "list":
            for run in runs(args.params, args.only):
                print(f"{run['name']:24s} notebooks/{run['notebook']}.py  {run['parameters']}")
            return 0
        overrides = dict(args.parameter)  # strings, read as the type of each parameter's default
        root = Path(args.root) if args.root else None
        if root is not None and root.resolve() != REPO:
            copy_sources(root)
        if args.command in ("run", "all"):
            figures = args.figures or ((root / "figures") if root else None)
            run_notebooks(args.params, executed=(root / EXECUTED) if root else None, figures=figures,
                          work=args.work, only=args.only, overrides=overrides, jobs=args.jobs)
        if args.command in ("build", "all"):
            build(root)
    except BookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
