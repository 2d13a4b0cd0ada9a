"""advlib.train.cached: the one cache of trained and derived models, and its integrity checks."""

import copy
import hashlib
import io
import json
import os
import time

import pytest
import torch

from advlib import train
from advlib.train import CacheError, TrainConfig


def _base():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(60, 1, 6, 6, generator=g), torch.randint(0, 3, (60,), generator=g)


class Calls:
    """A derived-model recipe (the base fine-tuned a few epochs) that counts
    how often the cache builds and trains."""

    def __init__(self, epochs=2):
        self.recipe = {"kind": "fine-tuned", "base": "tiny-base", "epochs": epochs, "lr": 0.1, "seed": 0}
        self.builds = self.fits = 0

    def build(self):
        self.builds += 1
        return _base()

    def fit(self, model):
        self.fits += 1
        x, y = _data()
        history = train.fit(model, x, y, epochs=self.recipe["epochs"], lr=0.1, seed=0, progress=False)
        return {"history": history, "note": "tiny"}

    def __call__(self, root, **kw):
        return train.cached(self.recipe, self.build, self.fit, name="tiny-ft", cache_dir=root, progress=False, **kw)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_miss_then_hit(tmp_path, monkeypatch):
    calls = Calls()
    model, info = calls(tmp_path)
    assert (calls.builds, calls.fits) == (1, 1) and not info["from_cache"] and not model.training
    key = train.cache_key(calls.recipe)
    assert info["key"] == key and info["recipe"] == calls.recipe and info["name"] == "tiny-ft"
    assert info["cache_path"] == str(tmp_path / f"tiny-ft-{key}.pt")
    assert info["info_path"] == str(tmp_path / f"tiny-ft-{key}.json")
    assert info["note"] == "tiny" and len(info["history"]) == 2 and info["train_seconds"] > 0
    assert info["cache_format"] == train.CACHE_FORMAT and info["torch_version"] == str(torch.__version__)
    # the .json records the SHA-256 of the .pt as written
    stored = json.loads((tmp_path / f"tiny-ft-{key}.json").read_text())
    assert stored["weights_sha256"] == hashlib.sha256((tmp_path / f"tiny-ft-{key}.pt").read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"tiny-ft-{key}.json", f"tiny-ft-{key}.pt"]

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw) or real_load(*a, **kw))
    again, info2 = calls(tmp_path)
    assert (calls.builds, calls.fits) == (2, 1)  # built, not trained
    assert info2["from_cache"] and not again.training and _same(model, again)
    assert loads == [{"weights_only": True, "map_location": "cpu"}]
    assert {k: v for k, v in info2.items() if k != "from_cache"} == {k: v for k, v in info.items() if k != "from_cache"}


def test_the_recipe_is_the_key(tmp_path):
    a, b = Calls(epochs=1), Calls(epochs=2)
    assert a(tmp_path)[1]["key"] != b(tmp_path)[1]["key"]
    assert len(list(tmp_path.iterdir())) == 4
    # canonical JSON: key order and tuples-vs-lists do not matter
    assert train.cache_key({"a": (1, 2), "b": {"y": 1, "x": 2}}) == train.cache_key({"b": {"x": 2, "y": 1}, "a": [1, 2]})


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"lr": float("nan")}, "JSON values only"),
        ({"model": torch.nn.Linear(1, 1)}, "JSON values only"),
        ({1: "x"}, "mapping with string keys"),
        ([("a", 1)], "mapping with string keys"),
    ],
)
def test_recipe_must_be_json(tmp_path, recipe, message):
    with pytest.raises(TypeError, match=message):
        train.cached(recipe, _base, lambda m: {}, name="x", cache_dir=tmp_path, progress=False)


