"""The exact minimal adversarial perturbation of a ReLU network, by mixed-integer
linear programming (Tjeng, Xiao & Tedrake, ICLR 2019; Cheng et al. 2017).

A fully connected ReLU network ``Linear (ReLU Linear)*`` is piecewise affine,
and each ReLU ``a = max(0, z)`` whose input is known to lie in ``[l, u]``
with ``l < 0 < u`` is stated exactly by one binary ``s`` and four linear
inequalities (``a >= 0``, ``a >= z``, ``a <= z - l (1 - s)``, ``a <= u s``).
With the input ``x'`` in its box, the output condition "class ``k`` beats
the label ``c``" (``f_k(x') >= f_c(x')``) and the objective ``||x' - x||_p``
(linear for ``p = inf`` and ``p = 1`` with auxiliary variables), the smallest
perturbation that changes the label is the minimum of one such program per
target class ``k`` (or of one disjunctive program over all targets). HiGHS,
through :func:`scipy.optimize.milp`, solves them by branch and bound and
returns, beside its best point, a *certified* lower bound on the minimum.

The constants ``l, u`` are computed over the tightest input domain known,
tightest first: the box intersected with the ball of the best adversarial
distance found so far (a known adversarial point, given as ``start``, sets
it before the first program), by interval bound propagation and, by
default, linear bounds (:func:`linear_bounds`) where those are tighter. Each
new point shrinks the ball, which makes more ReLUs stable (no binary needed)
and the big-M constants of the rest smaller, and every later program has
``||x' - x|| <=`` that distance as a constraint, so a target that cannot
beat it is proved infeasible quickly.

The returned point is checked by a float64 forward pass (and one in the
model's own dtype): the solver's point sits on the decision boundary up to
its tolerances, so it is pushed outwards along its own ray by the smallest of
relative steps (``1e-9`` ... ``1e-2``, each 1.25 times the last) that makes it adversarial with
a float64 logit margin of 16 roundings of the model's dtype (``2e-6``
relative to the largest logit for float32), enough for any evaluation in
that dtype to agree. Near a tie of two logits the ray may gain margin too
slowly; the program is then solved again with that margin asked for.
``distance`` is the norm of the returned, checked point:
``lower_bound <= true minimum <= distance``.

Example::

    res = exact.minimal_perturbation(model, x, p=float("inf"), time_limit=10)
    res.distance, res.lower_bound, res.status
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor, nn
from tqdm import tqdm  # text bars (to stderr): tqdm.auto warns in notebooks without ipywidgets

from . import checks, distributed, norms
from .attacks._common import AttackResult, Box, attacking, check_inputs, check_labels, logits_of

FORMULATIONS = ("targets", "disjunctive")
BOUNDS = ("linear", "interval")

# The relative extensions tried along the solver point's ray, smallest first.
_PUSH = np.concatenate([[0.0], np.geomspace(1e-9, 1e-2, 73)])  # steps of 1.25x
# The float64 logit margin a returned point must clear, in units of the model
# dtype's rounding of its largest logit: enough for any evaluation of it in
# that dtype (another batch, another kernel) to agree on the label.
_ROUNDING = 16

# HiGHS's primal heuristics, off: the search starts from an incumbent (the
# start point, then each target's optimum) and needs the lower bound, which
# they do not move. On the digits network they took 80-90% of the solver's
# time (measured: 10 s -> 1.3 s on one hard target). milp passes options it
# does not know to HiGHS verbatim, with a warning that is silenced here.
_QUIET_HEURISTICS = {
    f"mip_heuristic_run_{name}": False
    for name in ("rins", "rens", "root_reduced_cost", "zi_round", "shifting", "feasibility_jump")
}

Layers = list[tuple[np.ndarray, np.ndarray]]


@dataclass(kw_only=True)
class ExactResult(AttackResult):
    """:class:`~advlib.attacks.AttackResult` with what the solver proved, per sample.

    ``distance`` is ``||x_adv - x||_p`` in float64 (``inf`` where no
    adversarial point was found), ``lower_bound`` the certified bound (no
    adversarial point is closer than it, up to the solver's tolerances),
    ``optimal`` whether every target's program was solved to ``mip_rel_gap``
    (``distance`` is then the minimum within that gap), ``status`` one of
    ``"optimal"``, ``"time limit"`` (not proved optimal: ``distance`` is the
    best point found, ``lower_bound`` what was proved by then), ``"no
    adversarial"`` (none exists in the box) or ``"unverified"`` (a solver
    point failed the forward-pass check), ``seconds`` the solver time and
    ``iterations`` the number of programs solved.
    """

    p: float
    distance: Tensor  # float64 [N]
    lower_bound: Tensor  # float64 [N]
    optimal: Tensor  # bool [N]
    status: list[str]
    seconds: Tensor  # float64 [N]

    @property
    def gap(self) -> Tensor:
        """``(distance - lower_bound) / distance``: 0 when proved optimal exactly."""
        return (self.distance - self.lower_bound) / self.distance.clamp_min(torch.finfo(torch.float64).tiny)


# ------------------------------------------------------------ the network


def affine_layers(model: nn.Module) -> Layers:
    """The ``(W, b)`` of each ``Linear`` of a ``Linear (ReLU Linear)*`` network,
    in float64, in order: ReLUs sit between consecutive ones.

    ``model`` is an ``nn.Sequential`` (nested ones are walked) of ``Linear``
    and ``ReLU`` layers, optionally after a ``Flatten``; ``Identity`` and
    ``Dropout`` (the identity in eval mode, as attacks run) are skipped. A
    model with one logit ``f`` is read, as everywhere in advlib, as the two
    logits ``(0, f)``.

    Raises:
        TypeError: naming the first layer that is not one of these, or a
            layer order that is not Linear, ReLU, Linear, ..., Linear.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    flat: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        if isinstance(m, nn.Sequential):
            for child in m:
                walk(child)
        else:
            flat.append(m)

    walk(model)
    layers: Layers = []
    expect_linear = True
    for i, m in enumerate(flat):
        if isinstance(m, (nn.Identity, nn.Dropout)) or (isinstance(m, nn.Flatten) and not layers):
            continue
        if isinstance(m, nn.Linear) and expect_linear:
            w = m.weight.detach().double().cpu().numpy()
            b = m.bias.detach().double().cpu().numpy() if m.bias is not None else np.zeros(w.shape[0])
            layers.append((w, b))
            expect_linear = False
        elif isinstance(m, nn.ReLU) and not expect_linear:
            expect_linear = True
        else:
            raise TypeError(
                "exact: model must be an nn.Sequential of Linear and ReLU layers (Linear, ReLU, ..., Linear), "
                f"optionally after a Flatten; layer {i} is {type(m).__name__}"
                + (" where a Linear was expected" if expect_linear and isinstance(m, nn.ReLU) else "")
            )
    if not layers or expect_linear:
        raise TypeError("exact: model must end with a Linear layer (its logits)")
    w, b = layers[-1]
    if w.shape[0] == 1:
        layers[-1] = (np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b]))
    return layers


