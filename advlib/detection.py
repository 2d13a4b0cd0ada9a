"""Adversarial retraining as a detector (Ozbulak et al. Sec. V-C; Gong et al.
2017): a binary classifier trained to tell genuine images from adversarial ones.

A :class:`DetectionSet` holds images with the binary label the detector learns
(0 genuine, 1 adversarial) and, for each image, where it came from
(``"genuine"`` or the attack's name), so that one evaluation gives the paper's
Table III at once: the accuracy on each attack's adversarials, on the genuine
images, and overall.

Example::

    train_set = detection_set(x_train, {"CE": adv_ce, "CE-sign": adv_sign})
    detector, history = train_detector("lenet", train_set, epochs=5, lr=1e-3, seed=0)
    accuracy_by_source(detector, detection_set(x_test, {...}))
    # {"genuine": 0.97, "CE": 0.81, "CE-sign": 0.99, "overall": 0.93}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from . import models, train

GENUINE = "genuine"
"""The source name of genuine images; attacks may use any other name."""

OVERALL = "overall"
"""The key :func:`accuracy_by_source` gives the accuracy on the whole set."""


@dataclass(frozen=True)
class DetectionSet:
    """Images ``x`` ``[N, ...]``, their detector label ``y`` ``[N]`` (0 genuine,
    1 adversarial), and ``source`` ``[N]`` indexing ``sources`` (``sources[0]``
    is always ``"genuine"``)."""

    x: Tensor
    y: Tensor
    source: Tensor
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return self.x.shape[0]

    def counts(self) -> dict[str, int]:
        """How many images each source contributes."""
        return {name: int((self.source == i).sum()) for i, name in enumerate(self.sources)}


def detection_set(genuine: Tensor, adversarial: Mapping[str, Tensor]) -> DetectionSet:
    """Genuine images (label 0) and each attack's adversarials (label 1), in
    one set, in that order: the genuine images first, then each attack's in
    the order of ``adversarial``.

    Args:
        genuine: ``[N0, ...]`` genuine images (may be empty, ``N0 = 0``).
        adversarial: attack name -> ``[Nk, ...]`` adversarial images, each with
            the genuine images' sample shape and dtype; ``"genuine"`` is not
            an attack name.

    Raises:
        ValueError: on a shape or dtype mismatch, a reserved or repeated name,
            or an empty set.
    """
    if not isinstance(genuine, Tensor) or genuine.dim() < 2:
        raise ValueError(f"genuine must be a batch tensor [N, ...], got {getattr(genuine, 'shape', genuine)!r}")
    if not genuine.is_floating_point():
        raise TypeError(f"genuine must be floating point (images in [0, 1]), got {genuine.dtype}")
    if not isinstance(adversarial, Mapping):
        raise TypeError(f"adversarial must map attack names to tensors, got {type(adversarial).__name__}")
    parts, sources = [genuine], [GENUINE]
    for name, adv in adversarial.items():
        if not isinstance(name, str) or not name or name in (GENUINE, OVERALL):
            raise ValueError(f"attack names must be non-empty strings other than {GENUINE!r}, {OVERALL!r}; got {name!r}")
        if not isinstance(adv, Tensor) or adv.shape[1:] != genuine.shape[1:] or adv.dtype != genuine.dtype:
            raise ValueError(
                f"the adversarials of {name!r} must be [N, {', '.join(map(str, genuine.shape[1:]))}] "
                f"{genuine.dtype} like the genuine images, got {tuple(getattr(adv, 'shape', ()))} "
                f"{getattr(adv, 'dtype', type(adv).__name__)}"
            )
        parts.append(adv)
        sources.append(name)
    sizes = [p.shape[0] for p in parts]
    if sum(sizes) == 0:
        raise ValueError("a detection set needs at least one image")
    source = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(sizes)])
    return DetectionSet(
        x=torch.cat(parts).detach(),
        y=(source > 0).long(),
        source=source,
        sources=tuple(sources),
    )


def train_detector(
    arch: str,
    train_set: DetectionSet,
    *,
    epochs: int,
    lr: float,
    seed: int,
    optimizer: str = "adam",
    batch_size: int = 64,
    weight_decay: float = 0.0,
    model_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> tuple[nn.Module, list[dict]]:
    """A new ``arch`` with two outputs (genuine, adversarial), trained on
    ``train_set`` by :func:`advlib.train.fit`.

    The initialisation draws from torch's generator seeded with ``seed``
    (and restored afterwards), so the same call gives the same detector.

    Returns:
        ``(detector, history)``: the detector in eval mode, and ``fit``'s
        per-epoch history.
    """
    if not isinstance(train_set, DetectionSet):
        raise TypeError(f"train_set must be a DetectionSet, got {type(train_set).__name__}")
    if int(train_set.y.min()) == int(train_set.y.max()):
        raise ValueError("the training set holds one class only: a detector needs genuine and adversarial images")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        detector = models.build(arch, tuple(train_set.x.shape[1:]), 2, **dict(model_options or {}))
    history = train.fit(
        detector,
        train_set.x,
        train_set.y,
        epochs=epochs,
        lr=lr,
        seed=seed,
        optimizer=optimizer,
        batch_size=batch_size,
        weight_decay=weight_decay,
        progress=progress,
        desc=f"detector {arch}",
    )
    return detector.eval(), history


def accuracy_by_source(detector: nn.Module, test_set: DetectionSet, *, batch_size: int = 1000) -> dict[str, float]:
    """The detector's accuracy on each source's images (``"genuine"``: called
    genuine; an attack: called adversarial) and on the whole set
    (``"overall"``). A source with no image in the set is left out."""
    if not isinstance(test_set, DetectionSet):
        raise TypeError(f"test_set must be a DetectionSet, got {type(test_set).__name__}")
    correct = train.predict(detector, test_set.x, batch_size) == test_set.y
    out = {}
    for i, name in enumerate(test_set.sources):
        mine = test_set.source == i
        if mine.any():
            out[name] = correct[mine].double().mean().item()
    out[OVERALL] = correct.double().mean().item()
    return out

