"""The blog post's JSMA and defensive distillation, and what distillation does
not stop.

The protocol, on networks distilled at each temperature ``T``
(:func:`advlib.defences.distillation.distilled`, deployed at ``T = 1``):

- the test accuracy on the whole test split; the attacked images are the
  first ``n_per_class`` test images of each class that *every* network
  classifies correctly, so all temperatures are attacked on the same images;
- **JSMA on the softmax probabilities** (Papernot et al.'s saliency map,
  :func:`advlib.attacks.jsma` with ``space="probs"``), each image towards
  every other class: the success rate over those attacks, and the mean
  fraction of features the successful ones changed (L0);
- the **input gradient of the softmax**: the mean of ``|dF_j/dx_i|`` over
  classes ``j``, features ``i`` and images, as ``log10``, computed without
  underflow (:func:`~advlib.defences.distillation.softmax_jacobian_log10`:
  float64, log-space weights), beside the share of the entries that float32
  autograd - what the attack reads - returns as exactly 0;
- beyond the post, attacks on the **logits**: DeepFool (L2) and Carlini and
  Wagner's L2 attack, untargeted, their success and rho_adv
  (``mean ||r||_2 / ||x||_2`` over the images they fooled); optionally JSMA
  on the logits too (``jsma_logits``);
- for the figures: the saliency map of one image at ``T = 1`` and at the
  largest ``T``, and the JSMA adversarials of the first image of each class
  towards every class at ``T = 1``.

Example::

    config = train.TrainConfig("fc500-150-10", "fashion-mnist", epochs=5, lr=1e-3, optimizer="adam")
    networks = {t: distillation.distilled(config, t)[0] for t in (1, 100)}
    results = run(networks=networks, test=data.load("fashion-mnist", "test"), n_per_class=1)
    results["rows"][-1]["jsma_success"], results["claims"]["jsma_success_falls"]["holds"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .. import attacks, checks, data, metrics, train
from ..attacks import cw_l2, deepfool, jsma
from ..attacks._common import attacking
from ..attacks.jsma import forward_derivatives
from ..defences import distillation
from . import _shared, table1

LOG10 = math.log(10)
JSMA_SUCCESS_DROP = 0.1  # "below a tenth of its T = 1 value" at the largest T
GRADIENT_ORDERS = 2.0  # "by orders of magnitude": at least two, from T = 1 to the largest T
ACCURACY_POINTS = 0.05  # "within a few points": at most 5 points below T = 1
LOGIT_SUCCESS = 0.95  # attacks on the logits keep at least this success rate at every T


def datasets(parameters: Mapping[str, Any]) -> set[str]:
    return {parameters.get("dataset", "fashion-mnist")}


def config(parameters: Mapping[str, Any]) -> train.TrainConfig:
    """The training recipe of every teacher and distilled network, from the
    notebook's parameters (``arch``, ``dataset``, ``epochs``, ``lr``,
    ``optimizer``, ``batch_size``, ``train_limit`` (0: all), ``seed``)."""
    limit = checks.integer(parameters.get("train_limit", 0), "train_limit", low=0)
    return train.TrainConfig(
        parameters["arch"], parameters["dataset"], epochs=parameters["epochs"], lr=parameters["lr"],
        optimizer=parameters.get("optimizer", "adam"), batch_size=parameters.get("batch_size", 128),
        train_limit=limit or None, seed=parameters.get("seed", 0),
    )


# ---------------------------------------------------------------- measurements


def _log10_mean(log10_values: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``log10(mean(10 ** v))`` over ``dims``, without leaving log space."""
    count = math.prod(log10_values.shape[d] for d in dims)
    return (torch.logsumexp(log10_values * LOG10, dim=dims) - math.log(count)) / LOG10