@dataclass(frozen=True)
class Domain:
    """Where the perturbed input ``x'`` may lie: the box ``[lo, hi]`` (the
    input box intersected with the L-inf ball of the search) and, for L1,
    also ``||x' - x||_1 <= l1`` (``inf``: no such constraint)."""

    x: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    l1: float = math.inf

    def minimum(self, lam: np.ndarray) -> np.ndarray:
        """The exact minimum of each row's ``lam . x'`` over the domain. In the
        box alone each coordinate goes to the end its coefficient prefers;
        with the L1 budget it is a fractional knapsack: coordinates are moved
        in order of ``|lam_i|``, the largest first, until the budget is spent."""
        toward = np.where(lam > 0, self.lo, self.hi)
        if not math.isfinite(self.l1):
            with np.errstate(invalid="ignore"):  # 0 * inf where the box is unbounded
                return np.where(lam != 0, lam * toward, 0.0).sum(-1)
        cap = np.abs(toward - self.x)
        order = np.argsort(-np.abs(lam), axis=-1, kind="stable")
        gain, cap = np.take_along_axis(np.abs(lam), order, -1), np.take_along_axis(cap, order, -1)
        spent = np.cumsum(cap, -1) - cap
        move = np.clip(self.l1 - spent, 0.0, cap)
        return lam @ self.x - (gain * move).sum(-1)


