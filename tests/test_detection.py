"""The genuine-vs-adversarial detection sets and detector training (advlib.detection)."""

import pytest
import torch
from torch import nn

from advlib import detection
from advlib.detection import GENUINE, OVERALL, DetectionSet, accuracy_by_source, detection_set, train_detector


def images(n, value, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (value + 0.05 * torch.rand(n, 1, 8, 8, generator=g)).clamp(0, 1)


def test_detection_set_labels_and_sources():
    gen, a, b = images(3, 0.1), images(2, 0.5), images(4, 0.9)
    ds = detection_set(gen, {"A": a, "B": b})
    assert ds.x.shape == (9, 1, 8, 8)
    assert torch.equal(ds.x, torch.cat([gen, a, b]))
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert ds.sources == (GENUINE, "A", "B")
    assert ds.source.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert ds.counts() == {GENUINE: 3, "A": 2, "B": 4}
    assert len(ds) == 9


def test_detection_set_allows_no_genuine_or_no_attack():
    only_adv = detection_set(images(0, 0.1), {"A": images(2, 0.5)})
    assert only_adv.y.tolist() == [1, 1] and only_adv.counts()[GENUINE] == 0
    only_gen = detection_set(images(2, 0.1), {})
    assert only_gen.y.tolist() == [0, 0] and only_gen.sources == (GENUINE,)


@pytest.mark.parametrize(
    "adversarial, match",
    [
        ({"genuine": images(1, 0.5)}, "attack names"),
        ({"overall": images(1, 0.5)}, "attack names"),
        ({"": images(1, 0.5)}, "attack names"),
        ({"A": torch.rand(2, 1, 7, 8)}, "adversarials of 'A'"),
        ({"A": torch.rand(2, 1, 8, 8, dtype=torch.float64)}, "adversarials of 'A'"),
    ],
)
def test_detection_set_rejects_bad_input(adversarial, match):
    with pytest.raises(ValueError, match=match):
        detection_set(images(2, 0.1), adversarial)


def test_detection_set_rejects_empty_and_non_float():
    with pytest.raises(ValueError, match="at least one image"):
        detection_set(images(0, 0.1), {})
    with pytest.raises(TypeError, match="floating point"):
        detection_set(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), {})


class Brightness(nn.Module):
    """Calls an image adversarial when its mean pixel exceeds 0.5."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([0.5 - m, m - 0.5], dim=1)


def test_accuracy_by_source_counts_each_source():
    # genuine: 3 dark (right) and 1 bright (wrong); A: 2 bright (right); B: 1 bright, 3 dark (1/4 right)
    gen = torch.cat([images(3, 0.1), images(1, 0.9)])
    ds = detection_set(gen, {"A": images(2, 0.9), "B": torch.cat([images(1, 0.9), images(3, 0.1)])})
    acc = accuracy_by_source(Brightness(), ds)
    assert acc == pytest.approx({GENUINE: 0.75, "A": 1.0, "B": 0.25, OVERALL: 6 / 10})


def test_accuracy_by_source_leaves_out_absent_sources():
    ds = detection_set(images(0, 0.1), {"A": images(2, 0.9)})
    assert set(accuracy_by_source(Brightness(), ds)) == {"A", OVERALL}


def test_train_detector_learns_a_separable_problem_deterministically():
    gen, adv = images(64, 0.1, seed=1), images(64, 0.6, seed=2)
    train_set = detection_set(gen, {"bright": adv})
    state = torch.random.get_rng_state()
    det, history = train_detector("fc500-150-10", train_set, epochs=10, lr=1e-2, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    assert len(history) == 10 and not det.training
    test_set = detection_set(images(32, 0.1, seed=4), {"bright": images(32, 0.6, seed=5)})
    acc = accuracy_by_source(det, test_set)
    assert acc[OVERALL] == 1.0 and acc[GENUINE] == 1.0 and acc["bright"] == 1.0
    again, _ = train_detector("fc500-150-10", train_set, epochs=10, lr=1e-2, seed=3)
    for p, q in zip(det.parameters(), again.parameters()):
        assert torch.equal(p, q)
    other, _ = train_detector("fc500-150-10", train_set, epochs=10, lr=1e-2, seed=4)
    assert any(not torch.equal(p, q) for p, q in zip(det.parameters(), other.parameters()))


def test_train_detector_has_two_outputs_and_takes_model_options():
    train_set = detection_set(torch.rand(4, 1, 28, 28), {"A": torch.rand(4, 1, 28, 28)})
    det, _ = train_detector("nin-small", train_set, epochs=1, lr=1e-3, seed=0, model_options={"width": 8})
    assert det(train_set.x).shape == (8, 2)


def test_train_detector_needs_both_classes():
    with pytest.raises(ValueError, match="one class only"):
        train_detector("fc500-150-10", detection_set(images(4, 0.1), {}), epochs=1, lr=1e-3, seed=0)
    with pytest.raises(TypeError, match="DetectionSet"):
        train_detector("fc500-150-10", (images(4, 0.1), torch.zeros(4)), epochs=1, lr=1e-3, seed=0)


def test_module_exports():
    assert detection.GENUINE == "genuine" and isinstance(detection_set(images(1, 0.1), {}), DetectionSet)
