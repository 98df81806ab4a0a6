"""``culnig-modules`` and ``culnig-finetune``: rank modules by the neurons they hold, fine-tune some, compare.

::

    culnig-modules  --model_args ARGS --sets general.pt [--choice top] [--budget 0.1] [--out top.json]
    culnig-finetune train   --model_args ARGS (--modules top.json | --sets S --choice top) --out RUN
    culnig-finetune compare --model_args ARGS --sets S [--choices top,bottom,random] --out RUN

The module file is JSON (YAML for a ``.yaml``/``.yml`` name): ``target_modules`` is a PEFT
``target_modules`` list, ``trainable_parameters`` the parameters a full fine-tune unfreezes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import HelpFormatter, epilog, old_spellings, run

MODULES_PROG = "culnig-modules"
FINETUNE_PROG = "culnig-finetune"


def _load_sets(specs: list[str]):
    """``--sets`` files, joined with '+' (as in neurons=) or given as several arguments."""
    from ..finetune.modules import check_sets_hold_neurons
    from ..neuron_set import load_sets

    neuron_sets = [s for spec in specs for s in load_sets(spec)]
    check_sets_hold_neurons(neuron_sets)
    return neuron_sets


def _fit_sets(neuron_sets, model) -> None:
    from ..architectures import model_shape

    shape = model_shape(model.config)
    for neuron_set in neuron_sets:
        neuron_set.check_model(shape)


def _write_choice(choice, out: Path) -> None:
    import yaml

    from .._io import write_text

    body = choice.to_dict()
    text = yaml.safe_dump(body, sort_keys=False) if out.suffix in (".yaml", ".yml") else json.dumps(body, indent=1)
    write_text(out, text)


# -- culnig-modules -----------------------------------------------------------------------------
def cmd_modules(args) -> int:
    from ..finetune.modules import check_budget, format_table, meta_model, module_choice

    check_budget(args.budget)
    neuron_sets = _load_sets(args.sets)  # files first, then the model's structure
    model = meta_model(args.model_args)
    _fit_sets(neuron_sets, model)
    choice = module_choice(model, neuron_sets, args.choice, args.budget, args.seed)
    print(format_table(choice, args.show))
    if args.out:
        _write_choice(choice, args.out)
        print(f"modules: {args.out}")
    return 0


SETS_HELP = "neuron-set files joined with '+' (or given as several arguments)"


def modules_parser() -> argparse.ArgumentParser:
    from ..finetune.modules import CHOICES

    p = argparse.ArgumentParser(prog=MODULES_PROG, formatter_class=HelpFormatter,
                                description="Rank a model's modules by how many selected neurons they hold and "
                                "choose modules for a parameter budget (PEFT target_modules / trainable parameters).",
                                epilog=epilog("culnig-modules --model_args pretrained=smollm2-135m --sets "
                                              "neuron_sets/smollm2-135m/general.pt --budget 0.05 --out top.json",
                                              folders=False))
    p.add_argument("--model_args", required=True, help="as for lm_eval, e.g. pretrained=smollm2-135m (weights not loaded)")
    p.add_argument("--sets", nargs="+", required=True, metavar="A.pt+B.pt", help=SETS_HELP + "; their union is counted")
    p.add_argument("--choice", default="top", choices=CHOICES,
                   help="top: most neurons first; bottom: fewest first; random: seeded order")
    p.add_argument("--budget", type=float, default=0.1, help="fraction of all parameters to choose")
    p.add_argument("--seed", type=int, default=0, help="order of ties (bottom) and of random")
    p.add_argument("--out", type=Path, default=None, help="write the choice to this file (.json, or .yaml/.yml)")
    p.add_argument("--show", type=int, default=30, help="table rows to print")
    p.set_defaults(func=cmd_modules)
    return p


def modules_main(argv=None) -> int:
    args = modules_parser().parse_args(argv)
    return run(MODULES_PROG, args.func, args)


# -- culnig-finetune ----------------------------------------------------------------------------
def _settings(args):
    from ..finetune.train import FinetuneSettings, LoraSettings

    lora = LoraSettings(args.lora_r, args.lora_alpha, 0.0) if args.lora else None
    return FinetuneSettings(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                            learning_rate=args.learning_rate, max_length=args.max_length, eval_every=args.eval_every,
                            eval_tasks=_task_list(args.eval_tasks), train_eval_task=args.train_eval_task or None,
                            eval_limit=args.eval_limit, eval_batch_size=args.eval_batch_size, seed=args.seed, lora=lora)


def _task_list(text: str) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _check_tasks(settings) -> None:
    """Unknown names, unloadable data and tasks without a per-item accuracy (a perplexity task)
    stop the run before the model loads."""
    from ..finetune.train import check_accuracy_tasks
    from ..scoring.samples import load_tasks

    flags = {name: "--eval-tasks" for name in settings.eval_tasks}
    if settings.train_eval_task:
        flags[settings.train_eval_task] = "--train-eval-task"
    check_accuracy_tasks(load_tasks(settings.all_eval_tasks), flags)


def _examples(args):
    from ..finetune.examples import check_max_examples, from_jsonl, from_task

    check_max_examples(args.max_train_examples)
    if args.train_file:
        return from_jsonl(args.train_file, args.max_train_examples)
    return from_task(args.train_task, args.max_train_examples, args.seed)


def _prepare(args):
    """Everything that can be wrong with the user's input, checked before the model loads."""
    from .._io import check_writable_folder
    from ..finetune.train import read_checkpoint

    settings = _settings(args)
    out = check_writable_folder(args.out, "--out")
    examples = _examples(args)
    _check_tasks(settings)
    neuron_sets = _load_sets(args.sets) if args.sets else []
    if not args.force:  # a damaged checkpoint is reported now, not after the model loaded
        for path in [out / "checkpoint.pt"] + [out / c / "checkpoint.pt" for c in _task_list(getattr(args, "choices", ""))]:
            read_checkpoint(path)
    return settings, out, examples, neuron_sets