def interval_bounds(layers: Layers, domain: Domain) -> list[tuple[np.ndarray, np.ndarray]]:
    """Interval bound propagation: for each hidden layer, bounds ``(l, u)`` on
    its pre-activations ``z`` over the domain (the first layer's exact, from
    :meth:`Domain.minimum`), and last the bounds of the last hidden layer's
    activations (of ``x'`` for an affine model)."""
    bounds: list[tuple[np.ndarray, np.ndarray]] = []
    for w, b in layers[:-1]:
        if not bounds:
            z_lo, z_hi = domain.minimum(w) + b, -domain.minimum(-w) + b
        else:
            a_lo, a_hi = np.maximum(bounds[-1][0], 0), np.maximum(bounds[-1][1], 0)
            mid, rad = (a_hi + a_lo) / 2, (a_hi - a_lo) / 2
            z_lo, z_hi = w @ mid + b - np.abs(w) @ rad, w @ mid + b + np.abs(w) @ rad
        bounds.append((z_lo, z_hi))
    return bounds + [_activations(bounds, domain)]


def linear_bounds(layers: Layers, domain: Domain) -> list[tuple[np.ndarray, np.ndarray]]:
    """Bounds as :func:`interval_bounds` returns them, each layer's the
    tighter of its interval bound and its linear bound (CROWN: Zhang et al.,
    NeurIPS 2018): the layer's input written as a linear function of ``x'``
    by going back through the ReLUs below it, each unstable one replaced by
    a line under it and one over it, and that function minimised exactly
    over the domain. Interval bounds lose the correlation between the units
    of a layer and loosen with every layer; these keep it, which on the
    digits network halves the unstable ReLUs of the second layer and makes
    the branch and bound several times shorter."""
    bounds: list[tuple[np.ndarray, np.ndarray]] = []
    for depth, (w, b) in enumerate(layers[:-1]):
        if depth == 0:
            z_lo, z_hi = domain.minimum(w) + b, -domain.minimum(-w) + b
        else:
            a_lo, a_hi = np.maximum(bounds[-1][0], 0), np.maximum(bounds[-1][1], 0)
            mid, rad = (a_hi + a_lo) / 2, (a_hi - a_lo) / 2
            z_lo, z_hi = _back(layers, bounds, w, b, domain)
            z_lo = np.maximum(z_lo, w @ mid + b - np.abs(w) @ rad)
            z_hi = np.minimum(z_hi, w @ mid + b + np.abs(w) @ rad)
        bounds.append((z_lo, z_hi))
    return bounds + [_activations(bounds, domain)]


def _activations(bounds, domain: Domain) -> tuple[np.ndarray, np.ndarray]:
    if not bounds:
        return domain.lo, domain.hi
    return np.maximum(bounds[-1][0], 0), np.maximum(bounds[-1][1], 0)


