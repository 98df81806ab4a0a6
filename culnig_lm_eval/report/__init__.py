"""Masked vs unmasked comparison report from lm-eval output folders.

``build_report(run_dirs, out_dir, ...)`` writes ``out_dir/report.md`` (plus ``figures/*.png``
and a machine-readable ``report.json``) and returns the path of ``report.md``; the paired
statistics live in :mod:`culnig_lm_eval.report.stats` (``paired_bootstrap_ci``,
``mcnemar_exact``, ``empirical_p`` of a set's drop among its random sets...), reading the lm-eval outputs in :mod:`culnig_lm_eval.report.collect`
(``collect(run_dirs, sets_dir)`` -> conditions with per-sample records) and the comparisons in
:mod:`culnig_lm_eval.report.analysis` (dataclass rows, written to ``report.json`` as they are), the
``--instance-scores`` aggregation in :mod:`culnig_lm_eval.report.instances`; :mod:`.render` only
formats Markdown and calls :mod:`.figures`.
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
