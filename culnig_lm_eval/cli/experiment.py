"""``culnig-experiment``: the whole study (score -> select -> evaluate -> report) from one config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import run

PROG = "culnig-experiment"


def build_parser() -> argparse.ArgumentParser:
    from ..experiment.config import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score neurons, select culture-general/-specific sets (and size-matched random sets), "
        "evaluate masked vs unmasked through lm-eval with per-sample logs, and write report.md with figures. "
        "Finished steps are skipped on re-runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<config name>)")
    parser.add_argument("--force", action="store_true", help="redo every step")
    return parser


def _main(args) -> int:
    from ..experiment.config import load_config
    from ..experiment.run import run_experiment

    config = load_config(args.config)
    report = run_experiment(config, args.out or Path("runs") / config.name, force=args.force)
    print(f"report: {report}")
    return 0


def main(argv=None) -> int:
    return run(PROG, _main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
