"""DeepFool Sec. 4.3: fine-tuning the Table 1 networks on adversarial examples
(Figures 6-9, Table 3).

The paper's protocol, per network of Table 1 (:mod:`.table1`, the same cached
weights as the Table 1 chapter): the adversarial examples of the training set
are computed once, on the original network; the network is then trained for
``epochs`` (5) extra epochs, with its learning rate multiplied by
``lr_factor`` (0.5: "decreased by 50%") and its own optimiser, on the
perturbed training set only, the same perturbed set in every epoch. Three
runs per network: DeepFool's adversarials (``"deepfool"``), fast gradient
sign's at the paper's eps (``"fgsm"``) and the clean images (``"clean"``).
Figure 7 scales DeepFool's perturbations by ``alpha``; Figure 9 fine-tunes
NIN on fast gradient sign's adversarials with the rate decreased by 90%.

Every fine-tuned network is cached by :func:`advlib.train.cached` under a
recipe holding the base network's key, the perturbation (attack, options,
alpha, the training subset), the fine-tuning and the measurement protocol.
Its robustness after each extra epoch is measured inside the one
:func:`advlib.train.fit` call (``on_epoch``) and cached with the weights, so
a rebuild trains nothing and attacks nothing but the original networks
(epoch 0).

Choices the paper leaves open, stated in the chapter:

- the adversarials of the training set move away from the *true* label (the
  label they are trained with); an image the network already misclassifies
  is kept as it is;
- a perturbation scaled by ``alpha`` is clipped back into the image box;
- rho_adv is estimated on the same first ``n_test`` test images for every
  network and epoch, each attacked away from the label that network gives it
  (``Delta(x; k)`` does not involve the true label), so the curves differ
  only by the network;
- fast gradient sign's eps is the smallest that misclassifies ``fgsm_fraction``
  (90%) of the training subset, on the original network (Table 1's protocol);
  fast gradient sign's robustness estimate (Figure 9) is Table 1's: the mean
  ``||r||_2 / ||x||_2`` at the smallest eps that misclassifies 90% of the test
  images.

Example::

    results = run(n_train=700, n_test=50)
    results["table3"]["LeNet (MNIST)"]["deepfool"], results["claims"]["deepfool_first_epoch"]["holds"]
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import attacks, checks, data, distributed, metrics, train
from ..attacks import deepfool, fgsm, fgsm_min_eps
from . import _shared, table1
from ._shared import claim

RUNS = ("deepfool", "fgsm", "clean")
"""The three fine-tuning runs of every network, in the paper's order."""

RUN_NAMES = {"deepfool": "DeepFool", "fgsm": "fast gradient sign", "clean": "clean"}


def datasets(parameters: Mapping[str, Any]) -> set[str]:
    return {parameters.get("mnist_rows_dataset", "fashion-mnist"), parameters.get("cifar_rows_dataset", "fashion-mnist-32rgb")}


# ---------------------------------------------------------------- measuring robustness


def rho_deepfool(model: nn.Module, x: Tensor, *, deepfool_options: Mapping[str, Any], batch: int = 500) -> dict[str, float]:
    """rho_adv of ``model`` on the images ``x`` estimated by DeepFool
    (``deepfool_options``), every image attacked away from the label
    ``model`` gives it: ``rho_deepfool`` the mean ``||r||_2 / ||x||_2``,
    ``deepfool_success`` the share flipped (an unflipped image counts with its
    last iterate), ``deepfool_iterations`` the mean iterations."""
    res = attacks.batched(deepfool, model, x, size=batch, **deepfool_options)
    return {"rho_deepfool": metrics.rho_adv(x, res.perturbation), "deepfool_success": res.success_rate,
            "deepfool_iterations": res.iterations.double().mean().item()}


def rho_fgsm(model: nn.Module, x: Tensor, *, fraction: float = 0.9, batch: int = 500) -> dict[str, float | None]:
    """rho_adv of ``model`` on ``x`` estimated by fast gradient sign, Table 1's
    protocol: at ``fgsm_eps``, the smallest eps that misclassifies ``fraction``
    of ``x`` (away from the labels ``model`` gives), the mean ``||r||_2 / ||x||_2``
    over all of ``x``. Both ``None`` when no eps reaches that share: fast
    gradient sign then reports no finite robustness at all."""
    # eps = 1 turns every pixel to 0 or 1: a larger step clips to the same images. A network
    # fine-tuned on fast gradient sign's examples can resist it even there (the paper saw
    # rates the method could not reach).
    if attacks.batched(fgsm, model, x, size=batch, eps=1.0).success_rate < fraction:
        return {"rho_fgsm": None, "fgsm_eps": None}
    eps, res = fgsm_min_eps(model, x, fraction=fraction, batch_size=batch)
    return {"rho_fgsm": metrics.rho_adv(x, res.perturbation), "fgsm_eps": eps}