def _float32_zero_fraction(model: nn.Module, x: Tensor) -> float:
    """The share of the entries of the float32 Jacobian of ``softmax(model(x))``
    that autograd returns as exactly 0: what an attack on the probabilities sees."""
    with attacking(model):
        xg = x.detach().clone().requires_grad_(True)
        probs = torch.softmax(model(xg), dim=1)
        c = probs.shape[1]
        zeros = sum(
            (torch.autograd.grad(probs[:, k].sum(), xg, retain_graph=k < c - 1)[0] == 0).sum().item()
            for k in range(c)
        )
    return zeros / (c * x.numel())


def _images(networks: Mapping[float, nn.Module], test: data.Dataset, n_per_class: int) -> Tensor:
    """Positions in ``test`` of the first ``n_per_class`` images of each class
    that every network classifies correctly, class by class."""
    correct = torch.ones(len(test), dtype=torch.bool)
    for model in networks.values():
        correct &= train.predict(model, test.x) == test.y
    index = []
    for c, name in enumerate(test.classes):
        found = torch.nonzero(correct & (test.y == c)).squeeze(1)
        if len(found) < n_per_class:
            raise ValueError(
                f"n_per_class={n_per_class}: only {len(found)} test images of class {name!r} are classified "
                "correctly by every network; lower n_per_class"
            )
        index.append(found[:n_per_class])
    return torch.cat(index)


def _every_target(labels: Tensor, classes: int) -> tuple[Tensor, Tensor]:
    """For each image, every class but its own: ``(image position, target)``, ``[N * (classes - 1)]`` each."""
    pairs = [(i, t) for i, y in enumerate(labels.tolist()) for t in range(classes) if t != y]
    image, target = zip(*pairs)
    return torch.tensor(image), torch.tensor(target)


def _jsma(model, x, image, target, *, space, gamma, theta, batch_size, progress) -> tuple[dict, attacks.AttackResult]:
    res = attacks.batched(jsma, model, x[image], size=batch_size, target=target, space=space, gamma=gamma,
                          theta=theta, progress=progress)
    l0 = (res.perturbation != 0).flatten(1).sum(1).double() / x[0].numel()
    return {
        "success": res.success, "l0": l0, "label_adv": res.label_adv, "iterations": res.iterations,
        "success_rate": res.success_rate,
        "l0_mean": l0[res.success].mean().item() if res.success.any() else math.nan,
    }, res


def _logit_attack(result: attacks.AttackResult, x: Tensor) -> dict:
    rel = metrics.relative_norms(x, result.perturbation, 2)
    return {
        "success": result.success, "rel_l2": rel, "label_adv": result.label_adv,
        "success_rate": result.success_rate,
        "rho_adv": rel[result.success].mean().item() if result.success.any() else math.nan,
    }


def _sparse(perturbation: Tensor, x_adv: Tensor) -> dict:
    """The features an L0 attack changed, and their new values: enough to redraw the adversarial."""
    flat = perturbation.flatten()
    where = torch.nonzero(flat).squeeze(1)
    return {"features": where, "values": x_adv.flatten()[where]}


def _saliency(model: nn.Module, x: Tensor, target: int, *, gamma: float, theta: float) -> dict:
    """Papernot et al.'s saliency map of one image towards ``target``, on the
    probabilities, as the attack computes it in float32: ``alpha = dF_t/dx``,
    ``beta = d sum_{j != t} F_j / dx``, the single-feature map
    ``alpha_i |beta_i|`` where ``alpha_i > 0 > beta_i`` (else 0), the pair the
    attack changes first, and where the attack ends."""
    t = torch.tensor([target])
    with attacking(model):
        xg = x[None].detach().clone().requires_grad_(True)
        alpha, beta = forward_derivatives(model(xg), xg, t, "probs")
    alpha, beta = alpha[0], beta[0]
    saliency = torch.where((alpha > 0) & (beta < 0), alpha * beta.abs(), torch.zeros_like(alpha))
    one_pair = 3 / x.numel()  # floor(gamma * n / 2) = 1: JSMA stops after its first pair
    first = jsma(model, x[None], target=t, space="probs", gamma=one_pair, theta=theta)
    end = jsma(model, x[None], target=t, space="probs", gamma=gamma, theta=theta)
    return {
        "target": target, "alpha": alpha, "saliency": saliency,
        "alpha_zero_fraction": (alpha == 0).double().mean().item(),
        "first_pair": torch.nonzero(first.perturbation.flatten()).squeeze(1),
        "changed": torch.nonzero(end.perturbation.flatten()).squeeze(1),
        "success": bool(end.success[0]), "label_adv": int(end.label_adv[0]),
    }