def _back(layers: Layers, bounds, w: np.ndarray, b: np.ndarray, domain: Domain) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper linear bounds of ``w a + b`` over the domain, ``a`` the
    activations of the hidden layer ``len(bounds)`` (``bounds`` holds the
    pre-activation bounds of the layers up to it)."""
    out = []
    for sign in (1.0, -1.0):  # the lower bound of +f, then of -f
        lam, beta = sign * w, sign * b
        for k in range(len(bounds) - 1, -1, -1):
            l, u = bounds[k]
            free = (l < 0) & (u > 0)
            # a <= s (z - l) over an unstable ReLU; a >= alpha z under it, alpha
            # the 0 or 1 whose line leaves the smaller area (CROWN's choice).
            s = np.where(free, u / np.where(free, u - l, 1.0), (l >= 0).astype(float))
            alpha = np.where(free, (u >= -l).astype(float), s)
            pos, neg = np.maximum(lam, 0), np.minimum(lam, 0)
            beta = beta + neg @ np.where(free, -s * l, 0.0)
            lam = pos * alpha + neg * s
            wk, bk = layers[k]
            lam, beta = lam @ wk, beta + lam @ bk
        out.append(domain.minimum(lam) + beta)
    return out[0], -out[1]


def _margin_bounds(layers: Layers, bounds, domain: Domain, c: int, linear: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on every ``f_k - f_c`` over the domain, the weights of the
    difference taken first (tighter than the difference of two intervals)."""
    w, b = layers[-1]
    dw, db = w - w[c], b - b[c]
    a_lo, a_hi = bounds[-1]
    with np.errstate(invalid="ignore"):  # NaN where the box is unbounded; fmax below skips it
        mid, rad = (a_hi + a_lo) / 2, (a_hi - a_lo) / 2
        low, up = dw @ mid + db - np.abs(dw) @ rad, dw @ mid + db + np.abs(dw) @ rad
    if linear or len(layers) == 1:
        l_lin, u_lin = _back(layers, bounds[:-1], dw, db, domain)
        low, up = np.fmax(low, l_lin), np.fmin(up, u_lin)  # fmax: an unbounded box gives NaN intervals
    return low, up


def _local_distances(layers: Layers, x: np.ndarray, c: int, p: float) -> np.ndarray:
    """The distance to each class's boundary of the network linearised at
    ``x`` (DeepFool's first-step estimate): it orders the targets."""
    jac, a = np.eye(len(x)), x
    for w, b in layers[:-1]:
        z = w @ a + b
        on = z > 0
        jac, a = (w @ jac) * on[:, None], np.where(on, z, 0.0)
    w, b = layers[-1]
    f, jac = w @ a + b, w @ jac
    dual = 1.0 if p == math.inf else math.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = (f[c] - f) / np.linalg.norm(jac - jac[c], ord=dual, axis=1)
    dist[c] = math.inf
    return np.nan_to_num(dist, nan=math.inf)


# ------------------------------------------------------------ the program


