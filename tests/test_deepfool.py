"""DeepFool against the closed-form minimal perturbations of affine classifiers
(the DeepFool paper, Sections 2-3), then its behaviour on nonlinear models."""

import math
import sys

import pytest
import torch

from advlib import norms
from advlib.attacks import deepfool

P_VALUES = [2.0, math.inf, 1.0, 3.0, 1.5]


def affine(weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Linear:
    model = torch.nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    return model


def exact_multiclass(weight, bias, x, p):
    """Projection on the closest face of the polyhedron, in the Lp norm."""
    f = x @ weight.T + bias
    k0 = f.argmax(1)
    q = norms.dual(p)
    w = weight[None, :, :] - weight[k0][:, None, :]  # [N, C, d]
    fk = (f - f.gather(1, k0[:, None])).abs()  # [N, C]
    dist = fk / torch.linalg.vector_norm(w, ord=q, dim=2)
    dist[torch.arange(len(x)), k0] = math.inf
    d, l = dist.min(1)
    return d[:, None] * norms.steepest(w[torch.arange(len(x)), l], p)


@pytest.fixture
def multiclass():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(7, 30, generator=g, dtype=torch.float64)
    bias = torch.randn(7, generator=g, dtype=torch.float64)
    # Spread the points so the distances to the boundary are of order 1 and
    # more: the authors' 1e-4 step margin is then below 1e-4 relative.
    x = 8 * torch.randn(16, 30, generator=g, dtype=torch.float64)
    return weight, bias, x


@pytest.mark.parametrize("p", P_VALUES)
def test_affine_multiclass_is_exact_in_one_iteration(multiclass, p):
    weight, bias, x = multiclass
    model = affine(weight, bias)
    r_star = exact_multiclass(weight, bias, x, p)
    # Without the stall margin: the closed form to machine precision.
    res = deepfool(model, x, p=p, clip=None, candidates=7, step_margin=0.0)
    assert res.success.all() and (res.iterations == 1).all()
    torch.testing.assert_close(res.perturbation, 1.02 * r_star, rtol=1e-12, atol=1e-12)
    # With the authors' defaults the step is longer by exactly their 1e-4
    # margin (in the norm minimised): within 1e-4 relative wherever the
    # minimal perturbation has norm >= 1.
    res = deepfool(model, x, p=p, clip=None, candidates=7)
    assert (res.iterations == 1).all()
    excess = norms.lp_norm(res.perturbation - 1.02 * r_star, p)
    torch.testing.assert_close(excess, torch.full_like(excess, 1.02e-4), rtol=1e-8, atol=0)
    far = norms.lp_norm(r_star, p) >= 1
    assert far.sum() >= 4
    assert (excess[far] / norms.lp_norm(1.02 * r_star[far], p)).max() < 1e-4
    assert (res.label_adv != res.label_orig).all()


@pytest.mark.parametrize("p", P_VALUES)
def test_affine_binary_single_logit_is_exact(p):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1, 12, generator=g, dtype=torch.float64)
    b = torch.randn(1, generator=g, dtype=torch.float64)
    x = 3 * torch.randn(10, 12, generator=g, dtype=torch.float64)
    model = affine(w, b)
    f = (x @ w.T + b).squeeze(1)
    # r* = -f w / ||w||_2^2 for p = 2; in general |f| / ||w||_q along the
    # steepest unit-Lp direction that moves f towards the other side.
    direction = norms.steepest(-f.sign()[:, None] * w, p)
    r_star = (f.abs() / torch.linalg.vector_norm(w, ord=norms.dual(p)))[:, None] * direction
    if p == 2:
        torch.testing.assert_close(r_star, -f[:, None] * w / (w**2).sum())
    res = deepfool(model, x, p=p, clip=None, step_margin=0.0)
    assert res.success.all() and (res.iterations == 1).all()
    torch.testing.assert_close(res.perturbation, 1.02 * r_star, rtol=1e-12, atol=1e-12)
    assert torch.equal(res.label_orig, (f > 0).long())
    assert torch.equal(res.label_adv, (f <= 0).long())


def test_overshoot_zero_lands_on_the_boundary():
    g = torch.Generator().manual_seed(2)
    w, b = torch.randn(1, 5, generator=g, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    res = deepfool(affine(w, b), x, clip=None, overshoot=0.0, step_margin=0.0, max_iter=1)
    torch.testing.assert_close((res.x_adv @ w.T + b).squeeze(1), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)


def small_net(seed=0, in_dim=20, classes=5):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, classes)
    )


@pytest.mark.parametrize("p", [2.0, math.inf, 1.0])
def test_nonlinear_in_box_flips_every_sample(p):
    model = small_net()
    x = torch.rand(64, 20, generator=torch.Generator().manual_seed(3))
    res = deepfool(model, x, p=p)
    assert res.success.all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    torch.testing.assert_close(res.perturbation, res.x_adv - x)
    with torch.no_grad():
        assert torch.equal(model(res.x_adv).argmax(1), res.label_adv)
    assert (res.label_adv != res.label_orig).all()
    assert res.iterations.float().mean() < 10


