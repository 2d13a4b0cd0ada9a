"""What every attack promises, through the one signature
``attack(model, x, *, label=None, target=None, **options) -> AttackResult``:
the model comes back exactly as it was handed over, success is what a
forward pass on the returned points says, and bad input is refused with an
error that names the problem."""

import math

import pytest
import torch

from advlib import attacks, losses

N, C = 6, 4


def min_eps_result(model, x, **kw):
    return attacks.fgsm_min_eps(model, x, **kw)[1]


# Every attack with small budgets so the whole contract runs in seconds, and
# the modes it supports: "untargeted" (label=None or given), "targeted".
BOTH = ("untargeted", "targeted")
ATTACKS = {
    "deepfool": (attacks.deepfool, dict(max_iter=5), ("untargeted",)),
    "deepfool-linf": (attacks.deepfool, dict(p=math.inf, max_iter=5), ("untargeted",)),
    "fgsm": (attacks.fgsm, dict(eps=0.05), BOTH),
    "fgsm-l2-sign": (attacks.fgsm, dict(eps=0.5, p=2, loss=losses.ce_sign), BOTH),
    "fgsm_min_eps": (min_eps_result, dict(fraction=0.5), ("untargeted",)),
    "ifgs": (attacks.ifgs, dict(max_iter=3), BOTH),
    "lbfgs": (attacks.lbfgs, dict(search_steps=2, max_iter=5), BOTH),
    "lbfgs-best_of": (attacks.lbfgs, dict(search_steps=2, max_iter=5, best_of=2), ("untargeted",)),
    "cw_l2": (attacks.cw_l2, dict(search_steps=2, max_iter=5), BOTH),
    "cw_l2-best_of": (attacks.cw_l2, dict(search_steps=2, max_iter=5, best_of=2), ("untargeted",)),
    "jsma": (attacks.jsma, dict(), ("targeted",)),
    "jsma-probs": (attacks.jsma, dict(space="probs"), ("targeted",)),
}
CASES = [(name, mode) for name, (_, _, modes) in ATTACKS.items() for mode in modes]
IDS = [f"{name}-{mode}" for name, mode in CASES]


def labels(x):
    return torch.arange(len(x)) % C


def run(name, mode, model, x, y=None, **extra):
    """The attack called through the one signature: ``label=y`` untargeted
    (``None``: the model's labels), ``target=y`` targeted."""
    attack, options, _ = ATTACKS[name]
    key = "target" if mode == "targeted" else "label"
    if mode == "targeted" and y is None:
        y = labels(x)
    return attack(model, x, **{key: y}, **options, **extra)


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


def assert_contract(res, model, x, *, label=None, target=None):
    """The result's contract, whatever the attack: re-judged by a forward pass."""
    n = len(x)
    torch.testing.assert_close(res.perturbation, res.x_adv - x)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.success.dtype == torch.bool and res.success.shape == (n,)
    assert res.iterations.dtype == torch.long and res.iterations.shape == (n,) and (res.iterations >= 0).all()
    assert not res.x_adv.requires_grad and not res.perturbation.requires_grad
    was = model.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), res.label_orig)
        assert torch.equal(model(res.x_adv).argmax(1), res.label_adv)
    model.train(was)
    if target is not None:
        assert torch.equal(res.target, target)
        assert torch.equal(res.success, res.label_adv == target)
    else:
        assert res.target is None
        assert torch.equal(res.success, res.label_adv != (res.label_orig if label is None else label))


# Untargeted attacks with the default label and with labels given; targeted ones with their targets.
RUNS = [(name, mode, given) for name, mode in CASES for given in ((True,) if mode == "targeted" else (False, True))]


@pytest.mark.parametrize(
    "name, mode, given", RUNS, ids=[f"{n}-{m}{'-given' if g and m != 'targeted' else ''}" for n, m, g in RUNS]
)
def test_attack_leaves_the_model_as_it_was(name, mode, given):
    model = busy_model()
    before = snapshot(model)
    x = inputs()
    y = labels(x) if given else None
    res = run(name, mode, model, x, y)
    after = snapshot(model)
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), f"{name} changed {k}"
    assert before[1] == after[1], f"{name} changed a train/eval flag"
    assert before[2] == after[2], f"{name} changed a requires_grad flag"
    assert all(g is None for g in after[3]), f"{name} left parameter gradients"
    assert_contract(res, model, x, **({"target": y} if mode == "targeted" else {"label": y}))


def plain_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, C))


def test_untargeted_moves_away_from_the_given_label():
    """A label the model does not give is already left: no perturbation needed."""
    model, x = plain_model(), inputs()
    with torch.no_grad():
        pred = model(x).argmax(1)
    other = (pred + 1) % C
    for name, mode in CASES:
        if mode != "untargeted" or name == "fgsm_min_eps":
            continue
        res = run(name, mode, model, x, other)
        assert res.success.all(), name
        if not name.startswith("fgsm"):
            assert (res.perturbation == 0).all(), name  # they stop at the goal


BAD_X = {
    "NaN": (lambda x: x.index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), ValueError, "NaN or inf"),
    "inf": (lambda x: x.index_put_((torch.tensor([1]),), torch.tensor(float("inf"))), ValueError, "NaN or inf"),
    "outside clip": (lambda x: x + 1.5, ValueError, "outside clip"),
    "integer": (lambda x: (x * 255).to(torch.uint8), TypeError, "floating-point"),
    "empty": (lambda x: x[:0], ValueError, "empty"),
}


