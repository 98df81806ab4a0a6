"""``culnig-score``: CULNIG neuron scores from harness tasks, and neuron sets from the scores.

    culnig-score run --model_args pretrained=smollm2-135m \\
        --tasks blend_cloze_neur --control blend_cloze_ctrl --crc crc --out runs/scores
    culnig-score select --scores-dir runs/scores --out neuron_sets/smollm2-135m --top-mlp 0.5
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("culnig-score")

ROLE_FLAGS = {"task": "tasks", "control": "control", "crc": "crc", "general": "general"}


def _comma(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="culnig-score",
        description="Score neurons with the CULNIG attribution (activation x gradient of P(gold), max over "
        "tokens, weighted by P) on harness tasks, then select culture-general and culture-specific sets.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="score tasks (and select sets unless --no-select)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("--model", default="hf", help="harness model class used to load the model (hf or masked-hf)")
    run.add_argument("--model_args", default="pretrained=smollm2-135m",
                     help="as lm_eval's --model_args; embedded aliases smollm2-135m and gemma-3-270m work")
    run.add_argument("--tasks", type=_comma, required=True,
                     help="comma-separated harness tasks to find neurons on; TASK:N limits one task to N documents")
    run.add_argument("--control", type=_comma, default=[], help="control tasks (question removed), e.g. blend_cloze_ctrl")
    run.add_argument("--crc", type=_comma, default=[], help="country reading-comprehension tasks to exclude, e.g. crc")
    run.add_argument("--general", type=_comma, default=[],
                     help="general-prose tasks (loglikelihood_rolling) for the opt-in general exclusion, e.g. general_ppl_selection")
    run.add_argument("--out", type=Path, required=True, help="folder for the score files (<role>.scores.pt)")
    run.add_argument("--attention", action="store_true", help="also score attention q/k/v outputs")
    run.add_argument("--up-proj", action="store_true", help="also score MLP up_proj outputs")
    run.add_argument("--batch_size", type=int, default=8)
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: as the harness model decides)")
    run.add_argument("--limit", type=int, default=None, help="documents per task (for quick runs)")
    run.add_argument("--num_fewshot", type=int, default=None)
    run.add_argument("--fewshot_seed", type=int, default=1234)
    run.add_argument("--apply_chat_template", action="store_true")
    run.add_argument("--fewshot_as_multiturn", action="store_true")
    run.add_argument("--culture-field", default="culture", help="document field naming the culture")
    run.add_argument("--window", type=int, default=96, help="general prose: tokens of preceding text per sample")
    run.add_argument("--stride", type=int, default=16, help="general prose: score every STRIDE-th token")
    run.add_argument("--force", action="store_true", help="recompute score files that already exist")
    run.add_argument("--no-select", action="store_true", help="only write score files")
    _selection_args(run)

    sel = sub.add_parser("select", help="write neuron sets from existing score files",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sel.add_argument("--scores-dir", type=Path, help="folder written by `culnig-score run`")
    for role in ROLE_FLAGS:
        sel.add_argument(f"--{role}-scores", type=Path, default=None, help=f"{role} score file (overrides --scores-dir)")
    _selection_args(sel)
    return parser


def _selection_args(p):
    from ..selection import Thresholds

    d = Thresholds()
    p.add_argument("--sets-out", "--out-sets", dest="sets_out", type=Path, default=None,
                   help="folder for the neuron sets (default: neuron_sets/<model name>)")
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


def _thresholds(args):
    from ..selection import Thresholds

    return Thresholds(args.top_mlp, args.top_attention, args.top_specific, args.crc_exclude,
                      args.exclude_general, args.z_min, args.min_samples, args.normalise_z)


def score_file(out: Path, role: str) -> Path:
    return out / f"{role}.scores.pt"


def run_scoring(args) -> dict[str, Path]:
    import torch
    from lm_eval.api.registry import get_model

    from ..architectures import MODULE_KINDS
    from ..embedded import resolve_pretrained
    from ..scoring.attribution import AttributionScorer
    from ..scoring.run import load_table, save_table, score_samples
    from ..scoring.samples import load_tasks, samples_from_task

    role_tasks = {role: getattr(args, flag) for role, flag in ROLE_FLAGS.items() if getattr(args, flag)}
    limits = {}
    for names in role_tasks.values():
        for spec in names:
            name, _, n = spec.partition(":")
            limits[spec] = (name, int(n) if n else args.limit)
    tasks = load_tasks(sorted({name for name, _ in limits.values()}), num_fewshot=args.num_fewshot,
                       fewshot_seed=args.fewshot_seed)
    kinds = ("mlp_gate",) + (("mlp_up",) if args.up_proj else ()) + (("attn_q", "attn_k", "attn_v") if args.attention else ())
    kinds = tuple(k for k in MODULE_KINDS if k in kinds)
    settings = {"model_args": args.model_args, "kinds": list(kinds), "limit": args.limit,
                "num_fewshot": args.num_fewshot, "apply_chat_template": args.apply_chat_template,
                "fewshot_as_multiturn": args.fewshot_as_multiturn, "culture_field": args.culture_field,
                "window": args.window, "stride": args.stride}

    todo = {role: score_file(args.out, role) for role in role_tasks}
    done = {}
    for role, path in todo.items():
        if path.exists() and not args.force:
            existing = load_table(path).meta
            if existing.get("settings") == settings and existing.get("tasks") == role_tasks[role]:
                log.warning("%s: %s exists with the same settings; skipping (use --force to redo)", role, path)
                done[role] = path
            else:
                raise ValueError(f"{path} was made with other settings; use --force or another --out")
    if len(done) == len(todo):
        return done

    model_args = dict(kv.split("=", 1) for kv in args.model_args.split(",") if kv)
    if "pretrained" in model_args:
        model_args["pretrained"] = resolve_pretrained(model_args["pretrained"])
    extra = {"batch_size": args.batch_size,
             "device": args.device or model_args.pop("device", None) or ("cuda" if torch.cuda.is_available() else "cpu")}
    lm = get_model(args.model).create_from_arg_string(",".join(f"{k}={v}" for k, v in model_args.items()), extra)
    model = lm.model.eval()
    scorer = AttributionScorer(model, kinds)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    name = args.model_args.split("pretrained=")[-1].split(",")[0]
    args.out.mkdir(parents=True, exist_ok=True)
    for role, task_names in role_tasks.items():
        if role in done:
            continue
        samples = []
        for spec in task_names:
            task_name, limit = limits[spec]
            samples += samples_from_task(
                task_name, tasks[task_name], lm, limit=limit, apply_chat_template=args.apply_chat_template,
                fewshot_as_multiturn=args.fewshot_as_multiturn, culture_field=args.culture_field,
                window=args.window, stride=args.stride,
            )
        with torch.inference_mode(False):
            table = score_samples(scorer, samples, role=role, batch_size=args.batch_size, pad_id=pad_id,
                                  device=device, rank=lm.rank, world_size=lm.world_size,
                                  desc=f"{role}: {','.join(task_names)}")
        table.meta.update({"task": ",".join(task_names), "tasks": task_names, "settings": settings})
        table.meta["model"]["name"] = name
        if lm.rank == 0:
            save_table(table, todo[role])
            log.warning("%s: %d samples -> %s", role, len(samples), todo[role])
        done[role] = todo[role]
    return {role: p for role, p in done.items()}


def run_selection(paths: dict, args) -> dict:
    from ..neuron_set import atomic_write, file_sha256
    from ..scoring.run import load_table
    from ..selection import select

    if "task" not in paths:
        raise ValueError("a task score file is needed: --task-scores FILE, or --scores-dir with task.scores.pt in it")
    tables = {}
    for role, path in paths.items():
        table = load_table(path)
        table.meta["sha256"] = file_sha256(path)
        tables[role] = table
    name = tables["task"].meta.get("model", {}).get("name") or "model"
    sets = select(tables["task"], tables.get("control"), tables.get("crc"), tables.get("general"),
                  _thresholds(args), model_name=name)
    out = args.sets_out or Path("neuron_sets") / Path(name).name
    written = {}
    for label, neuron_set in sets.items():
        written[label] = str(neuron_set.save(out / f"{label}.pt"))
    summary = {label: {"neurons": len(s), "fraction": s.fraction()} for label, s in sets.items()}
    text = json.dumps({"files": written, "summary": summary}, indent=1)
    atomic_write(out / "selection.json", lambda tmp: Path(tmp).write_text(text))
    for label, s in sets.items():
        frac = ", ".join(f"{k} {100 * v:.3f}%" for k, v in s.fraction().items())
        print(f"{label:>12}: {len(s):6d} neurons ({frac}) -> {written[label]}")
    return written


def main(argv=None):
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from ..neuron_set import NeuronSetError
    from ..scoring.run import ScoreFileError
    from ..scoring.samples import TaskDataError

    try:
        if args.command == "run":
            paths = run_scoring(args)
            if not args.no_select:
                run_selection(paths, args)
        else:
            paths = {}
            for role in ROLE_FLAGS:
                explicit = getattr(args, f"{role}_scores")
                if explicit:
                    paths[role] = explicit
                elif args.scores_dir and score_file(args.scores_dir, role).exists():
                    paths[role] = score_file(args.scores_dir, role)
            run_selection(paths, args)
    except (TaskDataError, ScoreFileError, NeuronSetError, ValueError, FileNotFoundError) as err:
        print(f"culnig-score: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
