"""The attacks of the three papers, one module per family; all functional,
with one signature: ``attack(model, x, *, label=None, target=None, ...,
clip=(0.0, 1.0), max_iter=..., progress=False) -> AttackResult`` (untargeted:
away from ``label``, default the model's label; targeted: towards ``target``),
options keyword-only with the papers' defaults."""

from ._common import AttackResult
from .cw import cw_l2
from .deepfool import deepfool
from .gradient import fgsm, fgsm_min_eps, ifgs
from .jsma import jsma
from .lbfgs import lbfgs
from .runs import batched, least_likely

__all__ = [
    "AttackResult", "batched", "cw_l2", "deepfool", "fgsm", "fgsm_min_eps", "ifgs", "jsma", "lbfgs", "least_likely",
]
