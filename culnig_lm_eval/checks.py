"""Range checks of settings values, one wording for every settings class and command.

Each check returns the value or raises ``error`` (``ValueError`` unless the settings class has
its own subclass) as ``<label>: must be ...``, where ``label`` names the setting the way its user
wrote it: ``--steps 0`` for a command-line flag, ``top_mlp=200`` for a config key.
"""

from __future__ import annotations

import math


def finite(value, what: str) -> float:
    """``float(value)``, refusing NaN and infinities with a message naming ``what``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what}={value!r} is not a finite number")
    return number


def whole_number(value, label: str, *, least: int = 0, below: int | None = None, error=ValueError) -> int:
    """``value`` if it is an int (not a bool) >= ``least`` (and < ``below``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least or (below is not None and value >= below):
        raise error(f"{label}: must be a whole number >= {least}")
    return value


def true_or_false(value, label: str, *, error=ValueError) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise error(f"{label}: must be true or false")
    return value


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return "" if low is None else f" {'>' if low_open else '>='} {low:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def number_in(value, label: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
              high_open: bool = False, what: str = "number", error=ValueError) -> float:
    """``float(value)`` if it is a finite int or float (not a bool, not a string) from ``low`` to
    ``high`` (either may be None: unbounded; ``*_open``: the bound itself is excluded).  ``what``
    names the kind of number in the message ("percentage")."""
    number = float(value) if isinstance(value, (int, float)) else math.nan
    in_range = ((low is None or (number > low if low_open else number >= low))
                and (high is None or (number < high if high_open else number <= high)))
    if isinstance(value, bool) or not math.isfinite(number) or not in_range:
        raise error(f"{label}: must be a finite {what}{_interval(low, high, low_open, high_open)}")
    return number
