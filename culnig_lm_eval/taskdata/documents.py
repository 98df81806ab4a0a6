"""What the documents of every builder share: text cells, the gold answer's index, answer labels
and their seeded order, and the ``DatasetDict`` a builder returns.

Where the reference shuffles options (NormAd's yes/no/neutral numbering, CulturalBench's four
options, CountryRC's countries) the order comes from :func:`item_rng`: a ``random.Random``
seeded by a SHA-256 of the dataset, the item's id and the variant number.  So an item's order
is the same on every run, machine and Python version (no ``hash()``), differs between wordings,
and does not depend on the other items.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Iterable, Sequence

from .sources import DataError, Part

LETTERS = tuple("ABCDEFGHIJ")
DIGITS = tuple(str(n) for n in range(1, 11))


def item_rng(*key: Any) -> random.Random:
    """A ``random.Random`` that depends only on ``key`` (e.g. dataset, item id, variant)."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def seeded_shuffle(options: Sequence[Any], *key: Any) -> tuple[list[Any], list[int]]:
    """(options in a per-``key`` order, ``order``): ``shuffled[i] == options[order[i]]``.

    The gold option's new place is ``order.index(old_gold)``.
    """
    order = list(range(len(options)))
    item_rng(*key).shuffle(order)
    return [options[i] for i in order], order


def option_labels(kind: str, n: int) -> list[str]:
    """The first ``n`` answer labels of ``kind``: ``"letter"`` (A, B, ...) or ``"digit"`` (1, 2, ...)."""
    labels = {"letter": LETTERS, "digit": DIGITS}.get(kind)
    if labels is None:
        raise ValueError(f"label kind must be 'letter' or 'digit', not {kind!r}")
    if n > len(labels):
        raise ValueError(f"{n} options, but only {len(labels)} {kind} labels")
    return list(labels[:n])


def option_lines(options: Iterable[Any], labels: Iterable[str], sep: str = ". ") -> str:
    """``"A. first\\nB. second"``: one labelled option per line."""
    return "\n".join(f"{label}{sep}{option}" for label, option in zip(labels, options))


def as_text(value: Any) -> str:
    """A cell as document text: None is empty, a non-string is its JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def as_splits(docs: list[dict], what: str):
    """The builders' return value, ``DatasetDict({"test": docs})``; no documents is a :class:`DataError`."""
    import datasets

    if not docs:
        raise DataError(f"no documents for {what}: check the culture and topics, and the data file it read "
                        "(CULNIG_DATA / CULNIG_<KEY> / --metadata)")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def gold_index(answer: Any, letters: list[str], part: Part, index: int, column: str) -> int:
    """Index of the gold answer: a letter ('B') or an int / digit string (0-based index into ``letters``)."""
    text = str(answer).strip()
    if isinstance(answer, int) and not isinstance(answer, bool) or text.isdigit():
        if 0 <= int(text) < len(letters):
            return int(text)
    elif text.upper() in letters:
        return letters.index(text.upper())
    raise DataError(f"{part.where(index)}: {column} {answer!r} is neither one of the choice letters "
                    f"{', '.join(letters)} nor a 0-based index below {len(letters)}; fix or remove the row")

