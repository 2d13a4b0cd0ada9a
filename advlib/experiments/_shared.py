"""What the three perturbation chapters share (Ozbulak et al.): the four
perturbation sources under the names the paper gives them, the colours the
figures give them, and the way a chapter states its claims.

A claim is ``{"statement", "holds", "measured", ...the numbers it rests on}``
(:func:`claim`); :func:`claims_table` sets the chapter's claims beside the
paper's words for them (``advlib.published``), and :func:`verdicts` gives the
pre-formatted verdicts the prose glues in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import checks, losses

LOSS_NAMES = ("CE", "CE-sign", "logit", "M-logit")
"""The paper's names of the four sources, in its order (Table I)."""

COLORS = {"CE": "#4C72B0", "CE-sign": "#DD8452", "logit": "#55A868", "M-logit": "#C44E52"}
"""One colour per loss, the same in every figure of the three chapters."""

PLOT_STYLE = {"figure.dpi": 110, "font.size": 9, "axes.titlesize": 10}
"""matplotlib rcParams of the chapters' figures."""

VERDICT = {True: "replicates", False: "does not replicate"}
"""How the prose says a claim's verdict."""


def loss_sources(kappa: float = 0.0, names: Sequence[str] = LOSS_NAMES) -> dict[str, losses.Loss]:
    """The perturbation sources by the paper's names: ``{"CE": losses.ce, ...}``;
    M-logit with confidence margin ``kappa`` (Carlini and Wagner's default 0).
    ``names`` picks some of them, in that order."""
    kappa = checks.number(kappa, "kappa", low=0)
    every = {"CE": losses.ce, "CE-sign": losses.ce_sign, "logit": losses.logit, "M-logit": losses.m_logit_loss(kappa)}
    unknown = [n for n in names if n not in every]
    if unknown or not names:
        raise ValueError(f"names must be some of {', '.join(LOSS_NAMES)}, got {list(names)!r}")
    return {n: every[n] for n in names}


def claim(statement: str, holds: Any, measured: str, **numbers: Any) -> dict[str, Any]:
    """One claim as the chapters save it: the statement, the verdict (a real
    bool), the measured numbers in words, and the numbers themselves."""
    return {"statement": statement, "holds": bool(holds), "measured": measured, **numbers}


def verdicts(claims: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{"v_<claim>": "replicates" | "does not replicate"}``, to glue."""
    return {f"v_{key}": VERDICT[bool(c["holds"])] for key, c in claims.items()}


def n_holding(claims: Mapping[str, Mapping[str, Any]]) -> str:
    """``"3 of 5"``: how many claims hold."""
    return f"{sum(bool(c['holds']) for c in claims.values())} of {len(claims)}"


def claims_table(claims: Mapping[str, Mapping[str, Any]], paper: Mapping[str, str], paper_label: str):
    """The claims as a table: what is claimed, what the paper says
    (``paper[key]``, from ``advlib.published``), what this build measured,
    and whether it holds (yes/no): a pandas Styler, which shows whole
    sentences where a DataFrame's display would cut them at 50 characters
    (the DataFrame is its ``.data``)."""
    import pandas as pd

    missing = [k for k in claims if k not in paper]
    if missing:
        raise KeyError(f"the published record has no paper statement for the claim(s) {', '.join(missing)}")
    rows = {
        c["statement"]: {paper_label: paper[k], "this build": c["measured"], "holds": "yes" if c["holds"] else "no"}
        for k, c in claims.items()
    }
    return pd.DataFrame(rows).T.rename_axis("claim").style.set_properties(**{"text-align": "left"})


def arguments(fn: Callable[..., Any], parameters: Mapping[str, Any], **renamed: str) -> dict[str, Any]:
    """The keyword arguments of ``fn`` (a chapter's ``run``) that the notebook
    ``parameters`` hold under the same name, or under ``renamed[argument]``:
    how ``compute`` passes a notebook's parameters on, so that no list of them
    is written twice."""
    import inspect

    names = [n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY]
    out = {n: parameters[renamed.get(n, n)] for n in names if renamed.get(n, n) in parameters}
    unknown = sorted(set(renamed) - set(names))
    if unknown:
        raise TypeError(f"{fn.__qualname__} has no argument(s) {', '.join(unknown)}")
    return out


def call(fn: Callable[..., Any], parameters: Mapping[str, Any], given: Mapping[str, Any], **renamed: str) -> Any:
    """``fn(**arguments(fn, parameters, **renamed), **given)``, of ``given``
    only the entries ``fn`` takes (a chapter's ``load`` also returns what
    only the notebook shows, such as the training record)."""
    import inspect

    takes = inspect.signature(fn).parameters
    return fn(**{**arguments(fn, parameters, **renamed), **{k: v for k, v in given.items() if k in takes}})


def jsonable(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` as the saved JSON holds them (tensors as lists, NaN as
    None): what ``run`` returns, so that the notebook shows, and the tests
    check, exactly what is saved."""
    from ..provenance import to_jsonable

    return to_jsonable(results, "results")


def nan_for_none(value: Any) -> Any:
    """The inverse of JSON's NaN -> None, recursively: None -> NaN, for
    formatting numbers that may be undefined (a median over no image)."""
    if value is None:
        return math.nan
    if isinstance(value, Mapping):
        return {k: nan_for_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_for_none(v) for v in value]
    return value


def names_text(names: Sequence[str]) -> str:
    """``"CE, logit and M-logit"``."""
    names = list(names)
    if not names:
        raise ValueError("names_text needs at least one name")
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def key_of(name: str) -> str:
    """A loss name as part of a glue name: ``"CE-sign"`` -> ``"ce_sign"``."""
    return name.lower().replace("-", "_")
