"""``culnig-experiment``: the whole study (score -> select -> evaluate -> report) from one config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import HelpFormatter, epilog, run

PROG = "culnig-experiment"


def build_parser() -> argparse.ArgumentParser:
    from ..experiment.config import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score neurons, select culture-general/-specific sets (and size-matched random sets), "
        "evaluate masked vs unmasked through lm-eval with per-sample logs, and write report.md with figures. "
        "Finished steps are skipped on re-runs.",
        epilog=epilog("culnig-experiment --config culnig_lm_eval/experiments/smollm2-135m.yaml --out runs/smollm2"),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (written into: its sets/<selection>/ and report/ are replaced, other "
                             "files kept; default: runs/<config name>)")
    parser.add_argument("--force", action="store_true", help="redo every step")
    return parser


def _check_replaced_folders(config, out: Path) -> None:
    """The folders of the run that are replaced as a whole must hold only earlier output: checked
    before the model loads (``_io``); files beside them in ``out`` are never touched."""
    from .._io import check_output_folder
    from ..report.render import REPORT_LEGACY
    from ..selection.save import SETS_LEGACY

    check_output_folder(out / "report", legacy=REPORT_LEGACY, create_parent=False)
    for name in config.selections:
        check_output_folder(out / "sets" / name, legacy=SETS_LEGACY, create_parent=False)


def _main(args) -> int:
    from ..experiment.config import load_config
    from ..experiment.run import run_experiment

    config = load_config(args.config)
    out = args.out or Path("runs") / config.name
    _check_replaced_folders(config, out)
    report = run_experiment(config, out, force=args.force)
    print(f"report: {report}")
    return 0


def main(argv=None) -> int:
    return run(PROG, _main, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
