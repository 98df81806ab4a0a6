"""The report's rows, computed once per model (:func:`model_report`) before anything is formatted:
tasks, accuracy, log-likelihood vs generation, culture x culture, where the neurons are,
stability and specificity (:mod:`.specificity`).  ``render.py`` only formats them, and
report.json is the ``asdict()`` of the rows :meth:`ModelReport.json_rows` lists."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from .analysis import (
    GENERATION_METRIC,
    PPL_PRIORITY,
    AccuracyRow,
    CultureCell,
    CultureFamily,
    ModelAnalysis,
    Paired,
    aggregate_mismatches,
    summary_over,
)
from .collect import Condition
from .stats import is_finite
from .specificity import SpecificitySection, specificity_section


@dataclass
class StabilityRow:
    """How stable a set's selection is, as its file's ``meta["stability"]`` records it: the
    Jaccard overlap of the sets selected on two disjoint halves of the neuron-finding items, and
    over selection seeds (None for a deterministic selection)."""

    section: str = "stability"
    model: str = ""
    set: str = ""
    file: str = ""
    neurons: int = 0
    recorded: bool = False  # the file carries a stability entry
    halves_jaccard: float | None = None
    seeds_jaccard: float | None = None
    threshold: float = 0.3
    unstable: bool = False  # halves_jaccard < threshold (or the entry says so)
    note: str = ""


@dataclass
class LayerDistributionRow:
    """Where one neuron set's neurons are: per module kind and per third of the depth."""

    section: str = "layer_distribution"
    model: str = ""
    set: str = ""
    file: str = ""
    method: str | None = None
    selection: str | None = None
    neurons: int = 0
    per_kind: dict = field(default_factory=dict)  # kind -> neurons
    fraction_per_kind: dict = field(default_factory=dict)  # kind -> share of that kind's neurons in the model
    fraction_overall: float | None = None  # None when the model's widths are not recorded
    per_third: list = field(default_factory=list)  # neurons in the shallow, middle, deep thirds


def layer_distribution(model_name: str, label: str, info, thirds: list[np.ndarray]) -> LayerDistributionRow:
    """Counts of ``info.neuron_set`` per kind, share of the model, and per third of the layers."""
    ns = info.neuron_set
    counts, total = ns.counts(), len(ns)
    model = ns.meta.get("model") or {}
    widths = model.get("widths") or {}
    denom = sum(widths.get(k, 0) * (model.get("num_layers") or 0) for k in counts)
    known = bool(denom) and all(widths.get(k) for k in counts)
    per_layer_total = np.zeros(max([ns.num_layers] + [int(t[-1]) + 1 for t in thirds if t.size]), dtype=int)
    for v in ns.per_layer().values():
        per_layer_total[: len(v)] += np.asarray(v, dtype=int)
    return LayerDistributionRow(
        model=model_name, set=label, file=info.path.name if info.path else info.spec, method=info.method,
        selection=info.selection, neurons=total, per_kind=dict(counts), fraction_per_kind=dict(ns.fraction()),
        fraction_overall=total / denom if known else None,
        per_third=[int(per_layer_total[t].sum()) if t.size else 0 for t in thirds])


SIGNIFICANT_P = 0.05  # culture-matrix cells with a McNemar p below this are starred


@dataclass
class TaskRow:
    """One task that ran for a model: its role, metric and the items it ran on (over all conditions)."""

    task: str
    role: str  # "accuracy", "NLU control", "general perplexity" or "no per-sample records"
    output_type: str | None
    metric: str | None
    filters: list[str]
    items: list[int]  # the distinct numbers of items in the per-sample logs
    docs_in_task: list[int]  # the distinct ``n-samples.original`` of lm-eval
    limits: list[str]  # the distinct ``--limit`` values
    dataset: str | None
    n_conditions: int


