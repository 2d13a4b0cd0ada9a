"""The blog post's second defence: detecting adversarial inputs by mutating the
model (Wang et al., ICSE 2019; :mod:`advlib.defences.mutation`).

The protocol, on one classifier and its test split:

- **images**: the first ``n_images + n_calibration`` correctly classified
  test images; the first ``n_images`` are the genuine images the detectors
  are judged on and the ones attacked, the next ``n_calibration`` only set
  the threshold (so the false-positive rate is measured on images the
  threshold never saw); the mutants' accuracy filter uses the last
  ``n_filter`` test images with their true labels, as the paper uses the test set;
- **adversarials**: FGSM, JSMA, C&W L2 and DeepFool (``advlib.attacks``) of
  the genuine images; only successful ones are kept, as in the paper, and
  each is judged against the label the model gives it;
- **mutants**: per operator, ``candidates`` candidates drawn from ``seed``,
  kept if their accuracy is at least ``min_fraction`` of the model's;
  every kept mutant makes one forward pass over all the images;
- **label change rates** and their **AUROC**, genuine (0) against each
  attack (1), with ``sklearn.metrics.roc_auc_score``;
- **the SPRT detector**: threshold from the calibration images' rates
  (mean plus the 99% confidence half-width, as in the authors' code),
  indifference region ``relax * threshold`` (their ``relaxScale``),
  ``alpha = beta = 0.05``, the kept mutants drawn in order, the cap being their number;
- **the blog's variant**: the same statistics with the *input* mutated by
  fixed Gaussian noise patterns, the model kept (:func:`~advlib.defences.mutation.input_label_changes`);
- **beyond the post**: C&W adversarials of the first ``n_kappa_images``
  images with growing confidence ``kappa``, and what the detectors make of them.

Example::

    model, _ = table1.network("LeNet (MNIST)", "fashion-mnist")
    results = run(model=model, test=data.load("fashion-mnist", "test"), n_images=50, candidates=50)
    results["auroc"]["NAI"]["DeepFool"], results["claims"]["auroc_above_09"]["holds"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm  # text bars (to stderr): tqdm.auto warns in notebooks without ipywidgets

from .. import checks, data, metrics
from ..attacks import cw_l2, deepfool, fgsm, jsma
from ..defences import mutation
from ..train import predict
from . import _shared, table1

ATTACKS = ("FGSM", "JSMA", "C&W", "DeepFool")
"""The attacks, by the names the paper's tables give them."""

INPUT = "input noise"
"""The name of the blog's detector (input mutated, model kept) beside the operators."""

DEFAULT_RATES = {"GF": 0.05, "WS": 0.05, "NS": 0.05, "NAI": 0.05}
"""The mutation rate of each operator: the authors' MNIST setting (their models ``5e-2p``)."""

COLORS = {"genuine": "#8C8C8C", "FGSM": "#4C72B0", "JSMA": "#DD8452", "C&W": "#55A868", "DeepFool": "#C44E52",
          "GF": "#4C72B0", "WS": "#DD8452", "NS": "#55A868", "NAI": "#C44E52", INPUT: "#8172B3"}
"""One colour per attack and per detector, the same in every figure of the chapter."""


def datasets(parameters: Mapping[str, Any]) -> set[str]:
    return {parameters.get("dataset", "fashion-mnist")}