class _Program:
    """The mixed-integer program of one input over one domain: its variables
    ``[x' | aux | a_1, s_1 | ... | a_{L-1}, s_{L-1}]`` (``aux`` is ``t`` for
    L-inf, ``e`` (|delta| per pixel) for L1), rows, bounds and integrality.

    The domain is the box intersected with the ball of ``radius`` (the best
    distance known); the ReLU bounds are computed over it, so every new
    incumbent makes a smaller program."""

    def __init__(
        self, layers: Layers, x: np.ndarray, box: tuple[np.ndarray, np.ndarray], p: float, radius: float, linear: bool
    ):
        n0 = len(x)
        self.n0, self.radius = n0, radius
        lo = np.maximum(box[0], x - radius)
        hi = np.minimum(box[1], x + radius)
        self.domain = Domain(x, lo, hi, radius if p == 1 else math.inf)
        self.bounds = (linear_bounds if linear else interval_bounds)(layers, self.domain)
        naux = 1 if p == math.inf else n0
        sizes = [n0, naux] + [n for w, _ in layers[:-1] for n in (w.shape[0], w.shape[0])]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.nvar = int(starts[-1])
        var_lo, var_hi = np.zeros(self.nvar), np.zeros(self.nvar)
        integ = np.zeros(self.nvar, dtype=np.uint8)
        var_lo[:n0], var_hi[:n0] = lo, hi
        aux = np.arange(n0, n0 + naux)
        var_hi[aux] = radius if p == math.inf else np.minimum(radius, np.maximum(hi - x, x - lo))
        self.objective = np.zeros(self.nvar)
        self.objective[aux] = 1.0
        self.rows: list[sparse.spmatrix] = []
        self.row_lo: list[np.ndarray] = []
        self.row_hi: list[np.ndarray] = []
        eye = sparse.identity(n0, format="csr")
        t_col = sparse.csr_matrix((np.ones(n0), (np.arange(n0), np.arange(n0) if p == 1 else np.zeros(n0, int))), shape=(n0, naux))
        # |x'_i - x_i| <= t (L-inf) or <= e_i (L1): two rows per pixel.
        self._add([(0, eye), (n0, -t_col)], -np.inf, x)
        self._add([(0, eye), (n0, t_col)], x, np.inf)
        if p == 1 and math.isfinite(radius):
            self._add([(n0, sparse.csr_matrix(np.ones((1, n0))))], -np.inf, np.array([radius]))
        prev = 0  # first column of the previous layer's activations
        for depth, (w, b) in enumerate(layers[:-1]):
            m = w.shape[0]
            a0, s0 = int(starts[2 + 2 * depth]), int(starts[3 + 2 * depth])
            l, u = self.bounds[depth]
            active, inactive = l >= 0, u <= 0
            free = ~active & ~inactive
            var_hi[a0 : a0 + m] = np.maximum(u, 0)
            var_lo[s0 : s0 + m], var_hi[s0 : s0 + m] = active, ~inactive
            integ[s0 : s0 + m] = free
            for rows, hi_ in ((active, b), (free, np.full(m, np.inf))):  # a = z; a >= z
                if rows.any():
                    idx = np.flatnonzero(rows)
                    self._add([(prev, sparse.csr_matrix(-w[idx])), (a0, _pick(idx, m))], b[idx], hi_[idx])
            if free.any():
                idx = np.flatnonzero(free)
                # a <= z - l (1 - s)  and  a <= u s
                self._add(
                    [(prev, sparse.csr_matrix(-w[idx])), (a0, _pick(idx, m)), (s0, _pick(idx, m, -l[idx]))],
                    np.full(len(idx), -np.inf), b[idx] - l[idx],
                )
                self._add([(a0, _pick(idx, m)), (s0, _pick(idx, m, -u[idx]))], np.full(len(idx), -np.inf), np.zeros(len(idx)))
            prev = a0
        self.last = prev  # first column of the last hidden activations (x' without hidden layers)
        self.var_lo, self.var_hi, self.integrality = var_lo, var_hi, integ

    def _add(self, blocks, lo, hi) -> None:
        """Rows made of ``(first column, matrix)`` blocks laid side by side."""
        height = blocks[0][1].shape[0]
        parts = []
        for col, mat in blocks:
            mat = sparse.coo_matrix(mat)
            parts.append(sparse.coo_matrix((mat.data, (mat.row, mat.col + col)), shape=(height, self.nvar)))
        self.rows.append(sum(parts[1:], parts[0]).tocsr())
        self.row_lo.append(np.broadcast_to(lo, (height,)).astype(float))
        self.row_hi.append(np.broadcast_to(hi, (height,)).astype(float))

    def reach(self, layers: Layers, c: int, ks: list[int], margin_lo: np.ndarray, margin: float, *, time_limit: float, gap: float):
        """Solve for ``f_k - f_c >= margin`` for the one target in ``ks``, or
        for at least one of them (a binary ``q_k`` per target, exactly one
        set, ``f_k - f_c >= margin - M_k (1 - q_k)`` with ``M_k`` from the
        lower bound ``margin_lo`` of ``f_k - f_c``)."""
        ks = np.asarray(ks)
        if len(ks) == 1:
            rows, rhs = _output_rows(self, layers, c, ks, self.nvar)
            return self.solve(rows, rhs + margin, np.full(1, np.inf), time_limit=time_limit, gap=gap)
        m = len(ks)
        width = self.nvar + m
        rows, rhs = _output_rows(self, layers, c, ks, width)
        big = np.maximum(0.0, margin - margin_lo[ks])
        q = self.nvar + np.arange(m)
        pick = sparse.csr_matrix((-big, (np.arange(m), q)), shape=(m, width))
        one = sparse.csr_matrix((np.ones(m), (np.zeros(m, int), q)), shape=(1, width))
        return self.solve(
            sparse.vstack([rows + pick, one]), np.concatenate([rhs + margin - big, [1.0]]),
            np.concatenate([np.full(m, np.inf), [1.0]]), extra_vars=m, time_limit=time_limit, gap=gap,
        )

    def solve(self, extra_rows, extra_lo, extra_hi, *, extra_vars: int = 0, time_limit: float, gap: float):
        """Solve with the output rows added (and ``extra_vars`` binaries, the
        disjunction's); the extra rows' columns run over ``nvar + extra_vars``."""
        base = sparse.vstack(self.rows).tocsr()
        base = sparse.hstack([base, sparse.csr_matrix((base.shape[0], extra_vars))]) if extra_vars else base
        a = sparse.vstack([base, extra_rows]).tocsr()
        lo = np.concatenate(self.row_lo + [extra_lo])
        hi = np.concatenate(self.row_hi + [extra_hi])
        c = np.concatenate([self.objective, np.zeros(extra_vars)])
        integ = np.concatenate([self.integrality, np.ones(extra_vars, dtype=np.uint8)])
        bounds = Bounds(np.concatenate([self.var_lo, np.zeros(extra_vars)]), np.concatenate([self.var_hi, np.ones(extra_vars)]))
        options = {"time_limit": max(time_limit, 1e-3), "mip_rel_gap": gap, "disp": False, **_QUIET_HEURISTICS}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
            return milp(c, integrality=integ, bounds=bounds, constraints=LinearConstraint(a, lo, hi), options=options)


