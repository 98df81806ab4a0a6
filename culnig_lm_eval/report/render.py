"""Build ``report.md`` (and its PNG figures, and ``report.json``) from lm-eval output folders."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .._io import atomic_folder, write_text
from . import figures
from .analysis import (
    DEFAULT_NLU_TASKS,
    ModelAnalysis,
    Options,
    PairedColumns,
    SpecificityRow,
    aggregate_mismatches,
    analyse,
    layer_distribution,
    specificity_verdict,
    summary_over,
)
from .collect import Collection, Condition, collect
from .instances import aggregate_instance_scores

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------
def _ok(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def format_accuracy(x) -> str:
    return f"{x:.4f}" if _ok(x) else "n/a"


def format_difference(x) -> str:
    return f"{x:+.4f}" if _ok(x) else "n/a"


def format_ci(ci) -> str:
    return f"[{ci.low:+.4f}, {ci.high:+.4f}]" if ci is not None and _ok(ci.low) else "n/a"


def format_ci_bounds(low, high) -> str:
    return f"[{low:+.4f}, {high:+.4f}]" if _ok(low) and _ok(high) else "n/a"


def format_p(p) -> str:
    if not _ok(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4g}"


def format_ratio(x) -> str:
    return f"{x:.4f}" if _ok(x) else "n/a"


def ci_label(alpha: float) -> str:
    """Column label of a ``1 - alpha`` interval, e.g. "90% CI" for alpha 0.1."""
    return f"{100 * (1 - alpha):g}% CI"


def esc(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def code(text) -> str:
    return f"`{str(text).replace('`', '')}`"


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return out + [""]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")[:60] or "model"


def _rel(path: Path, out_dir: Path) -> str:
    try:
        return path.relative_to(out_dir).as_posix()
    except ValueError:
        return str(path)


def _paired_cells(p: PairedColumns, n_own: int | None = None) -> list[str]:
    if p.n_paired is None:
        return ["n/a"] * 4
    d = format_difference(p.diff) + (f" (n={p.n_paired})" if n_own is not None and p.n_paired != n_own else "")
    bc = f"{p.b} / {p.c}" if p.binary else "n/a (not 0/1)"
    return [d, format_ci_bounds(p.ci_low, p.ci_high), bc, format_p(p.mcnemar_p)]


# ----------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------
class _Report:
    def __init__(self, out_dir: Path, opts: Options):
        self.out_dir = out_dir
        self.fig_dir = out_dir / "figures"
        self.opts = opts
        self.lines: list[str] = []
        self.figures: list[Path] = []
        self.rows: list[dict] = []  # report.json

    def add(self, *lines):
        self.lines.extend(lines)

    def figure(self, path: Path, alt: str):
        self.figures.append(path)
        self.add(f"![{esc(alt)}]({_rel(path, self.out_dir)})", "")


def build_report(run_dirs, out_dir, sets_dir=None, instance_scores=None, ppl_threshold: float = 1.10,
                 n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05,
                 nlu_tasks=DEFAULT_NLU_TASKS, cultures=(), title: str | None = None) -> Path:
    """Read every lm-eval output under ``run_dirs`` and write ``out_dir/report.md``.

    Args:
        run_dirs: folders (searched recursively for ``results_*.json``) or results files.
        out_dir: where ``report.md``, ``report.json`` and ``figures/*.png`` go.
        sets_dir: extra folder in which to look for the neuron-set files named in ``neurons=``.
        instance_scores: optional JSONL of ``{"set", "culture", "topic", "doc_id", "score"}``.
        ppl_threshold: largest general-perplexity ratio (masked / unmasked) a "specific" set may have.
        n_resamples, seed, alpha: paired bootstrap settings (percentile ``1 - alpha`` interval).
        nlu_tasks: task names reported as general NLU controls.
        cultures: extra culture names for recognising ``<task>_<culture>`` tasks.

    Returns the path of ``report.md``.
    """
    out_dir = Path(out_dir)
    opts = Options(n_resamples=n_resamples, seed=seed, alpha=alpha, ppl_threshold=ppl_threshold,
                   nlu_tasks=tuple(nlu_tasks), extra_cultures=tuple(cultures))
    _refuse_foreign_folder(out_dir)
    missing = [str(d) for d in run_dirs if not Path(d).exists()]
    if missing:
        raise FileNotFoundError(f"run folder {', '.join(missing)} does not exist; give the --output_path "
                                "folder(s) of lm_eval --log_samples runs")
    col = collect(run_dirs, sets_dir=sets_dir)
    if not col.conditions:
        found = (f"{len(col.results_files)} results file(s) but none readable: {col.notes[0]}" if col.results_files
                 else "no lm-eval results (results_*.json)")
        raise ValueError(f"{found} under {', '.join(str(d) for d in run_dirs)}; give the --output_path "
                         "folder(s) of lm_eval --log_samples runs")
    groups: dict[str, list[Condition]] = {}
    for c in col.conditions:
        groups.setdefault(c.base_key, []).append(c)
    analyses = [analyse(conds, opts) for _, conds in sorted(groups.items())]
    with atomic_folder(out_dir) as staging:
        rep = _Report(staging, opts)
        _write_report(rep, col, analyses, run_dirs, instance_scores, title)
        _pause_for_tests()
    return out_dir / "report.md"


REPORT_FILES = {"report.md", "report.json", "figures"}


def _refuse_foreign_folder(out_dir: Path):
    """The report folder is replaced as a whole: never replace a folder holding anything else."""
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in REPORT_FILES)
        if foreign:
            raise ValueError(f"--out {out_dir} holds other files ({', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}) and would be replaced as a whole; "
                             "choose a new or report-only folder")


def _pause_for_tests():
    """Test hook: ``CULNIG_REPORT_TEST_PAUSE=seconds`` sleeps while the new report is staged, so
    the fault-injection tests can interrupt the write at a known point."""
    delay = os.environ.get("CULNIG_REPORT_TEST_PAUSE")
    if delay:
        time.sleep(float(delay))


def _write_report(rep: _Report, col: Collection, analyses: list[ModelAnalysis], run_dirs, instance_scores, title):
    """Fill ``rep.out_dir`` (a staging folder) with report.md, report.json and figures/."""
    notes = list(col.notes)
    _header(rep, col, analyses, run_dirs, title)
    multi = len(analyses) > 1
    used_slugs = set()
    for ma in analyses:
        s = slug(ma.base_model)
        while s in used_slugs:
            s += "_"
        used_slugs.add(s)
        h = "###" if multi else "##"
        if multi:
            rep.add(f"## Model {code(ma.base_model)}", "", f"Base model_args: {code(ma.base_key)}", "")
        _section_accuracy(rep, ma, h, s)
        _section_culture_matrix(rep, ma, h, s)
        _section_neurons(rep, ma, h, s)
        _section_specificity(rep, ma, h, s)
    mismatches = [m for ma in analyses for m in aggregate_mismatches(ma)]
    if mismatches:
        notes.append("Per-sample records disagree with lm-eval's own aggregate for: " + "; ".join(mismatches)
                     + " (the report uses the per-sample records).")
    elif analyses:
        notes.append("Check: every per-sample mean used here equals lm-eval's aggregate in the results file.")
    _section_instances(rep, instance_scores)
    _section_skipped(rep, col, analyses)
    if notes:
        rep.add("## Notes", "", *[f"- {n}" for n in notes], "")
    write_text(rep.out_dir / "report.md", "\n".join(rep.lines).rstrip() + "\n")
    write_text(rep.out_dir / "report.json", json.dumps({"rows": rep.rows}, indent=1, default=str))


# ----------------------------------------------------------------------------------------
def _header(rep: _Report, col: Collection, analyses: list[ModelAnalysis], run_dirs, title):
    o = rep.opts
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rep.add(f"# {title or 'Culture-neuron masking report'}", "")
    rep.add(f"Generated {now} by `culnig-report` from {', '.join(code(d) for d in run_dirs)} "
            f"({len(col.results_files)} results file(s)).", "")
    rep.add(
        "How to read the numbers: every accuracy and difference below is recomputed from the per-sample "
        "records (`samples_<task>_<date>.jsonl`). A difference is **masked - unmasked** on the same items "
        "(paired by task and `doc_id`). "
        f"The {ci_label(o.alpha)} is a percentile interval from a paired bootstrap over items "
        f"({o.n_resamples} resamples, seed {o.seed}). `b / c` are the discordant items (b: right only when "
        "masked, c: right only unmasked) and p is the exact two-sided McNemar test "
        "p = min(1, 2 sum_{k<=min(b,c)} C(b+c,k) 0.5^(b+c)) (p = 1 when b + c = 0).", "")
    for ma in analyses:
        rep.add(f"## Runs: {code(ma.base_model)}", "")
        rep.add(f"Model: {code(ma.base_model)} (base model_args {code(ma.base_key)}).", "")
        rows = []
        for c in _ordered(ma):
            files = ", ".join(f"{code(s.spec)}" + ("" if s.neuron_set is not None else f" ({s.error})")
                              for s in c.sets) or "-"
            rows.append([_condition_cell(c), c.kind, files, ", ".join(code(_short(p)) for p in c.results_files)])
        rep.add(*table(["condition", "kind", "neuron-set files", "results file(s)"], rows))
        if warnings := _empty_set_warnings(ma):
            rep.add(*[f"- {w}" for w in warnings], "")
        rows = []
        for t in ma.tasks:
            recs = [(c, c.tasks[t]) for c in _ordered(ma) if t in c.tasks]
            r0 = recs[0][1]
            ns = sorted({r.n_items for _, r in recs})
            orig = sorted({r.n_original for _, r in recs if r.n_original is not None})
            limit = sorted({_fmt_limit(r.limit) for _, r in recs if r.limit not in (None, "None")})
            metric = ma.metric.get(t) or (next((m for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")
                                                if m in r0.pairs), None) if t in ma.ppl_tasks else None)
            filt = sorted({r.filter for _, r in recs if r.filter})
            kind = ("general perplexity" if t in ma.ppl_tasks else "NLU control" if t in ma.nlu_tasks
                    else "no per-sample records" if t in ma.no_sample_tasks else "accuracy")
            rows.append([
                t, kind, r0.output_type or "?", (metric or "-") + (f" (filter {', '.join(filt)})" if filt else ""),
                "/".join(map(str, ns)), "/".join(map(str, orig)) or "?", ", ".join(limit) or "-",
                r0.dataset or "?", len(recs)])
        rep.add("Tasks that ran (items = documents in the per-sample logs; \"docs in task\" = lm-eval's "
                "`n-samples.original`):", "")
        rep.add(*table(["task", "role", "output type", "metric used", "items", "docs in task", "--limit",
                        "dataset", "conditions"], rows))
        sampled = [t for t in ma.tasks for c in ma.conditions if t in c.tasks and c.tasks[t].n_original
                   and c.tasks[t].n_items < c.tasks[t].n_original]
        if sampled:
            rep.add(f"**Data caveat:** {', '.join(sorted(set(sampled)))} ran on a subset of the task's documents "
                    "(`--limit` or a sampled data file); the numbers describe those items only.", "")
        rep.add("Where a task's documents themselves come from a sample of the original benchmark, the "
                "counts above are all the report can vouch for: conclusions hold for these items only.", "")


def _condition_cell(c: Condition) -> str:
    return f"{c.label} **(WARNING: 0 neurons masked)**" if c.masks_nothing else c.label


def _empty_set_warnings(ma: ModelAnalysis) -> list[str]:
    return [f"**WARNING: {c.label} masked 0 neurons** (its neuron set(s) are empty): its numbers are the "
            "unmasked model's again, not the effect of masking anything." for c in ma.conditions if c.masks_nothing]


def _set_cell(label: str, neurons: int) -> str:
    return f"{label} **(WARNING: empty set)**" if neurons == 0 else label


def _fmt_limit(x) -> str:
    try:
        f = float(x)
        return str(int(f)) if f.is_integer() else f"{f:g}"
    except (TypeError, ValueError):
        return str(x)


def _short(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def _ordered(ma: ModelAnalysis) -> list[Condition]:
    out = [ma.unmasked] if ma.unmasked else []
    for s in ma.set_conds:
        out.append(s)
        out += ma.random_groups.get(s.key, [])
    done = {c.key for c in out}
    for g in ma.random_groups.values():
        out += [c for c in g if c.key not in done]
    return out


def _group_blocks(ma: ModelAnalysis):
    """(set condition or None, [random seeds matched to it]) in report order."""
    blocks = [(s, ma.random_groups.get(s.key, [])) for s in ma.set_conds]
    keys = {s.key for s in ma.set_conds}
    blocks += [(None, g) for k, g in ma.random_groups.items() if k not in keys]
    return blocks


# ----------------------------------------------------------------------------------------
def _section_accuracy(rep: _Report, ma: ModelAnalysis, h: str, s: str):
    rep.add(f"{h} Accuracy per task", "")
    tasks = ma.acc_tasks + ma.nlu_tasks
    if not tasks:
        rep.add("No accuracy task with per-sample records ran; section dropped.", "")
        return
    if ma.unmasked is None:
        rep.add("**No unmasked run of this model was found**: accuracies are listed, but no difference, "
                "interval or test can be computed.", "")
    if ma.no_sample_tasks:
        rep.add(f"Tasks without per-sample records (run without `--log_samples`?) are left out: "
                f"{', '.join(ma.no_sample_tasks)}.", "")
    # overview
    rows = []
    for c in _ordered(ma):
        rows.append([c.label] + [format_accuracy(ma.accuracy(c, t)[1]) for t in tasks])
    for key, group in ma.random_groups.items():
        lab = f"random mean over {len(group)} seed(s) (matched to {group[0].group_label})"
        rows.append([lab] + [format_accuracy(summary_over([ma.accuracy(c, t)[1] for c in group])["mean"]) for t in tasks])
    rep.add("Overview (accuracy of each condition on all of its items; metric per task in the table of tasks "
            "above):", "")
    rep.add(*table(["condition"] + tasks, rows))
    # per task
    for t in tasks:
        m = ma.metric[t]
        filt = sorted({c.tasks[t].filter for c in ma.conditions if t in c.tasks and c.tasks[t].filter})
        rep.add(f"{h}# {t}", "", f"Metric: per-sample `{m}`" + (f" (filter `{', '.join(filt)}`)" if filt else "")
                + (" - `acc` was not logged, so this is the fallback." if m != "acc" else "") + ".", "")
        rows = []
        if ma.unmasked is not None and t in ma.unmasked.tasks:
            n, acc = ma.accuracy(ma.unmasked, t)
            rows.append(["unmasked", n, format_accuracy(acc), "-", "-", "-", "-"])
        for setc, seeds in _group_blocks(ma):
            if setc is not None and t in setc.tasks:
                rows.append(_acc_row(rep, ma, setc, t))
            diffs, accs = [], []
            for c in seeds:
                if t in c.tasks:
                    rows.append(_acc_row(rep, ma, c, t))
                    p = ma.compare(c, {t: None})
                    diffs.append(p.diff if p else float("nan"))
                    accs.append(ma.accuracy(c, t)[1])
            if accs:
                sa, sd = summary_over(accs), summary_over(diffs)
                rows.append([
                    f"random mean over {sa['n']} seed(s) (matched to {seeds[0].group_label})", "",
                    f"{format_accuracy(sa['mean'])} ± {sa['std']:.4f} [{format_accuracy(sa['min'])}, {format_accuracy(sa['max'])}]",
                    f"{format_difference(sd['mean'])} [{format_difference(sd['min'])}, {format_difference(sd['max'])}]" if sd["n"] else "n/a",
                    "(min, max over seeds)", "", ""])
                rep.rows.append({"model": ma.base_model, "task": t, "condition": f"random mean ({seeds[0].group_label})",
                                 "metric": m, "acc_mean": sa["mean"], "acc_std": sa["std"], "acc_min": sa["min"],
                                 "acc_max": sa["max"], "diff_mean": sd["mean"], "diff_min": sd["min"],
                                 "diff_max": sd["max"]})
        rep.add(*table(["condition", "n", "accuracy", "Δ vs unmasked", ci_label(rep.opts.alpha),
                        "b / c", "McNemar p"], rows))
    # figures
    series = []
    if ma.unmasked is not None:
        series.append({"label": "unmasked", "values": [ma.accuracy(ma.unmasked, t)[1] for t in tasks]})
    dseries = []
    for setc, seeds in _group_blocks(ma):
        if setc is not None:
            series.append({"label": setc.label, "values": [ma.accuracy(setc, t)[1] for t in tasks]})
            if ma.unmasked is not None:
                ps = [ma.compare(setc, {t: None}) for t in tasks]
                dseries.append({"label": setc.label, "values": [p.diff for p in ps],
                                "low": [p.ci.low for p in ps], "high": [p.ci.high for p in ps]})
        if seeds:
            per = [summary_over([ma.accuracy(c, t)[1] for c in seeds]) for t in tasks]
            lab = f"random ({len(seeds)} seeds, matched to {seeds[0].group_label}): mean, min-max"
            series.append({"label": lab, "values": [x["mean"] for x in per], "low": [x["min"] for x in per],
                           "high": [x["max"] for x in per], "hatch": "//"})
            if ma.unmasked is not None:
                per = [summary_over([ma.compare(c, {t: None}).diff for c in seeds if t in c.tasks]) for t in tasks]
                dseries.append({"label": lab, "values": [x["mean"] for x in per], "low": [x["min"] for x in per],
                                "high": [x["max"] for x in per], "hatch": "//"})
    if series:
        p = figures.grouped_bars(rep.fig_dir / f"{s}_accuracy.png", tasks, series,
                                 f"Accuracy per task - {ma.base_model}", "accuracy")
        rep.figure(p, "accuracy per task")
    if dseries:
        p = figures.grouped_bars(rep.fig_dir / f"{s}_accuracy_change.png", tasks, dseries,
                                 f"Accuracy change vs unmasked ({ci_label(rep.opts.alpha)}; random: min-max) - {ma.base_model}",
                                 "accuracy change (masked - unmasked)", zero_line=True)
        rep.figure(p, "accuracy change per task")


def _acc_row(rep: _Report, ma: ModelAnalysis, c: Condition, t: str) -> list:
    row = ma.accuracy_row(c, t)
    if row.n_paired is not None:
        rep.rows.append(asdict(row))
    return [_condition_cell(c), row.n, format_accuracy(row.acc)] + _paired_cells(row, row.n)


# ----------------------------------------------------------------------------------------
def _section_culture_matrix(rep: _Report, ma: ModelAnalysis, h: str, s: str):
    rep.add(f"{h} Culture x culture", "")
    rows_c = [c for c in ma.set_conds if c.cultures and len(c.sets) == 1]
    if not ma.families:
        rep.add("No per-culture task ran (no `<task>_<culture>` names and no `doc[\"culture\"]` field); "
                "section dropped.", "")
        return
    if not rows_c:
        rep.add("No culture-specific neuron set ran (no set with a `culture` in its metadata); section dropped.", "")
        return
    if ma.unmasked is None:
        rep.add("No unmasked run: the matrix needs one; section dropped.", "")
        return
    shown = 0
    for fam in ma.families:
        fam_tasks = {t for sel in fam.items.values() for t in sel}
        rows_c = [c for c in ma.set_conds if c.cultures and len(c.sets) == 1 and fam_tasks & set(c.tasks)]
        if not rows_c or not fam_tasks & set(ma.unmasked.tasks):
            continue
        shown += 1
        cols = sorted(fam.items, key=str.lower)
        how = (f"tasks `{fam.name}_<culture>`" if fam.kind == "suffix" else f"task `{fam.name}`, split by "
               "`doc[\"culture\"]`")
        rep.add(f"{h}# {fam.name}", "", f"Items: {how}. Cell (i, j) = accuracy change on culture j's items when "
                "masking culture i's set (masked - unmasked, paired); `*` = McNemar p < 0.05; the boxed / bold "
                "cells are the set's own culture.", "")
        vals = np.full((len(rows_c), len(cols)), np.nan)
        marks = np.zeros_like(vals, dtype=bool)
        detail, diag, diag_vals, off_vals = [], [], [], []
        for i, c in enumerate(rows_c):
            for j, cul in enumerate(cols):
                cell = ma.culture_cell(c, fam, cul)
                if cell is None:
                    continue
                vals[i, j], marks[i, j] = cell.diff, _ok(cell.mcnemar_p) and cell.mcnemar_p < 0.05
                detail.append([c.label, cul, cell.n_paired, format_accuracy(cell.acc_masked_paired),
                               format_accuracy(cell.acc_unmasked_paired)] + _paired_cells(cell))
                rep.rows.append(asdict(cell))
                if cell.own_culture:
                    diag.append((i, j))
                    diag_vals.append(cell.diff)
                else:
                    off_vals.append(cell.diff)
        n_cols = [ma.compare(ma.unmasked, fam.items[cul]).n for cul in cols]  # unmasked items per culture
        trows = []
        for i, c in enumerate(rows_c):
            cells = []
            for j in range(len(cols)):
                v = vals[i, j]
                txt = format_difference(v) + ("*" if marks[i, j] else "") if _ok(v) else "n/a"
                cells.append(f"**{txt}**" if (i, j) in diag else txt)
            trows.append([c.label] + cells)
        for c in rows_c:
            seeds = ma.random_groups.get(c.key, [])
            if seeds:
                means = [summary_over([ma.compare(r, fam.items[cul]).diff for r in seeds])["mean"] for cul in cols]
                trows.append([f"random mean over {len(seeds)} seed(s) (matched to {c.label})"] + [format_difference(x) for x in means])
        rep.add(*table(["masked set \\ culture"] + [f"{cul} (n={n})" for cul, n in zip(cols, n_cols)], trows))
        if diag_vals:
            rep.add(f"Own culture (diagonal): mean Δ {format_difference(float(np.mean(diag_vals)))} over {len(diag_vals)} cell(s); "
                    + (f"other cultures: mean Δ {format_difference(float(np.mean(off_vals)))} over {len(off_vals)} cell(s)."
                       if off_vals else "no off-diagonal cell."), "")
        p = figures.culture_heatmap(rep.fig_dir / f"{s}_culture_matrix_{slug(fam.name)}.png",
                                    [c.label for c in rows_c], cols, vals,
                                    f"Accuracy change by culture - {fam.name}\n({ma.base_model}; * McNemar p<0.05)",
                                    marks=marks, diagonal=diag)
        rep.figure(p, f"culture x culture accuracy change, {fam.name}")
        rep.add("Cells in detail:", "")
        rep.add(*table(["masked set", "culture", "n", "acc masked", "acc unmasked", "Δ",
                        ci_label(rep.opts.alpha), "b / c", "McNemar p"], detail))
    if not shown:
        rep.add("No culture-specific set ran on a per-culture task together with the unmasked model "
                f"(per-culture tasks: {', '.join(f.name for f in ma.families)}); section dropped.", "")


# ----------------------------------------------------------------------------------------
def _section_neurons(rep: _Report, ma: ModelAnalysis, h: str, s: str):
    rep.add(f"{h} Where the neurons are", "")
    sets, randoms, seen = [], [], set()
    for c in _ordered(ma):
        for si in c.sets:
            k = str(si.path.resolve()) if si.path else si.spec
            if k in seen or si.neuron_set is None:
                continue
            seen.add(k)
            lab = c.label if len(c.sets) == 1 else f"{si.stem} (in {c.label})"
            (randoms if si.is_random else sets).append((lab, si, c))
    missing = sorted({si.spec for c in ma.conditions for si in c.sets if si.neuron_set is None})
    if missing:
        rep.add(f"Neuron-set files that could not be read (conditions labelled by file stem): "
                f"{', '.join(code(m) for m in missing)}. Use `--sets-dir` to say where they are.", "")
    if not sets and not randoms:
        rep.add("No neuron-set file could be read for this model; section dropped.", "")
        return
    layers = max(si.neuron_set.num_layers for _, si, _ in sets + randoms)
    thirds = np.array_split(np.arange(layers), 3)
    names = ("shallow", "middle", "deep")
    rng = [f"{n} = layers {t[0]}-{t[-1]}" if t.size else f"{n} = none" for n, t in zip(names, thirds)]
    rep.add(f"Depth split into thirds of the {layers} layers: {'; '.join(rng)}. Fraction = share of all neurons "
            "of that module kind in the model (`NeuronSet.fraction()`).", "")
    rows = []
    for lab, si, _ in sets + randoms:
        dist = layer_distribution(ma.base_model, lab, si, thirds)
        rep.rows.append(asdict(dist))
        overall = f"{100 * dist.fraction_overall:.3f}%" if dist.fraction_overall is not None else "n/a"
        rows.append([_set_cell(lab, dist.neurons), code(dist.file), dist.method or "?", dist.selection or "-",
                     dist.neurons, ", ".join(f"{k} {v}" for k, v in dist.per_kind.items()),
                     ", ".join(f"{k} {100 * v:.3f}%" for k, v in dist.fraction_per_kind.items()) or "n/a", overall]
                    + [f"{x} ({100 * x / dist.neurons:.0f}%)" if dist.neurons else "0" for x in dist.per_third])
    rep.add(*table(["set", "file", "method", "selection", "neurons", "per kind", "fraction per kind",
                    "fraction overall", "shallow", "middle", "deep"], rows))
    if randoms:
        lines = []
        for lab, si, c in randoms:
            target = next((x for x in ma.set_conds if x.key == c.group and len(x.sets) == 1), None)
            if target is not None and target.sets[0].neuron_set is not None:
                same = target.sets[0].neuron_set.per_layer() == si.neuron_set.per_layer()
                lines.append(f"- {lab}: per-layer counts {'match' if same else '**do not match**'} {target.label}.")
        if lines:
            rep.add("Random baselines keep the per-layer, per-kind counts of the set they are matched to:", "", *lines, "")
    if sets:
        rows = []
        per = [(lab, si.neuron_set.per_layer()) for lab, si, _ in sets]
        for layer in range(layers):
            rows.append([layer] + [sum(v[layer] for v in pl.values() if layer < len(v)) for _, pl in per])
        rep.add("Neurons per layer (all module kinds):", "")
        rep.add(*table(["layer"] + [lab for lab, _ in per], rows))
        p = figures.neuron_layers(rep.fig_dir / f"{s}_neuron_layers.png",
                                  [(lab, si.neuron_set.per_layer(), si.neuron_set.num_layers) for lab, si, _ in sets],
                                  f"Neurons per layer - {ma.base_model}")
        rep.figure(p, "neurons per layer")


# ----------------------------------------------------------------------------------------
def _section_specificity(rep: _Report, ma: ModelAnalysis, h: str, s: str):
    o = rep.opts
    rep.add(f"{h} Specificity", "")
    if ma.unmasked is None:
        rep.add("No unmasked run: nothing to compare; section dropped.", "")
        return
    if not ma.set_conds and not ma.random_groups:
        rep.add("No masked run; section dropped.", "")
        return
    ppl_task = ma.ppl_tasks[0] if ma.ppl_tasks else None
    rep.add("Verdict rule: a set is **specific** when its cultural accuracy drops (Δ < 0) by more than the mean "
            "drop of its size-matched random baselines AND the general perplexity ratio (masked / unmasked"
            + (f", task `{ppl_task}`" if ppl_task else "") + f") is <= **{o.ppl_threshold:g}** (threshold; "
            "`--ppl-threshold`). Otherwise it is **not specific**, with the reason. \"Cultural items\": "
            + ("for a culture set, the items of its culture in the per-culture tasks; for a culture-general set, "
               "all per-culture items; random baselines use the items of the set they are matched to."
               if ma.cultural_from_families else
               "no per-culture task ran, so all non-NLU accuracy tasks (" + ", ".join(ma.cultural_tasks) + ")."), "")
    notes = []
    if not ma.ppl_tasks:
        notes.append("no general-perplexity task ran (`general_ppl` or a `loglikelihood_rolling` task such as "
                     "wikitext): the perplexity columns are empty and no set can be called specific")
    if not ma.random_groups:
        notes.append("no random baseline ran: no set can be called specific")
    if not ma.nlu_tasks:
        notes.append(f"no NLU control ({', '.join(o.nlu_tasks)}) ran")
    if notes:
        rep.add(*[f"- Note: {n}." for n in notes], "")
    header = ["set", "cultural items", "n", "Δ cultural acc", ci_label(o.alpha), "random Δ mean [min, max]"]
    header += [f"ppl ratio {t}" for t in ma.ppl_tasks] + [f"Δ {t}" for t in ma.nlu_tasks] + ["verdict"]
    rows, points = [], []

    def measures(c: Condition):
        sel, what = ma.cultural_selection(ma.cond_cultures(c))
        p = ma.compare(c, sel)
        ppl = {t: ma.ppl(c, t) for t in ma.ppl_tasks}
        nlu = {t: ma.compare(c, {t: None}) for t in ma.nlu_tasks}
        return sel, what, p, ppl, nlu

    def cells(c, what, p, ppl, nlu):
        out = [what, p.n, format_difference(p.diff), format_ci(p.ci)]
        return out, [(f"{format_ratio(ppl[t].ratio)} {format_ratio_ci(ppl[t].ci)}" if ppl[t] else "n/a") for t in ma.ppl_tasks] + \
            [format_difference(nlu[t].diff) if nlu[t] and nlu[t].n else "n/a" for t in ma.nlu_tasks]

    for setc, seeds in _group_blocks(ma):
        rand = []
        for r in seeds:
            _, what, p, ppl, nlu = measures(r)
            rand.append((r, what, p, ppl, nlu))
        rd = summary_over([x[2].diff for x in rand])
        if setc is not None:
            _, what, p, ppl, nlu = measures(setc)
            verdict = specificity_verdict(p, rd, ppl.get(ppl_task) if ppl_task else None, ppl_task, o,
                                          masked_nothing=setc.masks_nothing)
            a, b = cells(setc, what, p, ppl, nlu)
            rows.append([f"**{_condition_cell(setc)}**"] + a + [f"{format_difference(rd['mean'])} [{format_difference(rd['min'])}, {format_difference(rd['max'])}]"
                                                    if rd["n"] else "no random baseline"] + b + [verdict])
            points.append({"x": -p.diff, "y": ppl[ppl_task].ratio if ppl_task and ppl[ppl_task] else float("nan"),
                           "label": setc.label, "random": False, "group": setc.label})
            rep.rows.append(asdict(SpecificityRow(
                **vars(PairedColumns.of(p)), model=ma.base_model, specificity=setc.label, cultural_items=what,
                random_diff_mean=rd["mean"], random_diff_min=rd["min"], random_diff_max=rd["max"], n_random=rd["n"],
                ppl_ratio={t: (v.ratio if v else None) for t, v in ppl.items()},
                nlu_diff={t: (v.diff if v else None) for t, v in nlu.items()}, verdict=verdict,
                masked_nothing=setc.masks_nothing)))
        for r, what, p, ppl, nlu in rand:
            a, b = cells(r, what, p, ppl, nlu)
            rows.append([_condition_cell(r)] + a + ["(baseline)"] + b + ["baseline"])
            points.append({"x": -p.diff, "y": ppl[ppl_task].ratio if ppl_task and ppl[ppl_task] else float("nan"),
                           "label": r.label, "short": f"seed {r.seed}" if r.seed is not None else r.label,
                           "random": True, "group": setc.label if setc is not None else r.group_label})
    rep.add(*table(header, rows))
    if ma.ppl_tasks:
        rep.add("Perplexity: lm-eval's weighted perplexity exp(-sum loglik / sum units) over the same documents, "
                "from the per-sample `" + "`/`".join(sorted({v.metric for c in ma.conditions for t in ma.ppl_tasks
                                                             for v in [ma.ppl(c, t)] if v})) + "` records; the ratio's "
                "interval is a paired bootstrap over documents.", "")
        prow = []
        for c in _ordered(ma):
            for t in ma.ppl_tasks:
                v = ma.ppl(c, t)
                if v:
                    prow.append([c.label, t, v.metric, v.n, f"{v.ppl_a:.4g}", f"{v.ppl_b:.4g}", format_ratio(v.ratio), format_ratio_ci(v.ci)])
        rep.add(*table(["condition", "task", "metric", "docs", "perplexity", "unmasked", "ratio", "CI"], prow))
        pts = [p for p in points if _ok(p["y"]) and _ok(p["x"])]
        if pts:
            path = figures.specificity_scatter(rep.fig_dir / f"{s}_specificity.png", pts, o.ppl_threshold,
                                               f"Cultural drop vs general cost - {ma.base_model}")
            rep.figure(path, "specificity: cultural drop vs perplexity ratio")
    else:
        rep.add("No general-perplexity task ran, so the cultural-drop vs general-cost figure is dropped.", "")


def format_ratio_ci(ci) -> str:
    return f"[{ci.low:.4f}, {ci.high:.4f}]" if ci is not None and _ok(ci.low) else ""


# ----------------------------------------------------------------------------------------
def _format_share(cell) -> str:
    return f"{cell.share:.3f} (n={cell.n})" if cell.n else "-"


def _section_instances(rep: _Report, path):
    rep.add("## Instance-level view", "")
    if not path:
        rep.add("No `--instance-scores` file was given; section dropped.", "")
        return
    path = Path(path)
    if not path.is_file():
        rep.add(f"Instance-score file {code(path)} not found; section dropped.", "")
        return
    scores = aggregate_instance_scores(path)
    if not scores.tables:
        rep.add(f"{code(path)} holds no usable row; section dropped.", "")
        return
    bad = scores.unreadable_rows
    rep.add(f"From {code(path)}: per item (set, culture, topic, doc_id) the scores are summed; a cell is the fraction "
            "of items whose summed score is > 0 (n = items)." + (f" {bad} unreadable row(s) skipped." if bad else ""), "")
    for tab in scores.tables:
        rows = [[cul] + [_format_share(cell) for cell in tab.cells[i]] + [_format_share(tab.per_culture[i])]
                for i, cul in enumerate(tab.cultures)]
        rows.append(["all cultures"] + [_format_share(cell) for cell in tab.per_topic] + [_format_share(tab.overall)])
        rep.add(f"### {tab.set_label}", "")
        rep.add(*table(["culture \\ topic"] + tab.topics + ["all topics"], rows))
        if len(tab.cultures) * len(tab.topics) > 1:
            p = figures.instance_heatmap(rep.fig_dir / f"instances_{slug(tab.set_label)}.png", tab.cultures,
                                         tab.topics, tab.share_matrix(),
                                         f"Share of items with positive summed score - {tab.set_label}")
            rep.figure(p, f"instance scores {tab.set_label}")


def _section_skipped(rep: _Report, col: Collection, analyses: list[ModelAnalysis]):
    rep.add("## Skipped", "")
    rows = [[t, r, code(f)] for t, (r, f) in sorted(col.skipped.items())]
    multi = len(analyses) > 1
    rows += [[t, (f"{ma.base_model}: " if multi else "") + why, "culnig-report (pairing by doc_id and doc_hash)"]
             for ma in analyses for t, why in sorted(ma.unpaired.items())]
    if not rows:
        rep.add("No `skipped.json` in the run folders and every task's runs are on the same documents: "
                "no task was skipped.", "")
        return
    rep.add(*table(["task", "reason", "listed in"], rows))
