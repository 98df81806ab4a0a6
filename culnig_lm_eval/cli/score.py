"""``culnig-score``: CULNIG neuron scores from harness tasks, and neuron sets from the scores.

    culnig-score run --model_args pretrained=smollm2-135m \\
        --tasks blend_cloze_neur --control blend_cloze_ctrl --crc crc --out runs/scores
    culnig-score select --scores-dir runs/scores --out my_sets --top-mlp 0.5

Parse -> settings -> call: the work is done by ``scoring.run.score_roles`` and
``selection.save.select_and_save``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ._common import HelpFormatter, epilog, old_spellings, run

PROG = "culnig-score"
ROLE_FLAGS = {"task": "tasks", "control": "control", "crc": "crc", "general": "general"}
LEAVE_OUT_HELP = ("leave one culture out: for each of these cultures (comma-separated; the flag alone: every "
                  "culture with task samples) the culture-general set is selected again without it -- its "
                  "task, control and CountryRC columns dropped (docs/method.md)")


def _comma(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Score neurons with the CULNIG attribution (activation x gradient of P(gold), max over "
        "tokens, weighted by P) on harness tasks, then select culture-general and culture-specific sets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="score tasks (and select sets unless --no-select)", formatter_class=HelpFormatter,
                           description="Score neurons on harness tasks (one score file per role), then select "
                           "neuron sets from the scores unless --no-select.",
                           epilog=epilog("culnig-score run --model_args pretrained=smollm2-135m --tasks blend_cloze_neur "
                                         "--control blend_cloze_ctrl --crc crc --out runs/scores --sets-out my_sets"))
    g = run_p.add_argument_group("model")
    g.add_argument("--model", default="masked-hf", choices=["masked-hf", "hf"],
                   help="harness model class used to load the model")
    g.add_argument("--model_args", default="pretrained=smollm2-135m",
                   help="as lm_eval's --model_args; embedded aliases smollm2-135m and gemma-3-270m work")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available, else cpu)")
    g.add_argument("--batch_size", type=int, default=8, help="documents per forward and backward pass")
    g = run_p.add_argument_group("tasks", "harness tasks, comma-separated; TASK:N limits one task to N documents")
    g.add_argument("--tasks", type=_comma, required=True, help="tasks to find neurons on, e.g. blend_cloze_neur")
    g.add_argument("--control", type=_comma, default=[], help="control tasks (question removed), e.g. blend_cloze_ctrl")
    g.add_argument("--crc", type=_comma, default=[], help="country reading-comprehension tasks to exclude, e.g. crc")
    g.add_argument("--general", type=_comma, default=[],
                   help="general-prose tasks (loglikelihood_rolling) for the opt-in general exclusion, e.g. general_ppl_selection")
    g.add_argument("--limit", type=int, default=None, help="documents per task (for quick runs)")
    g.add_argument("--num_fewshot", type=int, default=None, help="as lm_eval's: few-shot examples per prompt")
    old_spellings(g, g.add_argument("--fewshot-seed", type=int, default=1234, help="seed of the few-shot sampler"),
                  "--fewshot_seed")
    g.add_argument("--apply_chat_template", action="store_true", help="as lm_eval's: prompts in the chat template")
    g.add_argument("--fewshot_as_multiturn", action="store_true",
                   help="as lm_eval's: few-shot examples as chat turns (with --apply_chat_template)")
    g.add_argument("--culture-field", default="culture", help="document field naming the culture")
    g = run_p.add_argument_group("scoring")
    run_p.add_argument("--attention", dest="attention", action="store_true", default=True,
                       help=argparse.SUPPRESS)  # the default: kept for old command lines
    g.add_argument("--no-attention", dest="attention", action="store_false",
                   help="score the MLP gate only (attention q/k/v outputs are scored beside it by default, as the "
                        "published ranking pools them); the paper rule's sets are then named culnig-paper-gate-only")
    g.add_argument("--up-proj", action="store_true", help="also score MLP up_proj outputs")
    g.add_argument("--clamp-crc", action="store_true",
                   help="clamp CountryRC samples at 0 like the control's (ours; the published scorer leaves "
                        "them unclamped); selections from that table are named +crc-clamped")
    g.add_argument("--window", type=int, default=96, help="general prose: tokens of preceding text per sample")
    g.add_argument("--stride", type=int, default=16, help="general prose: score every STRIDE-th token")
    g.add_argument("--fold", default=None, metavar="I/K",
                   help="score only the documents of fold I of K (e.g. 0/2: one half of the items, for the "
                        "stability check of `culnig-score study --half-scores-dir`)")
    g.add_argument("--fold-tables", type=int, default=None, metavar="K",
                   help="score every document and, from the same pass, also write the task and control "
                        "tables of K folds to OUT/foldsK/<i>/ (for --half-scores-dir OUT/foldsK: stability "
                        "over many splits and --stable-fraction; no extra scoring run)")
    g = run_p.add_argument_group("output")
    g.add_argument("--out", type=Path, required=True,
                   help="folder for the score files (<role>.scores.pt; written into: other files are kept)")
    g.add_argument("--force", action="store_true", help="recompute score files that already exist")
    g.add_argument("--no-select", action="store_true", help="only write score files")
    _sets_out_arg(g, "--sets-out", "--out-sets")
    _selection_args(run_p)

    sel = sub.add_parser("select", help="write neuron sets from existing score files", formatter_class=HelpFormatter,
                         description="Select culture-general and culture-specific neuron sets (and size-matched "
                         "random sets) from the score files of `culnig-score run`.",
                         epilog=epilog("culnig-score select --scores-dir runs/scores --out my_sets --top-mlp 0.5"))
    g = sel.add_argument_group("score files")
    g.add_argument("--scores-dir", type=Path, help="folder written by `culnig-score run`")
    for role in ROLE_FLAGS:
        g.add_argument(f"--{role}-scores", type=Path, default=None, help=f"{role} score file (overrides --scores-dir)")
    g.add_argument("--half-scores-dir", type=Path, default=None,
                   help="task/control score files of one fold (`culnig-score run --fold 0/2`): every set "
                        "records its stability (Jaccard of the sets selected on the two halves)")
    _sets_out_arg(sel.add_argument_group("output"), "--out", "--sets-out", "--out-sets")
    _selection_args(sel)
    sel.add_argument("--leave-out", nargs="?", const="all", default=None, metavar="CULTURES",
                     help=LEAVE_OUT_HELP + "; written to <sets folder>/loco/<culture>/general.pt with "
                          "its random sets for the same seeds")

    from ..selection.study import VARIANTS, StudySettings

    d = StudySettings()
    st = sub.add_parser("study", help="compare culture-specific selections on one score folder (table + Pareto figure)",
                        formatter_class=HelpFormatter,
                        description="Select with several variants from one score folder and compare them: set "
                        "sizes, stability, the accuracy drop of each set's own culture against the others' and "
                        "against random sets, and the general-prose cost (a table and a Pareto figure).",
                        epilog=epilog("culnig-score study --scores-dir runs/scores --out runs/study "
                                      "--variants paper,contrast"))
    g = st.add_argument_group("score files")
    g.add_argument("--scores-dir", type=Path, required=True, help="folder written by `culnig-score run`")
    g.add_argument("--half-scores-dir", type=Path, default=None,
                   help="task/control fold tables: the folder of `culnig-score run --fold 0/2`, or the foldsK "
                        "folder of `culnig-score run --fold-tables K` (many pairs of halves); adds the stability "
                        "of every set (Jaccard of the sets selected on two halves)")
    g = st.add_argument_group("output")
    g.add_argument("--out", type=Path, required=True, help="study folder (replaced)")
    g = st.add_argument_group("variants and evaluation")
    g.add_argument("--variants", type=_comma, default=None,
                   help=f"variants to compare, from: {', '.join(VARIANTS)} (default: all; the -agree and "
                        "-stable ones, which select from the halves, only with --half-scores-dir)")
    g.add_argument("--model_args", default=d.model_args, help="the model evaluated, as lm_eval's --model_args")
    g.add_argument("--batch_size", type=int, default=d.batch_size, help="documents per forward pass")
    g.add_argument("--eval-task", default=d.eval_task, help="per-culture evaluation task (multiple choice)")
    g.add_argument("--per-culture", type=int, default=d.per_culture, help="evaluation documents per culture")
    g.add_argument("--general-task", default=d.general_task, help="general-prose perplexity task ('' to skip)")
    g.add_argument("--general-limit", type=int, default=d.general_limit, help="general-prose documents")
    g.add_argument("--random-draws", type=int, default=d.random_draws, help="random sets in the null distribution")
    g.add_argument("--select-only", action="store_true", help="selection, sizes and stability only (no model)")
    g.add_argument("--leave-out", nargs="?", const="all", default=None, metavar="CULTURES",
                  help=LEAVE_OUT_HELP + ", and evaluated on its culture's items beside the "
                       "variant's full set (the transfer rows of study.md)")
    from ..selection.rules import Thresholds

    t = Thresholds()
    g = st.add_argument_group("thresholds", "shared by every variant (docs/method.md)")
    g.add_argument("--top-mlp", type=float, default=t.top_mlp, help="t: %% of MLP neurons (culture-general)")
    g.add_argument("--top-attention", type=float, default=t.top_attention, help="t: %% of attention neurons")
    g.add_argument("--top-specific", type=float, default=t.top_specific, help="t_s: %% per culture-specific set")
    g.add_argument("--crc-exclude", type=float, default=t.crc_exclude, help="r: %% top CRC neurons excluded")
    g.add_argument("--z-min", type=float, default=t.z_min, help="z-score threshold of the paper's rule")
    g.add_argument("--min-samples", type=int, default=t.min_samples,
                   help="cultures with fewer task samples get no culture-specific set")
    g.add_argument("--stable-pairs", type=int, default=t.stable_pairs,
                   help="at most this many complementary pairs of halves (stability and the -stable variants)")
    return parser


def _sets_out_arg(group, flag: str, *old: str):
    """The neuron-sets folder: --sets-out beside run's score files, --out of select."""
    action = group.add_argument(flag, dest="sets_out", type=Path, default=None, metavar="DIR",
                                help="folder for the neuron sets (replaced; default: neuron_sets/<model name>)")
    old_spellings(group, action, *old)


