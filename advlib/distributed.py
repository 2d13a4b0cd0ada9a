"""Splitting a chapter's per-image work over the processes of ``torchrun``.

Under ``torchrun --nproc_per_node N [--nnodes M ...] -m advlib.experiments ...``
every process runs the whole chapter; only the work that is independent per
image is split. It is cut into fixed chunks first (an attack's batches, one
image of a MILP), the same chunks whatever the world size, and each rank takes
a contiguous run of them; every rank then receives all the chunks' results in
their original order and goes on with the same numbers. So a run on any number
of processes computes exactly what one process computes (with the same thread
count: a different one may change the last bits of a matrix product).

Training stays on one rank: :func:`rank_zero_first` lets rank 0 train and fill
the training cache while the others wait, then they read what it wrote.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) nothing here
does anything: :func:`map_chunks` is a plain loop.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Callable, Iterator

import torch

from . import checks

# A rank that waits longer than this for the others has lost them.
TIMEOUT = datetime.timedelta(minutes=30)


_solo = False  # inside rank_zero_first on rank 0: the others are not there to share the work


def active() -> bool:
    """Whether this process is one rank of several (a process group is up)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sharing() -> bool:
    """Whether work can be split now: several ranks, all of them at this point
    (not inside :func:`rank_zero_first`, where rank 0 works alone)."""
    return active() and not _solo


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under NCCL, else the CPU."""
    if active() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@contextlib.contextmanager
def launched() -> Iterator[dict[str, Any]]:
    """The process group ``torchrun`` asked for, for the duration of the block:
    NCCL on ``cuda:LOCAL_RANK`` where there are GPUs, gloo on the CPU
    otherwise. Yields ``{"world_size", "backend", "device"}`` of this rank;
    without ``torchrun`` (``WORLD_SIZE`` unset or 1) it is one process on the CPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        yield {"world_size": 1, "backend": None, "device": "cpu"}
        return
    gpu = torch.cuda.is_available()
    backend = "nccl" if gpu else "gloo"
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield {"world_size": world_size(), "backend": backend, "device": str(device())}
    finally:
        torch.distributed.destroy_process_group()


def shard(n: int, ranks: int, of: int) -> range:
    """The contiguous part of ``range(n)`` rank ``of`` takes among ``ranks``:
    sizes differ by at most one, the first ranks taking the larger parts."""
    n = checks.integer(n, "n", low=0)
    ranks = checks.integer(ranks, "ranks", low=1)
    of = checks.integer(of, "of", low=0, high=ranks - 1)
    base, extra = divmod(n, ranks)
    start = of * base + min(of, extra)
    return range(start, start + base + (of < extra))


def map_chunks(fn: Callable[[int, int], Any], n: int, size: int) -> list[Any]:
    """``[fn(0, size), fn(size, 2 * size), ..., fn(.., n)]``: ``fn(start, stop)``
    on consecutive chunks of ``range(n)``, each rank computing a contiguous
    run of the chunks and every rank receiving all the results, in order.

    The results travel pickled (``all_gather_object``): tensors in them are
    moved to the CPU first, so a rank on a GPU can send them to any other."""
    n = checks.integer(n, "n", low=0)
    size = checks.integer(size, "size", low=1)
    chunks = [(s, min(s + size, n)) for s in range(0, n, size)]
    if not sharing():
        return [fn(s, e) for s, e in chunks]
    mine = [fn(*chunks[i]) for i in shard(len(chunks), world_size(), rank())]
    return [result for part in gather(mine) for result in part]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (pickled: tensors
    in it are moved to the CPU first); ``[value]`` without torchrun."""
    if not sharing():
        return [value]
    everyone: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(everyone, _to_cpu(value))
    return everyone


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first; the others run it once rank 0 is done (for
    the training cache: rank 0 trains and writes the file, the others load it).
    Inside, rank 0 works alone: :func:`map_chunks` does every chunk itself, so
    per-image work that only training needs (a robustness measure after each
    epoch) is not split; split work the others need too before the block.
    A plain block without ``torchrun``."""
    global _solo
    if not sharing():
        yield
        return
    if rank() != 0:
        torch.distributed.barrier()
        yield
        return
    # Rank 0 alone: work inside (an attack during training) must not wait for the others.
    _solo = True
    try:
        yield
    finally:
        _solo = False
    torch.distributed.barrier()


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to_cpu(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.replace(value, **{f: _to_cpu(getattr(value, f)) for f in value.__dataclass_fields__})
    return value
