"""The book's configuration agrees with itself, and scripts/build_book.py does
each of its steps right (on tiny notebooks in a temporary root)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import types
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
bb = importlib.util.module_from_spec(_spec)
sys.modules["build_book"] = bb
_spec.loader.exec_module(bb)

LAYOUT = bb.Layout(ROOT)


def _yaml(name: str):
    return yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the repository's config


def _pins(requirements) -> dict[str, str]:
    pins = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", req.strip())
        assert m, f"not an exact pin: {req!r}"
        pins[m.group(1).lower()] = m.group(2)
    return pins


def test_environment_yml_has_the_same_pins_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["book"] + project["optional-dependencies"]["test"])
    env = _yaml("environment.yml")
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "pip" in conda
    assert project["requires-python"].startswith(">=3.11")
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = _pins([p for p in pip if not p.startswith("-")])
    assert listed == wanted
    assert "-e ." in pip  # advlib itself


def test_config_executes_nothing_and_builds_only_the_toc():
    config = _yaml("_config.yml")
    # Quoted in YAML: a bare off would be read as False.
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["execute"]["stderr_output"] == "remove"
    assert config["only_build_toc_files"] is True
    for pattern in (".venv/**", "**/site-packages/**", "notebooks/**"):
        assert pattern in config["exclude_patterns"]
    assert config["bibtex_bibfiles"] == ["book/references.bib"]
    assert (ROOT / "book" / "references.bib").is_file()
    assert {"amsmath", "colon_fence", "dollarmath"} <= set(config["parse"]["myst_enable_extensions"])
    sphinx = config["sphinx"]["config"]
    assert sphinx.get("intersphinx_mapping", {}) == {}  # offline
    assert sphinx["nb_output_stderr"] == "remove"
    buttons = config["launch_buttons"]
    assert not buttons.get("thebe") and not buttons.get("binderhub_url") and not buttons.get("jupyterhub_url")
    assert not any(config["html"].get(b) for b in ("use_repository_button", "use_issues_button", "use_edit_page_button"))


def test_every_toc_entry_exists():
    files = bb.toc_files(LAYOUT.toc)
    assert files[0] == "book/intro"
    assert "book/reproduce" in files and "book/bibliography" in files
    stems = set(bb.toc_notebooks(LAYOUT.toc, LAYOUT))
    assert "deepfool_geometry" in stems
    for entry in files:
        if entry.startswith("book/executed/"):
            stem = entry.removeprefix("book/executed/")
            assert LAYOUT.source(stem).is_file(), f"_toc.yml lists {entry} but notebooks/{stem}.md does not exist"
        else:
            assert (ROOT / f"{entry}.md").is_file() or (ROOT / entry).is_file(), f"_toc.yml lists missing {entry}"


def test_no_notebook_source_sits_in_the_book_tree():
    # A .md and an .ipynb with the same stem collide; sources live in notebooks/ only.
    assert not list((ROOT / "book").rglob("*.ipynb")) or all("executed" in p.parts for p in (ROOT / "book").rglob("*.ipynb"))


@pytest.mark.parametrize("source", sorted((ROOT / "notebooks").glob("*.md")), ids=lambda p: p.stem)
def test_every_notebook_has_exactly_one_parameters_cell(source):
    import jupytext

    nb = jupytext.read(source)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{source.name}: {len(tagged)} cells tagged parameters"
    params = bb.parse_parameters_cell(tagged[0].source, source.name)
    assert all(spec["help"] for spec in params.values()), f"{source.name}: every parameter needs a # comment"


def test_book_notebooks_declare_what_the_build_injects():
    presets = bb.load_presets(LAYOUT.presets)
    stems = set(bb.toc_notebooks(LAYOUT.toc, LAYOUT)) | {s for p in presets.values() for s in p}
    for stem in sorted(stems):
        params = bb.read_parameters(LAYOUT.source(stem))  # raises if preset/results_json are missing
        assert params["preset"]["type"] == "str" and params["results_json"]["type"] == "str"


def test_every_preset_key_is_a_parameter_of_its_notebook():
    presets = bb.load_presets(LAYOUT.presets)
    assert {"quick", "paper"} <= set(presets)
    assert bb.DEFAULT_PRESET == "quick"
    for preset, notebooks in presets.items():
        for stem, values in notebooks.items():
            assert LAYOUT.source(stem).is_file(), f"presets.yml: {preset}.{stem} has no notebooks/{stem}.md"
            declared = bb.read_parameters(LAYOUT.source(stem))
            bb.check_parameters(f"{preset}.{stem}", values, declared)


def test_every_citation_is_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bib))
    for needed in ("moosavi2016deepfool", "ozbulak2020perturbation", "goodfellow2015explaining",
                   "szegedy2014intriguing", "carlini2017towards", "papernot2016limitations",
                   "papernot2016distillation", "kurakin2017adversarial", "lin2014network",
                   "lecun1998gradient", "xiao2017fashion", "wang2019adversarial"):
        assert needed in keys
    pages = list((ROOT / "book").rglob("*.md")) + list((ROOT / "notebooks").glob("*.md"))
    for page in pages:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", page.read_text(encoding="utf-8")):
            for key in group.split(","):
                assert key.strip() in keys, f"{page.relative_to(ROOT)} cites unknown {key.strip()!r}"


def test_makefile_has_the_book_targets_and_test_runs_unit_book_claims():
    make = (ROOT / "Makefile").read_text()
    for target in ("book:", "notebook:", "claims:", "unit:", "install:"):
        assert re.search(rf"^{target}", make, re.M), target
    body = make.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    order = [body.index(s) for s in ("$(MAKE) unit", "$(MAKE) book PRESET=quick", "$(MAKE) claims")]
    assert order == sorted(order)


def test_executed_notebooks_are_ignored_by_git():
    out = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "book/executed/x.ipynb"], capture_output=True)
    if out.returncode == 128:
        pytest.skip("not a git work tree")
    assert out.returncode == 0
    assert subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "book/executed/x.json"]).returncode == 0


# ---------------------------------------------------------------- build_book's steps


def test_parse_parameters_cell_reads_types_defaults_and_help():
    src = textwrap.dedent(
        """\
        seed: int = 0  # the seed
        models: list = ["lenet", "fc"]  # which networks
        lr = 0.1
        """
    )
    params = bb.parse_parameters_cell(src)
    assert params == {
        "seed": {"type": "int", "default": 0, "help": "the seed"},
        "models": {"type": "list", "default": ["lenet", "fc"], "help": "which networks"},
        "lr": {"type": None, "default": 0.1, "help": ""},
    }


@pytest.mark.parametrize(
    "src, message",
    [
        ("n: int = 2 * 3  # computed", "must be a literal"),
        ("import os", "only `name: type = literal"),
        ("a = 1\na = 2", "assigned twice"),
        ("a = (", "not valid Python"),
        ('n: int = 0  # 0 = all', "more than one '='"),
    ],
)
def test_parse_parameters_cell_rejects_what_papermill_cannot_override(src, message):
    with pytest.raises(bb.ParameterError, match=re.escape(message)):
        bb.parse_parameters_cell(src)


def test_parse_value_reads_like_papermill():
    assert bb.parse_value("1") == 1 and isinstance(bb.parse_value("1"), int)
    assert bb.parse_value("1e-3") == 0.001
    assert bb.parse_value("True") is True and bb.parse_value("None") is None
    assert bb.parse_value("fashion-mnist") == "fashion-mnist"


def test_unknown_or_mistyped_parameters_are_errors():
    declared = {"seed": {"type": "int", "default": 0, "help": ""}, "lr": {"type": "float", "default": 0.1, "help": ""}}
    bb.check_parameters("nb", {"seed": 3, "lr": 1}, declared)  # an int is a fine float
    with pytest.raises(bb.STOPS, match=r"unknown parameter\(s\) sed.*lr, seed"):
        bb.check_parameters("nb", {"sed": 3}, declared)
    with pytest.raises(bb.STOPS, match="declared int"):
        bb.check_parameters("nb", {"seed": "three"}, declared)
    with pytest.raises(bb.STOPS, match="declared int"):
        bb.check_parameters("nb", {"seed": True}, declared)


def test_the_data_a_preset_needs_is_what_each_chapter_says_it_loads(monkeypatch):
    from advlib import experiments

    fakes = {
        "fake_a": types.SimpleNamespace(datasets=lambda params: {params["dataset"]}),
        "fake_b": types.SimpleNamespace(datasets=lambda params: {"digits", "circles"}),
        "fake_c": types.SimpleNamespace(),
    }
    monkeypatch.setattr(experiments, "chapter_module", fakes.__getitem__)
    needed = bb.needed_datasets({"fake_a": {"dataset": "fashion-mnist-32rgb"}, "fake_b": {}})
    assert needed == {"fashion-mnist-32rgb", "digits", "circles"}
    with pytest.raises(AttributeError, match="must define datasets"):
        bb.needed_datasets({"fake_c": {}})
    assert set(bb.ensure_datasets({"digits", "circles"})) == {"digits", "circles"}


def test_a_missing_data_set_stops_the_build_with_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVLIB_DATA", str(tmp_path))
    from advlib import data

    if any(p.is_dir() and any(p.iterdir()) for p in data.data_dirs("cifar10")):
        pytest.skip("CIFAR-10 is on this machine")
    with pytest.raises(bb.BuildError, match="cifar10.*needed by this preset"):
        bb.ensure_datasets({"cifar10"})


def test_fashion_mnist_location_and_install(tmp_path):
    system, root = tmp_path / "system", tmp_path / "repo"
    assert bb.fashion_mnist_location({}, system, root) is None
    mine = tmp_path / "data" / "fashion-mnist"
    mine.mkdir(parents=True)
    env = {"ADVLIB_DATA": str(tmp_path / "data")}
    assert bb.fashion_mnist_location(env, system, root) is None  # an empty folder does not count
    (mine / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    assert bb.fashion_mnist_location(env, system, root) == mine
    # Without ADVLIB_DATA, advlib.data reads data/ where the notebooks run (the root).
    (root / "data" / "fashion-mnist").mkdir(parents=True)
    (root / "data" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"x")
    assert bb.fashion_mnist_location({}, system, root) == root / "data" / "fashion-mnist"

    with pytest.raises(bb.BuildError, match="apt-get install -y dataset-fashion-mnist"):
        bb.ensure_fashion_mnist(env={}, system_dir=system, root=tmp_path / "empty", is_root=False)

    calls = []

    def fake_apt(cmd, **kw):
        calls.append(cmd)
        if cmd[:2] == ["apt-get", "install"]:
            system.mkdir(exist_ok=True)
            (system / "t10k-images-idx3-ubyte.gz").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0)

    if bb.shutil.which("apt-get") is None:
        pytest.skip("no apt-get here")
    assert bb.ensure_fashion_mnist(env={}, system_dir=system, root=tmp_path / "empty", is_root=True, run=fake_apt) == system
    assert calls[0][:2] == ["apt-get", "install"] and "dataset-fashion-mnist" in calls[0]


def test_find_error_outputs_flags_tracebacks_stderr_and_printed_tracebacks(tmp_path):
    clean = '<div class="cell_output docutils container"><div class="output stream highlight-myst-ansi"><pre>ok</pre></div></div>'
    prose = "<p>A failing notebook stops the build with its Traceback (most recent call last).</p>"
    (tmp_path / "good.html").write_text(clean + prose)
    (tmp_path / "tb.html").write_text('<div class="cell_output docutils container"><div class="output traceback highlight-ipythontb"><pre>ZeroDivisionError</pre></div></div>')
    (tmp_path / "err.html").write_text('<div class="output stderr highlight-myst-ansi"><pre>warning</pre></div>')
    (tmp_path / "printed.html").write_text('<div class="cell_output docutils container"><pre>Traceback (most recent call last):\n  File</pre></div>')
    (tmp_path / "sys.html").write_text('<div class="system-message"><p>Unknown role</p></div>')
    problems = bb.find_error_outputs(tmp_path)
    assert sorted(p.split(":")[0] for p in problems) == ["err.html", "printed.html", "sys.html", "tb.html"]


GOOD_NOTEBOOK = '''\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3 (ipykernel)
  language: python
  name: python3
---

# A tiny notebook

```{code-cell} ipython3
:tags: [parameters]

seed: int = 0  # a seed
divisor: int = 1  # 0 makes the notebook fail
preset: str = "defaults"  # set by the build
results_json: str = "tiny.json"  # set by the build
```

```{code-cell} ipython3
from advlib import provenance

run = provenance.Run(notebook="tiny", parameters=dict(seed=seed, divisor=divisor, preset=preset, results_json=results_json))
run.record("value", seed / divisor)
run.save(results_json)
```
'''


@pytest.fixture
def tiny_root(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "tiny.md").write_text(GOOD_NOTEBOOK)
    (tmp_path / "presets.yml").write_text("quick:\n  tiny:\n    seed: 4\npaper: {}\n")
    return bb.Layout(tmp_path)


def test_resolve_parameters_layers_defaults_preset_and_overrides(tiny_root):
    injected, effective = bb.resolve_parameters("tiny", "quick", layout=tiny_root, overrides={"divisor": 2})
    assert injected == {"seed": 4, "divisor": 2, "preset": "quick", "results_json": "book/executed/tiny.json"}
    assert effective == injected
    injected, effective = bb.resolve_parameters("tiny", "paper", layout=tiny_root)
    assert injected == {"preset": "paper", "results_json": "book/executed/tiny.json"}
    assert effective["seed"] == 0 and effective["divisor"] == 1
    with pytest.raises(bb.STOPS, match="unknown parameter"):
        bb.resolve_parameters("tiny", "quick", layout=tiny_root, overrides={"n_images": 5})
    with pytest.raises(bb.STOPS, match="unknown preset"):
        bb.resolve_parameters("tiny", "fast", layout=tiny_root)
    with pytest.raises(bb.STOPS, match="set by the build"):
        bb.resolve_parameters("tiny", "quick", layout=tiny_root, overrides={"results_json": "x.json"})


def test_to_ipynb_keeps_the_parameters_tag_and_sets_the_kernel(tiny_root, tmp_path):
    out = bb.to_ipynb(tiny_root.source("tiny"), tmp_path / "out" / "tiny.ipynb")
    nb = json.loads(out.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert sum("parameters" in c["metadata"].get("tags", []) for c in nb["cells"]) == 1


@pytest.mark.slow
def test_run_notebook_executes_with_the_preset_and_saves_results(tiny_root):
    bb.ensure_kernel()
    out = bb.run_notebook("tiny", "quick", overrides={"divisor": 2}, layout=tiny_root, check_data=False)
    assert out["executed"] == tiny_root.executed / "tiny.ipynb" and out["executed"].is_file()
    record = json.loads(out["results"].read_text())
    assert record["results"]["value"] == 2.0 and record["parameters"]["seed"] == 4
    nb = json.loads(out["executed"].read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and 'preset = "quick"' in "".join(injected[0]["source"])
    # The kernel was this interpreter (same sys.prefix): papermill records its language_info.
    assert nb["metadata"]["language_info"]["version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")


@pytest.mark.slow
def test_a_failing_notebook_fails_with_its_name_and_traceback_and_leaves_no_stale_results(tiny_root):
    bb.ensure_kernel()
    bb.run_notebook("tiny", "quick", layout=tiny_root, check_data=False)
    assert (tiny_root.executed / "tiny.json").is_file()
    with pytest.raises(bb.NotebookFailed) as info:
        bb.run_notebook("tiny", "quick", overrides={"divisor": 0}, layout=tiny_root, check_data=False)
    message = str(info.value)
    assert "notebook tiny failed" in message and "ZeroDivisionError" in message
    assert "run.record(\"value\", seed / divisor)" in message  # the failing cell's source
    assert not (tiny_root.executed / "tiny.json").exists() and not (tiny_root.executed / "tiny.ipynb").exists()


@pytest.mark.slow
def test_a_notebook_that_saves_incomplete_provenance_fails_the_build(tiny_root):
    src = tiny_root.source("tiny")
    src.write_text(GOOD_NOTEBOOK.replace("parameters=dict(seed=seed, divisor=divisor,", "parameters=dict(seed=seed,"))
    bb.ensure_kernel()
    with pytest.raises(bb.BuildError, match="lacks parameter"):
        bb.run_notebook("tiny", "quick", layout=tiny_root, check_data=False)


def test_cli_rejects_an_unknown_parameter_before_executing(capsys, monkeypatch):
    monkeypatch.setattr(bb, "ensure_kernel", lambda: {})
    assert bb.main(["run", "deepfool_geometry", "-p", "no_such_parameter", "1"]) == 1
    err = capsys.readouterr().err
    assert "unknown parameter(s) no_such_parameter" in err and "seed" in err
