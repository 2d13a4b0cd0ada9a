"""Training, evaluation and the cache of trained models (on the bundled digits: no download)."""

import dataclasses
import fractions
import hashlib
import json
import shutil

import pytest
import torch

from advlib import models, train
from advlib.train import CacheError, TrainConfig

# A tiny recipe that still learns: 8x8 digits, well under a second of training.
FAST = TrainConfig("fc500-150-10", "digits", epochs=5, lr=0.05, batch_size=32, seed=0)


@pytest.fixture(scope="module")
def fast_cache(tmp_path_factory):
    """FAST trained once into a cache directory shared by the module (read-only)."""
    root = tmp_path_factory.mktemp("cache")
    model, info = train.trained(FAST, cache_dir=root, progress=False)
    return root, model, info


def _copy_cache(src, dst):
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    return train.cache_paths(FAST, dst)


def _synthetic(n=256, seed=0):
    # two classes told apart by the brightness of the top half
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 6, 6, generator=g) * 0.6
    x[:, :, :3] += 0.4 * y[:, None, None, None]
    return x, y


def _fit(seed, optimizer="sgd", y=None, **kw):
    x, labels = _synthetic()
    y = labels if y is None else y
    torch.manual_seed(123)  # the same initial weights for every call
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 2))
    history = train.fit(model, x, y, epochs=3, batch_size=50, lr=0.1, optimizer=optimizer, seed=seed, progress=False, **kw)
    return model, history


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- fit


def test_fit_is_deterministic_per_seed():
    a, history_a = _fit(seed=0)
    b, history_b = _fit(seed=0)
    c, _ = _fit(seed=1)
    assert _same_weights(a, b)
    assert history_a == history_b
    assert not _same_weights(a, c)
    assert [h["epoch"] for h in history_a] == [1, 2, 3]
    assert set(history_a[0]) == {"epoch", "loss", "train_accuracy"}


def test_fit_leaves_global_rng_and_train_flag_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    model, _ = _fit(seed=0)  # reseeds inside for the init; fit itself must restore
    state = torch.get_rng_state()
    x, y = _synthetic()
    model.eval()
    train.fit(model, x, y, epochs=1, lr=0.1, seed=5, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert not model.training
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), expected)


def test_fit_calls_on_epoch_in_eval_mode():
    seen = []

    def on_epoch(epoch, model):
        seen.append((epoch, model.training))
        return {"probe": epoch * 10}

    _, history = _fit(seed=0, on_epoch=on_epoch)
    assert seen == [(1, False), (2, False), (3, False)]
    assert [h["probe"] for h in history] == [10, 20, 30]
    # the callback does not perturb training: same weights as without it
    assert _same_weights(_fit(seed=0, on_epoch=lambda e, m: None)[0], _fit(seed=0)[0])


def test_fit_learns_and_adam_differs():
    x, y = _synthetic()
    model, history = _fit(seed=0)
    assert history[-1]["loss"] < history[0]["loss"]
    assert train.accuracy(model, x, y) > 0.8  # chance is about 0.5
    adam, _ = _fit(seed=0, optimizer="adam")
    assert not _same_weights(model, adam)


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"optimizer": "rmsprop"}, ValueError, "optimizer must be one of 'sgd', 'adam'"),
        ({"epochs": 0}, ValueError, "epochs must be an integer >= 1"),
        ({"lr": 0.0}, ValueError, "lr must be a finite number > 0, got 0.0"),
        ({"epochs": 1.5}, TypeError, r"epochs must be an integer >= 1, got 1.5 \(float\)"),
        ({"temperature": 0}, ValueError, "temperature must be a finite number > 0"),
        ({"progress": 1}, TypeError, "progress must be True or False"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"y": torch.zeros(256, dtype=torch.bool)}, TypeError, "y must be an integer tensor"),
        ({"y": torch.zeros(256)}, ValueError, r"soft labels must have shape \[N, classes\] = \[256, C\]"),
        ({"y": torch.zeros(10, dtype=torch.long)}, ValueError, r"y must have shape \[N\] = \[256\]"),
        ({"y": torch.full((256,), 2)}, ValueError, "label 2 but the model has only 2 classes"),
        ({"x": torch.zeros(256, 36, dtype=torch.long)}, TypeError, "floating-point"),
        ({"model": "lenet"}, TypeError, "model must be a torch.nn.Module"),
    ],
)
def test_fit_rejects_bad_arguments(change, error, message):
    x, y = _synthetic()
    args = {"model": models.mlp2d(in_shape=(36,)), "x": x.flatten(1), "y": y, "epochs": 1, "lr": 0.1, "seed": 0}
    args.update(change)
    model, x, y = args.pop("model"), args.pop("x"), args.pop("y")
    args.setdefault("progress", False)
    with pytest.raises(error, match=message):
        train.fit(model, x, y, **args)


