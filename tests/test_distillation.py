"""advlib.defences.distillation: the softmax at a temperature, the teacher and
its soft labels, the distilled network and the softmax's input gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from advlib import data, models, train
from advlib.defences import distillation
from advlib.defences.distillation import softmax, softmax_jacobian_log10, soft_labels

# digits 8x8, a small MLP: every network of these tests trains in about a second.
CONFIG = train.TrainConfig("mlp", "digits", epochs=30, lr=0.01, optimizer="adam", seed=0)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("distillation-cache")


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


# ---------------------------------------------------------------- the softmax at T


def test_softmax_at_one_is_the_usual_softmax():
    z = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(softmax(z), torch.softmax(z, dim=1))
    assert torch.equal(softmax(z, 1.0), torch.softmax(z, dim=1))
    assert torch.allclose(softmax(z, 4.0), torch.softmax(z / 4, dim=1))


def test_softmax_tends_to_uniform_as_t_grows():
    z = 10 * torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    gaps = [(softmax(z, t) - 1 / 7).abs().max().item() for t in (1, 10, 100, 1e4, 1e6)]
    assert all(b < a for a, b in zip(gaps, gaps[1:]))  # closer and closer
    assert gaps[-1] < 1e-5
    assert torch.allclose(softmax(z, 1e6).sum(1), torch.ones(5))
    # ...and as T -> 0 to the argmax (one-hot).
    assert torch.equal(softmax(z, 1e-4).argmax(1), z.argmax(1)) and softmax(z, 1e-4).max(1).values.min() > 0.999


@pytest.mark.parametrize("t", [0, -1.0, math.inf, math.nan])
def test_softmax_refuses_a_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature"):
        softmax(torch.zeros(2, 3), t)


def test_softmax_refuses_a_non_batch():
    with pytest.raises(ValueError, match=r"logits must be a tensor \[N, classes\]"):
        softmax(torch.zeros(3))


def test_soft_labels_are_the_teachers_softmax_at_t_without_gradients():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    model.train()
    x = torch.rand(10, 1, 4, 4)
    p = soft_labels(model, x, 3.0, batch_size=4)
    assert model.training  # flags put back
    assert not p.requires_grad and p.shape == (10, 3)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(p, torch.softmax(model(x) / 3.0, 1))  # eval mode: no dropout
    assert torch.allclose(p.sum(1), torch.ones(10))


def test_recipes_refuse_bad_arguments():
    with pytest.raises(TypeError, match="config must be an advlib.train.TrainConfig"):
        distillation.distilled({"arch": "mlp"}, 10)
    with pytest.raises(ValueError, match="temperature"):
        distillation.teacher(CONFIG, 0)
    with pytest.raises(TypeError, match="progress"):
        distillation.distilled(CONFIG, 2, progress="yes")


# ---------------------------------------------------------------- teacher and distilled network


def _build():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CONFIG.seed)
        return models.build(CONFIG.arch, (1, 8, 8), 10)


def _fit(model, x, y, t):
    return train.fit(model, x, y, epochs=CONFIG.epochs, batch_size=CONFIG.batch_size, lr=CONFIG.lr,
                     optimizer=CONFIG.optimizer, temperature=t, seed=CONFIG.seed, progress=False)


def test_distilled_is_the_recipe_by_hand(cache, digits):
    """Teacher at T on the hard labels, its soft labels at T, the student at T
    on them: the same weights as distilled(), and the returned network's
    logits are the trained network's own (deployed at T = 1: nothing divides them)."""
    train_set, test_set = digits
    t = 5.0
    model, info = distillation.distilled(CONFIG, t, cache_dir=cache, progress=False)

    teacher = _build()
    _fit(teacher, train_set.x, train_set.y, t)
    soft = soft_labels(teacher, train_set.x, t)  # tested above: softmax(teacher(x) / T), eval mode
    student = _build()
    history = _fit(student, train_set.x, soft, t)

    assert _same(model, student)
    with torch.no_grad():
        assert torch.equal(model(test_set.x), student.eval()(test_set.x))
    assert info["history"] == history
    assert info["temperature"] == t and info["n_train"] == len(train_set)
    assert info["test_accuracy"] == pytest.approx(train.accuracy(model, test_set.x, test_set.y))
    teacher_model, teacher_info = distillation.teacher(CONFIG, t, cache_dir=cache, progress=False)
    assert teacher_info["from_cache"] and _same(teacher_model, teacher)
    assert info["teacher"]["key"] == teacher_info["key"]


def test_the_students_loss_is_the_cross_entropy_to_the_soft_labels(tmp_path, digits):
    """One full-batch step: the loss fit reports for the student is
    -sum_j p_j log softmax(z / T)_j at its initial weights, p the teacher's soft labels at T."""
    train_set, _ = digits
    config = train.TrainConfig("mlp", "digits", epochs=1, lr=0.01, optimizer="adam", batch_size=len(train_set))
    t = 4.0
    model, info = distillation.distilled(config, t, cache_dir=tmp_path, progress=False)
    teacher, _ = distillation.teacher(config, t, cache_dir=tmp_path, progress=False)
    p = soft_labels(teacher, train_set.x, t)
    with torch.no_grad():
        z = _build()(train_set.x)  # the student's initial weights (config.seed)
    expected = -(p * F.log_softmax(z / t, dim=1)).sum(1).mean().item()
    assert info["history"][0]["loss"] == pytest.approx(expected, rel=1e-5)
    # ...not the loss to the hard labels, nor at T = 1.
    assert abs(F.cross_entropy(z / t, train_set.y).item() - expected) > 1e-3
    assert abs(-(p * F.log_softmax(z, dim=1)).sum(1).mean().item() - expected) > 1e-3


