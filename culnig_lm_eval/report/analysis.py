"""Comparisons between conditions of one base model, computed from per-sample records only."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import stats
from .collect import PAIR_METRICS, Condition, TaskRecords

METRIC_PRIORITY = ("acc", "acc_norm", "exact_match")
# per-item metric of the tasks answered by generation (culnig_lm_eval.taskdata.generation): 1 = no label read
GENERATION_METRIC = "parse_failure"
DEFAULT_NLU_TASKS = ("qnli", "mrpc", "commonsense_qa")
PPL_PRIORITY = ("word_perplexity", "byte_perplexity", "bits_per_byte")


@dataclass
class Options:
    n_resamples: int = 2000
    seed: int = 0
    alpha: float = 0.05
    ppl_threshold: float = 1.10
    nlu_tasks: tuple[str, ...] = DEFAULT_NLU_TASKS
    extra_cultures: tuple[str, ...] = ()


@dataclass
class Paired:
    """masked (a) vs reference (b) on the same items."""

    n: int
    acc_a: float
    acc_b: float
    diff: float
    ci: stats.Interval
    b: int  # right under a only
    c: int  # right under b only
    p: float
    binary: bool = True

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray, opts: Options) -> Paired:
        n = int(a.size)
        if n == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, stats.Interval(nan, nan), 0, 0, nan)
        binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
        nb, nc = stats.discordant_counts(a, b)
        return cls(
            n=n, acc_a=float(a.mean()), acc_b=float(b.mean()), diff=stats.paired_difference(a, b),
            ci=stats.paired_bootstrap_ci(a, b, opts.n_resamples, opts.seed, opts.alpha),
            b=nb, c=nc, p=stats.mcnemar_exact_counts(nb, nc) if binary else float("nan"), binary=binary,
        )


@dataclass
class PairedColumns:
    """A :class:`Paired` comparison flattened into the columns of report.json."""

    n_paired: int | None = None
    acc_masked_paired: float | None = None
    acc_unmasked_paired: float | None = None
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    b: int | None = None
    c: int | None = None
    mcnemar_p: float | None = None
    binary: bool | None = None

    @classmethod
    def of(cls, p: Paired | None) -> PairedColumns:
        if p is None:
            return cls()
        return cls(n_paired=p.n, acc_masked_paired=p.acc_a, acc_unmasked_paired=p.acc_b, diff=p.diff, ci_low=p.ci.low, ci_high=p.ci.high,
                   b=p.b, c=p.c, mcnemar_p=p.p, binary=p.binary)


@dataclass
class AccuracyRow(PairedColumns):
    """One condition on one task: its accuracy and the paired difference to the unmasked run."""

    section: str = "accuracy"
    model: str = ""
    task: str = ""
    condition: str = ""
    metric: str = ""
    n: int = 0
    acc: float = float("nan")
    masked_nothing: bool = False


@dataclass
class CultureCell(PairedColumns):
    """Masking culture ``masked``'s set, measured on ``culture``'s items of task family ``family``."""

    section: str = "culture_matrix"
    model: str = ""
    family: str = ""
    masked: str = ""
    culture: str = ""
    own_culture: bool = False


@dataclass
class SpecificityRow(PairedColumns):
    """A neuron set's cultural drop (with McNemar vs unmasked), its empirical p among its random
    sets (:class:`RandomDistributionRow`) and its general cost, with the verdict."""

    section: str = "specificity"
    model: str = ""
    specificity: str = ""  # the set's condition label
    cultural_items: str = ""
    n_random: int = 0
    # the verdict's test: (1 + #{random drops >= the set's drop}) / (1 + n_random), same items
    empirical_p: float = float("nan")
    ppl_ratio: dict = field(default_factory=dict)  # task -> masked / unmasked perplexity
    nlu_diff: dict = field(default_factory=dict)  # task -> accuracy difference
    verdict: str = ""
    masked_nothing: bool = False


@dataclass
class RandomDistributionRow:
    """A set's accuracy drop (unmasked - masked, on the same items) within the drops of its random
    sets, and for a culture set its gap (own-culture drop minus the mean drop over the other
    cultures) within theirs.  Every drop is measured on the tasks the set, the unmasked model and
    every one of its random sets ran (``tasks``)."""

    section: str = "random_distribution"
    model: str = ""
    set: str = ""  # the set's condition label
    items: str = ""  # which items the drop is measured on
    tasks: list = field(default_factory=list)
    n_items: int = 0
    drop: float = float("nan")
    n_random: int = 0  # random sets with a measured drop
    random_drops: list = field(default_factory=list)  # one per random set, in seed order
    random_drop_mean: float = float("nan")
    random_drop_p5: float = float("nan")
    random_drop_p95: float = float("nan")
    empirical_p: float = float("nan")  # (1 + #{random drops >= drop}) / (1 + n_random)
    culture: str | None = None  # a culture set's culture (the gap is measured for those only)
    gap: float | None = None  # own-culture drop - mean drop over the other cultures (each culture weighs 1)
    random_gaps: list | None = None
    random_gap_mean: float | None = None
    random_gap_p5: float | None = None
    random_gap_p95: float | None = None
    gap_p: float | None = None  # (1 + #{random gaps >= gap}) / (1 + n)
    masked_nothing: bool = False


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


@dataclass
class PplPaired:
    task: str
    metric: str
    n: int
    ppl_a: float
    ppl_b: float
    ratio: float
    ci: stats.Interval


# an item selection: task -> set of doc_ids (None = every item of the task)
Selection = dict[str, Any]


def norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def choose_metric(records: list[TaskRecords]) -> str | None:
    common = None
    for r in records:
        names = set(r.metrics)
        common = names if common is None else common & names
    if not common:
        return None
    for m in METRIC_PRIORITY:
        if m in common:
            return m
    return sorted(common)[0]


def is_ppl_task(task: str, recs: list[TaskRecords]) -> bool:
    if task == "general_ppl":
        return True
    for r in recs:
        if r.output_type == "loglikelihood_rolling" or any(m in r.pairs for m in PAIR_METRICS):
            return True
        if any(m in r.aggregated or any(k.startswith(m + ",") for k in r.aggregated) for m in PAIR_METRICS):
            return True
    return False


@dataclass
class CultureFamily:
    name: str  # task prefix, or the multi-culture task itself
    kind: str  # "suffix" or "doc"
    items: dict[str, Selection] = field(default_factory=dict)  # culture -> selection


@dataclass
class ModelAnalysis:
    base_key: str
    base_model: str
    conditions: list[Condition]
    unmasked: Condition | None
    set_conds: list[Condition]
    random_groups: dict[str, list[Condition]]  # group key -> seeds
    tasks: list[str]
    acc_tasks: list[str]
    nlu_tasks: list[str]
    ppl_tasks: list[str]
    no_sample_tasks: list[str]
    metric: dict[str, str]
    families: list[CultureFamily]
    culture_names: list[str]
    cultural_tasks: list[str]
    cultural_from_families: bool
    opts: Options
    unpaired: dict[str, str] = field(default_factory=dict)  # task -> why its runs cannot be compared
    notes: list[str] = field(default_factory=list)
    # accuracy tasks answered by generation (their records carry GENERATION_METRIC); they are shown
    # beside their log-likelihood counterpart and kept out of the pooled "cultural items"
    generation_tasks: list[str] = field(default_factory=list)
    _cache: dict = field(default_factory=dict)

    # -- vectors ------------------------------------------------------------------------------
    def paired_vectors(self, cond: Condition, ref: Condition, selection: Selection):
        a, b = [], []
        for task in sorted(selection):
            ra, rb, metric = cond.tasks.get(task), ref.tasks.get(task), self.metric.get(task)
            if ra is None or rb is None or metric is None:
                continue
            va, vb = ra.metrics.get(metric, {}), rb.metrics.get(metric, {})
            ids = set(va) & set(vb)
            if selection[task] is not None:
                ids &= set(selection[task])
            for d in sorted(ids, key=lambda x: (str(type(x)), x)):
                a.append(va[d])
                b.append(vb[d])
        return np.asarray(a, dtype=float), np.asarray(b, dtype=float)

    def compare(self, cond: Condition, selection: Selection, ref: Condition | None = None) -> Paired | None:
        ref = ref or self.unmasked
        if ref is None:
            return None
        key = (cond.key, ref.key, _selection_key(selection))
        if key not in self._cache:
            a, b = self.paired_vectors(cond, ref, selection)
            self._cache[key] = Paired.of(a, b, self.opts)
        return self._cache[key]

    def drop(self, cond: Condition, selection: Selection) -> tuple[int, float]:
        """(paired items, unmasked - masked mean) on ``selection``: :meth:`compare` without the
        bootstrap, for the hundreds of random sets of the random distributions."""
        key = ("drop", cond.key, _selection_key(selection))
        if key not in self._cache:
            a, b = self.paired_vectors(cond, self.unmasked, selection)
            self._cache[key] = (int(a.size), float(np.mean(b - a)) if a.size else float("nan"))
        return self._cache[key]

    def culture_items(self, culture: str, tasks) -> Selection:
        """The items of ``culture`` in every per-culture family, on ``tasks`` only."""
        sel: Selection = {}
        for fam in self.families:
            for c, items in fam.items.items():
                if norm(c) == norm(culture):
                    _merge(sel, items)
        return _restrict(sel, tasks)

    def metric_vectors(self, cond: Condition, ref: Condition, task: str, metric: str):
        """Per-item ``metric`` of ``cond`` and ``ref`` on the items both ran (paired by doc_id)."""
        va = cond.tasks[task].metrics.get(metric, {}) if task in cond.tasks else {}
        vb = ref.tasks[task].metrics.get(metric, {}) if task in ref.tasks else {}
        ids = sorted(set(va) & set(vb), key=lambda x: (str(type(x)), x))
        return np.asarray([va[d] for d in ids], dtype=float), np.asarray([vb[d] for d in ids], dtype=float)

    def accuracy(self, cond: Condition, task: str, metric: str | None = None) -> tuple[int, float]:
        """(items, mean) of the task's metric -- or of ``metric`` -- over ``cond``'s records."""
        r, m = cond.tasks.get(task), metric or self.metric.get(task)
        if r is None or m is None or not r.metrics.get(m):
            return 0, float("nan")
        v = np.fromiter(r.metrics[m].values(), dtype=float)
        return int(v.size), float(v.mean())

    def ppl(self, cond: Condition, task: str, ref: Condition | None = None) -> PplPaired | None:
        ref = ref or self.unmasked
        if ref is None:
            return None
        key = ("ppl", cond.key, ref.key, task)  # the bootstrap is the costly part: once per pair and task
        if key not in self._cache:
            self._cache[key] = self._paired_ppl(cond, ref, task)
        return self._cache[key]

    def _paired_ppl(self, cond: Condition, ref: Condition, task: str) -> PplPaired | None:
        ra, rb = cond.tasks.get(task), ref.tasks.get(task)
        if ra is None or rb is None:
            return None
        for m in PPL_PRIORITY:
            if m in ra.pairs and m in rb.pairs:
                pa, pb = ra.pairs[m], rb.pairs[m]
                ids = sorted(set(pa) & set(pb), key=lambda x: (str(type(x)), x))
                if not ids:
                    continue
                lla = np.array([pa[d][0] for d in ids])
                llb = np.array([pb[d][0] for d in ids])
                units = np.array([pb[d][1] for d in ids])
                return PplPaired(
                    task=task, metric=m, n=len(ids),
                    ppl_a=stats.weighted_perplexity(lla, units), ppl_b=stats.weighted_perplexity(llb, units),
                    ratio=stats.perplexity_ratio(lla, llb, units),
                    ci=stats.paired_bootstrap_ratio_ci(lla, llb, units, self.opts.n_resamples, self.opts.seed,
                                                       self.opts.alpha),
                )
        return None

    # -- rows of the report ------------------------------------------------------------------------
    def accuracy_row(self, cond: Condition, task: str) -> AccuracyRow:
        n, acc = self.accuracy(cond, task)
        paired = self.compare(cond, {task: None}) if self.unmasked is not None else None
        return AccuracyRow(**vars(PairedColumns.of(paired)), model=self.base_model, task=task, condition=cond.label,
                           metric=self.metric[task], n=n, acc=acc, masked_nothing=cond.masks_nothing)

    def culture_cell(self, cond: Condition, family: CultureFamily, culture: str) -> CultureCell | None:
        paired = self.compare(cond, family.items[culture])
        if paired is None or paired.n == 0:
            return None
        own = bool(cond.cultures) and norm(culture) == norm(cond.cultures[0])
        return CultureCell(**vars(PairedColumns.of(paired)), model=self.base_model, family=family.name,
                           masked=cond.label, culture=culture, own_culture=own)

    # -- selections ---------------------------------------------------------------------------
    def cultural_selection(self, cultures: list[str] | None) -> tuple[Selection, str]:
        """Items counted as "cultural" for a set of the given cultures (None/[] = all)."""
        sel: Selection = {}
        if self.cultural_from_families:
            wanted = {norm(c) for c in cultures} if cultures else None
            for fam in self.families:
                for culture, items in fam.items.items():
                    if wanted is None or norm(culture) in wanted:
                        _merge(sel, items)
            if sel:
                what = ("items of " + ", ".join(cultures)) if cultures else "all per-culture items"
                return sel, what
            if cultures:
                # the set's culture has no items: fall back to every cultural item
                for fam in self.families:
                    for items in fam.items.values():
                        _merge(sel, items)
                return sel, f"all per-culture items (no items of {', '.join(cultures)})"
        for t in self.cultural_tasks:
            sel[t] = None
        return sel, "all non-NLU accuracy tasks"

    def cond_cultures(self, cond: Condition) -> list[str] | None:
        if cond.kind == "random":
            target = next((c for c in self.set_conds if c.key == cond.group), None)
            return self.cond_cultures(target) if target is not None else None
        cs = [s.culture for s in cond.sets]
        if not cs or any(c is None for c in cs):
            return None
        return [self.display_culture(c) for c in cs]

    def display_culture(self, c: str) -> str:
        n = norm(c)
        return next((x for x in self.culture_names if norm(x) == n), c)

    # -- report order -------------------------------------------------------------------------
    def ordered_conditions(self) -> list[Condition]:
        """Unmasked first, then each set followed by its random seeds, then seeds matched to no set run."""
        out = [self.unmasked] if self.unmasked else []
        for s in self.set_conds:
            out.append(s)
            out += self.random_groups.get(s.key, [])
        done = {c.key for c in out}
        for g in self.random_groups.values():
            out += [c for c in g if c.key not in done]
        return out

    def group_blocks(self) -> list[tuple[Condition | None, list[Condition]]]:
        """(set condition or None, [random seeds matched to it]) in report order."""
        blocks = [(s, self.random_groups.get(s.key, [])) for s in self.set_conds]
        keys = {s.key for s in self.set_conds}
        blocks += [(None, g) for k, g in self.random_groups.items() if k not in keys]
        return blocks


def _selection_key(selection: Selection) -> tuple:
    return tuple(sorted((t, None if s is None else tuple(sorted(s, key=str))) for t, s in selection.items()))


def _restrict(selection: Selection, tasks) -> Selection:
    return {t: ids for t, ids in selection.items() if t in tasks}


def _merge(sel: Selection, items: Selection) -> None:
    for t, ids in items.items():
        if t in sel and sel[t] is None:
            continue
        if ids is None:
            sel[t] = None
        else:
            sel[t] = set(sel.get(t) or ()) | set(ids)


NOT_CULTURES = {"test", "ctrl", "control", "neur", "train", "val", "valid", "validation", "dev", "all",
                "selection", "sample", "general", "mc", "mcq", "cloze"}


def find_families(tasks: dict[str, TaskRecords], known: dict[str, str]) -> tuple[list[CultureFamily], dict[str, str]]:
    """Group per-culture items into families (one culture x culture matrix each).

    * a task whose docs carry two or more ``doc["culture"]`` values is a family of its own;
    * a task whose docs carry one culture, or whose name ends in ``_<known culture>``, joins the
      family ``<prefix>`` (``blend_cloze_korea`` -> ``blend_cloze``);
    * a task ``<prefix>_<x>`` of such a family with an unknown ``x`` adds culture ``x``; a family
      with a single member nested in a larger one (``blend_north`` + ``korea`` next to ``blend``)
      is folded into it (``blend`` + ``north_korea``).

    ``known`` maps normalised culture -> display name (from the neuron sets); it is extended
    with doc cultures and newly recognised suffixes.
    """
    known = dict(known)
    for rec in tasks.values():
        for c in rec.cultures.values():
            known.setdefault(norm(c), c)
    families: dict[str, CultureFamily] = {}
    members: dict[str, dict[str, str]] = {}  # prefix -> {task: culture}
    loose = []
    for task, rec in sorted(tasks.items()):
        doc_cultures = {known[norm(c)] for c in rec.cultures.values()}
        if len(doc_cultures) >= 2:
            fam = CultureFamily(name=task, kind="doc")
            for doc_id, c in rec.cultures.items():
                fam.items.setdefault(known[norm(c)], {task: set()})[task].add(doc_id)
            families[task] = fam
            continue
        if len(doc_cultures) == 1:
            (c,) = doc_cultures
            t = norm(task)
            prefix = task[: len(task) - len(norm(c)) - 1] if t.endswith("_" + norm(c)) and len(t) > len(norm(c)) + 1 else task
            members.setdefault(prefix, {})[task] = c
            continue
        hit = _suffix_culture(task, known)
        if hit:
            members.setdefault(hit[0], {})[task] = hit[1]
        else:
            loose.append(task)
    # unknown last token inside a family
    for task in list(loose):
        prefix, _, last = task.rpartition("_")
        if prefix in members and last and norm(last) not in NOT_CULTURES:
            known.setdefault(norm(last), last)
            members[prefix][task] = known[norm(last)]
            loose.remove(task)
    # single-member families nested in a bigger one
    for prefix in sorted(members, key=len, reverse=True):
        if len(members[prefix]) != 1:
            continue
        outer = [q for q in members if q != prefix and len(members[q]) >= 2 and prefix.startswith(q + "_")]
        if outer:
            q = max(outer, key=len)
            (task, _), = members.pop(prefix).items()
            rest = task[len(q) + 1:]
            known.setdefault(norm(rest), rest)
            members[q][task] = known[norm(rest)]
    # unknown multi-word suffix of a family (blend_west_java next to blend_korea, blend_uk)
    for task in loose:
        outer = [q for q in members if len(members[q]) >= 2 and task.startswith(q + "_")]
        if outer:
            q = max(outer, key=len)
            rest = task[len(q) + 1:]
            if norm(rest) not in NOT_CULTURES and not any(norm(w) in NOT_CULTURES for w in rest.split("_")):
                known.setdefault(norm(rest), rest)
                members[q][task] = known[norm(rest)]
    for prefix, tasks_of in sorted(members.items()):
        fam = CultureFamily(name=prefix, kind="suffix")
        for task, culture in sorted(tasks_of.items()):
            fam.items.setdefault(culture, {})[task] = None
        families[prefix] = fam
    return [families[k] for k in sorted(families)], known


def _suffix_culture(task: str, known: dict[str, str]) -> tuple[str, str] | None:
    t = norm(task)
    best = None
    for n, display in known.items():
        if t.endswith("_" + n) and len(t) > len(n) + 1 and (best is None or len(n) > len(norm(best[1]))):
            best = (task[: len(task) - len(n) - 1], display)
    return best


def analyse(conditions: list[Condition], opts: Options) -> ModelAnalysis:
    """Everything about one base model (all ``conditions`` share ``base_key``)."""
    base = conditions[0]
    unmasked = next((c for c in conditions if c.kind == "unmasked"), None)
    set_conds = sorted((c for c in conditions if c.kind == "set"),
                       key=lambda c: (0 if c.is_general else 1 if c.cultures else 2, c.label))
    random_groups: dict[str, list[Condition]] = {}
    for c in sorted((c for c in conditions if c.kind == "random"),
                    key=lambda c: (str(c.group), _seed_key(c.seed), c.label)):
        random_groups.setdefault(c.group, []).append(c)
    all_tasks = sorted({t for c in conditions for t in c.tasks})
    unpaired = {t: why for t in all_tasks if (why := item_mismatch(t, conditions, unmasked))}
    metric, acc_tasks, nlu, ppl_tasks, no_samples = {}, [], [], [], []
    nlu_names = {norm(t) for t in opts.nlu_tasks}
    for t in all_tasks:
        if t in unpaired:
            continue
        recs = [c.tasks[t] for c in conditions if t in c.tasks]
        with_samples = [r for r in recs if r.has_samples]
        if not with_samples:
            no_samples.append(t)
            continue
        if is_ppl_task(t, with_samples):
            if any(r.pairs for r in with_samples):
                ppl_tasks.append(t)
            else:
                no_samples.append(t)
            continue
        m = choose_metric([r for r in with_samples if r.metrics])
        if m is None:
            no_samples.append(t)
            continue
        metric[t] = m
        (nlu if norm(t) in nlu_names else acc_tasks).append(t)
    ppl_tasks.sort(key=lambda t: (t != "general_ppl", t))
    known = {}
    for c in conditions:
        for s in c.sets:
            if s.culture:
                known.setdefault(norm(s.culture), s.culture)
    for c in opts.extra_cultures:
        known.setdefault(norm(c), c)
    generation = [t for t in acc_tasks if any(GENERATION_METRIC in c.tasks[t].metrics
                                              for c in conditions if t in c.tasks)]
    # the pooled cultural items (specificity) and the culture matrices stay log-likelihood: a
    # generation task repeats its counterpart's items and is compared with it in its own section
    scored = [t for t in acc_tasks if t not in generation]
    ref_tasks = {t: (unmasked.tasks[t] if unmasked and t in unmasked.tasks else
                     next(c.tasks[t] for c in conditions if t in c.tasks)) for t in scored}
    families, known = find_families(ref_tasks, known)
    culture_names = sorted({c for f in families for c in f.items}, key=str.lower)
    fam_tasks = sorted({t for f in families for sel in f.items.values() for t in sel})
    ma = ModelAnalysis(
        base_key=base.base_key, base_model=base.base_model, conditions=conditions, unmasked=unmasked,
        set_conds=set_conds, random_groups=random_groups, tasks=all_tasks, acc_tasks=acc_tasks, nlu_tasks=nlu,
        ppl_tasks=ppl_tasks, no_sample_tasks=no_samples, metric=metric, families=families,
        culture_names=culture_names, cultural_tasks=fam_tasks or scored,
        cultural_from_families=bool(fam_tasks), opts=opts, unpaired=unpaired, generation_tasks=generation,
    )
    return ma


def item_mismatch(task: str, conditions: list[Condition], unmasked: Condition | None) -> str | None:
    """Why ``task``'s runs are not on the same items (None when they are).

    Items are paired by ``doc_id``; lm-eval's ``doc_hash`` says whether a ``doc_id`` is the same
    document in both runs.  Runs on different data files, permuted documents or different document
    sets would otherwise give a confident difference that measures the data, not the masking.
    """
    runs = [c for c in conditions if task in c.tasks and c.tasks[task].doc_hashes]
    ref = unmasked if unmasked is not None and unmasked in runs else (runs[0] if runs else None)
    if ref is None:
        return None
    ref_hashes = ref.tasks[task].doc_hashes
    for c in runs:
        hashes = c.tasks[task].doc_hashes
        if c is ref or hashes == ref_hashes:
            continue
        if set(hashes) != set(ref_hashes):
            return (f"{c.label} and {ref.label} ran on different documents ({len(hashes)} vs {len(ref_hashes)} "
                    f"doc_ids, {len(set(hashes) ^ set(ref_hashes))} not in both); not compared")
        differ = sum(1 for d in hashes if hashes[d] != ref_hashes[d])
        return (f"{c.label} and {ref.label} have different documents under the same doc_id ({differ} of "
                f"{len(hashes)} doc_hash values differ: another data file or another order); not compared")
    return None


def aggregate_mismatches(ma: ModelAnalysis) -> list[str]:
    """Compare each per-sample mean with the results file's ``<metric>,<filter>`` aggregate."""
    bad = []
    for c in ma.conditions:
        for t, rec in c.tasks.items():
            checks = []
            for m, values in rec.metrics.items():
                if values:
                    checks.append((m, float(np.mean(list(values.values())))))
            for m in ("word_perplexity", "byte_perplexity"):
                if rec.pairs.get(m):
                    v = list(rec.pairs[m].values())
                    checks.append((m, stats.weighted_perplexity([x[0] for x in v], [x[1] for x in v])))
            for m, mine in checks:
                agg = rec.aggregated.get(f"{m},{rec.filter}")
                if isinstance(agg, (int, float)) and not isinstance(agg, bool) and math.isfinite(agg):
                    if abs(agg - mine) > 1e-6 * max(1.0, abs(agg)):
                        bad.append(f"{c.label} / {t} / {m} ({mine:.6g} vs {agg:.6g})")
    return bad


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


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def specificity_verdict(p: Paired, dist: RandomDistributionRow, ppl: PplPaired | None, ppl_task: str | None,
                        opts: Options, masked_nothing: bool = False) -> str:
    """"specific: ..." when the set's cultural drop lies beyond its random sets' drops (empirical
    p < ``opts.alpha``, :func:`stats.empirical_p`) and the general perplexity ratio stays <=
    ``opts.ppl_threshold``; otherwise "not specific: " and every reason.  ``p`` (the pooled
    comparison with the unmasked run) only adds a caveat when its interval includes 0."""
    if masked_nothing:
        return "not specific: the set masked 0 neurons"
    if not _finite(dist.drop) or dist.n_items == 0:
        return "not specific: no cultural items to measure"
    reasons = []
    if dist.drop <= 0:
        reasons.append(f"cultural accuracy did not drop (drop {dist.drop:+.4f})")
    if not dist.n_random or not _finite(dist.empirical_p):
        reasons.append("no random baseline to compare with")
    elif dist.empirical_p >= opts.alpha:
        floor = 1 / (1 + dist.n_random)
        limit = (f"; {dist.n_random} random sets allow no p below {floor:.3f}" if floor >= opts.alpha else "")
        reasons.append(f"drop {dist.drop:.4f} is within its random sets' drops (empirical p {dist.empirical_p:.3f} "
                       f">= {opts.alpha:g}, n={dist.n_random}{limit})")
    if ppl_task is None:
        reasons.append("no general-perplexity task ran")
    elif ppl is None or not _finite(ppl.ratio):
        reasons.append(f"no paired `{ppl_task}` records")
    elif ppl.ratio > opts.ppl_threshold:
        reasons.append(f"general perplexity ratio {ppl.ratio:.4f} > {opts.ppl_threshold:g}")
    if reasons:
        return "not specific: " + "; ".join(reasons)
    caveat = ""
    if p is not None and p.ci is not None and _finite(p.ci.high) and p.ci.high >= 0:
        caveat = f" (but the pooled drop's {100 * (1 - opts.alpha):g}% CI vs unmasked includes 0)"
    return (f"specific: drop {dist.drop:.4f}, empirical p {dist.empirical_p:.3f} < {opts.alpha:g} among "
            f"{dist.n_random} random sets (their 95th percentile {dist.random_drop_p95:.4f}), perplexity ratio "
            f"{ppl.ratio:.4f} <= {opts.ppl_threshold:g}{caveat}")