def test_fit_stops_on_a_diverging_loss():
    x, y = _synthetic()
    with pytest.raises(FloatingPointError, match="lr=1e\\+30 is likely too large"):
        train.fit(models.mlp2d(in_shape=(36,)), x.flatten(1), y, epochs=3, lr=1e30, seed=0, progress=False)


def test_predict_and_accuracy_keep_the_train_flag():
    x, y = _synthetic()
    model, _ = _fit(seed=0)
    model.train()
    labels = train.predict(model, x, batch_size=7)  # batches that do not divide N
    assert model.training
    assert labels.dtype == torch.long and labels.shape == (256,)
    # eval mode: dropout off, so the labels are the deterministic argmax
    with torch.no_grad():
        assert torch.equal(labels, model.eval()(x).argmax(1))
    assert not model.training
    assert train.accuracy(model, x, y) == pytest.approx((labels == y).double().mean().item())
    assert not model.training


# ---------------------------------------------------------------- TrainConfig


def test_config_hashes_and_normalises():
    a = TrainConfig("lenet", "digits", epochs=2, lr=1, data_options={"size": 28, "b": None})
    b = TrainConfig("lenet", "digits", epochs=2, lr=1.0, data_options=(("b", None), ("size", 28)))
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    assert a.data_options == (("b", None), ("size", 28))
    assert a.as_dict()["data_options"] == {"b": None, "size": 28}
    assert len(a.key()) == 16 and int(a.key(), 16) >= 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.lr = 0.5


@pytest.mark.parametrize(
    "field, value",
    [
        ("arch", "lenet"),
        ("dataset", "circles"),
        ("seed", 1),
        ("epochs", 6),
        ("batch_size", 64),
        ("lr", 0.01),
        ("optimizer", "adam"),
        ("momentum", 0.5),
        ("weight_decay", 1e-4),
        ("train_limit", 100),
        ("data_options", {"size": 28}),
        ("model_options", {"hidden": 3}),
    ],
)
def test_every_field_changes_the_key(field, value):
    assert dataclasses.replace(FAST, **{field: value}).key() != FAST.key()


def test_key_depends_on_torch_version_and_format(monkeypatch):
    key = FAST.key()
    monkeypatch.setattr(train, "CACHE_FORMAT", train.CACHE_FORMAT + 1)
    assert FAST.key() != key
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert FAST.key() != key


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"arch": "resnet"}, "unknown architecture 'resnet'; known: fc500-150-10, lenet"),
        ({"dataset": "../x"}, "dataset must be a name"),
        ({"optimizer": "SGD"}, "optimizer must be one of"),
        ({"train_limit": 0}, "train_limit must be an integer >= 1"),
        ({"data_options": {"size": [28]}}, r"data_options\['size'\] must be a string, number"),
        ({"data_options": 28}, "data_options must be a mapping"),
    ],
)
def test_config_rejects_bad_values(kw, message):
    with pytest.raises((ValueError, TypeError), match=message):
        dataclasses.replace(FAST, **kw)


# ---------------------------------------------------------------- trained


def test_trained_learns_digits(fast_cache):
    root, model, info = fast_cache
    assert not info["from_cache"] and not model.training
    # Chance is 10%; five epochs of the FC net get about 96%.
    assert info["test_accuracy"] > 0.90
    assert info["test_error"] == pytest.approx(1 - info["test_accuracy"])
    assert info["n_train"] == 1347 and info["n_test"] == 450
    assert info["in_shape"] == [1, 8, 8] and info["num_classes"] == 10
    assert "load_digits" in info["data_source"]
    assert info["config"] == FAST.as_dict() and info["key"] == FAST.key()
    assert info["train_seconds"] > 0 and len(info["history"]) == FAST.epochs


def test_trained_loads_from_cache_with_weights_only(fast_cache, monkeypatch):
    root, model, info = fast_cache
    calls = []
    real_load = torch.load

    def spy(*args, **kw):
        calls.append(kw)
        return real_load(*args, **kw)

    monkeypatch.setattr(torch, "load", spy)
    again, info2 = train.trained(FAST, cache_dir=root, progress=False)
    assert info2["from_cache"] and not again.training
    assert _same_weights(model, again)
    assert calls == [{"weights_only": True, "map_location": "cpu"}]
    assert info2["test_accuracy"] == info["test_accuracy"]
    # only the two files, no temp file left behind by the atomic writes
    pt, js = train.cache_paths(FAST, root)
    assert sorted(p.name for p in root.iterdir()) == sorted([pt.name, js.name])
    assert pt.name == f"fc500-150-10-digits-{FAST.key()}.pt"