def test_cached_by_the_whole_recipe_and_deterministic(cache, tmp_path):
    model, info = distillation.distilled(CONFIG, 5.0, cache_dir=cache, progress=False)
    again, info_again = distillation.distilled(CONFIG, 5.0, cache_dir=cache, progress=False)
    assert info_again["from_cache"] and _same(model, again)
    # Trained anew elsewhere: bit for bit the same.
    fresh, info_fresh = distillation.distilled(CONFIG, 5.0, cache_dir=tmp_path, progress=False)
    assert not info_fresh["from_cache"] and not info_fresh["teacher"]["from_cache"] and _same(model, fresh)
    # The key holds the teacher's recipe and the temperature.
    recipe = info["recipe"]
    assert recipe["teacher"] == distillation.teacher_recipe(CONFIG, 5.0) and recipe["temperature"] == 5.0
    assert recipe["train"] == CONFIG.as_dict()
    assert distillation.distilled_recipe(CONFIG, 6.0) != recipe
    other = train.TrainConfig("mlp", "digits", epochs=30, lr=0.01, optimizer="adam", seed=1)
    assert train.cache_key(distillation.distilled_recipe(other, 5.0)) != info["key"]


def test_a_high_temperature_grows_the_logits_and_saturates_the_softmax(cache, digits):
    _, test_set = digits
    margins, zeros = {}, {}
    for t in (1.0, 20.0):
        model, info = distillation.distilled(CONFIG, t, cache_dir=cache, progress=False)
        assert info["test_accuracy"] > 0.85
        with torch.no_grad():
            top2 = model(test_set.x).topk(2, 1).values
        margins[t] = (top2[:, 0] - top2[:, 1]).median().item()
        x = test_set.x[:20].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.softmax(model(x), 1).max(1).values.sum(), x)
        zeros[t] = (g == 0).double().mean().item()
    assert margins[20.0] > 3 * margins[1.0]
    assert zeros[20.0] > zeros[1.0]


# ---------------------------------------------------------------- the softmax's input gradients


def test_softmax_jacobian_matches_autograd_in_float64():
    torch.manual_seed(0)
    model = models.build("mlp", (1, 8, 8), 10)
    x = torch.rand(3, 1, 8, 8)
    lj = softmax_jacobian_log10(model, x)
    assert lj.shape == (3, 10, 1, 8, 8) and lj.dtype == torch.float64
    double = models.build("mlp", (1, 8, 8), 10)
    double.load_state_dict(model.state_dict())
    double = double.double()
    jac = torch.autograd.functional.jacobian(lambda z: torch.softmax(double(z), 1), x.double())
    jac = torch.stack([jac[i, :, i] for i in range(3)])  # each image's own Jacobian
    assert torch.allclose(lj, jac.abs().log10(), atol=1e-9)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left alone


def test_softmax_jacobian_does_not_underflow_where_float32_does():
    """Two classes, logits s * (w_k . x): dF_1/dx = s F_1 F_2 (w_1 - w_2), whose
    log is logsigmoid(d) + logsigmoid(-d) + log(s |w_1 - w_2|), d = z_1 - z_2."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 6, generator=g)
    scale = 300.0
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(scale * w)
    x = torch.rand(4, 1, 6, generator=g) + 0.5
    xg = x.clone().requires_grad_(True)
    (g32,) = torch.autograd.grad(torch.softmax(model(xg), 1)[:, 0].sum(), xg)
    assert (g32 == 0).all()  # float32 autograd: nothing left
    lj = softmax_jacobian_log10(model, x)
    d = (x.double().flatten(1) @ (scale * w.double()).T) @ torch.tensor([1.0, -1.0], dtype=torch.float64)
    expected = (F.logsigmoid(d) + F.logsigmoid(-d))[:, None] + torch.log(scale * (w[0] - w[1]).double().abs())[None]
    expected = expected / math.log(10)
    assert torch.isfinite(lj).all() and lj.max() < -30  # far below float32's smallest number
    assert torch.allclose(lj[:, 0].flatten(1), expected, atol=1e-6)
    assert torch.allclose(lj[:, 1].flatten(1), expected, atol=1e-6)  # dF_2 = -dF_1


def test_softmax_jacobian_refuses_bad_input():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        softmax_jacobian_log10(lambda z: z, torch.rand(2, 3))
    with pytest.raises(ValueError, match="x must be a non-empty floating-point batch"):
        softmax_jacobian_log10(torch.nn.Linear(3, 2), torch.ones(2, 3, dtype=torch.long))