# ---------------------------------------------------------------- the protocol


def load(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """What the chapter attacks, from the notebook's parameters: the network
    distilled at each of the ``temperatures`` (``networks``, and ``infos``,
    their training records; :func:`config`) and the ``test`` split."""
    networks, infos = {}, {}
    for t in parameters["temperatures"]:
        networks[t], infos[t] = distillation.distilled(config(parameters), t, progress=False)
    return {"networks": networks, "infos": infos, "test": data.load(parameters["dataset"], "test")}


def compute(parameters: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """:func:`run` with the notebook's ``parameters``, on what :func:`load`
    gives (or on ``given``, what the notebook loaded)."""
    return _shared.call(run, parameters, given or load(parameters), batch_size="attack_batch")


def run(
    *,
    networks: Mapping[float, nn.Module],
    test: data.Dataset,
    n_per_class: int = 10,
    gamma: float = 0.145,
    theta: float = 1.0,
    jsma_logits: bool = False,
    deepfool_max_iter: int = 50,
    overshoot: float = 0.02,
    cw_search_steps: int = 9,
    cw_max_iter: int = 1000,
    cw_lr: float = 1e-2,
    batch_size: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """JSMA, the softmax's gradients and attacks on the logits, per temperature.

    Args:
        networks: temperature -> the network distilled at it (deployed at
            ``T = 1``), at least two, one of them ``T = 1`` (the reference).
        test: the test split (images in [0, 1]).
        n_per_class: images per class attacked (each towards every other class by JSMA).
        gamma: JSMA's largest fraction of features changed (Papernot et al. on MNIST: 14.5%).
        theta: JSMA's change of a feature (+1: set it to the top of the box).
        jsma_logits: also run JSMA on the logits (cleverhans' saliency map).
        deepfool_max_iter, overshoot: DeepFool's iterations and overshoot.
        cw_search_steps, cw_max_iter, cw_lr: C&W L2's binary search steps on c,
            Adam steps per run, Adam's learning rate.
        batch_size: attacks per batch (:func:`advlib.attacks.batched`).
        progress: the attacks' progress bars.

    Returns:
        A JSON-able dict: ``temperatures`` (sorted), ``rows`` (one per
        temperature: ``accuracy``, ``margin_median``, ``grad_log10_mean``,
        ``grad_zero_fraction_float32``, ``jsma_success``, ``jsma_l0_mean``,
        ``jsma_logits_success``, ``jsma_logits_l0_mean`` (None when not run),
        ``deepfool_success``, ``deepfool_rho``, ``cw_success``, ``cw_rho``,
        ``seconds``), ``per_attack`` (one per temperature: the per-attack and
        per-image arrays those rest on), ``images``, ``attacks`` (the JSMA
        image/target pairs), ``saliency``, ``grid``, ``derived`` and ``claims``.
    """
    if not isinstance(networks, Mapping) or len(networks) < 2:
        raise ValueError("networks must map at least two temperatures (one of them 1) to their distilled networks")
    models = {checks.number(t, "networks' temperatures", low=0, low_open=True): networks[t] for t in sorted(networks)}
    temps = list(models)
    if len(models) != len(networks):
        raise ValueError(f"networks names a temperature twice: {list(networks)}")
    if 1.0 not in temps:
        raise ValueError(f"networks must include T = 1, the reference; got temperatures {temps}")
    for t, m in models.items():
        if not isinstance(m, nn.Module):
            raise TypeError(f"networks[{t}] must be a torch.nn.Module, got {type(m).__name__}")
    if not isinstance(test, data.Dataset):
        raise TypeError(f"test must be an advlib.data.Dataset, got {type(test).__name__}")
    n_per_class = checks.integer(n_per_class, "n_per_class", low=1)
    gamma = checks.number(gamma, "gamma", low=0, high=1, low_open=True)
    theta = checks.number(theta, "theta")
    checks.flag(jsma_logits, "jsma_logits")
    deepfool_max_iter = checks.integer(deepfool_max_iter, "deepfool_max_iter", low=1)
    overshoot = checks.number(overshoot, "overshoot", low=0)
    cw_search_steps = checks.integer(cw_search_steps, "cw_search_steps", low=1)
    cw_max_iter = checks.integer(cw_max_iter, "cw_max_iter", low=1)
    cw_lr = checks.number(cw_lr, "cw_lr", low=0, low_open=True)
    batch_size = checks.integer(batch_size, "batch_size", low=1)
    checks.flag(progress, "progress")

    index = _images(models, test, n_per_class)
    x, labels = test.x[index], test.y[index]
    classes = len(test.classes)
    n_feat = x[0].numel()
    image, target = _every_target(labels, classes)
    jsma_options = dict(gamma=gamma, theta=theta, batch_size=batch_size, progress=progress)

    rows, per_attack, grid = [], [], None
    for t, model in models.items():
        row: dict[str, Any] = {"temperature": t}
        with metrics.Timer() as clock:
            row["accuracy"] = train.accuracy(model, test.x, test.y)
            with torch.no_grad():
                top2 = model(x).topk(2, dim=1).values
            row["margin_median"] = (top2[:, 0] - top2[:, 1]).median().item()

            lj = distillation.softmax_jacobian_log10(model, x)  # [N, C, ...]
            per_image = _log10_mean(lj.flatten(1), (1,))
            row["grad_log10_mean"] = _log10_mean(per_image[None], (1,)).item()
            row["grad_log10_median"] = per_image.median().item()
            row["grad_zero_fraction_float32"] = _float32_zero_fraction(model, x)

            probs, res = _jsma(model, x, image, target, space="probs", **jsma_options)
            row["jsma_success"], row["jsma_l0_mean"] = probs["success_rate"], probs["l0_mean"]
            if t == 1.0:
                first = torch.tensor([int(torch.nonzero(labels == c)[0]) for c in range(classes)])
                grid = _grid(first, image, target, res, labels)
            logits = None
            if jsma_logits:
                logits, _ = _jsma(model, x, image, target, space="logits", **jsma_options)
            row["jsma_logits_success"] = logits["success_rate"] if logits else None
            row["jsma_logits_l0_mean"] = logits["l0_mean"] if logits else None

            df = _logit_attack(attacks.batched(deepfool, model, x, size=batch_size, p=2, overshoot=overshoot,
                                               max_iter=deepfool_max_iter, progress=progress), x)
            cw = _logit_attack(attacks.batched(cw_l2, model, x, size=batch_size, search_steps=cw_search_steps,
                                               max_iter=cw_max_iter, lr=cw_lr, progress=progress), x)
            row.update(deepfool_success=df["success_rate"], deepfool_rho=df["rho_adv"],
                       cw_success=cw["success_rate"], cw_rho=cw["rho_adv"])
        row["seconds"] = clock.seconds
        rows.append(row)
        per_attack.append({
            "grad_log10_image": per_image,
            "jsma": {k: probs[k] for k in ("success", "l0", "label_adv", "iterations")},
            "jsma_logits": {k: logits[k] for k in ("success", "l0", "label_adv", "iterations")} if logits else None,
            "deepfool": {k: df[k] for k in ("success", "rel_l2", "label_adv")},
            "cw": {k: cw[k] for k in ("success", "rel_l2", "label_adv")},
        })

    # The saliency map of the first attacked image towards its least likely class, at T = 1 and the largest T.
    reference, hardest = models[1.0], models[temps[-1]]
    t_example = int(attacks.least_likely(reference, x[:1])[0])
    saliency = {
        "image": 0, "label": int(labels[0]), "target": t_example,
        "x": x[0],
        "at": [{"temperature": t, **_saliency(m, x[0], t_example, gamma=gamma, theta=theta)}
               for t, m in ((1.0, reference), (temps[-1], hardest))],
    }
    derived = _derived(rows)
    return _shared.jsonable({
        "dataset": test.name,
        "classes": list(test.classes),
        "n_features": n_feat,
        "image_shape": list(x.shape[1:]),
        "temperatures": temps,
        "settings": {"n_per_class": n_per_class, "gamma": gamma, "theta": theta, "jsma_logits": jsma_logits,
                     "deepfool_max_iter": deepfool_max_iter, "overshoot": overshoot,
                     "cw_search_steps": cw_search_steps, "cw_max_iter": cw_max_iter, "cw_lr": cw_lr},
        "images": {"index": index, "label": labels, "n": len(index)},
        "attacks": {"image": image, "target": target, "n": len(image)},
        "rows": rows,
        "per_attack": per_attack,
        "saliency": saliency,
        "grid": {**grid, "x": x[grid["image"]]},
        "derived": derived,
        "claims": _claims(rows, derived),
    })


def _grid(first: Tensor, image: Tensor, target: Tensor, res: attacks.AttackResult, labels: Tensor) -> dict:
    """JSMA's adversarials of the first image of each class towards every other class (at T = 1)."""
    cells = []
    for i in first.tolist():
        for k in torch.nonzero(image == i).squeeze(1).tolist():
            cells.append({"row": int(labels[i]), "target": int(target[k]), "success": bool(res.success[k]),
                          "label_adv": int(res.label_adv[k]), **_sparse(res.perturbation[k], res.x_adv[k])})
    return {"image": first, "cells": cells}


def _derived(rows: list[dict]) -> dict[str, Any]:
    """The numbers the claims compare, from the rows."""
    first, last = rows[0], rows[-1]
    return {
        "jsma_success": [r["jsma_success"] for r in rows],
        "jsma_ratio": last["jsma_success"] / first["jsma_success"] if first["jsma_success"] > 0 else math.nan,
        "grad_log10_drop": first["grad_log10_mean"] - last["grad_log10_mean"],
        "accuracy_drop_max": max(first["accuracy"] - r["accuracy"] for r in rows),
        "logit_success_min": min(min(r["deepfool_success"], r["cw_success"]) for r in rows),
        "deepfool_rho_ratio": last["deepfool_rho"] / first["deepfool_rho"],
        "cw_rho_ratio": last["cw_rho"] / first["cw_rho"],
        "jsma_l0_ratio": (last["jsma_l0_mean"] / first["jsma_l0_mean"]
                          if math.isfinite(last["jsma_l0_mean"]) and first["jsma_l0_mean"] > 0 else math.nan),
    }


def _claims(rows: list[dict], d: dict) -> dict[str, dict]:
    temps = [r["temperature"] for r in rows]
    success = d["jsma_success"]
    falls = all(b <= a for a, b in zip(success, success[1:]))
    ratio = d["jsma_ratio"]
    claim = _shared.claim
    by_t = ", ".join(f"T={t:g} {s:.1%}" for t, s in zip(temps, success))
    return {
        "jsma_success_falls": claim(
            "JSMA on the probabilities succeeds less often as T grows (never more often at a higher T), and "
            "at the largest T less than a tenth as often as at T = 1",
            falls and ratio < JSMA_SUCCESS_DROP,
            f"{by_t}; largest T / T = 1: {ratio:.3g}", success=success, temperatures=temps, ratio=ratio,
            non_increasing=falls, threshold=JSMA_SUCCESS_DROP),
        "gradients_vanish": claim(
            "Distillation shrinks the softmax's input gradients by orders of magnitude (at least 100 times "
            "from T = 1 to the largest T)",
            d["grad_log10_drop"] >= GRADIENT_ORDERS,
            f"mean |dF/dx| 10^{rows[0]['grad_log10_mean']:.1f} at T=1, 10^{rows[-1]['grad_log10_mean']:.1f} at "
            f"T={temps[-1]:g}: {d['grad_log10_drop']:.1f} orders of magnitude",
            log10_mean=[r["grad_log10_mean"] for r in rows], drop=d["grad_log10_drop"], threshold=GRADIENT_ORDERS),
        "accuracy_kept": claim(
            "Distillation costs little accuracy: at every T the test accuracy is at most 5 points below T = 1's",
            d["accuracy_drop_max"] <= ACCURACY_POINTS,
            ", ".join(f"T={r['temperature']:g} {r['accuracy']:.1%}" for r in rows)
            + f"; largest drop {d['accuracy_drop_max'] * 100:.1f} points",
            accuracy=[r["accuracy"] for r in rows], drop_max=d["accuracy_drop_max"], threshold=ACCURACY_POINTS),
        "logit_attacks_succeed": claim(
            "Attacks on the logits are not stopped: DeepFool and C&W L2 succeed on at least 95% of the images at "
            "every T",
            d["logit_success_min"] >= LOGIT_SUCCESS,
            "DeepFool " + ", ".join(f"{r['deepfool_success']:.0%}" for r in rows)
            + "; C&W " + ", ".join(f"{r['cw_success']:.0%}" for r in rows) + f" (T = {', '.join(f'{t:g}' for t in temps)})",
            deepfool_success=[r["deepfool_success"] for r in rows], cw_success=[r["cw_success"] for r in rows],
            minimum=d["logit_success_min"], threshold=LOGIT_SUCCESS),
    }


# ---------------------------------------------------------------- what the notebook shows


def _t(value: float) -> str:
    return f"{value:g}"


def names(dataset: str, arch: str) -> dict[str, str]:
    """The page's names of the data and the architecture: glue name -> text."""
    return {"data_name": table1.data_label(dataset, "MNIST"),
            "arch_name": {"fc500-150-10": "FC500-150-10", "lenet": "LeNet"}.get(arch, arch)}


def networks_record(infos: Mapping[float, Mapping[str, Any]]) -> dict[float, dict[str, Any]]:
    """What the provenance keeps of each temperature's network: its cache key, accuracy, teacher and training."""
    return {t: {k: info[k] for k in ("key", "test_accuracy", "teacher", "from_cache", "train_seconds")}
            for t, info in infos.items()}


def accuracy_frame(infos: Mapping[float, Mapping[str, Any]]):
    """Per temperature, the test accuracy of the teacher and of the network distilled from it."""
    import pandas as pd

    return pd.DataFrame({"teacher accuracy": {t: i["teacher"]["test_accuracy"] for t, i in infos.items()},
                         "distilled accuracy": {t: i["test_accuracy"] for t, i in infos.items()}}).rename_axis("T")


TEMPERATURE_FORMATS = {
    "test accuracy": "{:.1%}", "JSMA success (probabilities)": "{:.1%}", "mean L0 of successful JSMA": "{:.2%}",
    "log10 mean |dF/dx|": "{:.1f}", "median over images of log10 mean |dF/dx|": "{:.1f}",
    "share of dF/dx = 0 in float32": "{:.1%}", "median logit margin": "{:.1f}",
}
"""How the page prints each column of :func:`temperature_table`."""


def temperature_table(results: dict[str, Any]):
    """One row per temperature: accuracy, the JSMA chart, the softmax's gradients, L0, the logit margin."""
    import pandas as pd

    rows = _shared.nan_for_none(results["rows"])
    columns = {
        "accuracy": "test accuracy",
        "jsma_success": "JSMA success (probabilities)",
        "jsma_l0_mean": "mean L0 of successful JSMA",
        "grad_log10_mean": "log10 mean |dF/dx|",
        "grad_log10_median": "median over images of log10 mean |dF/dx|",
        "grad_zero_fraction_float32": "share of dF/dx = 0 in float32",
        "margin_median": "median logit margin",
    }
    table = pd.DataFrame([{label: r[k] for k, label in columns.items()} for r in rows],
                         index=pd.Index([_t(r["temperature"]) for r in rows], name="T"))
    return table


def logit_table(results: dict[str, Any]):
    """One row per temperature: the attacks on the logits, success and rho_adv (JSMA on the logits: success and L0)."""
    import pandas as pd

    rows = _shared.nan_for_none(results["rows"])
    data_ = []
    for r in rows:
        entry = {"DeepFool success": r["deepfool_success"], "DeepFool rho_adv": r["deepfool_rho"],
                 "C&W L2 success": r["cw_success"], "C&W L2 rho_adv": r["cw_rho"]}
        if results["settings"]["jsma_logits"]:
            entry.update({"JSMA (logits) success": r["jsma_logits_success"],
                          "JSMA (logits) mean L0": r["jsma_logits_l0_mean"]})
        entry["JSMA (probabilities) success"] = r["jsma_success"]
        data_.append(entry)
    return pd.DataFrame(data_, index=pd.Index([_t(r["temperature"]) for r in rows], name="T"))


def jsma_table(results: dict[str, Any], paper: Mapping[str, Any], data_label: str):
    """JSMA at T = 1 beside Papernot et al.'s MNIST numbers."""
    import pandas as pd

    first = _shared.nan_for_none(results["rows"][0])
    build = {"success rate": f"{first['jsma_success']:.1%}", "mean L0 (successful)": f"{first['jsma_l0_mean']:.2%}",
             "attacks": f"{results['attacks']['n']} ({results['images']['n']} images x every other class)",
             "largest L0 allowed (gamma)": f"{results['settings']['gamma']:.1%}"}
    pub = {"success rate": f"{paper['success_rate']:.0%}", "mean L0 (successful)": f"{paper['mean_l0_fraction']:.2%}",
           "attacks": "every test image x every other class",
           "largest L0 allowed (gamma)": f"{paper['max_distortion']:.1%}"}
    return pd.DataFrame({f"this build ({data_label}, T = 1)": build, "Papernot et al. (MNIST)": pub})


def distillation_table(results: dict[str, Any], paper: Mapping[str, Any]):
    """Papernot et al.'s distillation claims (MNIST) beside this build's numbers."""
    import pandas as pd

    rows = _shared.nan_for_none(results["rows"])
    d = _shared.nan_for_none(results["derived"])
    first, last = rows[0], rows[-1]
    t_max = _t(last["temperature"])
    l0 = (f"{d['jsma_l0_ratio'] - 1:+.0%} (mean L0 of the successful attacks, T = 1 to {t_max})"
          if math.isfinite(d["jsma_l0_ratio"]) else "undefined: no attack succeeded at the largest T")
    table = {
        "JSMA success without distillation": (f"{paper['jsma_success_undistilled']:.0%}",
                                              f"{first['jsma_success']:.1%} (T = 1)"),
        "JSMA success at a high temperature": (paper["jsma_success_distilled"], f"{last['jsma_success']:.1%} (T = {t_max})"),
        "adversarial gradients": (paper["gradient_reduction"],
                                  f"mean |dF/dx| smaller by 10^{d['grad_log10_drop']:.1f} (T = 1 to {t_max})"),
        "features to change": (paper["features_increase"], l0),
        "accuracy": (paper["accuracy"], f"{first['accuracy']:.1%} at T = 1, {last['accuracy']:.1%} at T = {t_max}; "
                                        f"at most {d['accuracy_drop_max'] * 100:.1f} points lower at any T"),
    }
    return (pd.DataFrame(table, index=["Papernot et al. (MNIST)", "this build"]).T.rename_axis("claim")
            .style.set_properties(**{"text-align": "left"}))


def texts(results: dict[str, Any], paper: Mapping[str, Any]) -> dict[str, str]:
    """The numbers the prose quotes, pre-formatted: glue name -> text."""
    results = _shared.nan_for_none(results)
    rows, d, claims = results["rows"], results["derived"], results["claims"]
    first, last = rows[0], rows[-1]
    sal = results["saliency"]["at"]
    t_max = _t(last["temperature"])
    factor = d["grad_log10_drop"]
    l0_change = (f"{(d['jsma_l0_ratio'] - 1):+.0%}" if math.isfinite(d["jsma_l0_ratio"])
                 else "undefined (no successful attack)")
    out = {
        "temperatures": ", ".join(_t(r["temperature"]) for r in rows),
        "t_max": t_max,
        "n_images": f"{results['images']['n']}",
        "n_attacks": f"{results['attacks']['n']}",
        "acc_t1": f"{first['accuracy']:.1%}",
        "acc_tmax": f"{last['accuracy']:.1%}",
        "acc_drop": f"{d['accuracy_drop_max'] * 100:.1f}",
        "jsma_t1": f"{first['jsma_success']:.1%}",
        "jsma_tmax": f"{last['jsma_success']:.1%}",
        "l0_t1": f"{first['jsma_l0_mean']:.2%}",
        "l0_tmax": f"{last['jsma_l0_mean']:.2%}" if math.isfinite(last["jsma_l0_mean"]) else "undefined",
        "l0_change": l0_change,
        "grad_t1": f"10^{first['grad_log10_mean']:.1f}",
        "grad_tmax": f"10^{last['grad_log10_mean']:.1f}",
        "grad_orders": f"{factor:.1f}",
        "grad_median_t1": f"10^{first['grad_log10_median']:.1f}",
        "grad_median_tmax": f"10^{last['grad_log10_median']:.1f}",
        "zero_t1": f"{first['grad_zero_fraction_float32']:.1%}",
        "zero_tmax": f"{last['grad_zero_fraction_float32']:.1%}",
        "alpha_zero_t1": f"{sal[0]['alpha_zero_fraction']:.1%}",
        "alpha_zero_tmax": f"{sal[-1]['alpha_zero_fraction']:.1%}",
        "margin_t1": f"{first['margin_median']:.1f}",
        "margin_tmax": f"{last['margin_median']:.0f}",
        "deepfool_min": f"{min(r['deepfool_success'] for r in rows):.0%}",
        "cw_min": f"{min(r['cw_success'] for r in rows):.0%}",
        "deepfool_rho_t1": f"{first['deepfool_rho']:.3f}",
        "deepfool_rho_tmax": f"{last['deepfool_rho']:.3f}",
        "cw_rho_t1": f"{first['cw_rho']:.3f}",
        "cw_rho_tmax": f"{last['cw_rho']:.3f}",
        "paper_jsma": f"{paper['jsma']['values']['success_rate']:.0%}",
        "paper_l0": f"{paper['jsma']['values']['mean_l0_fraction']:.2%}",
        "n_replicated": _shared.n_holding(claims),
        "rho_text": _rho_text(d["deepfool_rho_ratio"], d["cw_rho_ratio"], t_max),
    }
    if results["settings"]["jsma_logits"]:
        out["jsma_logits_text"] = (
            "JSMA itself, with the saliency map computed on the logits instead of the probabilities, succeeds "
            f"in {first['jsma_logits_success']:.1%} of its attacks at T = 1 and {last['jsma_logits_success']:.1%} "
            f"at T = {t_max} (on the probabilities: {first['jsma_success']:.1%} and {last['jsma_success']:.1%}).")
    else:
        out["jsma_logits_text"] = "(JSMA on the logits did not run in this build: the parameter jsma_logits is off.)"
    out.update(_shared.verdicts(claims))
    return out


def _rho_text(deepfool_ratio: float, cw_ratio: float, t_max: str) -> str:
    """How the perturbations on the logits changed from T = 1 to the largest T, in words."""
    largest = max(deepfool_ratio, cw_ratio)
    if largest <= 1.1:
        how = "no larger than without the defence"
    elif largest <= 1.5:
        how = "somewhat larger than without the defence"
    else:
        how = f"up to {largest:.1f} times larger than without the defence"
    return (f"the perturbations they find are {how} (rho_adv {deepfool_ratio - 1:+.0%} for DeepFool and "
            f"{cw_ratio - 1:+.0%} for C&W from T = 1 to T = {t_max})")
