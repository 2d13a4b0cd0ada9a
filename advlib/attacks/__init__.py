"""The attacks of the three papers, one module per family; all functional,
options keyword-only with the papers' defaults, all returning AttackResult."""

from ._common import AttackResult
from .deepfool import deepfool
from .gradient import fgsm, fgsm_min_eps, ifgs

__all__ = ["AttackResult", "deepfool", "fgsm", "fgsm_min_eps", "ifgs"]