def _selection_args(parser):
    from ..selection.rules import RULES, SPECIFIC_RULES, Thresholds

    d = Thresholds()
    p = parser.add_argument_group("selection", "the rule and its thresholds (docs/method.md)")
    p.add_argument("--top-mlp", type=float, default=d.top_mlp, help="t: %% of MLP neurons in the culture-general set")
    p.add_argument("--top-attention", type=float, default=d.top_attention, help="t: %% of attention neurons")
    p.add_argument("--top-specific", type=float, default=d.top_specific, help="t_s: %% per culture-specific set")
    p.add_argument("--crc-exclude", type=float, default=d.crc_exclude, help="r: %% top CRC neurons excluded")
    p.add_argument("--exclude-general", type=float, nargs="?", const=5.0, default=None, metavar="R_G",
                   help="opt-in extension: exclude the top R_G%% (default 5) neurons by general-prose score")
    p.add_argument("--z-min", type=float, default=d.z_min, help="culture-specific z-score threshold")
    p.add_argument("--normalise-z", action="store_true",
                   help="opt-in: scale each culture's scores to mean |score| 1 before the z-score filter")
    p.add_argument("--min-samples", type=int, default=d.min_samples,
                   help="cultures with fewer task samples get no culture-specific set")
    p.add_argument("--rule", choices=sorted(RULES), default=d.rule,
                   help="paper: the published CULNIG code (top t%% then minus CRC, pooled attention; on tables "
                        "without attention scores it is named culnig-paper-gate-only); paper-gate-only: the same "
                        "rule on the MLP neurons only; crc-first: CRC excluded before the cut, per module kind "
                        "(see docs/method.md and docs/differences.md)")
    p.add_argument("--specific-rule", choices=list(SPECIFIC_RULES), default=d.specific_rule,
                   help="culture-specific sets: z (the paper: top t_s%% then z-score filter), contrast or "
                        "rank-contrast (ours: top t_s%% by the culture's score minus the other cultures'; "
                        "see `culnig-score study`)")
    p.add_argument("--exclude-general-set", action="store_true",
                   help="contrast rules: keep the culture-general neurons out of every culture-specific set")
    old_spellings(p, p.add_argument("--seeds", type=_comma, default=[], metavar="S1,S2",
                                    help="also write size-matched random baselines of the culture-general set for "
                                         "these seeds"), "--random-seeds")
    p = parser.add_argument_group("stability selection", "from the fold score files of --half-scores-dir")
    p.add_argument("--halves-agree", action="store_true",
                   help="keep in each culture-specific set only the neurons that the same rule also selects on "
                        "both halves of the items (stability selection; needs --half-scores-dir)")
    p.add_argument("--stable-fraction", type=float, default=None, metavar="PI",
                   help="stability selection: each culture-specific set is the neurons the rule selects on at "
                        "least this fraction (e.g. 0.8) of the halves of the fold tables' complementary pairs "
                        "(needs --half-scores-dir; many pairs with the folder of `culnig-score run --fold-tables K`)")
    p.add_argument("--stable-pairs", type=int, default=d.stable_pairs,
                   help="stability selection: at most this many complementary pairs of halves")
    p.add_argument("--stable-seed", type=int, default=d.stable_seed,
                   help="stability selection: seed of the pairs drawn when the folds allow more than --stable-pairs")


