"""Builder options: the keyword arguments a task gives its builder (``dataset_kwargs`` in the
YAML, or ``--metadata`` JSON), checked once with a message saying where to set them."""

from __future__ import annotations

import re
from typing import Any


def whole_number_option(name: str, value: Any) -> int | None:
    """A builder option that is a whole number >= 0, or None (from YAML, --metadata JSON, or a string)."""
    if value is None:
        return None
    if isinstance(value, bool) or not re.fullmatch(r"\s*\d+\s*", str(value)):
        raise ValueError(f"{name} must be a whole number >= 0 or null, not {value!r} "
                         f"(set it with --metadata '{{\"{name}\": 5}}' or the task's dataset_kwargs)")
    return int(value)


def share_option(name: str, value: Any) -> float:
    """A builder option that is a fraction in [0, 1] (from YAML, --metadata JSON, or a string)."""
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = float("nan")
    if isinstance(value, bool) or not 0.0 <= share <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"{name} must be a number from 0 to 1, not {value!r} "
                         f"(set it with --metadata '{{\"{name}\": 0.4}}' or the task's dataset_kwargs)")
    return share

