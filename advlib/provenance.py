"""What produced a notebook's numbers, shown in the notebook and saved beside it.

Every executed notebook of the book records, in a JSON file beside the
executed ``.ipynb``, the notebook's name, the preset and every parameter
value, the data sets it actually used (and which of them stand in for a
paper's data set), the software versions, the git commit, the wall time,
and the results it computed. The claims tests read these files; a reader
sees the same record as a table at the end of the notebook.

Example::

    run = provenance.Run(notebook="deepfool_tables", parameters={"seed": 0, "preset": "quick"})
    run.data("test", test_set, stands_in_for="MNIST")   # a Dataset, or its describe() dict
    run.record("rho_adv", {"lenet": 0.21})
    run.save("book/executed/deepfool_tables.json")      # atomic
    run.summary()                                       # a DataFrame to display
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import advlib

FORMAT = 1  # bumped when the layout of the saved JSON changes

_DATASET_KEYS = ("name", "split", "n", "shape", "source", "options")


def to_jsonable(value: Any, where: str = "value") -> Any:
    """``value`` as plain JSON types: NumPy and torch scalars become Python
    numbers, arrays and tensors nested lists, a pandas DataFrame the dict
    ``{"columns", "index", "data"}`` (``table`` turns it back), paths strings,
    tuples and sets lists. NaN and infinities become ``None`` (strict JSON has
    no spelling for them).

    Anything else raises TypeError naming where it sits: a result that cannot
    be saved faithfully is a bug in the notebook, not something to stringify.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, where)
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), where)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where)
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist(), where)
    if isinstance(value, (torch.device, torch.dtype, Path)):
        return str(value)
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), where)
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a book dependency
        pd = None
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            split = value.to_dict(orient="split")
            return {
                "columns": to_jsonable(list(split["columns"]), f"{where}.columns"),
                "index": to_jsonable(list(split["index"]), f"{where}.index"),
                "data": to_jsonable(split["data"], f"{where}.data"),
            }
        if isinstance(value, pd.Series):
            return to_jsonable(value.to_dict(), where)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if isinstance(k, (np.generic, torch.Tensor)):
                k = k.item()
            if not isinstance(k, (str, int, float, bool)):
                raise TypeError(f"{where}: a key of type {type(k).__name__} cannot be a JSON key ({k!r})")
            out[str(k)] = to_jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return [to_jsonable(v, f"{where}[]") for v in sorted(value, key=repr)]
    raise TypeError(f"{where}: cannot save a {type(value).__name__} as JSON ({value!r:.80})")


def table(saved: Mapping[str, Any]):
    """The pandas DataFrame of a table saved by :func:`to_jsonable`."""
    import pandas as pd

    missing = {"columns", "index", "data"} - set(saved)
    if missing:
        raise ValueError(f"not a saved table: missing {sorted(missing)}")
    return pd.DataFrame(saved["data"], columns=saved["columns"], index=saved["index"])


def load(path: str | os.PathLike) -> dict[str, Any]:
    """A saved provenance record (the dict :meth:`Run.save` wrote)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no results saved there; build the book first (`make book`), "
            "which writes one JSON per notebook beside the executed notebook"
        )
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: provenance format {record.get('format')!r}, this advlib reads {FORMAT}")
    return record


def git_state(where: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": HEAD or "unknown", "dirty": bool or None}`` of the git work
    tree holding ``where`` (default: the one holding advlib, i.e. the
    project's, wherever the notebook runs from)."""
    where = Path(where) if where is not None else Path(advlib.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30
        )
        if commit.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown", "dirty": None}
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"commit": commit.stdout.strip(), "dirty": dirty}


