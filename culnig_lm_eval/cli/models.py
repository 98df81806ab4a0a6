"""``culnig-models``: the embedded default models (list them, or print a converted checkpoint's path)."""

from __future__ import annotations

import argparse
import sys

from ._common import HelpFormatter, epilog, run

PROG = "culnig-models"


def _main(args) -> int:
    from ..model.embedded import EMBEDDED, checkpoint_dir

    if args.command == "list":
        for alias, model in EMBEDDED.items():
            print(f"{alias:14} {model.description}")
    else:
        print(checkpoint_dir(args.alias))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..model.embedded import EMBEDDED

    parser = argparse.ArgumentParser(prog=PROG, description="Embedded offline models.", formatter_class=HelpFormatter,
                                     epilog=epilog("culnig-models list", folders=False))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="aliases and what they are", description="The embedded models' aliases and what "
                   "they are.", formatter_class=HelpFormatter, epilog=epilog("culnig-models list", folders=False))
    path = sub.add_parser("path", help="convert once if needed, then print the checkpoint folder",
                          description="Convert the embedded model once if needed, then print its checkpoint folder "
                          "(for pretrained= of the stock hf model, vLLM or SGLang).", formatter_class=HelpFormatter,
                          epilog=epilog("lm_eval --model hf --model_args pretrained=$(culnig-models path smollm2-135m) "
                                        "--tasks blend_cloze --limit 8", folders=False))
    path.add_argument("alias", choices=sorted(EMBEDDED))
    return parser


def main(argv=None) -> int:
    return run(PROG, _main, build_parser().parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
