"""Wall time of ``select_and_save`` on random score tables the size of a 12B model (target well under 10 s):

    python benchmarks/selection_speed.py                 # 48 layers x 15360 MLP, q/k/v 3840/1024/1024, 8 cultures
    python benchmarks/selection_speed.py --seeds 10 --rule crc-first
    python benchmarks/selection_speed.py --study        # every culnig-score study variant, with the stability halves
    python benchmarks/selection_speed.py --study --folds 10 --variants contrast-excl,contrast-excl-stable

Task, control and CRC tables (gate + q/k/v) are drawn once; then the selection with the default
thresholds and ``--seeds`` random seeds (each writes a layer-matched and a uniform random set)
is written to a temporary folder ``--reps`` times.  Prints each repetition and the median.
``--study`` instead times :func:`culnig_lm_eval.selection.study.select_variants` per variant: the full
selection plus the two stability halves (a fold table and its complement), i.e. three selections
and two table subtractions per variant, against the issue's target of 10 s per variant.
With ``--folds K`` the halves come from K fold tables (``culnig-score run --fold-tables K``):
every pair of halves up to ``stable_pairs`` (25) is selected, and the ``-stable`` variants also
draw a second seed's pairs, so their cost grows with the pairs, not with the table size alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from culnig_lm_eval.scoring.attribution import ScoreTable
from culnig_lm_eval.selection.rules import Thresholds
from culnig_lm_eval.selection.save import select_and_save

LAYERS = 48
WIDTHS = {"mlp_gate": 15360, "attn_q": 3840, "attn_k": 1024, "attn_v": 1024}
CULTURES = ["China", "Indonesia", "Iran", "Mexico", "South_Korea", "Spain", "UK", "USA"]


def random_tables(seed: int) -> dict[str, ScoreTable]:
    gen = torch.Generator().manual_seed(seed)
    shape = {"model_type": "gemma3_text", "num_layers": LAYERS, "widths": WIDTHS, "name": "random-12b-shape"}

    def table(role: str) -> ScoreTable:
        scores = {k: torch.randn(LAYERS, w, len(CULTURES), generator=gen) for k, w in WIDTHS.items()}
        counts = torch.randint(50, 200, (len(CULTURES),), generator=gen)
        return ScoreTable(CULTURES, scores, counts, {"model": shape, "task": role, "path": role, "sha256": role})

    return {role: table(role) for role in ("task", "control", "crc", "general")}


def fold_tables(tables: dict[str, ScoreTable]) -> dict[str, ScoreTable]:
    """Fold 0 of 2 of the task and control tables: half the counts, a random part of the sums."""
    gen = torch.Generator().manual_seed(1)
    out = {}
    for role in ("task", "control"):
        full = tables[role]
        part = {k: v * torch.rand(v.shape, generator=gen) for k, v in full.scores.items()}
        meta = {**full.meta, "settings": {"fold": "0/2"}, "path": f"{role}-fold0"}
        full.meta["settings"] = {}
        out[role] = ScoreTable(list(full.cultures), part, full.counts // 2, meta)
    return out


def k_fold_tables(tables: dict[str, ScoreTable], folds: int) -> dict[str, list[ScoreTable]]:
    """K fold tables of the task and control roles whose counts add up to the full tables'."""
    gen = torch.Generator().manual_seed(2)
    out = {}
    for role in ("task", "control"):
        full = tables[role]
        full.meta["settings"] = {}
        counts = [full.counts // folds + (i < full.counts % folds).long() for i in range(folds)]
        out[role] = [ScoreTable(list(full.cultures), {k: torch.randn(v.shape, generator=gen) for k, v in full.scores.items()},
                                counts[i], {**full.meta, "settings": {"fold": f"{i}/{folds}"}, "path": f"{role}-fold{i}"})
                     for i in range(folds)]
    return out


def study_speed(tables, reps: int, folds: int | None, names: list[str] | None):
    from culnig_lm_eval.selection.study import DEFAULT_VARIANTS, VARIANTS, StudySettings, select_variants

    half = k_fold_tables(tables, folds) if folds else fold_tables(tables)
    for name in names or DEFAULT_VARIANTS:
        settings = StudySettings(variants={name: VARIANTS[name]}, select_only=True)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            _, info = select_variants(settings, tables, half)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        pairs = next(iter(info[name]["stability"].values()))["pairs"]
        print(f"{name:>20}: median {median:.2f} s per variant (full selection + {pairs} pair(s) of halves"
              f"{', + a second seed' if VARIANTS[name].get('stable_fraction') and folds else ''}), "
              f"{median / 10:.2f}x the 10 s target")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="random seeds (2 random sets each)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rule", default="paper", choices=["paper", "crc-first"])
    parser.add_argument("--study", action="store_true", help="time every culnig-score study variant instead")
    parser.add_argument("--folds", type=int, default=None, help="--study: halves from K fold tables (default: one fold of 2)")
    parser.add_argument("--variants", default=None, help="--study: comma-separated variants (default: the rule-only ones)")
    args = parser.parse_args()
    tables = random_tables(0)
    neurons = sum(LAYERS * w for w in WIDTHS.values())
    print(f"tables: {LAYERS} layers, widths {WIDTHS}, {len(CULTURES)} cultures ({neurons} neurons per role); "
          f"torch threads {torch.get_num_threads()}")
    if args.study:
        return study_speed(tables, args.reps, args.folds, args.variants.split(",") if args.variants else None)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            start = time.perf_counter()
            written = select_and_save({r: t for r, t in tables.items() if r != "general"}, Thresholds(rule=args.rule), Path(tmp) / "sets",
                                      random_seeds=range(args.seeds))
            times.append(time.perf_counter() - start)
            print(f"rep {rep}: {times[-1]:.2f} s, {len(written)} set files")
    print(f"select_and_save ({args.rule}, {args.seeds} seeds): median {statistics.median(times):.2f} s "
          f"(target well under 10 s)")


if __name__ == "__main__":
    main()
