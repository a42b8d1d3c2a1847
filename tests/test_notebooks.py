"""The notebooks run end to end with papermill (smoke parameters: few steps, small subsets)."""

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
papermill = pytest.importorskip("papermill")

import nbformat  # noqa: E402

from gclib.book import KERNEL_START_TIMEOUT_S  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run_notebook(name: str, tmp_path: Path, **parameters) -> nbformat.NotebookNode:
    nb = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    source = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, source)
    return papermill.execute_notebook(str(source), str(tmp_path / f"{name}.out.ipynb"), parameters=parameters,
                                      kernel_name="python3", cwd=str(ROOT), progress_bar=False,
                                      start_timeout=KERNEL_START_TIMEOUT_S)


def outputs(nb) -> str:
    return "\n".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for o in cell.get("outputs", []))


def test_every_notebook_has_one_parameters_cell():
    for path in sorted((ROOT / "notebooks").glob("*.py")):
        nb = jupytext.read(path)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"


def test_train_notebook_loads_the_shipped_model(tmp_path):
    nb = run_notebook("train_model", tmp_path, beta="8", out=str(tmp_path / "runs"))
    text = outputs(nb)
    assert "shipped checkpoint" in text and "matches the manifest" in text
    assert (tmp_path / "runs" / "training_curves_fashion-mnist_gc-beta-8.png").stat().st_size > 5_000


# The training notebook with retrain=True and the zoo notebook run in tests/test_book.py (the smoke
# parameter set), which also builds the book from them.
