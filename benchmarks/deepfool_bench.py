"""DeepFool (and the other attacks of the book) beside Foolbox 3, ART and torchattacks:
a command line over :mod:`advlib.experiments.peers`, the peers chapter's protocol.

Run with ``make bench`` (installs the pinned peers of benchmarks/requirements.txt
into .venv without touching torch, then runs this script); see benchmarks/README.md.
Not part of the tests: the numbers depend on the machine and its load.

    .venv/bin/python benchmarks/deepfool_bench.py [--n 500] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from advlib import peers
from advlib.experiments import peers as chapter

ROOT = Path(__file__).resolve().parent.parent
DEEPFOOL = ("deepfool_l2", "deepfool_linf")


def markdown(results: dict) -> str:
    """The rows, the ratios to the fastest peer and the verdicts, as Markdown tables."""
    lines = ["| network | attack | library | images/s | passes/image (fwd + bwd) | success | median size | images | same as refresh=None |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row, entry in results["rows"].items():
        for attack, libs in entry["attacks"].items():
            for lib, r in libs.items():
                if not r["ran"]:
                    lines.append(f"| {row} | {attack} | {lib} | {r['reason']} | | | | | |")
                    continue
                size = "-" if r["median_size"] is None else f"{r['median_size']:.4g}"
                same = f"{100 * r['same_as_algorithm_2']:.1f}%" if "same_as_algorithm_2" in r else ""
                lines.append(f"| {row} | {attack} | {lib} | {r['images_per_s']:.1f} "
                             f"| {r['forward_per_image']:.1f} + {r['backward_per_image']:.1f} | {100 * r['success_rate']:.1f}% "
                             f"| {size} | {r['n_images']} | {same} |")
                for name, v in r.get("variants", {}).items():  # untimed
                    size = "-" if v["median_size"] is None else f"{v['median_size']:.4g}"
                    lines.append(f"| {row} | {attack} | {lib} {name} | untimed "
                                 f"| {v['forward_per_image']:.1f} + {v['backward_per_image']:.1f} "
                                 f"| {100 * v['success_rate']:.1f}% | {size} | {r['n_images']} | |")
    lines += ["", "| network / attack | fastest peer | advlib speed / its | its passes / advlib's | advlib median size / its |",
              "| --- | --- | ---: | ---: | ---: |"]
    for key, r in results["ratios"].items():
        size = "-" if r["median_size"] is None else f"{r['median_size']:.4f}"
        work = f"{r['work']:.2f}"
        variants = r.get("variants", {})
        if variants:  # C&W: advlib again with one option changed, untimed (chapter.CW_VARIANTS)
            work += " (" + "; ".join(f"{v['work']:.2f} {name}" for name, v in variants.items()) + ")"
            size += " (" + "; ".join(("-" if v["median_size"] is None else f"{v['median_size']:.4f}") + f" {name}"
                                     for name, v in variants.items()) + ")"
        lines.append(f"| {key} | {r['fastest_peer']} | {r['speed']:.2f} | {work} | {size} |")
    targets = chapter.ratio_table(results)["speed target"]
    lines += [""] + [f"- {key}: {verdict}" for key, verdict in targets.items() if verdict != "-"]
    lines += [""] + [f"- {c['statement']}: {'holds' if c['holds'] else 'does NOT hold'}" for c in results["claims"].values()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="first correctly classified test images (default 500)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per implementation, median kept (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads, the same for every library (default 1)")
    ap.add_argument("--budget-seconds", type=float, default=120.0,
                    help="an implementation whose warm-up predicts more attacks only its first images (default 120)")
    ap.add_argument("--slow-seconds", type=float, default=10.0, help="slower than this on its first run: not repeated")
    ap.add_argument("--attacks", nargs="+", choices=list(peers.SETTINGS), default=list(DEEPFOOL))
    ap.add_argument("--libraries", nargs="+", choices=list(peers.LIBRARIES), default=list(peers.LIBRARIES))
    ap.add_argument("--rows", nargs="+", choices=list(chapter.ROWS), default=list(chapter.ROWS))
    ap.add_argument("--dataset", default="fashion-mnist", help="data of the MNIST rows (default fashion-mnist)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for deepfool.json and deepfool.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("ADVLIB_CACHE", str(ROOT / ".cache" / "advlib"))
    torch.set_num_threads(args.threads)
    results = chapter.run(
        dataset=args.dataset, n_images=args.n, repeats=args.repeats, slow_seconds=args.slow_seconds,
        budget_seconds=args.budget_seconds, attack_names=tuple(args.attacks), libraries=tuple(args.libraries),
        rows=tuple(args.rows), progress=True,
    )
    results["threads"] = args.threads
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deepfool.json").write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    table = markdown(results)
    (out / "deepfool.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
