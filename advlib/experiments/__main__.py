"""``python -m advlib.experiments CHAPTER --preset NAME [-p NAME VALUE ...] --out FILE``

Runs one chapter's ``compute`` outside its notebook, with the parameters the
book would give it (the notebook's defaults, the preset's values, then each
``-p``), and saves a results file that the notebook shows when its parameter
``results_from`` names it (``make book RESULTS=dir``).

On many processes, the same command under ``torchrun``::

    torchrun --nproc_per_node 8 -m advlib.experiments deepfool_tables --preset paper --out results/paper/deepfool_tables.json

Each rank attacks a contiguous share of the images on its own device
(``cuda:LOCAL_RANK`` with NCCL, the CPU with gloo), rank 0 trains what is not in
the training cache (which the ranks must share), and rank 0 alone writes the
file, once every rank has finished: a failed rank fails the run, with its rank
and traceback, and leaves no file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
import traceback

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from .. import distributed, parameters, provenance
from . import CHAPTERS, chapter_module, save


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m advlib.experiments", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("chapter", choices=CHAPTERS, help="the chapter (its notebook's stem)")
    ap.add_argument("--preset", default="quick", help="a preset of presets.yml (default: quick)")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a notebook parameter, as papermill's -p reads it (repeatable)")
    ap.add_argument("--out", required=True, help="the results file to write (JSON)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    overrides = {name: parameters.parse_value(value) for name, value in args.parameter}
    chosen = parameters.effective(args.chapter, args.preset, overrides)  # unknown or mistyped: an error here
    module = chapter_module(args.chapter)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    with distributed.launched() as launch:
        if launch["world_size"] > 1 and getattr(module, "SINGLE_PROCESS", False):
            raise SystemExit(f"advlib.experiments: {args.chapter} {module.SINGLE_PROCESS}; run it without torchrun")
        if "threads" in chosen:
            torch.set_num_threads(chosen["threads"])
        results = module.compute(chosen)
        devices = distributed.gather(f"{platform.node()} {distributed.device()}")
        if distributed.rank() == 0:
            produced_by = {
                "command": _command(argv),
                "world_size": launch["world_size"],
                "backend": launch["backend"],
                "devices": devices,
                "versions": provenance.environment(),
                "git": provenance.git_state(),
                "started": started,
                "wall_time_s": round(time.perf_counter() - t0, 3),
            }
            path = save(args.out, args.chapter, chosen, results, produced_by)
            print(f"advlib.experiments: {args.chapter} ({launch['world_size']} process(es)) -> {path}", file=sys.stderr)
    return 0


def _command(argv: list[str] | None) -> str:
    words = sys.argv[1:] if argv is None else argv
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1:
        local = os.environ.get("LOCAL_WORLD_SIZE", "?")
        launcher = f"torchrun --nnodes {size // int(local) if local.isdigit() else '?'} --nproc_per_node {local} -m advlib.experiments"
    else:
        launcher = "python -m advlib.experiments"
    return " ".join([launcher, *map(shlex.quote, words)])


@record  # torchrun's error file: the failing rank's traceback in its summary
def entry() -> None:
    try:
        code = main()
    except SystemExit:
        raise
    except parameters.ParameterError as exc:  # unknown or mistyped -p, unknown preset: no traceback needed
        print(f"advlib.experiments: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except BaseException:
        size = os.environ.get("WORLD_SIZE", "1")
        where = f"rank {os.environ.get('RANK', '0')} of {size}" if size != "1" else "the run"
        print(f"advlib.experiments: {where} failed; no results file was written.\n{traceback.format_exc()}",
              file=sys.stderr, flush=True)
        raise
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
