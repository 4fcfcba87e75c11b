"""The benchmarks run and produce their tables (tiny sizes: what is asserted is the table, never
a speed), through the one command that regenerates BENCHMARKS.md."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import run_all  # noqa: E402


def _tables(section: str) -> list[list[list[str]]]:
    """The markdown tables of a section, as rows of cells (header row first)."""
    tables, current = [], []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_assemble_keeps_sections_it_does_not_regenerate(tmp_path: Path):
    old = run_all.assemble({"fusion": "## Fusion\n\n| a |\n|---|\n| 1 |", "kernels": "## K"})
    kept = run_all.existing_sections(old)
    assert kept == {"fusion": "## Fusion\n\n| a |\n|---|\n| 1 |", "kernels": "## K"}
    new = run_all.assemble({**kept, "kernels": "## K2"})
    assert run_all.existing_sections(new)["kernels"] == "## K2"
    assert "## Fusion" in new
    assert "## Earlier measurements" not in new  # the history stays in bench/history.md
    assert "(bench/history.md)" in new  # and is linked


def test_benchmarks_md_is_what_assemble_writes():
    """BENCHMARKS.md is `python bench/run_all.py --assemble`'s output: a summary table whose
    every row read its figure, machine and date from its section, then the sections."""
    committed = (REPO / "BENCHMARKS.md").read_text()
    sections = run_all.existing_sections(committed)
    assert list(sections) == run_all.SECTIONS
    assert run_all.assemble(sections) == committed, "run: python bench/run_all.py --assemble"
    header, *rows = _tables(run_all.summary(sections))[0]
    assert header == ["benchmark", "goal", "latest figure", "machine", "date"]
    assert len(rows) == len(run_all.SECTIONS)
    for row in rows:
        assert "see the section" not in row[2], f"{row[0]}: no figure read from its section"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", row[4]), row
    anchors = {
        "#" + run_all.anchor(s.splitlines()[0].removeprefix("## ")) for s in sections.values()
    }
    assert {re.search(r"\]\((#[^)]+)\)", row[0]).group(1) for row in rows} == anchors
    assert "Earlier measurements" in (REPO / "bench" / "history.md").read_text()


@pytest.mark.slow
def test_every_benchmark_produces_its_table(pico_hub: Path, tmp_path: Path):
    output = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run_all.py"), "--smoke", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sections = run_all.existing_sections(output.read_text())
    assert list(sections) == run_all.SECTIONS
    for name, section in sections.items():
        assert section.startswith("## "), name
        assert re.search(r"Measured \d{4}-\d\d-\d\d on .+ with `python bench/", section), name
        tables = _tables(section)
        assert tables, f"{name}: no table"
        for table in tables:
            header, *rows = table
            assert rows, f"{name}: a table without rows"
            assert all(len(row) == len(header) for row in rows), f"{name}: ragged table"
