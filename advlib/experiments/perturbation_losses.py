"""Ozbulak et al.'s Figures 1 to 4 and Table I: one targeted iterative attack,
``x_{i+1} = clip(x_i - alpha_i d_i)``, with the four perturbation sources (CE,
CE-sign, logit, M-logit), in two settings:

- **equal multiplier**: the same ``alpha`` for every loss;
- **equal perturbation**: every step of the same L2 size ``step_l2`` (by
  default ``alpha * sqrt(pixels)``, an unclipped CE-sign step of the first).

Every loss runs twice per setting with :func:`advlib.attacks.ifgs`, targeted at
each image's least likely class: stopping each image at its target (the
iterations, the least perturbation, the time of Table I) and running every
iteration with a trace (the curves of Figures 1-4). The claims are the paper's
observations under Table I as inequalities on these numbers.

Example::

    model, _ = table1.network("LeNet (MNIST)", "fashion-mnist")
    results = run(model=model, test=data.load("fashion-mnist", "test"), n_images=100)
    results["claims"]["ce_sign_most_iterations"]["holds"]
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from .. import attacks, checks, data, metrics
from ..attacks import ifgs
from . import _shared, table1

EM, EP = "equal multiplier", "equal perturbation"
SETTINGS = (EM, EP)
CURVES = ("prob_orig", "prob_label", "logit_orig", "logit_label", "grad_norm")
"""The per-iteration quantities of ``ifgs``'s trace the figures follow."""


def datasets(parameters: dict) -> set[str]:
    return {parameters.get("dataset", "fashion-mnist")}