def _seed_key(seed):
    try:
        return (0, float(seed), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(seed))


def summary_over(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


# ----------------------------------------------------------------------------------------
# the report's rows, computed once per model (``model_report``); render.py only formats them
# and report.json is the ``asdict()`` of the rows ``ModelReport.json_rows`` lists
# ----------------------------------------------------------------------------------------
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
            significant[i, j] = _finite(cell.mcnemar_p) and cell.mcnemar_p < SIGNIFICANT_P
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


# -- specificity -------------------------------------------------------------------------------
@dataclass
class ConditionMeasures:
    """What the specificity table shows for one condition: cultural drop, perplexity cost, NLU change."""

    condition: Condition
    cultural_items: str
    cultural: Paired | None
    ppl: dict[str, PplPaired | None]  # per perplexity task
    nlu: dict[str, Paired | None]  # per NLU control


@dataclass
class SpecificityBlock:
    """A set (None when its seeds have no set run) with its verdict row and random distribution,
    then its random seeds."""

    set_measures: ConditionMeasures | None
    row: SpecificityRow | None
    seeds: list[ConditionMeasures]
    distribution: RandomDistributionRow | None = None


@dataclass
class ScatterPoint:
    """A condition in the cultural drop vs general cost figure."""

    x: float  # cultural drop (-Δ)
    y: float  # general perplexity ratio
    label: str
    random: bool
    group: str
    short: str | None = None


@dataclass
class SpecificitySection:
    ppl_task: str | None  # the perplexity task the verdict uses
    blocks: list[SpecificityBlock]
    ppl_rows: list[tuple[str, PplPaired]]  # (condition, perplexity on one task vs unmasked)
    ppl_metrics: list[str]
    points: list[ScatterPoint]  # those with both coordinates finite

    @property
    def distributions(self) -> list[RandomDistributionRow]:
        return [b.distribution for b in self.blocks if b.distribution is not None]


def condition_measures(ma: ModelAnalysis, c: Condition) -> ConditionMeasures:
    sel, what = ma.cultural_selection(ma.cond_cultures(c))
    return ConditionMeasures(condition=c, cultural_items=what, cultural=ma.compare(c, sel),
                             ppl={t: ma.ppl(c, t) for t in ma.ppl_tasks},
                             nlu={t: ma.compare(c, {t: None}) for t in ma.nlu_tasks})


def random_distribution(ma: ModelAnalysis, setc: Condition, seeds: list[Condition]) -> RandomDistributionRow:
    """``setc``'s drop and its random sets' drops on the same items: its cultural items (its
    culture's for a culture set) in the tasks that it, the unmasked model and every random set ran."""
    common = set(setc.tasks) & set(ma.unmasked.tasks)
    for r in seeds:
        common &= set(r.tasks)
    cultures = ma.cond_cultures(setc)
    selection, what = ma.cultural_selection(cultures)
    selection = _restrict(selection, common)
    n_items, drop = ma.drop(setc, selection)
    random_drops = [ma.drop(r, selection)[1] for r in seeds]
    spread = stats.distribution_summary(random_drops)
    row = RandomDistributionRow(
        model=ma.base_model, set=setc.label, items=what, tasks=sorted(selection), n_items=n_items, drop=drop,
        n_random=spread["n"], random_drops=random_drops, random_drop_mean=spread["mean"],
        random_drop_p5=spread["low"], random_drop_p95=spread["high"],
        empirical_p=stats.empirical_p(drop, random_drops), masked_nothing=setc.masks_nothing)
    if cultures and len(cultures) == 1 and ma.cultural_from_families:
        own = cultures[0]
        others = [c for c in ma.culture_names if norm(c) != norm(own)]
        if others:
            gaps = [_culture_gap(ma, r, own, others, common) for r in seeds]
            gap_spread = stats.distribution_summary(gaps)
            row.culture, row.gap, row.random_gaps = own, _culture_gap(ma, setc, own, others, common), gaps
            row.random_gap_mean, row.random_gap_p5, row.random_gap_p95 = (gap_spread["mean"], gap_spread["low"],
                                                                          gap_spread["high"])
            row.gap_p = stats.empirical_p(row.gap, gaps)
    return row


def _culture_gap(ma: ModelAnalysis, cond: Condition, own: str, others: list[str], tasks) -> float:
    """Drop on ``own``'s items minus the mean of the drops on each other culture's items."""
    own_drop = ma.drop(cond, ma.culture_items(own, tasks))[1]
    other = [d for c in others if (items := ma.culture_items(c, tasks)) and _finite(d := ma.drop(cond, items)[1])]
    return own_drop - float(np.mean(other)) if other and _finite(own_drop) else float("nan")


def specificity_row(ma: ModelAnalysis, m: ConditionMeasures, dist: RandomDistributionRow,
                    ppl_task: str | None) -> SpecificityRow:
    c = m.condition
    verdict = specificity_verdict(m.cultural, dist, m.ppl.get(ppl_task) if ppl_task else None, ppl_task, ma.opts,
                                  masked_nothing=c.masks_nothing)
    return SpecificityRow(
        **vars(PairedColumns.of(m.cultural)), model=ma.base_model, specificity=c.label, cultural_items=m.cultural_items,
        n_random=dist.n_random, empirical_p=dist.empirical_p,
        ppl_ratio={t: (v.ratio if v else None) for t, v in m.ppl.items()},
        nlu_diff={t: (v.diff if v else None) for t, v in m.nlu.items()}, verdict=verdict,
        masked_nothing=c.masks_nothing)


def _point(m: ConditionMeasures, ppl_task: str | None, group: str, random: bool,
           drop: float | None = None) -> ScatterPoint:
    """``drop``: the x to use instead of the pooled cultural drop (a set's drop on its random sets' items)."""
    c = m.condition
    ppl = m.ppl.get(ppl_task) if ppl_task else None
    short = (f"seed {c.seed}" if c.seed is not None else c.label) if random else None
    return ScatterPoint(x=-m.cultural.diff if drop is None else drop, y=ppl.ratio if ppl else float("nan"),
                        label=c.label, random=random, group=group, short=short)


def specificity_section(ma: ModelAnalysis) -> SpecificitySection | None:
    """None without an unmasked run or without a masked one: nothing to compare."""
    if ma.unmasked is None or (not ma.set_conds and not ma.random_groups):
        return None
    ppl_task = ma.ppl_tasks[0] if ma.ppl_tasks else None
    blocks, points = [], []
    for setc, seed_conds in ma.group_blocks():
        seeds = [condition_measures(ma, r) for r in seed_conds]
        m = condition_measures(ma, setc) if setc is not None else None
        dist = random_distribution(ma, setc, seed_conds) if setc is not None else None
        row = specificity_row(ma, m, dist, ppl_task) if m is not None else None
        blocks.append(SpecificityBlock(set_measures=m, row=row, seeds=seeds, distribution=dist))
        if m is not None:
            # with random sets the set is placed by its drop on their items, as they are
            same_items = dist.drop if dist.n_random else None
            points.append(_point(m, ppl_task, setc.label, random=False, drop=same_items))
        points += [_point(s, ppl_task, setc.label if setc is not None else s.condition.group_label, random=True)
                   for s in seeds]
    ppl_rows = [(c.label, v) for c in ma.ordered_conditions() for t in ma.ppl_tasks if (v := ma.ppl(c, t))]
    return SpecificitySection(
        ppl_task=ppl_task, blocks=blocks, ppl_rows=ppl_rows,
        ppl_metrics=sorted({v.metric for c in ma.conditions for t in ma.ppl_tasks if (v := ma.ppl(c, t))}),
        points=[p for p in points if _finite(p.x) and _finite(p.y)])


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
