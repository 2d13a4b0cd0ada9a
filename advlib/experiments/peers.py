"""The peers chapter: every attack of the book in advlib, Foolbox 3, ART and
torchattacks, on the same networks and images, in one run.

For each network (the MNIST rows of Table 1) and each attack, every library
attacks the same first correctly classified test images with the same
settings (:data:`advlib.peers.SETTINGS`). Each implementation runs once on a
few images to warm up, then up to ``repeats`` times on the whole batch, the
libraries interleaved in a rotating order so that a noisy machine slows them
alike; one that takes longer than ``slow_seconds`` is not repeated, and one
whose warm-up says the whole batch would take more than ``budget_seconds``
attacks only its first images (at least 8; its row says how many). The median
wall time gives images per second. Every library attacks the model through
:class:`advlib.peers.Counted`, which counts the rows each run passes through it,
forward and backward: the work ratio (:func:`work`), the same on any machine,
says how much of a speed ratio comes from doing less and how much from doing
it faster. Success and sizes are recomputed here from
the returned points with the same model, for every library alike: an
untargeted attack succeeds where the label changed, JSMA where it is the target.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Mapping

import torch
from tqdm import tqdm  # text bars (to stderr): tqdm.auto warns in notebooks without ipywidgets

from .. import attacks, checks, data, norms, peers
from . import _shared, table1

ROWS = ("LeNet (MNIST)", "FC500-150-10 (MNIST)")

SINGLE_PROCESS = "times the libraries against each other on one process"
"""Why ``python -m advlib.experiments peers`` refuses to run under torchrun."""


def datasets(parameters: Mapping[str, Any]) -> set[str]:
    return {parameters.get("dataset", "fashion-mnist")}


def _size(x, x_adv, attack: str):
    r = (x_adv - x).flatten(1)
    p = peers.NORM[attack]
    if p == 0:  # JSMA: the fraction of features changed
        return (r.abs() > 1e-6).double().mean(1)
    return norms.lp_norm(r, p)


@torch.no_grad()
def judge(model, x, y, x_adv, attack: str, target=None) -> dict[str, Any]:
    """Success and sizes of one library's returned points, recomputed with ``model``."""
    if x_adv.shape != x.shape:
        raise ValueError(f"{attack}: returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    finite = torch.isfinite(x_adv.flatten(1)).all(1)
    in_box = ((x_adv >= peers.BOX[0] - 1e-6) & (x_adv <= peers.BOX[1] + 1e-6)).flatten(1).all(1)
    pred = model(torch.where(finite.view(-1, *[1] * (x.dim() - 1)), x_adv, x)).argmax(1)
    success = (pred == target if target is not None else pred != y) & finite & in_box
    size = _size(x, x_adv, attack)
    flat = x_adv.flatten(1)
    blank = flat.amax(1) == flat.amin(1)
    ok = size[success]
    return {
        # Per image, None where the attack failed: ratios compare libraries on the same images.
        "sizes": [s if hit else None for s, hit in zip(size.tolist(), success.tolist())],
        "success_rate": success.double().mean().item(),
        "median_size": ok.median().item() if len(ok) else None,
        "mean_size": ok.mean().item() if len(ok) else None,
        "outside_box": int((~in_box).sum()),
        "non_finite": int((~finite).sum()),
        # A blank image is what Foolbox's C&W returns where its search found nothing (its best
        # point starts at zeros): the model may misclassify it, so it can count as a success.
        "blank": int(blank.sum()),
        "blank_at": blank.nonzero().flatten().tolist(),
    }


def compute(parameters: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """:func:`run` with the notebook's ``parameters`` (``given``: more of run's
    arguments, e.g. networks already loaded)."""
    return run(**_shared.arguments(run, parameters), **given)


def run(
    *,
    dataset: str = "fashion-mnist",
    seed: int = 0,
    n_images: int = 100,
    repeats: int = 3,
    slow_seconds: float = 10.0,
    budget_seconds: float = 20.0,
    attack_names: tuple[str, ...] = tuple(peers.SETTINGS),
    libraries: tuple[str, ...] = tuple(peers.LIBRARIES),
    rows: tuple[str, ...] = ROWS,
    models: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The peers table. ``models`` maps a row label to ``(model, info)`` (default:
    the Table 1 networks from the training cache).

    Returns ``{"rows": {row: {"model", "n_images", "attacks": {attack: {library:
    {...}}}}}, "versions", "settings", "claims"}``; a library that lacks an
    attack (or is not installed) has ``{"ran": False, "reason": ...}``.
    """
    n_images = checks.integer(n_images, "n_images", low=1)
    repeats = checks.integer(repeats, "repeats", low=1)
    slow_seconds = checks.number(slow_seconds, "slow_seconds", low=0, low_open=True)
    budget_seconds = checks.number(budget_seconds, "budget_seconds", low=0, low_open=True)
    for name in attack_names:
        checks.choice(name, "attack_names", tuple(peers.SETTINGS))
    for name in libraries:
        checks.choice(name, "libraries", tuple(peers.LIBRARIES))
    if "advlib" not in libraries:
        raise ValueError("libraries must include 'advlib': every ratio is taken to it")
    test = data.load(dataset, "test")
    out: dict[str, Any] = {"rows": {}, "settings": peers.SETTINGS, "versions": {lib: peers.version(lib) for lib in libraries}}
    jobs = [(row, attack) for row in rows for attack in attack_names]
    bar = tqdm(jobs, desc="peers", disable=not progress)
    for row, attack in bar:
        model, info = models[row] if models is not None else table1.network(row, dataset, seed=seed)
        model.eval()
        subset = data.first_correct(model, test, n_images)
        x, y = subset.x, subset.y
        classes = len(test.classes)
        target = peers.next_class(y, classes) if attack in peers.TARGETED else None
        entry = out["rows"].setdefault(row, {"model": info["config"], "test_accuracy": info["test_accuracy"],
                                             "n_images": len(x), "attacks": {}})
        results: dict[str, Any] = {}
        runners, sizes = {}, {}
        # Every library attacks the same wrapper, which counts the passes each run makes.
        counted = peers.Counted(model)
        for lib in libraries:
            run_one = peers.runner(lib, attack)
            try:
                t0 = time.perf_counter()
                run_one(counted, x[:4], y[:4], None if target is None else target[:4])  # warm-up
                per_image = (time.perf_counter() - t0) / 4
            except peers.NotInstalled as e:
                results[lib] = {"ran": False, "reason": str(e)}
                continue
            runners[lib] = run_one
            # An implementation too slow for the whole batch within the budget runs on
            # its first images only (at least 8), and its row says on how many.
            sizes[lib] = min(len(x), max(8, int(budget_seconds / max(per_image, 1e-9))))
        times: dict[str, list[float]] = {lib: [] for lib in runners}
        last: dict[str, torch.Tensor] = {}
        passes: dict[str, tuple[int, int]] = {}
        for round_ in range(repeats):
            order = list(runners)[round_ % len(runners):] + list(runners)[: round_ % len(runners)]
            for lib in order:
                if round_ and times[lib][0] > slow_seconds:
                    continue
                m = sizes[lib]
                counted.reset()
                t0 = time.perf_counter()
                last[lib] = runners[lib](counted, x[:m], y[:m], None if target is None else target[:m])
                times[lib].append(time.perf_counter() - t0)
                passes[lib] = counted.forward_rows, counted.backward_rows
        for lib in runners:
            m = sizes[lib]
            seconds = statistics.median(times[lib])
            forward, backward = passes[lib]
            results[lib] = {"ran": True, "seconds": seconds, "runs": len(times[lib]), "n_images": m,
                            "images_per_s": m / seconds,
                            # Rows through the model per image, forward and backward (peers.Counted).
                            "forward_per_image": forward / m, "backward_per_image": backward / m,
                            **judge(model, x[:m], y[:m], last[lib], attack, None if target is None else target[:m])}
        if attack in ALGORITHM_2 and "advlib" in runners:
            m = sizes["advlib"]
            results["advlib"]["same_as_algorithm_2"] = same_as_algorithm_2(model, x[:m], y[:m], last["advlib"], attack)
        if attack == "cw_l2" and "advlib" in runners:
            m = sizes["advlib"]
            results["advlib"]["variants"] = cw_variants(model, x[:m], y[:m])
        entry["attacks"][attack] = results
    out["ratios"] = ratios(out)
    out["targets"] = targets(out)
    out["claims"] = claims(out)
    return out


ALGORITHM_2 = {"deepfool_l2": 2.0, "deepfool_linf": math.inf}
"""The DeepFool attacks, and their norm, whose default is checked against Algorithm 2 to the letter."""


def same_as_algorithm_2(model, x, y, x_adv, attack: str) -> float:
    """The share of images where advlib's default DeepFool (``x_adv``, which
    recomputes only the nearest candidates' gradients after the first step)
    returns the point of ``refresh=None`` (every candidate's gradient at every
    step, Algorithm 2 to the letter), to float32 rounding (1e-6 per pixel).
    The ``refresh=None`` run is not timed."""
    full = attacks.deepfool(model, x, label=y, p=ALGORITHM_2[attack], clip=peers.BOX, refresh=None,
                            **peers.SETTINGS[attack]).x_adv
    return ((x_adv - full).flatten(1).abs().amax(1) <= 1e-6).double().mean().item()


CW_VARIANTS = {"without abort_early": {"abort_early": False}, "with warm_start": {"warm_start": True}}
"""advlib's C&W L2 run again with one option changed, with the peers' settings,
untimed. advlib's default stops a sample's run when that sample's objective
stalls, Foolbox 3 (as the authors' code) when the batch's summed objective
does: without ``abort_early`` says what the passes saved cost in size.
``warm_start`` starts each run of the search on ``c`` where the sample's last
one stopped, not at ``x``: what fewer passes a change of the algorithm buys."""


def cw_variants(model, x, y) -> dict[str, dict[str, Any]]:
    """Each of :data:`CW_VARIANTS`: its passes per image and its results,
    judged as every library's are."""
    found = {}
    for name, option in CW_VARIANTS.items():
        counted = peers.Counted(model)
        res = attacks.cw_l2(counted, x, label=y, clip=peers.BOX, **option, **peers.SETTINGS["cw_l2"])
        found[name] = {"forward_per_image": counted.forward_rows / len(x),
                       "backward_per_image": counted.backward_rows / len(x), **judge(model, x, y, res.x_adv, "cw_l2")}
    return found


def _common_medians(a: list, b: list) -> tuple[float | None, float | None]:
    """The median sizes of two implementations on the images both fooled (the
    first ``min(len)`` images: a slow one may have attacked only those)."""
    pairs = [(u, v) for u, v in zip(a, b) if u is not None and v is not None]
    if not pairs:
        return None, None
    return statistics.median(u for u, _ in pairs), statistics.median(v for _, v in pairs)


def work(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> float:
    """The work ratio: the rows a peer passes through the model per image,
    forward and backward, over the ones advlib passes. With every pass costing
    the same in both, it is the speed ratio; a speed ratio above it needs
    advlib's passes to run faster than the peer's through the same model."""
    def passes(r: Mapping[str, Any]) -> float:
        return r["forward_per_image"] + r["backward_per_image"]

    return passes(theirs) / passes(mine) if passes(mine) else math.inf


def _size_ratio(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> float | None:
    """advlib's median size over the peer's, on the images both fooled."""
    a, b = _common_medians(mine["sizes"], theirs["sizes"])
    return a / b if a is not None and b else None


def ratios(out: Mapping[str, Any]) -> dict[str, Any]:
    """Per network and attack: advlib's images per second over the fastest
    peer's, the work ratio to that peer (:func:`work`), and advlib's median size
    over that peer's (the performance targets of the chapter are read on these;
    they are measured, never asserted)."""
    found = {}
    for row, entry in out["rows"].items():
        for attack, results in entry["attacks"].items():
            ran = {lib: r for lib, r in results.items() if r["ran"]}
            others = {lib: r for lib, r in ran.items() if lib != "advlib"}
            if "advlib" not in ran or not others:
                continue
            fastest = max(others, key=lambda lib: others[lib]["images_per_s"])
            found[f"{row} / {attack}"] = {
                "fastest_peer": fastest,
                "speed": ran["advlib"]["images_per_s"] / others[fastest]["images_per_s"],
                "work": work(ran["advlib"], others[fastest]),
                "median_size": _size_ratio(ran["advlib"], others[fastest]),
                "success": {lib: r["success_rate"] for lib, r in ran.items()},
            }
            variants = ran["advlib"].get("variants", {})
            if variants:
                found[f"{row} / {attack}"]["variants"] = {
                    name: {"work": work(v, others[fastest]), "median_size": _size_ratio(v, others[fastest]),
                           "success": v["success_rate"]} for name, v in variants.items()}
    return found


TARGETS = {"deepfool_l2": ("Foolbox 3", 10.0), "deepfool_linf": ("Foolbox 3", 10.0), "cw_l2": (None, 3.0), "jsma": (None, 1.0)}
"""The performance targets: advlib's images per second at least this many times
the named peer's (``None``: the fastest peer's). Measured and reported, never
asserted: they depend on the machine."""


def targets(out: Mapping[str, Any]) -> dict[str, Any]:
    """Per network and attack with a target: the speed ratio it is read on,
    whether it is met, and the work ratio to the same peer (:func:`work`): a
    target above it needs advlib to run each pass ``target / work`` times as
    fast as the peer runs it through the same model."""
    found = {}
    for row, entry in out["rows"].items():
        for attack, (against, target) in TARGETS.items():
            results = entry["attacks"].get(attack, {})
            ran = {lib: r for lib, r in results.items() if r["ran"]}
            others = {lib: r for lib, r in ran.items() if lib != "advlib" and (against is None or lib == against)}
            if "advlib" not in ran or not others:
                continue
            peer = max(others, key=lambda lib: others[lib]["images_per_s"])
            ratio = ran["advlib"]["images_per_s"] / others[peer]["images_per_s"]
            found[f"{row} / {attack}"] = {"against": peer, "target": target, "ratio": ratio, "met": ratio >= target,
                                          "work": work(ran["advlib"], others[peer])}
    return found


def _below(case: Mapping[str, Any]) -> bool:
    """advlib's success rate below the best peer's, beyond the claim's 1 point of slack."""
    return case["advlib"] < case["best_peer"] - 0.01


def claims(out: Mapping[str, Any]) -> dict[str, Any]:
    """What the chapter states about quality, each verdict computed from the numbers."""
    success, deepfool, algorithm_2 = {}, {}, {}
    for row, entry in out["rows"].items():
        for attack, results in entry["attacks"].items():
            ran = {lib: r for lib, r in results.items() if r["ran"]}
            others = {lib: r for lib, r in ran.items() if lib != "advlib"}
            if "advlib" in ran and others:
                best = max(others, key=lambda lib: others[lib]["success_rate"])
                mine, theirs = ran["advlib"], others[best]
                # On the images both attacked (each attacks a prefix of the same images):
                # those the peer fooled and advlib did not, and which of them the peer
                # "fooled" with a blank image.
                n = min(len(mine["sizes"]), len(theirs["sizes"]))
                missed = [i for i in range(n) if mine["sizes"][i] is None and theirs["sizes"][i] is not None]
                blank = set(theirs.get("blank_at", []))
                success[f"{row} / {attack}"] = {"advlib": mine["success_rate"], "best_peer": theirs["success_rate"],
                                                "peer": best, "advlib_misses": missed,
                                                "peer_blank_there": [i for i in missed if i in blank]}
            if attack.startswith("deepfool") and "advlib" in ran and "Foolbox 3" in ran:
                mine, theirs = _common_medians(ran["advlib"]["sizes"], ran["Foolbox 3"]["sizes"])
                deepfool[f"{row} / {attack}"] = {"advlib": mine, "foolbox": theirs}
            if "same_as_algorithm_2" in ran.get("advlib", {}):
                algorithm_2[f"{row} / {attack}"] = ran["advlib"]["same_as_algorithm_2"]
    return {
        "success_at_least_the_best_peer": {
            "statement": "on every network and attack, advlib's success rate is at least the best peer's (1 point of slack)",
            "holds": bool(success) and not any(_below(v) for v in success.values()),
            # Where it fails: whether every image advlib missed and the best peer fooled is one
            # the peer "fooled" with a blank image (Foolbox's C&W where its search found nothing).
            "below_only_by_blank_images": sorted(
                k for k, v in success.items() if _below(v) and v["advlib_misses"] and v["peer_blank_there"] == v["advlib_misses"]),
            "cases": success,
        },
        "deepfool_no_larger_than_foolbox": {
            "statement": "advlib's DeepFool median perturbation is no larger than Foolbox 3's (0.5% slack), L2 and L-inf",
            "holds": bool(deepfool) and all(
                v["advlib"] is not None and v["foolbox"] is not None and v["advlib"] <= 1.005 * v["foolbox"]
                for v in deepfool.values()
            ),
            "cases": deepfool,
        },
        "deepfool_default_is_algorithm_2": {
            "statement": "advlib's default DeepFool returns the points of refresh=None (Algorithm 2 to the letter) on at least 99% of the images",
            "holds": bool(algorithm_2) and all(v >= 0.99 for v in algorithm_2.values()),
            "cases": algorithm_2,
        },
    }


# ------------------------------------------------------------ the page


ATTACK_NAMES = {"deepfool_l2": "DeepFool L2", "deepfool_linf": "DeepFool L∞", "fgsm": "FGSM", "cw_l2": "C&W L2",
                "jsma": "JSMA"}
SIZE_NAMES = {"deepfool_l2": "median ‖r‖₂", "deepfool_linf": "median ‖r‖∞", "fgsm": "median ‖r‖∞",
              "cw_l2": "median ‖r‖₂", "jsma": "median L0 (share)"}


def table(results: Mapping[str, Any]):
    """One row per network, attack and library: images per second, the rows
    passed through the model per image (forward + backward), success, median
    size, and a note of what the size is, on how many images and runs,
    the share equal to ``refresh=None`` (advlib's DeepFool) and any blank
    images returned; a library that did not run says why (a DataFrame)."""
    import pandas as pd

    rows = {}
    for row, entry in results["rows"].items():
        for attack, libs in entry["attacks"].items():
            for lib, r in libs.items():
                key = (row, ATTACK_NAMES[attack], lib)
                if not r["ran"]:
                    rows[key] = {"images/s": "-", "passes/image": "-", "success": "-", "size": "-", "note": r["reason"]}
                    continue
                note = [SIZE_NAMES[attack], f"{r['n_images']} images, {r['runs']} run(s)"]
                if "same_as_algorithm_2" in r:
                    note.append(f"{100 * r['same_as_algorithm_2']:.0f}% as refresh=None")
                for name, v in r.get("variants", {}).items():
                    note.append(f"{name}: {v['forward_per_image'] + v['backward_per_image']:.0f} passes/image, "
                                f"{100 * v['success_rate']:.0f}% success, "
                                f"size {'-' if v['median_size'] is None else format(v['median_size'], '.4g')}")
                if r.get("blank"):
                    note.append(f"{r['blank']} blank image(s) returned")
                rows[key] = {"images/s": f"{r['images_per_s']:.1f}",
                             "passes/image": f"{r['forward_per_image']:.1f} + {r['backward_per_image']:.1f}",
                             "success": f"{100 * r['success_rate']:.0f}%",
                             "size": "-" if r["median_size"] is None else f"{r['median_size']:.4g}",
                             "note": "; ".join(note)}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["network", "attack", "library"])
    return frame


def ratio_table(results: Mapping[str, Any]):
    """Per network and attack: the fastest peer, advlib's speed, work ratio
    and median size over its, and the speed target with whether this run meets
    it (a DataFrame)."""
    import pandas as pd

    goals = results["targets"]

    def target(key: str) -> str:
        if key not in goals:
            return "-"
        g = goals[key]
        verdict = "met" if g["met"] else "not met"
        if g["target"] > g["work"]:
            verdict += f"; above its work ratio {g['work']:.2f}"
        return f"≥ {g['target']:g}× {g['against']}: {verdict}"

    def size(r: Mapping[str, Any]) -> str:
        return "-" if r["median_size"] is None else f"{r['median_size']:.3f}"

    rows = {}
    for key, r in results["ratios"].items():
        work_text, size_text = f"{r['work']:.2f}", size(r)
        variants = r.get("variants", {})
        if variants:  # C&W: advlib's runs with one option changed, beside the default's
            work_text += " (" + "; ".join(f"{v['work']:.2f} {name}" for name, v in variants.items()) + ")"
            size_text += " (" + "; ".join(f"{size(v)} {name}" for name, v in variants.items()) + ")"
        rows[key] = {"fastest peer": r["fastest_peer"], "advlib speed / its": f"{r['speed']:.2f}",
                     "its passes / advlib's": work_text, "advlib median size / its": size_text,
                     "speed target": target(key)}
    return pd.DataFrame(rows).T


def texts(results: Mapping[str, Any]) -> dict[str, str]:
    """The pre-formatted numbers and verdicts the page's prose glues in."""
    speeds = [r["speed"] for r in results["ratios"].values()]
    claims = results["claims"]
    return {
        "peers_speed_range": f"{min(speeds):.1f} to {max(speeds):.1f}" if speeds else "no ratio (no peer ran)",
        "peers_success_verdict": _success_verdict(claims["success_at_least_the_best_peer"]),
        "peers_deepfool_verdict": "no larger than"
        if claims["deepfool_no_larger_than_foolbox"]["holds"] else "larger in some case than",
    }


def _success_verdict(claim: Mapping[str, Any]) -> str:
    """The headline's words on success: where advlib is below the best peer, and
    whether only the peer's blank images put it there."""
    if claim["holds"]:
        return "at least the best peer's everywhere"
    below = [k for k, v in claim["cases"].items() if _below(v)]
    by_blank = set(claim["below_only_by_blank_images"])
    if set(below) == by_blank:
        cases = "; ".join(f"{k}: {100 * claim['cases'][k]['advlib']:.0f}% against {claim['cases'][k]['peer']}'s "
                          f"{100 * claim['cases'][k]['best_peer']:.0f}%" for k in below)
        return (f"below the best peer's on {cases}, where every image advlib did not fool and the peer did is one "
                "for which the peer returned a blank image, which the model happens to misclassify")
    return "below the best peer's on " + ", ".join(below) + " (see the table)"
