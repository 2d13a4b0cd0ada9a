"""Training, evaluation, and the cache of trained models.

:func:`fit` is a plain loop on tensors, so the same function trains a model
from scratch and fine-tunes it on a set of adversarial examples (DeepFool
Sec. 4.3). :func:`trained` trains the model a :class:`TrainConfig` describes
once and caches it on disk, keyed by a hash of the config, the cache format
and the torch version: a notebook asks for a model by its recipe and gets the
same weights every time, whether trained now or loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import tempfile
import time
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import models

# Bump when what a cache file means changes (its contents, or the layers a
# builder makes for a name): old files then get new keys and are never read.
CACHE_FORMAT = 1

OPTIMIZERS = ("sgd", "adam")


class CacheError(RuntimeError):
    """A cache file exists but cannot be trusted; the message names it."""


# ---------------------------------------------------------------- checks


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(value: Any, name: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _check_optimizer(optimizer: Any) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {optimizer!r}")


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_x(x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (inputs in [0, 1]), got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch [N, ...], got shape {tuple(x.shape)}")


def _check_xy(x: Any, y: Any) -> Tensor:
    _check_x(x)
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of labels, got {type(y).__name__}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"y must be an integer tensor of class labels, got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape [N] = [{x.shape[0]}] to match x, got {tuple(y.shape)}")
    if y.min().item() < 0:
        raise ValueError(f"y must hold class indices >= 0, got a minimum of {y.min().item()}")
    return y.to(device=x.device, dtype=torch.long)


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0] or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits [N, classes] with classes >= 2, got {shape}")
    return out


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator for the block (weight init, dropout) and
    put the caller's generator state back afterwards: training a model must
    not change the random numbers the notebook draws next."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put every module in train or eval mode for the block, then restore
    each module's own flag (a caller may have frozen some on purpose)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train(training)
        yield
    finally:
        for m, mode in modes:
            m.training = mode


# ---------------------------------------------------------------- training


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int,
    progress: bool = True,
    desc: str = "fit",
    on_epoch: Callable[[int, nn.Module], Mapping[str, Any] | None] | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``(x, y)`` with cross-entropy, mini-batch
    by mini-batch, reshuffled every epoch.

    Deterministic on CPU: the shuffling draws from its own generator seeded
    with ``seed``, and torch's global generator (dropout) is seeded with it
    for the duration, then restored. Same seed, same data, same model ->
    bitwise-identical weights.

    Args:
        model: classifier returning logits ``[N, classes]``; trained in train
            mode, each module's train flag restored afterwards.
        x: inputs ``[N, ...]``, floating point (any tensors: clean or
            adversarial training sets alike).
        y: integer labels ``[N]``.
        epochs: passes over the data (>= 1).
        batch_size: samples per step; the last batch of an epoch may be smaller.
        lr: learning rate (> 0).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"`` (``momentum`` unused).
        momentum: SGD momentum.
        weight_decay: L2 penalty, as the optimiser applies it.
        seed: seeds the shuffling and dropout.
        progress: show a tqdm bar over the steps.
        desc: the bar's label.
        on_epoch: called as ``on_epoch(epoch, model)`` after each epoch, the
            model in eval mode; a dict it returns is merged into that epoch's
            history. One ``fit`` call with a callback - e.g. measuring
            rho_adv after each extra epoch of fine-tuning (DeepFool Fig. 6) -
            keeps the optimiser's momentum and the shuffling running, where
            calling ``fit(epochs=1)`` repeatedly would restart both.

    Returns:
        One dict per epoch: ``epoch`` (1-based), ``loss`` (mean cross-entropy
        over the epoch's samples, as the weights moved) and ``train_accuracy``
        (on the same running predictions), plus what ``on_epoch`` returned.

    Example:
        >>> history = fit(model, x, y, epochs=2, lr=0.01, seed=0)
        >>> history[-1]["loss"]
    """
    _check_model(model)
    y = _check_xy(x, y)
    _check_int(epochs, "epochs", 1)
    _check_int(batch_size, "batch_size", 1)
    _check_int(seed, "seed", 0)
    lr = _check_float(lr, "lr", positive=True)
    momentum = _check_float(momentum, "momentum")
    weight_decay = _check_float(weight_decay, "weight_decay")
    _check_optimizer(optimizer)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    n = x.shape[0]
    top_label = y.max().item()
    steps = math.ceil(n / batch_size)
    shuffle = torch.Generator().manual_seed(seed)
    history = []
    with _seeded(seed), _mode(model, True), tqdm(total=epochs * steps, desc=desc, disable=not progress) as bar:
        for epoch in range(1, epochs + 1):
            order = torch.randperm(n, generator=shuffle).to(x.device)
            loss_sum, correct = 0.0, 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                xb, yb = x[idx], y[idx]
                logits = _logits(model, xb)
                if logits.shape[1] <= top_label:
                    raise ValueError(f"y holds label {top_label} but the model has only {logits.shape[1]} classes")
                loss = F.cross_entropy(logits, yb)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"the training loss became {loss.item()} at epoch {epoch}: lr={lr} is likely too large"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == yb).sum().item()
                bar.update(1)
            record = {"epoch": epoch, "loss": loss_sum / n, "train_accuracy": correct / n}
            if on_epoch is not None:
                with _mode(model, False):
                    record.update(on_epoch(epoch, model) or {})
            history.append(record)
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.4f}")
    return history