def _load(args, settings):
    from ..model.lm import load_lm

    lm = load_lm(args.model_args, batch_size=settings.eval_batch_size, device=args.device)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return lm


def cmd_train(args) -> int:
    from ..finetune.examples import tokenise
    from ..finetune.modules import check_target_modules, load_choice, meta_model, module_choice
    from ..finetune.train import Run

    if bool(args.modules) == bool(args.sets):
        raise ValueError("give either --modules FILE (from culnig-modules) or --sets with --choice")
    settings, out, examples, neuron_sets = _prepare(args)
    chosen = load_choice(args.modules)["target_modules"] if args.modules else None
    if chosen is not None:  # on the model's structure: no weights loaded yet
        check_target_modules(meta_model(args.model_args), chosen, args.modules)
    lm = _load(args, settings)
    if chosen is None:
        _fit_sets(neuron_sets, lm.model)
        choice = module_choice(lm.model, neuron_sets, args.choice, args.budget, args.module_seed)
        chosen = choice.target_modules
        _write_choice(choice, out / "modules.json")
    data = tokenise(lm, examples, settings.max_length)
    curve = Run(lm, data, chosen, settings, out, args.model_args, label=args.label).run(force=args.force)
    last = curve[-1]
    print(f"fine-tuned {len(chosen)} modules for {last['step']} updates; " + ", ".join(
        f"{t}: {curve[0]['tasks'][t]['acc']:.3f} -> {v['acc']:.3f}" for t, v in last["tasks"].items()))
    print(f"curve: {out / 'curve.json'}")
    return 0


def cmd_compare(args) -> int:
    from .._io import check_output_folder
    from ..finetune.compare import REPORT_LEGACY, CompareSettings, read_baseline, run_compare
    from ..finetune.examples import tokenise

    compare = CompareSettings(tuple(_task_list(args.choices)), args.budget, args.module_seed)
    if not args.sets:
        raise ValueError("--sets: name the neuron-set file(s) whose neurons rank the modules")
    settings, out, examples, neuron_sets = _prepare(args)
    check_output_folder(out / "report", legacy=REPORT_LEGACY)
    if not args.force:
        read_baseline(out)
    lm = _load(args, settings)
    _fit_sets(neuron_sets, lm.model)
    data = tokenise(lm, examples, settings.max_length)
    report = run_compare(lm, neuron_sets, data, settings, compare, out, args.model_args, force=args.force)
    print(f"report: {report}")
    return 0


