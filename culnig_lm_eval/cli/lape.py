"""``culnig-lape``: culture neurons by activation-probability entropy (LAPE), step by step or as a demo.

Subcommands::

    culnig-lape corpora  --blend-annotations DIR --out CORPORA [--eval-fraction 0.2] [--cultures a,b]
    culnig-lape record   --model_args ARGS --corpora DIR --out COUNTS [--row-length 4096] [--max-tokens 10000000]
    culnig-lape identify COUNTS [COUNTS ...] --out SETS [--top-rate 0.01] [--filter-rate 0.95]
                         [--activation-bar-ratio 0.95]
    culnig-lape combine  --culture-sets-dir SETS --language-sets-dir SETS [--culture-languages uk=en,...] --out SETS
    culnig-lape evaluate --model_args ARGS --sets-dir SETS [SETS ...] --corpora DIR --out REPORT
    culnig-lape demo     --blend-annotations DIR --model_args ARGS --out RUN

``--corpora`` folders use the reference's layout, ``<name>/*.txt`` (one corpus per sub-folder);
``corpora`` writes BLEnD's annotations in that layout.  Sets are ordinary neuron-set files:
``lm_eval --model masked-hf --model_args pretrained=...,neurons=RUN/sets/culture/korea.pt``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import HelpFormatter, epilog, old_spellings, run

PROG = "culnig-lape"


def _hp(args):
    from ..lape.identify import LapeHyperparameters

    return LapeHyperparameters(args.top_rate, args.filter_rate, args.activation_bar_ratio)


def _settings(args):
    from ..lape.pipeline import RecordSettings

    return RecordSettings(args.row_length, args.batch_size, args.max_tokens)


def _load_model(model_args: str, device: str | None):
    from ..model.lm import load_lm

    lm = load_lm(model_args, batch_size=1, device=device)
    lm.model.eval()
    return lm.model, lm.tokenizer


# -- subcommands --------------------------------------------------------------------------------
def _output_folder(args, legacy) -> None:
    """A replaced --out must be new, empty or our earlier output: checked before any work."""
    from .._io import check_output_folder

    check_output_folder(args.out, "--out", legacy)


def cmd_corpora(args) -> int:
    from ..lape.corpora import blend_annotation_corpora, language_corpora, parse_languages
    from ..lape.harness import CORPORA_LEGACY, write_corpora

    _output_folder(args, CORPORA_LEGACY)
    mapping = parse_languages(args.culture_languages)
    cultures = [c.strip() for c in args.cultures.split(",")] if args.cultures else None
    built = blend_annotation_corpora(args.blend_annotations, cultures, args.eval_fraction)
    groups = {f"culture/{side}": built["culture"][side] for side in ("record", "eval")}
    groups.update({f"language/{side}": language_corpora(built["native"][side], mapping) for side in ("record", "eval")})
    write_corpora(args.out, groups, {"culture_languages": mapping, "eval_fraction": args.eval_fraction,
                                     "from": "BLEnD annotations (CC BY-SA 4.0)"}, what="--out")
    print(f"corpora: {args.out} (" + ", ".join(f"{g}: {len(c)}" for g, c in groups.items()) + ")")
    return 0


def cmd_record(args) -> int:
    from ..lape.corpora import read_corpus_folder
    from ..lape.pipeline import record_corpora

    corpora = read_corpus_folder(args.corpora)  # data first, then the model
    settings = _settings(args)
    model, tokenizer = _load_model(args.model_args, args.device)
    paths = record_corpora(model, tokenizer, corpora, args.out, settings, force=args.force)
    print(f"counts: {len(paths)} file(s) in {args.out}")
    return 0


def _count_paths(items: list[str]) -> list[Path]:
    from ..lape.pipeline import counts_in

    paths: list[Path] = []
    for item in items:
        if not Path(item).exists():
            raise ValueError(f"{item} does not exist; give count files or folders made by culnig-lape record")
        paths += counts_in(item) if Path(item).is_dir() else [Path(item)]
    return paths


def cmd_identify(args) -> int:
    from ..lape.pipeline import SETS_LEGACY, identify_sets, write_sets

    _output_folder(args, SETS_LEGACY)
    sets = identify_sets(_count_paths(args.counts), _hp(args))
    write_sets(sets, args.out, what="--out")
    for s in sets:
        print(f"{s.meta['culture']}: {len(s)} neurons")
    return 0


def cmd_combine(args) -> int:
    from ..lape.corpora import parse_languages
    from ..lape.pipeline import SETS_LEGACY, combine, sets_in, write_sets

    _output_folder(args, SETS_LEGACY)
    combined = combine(sets_in(args.culture_sets_dir), sets_in(args.language_sets_dir),
                       parse_languages(args.culture_languages))
    write_sets(list(combined.values()), args.out, list(combined), what="--out")
    for name, s in combined.items():
        print(f"{name}: {len(s)} neurons")
    return 0


def _eval_rows(tokenizer, corpora, row_length: int, max_tokens: int | None):
    from ..lape.corpora import token_rows

    return {c.name: token_rows(tokenizer, c.documents, row_length, max_tokens=max_tokens, drop_partial=True) for c in corpora}


def cmd_evaluate(args) -> int:
    from ..lape.corpora import read_corpus_folder
    from ..lape.intervene import delta_matrix
    from ..lape.pipeline import (
        REPORT_LEGACY,
        analyse_intervention,
        render_intervention,
        row_length_for,
        set_layers,
        sets_in,
    )

    settings = _settings(args)  # --batch_size, --row-length, --max-tokens checked before anything loads
    _output_folder(args, REPORT_LEGACY)
    labels = [Path(folder).resolve().name for folder in args.sets_dir]
    clash = sorted({label for label in labels if labels.count(label) > 1})
    if clash:
        raise ValueError(f"--sets-dir: two folders are named {clash[0]!r}, so their sets would share labels; "
                         "give folders with different names")
    sets = {f"{label}/{name}": s for folder, label in zip(args.sets_dir, labels) for name, s in sets_in(folder).items()}
    corpora = read_corpus_folder(args.corpora)
    model, tokenizer = _load_model(args.model_args, args.device)
    rows = _eval_rows(tokenizer, corpora, row_length_for(settings, model), settings.max_tokens)
    result = delta_matrix(model, sets, rows, settings.batch_size)
    pairs = [(name, name.split("/")[-1]) for name in sets]
    payload = analyse_intervention(result, pairs, set_layers(sets), "LAPE intervention")
    print(f"report: {render_intervention(payload, args.out, '--out')}")
    return 0


def cmd_demo(args) -> int:
    from ..lape.demo import DemoConfig, run_demo

    config = DemoConfig(
        annotations=Path(args.blend_annotations), model_args=args.model_args, device=args.device,
        eval_fraction=args.eval_fraction, record=_settings(args), hp=_hp(args),
        eval_max_tokens=args.eval_max_tokens, culture_languages=args.culture_languages,
    )
    report = run_demo(config, Path(args.out), force=args.force)
    print(f"report: {report}")
    return 0


# -- parser -------------------------------------------------------------------------------------
def _model_options(parser):
    p = parser.add_argument_group("model")
    p.add_argument("--model_args", required=True, help="as for lm_eval, e.g. pretrained=smollm2-135m")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    old_spellings(p, p.add_argument("--batch_size", type=int, default=8, help="rows per forward pass"), "--batch-size")
    p.add_argument("--row-length", type=int, default=None,
                   help="tokens per row, BOS included (default: 4096 as the published recorders, or the model's "
                        "maximum length if shorter)")


def _hp_options(parser):
    p = parser.add_argument_group("LAPE hyperparameters", "the published values by default")
    p.add_argument("--top-rate", type=float, default=0.01, help="share of all neurons kept (lowest entropy)")
    p.add_argument("--filter-rate", type=float, default=0.95,
                   help="quantile of all activation probabilities a neuron must exceed on some corpus")
    p.add_argument("--activation-bar-ratio", type=float, default=0.95,
                   help="quantile a kept neuron's probability must exceed for a corpus to get it")


def _languages_option(p):
    p.add_argument("--culture-languages", default=None,
                   help="culture=language pairs, e.g. uk=en,usa=en,spain=es (default: the BLEnD countries' languages)")


ANNOTATIONS = "../shared/data/blend/annotations"


def build_parser() -> argparse.ArgumentParser:
    from ..lape.pipeline import PUBLISHED_EVAL_TOKENS, PUBLISHED_RECORD_TOKENS

    parser = argparse.ArgumentParser(prog=PROG, description="Culture neurons by activation-probability entropy "
                                     "(LAPE): build corpora, record, identify, combine, evaluate, or all of it (demo).",
                                     epilog=epilog(f"culnig-lape demo --blend-annotations {ANNOTATIONS} "
                                                   "--model_args pretrained=smollm2-135m --out runs/lape"),
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text, example):
        return sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                              formatter_class=HelpFormatter, epilog=epilog(f"culnig-lape {name} {example}"))

    p = command("corpora", "English culture and native-language corpora from BLEnD annotations",
                f"--blend-annotations {ANNOTATIONS} --out runs/lape/corpora")
    p.add_argument("--blend-annotations", required=True, help="folder holding BLEnD's <Country>_data.json files")
    p.add_argument("--out", required=True, type=Path, help="corpora folder (replaced)")
    p.add_argument("--cultures", default=None, help="comma-separated countries (default: every file)")
    p.add_argument("--eval-fraction", type=float, default=0.2, help="share of questions held out for evaluation")
    _languages_option(p)
    p.set_defaults(func=cmd_corpora)

    p = command("record", "count positive gate activations per neuron on each corpus",
                "--model_args pretrained=smollm2-135m --corpora runs/lape/corpora/culture/record "
                "--out runs/lape/counts/culture")
    _model_options(p)
    p.add_argument("--corpora", required=True, help="folder with one sub-folder of .txt files per corpus")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for <corpus>.counts.pt (written into: other files are kept)")
    p.add_argument("--max-tokens", type=int, default=PUBLISHED_RECORD_TOKENS,
                   help="tokens recorded per corpus (the published 10M by default)")
    p.add_argument("--force", action="store_true", help="record again even where a matching count file exists")
    p.set_defaults(func=cmd_record)

    p = command("identify", "LAPE sets from count files (one set per corpus)",
                "runs/lape/counts/culture --out runs/lape/sets/culture")
    p.add_argument("counts", nargs="+", help="count files or folders of them")
    p.add_argument("--out", required=True, type=Path, help="sets folder (replaced)")
    _hp_options(p)
    p.set_defaults(func=cmd_identify)

    p = command("combine", "pure / compound / generic sets from culture and language sets",
                "--culture-sets-dir runs/lape/sets/culture --language-sets-dir runs/lape/sets/language "
                "--out runs/lape/sets/combined")
    old_spellings(p, p.add_argument("--culture-sets-dir", required=True, metavar="DIR",
                                    help="folder of culture sets (<culture>.pt)"), "--cultures")
    old_spellings(p, p.add_argument("--language-sets-dir", required=True, metavar="DIR",
                                    help="folder of language sets (<language>.pt)"), "--languages")
    p.add_argument("--out", required=True, type=Path, help="sets folder (replaced)")
    _languages_option(p)
    p.set_defaults(func=cmd_combine)

    p = command("evaluate", "delta block-NLL matrix: each set masked, every corpus's text",
                "--model_args pretrained=smollm2-135m --sets-dir runs/lape/sets/culture "
                "--corpora runs/lape/corpora/culture/eval --out runs/lape/report")
    _model_options(p)
    old_spellings(p, p.add_argument("--sets-dir", nargs="+", required=True, metavar="DIR",
                                    help="folders of sets (each folder's name labels its sets)"), "--sets")
    p.add_argument("--corpora", required=True, help="evaluation corpora, one sub-folder of .txt files each")
    p.add_argument("--out", required=True, type=Path, help="report folder (replaced)")
    p.add_argument("--max-tokens", type=int, default=PUBLISHED_EVAL_TOKENS,
                   help="tokens per evaluation corpus (the published 100k by default)")
    p.set_defaults(func=cmd_evaluate)

    p = command("demo", "the whole LAPE study on BLEnD annotations: corpora, record, identify, combine, evaluate",
                f"--blend-annotations {ANNOTATIONS} --model_args pretrained=smollm2-135m --out runs/lape")
    p.add_argument("--blend-annotations", required=True, help="folder holding BLEnD's <Country>_data.json files")
    _model_options(p)
    g = p.add_argument_group("corpora and tokens")
    g.add_argument("--eval-fraction", type=float, default=0.2, help="share of questions held out for evaluation")
    g.add_argument("--max-tokens", type=int, default=PUBLISHED_RECORD_TOKENS,
                   help="recorded tokens per corpus (the published 10M by default)")
    g.add_argument("--eval-max-tokens", type=int, default=PUBLISHED_EVAL_TOKENS,
                   help="evaluated tokens per corpus (the published 100k by default)")
    _languages_option(g)
    _hp_options(p)
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, type=Path,
                   help="run folder (written into: its corpora/, sets/ and report/ are replaced, counts/ "
                        "reused, other files kept)")
    g.add_argument("--force", action="store_true", help="redo every step")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(PROG, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
