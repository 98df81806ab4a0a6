"""The specificity section: is a set's cultural drop beyond its size-matched random sets' drops,
at a small general cost?  One :class:`SpecificityBlock` per set, with the verdict
(:func:`specificity_verdict`) and the set's drop within its random sets' drops
(:class:`RandomDistributionRow`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import stats
from .analysis import ModelAnalysis, Options, Paired, PairedColumns, PplPaired, norm, restrict_selection
from .collect import Condition


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


def specificity_verdict(p: Paired, dist: RandomDistributionRow, ppl: PplPaired | None, ppl_task: str | None,
                        opts: Options, masked_nothing: bool = False) -> str:
    """"specific: ..." when the set's cultural drop lies beyond its random sets' drops (empirical
    p < ``opts.alpha``, :func:`stats.empirical_p`) and the general perplexity ratio stays <=
    ``opts.ppl_threshold``; otherwise "not specific: " and every reason.  ``p`` (the pooled
    comparison with the unmasked run) only adds a caveat when its interval includes 0."""
    if masked_nothing:
        return "not specific: the set masked 0 neurons"
    if not stats.is_finite(dist.drop) or dist.n_items == 0:
        return "not specific: no cultural items to measure"
    reasons = []
    if dist.drop <= 0:
        reasons.append(f"cultural accuracy did not drop (drop {dist.drop:+.4f})")
    if not dist.n_random or not stats.is_finite(dist.empirical_p):
        reasons.append("no random baseline to compare with")
    elif dist.empirical_p >= opts.alpha:
        floor = 1 / (1 + dist.n_random)
        limit = (f"; {dist.n_random} random sets allow no p below {floor:.3f}" if floor >= opts.alpha else "")
        reasons.append(f"drop {dist.drop:.4f} is within its random sets' drops (empirical p {dist.empirical_p:.3f} "
                       f">= {opts.alpha:g}, n={dist.n_random}{limit})")
    if ppl_task is None:
        reasons.append("no general-perplexity task ran")
    elif ppl is None or not stats.is_finite(ppl.ratio):
        reasons.append(f"no paired `{ppl_task}` records")
    elif ppl.ratio > opts.ppl_threshold:
        reasons.append(f"general perplexity ratio {ppl.ratio:.4f} > {opts.ppl_threshold:g}")
    if reasons:
        return "not specific: " + "; ".join(reasons)
    caveat = ""
    if p is not None and p.ci is not None and stats.is_finite(p.ci.high) and p.ci.high >= 0:
        caveat = f" (but the pooled drop's {100 * (1 - opts.alpha):g}% CI vs unmasked includes 0)"
    return (f"specific: drop {dist.drop:.4f}, empirical p {dist.empirical_p:.3f} < {opts.alpha:g} among "
            f"{dist.n_random} random sets (their 95th percentile {dist.random_drop_p95:.4f}), perplexity ratio "
            f"{ppl.ratio:.4f} <= {opts.ppl_threshold:g}{caveat}")


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
    selection = restrict_selection(selection, common)
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
    other = [d for c in others
             if (items := ma.culture_items(c, tasks)) and stats.is_finite(d := ma.drop(cond, items)[1])]
    return own_drop - float(np.mean(other)) if other and stats.is_finite(own_drop) else float("nan")


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
        points=[p for p in points if stats.is_finite(p.x) and stats.is_finite(p.y)])
