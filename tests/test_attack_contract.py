"""What every attack promises: the model comes back exactly as it was handed
over, and bad input is refused with an error that names the problem."""

import math

import pytest
import torch

from advlib import attacks

N, C = 6, 4


def labels(x):
    return torch.arange(len(x)) % C


# Each attack called the way a user would, with small budgets so the whole
# contract runs in seconds. The label argument is None for attacks that take none.
ATTACKS = {
    "deepfool": lambda m, x, y: attacks.deepfool(m, x, max_iter=5),
    "deepfool-linf": lambda m, x, y: attacks.deepfool(m, x, p=math.inf, max_iter=5),
    "fgsm": lambda m, x, y: attacks.fgsm(m, x, y, eps=0.05),
    "fgsm_min_eps": lambda m, x, y: attacks.fgsm_min_eps(m, x, y, fraction=0.5)[1],
    "ifgs": lambda m, x, y: attacks.ifgs(m, x, y, max_iter=3),
    "ifgs-targeted": lambda m, x, y: attacks.ifgs(m, x, y, targeted=True, max_iter=3),
    "lbfgs": lambda m, x, y: attacks.lbfgs(m, x, search_steps=2, max_iter=5),
    "lbfgs-targeted": lambda m, x, y: attacks.lbfgs(m, x, target=y, search_steps=2, max_iter=5),
    "cw_l2": lambda m, x, y: attacks.cw_l2(m, x, search_steps=2, steps=5),
    "cw_l2-best_of": lambda m, x, y: attacks.cw_l2(m, x, search_steps=2, steps=5, best_of=2),
    "lbfgs-best_of": lambda m, x, y: attacks.lbfgs(m, x, search_steps=2, max_iter=5, best_of=2),
    "jsma": lambda m, x, y: attacks.jsma(m, x, y),
}
TAKES_LABELS = {"fgsm", "fgsm_min_eps", "ifgs", "ifgs-targeted", "lbfgs-targeted", "jsma"}


def busy_model():
    """Conv, BatchNorm and Dropout in train mode, one frozen layer: everything
    an attack could disturb."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, C),
    )
    model.train()
    model[4].eval()  # a mixed state must survive too
    model[0].weight.requires_grad_(False)
    return model


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
    )


def inputs():
    return torch.rand(N, 1, 6, 6, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_leaves_the_model_as_it_was(name):
    model = busy_model()
    before = snapshot(model)
    x = inputs()
    res = ATTACKS[name](model, x, labels(x))
    after = snapshot(model)
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), f"{name} changed {k}"
    assert before[1] == after[1], f"{name} changed a train/eval flag"
    assert before[2] == after[2], f"{name} changed a requires_grad flag"
    assert all(g is None for g in after[3]), f"{name} left parameter gradients"
    # The result's contract, whatever the attack.
    torch.testing.assert_close(res.perturbation, res.x_adv - x)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.success.dtype == torch.bool and res.success.shape == (N,)
    assert res.iterations.shape == (N,) and res.label_orig.shape == (N,) and res.label_adv.shape == (N,)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(res.x_adv).argmax(1), res.label_adv)


def plain_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, C))


BAD_X = {
    "NaN": (lambda x: x.index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), ValueError, "NaN or inf"),
    "inf": (lambda x: x.index_put_((torch.tensor([1]),), torch.tensor(float("inf"))), ValueError, "NaN or inf"),
    "outside clip": (lambda x: x + 1.5, ValueError, "outside clip"),
    "integer": (lambda x: (x * 255).to(torch.uint8), TypeError, "floating-point"),
    "empty": (lambda x: x[:0], ValueError, "empty"),
}


@pytest.mark.parametrize("case", BAD_X)
@pytest.mark.parametrize("name", ATTACKS)
def test_bad_inputs_are_refused(name, case):
    make, error, message = BAD_X[case]
    x = make(inputs())
    y = torch.arange(len(x)) % C
    with pytest.raises(error, match=message):
        ATTACKS[name](plain_model(), x, y)


@pytest.mark.parametrize("name", sorted(TAKES_LABELS))
def test_bad_labels_are_refused(name):
    x = inputs()
    with pytest.raises(ValueError, match="shape"):
        ATTACKS[name](plain_model(), x, labels(x)[:-1])
    with pytest.raises(TypeError, match="integer"):
        ATTACKS[name](plain_model(), x, labels(x).float())
    with pytest.raises(ValueError, match="must lie in"):
        ATTACKS[name](plain_model(), x, labels(x) + 2 * C)


class WrongShape(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :C].unsqueeze(2)  # [N, C, 1]


@pytest.mark.parametrize("name", ATTACKS)
def test_model_output_must_be_logits(name):
    x = inputs()
    with pytest.raises(ValueError, match=r"logits of shape \[N, classes\]"):
        ATTACKS[name](WrongShape(), x, labels(x))


@pytest.mark.parametrize("name", ATTACKS)
def test_not_a_model_is_refused(name):
    x = inputs()
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ATTACKS[name](lambda t: t.flatten(1)[:, :C], x, labels(x))
