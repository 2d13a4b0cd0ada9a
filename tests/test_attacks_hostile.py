"""Hostile input to the attacks: tied or NaN logits, options at their limits,
inputs that carry autograd. Each gives a clear error or a right answer,
never a wrong number (issue 9)."""

import math

import pytest
import torch

from advlib import attacks, losses
from advlib.attacks import cw_l2, deepfool, fgsm, fgsm_min_eps, ifgs, jsma, lbfgs

D, C = 6, 10


def tied_model():
    """A 10-class network whose last layer is zero-initialised: every logit ties."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, C))
    torch.nn.init.zeros_(model[2].weight)
    torch.nn.init.zeros_(model[2].bias)
    return model


def test_tied_logits_label_is_argmax_and_nothing_is_fooled():
    model = tied_model()
    x = torch.rand(5, D, generator=torch.Generator().manual_seed(1))
    for name, res in _tied_runs(model, x):
        assert torch.equal(res.label_orig, torch.zeros(5, dtype=torch.long)), name  # argmax of ties: the first
        if res.target is None:
            # No input moves a constant function: no untargeted success, none at r = 0.
            assert not res.success.any(), name
        with torch.no_grad():
            assert torch.equal(model(res.x_adv).argmax(1)[res.success], res.label_adv[res.success]), name


def _tied_runs(model, x):
    n = len(x)
    target = torch.full((n,), 3)
    yield "deepfool", deepfool(model, x)
    yield "deepfool-linf", deepfool(model, x, p=math.inf)
    yield "fgsm", fgsm(model, x, eps=0.1)
    yield "ifgs", ifgs(model, x, max_iter=5)
    yield "ifgs-targeted", ifgs(model, x, target=target, max_iter=5)
    yield "lbfgs", lbfgs(model, x, search_steps=2, max_iter=5)
    yield "cw_l2", cw_l2(model, x, search_steps=2, max_iter=5)
    yield "cw_l2-best_of", cw_l2(model, x, search_steps=2, max_iter=5, best_of=2)
    yield "jsma", jsma(model, x, target=target, gamma=1.0)
    yield "jsma-probs", jsma(model, x, target=target, gamma=1.0, space="probs")
    with pytest.raises(ValueError, match="misclassifies less than"):
        fgsm_min_eps(model, x)  # the protocol's eps does not exist: said so


class NaNAbove(torch.nn.Module):
    """An affine model whose logits are NaN wherever a feature exceeds
    ``limit`` in the inputs marked by a first feature above 0.5."""

    def __init__(self, limit=0.9, classes=4):
        super().__init__()
        torch.manual_seed(3)
        self.lin = torch.nn.Linear(D, classes)
        with torch.no_grad():
            self.lin.weight.mul_(8)
        self.limit = limit

    def forward(self, x):
        out = self.lin(x)
        undefined = (x[:, 0] > 0.5) & (x > self.limit).any(1)
        return torch.where(undefined[:, None], torch.full_like(out, math.nan), out)


def nan_batch():
    """Samples in [0, 0.3] with their first feature at 0, and sample 2 (marked)
    just under the NaN region: any step up in a feature leaves the model defined."""
    x = 0.3 * torch.rand(5, D, generator=torch.Generator().manual_seed(4))
    x[:, 0] = 0.0
    x[2] = 0.8999
    return x


def other_class(m, x):
    with torch.no_grad():
        return (m(x).argmax(1) + 1) % 4


NAN_ATTACKS = {
    "deepfool": lambda m, x: deepfool(m, x),
    "deepfool-linf": lambda m, x: deepfool(m, x, p=math.inf),
    "fgsm": lambda m, x: fgsm(m, x, eps=0.3),
    "ifgs": lambda m, x: ifgs(m, x, alpha=0.01, max_iter=30),
    "ifgs-targeted": lambda m, x: ifgs(m, x, target=other_class(m, x), alpha=0.01, max_iter=30),
    "lbfgs": lambda m, x: lbfgs(m, x, search_steps=3, max_iter=30),
    "cw_l2": lambda m, x: cw_l2(m, x, search_steps=2, max_iter=50),
    "jsma": lambda m, x: jsma(m, x, target=other_class(m, x), gamma=1.0),
    "jsma-probs": lambda m, x: jsma(m, x, target=other_class(m, x), gamma=1.0, space="probs"),
}


@pytest.mark.parametrize("name", NAN_ATTACKS)
def test_nan_logits_at_the_input_are_an_error_naming_the_samples(name):
    x = nan_batch()
    x[2, 0] = 0.95  # NaN logits at x itself
    x[4] = 0.91
    with pytest.raises(ValueError, match=r"NaN or inf for samples 2, 4"):
        NAN_ATTACKS[name](NaNAbove(), x)


def test_nan_logits_at_the_input_min_eps_and_least_likely():
    x = nan_batch()
    x[2, 0] = 0.95
    with pytest.raises(ValueError, match=r"samples 2"):
        fgsm_min_eps(NaNAbove(), x, fraction=0.2)
    with pytest.raises(ValueError, match=r"samples 2"):
        attacks.least_likely(NaNAbove(), x)


@pytest.mark.parametrize("name", NAN_ATTACKS)
def test_nan_logits_at_an_iterate_fail_that_sample_alone(name):
    """Sample 2 steps into the NaN region: it is returned at x, not a success;
    the others get exactly what they get without it in the batch."""
    model, x = NaNAbove(), nan_batch()
    res = NAN_ATTACKS[name](model, x)
    assert not res.success[2] and (res.perturbation[2] == 0).all()
    for t in (res.x_adv, res.perturbation):
        assert torch.isfinite(t).all()
    others = torch.tensor([0, 1, 3, 4])
    alone = NAN_ATTACKS[name](model, x[others])
    torch.testing.assert_close(res.x_adv[others], alone.x_adv, rtol=0, atol=1e-6)
    assert torch.equal(res.success[others], alone.success)
    if not name.startswith("jsma"):  # on 6 features JSMA's pairs run out (the test is the equality above)
        assert res.success[others].any(), "the others must still be attacked"
    with torch.no_grad():
        assert torch.equal(model(res.x_adv).argmax(1)[res.success], res.label_adv[res.success])


def test_lbfgs_records_its_status_and_the_nan_sample_does_not_stop_the_batch():
    model, x = NaNAbove(), nan_batch()
    res = lbfgs(model, x, search_steps=3, max_iter=30)
    status = res.trace["status"]
    assert status.shape == res.trace["c"].shape
    seen = status[torch.isfinite(status)]
    assert ((seen == 0) | (seen == 1) | (seen == 2)).all()
    assert torch.isnan(status[:, 2]).all()  # the NaN sample took part in no completed run
    assert res.success[[0, 1, 3, 4]].all()
    assert (res.iterations[[0, 1, 3, 4]] > 0).all()


def test_fgsm_min_eps_does_not_count_nan_samples_as_misclassified():
    model, x = NaNAbove(), nan_batch()
    eps, res = fgsm_min_eps(model, x, fraction=0.2)
    assert eps > 0  # nothing is misclassified at eps = 0
    assert not res.success[2] and (res.perturbation[2] == 0).all()
    assert res.success.float().mean() >= 0.2
    # The bisection's eps, re-checked: just below it fewer than 20% are fooled,
    # counting the NaN sample as not fooled.
    below = fgsm(model, x, eps=eps * (1 - 3e-3))
    assert below.success.float().mean() < 0.2


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, x: fgsm_min_eps(m, x, rtol=0.0), ValueError, r"rtol must be a finite number in \(0"),
        (lambda m, x: fgsm_min_eps(m, x, rtol=float("nan")), ValueError, "rtol"),
        (lambda m, x: fgsm_min_eps(m, x, fraction="0.5"), TypeError, r"fraction must be .*got '0.5' \(str\)"),
        (lambda m, x: fgsm_min_eps(m, x, fraction=0.0), ValueError, "fraction"),
        (lambda m, x: deepfool(m, x, overshoot=math.inf), ValueError, "overshoot must be a finite number"),
        (lambda m, x: deepfool(m, x, step_margin=math.inf), ValueError, "step_margin must be a finite number"),
        (lambda m, x: deepfool(m, x, trace=1), TypeError, "trace must be True or False"),
        (lambda m, x: fgsm(m, x, eps=True), TypeError, r"eps must be a finite number >= 0.*got True \(bool\)"),
        (lambda m, x: fgsm(m, x, eps=math.inf), ValueError, "eps"),
        (lambda m, x: fgsm(m, x, eps=0.1, loss="ce"), TypeError, r"loss must be an advlib.losses.Loss: losses.ce"),
        (lambda m, x: ifgs(m, x, loss=losses.ce.fn), TypeError, "loss must be"),
        (lambda m, x: ifgs(m, x, ball=0.5), ValueError, r"ball must be a number >= 1"),
        (lambda m, x: ifgs(m, x, eps=0.1, ball="inf"), TypeError, "ball must be"),
        (lambda m, x: ifgs(m, x, alpha=math.inf), ValueError, "alpha"),
        (lambda m, x: ifgs(m, x, stop_on_success="no"), TypeError, "stop_on_success"),
        (lambda m, x: cw_l2(m, x, abort_early=1), TypeError, "abort_early"),
        (lambda m, x: cw_l2(m, x, warm_start="yes"), TypeError, "warm_start"),
        (lambda m, x: lbfgs(m, x, best_of=True), TypeError, "best_of"),
        (lambda m, x: jsma(m, x, target=torch.zeros(len(x), dtype=torch.long), space="softmax"), ValueError, "space"),
        (lambda m, x: attacks.batched(deepfool, m, x, size=0), ValueError, "size"),
    ],
)
def test_options_at_their_limits_are_refused_by_name(call, error, match):
    model = torch.nn.Linear(D, 3)
    with pytest.raises(error, match=match):
        call(model, torch.rand(4, D))


CLIP_CALLS = {
    "deepfool": lambda m, x, clip: deepfool(m, x, clip=clip),
    "fgsm": lambda m, x, clip: fgsm(m, x, eps=0.1, clip=clip),
    "fgsm_min_eps": lambda m, x, clip: fgsm_min_eps(m, x, clip=clip),
    "ifgs": lambda m, x, clip: ifgs(m, x, clip=clip),
    "lbfgs": lambda m, x, clip: lbfgs(m, x, clip=clip),
    "cw_l2": lambda m, x, clip: cw_l2(m, x, clip=clip),
    "jsma": lambda m, x, clip: jsma(m, x, target=torch.zeros(len(x), dtype=torch.long), clip=clip),
}


@pytest.mark.parametrize("name", CLIP_CALLS)
@pytest.mark.parametrize(
    "clip, error", [(1.0, TypeError), ((0.0,), TypeError), ((0.0, math.inf), ValueError), ((1.0, 0.0), ValueError)]
)
def test_a_bad_clip_is_named(name, clip, error):
    with pytest.raises(error, match="clip"):
        CLIP_CALLS[name](torch.nn.Linear(D, 3), torch.rand(4, D), clip)


GRAPH_ATTACKS = {
    "deepfool": lambda m, x: deepfool(m, x, trace=True),
    "fgsm": lambda m, x: fgsm(m, x, eps=0.1),
    "fgsm_min_eps": lambda m, x: fgsm_min_eps(m, x, fraction=0.5)[1],
    "ifgs": lambda m, x: ifgs(m, x, max_iter=5, trace=True),
    "lbfgs": lambda m, x: lbfgs(m, x, search_steps=2, max_iter=5),
    "lbfgs-best_of": lambda m, x: lbfgs(m, x, search_steps=2, max_iter=5, best_of=2),
    "cw_l2": lambda m, x: cw_l2(m, x, search_steps=2, max_iter=5),
    "jsma": lambda m, x: jsma(m, x, target=torch.zeros(len(x), dtype=torch.long), gamma=0.5),
    "batched": lambda m, x: attacks.batched(ifgs, m, x, size=3, max_iter=3, trace=True),
}


@pytest.mark.parametrize("name", GRAPH_ATTACKS)
@pytest.mark.parametrize("how", ["leaf", "in a graph"])
def test_inputs_that_carry_autograd(name, how):
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    leaf = torch.rand(5, D).requires_grad_(True)
    x = leaf if how == "leaf" else leaf * 1.0
    before = x.detach().clone()
    res = GRAPH_ATTACKS[name](model, x)
    returned = [res.x_adv, res.perturbation, res.success, res.iterations, res.label_orig, res.label_adv,
                *res.trace.values()]
    for t in returned:
        assert not t.requires_grad and t.grad_fn is None
    res.x_adv.numpy(), res.perturbation.numpy()  # what failed before
    assert torch.equal(x.detach(), before) and x.requires_grad and leaf.grad is None
    torch.testing.assert_close(res.perturbation, res.x_adv - before)


def test_deepfool_without_margin_or_box_judges_success_on_the_returned_batch():
    """overshoot=0, step_margin=0, clip=None lands points exactly on the
    boundary; a point seen flipped in a smaller batch but not in the whole
    one is not reported a success."""
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    x = torch.rand(200, D, generator=torch.Generator().manual_seed(7))
    res = deepfool(model, x, overshoot=0.0, step_margin=0.0, clip=None)
    with torch.no_grad():
        label_adv = model(res.x_adv).argmax(1)
        label_orig = model(x).argmax(1)
    assert torch.equal(res.label_adv, label_adv) and torch.equal(res.label_orig, label_orig)
    assert torch.equal(res.success, label_adv != label_orig)
    assert res.success.float().mean() > 0.5  # the attack still works


def test_finite_rows_is_exact_where_a_sum_overflows():
    from advlib.attacks._common import finite_rows

    big = torch.finfo(torch.float32).max
    t = torch.zeros(5, 3, 2)
    t[1, 0, 0] = math.nan
    t[2, 1, 1] = math.inf
    t[3, 0, 0], t[3, 2, 1] = math.inf, -math.inf  # a sum of NaN
    t[4] = big  # finite entries whose sum overflows
    assert finite_rows(t).tolist() == [True, False, False, False, True]
