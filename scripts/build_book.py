#!/usr/bin/env python
"""Build the book: papermill executes every notebook, Jupyter Book renders the results.

    source notebooks/<stem>.md (jupytext, MyST)
      -> unexecuted _build/notebooks/<stem>.ipynb        (to_ipynb)
      -> papermill with the preset's parameters          (execute_notebook)
      -> book/executed/<stem>.ipynb + <stem>.json         (run_notebook)
      -> jupyter-book build . (execute_notebooks: "off")  (build_html)
      -> _build/html/index.html, checked for error output (check_html)

Papermill is the only executor: Jupyter Book's cache keys on cell source only,
so it would keep numbers computed by an older advlib.

Commands (``--help`` on each):

    build_book.py build [--preset quick]           every notebook of _toc.yml, then the HTML
    build_book.py run STEM [--preset quick] [-p NAME VALUE ...] [-y YAML] [--html]
                                                   one notebook, with any parameters
    build_book.py params STEM                      the parameters a notebook takes
    build_book.py html                             the HTML from book/executed as it is
    build_book.py build --results DIR              show the results files of DIR (make results)
    build_book.py stems [--sharded]                the notebooks of _toc.yml

Presets (presets.yml) map preset -> notebook stem -> {parameter: value}; a
notebook not listed runs with its defaults. Every notebook declares the two
parameters this script injects: ``preset`` and ``results_json`` (where the
notebook saves its provenance and results, beside the executed notebook).
"""

from __future__ import annotations

import argparse
import html.parser
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # advlib of this checkout, installed or not
from advlib.parameters import (  # noqa: E402
    INJECTED, ParameterError, check_parameters, chosen, load_presets, parse_parameters_cell, parse_value, read_parameters,
)

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "python3"
DEFAULT_PRESET = "quick"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_PACKAGE = "dataset-fashion-mnist"


class BuildError(Exception):
    """The build cannot go on; the message says why and what to do."""


# A parameters cell the build cannot override is a reason to stop, like any other.
STOPS = (BuildError, ParameterError)


class NotebookFailed(BuildError):
    """A notebook raised; the message names it and carries the cell's traceback."""


@dataclass(frozen=True)
class Layout:
    """Where things are, relative to the repository root (tests use a tmp root)."""

    root: Path = ROOT

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def executed(self) -> Path:
        return self.root / "book" / "executed"

    @property
    def work(self) -> Path:
        return self.root / "_build" / "notebooks"

    @property
    def html(self) -> Path:
        return self.root / "_build" / "html"

    @property
    def presets(self) -> Path:
        return self.root / "presets.yml"

    @property
    def toc(self) -> Path:
        return self.root / "_toc.yml"

    def source(self, stem: str) -> Path:
        return self.notebooks / f"{stem}.md"


# ---------------------------------------------------------------- parameters


