"""The transfer section of ``report.md`` (:mod:`.transfer` computes it; this only formats): the
per-culture table, the pooled transfer effect with its verdict, and the in-sample vs held-out figure."""

from __future__ import annotations

from pathlib import Path

from . import figures
from .cells import ci_label, format_accuracy, format_ci_bounds, format_difference, jaccard_cell, p_cell, small_sample_note
from .markdown import code, table
from .transfer import TransferSection


def _drop(x) -> str:
    return "not run" if x is None else format_difference(x)


def _specific(r) -> str:
    if r.specific_drop is None:
        return "-"
    return f"{format_difference(r.specific_drop)}, p {p_cell(r.specific_p, r.specific_n_random or 0)}, n={r.specific_n_items}"


def _neurons(r) -> str:
    if r.neurons is None:
        return "?"
    full = f" / {r.full_neurons}" if r.full_neurons is not None else ""
    overlap = f" (Jaccard {jaccard_cell(r.jaccard_full)})" if r.jaccard_full is not None else ""
    return f"{r.neurons}{full}{overlap}"


def render_transfer(add, sec: TransferSection, fig_path: Path, alpha: float, ppl_threshold: float,
                    heading: str = "##", figure=None) -> None:
    """Append the section's lines with ``add(*lines)``; ``figure(path, alt)`` places a figure."""
    ci = ci_label(alpha)
    add(f"{heading} Transfer: culture-general sets on cultures they were not selected on ({code(sec.model)})", "")
    add("Leave one culture out: for each culture c the culture-general set is selected again on the score tables "
        "without c's columns (task, control and CountryRC; c's items never enter it), then evaluated on c's "
        "items only, beside the unmasked model and its own random sets of the same size. **Held-out drop** = "
        "unmasked - masked accuracy on c's items; **in-sample drop** = the same for the set selected on every "
        "culture, c included, on the same items. Empirical p = (1 + #{random drops >= the drop}) / (1 + n "
        f"random), one-sided. The {ci} is a paired bootstrap over c's items. The culture-specific column is c's "
        "own culture set on its held-out topics (the main report's per-culture evaluation; its p among its own "
        "random sets).", "")
    for pooled in sec.pooled:
        rows = [r for r in sec.rows if r.selection == pooled.selection]
        add(f"**{code(pooled.selection)}**", "")
        add(*table(["held-out culture", "items", "unmasked acc", "in-sample drop", "held-out drop", ci,
                    "random drops mean", "5th pct", "95th pct", "empirical p", "neurons (held-out / full)",
                    "culture-specific set on its held-out topics"],
                   [[r.culture + (" **(WARNING: 0 neurons masked)**" if r.masked_nothing else ""), r.n_items,
                     format_accuracy(r.unmasked_acc), _drop(r.in_sample_drop), format_difference(r.held_out_drop),
                     format_ci_bounds(r.ci_low, r.ci_high, r.n_items), format_difference(r.random_drop_mean),
                     format_difference(r.random_drop_p5), format_difference(r.random_drop_p95),
                     p_cell(r.empirical_p, r.n_random), _neurons(r), _specific(r)] for r in rows]), "")
        add(*small_sample_note([r.n_items for r in rows], alpha))
    add("**Transfer effect** (mean over the held-out cultures, each weighing 1; its interval resamples items "
        "within each culture; its random baseline is the same mean of each random draw over the cultures). A "
        f"selection **transfers** when that mean drop lies beyond its random means (empirical p < {alpha:g}) at a "
        f"general cost the specificity verdict allows (the full set's perplexity ratio <= {ppl_threshold:g}, "
        "from the main report).", "")
    add(*table(["selection", "cultures", "items", "mean held-out drop", ci, "mean in-sample drop",
                "random means mean", "5th pct", "95th pct", "empirical p", "ppl ratio (full set)", "verdict"],
               [[code(p.selection), len(p.cultures), p.n_items, format_difference(p.held_out_drop),
                 format_ci_bounds(p.ci_low, p.ci_high, p.n_items), _drop(p.in_sample_drop),
                 format_difference(p.random_drop_mean), format_difference(p.random_drop_p5),
                 format_difference(p.random_drop_p95), p_cell(p.empirical_p, p.n_random),
                 f"{p.ppl_ratio:.4f} ({p.ppl_task})" if p.ppl_ratio is not None else "not measured", p.verdict]
                for p in sec.pooled]), "")
    if sec.notes:
        add(*[f"- Note: {n}." for n in sec.notes], "")
    panels = [{"label": p.selection, "cultures": [r.culture for r in sec.rows if r.selection == p.selection],
               **{key: [getattr(r, attr) for r in sec.rows if r.selection == p.selection]
                  for key, attr in (("in_sample", "in_sample_drop"), ("held_out", "held_out_drop"),
                                    ("random_low", "random_drop_p5"), ("random_high", "random_drop_p95"),
                                    ("random_mean", "random_drop_mean"))},
               "pooled": f"mean held-out drop {100 * p.held_out_drop:+.1f} points, p {p_cell(p.empirical_p, p.n_random)}"}
              for p in sec.pooled if p.cultures]
    if panels and figure is not None:
        path = figures.transfer_drops(fig_path, panels, f"In-sample vs held-out drop per culture - {sec.model}")
        figure(path, "in-sample vs held-out drop per culture")
