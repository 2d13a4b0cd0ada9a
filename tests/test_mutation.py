"""advlib.defences.mutation: the operators change what they claim and nothing
else, the filter keeps what it says, the label change rate on a constructed
case, Wald's SPRT on Bernoulli sequences of known rate, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advlib import train
from advlib.defences import mutation as mu


def small_net(seed: int = 0) -> nn.Sequential:
    """A conv + linear classifier: two hidden layers (4 filters, 20 units) and 3 logits."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 20), nn.ReLU(),
                         nn.Linear(20, 3))


def wide_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 40, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(40 * 3 * 3, 200), nn.ReLU(),
                         nn.Linear(200, 5))


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def layer_rows(model):
    """Per conv/linear layer: (weight rows [n, fan_in], bias [n])."""
    return [(m.weight.detach().reshape(m.weight.shape[0], -1).clone(), m.bias.detach().clone())
            for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]


def changed_rows(before, after):
    return [(wb != wa).any(1) | (bb != ba) for (wb, bb), (wa, ba) in zip(before, after)]


@pytest.mark.parametrize("op", list(mu.OPERATORS))
def test_the_original_is_never_changed_and_the_mutant_is_a_copy(op):
    model = small_net()
    model.train()
    before = state(model)
    m = mu.mutant(model, op, 0.3, seed=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not any(p is q for p in model.parameters() for q in m.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), m.parameters()))


def test_gaussian_fuzzing_changes_the_given_share_of_weights_and_no_bias():
    model = wide_net()
    before, total = layer_rows(model), sum(m.weight.numel() for m in mu.layers(model))
    for rate in (0.0, 0.01, 0.2):
        after = layer_rows(mu.gaussian_fuzzing(model, rate, seed=3))
        changed = sum(int((wb != wa).sum()) for (wb, _), (wa, _) in zip(before, after))
        assert changed == round(rate * total)
        assert all(torch.equal(bb, ba) for (_, bb), (_, ba) in zip(before, after))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(before, layer_rows(mu.gaussian_fuzzing(model, 0.5, scale=0.0))))


def test_gaussian_fuzzing_noise_has_the_layers_spread():
    model = wide_net()
    mutant = mu.gaussian_fuzzing(model, 1.0, seed=0, scale=0.5)
    for orig, mut in zip(mu.layers(model), mu.layers(mutant)):
        noise = (mut.weight - orig.weight).detach().flatten().double()
        if noise.numel() < 1000:
            continue
        target = 0.5 * orig.weight.std().item()
        assert abs(noise.std().item() / target - 1) < 0.1
        assert abs(noise.mean().item()) < 0.1 * target


def test_weight_shuffling_permutes_the_incoming_weights_of_the_chosen_neurons():
    model = wide_net()
    before = layer_rows(model)
    n_hidden = 40 + 200
    after = layer_rows(mu.weight_shuffling(model, 0.1, seed=2))
    changed = changed_rows(before, after)
    assert int(sum(c.sum() for c in changed[:-1])) == round(0.1 * n_hidden)
    assert not changed[-1].any(), "the logit layer is not a hidden layer"
    for (wb, bb), (wa, ba), c in zip(before, after, changed):
        assert torch.equal(bb, ba), "biases are not shuffled"
        assert torch.equal(wb[c].sort(1).values, wa[c].sort(1).values), "a changed row is a permutation of itself"


def test_neuron_switch_exchanges_whole_neurons_within_each_layer():
    model = wide_net()
    before = layer_rows(model)
    rate = 0.1
    after = layer_rows(mu.neuron_switch(model, rate, seed=4))
    changed = changed_rows(before, after)
    for (wb, bb), (wa, ba), c, n in zip(before[:-1], after[:-1], changed[:-1], (40, 200)):
        assert int(c.sum()) == round(rate * n)
        for i in torch.nonzero(c).squeeze(1).tolist():
            # the new neuron i is an old neuron j of the same layer, weights and bias together
            j = [j for j in range(n) if torch.equal(wa[i], wb[j]) and ba[i] == bb[j]]
            assert j and j[0] != i and c[j[0]]
        assert torch.equal(wa.sort(0).values, wb.sort(0).values)
    assert not changed[-1].any()
    # a layer where round(rate * n) < 2 is left alone: 4 filters at rate 0.1
    small = small_net()
    assert not changed_rows(layer_rows(small), layer_rows(mu.neuron_switch(small, 0.1, seed=0)))[0].any()


