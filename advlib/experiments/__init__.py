"""Every chapter's protocol as one tested call.

``advlib.experiments.<chapter>.run(...)`` does what the chapter's Compute
section shows: it takes keyword parameters (the notebook's parameters cell
passes them on), computes, and returns a JSON-able dict with the numbers, the
per-image arrays the figures need, and ``"claims"``: for each claim the
chapter states, ``{"statement": ..., "holds": bool, ...the numbers it rests on}``.
The notebook saves that dict with its provenance; the claims tests recompute
each verdict from the saved numbers.

One module per chapter, named as the chapter's notebook; import the one you
need (``from advlib.experiments import deepfool_tables``): importing this
package loads none of them. Each also has ``compute(parameters, **given)``:
its ``run`` with the notebook's parameters (a dict of every parameter, as
:func:`advlib.parameters.effective` gives it), loading the networks and data
the notebook's Load cell would, except those ``given``.

Outside the notebook, ``python -m advlib.experiments CHAPTER --preset NAME
[-p NAME VALUE ...] --out results.json`` runs ``compute`` and saves a results
file (:func:`save`), on one process or under ``torchrun`` on many
(:mod:`advlib.distributed`); a notebook whose parameter ``results_from`` names
such a file shows it instead of computing (:func:`results`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

RESULTS_FORMAT = "advlib-results/1"

# Parameters that do not change what a chapter computes: they may differ between
# the run that saved a results file and the notebook that shows it.
NOT_COMPARED = ("preset", "results_json", "results_from")

CHAPTERS = (
    "deepfool_geometry",
    "deepfool_tables",
    "deepfool_finetuning",
    "perturbation_theory",
    "perturbation_losses",
    "adversarial_retraining",
    "blog_jsma_distillation",
    "blog_mutation_testing",
    "optimality",
    "peers",
)


def datasets(chapter: str, parameters: dict) -> set[str]:
    """The names of the data sets (as :func:`advlib.data.load` takes them) that
    ``chapter`` loads when run with the notebook ``parameters``: what the build
    provisions before the first notebook runs (``make data``). Every chapter
    module answers it with a function ``datasets(parameters) -> set[str]``."""
    module = chapter_module(chapter)
    if not hasattr(module, "datasets"):
        raise AttributeError(f"advlib.experiments.{chapter} must define datasets(parameters) -> set[str]")
    return set(module.datasets(parameters))


def chapter_module(chapter: str):
    """The module ``advlib.experiments.<chapter>``, imported."""
    import importlib

    if chapter not in CHAPTERS:
        raise ValueError(f"unknown chapter {chapter!r}; chapters: {', '.join(CHAPTERS)}")
    return importlib.import_module(f"{__name__}.{chapter}")


def save(path: str | os.PathLike, chapter: str, parameters: Mapping[str, Any], results: Mapping[str, Any],
         produced_by: Mapping[str, Any]) -> Path:
    """Write a results file atomically: a reader never sees half of one, and a
    run that fails before this leaves none."""
    from ..provenance import to_jsonable
    from ..train import _write_atomic

    record = {"format": RESULTS_FORMAT, "chapter": chapter, "parameters": to_jsonable(dict(parameters), "parameters"),
              "produced_by": to_jsonable(dict(produced_by), "produced_by"), "results": to_jsonable(dict(results), "results")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, (json.dumps(record, indent=1, allow_nan=False) + "\n").encode())
    return path


def read(path: str | os.PathLike, chapter: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A results file of ``chapter`` computed with ``parameters`` (those of
    :data:`NOT_COMPARED` aside): an error names any difference, so a notebook
    never shows numbers computed for another setting."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results_from: no results file {path} (python -m advlib.experiments {chapter} ... --out {path})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a results file of python -m advlib.experiments (not JSON: {exc})") from exc
    if not isinstance(record, dict) or record.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path}: not a results file of this advlib (format {RESULTS_FORMAT!r} expected)")
    if record.get("chapter") != chapter:
        raise ValueError(f"{path} holds the results of {record.get('chapter')!r}, not of {chapter!r}")
    from ..provenance import to_jsonable

    saved, wanted = record["parameters"], to_jsonable(dict(parameters), "parameters")
    differ = sorted(k for k in set(saved) | set(wanted) if k not in NOT_COMPARED and saved.get(k) != wanted.get(k))
    if differ:
        shown = "; ".join(f"{k}: file {saved.get(k)!r}, notebook {wanted.get(k)!r}" for k in differ)
        raise ValueError(f"{path} was computed with other parameters ({shown}): run it again with these, or drop results_from")
    return record


def results(run: Any, compute: Callable[..., dict], **given: Any) -> dict[str, Any]:
    """What a notebook shows: ``compute(run.parameters, **given)``, or, when its
    parameter ``results_from`` names a results file, that file's results
    (:func:`read` checks they were computed with the same parameters; the
    provenance ``run`` then records who computed them, ``produced_by``: the
    command, world size, devices). Either way ``run`` records them as
    ``"results"``."""
    source = run.parameters.get("results_from", "")
    if not source:
        found = compute(run.parameters, **given)
    else:
        record = read(source, run.notebook, run.parameters)
        run.record("produced_by", {"results_file": str(source), **record["produced_by"]})
        found = record["results"]
    run.record("results", found)
    return found


def glue_texts(texts: Mapping[str, str]) -> None:
    """Glue each of a chapter's ``texts(results)`` under its name, for the
    page's prose (``{glue:text}`name```); myst_nb is the book's, imported here only."""
    from myst_nb import glue

    for name, text in texts.items():
        glue(name, text, display=False)


def glue_figure(name: str, fig: Any) -> None:
    """Glue the matplotlib figure ``fig`` under ``name`` for the page's
    ``{glue:figure}`` directive, and close it. The caption then sits in the
    page's Markdown beside the directive, where a reader of the source finds it,
    rather than in the front matter of a code cell; the cell that calls this is
    removed from the page."""
    import matplotlib.pyplot as plt
    from myst_nb import glue

    glue(name, fig, display=False)
    plt.close(fig)
