"""Build ``report.md`` (and its PNG figures, and ``report.json``) from lm-eval output folders.

The numbers are computed first, once per model, by :func:`.sections.model_report` (dataclass rows);
the functions here only format those rows as Markdown, call :mod:`.figures`, and write report.json
as the rows' ``asdict()`` -- the way lm-eval's ``utils.make_table`` formats results it is handed.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from dataclasses import asdict
from pathlib import Path

from .._io import atomic_folder, check_output_folder, write_text
from . import figures
from .analysis import DEFAULT_NLU_TASKS, ModelAnalysis, Options, analyse
from .cells import (
    accuracy_cells,
    ci_label,
    condition_cell,
    cost_cells,
    cultural_cells,
    format_accuracy,
    format_ci_bounds,
    small_sample_note,
    format_difference,
    format_p,
    format_ratio,
    format_ratio_ci,
    jaccard_cell,
    p_cell,
    paired_cells,
    percent,
    random_mean_cells,
    seeds_label,
    set_cell,
    share_cell,
    short_path,
    spread_cells,
    stability_cell,
    warned_label,
)
from .collect import Collection, Condition, collect
from .instances import InstanceScores, aggregate_instance_scores
from .markdown import code, esc, table
from .sections import (SIGNIFICANT_P, CultureMatrix, ModelReport, RandomMeanRow, TaskSeries, loglik_counterpart,
                       model_report)
from .stats import is_finite
from .transfer import TransferSection, transfer_sections
from .transfer_render import render_transfer

log = logging.getLogger(__name__)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")[:60] or "model"


def _rel(path: Path, out_dir: Path) -> str:
    try:
        return path.relative_to(out_dir).as_posix()
    except ValueError:
        return str(path)


# random sets matched to one set are listed one by one up to this many; a larger group (20 per set
# by default) is shown by its mean and spread, and every one of its rows stays in report.json
LIST_SEEDS_UP_TO = 3


def summarised_random_labels(ma: ModelAnalysis) -> set[str]:
    """Labels of the random conditions whose group is too large to list one by one."""
    return {c.label for group in ma.random_groups.values() if len(group) > LIST_SEEDS_UP_TO for c in group}


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

    def add(self, *lines):
        self.lines.extend(lines)

    def figure(self, path: Path, alt: str):
        self.figures.append(path)
        self.add(f"![{esc(alt)}]({_rel(path, self.out_dir)})", "")


def build_report(run_dirs, out_dir, sets_dir=None, instance_scores=None, ppl_threshold: float = 1.10,
                 n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05,
                 nlu_tasks=DEFAULT_NLU_TASKS, cultures=(), title: str | None = None,
                 what: str = "output folder", transfer_dirs=()) -> Path:
    """Read every lm-eval output under ``run_dirs`` and write ``out_dir/report.md``.

    ``out_dir`` is replaced as a whole, so it must be new, empty or an earlier report (``_io``:
    a folder holding anything else is refused, naming it as ``what``, e.g. ``--out``).

    Args:
        run_dirs: folders (searched recursively for ``results_*.json``) or results files.
        out_dir: where ``report.md``, ``report.json`` and ``figures/*.png`` go.
        sets_dir: extra folder in which to look for the neuron-set files named in ``neurons=``.
        instance_scores: optional JSONL of ``{"set", "culture", "topic", "doc_id", "score"}``.
        ppl_threshold: largest general-perplexity ratio (masked / unmasked) a "specific" set may have.
        n_resamples, seed, alpha: paired bootstrap settings (percentile ``1 - alpha`` interval).
        nlu_tasks: task names reported as general NLU controls.
        cultures: extra culture names for recognising ``<task>_<culture>`` tasks.
        transfer_dirs: folders of leave-one-culture-out evaluations (the transfer section, :mod:`.transfer`).

    Returns the path of ``report.md``.
    """
    out_dir = Path(out_dir)
    opts = Options(n_resamples=n_resamples, seed=seed, alpha=alpha, ppl_threshold=ppl_threshold,
                   nlu_tasks=tuple(nlu_tasks), extra_cultures=tuple(cultures))
    check_output_folder(out_dir, what, REPORT_LEGACY)
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
    # everything is computed here, before the first line is formatted
    models = [model_report(analyse(conds, opts)) for _, conds in sorted(groups.items())]
    transfers = transfer_sections(transfer_dirs, models, opts, sets_dir)
    scores = aggregate_instance_scores(instance_scores) if instance_scores and Path(instance_scores).is_file() else None
    with atomic_folder(out_dir, what, REPORT_LEGACY) as staging:
        rep = _Report(staging, opts)
        _write_report(rep, col, models, run_dirs, instance_scores, scores, title, transfers)
    return out_dir / "report.md"


# what a report folder held before output markers (``_io``)
REPORT_LEGACY = ("report.md", "report.json", "figures/", "figures/*")


def _write_report(rep: _Report, col: Collection, models: list[ModelReport], run_dirs, instance_path,
                  scores: InstanceScores | None, title, transfers: list[TransferSection] = ()):
    """Fill ``rep.out_dir`` (a staging folder) with report.md, report.json and figures/."""
    notes = list(col.notes)
    _header(rep, col, models, run_dirs, title)
    multi = len(models) > 1
    used_slugs = set()
    for mr in models:
        ma = mr.analysis
        s = slug(ma.base_model)
        while s in used_slugs:
            s += "_"
        used_slugs.add(s)
        h = "###" if multi else "##"
        if multi:
            rep.add(f"## Model {code(ma.base_model)}", "", f"Base model_args: {code(ma.base_key)}", "")
        _section_accuracy(rep, mr, h, s)
        _section_generation(rep, mr, h)
        _section_culture_matrix(rep, mr, h, s)
        _section_neurons(rep, mr, h, s)
        _section_stability(rep, mr, h)
        _section_specificity(rep, mr, h, s)
    for t in transfers:
        render_transfer(rep.add, t, rep.fig_dir / f"{slug(t.model)}_transfer.png", rep.opts.alpha,
                        rep.opts.ppl_threshold, heading="##", figure=rep.figure)
    mismatches = [m for mr in models for m in mr.aggregate_mismatches]
    if mismatches:
        notes.append("Per-sample records disagree with lm-eval's own aggregate for: " + "; ".join(mismatches)
                     + " (the report uses the per-sample records).")
    elif models:
        notes.append("Check: every per-sample mean used here equals lm-eval's aggregate in the results file.")
    _section_instances(rep, instance_path, scores)
    _section_skipped(rep, col, models)
    if notes:
        rep.add("## Notes", "", *[f"- {n}" for n in notes], "")
    write_text(rep.out_dir / "report.md", "\n".join(rep.lines).rstrip() + "\n")
    rows = [asdict(r) for mr in models for r in mr.json_rows()] + [asdict(r) for t in transfers for r in t.json_rows()]
    write_text(rep.out_dir / "report.json", json.dumps({"rows": rows}, indent=1, default=str))


# ----------------------------------------------------------------------------------------
def _header(rep: _Report, col: Collection, models: list[ModelReport], run_dirs, title):
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
    for mr in models:
        ma = mr.analysis
        rep.add(f"## Runs: {code(ma.base_model)}", "")
        rep.add(f"Model: {code(ma.base_model)} (base model_args {code(ma.base_key)}).", "")
        rows = []
        summarised = summarised_random_labels(ma)
        for c in ma.ordered_conditions():
            if c.label in summarised:
                continue
            files = ", ".join(f"{code(s.spec)}" + ("" if s.neuron_set is not None else f" ({s.error})")
                              for s in c.sets) or "-"
            rows.append([condition_cell(c), c.kind, files, ", ".join(code(short_path(p)) for p in c.results_files)])
        for group in ma.random_groups.values():
            if len(group) > LIST_SEEDS_UP_TO:
                specs = [s.spec for c in group for s in c.sets]
                rows.append([f"{len(group)} random sets (matched to {group[0].group_label})", "random",
                             f"{code(specs[0])} ... {code(specs[-1])}",
                             f"{sum(len(c.results_files) for c in group)} results files"])
        rep.add(*table(["condition", "kind", "neuron-set files", "results file(s)"], rows), "")
        if warnings := _empty_set_warnings(ma.conditions):
            rep.add(*[f"- {w}" for w in warnings], "")
        rows = [[t.task, t.role, t.output_type or "?",
                 (t.metric or "-") + (f" (filter {', '.join(t.filters)})" if t.filters else ""),
                 "/".join(map(str, t.items)), "/".join(map(str, t.docs_in_task)) or "?", ", ".join(t.limits) or "-",
                 t.dataset or "?", t.n_conditions] for t in mr.tasks]
        rep.add("Tasks that ran (items = documents in the per-sample logs; \"docs in task\" = lm-eval's "
                "`n-samples.original`):", "")
        rep.add(*table(["task", "role", "output type", "metric used", "items", "docs in task", "--limit",
                        "dataset", "conditions"], rows), "")
        if mr.subset_tasks:
            rep.add(f"**Data caveat:** {', '.join(mr.subset_tasks)} ran on a subset of the task's documents "
                    "(`--limit` or a sampled data file); the numbers describe those items only.", "")
        rep.add("Where a task's documents themselves come from a sample of the original benchmark, the "
                "counts above are all the report can vouch for: conclusions hold for these items only.", "")


def _empty_set_warnings(conditions: list[Condition]) -> list[str]:
    return [f"**WARNING: {c.label} masked 0 neurons** (its neuron set(s) are empty): its numbers are the "
            "unmasked model's again, not the effect of masking anything." for c in conditions if c.masks_nothing]


# ----------------------------------------------------------------------------------------
def _section_accuracy(rep: _Report, mr: ModelReport, h: str, s: str):
    ma, sec = mr.analysis, mr.accuracy
    rep.add(f"{h} Accuracy per task", "")
    tasks = sec.tasks
    if not tasks:
        rep.add("No accuracy task with per-sample records ran; section dropped.", "")
        return
    if ma.unmasked is None:
        rep.add("**No unmasked run of this model was found**: accuracies are listed, but no difference, "
                "interval or test can be computed.", "")
    if ma.no_sample_tasks:
        rep.add(f"Tasks without per-sample records (run without `--log_samples`?) are left out: "
                f"{', '.join(ma.no_sample_tasks)}.", "")
    summarised = summarised_random_labels(ma)
    if summarised:
        rep.add(f"Random sets: a group of more than {LIST_SEEDS_UP_TO} matched to one set is shown by its mean and "
                "spread (every random set's row is in report.json).", "")
    rows = [[seeds_label(r.n_seeds, r.label) if r.n_seeds else r.label] + [format_accuracy(x) for x in r.values]
            for r in sec.overview if r.n_seeds or r.label not in summarised]
    rep.add("Overview (accuracy of each condition on all of its items; metric per task in the table of tasks "
            "above):", "")
    rep.add(*table(["condition"] + tasks, rows), "")
    for ta in sec.per_task:
        m = ta.metric
        rep.add(f"{h}# {ta.task}", "", f"Metric: per-sample `{m}`"
                + (f" (filter `{', '.join(ta.filters)}`)" if ta.filters else "")
                + (" - `acc` was not logged, so this is the fallback." if m != "acc" else "") + ".", "")
        rows = []
        if ta.unmasked is not None:
            n, acc = ta.unmasked
            rows.append(["unmasked", n, format_accuracy(acc), "-", "-", "-", "-"])
        rows += [random_mean_cells(r) if isinstance(r, RandomMeanRow) else accuracy_cells(r) for r in ta.rows
                 if isinstance(r, RandomMeanRow) or r.condition not in summarised]
        rep.add(*table(["condition", "n", "accuracy", "Δ vs unmasked", ci_label(rep.opts.alpha),
                        "b / c", "McNemar p"], rows), "")
        rep.add(*small_sample_note([r.n_paired for r in ta.rows if not isinstance(r, RandomMeanRow)], rep.opts.alpha))
    if sec.accuracy_series:
        p = figures.grouped_bars(rep.fig_dir / f"{s}_accuracy.png", tasks, _bars(sec.accuracy_series),
                                 f"Accuracy per task - {ma.base_model}", "accuracy")
        rep.figure(p, "accuracy per task")
    if sec.difference_series:
        p = figures.grouped_bars(rep.fig_dir / f"{s}_accuracy_change.png", tasks, _bars(sec.difference_series),
                                 f"Accuracy change vs unmasked ({ci_label(rep.opts.alpha)}; random: min-max) - {ma.base_model}",
                                 "accuracy change (masked - unmasked)", zero_line=True)
        rep.figure(p, "accuracy change per task")


def _bars(series: list[TaskSeries]) -> list[dict]:
    """The series in :func:`figures.grouped_bars`' form; random seeds' bars are hatched."""
    return [{"label": f"random ({x.n_seeds} seeds, matched to {x.label}): mean, min-max" if x.n_seeds else x.label,
             "values": x.values, "low": x.low, "high": x.high, "hatch": "//" if x.n_seeds else None} for x in series]


# ----------------------------------------------------------------------------------------
def _section_generation(rep: _Report, mr: ModelReport, h: str):
    """Log-likelihood and generation accuracy side by side, with the parse-failure rates (only when a
    generation task ran)."""
    sec = mr.generation
    if not sec.tasks:
        return
    rep.add(f"{h} Log-likelihood vs generation", "")
    rep.add("`acc (loglik)`: the answer with the highest log-likelihood among the allowed ones, on the "
            "log-likelihood task named in the heading. `acc (generated)`: the answer the model writes itself "
            "(greedy decoding over the whole vocabulary, as the CULNIG paper scores it), read by "
            "`culnig_lm_eval.taskdata.generation.parse_label`. `parse failure`: share of items whose generated text "
            "holds no answer label; those items count as wrong. `Δ parse failure` is masked - unmasked on the "
            f"same items, with a paired bootstrap {ci_label(rep.opts.alpha)}.", "")
    for task, loglik in sec.tasks:
        rep.add(f"{h}# Generation: {task}" + (f" vs {loglik}" if loglik else ""), "")
        if loglik is None:
            rep.add(f"The log-likelihood counterpart `{loglik_counterpart(task)}` did not run: `acc (loglik)` is n/a.", "")
        rows = [[warned_label(r.condition, r.masked_nothing), r.n, format_accuracy(r.acc_loglik),
                 format_accuracy(r.acc_generated), format_accuracy(r.parse_failure),
                 format_difference(r.parse_failure_diff) if r.n_paired else "-",
                 format_ci_bounds(r.ci_low, r.ci_high, r.n_paired) if r.n_paired else "-"]
                for r in sec.rows if r.task == task]
        rep.add(*table(["condition", "n", "acc (loglik)", "acc (generated)", "parse failure",
                        "Δ parse failure vs unmasked", ci_label(rep.opts.alpha)], rows), "")
        rep.add(*small_sample_note([r.n_paired for r in sec.rows if r.task == task], rep.opts.alpha))


# ----------------------------------------------------------------------------------------
def _section_culture_matrix(rep: _Report, mr: ModelReport, h: str, s: str):
    ma, sec = mr.analysis, mr.culture
    rep.add(f"{h} Culture x culture", "")
    if not ma.families:
        rep.add("No per-culture task ran (no `<task>_<culture>` names and no `doc[\"culture\"]` field); "
                "section dropped.", "")
        return
    if not sec.has_culture_sets:
        rep.add("No culture-specific neuron set ran (no set with a `culture` in its metadata); section dropped.", "")
        return
    if ma.unmasked is None:
        rep.add("No unmasked run: the matrix needs one; section dropped.", "")
        return
    for mat in sec.matrices:
        _culture_matrix(rep, mat, ma.base_model, h, s)
    if not sec.matrices:
        rep.add("No culture-specific set ran on a per-culture task together with the unmasked model "
                f"(per-culture tasks: {', '.join(f.name for f in ma.families)}); section dropped.", "")


def _culture_matrix(rep: _Report, mat: CultureMatrix, model: str, h: str, s: str):
    fam = mat.family
    how = (f"tasks `{fam.name}_<culture>`" if fam.kind == "suffix" else f"task `{fam.name}`, split by "
           "`doc[\"culture\"]`")
    rep.add(f"{h}# {fam.name}", "", f"Items: {how}. Cell (i, j) = accuracy change on culture j's items when "
            f"masking culture i's set (masked - unmasked, paired); `*` = McNemar p < {SIGNIFICANT_P:g}; the boxed / "
            "bold cells are the set's own culture.", "")
    rows = []
    for i, label in enumerate(mat.sets):
        cells = []
        for j in range(len(mat.cultures)):
            v = mat.diff[i, j]
            txt = format_difference(v) + ("*" if mat.significant[i, j] else "") if is_finite(v) else "n/a"
            cells.append(f"**{txt}**" if (i, j) in mat.own else txt)
        rows.append([label] + cells)
    rows += [[seeds_label(m.n_seeds, m.matched_to)] + [format_difference(x) for x in m.diffs] for m in mat.seed_means]
    rep.add(*table(["masked set \\ culture"] + [f"{cul} (n={n})" for cul, n in zip(mat.cultures, mat.n_items)], rows), "")
    if mat.n_own:
        rep.add(f"Own culture (diagonal): mean Δ {format_difference(mat.own_mean)} over {mat.n_own} cell(s); "
                + (f"other cultures: mean Δ {format_difference(mat.other_mean)} over {mat.n_other} cell(s)."
                   if mat.n_other else "no off-diagonal cell."), "")
    p = figures.culture_heatmap(rep.fig_dir / f"{s}_culture_matrix_{slug(fam.name)}.png", mat.sets, mat.cultures,
                                mat.diff, f"Accuracy change by culture - {fam.name}\n({model}; * McNemar "
                                f"p<{SIGNIFICANT_P:g})", marks=mat.significant, diagonal=mat.own)
    rep.figure(p, f"culture x culture accuracy change, {fam.name}")
    detail = [[cell.masked, cell.culture, cell.n_paired, format_accuracy(cell.acc_masked_paired),
               format_accuracy(cell.acc_unmasked_paired)] + paired_cells(cell) for cell in mat.cells]
    rep.add("Cells in detail:", "")
    rep.add(*table(["masked set", "culture", "n", "acc masked", "acc unmasked", "Δ",
                    ci_label(rep.opts.alpha), "b / c", "McNemar p"], detail), "")
    rep.add(*small_sample_note([cell.n_paired for cell in mat.cells], rep.opts.alpha))


# ----------------------------------------------------------------------------------------
def _section_neurons(rep: _Report, mr: ModelReport, h: str, s: str):
    ma, sec = mr.analysis, mr.neurons
    rep.add(f"{h} Where the neurons are", "")
    if sec.unreadable:
        rep.add(f"Neuron-set files that could not be read (conditions labelled by file stem): "
                f"{', '.join(code(m) for m in sec.unreadable)}. Use `--sets-dir` to say where they are.", "")
    if not sec.rows:
        rep.add("No neuron-set file could be read for this model; section dropped.", "")
        return
    thirds = [f"{name} = layers {t[0]}-{t[1]}" if t else f"{name} = none"
              for name, t in zip(("shallow", "middle", "deep"), sec.thirds)]
    rep.add(f"Depth split into thirds of the {sec.num_layers} layers: {'; '.join(thirds)}. Fraction = share of all "
            "neurons of that module kind in the model (`NeuronSet.fraction()`).", "")
    rows = []
    summarised = summarised_random_labels(ma)
    for d in sec.rows:
        if d.set in summarised:
            continue
        rows.append([set_cell(d.set, d.neurons), code(d.file), d.method or "?", d.selection or "-", d.neurons,
                     ", ".join(f"{k} {v}" for k, v in d.per_kind.items()),
                     ", ".join(f"{k} {percent(v)}" for k, v in d.fraction_per_kind.items()) or "n/a",
                     percent(d.fraction_overall) if d.fraction_overall is not None else "n/a"]
                    + [f"{x} ({100 * x / d.neurons:.0f}%)" if d.neurons else "0" for x in d.per_third])
    rep.add(*table(["set", "file", "method", "selection", "neurons", "per kind", "fraction per kind",
                    "fraction overall", "shallow", "middle", "deep"], rows), "")
    if sec.random_matches:
        listed = [f"- {m.random}: per-layer counts {'match' if m.same else '**do not match**'} {m.target}."
                  for m in sec.random_matches if m.random not in summarised]
        targets = list(dict.fromkeys(m.target for m in sec.random_matches if m.random in summarised))
        for target in targets:
            group = [m for m in sec.random_matches if m.target == target and m.random in summarised]
            same = sum(m.same for m in group)
            listed.append(f"- {len(group)} random sets matched to {target}: per-layer counts match in "
                          + (f"{same} of {len(group)}." if same == len(group) else f"**only {same} of {len(group)}**."))
        rep.add("Random baselines keep the per-layer, per-kind counts of the set they are matched to:", "",
                *listed, "")
    if sec.sets:
        rep.add("Neurons per layer (all module kinds):", "")
        rep.add(*table(["layer"] + [x.label for x in sec.sets],
                       [[layer] + totals for layer, totals in enumerate(sec.layer_totals)]), "")
        p = figures.neuron_layers(rep.fig_dir / f"{s}_neuron_layers.png",
                                  [(x.label, x.per_layer, x.num_layers) for x in sec.sets],
                                  f"Neurons per layer - {ma.base_model}")
        rep.figure(p, "neurons per layer")


# ----------------------------------------------------------------------------------------
def _section_stability(rep: _Report, mr: ModelReport, h: str):
    rows = mr.stability
    rep.add(f"{h} Stability of the selected sets", "")
    if not rows:
        rep.add("No readable (non-random) neuron-set file; section dropped.", "")
        return
    rep.add("Each selected set records in its metadata (`meta[\"stability\"]`) the Jaccard overlap "
            "|A ∩ B| / |A ∪ B| of the sets selected on two disjoint halves of the neuron-finding items "
            "(`scoring.stability_fold`), and over selection seeds (n/a for a deterministic selection). A set whose "
            "halves overlap less than the threshold is flagged **unstable**: which neurons it holds depends on "
            "the items it was found on more than on the model.", "")
    if not any(r.recorded for r in rows):
        rep.add("No evaluated set records a stability entry (`scoring.stability_fold: null`, or sets selected "
                "before the check existed).", "")
    rep.add(*table(["set", "file", "neurons", "halves Jaccard", "seeds Jaccard", "stability", "note"],
                   [[set_cell(r.set, r.neurons), code(r.file), r.neurons, jaccard_cell(r.halves_jaccard),
                     jaccard_cell(r.seeds_jaccard), stability_cell(r), r.note or "-"] for r in rows]), "")


def _section_random_distribution(rep: _Report, mr: ModelReport, s: str):
    """Each set's drop within the drops of its own random sets: table and histograms."""
    ma, dists = mr.analysis, mr.specificity.distributions
    if not dists:
        return
    rep.add("**Drop vs its random sets.** A drop is unmasked - masked accuracy on the same items: the set's "
            "cultural items (a culture set: its culture's) in the tasks the set, the unmasked model and every one "
            "of its random sets ran. Each random set has the set's size (layer-matched: the same count per layer "
            "and module kind). Empirical p = (1 + #{random drops >= the set's drop}) / (1 + n random), one-sided; "
            "the smallest value n random sets allow is 1 / (1 + n). The gap (culture sets) is the drop on the own "
            "culture minus the mean drop over the other cultures, and its p places it among the random sets' gaps "
            "likewise.", "")
    rows = []
    for d in dists:
        gap = ([format_difference(d.gap)] + (spread_cells(d.random_gap_mean, d.random_gap_p5, d.random_gap_p95)
                                             if d.n_random else ["no random set", "", ""])
               + [p_cell(d.gap_p, d.n_random)]) if d.gap is not None else ["-"] * 5
        rows.append([warned_label(d.set, d.masked_nothing), f"{d.items} ({', '.join(d.tasks) or 'no task'})",
                     d.n_items, format_difference(d.drop)]
                    + (spread_cells(d.random_drop_mean, d.random_drop_p5, d.random_drop_p95) if d.n_random
                       else ["no random set", "", ""])
                    + [d.n_random, p_cell(d.empirical_p, d.n_random)] + gap)
    rep.add(*table(["set", "items", "n", "drop", "random drops mean", "5th pct", "95th pct", "n random",
                    "empirical p", "gap (own - others)", "random gaps mean", "5th pct", "95th pct", "gap p"], rows), "")
    panels = [{"label": d.set, "random_drops": d.random_drops, "drop": d.drop, "p": d.empirical_p, "n": d.n_random}
              for d in dists if d.n_random]
    if panels:
        title = f"Cultural accuracy drop vs random sets of the same size - {ma.base_model}"
        path = figures.random_drop_histograms(rep.fig_dir / f"{s}_random_drops.png", panels, title)
        rep.figure(path, "random-set drop distributions")


def _section_specificity(rep: _Report, mr: ModelReport, h: str, s: str):
    o, ma, sec = rep.opts, mr.analysis, mr.specificity
    rep.add(f"{h} Specificity", "")
    if ma.unmasked is None:
        rep.add("No unmasked run: nothing to compare; section dropped.", "")
        return
    if sec is None:
        rep.add("No masked run; section dropped.", "")
        return
    ppl_task = sec.ppl_task
    rep.add("Verdict rule: a set is **specific** when its cultural accuracy drop lies beyond the drops of its own "
            f"size-matched random sets (empirical p < **{o.alpha:g}**, table below) AND the general perplexity ratio "
            "(masked / unmasked" + (f", task `{ppl_task}`" if ppl_task else "") + f") is <= **{o.ppl_threshold:g}** "
            "(threshold; `--ppl-threshold`). Otherwise it is **not specific**, with the reason. McNemar p "
            "(masked vs unmasked on the pooled cultural items) is shown but not used: a random set of the same size "
            "can differ from the unmasked model as much. \"Cultural items\": "
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
    _section_random_distribution(rep, mr, s)
    header = ["set", "cultural items", "n", "Δ cultural acc", ci_label(o.alpha), "McNemar p",
              "empirical p vs random"]
    header += [f"ppl ratio {t}" for t in ma.ppl_tasks] + [f"Δ {t}" for t in ma.nlu_tasks] + ["verdict"]
    rows = []
    summarised = summarised_random_labels(ma)
    for block in sec.blocks:
        if (m := block.set_measures) is not None:
            r = block.row
            rows.append([f"**{condition_cell(m.condition)}**"] + cultural_cells(m)
                        + [format_p(r.mcnemar_p), p_cell(r.empirical_p, r.n_random) if r.n_random
                           else "no random baseline"] + cost_cells(m) + [r.verdict])
        rows += [[condition_cell(x.condition)] + cultural_cells(x) + [format_p(x.cultural.p), "(baseline)"]
                 + cost_cells(x) + ["baseline"] for x in block.seeds if x.condition.label not in summarised]
    rep.add(*table(header, rows), "")
    rep.add(*small_sample_note([m.cultural.n for block in sec.blocks for m in [block.set_measures, *block.seeds]
                                if m is not None and m.cultural is not None], o.alpha))
    if not ma.ppl_tasks:
        rep.add("No general-perplexity task ran, so the cultural-drop vs general-cost figure is dropped.", "")
        return
    rep.add("Perplexity: lm-eval's weighted perplexity exp(-sum loglik / sum units) over the same documents, "
            "from the per-sample `" + "`/`".join(sec.ppl_metrics) + "` records; the ratio's "
            "interval is a paired bootstrap over documents.", "")
    prow = [[label, v.task, v.metric, v.n, f"{v.ppl_a:.4g}", f"{v.ppl_b:.4g}", format_ratio(v.ratio),
             format_ratio_ci(v.ci, v.n)] for label, v in sec.ppl_rows if label not in summarised]
    for group in ma.random_groups.values():
        labels = {c.label for c in group}
        for task in ma.ppl_tasks:
            ratios = [v.ratio for label, v in sec.ppl_rows if label in labels and v.task == task]
            if len(group) > LIST_SEEDS_UP_TO and ratios:
                prow.append([f"{len(ratios)} random sets (matched to {group[0].group_label})", task, "", "", "", "",
                             f"{format_ratio(min(ratios))} - {format_ratio(max(ratios))} (min - max)", ""])
    rep.add(*table(["condition", "task", "metric", "docs", "perplexity", "unmasked", "ratio", "CI"], prow), "")
    if sec.points:
        path = figures.specificity_scatter(rep.fig_dir / f"{s}_specificity.png", [asdict(p) for p in sec.points],
                                           o.ppl_threshold, f"Cultural drop vs general cost - {ma.base_model}")
        rep.figure(path, "specificity: cultural drop vs perplexity ratio")


# ----------------------------------------------------------------------------------------
def _section_instances(rep: _Report, path, scores: InstanceScores | None):
    rep.add("## Instance-level view", "")
    if not path:
        rep.add("No `--instance-scores` file was given; section dropped.", "")
        return
    path = Path(path)
    if scores is None:
        rep.add(f"Instance-score file {code(path)} not found; section dropped.", "")
        return
    if not scores.tables:
        rep.add(f"{code(path)} holds no usable row; section dropped.", "")
        return
    bad = scores.unreadable_rows
    rep.add(f"From {code(path)}: per item (set, culture, topic, doc_id) the scores are summed; a cell is the fraction "
            "of items whose summed score is > 0 (n = items)." + (f" {bad} unreadable row(s) skipped." if bad else ""), "")
    for tab in scores.tables:
        rows = [[cul] + [share_cell(cell) for cell in tab.cells[i]] + [share_cell(tab.per_culture[i])]
                for i, cul in enumerate(tab.cultures)]
        rows.append(["all cultures"] + [share_cell(cell) for cell in tab.per_topic] + [share_cell(tab.overall)])
        rep.add(f"### {tab.set_label}", "")
        rep.add(*table(["culture \\ topic"] + tab.topics + ["all topics"], rows), "")
        if len(tab.cultures) * len(tab.topics) > 1:
            p = figures.instance_heatmap(rep.fig_dir / f"instances_{slug(tab.set_label)}.png", tab.cultures,
                                         tab.topics, tab.share_matrix(),
                                         f"Share of items with positive summed score - {tab.set_label}")
            rep.figure(p, f"instance scores {tab.set_label}")


def _section_skipped(rep: _Report, col: Collection, models: list[ModelReport]):
    rep.add("## Skipped", "")
    rows = [[t, r, code(f)] for t, (r, f) in sorted(col.skipped.items())]
    multi = len(models) > 1
    rows += [[t, (f"{mr.analysis.base_model}: " if multi else "") + why,
              "culnig-report (pairing by doc_id and doc_hash)"]
             for mr in models for t, why in sorted(mr.analysis.unpaired.items())]
    if not rows:
        rep.add("No `skipped.json` in the run folders and every task's runs are on the same documents: "
                "no task was skipped.", "")
        return
    rep.add(*table(["task", "reason", "listed in"], rows), "")
