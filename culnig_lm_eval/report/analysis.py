"""The pairing engine: conditions of one base model compared item by item, from per-sample records only.

:func:`analyse` groups a model's conditions (unmasked, each set, the random sets matched to it),
picks each task's metric, finds the per-culture task families and returns a
:class:`ModelAnalysis`, whose methods pair any two conditions on any selection of items
(:meth:`ModelAnalysis.compare`, with a paired bootstrap interval and McNemar's test).  The
report's rows are built from it in :mod:`.sections` and :mod:`.specificity`.
"""

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
        return restrict_selection(sel, tasks)

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


def restrict_selection(selection: Selection, tasks) -> Selection:
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
