"""Selection stability: do two disjoint halves of the neuron-finding items pick the same neurons?

Score tables hold per-culture sums, and sums add up, so one extra scoring run over fold 0 of 2
(``culnig-score run --fold 0/2``) gives both halves: half A is that table, half B is the full
table minus it (:func:`complement`).  Only the roles scored per fold (task and control, whose
folds match because a document's fold is a hash of its index) are split; CRC and general-prose
tables are shared by both halves.

Every selected set then carries ``meta["stability"]``:

* ``halves_jaccard``: |A ∩ B| / |A ∪ B| of the sets selected on the two halves (None when both
  are empty or the label is missing from one half);
* ``seeds_jaccard``: the same across two seeds of any sampling in the selection; None for the
  deterministic selections in this package (no sampling, so two seeds give the same set);
* ``unstable``: ``halves_jaccard < threshold`` (0.3), flagged in the report.
"""

from __future__ import annotations

import torch

from .neuron_set import NeuronSet
from .scoring.attribution import ScoreTable

UNSTABLE_BELOW = 0.3
SPLIT_ROLES = ("task", "control")


class HalfTableError(ValueError):
    """A fold table that does not belong to the full table it is paired with."""


def _where(table: ScoreTable) -> str:
    return table.meta.get("path") or "<memory>"


def complement(full: ScoreTable, part: ScoreTable, role: str) -> ScoreTable:
    """``full - part``: the scores of the items of ``full`` that are not in the fold ``part``."""
    settings = dict(part.meta.get("settings") or {})
    fold = settings.pop("fold", None)
    where = f"{role} fold table {_where(part)}"
    if fold is None:
        raise HalfTableError(f"{where}: not a fold table (score it with culnig-score run --fold 0/2)")
    if settings != (full.meta.get("settings") or {}) or part.meta.get("tasks") != full.meta.get("tasks"):
        raise HalfTableError(f"{where}: made with other tasks or settings than {_where(full)}; "
                             "re-score the fold with the full run's flags plus --fold")
    if set(part.scores) != set(full.scores) or not set(part.cultures) <= set(full.cultures):
        raise HalfTableError(f"{where}: module kinds or cultures differ from {_where(full)}")
    index = torch.tensor([full.cultures.index(c) for c in part.cultures], dtype=torch.long)
    counts = torch.as_tensor(full.counts).clone()
    counts.index_add_(0, index, -torch.as_tensor(part.counts))
    if bool((counts < 0).any()):
        raise HalfTableError(f"{where}: holds more samples than {_where(full)} for some culture")
    scores = {}
    for kind, total in full.scores.items():
        rest = total.clone()
        rest.index_add_(-1, index, -part.scores[kind].to(rest.dtype))
        scores[kind] = rest
    meta = {**full.meta, "path": f"{_where(full)} minus {_where(part)}", "fold": f"not {fold}",
            "sha256": None}
    return ScoreTable(list(full.cultures), scores, counts, meta)


def halves(tables: dict[str, ScoreTable], half_tables: dict[str, ScoreTable]):
    """(tables of half A, tables of half B): the fold tables and their complements; the other
    roles are shared."""
    unknown = sorted(set(half_tables) - set(SPLIT_ROLES))
    if unknown or "task" not in half_tables:
        raise HalfTableError(f"fold tables: need task (and control) fold tables, got {sorted(half_tables)}")
    missing = [r for r in SPLIT_ROLES if r in tables and r not in half_tables]
    if missing:
        raise HalfTableError(f"fold tables: no {', '.join(missing)} fold table, but the full run has one; "
                             "score every split role with --fold")
    half_a = {**tables, **half_tables}
    half_b = {**tables, **{role: complement(tables[role], part, role) for role, part in half_tables.items()}}
    return half_a, half_b


def jaccard(a: NeuronSet | None, b: NeuronSet | None) -> float | None:
    """|a ∩ b| / |a ∪ b|; None when one is missing or both are empty."""
    if a is None or b is None:
        return None
    union = len(a.union(b))
    return None if union == 0 else len(a.intersect(b)) / union


def stability_entry(halves_jaccard: float | None, seeds_jaccard: float | None = None) -> dict:
    return {
        "halves_jaccard": halves_jaccard,
        "seeds_jaccard": seeds_jaccard,
        "threshold": UNSTABLE_BELOW,
        "unstable": halves_jaccard is not None and halves_jaccard < UNSTABLE_BELOW,
        "note": "deterministic selection: no seed overlap",
    }


def annotate(sets: dict[str, NeuronSet], sets_a: dict[str, NeuronSet], sets_b: dict[str, NeuronSet]) -> dict:
    """Store ``meta["stability"]`` on every set of ``sets``; returns {label: entry}."""
    entries = {}
    for label, neuron_set in sets.items():
        entry = stability_entry(jaccard(sets_a.get(label), sets_b.get(label)))
        neuron_set.meta["stability"] = entry
        entries[label] = entry
    return entries
