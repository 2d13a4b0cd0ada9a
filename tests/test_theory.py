"""Definition IV.1 and Theorem IV.2 of Ozbulak et al. (advlib.theory) against
autograd: the exact decomposition to rounding error, the approximation's error
vanishing in the limit the theorem states, and its proven bound."""

import math

import pytest
import torch
from torch import nn

from advlib import losses, models, theory
from advlib.theory import S1, S2, S3


def autograd_ce(jacobian, logits, target):
    """Autograd's gradient of the targeted CE for a model whose logits at x0 = 0
    are ``logits`` and whose Jacobian there is ``jacobian``: g(x) = logits + J x."""
    n, c = logits.shape
    x = torch.zeros(n, *jacobian.shape[2:], dtype=jacobian.dtype, requires_grad=True)
    g = logits + torch.einsum("nc...,n...->nc", jacobian, x)
    (grad,) = torch.autograd.grad(losses.ce.value(g, target, targeted=True).sum(), x)
    return grad


def rel(a, b):
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().item()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def dominated(gen, n, c, dominant, gap=4.0):
    """Logits where class ``dominant`` (a tensor [n]) leads every other by at least ``gap``."""
    z = 0.5 * torch.randn(n, c, generator=gen, dtype=torch.float64)
    lead = z.amax(1) + gap + torch.rand(n, generator=gen, dtype=torch.float64)
    return z.scatter(1, dominant[:, None], lead[:, None])


# ---------------------------------------------------------------- Definition IV.1


def test_subspace_on_hand_made_logits():
    logits = torch.tensor(
        [
            [5.0, 0.0, 0.0],  # sigma_0 = 0.987
            [0.0, 5.0, 0.0],
            [0.0, 0.0, 0.0],  # 1/3 each
            [1.0, 1.0, -10.0],  # 0.5, 0.5
            [2.0, 0.0, 0.0],  # sigma_0 = 0.787
        ],
        dtype=torch.float64,
    )
    t0 = torch.zeros(5, dtype=torch.long)
    assert theory.subspace(logits, t0).tolist() == [S3, S1, S2, S2, S2]
    t1 = torch.ones(5, dtype=torch.long)
    assert theory.subspace(logits, t1).tolist() == [S1, S3, S2, S2, S2]
    # A lower threshold makes the 0.787 prediction confident.
    assert theory.subspace(logits, t0, confident=0.75).tolist() == [S3, S1, S2, S2, S3]
    assert theory.subspace(logits, t1, confident=0.75).tolist() == [S1, S3, S2, S2, S1]
    assert theory.NAMES == {1: "S1", 2: "S2", 3: "S3"}


def test_subspace_threshold_is_inclusive_and_sharp():
    # Two classes: sigma_1 = 1 / (1 + exp(-d)); d = logit(0.9) +- 1e-6.
    d = math.log(0.9 / 0.1)
    logits = torch.tensor([[0.0, d + 1e-6], [0.0, d - 1e-6], [d + 1e-6, 0.0], [d - 1e-6, 0.0]], dtype=torch.float64)
    assert theory.subspace(logits, torch.ones(4, dtype=torch.long)).tolist() == [S3, S2, S1, S2]


@pytest.mark.parametrize("bad", [0.5, 1.0, 0.3, 1.5, True, float("nan"), "0.9"])
def test_subspace_rejects_thresholds_that_do_not_partition(bad):
    with pytest.raises(ValueError, match="confident"):
        theory.subspace(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), confident=bad)


def test_inputs_are_checked():
    logits, t = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="target must lie"):
        theory.subspace(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        theory.ce_gradient(torch.zeros(2, 4, 5), logits, t)
    with pytest.raises(TypeError):
        theory.subspace(logits, torch.zeros(2))


# ---------------------------------------------------------------- the exact decomposition


def test_ce_gradient_equals_autograd(gen):
    n, c, d = 64, 5, 7
    jac = torch.randn(n, c, d, generator=gen, dtype=torch.float64)
    logits = 3 * torch.randn(n, c, generator=gen, dtype=torch.float64)
    t = torch.randint(0, c, (n,), generator=gen)
    assert rel(theory.ce_gradient(jac, logits, t), autograd_ce(jac, logits, t)) < 1e-13


def test_ce_gradient_keeps_the_input_shape(gen):
    jac = torch.randn(3, 4, 1, 3, 3, generator=gen, dtype=torch.float64)
    logits = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 3])
    grad = theory.ce_gradient(jac, logits, t)
    assert grad.shape == (3, 1, 3, 3)
    assert rel(grad, autograd_ce(jac, logits, t)) < 1e-13


