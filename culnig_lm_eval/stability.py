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

Each half holds about half of every culture's items (``culnig-score run --fold`` splits every
culture evenly), so a half is selected with ``min_samples`` halved (rounded up,
:func:`half_thresholds`): the minimum guards the full selection against too few items, and
keeping it whole would make the stability of a small culture's set undefined exactly where it
matters most.  A noisy half then shows up as a low overlap, which is what the check is for.
"""

from __future__ import annotations

import dataclasses
import math

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
    settings.pop("fold_scheme", None)  # how the fold was drawn; the complement is exact either way
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


def half_thresholds(thresholds):
    """The thresholds a half is selected with: ``min_samples`` halved, rounded up (and the
    rule itself, without the halves filter)."""
    return dataclasses.replace(thresholds, min_samples=math.ceil(thresholds.min_samples / 2), halves_agree=False)


def half_selections(tables: dict[str, ScoreTable], half_tables: dict[str, ScoreTable], thresholds,
                    model_name: str = "", split=None):
    """(sets selected on half A, sets selected on half B) under :func:`half_thresholds`;
    ``split``: :func:`halves` already computed (a study reuses it across variants)."""
    from .selection import select_tables

    half_a, half_b = split if split is not None else halves(tables, half_tables)
    thresholds = half_thresholds(thresholds)
    return select_tables(half_a, thresholds, model_name), select_tables(half_b, thresholds, model_name)


def select_with_halves(tables: dict[str, ScoreTable], half_tables: dict[str, ScoreTable] | None, thresholds,
                       model_name: str = "", split=None):
    """(sets, {label: stability entry}): the selection on the full tables; with ``half_tables``
    every set records its halves' overlap, and ``thresholds.halves_agree`` keeps in each
    culture-specific set only the neurons selected on both halves too.  The culture-general set
    is never filtered.  A filtered set records the overlap of the rule it filters (its own
    halves would need a second split)."""
    from .selection import ThresholdError, select_tables

    base = dataclasses.replace(thresholds, halves_agree=False)
    sets = select_tables(tables, base, model_name)
    if not half_tables:
        if thresholds.halves_agree:
            raise ThresholdError("halves_agree needs the fold tables (culnig-score select --half-scores-dir)")
        return sets, {}
    sets_a, sets_b = half_selections(tables, half_tables, base, model_name, split)
    stability = annotate(sets, sets_a, sets_b)
    if thresholds.halves_agree:
        name = thresholds.selection_name
        for label, neuron_set in list(sets.items()):
            if label == "general":
                neuron_set.meta.update(selection=name, hyperparameters=dataclasses.asdict(thresholds))
                continue
            a, b = sets_a.get(label), sets_b.get(label)
            kept = neuron_set.intersect(a, b) if a is not None and b is not None else neuron_set.subtract(neuron_set)
            kept.meta = {**neuron_set.meta, "selection": name, "hyperparameters": dataclasses.asdict(thresholds),
                         "halves_agree": {"before": len(neuron_set), "kept": len(kept)}}
            sets[label] = kept
    return sets, stability


def jaccard(a: NeuronSet | None, b: NeuronSet | None) -> float | None:
    """|a ∩ b| / |a ∪ b|; None when one is missing or both are empty."""
    if a is None or b is None:
        return None
    union = len(a.union(b))
    return None if union == 0 else len(a.intersect(b)) / union


def stability_entry(halves_jaccard: float | None, seeds_jaccard: float | None = None,
                    halves_neurons: tuple[int | None, int | None] = (None, None)) -> dict:
    if halves_jaccard is not None:
        note = "deterministic selection: no seed overlap"
    elif None in halves_neurons:
        note = "one half selects no set for this label (too few items in it)"
    else:
        note = "both halves select an empty set: no overlap to measure"
    return {
        "halves_jaccard": halves_jaccard,
        "seeds_jaccard": seeds_jaccard,
        "halves_neurons": list(halves_neurons),
        "threshold": UNSTABLE_BELOW,
        "unstable": halves_jaccard is not None and halves_jaccard < UNSTABLE_BELOW,
        "note": note,
    }


def annotate(sets: dict[str, NeuronSet], sets_a: dict[str, NeuronSet], sets_b: dict[str, NeuronSet]) -> dict:
    """Store ``meta["stability"]`` on every set of ``sets``; returns {label: entry}."""
    entries = {}
    for label, neuron_set in sets.items():
        a, b = sets_a.get(label), sets_b.get(label)
        entry = stability_entry(jaccard(a, b), halves_neurons=(None if a is None else len(a), None if b is None else len(b)))
        neuron_set.meta["stability"] = entry
        entries[label] = entry
    return entries