def normalise_limit(x) -> str:
    """``--limit`` as lm-eval records it ("10", 10.0, "0.5") in one spelling, so equal limits count once."""
    try:
        f = float(x)
        return str(int(f)) if f.is_integer() else f"{f:g}"
    except (TypeError, ValueError):
        return str(x)


def task_role(ma: ModelAnalysis, task: str) -> str:
    return ("general perplexity" if task in ma.ppl_tasks else "NLU control" if task in ma.nlu_tasks
            else "no per-sample records" if task in ma.no_sample_tasks else "accuracy")


def task_rows(ma: ModelAnalysis) -> list[TaskRow]:
    rows, conditions = [], ma.ordered_conditions()
    for t in ma.tasks:
        recs = [c.tasks[t] for c in conditions if t in c.tasks]
        first = recs[0]
        metric = ma.metric.get(t) or (next((m for m in PPL_PRIORITY if m in first.pairs), None)
                                      if t in ma.ppl_tasks else None)
        rows.append(TaskRow(
            task=t, role=task_role(ma, t), output_type=first.output_type, metric=metric,
            filters=sorted({r.filter for r in recs if r.filter}), items=sorted({r.n_items for r in recs}),
            docs_in_task=sorted({r.n_original for r in recs if r.n_original is not None}),
            limits=sorted({normalise_limit(r.limit) for r in recs if r.limit not in (None, "None")}),
            dataset=first.dataset, n_conditions=len(recs)))
    return rows


def subset_tasks(ma: ModelAnalysis) -> list[str]:
    """Tasks some condition ran on fewer documents than the task has (``--limit`` or a sampled file)."""
    return sorted({t for t in ma.tasks for c in ma.conditions if t in c.tasks and c.tasks[t].n_original
                   and c.tasks[t].n_items < c.tasks[t].n_original})


# -- accuracy ----------------------------------------------------------------------------------
@dataclass
class RandomMeanRow:
    """One task over the random seeds matched to one set: accuracy and difference, mean and spread."""

    section: str = "accuracy_random_mean"
    model: str = ""
    task: str = ""
    condition: str = ""
    metric: str = ""
    acc_mean: float = float("nan")
    acc_std: float = float("nan")
    acc_min: float = float("nan")
    acc_max: float = float("nan")
    diff_mean: float = float("nan")
    diff_min: float = float("nan")
    diff_max: float = float("nan")
    n_seeds: int = 0  # seeds with an accuracy on the task
    matched_to: str = ""  # label of the set the seeds are matched to


@dataclass
class TaskAccuracy:
    """The table of one task: the unmasked accuracy, then each set, its seeds and their mean."""

    task: str
    metric: str
    filters: list[str]
    unmasked: tuple[int, float] | None  # (n, accuracy), None when the unmasked model did not run the task
    rows: list[AccuracyRow | RandomMeanRow]


@dataclass
class OverviewRow:
    """Accuracy per task of one condition, or (``n_seeds`` > 0) the mean over a group of random seeds."""

    label: str  # the condition, or the set the seeds are matched to
    values: list[float]
    n_seeds: int = 0


@dataclass
class TaskSeries:
    """One bar series over the tasks: a condition's values (with interval ends), or the mean of
    ``n_seeds`` random seeds with their min and max as the ends."""

    label: str  # the condition, or the set the seeds are matched to
    values: list[float]
    low: list[float] | None = None
    high: list[float] | None = None
    n_seeds: int = 0


@dataclass
class AccuracySection:
    tasks: list[str]
    overview: list[OverviewRow]
    per_task: list[TaskAccuracy]
    accuracy_series: list[TaskSeries]
    difference_series: list[TaskSeries]  # empty without an unmasked run