def _common(parser, compare: bool):
    from ..finetune.modules import CHOICES

    p = parser.add_argument_group("model")
    p.add_argument("--model_args", required=True, help="as for lm_eval, e.g. pretrained=smollm2-135m")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p = parser.add_argument_group("modules", "which modules are trained")
    p.add_argument("--sets", nargs="+", default=None, metavar="A.pt+B.pt",
                   help=SETS_HELP + "; their union ranks the modules")
    if compare:
        p.add_argument("--choices", default=",".join(CHOICES), help="module choices to train and compare")
    else:
        p.add_argument("--modules", default=None, help="a culnig-modules file (instead of --sets/--choice)")
        p.add_argument("--choice", default="top", choices=CHOICES, help="which modules --sets ranks first")
    p.add_argument("--budget", type=float, default=0.1, help="fraction of all parameters to train")
    p.add_argument("--module-seed", type=int, default=0, help="order of ties (bottom) and of random modules")
    p = parser.add_argument_group("training data")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--train-task", default="qnli", help="lm-eval task whose training split is used")
    data.add_argument("--train-file", default=None, help="JSONL with prompt/target per line (instead of a task)")
    p.add_argument("--max-train-examples", type=int, default=10000,
                   help="seeded subset of the training split (first N lines of --train-file); 0: all examples")
    p.add_argument("--seed", type=int, default=42, help="training subset and data order")
    p = parser.add_argument_group("training")
    p.add_argument("--steps", type=int, default=625, help="optimizer updates")
    old_spellings(p, p.add_argument("--batch_size", type=int, default=4, help="training examples per forward pass"),
                  "--batch-size")
    p.add_argument("--grad-accum", type=int, default=4, help="forward passes per optimizer update")
    p.add_argument("--learning-rate", type=float, default=3e-5, help="AdamW learning rate")
    p.add_argument("--max-length", type=int, default=512, help="tokens per training example (prompt cut on the left)")
    p.add_argument("--lora", action="store_true", help="LoRA adapters on the chosen modules instead of a full update")
    p.add_argument("--lora-r", type=int, default=32, help="LoRA rank")
    p.add_argument("--lora-alpha", type=int, default=64, help="LoRA alpha")
    p = parser.add_argument_group("evaluation", "with lm-eval, on the model being trained")
    p.add_argument("--train-eval-task", default="qnli", help="the training task's own evaluation ('' for none)")
    p.add_argument("--eval-tasks", default="blend_test,culturalbench,cultural_norm",
                   help="comma-separated lm-eval tasks evaluated every --eval-every updates")
    p.add_argument("--eval-every", type=int, default=200, help="updates between evaluations")
    p.add_argument("--eval-limit", type=int, default=None, help="items per evaluation task (default: all)")
    p.add_argument("--eval-batch-size", type=int, default=8, help="lm-eval's batch size for the evaluations")
    p = parser.add_argument_group("output")
    p.add_argument("--out", required=True, type=Path,
                   help="run folder (written into: checkpoint, curve" + (", report/ replaced" if compare else "")
                        + "; other files are kept)")
    if not compare:
        p.add_argument("--label", default="run", help="name of the run in its curve file")
    p.add_argument("--force", action="store_true", help="start again instead of resuming a checkpoint")


SET = "neuron_sets/smollm2-135m/general.pt"


def finetune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=FINETUNE_PROG, formatter_class=HelpFormatter,
                                     description="Fine-tune only the modules that hold (or do not hold) selected "
                                     "neurons, evaluating with lm-eval on the same model every N updates.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one module choice", formatter_class=HelpFormatter,
                       description="Train the modules of one choice (from --sets, or a culnig-modules file) and "
                       "record the evaluation curve.",
                       epilog=epilog(f"culnig-finetune train --model_args pretrained=smollm2-135m --sets {SET} "
                                     "--choice top --out runs/finetune-top"))
    _common(p, compare=False)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("compare", help="train top, bottom and random module choices; curves and table",
                       formatter_class=HelpFormatter,
                       description="Train the top, bottom and random module choices of the same budget from the "
                       "same start, then write curves and a table (report/).",
                       epilog=epilog(f"culnig-finetune compare --model_args pretrained=smollm2-135m --sets {SET} "
                                     "--out runs/finetune"))
    _common(p, compare=True)
    p.set_defaults(func=cmd_compare)
    return parser


def finetune_main(argv=None) -> int:
    args = finetune_parser().parse_args(argv)
    return run(FINETUNE_PROG, args.func, args)


if __name__ == "__main__":
    sys.exit(finetune_main())