def test_training_is_reproducible_across_caches(fast_cache, tmp_path):
    _, model, _ = fast_cache
    fresh, info = train.trained(FAST, cache_dir=tmp_path, progress=False)
    assert not info["from_cache"]
    assert _same_weights(model, fresh)


def test_cache_dir_from_environment_then_default(tmp_path, monkeypatch, fast_cache):
    root, _, _ = fast_cache
    monkeypatch.setenv("ADVLIB_CACHE", str(root))
    assert train.trained(FAST, progress=False)[1]["from_cache"]
    monkeypatch.delenv("ADVLIB_CACHE")
    monkeypatch.chdir(tmp_path)
    assert train.resolve_cache_dir() == train.resolve_cache_dir(".cache/advlib")
    (tmp_path / ".cache" / "advlib").mkdir(parents=True)
    _copy_cache(root, tmp_path / ".cache" / "advlib")
    assert train.trained(FAST, progress=False)[1]["from_cache"]


def test_different_config_is_a_different_file(fast_cache, tmp_path):
    root, _, _ = fast_cache
    _copy_cache(root, tmp_path)
    other = dataclasses.replace(FAST, epochs=1, train_limit=200)
    _, info = train.trained(other, cache_dir=tmp_path, progress=False)
    assert not info["from_cache"] and info["n_train"] == 200
    assert len(list(tmp_path.iterdir())) == 4


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickle"])
def test_corrupt_weights_file_is_a_clear_error(fast_cache, tmp_path, damage):
    root, _, _ = fast_cache
    pt, js = _copy_cache(root, tmp_path)
    if damage == "truncate":
        pt.write_bytes(pt.read_bytes()[:100])
    elif damage == "garbage":
        pt.write_bytes(b"not a checkpoint")
    else:
        # a pickled object that is not weights: weights_only refuses to run it
        torch.save({"0.weight": fractions.Fraction(1, 2)}, pt)
    # the recorded SHA-256 catches each before torch.load reads a byte
    with pytest.raises(CacheError, match=rf"(?s){pt.name} is damaged or was replaced: its SHA-256.*delete .*{pt.name}"):
        train.trained(FAST, cache_dir=tmp_path, progress=False)
    # with a matching digest, weights_only=True still refuses anything but tensors
    _record_digest(pt, js)
    with pytest.raises(CacheError, match=rf"(?s){pt.name} cannot be loaded.*delete .*{pt.name}") as error:
        train.trained(FAST, cache_dir=tmp_path, progress=False)
    if damage == "pickle":
        assert "refused by weights_only=True" in str(error.value)