def random_mean_row(ma: ModelAnalysis, task: str, seeds: list[Condition]) -> RandomMeanRow | None:
    """Mean, spread and range of ``seeds``' accuracy and difference on ``task`` (None: no seed ran it)."""
    diffs, accs = [], []
    for c in seeds:
        if task in c.tasks:
            p = ma.compare(c, {task: None})
            diffs.append(p.diff if p else float("nan"))
            accs.append(ma.accuracy(c, task)[1])
    if not accs:
        return None
    sa, sd = summary_over(accs), summary_over(diffs)
    return RandomMeanRow(
        model=ma.base_model, task=task, condition=f"random mean ({seeds[0].group_label})", metric=ma.metric[task],
        acc_mean=sa["mean"], acc_std=sa["std"], acc_min=sa["min"], acc_max=sa["max"], diff_mean=sd["mean"],
        diff_min=sd["min"], diff_max=sd["max"], n_seeds=sa["n"], matched_to=seeds[0].group_label)


def task_accuracy(ma: ModelAnalysis, task: str) -> TaskAccuracy:
    unmasked = ma.accuracy(ma.unmasked, task) if ma.unmasked is not None and task in ma.unmasked.tasks else None
    rows: list[AccuracyRow | RandomMeanRow] = []
    for setc, seeds in ma.group_blocks():
        if setc is not None and task in setc.tasks:
            rows.append(ma.accuracy_row(setc, task))
        rows += [ma.accuracy_row(c, task) for c in seeds if task in c.tasks]
        if (mean := random_mean_row(ma, task, seeds)) is not None:
            rows.append(mean)
    filters = sorted({c.tasks[task].filter for c in ma.conditions if task in c.tasks and c.tasks[task].filter})
    return TaskAccuracy(task=task, metric=ma.metric[task], filters=filters, unmasked=unmasked, rows=rows)


def _seed_series(label: str, seeds: list[Condition], per_task: list[dict]) -> TaskSeries:
    return TaskSeries(label=label, values=[x["mean"] for x in per_task], low=[x["min"] for x in per_task],
                      high=[x["max"] for x in per_task], n_seeds=len(seeds))


def accuracy_series(ma: ModelAnalysis, tasks: list[str]) -> tuple[list[TaskSeries], list[TaskSeries]]:
    """The bars of the two accuracy figures: accuracy per task, and the change vs unmasked with its interval."""
    accs, diffs = [], []
    if ma.unmasked is not None:
        accs.append(TaskSeries("unmasked", [ma.accuracy(ma.unmasked, t)[1] for t in tasks]))
    for setc, seeds in ma.group_blocks():
        if setc is not None:
            accs.append(TaskSeries(setc.label, [ma.accuracy(setc, t)[1] for t in tasks]))
            if ma.unmasked is not None:
                ps = [ma.compare(setc, {t: None}) for t in tasks]
                diffs.append(TaskSeries(setc.label, [p.diff for p in ps], [p.ci.low for p in ps],
                                        [p.ci.high for p in ps]))
        if seeds:
            matched = seeds[0].group_label
            accs.append(_seed_series(matched, seeds, [summary_over([ma.accuracy(c, t)[1] for c in seeds])
                                                      for t in tasks]))
            if ma.unmasked is not None:
                diffs.append(_seed_series(matched, seeds, [
                    summary_over([ma.compare(c, {t: None}).diff for c in seeds if t in c.tasks]) for t in tasks]))
    return accs, diffs


def accuracy_section(ma: ModelAnalysis) -> AccuracySection:
    tasks = ma.acc_tasks + ma.nlu_tasks
    overview = [OverviewRow(c.label, [ma.accuracy(c, t)[1] for t in tasks]) for c in ma.ordered_conditions()]
    overview += [OverviewRow(group[0].group_label,
                             [summary_over([ma.accuracy(c, t)[1] for c in group])["mean"] for t in tasks], len(group))
                 for group in ma.random_groups.values()]
    accs, diffs = accuracy_series(ma, tasks)
    return AccuracySection(tasks=tasks, overview=overview, per_task=[task_accuracy(ma, t) for t in tasks],
                           accuracy_series=accs, difference_series=diffs)


