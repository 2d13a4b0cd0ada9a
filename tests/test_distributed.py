"""Sharded experiments (advlib.distributed, python -m advlib.experiments): the
shards partition the work, two gloo processes compute exactly what one does,
a failed rank fails the run with its rank and traceback and leaves no file,
and a notebook reads a results file only if it was computed with its parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advlib import attacks, distributed, experiments, provenance, train

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
# A chapter small enough for a unit test: a 64-12-12-10 network on the digits,
# a handful of images, the exact minimum by MILP per image (sharded) and the attacks.
TINY = ["optimality", "-p", "n_images", "4", "-p", "hidden", "12", "-p", "epochs", "10", "-p", "ifgs_steps", "10",
        "-p", "time_limit", "60.0", "-p", "threads", "1"]


@given(n=st.integers(0, 200), ranks=st.integers(1, 9))
@settings(max_examples=200, deadline=None)
def test_shards_are_contiguous_and_cover_everything_once(n, ranks):
    parts = [distributed.shard(n, ranks, r) for r in range(ranks)]
    assert [i for part in parts for i in part] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_without_torchrun_map_chunks_is_a_loop():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.map_chunks(lambda s, e: (s, e), 7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert distributed.map_chunks(lambda s, e: (s, e), 0, 3) == []
    with pytest.raises(ValueError, match="size"):
        distributed.map_chunks(lambda s, e: None, 5, 0)


# ---------------------------------------------------------------- two processes


def _rank(rank: int, size: int, store: str, out: str) -> None:
    """One gloo rank: train through the cache (rank 0 first), then a batched attack."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    try:
        model, x = _work(Path(out).parent / "cache")
        res = attacks.batched(attacks.deepfool, model, x, size=3, p=2)
        if rank == 0:
            torch.save({"x_adv": res.x_adv, "iterations": res.iterations, "success": res.success}, out)
    finally:
        torch.distributed.destroy_process_group()


