"""The threat model: norms, their duals, steepest directions, projections."""

import math

import pytest
import torch

from advlib import norms

P_VALUES = [1.0, 1.5, 2.0, 3.0, math.inf]


@pytest.mark.parametrize("p", P_VALUES)
def test_norm_equals_torch_vector_norm(p):
    v = torch.randn(4, 5, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for dim in (0, 1, 2, -1):
        torch.testing.assert_close(norms.norm(v, p, dim=dim), torch.linalg.vector_norm(v, ord=p, dim=dim))
    torch.testing.assert_close(norms.lp_norm(v, p), torch.linalg.vector_norm(v.flatten(1), ord=p, dim=1))


@pytest.mark.parametrize("p", P_VALUES)
def test_steepest_direction_has_unit_norm_and_attains_the_dual_norm(p):
    w = torch.randn(6, 3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = norms.steepest(w, p)
    torch.testing.assert_close(norms.lp_norm(u, p), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close((u * w).flatten(1).sum(1), norms.lp_norm(w, norms.dual(p)))
    assert (norms.steepest(torch.zeros(2, 5), p) == 0).all()


@pytest.mark.parametrize("p, q", [(1.0, math.inf), (2.0, 2.0), (math.inf, 1.0), (3.0, 1.5)])
def test_dual(p, q):
    assert norms.dual(p) == q


@pytest.mark.parametrize("bad", [0.5, -1, float("nan"), True, "2"])
def test_bad_p(bad):
    with pytest.raises((ValueError, TypeError), match="p must"):
        norms.check_p(bad)