# -- culture x culture -------------------------------------------------------------------------
@dataclass
class SeedMeans:
    """Mean difference per culture over the random seeds matched to one culture set."""

    matched_to: str
    n_seeds: int
    diffs: list[float]


@dataclass
class CultureMatrix:
    """One task family: masking each culture set (rows), the paired difference on each culture's items."""

    family: CultureFamily
    sets: list[str]  # row labels
    cultures: list[str]  # columns
    n_items: list[int]  # unmasked items per culture
    cells: list[CultureCell]  # every cell with items, row by row
    diff: np.ndarray  # [set, culture]; nan where the culture has no paired item
    significant: np.ndarray  # [set, culture]: McNemar p < SIGNIFICANT_P
    own: list[tuple[int, int]]  # the (row, column) of each set's own culture
    seed_means: list[SeedMeans]
    own_mean: float
    n_own: int
    other_mean: float
    n_other: int


@dataclass
class CultureSection:
    has_culture_sets: bool  # a set with one culture in its metadata ran
    matrices: list[CultureMatrix]  # empty without an unmasked run


def _is_culture_set(c: Condition) -> bool:
    return bool(c.cultures) and len(c.sets) == 1


def culture_matrix(ma: ModelAnalysis, fam: CultureFamily, conds: list[Condition]) -> CultureMatrix:
    cols = sorted(fam.items, key=str.lower)
    diff = np.full((len(conds), len(cols)), np.nan)
    significant = np.zeros_like(diff, dtype=bool)
    cells, own, own_vals, other_vals = [], [], [], []
    for i, c in enumerate(conds):
        for j, cul in enumerate(cols):
            cell = ma.culture_cell(c, fam, cul)
            if cell is None:
                continue
            cells.append(cell)
            diff[i, j] = cell.diff
            significant[i, j] = is_finite(cell.mcnemar_p) and cell.mcnemar_p < SIGNIFICANT_P
            if cell.own_culture:
                own.append((i, j))
                own_vals.append(cell.diff)
            else:
                other_vals.append(cell.diff)
    seed_means = [SeedMeans(c.label, len(seeds), [summary_over([ma.compare(r, fam.items[cul]).diff for r in seeds])
                                                  ["mean"] for cul in cols])
                  for c in conds if (seeds := ma.random_groups.get(c.key, []))]
    return CultureMatrix(
        family=fam, sets=[c.label for c in conds], cultures=cols,
        n_items=[ma.compare(ma.unmasked, fam.items[cul]).n for cul in cols], cells=cells, diff=diff,
        significant=significant, own=own, seed_means=seed_means,
        own_mean=float(np.mean(own_vals)) if own_vals else float("nan"), n_own=len(own_vals),
        other_mean=float(np.mean(other_vals)) if other_vals else float("nan"), n_other=len(other_vals))


def culture_section(ma: ModelAnalysis) -> CultureSection:
    has_sets = any(_is_culture_set(c) for c in ma.set_conds)
    matrices = []
    if ma.families and has_sets and ma.unmasked is not None:
        for fam in ma.families:
            fam_tasks = {t for sel in fam.items.values() for t in sel}
            conds = [c for c in ma.set_conds if _is_culture_set(c) and fam_tasks & set(c.tasks)]
            if conds and fam_tasks & set(ma.unmasked.tasks):
                matrices.append(culture_matrix(ma, fam, conds))
    return CultureSection(has_culture_sets=has_sets, matrices=matrices)


# -- where the neurons are ---------------------------------------------------------------------
@dataclass
class LayerMatch:
    """Whether a random baseline kept the per-layer, per-kind counts of the set it is matched to."""

    random: str
    target: str
    same: bool


@dataclass
class SetLayers:
    label: str
    per_layer: dict[str, list[int]]  # kind -> neurons per layer
    num_layers: int


