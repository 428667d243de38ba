"""Argument checks shared by the package, with one wording: ``<name> must be an integer ≥ <minimum>, got <value>``.

A bool is never an integer here (``True`` is not a count), numpy integers are. Each check raises before anything
trains and names the argument, the value and, where the caller gives it, the fix.

Example:
    >>> check_integer("every_n_steps", 10, 1)
    10
    >>> check_integer("threads", 0, 1, advice=": e.g. threads=2")
    Traceback (most recent call last):
    ...
    ValueError: threads must be an integer ≥ 1, got 0: e.g. threads=2.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

__all__ = ["check_integer", "is_finite_number", "is_integer"]


def is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool.

    Example:
        >>> is_integer(3), is_integer(True), is_integer(3.0)
        (True, False, False)
    """
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (int or float, numpy's too), not a bool.

    Example:
        >>> is_finite_number(0.5), is_finite_number(float("nan")), is_finite_number(False)
        (True, False, False)
    """
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_integer(name: str, value: Any, minimum: int, *, meaning: str = "", advice: str = "") -> int:
    """Return ``value`` if it is an integer ≥ ``minimum``, else raise a ValueError naming it.

    Args:
        name: the argument (or config key) as the user wrote it.
        value: what the user passed.
        minimum: the smallest value allowed.
        meaning: said after the bound, e.g. ``" (the number of copies)"``.
        advice: said after the value, e.g. ``": e.g. threads=2"``.

    Raises:
        ValueError: ``<name> must be an integer ≥ <minimum><meaning>, got <value><advice>.``
    """
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}{meaning}, got {value!r}{advice}.")
    return value