def test_bad_name_fit_result_and_progress(tmp_path):
    calls = Calls()
    with pytest.raises(ValueError, match="name must be letters"):
        train.cached(calls.recipe, calls.build, calls.fit, name="../up", cache_dir=tmp_path)
    with pytest.raises(TypeError, match="progress must be True or False"):
        train.cached(calls.recipe, calls.build, calls.fit, name="ok", cache_dir=tmp_path, progress=None)
    with pytest.raises(ValueError, match=r"uses key\(s\) \['key'\], which cached\(\) sets itself"):
        train.cached(calls.recipe, calls.build, lambda m: {"key": 1}, name="ok", cache_dir=tmp_path, progress=False)
    with pytest.raises(TypeError, match="the dict fit returned must hold JSON values"):
        train.cached(calls.recipe, calls.build, lambda m: {"w": torch.ones(1)}, name="ok", cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing written for a failed fit


def test_progress_says_what_is_trained(tmp_path, capsys):
    calls = Calls()
    train.cached(calls.recipe, calls.build, calls.fit, name="tiny-ft", cache_dir=tmp_path)
    assert f"training tiny-ft ({train.cache_key(calls.recipe)})" in capsys.readouterr().err
    train.cached(calls.recipe, calls.build, calls.fit, name="tiny-ft", cache_dir=tmp_path)
    assert capsys.readouterr().err == ""  # a hit is silent


# ---------------------------------------------------------------- integrity


def _flip_a_bit_inside_a_tensor(pt, model):
    """Flip one bit of the first weight's stored bytes (the .pt is a zip that
    stores tensor data uncompressed): the file stays a loadable checkpoint."""
    blob = bytearray(pt.read_bytes())
    weight = model.state_dict()["1.weight"]
    raw = weight.numpy().tobytes()
    at = bytes(blob).index(raw) + len(raw) // 2
    blob[at] ^= 0x01
    pt.write_bytes(bytes(blob))
    loaded = torch.load(io.BytesIO(bytes(blob)), weights_only=True)
    return not torch.equal(loaded["1.weight"], weight)


def test_a_flipped_bit_in_the_weights_is_refused(tmp_path):
    calls = Calls()
    model, info = calls(tmp_path)
    pt = tmp_path / f"tiny-ft-{info['key']}.pt"
    # without the digest, torch would load the changed weights without complaint
    assert _flip_a_bit_inside_a_tensor(pt, model)
    with pytest.raises(CacheError, match=rf"(?s){pt}.*damaged or was replaced: its SHA-256 is [0-9a-f]{{64}}.*records.*delete {pt}"):
        calls(tmp_path)
    assert calls.fits == 1  # and never silently retrained over


def test_a_missing_digest_is_unreadable_metadata(tmp_path):
    calls = Calls()
    _, info = calls(tmp_path)
    js = tmp_path / f"tiny-ft-{info['key']}.json"
    stored = json.loads(js.read_text())
    del stored["weights_sha256"]
    js.write_text(json.dumps(stored))
    with pytest.raises(CacheError, match=rf"{js.name} cannot be read.*delete.*KeyError"):
        calls(tmp_path)


def test_a_build_that_does_not_fit_the_weights(tmp_path):
    calls = Calls()
    calls(tmp_path)
    with pytest.raises(CacheError, match="cannot be loaded as the weights of tiny-ft.*delete"):
        train.cached(calls.recipe, lambda: torch.nn.Linear(36, 3), calls.fit, name="tiny-ft", cache_dir=tmp_path, progress=False)


def test_cache_dir_that_is_a_file_is_refused_before_training(tmp_path):
    calls = Calls()
    blocker = tmp_path / "cache"
    blocker.write_text("not a directory")
    with pytest.raises(CacheError, match=rf"cache directory {blocker} is not a directory"):
        calls(blocker)
    with pytest.raises(CacheError, match=rf"cache directory {blocker / 'sub'} cannot be written"):
        calls(blocker / "sub")
    assert calls.fits == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_cache_dir_is_refused_before_training(tmp_path):
    calls = Calls()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CacheError, match=rf"cache directory {ro} cannot be written"):
            calls(ro)
    finally:
        ro.chmod(0o700)
    assert calls.fits == 0


def test_unwritable_cache_dir_is_refused_before_training(tmp_path, monkeypatch):
    # What a read-only mount does to any user, root included: the probe write fails.
    def refuse(*a, **kw):
        raise PermissionError(13, "Read-only file system")

    calls = Calls()
    monkeypatch.setattr(train.tempfile, "mkstemp", refuse)
    with pytest.raises(CacheError, match=rf"cache directory {tmp_path} cannot be written.*Read-only file system"):
        calls(tmp_path)
    assert calls.fits == 0


def test_stale_temporary_files_are_removed_fresh_ones_kept(tmp_path):
    stale = tmp_path / ".other-abc.pt.k2j3.tmp"  # a write interrupted two hours ago
    fresh = tmp_path / ".other-abc.pt.x9y8.tmp"  # maybe another process's write, now
    unrelated = tmp_path / "notes.tmp"
    for f in (stale, fresh, unrelated):
        f.write_bytes(b"partial")
    old = time.time() - 2 * train.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    os.utime(unrelated, (old, old))
    Calls()(tmp_path)
    assert not stale.exists() and fresh.exists() and unrelated.exists()


def test_interrupted_write_leaves_no_temp_file_and_is_retrained(tmp_path, monkeypatch):
    calls = Calls()
    real_replace = os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(train.os, "replace", crash_on_json)
    with pytest.raises(KeyboardInterrupt):
        calls(tmp_path)
    monkeypatch.undo()
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 1 and names[0].endswith(".pt")  # the .pt, no .json, no temp file
    model, info = calls(tmp_path)  # a .pt without its .json: trained over
    assert not info["from_cache"] and calls.fits == 2
    assert calls(tmp_path)[1]["from_cache"]


# ---------------------------------------------------------------- trained is cached


def test_trained_goes_through_cached(tmp_path, monkeypatch):
    config = TrainConfig("mlp2d", "circles", epochs=2, lr=0.1, batch_size=64)
    seen = []
    real = train.cached
    monkeypatch.setattr(train, "cached", lambda recipe, *a, **kw: seen.append((recipe, kw["name"])) or real(recipe, *a, **kw))
    model, info = train.trained(config, cache_dir=tmp_path, progress=False)
    assert seen == [(config.as_dict(), "mlp2d-circles")]
    assert info["recipe"] == info["config"] == config.as_dict()
    assert info["key"] == config.key() == train.cache_key(config.as_dict())
    assert info["cache_path"] == str(train.cache_paths(config, tmp_path)[0])
    # a derived model keys on its base's key, and lives in the same cache
    derived = {"kind": "fine-tuned", "base": info["key"], "epochs": 1}
    tuned, tuned_info = train.cached(derived, lambda: copy.deepcopy(model), lambda m: {}, name="mlp2d-circles-ft",
                                     cache_dir=tmp_path, progress=False)
    assert tuned_info["key"] != info["key"] and len(list(tmp_path.iterdir())) == 4