def test_error(model: nn.Module, test: data.Dataset) -> float:
    return 1.0 - train.accuracy(model, test.x, test.y)


def scaled(x: Tensor, r: Tensor, alpha: float) -> Tensor:
    """``x + alpha * r`` clipped into the box [0, 1] (Figure 7's magnified perturbations)."""
    return (x + alpha * r).clamp(0.0, 1.0)


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else ("inf" if v == math.inf else v)) for k, v in options.items()}


# ---------------------------------------------------------------- one network, its fine-tunings


class _Network:
    """One Table 1 network, its training subset and test images, and its
    fine-tunings. The attacks of the training subset run at most once, and
    only when a fine-tuning is not in the cache; epoch 0 (the original
    network) is measured once."""

    def __init__(self, label, config, *, n_train, n_test, n_test_error, epochs, deepfool_options, fgsm_fraction,
                 batch, cache_dir, progress):
        self.label, self.config, self.epochs = label, config, epochs
        self.deepfool_options, self.fgsm_fraction, self.batch = deepfool_options, fgsm_fraction, batch
        self.cache_dir, self.progress = cache_dir, progress
        self.model, self.info = train.trained(config, cache_dir=cache_dir, progress=progress)
        options = dict(config.data_options)
        # The perturbed set is drawn from the images the network was trained on.
        limits = [n for n in (n_train, config.train_limit) if n]
        self.train_set = data.load(config.dataset, "train", limit=min(limits) if limits else None, **options)
        self.test = data.load(config.dataset, "test", limit=n_test_error or None, **options)
        self.x_rho = data.load(config.dataset, "test", limit=n_test or None, **options).x
        self.measure = {"n_test": len(self.x_rho), "deepfool": _jsonable(deepfool_options), "label": "the network's own",
                        "n_test_error": len(self.test)}

    # -- the original network

    @functools.cached_property
    def error0(self) -> float:
        return test_error(self.model, self.test)

    @functools.cached_property
    def deepfool0(self) -> dict[str, float]:
        return rho_deepfool(self.model, self.x_rho, deepfool_options=self.deepfool_options, batch=self.batch)

    @functools.cached_property
    def fgsm0(self) -> dict[str, float | None]:
        return rho_fgsm(self.model, self.x_rho, fraction=self.fgsm_fraction, batch=self.batch)

    # -- the perturbed training sets

    @functools.cached_property
    def _deepfool_train(self):
        # Away from the true label, the one the example is trained with.
        return attacks.batched(deepfool, self.model, self.train_set.x, size=self.batch, label=self.train_set.y,
                               progress=self.progress, **self.deepfool_options)

    @functools.cached_property
    def _fgsm_train(self):
        return fgsm_min_eps(self.model, self.train_set.x, label=self.train_set.y, fraction=self.fgsm_fraction,
                            batch_size=self.batch)

    def perturbation(self, attack: str, alpha: float) -> dict[str, Any]:
        """What goes into the recipe about the perturbed set."""
        out: dict[str, Any] = {"attack": attack, "n_train": len(self.train_set), "label": "true"}
        if attack == "deepfool":
            out.update(options=_jsonable(self.deepfool_options), alpha=alpha)
        elif attack == "fgsm":
            # eps is fixed by this rule on the base network and the subset, both in the recipe.
            out.update(options={"p": "inf", "clip": [0.0, 1.0], "eps": "the smallest misclassifying the fraction",
                                "fraction": self.fgsm_fraction}, alpha=alpha)
        return out

    def perturbed(self, attack: str, alpha: float) -> tuple[Tensor, dict[str, float]]:
        """The training images to fine-tune on, and what their perturbations are."""
        x = self.train_set.x
        if attack == "clean":
            return x, {"rho_train": 0.0}
        if attack == "deepfool":
            res, stats = self._deepfool_train, {}
        else:
            eps, res = self._fgsm_train
            stats = {"fgsm_eps": eps}
        x_adv = scaled(x, res.perturbation, alpha)
        # The share the scaled, clipped perturbation leaves misclassified by the original network.
        wrong = train.predict(self.model, x_adv) != self.train_set.y
        return x_adv, {**stats, "attack_success": res.success_rate, "rho_train": metrics.rho_adv(x, x_adv - x),
                       "misclassified_share": wrong.double().mean().item()}

    # -- a fine-tuning

    def fine_tune(self, attack: str, *, alpha: float = 1.0, lr_factor: float, with_fgsm: bool = False) -> dict[str, Any]:
        """A copy of the network fine-tuned (cached), with its robustness after
        each extra epoch; epoch 0 is the original network."""
        config = self.config
        lr = lr_factor * config.lr
        measure = {**self.measure, "fgsm_fraction": self.fgsm_fraction if with_fgsm else None}
        recipe = {
            "kind": "deepfool-finetuning",
            "base": {"key": config.key(), "config": config.as_dict()},
            "perturbation": self.perturbation(attack, alpha),
            "fine_tune": {"epochs": self.epochs, "lr": lr, "lr_factor": lr_factor, "optimizer": config.optimizer,
                          "momentum": config.momentum, "weight_decay": config.weight_decay,
                          "batch_size": config.batch_size, "seed": config.seed},
            "measure": measure,
        }

        def record(epoch: int, model: nn.Module) -> dict[str, Any]:
            out = rho_deepfool(model, self.x_rho, deepfool_options=self.deepfool_options, batch=self.batch)
            return {**out, **rho_fgsm(model, self.x_rho, fraction=self.fgsm_fraction, batch=self.batch)} if with_fgsm else out

        def fit(model: nn.Module) -> dict[str, Any]:
            x_train, stats = self.perturbed(attack, alpha)
            history = train.fit(
                model, x_train, self.train_set.y, epochs=self.epochs, lr=lr, optimizer=config.optimizer,
                momentum=config.momentum, weight_decay=config.weight_decay, batch_size=config.batch_size,
                seed=config.seed, progress=self.progress, desc=f"{config.arch}: {attack} x{alpha:g}", on_epoch=record,
            )
            return {"history": history, "perturbed_set": stats, "test_error": test_error(model, self.test)}

        name = f"{config.arch}-{config.dataset}-finetuned"
        if distributed.sharing() and not train.in_cache(recipe, name, self.cache_dir):
            self.perturbed(attack, alpha)  # the training set's attack, split over the ranks; rank 0 then trains alone
        _, info = train.cached(recipe, lambda: copy.deepcopy(self.model), fit, cache_dir=self.cache_dir,
                               name=name, progress=self.progress)
        history = info["history"]
        epoch0 = {**self.deepfool0, **(self.fgsm0 if with_fgsm else {})}
        return {
            "attack": attack, "alpha": alpha, "lr": lr, "lr_factor": lr_factor,
            "epochs": [0] + [h["epoch"] for h in history],
            **{k: [epoch0[k]] + [h[k] for h in history] for k in epoch0},
            "loss": [h["loss"] for h in history],
            "train_accuracy": [h["train_accuracy"] for h in history],
            "test_error": info["test_error"],
            "test_error_before": self.error0,
            "perturbed_set": info["perturbed_set"],
            "key": info["key"], "from_cache": info["from_cache"], "train_seconds": info["train_seconds"],
        }

    def describe(self) -> dict[str, Any]:
        paper_data = table1.ROWS[self.label].paper_data
        return {
            "data": table1.data_label(self.config.dataset, paper_data),
            "dataset": self.config.dataset,
            "stands_in_for": table1.stands_in_for(self.config.dataset, paper_data),
            "model": table1.ROWS[self.label].model_label,
            "base": {"key": self.config.key(), "config": self.config.as_dict(), "test_error": self.error0,
                     "from_cache": self.info["from_cache"], "train_seconds": self.info["train_seconds"]},
            "n_train": len(self.train_set), "n_test_rho": len(self.x_rho), "n_test_error": len(self.test),
            "classes": list(self.train_set.classes),
            # For the provenance record: the training subset perturbed, the test images.
            "datasets": {"train": self.train_set.describe(), "test": self.test.describe()},
        }