def _quartiles(values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Over the images (dim 1) at every iteration: mean and quartiles."""
    v = values.double()
    return {"mean": v.mean(1), "q25": v.quantile(0.25, dim=1), "median": v.quantile(0.5, dim=1),
            "q75": v.quantile(0.75, dim=1)}


def _median(values: torch.Tensor) -> float:
    v = values.double()
    v = v[~v.isnan()]
    return v.quantile(0.5).item() if v.numel() else math.nan


def load(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """What the chapter attacks, from the notebook's parameters: the LeNet
    (``model``, ``info``; table1's recipe, or ``lenet_epochs``) and the
    ``test`` split of ``dataset``."""
    epochs = parameters.get("lenet_epochs", 0)
    model, info = table1.network("LeNet (MNIST)", parameters["dataset"], seed=parameters["seed"],
                                 **({"epochs": epochs} if epochs else {}))
    return {"model": model, "info": info, "test": data.load(parameters["dataset"], "test")}


def compute(parameters: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """:func:`run` with the notebook's ``parameters``, on what :func:`load`
    gives (or on ``given``, what the notebook loaded)."""
    return _shared.call(run, parameters, given or load(parameters), batch_size="attack_batch")


def run(
    *,
    model: nn.Module,
    test: data.Dataset,
    n_images: int = 1000,
    max_iter: int = 100,
    alpha: float = 1 / 255,
    step_l2: float = 0.0,
    kappa: float = 0.0,
    saturation_window: float = 0.2,
    saturation_share: float = 0.05,
    batch_size: int = 500,
    progress: bool = False,
) -> dict[str, Any]:
    """The chapter's measurements on the first ``n_images`` test images ``model`` classifies correctly.

    Args:
        model: the attacked classifier.
        test: the test split the images come from.
        n_images: images attacked (the first correctly classified ones).
        max_iter: iterations of every run.
        alpha: the equal multiplier (1/255, as Kurakin et al. run IFGS).
        step_l2: the L2 size of every step with an equal perturbation; 0 for ``alpha * sqrt(pixels)``.
        kappa: M-logit's confidence margin.
        saturation_window: saturation is judged on the last this fraction of the iterations.
        saturation_share: saturated when the mean target logit gains less than this share of its total gain there.
        batch_size: images per batch of the attacks (``attacks.batched``).
        progress: the attacks' progress bars.

    Returns:
        A JSON-able dict: ``images`` (test index, label, target), ``settings``,
        ``measured`` (per setting and loss, per image: iterations, reached,
        least L2/L-inf perturbation, first step, target logit and gradient norm
        at a few iterations; the time), ``curves`` (per iteration: mean and
        quartiles over the images), ``derived`` (what the claims compare) and ``claims``.
    """
    n_images = checks.integer(n_images, "n_images", low=1)
    max_iter = checks.integer(max_iter, "max_iter", low=1)
    alpha = checks.number(alpha, "alpha", low=0, low_open=True)
    step_l2 = checks.number(step_l2, "step_l2", low=0)
    saturation_window = checks.number(saturation_window, "saturation_window", low=0, high=1, low_open=True, high_open=True)
    saturation_share = checks.number(saturation_share, "saturation_share", low=0, high=1, low_open=True, high_open=True)
    batch_size = checks.integer(batch_size, "batch_size", low=1)
    checks.flag(progress, "progress")

    images = data.first_correct(model, test, n_images)
    x, label = images.x, images.y
    target = attacks.least_likely(model, x)
    n_pixels = x[0].numel()
    step = step_l2 if step_l2 > 0 else alpha * math.sqrt(n_pixels)
    sizes = {EM: dict(alpha=alpha), EP: dict(step_l2=step)}
    sources = _shared.loss_sources(kappa)
    window_start = round((1 - saturation_window) * max_iter)

    measured, curves = {}, {}
    for setting, size in sizes.items():
        measured[setting], curves[setting] = {}, {}
        for name, loss in sources.items():
            options = dict(target=target, loss=loss, max_iter=max_iter, progress=progress, **size)
            with metrics.Timer() as t:
                first = attacks.batched(ifgs, model, x, size=batch_size, **options)
            full = attacks.batched(ifgs, model, x, size=batch_size, stop_on_success=False, trace=True, **options)
            # Both runs take the same steps until an image first reaches its target.
            if not torch.equal(first.iterations, full.iterations):
                raise RuntimeError(f"{setting} / {name}: the stopped and the full run disagree on the first success")
            reached = first.success
            nan = torch.full((n_images,), math.nan)
            tr = full.trace
            measured[setting][name] = {
                "iterations": first.iterations, "reached": reached, "time_s": t.seconds,
                # The least perturbation that reaches the target; undefined (NaN, saved as null) if never reached.
                "least_l2": torch.where(reached, first.norms(2), nan),
                "least_linf": torch.where(reached, first.norms(math.inf), nan),
                "first_step_l2": tr["perturbation_norm"][1],
                "target_logit": {"start": tr["logit_label"][0], "window_start": tr["logit_label"][window_start],
                                 "end": tr["logit_label"][max_iter]},
                "grad_norm": {"start": tr["grad_norm"][0], "end": tr["grad_norm"][max_iter]},
            }
            curves[setting][name] = {key: _quartiles(tr[key]) for key in CURVES}

    derived = _derived(measured, window_start)
    return _shared.jsonable({
        "dataset": test.name,
        "images": {"test_index": images.index, "label": label, "target": target},
        "settings": {"alpha": alpha, "step_l2": step, "n_pixels": n_pixels, "max_iter": max_iter,
                     "step_l2_rule": "given" if step_l2 > 0 else "alpha * sqrt(pixels)"},
        "measured": measured,
        "curves": curves,
        "derived": derived,
        "claims": _claims(derived, saturation_window, saturation_share, max_iter),
    })


def _derived(measured: dict, window_start: int) -> dict[str, Any]:
    """What the claims compare, from the per-image numbers."""

    def share(m):
        # The share of the mean target logit's total gain made in the last window.
        start, mid, end = (m["target_logit"][k].double().mean().item() for k in ("start", "window_start", "end"))
        return (end - mid) / (end - start) if end != start else math.nan

    table = {key: {s: {} for s in SETTINGS} for key in
             ("mean_iterations", "median_least_l2", "median_first_step_l2", "saturation_share", "median_grad_start",
              "median_grad_end", "reached")}
    for s in SETTINGS:
        for name, m in measured[s].items():
            table["mean_iterations"][s][name] = m["iterations"].double().mean().item()
            table["median_least_l2"][s][name] = _median(m["least_l2"])
            table["median_first_step_l2"][s][name] = _median(m["first_step_l2"])
            table["saturation_share"][s][name] = share(m)
            table["median_grad_start"][s][name] = _median(m["grad_norm"]["start"])
            table["median_grad_end"][s][name] = _median(m["grad_norm"]["end"])
            table["reached"][s][name] = m["reached"].double().mean().item()
    table["window_start"] = window_start
    return table


def _claims(d: dict, window: float, threshold: float, max_iter: int) -> dict[str, dict]:
    iters, least, first, shares = (d[k] for k in ("mean_iterations", "median_least_l2", "median_first_step_l2",
                                                  "saturation_share"))
    grad_start, grad_end = d["median_grad_start"][EM]["CE"], d["median_grad_end"][EM]["CE"]

    def others(table, name):
        return [v for k, v in table.items() if k != name]

    def listed(table, digits):
        return ", ".join(f"{k} {v:.{digits}f}" for k, v in table.items())

    claim = _shared.claim
    claims = {
        "ce_fewest_iterations": claim(
            "CE needs the fewest iterations (equal perturbation)", iters[EP]["CE"] < min(others(iters[EP], "CE")),
            f"mean iterations: {listed(iters[EP], 1)}", mean_iterations=iters[EP]),
        "ce_sign_most_iterations": claim(
            "CE-sign needs the most iterations (equal perturbation)",
            iters[EP]["CE-sign"] > max(others(iters[EP], "CE-sign")),
            f"mean iterations: {listed(iters[EP], 1)}", mean_iterations=iters[EP]),
        "m_logit_slower_than_logit": claim(
            "M-logit needs more iterations than logit (equal perturbation)", iters[EP]["M-logit"] > iters[EP]["logit"],
            f"M-logit {iters[EP]['M-logit']:.1f} vs logit {iters[EP]['logit']:.1f}", mean_iterations=iters[EP]),
        "m_logit_less_perturbation_than_logit": claim(
            "M-logit's least L2 perturbation is smaller than logit's (equal perturbation)",
            least[EP]["M-logit"] < least[EP]["logit"],
            f"median least L2: M-logit {least[EP]['M-logit']:.3f} vs logit {least[EP]['logit']:.3f}",
            median_least_l2=least[EP]),
        "ce_least_perturbation": claim(
            "CE's least L2 perturbation is the smallest (equal perturbation)",
            least[EP]["CE"] < min(others(least[EP], "CE")),
            f"median least L2: {listed(least[EP], 3)}", median_least_l2=least[EP]),
        "ce_sign_largest_step": claim(
            "CE-sign adds the largest step (equal multiplier)", first[EM]["CE-sign"] > max(others(first[EM], "CE-sign")),
            f"median first-step L2: {listed(first[EM], 3)}", median_first_step_l2=first[EM]),
        "ce_gradient_decreases": claim(
            "CE's gradient norm decreases along the attack (equal multiplier)", grad_end < grad_start,
            f"median ||grad CE||: {grad_start:.3g} at the start, {grad_end:.3g} at iteration {max_iter}",
            median_start=grad_start, median_end=grad_end),
    }
    for setting, short in ((EM, "equal_multiplier"), (EP, "equal_perturbation")):
        for name, key in (("CE", "ce"), ("CE-sign", "ce_sign")):
            claims[f"{key}_saturates_{short}"] = claim(
                f"{name}'s target logit saturates ({setting})", shares[setting][name] < threshold,
                f"last {window:.0%} of the iterations: {shares[setting][name]:.1%} of the gain",
                share=shares[setting][name], threshold=threshold)
        claims[f"logit_keeps_increasing_{short}"] = claim(
            f"logit's target logit keeps increasing ({setting})", shares[setting]["logit"] >= threshold,
            f"last {window:.0%} of the iterations: {shares[setting]['logit']:.1%} of the gain",
            share=shares[setting]["logit"], threshold=threshold)
    return claims


def table_1(results: dict[str, Any], paper: dict[str, str]):
    """Table I: per loss and setting, the mean and standard deviation of the
    iterations to the target (an image that never reaches it counts as
    ``max_iter``), the share that reached it, and the time; ``paper`` gives
    the paper's column (loss -> text)."""
    import pandas as pd

    rows = {}
    for name in _shared.LOSS_NAMES:
        row = {}
        for setting in SETTINGS:
            m = results["measured"][setting][name]
            it = torch.as_tensor(m["iterations"], dtype=torch.float64)
            reached = torch.as_tensor(m["reached"], dtype=torch.float64)
            row[(setting, "iterations")] = f"{it.mean():.1f} ± {it.std():.1f}" if len(it) > 1 else f"{it.mean():.1f}"
            row[(setting, "reached")] = f"{reached.mean():.0%}"
            row[(setting, "time (s)")] = f"{m['time_s']:.1f}"
        row[("paper", "")] = paper[name]
        rows[name] = row
    table = pd.DataFrame(rows).T
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table.rename_axis("loss")


def model_record(info: Mapping[str, Any]) -> dict[str, Any]:
    """What the provenance keeps of the LeNet: its recipe, accuracy and training."""
    return {k: info[k] for k in ("config", "test_accuracy", "from_cache", "train_seconds")}


def model_frame(info: Mapping[str, Any], dataset: str):
    """The network attacked, as the page shows it."""
    import pandas as pd

    return pd.Series({"model": "LeNet", "data": f"{dataset} (stand-in for ImageNet)",
                      "training epochs": info["config"]["epochs"], "test accuracy": f"{info['test_accuracy']:.4f}",
                      "this run": "loaded from the cache" if info["from_cache"] else "trained now"}, name="").to_frame()


def texts(results: dict[str, Any]) -> dict[str, str]:
    """The numbers and the measured-dependent sentences the prose quotes: glue name -> text."""
    results = _shared.nan_for_none(results)
    d, claims, s = results["derived"], results["claims"], results["settings"]
    max_iter, key = s["max_iter"], _shared.key_of
    out = {
        "step_l2": f"{s['step_l2']:.4f}",
        "alpha_text": f"{s['alpha']:.5f} (= {s['alpha'] * 255:.3g}/255)",
        "n_images_text": f"{len(results['images']['target'])}",
        "max_iter_text": f"{max_iter}",
        "window_iters": f"{max_iter - d['window_start']}",
        "grad_ce_start": f"{d['median_grad_start'][EM]['CE']:.2f}",
        "grad_ce_end": f"{d['median_grad_end'][EM]['CE']:.2f}",
        "ifgs_final_target_prob": f"{results['curves'][EM]['CE-sign']['prob_label']['mean'][max_iter]:.2f}",
        "ifgs_reached": f"{d['reached'][EM]['CE-sign']:.0%}",
        "ifgs_iterations": f"{d['mean_iterations'][EM]['CE-sign']:.0f}",
        "n_replicated": _shared.n_holding(claims),
    }
    for setting, short in ((EM, "em"), (EP, "ep")):
        for name in _shared.LOSS_NAMES:
            k = key(name)
            out[f"it_{short}_{k}"] = f"{d['mean_iterations'][setting][name]:.1f}"
            out[f"reached_{short}_{k}"] = f"{d['reached'][setting][name]:.0%}"
            out[f"l2_{short}_{k}"] = f"{d['median_least_l2'][setting][name]:.2f}"
            out[f"share_{short}_{k}"] = f"{d['saturation_share'][setting][name]:.1%}"
            out[f"step_{short}_{k}"] = f"{d['median_first_step_l2'][setting][name]:.3f}"
    out.update(_shared.verdicts(claims))

    most = [n for n in _shared.LOSS_NAMES if d["reached"][EM][n] >= 0.5]
    few = [n for n in _shared.LOSS_NAMES if d["reached"][EM][n] < 0.5]
    steps = sorted(d["median_first_step_l2"][EM].values())
    em = f"The largest first step is {steps[-1] / steps[0]:.0f} times the smallest. " if steps[0] > 0 else ""
    if most and few:
        em += (f"Within {max_iter} iterations, {_shared.names_text(most)} bring{'s' if len(most) == 1 else ''} most "
               f"images to their target; {_shared.names_text(few)} do{'es' if len(few) == 1 else ''} not.")
    elif most:
        em += f"Within {max_iter} iterations every loss brings most images to their target."
    else:
        em += f"Within {max_iter} iterations no loss brings most images to their target."
    out["em_summary"] = em
    out["em_saturation"] = (
        f"With an equal multiplier, {_shared.names_text(few)} leave{'s' if len(few) == 1 else ''} most images short "
        "of the target (Figure 2), so the target logit is still climbing out of S1 when the run ends: there the test "
        "cannot see saturation, whatever its verdict." if few else
        "With an equal multiplier every loss brings most images to the target, so the test applies there too.")

    ends = torch.as_tensor(results["measured"][EP]["CE"]["grad_norm"]["end"], dtype=torch.float64)
    zero = (ends == 0).double().mean().item()
    start, end = d["median_grad_start"][EP]["CE"], d["median_grad_end"][EP]["CE"]
    if claims["ce_saturates_equal_perturbation"]["holds"]:
        text = (f"CE's gradient vanishes deep in the target class: with an equal perturbation its median norm is "
                f"{end:.1e} at the last iteration (exactly zero for {zero:.0%} of the images), against {start:.2f} "
                "at the first.")
    elif zero < 0.5:
        text = (f"CE's gradient does shrink as the images go deep into the target class: with an equal perturbation "
                f"its median norm is {end:.1e} at the last iteration, against {start:.2f} at the first. But the "
                "dynamic multiplier of that setting rescales any gradient that is not exactly zero to a full step, "
                f"and the gradient is exactly zero for {zero:.0%} of the images at the last iteration. The paper's "
                f"limit needs the gradient to vanish in floating point; within {max_iter} steps on this model, it "
                "mostly does not.")
    else:
        text = (f"CE's gradient shrinks as the images go deep into the target class (median norm {end:.1e} at the "
                f"last iteration, exactly zero for {zero:.0%} of the images), yet the mean target logit still grows: "
                "the images whose gradient has not vanished carry it.")
    out["ce_saturation"] = text

    if claims["ce_sign_largest_step"]["holds"] and claims["ce_sign_most_iterations"]["holds"]:
        out["fig4_reading"] = ("CE-sign takes the largest steps with an equal multiplier yet needs the most "
                               "iterations with equal steps: the size of its step, not its direction, is why IFGS "
                               "looks fast.")
    elif claims["ce_sign_largest_step"]["holds"]:
        out["fig4_reading"] = ("CE-sign takes the largest steps with an equal multiplier, but with equal steps it is "
                               "not the slowest here, so its direction is not shown to be the worst on this build.")
    else:
        out["fig4_reading"] = ("CE-sign does not take the largest steps here, so the paper's explanation of its "
                               "speed does not apply.")
    return out
