"""DeepFool throughput and quality: advlib beside Foolbox 3, ART and torchattacks.

Run with ``make bench`` (installs the pinned peers of benchmarks/requirements.txt
into .venv without touching torch, then runs this script); see benchmarks/README.md.
Not part of the tests: the numbers depend on the machine and its load.

For each model (LeNet and FC500-150-10 trained on Fashion-MNIST) and each norm
(L2, L-inf), every implementation attacks the same batch of test images with
the same settings (overshoot 0.02, 10 candidates, 50 steps at most, box [0, 1]).
Each one runs once on a few images to warm up, then ``--repeats`` times on the
whole batch, interleaved with the others in a rotating order; the median wall
time gives images/s. The slow peers run once (ART), or once on the first 100
images (torchattacks, whose per-sample loop makes images/s independent of the
batch). Success, norms and rho_adv are recomputed here from the returned
adversarials with the same model, for every implementation.

    .venv/bin/python benchmarks/deepfool_bench.py [--n 500] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata as md
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from advlib import data, metrics, train
from advlib.attacks import deepfool

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
INF = math.inf

# The attack settings every implementation gets.
OVERSHOOT = 0.02
CANDIDATES = 10
MAX_ITER = 50
BOX = (0.0, 1.0)

# The models: the book's recipes for the two MNIST rows of Table 1
# (notebooks/deepfool_tables.md, parameter defaults, which the quick preset of
# presets.yml keeps): 2 epochs of SGD on the full Fashion-MNIST training set.
# Same configs, same cache key: the book and the benchmark share the trained models.
CONFIGS = {
    "LeNet": train.TrainConfig("lenet", "fashion-mnist", epochs=2, lr=0.01, seed=0),
    "FC500-150-10": train.TrainConfig("fc500-150-10", "fashion-mnist", epochs=2, lr=0.05, seed=0),
}

class NotInstalled(Exception):
    """A peer library is missing or does not import: reported as a row, never a crash."""


@dataclass
class Outcome:
    x_adv: Tensor
    iterations: Tensor | None  # per sample, when the implementation exposes it


# ------------------------------------------------------------ implementations


# advlib's DeepFool with its defaults, and variants that show what each default buys:
# refresh=None recomputes every candidate's gradient at every iteration (Algorithm 2 to
# the letter), refresh=1 only the nearest one's; min_progress=0 takes the plain clipped
# steps (Foolbox 3's algorithm).
ADVLIB_VARIANTS: dict[str, dict] = {
    "advlib": {},
    "advlib (refresh=None)": {"refresh": None},
    "advlib (refresh=1)": {"refresh": 1},
    "advlib (min_progress=0)": {"min_progress": 0.0},
}


def advlib_runner(options: dict) -> Callable[..., Outcome]:
    def run(model: nn.Module, x: Tensor, y: Tensor, p: float) -> Outcome:
        res = deepfool(
            model, x, p=p, overshoot=OVERSHOOT, max_iter=MAX_ITER, candidates=CANDIDATES, clip=BOX, **options
        )
        return Outcome(res.x_adv, res.iterations)

    return run


def _foolbox():
    try:
        import foolbox
    except Exception as e:  # ImportError, or a dependency that fails at import
        raise NotInstalled(f"foolbox: {type(e).__name__}: {e}") from e
    return foolbox


def run_foolbox(model: nn.Module, x: Tensor, y: Tensor, p: float) -> Outcome:
    fb = _foolbox()
    fmodel = fb.PyTorchModel(model, bounds=BOX, device="cpu")
    cls = fb.attacks.L2DeepFoolAttack if p == 2 else fb.attacks.LinfDeepFoolAttack
    attack = cls(steps=MAX_ITER, candidates=CANDIDATES, overshoot=OVERSHOOT, loss="logits")
    _, clipped, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
    return Outcome(clipped, None)


def run_art(model: nn.Module, x: Tensor, y: Tensor, p: float) -> Outcome:
    try:
        from art.attacks.evasion import DeepFool
        from art.estimators.classification import PyTorchClassifier
    except Exception as e:
        raise NotInstalled(f"adversarial-robustness-toolbox: {type(e).__name__}: {e}") from e
    classifier = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=int(model(x[:1]).shape[1]),
        clip_values=BOX,
        device_type="cpu",
    )
    # The whole batch at once: ART's fastest setting (its default is 1).
    attack = DeepFool(classifier, max_iter=MAX_ITER, epsilon=OVERSHOOT, nb_grads=CANDIDATES, batch_size=len(x), verbose=False)
    return Outcome(torch.from_numpy(attack.generate(x.numpy())), None)


def run_torchattacks(model: nn.Module, x: Tensor, y: Tensor, p: float) -> Outcome:
    try:
        import torchattacks
    except Exception as e:
        raise NotInstalled(f"torchattacks: {type(e).__name__}: {e}") from e
    attack = torchattacks.DeepFool(model, steps=MAX_ITER, overshoot=OVERSHOOT)
    return Outcome(attack(x, y), None)


# name -> (runner, norms it implements, distribution whose version is recorded)
IMPLEMENTATIONS: dict[str, tuple[Callable[..., Outcome], tuple[float, ...], str | None]] = {
    **{name: (advlib_runner(options), (2, INF), "advlib") for name, options in ADVLIB_VARIANTS.items()},
    "Foolbox 3": (run_foolbox, (2, INF), "foolbox"),
    "ART": (run_art, (2,), "adversarial-robustness-toolbox"),
    "torchattacks": (run_torchattacks, (2,), "torchattacks"),
}
REFERENCE = "Foolbox 3"


# -------------------------------------------------------------------- helpers


@contextlib.contextmanager
def counting_passes(model: nn.Module):
    """Count the model's forward and backward passes and the samples they carried.

    The hooks sit on the first leaf module, not on the model: ART's
    PyTorchClassifier runs the layers of an ``nn.Sequential`` one by one
    and never calls the model's own forward. A backward pass is counted when
    it reaches that layer's input, which every attack here differentiates."""
    count = {"calls": 0, "samples": 0, "backward_calls": 0, "backward_samples": 0}
    first = next(m for m in model.modules() if not list(m.children()))

    def forward_hook(module, args, output):
        count["calls"] += 1
        count["samples"] += int(args[0].shape[0])

    def backward_hook(module, grad_input, grad_output):
        if grad_input[0] is not None:
            count["backward_calls"] += 1
            count["backward_samples"] += int(grad_input[0].shape[0])

    handles = [first.register_forward_hook(forward_hook), first.register_full_backward_hook(backward_hook)]
    try:
        yield count
    finally:
        for h in handles:
            h.remove()