def test_batch_composition_does_not_change_a_sample():
    """Finished samples leave the batch: each sample's result must be the one
    it gets when attacked alone."""
    model = small_net(seed=4)
    x = torch.rand(12, 20, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    batch = deepfool(model, x)
    for i in range(len(x)):
        alone = deepfool(model, x[i : i + 1])
        torch.testing.assert_close(alone.x_adv[0], batch.x_adv[i], rtol=1e-5, atol=1e-6)
        assert alone.iterations[0] == batch.iterations[i]


def test_not_flipped_within_max_iter_is_not_a_success():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(3, 8, generator=g, dtype=torch.float64)
    model = affine(w, torch.zeros(3, dtype=torch.float64))
    x = torch.rand(6, 8, generator=g, dtype=torch.float64)
    # overshoot 0 and no margin: the single step lands exactly on the boundary
    # (a tie), which argmax may or may not break; with a shrunken step it never crosses.
    res = deepfool(model, x, max_iter=1, overshoot=0.0, step_margin=0.0, clip=None)
    assert res.iterations.max() <= 1
    with torch.no_grad():
        truth = model(res.x_adv).argmax(1) != res.label_orig
    assert torch.equal(res.success, truth)


def test_saturated_box_still_flips_with_l1():
    """Pixels on the box must not absorb the whole L1 step (they cannot move)."""
    model = small_net(seed=7)
    x = (torch.rand(32, 20, generator=torch.Generator().manual_seed(8)) > 0.5).float()  # all on the box
    res = deepfool(model, x, p=1.0)
    assert res.success.all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_candidates_restricts_the_classes():
    model = small_net(seed=9, classes=8)
    x = torch.rand(40, 20, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        top2 = model(x).topk(2, dim=1).indices
    res = deepfool(model, x, candidates=2)
    # With two candidates the first step heads for the runner-up class.
    one = deepfool(model, x, candidates=2, max_iter=1)
    assert torch.equal(one.label_adv[one.success], top2[one.success, 1])
    assert res.success.float().mean() > 0.9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p": 0.5}, "p must"),
        ({"overshoot": -0.1}, "overshoot"),
        ({"max_iter": 0}, "max_iter"),
        ({"candidates": 1}, "candidates"),
        ({"clip": (1.0, 0.0)}, "clip"),
        ({"min_progress": -0.1}, "min_progress"),
        ({"min_progress": 1.5}, "min_progress"),
        ({"refresh": 0}, "refresh"),
        ({"refresh": True}, "refresh"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        deepfool(small_net(), torch.rand(2, 20), **kwargs)


def mostly_on_the_box(seed=12, n=64, d=20):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) * (torch.rand(n, d, generator=g) > 0.6)  # 60% of pixels at 0


def test_min_progress_keeps_the_box_from_stalling_the_steps():
    """On inputs that sit mostly on the box, the plain clipped steps creep up
    to the boundary and some never reach it in 50 steps; steps that must close
    half of the linearised gap reach it, and no further from the input."""
    model = small_net(seed=11)
    x = mostly_on_the_box()
    plain = deepfool(model, x, min_progress=0.0)
    guarded = deepfool(model, x)
    assert not plain.success.all() and plain.iterations.max() == 50
    assert guarded.success.all() and guarded.iterations.max() < 25
    assert guarded.norms().median() <= 1.01 * plain.norms().median()
    assert guarded.x_adv.min() >= 0 and guarded.x_adv.max() <= 1
    # Solving every blocked step within the free pixels takes fewer, longer steps.
    free = deepfool(model, x, min_progress=1.0)
    assert free.success.all() and free.iterations.float().mean() < 0.5 * guarded.iterations.float().mean()


def test_min_progress_changes_nothing_where_the_box_does_not_block():
    model = small_net(seed=11)
    x = mostly_on_the_box()
    # Without a box there is nothing to block: the same algorithm.
    assert torch.equal(deepfool(model, x, clip=None, min_progress=0.0).x_adv, deepfool(model, x, clip=None).x_adv)
    # Inside the box, away from its faces, neither.
    inner = 0.4 + 0.2 * torch.rand(32, 20, generator=torch.Generator().manual_seed(13))
    assert torch.equal(deepfool(model, inner, min_progress=0.0).x_adv, deepfool(model, inner).x_adv)


class CountingBackward(torch.autograd.Function):
    """The identity, counting the backward passes that reach the input."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        CountingBackward.calls += 1
        return g


class Counted(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        return self.net(CountingBackward.apply(x))


@pytest.mark.parametrize("refresh", [None, 1, 2, 4])
def test_passes_per_iteration(refresh, monkeypatch):
    """One forward pass per iteration and one that judges the returned batch;
    K - 1 backward passes at the first, then ``refresh`` (all K - 1 for None),
    whatever the batch size (with the check of stale estimates turned off:
    the next test counts what it adds)."""
    monkeypatch.setattr(sys.modules["advlib.attacks.deepfool"], "_SLACK", 0.0)
    model = Counted(small_net(seed=14, classes=8))
    x = mostly_on_the_box(seed=15, n=48)
    CountingBackward.calls = 0
    res = deepfool(model, x, candidates=6, refresh=refresh)
    steps = int(res.iterations.max())
    assert steps >= 3  # the test must see later iterations
    assert model.forwards == steps + 2
    later = 5 if refresh is None else min(refresh, 5)
    assert CountingBackward.calls == 5 + later * (steps - 1)


def test_stale_estimates_are_checked(monkeypatch):
    """Where a candidate left stale looks nearly as near as the one recomputed,
    it is recomputed too, for those samples only: a few more samples forwarded,
    and more points of refresh=None than without the check."""
    model = small_net(seed=21, classes=8)
    x = mostly_on_the_box(seed=22, n=128)
    full = deepfool(model, x, refresh=None)

    def run(slack):
        monkeypatch.setattr(sys.modules["advlib.attacks.deepfool"], "_SLACK", slack)
        sizes = []
        hook = model.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
        res = deepfool(model, x, refresh=1)
        hook.remove()
        same = ((res.x_adv - full.x_adv).flatten(1).abs().amax(1) < 1e-6).float().mean()
        return same, len(sizes) - int(res.iterations.max()) - 2, sum(sizes)

    unchecked, checked = run(0.0), run(1.25)
    assert unchecked[1] == 0 and checked[1] > 0  # passes beyond one per iteration
    assert checked[2] < 1.1 * unchecked[2]  # of few samples
    assert checked[0] > unchecked[0], (checked, unchecked)


def test_refresh_is_exact_on_affine_models():
    """With constant gradients the last computed norms are the current ones, so
    refreshing one candidate picks the same face as refreshing all of them;
    the box makes the steps creep, so there are later iterations to compare."""
    g = torch.Generator().manual_seed(16)
    model = affine(torch.randn(6, 20, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64))
    x = mostly_on_the_box(seed=17, n=40).double()
    full = deepfool(model, x, refresh=None, min_progress=0.0)
    assert full.iterations.max() >= 3
    for refresh in (1, 2):
        lazy = deepfool(model, x, refresh=refresh, min_progress=0.0)
        assert torch.equal(lazy.x_adv, full.x_adv) and torch.equal(lazy.iterations, full.iterations)


def test_refresh_agrees_with_algorithm_2_on_a_nonlinear_model():
    model = small_net(seed=18, classes=8)
    x = mostly_on_the_box(seed=19, n=128)
    full = deepfool(model, x, refresh=None)
    lazy = deepfool(model, x)
    assert lazy.success.all() and full.success.all()
    same = (lazy.x_adv - full.x_adv).flatten(1).abs().amax(1) < 1e-6
    assert same.float().mean() >= 0.9
    ratio = lazy.norms().median() / full.norms().median()
    assert 0.97 < ratio < 1.03


@pytest.mark.parametrize("clip", [(0.0, 1.0), None], ids=["box", "no box"])
def test_trace_holds_the_iterates_of_every_step(clip):
    """trace["x"][k] is the batch after k steps: exactly what max_iter=k returns
    (a finished sample's rows repeat its returned point), so one run serves
    a figure of every step."""
    model = small_net(seed=21, classes=5)
    x = mostly_on_the_box(seed=22, n=12)
    res = deepfool(model, x, clip=clip, trace=True)
    rows = res.trace["x"]
    steps = int(res.iterations.max())
    assert steps >= 2
    assert rows.shape == (steps + 1, *x.shape)
    assert torch.equal(rows[0], x) and torch.equal(rows[-1], res.x_adv)
    for k in range(1, steps + 1):
        assert torch.equal(rows[k], deepfool(model, x, clip=clip, max_iter=k).x_adv), k
    # After its last step a sample does not move.
    for i, it in enumerate(res.iterations.tolist()):
        assert (rows[it:, i] == res.x_adv[i]).all()
    assert deepfool(model, x).trace == {}


def test_label_is_the_class_moved_away_from():
    """label= fixes k0: with the model's own label it is the default; a sample
    whose model label already differs is returned unchanged, a success."""
    model = small_net(seed=23, classes=5)
    x = torch.rand(10, 20, generator=torch.Generator().manual_seed(24))
    default = deepfool(model, x)
    assert torch.equal(deepfool(model, x, label=default.label_orig).x_adv, default.x_adv)
    other = (default.label_orig + 1) % 5
    moved = deepfool(model, x, label=other)
    assert moved.success.all() and (moved.perturbation == 0).all() and (moved.iterations == 0).all()


def test_outward_marks_exactly_the_pixels_on_the_box():
    from importlib import import_module

    outward = import_module("advlib.attacks.deepfool")._outward
    lo, hi = torch.tensor(-0.3), torch.tensor(0.7)
    # One float32 step inside each bound is not on the box.
    inside = torch.nextafter(torch.stack([lo, hi]), torch.tensor(0.0))
    x = torch.cat([torch.stack([lo, hi, torch.tensor(0.0)]), inside])
    assert outward(x[None], (lo.item(), hi.item())).tolist() == [[-1.0, 1.0, 0.0, 0.0, 0.0]]
