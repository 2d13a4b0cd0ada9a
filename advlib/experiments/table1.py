"""The networks of the DeepFool paper's Table 1: one recipe per row.

The Table 1 chapter attacks them and the fine-tuning chapter fine-tunes the
same ones, so both ask this module for the row's :class:`advlib.train.TrainConfig`
and get the same cached weights. The data set of each row is a parameter: the
paper's (``"mnist"``, ``"cifar10"``) or a named stand-in, which the row then
says it is.

The recipes (``RECIPES``) are the defaults of the book's quick preset; the
chapter states them beside its numbers. The keys of a recipe are
:class:`~advlib.train.TrainConfig`'s fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import checks, data, train

# The paper's data set of each row -> advlib.data's name for it.
PAPER_DATA = {"MNIST": "mnist", "CIFAR-10": "cifar10"}

DATA_NAMES = {
    "mnist": "MNIST",
    "cifar10": "CIFAR-10",
    "fashion-mnist": "Fashion-MNIST",
    "fashion-mnist-32rgb": "Fashion-MNIST padded to 3x32x32",
    "mnist-32rgb": "MNIST padded to 3x32x32",
    "digits": "scikit-learn digits",
}


@dataclass(frozen=True)
class Row:
    label: str  # as the paper's table names it
    arch: str  # advlib.models name
    paper_data: str  # "MNIST" or "CIFAR-10"
    model_label: str


ROWS = {
    "LeNet (MNIST)": Row("LeNet (MNIST)", "lenet", "MNIST", "LeNet (Caffe's MNIST LeNet)"),
    "FC500-150-10 (MNIST)": Row("FC500-150-10 (MNIST)", "fc500-150-10", "MNIST", "FC500-150-10"),
    "NIN (CIFAR-10)": Row("NIN (CIFAR-10)", "nin-small", "CIFAR-10", "NIN-small (a CPU-sized Network-in-Network)"),
    "LeNet (CIFAR-10)": Row("LeNet (CIFAR-10)", "lenet-cifar", "CIFAR-10", "LeNet (Caffe's cifar10_quick)"),
}

# Default recipe per row (the quick preset's); any field may be overridden by the caller.
RECIPES: dict[str, dict[str, Any]] = {
    "LeNet (MNIST)": dict(epochs=2, lr=0.01, optimizer="sgd"),
    "FC500-150-10 (MNIST)": dict(epochs=2, lr=0.05, optimizer="sgd"),
    "NIN (CIFAR-10)": dict(epochs=2, lr=0.001, optimizer="adam", train_limit=20000, model_options={"width": 32}),
    "LeNet (CIFAR-10)": dict(epochs=2, lr=0.01, optimizer="sgd", train_limit=20000),
}


def data_label(dataset: str, paper_data: str) -> str:
    """How a row names its data: ``"Fashion-MNIST (stand-in for MNIST)"``."""
    name = DATA_NAMES.get(dataset, dataset)
    return name if dataset == PAPER_DATA[paper_data] else f"{name} (stand-in for {paper_data})"


def stands_in_for(dataset: str, paper_data: str) -> str | None:
    return None if dataset == PAPER_DATA[paper_data] else paper_data


def config(label: str, dataset: str, *, seed: int = 0, **recipe: Any) -> train.TrainConfig:
    """The :class:`~advlib.train.TrainConfig` of row ``label`` on ``dataset``:
    ``RECIPES[label]`` updated by ``recipe``."""
    if label not in ROWS:
        raise ValueError(f"unknown Table 1 row {label!r}; rows: {', '.join(ROWS)}")
    checks.integer(seed, "seed", low=0)
    options = {**RECIPES[label], **recipe}
    return train.TrainConfig(ROWS[label].arch, dataset, seed=seed, **options)


def network(label: str, dataset: str, *, seed: int = 0, progress: bool = False, **recipe: Any):
    """Row ``label``'s trained network (from the training cache when it is
    there): ``(model, info)`` as :func:`advlib.train.trained` returns them."""
    return train.trained(config(label, dataset, seed=seed, **recipe), progress=progress)


def test_set(dataset: str) -> data.Dataset:
    return data.load(dataset, "test")