def _auroc(genuine: Tensor, adversarial: Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    if len(genuine) == 0 or len(adversarial) == 0:
        return math.nan
    scores = torch.cat([genuine, adversarial]).double().numpy()
    truth = np.r_[np.zeros(len(genuine)), np.ones(len(adversarial))]
    return float(roc_auc_score(truth, scores))


def _attack_stats(x: Tensor, res) -> dict[str, Any]:
    ok = res.success
    r = res.perturbation[ok].flatten(1)
    med = (lambda v: v.double().quantile(0.5).item() if len(v) else math.nan)
    return {"success_rate": res.success_rate, "kept": int(ok.sum()),
            "median_l2": med(r.norm(dim=1)), "median_linf": med(r.abs().amax(1)),
            "median_l0_share": med((r != 0).double().mean(1))}


def load(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """What the chapter attacks, from the notebook's parameters: the Table 1
    LeNet of ``dataset`` (``model``, ``info``) and its ``test`` split."""
    model, info = table1.network("LeNet (MNIST)", parameters["dataset"])
    return {"model": model, "info": info, "test": data.load(parameters["dataset"], "test")}


def compute(parameters: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """:func:`run` with the notebook's ``parameters``, on what :func:`load`
    gives (or on ``given``, what the notebook loaded)."""
    rates = {op: parameters[f"{op.lower()}_rate"] for op in ("GF", "WS", "NS", "NAI")}
    return _shared.call(run, parameters, {"rates": rates, **(given or load(parameters))})


def run(
    *,
    model: nn.Module,
    test: data.Dataset,
    n_images: int = 100,
    n_calibration: int = 100,
    n_filter: int = 200,
    operators: Sequence[str] = ("GF", "WS", "NS", "NAI"),
    rates: Mapping[str, float] | None = None,
    gf_scale: float = 1.0,
    candidates: int = 100,
    min_fraction: float = 0.9,
    fgsm_eps: float = 0.108,
    jsma_gamma: float = 0.12,
    jsma_space: str = "probs",
    cw_c_init: float = 1.0,
    cw_search_steps: int = 2,
    cw_max_iter: int = 100,
    cw_lr: float = 0.01,
    deepfool_overshoot: float = 0.02,
    deepfool_max_iter: int = 50,
    kappas: Sequence[float] = (1.0, 2.0, 5.0),
    n_kappa_images: int = 40,
    confidence: float = 0.99,
    relax: float = 0.1,
    alpha: float = 0.05,
    beta: float = 0.05,
    sprt_operator: str = "NAI",
    input_mutants: int = 100,
    input_std: float = 0.1,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = False,
) -> dict[str, Any]:
    """Label change rates, their AUROC and the SPRT detector, per operator and attack.

    Args:
        model: the classifier (its last linear layer gives the logits).
        test: its test split.
        n_images: genuine images judged and attacked (the first correctly classified).
        n_calibration: the next correctly classified images, whose rates set the threshold.
        n_filter: the last test images, on which the mutants' accuracy is measured.
        operators: the mutation operators (``"GF"``, ``"WS"``, ``"NS"``, ``"NAI"``).
        rates: mutation rate per operator (default :data:`DEFAULT_RATES`).
        gf_scale: GF's noise, in standard deviations of the layer's weights.
        candidates: candidate mutants per operator; min_fraction: the filter's bar.
        fgsm_eps: FGSM's L-inf step (the authors': 0.35 in their normalised
            inputs, pixels / 0.3081, i.e. 0.108 in [0, 1]).
        jsma_gamma, jsma_space: JSMA's largest share of changed pixels and its
            saliency space (``"probs"``: Papernot et al.'s); the target is the runner-up class.
        cw_c_init, cw_search_steps, cw_max_iter, cw_lr: C&W L2 (untargeted).
        deepfool_overshoot, deepfool_max_iter: DeepFool (L2).
        kappas: C&W confidences of the sweep (0 is the main C&W run's), on the first ``n_kappa_images`` images.
        confidence: of the threshold's confidence interval; relax: the
            indifference region's half-width, relative to the threshold.
        alpha, beta: the SPRT's error rates (a genuine input flagged; an adversarial one missed).
        sprt_operator: the operator the SPRT claims are judged on (the published demo's: NAI).
        input_mutants, input_std: the blog's input mutation: patterns and their noise.
        seed: the mutants' and the noise patterns' seed.
        batch_size: inputs per forward pass.
        progress: progress bars of the attacks and the mutants.

    Returns:
        A JSON-able dict: ``images``, ``attacks`` (statistics), ``mutants``
        (per operator: the filter's record), ``segments`` (the images each
        group holds), ``lcr``/``flagged``/``mutants_used`` (per detector,
        per group: per image), ``auroc``, ``sprt``, ``kappa``, ``claims``.
    """
    n_images = checks.integer(n_images, "n_images", low=2)
    n_calibration = checks.integer(n_calibration, "n_calibration", low=2)
    n_filter = checks.integer(n_filter, "n_filter", low=1)
    operators = list(operators)
    if not operators or len(set(operators)) != len(operators):
        raise ValueError(f"operators must name at least one operator, each once, got {operators!r}")
    for op in operators:
        checks.choice(op, "operators[]", tuple(mutation.OPERATORS))
    rates = {**DEFAULT_RATES, **(rates or {})}
    for op, rate in rates.items():
        checks.choice(op, "rates key", tuple(mutation.OPERATORS))
        checks.number(rate, f"rates[{op!r}]", low=0, high=1, low_open=True)
    candidates = checks.integer(candidates, "candidates", low=1)
    kappas = [checks.number(k, "kappas[]", low=0, low_open=True) for k in kappas]
    n_kappa_images = checks.integer(n_kappa_images, "n_kappa_images", low=1, high=n_images)
    relax = checks.number(relax, "relax", low=0, high=1, low_open=True, high_open=True)
    checks.choice(sprt_operator, "sprt_operator", tuple(operators))
    checks.flag(progress, "progress")
    if n_filter > len(test):
        raise ValueError(f"n_filter={n_filter} is more than the {len(test)} images of the test split")

    # ---- images
    pool = data.first_correct(model, test, n_images + n_calibration)
    if int(pool.index.max()) >= len(test) - n_filter:
        raise ValueError(f"the genuine images reach test image {int(pool.index.max())}, into the last n_filter="
                         f"{n_filter} (the mutants' filter images): lower n_filter or the image counts")
    x, calibration = pool.x[:n_images], pool.x[n_images:]
    filter_x, filter_y = test.x[-n_filter:], test.y[-n_filter:]

    # ---- adversarials
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1)
    runner_up = top2.indices[:, 1]
    margin = (top2.values[:, 0] - top2.values[:, 1]).double()
    with metrics.Timer() as attack_time:
        results = {
            "FGSM": fgsm(model, x, eps=fgsm_eps),
            "JSMA": jsma(model, x, target=runner_up, gamma=jsma_gamma, space=jsma_space, progress=progress),
            "C&W": cw_l2(model, x, kappa=0.0, c_init=cw_c_init, search_steps=cw_search_steps, max_iter=cw_max_iter,
                         lr=cw_lr, progress=progress),
            "DeepFool": deepfool(model, x, overshoot=deepfool_overshoot, max_iter=deepfool_max_iter, progress=progress),
        }
        xk = x[:n_kappa_images]
        sweep = {0.0: _restricted(results["C&W"], n_kappa_images)}
        for kappa in kappas:
            sweep[kappa] = cw_l2(model, xk, kappa=kappa, c_init=cw_c_init, search_steps=cw_search_steps,
                                 max_iter=cw_max_iter, lr=cw_lr, progress=progress)
    attack_stats = {name: _attack_stats(x, res) for name, res in results.items()}
    kappa_stats = {k: _attack_stats(xk, res) for k, res in sweep.items()}

    # ---- every image the detectors see, in one batch; a group per segment
    groups = {"calibration": calibration, "genuine": x}
    groups.update({name: res.x_adv[res.success] for name, res in results.items()})
    groups.update({_kappa_key(k): res.x_adv[res.success] for k, res in sweep.items() if k > 0})
    segments, start = {}, 0
    for name, part in groups.items():
        segments[name] = (start, start + len(part))
        start += len(part)
    everything = torch.cat(list(groups.values()))
    labels = predict(model, everything, batch_size)

    # ---- label changes per detector: the mutants of each operator, and the blog's input noise
    changes, pools = {}, {}
    with metrics.Timer() as mutant_time:
        for op in tqdm(operators, desc="operators", disable=not progress):
            options = {"scale": gf_scale} if op == "GF" else {}
            pools[op] = mutation.Mutants(model, op, rates[op], x=filter_x, y=filter_y, candidates=candidates,
                                         min_fraction=min_fraction, seed=seed, batch_size=batch_size, **options)
            if not len(pools[op]):
                raise RuntimeError(f"{op}: none of the {candidates} candidates at rate {rates[op]} kept "
                                   f"{min_fraction:.0%} of the model's accuracy; lower the rate")
            changes[op] = mutation.label_changes(model, pools[op], everything, labels=labels, batch_size=batch_size)
    with metrics.Timer() as input_time:
        changes[INPUT] = mutation.input_label_changes(model, everything, n=input_mutants, std=input_std, seed=seed,
                                                      batch_size=batch_size)

    # ---- rates, AUROC and the SPRT per detector
    lcr, flagged, used, decided, thresholds, auroc, sprt_table = {}, {}, {}, {}, {}, {}, {}
    for det, ch in changes.items():
        rate = ch.double().mean(0)
        cut = lambda t, g: t[segments[g][0]: segments[g][1]]  # noqa: E731
        threshold = mutation.genuine_threshold(cut(rate, "calibration"), confidence)
        if not 0 < threshold * (1 + relax) < 1:
            raise RuntimeError(f"{det}: the calibration images' threshold is {threshold:.4g}; the test needs "
                               f"0 < threshold * (1 + relax) < 1 (more mutants, or a rate that changes some labels)")
        res = mutation.sprt(ch, threshold, indifference=relax * threshold, alpha=alpha, beta=beta)
        thresholds[det] = {"threshold": threshold, "indifference": relax * threshold, "cap": ch.shape[0]}
        lcr[det] = {g: cut(rate, g) for g in segments}
        flagged[det] = {g: cut(res.adversarial, g) for g in segments}
        used[det] = {g: cut(res.mutants_used, g) for g in segments}
        decided[det] = {g: cut(res.decided, g).double().mean().item() if segments[g][1] > segments[g][0] else math.nan
                        for g in segments}
        auroc[det] = {a: _auroc(lcr[det]["genuine"], lcr[det][a]) for a in ATTACKS}
        sprt_table[det] = {g: {"flagged": _mean(flagged[det][g]), "mean_mutants": _mean(used[det][g]),
                               "decided": decided[det][g]} for g in ("genuine", *ATTACKS)}

    kappa = {det: {_kappa_key(k): _kappa_point(lcr[det], flagged[det], used[det], k, n_kappa_images, results)
                   for k in [0.0, *kappas]} for det in changes}
    mean_lcr = {det: {g: _mean(v) for g, v in per.items()} for det, per in lcr.items()}
    out = {
        "dataset": test.name,
        "images": {"genuine": n_images, "calibration": n_calibration, "filter": n_filter,
                   "index": pool.index, "kappa_images": n_kappa_images,
                   "median_logit_margin": margin.quantile(0.5).item()},
        "settings": {"operators": operators, "rates": {op: rates[op] for op in operators}, "gf_scale": gf_scale,
                     "candidates": candidates, "min_fraction": min_fraction, "fgsm_eps": fgsm_eps,
                     "jsma_gamma": jsma_gamma, "jsma_space": jsma_space, "jsma_target": "runner-up class",
                     "cw": {"c_init": cw_c_init, "search_steps": cw_search_steps, "max_iter": cw_max_iter, "lr": cw_lr},
                     "deepfool": {"overshoot": deepfool_overshoot, "max_iter": deepfool_max_iter},
                     "kappas": [0.0, *kappas], "confidence": confidence, "relax": relax, "alpha": alpha,
                     "beta": beta, "sprt_operator": sprt_operator, "input_mutants": input_mutants,
                     "input_std": input_std, "seed": seed},
        "detectors": [*operators, INPUT],
        "attacks": attack_stats,
        "kappa_attacks": {_kappa_key(k): v for k, v in kappa_stats.items()},
        "mutants": {op: p.describe() for op, p in pools.items()},
        "segments": {g: [a, b] for g, (a, b) in segments.items()},
        "thresholds": thresholds,
        "lcr": lcr,
        "mean_lcr": mean_lcr,
        "flagged": flagged,
        "mutants_used": used,
        "auroc": auroc,
        "sprt": sprt_table,
        "kappa": kappa,
        "seconds": {"attacks": attack_time.seconds, "mutants": mutant_time.seconds, "input": input_time.seconds},
    }
    out["claims"] = _claims(out)
    return _shared.jsonable(out)


def _mean(t: Tensor) -> float:
    return t.double().mean().item() if len(t) else math.nan


def _kappa_key(kappa: float) -> str:
    return f"kappa={kappa:g}"


def _restricted(res, n: int):
    """The first ``n`` images of an attack's result (kappa = 0 of the sweep is the main C&W run's)."""
    from ..attacks import AttackResult

    fields = {f: getattr(res, f) for f in ("x_adv", "perturbation", "success", "iterations", "label_orig", "label_adv")}
    return AttackResult(**{k: v[:n] for k, v in fields.items()})


def _kappa_point(lcr, flagged, used, kappa, n, results) -> dict[str, float]:
    """One point of the sweep: the images of C&W at this confidence (for 0:
    the main run's adversarials of the first ``n`` images)."""
    if kappa == 0:
        keep = int(results["C&W"].success[:n].sum())
        rate, flag, mut = (v["C&W"][:keep] for v in (lcr, flagged, used))
    else:
        rate, flag, mut = (v[_kappa_key(kappa)] for v in (lcr, flagged, used))
    return {"kappa": kappa, "n": len(rate), "mean_lcr": _mean(rate), "detected": _mean(flag),
            "mean_mutants": _mean(mut), "auroc": _auroc(lcr["genuine"], rate)}


def _claims(r: Mapping[str, Any]) -> dict[str, dict]:
    ops, mean_lcr, auroc = r["settings"]["operators"], r["mean_lcr"], r["auroc"]
    claim = _shared.claim
    lower = {(op, a): (mean_lcr[op][a], mean_lcr[op]["genuine"]) for op in ops for a in ATTACKS
             if not mean_lcr[op][a] > mean_lcr[op]["genuine"]}
    best = max(ops, key=lambda op: np.nanmean([auroc[op][a] for a in ATTACKS]))
    above = [a for a in ATTACKS if auroc[best][a] > 0.9]
    op = r["settings"]["sprt_operator"]
    fpr = r["sprt"][op]["genuine"]["flagged"]
    adv_used = [u for a in ATTACKS for u in r["mutants_used"][op][a]]
    mean_used = float(np.mean(adv_used)) if adv_used else math.nan
    cap = r["thresholds"][op]["cap"]
    return {
        "adversarial_rate_higher": claim(
            "adversarial inputs have a higher mean label change rate than genuine ones, for every attack and operator",
            not lower,
            "; ".join(f"{o}: genuine {mean_lcr[o]['genuine']:.3f}, "
                      + ", ".join(f"{a} {mean_lcr[o][a]:.3f}" for a in ATTACKS) for o in ops),
            mean_lcr={o: mean_lcr[o] for o in ops}),
        "auroc_above_09": claim(
            "with the best operator, the AUROC of the label change rate is above 0.9 for at least three of the four "
            "attacks", len(above) >= 3,
            f"best operator (mean AUROC) {best}: " + ", ".join(f"{a} {auroc[best][a]:.3f}" for a in ATTACKS),
            best_operator=best, auroc=auroc[best], above=above),
        "sprt_genuine_and_mutants": claim(
            f"the SPRT ({op}) flags at most 10% of genuine images and uses fewer mutants than its cap on "
            "adversarial ones", fpr <= 0.1 and mean_used < cap,
            f"{fpr:.1%} of genuine images flagged; {mean_used:.1f} mutants on average on adversarial images "
            f"(cap {cap})", operator=op, false_positive_rate=fpr, mean_mutants_adversarial=mean_used, cap=cap),
    }


# ---------------------------------------------------------------- tables and texts


def auroc_table(results: Mapping[str, Any], published: Mapping[str, Mapping[str, float]]):
    """AUROC of the label change rate, genuine against each attack (rows), per
    detector (columns), with the published MNIST value of each operator beside it."""
    import pandas as pd

    results = _shared.nan_for_none(results)
    rows = {}
    for a in ATTACKS:
        row = {}
        for det in results["detectors"]:
            row[det] = results["auroc"][det][a]
            if det in published.get(a, {}):
                row[f"{det} (paper)"] = published[a][det]
        rows[a] = row
    return pd.DataFrame(rows).T.rename_axis("attack")


def sprt_table(results: Mapping[str, Any], demo: Mapping[str, Any]):
    """Per detector: the share flagged adversarial (genuine images: the false
    positives; attacks: the detection rate) and the mean mutants used, with
    the published demo (NAI on MNIST's JSMA adversarials) beside."""
    import pandas as pd

    results = _shared.nan_for_none(results)
    rows = {}
    for det in results["detectors"]:
        s = results["sprt"][det]
        row = {"threshold": results["thresholds"][det]["threshold"], "cap": results["thresholds"][det]["cap"],
               "genuine flagged": s["genuine"]["flagged"], "genuine mutants": s["genuine"]["mean_mutants"]}
        for a in ATTACKS:
            row[f"{a} detected"] = s[a]["flagged"]
            row[f"{a} mutants"] = s[a]["mean_mutants"]
        rows[det] = row
    paper = {"threshold": demo["threshold"], "cap": demo["max_mutants"], "JSMA detected": demo["detection_rate"],
             "JSMA mutants": demo["mean_mutants"]}
    rows[f"paper: {demo['operator']}, {demo['dataset']}"] = paper
    return pd.DataFrame(rows).T.rename_axis("detector")


def kappa_table(results: Mapping[str, Any], what: str = "detected"):
    """The sweep: ``what`` (``"detected"``, ``"auroc"``, ``"mean_lcr"``,
    ``"mean_mutants"``) per confidence kappa (rows) and detector (columns),
    with C&W's success rate and the images kept."""
    import pandas as pd

    results = _shared.nan_for_none(results)
    keys = list(results["kappa"][results["detectors"][0]])
    table = pd.DataFrame({det: {k: results["kappa"][det][k][what] for k in keys} for det in results["detectors"]})
    table.insert(0, "C&W success", [results["kappa_attacks"][k]["success_rate"] for k in keys])
    table.insert(1, "images", [results["kappa"][results["detectors"][0]][k]["n"] for k in keys])
    table.index = [results["kappa"][results["detectors"][0]][k]["kappa"] for k in keys]
    return table.rename_axis("kappa")


def attack_table(results: Mapping[str, Any]):
    """Per attack: success rate, adversarials kept, median L2, L-inf and share of changed pixels."""
    import pandas as pd

    return pd.DataFrame(_shared.nan_for_none(results["attacks"])).T.rename_axis("attack")


def mutant_table(results: Mapping[str, Any]):
    """Per operator: rate, candidates, kept, and the kept mutants' accuracy range on the filter images."""
    import pandas as pd

    rows = {}
    for op, m in results["mutants"].items():
        kept = [a for a in m["accuracy"] if a >= m["min_accuracy"]]
        rows[f"{op} ({m['name']})"] = {
            "rate": m["rate"], "candidates": m["candidates"], "kept": m["kept"],
            "original accuracy": m["original_accuracy"], "bar": m["min_accuracy"],
            "kept accuracy (min)": min(kept), "kept accuracy (median)": float(np.median(kept))}
    return pd.DataFrame(rows).T.rename_axis("operator")


def texts(results: Mapping[str, Any]) -> dict[str, str]:
    """The numbers and measured-dependent sentences the prose quotes: glue name -> text."""
    r = _shared.nan_for_none(results)
    claims, op = r["claims"], r["settings"]["sprt_operator"]
    best = claims["auroc_above_09"]["best_operator"]
    s = r["sprt"][op]
    hardest = min(ATTACKS, key=lambda a: r["auroc"][best][a])
    out = {
        "hardest_attack": hardest,
        "hardest_auroc": f"{r['auroc'][best][hardest]:.3f}",
        "genuine_lcr": f"{r['mean_lcr'][best]['genuine']:.3f}",
        "attack_lcr": ", ".join(f"{a} {r['mean_lcr'][best][a]:.3f}" for a in ATTACKS),
        "median_margin": f"{r['images']['median_logit_margin']:.1f}",
        "sprt_genuine_lcr": f"{r['mean_lcr'][op]['genuine']:.3f}",
        "kappa_l2": ", ".join(f"kappa {v['kappa']:g}: {r['kappa_attacks'][k]['median_l2']:.2f}"
                              for k, v in r["kappa"][op].items()),
        "n_kappa_images": f"{r['images']['kappa_images']}",
        "n_genuine": f"{r['images']['genuine']}",
        "n_calibration": f"{r['images']['calibration']}",
        "best_operator": best,
        "best_auroc": ", ".join(f"{a} {r['auroc'][best][a]:.3f}" for a in ATTACKS),
        "nai_auroc": ", ".join(f"{a} {r['auroc']['NAI'][a]:.3f}" for a in ATTACKS) if "NAI" in r["auroc"] else "",
        "input_auroc": ", ".join(f"{a} {r['auroc'][INPUT][a]:.3f}" for a in ATTACKS),
        "sprt_operator": op,
        "sprt_fpr": f"{s['genuine']['flagged']:.1%}",
        "sprt_genuine_mutants": f"{s['genuine']['mean_mutants']:.1f}",
        "sprt_genuine_decided": f"{s['genuine']['decided']:.0%}",
        "sprt_detected": ", ".join(f"{a} {s[a]['flagged']:.1%}" for a in ATTACKS),
        "sprt_mutants": ", ".join(f"{a} {s[a]['mean_mutants']:.1f}" for a in ATTACKS),
        "sprt_jsma": f"{s['JSMA']['flagged']:.3f}",
        "sprt_jsma_mutants": f"{s['JSMA']['mean_mutants']:.1f}",
        "sprt_cap": f"{r['thresholds'][op]['cap']}",
        "sprt_threshold": f"{r['thresholds'][op]['threshold']:.4f}",
        "input_fpr": f"{r['sprt'][INPUT]['genuine']['flagged']:.1%}",
        "input_detected": ", ".join(f"{a} {r['sprt'][INPUT][a]['flagged']:.1%}" for a in ATTACKS),
        "kappa_detected": "; ".join(
            f"kappa {p['kappa']:g}: {p['detected']:.0%}" for p in r["kappa"][op].values()),
        "kappa_lcr": "; ".join(f"kappa {p['kappa']:g}: {p['mean_lcr']:.3f}" for p in r["kappa"][op].values()),
        "attack_seconds": f"{r['seconds']['attacks']:.0f}",
        "mutant_seconds": f"{r['seconds']['mutants']:.0f}",
        "n_replicated": _shared.n_holding(claims),
    }
    out.update({f"m_{k}": c["measured"] for k, c in claims.items()})
    out.update(_shared.verdicts(claims))
    return out
