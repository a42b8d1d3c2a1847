"""The book pipeline: every notebook under the smoke parameters, the strict Jupyter Book build, a real browser."""

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("jupyter_book")

import nbformat  # noqa: E402

from gclib import book  # noqa: E402
from gclib.errors import BookError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Every figure and table id the built notebooks write (the README's map also lists the benchmark's, from make bench).
BUILT_IDS = ["table_models", "fig_beta_tradeoff", "fig_training_curves", "table_sample_quality", "table_architectures",
             "fig_gc_vs_dc_outputs",
             "table_ood", "fig_ood_scores", "table_calibration", "fig_calibration", "fig_both_or_neither",
             "table_both_or_neither", "fig_prototypes", "fig_counterfactuals", "fig_latent_space", "fig_evidence",
             "table_latent", "table_counterfactuals",
             "fig_corruptions", "table_corruptions", "fig_heatmaps", "table_faithfulness",
             "fig_adversarial", "table_adversarial", "fig_adv_detection", "table_adv_detection", "table_adv_transfer",
             "fig_shape_bias", "table_shape_bias", "fig_frequency", "table_frequency", "fig_distortions",
             "table_distortions", "fig_error_consistency", "table_error_consistency",
             "fig_model_strength", "table_model_strength"]


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    book.copy_sources(root)
    timings = book.run_notebooks("smoke", executed=root / book.EXECUTED, figures=root / "figures",
                                 work=root / "work", log=lambda *a: None)
    html = book.build(root, log=lambda *a: None)
    return root, html, timings


def test_every_notebook_is_in_both_parameter_sets():
    sources = {p.stem for p in (ROOT / "notebooks").glob("*.py")}
    for name in ("paper", "smoke"):
        assert {r["notebook"] for r in book.runs(name)} == sources, name


def test_a_fresh_checkout_schedules_the_paper_set_longest_first_by_the_shipped_timings():
    shipped = book.shipped_timings("paper")
    names = [r["name"] for r in book.runs("paper")]
    assert set(shipped) == set(names)  # refresh notebooks/timings-paper.json when the parameter set changes
    order = [names[i] for i in book.longest_first(names, shipped)]
    seconds = [shipped[n]["seconds"] for n in order]
    assert seconds == sorted(seconds, reverse=True) and order[0] != names[0]
    # runs without a timing first, ties in the given order
    assert book.longest_first(["a", "b", "c", "d"], {"a": {"seconds": 5}, "b": {"seconds": 9}, "d": {"seconds": 5}}) \
        == [2, 1, 0, 3]
    assert book.shipped_timings("nope") == {}


def test_unknown_parameter_set_and_parameter_are_clear_errors(tmp_path):
    with pytest.raises(BookError, match="unknown parameter set 'nope'.*paper"):
        book.runs("nope")
    bad = tmp_path / "params.yml"
    bad.write_text("x:\n  - {notebook: models, parameters: {betta: 3}}\n")
    with pytest.raises(BookError, match="has no parameter betta"):
        book.run_notebooks("x", executed=tmp_path, params_file=bad, log=lambda *a: None)
    with pytest.raises(BookError, match="has no parameter bta"):
        book.run_notebooks("smoke", executed=tmp_path, only=["gc_vs_dc"], overrides={"bta": "16"}, log=lambda *a: None)
    bad.write_text("x:\n  - {notebook: no_such_notebook}\n")
    with pytest.raises(BookError, match="no_such_notebook.py does not exist"):
        book.runs("x", path=bad)


def test_command_line_parameters_take_the_type_of_the_default(capsys):
    assert book._typed("16", "8") == "16"  # beta = "8": stays a string
    assert book._typed("500", 10000) == 500 and book._typed("true", False) is True
    assert book._typed("1", 0.99) == 1.0 and book._typed("cuda", None) == "cuda"
    assert book.main(["list", "--params", "smoke"]) == 0
    assert "notebooks/gc_vs_dc.py" in capsys.readouterr().out
    assert book.main(["list", "--params", "nope"]) == 1
    assert "unknown parameter set 'nope'" in capsys.readouterr().err


