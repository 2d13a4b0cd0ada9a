"""The attacks of the three papers, one module per family; all functional,
options keyword-only with the papers' defaults, all returning AttackResult."""

from ._common import AttackResult
from .cw import cw_l2
from .deepfool import deepfool
from .gradient import fgsm, fgsm_min_eps, ifgs
from .jsma import jsma
from .lbfgs import lbfgs

__all__ = ["AttackResult", "cw_l2", "deepfool", "fgsm", "fgsm_min_eps", "ifgs", "jsma", "lbfgs"]
