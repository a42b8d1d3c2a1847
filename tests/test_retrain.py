"""The zoo's retraining scheduler: warm starts wait for their base, failures stop new starts, the plan."""

import json
import threading

import pytest

from gclib import retrain, zoo
from gclib.errors import ConfigError

DATASET = "fashion-mnist"


def test_dependencies_are_the_zoo_models_a_model_is_warm_started_from():
    assert retrain.dependencies(zoo.entry(DATASET, "gc-large-beta-8")) == ["gc-large-beta-1"]
    assert retrain.dependencies(zoo.entry(DATASET, "resnet20-sigma-0.5")) == ["resnet20-sigma-0.25"]
    assert retrain.dependencies(zoo.entry(DATASET, "gc-large-beta-1")) == []
    multi = next(e for e in zoo.entries(DATASET) if e.earlier_stages)
    assert retrain.dependencies(multi) == []  # its own earlier stages are not other models


def test_the_estimate_adds_a_models_own_earlier_stages_but_not_its_warm_start():
    multi = next(e for e in zoo.entries(DATASET) if e.earlier_stages)
    info = zoo.checkpoints.read_manifest(zoo.checkpoint_root() / DATASET / multi.name)["info"]
    assert retrain.estimated_seconds(multi) > info["wall_time_s"]
    finetune = zoo.entry(DATASET, "gc-large-beta-8")
    info = zoo.checkpoints.read_manifest(zoo.checkpoint_root() / DATASET / finetune.name)["info"]
    assert retrain.estimated_seconds(finetune) == pytest.approx(info["wall_time_s"])


def test_the_plan_starts_every_model_after_its_base_and_two_jobs_take_less_wall_time():
    one, two = retrain.plan(DATASET, jobs=1), retrain.plan(DATASET, jobs=2)
    names = [e.name for e in zoo.entries(DATASET)]
    for p in (one, two):
        assert sorted(r["name"] for r in p["rows"]) == sorted(names)
        end = {r["name"]: r["end_s"] for r in p["rows"]}
        for r in p["rows"]:
            assert all(r["start_s"] >= end[d] for d in r["depends_on"]), r
    assert one["wall_s"] == pytest.approx(one["core_s"], abs=1)
    assert one["core_s"] / 2 <= two["wall_s"] < one["wall_s"]
    with pytest.raises(ConfigError, match="jobs"):
        retrain.plan(DATASET, jobs=0)
    with pytest.raises(ConfigError, match="not in the fashion-mnist zoo"):
        retrain.plan(DATASET, ["gc-beta-7"])


def _fake_runs(monkeypatch, failing=()):
    events, lock = [], threading.Lock()

    def run_one(entry, out, env, log_path):
        with lock:
            events.append(("start", entry.name, env.get("OMP_NUM_THREADS")))
        with lock:
            events.append(("end", entry.name, None))
        return (3 if entry.name in failing else 0), 0.0

    monkeypatch.setattr(retrain, "_run_one", run_one)
    return events


def test_retrain_starts_a_warm_started_model_only_after_its_base_is_published(tmp_path, monkeypatch):
    events = _fake_runs(monkeypatch)
    names = ["gc-large-beta-8", "gc-beta-8", "gc-large-beta-1"]
    assert retrain.retrain(DATASET, names, jobs=2, runs=tmp_path, log=lambda *a: None) == 0
    order = [(kind, name) for kind, name, _ in events]
    assert order.index(("end", "gc-large-beta-1")) < order.index(("start", "gc-large-beta-8"))
    assert {threads for kind, _, threads in events if kind == "start"} == {str(max(1, (retrain.os.cpu_count() or 1) // 2))}
    record = json.loads((tmp_path / "retrain-timings.json").read_text())
    assert record["jobs"] == 2 and sorted(record["models"]) == sorted(names)


def test_a_failed_model_stops_further_starts_and_its_status_is_returned(tmp_path, monkeypatch):
    events = _fake_runs(monkeypatch, failing={"gc-large-beta-1"})
    # one at a time, longest first: gc-large-beta-1 (about 86 min measured) before gc-beta-8, and its fine-tune after
    assert retrain.retrain(DATASET, ["gc-large-beta-8", "gc-beta-8", "gc-large-beta-1"], jobs=1, runs=tmp_path,
                           log=lambda *a: None) == 3
    assert [name for kind, name, _ in events if kind == "start"] == ["gc-large-beta-1"]
    record = json.loads((tmp_path / "retrain-timings.json").read_text())
    assert record["models"] == {"gc-large-beta-1": {"seconds": 0.0, "rc": 3}}


def test_the_cli_prints_the_plan_and_trains_nothing(capsys, monkeypatch):
    monkeypatch.setattr(retrain, "_run_one", lambda *a: pytest.fail("--plan must not train"))
    assert not zoo.main(["retrain", "--plan", "--jobs", "2", "gc-large-beta-1", "gc-large-beta-8"])
    out = capsys.readouterr().out
    assert "gc-large-beta-8  (after gc-large-beta-1)" in out and "2 models, 2 at a time" in out


def test_the_scheduler_lets_started_models_end_after_a_failure_and_starts_no_other():
    chosen = [zoo.entry(DATASET, n) for n in ("gc-beta-1", "gc-large-beta-8", "gc-beta-8", "gc-large-beta-1")]
    estimate = {"gc-large-beta-1": 100.0, "gc-beta-8": 50.0, "gc-beta-1": 10.0, "gc-large-beta-8": 500.0}
    started, ends = [], [("gc-beta-8", 3), ("gc-large-beta-1", 0)]  # the shorter one fails first

    def next_done():
        name, rc = ends.pop(0)
        return zoo.entry(DATASET, name), rc

    done, failure = retrain._schedule(chosen, estimate, 2, lambda e: started.append(e.name), next_done)
    # the fine-tune waits for its base despite the longest estimate; nothing starts after the failure
    assert started == ["gc-large-beta-1", "gc-beta-8"] and done == {"gc-large-beta-1"} and failure == 3 and not ends