@dataclass
class NeuronSection:
    unreadable: list[str]  # neuron-set files named in model_args that could not be read
    num_layers: int  # 0 when no set file could be read
    thirds: list[tuple[int, int] | None]  # first and last layer of the shallow, middle, deep thirds
    rows: list[LayerDistributionRow]  # the sets, then the random baselines
    random_matches: list[LayerMatch]
    sets: list[SetLayers]  # the sets (not the random baselines), for the per-layer table and figure
    layer_totals: list[list[int]]  # [layer][set]: neurons of all kinds


def neuron_section(ma: ModelAnalysis) -> NeuronSection:
    sets, randoms, seen = [], [], set()
    for c in ma.ordered_conditions():
        for si in c.sets:
            k = str(si.path.resolve()) if si.path else si.spec
            if k in seen or si.neuron_set is None:
                continue
            seen.add(k)
            lab = c.label if len(c.sets) == 1 else f"{si.stem} (in {c.label})"
            (randoms if si.is_random else sets).append((lab, si, c))
    unreadable = sorted({si.spec for c in ma.conditions for si in c.sets if si.neuron_set is None})
    if not sets and not randoms:
        return NeuronSection(unreadable, 0, [], [], [], [], [])
    layers = max(si.neuron_set.num_layers for _, si, _ in sets + randoms)
    thirds = np.array_split(np.arange(layers), 3)
    matches = []
    for lab, si, c in randoms:
        target = next((x for x in ma.set_conds if x.key == c.group and len(x.sets) == 1), None)
        if target is not None and target.sets[0].neuron_set is not None:
            same = target.sets[0].neuron_set.per_layer() == si.neuron_set.per_layer()
            matches.append(LayerMatch(lab, target.label, same))
    set_layers = [SetLayers(lab, si.neuron_set.per_layer(), si.neuron_set.num_layers) for lab, si, _ in sets]
    totals = [[sum(v[layer] for v in s.per_layer.values() if layer < len(v)) for s in set_layers]
              for layer in range(layers)] if set_layers else []
    return NeuronSection(
        unreadable=unreadable, num_layers=layers,
        thirds=[(int(t[0]), int(t[-1])) if t.size else None for t in thirds],
        rows=[layer_distribution(ma.base_model, lab, si, thirds) for lab, si, _ in sets + randoms],
        random_matches=matches, sets=set_layers, layer_totals=totals)


# -- stability of the selection ----------------------------------------------------------------
STABILITY_THRESHOLD = 0.3  # halves Jaccard below this: "unstable" (when the set's entry names none)


