"""Selection stability: do two disjoint halves of the neuron-finding items pick the same neurons?

Score tables hold per-culture sums, and sums add up, so the halves come from fold tables:

* one extra scoring run over fold 0 of 2 (``culnig-score run --fold 0/2``): half A is that
  table, half B is the full table minus it (:func:`complement`); one pair of halves;
* or ``culnig-score run --fold-tables K``: the tables of all K folds written by the full
  scoring pass itself (no extra run).  A half is the sum of K/2 folds and its complement the
  other half, so one pass gives up to C(K-1, K/2-1) complementary pairs (126 for K = 10):
  :func:`pair_splits` uses all of them up to ``stable_pairs``, else that many drawn with
  ``stable_seed``.

Only the roles scored per fold (task and control, whose folds match because a document's fold
depends on its culture and index only) are split; CRC and general-prose tables are shared by
both halves.

Every selected set then carries ``meta["stability"]``:

* ``halves_jaccard``: |A ∩ B| / |A ∪ B| of the sets selected on the two halves, the mean over the
  pairs (None when no pair gives both halves a non-empty union);
* ``seeds_jaccard``: the same across two seeds of any sampling in the selection: for
  stability selection over drawn pairs, the overlap of the sets kept with ``stable_seed`` and
  with ``stable_seed + 1``; None for deterministic selections (two seeds give the same set);
* ``unstable``: ``halves_jaccard < threshold`` (0.3), flagged in the report.

With ``Thresholds.stable_fraction`` = π a culture-specific set is the neurons the rule selects
on at least a fraction π of the 2 × pairs halves (stability selection); ``Thresholds.halves_agree``
keeps the full selection's neurons that every half selects too.  The culture-general set is never
filtered.  A half is selected with ``min_samples`` halved, rounded up (:func:`half_thresholds`).
Why, and the method behind it: ``docs/method.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import torch

from ..neuron_set import NeuronSet
from ..scoring.attribution import ScoreTable
from .rules import ThresholdError, select_tables, selection_name

UNSTABLE_BELOW = 0.3
SPLIT_ROLES = ("task", "control")


class HalfTableError(ValueError):
    """A fold table that does not belong to the full table it is paired with."""


def _where(table: ScoreTable) -> str:
    return table.meta.get("path") or "<memory>"


def check_fold(full: ScoreTable, part: ScoreTable, role: str) -> str:
    """The fold ("I/K") of ``part``, after checking it was scored like ``full`` on a subset of its items."""
    settings = dict(part.meta.get("settings") or {})
    fold = settings.pop("fold", None)
    settings.pop("fold_scheme", None)  # how the fold was drawn; sums and complements are exact either way
    where = f"{role} fold table {_where(part)}"
    if fold is None:
        raise HalfTableError(f"{where}: not a fold table (score it with culnig-score run --fold 0/2)")
    if settings != (full.meta.get("settings") or {}) or part.meta.get("tasks") != full.meta.get("tasks"):
        raise HalfTableError(f"{where}: made with other tasks or settings than {_where(full)}; "
                             "re-score the fold with the full run's flags plus --fold")
    if set(part.scores) != set(full.scores) or not set(part.cultures) <= set(full.cultures):
        raise HalfTableError(f"{where}: module kinds or cultures differ from {_where(full)}")
    return fold


def complement(full: ScoreTable, part: ScoreTable, role: str) -> ScoreTable:
    """``full - part``: the scores of the items of ``full`` that are not in the fold ``part``."""
    fold = check_fold(full, part, role)
    where = f"{role} fold table {_where(part)}"
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


def describe(half_tables: dict) -> dict:
    """{role: {"path", "sha256"} of its fold table, or a list of them for all K folds} (provenance)."""
    def one(table: ScoreTable) -> dict:
        return {"path": table.meta.get("path"), "sha256": table.meta.get("sha256")}

    return {role: one(given) if isinstance(given, ScoreTable) else [one(t) for t in given]
            for role, given in sorted(half_tables.items())}


def sum_tables(full: ScoreTable, parts: list[ScoreTable], label: str) -> ScoreTable:
    """The fold tables ``parts`` added up, on the cultures of ``full`` (absent cultures count 0)."""
    scores = {kind: torch.zeros_like(total) for kind, total in full.scores.items()}
    counts = torch.zeros_like(torch.as_tensor(full.counts))
    for part in parts:
        index = torch.tensor([full.cultures.index(c) for c in part.cultures], dtype=torch.long)
        counts.index_add_(0, index, torch.as_tensor(part.counts))
        for kind in scores:
            scores[kind].index_add_(-1, index, part.scores[kind].to(scores[kind].dtype))
    meta = {**full.meta, "path": f"{_where(full)}, {label}", "fold": label, "sha256": None}
    return ScoreTable(list(full.cultures), scores, counts, meta)


def fold_parts(tables: dict[str, ScoreTable], half_tables: dict) -> dict[str, list[ScoreTable]]:
    """{role: fold tables that add up to the role's full table}.

    ``half_tables[role]`` is one fold table (its complement becomes the second part) or the list
    of all K fold tables of a ``--fold-tables K`` run (checked to be folds 0..K-1 of the same
    K whose sample counts add up to the full table's)."""
    unknown = sorted(set(half_tables) - set(SPLIT_ROLES))
    if unknown or "task" not in half_tables:
        raise HalfTableError(f"fold tables: need task (and control) fold tables, got {sorted(half_tables)}")
    missing = [r for r in SPLIT_ROLES if r in tables and r not in half_tables]
    if missing:
        raise HalfTableError(f"fold tables: no {', '.join(missing)} fold table, but the full run has one; "
                             "score every split role with --fold")
    parts, sizes = {}, set()
    for role, given in half_tables.items():
        full = tables[role]
        if isinstance(given, ScoreTable):
            parts[role] = [given, complement(full, given, role)]
            sizes.add(2)
            continue
        folds = [check_fold(full, part, role) for part in given]
        total = len(given)
        if sorted(folds) != [f"{i}/{total}" for i in range(total)] or total < 2:
            raise HalfTableError(f"{role} fold tables: expected folds 0/{total} .. {total - 1}/{total}, got "
                                 f"{', '.join(folds) or 'none'}")
        counts = torch.zeros_like(torch.as_tensor(full.counts))  # counts only: summing the scores here is wasted work
        for part in given:
            counts.index_add_(0, torch.tensor([full.cultures.index(c) for c in part.cultures], dtype=torch.long),
                              torch.as_tensor(part.counts))
        if not torch.equal(counts, torch.as_tensor(full.counts)):
            raise HalfTableError(f"{role} fold tables: their samples do not add up to {_where(full)}; "
                                 "use the folds of the same scoring run")
        parts[role] = sorted(given, key=lambda t: int(t.meta["settings"]["fold"].split("/")[0]))
        sizes.add(total)
    if len(sizes) > 1:
        raise HalfTableError(f"fold tables: the task and control tables have different fold counts {sorted(sizes)}")
    return parts


def pair_splits(folds: int, pairs: int, seed: int) -> tuple[list[tuple[int, ...]], bool]:
    """(the folds of half A of every pair, sampled): every split of ``folds`` folds into two
    halves of folds//2 and the rest (each unordered pair once), or ``pairs`` of them drawn
    with ``seed`` when there are more.  ``sampled`` says whether a seed chose them."""
    size = folds // 2
    every = [c for c in itertools.combinations(range(folds), size) if folds % 2 or 0 in c]
    if len(every) <= pairs:
        return every, False
    return sorted(random.Random(seed).sample(every, pairs)), True


def halves(tables: dict[str, ScoreTable], half_tables: dict, half_a: tuple[int, ...] = (0,), parts=None):
    """(tables of half A, tables of half B): the folds ``half_a`` added up and the other folds
    added up; the other roles are shared.  With one fold table: the fold and its complement."""
    parts = parts if parts is not None else fold_parts(tables, half_tables)
    a_tables, b_tables = dict(tables), dict(tables)
    for role, role_parts in parts.items():
        if len(role_parts) == 2 and half_a == (0,):  # one pair: the tables themselves, no re-summing
            a_tables[role], b_tables[role] = role_parts
            continue
        rest = [i for i in range(len(role_parts)) if i not in half_a]
        a_tables[role] = sum_tables(tables[role], [role_parts[i] for i in half_a], f"folds {list(half_a)}")
        b_tables[role] = sum_tables(tables[role], [role_parts[i] for i in rest], f"folds {rest}")
    return a_tables, b_tables


def half_thresholds(thresholds):
    """The thresholds a half is selected with: ``min_samples`` halved, rounded up (and the
    rule itself, without the halves filters)."""
    return dataclasses.replace(thresholds, min_samples=math.ceil(thresholds.min_samples / 2), halves_agree=False,
                               stable_fraction=None)


def half_selections(tables: dict[str, ScoreTable], half_tables: dict, thresholds,
                    model_name: str = "", split=None):
    """(sets selected on half A, sets selected on half B) of the first pair under
    :func:`half_thresholds`; ``split``: :func:`halves` already computed."""
    half_a, half_b = split if split is not None else halves(tables, half_tables)
    thresholds = half_thresholds(thresholds)
    return select_tables(half_a, thresholds, model_name), select_tables(half_b, thresholds, model_name)


class HalfSelections:
    """The selections on the halves of every pair, computed once per split and rule (a study's
    variants and the second seed of a stability selection reuse them)."""

    def __init__(self, tables: dict[str, ScoreTable], half_tables: dict, model_name: str = ""):
        self.tables, self.model_name = tables, model_name
        self.parts = fold_parts(tables, half_tables)
        self.folds = len(next(iter(self.parts.values())))
        self._selected: dict[tuple, tuple] = {}  # the selected sets only: summed halves of a large model are
        # hundreds of MB each, and re-adding K folds costs far less than selecting from them

    def pair(self, half_a: tuple[int, ...], thresholds) -> tuple[dict, dict]:
        rule = half_thresholds(thresholds)
        key = (half_a, repr(rule))
        if key not in self._selected:
            self._selected[key] = tuple(
                select_tables(half, rule, self.model_name) if _has_items(half) else {}  # a half of empty folds
                for half in halves(self.tables, None, half_a, self.parts))
        return self._selected[key]

    def splits(self, thresholds, seed: int | None = None) -> tuple[list[tuple[int, ...]], bool]:
        return pair_splits(self.folds, thresholds.stable_pairs, thresholds.stable_seed if seed is None else seed)


def _has_items(tables: dict[str, ScoreTable]) -> bool:
    """Whether every split role of a half holds a sample (with fewer items than folds, some folds
    are empty, and so can a half be: it then selects nothing)."""
    return all(int(torch.as_tensor(tables[role].counts).sum()) > 0 for role in SPLIT_ROLES if role in tables)


def _frequent(selections: list[dict], label: str, fraction: float, like: NeuronSet) -> NeuronSet:
    """The neurons in at least ``fraction`` of ``selections``' sets for ``label`` (a missing set
    counts as empty)."""
    model = like.meta["model"]
    widths = {kind: model["widths"][kind] for kind in like.indices}  # the rule's module kinds
    counts = {kind: torch.zeros(model["num_layers"], width, dtype=torch.int32) for kind, width in widths.items()}
    for selected in selections:
        found = selected.get(label)
        if found is not None:
            masks = found.masks(widths)
            for kind in counts:
                counts[kind] += masks[kind]
    needed = math.ceil(fraction * len(selections) - 1e-9)
    return NeuronSet.from_masks({kind: c >= needed for kind, c in counts.items()}, dict(like.meta))


def select_with_halves(tables: dict[str, ScoreTable], half_tables: dict | None, thresholds,
                       model_name: str = "", split=None):
    """(sets, {label: stability entry}): the selection on the full tables; with ``half_tables``
    every set records its halves' overlap, ``thresholds.halves_agree`` keeps in each
    culture-specific set only the neurons every half selects too, and
    ``thresholds.stable_fraction`` makes each culture-specific set the neurons selected on at
    least that fraction of the halves.  The culture-general set is never filtered.  A filtered
    set records the halves overlap of the rule it filters (its own would need a second split).
    ``split``: a :class:`HalfSelections` shared across calls."""
    base = dataclasses.replace(thresholds, halves_agree=False, stable_fraction=None)
    sets = select_tables(tables, base, model_name)
    filtered = thresholds.halves_agree or thresholds.stable_fraction is not None
    if not half_tables and split is None:
        if filtered:
            raise ThresholdError("halves_agree and stable_fraction need the fold tables "
                                 "(culnig-score select --half-scores-dir)")
        return sets, {}
    split = split if split is not None else HalfSelections(tables, half_tables, model_name)
    chosen, sampled = split.splits(thresholds)
    from tqdm import tqdm

    # many pairs on a large model take minutes: show them (a single pair is instant)
    pairs = [split.pair(half_a, base) for half_a in tqdm(chosen, desc="pairs of halves", unit="pair",
                                                          disable=len(chosen) < 5, leave=False)]
    stability = annotate(sets, pairs, folds=split.folds)
    if not filtered:
        return sets, stability
    name = selection_name(thresholds, tables)
    halves_seen = [half for pair in pairs for half in pair]
    second_seed = None
    if thresholds.stable_fraction is not None and sampled:  # the seeds check: another draw of pairs
        other, _ = split.splits(thresholds, seed=thresholds.stable_seed + 1)
        second_seed = [half for half_a in other for half in split.pair(half_a, base)]
    for label, neuron_set in list(sets.items()):
        if label == "general":
            neuron_set.meta.update(selection=name, hyperparameters=dataclasses.asdict(thresholds))
            continue
        if thresholds.halves_agree:
            kept = _frequent([{label: neuron_set}] + halves_seen, label, 1.0, neuron_set)
            record = {"halves_agree": {"before": len(neuron_set), "kept": len(kept), "halves": len(halves_seen)}}
        else:
            kept = _frequent(halves_seen, label, thresholds.stable_fraction, neuron_set)
            record = {"stability_selection": {"fraction": thresholds.stable_fraction, "halves": len(halves_seen),
                                              "rule_selects": len(neuron_set), "kept": len(kept),
                                              "kept_outside_rule": len(kept.subtract(neuron_set))}}
            if second_seed is not None:
                again = _frequent(second_seed, label, thresholds.stable_fraction, neuron_set)
                entry = dict(stability[label])
                entry["seeds_jaccard"] = jaccard(kept, again)
                entry["note"] = "seeds: the pairs drawn with stable_seed and stable_seed + 1"
                stability[label] = entry
        kept.meta = {**neuron_set.meta, "selection": name, "hyperparameters": dataclasses.asdict(thresholds),
                     **record, "stability": stability[label]}
        sets[label] = kept
    return sets, stability


def jaccard(a: NeuronSet | None, b: NeuronSet | None) -> float | None:
    """|a ∩ b| / |a ∪ b|; None when one is missing or both are empty."""
    if a is None or b is None:
        return None
    union = len(a.union(b))
    return None if union == 0 else len(a.intersect(b)) / union


def stability_entry(halves_jaccard: float | None, seeds_jaccard: float | None = None,
                    halves_neurons: tuple[float | None, float | None] = (None, None), pairs: int = 1,
                    folds: int = 2) -> dict:
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
        "pairs": pairs,
        "folds": folds,
        "threshold": UNSTABLE_BELOW,
        "unstable": halves_jaccard is not None and halves_jaccard < UNSTABLE_BELOW,
        "note": note,
    }


def annotate(sets: dict[str, NeuronSet], pairs: list[tuple[dict, dict]], folds: int = 2) -> dict:
    """Store ``meta["stability"]`` on every set of ``sets`` from the half selections of every
    pair: the mean Jaccard over the pairs where it is defined, and the halves' mean sizes (None
    when a half of some pair selects no set for the label); returns {label: entry}."""
    entries = {}
    for label, neuron_set in sets.items():
        overlaps = [j for a, b in pairs if (j := jaccard(a.get(label), b.get(label))) is not None]
        sizes = []
        for side in (0, 1):
            found = [pair[side].get(label) for pair in pairs]
            sizes.append(None if any(f is None for f in found) else sum(len(f) for f in found) / len(found))
        if len(pairs) == 1:
            sizes = [None if s is None else int(s) for s in sizes]
        entry = stability_entry(sum(overlaps) / len(overlaps) if overlaps else None, halves_neurons=tuple(sizes),
                                pairs=len(pairs), folds=folds)
        neuron_set.meta["stability"] = entry
        entries[label] = entry
    return entries
