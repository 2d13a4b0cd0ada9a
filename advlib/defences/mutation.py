"""Detecting adversarial inputs by mutating the model: Wang, Dong, Sun, Wang
and Zhang, "Adversarial Sample Detection for Deep Neural Network through Model
Mutation Testing", ICSE 2019.

An adversarial input sits close to a decision boundary, in a spot the
training did not make stable, so slightly changed copies of the model (its
*mutants*) disagree with the model about it far more often than about a
genuine input. The *label change rate* of an input over a set of mutants is
the fraction of them whose label differs from the model's; a sequential
probability ratio test (:func:`sprt`, :func:`detect`) decides, input by
input, whether that rate exceeds a threshold set from genuine inputs
(:func:`genuine_threshold`), drawing mutants until it can tell.

The four model-mutation operators of the paper (from DeepMutation, Ma et al.
2018), each with its mutation rate; they act on the convolutional and linear
layers of the model, on a copy (``copy.deepcopy``), never on the original:

- :func:`gaussian_fuzzing` (GF): a fraction ``rate`` of all weights, drawn
  uniformly over the layers, gets Gaussian noise of the standard deviation of
  its layer's weights (times ``scale``) added;
- :func:`weight_shuffling` (WS): a fraction ``rate`` of the hidden neurons
  get their incoming weights shuffled;
- :func:`neuron_switch` (NS): in every hidden layer, a fraction ``rate`` of
  the neurons exchange their incoming weights and biases (a swap for two, a
  cycle for more), so each takes another's role for the next layer;
- :func:`neuron_activation_inverse` (NAI): a fraction ``rate`` of the hidden
  neurons have their output's sign inverted before the activation function
  (their incoming weights and bias negated).

A *neuron* is an output unit of a linear layer or a channel of a
convolution (one filter: its weights are shared over the image). The
*hidden* layers are all but the last; the last one's outputs are the logits,
which have no activation to invert and no next layer to influence.

:class:`Mutants` draws candidates from a seed (candidate ``i`` of a seed is
always the same mutant) and keeps those whose accuracy is at least a given
fraction of the original's (the paper: 90%).

The blog post that presents the paper describes its mutations as mutations
of the *input*; :func:`input_label_changes` is that variant (the model kept,
the input perturbed by fixed random noise patterns), to compare.

Example::

    pool = Mutants(model, "NAI", 0.05, x=test.x[:500], y=test.y[:500], candidates=100, seed=0)
    threshold = genuine_threshold(label_change_rate(model, pool, genuine))
    result = detect(model, pool, x, threshold, indifference=0.1 * threshold)
    result.adversarial, result.mutants_used
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .. import checks
from ..train import predict

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

OPERATOR_NAMES = {
    "GF": "Gaussian fuzzing",
    "WS": "weight shuffling",
    "NS": "neuron switch",
    "NAI": "neuron activation inverse",
}
"""The paper's abbreviation of each operator -> its name."""


# ---------------------------------------------------------------- the operators


def layers(model: nn.Module) -> list[nn.Module]:
    """The convolutional and linear layers of ``model``, in module order (the
    order of a feed-forward stack such as :mod:`advlib.models`'); the last is
    taken to give the logits."""
    found = [m for m in model.modules() if isinstance(m, _LAYERS)]
    if not found:
        raise ValueError("model has no convolutional or linear layer to mutate")
    return found


def _hidden(model: nn.Module) -> list[nn.Module]:
    hidden = layers(model)[:-1]
    if not hidden:
        raise ValueError("model has a single layer: there is no hidden neuron to mutate")
    return hidden


def _copy(model: nn.Module, rate: float, seed: int) -> tuple[nn.Module, torch.Generator, float]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rate = checks.number(rate, "rate", low=0, high=1)
    seed = checks.integer(seed, "seed", low=0)
    return copy.deepcopy(model), torch.Generator().manual_seed(seed), rate


def _chosen_neurons(hidden: list[nn.Module], rate: float, g: torch.Generator) -> list[tuple[nn.Module, Tensor]]:
    """``round(rate * N)`` of the ``N`` neurons of the hidden layers, drawn
    uniformly without replacement over all of them: per layer, the rows chosen."""
    sizes = [layer.weight.shape[0] for layer in hidden]
    picked = torch.randperm(sum(sizes), generator=g)[: round(rate * sum(sizes))]
    out, start = [], 0
    for layer, size in zip(hidden, sizes):
        rows = picked[(picked >= start) & (picked < start + size)] - start
        if len(rows):
            out.append((layer, rows.sort().values))
        start += size
    return out