def thresholds_from_args(args):
    from ..selection.rules import Thresholds

    return Thresholds(top_mlp=args.top_mlp, top_attention=args.top_attention, top_specific=args.top_specific,
                      crc_exclude=args.crc_exclude, general_exclude=args.exclude_general, z_min=args.z_min,
                      min_samples=args.min_samples, normalise_z=args.normalise_z, rule=args.rule,
                      specific_rule=args.specific_rule, exclude_general_set=args.exclude_general_set,
                      halves_agree=getattr(args, "halves_agree", False),
                      stable_fraction=getattr(args, "stable_fraction", None),
                      stable_pairs=getattr(args, "stable_pairs", Thresholds.stable_pairs),
                      stable_seed=getattr(args, "stable_seed", Thresholds.stable_seed))


def _seeds(values: list[str]) -> list[int]:
    seeds = []
    for v in values:
        if not v.isdigit() or int(v) > 2**63 - 1:
            raise ValueError(f"--seeds {v!r}: seeds are integers from 0 to 2**63-1")
        seeds.append(int(v))
    return seeds


def _leave_out(args) -> str | list[str] | None:
    """--leave-out: None (not given), "all" (alone) or the culture names."""
    value = getattr(args, "leave_out", None)
    return value if value in (None, "all") else _comma(value)