def _number_or_none(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def stability_rows(ma: ModelAnalysis) -> list[StabilityRow]:
    """One row per evaluated (non-random) set file, from its ``meta["stability"]``."""
    rows, seen = [], set()
    for c in ma.set_conds:
        for si in c.sets:
            k = str(si.path.resolve()) if si.path else si.spec
            if si.neuron_set is None or si.is_random or k in seen:
                continue
            seen.add(k)
            row = StabilityRow(model=ma.base_model, set=c.label if len(c.sets) == 1 else f"{si.stem} (in {c.label})",
                               file=si.path.name if si.path else si.spec, neurons=len(si.neuron_set))
            entry = si.meta.get("stability")
            if isinstance(entry, dict):
                row.recorded = True
                row.halves_jaccard = _number_or_none(entry.get("halves_jaccard"))
                row.seeds_jaccard = _number_or_none(entry.get("seeds_jaccard"))
                row.threshold = _number_or_none(entry.get("threshold")) or STABILITY_THRESHOLD
                row.unstable = entry.get("unstable") is True or (
                    row.halves_jaccard is not None and row.halves_jaccard < row.threshold)
                row.note = str(entry.get("note") or "")
            rows.append(row)
    return rows


# -- log-likelihood vs generation ----------------------------------------------------------------
def loglik_counterpart(task: str) -> str:
    """The log-likelihood task a generation task repeats: ``blend_gen_test`` -> ``blend_test``."""
    return re.sub(r"_gen(?=_|$)", "", task, count=1)


@dataclass
class GenerationRow:
    """One condition on one generation task, beside the log-likelihood accuracy on its counterpart."""

    section: str = "generation"
    model: str = ""
    task: str = ""  # the generation task
    loglik_task: str | None = None  # its log-likelihood counterpart, None when that did not run
    condition: str = ""
    n: int = 0  # items of the generation task
    acc_loglik: float = float("nan")
    acc_generated: float = float("nan")
    parse_failure: float = float("nan")
    # masked vs unmasked parse-failure rate on the same items (paired); None for the unmasked row
    n_paired: int | None = None
    parse_failure_unmasked: float | None = None
    parse_failure_diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    masked_nothing: bool = False


@dataclass
class GenerationSection:
    tasks: list[tuple[str, str | None]]  # (generation task, its log-likelihood counterpart or None)
    rows: list[GenerationRow]  # per task, in report order of the conditions


def generation_section(ma: ModelAnalysis) -> GenerationSection:
    pairs = []
    for t in ma.generation_tasks:
        counterpart = loglik_counterpart(t)
        ran = counterpart != t and counterpart in ma.metric and counterpart not in ma.generation_tasks
        pairs.append((t, counterpart if ran else None))
    rows = []
    for task, loglik in pairs:
        for c in ma.ordered_conditions():
            if task not in c.tasks:
                continue
            n, acc = ma.accuracy(c, task)
            row = GenerationRow(
                model=ma.base_model, task=task, loglik_task=loglik, condition=c.label, n=n, acc_generated=acc,
                acc_loglik=ma.accuracy(c, loglik)[1] if loglik else float("nan"),
                parse_failure=ma.accuracy(c, task, GENERATION_METRIC)[1], masked_nothing=c.masks_nothing)
            if ma.unmasked is not None and c is not ma.unmasked:
                a, b = ma.metric_vectors(c, ma.unmasked, task, GENERATION_METRIC)
                p = Paired.of(a, b, ma.opts)
                row.n_paired, row.parse_failure_unmasked, row.parse_failure_diff = p.n, p.acc_b, p.diff
                row.ci_low, row.ci_high = p.ci.low, p.ci.high
            rows.append(row)
    return GenerationSection(tasks=pairs, rows=rows)


# -- one model ---------------------------------------------------------------------------------
@dataclass
class ModelReport:
    """Everything the report shows about one base model, computed before anything is formatted."""

    analysis: ModelAnalysis
    tasks: list[TaskRow]
    subset_tasks: list[str]
    accuracy: AccuracySection
    culture: CultureSection
    neurons: NeuronSection
    specificity: SpecificitySection | None
    aggregate_mismatches: list[str]  # per-sample means that disagree with lm-eval's aggregates
    generation: GenerationSection
    stability: list[StabilityRow] = field(default_factory=list)

    def json_rows(self) -> list:
        """The rows of report.json, in report order (a difference row only where an unmasked run paired it)."""
        rows = [r for t in self.accuracy.per_task for r in t.rows
                if isinstance(r, RandomMeanRow) or r.n_paired is not None]
        rows += [cell for m in self.culture.matrices for cell in m.cells]
        rows += self.generation.rows
        rows += self.neurons.rows
        rows += self.stability
        if self.specificity is not None:
            rows += self.specificity.distributions
            rows += [b.row for b in self.specificity.blocks if b.row is not None]
        return rows


def model_report(ma: ModelAnalysis) -> ModelReport:
    return ModelReport(analysis=ma, tasks=task_rows(ma), subset_tasks=subset_tasks(ma),
                       accuracy=accuracy_section(ma), culture=culture_section(ma), neurons=neuron_section(ma),
                       specificity=specificity_section(ma), aggregate_mismatches=aggregate_mismatches(ma),
                       generation=generation_section(ma), stability=stability_rows(ma))
