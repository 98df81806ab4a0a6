"""``culnig-report``: compare masked and unmasked lm-eval runs and write a Markdown report."""

from __future__ import annotations

import argparse
import math
import sys

from ._common import HelpFormatter, epilog, old_spellings, run

PROG = "culnig-report"
MAX_SEED = 2**32 - 1  # numpy's seed range

DESCRIPTION = """\
Compare masked and unmasked runs of lm-evaluation-harness and write REPORT_DIR/report.md with
PNG figures (REPORT_DIR/figures/) and the numbers in REPORT_DIR/report.json.

Each RUN_DIR is searched recursively for the files that
`lm_eval ... --output_path DIR --log_samples` writes:
DIR/<model>/results_<date>.json and DIR/<model>/samples_<task>_<date>.jsonl.
Runs are identified by their model_args: without `neurons=` a run is "unmasked"; otherwise
the neuron-set files named in `neurons=a.pt+b.pt` label it (culture, selection, random
seed and the set a random baseline was size-matched to). Only runs of the same base model
are compared. When the same model_args ran a task several times, the newest run counts.
Items are paired by doc_id and lm-eval's doc_hash: a task whose runs hold different documents
(another data file, another order, another --limit) is not compared and is listed under
Skipped. A masked run whose neuron set holds 0 neurons is flagged with a warning.

REPORT_DIR is replaced as a whole (the new report is built beside it and swapped in), so an
interruption or a full disk leaves the previous complete report. It must be new, empty or an
earlier report: a REPORT_DIR holding files no culnig command wrote there is refused and left
untouched. No results under the RUN_DIRs, or a bad number, is an error (exit status 2).

A single RUN_DIR that is (or holds) the intervention.json of `culnig-lape evaluate` / `demo`
re-renders that LAPE report: the delta-NLL heatmap, the layer distribution of each set and
whether each group of sets is diagonal-dominant.

Sections: accuracy per task (paired differences, bootstrap CI, exact McNemar p), the
culture x culture matrix, where the neurons are (per layer, thirds of the depth),
instance-level scores (with --instance-scores), specificity (cultural drop vs general
perplexity ratio and NLU controls, with a verdict per set), and tasks listed in any
skipped.json ({task: reason}) under a RUN_DIR. Sections whose inputs are missing are
replaced by a one-line note.
"""

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, formatter_class=HelpFormatter,
                                epilog=epilog("culnig-report runs/ --out report/",
                                              "culnig-report runs/unmasked runs/masked --out report/ --sets-dir "
                                              "neuron_sets/ --instance-scores scores/instances.jsonl "
                                              "--ppl-threshold 1.05"))
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="lm-eval --output_path folder(s) (searched recursively) or results_*.json files")
    g = p.add_argument_group("output")
    old_spellings(g, g.add_argument("--out", required=True, metavar="REPORT_DIR",
                                    help="folder for report.md, report.json and figures/ (replaced; created if "
                                         "needed)"), "-o")
    g.add_argument("--title", help="report title")
    g = p.add_argument_group("inputs")
    g.add_argument("--sets-dir", metavar="DIR",
                   help="also look here for the neuron-set files named in neurons= (by relative path and by "
                        "file name); by default they are looked up as written, from the current folder and "
                        "from the run folders")
    g.add_argument("--instance-scores", metavar="FILE",
                   help='JSONL rows {"set", "culture", "topic", "doc_id", "score"}: report the fraction of items '
                        "whose summed score is positive, per culture and topic")
    g.add_argument("--nlu-tasks", default="qnli,mrpc,commonsense_qa", metavar="T1,T2",
                   help="comma-separated task names treated as general NLU controls")
    g.add_argument("--cultures", default="", metavar="C1,C2",
                   help="extra culture names for recognising <task>_<culture> tasks (cultures of the neuron "
                        "sets and doc['culture'] values are always known)")
    g = p.add_argument_group("statistics")
    g.add_argument("--ppl-threshold", type=float, default=1.10, metavar="RATIO",
                   help="largest general perplexity ratio (masked / unmasked) a set may cost and still be "
                        "called specific")
    g.add_argument("--n-resamples", type=int, default=2000, metavar="N", help="paired bootstrap resamples")
    g.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    g.add_argument("--alpha", type=float, default=0.05,
                   help="1 - confidence level of the intervals (0.05: 95%%)")
    p.add_argument("--transfer", action="append", default=[], metavar="DIR",
                   help="lm-eval output folder(s) of leave-one-culture-out evaluations (the transfer/ "
                        "folder of a culnig-experiment run with leave_one_out; repeat for several): adds "
                        "the transfer section -- per held-out culture the drop of the set selected without "
                        "it, its empirical p among its random sets, the pooled transfer effect and a figure")
    return p


def check_numbers(args: argparse.Namespace) -> None:
    """Reject numbers that would give a wrong or meaningless report (one line, exit 2)."""
    if not (math.isfinite(args.alpha) and 0 < args.alpha < 1):
        raise ValueError(f"--alpha {args.alpha}: must be a number between 0 and 1 (e.g. 0.05 for 95% intervals)")
    if not (math.isfinite(args.ppl_threshold) and args.ppl_threshold > 0):
        raise ValueError(f"--ppl-threshold {args.ppl_threshold}: must be a finite ratio > 0 (e.g. 1.10)")
    if args.n_resamples < 1:
        raise ValueError(f"--n-resamples {args.n_resamples}: must be >= 1")
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed {args.seed}: must be between 0 and {MAX_SEED}")


def _lape_intervention(run_dirs: list[str]):
    """The LAPE intervention file when that is what was given (a file or a folder holding one)."""
    from pathlib import Path

    if len(run_dirs) != 1:
        return None
    path = Path(run_dirs[0])
    path = path / "intervention.json" if path.is_dir() else path
    return path if path.name == "intervention.json" and path.is_file() else None


def make_report(args: argparse.Namespace) -> int:
    check_numbers(args)
    lape = _lape_intervention(args.run_dirs)
    if lape is not None:  # written by culnig-lape evaluate/demo: re-render its heatmaps and tables
        from culnig_lm_eval.lape.pipeline import load_intervention, render_intervention

        payload = load_intervention(lape)
        if args.title:
            payload["title"] = args.title
        print(render_intervention(payload, args.out, "--out"))
        return 0
    from culnig_lm_eval.report.render import build_report

    path = build_report(
        args.run_dirs, args.out, sets_dir=args.sets_dir, instance_scores=args.instance_scores,
        ppl_threshold=args.ppl_threshold, n_resamples=args.n_resamples, seed=args.seed, alpha=args.alpha,
        nlu_tasks=tuple(t.strip() for t in args.nlu_tasks.split(",") if t.strip()),
        cultures=tuple(c.strip() for c in args.cultures.split(",") if c.strip()), title=args.title,
        what="--out", transfer_dirs=args.transfer,
    )
    print(path)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(PROG, make_report, args)


if __name__ == "__main__":
    sys.exit(main())