def test_ce_gradient_keeps_relative_accuracy_deep_in_s3_in_float32(gen):
    # sigma_t rounds to 1 in float32 here; sum_{j != t} sigma_j (J_j - J_t) does not cancel.
    n, c, d = 16, 3, 4
    jac = torch.randn(n, c, d, generator=gen, dtype=torch.float64)
    t = torch.randint(0, c, (n,), generator=gen)
    logits = dominated(gen, n, c, t, gap=25.0)
    reference = theory.ce_gradient(jac, logits, t)
    single = theory.ce_gradient(jac.float(), logits.float(), t).double()
    assert reference.norm(dim=1).max() < 1e-9
    assert rel(single, reference) < 1e-5


# ---------------------------------------------------------------- Theorem IV.2


def test_s2_is_exact_with_the_softmax_as_constants(gen):
    n, c, d = 200, 4, 6
    jac = torch.randn(n, c, d, generator=gen, dtype=torch.float64)
    logits = 0.8 * torch.randn(n, c, generator=gen, dtype=torch.float64)
    t = torch.randint(0, c, (n,), generator=gen)
    where = theory.subspace(logits, t)
    assert (where == S2).all()
    # The theorem's constraint on the constants: 0 <= a_j < 1, sum a_j = 1.
    a = logits.softmax(1)
    assert (a >= 0).all() and (a < theory.DEFAULT_CONFIDENT).all()
    torch.testing.assert_close(a.sum(1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-15)
    approx = theory.ce_gradient_approx(jac, logits, t)
    exact = autograd_ce(jac, logits, t)
    assert rel(approx, exact) < 1e-13
    err = theory.approximation_error(jac, logits, t, exact=exact)
    assert err["scaled"].max() < 1e-14 and (err["bound"] == 0).all()


TEMPERATURES = [2.0**-k for k in range(6)]  # 1, 1/2, ..., 1/32


def test_s1_error_vanishes_as_the_dominant_softmax_tends_to_one(gen):
    n, c, d = 100, 4, 5
    jac = torch.randn(n, c, d, generator=gen, dtype=torch.float64)
    t = torch.randint(0, c, (n,), generator=gen)
    dominant = (t + torch.randint(1, c, (n,), generator=gen)) % c  # never t
    base = dominated(gen, n, c, dominant)
    errors = []
    for temp in TEMPERATURES:
        logits = base / temp
        assert (theory.subspace(logits, t) == S1).all()
        exact = autograd_ce(jac, logits, t)
        approx = theory.ce_gradient_approx(jac, logits, t)
        expected = jac[torch.arange(n), dominant] - jac[torch.arange(n), t]
        torch.testing.assert_close(approx, expected, rtol=0, atol=0)
        err = theory.approximation_error(jac, logits, t, exact=exact)
        assert (err["scaled"] <= err["bound"] + 1e-15).all()
        errors.append(rel(approx, exact))
    assert errors[0] > 1e-3  # at temperature 1 the approximation is visibly off...
    for before, after in zip(errors, errors[1:]):
        assert after < 0.5 * before or after < 1e-14  # ...and shrinks at every halving
    assert errors[-1] < 1e-6


def test_s3_gradient_vanishes_as_the_target_softmax_tends_to_one(gen):
    n, c, d = 100, 4, 5
    jac = torch.randn(n, c, d, generator=gen, dtype=torch.float64)
    t = torch.randint(0, c, (n,), generator=gen)
    base = dominated(gen, n, c, t)
    scaled, norms = [], []
    for temp in TEMPERATURES:
        logits = base / temp
        assert (theory.subspace(logits, t) == S3).all()
        exact = autograd_ce(jac, logits, t)
        assert (theory.ce_gradient_approx(jac, logits, t) == 0).all()
        err = theory.approximation_error(jac, logits, t, exact=exact)
        assert (err["scaled"] <= err["bound"] + 1e-15).all()
        # The approximation is 0, so its relative error is 1: the statement is about size.
        torch.testing.assert_close(err["relative"], torch.ones(n, dtype=torch.float64))
        scaled.append(err["scaled"].max().item())
        norms.append(exact.norm(dim=1).max().item())
    assert scaled[0] > 1e-3
    for seq in (scaled, norms):
        for before, after in zip(seq, seq[1:]):
            assert after < 0.5 * before or after < 1e-14
    assert scaled[-1] < 1e-6 and norms[-1] < 1e-6


def test_error_stays_within_the_bound_everywhere(gen):
    n, c, d = 2000, 3, 4
    jac = torch.randn(n, c, d, generator=gen, dtype=torch.float64)
    scale = torch.exp(torch.empty(n, 1, dtype=torch.float64).uniform_(-1, 3, generator=gen))
    logits = scale * torch.randn(n, c, generator=gen, dtype=torch.float64)
    t = torch.randint(0, c, (n,), generator=gen)
    for confident in (0.6, 0.9, 0.99):
        err = theory.approximation_error(jac, logits, t, exact=autograd_ce(jac, logits, t), confident=confident)
        counts = torch.bincount(err["subspace"], minlength=4)[1:]
        assert (counts > 50).all(), counts  # every subspace is exercised
        assert (err["scaled"] <= err["bound"] + 1e-14).all()
        assert (err["bound"] <= 2 * (1 - confident) + 1e-15).all()


def test_summarize_counts_and_quantiles():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0, float("nan"), 5.0])
    where = torch.tensor([S1, S1, S1, S3, S3, S3])
    out = theory.summarize(values, where)
    assert out["S1"] == {"n": 3, "q50": 2.0, "q90": pytest.approx(2.8)}
    assert out["S2"]["n"] == 0 and math.isnan(out["S2"]["q50"])
    assert out["S3"]["n"] == 3 and out["S3"]["q50"] == 7.5  # the NaN is ignored