def settings_from_args(args):
    from ..scoring.run import ScoringSettings

    kinds = ("mlp_gate",) + (("mlp_up",) if args.up_proj else ()) + (("attn_q", "attn_k", "attn_v") if args.attention else ())
    return ScoringSettings(
        model_args=args.model_args, kinds=kinds, batch_size=args.batch_size, limit=args.limit,
        num_fewshot=args.num_fewshot, fewshot_seed=args.fewshot_seed, apply_chat_template=args.apply_chat_template,
        fewshot_as_multiturn=args.fewshot_as_multiturn, culture_field=args.culture_field, window=args.window,
        stride=args.stride, force=args.force, fold=args.fold,
        fold_tables=args.fold_tables, clamp_crc=args.clamp_crc,
    )


def _sets_flag(args) -> str:
    """How the neuron-sets folder is spelled: --sets-out of run, --out of select."""
    return "--out" if args.command == "select" else "--sets-out"


def _check_sets_out(args) -> None:
    """The neuron-sets folder is replaced as a whole: refuse one holding other files before any work."""
    from .._io import check_output_folder
    from ..selection.save import SETS_LEGACY

    if args.sets_out and not getattr(args, "no_select", False):
        check_output_folder(args.sets_out, _sets_flag(args), SETS_LEGACY)