# ---------------------------------------------------------------- evaluation


def _eval_logits(model: nn.Module, x: Tensor, batch_size: int) -> Iterator[Tensor]:
    with _mode(model, False), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            yield _logits(model, x[start : start + batch_size])


def predict(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """The model's labels ``argmax f(x)`` as a long tensor ``[N]``, computed in
    eval mode without gradients; the model's train flags are left as they were."""
    _check_model(model)
    _check_x(x)
    _check_int(batch_size, "batch_size", 1)
    return torch.cat([logits.argmax(1) for logits in _eval_logits(model, x, batch_size)])


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` the model labels as ``y`` (eval mode, no gradients,
    train flags left as they were)."""
    _check_model(model)
    y = _check_xy(x, y)
    _check_int(batch_size, "batch_size", 1)
    return (predict(model, x, batch_size) == y).double().mean().item()


# ---------------------------------------------------------------- the cache

_OPTION_VALUE = (str, int, float, bool, type(None))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _options(value: Any, name: str) -> tuple[tuple[str, Any], ...]:
    """A mapping (or pairs) as sorted ``(key, value)`` pairs: hashable, and in
    one canonical order so equal options give equal cache keys."""
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        try:
            items = [tuple(pair) for pair in value]
        except TypeError:
            items = None
        if items is None or any(len(pair) != 2 for pair in items):
            raise TypeError(f"{name} must be a mapping (or (key, value) pairs), got {value!r}")
    for k, v in items:
        if not isinstance(k, str):
            raise TypeError(f"{name}: keys must be strings, got {k!r}")
        # JSON scalars only: they hash, and they survive the cache's JSON unchanged.
        if not isinstance(v, _OPTION_VALUE) or (isinstance(v, float) and not math.isfinite(v)):
            raise TypeError(f"{name}[{k!r}] must be a string, number, bool or None, got {v!r}")
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name} repeats a key: {keys}")
    return tuple(sorted(items))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model: the recipe :func:`trained`
    follows and the cache keys on.

    Args:
        arch: a name in :data:`advlib.models.ARCHITECTURES`.
        dataset: a name :func:`advlib.data.load` knows (``"digits"``, ``"mnist"``, ...).
        epochs, batch_size, lr, optimizer, momentum, weight_decay, seed: as in :func:`fit`.
        train_limit: train on the first this many training samples; ``None`` for all.
        data_options: options for :func:`advlib.data.load`, e.g. ``{"size": 28}``;
            given as a dict, stored as sorted ``(key, value)`` pairs so the config hashes.
        model_options: options for the builder, e.g. ``{"width": 32}`` for ``"nin-small"``.

    Example:
        >>> config = TrainConfig("lenet", "digits", epochs=5, lr=0.01, data_options={"size": 28})
        >>> model, info = trained(config)
    """

    arch: str
    dataset: str
    _: KW_ONLY
    epochs: int
    lr: float
    seed: int = 0
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    train_limit: int | None = None
    data_options: tuple[tuple[str, Any], ...] = field(default=())
    model_options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.arch not in models.ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; known: {', '.join(models.ARCHITECTURES)}")
        if not isinstance(self.dataset, str) or not _NAME.fullmatch(self.dataset):
            # It becomes part of a file name.
            raise ValueError(f"dataset must be a name of letters, digits, '-', '_' or '.', got {self.dataset!r}")
        _check_int(self.epochs, "epochs", 1)
        _check_int(self.seed, "seed", 0)
        _check_int(self.batch_size, "batch_size", 1)
        _check_optimizer(self.optimizer)
        if self.train_limit is not None:
            _check_int(self.train_limit, "train_limit", 1)
        # Floats normalised so lr=1 and lr=1.0 are one config with one key.
        object.__setattr__(self, "lr", _check_float(self.lr, "lr", positive=True))
        object.__setattr__(self, "momentum", _check_float(self.momentum, "momentum"))
        object.__setattr__(self, "weight_decay", _check_float(self.weight_decay, "weight_decay"))
        object.__setattr__(self, "data_options", _options(self.data_options, "data_options"))
        object.__setattr__(self, "model_options", _options(self.model_options, "model_options"))

    def as_dict(self) -> dict[str, Any]:
        """The config as JSON-ready plain values (options as dicts)."""
        d = asdict(self)
        d["data_options"] = dict(self.data_options)
        d["model_options"] = dict(self.model_options)
        return d

    def key(self) -> str:
        """Short hex sha256 of the canonical JSON of the config, the cache
        format and the torch version: a new torch (whose kernels may round
        differently) trains anew rather than reuse weights it did not make."""
        payload = {"config": self.as_dict(), "cache_format": CACHE_FORMAT, "torch": str(torch.__version__)}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where trained models live: the argument, else ``$ADVLIB_CACHE``, else
    ``./.cache/advlib`` (relative to the working directory)."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ADVLIB_CACHE")
    return Path(env) if env else Path(".cache") / "advlib"


def cache_paths(config: TrainConfig, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The ``(.pt, .json)`` files of ``config`` in the cache."""
    stem = f"{config.arch}-{config.dataset}-{config.key()}"
    root = resolve_cache_dir(cache_dir)
    return root / f"{stem}.pt", root / f"{stem}.json"


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename it
    over ``path``: a reader (or a crash) never sees half a file, and two
    processes training the same config just replace each other's result."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _build(config: TrainConfig, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    with _seeded(config.seed):
        return models.build(config.arch, in_shape, num_classes, **dict(config.model_options))


def _delete_hint(*paths: Path) -> str:
    return "delete " + " and ".join(str(p) for p in paths) + " to retrain"


def _reason(e: Exception) -> str:
    # torch's unpickling errors run to a page and suggest weights_only=False,
    # which a cache must never need: say what failed, not that.
    if isinstance(e, pickle.UnpicklingError):
        return f"{type(e).__name__}: unreadable, or holds more than tensors (refused by weights_only=True)"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:300]}"


def _load_cached(config: TrainConfig, pt: Path, js: Path) -> tuple[nn.Module, dict]:
    try:
        info = json.loads(js.read_text())
        stored_config = info["config"]
        in_shape, num_classes = tuple(info["in_shape"]), int(info["num_classes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheError(f"cache file {js} cannot be read; {_delete_hint(js, pt)} ({_reason(e)})") from e
    if stored_config != config.as_dict() or info.get("key") != config.key():
        raise CacheError(
            f"cache file {js} holds a different config than the one requested "
            f"(stored {stored_config}, requested {config.as_dict()}); {_delete_hint(js, pt)}"
        )
    try:
        # weights_only: a cache file is data, never code to run.
        state = torch.load(pt, weights_only=True, map_location="cpu")
        model = _build(config, in_shape, num_classes)
        model.load_state_dict(state)
    except Exception as e:
        raise CacheError(
            f"cache file {pt} cannot be loaded as the weights of {config.arch} (damaged, or not "
            f"a plain state_dict); {_delete_hint(pt, js)} ({_reason(e)})"
        ) from e
    return model.eval(), info


def trained(
    config: TrainConfig, *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> tuple[nn.Module, dict]:
    """The model ``config`` describes, trained once and then loaded from the cache.

    On a miss: loads the training split with
    ``advlib.data.load(config.dataset, "train", limit=config.train_limit, **data_options)``
    and the whole test split, builds ``models.build(config.arch, in_shape,
    num_classes, **model_options)`` with torch seeded by ``config.seed``,
    trains it with :func:`fit`, measures the test accuracy, and writes
    ``<arch>-<dataset>-<key>.pt`` (the state_dict) and ``.json`` (the info),
    each atomically, the ``.json`` last: a ``.pt`` without its ``.json`` is an
    interrupted write and is retrained over.

    A cache file that cannot be read or holds another config raises
    :class:`CacheError` naming it: a stale or broken cache is never used silently.

    Args:
        config: the recipe.
        cache_dir: the cache directory; default ``$ADVLIB_CACHE``, else ``./.cache/advlib``.
        progress: show the training progress bar.

    Returns:
        ``(model, info)``: the model in eval mode on the CPU, and a dict with
        ``config``, ``key``, ``cache_path`` (the .pt), ``info_path``,
        ``from_cache``, ``test_accuracy``, ``test_error``, ``train_seconds``
        (of the run that made the file), ``n_train``, ``n_test``,
        ``data_source``, ``in_shape``, ``num_classes``, ``classes``,
        ``history``, ``torch_version``, ``threads``.

    Example:
        >>> model, info = trained(TrainConfig("fc500-150-10", "digits", epochs=5, lr=0.05))
        >>> info["test_accuracy"], info["from_cache"]
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    pt, js = cache_paths(config, cache_dir)
    if pt.exists() and js.exists():
        model, info = _load_cached(config, pt, js)
        return model, {**info, "cache_path": str(pt), "info_path": str(js), "from_cache": True}

    from . import data  # imported here: only a cache miss needs the data sets

    options = dict(config.data_options)
    train = data.load(config.dataset, "train", limit=config.train_limit, **options)
    test = data.load(config.dataset, "test", **options)
    in_shape, num_classes = tuple(train.x.shape[1:]), len(train.classes)
    model = _build(config, in_shape, num_classes)
    start = time.perf_counter()
    history = fit(
        model,
        train.x,
        train.y,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        seed=config.seed,
        progress=progress,
        desc=f"{config.arch} on {config.dataset}",
    )
    seconds = time.perf_counter() - start
    model.eval()
    test_accuracy = accuracy(model, test.x, test.y)
    info = {
        "config": config.as_dict(),
        "key": config.key(),
        "cache_format": CACHE_FORMAT,
        "torch_version": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "test_accuracy": test_accuracy,
        "test_error": 1.0 - test_accuracy,
        "train_seconds": seconds,
        "n_train": int(train.x.shape[0]),
        "n_test": int(test.x.shape[0]),
        "data_source": train.source,
        "in_shape": list(in_shape),
        "num_classes": num_classes,
        "classes": list(train.classes),
        "history": history,
    }
    pt.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(pt, lambda f: torch.save(model.state_dict(), f))
    _write_atomic(js, lambda f: f.write(json.dumps(info, indent=2, allow_nan=False).encode()))
    return model, {**info, "cache_path": str(pt), "info_path": str(js), "from_cache": False}
