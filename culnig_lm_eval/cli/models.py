"""``culnig-models``: the embedded default models (list them, or print a converted checkpoint's path)."""

from __future__ import annotations

import argparse
import sys

from ._common import run

PROG = "culnig-models"


def _main(args) -> int:
    from ..model.embedded import EMBEDDED, checkpoint_dir

    if args.command == "list":
        for alias, model in EMBEDDED.items():
            print(f"{alias:14} {model.description}")
    else:
        print(checkpoint_dir(args.alias))
    return 0


def main(argv=None) -> int:
    from ..model.embedded import EMBEDDED

    parser = argparse.ArgumentParser(prog=PROG, description="Embedded offline models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="aliases and what they are")
    path = sub.add_parser("path", help="convert once if needed, then print the checkpoint folder")
    path.add_argument("alias", choices=sorted(EMBEDDED))
    return run(PROG, _main, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
