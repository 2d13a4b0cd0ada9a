"""The chapters read prose-first and stay thin: the protocol lives in
advlib.experiments, a notebook only shows it (the shape of every chapter).

Source checks run in the unit tests; the checks on executed outputs are
claims-marked, because they read what the book build wrote."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("*.md"))
EXECUTED = ROOT / "book" / "executed"
MAX_VISIBLE_LINES = 60  # visible code lines per notebook, outside the parameters cell
MAX_TEXT_OUTPUT = 5_000  # characters of one plain-text output shown on a page
MIN_INTRO_WORDS = 60  # prose before the first code cell


def _cells(source: Path):
    import jupytext

    return jupytext.read(source).cells


def _tags(cell) -> set[str]:
    return set(cell.metadata.get("tags", []))


def _code_lines(src: str) -> list[str]:
    return [ln for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#")]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_visible_code_is_at_most_60_lines(source):
    visible = [
        line
        for cell in _cells(source)
        # hide-input code is still on the page, behind a toggle: only removed input is not shown.
        if cell.cell_type == "code" and not _tags(cell) & {"parameters", "remove-input", "remove-cell"}
        for line in _code_lines(cell.source)
    ]
    assert len(visible) <= MAX_VISIBLE_LINES, f"{source.name}: {len(visible)} visible code lines (at most {MAX_VISIBLE_LINES})"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_only_hidden_drawing_helpers_define_functions(source):
    for i, cell in enumerate(_cells(source)):
        if cell.cell_type != "code" or _tags(cell) & {"remove-input", "remove-cell"}:
            continue
        tree = ast.parse("\n".join(ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!"))))
        defined = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        assert not defined, f"{source.name}, cell {i}: defines {defined} in visible code; move it to advlib"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_a_page_opens_with_a_title_and_prose(source):
    cells = _cells(source)
    first_code = next(i for i, c in enumerate(cells) if c.cell_type == "code")
    prose = " ".join(c.source for c in cells[:first_code] if c.cell_type == "markdown")
    assert re.search(r"^# \S", prose, flags=re.M), f"{source.name}: no title before the first code cell"
    words = len(re.findall(r"[A-Za-z]{2,}", prose))
    assert words >= MIN_INTRO_WORDS, f"{source.name}: {words} words of prose before the first code cell"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_provenance_reads_the_parameters_cell(source):
    text = source.read_text(encoding="utf-8")
    assert f'provenance.Run.of_notebook("{source.stem}", globals())' in text, (
        f"{source.name}: record the parameters with provenance.Run.of_notebook, not a hand-written list"
    )


def _executed() -> list[Path]:
    return sorted(EXECUTED.glob("*.ipynb"))


@pytest.mark.claims
def test_the_build_executed_every_notebook():
    assert _executed(), f"no executed notebooks in {EXECUTED}: run `make book` first"


@pytest.mark.claims
@pytest.mark.parametrize("executed", _executed(), ids=lambda p: p.stem)
def test_no_output_shows_a_wall_of_text_or_a_warning(executed):
    nb = json.loads(executed.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                text = "".join(out.get("text", ""))
            else:
                text = "".join(out.get("data", {}).get("text/plain", ""))
                if "text/html" in out.get("data", {}) or "image/png" in out.get("data", {}):
                    text = ""  # a table or a figure: what the page shows is not this text
            assert len(text) <= MAX_TEXT_OUTPUT, f"{executed.name}, cell {i}: a {len(text)}-character text output"
            assert "Warning" not in text, f"{executed.name}, cell {i}: prints a warning: {text[:300]}"