# ---------------------------------------------------------------- Figure 8


def _class_changes(model, referee, train_set, *, deepfool_options, alphas, n_pool, n_show, batch):
    """Training images whose DeepFool perturbation, scaled by ``max(alphas)``,
    a second network (``referee``: trained on the same clean data, never
    attacked) reads as another class than the true one - a stand-in for the
    reader's eye. Returns the share of the pool that happens at each alpha and
    up to ``n_show`` images the referee is surest about, one per true class."""
    pool = train_set.x[:n_pool]
    y = train_set.y[:n_pool]
    res = attacks.batched(deepfool, model, pool, size=batch, label=y, **deepfool_options)
    referee_clean = train.predict(referee, pool)
    share, shown = {}, []
    for alpha in alphas:
        x_alpha = scaled(pool, res.perturbation, alpha)
        with torch.no_grad():
            probs = torch.softmax(referee.eval()(x_alpha), dim=1)
        read = probs.argmax(1)
        # Only images both networks got right and DeepFool had to move: a change is the perturbation's doing.
        eligible = (referee_clean == y) & (train.predict(model, pool) == y) & res.success
        changed = eligible & (read != y)
        share[f"{alpha:g}"] = {"changed": int(changed.sum()), "eligible": int(eligible.sum()),
                               "share": changed.double().sum().item() / max(int(eligible.sum()), 1)}
        if alpha == max(alphas):
            # The referee's surest readings, one per true class, so the figure is not one class over and over.
            order = torch.argsort(torch.where(changed, probs.max(1).values, torch.tensor(-1.0)), descending=True)
            picks, seen = [], set()
            for i in order.tolist():
                if changed[i] and int(y[i]) not in seen and len(picks) < n_show:
                    picks.append(i)
                    seen.add(int(y[i]))
            net_read = train.predict(model, x_alpha)
            shown = [
                {
                    "index": i,
                    "true": train_set.classes[int(y[i])],
                    "referee_reads": train_set.classes[int(read[i])],
                    "referee_confidence": probs[i].max().item(),
                    "network_reads": train_set.classes[int(net_read[i])],
                    "rho": (alpha * res.perturbation[i]).norm().item() / pool[i].norm().item(),
                    "image": _rounded(pool[i]),
                    "perturbed": _rounded(x_alpha[i]),
                }
                for i in picks
            ]
    return {"alpha": max(alphas), "n_pool": int(len(pool)), "share": share, "examples": shown}


