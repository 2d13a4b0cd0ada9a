"""The repository stands on its own: no file refers to material outside it
(the published numbers it shows live in advlib/published/, with their source)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from advlib import published

ROOT = Path(__file__).resolve().parents[1]
# Spelt in pieces so that this file does not itself contain what it forbids.
OUTSIDE = tuple("".join(parts) for parts in (("REFERENCE", ".md"), ("../", "shared"), ("shared", "/papers"), ("STYLE", ".md")))


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / line for line in out.splitlines()]
    # Files not yet committed count too.
    extra = subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return files + [ROOT / line for line in extra.splitlines()]


def test_no_file_refers_to_anything_outside_the_repository():
    hits = []
    for path in _tracked():
        if not path.is_file() or path.suffix in {".json", ".png", ".gz"}:
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        hits += [f"{path.relative_to(ROOT)}: {word}" for word in OUTSIDE if word in text]
    assert not hits, "\n".join(hits)


def test_every_published_record_names_its_source_and_where_each_number_is_printed():
    assert published.names(), "advlib/published/ holds no records"
    for name in published.names():
        record = published.load(name)
        assert isinstance(record["source"], (str, dict)) and record["source"], name
        for key, entry in record.items():
            if key != "source":
                assert entry["where"] and entry["values"] is not None, f"{name}.{key}"
        raw = yaml.safe_load((published.HERE / f"{name}.yml").read_text(encoding="utf-8"))
        assert raw == record  # load() returns the file as it is


def test_published_load_refuses_unknown_or_odd_names():
    import pytest

    with pytest.raises(FileNotFoundError, match="no published numbers"):
        published.load("no_such_chapter")
    with pytest.raises(ValueError, match="notebook stem"):
        published.load("../etc")