def _check_leaf_tasks(role_tasks: dict[str, list[str]], tasks: dict, settings) -> None:
    """A group or tag (blend_gen, blend) loads as its leaves: it has no samples of its own to score."""
    from ..scoring.run import parse_task_specs

    for role, specs in role_tasks.items():
        for name, _ in parse_task_specs(specs, settings.limit):
            if name in tasks:
                continue
            from lm_eval.tasks import TaskManager

            try:
                leaves = TaskManager().load([name]).get("group_map", {}).get(name) or []
            except Exception:  # noqa: BLE001 -- only the hint is lost
                leaves = []
            shown = ",".join(str(t) for t in leaves[:4]) + (",..." if len(leaves) > 4 else "")
            raise ValueError(f"--{ROLE_FLAGS[role]} {name}: a group of tasks, which is not scorable as one; give "
                             f"its tasks instead" + (f" ({len(leaves)}: {shown})" if leaves else ""))


def _score(args) -> dict[str, Path]:
    from .._io import check_writable_folder
    from ..model.lm import load_lm, parse_model_args
    from ..scoring.run import load_role_tasks, reusable_score_files, score_roles

    settings = settings_from_args(args)
    parse_model_args(args.model_args)
    _check_sets_out(args)
    role_tasks = {role: getattr(args, flag) for role, flag in ROLE_FLAGS.items() if getattr(args, flag)}
    reused = reusable_score_files(role_tasks, settings, args.out)
    if len(reused) == len(role_tasks):
        return reused
    tasks = load_role_tasks(role_tasks, settings)  # bad data fails here, before the model loads
    _check_leaf_tasks(role_tasks, tasks, settings)
    check_writable_folder(args.out, "--out")
    lm = load_lm(args.model_args, batch_size=args.batch_size, device=args.device, model=args.model)
    return score_roles(lm, role_tasks, settings, args.out, tasks=tasks)


def _select(paths: dict[str, Path], args, half_tables: dict | None = None) -> dict[str, Path]:
    from ..scoring.tables import load_table
    from ..selection.save import select_and_save

    if "task" not in paths:
        raise ValueError("a task score file is needed: --task-scores FILE, or --scores-dir with task.scores.pt in it")
    thresholds, seeds = thresholds_from_args(args), _seeds(args.seeds)
    tables = {role: load_table(path) for role, path in paths.items()}
    name = tables["task"].meta.get("model", {}).get("name") or "model"
    out = args.sets_out or Path("neuron_sets") / Path(name).name
    leave_out = _leave_out(args)
    written = select_and_save(tables, thresholds, out, model_name=name, random_seeds=seeds, leave_out=leave_out,
                              half_tables=half_tables or None, what=_sets_flag(args))
    from ..neuron_set import NeuronSet

    for label, path in written.items():
        s = NeuronSet.load(path)
        frac = ", ".join(f"{k} {100 * v:.3f}%" for k, v in s.fraction().items())
        print(f"{label:>16}: {len(s):6d} neurons ({frac}) -> {path}")
    if leave_out is not None:
        from ..selection.save import loco_paths

        for culture, labelled in loco_paths(out).items():
            s = NeuronSet.load(labelled["general"])
            print(f"{'without ' + culture:>16}: {len(s):6d} neurons -> {labelled['general']}")
    return written