def test_neuron_activation_inverse_negates_the_chosen_neurons_output():
    model = wide_net()
    before = layer_rows(model)
    mutant = mu.neuron_activation_inverse(model, 0.05, seed=5)
    after = layer_rows(mutant)
    changed = changed_rows(before, after)
    assert int(sum(c.sum() for c in changed[:-1])) == round(0.05 * 240)
    assert not changed[-1].any()
    for (wb, bb), (wa, ba), c in zip(before, after, changed):
        assert torch.equal(wa[c], -wb[c]) and torch.equal(ba[c], -bb[c])
        assert torch.equal(wa[~c], wb[~c]) and torch.equal(ba[~c], bb[~c])
    # functionally: on the same input to the layer, an inverted unit's pre-activation is the original's negated
    x = torch.rand(6, 1, 8, 8)
    hidden = changed[1]
    with torch.no_grad():
        h = mutant[:3](x)
        z, zm = model[3](h), mutant[3](h)
    assert torch.allclose(zm[:, hidden], -z[:, hidden]) and torch.allclose(zm[:, ~hidden], z[:, ~hidden])


def test_operators_need_a_hidden_layer_and_good_arguments():
    with pytest.raises(ValueError, match="hidden"):
        mu.neuron_activation_inverse(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 0.5)
    with pytest.raises(ValueError, match="rate"):
        mu.weight_shuffling(small_net(), 1.5)
    with pytest.raises(ValueError, match="operator"):
        mu.mutant(small_net(), "XX", 0.1)
    with pytest.raises(TypeError, match="model"):
        mu.gaussian_fuzzing("model", 0.1)
    with pytest.raises(ValueError, match="convolutional or linear"):
        mu.gaussian_fuzzing(nn.Sequential(nn.ReLU()), 0.1)


