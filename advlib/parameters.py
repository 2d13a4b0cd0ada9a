"""A notebook's parameters cell, read once for the build and for provenance.

The book's notebooks are jupytext MyST sources with one code cell tagged
``parameters``, holding only lines ``name: type = literal  # what it does``.
``scripts/build_book.py`` reads it to check a preset's values before papermill
runs anything; :meth:`advlib.provenance.Run.of_notebook` reads it to record
every parameter's value, so no notebook keeps a hand-written copy of its list.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path
from typing import Any

# Parameters every notebook declares and the build always sets.
INJECTED = ("preset", "results_json")
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


class ParameterError(ValueError):
    """A parameters cell the build could not override faithfully; the message says where and why."""


def _comment_after(src: str, line: int) -> str:
    """The text of the ``#`` comment ending source line ``line`` (1-based), or ''."""
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT and tok.start[0] == line:
            return tok.string.lstrip("#").strip()
    return ""


def parse_parameters_cell(src: str, where: str = "parameters cell") -> dict[str, dict[str, Any]]:
    """``{name: {"type", "default", "help"}}`` of a parameters cell.

    The cell may hold only assignments of literals to plain names, e.g.
    ``seed: int = 0  # seeds the data and the initialisation``; anything else
    is an error, because papermill injects values by re-assigning these names
    and a computed default would be silently kept or silently lost.
    """
    try:
        tree = ast.parse(src)
    except SyntaxError as exc:
        raise ParameterError(f"{where}: not valid Python: {exc}") from exc
    for number, line in enumerate(src.splitlines(), 1):
        if line.count("=") > 1:
            # papermill's own reader skips such a line: its --help-notebook would not
            # list the parameter, and setting it would warn "unknown parameter".
            raise ParameterError(
                f"{where}, line {number}: more than one '=' on the line (papermill cannot read it); "
                f"keep '=' out of the comment: {line.strip()!r}"
            )
    params: dict[str, dict[str, Any]] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            name, annotation, value = stmt.target.id, ast.unparse(stmt.annotation), stmt.value
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, annotation, value = stmt.targets[0].id, None, stmt.value
        else:
            raise ParameterError(
                f"{where}, line {stmt.lineno}: only `name: type = literal  # help` assignments belong "
                f"in the parameters cell, got `{ast.unparse(stmt)}`"
            )
        try:
            default = ast.literal_eval(value)
        except ValueError as exc:
            raise ParameterError(
                f"{where}, line {stmt.lineno}: the default of {name!r} must be a literal, got `{ast.unparse(value)}`"
            ) from exc
        if name in params:
            raise ParameterError(f"{where}: parameter {name!r} is assigned twice")
        params[name] = {"type": annotation, "default": default, "help": _comment_after(src, stmt.end_lineno)}
    return params


def read_parameters(source: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters of a jupytext notebook: its one cell tagged ``parameters``."""
    import jupytext

    source = Path(source)
    if not source.is_file():
        raise ParameterError(f"no notebook source {source}")
    nb = jupytext.read(source)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ParameterError(f"{source}: expected exactly one code cell tagged 'parameters', found {len(cells)}")
    params = parse_parameters_cell(cells[0].source, f"{source.name}, parameters cell")
    missing = [p for p in INJECTED if p not in params]
    if missing:
        raise ParameterError(
            f"{source.name}: the parameters cell must declare {', '.join(missing)} "
            "(the build injects them: `preset: str = \"defaults\"`, `results_json: str = \"<stem>.json\"`)"
        )
    return params


def source_of(stem: str) -> Path:
    """``notebooks/<stem>.md`` of this checkout."""
    return NOTEBOOKS / f"{stem}.md"