def test_a_failing_notebook_stops_the_pipeline_with_its_name_and_cell(tmp_path):
    params = tmp_path / "params.yml"
    params.write_text("x:\n  - {notebook: gc_vs_dc, name: bad, parameters: {beta: '3', n_test: 10}}\n"
                      "  - {notebook: models, name: never_run}\n")
    with pytest.raises(BookError) as err:
        book.run_notebooks("x", executed=tmp_path, figures=tmp_path / "fig", params_file=params, log=lambda *a: None,
                           jobs=1)
    message = str(err.value)
    assert "notebooks/gc_vs_dc.py" in message and "run 'bad'" in message and re.search(r"failed in cell \d+", message)
    assert "beta" in message  # the notebook's own error: no shipped beta=3
    assert (tmp_path / "bad.ipynb").is_file() and not (tmp_path / "never_run.ipynb").exists()
    assert not (tmp_path / "timings-x.json").exists()


def test_parallel_runs_report_a_failure_the_same_way_and_finish_the_others(tmp_path):
    params = tmp_path / "params.yml"
    params.write_text("x:\n  - {notebook: gc_vs_dc, name: bad, parameters: {beta: '3', n_test: 10}}\n"
                      "  - {notebook: architectures, name: good}\n")
    lines = []
    with pytest.raises(BookError) as err:
        book.run_notebooks("x", executed=tmp_path, figures=tmp_path / "fig", params_file=params, log=lines.append,
                           jobs=2)
    message = str(err.value)
    assert "run 'bad'" in message and re.search(r"failed in cell \d+", message) and "beta" in message
    assert "2 runs, 2 at a time" in lines[0]
    nb = nbformat.read(tmp_path / "good.ipynb", as_version=4)  # the other run finished, its outputs in place
    assert all(c.get("outputs") is not None for c in nb.cells if c.cell_type == "code")
    assert (tmp_path / "fig" / "table_architectures.md").is_file()
    for bad_jobs in (0, 1.5, True):
        with pytest.raises(BookError, match="jobs must be an integer >= 1"):
            book.run_notebooks("x", executed=tmp_path, params_file=params, log=lambda *a: None, jobs=bad_jobs)


def test_smoke_run_writes_every_built_figure_and_table(smoke_book):
    root, _, timings = smoke_book
    assert [t["notebook"] for t in timings] == [r["notebook"] for r in book.runs("smoke")]
    for fig_id in BUILT_IDS:
        files = {p.name for p in (root / "figures").glob(f"{fig_id}.*")}
        suffixes = (".csv", ".md") if fig_id.startswith("table_") else (".png", ".svg")
        expected = {fig_id + suffix for suffix in suffixes}
        assert expected <= files, (fig_id, files)
    assert json.loads((root / book.EXECUTED / "timings-smoke.json").read_text()) == timings
    assert all(t["jobs"] == min(book.default_jobs(), len(timings)) for t in timings)


def test_parameter_cells_are_hidden_in_the_book(smoke_book):
    root, _, _ = smoke_book
    for path in (root / book.EXECUTED).glob("*.ipynb"):
        if path.name.endswith(".source.ipynb"):
            continue
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if {"parameters", "injected-parameters"} & set(c.metadata.get("tags", []))]
        assert tagged, path.name
        assert all("hide-cell" in c.metadata["tags"] for c in tagged), path.name


def test_book_has_every_chapter_and_no_unrendered_glue(smoke_book):
    _, html, _ = smoke_book
    for page in ("intro", "method", "models", "explainability", "robustness", "perception", "strength", "scaling",
                 "reproduce", "api", "executed/perception", "executed/model_strength",
                 "executed/models", "executed/gc_vs_dc", "executed/architectures", "executed/train_model_beta-8",
                 "executed/ood", "executed/calibration", "executed/latent", "executed/corruptions",
                 "executed/heatmaps", "executed/adversarial"):
        text = (html / "book" / f"{page}.html").read_text()
        assert "{glue" not in text, page
    intro = (html / "book" / "intro.html").read_text()
    assert "fig_gc_vs_dc_outputs.png" in intro
    assert "gclib.explain.gc_outputs" in (html / "book" / "api.html").read_text()  # the API reference is generated
    # the benchmark's table is no notebook's output: the book built elsewhere still shows the repository's
    scaling = (html / "book" / "scaling.html").read_text()
    assert "GC/DC train" in scaling and "fig_throughput.png" in scaling


def test_book_in_a_real_browser(smoke_book):
    browser = pytest.importorskip("tests.browser")
    if not browser.find_chromium():
        pytest.skip("no chromium (apt-get install chromium)")
    _, html, _ = smoke_book
    problems = browser.check_site(html)
    assert problems == [], "\n".join(problems)