def _pick(idx: np.ndarray, m: int, values: np.ndarray | None = None) -> sparse.csr_matrix:
    """The ``len(idx) x m`` matrix with ``values`` (default 1) at ``(r, idx[r])``."""
    vals = np.ones(len(idx)) if values is None else values
    return sparse.csr_matrix((vals, (np.arange(len(idx)), idx)), shape=(len(idx), m))


def _output_rows(program: _Program, layers: Layers, c: int, targets: np.ndarray, width: int):
    """``(W_k - W_c) a + b_k - b_c`` as rows over the last hidden activations."""
    w, b = layers[-1]
    dw = w[targets] - w[c]
    mat = sparse.coo_matrix(dw)
    rows = sparse.csr_matrix((mat.data, (mat.row, mat.col + program.last)), shape=(len(targets), width))
    return rows, b[c] - b[targets]


def _lower(res, fallback: float) -> float:
    bound = getattr(res, "mip_dual_bound", None)
    if bound is None or not np.isfinite(bound):
        return float(res.fun) if res.status == 0 else fallback
    return float(min(bound, res.fun)) if res.status == 0 else float(bound)


# ------------------------------------------------------------ the search


def minimal_perturbation(
    model: nn.Module,
    x: Tensor,
    *,
    p: float = math.inf,
    label: Tensor | None = None,
    clip: Box = (0.0, 1.0),
    start: Tensor | None = None,
    formulation: str = "targets",
    time_limit: float = 60.0,
    mip_rel_gap: float = 1e-4,
    bounds: str = "linear",
    progress: bool = False,
) -> ExactResult:
    """The smallest L-inf or L1 perturbation that changes the label of a fully
    connected ReLU network, proved minimal by mixed-integer programming.

    Minimises ``||x' - x||_p`` over ``x'`` in the box with
    ``argmax f(x') != label``, one input at a time (each is its own program).

    Args:
        model: ``nn.Sequential`` of ``Linear`` and ``ReLU`` layers, optionally
            after a ``Flatten`` (see :func:`affine_layers`); handed back unchanged.
        x: inputs ``[N, ...]`` inside ``clip``.
        p: ``float("inf")`` or ``1``.
        label: ``[N]`` the class to move away from; default the model's label of ``x``.
        clip: the input box ``(low, high)``; ``None`` only for an affine
            model or with ``start`` (interval bounds need a bounded domain).
        start: known points ``[N, ...]`` (e.g. an attack's ``x_adv``); each
            one the forward passes confirm adversarial is the first incumbent,
            and its distance bounds the search domain (pruning).
        formulation: ``"targets"`` (one program per target class, nearest by
            the linearised distance first, each bounded by the best distance
            so far) or ``"disjunctive"`` (one program, a binary per target).
        time_limit: seconds of solver time per input; when it is hit the
            result says ``"time limit"`` with what was found and proved by then.
        mip_rel_gap: the relative gap at which HiGHS stops a program.
        bounds: the ReLU bounds behind the big-M constants: ``"interval"``
            (interval bound propagation) or ``"linear"`` (the tighter of the
            interval and the linear bound of each ReLU, :func:`linear_bounds`;
            the default, several times faster overall on networks of two
            hidden layers or more).
        progress: a tqdm bar over the inputs.

    Returns:
        :class:`ExactResult`; ``success`` is judged by a forward pass on
        ``x_adv`` (where nothing was found, ``x_adv = x``).

    Example::

        res = minimal_perturbation(model, x[:5], p=1, start=deepfool(model, x[:5], p=1).x_adv)
        (res.lower_bound <= res.distance).all()
    """
    p = norms.check_p(p)
    if p not in (1.0, math.inf):
        raise ValueError(f"p must be 1 or inf (the norms a linear program states), got {p!r}")
    check_inputs(x, clip)
    checks.choice(formulation, "formulation", FORMULATIONS)
    checks.choice(bounds, "bounds", BOUNDS)
    time_limit = checks.number(time_limit, "time_limit", low=0, low_open=True)
    mip_rel_gap = checks.number(mip_rel_gap, "mip_rel_gap", low=0, high=1)
    checks.flag(progress, "progress")
    layers = affine_layers(model)
    n = x.shape[0]
    if math.prod(x.shape[1:]) != layers[0][0].shape[1]:
        raise ValueError(f"x has {math.prod(x.shape[1:])} values per sample, the model's first layer takes {layers[0][0].shape[1]}")
    if start is not None:
        if not isinstance(start, Tensor) or start.shape != x.shape:
            raise ValueError(f"start must be a tensor of x's shape {tuple(x.shape)}, got {getattr(start, 'shape', type(start).__name__)}")
        check_inputs(start, clip)
    if clip is None and len(layers) > 1 and start is None:
        raise ValueError("clip=None needs start: the ReLUs' big-M constants need a bounded input domain")

    with attacking(model):
        model64 = copy.deepcopy(model).double()
        logits = logits_of(model, x)
        label = logits.argmax(1) if label is None else check_labels(label, x, logits.shape[1])
        flat = x.detach().double().flatten(1).cpu().numpy()
        box = (np.full(flat.shape[1], -np.inf), np.full(flat.shape[1], np.inf)) if clip is None else (
            np.full(flat.shape[1], clip[0]), np.full(flat.shape[1], clip[1]))
        x_adv = x.detach().clone()
        out = dict(distance=np.full(n, math.inf), lower=np.zeros(n), seconds=np.zeros(n), programs=np.zeros(n, int))
        status = []
        bar = tqdm(total=n, desc=f"exact L{p:g}", disable=not progress, leave=False)

        def solve(i: int, _: int):
            found = _one(
                model, model64, layers, x[i], flat[i], int(label[i]), p, box,
                None if start is None else start[i], formulation, time_limit, mip_rel_gap, bounds == "linear",
            )
            bar.update(1)
            return found

        # One image per chunk: under torchrun each rank solves a contiguous run of them.
        for i, (found, record) in enumerate(distributed.map_chunks(solve, n, 1)):
            if found is not None:
                x_adv[i] = found
            for key in out:
                out[key][i] = record[key]
            status.append(record["status"])
        bar.close()
        label_adv = logits_of(model, x_adv).argmax(1)

    distance = torch.as_tensor(out["distance"])
    return ExactResult(
        x_adv=x_adv,
        perturbation=x_adv - x,
        success=label_adv != label,
        iterations=torch.as_tensor(out["programs"]),
        label_orig=label,
        label_adv=label_adv,
        p=p,
        distance=distance,
        lower_bound=torch.minimum(torch.as_tensor(out["lower"]), distance),
        optimal=torch.tensor([s == "optimal" for s in status]),
        status=status,
        seconds=torch.as_tensor(out["seconds"]),
    )


