"""The masking report's numbers and rows as Markdown table cells: accuracies and differences to 4
decimals, intervals, p-values, and the cells of each section's rows (``render.py`` lays them out)."""

from __future__ import annotations

from pathlib import Path

from .analysis import PairedColumns
from .collect import Condition
from .sections import AccuracyRow, RandomMeanRow, StabilityRow
from .specificity import ConditionMeasures
from .stats import MIN_INTERVAL_ITEMS, is_finite, sample_size_caveat


def format_accuracy(x) -> str:
    return f"{x:.4f}" if is_finite(x) else "n/a"


def format_difference(x) -> str:
    return f"{x:+.4f}" if is_finite(x) else "n/a"


def format_ci(ci, n: int | None = None) -> str:
    """An interval of a difference; with ``n`` (its paired items) marked when too few items back it."""
    if ci is None:
        return "n/a"
    return format_ci_bounds(ci.low, ci.high, n)


def format_ci_bounds(low, high, n: int | None = None) -> str:
    """The interval; with ``n`` (its paired items) marked when too few items back it."""
    caveat = sample_size_caveat(n)
    if caveat.endswith("no interval"):
        return f"n/a ({caveat})"
    text = f"[{low:+.4f}, {high:+.4f}]" if is_finite(low) and is_finite(high) else "n/a"
    return f"{text} ({caveat})" if caveat and text != "n/a" else text


def small_sample_note(ns, alpha: float) -> list[str]:
    """A line under a table whose comparisons rest on fewer than MIN_INTERVAL_ITEMS items (``ns``)."""
    small = sorted({n for n in ns if n is not None and sample_size_caveat(n)})
    if not small:
        return []
    return [f"**Small samples:** {', '.join(map(str, small))} paired item(s) in some rows: with fewer than "
            f"{MIN_INTERVAL_ITEMS} items a paired-bootstrap {100 * (1 - alpha):g}% interval is far too narrow "
            "(with 1 item it has zero width and is not shown) and the McNemar test can hardly reach "
            "significance; treat those rows as anecdotes, not findings.", ""]


def format_p(p) -> str:
    if not is_finite(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4g}"


def format_ratio(x) -> str:
    return f"{x:.4f}" if is_finite(x) else "n/a"


def ci_label(alpha: float) -> str:
    """Column label of a ``1 - alpha`` interval, e.g. "90% CI" for alpha 0.1."""
    return f"{100 * (1 - alpha):g}% CI"


def format_ratio_ci(ci, n: int | None = None) -> str:
    """A perplexity ratio's interval; with ``n`` (its documents) marked when too few back it."""
    caveat = sample_size_caveat(n)
    if caveat.endswith("no interval"):
        return f"(n/a: {caveat})"
    text = f"[{ci.low:.4f}, {ci.high:.4f}]" if ci is not None and is_finite(ci.low) else ""
    return f"{text} ({caveat})" if text and caveat else text


def paired_cells(p: PairedColumns, n_own: int | None = None) -> list[str]:
    if p.n_paired is None:
        return ["n/a"] * 4
    d = format_difference(p.diff) + (f" (n={p.n_paired})" if n_own is not None and p.n_paired != n_own else "")
    bc = f"{p.b} / {p.c}" if p.binary else "n/a (not 0/1)"
    return [d, format_ci_bounds(p.ci_low, p.ci_high, p.n_paired), bc, format_p(p.mcnemar_p)]


def condition_cell(c: Condition) -> str:
    return warned_label(c.label, c.masks_nothing)


def warned_label(label: str, masks_nothing: bool) -> str:
    return f"{label} **(WARNING: 0 neurons masked)**" if masks_nothing else label


def set_cell(label: str, neurons: int) -> str:
    return f"{label} **(WARNING: empty set)**" if neurons == 0 else label


def short_path(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def seeds_label(n_seeds: int, matched_to: str) -> str:
    return f"random mean over {n_seeds} seed(s) (matched to {matched_to})"


def accuracy_cells(row: AccuracyRow) -> list:
    return ([warned_label(row.condition, row.masked_nothing), row.n, format_accuracy(row.acc)]
            + paired_cells(row, row.n))


def random_mean_cells(r: RandomMeanRow) -> list:
    acc = (f"{format_accuracy(r.acc_mean)} ± {r.acc_std:.4f} "
           f"[{format_accuracy(r.acc_min)}, {format_accuracy(r.acc_max)}]")
    # no seed paired with an unmasked run: no difference to summarise
    diff = (f"{format_difference(r.diff_mean)} [{format_difference(r.diff_min)}, {format_difference(r.diff_max)}]"
            if is_finite(r.diff_mean) else "n/a")
    return [seeds_label(r.n_seeds, r.matched_to), "", acc, diff, "(min, max over seeds)", "", ""]


def percent(x: float) -> str:
    return f"{100 * x:.3f}%"


def jaccard_cell(x) -> str:
    return f"{x:.3f}" if is_finite(x) else "n/a"


def stability_cell(r: StabilityRow) -> str:
    if not r.recorded:
        return "not recorded"
    if r.unstable:
        return f"**unstable (< {r.threshold:g})**"
    return f"stable (>= {r.threshold:g})" if r.halves_jaccard is not None else "n/a"


def p_cell(p, n: int) -> str:
    return f"{p:.3f} (n={n})" if n and is_finite(p) else "-"


def spread_cells(mean, low, high) -> list[str]:
    return [format_difference(mean), format_difference(low), format_difference(high)]


def cultural_cells(m: ConditionMeasures) -> list:
    p = m.cultural
    return [m.cultural_items, p.n, format_difference(p.diff), format_ci(p.ci, p.n)]


def cost_cells(m: ConditionMeasures) -> list[str]:
    """Perplexity ratio (with its interval) per perplexity task, then the change per NLU control."""
    return ([f"{format_ratio(v.ratio)} {format_ratio_ci(v.ci, v.n)}" if v else "n/a" for v in m.ppl.values()]
            + [format_difference(v.diff) if v and v.n else "n/a" for v in m.nlu.values()])


def share_cell(cell) -> str:
    return f"{cell.share:.3f} (n={cell.n})" if cell.n else "-"
