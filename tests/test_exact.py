"""advlib.exact: the exact minimal L-inf and L1 perturbations, against the
closed form on affine models and a brute force over activation patterns on
tiny ReLU networks; the returned points, the bounds, the options, the errors."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from advlib import exact, norms
from advlib.attacks import deepfool

INF = math.inf


def affine(weight, bias) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.eval()


def relu_net(sizes, seed, dtype=torch.float64, scale=1.0) -> nn.Sequential:
    """A random ReLU network; ``scale`` multiplies every weight and bias (3 gives
    logits of a trained network's size, where PyTorch's default init gives ~0.1)."""
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    model = nn.Sequential(*layers).to(dtype).eval()
    with torch.no_grad():
        for q in model.parameters():
            q.mul_(scale)
    return model


def closed_form(weight, bias, x, p):
    """The DeepFool paper's affine answer without a box: the distance to the
    nearest face, |f_k - f_c| / ||w_k - w_c||_q (q the dual of p)."""
    f = x @ weight.T + bias
    c = f.argmax(1)
    w = weight[None] - weight[c][:, None]
    dist = (f.gather(1, c[:, None]) - f) / torch.linalg.vector_norm(w, ord=norms.dual(p), dim=2)
    dist[torch.arange(len(x)), c] = INF
    return dist.min(1)


def brute_force(model, x, p, clip=(0.0, 1.0)):
    """The minimum over every activation pattern and target of the LP in which
    the network is the affine map of that pattern: exact, and exponential."""
    layers = exact.affine_layers(model)
    x = x.double().flatten().numpy()
    n0 = len(x)
    widths = [w.shape[0] for w, _ in layers[:-1]]
    c = int(np.argmax(model(torch.as_tensor(x).view(1, -1).to(next(model.parameters()).dtype)).detach().numpy()))
    best = INF
    naux = 1 if p == INF else n0
    # Variables [x' | aux]; objective sum(aux).
    cost = np.concatenate([np.zeros(n0), np.ones(naux)])
    t_block = -np.ones((n0, 1)) if p == INF else -np.eye(n0)
    obj_rows = np.vstack([np.hstack([np.eye(n0), t_block]), np.hstack([-np.eye(n0), t_block])])
    obj_rhs = np.concatenate([x, -x])
    for pattern in itertools.product((0, 1), repeat=sum(widths)):
        rows, rhs = [], []
        lin, off, start = np.eye(n0), np.zeros(n0), 0
        for (w, b), m in zip(layers[:-1], widths):
            zl, zo = w @ lin, w @ off + b
            on = np.array(pattern[start : start + m], dtype=bool)
            start += m
            # on: z >= 0  ->  -z <= 0;  off: z <= 0
            sign = np.where(on, -1.0, 1.0)
            rows.append(sign[:, None] * zl)
            rhs.append(-sign * zo)
            lin, off = zl * on[:, None], zo * on
        w, b = layers[-1]
        for k in range(w.shape[0]):
            if k == c:
                continue
            d_lin, d_off = (w[k] - w[c]) @ lin, (w[k] - w[c]) @ off + b[k] - b[c]
            a = np.vstack([np.hstack([r, np.zeros((len(r), naux))]) for r in rows + [-d_lin[None]]] + [obj_rows])
            ub = np.concatenate(rhs + [[d_off], obj_rhs])
            res = linprog(cost, A_ub=a, b_ub=ub, bounds=[clip] * n0 + [(0, None)] * naux, method="highs")
            if res.status == 0:
                best = min(best, res.fun)
    return best


# ------------------------------------------------------------ affine models


@pytest.mark.parametrize("p", [INF, 1.0])
def test_affine_closed_form_without_box(p):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(5, 12, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    model = affine(weight, bias)
    x = torch.rand(6, 12, generator=g, dtype=torch.float64)
    want, face = closed_form(weight, bias, x, p)
    res = exact.minimal_perturbation(model, x, p=p, clip=None)
    assert res.status == ["optimal"] * 6 and res.optimal.all()
    assert (res.lower_bound <= want * (1 + 1e-9)).all()
    torch.testing.assert_close(res.distance, want, rtol=1e-4, atol=1e-9)
    assert (res.label_adv == face).all()
    torch.testing.assert_close(res.norms(p), res.distance)


@pytest.mark.parametrize("p", [INF, 1.0])
@pytest.mark.parametrize("formulation", exact.FORMULATIONS)
def test_affine_in_a_box_matches_the_brute_force(p, formulation):
    """With the box binding (points near its corner), the closed form no longer
    holds; the LP per target (a brute force with no ReLU) does."""
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(4, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    model = affine(weight, bias)
    x = torch.rand(5, 3, generator=g, dtype=torch.float64) * 0.2
    res = exact.minimal_perturbation(model, x, p=p, formulation=formulation)
    for i in range(len(x)):
        want = brute_force(model, x[i], p)
        assert res.lower_bound[i] <= want * (1 + 1e-7) + 1e-9
        assert res.distance[i] == pytest.approx(want, rel=1e-4, abs=1e-9)


def test_single_logit_model_is_read_as_two_logits():
    model = nn.Linear(3, 1).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        model.bias.fill_(0.1)
    x = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)  # f = -0.15: label 0
    res = exact.minimal_perturbation(model, x, p=INF, clip=None)
    assert res.distance.item() == pytest.approx(0.15 / 3.5, rel=1e-4)
    assert res.label_orig.item() == 0 and res.label_adv.item() == 1


# ------------------------------------------------------------ ReLU networks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("p", [INF, 1.0])
def test_relu_network_matches_the_brute_force(seed, p):
    model = relu_net([3, 4, 3, 3], seed)
    x = torch.rand(2, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    found = {
        (form, b): exact.minimal_perturbation(model, x, p=p, formulation=form, bounds=b, mip_rel_gap=1e-7)
        for form in exact.FORMULATIONS
        for b in exact.BOUNDS
    }
    for i in range(len(x)):
        want = brute_force(model, x[i], p)
        for key, res in found.items():
            assert res.status[i] == ("optimal" if math.isfinite(want) else "no adversarial"), key
            assert res.lower_bound[i] <= want * (1 + 1e-6) + 1e-9, key
            assert res.distance[i] >= want * (1 - 1e-6) - 1e-9, key
            assert res.distance[i] == pytest.approx(want, rel=1e-3, abs=1e-9), key


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_returned_points_are_adversarial_in_float32_and_float64(scale):
    """At scale 1 the logits are ~0.1 and some images sit near a tie of two,
    where the point must move further for float32 to agree on its label (the
    gap then reaches ~0.5%); at scale 3 the logits are as large as a trained
    network's and the gap is the solver's."""
    model = relu_net([8, 10, 10, 4], 3, dtype=torch.float32, scale=scale)
    x = torch.rand(6, 8, generator=torch.Generator().manual_seed(3))
    for p in (INF, 1.0):
        res = exact.minimal_perturbation(model, x, p=p)
        assert res.x_adv.dtype == torch.float32 and res.success.all()
        assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
        with torch.no_grad():
            assert (model(res.x_adv).argmax(1) != res.label_orig).all()
            assert (model.double()(res.x_adv.double()).argmax(1) != res.label_orig).all()
            model.float()
        assert torch.equal(res.perturbation, res.x_adv - x)
        torch.testing.assert_close(res.distance, norms.lp_norm(res.x_adv.double() - x.double(), p))
        assert (res.label_adv == model(res.x_adv).argmax(1)).all()
        assert res.status == ["optimal"] * 6
        assert (res.gap >= 0).all() and (res.gap <= (1e-2 if scale == 1 else 2e-4)).all()


def test_lower_bound_is_never_above_an_attack():
    model = relu_net([12, 8, 8, 5], 4, dtype=torch.float32, scale=3.0)
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(4))
    for p in (INF, 1.0):
        attack = deepfool(model, x, p=p)
        res = exact.minimal_perturbation(model, x, p=p)
        hit = attack.success
        assert hit.any()
        assert (res.lower_bound[hit] <= attack.norms(p).double()[hit] + 1e-7).all()
        assert (res.distance[hit] <= attack.norms(p).double()[hit] * (1 + 1e-3)).all()


def test_start_prunes_without_changing_the_answer():
    model = relu_net([10, 8, 8, 4], 5, dtype=torch.float32, scale=3.0)
    x = torch.rand(5, 10, generator=torch.Generator().manual_seed(5))
    plain = exact.minimal_perturbation(model, x, p=INF)
    start = deepfool(model, x, p=INF)
    primed = exact.minimal_perturbation(model, x, p=INF, start=start.x_adv)
    torch.testing.assert_close(primed.distance, plain.distance, rtol=2e-3, atol=1e-7)
    assert primed.status == plain.status == ["optimal"] * 5
    # A start that is not adversarial (x itself) is ignored.
    same = exact.minimal_perturbation(model, x, p=INF, start=x)
    torch.testing.assert_close(same.distance, plain.distance, rtol=2e-3, atol=1e-7)


def test_time_limit_is_reported_as_not_optimal():
    model = relu_net([64, 40, 40, 10], 6, dtype=torch.float32, scale=3.0)
    x = torch.rand(2, 64, generator=torch.Generator().manual_seed(6))
    start = deepfool(model, x, p=INF)
    res = exact.minimal_perturbation(model, x, p=INF, start=start.x_adv, time_limit=1e-3)
    assert res.status == ["time limit"] * 2 and not res.optimal.any()
    assert (res.lower_bound <= res.distance).all()
    # The known point is still returned (and re-checked), never worse than it.
    assert res.success.all()
    assert (res.distance <= start.norms(INF).double() * (1 + 1e-2)).all()


def test_no_adversarial_in_the_box():
    model = nn.Linear(2, 2).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.0, -5.0]))  # class 1 would need x_0 > 5
    res = exact.minimal_perturbation(model, torch.full((1, 2), 0.5, dtype=torch.float64), p=INF)
    assert res.status == ["no adversarial"] and not res.success.any()
    assert res.distance.item() == INF and res.lower_bound.item() == INF
    assert torch.equal(res.x_adv, torch.full((1, 2), 0.5, dtype=torch.float64))


def test_model_is_handed_back_unchanged():
    model = relu_net([6, 5, 3], 7, dtype=torch.float32).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exact.minimal_perturbation(model, torch.rand(2, 6), p=1)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(q.requires_grad for q in model.parameters())


# ------------------------------------------------------------ the pieces


def test_domain_minimum_is_the_lp_optimum():
    rng = np.random.default_rng(0)
    for radius in (0.05, 0.3, 2.0, INF):
        x = rng.uniform(0, 1, 7)
        lo, hi = np.maximum(0, x - 0.4), np.minimum(1, x + 0.4)
        lam = rng.normal(size=(5, 7))
        got = exact.Domain(x, lo, hi, radius).minimum(lam)
        for row, value in zip(lam, got):
            # min row . x'  over  lo <= x' <= hi,  sum e <= radius,  |x' - x| <= e
            a = np.vstack([np.hstack([np.eye(7), -np.eye(7)]), np.hstack([-np.eye(7), -np.eye(7)])])
            b = np.concatenate([x, -x])
            if math.isfinite(radius):
                a, b = np.vstack([a, np.concatenate([np.zeros(7), np.ones(7)])]), np.append(b, radius)
            res = linprog(np.concatenate([row, np.zeros(7)]), A_ub=a, b_ub=b,
                          bounds=list(zip(lo, hi)) + [(0, None)] * 7, method="highs")
            assert value == pytest.approx(res.fun, abs=1e-9)


@pytest.mark.parametrize("method", [exact.interval_bounds, exact.linear_bounds])
@pytest.mark.parametrize("radius", [0.1, INF])
def test_bounds_hold_on_sampled_points(method, radius):
    model = relu_net([6, 8, 8, 8, 3], 8)
    layers = exact.affine_layers(model)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 6)
    domain = exact.Domain(x, np.maximum(0, x - 0.3), np.minimum(1, x + 0.3), radius)
    bounds = method(layers, domain)
    # Points of the domain: in the box and, for a finite radius, its L1 ball.
    pts = rng.uniform(domain.lo, domain.hi, size=(4000, 6))
    if math.isfinite(radius):
        d = pts - x
        pts = x + d * np.minimum(1, radius / np.abs(d).sum(1, keepdims=True))
    a = pts
    for (w, b), (l, u) in zip(layers[:-1], bounds[:-1]):
        z = a @ w.T + b
        assert (z >= l - 1e-9).all() and (z <= u + 1e-9).all()
        a = np.maximum(z, 0)
    assert (a >= bounds[-1][0] - 1e-9).all() and (a <= bounds[-1][1] + 1e-9).all()


def test_linear_bounds_are_tighter_than_interval_bounds():
    model = relu_net([6, 8, 8, 8, 3], 9)
    layers = exact.affine_layers(model)
    x = np.full(6, 0.5)
    domain = exact.Domain(x, x - 0.2, x + 0.2)
    ib, lb = exact.interval_bounds(layers, domain), exact.linear_bounds(layers, domain)
    np.testing.assert_allclose(ib[0][0], lb[0][0])  # the first layer's are exact in both
    for (il, iu), (ll, lu) in zip(ib, lb):
        assert (ll >= il - 1e-12).all() and (lu <= iu + 1e-12).all()
    assert sum((lu - ll).sum() for ll, lu in lb) < sum((iu - il).sum() for il, iu in ib)


def test_affine_layers_reads_flatten_linear_relu():
    from advlib import models

    model = models.mlp((1, 3, 3), 4, hidden=5, depth=2)
    layers = exact.affine_layers(nn.Sequential(model, nn.Identity()))
    assert [w.shape for w, _ in layers] == [(5, 9), (5, 5), (4, 5)]
    assert all(w.dtype == np.float64 for w, _ in layers)


@pytest.mark.parametrize(
    "model, message",
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)), "layer 0 is Conv2d"),
        (nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), "layer 1 is Tanh"),
        (nn.Sequential(nn.Linear(4, 3), nn.ReLU()), "must end with a Linear"),
        (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.ReLU(), nn.Linear(3, 2)), "layer 2 is ReLU where a Linear"),
    ],
)
def test_unsupported_models(model, message):
    with pytest.raises(TypeError, match=message):
        exact.minimal_perturbation(model, torch.rand(1, 4), p=INF)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(p=2), ValueError, "p must be 1 or inf"),
        (dict(formulation="both"), ValueError, "formulation must be one of"),
        (dict(bounds="lp"), ValueError, "bounds must be one of"),
        (dict(time_limit=0), ValueError, "time_limit must be"),
        (dict(mip_rel_gap=-1e-3), ValueError, "mip_rel_gap"),
        (dict(clip=None), ValueError, "clip=None needs start"),
        (dict(start=torch.rand(2, 4)), ValueError, "start must be a tensor of x's shape"),
        (dict(progress=1), TypeError, "progress must be True or False"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    model = relu_net([4, 3, 2], 0, dtype=torch.float32)
    with pytest.raises(error, match=message):
        exact.minimal_perturbation(model, torch.rand(1, 4), **kwargs)


def test_input_size_mismatch():
    with pytest.raises(ValueError, match="first layer takes 4"):
        exact.minimal_perturbation(relu_net([4, 3, 2], 0, dtype=torch.float32), torch.rand(1, 5))
