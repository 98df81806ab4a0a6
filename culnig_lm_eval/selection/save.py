"""A sets folder: select, add the random baselines and write every set with ``selection.json``
as one unit (:func:`select_and_save`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .._io import atomic_folder, safe_name, write_text
from ..scoring.attribution import ScoreTable
from .loco import held_out_cultures, leave_one_out_sets, loco_file
from .random_sets import RANDOM_DRAWS, random_set
from .rules import Thresholds, departures, selection_name
from .stability import describe, select_with_halves

log = logging.getLogger("culnig-selection")

# what a sets folder held before output markers (``_io``): set files, selection.json, and the
# random sets culnig-experiment draws for the culture sets (``random/``)
SETS_LEGACY = ("*.pt", "selection.json", "random/*.pt", "random/done.json")


def select_and_save(tables: dict[str, ScoreTable], thresholds: Thresholds, out: Path, *, model_name: str = "",
                    random_seeds: Sequence[int] = (), half_tables: dict | None = None,
                    what: str = "output folder", leave_out: str | Sequence[str] | None = None) -> dict[str, Path]:
    """Select, then write ``<out>/<label>.pt`` for every set, ``random<seed>.pt`` (layer-matched)
    and ``random-uniform<seed>.pt`` (the reference's uniform draw) for every seed, and
    ``selection.json``, all as one unit (:func:`atomic_folder`).  Returns {label: final path}.

    ``half_tables`` ({"task": fold table, "control": fold table}, or a list of the K fold
    tables per role; see :mod:`.stability`): every selected set also records the Jaccard overlap
    of the sets selected on the two halves, and the stability filters of ``thresholds`` apply.
    ``leave_out`` ("all", or culture names; None: off): also the leave-one-culture-out sets
    (:mod:`.loco`), for each such culture ``loco/<culture>/general.pt`` -- the culture-general
    set selected without that culture -- and its random sets for the same seeds; they are listed
    in ``selection.json``'s ``leave_one_out`` (:func:`loco_paths`), not in the returned mapping.
    ``out`` is replaced only when it holds nothing but an earlier sets folder (``_io``); ``what``
    names it in that error (e.g. ``--sets-out``)."""
    unknown = sorted(set(tables) - {"task", "control", "crc", "general"})
    if unknown or "task" not in tables:
        raise ValueError(f"score tables: expected roles task, control, crc, general; got {sorted(tables)}")
    seeds = []
    for seed in random_seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"random seed {seed!r}: seeds are integers from 0 to 2**63-1")
        seeds.append(seed)
    differs = departures(thresholds, tables)
    for line in differs:  # the paper rule asked for, the tables do not allow it: say so once
        log.warning("%s: not the published rule: %s", out, line)
    sets, stability = select_with_halves(tables, half_tables, thresholds, model_name)
    for seed in dict.fromkeys(seeds):
        for draw, prefix in RANDOM_DRAWS.items():
            sets[f"{prefix}{seed}"] = random_set(draw, sets["general"], seed)
    files = {label: f"{safe_name(label, 'set label')}.pt" for label in sets}
    loco = {}
    if leave_out is not None:
        loco = leave_one_out_sets(tables, thresholds, held_out_cultures(tables["task"], leave_out), seeds, model_name)
    loco_files = {c: {label: loco_file(c, label) for label in labelled} for c, labelled in loco.items()}
    summary = {
        "selection": selection_name(thresholds, tables),
        **({"differs_from_published": differs} if differs else {}),
        "thresholds": asdict(thresholds),
        "random_seeds": list(dict.fromkeys(seeds)),
        "files": files,
        "summary": {label: {"neurons": len(s), "per_kind": s.counts(), "fraction": s.fraction(),
                            "selection": s.meta.get("selection"), "culture": s.meta.get("culture"),
                            **({"stability": stability[label]} if label in stability else {})}
                    for label, s in sets.items()},
        "score_files": {role: {"path": t.meta.get("path"), "sha256": t.meta.get("sha256")}
                        for role, t in sorted(tables.items())
                        if t is not None and (role != "general" or thresholds.general_exclude is not None)},
        **({"half_score_files": describe(half_tables)} if half_tables else {}),
        **({"leave_one_out": {"cultures": list(loco), "files": loco_files,
                              "summary": {c: {label: {"neurons": len(s), "selection": s.meta.get("selection")}
                                              for label, s in labelled.items()} for c, labelled in loco.items()}}}
           if loco else {}),
    }
    out = Path(out)
    with atomic_folder(out, what, SETS_LEGACY) as staging:
        for label, neuron_set in sets.items():
            neuron_set.save(staging / files[label])
        for culture, labelled in loco.items():
            for label, neuron_set in labelled.items():
                neuron_set.save(staging / loco_files[culture][label])
        write_text(staging / "selection.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return {label: out / name for label, name in files.items()}


def loco_paths(folder: Path) -> dict[str, dict[str, Path]]:
    """{held-out culture: {label: set file}} of a sets folder written with ``leave_out`` ({} without)."""
    folder = Path(folder)
    summary = json.loads((folder / "selection.json").read_text(encoding="utf-8"))
    files = (summary.get("leave_one_out") or {}).get("files") or {}
    return {culture: {label: folder / path for label, path in labelled.items()} for culture, labelled in files.items()}