def gaussian_fuzzing(model: nn.Module, rate: float, *, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """GF: ``round(rate * W)`` of the ``W`` weights of the convolutional and
    linear layers (biases left alone), drawn uniformly without replacement
    over all of them, each get ``N(0, (scale * s)^2)`` noise added, where ``s``
    is the standard deviation of its layer's weights (the paper draws the new
    weight from a Gaussian centred on the old one). Returns the mutant."""
    mutant, g, rate = _copy(model, rate, seed)
    scale = checks.number(scale, "scale", low=0)
    weights = [layer.weight for layer in layers(mutant)]
    sizes = [w.numel() for w in weights]
    picked = torch.randperm(sum(sizes), generator=g)[: round(rate * sum(sizes))]
    start = 0
    with torch.no_grad():
        for w, size in zip(weights, sizes):
            pos = picked[(picked >= start) & (picked < start + size)] - start
            noise = torch.randn(len(pos), generator=g, dtype=w.dtype) * (scale * w.std().item())
            w.view(-1)[pos] += noise.to(w.device)
            start += size
    return mutant


def weight_shuffling(model: nn.Module, rate: float, *, seed: int = 0) -> nn.Module:
    """WS: ``round(rate * N)`` of the ``N`` hidden neurons, drawn uniformly
    over the hidden layers, each get their incoming weights (a row of a
    linear layer, a whole filter of a convolution) randomly permuted; biases
    are left alone. Returns the mutant."""
    mutant, g, rate = _copy(model, rate, seed)
    with torch.no_grad():
        for layer, rows in _chosen_neurons(_hidden(mutant), rate, g):
            w = layer.weight.view(layer.weight.shape[0], -1)
            for r in rows.tolist():
                w[r] = w[r][torch.randperm(w.shape[1], generator=g).to(w.device)]
    return mutant


def neuron_switch(model: nn.Module, rate: float, *, seed: int = 0) -> nn.Module:
    """NS: in every hidden layer of ``n`` neurons, ``k = round(rate * n)``
    neurons drawn at random exchange their incoming weights and biases, each
    taking the next one's in a random cycle (a swap when ``k = 2``), so that
    every one of them changes role; a layer where ``k < 2`` is left alone (the
    authors' code, too, skips layers too small for the rate). Returns the mutant."""
    mutant, g, rate = _copy(model, rate, seed)
    with torch.no_grad():
        for layer in _hidden(mutant):
            n = layer.weight.shape[0]
            k = round(rate * n)
            if k < 2:
                continue
            rows = torch.randperm(n, generator=g)[:k].to(layer.weight.device)
            layer.weight[rows] = layer.weight[rows.roll(1)].clone()
            if layer.bias is not None:
                layer.bias[rows] = layer.bias[rows.roll(1)].clone()
    return mutant


def neuron_activation_inverse(model: nn.Module, rate: float, *, seed: int = 0) -> nn.Module:
    """NAI: ``round(rate * N)`` of the ``N`` hidden neurons, drawn uniformly
    over the hidden layers, have the sign of their output inverted before the
    activation function (for a convolution, before the pooling that follows
    it), by negating their incoming weights and bias. Returns the mutant."""
    mutant, g, rate = _copy(model, rate, seed)
    with torch.no_grad():
        for layer, rows in _chosen_neurons(_hidden(mutant), rate, g):
            rows = rows.to(layer.weight.device)
            layer.weight[rows] = -layer.weight[rows]
            if layer.bias is not None:
                layer.bias[rows] = -layer.bias[rows]
    return mutant


OPERATORS: dict[str, Callable[..., nn.Module]] = {
    "GF": gaussian_fuzzing,
    "WS": weight_shuffling,
    "NS": neuron_switch,
    "NAI": neuron_activation_inverse,
}
"""The paper's abbreviation of each operator -> the operator."""


def candidate_seed(seed: int, index: int) -> int:
    """The seed of candidate ``index`` of a pool drawn from ``seed``: one
    seed per candidate, so a candidate does not depend on how many are drawn."""
    seed = checks.integer(seed, "seed", low=0)
    index = checks.integer(index, "index", low=0)
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def mutant(model: nn.Module, operator: str, rate: float, *, seed: int = 0, index: int = 0, **options) -> nn.Module:
    """Candidate ``index`` of operator ``operator`` (``"GF"``, ``"WS"``,
    ``"NS"`` or ``"NAI"``) at mutation rate ``rate``, drawn from ``seed``;
    ``options`` go to the operator (GF's ``scale``)."""
    checks.choice(operator, "operator", tuple(OPERATORS))
    mutated = OPERATORS[operator](model, rate, seed=candidate_seed(seed, index), **options)
    # The same weights in the layout the CPU convolutions run fastest in
    # (twice as fast on LeNet); the mutant is our copy, so its layout is ours to choose.
    return mutated.to(memory_format=torch.channels_last)


class Mutants:
    """The mutants of one operator at one rate that pass the paper's filter.

    Candidates ``0, 1, ..., candidates - 1`` are drawn from ``seed``
    (:func:`mutant`); a candidate is kept if its accuracy on ``(x, y)`` is at
    least ``min_fraction`` times the original model's (the paper: 90%, on the
    test set). The screening is done once, here; iterating regenerates the
    kept mutants one at a time, in candidate order (a copy of the model each:
    a pool of hundreds would not fit in memory), so any number of passes see
    the same mutants.

    Attributes:
        kept: the candidate indices kept, in order.
        accuracy: every candidate's accuracy on ``(x, y)``.
        original_accuracy: the model's accuracy on ``(x, y)``.
        min_accuracy: ``min_fraction * original_accuracy``, the bar.
    """

    def __init__(
        self,
        model: nn.Module,
        operator: str,
        rate: float,
        *,
        x: Tensor,
        y: Tensor,
        candidates: int = 100,
        min_fraction: float = 0.9,
        seed: int = 0,
        batch_size: int = 1000,
        **options,
    ) -> None:
        checks.choice(operator, "operator", tuple(OPERATORS))
        self.candidates = checks.integer(candidates, "candidates", low=1)
        self.min_fraction = checks.number(min_fraction, "min_fraction", low=0, high=1)
        self.batch_size = checks.integer(batch_size, "batch_size", low=1)
        self.model, self.operator, self.seed, self.options = model, operator, checks.integer(seed, "seed", low=0), options
        self.rate = checks.number(rate, "rate", low=0, high=1)
        y = _labels(y, x, "y")
        x = _fast(x)
        self.original_accuracy = _accuracy(model, x, y, self.batch_size)
        self.min_accuracy = self.min_fraction * self.original_accuracy
        self.accuracy = [_accuracy(self._candidate(i), x, y, self.batch_size) for i in range(self.candidates)]
        self.kept = [i for i, a in enumerate(self.accuracy) if a >= self.min_accuracy]

    def _candidate(self, index: int) -> nn.Module:
        return mutant(self.model, self.operator, self.rate, seed=self.seed, index=index, **self.options)

    def __len__(self) -> int:
        return len(self.kept)

    def __iter__(self) -> Iterator[nn.Module]:
        return (self._candidate(i) for i in self.kept)

    def __getitem__(self, k: int) -> nn.Module:
        return self._candidate(self.kept[k])

    def describe(self) -> dict:
        """JSON-able: the operator, its settings and what the filter kept."""
        return {
            "operator": self.operator, "name": OPERATOR_NAMES[self.operator], "rate": self.rate,
            "options": dict(self.options), "seed": self.seed, "candidates": self.candidates,
            "kept": len(self.kept), "min_fraction": self.min_fraction,
            "original_accuracy": self.original_accuracy, "min_accuracy": self.min_accuracy,
            "accuracy": list(self.accuracy),
        }


def _labels(labels, x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise ValueError("x must be a non-empty floating-point tensor [N, ...]")
    if not isinstance(labels, Tensor) or labels.dtype != torch.long or labels.shape != (len(x),):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be a long tensor [{len(x)}] (one label per input), got {shape}")
    return labels


def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> float:
    return (predict(model, x, batch_size) == y).double().mean().item()


def _fast(x: Tensor) -> Tensor:
    """Images in the channels-last layout of the mutants (:func:`mutant`): a copy, values unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if isinstance(x, Tensor) and x.dim() == 4 else x


# ---------------------------------------------------------------- label change rates


def label_changes(
    model: nn.Module, mutants: Iterable[nn.Module], x: Tensor, *, labels: Tensor | None = None, batch_size: int = 1000
) -> Tensor:
    """Whether each mutant labels each input differently from ``labels``
    (default: the model's labels of ``x``): bool ``[M, N]``. One forward pass
    of all of ``x`` per mutant (in batches of ``batch_size``)."""
    batch_size = checks.integer(batch_size, "batch_size", low=1)
    labels = predict(model, x, batch_size) if labels is None else _labels(labels, x, "labels")
    x = _fast(x)
    rows = [predict(m, x, batch_size) != labels for m in mutants]
    if not rows:
        raise ValueError("mutants is empty: no mutant passed the filter, or none was given")
    return torch.stack(rows)


def label_change_rate(
    model: nn.Module, mutants: Iterable[nn.Module], x: Tensor, *, labels: Tensor | None = None, batch_size: int = 1000
) -> Tensor:
    """The paper's label change rate of each input over ``mutants``: the
    fraction of them whose label differs from the model's, float64 ``[N]``."""
    return label_changes(model, mutants, x, labels=labels, batch_size=batch_size).double().mean(0)


def input_label_changes(
    model: nn.Module,
    x: Tensor,
    *,
    n: int = 100,
    std: float = 0.1,
    seed: int = 0,
    clip: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 1000,
) -> Tensor:
    """The blog post's reading of mutation testing: mutate the *input*, not the
    model. ``n`` noise patterns ``d_j ~ N(0, std^2)`` of one input's shape are
    drawn from ``seed``, the same for every input (as the authors' input
    mutations are one fixed list); the result says whether the model labels
    ``clip(x + d_j)`` differently from ``x``: bool ``[n, N]``, one forward
    pass of the whole batch per pattern."""
    n = checks.integer(n, "n", low=1)
    std = checks.number(std, "std", low=0, low_open=True)
    seed = checks.integer(seed, "seed", low=0)
    clip = checks.box(clip, "clip")
    batch_size = checks.integer(batch_size, "batch_size", low=1)
    labels = predict(model, x, batch_size)
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)  # as the mutants: a copy, laid out for speed
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        moved = x + std * torch.randn(x.shape[1:], generator=g, dtype=x.dtype).to(x.device)
        if clip is not None:
            moved = moved.clamp(*clip)
        rows.append(predict(fast, _fast(moved), batch_size) != labels)
    return torch.stack(rows)


def genuine_threshold(rates: Tensor, confidence: float = 0.99) -> float:
    """The threshold of the test, set from genuine inputs' label change
    rates as in the authors' code: their mean plus the half-width of its
    two-sided ``confidence`` interval, ``mean + z * std / sqrt(n)``."""
    rates = torch.as_tensor(rates, dtype=torch.float64).flatten()
    if len(rates) < 2 or not torch.isfinite(rates).all() or (rates < 0).any() or (rates > 1).any():
        raise ValueError("rates must hold at least two label change rates in [0, 1]")
    confidence = checks.number(confidence, "confidence", low=0, high=1, low_open=True, high_open=True)
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    return rates.mean().item() + z * rates.std(unbiased=False).item() / math.sqrt(len(rates))


# ---------------------------------------------------------------- the sequential test


@dataclass
class SPRTResult:
    """The decisions of :func:`sprt` or :func:`detect`, per input.

    Attributes:
        adversarial: bool ``[N]``, the decision: the label change rate exceeds the threshold.
        mutants_used: long ``[N]``, mutants drawn until the decision.
        changes: long ``[N]``, label changes among them.
        decided: bool ``[N]``: the test reached a bound; where it did not (the
            cap was reached first), ``adversarial`` says whether the rate
            observed exceeds the threshold.
    """

    adversarial: Tensor
    mutants_used: Tensor
    changes: Tensor
    decided: Tensor

    @property
    def rate(self) -> float:
        """The share of inputs decided adversarial."""
        return self.adversarial.double().mean().item()


class _Wald:
    """Wald's SPRT of H1: p >= p1 = threshold + indifference (adversarial)
    against H0: p <= p0 = threshold - indifference (genuine) on Bernoulli
    draws (1 = the label changed). The log likelihood ratio after ``c``
    changes in ``n`` draws is ``c log(p1/p0) + (n - c) log((1-p1)/(1-p0))``;
    H1 is accepted at ``log((1-beta)/alpha)``, H0 at ``log(beta/(1-alpha))``,
    so that ``P(accept H1 | p0) <= alpha`` and ``P(accept H0 | p1) <= beta``
    (Wald's bounds, up to the overshoot, which only lowers the errors)."""

    def __init__(self, threshold: float, indifference: float, alpha: float, beta: float) -> None:
        self.threshold = checks.number(threshold, "threshold", low=0, high=1, low_open=True, high_open=True)
        indifference = checks.number(indifference, "indifference", low=0, low_open=True)
        alpha = checks.number(alpha, "alpha", low=0, high=1, low_open=True, high_open=True)
        beta = checks.number(beta, "beta", low=0, high=1, low_open=True, high_open=True)
        if alpha + beta >= 1:
            raise ValueError(f"alpha + beta must be below 1, got alpha={alpha}, beta={beta}")
        p0, p1 = threshold - indifference, threshold + indifference
        if not 0 < p0 < p1 < 1:
            raise ValueError(
                f"threshold +- indifference must lie inside (0, 1), got threshold={threshold}, indifference={indifference}")
        self.p0, self.p1 = p0, p1
        self.up = math.log(p1 / p0)  # a change
        self.down = math.log((1 - p1) / (1 - p0))  # no change
        self.accept_h1 = math.log((1 - beta) / alpha)
        self.accept_h0 = math.log(beta / (1 - alpha))

    def llr(self, changes: Tensor, draws: Tensor | int) -> Tensor:
        return changes * self.up + (draws - changes) * self.down

    def verdict(self, changes: Tensor, draws: Tensor | int) -> tuple[Tensor, Tensor]:
        """(decided, adversarial) after ``changes`` in ``draws``."""
        llr = self.llr(changes.double(), draws)
        h1, h0 = llr >= self.accept_h1, llr <= self.accept_h0
        return h1 | h0, h1

    def at_cap(self, changes: Tensor, draws: Tensor) -> Tensor:
        return changes.double() / draws > self.threshold


def sprt(changes: Tensor, threshold: float, *, indifference: float, alpha: float = 0.05, beta: float = 0.05) -> SPRTResult:
    """Wald's sequential probability ratio test of "the input's label change
    rate exceeds ``threshold``", on given sequences: ``changes`` is bool
    ``[M, N]``, whether draw ``m`` (mutant ``m``) changed input ``n``'s
    label. Each input stops at the first draw where the test decides; the
    cap is ``M``. The same test as :func:`detect`, which draws the mutants
    as it goes; see :class:`_Wald` for the bounds."""
    if not isinstance(changes, Tensor) or changes.dim() != 2 or changes.shape[0] == 0 or changes.shape[1] == 0:
        raise ValueError("changes must be a bool tensor [M draws, N inputs] with M, N >= 1")
    test = _Wald(threshold, indifference, alpha, beta)
    m = changes.shape[0]
    counts = changes.long().cumsum(0)
    draws = torch.arange(1, m + 1).unsqueeze(1)
    decided, h1 = test.verdict(counts, draws)
    ever = decided.any(0)
    stop = torch.where(ever, decided.double().argmax(0), torch.full_like(ever, m - 1, dtype=torch.long))
    cols = torch.arange(changes.shape[1])
    seen = counts[stop, cols]
    used = stop + 1
    adversarial = torch.where(ever, h1[stop, cols], test.at_cap(seen, used))
    return SPRTResult(adversarial=adversarial, mutants_used=used, changes=seen, decided=ever)


def detect(
    model: nn.Module,
    mutants: Iterable[nn.Module],
    x: Tensor,
    threshold: float,
    *,
    indifference: float,
    alpha: float = 0.05,
    beta: float = 0.05,
    max_mutants: int | None = None,
    labels: Tensor | None = None,
    batch_size: int = 1000,
) -> SPRTResult:
    """The paper's detector: for every input, draw mutants one after another
    and run Wald's SPRT (:func:`sprt`) of "its label change rate exceeds
    ``threshold``" with error rates ``alpha`` (a genuine input flagged) and
    ``beta`` (an adversarial one missed) and indifference region
    ``threshold +- indifference``, until it decides or ``max_mutants``
    (default: all of ``mutants``) are used. Batched: each mutant makes one
    forward pass over the inputs not yet decided; decided inputs leave.
    ``labels`` are the labels a change is judged against (default: the
    model's)."""
    test = _Wald(threshold, indifference, alpha, beta)
    max_mutants = checks.integer(max_mutants, "max_mutants", low=1, none=True)
    batch_size = checks.integer(batch_size, "batch_size", low=1)
    labels = predict(model, x, batch_size) if labels is None else _labels(labels, x, "labels")
    x = _fast(x)
    n = len(x)
    seen = torch.zeros(n, dtype=torch.long)
    used = torch.zeros(n, dtype=torch.long)
    decided = torch.zeros(n, dtype=torch.bool)
    adversarial = torch.zeros(n, dtype=torch.bool)
    active = torch.arange(n)
    for m, mutated in enumerate(mutants):
        if not len(active) or (max_mutants is not None and m >= max_mutants):
            break
        seen[active] += (predict(mutated, x[active], batch_size) != labels[active]).long()
        used[active] += 1
        done, h1 = test.verdict(seen[active], used[active])
        decided[active[done]] = True
        adversarial[active[done]] = h1[done]
        active = active[~done]
    if used.min() == 0:
        raise ValueError("mutants is empty: no mutant passed the filter, or none was given")
    adversarial[active] = test.at_cap(seen[active], used[active])
    return SPRTResult(adversarial=adversarial, mutants_used=used, changes=seen, decided=decided)
