"""Ozbulak et al.'s Tables II and III: adversarial retraining as a detector
(Gong et al.), binary classifiers trained to tell genuine images from the
adversarials of each loss (Table II) and of all four together (Table III).

The adversarials are targeted IFGS (:func:`advlib.attacks.ifgs`) towards each
image's least likely class with every loss in the equal-perturbation setting
of the losses chapter, each image stopped at its target. An image is kept
only if all four losses reach its target. The detectors
(:mod:`advlib.detection`) are small networks of :mod:`advlib.models` in order
of increasing capacity, every one trained with the same number of updates.

Example::

    model, _ = table1.network("LeNet (MNIST)", "fashion-mnist")
    splits = {s: data.load("fashion-mnist", s) for s in ("train", "test")}
    results = run(model=model, train=splits["train"], test=splits["test"], n_train_images=100, n_test_images=50)
    results["claims"]["ce_sign_easiest_single"]["holds"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import attacks, checks, data, detection, metrics, models
from ..attacks import ifgs
from ..train import predict
from . import _shared, table1

ARCH_NAMES = {"fc500-150-10": "FC500-150-10", "lenet": "LeNet", "nin-small": "NIN-small"}
EXTRA_GENUINE = 3  # extra genuine images per attacked one: Table III's sets are half genuine, half adversarial
TABLE_3_ROWS = (*_shared.LOSS_NAMES, "adversarial", "genuine", "overall")


def datasets(parameters: dict) -> set[str]:
    return {parameters.get("dataset", "fashion-mnist")}


def arch_name(arch: str, nin_width: int | None = None) -> str:
    """How the tables name a detector: ``"NIN-small (32)"``."""
    name = ARCH_NAMES.get(arch, arch)
    return f"{name} ({nin_width})" if arch == "nin-small" and nin_width else name


def _pool(model: nn.Module, split: data.Dataset, n: int) -> dict[str, Any]:
    """The first ``n`` correctly classified images of ``split`` (attacked) and
    the next ``EXTRA_GENUINE * n`` (extra genuine ones), with their targets."""
    correct = data.first_correct(model, split, (1 + EXTRA_GENUINE) * n)
    x = correct.x[:n]
    return {"x": x, "target": attacks.least_likely(model, x), "extra": correct.x[n:], "index": correct.index}


def load(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """What the chapter attacks, from the notebook's parameters: the LeNet
    (``model``, ``info``; table1's recipe, or ``lenet_epochs``) and the
    ``train`` and ``test`` splits of ``dataset``."""
    epochs = parameters.get("lenet_epochs", 0)
    model, info = table1.network("LeNet (MNIST)", parameters["dataset"], seed=parameters["seed"],
                                 **({"epochs": epochs} if epochs else {}))
    return {"model": model, "info": info, **{s: data.load(parameters["dataset"], s) for s in ("train", "test")}}


def compute(parameters: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """:func:`run` with the notebook's ``parameters``, on what :func:`load`
    gives (or on ``given``, what the notebook loaded)."""
    return _shared.call(run, parameters, given or load(parameters), batch_size="attack_batch")


def run(
    *,
    model: nn.Module,
    train: data.Dataset,
    test: data.Dataset,
    n_train_images: int = 2000,
    n_test_images: int = 1000,
    max_iter: int = 100,
    alpha: float = 1 / 255,
    step_l2: float = 0.0,
    kappa: float = 0.0,
    detector_archs: Sequence[str] = ("fc500-150-10", "lenet", "nin-small"),
    nin_width: int = 32,
    detector_steps: int = 600,
    detector_lr: float = 0.001,
    detector_batch: int = 64,
    seed: int = 0,
    batch_size: int = 500,
    progress: bool = False,
) -> dict[str, Any]:
    """Adversarials of ``model`` by every loss, and detectors trained on them.

    Args:
        model: the attacked classifier.
        train, test: its data set's splits; the detectors' training images come
            from ``train``, their test images from ``test``, so no image is on both sides.
        n_train_images, n_test_images: images attacked per split (the first
            correctly classified ones; the next three times as many are extra genuine images).
        max_iter: IFGS iterations at most.
        alpha, step_l2: every step has the L2 size ``step_l2``, or ``alpha * sqrt(pixels)`` when it is 0.
        kappa: M-logit's confidence margin.
        detector_archs: ``advlib.models`` names, in order of increasing capacity.
        nin_width: channels of ``nin-small`` when it is a detector.
        detector_steps: Adam updates of every detector (whole epochs, at least this many).
        detector_lr, detector_batch: Adam's learning rate and the mini-batch size.
        seed: every detector's initialisation and shuffling.
        batch_size: images per batch of the attacks.
        progress: the attacks' and the detectors' progress bars.

    Returns:
        A JSON-able dict: ``attacks`` (per split and loss), ``kept``,
        ``set_sizes``, ``table_2`` (architecture -> loss -> accuracy by
        source), ``table_3`` (architecture -> row -> accuracy),
        ``detector_train_accuracy``, ``derived``, ``example`` (one test image
        and its adversarials, for the figure) and ``claims``.
    """
    n_train_images = checks.integer(n_train_images, "n_train_images", low=1)
    n_test_images = checks.integer(n_test_images, "n_test_images", low=1)
    max_iter = checks.integer(max_iter, "max_iter", low=1)
    alpha = checks.number(alpha, "alpha", low=0, low_open=True)
    step_l2 = checks.number(step_l2, "step_l2", low=0)
    detector_archs = list(detector_archs)
    if len(detector_archs) < 1 or len(set(detector_archs)) != len(detector_archs):
        raise ValueError(f"detector_archs must name at least one architecture, each once, got {detector_archs!r}")
    for arch in detector_archs:
        checks.choice(arch, "detector_archs[]", tuple(models.ARCHITECTURES))
    nin_width = checks.integer(nin_width, "nin_width", low=1)
    detector_steps = checks.integer(detector_steps, "detector_steps", low=1)
    detector_lr = checks.number(detector_lr, "detector_lr", low=0, low_open=True)
    detector_batch = checks.integer(detector_batch, "detector_batch", low=1)
    seed = checks.integer(seed, "seed", low=0)
    batch_size = checks.integer(batch_size, "batch_size", low=1)
    checks.flag(progress, "progress")

    pools = {"train": _pool(model, train, n_train_images), "test": _pool(model, test, n_test_images)}
    step = step_l2 if step_l2 > 0 else alpha * math.sqrt(pools["train"]["x"][0].numel())
    sources = _shared.loss_sources(kappa)

    adversarial, attack_stats = {}, {}
    with metrics.Timer() as attack_time:
        for split, pool in pools.items():
            adversarial[split], attack_stats[split] = {}, {}
            ok = torch.ones(len(pool["x"]), dtype=torch.bool)
            for name, loss in sources.items():
                res = attacks.batched(ifgs, model, pool["x"], size=batch_size, target=pool["target"], loss=loss,
                                      step_l2=step, max_iter=max_iter, progress=progress)
                ok &= res.success
                adversarial[split][name] = res
                attack_stats[split][name] = {
                    "reached": res.success_rate, "mean_iterations": res.iterations.double().mean().item(),
                    "median_l2": res.norms(2).double().quantile(0.5).item(),
                    "median_linf": res.norms(math.inf).double().quantile(0.5).item()}
            if not ok.any():
                raise RuntimeError(f"{split}: no image reached its target with all four losses within {max_iter} "
                                   "iterations; raise max_iter or the step")
            pool["kept"] = ok

    single, mixed = {}, {}
    for split, pool in pools.items():
        genuine = pool["x"][pool["kept"]]
        advs = {name: res.x_adv[pool["kept"]] for name, res in adversarial[split].items()}
        single[split] = {name: detection.detection_set(genuine, {name: adv}) for name, adv in advs.items()}
        # As many genuine images as adversarial ones when all four attacks are mixed.
        extra = pool["extra"][: EXTRA_GENUINE * len(genuine)]
        mixed[split] = detection.detection_set(torch.cat([genuine, extra]), advs)

    def epochs_for(train_set):
        """Whole epochs giving at least detector_steps updates on this set."""
        return max(1, math.ceil(detector_steps / math.ceil(len(train_set) / detector_batch)))

    fit_options = dict(lr=detector_lr, seed=seed, batch_size=detector_batch, progress=progress)
    table_2, table_3, seconds, train_accuracy = {}, {}, {}, {}
    for arch in detector_archs:
        options = {"width": nin_width} if arch == "nin-small" else {}
        with metrics.Timer() as t:
            table_2[arch], train_accuracy[arch] = {}, {}
            for name in sources:
                train_set = single["train"][name]
                det, history = detection.train_detector(arch, train_set, model_options=options,
                                                        epochs=epochs_for(train_set), **fit_options)
                table_2[arch][name] = detection.accuracy_by_source(det, single["test"][name])
                train_accuracy[arch][name] = history[-1]["train_accuracy"]
            det, history = detection.train_detector(arch, mixed["train"], model_options=options,
                                                    epochs=epochs_for(mixed["train"]), **fit_options)
            train_accuracy[arch]["all"] = history[-1]["train_accuracy"]
            acc = detection.accuracy_by_source(det, mixed["test"])
            adv = mixed["test"].y == 1
            acc["adversarial"] = (predict(det, mixed["test"].x[adv]) == 1).double().mean().item()
            table_3[arch] = acc
        seconds[arch] = t.seconds

    derived = _derived(table_2, table_3, detector_archs)
    test_pool = pools["test"]
    i = int(torch.nonzero(test_pool["kept"])[0])
    example = {
        "genuine": test_pool["x"][i],
        "genuine_class": test.classes[int(predict(model, test_pool["x"][i : i + 1]))],
        "adversarial": {n: r.x_adv[i] for n, r in adversarial["test"].items()},
        "adversarial_class": {n: test.classes[int(r.label_adv[i])] for n, r in adversarial["test"].items()},
    }
    return _shared.jsonable({
        "dataset": test.name,
        "step_l2": step,
        "images": {split: {"attacked": len(p["x"]), "extra_genuine": len(p["extra"]), "index": p["index"]}
                   for split, p in pools.items()},
        "attacks": attack_stats,
        "attack_seconds": attack_time.seconds,
        "kept": {split: int(p["kept"].sum()) for split, p in pools.items()},
        "set_sizes": {split: {"single": {k: v.counts() for k, v in single[split].items()},
                              "mixed": mixed[split].counts()} for split in pools},
        "detector_archs": detector_archs,
        "detector_names": [arch_name(a, nin_width) for a in detector_archs],
        "detector_epochs": {"single": epochs_for(single["train"]["CE"]), "all": epochs_for(mixed["train"])},
        "detector_steps": detector_steps,
        "detector_seconds": seconds,
        "detector_train_accuracy": train_accuracy,
        "table_2": table_2,
        "table_3": table_3,
        "derived": derived,
        "example": example,
        "claims": _claims(derived, [arch_name(a, nin_width) for a in detector_archs]),
    })


def _derived(table_2: dict, table_3: dict, archs: list[str]) -> dict[str, Any]:
    """The averages the claims compare: over the detectors per loss, and over the losses per detector."""
    names = _shared.LOSS_NAMES
    return {
        "mean_table_2": {n: float(np.mean([table_2[a][n]["overall"] for a in archs])) for n in names},
        "mean_table_3": {n: float(np.mean([table_3[a][n] for a in archs])) for n in names},
        "capacity_table_2": [float(np.mean([table_2[a][n]["overall"] for n in names])) for a in archs],
        "capacity_table_3": [table_3[a]["overall"] for a in archs],
        "detector_order": archs,
    }


def _claims(d: dict, names: list[str]) -> dict[str, dict]:
    mean_2, mean_3, cap_2, cap_3 = (d[k] for k in ("mean_table_2", "mean_table_3", "capacity_table_2",
                                                   "capacity_table_3"))

    def fmt(table):
        return ", ".join(f"{k} {v:.1%}" for k, v in table.items())

    def fmt_arch(values):
        return ", ".join(f"{a} {v:.1%}" for a, v in zip(names, values))

    def increasing(values):
        return len(values) > 1 and all(b > a for a, b in zip(values, values[1:]))

    def easiest(table):
        return table["CE-sign"] > max(v for k, v in table.items() if k != "CE-sign")

    claim = _shared.claim
    return {
        "ce_sign_easiest_single": claim(
            "CE-sign's adversarials are the easiest to detect, one attack at a time (Table II)", easiest(mean_2),
            f"mean accuracy over the detectors: {fmt(mean_2)}", mean_accuracy=mean_2),
        "ce_sign_easiest_all": claim(
            "CE-sign's adversarials are the easiest to detect, all attacks together (Table III)", easiest(mean_3),
            f"mean accuracy over the detectors: {fmt(mean_3)}", mean_accuracy=mean_3),
        "ce_m_logit_hardest_all": claim(
            "CE's and M-logit's adversarials are the hardest to detect, all attacks together (Table III)",
            set(sorted(mean_3, key=mean_3.get)[:2]) == {"CE", "M-logit"},
            f"mean accuracy over the detectors: {fmt(mean_3)}", mean_accuracy=mean_3),
        "capacity_single": claim(
            "detection improves with the detector's capacity (Table II, mean over the losses)", increasing(cap_2),
            f"smallest to largest: {fmt_arch(cap_2)}", by_detector=cap_2),
        "capacity_all": claim(
            "detection improves with the detector's capacity (Table III, overall accuracy)", increasing(cap_3),
            f"smallest to largest: {fmt_arch(cap_3)}", by_detector=cap_3),
    }


def attack_table(results: dict[str, Any]):
    """Per split and loss: the share of images that reached the target, the
    mean iterations, the median L2 and L-inf perturbation."""
    import pandas as pd

    rows = {(s, n): v for s, per in results["attacks"].items() for n, v in per.items()}
    return pd.DataFrame(rows).T.rename_axis(["split", "loss"])


def table_2(results: dict[str, Any], paper: dict[str, str]):
    """Table II: the accuracy (overall, on a half-genuine, half-adversarial test
    set) of a detector trained on one loss's adversarials; ``paper`` gives the
    paper's column (loss -> text)."""
    import pandas as pd

    t2 = results["table_2"]
    table = pd.DataFrame({name: {n: t2[a][n]["overall"] for n in _shared.LOSS_NAMES}
                          for a, name in zip(results["detector_archs"], results["detector_names"])})
    table["paper"] = [paper.get(n, "") for n in table.index]
    return table.rename_axis("attack")


def table_3(results: dict[str, Any], paper: dict[str, str]):
    """Table III: one detector per architecture trained on all the losses'
    adversarials; its accuracy on each loss's, on all adversarials, on the
    genuine images, and overall."""
    import pandas as pd

    labels = {"adversarial": "adversarial examples", "genuine": "genuine images", "overall": "overall accuracy"}
    t3 = results["table_3"]
    table = pd.DataFrame({name: {labels.get(r, r): t3[a][r] for r in TABLE_3_ROWS}
                          for a, name in zip(results["detector_archs"], results["detector_names"])})
    table["paper"] = [paper.get(r, "") for r in TABLE_3_ROWS]
    return table.rename_axis("")


def train_accuracy_table(results: dict[str, Any]):
    """Each detector's accuracy on its own training set (last epoch, running)."""
    import pandas as pd

    acc = results["detector_train_accuracy"]
    return pd.DataFrame({name: acc[a] for a, name in zip(results["detector_archs"], results["detector_names"])})


def texts(results: dict[str, Any]) -> dict[str, str]:
    """The numbers and the measured-dependent sentences the prose quotes: glue name -> text."""
    results = _shared.nan_for_none(results)
    d, claims, names = results["derived"], results["claims"], results["detector_names"]
    out = {
        "attack_seconds": f"{results['attack_seconds']:.0f}",
        "kept_train": f"{results['kept']['train']}",
        "kept_test": f"{results['kept']['test']}",
        "detector_seconds": f"{sum(results['detector_seconds'].values()):.0f}",
        "capacity_2": claims["capacity_single"]["measured"].removeprefix("smallest to largest: "),
        "capacity_3": claims["capacity_all"]["measured"].removeprefix("smallest to largest: "),
        "genuine_3": ", ".join(f"{name} {results['table_3'][a]['genuine']:.1%}"
                               for a, name in zip(results["detector_archs"], names)),
        "n_replicated": _shared.n_holding(claims),
    }
    for n in _shared.LOSS_NAMES:
        out[f"mean2_{_shared.key_of(n)}"] = f"{d['mean_table_2'][n]:.1%}"
        out[f"mean3_{_shared.key_of(n)}"] = f"{d['mean_table_3'][n]:.1%}"
    out.update(_shared.verdicts(claims))
    acc = results["detector_train_accuracy"]
    underfit = {name: min(acc[a].values()) for a, name in zip(results["detector_archs"], names)
                if min(acc[a].values()) < 0.99}
    steps = results["detector_steps"]
    out["training_note"] = (
        f"Within {steps} updates, not every detector fits its own training sets (below 99%; the running accuracy of "
        "the last epoch, worst of the five detectors of an architecture): "
        + ", ".join(f"{name} {a:.1%}" for name, a in underfit.items())
        + ". These are not trained to convergence, and their accuracies may understate what more training would "
        "detect." if underfit else f"Every detector fits its own training set to at least 99% within {steps} updates.")
    return out