def environment() -> dict[str, Any]:
    """Versions of what computed the numbers, and the machine it ran on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "advlib": advlib.__version__,
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }


def _describe(dataset: Any) -> dict[str, Any]:
    if isinstance(dataset, Mapping):
        desc = dict(dataset)
    elif callable(getattr(dataset, "describe", None)):
        desc = dict(dataset.describe())
    else:
        raise TypeError(
            "dataset must be an advlib.data Dataset (with describe()) or its describe() dict, "
            f"got {type(dataset).__name__}"
        )
    if "name" not in desc:
        raise ValueError(f"a data set description needs at least a 'name', got keys {sorted(desc)}")
    return desc


@dataclasses.dataclass
class Run:
    """The provenance of one notebook run; see the module docstring.

    Args:
        notebook: the notebook's stem (``notebooks/<stem>.md``).
        parameters: every parameter value the notebook ran with.
        preset: the book preset; by default ``parameters["preset"]``.
        device: where the tensors lived; by default ``parameters["device"]``
            or ``"cpu"``.
    """

    notebook: str
    parameters: dict[str, Any]
    preset: str | None = None
    device: str | None = None
    datasets: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    started: str = dataclasses.field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    _t0: float = dataclasses.field(default_factory=time.perf_counter, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.notebook, str) or not self.notebook:
            raise ValueError(f"notebook must be the notebook's name, got {self.notebook!r}")
        if not isinstance(self.parameters, Mapping):
            raise TypeError(f"parameters must be a dict, got {type(self.parameters).__name__}")
        self.parameters = to_jsonable(dict(self.parameters), "parameters")
        if self.preset is None:
            self.preset = self.parameters.get("preset")
        if self.device is None:
            self.device = str(self.parameters.get("device", "cpu"))
        self.device = str(self.device)

    @classmethod
    def of_notebook(cls, notebook: str, namespace: Mapping[str, Any], *, source: str | os.PathLike | None = None) -> "Run":
        """The run of ``notebook``, its parameters read from the notebook's own
        parameters cell (``notebooks/<notebook>.md``, or ``source``) and their
        values from ``namespace`` (the notebook passes ``globals()``): every
        parameter the cell declares is recorded, and nothing else.

        A declared parameter missing from ``namespace`` is an error: the
        record would otherwise claim a value the run never had.

        It also sets the notebook's tables to show every cell whole (pandas
        cuts them at 50 characters by default, which on the book's pages cut
        off what a data set stands in for and the notes of a table's rows)."""
        from .parameters import read_parameters, source_of

        declared = read_parameters(source if source is not None else source_of(notebook))
        missing = [name for name in declared if name not in namespace]
        if missing:
            raise NameError(f"{notebook}: parameter(s) {', '.join(missing)} declared in its parameters cell are not defined")
        _show_whole_cells()
        return cls(notebook=notebook, parameters={name: namespace[name] for name in declared})

    def data(self, role: str, dataset: Any, stands_in_for: str | None = None) -> dict[str, Any]:
        """Record a data set the notebook used as ``role`` ("train", "test",
        ...). ``stands_in_for`` names the paper's data set it replaces
        ("MNIST"), or None when it is the paper's own (or the paper has none).
        Returns the recorded entry."""
        if not isinstance(role, str) or not role:
            raise ValueError(f"role must be a non-empty string, got {role!r}")
        if any(d["role"] == role for d in self.datasets):
            raise ValueError(f"a data set is already recorded as {role!r}")
        desc = _describe(dataset)
        entry = {"role": role}
        entry.update({k: desc.get(k) for k in _DATASET_KEYS})
        entry.update({k: v for k, v in desc.items() if k not in entry})
        entry["stands_in_for"] = stands_in_for
        entry["note"] = f"stand-in for {stands_in_for}" if stands_in_for else "not a stand-in"
        entry = to_jsonable(entry, f"data[{role!r}]")
        self.datasets.append(entry)
        return entry

    def record(self, key: str, value: Any) -> Any:
        """Record a result under ``key`` (converted to JSON now, so a value
        that cannot be saved fails here, at the line that made it). Returns
        ``value`` unchanged."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"key must be a non-empty string, got {key!r}")
        self.results[key] = to_jsonable(value, key)
        return value

    @property
    def seeds(self) -> dict[str, Any]:
        return {k: v for k, v in self.parameters.items() if "seed" in k}

    @property
    def sizes(self) -> dict[str, Any]:
        sizes = {k: v for k, v in self.parameters.items() if k.startswith("n_") or k.endswith("_size")}
        sizes.update({f"{d['role']} ({d['name']})": d.get("n") for d in self.datasets})
        return sizes

    @property
    def wall_time_s(self) -> float:
        return time.perf_counter() - self._t0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "notebook": self.notebook,
            "preset": self.preset,
            "parameters": self.parameters,
            "seeds": self.seeds,
            "sizes": self.sizes,
            "datasets": self.datasets,
            "device": self.device,
            "versions": environment(),
            "git": git_state(),
            "started": self.started,
            "wall_time_s": round(self.wall_time_s, 3),
            "results": self.results,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``, atomically (a reader
        never sees half a file; a failed write leaves the old one). Returns
        the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return path

    def summary(self):
        """The record as a two-column table (what, value) for display."""
        import pandas as pd

        record = self.to_dict()
        rows: list[tuple[str, str]] = [
            ("notebook", record["notebook"]),
            ("preset", str(record["preset"])),
        ]
        rows += [(f"parameter: {k}", _short(v)) for k, v in record["parameters"].items()]
        for d in record["datasets"]:
            what = f"{d['name']} ({d.get('split') or 'no split'}), n = {d.get('n')}, {d['note']}"
            if d.get("source"):
                what += f"; source: {d['source']}"
            rows.append((f"data: {d['role']}", what))
        rows.append(("device", record["device"]))
        rows += [(f"version: {k}", _short(v)) for k, v in record["versions"].items()]
        dirty = {True: " (uncommitted changes)", False: "", None: ""}[record["git"]["dirty"]]
        rows.append(("git commit", record["git"]["commit"] + dirty))
        rows.append(("started (UTC)", record["started"]))
        rows.append(("wall time", f"{record['wall_time_s']:.1f} s"))
        rows.append(("results saved", ", ".join(record["results"]) or "none"))
        by = record["results"].get("produced_by")
        if by:  # shown from a results file (results_from), computed elsewhere
            rows.append(("computed by", f"{by.get('command')} on {by.get('world_size')} process(es): "
                                        f"{', '.join(by.get('devices') or [])}; file {by.get('results_file')}"))
        return pd.DataFrame(rows, columns=["what", "value"]).set_index("what")


def _show_whole_cells() -> None:
    """Display every pandas table cell whole, in the notebook that calls it."""
    try:
        import pandas as pd
    except ImportError:  # the library without the book's extras: no tables to show
        return
    pd.set_option("display.max_colwidth", None)


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