def version(dist: str | None) -> str:
    if dist is None:
        return ""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


def evaluate(model: nn.Module, x: Tensor, label: Tensor, out: Outcome, p: float) -> dict:
    """Quality, recomputed from the returned points alone, for every implementation."""
    x_adv = out.x_adv.detach().to(dtype=x.dtype, device=x.device).reshape(x.shape)
    with torch.no_grad():
        pred = model(x_adv).argmax(dim=1)
    success = pred != label
    r = x_adv - x
    norms = metrics.norms(r, p)
    box_excess = max(0.0, BOX[0] - x_adv.min().item(), x_adv.max().item() - BOX[1])
    return {
        "success_rate": metrics.success_rate(success),
        "rho_adv": metrics.rho_adv(x, r, p),
        "median_norm": norms.median().item(),
        "median_norm_successful": norms[success].median().item() if success.any() else None,
        "rho_adv_successful": metrics.relative_norms(x, r, p)[success].mean().item() if success.any() else None,
        "mean_iterations": out.iterations.float().mean().item() if out.iterations is not None else None,
        "max_iterations": int(out.iterations.max().item()) if out.iterations is not None else None,
        "box_excess": box_excess,
        "finite": bool(torch.isfinite(x_adv).all().item()),
    }


def first_correct(model: nn.Module, test: data.Dataset, n: int) -> tuple[Tensor, Tensor, list[int]]:
    """The first ``n`` test images the model classifies correctly."""
    with torch.no_grad():
        pred = torch.cat([model(xb).argmax(1) for xb in test.x.split(1000)])
    idx = torch.nonzero(pred == test.y).flatten()[:n]
    if len(idx) < n:
        raise RuntimeError(f"only {len(idx)} correctly classified test images, {n} asked for")
    return test.x[idx].contiguous(), test.y[idx].clone(), [int(idx[0]), int(idx[-1])]


# ----------------------------------------------------------------------- run