def resolve_parameters(
    stem: str,
    preset: str,
    *,
    layout: Layout,
    overrides: Mapping[str, Any] | None = None,
    presets: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(injected, effective)`` for one notebook run.

    ``injected`` is what papermill sets: the preset's values for this
    notebook, then ``overrides``, then ``preset`` and ``results_json``.
    ``effective`` is every parameter's value (defaults filled in), which the
    notebook must save in its provenance.
    """
    presets = load_presets(layout.presets) if presets is None else presets
    declared = read_parameters(layout.source(stem))
    injected = chosen(stem, declared, preset, presets, overrides) | {"results_json": results_path(stem, layout)}
    effective = {name: spec["default"] for name, spec in declared.items()} | injected
    return injected, effective


def results_path(stem: str, layout: Layout) -> str:
    """Where the notebook saves its JSON: beside the executed notebook,
    relative to the root (the notebook runs there) so the path shown in the
    book is the same on every machine."""
    path = layout.executed / f"{stem}.json"
    try:
        return path.relative_to(layout.root).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- table of contents


def toc_files(toc: Path) -> list[str]:
    """Every ``file:`` entry of a jb-book _toc.yml (root first), in order."""
    data = yaml.safe_load(toc.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != "jb-book" or "root" not in data:
        raise BuildError(f"{toc}: expected `format: jb-book` with a `root:`")
    out = [data["root"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                out.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({k: v for k, v in data.items() if k in ("parts", "chapters")})
    return [str(f) for f in out]


def toc_notebooks(toc: Path, layout: Layout | None = None) -> list[str]:
    """The stems of the executed notebooks _toc.yml lists, in book order."""
    layout = layout or Layout(toc.parent)
    prefix = layout.executed.relative_to(layout.root).as_posix() + "/"
    return [f[len(prefix) :].removesuffix(".ipynb") for f in toc_files(toc) if f.startswith(prefix)]


# ---------------------------------------------------------------- data sets


def needed_datasets(effective: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The data sets the notebooks ``{stem: parameters}`` will load, as each
    chapter's ``advlib.experiments.<stem>.datasets(parameters)`` names them."""
    from advlib import experiments

    return set().union(*(experiments.datasets(stem, params) for stem, params in effective.items()))


def ensure_datasets(names: Iterable[str], *, root: Path = ROOT) -> dict[str, str]:
    """``{name: where it was found}`` for every data set named; Fashion-MNIST is
    installed from Debian's package when missing (as root). Any other missing
    set stops the build with advlib.data's message, which says where it looked
    and how to get it: nothing is substituted."""
    from advlib import data

    found = {}
    for name in sorted(names):
        if data.RGB32.get(name, name) == "fashion-mnist":
            ensure_fashion_mnist(root=root)
        try:
            found[name] = data.load(name, "test", limit=1).source
        except (data.DataNotFoundError, data.CorruptDataError) as exc:
            raise BuildError(f"data set {name!r} is needed by this preset:\n{exc}") from exc
    return found


def fashion_mnist_location(
    env: Mapping[str, str] | None = None,
    system_dir: Path = FASHION_SYSTEM_DIR,
    root: Path = ROOT,
) -> Path | None:
    """Where Fashion-MNIST is on this machine, looked for where advlib.data
    looks: Debian's package, or ``$ADVLIB_DATA/fashion-mnist`` (``data/`` of
    the root, where the notebooks run, when ADVLIB_DATA is unset) with files
    in it; None if neither."""
    env = os.environ if env is None else env
    mine = Path(env.get("ADVLIB_DATA") or root / "data") / "fashion-mnist"
    for folder in (system_dir, mine):
        if folder.is_dir() and any(p.is_file() for p in folder.iterdir()):
            return folder
    return None


def ensure_fashion_mnist(
    *,
    env: Mapping[str, str] | None = None,
    system_dir: Path = FASHION_SYSTEM_DIR,
    root: Path = ROOT,
    is_root: bool | None = None,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> Path:
    """Fashion-MNIST's folder; installs Debian's package when root, else stops
    with the commands that would."""
    found = fashion_mnist_location(env, system_dir, root)
    if found:
        return found
    how = (
        f"Fashion-MNIST is needed by this preset but is neither in {system_dir} nor in $ADVLIB_DATA/fashion-mnist.\n"
        f"Install Debian's package:  sudo apt-get update && sudo apt-get install -y {FASHION_PACKAGE}\n"
        "or put the four idx files (train-images-idx3-ubyte.gz, ...) in $ADVLIB_DATA/fashion-mnist."
    )
    is_root = (os.geteuid() == 0) if is_root is None else is_root
    if not is_root or shutil.which("apt-get") is None:
        raise BuildError(how)
    print(f"[book] installing {FASHION_PACKAGE} (Fashion-MNIST) with apt-get", flush=True)
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", FASHION_PACKAGE]
    if run(install, env=apt_env).returncode != 0:
        # A fresh machine may have no package lists yet.
        run(["apt-get", "update"], env=apt_env)
        if run(install, env=apt_env).returncode != 0:
            raise BuildError(f"apt-get could not install {FASHION_PACKAGE}.\n{how}")
    found = fashion_mnist_location(env, system_dir, root)
    if not found:
        raise BuildError(f"{FASHION_PACKAGE} installed, but {system_dir} has no files.\n{how}")
    return found


# ---------------------------------------------------------------- execution


def ensure_kernel() -> dict[str, Any]:
    """Make the ``python3`` kernel papermill starts be this interpreter's.

    A ``python3`` kernelspec in ~/.local/share/jupyter would otherwise win over
    the venv's and run the notebooks with another Python and another advlib.
    """
    os.environ["JUPYTER_PREFER_ENV_PATH"] = "1"
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    prefix = Path(sys.prefix).resolve()

    def spec_here():
        try:
            spec = KernelSpecManager().get_kernel_spec(KERNEL)
        except NoSuchKernel:
            return None
        return spec if Path(spec.resource_dir).resolve().is_relative_to(prefix) else None

    cmd = [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL]
    spec = spec_here()
    if spec is None:
        if subprocess.run(cmd, capture_output=True, text=True).returncode != 0 or (spec := spec_here()) is None:
            raise BuildError(f"no '{KERNEL}' kernel inside {prefix}; tried: {' '.join(cmd)}")
    exe = spec.argv[0]
    # jupyter_client replaces a bare "python" by the running interpreter.
    if exe not in ("python", "python3", f"python3.{sys.version_info.minor}") and (
        Path(exe).resolve() != Path(sys.executable).resolve()
    ):
        raise BuildError(f"the '{KERNEL}' kernel runs {exe}, not {sys.executable}: reinstall it with {' '.join(cmd)}")
    return {"name": KERNEL, "resource_dir": spec.resource_dir, "argv0": exe}


def to_ipynb(source: Path, dest: Path) -> Path:
    """Jupytext MyST source -> unexecuted .ipynb with the python3 kernelspec."""
    import jupytext

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    dest.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(nb, dest, fmt="ipynb")
    return dest


def execute_notebook(name: str, unexecuted: Path, output: Path, parameters: Mapping[str, Any], *, cwd: Path) -> Path:
    """Papermill-execute ``unexecuted`` into ``output``; a failing cell raises
    NotebookFailed with the notebook's name, the cell and its traceback."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError, strip_color

    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(
            str(unexecuted),
            str(output),
            parameters=dict(parameters),
            kernel_name=KERNEL,
            cwd=str(cwd),
            progress_bar=False,
            log_output=False,
        )
    except PapermillExecutionError as exc:
        tb = strip_color("\n".join(exc.traceback))
        raise NotebookFailed(
            f"notebook {name} failed in cell {exc.cell_index} (In [{exc.exec_count}]): {exc.ename}: {exc.evalue}\n"
            f"--- cell source ---\n{exc.source}\n--- traceback ---\n{tb}\n"
            f"(the partly executed notebook is {output})"
        ) from exc
    return output


def stderr_outputs(executed: Path) -> list[str]:
    """First lines of what the notebook wrote to stderr (the book hides it:
    tqdm bars go there; the console should still show warnings)."""
    nb = json.loads(executed.read_text(encoding="utf-8"))
    lines = []
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out.get("text", ""))
                first = next((ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()), "")
                lines.append(f"cell {i}: {first[:160]}")
    return lines


def check_results(stem: str, path: Path, effective: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook saved its provenance, for this notebook, with every
    parameter at the value it ran with."""
    if not path.is_file():
        raise BuildError(f"notebook {stem} ran but saved no results at {path} (call run.save(results_json))")
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("notebook") != stem:
        raise BuildError(f"{path}: records notebook {record.get('notebook')!r}, expected {stem!r}")
    saved = record.get("parameters", {})
    missing = sorted(set(effective) - set(saved))
    if missing:
        raise BuildError(f"{path}: the provenance of {stem} lacks parameter(s) {', '.join(missing)}")
    from advlib.provenance import to_jsonable

    wrong = [k for k, v in effective.items() if saved[k] != to_jsonable(v)]
    if wrong:
        detail = ", ".join(f"{k}: ran {effective[k]!r}, saved {saved[k]!r}" for k in wrong)
        raise BuildError(f"{path}: saved parameter values differ from the run's: {detail}")
    return record


def _remove(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def run_notebook(
    stem: str,
    preset: str = DEFAULT_PRESET,
    *,
    overrides: Mapping[str, Any] | None = None,
    layout: Layout = Layout(),
    presets: Mapping[str, Any] | None = None,
    check_data: bool = True,
) -> dict[str, Any]:
    """source -> ipynb -> papermill -> book/executed/<stem>.ipynb and .json.

    The previous outputs are removed first: a failed run leaves no stale
    numbers behind for the claims tests or the book.
    """
    injected, effective = resolve_parameters(stem, preset, layout=layout, overrides=overrides, presets=presets)
    if check_data:
        provision({stem: effective}, layout)
    final = layout.executed / f"{stem}.ipynb"
    results = layout.root / injected["results_json"]
    _remove(final, results)
    unexecuted = to_ipynb(layout.source(stem), layout.work / f"{stem}.ipynb")
    output = layout.work / f"{stem}.executed.ipynb"
    _remove(output)
    t0 = time.perf_counter()
    print(f"[book] {stem}: executing (preset {preset}; {_fmt(injected)})", flush=True)
    execute_notebook(stem, unexecuted, output, injected, cwd=layout.root)
    seconds = time.perf_counter() - t0
    record = check_results(stem, results, effective)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.copyfile(output, tmp)
    os.replace(tmp, final)
    for line in stderr_outputs(final):
        print(f"[book] {stem}: stderr (hidden in the book) {line}", flush=True)
    print(f"[book] {stem}: done in {seconds:.1f} s -> {final.relative_to(layout.root)}, {results.relative_to(layout.root)}")
    return {"stem": stem, "seconds": seconds, "executed": final, "results": results, "record": record}


def provision(effective: Mapping[str, Mapping[str, Any]], layout: Layout) -> None:
    for name, source in ensure_datasets(needed_datasets(effective), root=layout.root).items():
        print(f"[book] data {name}: {source}", flush=True)


def preset_parameters(preset: str, layout: Layout) -> dict[str, dict[str, Any]]:
    """``{stem: effective parameters}`` of every notebook of _toc.yml under ``preset``."""
    presets = load_presets(layout.presets)
    return {s: resolve_parameters(s, preset, layout=layout, presets=presets)[1] for s in toc_notebooks(layout.toc, layout)}


def _fmt(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


# ---------------------------------------------------------------- HTML


def build_html(layout: Layout = Layout()) -> Path:
    """``jupyter-book build`` of the whole book (``--all``: every page is
    re-read, so a rebuild never mixes old and new outputs)."""
    exe = Path(sys.executable).parent / "jupyter-book"
    if not exe.exists():
        raise BuildError(f"{exe} not found: install the book extra (make install)")
    # Sphinx warnings are errors: a broken reference, figure or citation fails
    # the build; --keep-going lists them all before it does.
    cmd = [str(exe), "build", str(layout.root), "--all", "-W", "--keep-going"]
    print(f"[book] {' '.join(cmd)}", flush=True)
    if subprocess.run(cmd, cwd=layout.root).returncode != 0:
        raise BuildError("jupyter-book build failed (see its output above)")
    index = layout.html / "index.html"
    if not index.is_file():
        raise BuildError(f"jupyter-book finished but wrote no {index}")
    return index


class _OutputScanner(html.parser.HTMLParser):
    """Finds error outputs in a page: myst-nb's traceback and stderr blocks,
    docutils' system messages, and a traceback printed into any cell output."""

    BAD = {"traceback": "a traceback output", "stderr": "a stderr output", "system-message": "a docutils error"}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._stack: list[bool] = []  # per open element: inside a cell output?
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        if "output" in classes or "system-message" in classes:
            for cls, what in self.BAD.items():
                if cls in classes:
                    self.found.append(what)
        inside = (bool(self._stack) and self._stack[-1]) or "cell_output" in classes
        if tag not in ("br", "img", "hr", "meta", "link", "input", "source", "wbr"):
            self._stack.append(inside)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("br", "img", "hr", "meta", "link", "input", "source", "wbr") and self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        if self._stack and self._stack[-1]:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        text = "".join(self._text)
        if "Traceback (most recent call last)" in text:
            self.found.append("a printed traceback in a cell output")


def find_error_outputs(html_dir: Path) -> list[str]:
    """``page: what`` for every error output in the built HTML."""
    problems = []
    for page in sorted(html_dir.rglob("*.html")):
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        scanner = _OutputScanner()
        scanner.feed(page.read_text(encoding="utf-8", errors="replace"))
        scanner.close()
        problems += [f"{page.relative_to(html_dir)}: {what}" for what in dict.fromkeys(scanner.found)]
    return problems


def check_html(layout: Layout = Layout()) -> None:
    problems = find_error_outputs(layout.html)
    if problems:
        raise BuildError("the built book shows error output:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------- the whole book


def build(preset: str = DEFAULT_PRESET, *, layout: Layout = Layout(), results: Path | None = None) -> Path:
    """Every notebook of _toc.yml with the preset, then the HTML, checked.

    ``results``: a folder of results files (``make results``: ``<stem>.json``
    by ``python -m advlib.experiments``); a notebook with a file there shows
    it (its parameter ``results_from``) instead of computing."""
    t0 = time.perf_counter()
    presets = load_presets(layout.presets)
    stems = toc_notebooks(layout.toc, layout)
    missing = [s for s in stems if not layout.source(s).is_file()]
    if missing:
        raise BuildError(f"_toc.yml lists notebooks with no source in notebooks/: {', '.join(missing)}")
    unused = sorted(set(presets.get(preset, {})) - set(stems))
    if unused:
        print(f"[book] note: preset {preset} sets parameters for notebooks not in _toc.yml: {', '.join(unused)}")
    # Check every notebook's parameters before the first one runs for minutes.
    effective = {s: resolve_parameters(s, preset, layout=layout, presets=presets)[1] for s in stems}
    provision(effective, layout)
    kernel = ensure_kernel()
    print(f"[book] kernel {kernel['name']} from {kernel['resource_dir']}")
    times = {}
    for stem in stems:
        overrides = {}
        if results is not None and (results / f"{stem}.json").is_file():
            overrides["results_from"] = str((results / f"{stem}.json").resolve())
            print(f"[book] {stem}: shows {results / f'{stem}.json'} instead of computing")
        times[stem] = run_notebook(stem, preset, overrides=overrides, layout=layout, presets=presets,
                                   check_data=False)["seconds"]
    index = build_html(layout)
    check_html(layout)
    total = time.perf_counter() - t0
    for stem, sec in times.items():
        print(f"[book]   {stem:<28} {sec:7.1f} s")
    print(f"[book] built {index.relative_to(layout.root)} with preset {preset} in {total:.0f} s wall time")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_build = sub.add_parser("build", help="execute every notebook of _toc.yml, then build the HTML")
    p_build.add_argument("--preset", default=DEFAULT_PRESET)
    p_build.add_argument("--results", type=Path, help="a folder of results files (make results) to show instead of computing")

    p_stems = sub.add_parser("stems", help="the notebooks of _toc.yml, in book order, one a line")
    p_stems.add_argument("--sharded", action="store_true", help="only those python -m advlib.experiments may run under torchrun")

    p_run = sub.add_parser("run", help="execute one notebook with any parameters")
    p_run.add_argument("stem", help="the notebook, notebooks/<stem>.md")
    p_run.add_argument("--preset", default=DEFAULT_PRESET)
    p_run.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="set a parameter (value read as papermill does: int, float, True/False/None, else text)",
    )
    p_run.add_argument("-y", "--yaml", action="append", default=[], help="parameters as a YAML mapping")
    p_run.add_argument("--html", action="store_true", help="rebuild the HTML afterwards")

    p_params = sub.add_parser("params", help="list a notebook's parameters")
    p_params.add_argument("stem")

    sub.add_parser("html", help="build the HTML from book/executed as it is, and check it")
    p_data = sub.add_parser("data", help="find every data set the preset's notebooks load (installing Fashion-MNIST when root)")
    p_data.add_argument("--preset", default=DEFAULT_PRESET)

    args = parser.parse_args(argv)
    layout = Layout()
    try:
        if args.command == "build":
            if args.results is not None and not args.results.is_dir():
                raise BuildError(f"--results {args.results}: no such folder (make results PRESET={args.preset} makes it)")
            build(args.preset, layout=layout, results=args.results)
        elif args.command == "stems":
            from advlib import experiments

            for stem in toc_notebooks(layout.toc, layout):
                if not (args.sharded and getattr(experiments.chapter_module(stem), "SINGLE_PROCESS", False)):
                    print(stem)
        elif args.command == "run":
            overrides: dict[str, Any] = {}
            for text in args.yaml:
                data = yaml.safe_load(text)
                if not isinstance(data, dict):
                    raise BuildError(f"-y expects a YAML mapping, got {text!r}")
                overrides.update(data)
            overrides.update({name: parse_value(value) for name, value in args.parameter})
            ensure_kernel()
            run_notebook(args.stem, args.preset, overrides=overrides, layout=layout)
            if args.html:
                build_html(layout)
                check_html(layout)
        elif args.command == "params":
            for name, spec in read_parameters(layout.source(args.stem)).items():
                print(f"{name}: {spec['type'] or '?'} = {spec['default']!r}  # {spec['help']}")
        elif args.command == "html":
            build_html(layout)
            check_html(layout)
        elif args.command == "data":
            provision(preset_parameters(args.preset, layout), layout)
    except STOPS as exc:
        print(f"\n[book] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
