"""Leave-one-culture-out selection: is a culture-general set general beyond the cultures it was found on?

For a held-out culture ``c``, every score table with a column of ``c`` -- the task table, its
control (the same questions without the question: ``c``'s control items are ``c``'s items too)
and the CountryRC table (passages naming ``c``) -- is restricted to the other cultures
(:func:`~culnig_lm_eval.scoring.tables.restrict_cultures`), and the unchanged rule
(:func:`.rules.select`, any thresholds) selects on what remains.  The tables hold per-culture
sums, so this is re-selection, not re-scoring: the set is the one a scoring run without ``c``'s
documents would give, and ``c``'s items never enter it.  The general-prose table (the opt-in
general exclusion) is culture-neutral prose with no column of ``c``; it is used as it is.

Only the culture-general set of each held-out selection is kept (``general``; the culture
sets of the other cultures are not what the transfer test measures), with size-matched random
sets drawn like the selection's own (``random<seed>``, ``random-uniform<seed>``).  Every set
records the culture held out (``meta["held_out"]``) and the score files, with their hashes,
that it was selected from (``meta["provenance"]["held_out"]``).  A sets folder keeps them in
``loco/<culture>/<label>.pt`` (:func:`loco_file`).  How they are evaluated -- on ``c``'s
test-topic items only, against their random sets -- is in ``docs/method.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .._io import safe_name
from ..neuron_set import NeuronSet
from ..scoring.attribution import ScoreTable
from ..scoring.tables import restrict_cultures
from .random_sets import RANDOM_DRAWS, random_set
from .rules import Thresholds, select_tables

LOCO_FOLDER = "loco"  # <sets folder>/loco/<culture>/: the sets selected without that culture
HELD_OUT_ROLES = ("task", "control", "crc")  # the tables whose column of the held-out culture is dropped
ALL = "all"


class LeaveOutError(ValueError):
    """A culture that cannot be held out (one line for the CLI)."""


def held_out_cultures(task: ScoreTable, wanted: str | Sequence[str] = ALL) -> list[str]:
    """The cultures to hold out one at a time: every culture with task samples (``"all"``) or
    those named in ``wanted``, in the table's order.  At least two cultures must have samples,
    so that one is left to select on."""
    counts = dict(zip(task.cultures, torch.as_tensor(task.counts).tolist()))
    present = [c for c in task.cultures if counts[c] > 0]
    if len(present) < 2:
        raise LeaveOutError(f"leave-one-culture-out needs task samples of at least two cultures; the task table "
                            f"has {len(present)} ({', '.join(present) or 'none'})")
    if isinstance(wanted, str) and wanted == ALL:
        return present
    names = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [c for c in names if c not in present]
    if unknown or not names:
        raise LeaveOutError(f"cannot hold out {', '.join(unknown) or '(no culture)'}: the task table's cultures "
                            f"with samples are {', '.join(present)}")
    return [c for c in present if c in names]


def tables_without(tables: dict[str, ScoreTable | None], culture: str) -> dict[str, ScoreTable | None]:
    """``tables`` with ``culture``'s column dropped from the task, control and CountryRC tables."""
    return {role: restrict_cultures(t, [c for c in t.cultures if c != culture])
            if t is not None and role in HELD_OUT_ROLES else t
            for role, t in tables.items()}


def general_thresholds(thresholds: Thresholds) -> Thresholds:
    """The thresholds without the stability filters, which act on culture-specific sets only
    (the culture-general set is never filtered) and need fold tables."""
    return replace(thresholds, halves_agree=False, stable_fraction=None)


def select_without(tables: dict[str, ScoreTable | None], thresholds: Thresholds, culture: str,
                   model_name: str = "") -> NeuronSet:
    """The culture-general set selected by ``thresholds`` on ``tables`` without ``culture``."""
    restricted = tables_without(tables, culture)
    general = select_tables(restricted, general_thresholds(thresholds), model_name)["general"]
    general.meta["held_out"] = culture
    general.meta["provenance"]["held_out"] = {
        "culture": culture,
        "dropped_from": [role for role, t in tables.items() if t is not None and culture in t.cultures
                         and role in HELD_OUT_ROLES],
        "score_files": {role: {"path": t.meta.get("path"), "sha256": t.meta.get("sha256")}
                        for role, t in sorted(tables.items()) if t is not None and role in general.meta["provenance"]},
    }
    return general


def leave_one_out_sets(tables: dict[str, ScoreTable | None], thresholds: Thresholds, cultures: Sequence[str],
                       random_seeds: Sequence[int] = (), model_name: str = "") -> dict[str, dict[str, NeuronSet]]:
    """{culture: {"general": the set selected without it, "random<seed>": .., "random-uniform<seed>": ..}}."""
    out = {}
    for culture in cultures:
        general = select_without(tables, thresholds, culture, model_name)
        sets = {"general": general}
        for seed in dict.fromkeys(random_seeds):
            for draw, prefix in RANDOM_DRAWS.items():
                drawn = random_set(draw, general, seed)
                # the set it is matched to was held out: reports pair them by this too
                drawn.meta["provenance"]["size_matched_to"]["held_out"] = culture
                sets[f"{prefix}{seed}"] = drawn
        out[culture] = sets
    return out


def loco_file(culture: str, label: str) -> str:
    """``loco/<culture>/<label>.pt``, relative to the sets folder."""
    return f"{LOCO_FOLDER}/{safe_name(culture, 'culture name')}/{safe_name(label, 'set label')}.pt"