def bench_model(name: str, config: train.TrainConfig, test: data.Dataset, args) -> dict:
    model, info = train.trained(config, cache_dir=args.cache_dir, progress=False)
    model.eval().requires_grad_(False)  # the same frozen model for every library
    x, y, span = first_correct(model, test, args.n)
    print(
        f"\n## {name}: test accuracy {info['test_accuracy']:.4f} "
        f"({'cached' if info['from_cache'] else 'trained now'}), attacking test images {span[0]}..{span[1]}",
        flush=True,
    )
    entry = {
        "model": name,
        "config": config.as_dict(),
        "cache_key": info.get("key"),
        "test_accuracy": info["test_accuracy"],
        "n": args.n,
        "test_index_span": span,
        "rows": [],
    }
    for p in (2, INF):
        pname = "L2" if p == 2 else "Linf"
        rows: dict[str, dict] = {}
        runnable: list[str] = []
        for impl, (runner, norms, dist) in IMPLEMENTATIONS.items():
            row = {"model": name, "norm": pname, "implementation": impl, "version": version(dist)}
            rows[impl] = row
            if p not in norms:
                row["status"] = f"no {pname} DeepFool"
                continue
            if impl in args.skip:
                row["status"] = "skipped (--skip)"
                continue
            # The warm-up, on a few images: first-call costs (imports, vmap and
            # allocator set-up) stay out of the timed runs.
            try:
                t0 = time.perf_counter()
                runner(model, x[: args.warmup_n], y[: args.warmup_n], p)
                warm = time.perf_counter() - t0
            except NotInstalled as e:
                row["status"] = "not installed"
                row["error"] = str(e)
                print(f"  {pname:4} {impl}: not installed ({e})", flush=True)
                continue
            except Exception as e:
                row["status"] = "error"
                row["error"] = f"{type(e).__name__}: {e}"
                row["traceback"] = traceback.format_exc()
                print(f"  {pname:4} {impl}: ERROR {type(e).__name__}: {e}", flush=True)
                continue
            n_impl = min(args.n, args.subset_n) if impl in args.subset else args.n
            row.update(status="ok", n=n_impl, warmup_seconds=warm, seconds=[])
            runnable.append(impl)

        # Timed runs, interleaved in a rotating order. The slow peers run once.
        outcomes: dict[str, Outcome] = {}
        for rep in range(args.repeats):
            shift = rep % max(1, len(runnable))
            for impl in runnable[shift:] + runnable[:shift]:
                row = rows[impl]
                if impl in args.once and row["seconds"]:
                    continue
                m = row["n"]
                with counting_passes(model) as count:
                    t0 = time.perf_counter()
                    outcomes[impl] = IMPLEMENTATIONS[impl][0](model, x[:m], y[:m], p)
                    row["seconds"].append(time.perf_counter() - t0)
                row.update(
                    forward_calls=count["calls"], forward_samples=count["samples"],
                    backward_calls=count["backward_calls"], backward_samples=count["backward_samples"],
                )
                print(f"  {pname:4} run {rep + 1}: {impl}: {row['seconds'][-1]:.2f} s for {m} images", flush=True)

        for impl in runnable:
            row = rows[impl]
            m = row["n"]
            row.update(evaluate(model, x[:m], y[:m], outcomes[impl], p))
            row["median_seconds"] = statistics.median(row["seconds"])
            row["images_per_second"] = m / row["median_seconds"]
        # How far each advlib variant's points are from the default's, image by image.
        if "advlib" in runnable:
            base = outcomes["advlib"].x_adv
            for impl in runnable:
                if impl in ADVLIB_VARIANTS and impl != "advlib":
                    diff = (outcomes[impl].x_adv - base).flatten(1).abs().amax(1)
                    rows[impl]["images_differing_from_default"] = int((diff > 1e-6).sum())
                    rows[impl]["max_abs_diff_vs_default"] = diff.max().item()
        ref = rows.get(REFERENCE, {})
        for impl in runnable:
            row = rows[impl]
            if ref.get("status") == "ok":
                # Throughput ratio (images/s), so a peer timed on fewer images compares too.
                row["speedup_vs_foolbox"] = row["images_per_second"] / ref["images_per_second"]
                if row["n"] == ref["n"] and len(row["seconds"]) == len(ref["seconds"]):
                    # Round by round (the load of a shared machine drifts between rounds).
                    row["speedup_per_round"] = [f / t for f, t in zip(ref["seconds"], row["seconds"])]
                row["median_norm_vs_foolbox"] = row["median_norm"] / ref["median_norm"]
            print(
                f"  {pname:4} {impl}: {row['images_per_second']:.1f} img/s, "
                f"x{_f(row.get('speedup_vs_foolbox'), '.2f')} vs Foolbox, success {row['success_rate']:.1%}, "
                f"median norm {row['median_norm']:.4f}, mean iterations {_f(row['mean_iterations'], '.2f')}",
                flush=True,
            )
        entry["rows"].extend(rows.values())
    return entry


