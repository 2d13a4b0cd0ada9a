"""JSMA's peak memory against the number of input features n.

Each input size runs in its own subprocess, so that one process's peak resident
set (``ru_maxrss``) is one measurement: the peak during the attack minus the
peak before it (model built, inputs made, one warm-up forward/backward). Two
rows per size: the attack on a small random convolutional network (its pair
search meets the Pareto front of the real gradients), and the pair search
alone at its worst case (``beta = alpha + const``: every feature on the front,
so the search runs ``chunk`` features at a time over all of them). Not a test:
the numbers depend on the allocator and the machine.

    .venv/bin/python benchmarks/jsma_memory.py [--batch 8] [--sizes 16 32 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def measure(side: int, batch: int, what: str) -> dict:
    """One measurement, in this process (the subprocess's side)."""
    import torch

    from advlib import attacks
    from advlib.attacks.jsma import _best_pair

    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = 3 * side * side
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
        torch.nn.Linear(128, 10),
    ).eval()
    x = torch.rand(batch, 3, side, side) * 0.9
    alpha = torch.randn(batch, n)
    beta = alpha + 0.5  # the worst case: no point dominates another
    domain = torch.ones(batch, n, dtype=torch.bool)
    xa = x.clone().requires_grad_(True)
    model(xa).sum().backward()  # warm-up: the autograd engine's own buffers are not the attack's
    before = _peak_mb()
    t0 = time.perf_counter()
    if what == "attack":
        with torch.no_grad():
            target = (model(x).argmax(1) + 1) % 10
        res = attacks.jsma(model, x, target=target, gamma=40 / n)  # 20 pair updates at most
        detail = {"iterations": int(res.iterations.max())}
    else:
        _best_pair(alpha, beta, domain, False, 64)  # decreasing: admissible pairs exist
        detail = {}
    return {"side": side, "n": n, "batch": batch, "what": what, "peak_mb": _peak_mb() - before,
            "seconds": time.perf_counter() - t0, **detail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64], help="image sides (3 channels)")
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "WHAT"), help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.batch, args.one[1])))
        return
    for what in ("attack", "worst-case pair search"):
        for side in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--one", str(side), what],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            print(f"{what:24s} 3x{side}x{side} (n = {r['n']:5d}), batch {r['batch']}: peak +{r['peak_mb']:7.1f} MB"
                  f" = {1e6 * r['peak_mb'] / (r['n'] * r['batch']):6.1f} bytes per feature and sample,"
                  f" {r['seconds']:.2f} s" + (f", {r['iterations']} iterations" if "iterations" in r else ""))


if __name__ == "__main__":
    main()
