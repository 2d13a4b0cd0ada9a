"""Training, evaluation, and the cache of trained models.

:func:`fit` is a plain loop on tensors, so the same function trains a model
from scratch, fine-tunes it on a set of adversarial examples (DeepFool
Sec. 4.3) and distils it at a temperature on soft labels. :func:`cached`
trains a model once per recipe and keeps it on disk, keyed by a hash of the
recipe, the cache format and the torch version, its weights checked by their
SHA-256 when read back; :func:`trained` is that cache for a model trained from
scratch as a :class:`TrainConfig` describes. A notebook asks for a model by
its recipe and gets the same weights every time, whether trained now or loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import re
import sys
import tempfile
import time
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm  # text bars (to stderr): tqdm.auto warns in notebooks without ipywidgets

from . import checks, distributed, models

# Bump when what a cache file means changes (its contents, or the layers a
# builder makes for a name): old files then get new keys and are never read.
CACHE_FORMAT = 2  # 2: the .json records the weights' SHA-256; recipes hashed as {"recipe": ...}

OPTIMIZERS = ("sgd", "adam")


class CacheError(RuntimeError):
    """A cache file exists but cannot be trusted; the message names it."""


# ---------------------------------------------------------------- checks


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


def _check_labels(x: Tensor, y: Any) -> Tensor:
    """Class indices ``[N]`` (long) for ``x``."""
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of labels, got {type(y).__name__}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"y must be an integer tensor of class labels, got dtype {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape [N] = [{x.shape[0]}] to match x, got {tuple(y.shape)}")
    if y.min().item() < 0:
        raise ValueError(f"y must hold class indices >= 0, got a minimum of {y.min().item()}")
    return y.to(device=x.device, dtype=torch.long)


SOFT_LABEL_ATOL = 1e-4  # how far a soft label's row may sum from 1


def _check_targets(x: Tensor, y: Any) -> Tensor:
    """Class indices ``[N]``, or soft labels ``[N, C]``: rows that are
    probability vectors (a teacher's softmax, as in defensive distillation)."""
    _check_x(x)
    if not (isinstance(y, Tensor) and y.is_floating_point()):
        return _check_labels(x, y)
    if y.dim() != 2 or y.shape[0] != x.shape[0] or y.shape[1] < 2:
        raise ValueError(
            f"y: soft labels must have shape [N, classes] = [{x.shape[0]}, C] with C >= 2 to match x, "
            f"got {tuple(y.shape)} (or pass class indices, a long tensor [N])"
        )
    if not torch.isfinite(y).all() or y.min().item() < 0:
        raise ValueError(f"y: soft labels must be finite and >= 0, got a minimum of {y.min().item()}")
    error = (y.double().sum(1) - 1).abs()
    if error.max().item() > SOFT_LABEL_ATOL:
        row = int(error.argmax())
        raise ValueError(
            f"y: each row of soft labels must sum to 1 (within {SOFT_LABEL_ATOL}), "
            f"row {row} sums to {y[row].double().sum().item():.6g}"
        )
    return y.to(device=x.device, dtype=x.dtype)


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
    temperature: float = 1.0,
    seed: int,
    progress: bool = True,
    desc: str = "fit",
    on_epoch: Callable[[int, nn.Module], Mapping[str, Any] | None] | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``(x, y)`` with the cross-entropy of
    ``softmax(logits / temperature)``, mini-batch by mini-batch, reshuffled
    every epoch.

    Deterministic on CPU: the shuffling draws from its own generator seeded
    with ``seed``, and torch's global generator (dropout) is seeded with it
    for the duration, then restored. Same seed, same data, same model ->
    bitwise-identical weights.

    Args:
        model: classifier returning logits ``[N, classes]``; trained in train
            mode, each module's train flag restored afterwards.
        x: inputs ``[N, ...]``, floating point (any tensors: clean or
            adversarial training sets alike).
        y: class indices, an integer tensor ``[N]``; or soft labels, a float
            tensor ``[N, classes]`` whose rows are probability vectors (>= 0,
            summing to 1 within ``SOFT_LABEL_ATOL``), e.g. a teacher's
            ``softmax(logits / T)``: the loss is then the cross-entropy to them.
        epochs: passes over the data (>= 1).
        batch_size: samples per step; the last batch of an epoch may be smaller.
        lr: learning rate (> 0).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"`` (``momentum`` unused).
        momentum: SGD momentum.
        weight_decay: L2 penalty, as the optimiser applies it.
        temperature: ``T > 0`` dividing the logits inside the loss only (the
            model is unchanged): defensive distillation trains teacher and
            student at ``T`` and deploys the student at ``T = 1``.
        seed: seeds the shuffling and dropout.
        progress: show a tqdm bar over the steps.
        desc: the bar's label.
        on_epoch: called as ``on_epoch(epoch, model)`` after each epoch, the
            model in eval mode (the train flags restored after the call); a
            dict it returns is merged into that epoch's history. One ``fit``
            call with a callback - e.g. measuring rho_adv after each extra
            epoch of fine-tuning (DeepFool Fig. 6) - keeps the optimiser's
            momentum and the shuffling running, where calling
            ``fit(epochs=1)`` repeatedly would restart both.

    Returns:
        One dict per epoch: ``epoch`` (1-based), ``loss`` (mean cross-entropy
        at ``temperature`` over the epoch's samples, as the weights moved) and
        ``train_accuracy`` (the running predictions against ``y``, or against
        the argmax of soft labels), plus what ``on_epoch`` returned.

    Example:
        >>> history = fit(model, x, y, epochs=2, lr=0.01, seed=0)
        >>> history[-1]["loss"]
    """
    _check_model(model)
    y = _check_targets(x, y)
    epochs = checks.integer(epochs, "epochs", low=1)
    batch_size = checks.integer(batch_size, "batch_size", low=1)
    seed = checks.integer(seed, "seed", low=0)
    lr = checks.number(lr, "lr", low=0, low_open=True)
    momentum = checks.number(momentum, "momentum", low=0)
    weight_decay = checks.number(weight_decay, "weight_decay", low=0)
    temperature = checks.number(temperature, "temperature", low=0, low_open=True)
    checks.choice(optimizer, "optimizer", OPTIMIZERS)
    checks.flag(progress, "progress")
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be None or a callable (epoch, model), got {type(on_epoch).__name__}")

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    soft = y.dim() == 2
    n = x.shape[0]
    classes_needed = y.shape[1] if soft else y.max().item() + 1
    hard = y.argmax(1) if soft else y  # what train_accuracy counts against
    steps = math.ceil(n / batch_size)
    shuffle = torch.Generator().manual_seed(seed)
    history = []
    with _seeded(seed), _mode(model, True), tqdm(total=epochs * steps, desc=desc, disable=not progress) as bar:
        for epoch in range(1, epochs + 1):
            order = torch.randperm(n, generator=shuffle).to(x.device)
            loss_sum, correct = 0.0, 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                logits = _logits(model, x[idx])
                if soft and logits.shape[1] != classes_needed:
                    raise ValueError(
                        f"y: soft labels have {classes_needed} classes but the model has {logits.shape[1]}"
                    )
                if not soft and logits.shape[1] < classes_needed:
                    raise ValueError(
                        f"y holds label {classes_needed - 1} but the model has only {logits.shape[1]} classes"
                    )
                # Dividing by T = 1.0 is exact, so T = 1 is the plain loss bit for bit.
                loss = F.cross_entropy(logits / temperature, y[idx])
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(
                        f"the training loss became {loss.item()} at epoch {epoch}: lr={lr} is likely too large"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == hard[idx]).sum().item()
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
    checks.integer(batch_size, "batch_size", low=1)
    return torch.cat([logits.argmax(1) for logits in _eval_logits(model, x, batch_size)])


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` the model labels as ``y`` (eval mode, no gradients,
    train flags left as they were)."""
    _check_model(model)
    _check_x(x)
    y = _check_labels(x, y)
    checks.integer(batch_size, "batch_size", low=1)
    return (predict(model, x, batch_size) == y).double().mean().item()


# ---------------------------------------------------------------- the cache
#
# One cache for every model made by training: from scratch (trained) or
# derived from another (fine-tuned on adversarial examples, distilled). A
# recipe - a JSON-able mapping that fully determines the weights - is hashed
# into the file names; the .json beside the .pt holds the recipe, the SHA-256
# of the .pt and what the training reported.

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# Keys cached() puts in info itself; a fit's extra may not reuse them.
_RESERVED = frozenset(
    {"recipe", "key", "name", "cache_format", "torch_version", "threads", "train_seconds",
     "weights_sha256", "cache_path", "info_path", "from_cache"}
)

# A temporary file of a write (.<target>.<random>.tmp) older than this was left
# by a process that died mid-write: a live writer fills its file in one go
# right after training (seconds), so an hour-old one is never someone's work
# in progress. Younger ones are left alone even for our own target, because
# another process training the same recipe may be writing it right now, and
# deleting its file would make its rename fail.
STALE_TEMP_SECONDS = 3600.0


def _canonical(recipe: Any, what: str = "recipe") -> dict[str, Any]:
    """``recipe`` as plain JSON values (tuples become lists), so that the
    recipe stored in the .json compares equal to the one asked for."""
    if not isinstance(recipe, Mapping) or not all(isinstance(k, str) for k in recipe):
        raise TypeError(f"{what} must be a mapping with string keys, got {recipe!r}")
    try:
        return json.loads(json.dumps(recipe, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{what} must hold JSON values only (str, finite numbers, bool, None, lists, dicts): {e}"
        ) from e


def cache_key(recipe: Mapping[str, Any]) -> str:
    """Short hex sha256 of the canonical JSON of ``recipe``, the cache format
    and the torch version: a new torch (whose kernels may round differently)
    trains anew rather than reuse weights it did not make."""
    payload = {"recipe": _canonical(recipe), "cache_format": CACHE_FORMAT, "torch": str(torch.__version__)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where trained models live: the argument, else ``$ADVLIB_CACHE``, else
    ``./.cache/advlib`` (relative to the working directory)."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("ADVLIB_CACHE")
    return Path(env) if env else Path(".cache") / "advlib"


def _paths(name: str, recipe: Mapping[str, Any], cache_dir) -> tuple[Path, Path]:
    stem = f"{name}-{cache_key(recipe)}"
    root = resolve_cache_dir(cache_dir)
    return root / f"{stem}.pt", root / f"{stem}.json"


def in_cache(recipe: Mapping[str, Any], name: str, cache_dir=None) -> bool:
    """Whether :func:`cached` would load ``recipe`` rather than train it (its
    files are there; they are checked when loaded)."""
    pt, js = _paths(name, _canonical(recipe), cache_dir)
    return pt.exists() and js.exists()


def _delete_hint(*paths: Path) -> str:
    return "delete " + " and ".join(str(p) for p in paths) + " to retrain"


def _reason(e: Exception) -> str:
    # torch's unpickling errors run to a page and suggest weights_only=False,
    # which a cache must never need: say what failed, not that.
    if isinstance(e, pickle.UnpicklingError):
        return f"{type(e).__name__}: unreadable, or holds more than tensors (refused by weights_only=True)"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:300]}"


def _usable_dir(root: Path) -> None:
    """Refuse a cache directory that cannot take the result, before the
    training that would be lost: make it, then write and delete a probe file
    (permission bits alone miss read-only mounts and root's exemption)."""
    if root.exists() and not root.is_dir():
        raise CacheError(f"cache directory {root} is not a directory; pass another cache_dir or set $ADVLIB_CACHE")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CacheError(
            f"cache directory {root} cannot be written ({_reason(e)}); pass another cache_dir or set $ADVLIB_CACHE"
        ) from e


def _remove_stale_temps(root: Path, now: float | None = None) -> list[Path]:
    """Delete temporary files of interrupted writes (see STALE_TEMP_SECONDS)."""
    now = time.time() if now is None else now
    removed = []
    for tmp in root.glob(".*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to delete: leave it
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
                removed.append(tmp)
    return removed


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same directory, then rename it
    over ``path``: a reader (or a crash) never sees half a file, and two
    processes training the same recipe just replace each other's result."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _load(
    name: str, recipe: dict, key: str, build: Callable[[], nn.Module], pt: Path, js: Path
) -> tuple[nn.Module, dict]:
    try:
        stored = json.loads(js.read_text())
        stored_recipe, digest, extra = stored["recipe"], stored["weights_sha256"], stored["extra"]
        if not isinstance(extra, dict) or not isinstance(digest, str):
            raise TypeError("'extra' must be an object and 'weights_sha256' a string")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheError(f"cache file {js} cannot be read; {_delete_hint(js, pt)} ({_reason(e)})") from e
    if stored_recipe != recipe or stored.get("key") != key:
        raise CacheError(
            f"cache file {js} holds a different recipe than the one requested "
            f"(stored {stored_recipe}, requested {recipe}); {_delete_hint(js, pt)}"
        )
    try:
        blob = pt.read_bytes()
    except OSError as e:
        raise CacheError(f"cache file {pt} cannot be read; {_delete_hint(pt, js)} ({_reason(e)})") from e
    # Checked before torch.load sees a byte, on the very bytes it then reads.
    actual = hashlib.sha256(blob).hexdigest()
    if actual != digest:
        raise CacheError(
            f"cache file {pt} is damaged or was replaced: its SHA-256 is {actual}, but {js.name} "
            f"records {digest}; {_delete_hint(pt, js)}"
        )
    try:
        # weights_only: a cache file is data, never code to run.
        state = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
        model = build()
        model.load_state_dict(state)
    except Exception as e:
        raise CacheError(
            f"cache file {pt} cannot be loaded as the weights of {name} (damaged, or not "
            f"a plain state_dict); {_delete_hint(pt, js)} ({_reason(e)})"
        ) from e
    info = {k: v for k, v in stored.items() if k != "extra"}
    return model.eval(), {**info, **extra, "cache_path": str(pt), "info_path": str(js), "from_cache": True}


def cached(
    recipe: Mapping[str, Any],
    build: Callable[[], nn.Module],
    fit: Callable[[nn.Module], Mapping[str, Any] | None],
    *,
    name: str,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """The model ``recipe`` describes, trained once, then loaded from the cache.

    On a miss: ``model = build()``, ``extra = fit(model)`` (``fit`` trains the
    model in place and returns a JSON-able dict, e.g. its history), then the
    state_dict goes to ``<name>-<key>.pt`` and the info to ``<name>-<key>.json``
    (with the SHA-256 of the .pt), each atomically, the .json last: a .pt
    without its .json is an interrupted write and is trained over. On a hit:
    ``build()`` makes the skeleton and the weights are loaded into it with
    ``torch.load(weights_only=True)``, after their SHA-256 was checked.

    ``key = cache_key(recipe)``, so the recipe must hold everything the
    weights depend on - for a derived model, the key (or recipe) of the model
    it starts from, the data and every option of the training - and nothing
    else. Seed inside ``build`` and ``fit``: the cache does not.

    Errors: a cache directory that cannot be written is a :class:`CacheError`
    before ``fit`` runs; a .json that cannot be read or holds another recipe,
    a .pt whose SHA-256 differs from the one recorded, or that is not a plain
    state_dict of ``build()``'s model, is a :class:`CacheError` naming the file
    and saying to delete it. Temporary files of writes interrupted more than
    ``STALE_TEMP_SECONDS`` ago are removed when the directory is next written.

    Args:
        recipe: JSON-able mapping that fully determines the result.
        build: makes the untrained model (same architecture every call).
        fit: trains it in place; returns a JSON-able dict merged into info.
        name: file-name prefix: letters, digits, ``-``, ``_``, ``.``.
        cache_dir: default ``$ADVLIB_CACHE``, else ``./.cache/advlib``.
        progress: on a miss, say on stderr what is being trained and where it
            will be cached (``fit``'s own bar is ``fit``'s business).

    Returns:
        ``(model, info)``: the model in eval mode, and ``recipe``, ``key``,
        ``name``, ``from_cache``, ``cache_path`` (the .pt), ``info_path``,
        ``train_seconds`` (of the run that made the file), ``weights_sha256``,
        ``cache_format``, ``torch_version``, ``threads``, plus the keys of
        ``extra``.

    Example:
        >>> recipe = {"kind": "fine-tuned", "base": base_info["key"], "epochs": 5, "lr": 1e-3, "seed": 0}
        >>> model, info = cached(recipe, build=lambda: copy.deepcopy(base),
        ...                      fit=lambda m: {"history": fit(m, x_adv, y, epochs=5, lr=1e-3, seed=0)},
        ...                      name="lenet-finetuned")
    """
    recipe = _canonical(recipe)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"name must be letters, digits, '-', '_' or '.' (a file name), got {name!r}")
    if not callable(build) or not callable(fit):
        raise TypeError("build and fit must be callables: build() -> nn.Module, fit(model) -> dict")
    checks.flag(progress, "progress")
    key = cache_key(recipe)
    pt, js = _paths(name, recipe, cache_dir)
    # Under torchrun only rank 0 trains; the others load what it wrote (advlib.distributed).
    with distributed.rank_zero_first():
        if pt.exists() and js.exists():
            return _load(name, recipe, key, build, pt, js)
        if distributed.rank() != 0:
            raise CacheError(f"rank {distributed.rank()}: rank 0 trained {name} but {pt} is not there: "
                             "the ranks must share the cache directory ($ADVLIB_CACHE)")
        return _train(name, recipe, key, build, fit, pt, js, progress)


def _train(name, recipe, key, build, fit, pt, js, progress):
    """``cached``'s miss: train, then write the weights and the record atomically."""
    _usable_dir(pt.parent)
    if progress:
        tqdm.write(f"advlib: training {name} ({key}), not in the cache {pt.parent}", file=sys.stderr)
    model = build()
    _check_model(model)
    start = time.perf_counter()
    extra = fit(model)
    seconds = time.perf_counter() - start
    extra = _canonical({} if extra is None else extra, "the dict fit returned")
    clash = sorted(_RESERVED & extra.keys())
    if clash:
        raise ValueError(f"the dict fit returned uses key(s) {clash}, which cached() sets itself")
    model.eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    weights = buffer.getvalue()
    info = {
        "name": name,
        "recipe": recipe,
        "key": key,
        "cache_format": CACHE_FORMAT,
        "torch_version": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "train_seconds": seconds,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    _remove_stale_temps(pt.parent)
    _write_atomic(pt, weights)
    _write_atomic(js, json.dumps({**info, "extra": extra}, indent=2, allow_nan=False).encode())
    return model, {**info, **extra, "cache_path": str(pt), "info_path": str(js), "from_cache": False}


# ---------------------------------------------------------------- models trained from scratch

_OPTION_VALUE = (str, int, float, bool, type(None))


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
        checks.integer(self.epochs, "epochs", low=1)
        checks.integer(self.seed, "seed", low=0)
        checks.integer(self.batch_size, "batch_size", low=1)
        checks.choice(self.optimizer, "optimizer", OPTIMIZERS)
        checks.integer(self.train_limit, "train_limit", low=1, none=True)
        # Floats normalised so lr=1 and lr=1.0 are one config with one key.
        object.__setattr__(self, "lr", checks.number(self.lr, "lr", low=0, low_open=True))
        object.__setattr__(self, "momentum", checks.number(self.momentum, "momentum", low=0))
        object.__setattr__(self, "weight_decay", checks.number(self.weight_decay, "weight_decay", low=0))
        object.__setattr__(self, "data_options", _options(self.data_options, "data_options"))
        object.__setattr__(self, "model_options", _options(self.model_options, "model_options"))

    def as_dict(self) -> dict[str, Any]:
        """The config as JSON-ready plain values (options as dicts): the
        recipe :func:`trained` gives :func:`cached`."""
        d = asdict(self)
        d["data_options"] = dict(self.data_options)
        d["model_options"] = dict(self.model_options)
        return d

    def key(self) -> str:
        """The cache key of this recipe, :func:`cache_key` of :meth:`as_dict`."""
        return cache_key(self.as_dict())

    def name(self) -> str:
        """The cache files' prefix, ``<arch>-<dataset>``."""
        return f"{self.arch}-{self.dataset}"


def cache_paths(config: TrainConfig, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The ``(.pt, .json)`` files of ``config`` in the cache."""
    return _paths(config.name(), config.as_dict(), cache_dir)


def trained(
    config: TrainConfig, *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> tuple[nn.Module, dict]:
    """The model ``config`` describes, trained once and then loaded from the
    cache: :func:`cached` with the recipe ``config.as_dict()`` and the name
    ``<arch>-<dataset>``, so its checks and errors are those of :func:`cached`.

    On a miss: loads the training split with
    ``advlib.data.load(config.dataset, "train", limit=config.train_limit, **data_options)``
    and the whole test split, builds ``models.build(config.arch, in_shape,
    num_classes, **model_options)`` with torch seeded by ``config.seed``,
    trains it with :func:`fit` and measures the test accuracy. On a hit,
    no data is loaded: the input shape and the number of classes come from
    the cached .json.

    Args:
        config: the recipe.
        cache_dir: the cache directory; default ``$ADVLIB_CACHE``, else ``./.cache/advlib``.
        progress: show the training progress bar.

    Returns:
        ``(model, info)``: the model in eval mode on the CPU, and a dict with
        ``config`` (= ``recipe``), ``key``, ``cache_path`` (the .pt), ``info_path``,
        ``from_cache``, ``test_accuracy``, ``test_error``, ``train_seconds``
        (of the run that made the file), ``n_train``, ``n_test``,
        ``data_source``, ``in_shape``, ``num_classes``, ``classes``,
        ``history``, ``torch_version``, ``threads``, ``weights_sha256``.

    Example:
        >>> model, info = trained(TrainConfig("fc500-150-10", "digits", epochs=5, lr=0.05))
        >>> info["test_accuracy"], info["from_cache"]
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    pt, js = cache_paths(config, cache_dir)
    loaded: dict[str, Any] = {}  # the data sets, once a miss needed them

    def load_data() -> None:
        if not loaded:
            from . import data  # imported here: only a cache miss needs the data sets

            options = dict(config.data_options)
            loaded["train"] = data.load(config.dataset, "train", limit=config.train_limit, **options)
            loaded["test"] = data.load(config.dataset, "test", **options)

    def build() -> nn.Module:
        # On a hit the shape comes from the .json (cached checks that file
        # again after build: a bad one is its error to give); without a
        # readable one, from the data.
        try:
            extra = json.loads(js.read_text())["extra"]
            in_shape, num_classes = tuple(int(d) for d in extra["in_shape"]), int(extra["num_classes"])
        except (OSError, ValueError, KeyError, TypeError):
            load_data()
            in_shape, num_classes = tuple(loaded["train"].x.shape[1:]), len(loaded["train"].classes)
        with _seeded(config.seed):
            return models.build(config.arch, in_shape, num_classes, **dict(config.model_options))

    def train_it(model: nn.Module) -> dict:
        load_data()
        train_set, test_set = loaded["train"], loaded["test"]
        history = fit(
            model, train_set.x, train_set.y,
            epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
            optimizer=config.optimizer, momentum=config.momentum, weight_decay=config.weight_decay,
            seed=config.seed, progress=progress, desc=f"{config.arch} on {config.dataset}",
        )
        test_accuracy = accuracy(model, test_set.x, test_set.y)
        return {
            "config": config.as_dict(),
            "test_accuracy": test_accuracy,
            "test_error": 1.0 - test_accuracy,
            "n_train": int(train_set.x.shape[0]),
            "n_test": int(test_set.x.shape[0]),
            "data_source": train_set.source,
            "in_shape": list(train_set.x.shape[1:]),
            "num_classes": len(train_set.classes),
            "classes": list(train_set.classes),
            "history": history,
        }

    # The "training ..." line is redundant beside fit's own bar.
    return cached(config.as_dict(), build, train_it, name=config.name(), cache_dir=cache_dir, progress=False)


def plane_network(train_set, *, hidden: int, epochs: int = 300, lr: float = 0.05, seed: int = 0,
                  progress: bool = False) -> nn.Module:
    """``models.mlp2d`` trained full-batch with Adam on a 2-D ``train_set``
    (the toy studies of the DeepFool and perturbation chapters), its initial
    weights drawn from torch seeded with ``seed`` (the global generator is
    restored afterwards). Seconds: no cache needed."""
    checks.integer(hidden, "hidden", low=1)
    checks.integer(epochs, "epochs", low=1)
    checks.integer(seed, "seed", low=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = models.mlp2d(hidden=hidden, num_classes=len(train_set.classes))
    fit(net, train_set.x, train_set.y, epochs=epochs, lr=lr, optimizer="adam", batch_size=len(train_set.x),
        seed=seed, progress=progress)
    return net.eval()
