"""The book's attacks as Foolbox 3, ART and torchattacks implement them, behind one call.

Each entry of :data:`IMPLEMENTATIONS` runs one attack of one library on a batch
``(model, x, y, target)`` with the settings of :data:`SETTINGS` (the same for
every library, translated into each one's option names) and returns the
adversarial batch. Nothing here judges an attack: the peers chapter recomputes
success and norms from the returned points with the same model, for every
library alike.

The peers are optional: a library that is not installed (or fails to import)
raises :class:`NotInstalled`, which the chapter reports as a row. They are pinned
in ``benchmarks/requirements.txt`` and installed with ``--no-deps`` (so torch
stays the CPU build) by ``make install``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import math
import warnings
from typing import Callable

import torch
from torch import Tensor, nn

from . import attacks

BOX = (0.0, 1.0)

# One setting per attack, shared by every library. DeepFool: the paper's; FGSM: one
# eps in L-inf; C&W L2: Foolbox's options at a budget a CPU build affords; JSMA:
# Papernot et al.'s theta and gamma, towards the next class (torchattacks' default target); advlib
# reads the saliency map of the softmax as the paper does (space="probs"; ART and torchattacks take the
# gradients of the model's output, here the logits, and have no such option).
SETTINGS = {
    "deepfool_l2": dict(overshoot=0.02, candidates=10, max_iter=50),
    "deepfool_linf": dict(overshoot=0.02, candidates=10, max_iter=50),
    "fgsm": dict(eps=0.1),
    "cw_l2": dict(search_steps=5, max_iter=100, lr=0.01, kappa=0.0, c_init=1e-3),
    "jsma": dict(theta=1.0, gamma=0.1, space="probs"),
}
TARGETED = {"jsma"}
# Which norm the attack's size is read in: L0 counts changed features.
NORM = {"deepfool_l2": 2, "deepfool_linf": math.inf, "fgsm": math.inf, "cw_l2": 2, "jsma": 0}
DISTRIBUTIONS = {"advlib": "advlib", "Foolbox 3": "foolbox", "ART": "adversarial-robustness-toolbox", "torchattacks": "torchattacks"}

Runner = Callable[[nn.Module, Tensor, Tensor, "Tensor | None"], Tensor]


class NotInstalled(Exception):
    """A peer library is missing or does not import."""


def version(library: str) -> str | None:
    try:
        return md.version(DISTRIBUTIONS[library])
    except md.PackageNotFoundError:
        return None


def next_class(y: Tensor, classes: int) -> Tensor:
    """The target of every JSMA run here: the class after the true one."""
    return (y + 1) % classes


def _import(module: str, library: str):
    try:
        with warnings.catch_warnings():
            # ART imports tqdm.auto, which warns in a notebook without ipywidgets; its bars are off here.
            warnings.filterwarnings("ignore", message="IProgress not found")
            return __import__(module, fromlist=["_"])
    except Exception as e:  # ImportError, or a dependency that fails at import
        raise NotInstalled(f"{library} is not installed here ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------- advlib


def _advlib(name: str) -> Runner:
    s = SETTINGS[name]

    def run(model, x, y, target):
        if name == "deepfool_l2":
            res = attacks.deepfool(model, x, label=y, p=2, clip=BOX, **s)
        elif name == "deepfool_linf":
            res = attacks.deepfool(model, x, label=y, p=math.inf, clip=BOX, **s)
        elif name == "fgsm":
            res = attacks.fgsm(model, x, label=y, clip=BOX, **s)
        elif name == "cw_l2":
            res = attacks.cw_l2(model, x, label=y, clip=BOX, **s)
        else:
            res = attacks.jsma(model, x, target=target, clip=BOX, **s)
        return res.x_adv

    return run


# ---------------------------------------------------------------- Foolbox 3


def _foolbox(name: str) -> Runner:
    s = SETTINGS[name]

    def run(model, x, y, target):
        fb = _import("foolbox", "Foolbox 3")
        fmodel = fb.PyTorchModel(model, bounds=BOX, device="cpu")
        if name in ("deepfool_l2", "deepfool_linf"):
            cls = fb.attacks.L2DeepFoolAttack if name == "deepfool_l2" else fb.attacks.LinfDeepFoolAttack
            attack, eps = cls(steps=s["max_iter"], candidates=s["candidates"], overshoot=s["overshoot"], loss="logits"), None
        elif name == "fgsm":
            attack, eps = fb.attacks.FGSM(), s["eps"]
        elif name == "cw_l2":
            attack, eps = fb.attacks.L2CarliniWagnerAttack(
                binary_search_steps=s["search_steps"], steps=s["max_iter"], stepsize=s["lr"],
                confidence=s["kappa"], initial_const=s["c_init"],
            ), None
        else:
            raise NotInstalled("Foolbox 3 has no JSMA")
        _, clipped, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=eps)
        return clipped

    return run


# ---------------------------------------------------------------- ART


def _art(name: str) -> Runner:
    s = SETTINGS[name]

    def run(model, x, y, target):
        evasion = _import("art.attacks.evasion", "ART")
        estimators = _import("art.estimators.classification", "ART")
        with torch.no_grad():
            classes = int(model(x[:1]).shape[1])
        classifier = estimators.PyTorchClassifier(
            model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=classes,
            clip_values=BOX, device_type="cpu",
        )
        n = len(x)  # the whole batch at once: ART's fastest setting (its default is 1)
        if name == "deepfool_l2":
            attack = evasion.DeepFool(classifier, max_iter=s["max_iter"], epsilon=s["overshoot"], nb_grads=s["candidates"], batch_size=n, verbose=False)
        elif name == "deepfool_linf":
            raise NotInstalled("ART's DeepFool is L2 only")
        elif name == "fgsm":
            attack = evasion.FastGradientMethod(classifier, norm=math.inf, eps=s["eps"], batch_size=n)
        elif name == "cw_l2":
            attack = evasion.CarliniL2Method(
                classifier, confidence=s["kappa"], learning_rate=s["lr"], binary_search_steps=s["search_steps"],
                max_iter=s["max_iter"], initial_const=s["c_init"], batch_size=n, verbose=False,
            )
        else:
            attack = evasion.SaliencyMapMethod(classifier, theta=s["theta"], gamma=s["gamma"], batch_size=n, verbose=False)
        labels = None
        if target is not None:
            labels = torch.nn.functional.one_hot(target, classes).numpy()
        elif name != "deepfool_l2":
            labels = torch.nn.functional.one_hot(y, classes).numpy()
        out = attack.generate(x.numpy(), y=labels) if labels is not None else attack.generate(x.numpy())
        return torch.from_numpy(out).to(x.dtype)

    return run


# ---------------------------------------------------------------- torchattacks


def _torchattacks(name: str) -> Runner:
    s = SETTINGS[name]

    def run(model, x, y, target):
        ta = _import("torchattacks", "torchattacks")
        if name == "deepfool_l2":
            attack = ta.DeepFool(model, steps=s["max_iter"], overshoot=s["overshoot"])
        elif name == "deepfool_linf":
            raise NotInstalled("torchattacks' DeepFool is L2 only")
        elif name == "fgsm":
            attack = ta.FGSM(model, eps=s["eps"])
        elif name == "cw_l2":
            # No search on c: torchattacks runs one c (its default, 1) for all the steps the others share.
            attack = ta.CW(model, c=1.0, kappa=s["kappa"], steps=s["max_iter"] * s["search_steps"], lr=s["lr"])
        else:
            attack = ta.JSMA(model, theta=s["theta"], gamma=s["gamma"])
            with contextlib.redirect_stdout(io.StringIO()):  # it prints the mode change
                attack.set_mode_targeted_by_function(lambda images, labels: target)
        return attack(x, y).detach()

    return run


LIBRARIES: dict[str, Callable[[str], Runner]] = {
    "advlib": _advlib, "Foolbox 3": _foolbox, "ART": _art, "torchattacks": _torchattacks,
}


def runner(library: str, attack: str) -> Runner:
    """``runner(model, x, y, target) -> x_adv`` of ``attack`` in ``library``."""
    if library not in LIBRARIES:
        raise ValueError(f"unknown library {library!r}; libraries: {', '.join(LIBRARIES)}")
    if attack not in SETTINGS:
        raise ValueError(f"unknown attack {attack!r}; attacks: {', '.join(SETTINGS)}")
    return LIBRARIES[library](attack)


class Counted(nn.Module):
    """``model``, counting the rows it passes: ``forward_rows``, the batch rows of
    every call, and ``backward_rows``, those of every gradient that reaches its
    output (one backward pass each, whatever it is taken with respect to).

    An attack's work is almost all in these passes, so their number per image
    compares libraries without a clock: the same on any machine, at any load.
    Every library of the peers chapter gets the same wrapper. A gradient taken
    under ``vmap`` (``is_grads_batched``) counts as one pass of its rows.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # In the model's own mode: a library that restores the wrapper's mode after
        # its attack would otherwise hand the model back in training mode.
        self.train(model.training)
        self.reset()

    def reset(self) -> None:
        self.forward_rows = 0
        self.backward_rows = 0

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        self.forward_rows += x.shape[0]
        if out.requires_grad:
            out.register_hook(self._backward)
        return out

    def _backward(self, grad: Tensor) -> None:
        self.backward_rows += grad.shape[0]
