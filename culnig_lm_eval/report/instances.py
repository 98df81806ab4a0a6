"""Instance-level scores: per item (set, culture, topic, doc_id) the summed score, then the share > 0.

Reads the JSONL rows ``{"set", "culture", "topic", "doc_id", "score"}`` of ``--instance-scores``
and computes, per set, a culture x topic table of "fraction of items whose summed score is
positive" with the item counts.  Formatting lives in :mod:`culnig_lm_eval.report.render`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import read_json_lines


@dataclass
class ShareCell:
    share: float  # fraction of items with a positive summed score (nan when n == 0)
    n: int


@dataclass
class SetInstanceTable:
    set_label: str
    cultures: list[str]
    topics: list[str]
    cells: list[list[ShareCell]]  # [culture][topic]
    per_culture: list[ShareCell]  # all topics
    per_topic: list[ShareCell]  # all cultures
    overall: ShareCell

    def share_matrix(self) -> np.ndarray:
        return np.array([[c.share for c in row] for row in self.cells], dtype=float)


@dataclass
class InstanceScores:
    path: str
    unreadable_rows: int
    tables: list[SetInstanceTable]


def _share(values: list[float]) -> ShareCell:
    v = np.asarray(values, dtype=float)
    return ShareCell(share=float(np.mean(v > 0)) if v.size else float("nan"), n=int(v.size))


def read_item_sums(path: Path) -> tuple[dict[tuple[str, str, str, str], float], int]:
    """(set, culture, topic, doc_id) -> summed score, and the number of unusable rows."""
    sums: dict[tuple[str, str, str, str], float] = {}
    unreadable = 0

    def count_unreadable(_line_no, _err):
        nonlocal unreadable
        unreadable += 1

    for _, row in read_json_lines(path, on_bad_line=count_unreadable):
        try:
            score = float(row["score"])
            if not math.isfinite(score):
                raise ValueError("non-finite score")
            key = (str(row["set"]), str(row.get("culture")), str(row.get("topic") or "(none)"),
                   json.dumps(row["doc_id"]))
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        sums[key] = sums.get(key, 0.0) + score
    return sums, unreadable


def _matching(items: dict[tuple[str, str, str, str], float], culture=None, topic=None) -> list[float]:
    """Summed scores of the items of ``culture`` and ``topic`` (None = any)."""
    return [v for key, v in items.items()
            if (culture is None or key[1] == culture) and (topic is None or key[2] == topic)]


def aggregate_instance_scores(path: str | Path) -> InstanceScores:
    """One culture x topic table per set in the instance-score file ``path``."""
    sums, unreadable = read_item_sums(Path(path))
    tables = []
    for set_label in sorted({key[0] for key in sums}):
        items = {key: v for key, v in sums.items() if key[0] == set_label}
        cultures = sorted({key[1] for key in items}, key=str.lower)
        topics = sorted({key[2] for key in items}, key=str.lower)

        tables.append(SetInstanceTable(
            set_label=set_label, cultures=cultures, topics=topics,
            cells=[[_share(_matching(items, c, t)) for t in topics] for c in cultures],
            per_culture=[_share(_matching(items, culture=c)) for c in cultures],
            per_topic=[_share(_matching(items, topic=t)) for t in topics],
            overall=_share(list(items.values())),
        ))
    return InstanceScores(path=str(path), unreadable_rows=unreadable, tables=tables)