# ---------------------------------------------------------------- on models


def test_ce_gradient_vanishes_in_s3_while_the_logit_gradient_stays():
    # A linear model; along the ray the target logit grows, the others fall.
    model = nn.Linear(2, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    s = torch.linspace(-20, 40, 121, dtype=torch.float64)
    x = s[:, None] * torch.tensor([1.0, -0.2], dtype=torch.float64)
    t = torch.zeros(len(s), dtype=torch.long)
    logits, ce_grad = theory.loss_gradient(model, x, t, losses.ce)
    _, logit_grad = theory.loss_gradient(model, x, t, losses.logit)
    where = theory.subspace(logits, t)
    assert set(where.tolist()) == {S1, S2, S3}
    assert (where.diff() >= 0).all()  # S1, then S2, then S3 along the ray
    ce_norm = ce_grad.norm(dim=1)
    deep = ce_norm[where == S3]
    assert (deep.diff() < 0).all()
    assert deep[-1] < 1e-12 * ce_norm[0]
    # targeted logit loss: -g_t, gradient -w_t at every point
    torch.testing.assert_close(logit_grad, torch.tensor([[-1.0, 0.0]], dtype=torch.float64).expand_as(logit_grad))
    # In S1 the CE gradient is w_c - w_t (c = 2 here) up to 2 (1 - sigma_c) max_j ||w_j||.
    w = model.weight.detach()
    s1 = where == S1
    gap = (ce_grad[s1] - (w[2] - w[0])).norm(dim=1)
    limit = 2 * (1 - logits[s1].softmax(1)[:, 2]) * w.norm(dim=1).max()
    assert (gap <= limit).all() and (gap > 0).all()


def test_logit_jacobian_matches_autograd_and_restores_the_model():
    torch.manual_seed(0)
    model = models.mlp2d(hidden=16, num_classes=3).train()
    model[0].weight.requires_grad_(False)  # a mixed state to restore
    x = torch.rand(9, 2)
    logits, jac = theory.logit_jacobian(model, x, batch_size=4)
    assert logits.shape == (9, 3) and jac.shape == (9, 3, 2)
    full = torch.autograd.functional.jacobian(model, x)  # [9, 3, 9, 2]
    torch.testing.assert_close(jac, full[torch.arange(9), :, torch.arange(9)])
    torch.testing.assert_close(logits, model(x).detach())
    assert model.training and not model[0].weight.requires_grad and model[2].weight.requires_grad
    # The decomposition of the model's own CE gradient.
    t = torch.tensor([0, 1, 2] * 3)
    _, grad = theory.loss_gradient(model, x, t, losses.ce)
    torch.testing.assert_close(theory.ce_gradient(jac, logits, t), grad, rtol=1e-5, atol=1e-7)


def test_logit_jacobian_of_images_and_of_a_single_logit():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4)).double()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    _, jac = theory.logit_jacobian(conv, x)
    assert jac.shape == (3, 4, 1, 4, 4)
    full = torch.autograd.functional.jacobian(conv, x)  # [3, 4, 3, 1, 4, 4]
    torch.testing.assert_close(jac, full[torch.arange(3), :, torch.arange(3)])
    # One logit f is read as (0, f), as the attacks read it.
    single = nn.Linear(2, 1).double()
    logits, jac = theory.logit_jacobian(single, torch.rand(5, 2, dtype=torch.float64))
    assert logits.shape == (5, 2) and (logits[:, 0] == 0).all() and (jac[:, 0] == 0).all()
    torch.testing.assert_close(jac[:, 1], single.weight.detach().expand(5, 2))
