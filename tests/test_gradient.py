"""FGSM and IFGS against hand computations on a small model, and the four
perturbation sources."""

import math

import numpy as np
import pytest
import torch

from advlib import losses
from advlib.attacks import fgsm, fgsm_min_eps, ifgs


@pytest.fixture
def linear():
    """A 3-class affine model on 4 inputs whose CE gradient we can write by hand:
    grad_x CE(Wx + b, y) = W^T (softmax(Wx + b) - e_y)."""
    W = np.array([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 1.0, 2.0], [0.5, 0.5, -1.5, 1.0]])
    b = np.array([0.1, -0.2, 0.0])
    model = torch.nn.Linear(4, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(W))
        model.bias.copy_(torch.from_numpy(b))
    x = np.array([[0.2, 0.4, 0.6, 0.8], [0.9, 0.1, 0.5, 0.3], [0.5, 0.5, 0.5, 0.5]])
    y = np.array([0, 1, 2])
    return model, W, b, x, y


def ce_grad(W, b, x, y):
    z = x @ W.T + b
    s = np.exp(z - z.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    s[np.arange(len(y)), y] -= 1
    return s @ W


def test_fgsm_equals_hand_computation(linear):
    model, W, b, x, y = linear
    eps = 0.05
    expected = np.clip(x + eps * np.sign(ce_grad(W, b, x, y)), 0, 1)
    res = fgsm(model, torch.from_numpy(x), label=torch.from_numpy(y), eps=eps)
    np.testing.assert_allclose(res.x_adv.numpy(), expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.perturbation.numpy(), expected - x, atol=1e-15)
    pred = (expected @ W.T + b).argmax(1)
    assert res.success.tolist() == (pred != y).tolist()
    assert res.iterations.tolist() == [1, 1, 1]


def test_fgsm_l2_and_targeted_equal_hand_computation(linear):
    model, W, b, x, y = linear
    g = ce_grad(W, b, x, y)
    res = fgsm(model, torch.from_numpy(x), label=torch.from_numpy(y), eps=0.1, p=2, clip=None)
    np.testing.assert_allclose(res.perturbation.numpy(), 0.1 * g / np.linalg.norm(g, axis=1, keepdims=True), atol=1e-15)
    t = (y + 1) % 3
    res = fgsm(model, torch.from_numpy(x), target=torch.from_numpy(t), eps=0.1, clip=None)
    np.testing.assert_allclose(res.perturbation.numpy(), -0.1 * np.sign(ce_grad(W, b, x, t)), atol=1e-15)


def test_fgsm_clips_to_the_box(linear):
    model, W, b, x, y = linear
    res = fgsm(model, torch.from_numpy(x), label=torch.from_numpy(y), eps=0.5)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_ifgs_two_steps_equal_hand_computation(linear):
    model, W, b, x, y = linear
    t = (y + 2) % 3
    alpha, eps = 0.03, 0.04
    xi = x.copy()
    for _ in range(2):
        xi = np.clip(np.clip(xi - alpha * np.sign(ce_grad(W, b, xi, t)), x - eps, x + eps), 0, 1)
    res = ifgs(
        model, torch.from_numpy(x), target=torch.from_numpy(t), alpha=alpha, eps=eps,
        max_iter=2, stop_on_success=False,
    )
    np.testing.assert_allclose(res.x_adv.numpy(), xi, atol=1e-15)


def other_class(W, b, x):
    """A target that is not the model's current label."""
    return torch.from_numpy(((x @ W.T + b).argmax(1) + 1) % 3)


def test_ifgs_equal_perturbation_steps_have_the_same_l2_size(linear):
    model, W, b, x, y = linear
    t = other_class(W, b, x)
    for loss in losses.ALL:
        res = ifgs(model, torch.from_numpy(x), target=t, loss=loss, step_l2=0.01, max_iter=3,
                   stop_on_success=False, clip=None, trace=True)
        steps = res.trace["perturbation_norm"]
        # Steps along a constant direction (affine model, sign or not) add up exactly.
        assert steps[1].tolist() == pytest.approx([0.01] * 3)
        assert (steps[3] <= 0.03 + 1e-12).all()


def test_ifgs_reaches_targets_and_stops(linear):
    model, W, b, x, y = linear
    t = other_class(W, b, x)
    res = ifgs(model, torch.from_numpy(x), target=t, alpha=0.01, max_iter=500)
    assert res.success.all()
    assert torch.equal(res.label_adv, t)
    # Stopped at the first success: one step less does not reach the target.
    for i in range(3):
        k = int(res.iterations[i])
        back = ifgs(model, torch.from_numpy(x[i : i + 1]), target=t[i : i + 1], alpha=0.01, max_iter=k - 1)
        assert not back.success.item()


def test_losses_values():
    z = torch.tensor([[2.0, 0.5, -1.0]])
    t = torch.tensor([1])
    assert losses.ce.value(z, t, targeted=True).item() == pytest.approx(-math.log(torch.softmax(z, 1)[0, 1].item()))
    assert losses.logit.value(z, t, targeted=True).item() == -0.5
    assert losses.m_logit.value(z, t, targeted=True).item() == 1.5  # max_{j!=t} - g_t
    assert losses.m_logit_loss(1.0).value(torch.tensor([[0.0, 5.0, 1.0]]), t, targeted=True).item() == -1.0
    assert losses.m_logit.value(z, torch.tensor([0]), targeted=False).item() == 1.5  # g_y - max_{j!=y}
    assert losses.ce_sign.direction(torch.tensor([[-0.2, 0.0, 3.0]])).tolist() == [[-1.0, 0.0, 1.0]]


def test_fgsm_min_eps_is_the_smallest_reaching_the_fraction():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.rand(200, 10)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps, res = fgsm_min_eps(model, x, label=y, fraction=0.9)
    assert res.success_rate >= 0.9
    below = fgsm(model, x, label=y, eps=eps * (1 - 2e-3))
    assert below.success_rate < 0.9


def test_fgsm_min_eps_in_chunks_is_the_same():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.rand(100, 10)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps, res = fgsm_min_eps(model, x, label=y)
    eps_c, res_c = fgsm_min_eps(model, x, label=y, batch_size=7)
    assert eps == eps_c
    assert torch.equal(res.x_adv, res_c.x_adv) and torch.equal(res.success, res_c.success)
    # And it is what fgsm returns at that eps.
    direct = fgsm(model, x, label=y, eps=eps)
    assert torch.equal(direct.x_adv, res.x_adv) and torch.equal(direct.success, res.success)


def test_fgsm_sign_loss_keeps_the_sign_for_every_p(linear):
    """losses.ce_sign with p=2 steps along sign(grad) rescaled to L2 size eps
    (it used to drop the sign and take the normalised gradient)."""
    model, W, b, x, y = linear
    g = ce_grad(W, b, x, y)
    for p, size in ((2, np.sqrt(4)), (1, 4.0), (math.inf, 1.0)):
        res = fgsm(model, torch.from_numpy(x), label=torch.from_numpy(y), eps=0.1, p=p, loss=losses.ce_sign, clip=None)
        np.testing.assert_allclose(res.perturbation.numpy(), 0.1 * np.sign(g) / size, atol=1e-15)
        assert res.norms(p).tolist() == pytest.approx([0.1] * 3)
    # A gradient loss takes the steepest direction of the gradient itself.
    res = fgsm(model, torch.from_numpy(x), label=torch.from_numpy(y), eps=0.1, p=2, loss=losses.ce, clip=None)
    np.testing.assert_allclose(res.perturbation.numpy(), 0.1 * g / np.linalg.norm(g, axis=1, keepdims=True), atol=1e-15)


def test_loss_direction_is_the_one_place_the_sign_is_taken():
    g = torch.tensor([[-0.2, 0.0, 3.0, 0.5]], dtype=torch.float64)
    assert losses.ce.direction(g).tolist() == g.tolist()  # equal multiplier: the raw gradient
    assert losses.ce_sign.direction(g).tolist() == [[-1.0, 0.0, 1.0, 1.0]]
    assert losses.ce_sign.direction(g, 2)[0].tolist() == pytest.approx([-1 / 3**0.5, 0.0, 1 / 3**0.5, 1 / 3**0.5])
    assert losses.ce_sign.direction(g, math.inf).tolist() == [[-1.0, 0.0, 1.0, 1.0]]
    assert losses.logit.direction(g, math.inf).tolist() == [[-1.0, 0.0, 1.0, 1.0]]


def test_untargeted_default_label_is_the_model_prediction(linear):
    model, W, b, x, y = linear
    pred = torch.from_numpy((x @ W.T + b).argmax(1))
    xt = torch.from_numpy(x)
    for attack, kw in ((fgsm, dict(eps=0.1)), (ifgs, dict(max_iter=5))):
        assert torch.equal(attack(model, xt, **kw).x_adv, attack(model, xt, label=pred, **kw).x_adv)
    assert fgsm_min_eps(model, xt)[0] == fgsm_min_eps(model, xt, label=pred)[0]


def test_fgsm_takes_two_forward_passes(linear):
    """One forward pass gives the labels and the gradient, one judges the result."""
    model, _, _, x, _ = linear
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    fgsm(model, torch.from_numpy(x), eps=0.1)
    assert calls == [len(x), len(x)]