@pytest.mark.parametrize("case", BAD_X)
@pytest.mark.parametrize("name, mode", CASES, ids=IDS)
def test_bad_inputs_are_refused(name, mode, case):
    make, error, message = BAD_X[case]
    x = make(inputs())
    with pytest.raises(error, match=message):
        run(name, mode, plain_model(), x, torch.arange(len(x)) % C)


@pytest.mark.parametrize("name, mode", CASES, ids=IDS)
def test_bad_labels_are_refused(name, mode):
    x = inputs()
    key = "target" if mode == "targeted" else "label"
    with pytest.raises(ValueError, match=rf"{key} must have shape"):
        run(name, mode, plain_model(), x, labels(x)[:-1])
    with pytest.raises(TypeError, match=rf"{key} must be an integer"):
        run(name, mode, plain_model(), x, labels(x).float())
    with pytest.raises(ValueError, match=rf"{key} must lie in"):
        run(name, mode, plain_model(), x, labels(x) + 2 * C)


@pytest.mark.parametrize("name", [n for n, (_, _, modes) in ATTACKS.items() if modes == BOTH])
def test_label_and_target_together_are_refused(name):
    x = inputs()
    attack, options, _ = ATTACKS[name]
    with pytest.raises(ValueError, match="not both"):
        attack(plain_model(), x, label=labels(x), target=labels(x), **options)


def test_targeted_only_and_untargeted_only():
    x = inputs()
    with pytest.raises(ValueError, match="target="):
        attacks.jsma(plain_model(), x, target=None)
    with pytest.raises(TypeError, match="target"):
        attacks.deepfool(plain_model(), x, target=labels(x))


class WrongShape(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :C].unsqueeze(2)  # [N, C, 1]


class NoClasses(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :0]  # [N, 0]


@pytest.mark.parametrize("name, mode", CASES, ids=IDS)
@pytest.mark.parametrize("model", [WrongShape(), NoClasses()], ids=["[N, C, 1]", "[N, 0]"])
def test_model_output_must_be_logits(name, mode, model):
    x = inputs()
    with pytest.raises(ValueError, match=r"logits of shape \[N, classes\]"):
        run(name, mode, model, x, labels(x))


@pytest.mark.parametrize("name, mode", CASES, ids=IDS)
def test_not_a_model_is_refused(name, mode):
    x = inputs()
    with pytest.raises(TypeError, match="torch.nn.Module"):
        run(name, mode, lambda t: t.flatten(1)[:, :C], x, labels(x))


@pytest.mark.parametrize("name, mode", CASES, ids=IDS)
def test_batched_joins_the_batches_into_one_result(name, mode):
    """``batched`` is the attack on each batch, every field concatenated."""
    model, x = plain_model(), inputs()
    y = labels(x)
    attack, options, _ = ATTACKS[name]
    key = "target" if mode == "targeted" else "label"
    whole = attacks.batched(attack, model, x, size=4, **{key: y}, **options)
    parts = [attack(model, x[s : s + 4], **{key: y[s : s + 4]}, **options) for s in (0, 4)]
    for field in ("x_adv", "perturbation", "success", "iterations", "label_orig", "label_adv"):
        assert torch.equal(getattr(whole, field), torch.cat([getattr(p, field) for p in parts])), field
    assert (whole.target is None) == (mode != "targeted")
    assert whole.trace.keys() == parts[0].trace.keys()
    for k, v in whole.trace.items():
        assert v.shape[1] == N, k
    assert_contract(whole, model, x, **{key: y})


def test_batched_pads_the_traces():
    """DeepFool's iterates of a batch that finished early repeat its last row;
    IFGS's records have a row per iteration in every batch."""
    model, x = plain_model(), inputs()
    whole = attacks.batched(attacks.deepfool, model, x, size=2, trace=True, max_iter=5)
    rows = whole.trace["x"]
    assert rows.shape[0] == int(whole.iterations.max()) + 1 and rows.shape[1:] == x.shape
    assert torch.equal(rows[0], x) and torch.equal(rows[-1], whole.x_adv)
    ifgs = attacks.batched(attacks.ifgs, model, x, size=4, max_iter=3, trace=True)
    assert ifgs.trace["grad_norm"].shape == (4, N)


def test_batched_checks_its_arguments():
    model, x = plain_model(), inputs()
    with pytest.raises(TypeError, match="size"):
        attacks.batched(attacks.deepfool, model, x, size=2.0)
    with pytest.raises(ValueError, match="label must be a tensor of shape"):
        attacks.batched(attacks.fgsm, model, x, size=2, label=labels(x)[:3], eps=0.1)
    with pytest.raises(TypeError, match="AttackResult"):
        attacks.batched(attacks.fgsm_min_eps, model, x, size=2)


def test_least_likely_is_the_argmin_and_a_target():
    model, x = plain_model(), inputs()
    t = attacks.least_likely(model, x)
    with torch.no_grad():
        assert torch.equal(t, model(x).argmin(1))
    assert t.dtype == torch.long
    res = attacks.ifgs(model, x, target=t, max_iter=3)
    assert torch.equal(res.target, t)