def targets(entries: list[dict]) -> list[dict]:
    """The issue's targets for advlib: >= 5x Foolbox's images/s, median ||r||
    at most Foolbox's, 100% success; per model and norm."""
    out = []
    for e in entries:
        for norm in ("L2", "Linf"):
            rows = {r["implementation"]: r for r in e["rows"] if r["norm"] == norm}
            ours, ref = rows.get("advlib", {}), rows.get(REFERENCE, {})
            if ours.get("status") != "ok" or ref.get("status") != "ok":
                out.append({"model": e["model"], "norm": norm, "evaluated": False})
                continue
            out.append(
                {
                    "model": e["model"],
                    "norm": norm,
                    "evaluated": True,
                    "speedup": ours["speedup_vs_foolbox"],
                    "speedup_met": ours["speedup_vs_foolbox"] >= 5,
                    "speedup_per_round": ours.get("speedup_per_round"),
                    "median_norm": ours["median_norm"],
                    "foolbox_median_norm": ref["median_norm"],
                    "median_met": ours["median_norm"] <= ref["median_norm"],
                    "success_rate": ours["success_rate"],
                    "success_met": ours["success_rate"] == 1.0,
                }
            )
    return out


# ------------------------------------------------------------------- output


def _f(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    prov = result["provenance"]
    lines = [
        "# DeepFool benchmark",
        "",
        f"{prov['date']}; {prov['cpu']}, torch {prov['versions']['torch']} with {prov['threads']} thread{'s' * (prov['threads'] != 1)}; "
        f"load average {prov['loadavg_start']} at start, {prov['loadavg_end']} at end. "
        f"Data: {prov['data_source']}. {result['settings']['n']} test images per model "
        f"(the first correctly classified); overshoot {OVERSHOOT}, {CANDIDATES} candidates, "
        f"at most {MAX_ITER} steps, box [0, 1]. Time: median of {result['settings']['repeats']} runs "
        "after a warm-up, implementations interleaved.",
        "",
        "| model | norm | implementation | images/s | x Foolbox | mean iter. | success | rho_adv | median ‖r‖ |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in result["models"]:
        for r in e["rows"]:
            notes = []
            if r.get("status") == "ok" and r["n"] != e["n"]:
                notes.append(f"first {r['n']} images")
            if r.get("status") == "ok" and len(r["seconds"]) != result["settings"]["repeats"]:
                notes.append(f"{len(r['seconds'])} timed run{'s' * (len(r['seconds']) != 1)}")
            note = f" ({', '.join(notes)})" if notes else ""
            head = f"| {e['model']} ({e['test_accuracy']:.1%}) | {r['norm']} | {r['implementation']} {r['version']}{note} |"
            if r.get("status") != "ok":
                lines.append(f"{head} {r.get('status')} | | | | | |")
                continue
            lines.append(
                f"{head} {r['images_per_second']:.1f} | {_f(r.get('speedup_vs_foolbox'), '.2f')} | "
                f"{_f(r['mean_iterations'], '.2f')} | {r['success_rate']:.1%} | {r['rho_adv']:.4f} | "
                f"{r['median_norm']:.4f} |"
            )
    lines += [
        "",
        "Targets for advlib (issue): at least 5x Foolbox's images/s, median ‖r‖ at most Foolbox's, 100% success. "
        "'per round': Foolbox's time over advlib's in each round of the interleaved runs.",
        "",
    ]
    lines += [
        "| model | norm | x Foolbox | per round | median ‖r‖ (Foolbox) | success | all met |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in result["targets"]:
        if not t["evaluated"]:
            lines.append(f"| {t['model']} | {t['norm']} | not evaluated | | | | |")
            continue
        ok = t["speedup_met"] and t["median_met"] and t["success_met"]
        lines.append(
            f"| {t['model']} | {t['norm']} | {t['speedup']:.2f} {'✓' if t['speedup_met'] else '✗'} | "
            f"{', '.join(f'{v:.1f}' for v in t['speedup_per_round'] or [])} | "
            f"{t['median_norm']:.4f} ({t['foolbox_median_norm']:.4f}) {'✓' if t['median_met'] else '✗'} | "
            f"{t['success_rate']:.1%} {'✓' if t['success_met'] else '✗'} | {'yes' if ok else 'no'} |"
        )
    lines += ["", "Work done (last timed run): the model's forward and backward passes, and the samples they carried.", ""]
    lines += [
        "| model | norm | implementation | forward calls | samples forwarded | backward calls | samples backpropagated |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for e in result["models"]:
        for r in e["rows"]:
            if r.get("status") == "ok":
                lines.append(
                    f"| {e['model']} | {r['norm']} | {r['implementation']} | {r['forward_calls']} | {r['forward_samples']} "
                    f"| {r['backward_calls']} | {r['backward_samples']} |"
                )
    g = result.get("variants")
    if g:
        lines += ["", "advlib's variants against its defaults: time over the default's (median runs), and the images "
                  "whose returned point differs from the default's by more than 1e-6 in some pixel.", ""]
        lines += ["| model | norm | variant | time / default | images differing | median ‖r‖ / default's |",
                  "| --- | --- | --- | ---: | ---: | ---: |"]
        for v in g:
            lines.append(f"| {v['model']} | {v['norm']} | {v['variant']} | {v['time_over_default']:.2f} | "
                         f"{v['images_differing']} of {v['n']} | {v['median_norm_over_default']:.4f} |")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="test images per model (default 500)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per implementation after the warm-up (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--models", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--skip", nargs="*", default=[], choices=list(IMPLEMENTATIONS), help="implementations left out")
    ap.add_argument("--warmup-n", type=int, default=20, help="images of the warm-up run (default 20)")
    ap.add_argument(
        "--once", nargs="*", default=["ART", "torchattacks"], choices=list(IMPLEMENTATIONS),
        help="slow peers timed by a single run instead of --repeats (default: ART, torchattacks)",
    )
    ap.add_argument(
        "--subset", nargs="*", default=["torchattacks"], choices=list(IMPLEMENTATIONS),
        help="peers run on the first --subset-n images only (default: torchattacks, which loops over "
        "samples, so its images/s does not depend on the batch)",
    )
    ap.add_argument("--subset-n", type=int, default=100, help="images for the --subset peers (default 100)")
    ap.add_argument("--cache-dir", default=os.environ.get("ADVLIB_CACHE") or str(ROOT / ".cache" / "advlib"))
    ap.add_argument("--out", default=str(RESULTS), help="directory for deepfool.json and deepfool.md")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = loadavg()
    test = data.load("fashion-mnist", "test")
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        **{d: version(d) for d in ("advlib", "foolbox", "eagerpy", "adversarial-robustness-toolbox", "torchattacks")},
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_model()}; peers: "
          + ", ".join(f"{k} {v}" for k, v in versions.items() if k not in ("python", "torch", "numpy", "advlib")))

    entries = [bench_model(m, CONFIGS[m], test, args) for m in args.models]
    variants = []
    for e in entries:
        for norm in ("L2", "Linf"):
            rows = {r["implementation"]: r for r in e["rows"] if r["norm"] == norm}
            base = rows.get("advlib", {})
            for name in ADVLIB_VARIANTS:
                row = rows.get(name, {})
                if name == "advlib" or base.get("status") != "ok" or row.get("status") != "ok":
                    continue
                variants.append(
                    {
                        "model": e["model"],
                        "norm": norm,
                        "variant": name,
                        "n": row["n"],
                        "time_over_default": row["median_seconds"] / base["median_seconds"],
                        "images_differing": row["images_differing_from_default"],
                        "median_norm_over_default": row["median_norm"] / base["median_norm"],
                    }
                )
    result = {
        "provenance": {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "platform": platform.platform(),
            "versions": versions,
            "data_source": test.source,
            "data": test.describe(),
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        },
        "settings": {
            "n": args.n,
            "repeats": args.repeats,
            "warmup_n": args.warmup_n,
            "timed_once": args.once,
            "subset": args.subset,
            "subset_n": args.subset_n,
            "overshoot": OVERSHOOT,
            "candidates": CANDIDATES,
            "max_iter": MAX_ITER,
            "box": list(BOX),
            "images": "the first n test images each model classifies correctly",
            "success": "recomputed here: the model's label of the returned point differs from its label of the clean image",
            "median_norm": "median over all n images of ||x_adv - x||_p",
            "rho_adv": "mean over all n images of ||x_adv - x||_p / ||x||_p",
        },
        "models": entries,
        "targets": targets(entries),
        "variants": variants,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deepfool.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    text = markdown(result)
    (out / "deepfool.md").write_text(text)
    print("\n" + text)
    print(f"wrote {out / 'deepfool.json'} and {out / 'deepfool.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
