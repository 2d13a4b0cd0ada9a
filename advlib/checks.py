"""Argument checks, written once: every public function of advlib validates its
options through these, so the same mistake gets the same message everywhere.

Each check names the argument, shows what it got and says what it accepts, and
returns the value normalised (``float`` for numbers), so a caller writes
``eps = checks.number(eps, "eps", low=0)``. ``bool`` is refused wherever a
number is meant: ``eps=True`` is a bug, not ``eps=1``.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def integer(value: Any, name: str, *, low: int | None = None, high: int | None = None, none: bool = False) -> int | None:
    """An ``int`` (not a bool) in ``[low, high]``; ``None`` allowed if ``none``."""
    if value is None and none:
        return None
    bounds = _bounds(low, high, closed=(True, True))
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer{bounds}{' or None' if none else ''}, got {_got(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer{bounds}, got {value!r}")
    return int(value)


def number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    none: bool = False,
) -> float | None:
    """A real number (int or float, not a bool, not NaN) in the given range,
    returned as ``float``. Infinity only where ``finite=False`` says it makes sense."""
    if value is None and none:
        return None
    bounds = _bounds(low, high, closed=(not low_open, not high_open))
    kind = "a finite number" if finite else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (hasattr(value, "dtype") and not isinstance(value, float)):
        raise TypeError(f"{name} must be {kind}{bounds}{' or None' if none else ''}, got {_got(value)}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be {kind}{bounds}, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {kind}{bounds}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {kind}{bounds}, got {value!r}")
    return value


def flag(value: Any, name: str) -> bool:
    """A real ``bool``: ``progress=0`` or ``"yes"`` is refused rather than guessed."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {_got(value)}")
    return value


def choice(value: Any, name: str, options: Collection[Any]) -> Any:
    """One of ``options`` (compared with ``==``, so ``1`` and ``True`` are kept apart by type)."""
    if not any(type(value) is type(o) and value == o for o in options):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {_got(value)}")
    return value


def norm_order(value: Any, name: str = "p") -> float:
    """A norm's order ``p`` in ``[1, inf]``."""
    return number(value, name, low=1, finite=False)


def box(value: Any, name: str = "clip") -> tuple[float, float] | None:
    """``None`` or a pair ``(low, high)`` of finite numbers with ``low < high``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be None or a pair (low, high) of finite numbers, got {_got(value)}")
    low = number(value[0], f"{name}[0]")
    high = number(value[1], f"{name}[1]")
    if not low < high:
        raise ValueError(f"{name} must be None or (low, high) with low < high, got {tuple(value)!r}")
    return (low, high)


def _bounds(low: float | None, high: float | None, *, closed: tuple[bool, bool]) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>=' if closed[0] else '>'} {low}"
    if low is None:
        return f" {'<=' if closed[1] else '<'} {high}"
    return f" in {'[' if closed[0] else '('}{low}, {high}{']' if closed[1] else ')'}"


def instance(value: Any, name: str, kind: type | tuple[type, ...], accepts: str) -> Any:
    """An instance of ``kind``; ``accepts`` says what to pass instead
    (``loss='ce'`` is refused with the list of losses, not an AttributeError later)."""
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {accepts}, got {_got(value)}")
    return value
