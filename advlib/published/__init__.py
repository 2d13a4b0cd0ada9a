"""The published numbers the book shows beside its own, as data with their source.

One YAML file per chapter, ``advlib/published/<chapter>.yml``, named as the
chapter's notebook. Each file has a ``source`` (the text: authors, title,
venue, year) and entries, each with the ``where`` it was read (table, figure,
section, page) and the ``values`` printed there. Nothing in advlib computes
from these numbers: they are shown beside this build's, and quoted by the
claims where a claim is a published ratio.

    from advlib import published
    t1 = published.load("deepfool_tables")["table1"]
    t1["where"], t1["values"]["LeNet (MNIST)"]["deepfool"]
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"[a-z0-9_]+")


def names() -> list[str]:
    """The chapters that have published numbers."""
    return sorted(p.stem for p in HERE.glob("*.yml"))


def load(chapter: str) -> dict[str, Any]:
    """The published numbers of ``chapter`` (a fresh copy: callers may edit it)."""
    import copy

    return copy.deepcopy(_load(chapter))


@cache
def _load(chapter: str) -> dict[str, Any]:
    if not isinstance(chapter, str) or not _NAME.fullmatch(chapter):
        raise ValueError(f"chapter must be a notebook stem such as 'deepfool_tables', got {chapter!r}")
    path = HERE / f"{chapter}.yml"
    if not path.is_file():
        raise FileNotFoundError(f"no published numbers for {chapter!r} ({path}); there are: {', '.join(names())}")
    record = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(record, dict) or "source" not in record:
        raise ValueError(f"{path} must be a mapping with a 'source' entry")
    for key, entry in record.items():
        if key != "source" and (not isinstance(entry, dict) or "where" not in entry or "values" not in entry):
            raise ValueError(f"{path}: entry {key!r} must have 'where' and 'values'")
    return record
