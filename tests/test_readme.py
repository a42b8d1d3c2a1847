"""The README is correct: its Python example runs, its commands exist, its figure/table map matches figures/ and
notebooks/, and its links point at files that exist."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def shell_commands() -> list[list[str]]:
    """Every command of the README's bash blocks (comments dropped) and every inline `python -m ...`."""
    lines = [line.split("#", 1)[0].strip() for block in code_blocks("bash") for line in block.splitlines()]
    lines += re.findall(r"`((?:\.venv/bin/)?python -m [^`]+)`", README)
    return [shlex.split(line) for line in lines if line]


def figure_map() -> list[dict]:
    rows = []
    for line in section("Figures and tables").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("id", "---"):
            continue
        rows.append({"ids": re.findall(r"`((?:fig|table)_\w+)`", cells[0]), "writer": cells[1],
                     "chapters": re.findall(r"\]\((book/\w+\.md)\)", cells[2])})
    return rows


def test_the_python_example_runs(capsys):
    (example,) = code_blocks("python")
    assert len(example.strip().splitlines()) <= 8  # short
    exec(compile(example, "README.md", "exec"), {"__name__": "readme"})
    predicted, shapes = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"\[(\d, ){15}\d\] \[(\d, ){15}\d\]", predicted)
    assert shapes == "torch.Size([16, 10]) torch.Size([16])"


def test_every_make_target_in_the_readme_exists():
    targets = [cmd[1] for cmd in shell_commands() if cmd[0] == "make"]
    targets += re.findall(r"`make ([a-z-]+)`", README)
    assert {"book", "test"} <= set(targets)
    listed = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    for target in sorted(set(targets)):
        # -n: print what the target would run, run nothing
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, f"make -n {target}: {dry.stderr}"
        assert target == "help" or re.search(rf"^{target}\t", listed, flags=re.M), f"make help omits {target}"
    book = subprocess.run(["make", "-n", "book"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert "gclib.book all --params paper" in book  # what the README says make book does
    assert "-m pytest" in subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True,
                                         timeout=60).stdout


def test_every_python_command_in_the_readme_takes_its_options():
    commands = [cmd for cmd in shell_commands() if cmd[0].endswith("python")]
    assert commands, "the README names no python -m command"
    for cmd in commands:
        assert cmd[1] == "-m", cmd
        module, args = cmd[2], cmd[3:]
        sub = [args[0]] if args and not args[0].startswith("-") else []
        # the limit guards against a hang (imports torch: seconds, longer on a loaded machine)
        out = subprocess.run([sys.executable, "-m", module, *sub, "--help"], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, f"{' '.join(cmd)}: {out.stderr[-2000:]}"
        for option in (a.split("=")[0] for a in args if a.startswith("--")):
            assert option in out.stdout, f"{' '.join(cmd)}: {option} is not an option of {module}"


def test_figure_map_matches_figures_and_notebooks():
    rows = figure_map()
    ids = [i for row in rows for i in row["ids"]]
    assert len(ids) == len(set(ids)), "an id is listed twice"
    on_disk = {p.stem for p in (ROOT / "figures").iterdir() if p.suffix in (".png", ".svg", ".csv", ".md", ".json")}
    assert set(ids) == on_disk, f"in figures/ but not in the README's map (add a row): {on_disk - set(ids)}; " \
                                f"in the map but not in figures/: {set(ids) - on_disk}"
    for row in rows:
        # the writer: a notebook, or a module run as python -m gclib.NAME (a measurement, not a notebook)
        writers = re.findall(r"`(notebooks/\w+\.py)`", row["writer"]) or \
            [f"gclib/{m}.py" for m in re.findall(r"python -m gclib\.(\w+)", row["writer"])]
        assert len(writers) == 1 and row["chapters"], row
        source = ROOT / writers[0]
        assert source.is_file(), f"{writers[0]} does not exist"
        for fig_id in row["ids"]:
            suffixes = (".png", ".svg") if fig_id.startswith("fig_") else (".csv", ".md")
            for suffix in suffixes:
                assert (ROOT / "figures" / f"{fig_id}{suffix}").is_file(), f"figures/{fig_id}{suffix} is missing"
            assert f'"{fig_id}"' in source.read_text(), f"{writers[0]} does not write {fig_id}"
            assert any(fig_id in (ROOT / c).read_text() for c in row["chapters"]), \
                f"{fig_id} appears in none of {row['chapters']}"
    assert "figures/fig_gc_vs_dc_outputs.png" in README.split("\n## ")[0]  # Figure 1, before the first section


@pytest.mark.parametrize("target", sorted(set(re.findall(r"\]\(([^)#]+)\)", README))))
def test_every_link_points_somewhere(target):
    if target.startswith(("http://", "https://")):
        assert re.fullmatch(r"https://[\w./-]+", target), target
    else:
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
