"""advlib.provenance: what a notebook saves beside its executed copy."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

import advlib
from advlib import provenance
from advlib.provenance import Run, to_jsonable


class FakeDataset:
    def describe(self):
        return {"name": "mnist", "split": "test", "n": 100, "shape": [1, 28, 28], "source": "idx files", "options": {"verify": True}}


def test_to_jsonable_converts_numpy_and_torch_scalars_to_python_numbers():
    out = to_jsonable({"a": np.float64(0.25), "b": np.int64(3), "c": torch.tensor(1.5), "d": np.bool_(True)})
    assert out == {"a": 0.25, "b": 3, "c": 1.5, "d": True}
    assert type(out["a"]) is float and type(out["b"]) is int and type(out["d"]) is bool
    # What the notebooks print must not be what they save: NumPy 2 reprs are np.float64(...).
    assert "np." not in json.dumps(out)


def test_to_jsonable_arrays_tensors_tuples_and_paths():
    out = to_jsonable({"arr": np.arange(4).reshape(2, 2), "t": torch.ones(2), "tup": (1, 2), "p": provenance.Path("/x/y")})
    assert out == {"arr": [[0, 1], [2, 3]], "t": [1.0, 1.0], "tup": [1, 2], "p": "/x/y"}


def test_non_finite_floats_become_null_so_the_file_is_strict_json():
    out = to_jsonable([math.nan, math.inf, np.float32("-inf"), 1.0])
    assert out == [None, None, None, 1.0]
    json.dumps(out, allow_nan=False)


def test_dataframe_round_trips_through_table():
    df = pd.DataFrame({"rho": [0.2, 0.11], "error": [0.01, 0.017]}, index=["lenet", "fc500-150-10"])
    saved = json.loads(json.dumps(to_jsonable(df)))
    back = provenance.table(saved)
    pd.testing.assert_frame_equal(back, df)


def test_unsaveable_value_raises_naming_where_it_is():
    with pytest.raises(TypeError, match=r"rho\['model'\]"):
        to_jsonable({"model": torch.nn.Linear(2, 2)}, "rho")


def test_run_takes_preset_from_parameters_and_records_data_and_results():
    run = Run(notebook="nb", parameters={"seed": np.int64(1), "preset": "quick", "n_images": 10})
    assert run.preset == "quick" and run.device == "cpu"
    entry = run.data("test", FakeDataset(), stands_in_for="MNIST")
    assert entry["note"] == "stand-in for MNIST" and entry["n"] == 100 and entry["role"] == "test"
    run.data("train", {"name": "blobs", "n": 5})
    assert run.datasets[1]["stands_in_for"] is None and run.datasets[1]["note"] == "not a stand-in"
    value = np.float64(0.5)
    assert run.record("rho", value) is value
    record = run.to_dict()
    assert record["parameters"] == {"seed": 1, "preset": "quick", "n_images": 10}
    assert record["seeds"] == {"seed": 1}
    assert record["sizes"]["n_images"] == 10 and record["sizes"]["test (mnist)"] == 100
    assert record["results"] == {"rho": 0.5}
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"]["advlib"] == advlib.__version__
    assert record["wall_time_s"] >= 0


def test_run_records_a_real_advlib_dataset():
    from advlib import data

    circles = data.load("circles", "train", n_samples=40, seed=0)
    run = Run(notebook="nb", parameters={})
    entry = run.data("train", circles)
    assert entry["name"] == "circles" and entry["n"] == len(circles) and entry["shape"] == [2]
    assert entry["source"] == circles.describe()["source"]


def test_run_rejects_duplicate_roles_and_bad_inputs():
    run = Run(notebook="nb", parameters={})
    run.data("test", FakeDataset())
    with pytest.raises(ValueError, match="already recorded"):
        run.data("test", FakeDataset())
    with pytest.raises(TypeError, match="describe"):
        run.data("train", object())
    with pytest.raises(ValueError, match="name"):
        run.data("train", {"n": 3})
    with pytest.raises(TypeError):
        run.record("bad", object())
    with pytest.raises(ValueError):
        Run(notebook="", parameters={})


def test_save_writes_json_atomically_and_load_reads_it(tmp_path):
    run = Run(notebook="nb", parameters={"preset": "quick"})
    run.record("table", pd.DataFrame({"x": [1.0]}))
    path = run.save(tmp_path / "sub" / "nb.json")
    assert path.is_file()
    assert os.listdir(path.parent) == ["nb.json"]  # no temporary file left
    record = provenance.load(path)
    assert record["notebook"] == "nb" and record["preset"] == "quick"
    assert provenance.table(record["results"]["table"])["x"].tolist() == [1.0]


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "nb.json"
    path.write_text('{"old": true}')

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(provenance.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        Run(notebook="nb", parameters={}).save(path)
    assert path.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ["nb.json"]


def test_load_explains_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="make book"):
        provenance.load(tmp_path / "missing.json")


def test_git_state_outside_git_is_unknown(tmp_path):
    assert provenance.git_state(tmp_path) == {"commit": "unknown", "dirty": None}


def test_git_state_inside_a_repository(tmp_path):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env=env)
    (tmp_path / "f").write_text("1")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True, env=env)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "x"], check=True, env=env)
    state = provenance.git_state(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", state["commit"]) and state["dirty"] is False
    (tmp_path / "f").write_text("2")
    assert provenance.git_state(tmp_path)["dirty"] is True


def test_summary_is_a_table_of_what_and_value():
    run = Run(notebook="nb", parameters={"seed": 0, "preset": "paper"})
    run.data("test", FakeDataset(), stands_in_for="MNIST")
    run.record("rho", 0.1)
    summary = run.summary()
    assert list(summary.columns) == ["value"]
    assert summary.loc["preset", "value"] == "paper"
    assert summary.loc["parameter: seed", "value"] == "0"
    assert "stand-in for MNIST" in summary.loc["data: test", "value"]
    assert summary.loc["results saved", "value"] == "rho"


def test_of_notebook_records_exactly_the_parameters_cell(tmp_path):
    source = tmp_path / "nb.md"
    source.write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n---\n\n"
        "```{code-cell} ipython3\n:tags: [parameters]\n\nseed: int = 0  # the seed\n"
        'preset: str = "defaults"  # set by the build\nresults_json: str = "nb.json"  # set by the build\n```\n',
        encoding="utf-8",
    )
    namespace = {"seed": 3, "preset": "quick", "results_json": "x.json", "unrelated": object()}
    import pandas as pd

    with pd.option_context("display.max_colwidth", 50):
        run = provenance.Run.of_notebook("nb", namespace, source=source)
        # The notebook's tables show their cells whole: what a data set stands in for is not cut off.
        assert pd.get_option("display.max_colwidth") is None
        wide = pd.DataFrame({"value": ["fashion-mnist (test), n = 10000, stand-in for MNIST; source: " + "x" * 60]})
        assert "stand-in for MNIST" in wide._repr_html_()
    assert run.parameters == {"seed": 3, "preset": "quick", "results_json": "x.json"}
    assert run.preset == "quick"
    del namespace["seed"]
    with pytest.raises(NameError, match="seed"):
        provenance.Run.of_notebook("nb", namespace, source=source)
