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
from typing import Any, Mapping

import yaml

# Parameters every notebook declares and the build always sets.
INJECTED = ("preset", "results_json")
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PRESETS = NOTEBOOKS.parent / "presets.yml"


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


# ---------------------------------------------------------------- presets and values


def parse_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value, read as papermill's command line reads it:
    True/False/None, then int, then float, else the string itself."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_parameters(stem: str, values: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]]) -> None:
    """Unknown names and plainly mistyped values are errors (papermill only warns)."""
    unknown = sorted(set(values) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared))
        raise ParameterError(f"{stem}: unknown parameter(s) {', '.join(unknown)}; the notebook's parameters are: {known}")
    for name, value in values.items():
        want = _TYPES.get(declared[name]["type"] or "")
        if want is None:
            continue
        if (isinstance(value, bool) and bool not in want) or not isinstance(value, want):
            raise ParameterError(
                f"{stem}: parameter {name} is declared {declared[name]['type']}, got {value!r} ({type(value).__name__})"
            )


def load_presets(path: Path = PRESETS) -> dict[str, dict[str, dict[str, Any]]]:
    """presets.yml: preset -> notebook stem -> {parameter: value}."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected a mapping preset -> notebook -> parameters")
    for preset, notebooks in data.items():
        if not isinstance(notebooks, dict):
            raise ParameterError(f"{path}: preset {preset!r} must map notebook stems to parameters")
        for stem, params in notebooks.items():
            if not isinstance(params, dict):
                raise ParameterError(f"{path}: {preset}.{stem} must be a mapping of parameter: value")
            clash = sorted(set(params) & set(INJECTED))
            if clash:
                raise ParameterError(f"{path}: {preset}.{stem} sets {clash}, which the build injects itself")
    return data


def chosen(where: str, declared: Mapping[str, Any], preset: str, presets: Mapping[str, Any],
           overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The values a run sets, over the cell's defaults: the preset's for this
    notebook (``presets[preset][stem]``, ``where`` naming it), then
    ``overrides``, each checked against the cell ``declared``; and ``preset``."""
    if preset not in presets:
        raise ParameterError(f"unknown preset {preset!r}; presets.yml has: {', '.join(presets)}")
    from_preset = dict(presets[preset].get(where) or {})
    check_parameters(f"{where} (preset {preset})", from_preset, declared)
    overrides = dict(overrides or {})
    clash = sorted(set(overrides) & set(INJECTED))
    if clash:
        raise ParameterError(f"{where}: {clash} are set by the build (use --preset / the default output path)")
    check_parameters(where, overrides, declared)
    return {**from_preset, **overrides, "preset": preset}


def effective(stem: str, preset: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every parameter of ``notebooks/<stem>.md`` as the book runs it with
    ``preset`` and ``overrides``: the cell's defaults, then :func:`chosen`'s
    values (``results_json`` keeps its default). What ``python -m
    advlib.experiments`` hands a chapter."""
    declared = read_parameters(source_of(stem))
    return {name: spec["default"] for name, spec in declared.items()} | chosen(stem, declared, preset, load_presets(), overrides)