def _work(cache: Path):
    torch.manual_seed(0)
    x = torch.rand(11, 1, 4, 4)
    y = torch.arange(11) % 3

    def fit(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(30):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        # An attack during training (a robustness measure per epoch) runs on rank 0 alone: no deadlock.
        return {"measured": attacks.batched(attacks.deepfool, model, x, size=3).success_rate}

    def build():
        torch.manual_seed(1)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

    model, _ = train.cached({"test": "distributed"}, build, fit, name="tiny", cache_dir=cache)
    return model, x


def test_two_gloo_processes_attack_exactly_as_one(tmp_path):
    torch.set_num_threads(1)
    model, x = _work(tmp_path / "single" / "cache")
    one = attacks.batched(attacks.deepfool, model, x, size=3, p=2)
    (tmp_path / "two").mkdir()
    out = tmp_path / "two" / "result.pt"
    torch.multiprocessing.spawn(_rank, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    assert torch.equal(two["x_adv"], one.x_adv)
    assert torch.equal(two["iterations"], one.iterations) and torch.equal(two["success"], one.success)
    assert len(list((tmp_path / "two" / "cache").glob("tiny-*.pt"))) == 1  # trained once, by rank 0


def _cli(args, env_cache: Path, *, launcher: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADVLIB_CACHE": str(env_cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, "-m", "advlib.experiments", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _without_times(value):
    """The results without wall-clock times, the one thing two runs never share."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not (k.endswith("seconds") or k.endswith("_s"))}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    where = tmp_path_factory.mktemp("single")
    done = _cli([*TINY, "--out", str(where / "one.json")], where / "cache", launcher=[sys.executable])
    assert done.returncode == 0, done.stderr
    return json.loads((where / "one.json").read_text())


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not beside this python")
def test_torchrun_with_two_processes_saves_what_one_process_saves(single_run, tmp_path):
    out = tmp_path / "two.json"
    done = _cli([*TINY, "--out", str(out)], tmp_path / "cache",
                launcher=[str(TORCHRUN), "--standalone", "--nproc_per_node", "2"])
    assert done.returncode == 0, done.stderr
    two = json.loads(out.read_text())
    assert two["produced_by"]["world_size"] == 2 and two["produced_by"]["backend"] == "gloo"
    assert len(two["produced_by"]["devices"]) == 2 and two["produced_by"]["command"].startswith("torchrun")
    assert single_run["produced_by"]["world_size"] == 1
    assert two["parameters"] == single_run["parameters"]
    assert _without_times(two["results"]) == _without_times(single_run["results"])
    assert two["results"]["exact"]["linf"]["status"] == ["optimal"] * 4  # a time limit would make it timing-dependent


FAILING = textwrap.dedent('''
    import os, sys
    import advlib.experiments.__main__ as cli

    real = cli.chapter_module

    def chapter_module(chapter):
        module = real(chapter)
        if os.environ["RANK"] != "1":
            return module

        class Failing:
            @staticmethod
            def compute(parameters):
                raise RuntimeError("the disk of rank 1 is full")
        return Failing

    cli.chapter_module = chapter_module
    sys.argv = ["advlib.experiments", *sys.argv[1:]]
    cli.entry()
''')


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not beside this python")
def test_a_failed_rank_fails_the_run_with_its_traceback_and_no_file(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    out = tmp_path / "never.json"
    env = {**os.environ, "ADVLIB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), *TINY, "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "rank 1 of 2 failed" in done.stderr and "the disk of rank 1 is full" in done.stderr
    assert "Traceback" in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".never.json*"))


def test_the_command_line_refuses_unknown_parameters(tmp_path):
    done = _cli(["optimality", "-p", "n_imagez", "4", "--out", str(tmp_path / "x.json")], tmp_path, launcher=[sys.executable])
    assert done.returncode == 2 and "unknown parameter(s) n_imagez" in done.stderr
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------- the notebook side


class _Run:
    """What experiments.results needs of a provenance.Run."""

    def __init__(self, notebook, parameters):
        self.notebook, self.parameters, self.recorded = notebook, parameters, {}

    def record(self, key, value):
        self.recorded[key] = value


def test_a_notebook_shows_a_results_file_only_for_its_own_parameters(tmp_path):
    params = {"seed": 0, "n_images": 4, "preset": "paper", "results_json": "x.json", "results_from": ""}
    path = experiments.save(tmp_path / "r.json", "optimality", params, {"answer": 42},
                            {"command": "torchrun ...", "world_size": 8, "devices": ["a cuda:0"]})
    shown = _Run("optimality", {**params, "preset": "quick", "results_from": str(path)})
    assert experiments.results(shown, lambda p: pytest.fail("computed although results_from is set")) == {"answer": 42}
    assert shown.recorded["produced_by"]["world_size"] == 8
    assert shown.recorded["produced_by"]["results_file"] == str(path)
    assert shown.recorded["results"] == {"answer": 42}
    # Computed, not read, without results_from.
    computed = _Run("optimality", params)
    assert experiments.results(computed, lambda p: {"computed": p["n_images"]}) == {"computed": 4}
    assert computed.recorded == {"results": {"computed": 4}}
    with pytest.raises(ValueError, match=r"other parameters \(n_images: file 4, notebook 5\)"):
        experiments.results(_Run("optimality", {**params, "n_images": 5, "results_from": str(path)}), None)
    with pytest.raises(ValueError, match="not of 'peers'"):
        experiments.read(path, "peers", params)
    with pytest.raises(FileNotFoundError, match="no results file"):
        experiments.read(tmp_path / "missing.json", "optimality", params)
    (tmp_path / "bad.json").write_text('{"format": "advlib-results/1", "chap')
    with pytest.raises(ValueError, match="not JSON"):
        experiments.read(tmp_path / "bad.json", "optimality", params)
    (tmp_path / "other.json").write_text(json.dumps(provenance.to_jsonable({"format": 1})))
    with pytest.raises(ValueError, match="not a results file"):
        experiments.read(tmp_path / "other.json", "optimality", params)


def test_every_chapter_computes_from_its_notebook_parameters():
    from advlib import parameters

    for chapter in experiments.CHAPTERS:
        module = experiments.chapter_module(chapter)
        assert callable(module.compute), chapter
        declared = parameters.read_parameters(parameters.source_of(chapter))
        assert "results_from" in declared, f"{chapter}: its notebook cannot show a results file"


def test_glue_texts_glues_every_text_without_display(monkeypatch):
    import myst_nb

    glued = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, text, display=True: glued.append((name, text, display)))
    experiments.glue_texts({"a": "one", "b": "two"})
    assert glued == [("a", "one", False), ("b", "two", False)]


def test_glue_figure_glues_the_figure_without_display_and_closes_it(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import myst_nb

    glued = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, obj, display=True: glued.append((name, obj, display)))
    fig = plt.figure()
    experiments.glue_figure("fig-a", fig)
    assert glued == [("fig-a", fig, False)]
    assert fig.number not in plt.get_fignums()