def _study(args) -> int:
    from .._io import check_output_folder
    from ..scoring.tables import load_fold_tables, load_table, table_paths
    from ..selection.study import STUDY_LEGACY, VARIANTS, StudySettings, default_variants, run_study

    names = args.variants if args.variants is not None else default_variants(bool(args.half_scores_dir))
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"--variants {','.join(unknown) or '(none)'}: choose from {', '.join(VARIANTS)}")
    needs_halves = [v for v in names if VARIANTS[v].get("halves_agree") or VARIANTS[v].get("stable_fraction")]
    if needs_halves and not args.half_scores_dir:
        raise ValueError(f"--variants {','.join(needs_halves)}: these keep the neurons selected on the halves; "
                         "give --half-scores-dir (culnig-score run --fold-tables K, or --fold 0/2)")
    settings = StudySettings(
        model_args=args.model_args, variants={v: VARIANTS[v] for v in names},
        eval_task=args.eval_task, per_culture=args.per_culture, general_task=args.general_task or None, general_limit=args.general_limit,
        random_draws=args.random_draws, batch_size=args.batch_size, select_only=args.select_only,
        leave_out=_leave_out(args),
        thresholds={"top_mlp": args.top_mlp, "top_attention": args.top_attention, "top_specific": args.top_specific,
                    "crc_exclude": args.crc_exclude, "z_min": args.z_min, "min_samples": args.min_samples,
                    "stable_pairs": args.stable_pairs},
    )
    paths = table_paths(args.scores_dir, "--scores-dir")
    if "task" not in paths:
        raise ValueError(f"--scores-dir {args.scores_dir}: holds no task.scores.pt")
    half_tables = load_fold_tables(args.half_scores_dir, "--half-scores-dir") if args.half_scores_dir else {}
    tables = {role: load_table(path) for role, path in paths.items()}
    check_output_folder(args.out, "--out", STUDY_LEGACY)
    command = "culnig-score " + shlex.join(args.argv)
    report = run_study(settings, tables, args.out, half_tables=half_tables or None, command=command,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(report.read_text(encoding="utf-8"))
    print(f"study: {report}", file=sys.stderr)
    return 0


def _main(args) -> int:
    if args.command == "study":
        return _study(args)
    if getattr(args, "halves_agree", False) and not getattr(args, "half_scores_dir", None):
        raise ValueError("--halves-agree keeps the neurons selected on both halves of the items: it needs "
                         "culnig-score select --half-scores-dir (the fold scores of culnig-score run --fold 0/2)")
    if getattr(args, "stable_fraction", None) is not None and not getattr(args, "half_scores_dir", None):
        raise ValueError("--stable-fraction selects from the halves of the items: it needs culnig-score select "
                         "--half-scores-dir (the foldsK folder of culnig-score run --fold-tables K)")
    if args.command == "run":
        paths = _score(args)
        if not args.no_select:
            _select(paths, args)
        return 0
    from ..scoring.tables import load_fold_tables, score_file

    if args.scores_dir and not args.scores_dir.is_dir():
        raise ValueError(f"--scores-dir {args.scores_dir}: no such folder (culnig-score run --out writes it)")
    _check_sets_out(args)
    paths = {}
    for role in ROLE_FLAGS:
        explicit = getattr(args, f"{role}_scores")
        if explicit:
            paths[role] = explicit
        elif args.scores_dir and score_file(args.scores_dir, role).exists():
            paths[role] = score_file(args.scores_dir, role)
    half_tables = load_fold_tables(args.half_scores_dir, "--half-scores-dir") if args.half_scores_dir else None
    _select(paths, args, half_tables)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run(PROG, _main, args)


if __name__ == "__main__":
    sys.exit(main())
