"""The masked vs unmasked comparison report from lm-eval output folders, and what every report shares.

``build_report(run_dirs, out_dir, ...)`` (:mod:`.render`) writes ``out_dir/report.md``,
``report.json`` and ``figures/*.png``.  The flow: :mod:`.collect` reads the lm-eval outputs into
conditions with per-sample records; :mod:`.analysis` pairs conditions item by item;
:mod:`.sections` and :mod:`.specificity` compute the report's rows; :mod:`.render` lays them out
with :mod:`.cells` and :mod:`.figures`.  :mod:`.stats` holds the paired statistics,
:mod:`.instances` the ``--instance-scores`` aggregation, and :mod:`.markdown` and :mod:`.figures`
the Markdown tables and figure style the other reports (study, LAPE, fine-tuning) use too.
"""

from .stats import (
    Interval,
    mcnemar_exact,
    mcnemar_exact_counts,
    paired_bootstrap_ci,
    paired_difference,
)

__all__ = ["build_report", "paired_bootstrap_ci", "mcnemar_exact", "mcnemar_exact_counts",
           "paired_difference", "Interval"]


def __getattr__(name):  # matplotlib is imported only when a report is built
    if name == "build_report":
        from .render import build_report

        return build_report
    raise AttributeError(name)