def _record_digest(pt, js):
    info = json.loads(js.read_text())
    info["weights_sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    js.write_text(json.dumps(info))


def test_weights_of_another_architecture_is_a_clear_error(fast_cache, tmp_path):
    root, _, _ = fast_cache
    pt, js = _copy_cache(root, tmp_path)
    torch.save(models.mlp2d().state_dict(), pt)
    _record_digest(pt, js)
    with pytest.raises(CacheError, match="(?s)cannot be loaded as the weights of fc500-150-10.*delete"):
        train.trained(FAST, cache_dir=tmp_path, progress=False)


def test_corrupt_or_mismatched_info_file_is_a_clear_error(fast_cache, tmp_path):
    root, _, _ = fast_cache
    pt, js = _copy_cache(root, tmp_path)
    info = json.loads(js.read_text())
    js.write_text("{")
    with pytest.raises(CacheError, match=rf"{js.name} cannot be read.*delete"):
        train.trained(FAST, cache_dir=tmp_path, progress=False)
    info["recipe"]["lr"] = 0.5
    js.write_text(json.dumps(info))
    with pytest.raises(CacheError, match=rf"{js.name} holds a different recipe.*delete"):
        train.trained(FAST, cache_dir=tmp_path, progress=False)


def test_interrupted_write_is_retrained_and_leaves_no_temp_file(fast_cache, tmp_path, monkeypatch):
    root, model, _ = fast_cache
    pt, js = train.cache_paths(FAST, tmp_path)

    def crash(obj, f, *a, **kw):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train.trained(FAST, cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    # a .pt without its .json (the .json is written last) is retrained over
    shutil.copy(root / pt.name, pt)
    pt.write_bytes(b"stale")
    again, info = train.trained(FAST, cache_dir=tmp_path, progress=False)
    assert not info["from_cache"] and _same_weights(model, again)


def test_lenet_on_mnist_sized_digits(tmp_path):
    config = TrainConfig("lenet", "digits", epochs=3, lr=0.05, batch_size=32, data_options={"size": 28})
    model, info = train.trained(config, cache_dir=tmp_path, progress=False)
    assert info["in_shape"] == [1, 28, 28]
    # Chance is 10%; three epochs of LeNet get about 95%.
    assert info["test_accuracy"] > 0.85


def test_mlp2d_on_circles(tmp_path):
    config = TrainConfig("mlp2d", "circles", epochs=50, lr=0.1, batch_size=32)
    model, info = train.trained(config, cache_dir=tmp_path, progress=False)
    assert info["in_shape"] == [2] and info["num_classes"] == 2
    # No line separates two concentric circles (a linear model scores about 50%):
    # the hidden layer must bend the boundary round the inner one.
    assert info["test_accuracy"] > 0.95


# ---------------------------------------------------------------- fit: temperature and soft labels


def _one_step(y, temperature):
    """One full-batch plain SGD step of fit, and the same step by hand."""
    x, _ = _synthetic(n=64)
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    logits = x.flatten(1) @ reference[0].T + reference[1]
    expected_loss = -(torch.log_softmax(logits / temperature, 1) * _as_probs(y)).sum(1).mean()
    expected_loss.backward()
    history = train.fit(model, x, y, epochs=1, batch_size=64, lr=0.5, momentum=0.0,
                        temperature=temperature, seed=0, progress=False)
    return model, reference, expected_loss.item(), history


def _as_probs(y):
    return y if y.is_floating_point() else torch.nn.functional.one_hot(y, 2).float()


@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("soft", [False, True])
def test_fit_minimises_cross_entropy_at_temperature(temperature, soft):
    _, y = _synthetic(n=64)
    if soft:  # a teacher's probabilities, not one-hot
        y = torch.softmax(torch.randn(64, 2, generator=torch.Generator().manual_seed(1)), 1)
    model, reference, expected_loss, history = _one_step(y, temperature)
    # The loss fit reports is -sum p log softmax(z / T), at the initial weights...
    assert history[0]["loss"] == pytest.approx(expected_loss, rel=1e-6)
    # ...and the step it took is that loss's gradient (plain SGD: w - lr * grad).
    for p, r in zip(model.parameters(), reference):
        assert torch.allclose(p, r.detach() - 0.5 * r.grad, atol=1e-6)


def test_temperature_one_is_the_plain_loss_bit_for_bit():
    a, history_a = _fit(seed=0)
    b, history_b = _fit(seed=0, temperature=1.0)
    c, _ = _fit(seed=0, temperature=2.0)
    assert _same_weights(a, b) and history_a == history_b
    assert not _same_weights(a, c)


def test_one_hot_soft_labels_train_as_indices():
    _, y = _synthetic()
    hard, history_hard = _fit(seed=0)
    soft, history_soft = _fit(seed=0, y=torch.nn.functional.one_hot(y, 2).float())
    for p, q in zip(hard.parameters(), soft.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    for h, s in zip(history_hard, history_soft):
        assert s["loss"] == pytest.approx(h["loss"], rel=1e-5)
        assert s["train_accuracy"] == h["train_accuracy"]  # counted against the argmax


@pytest.mark.parametrize(
    "labels, message",
    [
        (lambda y: torch.full((256, 3), 1 / 3), "soft labels have 3 classes but the model has 2"),
        (lambda y: torch.full((255, 2), 0.5), r"shape \[N, classes\] = \[256, C\].*got \(255, 2\)"),
        (lambda y: torch.full((256,), 0.5), r"shape \[N, classes\]"),
        (lambda y: torch.full((256, 2), 0.45), r"must sum to 1 \(within 0.0001\), row 0 sums to 0.9"),
        (lambda y: torch.tensor([[1.5, -0.5]]).expand(256, 2), "finite and >= 0, got a minimum of -0.5"),
        (lambda y: torch.tensor([[float("nan"), 1.0]]).expand(256, 2), "finite and >= 0"),
    ],
)
def test_fit_refuses_bad_soft_labels(labels, message):
    x, y = _synthetic()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))
    with pytest.raises(ValueError, match=message):
        train.fit(model, x, labels(y), epochs=1, lr=0.1, seed=0, progress=False)


def test_soft_labels_within_tolerance_are_accepted():
    x, y = _synthetic()
    probs = torch.nn.functional.one_hot(y, 2).float() * (1 - 5e-5)  # rows sum to 1 - 5e-5
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))
    assert len(train.fit(model, x, probs, epochs=1, lr=0.1, seed=0, progress=False)) == 1