def _rounded(image: Tensor) -> list:
    """An image as nested lists, 3 decimals (the JSON stays small; only drawn)."""
    return (image.squeeze(0) if image.shape[0] == 1 else image.permute(1, 2, 0)).mul(1000).round().div(1000).tolist()


# ---------------------------------------------------------------- the chapter


def compute(parameters: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """:func:`run` with the notebook's ``parameters`` (``given``: more of run's
    arguments, e.g. networks already loaded)."""
    return run(**_shared.arguments(run, parameters, batch="attack_batch"), network_overrides=table1.overrides_of(parameters), **given)


def run(
    *,
    mnist_rows_dataset: str = "fashion-mnist",
    cifar_rows_dataset: str = "fashion-mnist-32rgb",
    rows: Sequence[str] = tuple(table1.ROWS),
    network_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    n_train: int = 700,
    n_test: int = 50,
    n_test_error: int = 1000,
    epochs: int = 5,
    lr_factor: float = 0.5,
    alphas: Sequence[float] = (1.0, 2.0, 3.0),
    figure7_row: str | None = "LeNet (MNIST)",
    figure8_referee: str | None = "FC500-150-10 (MNIST)",
    n_figure8_pool: int = 500,
    n_figure8: int = 6,
    figure9_row: str | None = "NIN (CIFAR-10)",
    figure9_lr_factor: float = 0.1,
    fgsm_fraction: float = 0.9,
    overshoot: float = 0.02,
    max_iter: int = 50,
    candidates: int = 10,
    batch: int = 500,
    cache_dir=None,
    progress: bool = False,
) -> dict[str, Any]:
    """The chapter's measurements.

    Args:
        mnist_rows_dataset, cifar_rows_dataset: the data of the MNIST and the
            CIFAR-10 rows (the paper's or a stand-in), as in the Table 1 chapter.
        rows: the Table 1 rows to fine-tune.
        network_overrides: per row, :class:`~advlib.train.TrainConfig` fields
            replacing ``table1.RECIPES`` (the Table 1 chapter's same overrides
            give the same networks).
        seed: the networks' seed (Table 1's), also the fine-tuning's shuffling.
        n_train: the perturbed training sets are the first this many training
            images of each network (0: all it was trained on).
        n_test: rho_adv is estimated on the first this many test images (0: all).
        n_test_error: the test error (Table 3) is measured on the first this
            many test images (0: all).
        epochs: the extra epochs (the paper's 5).
        lr_factor: the fine-tuning rate over the row's training rate (0.5).
        alphas: Figure 7's factors on DeepFool's perturbations.
        figure7_row: the network of Figure 7 (``None``: no Figure 7).
        figure8_referee: the network that reads Figure 8's images (``None``: no
            Figure 8); it must take the same images as ``figure7_row``.
        n_figure8_pool, n_figure8: Figure 8 searches the first ``n_figure8_pool``
            training images and shows up to ``n_figure8``.
        figure9_row: the network of Figure 9 (``None``: no Figure 9).
        figure9_lr_factor: its fine-tuning rate factor (the paper's 0.1).
        fgsm_fraction: fast gradient sign's eps misclassifies this share (0.9).
        overshoot, max_iter, candidates: DeepFool's (the book's defaults).
        batch: images per attack call.
        cache_dir: the training cache (default ``$ADVLIB_CACHE``).
        progress: progress bars of the fine-tunings and the training-set attacks.

    Returns:
        A JSON-able dict: ``rows`` (per network: its data, base network, the
        three ``runs`` with per-epoch ``rho_deepfool``, ``rho_fgsm``,
        ``test_error``, epoch 0 the original network), ``figure7``,
        ``figure8``, ``figure9``, ``table3``, ``protocol``, ``seconds`` and
        ``claims``.
    """
    rows = tuple(rows)
    if not rows or any(r not in table1.ROWS for r in rows) or len(set(rows)) != len(rows):
        raise ValueError(f"rows must be distinct Table 1 rows ({', '.join(table1.ROWS)}), got {rows!r}")
    overrides = dict(network_overrides or {})
    unknown = [k for k in overrides if k not in table1.ROWS]
    if unknown:
        raise ValueError(f"network_overrides: unknown row(s) {unknown}; rows: {', '.join(table1.ROWS)}")
    checks.integer(seed, "seed", low=0)
    checks.integer(n_train, "n_train", low=0)
    checks.integer(n_test, "n_test", low=0)
    checks.integer(n_test_error, "n_test_error", low=0)
    checks.integer(epochs, "epochs", low=1)
    lr_factor = checks.number(lr_factor, "lr_factor", low=0, low_open=True)
    figure9_lr_factor = checks.number(figure9_lr_factor, "figure9_lr_factor", low=0, low_open=True)
    alphas = tuple(checks.number(a, "alphas", low=0, low_open=True) for a in alphas)
    if 1.0 not in alphas:
        raise ValueError(f"alphas must include 1 (the DeepFool run itself), got {alphas!r}")
    for name, row in (("figure7_row", figure7_row), ("figure9_row", figure9_row)):
        if row is not None and row not in rows:
            raise ValueError(f"{name} must be None or one of rows ({', '.join(rows)}), got {row!r}")
    if figure8_referee is not None and (figure7_row is None or figure8_referee not in rows or figure8_referee == figure7_row):
        raise ValueError(f"figure8_referee must be None or a row of rows other than figure7_row, got {figure8_referee!r}")
    checks.integer(n_figure8_pool, "n_figure8_pool", low=1)
    checks.integer(n_figure8, "n_figure8", low=1)
    fgsm_fraction = checks.number(fgsm_fraction, "fgsm_fraction", low=0, low_open=True, high=1)
    checks.integer(batch, "batch", low=1)
    checks.flag(progress, "progress")
    deepfool_options = {"p": 2, "overshoot": checks.number(overshoot, "overshoot", low=0),
                        "max_iter": checks.integer(max_iter, "max_iter", low=1),
                        "candidates": checks.integer(candidates, "candidates", low=2), "clip": (0.0, 1.0)}
    nets: dict[str, _Network] = {}
    results: dict[str, Any] = {"rows": {}}
    seconds: dict[str, float] = {}
    for label in rows:
        start = time.perf_counter()
        dataset = table1.dataset_of(label, mnist_rows_dataset=mnist_rows_dataset, cifar_rows_dataset=cifar_rows_dataset)
        config = table1.config(label, dataset, seed=seed, **overrides.get(label, {}))
        net = nets[label] = _Network(label, config, n_train=n_train, n_test=n_test, n_test_error=n_test_error,
                                     epochs=epochs, deepfool_options=deepfool_options, fgsm_fraction=fgsm_fraction,
                                     batch=batch, cache_dir=cache_dir, progress=progress)
        runs = {attack: net.fine_tune(attack, lr_factor=lr_factor) for attack in RUNS}
        results["rows"][label] = {**net.describe(), "runs": runs}
        seconds[label] = time.perf_counter() - start
    results["table3"] = {
        label: {"original": r["base"]["test_error"], **{a: r["runs"][a]["test_error"] for a in RUNS}}
        for label, r in results["rows"].items()
    }

    if figure7_row is not None:
        start = time.perf_counter()
        net = nets[figure7_row]
        # alpha = 1 is the row's DeepFool run: the cache hands it back.
        runs = {f"{a:g}": net.fine_tune("deepfool", alpha=a, lr_factor=lr_factor) for a in alphas}
        results["figure7"] = {"row": figure7_row, "alphas": list(alphas), "runs": runs}
        if figure8_referee is not None:
            results["figure8"] = {
                "row": figure7_row, "referee": figure8_referee,
                **_class_changes(net.model, nets[figure8_referee].model, net.train_set, deepfool_options=deepfool_options,
                                 alphas=alphas, n_pool=n_figure8_pool, n_show=n_figure8, batch=batch),
            }
        seconds["figures 7-8"] = time.perf_counter() - start

    if figure9_row is not None:
        start = time.perf_counter()
        curve = nets[figure9_row].fine_tune("fgsm", lr_factor=figure9_lr_factor, with_fgsm=True)
        if curve["rho_fgsm"][0] is None:
            raise RuntimeError(f"fast gradient sign misclassifies less than {fgsm_fraction:.0%} of {figure9_row}'s "
                               "test images at any eps: Figure 9 has nothing to normalise by")
        results["figure9"] = {
            "row": figure9_row,
            "lr_factor": figure9_lr_factor,
            "run": curve,
            "relative_deepfool": [v / curve["rho_deepfool"][0] for v in curve["rho_deepfool"]],
            # None where fast gradient sign found no eps (it then reports no finite robustness).
            "relative_fgsm": [None if v is None else v / curve["rho_fgsm"][0] for v in curve["rho_fgsm"]],
        }
        seconds["figure 9"] = time.perf_counter() - start

    results["protocol"] = {
        "epochs": epochs, "lr_factor": lr_factor, "figure9_lr_factor": figure9_lr_factor, "n_train": n_train,
        "n_test": n_test, "n_test_error": n_test_error, "deepfool": _jsonable(deepfool_options), "fgsm_fraction": fgsm_fraction,
        "seed": seed, "alphas": list(alphas),
    }
    results["seconds"] = seconds
    results["claims"] = claims(results)
    return results


# ---------------------------------------------------------------- the claims


def claims(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The paper's claims as inequalities on ``results`` (what :func:`run`
    returns, or the same read back from JSON): the claims tests call this on
    the saved numbers, so the verdicts are recomputed, never read."""
    rows = results["rows"]
    out: dict[str, dict[str, Any]] = {}

    first = {label: {"before": r["runs"]["deepfool"]["rho_deepfool"][0], "after": r["runs"]["deepfool"]["rho_deepfool"][1]}
             for label, r in rows.items()}
    out["deepfool_first_epoch"] = claim(
        "one extra epoch on DeepFool's adversarials raises rho_adv, on every network",
        all(v["after"] > v["before"] for v in first.values()),
        "; ".join(f"{k}: {v['before']:.3g} -> {v['after']:.3g} ({v['after'] / v['before'] - 1:+.0%})" for k, v in first.items()),
        rho=first,
    )

    last = {label: {a: r["runs"][a]["rho_deepfool"][-1] for a in ("deepfool", "fgsm")} for label, r in rows.items()}
    out["deepfool_beats_fgsm"] = claim(
        "after the extra epochs, DeepFool fine-tuning leaves a higher rho_adv than fast gradient sign fine-tuning, on every network",
        all(v["deepfool"] > v["fgsm"] for v in last.values()),
        "; ".join(f"{k}: {v['deepfool']:.3g} vs {v['fgsm']:.3g}" for k, v in last.items()),
        rho=last,
    )

    table3 = results["table3"]
    out["fgsm_higher_error"] = claim(
        "fast gradient sign fine-tuning ends with a higher test error than DeepFool fine-tuning, on every network (Table 3)",
        all(t["fgsm"] > t["deepfool"] for t in table3.values()),
        "; ".join(f"{k}: {t['fgsm']:.2%} vs {t['deepfool']:.2%}" for k, t in table3.items()),
        test_error={k: {"fgsm": t["fgsm"], "deepfool": t["deepfool"]} for k, t in table3.items()},
    )

    if "figure7" in results:
        f7 = results["figure7"]["runs"]
        lo, hi = f7["1"]["rho_deepfool"][-1], f7[f"{max(results['figure7']['alphas']):g}"]["rho_deepfool"][-1]
        top = f"{max(results['figure7']['alphas']):g}"
        out["alpha_lowers_robustness"] = claim(
            f"DeepFool perturbations magnified by alpha = {top} give a lower rho_adv after the extra epochs than alpha = 1 (Figure 7)",
            hi < lo,
            f"{results['figure7']['row']}: alpha = 1: {lo:.3g}, alpha = {top}: {hi:.3g}",
            rho={"1": lo, top: hi},
        )

    if "figure9" in results:
        f9 = results["figure9"]
        by_df, by_fg = f9["relative_deepfool"][-1], f9["relative_fgsm"][-1]
        # No eps at the end means fast gradient sign calls the network unbreakable: the largest
        # exaggeration there is (the original network always has an eps: run() measured it).
        said = "no eps misclassifies enough (no finite estimate)" if by_fg is None else f"{by_fg:.3g}"
        out["fgsm_exaggerates"] = claim(
            "after NIN's fine-tuning on fast gradient sign adversarials (lr decreased by 90%), fast gradient sign measures a larger relative gain in robustness than DeepFool (Figure 9)",
            by_fg is None or by_fg > by_df,
            f"{f9['row']}: rho_adv after {len(f9['relative_deepfool']) - 1} epochs relative to the original network's, "
            f"by fast gradient sign {said}, by DeepFool {by_df:.3g}",
            relative={"fgsm": by_fg, "deepfool": by_df},
        )
    return out


# ---------------------------------------------------------------- what the chapter shows


def _names(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _pct(v: float) -> str:
    return f"{v:.1%}"


def _gain(curve: Sequence[float], epoch: int) -> float:
    return curve[epoch] / curve[0] - 1


def record_data(run: Any, results: Mapping[str, Any]) -> None:
    """Name every row's data sets in the provenance ``run``, with what they stand in for."""
    for label, row in results["rows"].items():
        for split, described in row["datasets"].items():
            run.data(f"{label}: {split}", described, stands_in_for=row["stands_in_for"])


def networks_frame(results: Mapping[str, Any]):
    """Per network: its data, the original network, the perturbed sets (the
    mean ``||r||_2 / ||x||_2`` of each, fast gradient sign's eps) and the
    fine-tuning rate."""
    import pandas as pd

    rows = {}
    for label, r in results["rows"].items():
        df, fg = r["runs"]["deepfool"], r["runs"]["fgsm"]
        rows[label] = {
            "data": r["data"],
            "original test error": _pct(r["base"]["test_error"]),
            "original network": "loaded from the cache" if r["base"]["from_cache"] else f"trained now ({r['base']['train_seconds']:.0f} s)",
            "perturbed training images": r["n_train"],
            "DeepFool: mean ‖r‖/‖x‖": f"{df['perturbed_set']['rho_train']:.3f}",
            "fast gradient sign: eps": f"{fg['perturbed_set']['fgsm_eps']:.3f}",
            "fast gradient sign: mean ‖r‖/‖x‖": f"{fg['perturbed_set']['rho_train']:.3f}",
            "fine-tuning lr": f"{df['lr']:.3g} ({r['base']['config']['optimizer']})",
            "fine-tunings": ", ".join("cached" if r["runs"][a]["from_cache"] else f"trained now ({r['runs'][a]['train_seconds']:.0f} s)" for a in RUNS),
        }
    return pd.DataFrame(rows).T


def figure6_frame(results: Mapping[str, Any], published: Mapping[str, Any]):
    """rho_adv of each run after 1 and after all extra epochs, relative to the
    original network's, beside the paper's one-epoch gains."""
    import pandas as pd

    paper = published["first_epoch_gain"]["values"]
    out = {}
    for label, r in results["rows"].items():
        runs = r["runs"]
        last = runs["deepfool"]["epochs"][-1]
        row = {"original rho_adv": f"{runs['deepfool']['rho_deepfool'][0]:.3g}"}
        for a in RUNS:
            row[f"{RUN_NAMES[a]}: after 1"] = f"{_gain(runs[a]['rho_deepfool'], 1):+.0%}"
            row[f"{RUN_NAMES[a]}: after {last}"] = f"{_gain(runs[a]['rho_deepfool'], last):+.0%}"
        row["paper: DeepFool after 1"] = f"{paper[label]:+.0%}" if label in paper else "not stated"
        out[label] = row
    return pd.DataFrame(out).T


def table3_frame(results: Mapping[str, Any], published: Mapping[str, Any]):
    """Table 3: test error after the extra epochs, this build's over the paper's."""
    import pandas as pd

    paper, original = published["table3"]["values"], published["original_test_error"]["values"]
    rows = {}
    for label, t in results["table3"].items():
        rows[(label, "paper")] = {RUN_NAMES[a]: _pct(paper[label][a]) for a in RUNS} | {"original": _pct(original[label])}
        rows[(label, f"this build ({results['rows'][label]['data']})")] = (
            {RUN_NAMES[a]: _pct(t[a]) for a in RUNS} | {"original": _pct(t["original"])})
    frame = pd.DataFrame(rows).T
    frame.index.names = ["classifier", ""]
    return frame[["original", *(RUN_NAMES[a] for a in RUNS)]]


def texts(results: Mapping[str, Any]) -> dict[str, str]:
    """The pre-formatted numbers the chapter's prose glues in."""
    rows = results["rows"]
    out: dict[str, str] = {}
    gains = {label: _gain(r["runs"]["deepfool"]["rho_deepfool"], 1) for label, r in rows.items()}
    out["gain_first"] = ", ".join(f"{g:+.0%} ({label})" for label, g in gains.items())
    out["gain_first_range"] = f"{min(gains.values()):+.0%} to {max(gains.values()):+.0%}"
    last_gain = {label: {a: _gain(r["runs"][a]["rho_deepfool"], -1) for a in RUNS} for label, r in rows.items()}
    out["gain_last_deepfool"] = ", ".join(f"{g['deepfool']:+.0%}" for g in last_gain.values())
    out["gain_last_fgsm"] = ", ".join(f"{g['fgsm']:+.0%}" for g in last_gain.values())
    out["gain_last_clean"] = ", ".join(f"{g['clean']:+.0%}" for g in last_gain.values())
    lower = [label for label, g in last_gain.items() if g["fgsm"] < 0]
    out["fgsm_lower"] = "on " + (_names(lower) if lower else "no network")
    ahead = [f"{label} (test error {_pct(r['runs']['fgsm']['test_error'])} against {_pct(r['runs']['deepfool']['test_error'])})"
             for label, r in rows.items() if r["runs"]["fgsm"]["rho_deepfool"][-1] >= r["runs"]["deepfool"]["rho_deepfool"][-1]]
    out["fgsm_ahead"] = "on " + (_names(ahead) if ahead else "no network")
    out["rows_text"] = ", ".join(rows)
    t3 = results["table3"]
    out["t3_deepfool"] = ", ".join(_pct(t["deepfool"]) for t in t3.values())
    out["t3_fgsm"] = ", ".join(_pct(t["fgsm"]) for t in t3.values())
    out["t3_clean"] = ", ".join(_pct(t["clean"]) for t in t3.values())
    out["t3_original"] = ", ".join(_pct(t["original"]) for t in t3.values())
    size = {label: r["runs"]["fgsm"]["perturbed_set"]["rho_train"] / r["runs"]["deepfool"]["perturbed_set"]["rho_train"]
            for label, r in rows.items()}
    out["fgsm_size_ratio"] = f"{min(size.values()):.1f} to {max(size.values()):.1f}"
    p = results["protocol"]
    out["n_train"], out["n_test"], out["n_test_error"] = (str(p[k]) if p[k] else "all" for k in ("n_train", "n_test", "n_test_error"))
    out["epochs"], out["lr_factor"] = str(p["epochs"]), f"{p['lr_factor']:g}"
    if "figure7" in results:
        f7 = results["figure7"]
        out["f7_row"] = f7["row"]
        out["f7_last"] = ", ".join(f"{r['rho_deepfool'][-1]:.3g} (alpha = {a})" for a, r in f7["runs"].items())
        out["f7_error"] = ", ".join(f"{_pct(r['test_error'])} (alpha = {a})" for a, r in f7["runs"].items())
        out["f7_train_size"] = ", ".join(f"{r['perturbed_set']['rho_train']:.3f}" for r in f7["runs"].values())
    if "figure8" in results:
        f8 = results["figure8"]
        out["f8_referee"] = f8["referee"]
        out["f8_share"] = ", ".join(f"{v['share']:.0%} (alpha = {a})" for a, v in f8["share"].items())
        out["f8_eligible"] = str(next(iter(f8["share"].values()))["eligible"])
        out["f8_pool"] = str(f8["n_pool"])
    if "figure9" in results:
        f9 = results["figure9"]
        out["f9_row"] = f9["row"]
        out["f9_lr_factor"] = f"{f9['lr_factor']:g}"
        out["f9_deepfool"] = ", ".join(f"{v:.2f}" for v in f9["relative_deepfool"][1:])
        out["f9_fgsm"] = ", ".join("none" if v is None else f"{v:.2f}" for v in f9["relative_fgsm"][1:])
        above = [v is None or v > d for v, d in zip(f9["relative_fgsm"][1:], f9["relative_deepfool"][1:])]
        out["f9_above"] = f"{sum(above)} of {len(above)}"
        out["f9_error"] = _pct(f9["run"]["test_error"])
        out["f9_unreached"] = str(sum(v is None for v in f9["relative_fgsm"]))
        d1, g1 = f9["relative_deepfool"][1], f9["relative_fgsm"][1]
        by_fgsm = "finds no eps at all" if g1 is None else f"{g1:.2f} ({'lower' if g1 < 1 else 'not lower'})"
        out["f9_first"] = (f"DeepFool measures {d1:.2f} of the original robustness ({'lower' if d1 < 1 else 'not lower'}), "
                           f"fast gradient sign {by_fgsm}")
    claims_ = results["claims"]
    out["n_holding"] = f"{sum(bool(c['holds']) for c in claims_.values())} of {len(claims_)}"
    out.update({f"v_{k}": "replicates" if c["holds"] else "does not replicate" for k, c in claims_.items()})
    out.update({f"m_{k}": c["measured"] for k, c in claims_.items()})
    return out