@pytest.mark.parametrize("op", list(mu.OPERATORS))
def test_the_same_seed_gives_the_same_mutants(op):
    model = wide_net()
    a, b = mu.mutant(model, op, 0.1, seed=7, index=3), mu.mutant(model, op, 0.1, seed=7, index=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = mu.mutant(model, op, 0.1, seed=7, index=4)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert mu.candidate_seed(7, 3) != mu.candidate_seed(8, 3)


def data_for(model, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return x, train.predict(model, x)


def test_the_filter_keeps_exactly_the_accurate_candidates():
    model = wide_net()
    x, y = data_for(model)
    y = torch.where(torch.arange(len(y)) % 5 == 0, (y + 1) % 5, y)  # the original is 80% accurate
    pool = mu.Mutants(model, "NAI", 0.02, x=x, y=y, candidates=30, min_fraction=0.9, seed=1)
    assert pool.original_accuracy == pytest.approx(0.8)
    accuracy = [train.accuracy(mu.mutant(model, "NAI", 0.02, seed=1, index=i), x, y) for i in range(30)]
    assert pool.accuracy == pytest.approx(accuracy)
    assert pool.kept == [i for i, a in enumerate(accuracy) if a >= 0.9 * pool.original_accuracy]
    assert 0 < len(pool) < 30, "the constructed case must have kept and rejected candidates"
    kept = list(pool)
    assert len(kept) == len(pool)
    assert all(train.accuracy(m, x, y) >= pool.min_accuracy for m in kept)
    again = list(pool)  # a second pass regenerates the same mutants
    assert all(torch.equal(p, q) for a, b in zip(kept, again) for p, q in zip(a.parameters(), b.parameters()))
    assert mu.Mutants(model, "NAI", 0.02, x=x, y=y, candidates=30, min_fraction=0.0, seed=1).kept == list(range(30))
    d = pool.describe()
    assert d["kept"] == len(pool) and d["operator"] == "NAI" and len(d["accuracy"]) == 30


class Shifted(nn.Module):
    """Label 1 iff x > shift, as two logits [0, x - shift]; counts its forward calls and the inputs seen."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift, self.calls, self.seen = shift, 0, []

    def forward(self, x):
        self.calls += 1
        self.seen.append(len(x))
        return torch.cat([torch.zeros_like(x), x - self.shift], dim=1)


def test_label_change_rate_on_a_constructed_case_one_pass_per_mutant():
    model = Shifted(0.0)
    x = torch.tensor([[0.5], [1.5], [2.5], [3.5], [-1.0]])
    mutants = [Shifted(t) for t in (1.0, 2.0, 3.0, 0.0)]
    changes = mu.label_changes(model, mutants, x)
    # input 0.5 flips for t = 1, 2, 3; 1.5 for 2, 3; 2.5 for 3; 3.5 never; -1 (label 0) never
    assert changes.T.tolist() == [[True, True, True, False], [False, True, True, False],
                                  [False, False, True, False], [False] * 4, [False] * 4]
    assert mu.label_change_rate(model, mutants, x).tolist() == [0.75, 0.5, 0.25, 0.0, 0.0]
    assert all(m.calls == 2 for m in mutants), "one pass per mutant (and none left over)"
    # judged against given labels instead: everything labelled 0 changes wherever a mutant says 1
    given = mu.label_change_rate(model, mutants, x, labels=torch.zeros(5, dtype=torch.long))
    assert given.tolist() == [0.25, 0.5, 0.75, 1.0, 0.0]
    with pytest.raises(ValueError, match="empty"):
        mu.label_changes(model, [], x)
    with pytest.raises(ValueError, match="labels"):
        mu.label_changes(model, mutants, x, labels=torch.zeros(4, dtype=torch.long))


def test_input_label_changes_are_seeded_and_shared_by_the_inputs():
    model = small_net()
    x, _ = data_for(model, n=10)
    x = torch.cat([x, x[:3]])
    a = mu.input_label_changes(model, x, n=40, std=0.3, seed=2)
    assert a.shape == (40, 13) and a.dtype == torch.bool
    assert torch.equal(a, mu.input_label_changes(model, x, n=40, std=0.3, seed=2))
    assert torch.equal(a[:, :3], a[:, 10:]), "the same pattern for every input"
    far = Shifted(0.0)
    assert not mu.input_label_changes(far, torch.full((5, 1), 0.9), n=50, std=0.01, clip=None).any()
    with pytest.raises(ValueError, match="std"):
        mu.input_label_changes(model, x, std=0.0)


def test_genuine_threshold_is_the_mean_plus_the_confidence_half_width():
    rates = torch.tensor([0.0, 0.0, 0.1, 0.3, 0.1, 0.0])
    expected = rates.mean().item() + 2.5758293 * rates.std(unbiased=False).item() / math.sqrt(6)
    assert mu.genuine_threshold(rates) == pytest.approx(expected, rel=1e-6)
    assert mu.genuine_threshold(rates, confidence=0.95) < mu.genuine_threshold(rates)
    with pytest.raises(ValueError, match="rates"):
        mu.genuine_threshold(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="confidence"):
        mu.genuine_threshold(rates, confidence=1.0)


def bernoulli(p: float, m: int, n: int, seed: int) -> torch.Tensor:
    return torch.rand(m, n, generator=torch.Generator().manual_seed(seed)) < p


@pytest.mark.parametrize("threshold, indifference", [(0.1, 0.05), (0.3, 0.1)])
def test_sprt_error_rates_stay_within_alpha_and_beta(threshold, indifference):
    n, alpha, beta = 4000, 0.05, 0.05
    tol = 3 * math.sqrt(alpha * (1 - alpha) / n)  # Monte Carlo: three standard errors
    at_p0 = mu.sprt(bernoulli(threshold - indifference, 600, n, 0), threshold, indifference=indifference)
    at_p1 = mu.sprt(bernoulli(threshold + indifference, 600, n, 1), threshold, indifference=indifference)
    assert at_p0.decided.double().mean() > 0.995 and at_p1.decided.double().mean() > 0.995
    assert at_p0.rate <= alpha + tol, "genuine-rate sequences flagged more often than alpha"
    assert 1 - at_p1.rate <= beta + tol, "adversarial-rate sequences missed more often than beta"
    # far from the indifference region the test is nearly always right, and quicker
    low = mu.sprt(bernoulli(threshold / 4, 600, n, 2), threshold, indifference=indifference)
    high = mu.sprt(bernoulli(min(0.95, 3 * threshold), 600, n, 3), threshold, indifference=indifference)
    assert low.rate < 0.001 and high.rate > 0.999
    assert high.mutants_used.double().mean() < at_p1.mutants_used.double().mean()


def test_sprt_stops_where_wald_says_on_constant_sequences():
    threshold, indifference, alpha, beta = 0.2, 0.05, 0.05, 0.05
    p0, p1 = threshold - indifference, threshold + indifference
    never = mu.sprt(torch.zeros(500, 3, dtype=torch.bool), threshold, indifference=indifference)
    always = mu.sprt(torch.ones(500, 3, dtype=torch.bool), threshold, indifference=indifference)
    n_h0 = math.ceil(math.log(beta / (1 - alpha)) / math.log((1 - p1) / (1 - p0)))
    n_h1 = math.ceil(math.log((1 - beta) / alpha) / math.log(p1 / p0))
    assert never.mutants_used.tolist() == [n_h0] * 3 and not never.adversarial.any() and never.decided.all()
    assert always.mutants_used.tolist() == [n_h1] * 3 and always.adversarial.all() and always.changes.tolist() == [n_h1] * 3


def test_sprt_at_the_cap_compares_the_rate_seen_with_the_threshold():
    ch = torch.zeros(10, 2, dtype=torch.bool)
    ch[:3, 0] = True  # 30% > 20%: flagged; the second: 10% < 20%
    ch[:1, 1] = True
    res = mu.sprt(ch, 0.2, indifference=0.01)
    assert not res.decided.any() and res.mutants_used.tolist() == [10, 10]
    assert res.adversarial.tolist() == [True, False] and res.changes.tolist() == [3, 1]


def test_sprt_refuses_bad_settings_by_name():
    ch = torch.zeros(5, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="indifference"):
        mu.sprt(ch, 0.05, indifference=0.1)
    with pytest.raises(ValueError, match="alpha"):
        mu.sprt(ch, 0.2, indifference=0.1, alpha=0.6, beta=0.5)
    with pytest.raises(ValueError, match="threshold"):
        mu.sprt(ch, 1.2, indifference=0.1)
    with pytest.raises(ValueError, match="changes"):
        mu.sprt(torch.zeros(0, 2, dtype=torch.bool), 0.2, indifference=0.1)


def test_detect_draws_mutants_until_it_decides_and_agrees_with_sprt():
    model = wide_net()
    x, y = data_for(model, n=200)
    pool = mu.Mutants(model, "NAI", 0.2, x=x, y=y, candidates=60, min_fraction=0.5, seed=0)
    assert len(pool) >= 30
    probe = x[:40]
    changes = mu.label_changes(model, pool, probe)
    rates = changes.double().mean(0)
    threshold = float(rates.median().clamp(0.05, 0.5))
    expected = mu.sprt(changes, threshold, indifference=0.3 * threshold)
    got = mu.detect(model, pool, probe, threshold, indifference=0.3 * threshold)
    for field in ("adversarial", "mutants_used", "changes", "decided"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    capped = mu.detect(model, pool, probe, threshold, indifference=0.3 * threshold, max_mutants=5)
    assert capped.mutants_used.max() <= 5
    assert torch.equal(capped.mutants_used, expected.mutants_used.clamp(max=5))


def test_detect_lets_decided_inputs_leave_the_batch():
    model = Shifted(0.0)
    x = torch.tensor([[0.5], [3.5], [100.0]])  # the first flips for every mutant; the others never
    mutants = [Shifted(1.0) for _ in range(300)]
    res = mu.detect(model, mutants, x, 0.2, indifference=0.1)
    assert res.adversarial.tolist() == [True, False, False] and res.decided.all()
    seen = [m.seen[-1] for m in mutants if m.seen]
    assert seen[0] == 3 and seen[-1] == 2, "the decided input left; the others stay until they decide"
    assert len(seen) == int(res.mutants_used.max()) < 300