def _one(model, model64, layers, x, flat, c, p, box, start, formulation, time_limit, gap, linear):
    """One input: the programs, the checked point, the certified bound."""
    clock = time.perf_counter()
    best_point, best = None, math.inf
    record = dict(programs=0, status="optimal")

    def confirm(point: np.ndarray):
        """The solver's point, pushed outwards along its ray until both forward
        passes (float64, and the model's dtype) put it outside class ``c``."""
        ray = point - flat
        cand = np.stack([flat + (1 + s) * ray for s in _PUSH])
        cand = np.clip(cand, *box)
        ours = torch.as_tensor(cand, dtype=x.dtype, device=x.device).view(len(_PUSH), *x.shape)
        with torch.no_grad():
            f64 = logits_of(model64, ours.double())
            # A margin over float32's rounding of the logits: the point must stay
            # adversarial in any batch the model evaluates it in.
            rest = f64.clone()
            rest[:, c] = -math.inf
            tol = _ROUNDING * torch.finfo(x.dtype).eps * (1 + f64.abs().amax(1))
            clear = rest.amax(1) - f64[:, c] > tol
            ok = clear & (logits_of(model, ours).argmax(1) != c)
        if not ok.any():
            return None, math.inf
        z = ours[int(ok.nonzero()[0])]
        return z, float(norms.norm(z.double().flatten() - torch.as_tensor(flat), p, dim=0))

    def offer(point: np.ndarray | None) -> bool:
        nonlocal best_point, best
        if point is None:
            return False
        z, dist = confirm(point)
        if z is None:
            return False
        if dist < best:
            best_point, best = z, dist
        return True

    if start is not None:
        offer(start.detach().double().flatten().cpu().numpy())
    if not math.isfinite(best) and not np.isfinite(box).all() and len(layers) > 1:
        raise ValueError("clip=None needs a start point that is adversarial for every input (it bounds the domain)")
    targets = np.array([k for k in range(layers[-1][0].shape[0]) if k != c])
    if formulation == "targets":
        jobs = [[k] for k in targets[np.argsort(_local_distances(layers, flat, c, p)[targets], kind="stable")]]
    else:
        jobs = [list(targets)]
    # Near a tie of two logits the ray gains margin too slowly for the pushes:
    # then the program is solved again asking for this margin outright.
    with torch.no_grad():
        scale = float(logits_of(model64, x.double()[None]).abs().max())
    margin = 2 * _ROUNDING * torch.finfo(x.dtype).eps * (1 + scale)
    lower = math.inf
    timed_out = unverified = False
    program = None
    for ks in jobs:
        left = time_limit - (time.perf_counter() - clock)
        if left <= 0:
            timed_out, lower = True, 0.0  # the targets not tried are not bounded
            break
        if program is None or program.radius != best:  # a new incumbent shrinks the domain
            program = _Program(layers, flat, box, p, best, linear)
        margin_lo, margin_hi = _margin_bounds(layers, program.bounds, program.domain, c, linear)
        ks = [k for k in ks if margin_hi[k] >= 0]
        if not ks:
            lower = min(lower, best)  # no target can win anywhere within the best distance
            continue
        res = program.reach(layers, c, ks, margin_lo, 0.0, time_limit=left, gap=gap)
        record["programs"] += 1
        if res.status == 2:
            lower = min(lower, best)  # infeasible within the best distance
            continue
        if res.status not in (0, 1):
            raise RuntimeError(f"exact: HiGHS failed on target(s) {ks}: {res.message}")
        lower = min(lower, _lower(res, 0.0))
        timed_out |= res.status == 1
        if res.x is not None and not offer(res.x[: program.n0]) and res.status == 0:
            left = time_limit - (time.perf_counter() - clock)
            again = program.reach(layers, c, ks, margin_lo, margin, time_limit=left, gap=gap)
            record["programs"] += 1
            unverified |= again.x is None or not offer(again.x[: program.n0])

    record["seconds"] = time.perf_counter() - clock
    record["distance"] = best
    record["lower"] = min(lower, best)
    if timed_out:
        record["status"] = "time limit"
    elif unverified:
        record["status"] = "unverified"
    elif best_point is None:
        record["status"] = "no adversarial"
    return best_point, record
