"""``culnig-experiment``: the whole study (score -> select -> evaluate -> report) from one config."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv=None) -> int:
    from ..experiment import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(
        prog="culnig-experiment",
        description="Score neurons, select culture-general/-specific sets (and size-matched random sets), "
        "evaluate masked vs unmasked through lm-eval with per-sample logs, and write report.md with figures. "
        "Finished steps are skipped on re-runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<config name>)")
    parser.add_argument("--force", action="store_true", help="redo every step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    from ..experiment import Experiment, load_config

    try:
        config = load_config(args.config)
        out = args.out or Path("runs") / str(config.get("name", "experiment"))
        report = Experiment(config, out, force=args.force).run()
    except (FileNotFoundError, ValueError) as err:
        print(f"culnig-experiment: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
