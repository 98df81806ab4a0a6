"""The transfer section: does a culture-general set hurt a culture it was not selected on?

Read from the leave-one-culture-out evaluations (``culnig-experiment``'s ``transfer/`` folder, or
any lm-eval output folders holding such runs): for every selection, each set selected without
one culture ``c`` (its meta names ``held_out``), evaluated on ``c``'s items, with its random sets
of the same size and the unmasked model on the same items.  Per held-out culture
(:class:`TransferRow`): the held-out drop (unmasked - masked accuracy), its empirical p among
its random sets, and beside it the in-sample drop of the selection's full culture-general set on
the same items (when it ran them) and, from the main report, ``c``'s own culture-specific set on
its held-out topics (the in-sample per-culture evaluation restricted to ``c``).  Per selection
(:class:`PooledTransfer`): the transfer effect, the mean held-out drop over the cultures (each
weighs 1) with a paired bootstrap interval over items within each culture, its empirical p among
the same means of the random sets (seed by seed), and a verdict that needs the full set's
general cost too.  Computed here; :mod:`.transfer_render` only formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import stats
from .analysis import ModelAnalysis, Selection, norm
from .collect import Condition


@dataclass
class TransferRow:
    """One held-out culture of one selection."""

    section: str = "transfer"
    model: str = ""
    selection: str = ""  # the sets' selection name
    culture: str = ""  # held out
    set: str = ""  # the held-out set's condition label
    tasks: list = field(default_factory=list)
    n_items: int = 0
    unmasked_acc: float = float("nan")
    held_out_drop: float = float("nan")  # unmasked - masked on the culture's items
    ci_low: float = float("nan")  # paired bootstrap interval of the drop
    ci_high: float = float("nan")
    in_sample_drop: float | None = None  # the full culture-general set on the same items (None: not run)
    n_random: int = 0
    random_drops: list = field(default_factory=list)  # in (draw, seed) order
    random_keys: list = field(default_factory=list)  # "<draw> <seed>" of each random drop
    random_drop_mean: float = float("nan")
    random_drop_p5: float = float("nan")
    random_drop_p95: float = float("nan")
    empirical_p: float = float("nan")  # (1 + #{random drops >= drop}) / (1 + n_random)
    neurons: int | None = None  # of the held-out set
    full_neurons: int | None = None  # of the full set
    jaccard_full: float | None = None  # overlap of the held-out set with the full set
    # the culture's own culture-specific set on its held-out topics (main report; None: not run)
    specific_drop: float | None = None
    specific_p: float | None = None
    specific_n_items: int | None = None
    specific_n_random: int | None = None
    masked_nothing: bool = False


@dataclass
class PooledTransfer:
    """One selection's transfer effect over its held-out cultures."""

    section: str = "transfer_pooled"
    model: str = ""
    selection: str = ""
    cultures: list = field(default_factory=list)
    n_items: int = 0
    held_out_drop: float = float("nan")  # mean over cultures of the held-out drop
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    in_sample_drop: float | None = None  # mean over the same cultures (None unless every culture has one)
    n_random: int = 0  # random draws present for every culture
    random_drops: list = field(default_factory=list)  # per (draw, seed): mean over cultures
    random_drop_mean: float = float("nan")
    random_drop_p5: float = float("nan")
    random_drop_p95: float = float("nan")
    empirical_p: float = float("nan")
    ppl_task: str | None = None
    ppl_ratio: float | None = None  # the full set's general cost (main report)
    verdict: str = ""


@dataclass
class TransferSection:
    model: str
    rows: list[TransferRow]
    pooled: list[PooledTransfer]
    notes: list[str] = field(default_factory=list)

    def json_rows(self) -> list:
        return [*self.rows, *self.pooled]


def held_out_culture(cond: Condition) -> str | None:
    """The culture a (single-set) condition's set was selected without, or None."""
    if cond.kind != "set" or len(cond.sets) != 1:
        return None
    held = cond.sets[0].meta.get("held_out")
    return str(held) if held else None


def _selection(cond: Condition) -> str:
    return str(cond.sets[0].selection or cond.sets[0].method or cond.label)


def culture_items(ma: ModelAnalysis, culture: str, tasks) -> Selection:
    """``culture``'s items in ``tasks``: by the documents' culture where they carry one, else the
    whole task when its name ends in ``_<culture>``."""
    ref = ma.unmasked
    items: Selection = {}
    for task in sorted(tasks):
        rec = ref.tasks.get(task) if ref is not None else None
        if rec is None or task not in ma.metric:
            continue
        if rec.cultures:
            ids = {d for d, c in rec.cultures.items() if norm(c) == norm(culture)}
            if ids:
                items[task] = ids
        elif norm(task).endswith("_" + norm(culture)):
            items[task] = None
    return items


def _jaccard(a, b) -> float | None:
    """|A ∩ B| / |A ∪ B| of two readable set files (None otherwise, or when both are empty)."""
    x, y = a.neuron_set, b.neuron_set
    if x is None or y is None:
        return None
    try:
        union = len(x.union(y))
        return len(x.intersect(y)) / union if union else None
    except ValueError:  # sets of different models: no overlap to speak of
        return None


def _full_set(conds: list[Condition], selection: str) -> Condition | None:
    """The culture-general set of ``selection`` selected on every culture, among ``conds``."""
    return next((c for c in conds if c.kind == "set" and c.is_general and held_out_culture(c) is None
                 and len(c.sets) == 1 and _selection(c) == selection), None)


def _random_key(cond: Condition) -> str:
    return f"{cond.sets[0].random_draw} {cond.seed}"


def transfer_row(ma: ModelAnalysis, cond: Condition, main=None) -> TransferRow:
    """``cond`` (a set selected without one culture) on that culture's items, against its random
    sets and beside the full set; ``main``: the main report's :class:`~.sections.ModelReport`."""
    culture, selection = held_out_culture(cond), _selection(cond)
    seeds = sorted(ma.random_groups.get(cond.key, []), key=lambda r: (r.sets[0].random_draw, str(r.seed)))
    common = set(cond.tasks) & set(ma.unmasked.tasks)
    for r in seeds:
        common &= set(r.tasks)
    items = culture_items(ma, culture, common)
    paired = ma.compare(cond, items)
    random_drops = [ma.drop(r, items)[1] for r in seeds]
    spread = stats.distribution_summary(random_drops)
    full = _full_set(ma.set_conds, selection)
    in_sample = ma.drop(full, items) if full is not None else (0, float("nan"))
    row = TransferRow(
        model=ma.base_model, selection=selection, culture=culture, set=cond.label, tasks=sorted(items),
        n_items=paired.n, unmasked_acc=paired.acc_b, held_out_drop=0.0 - paired.diff if paired.n else float("nan"),
        ci_low=0.0 - paired.ci.high, ci_high=0.0 - paired.ci.low,
        in_sample_drop=in_sample[1] if in_sample[0] else None,
        n_random=spread["n"], random_drops=random_drops, random_keys=[_random_key(r) for r in seeds],
        random_drop_mean=spread["mean"], random_drop_p5=spread["low"], random_drop_p95=spread["high"],
        empirical_p=stats.empirical_p(0.0 - paired.diff if paired.n else float("nan"), random_drops),
        neurons=cond.neuron_counts[0] if cond.neuron_counts else None,
        full_neurons=full.neuron_counts[0] if full is not None and full.neuron_counts else None,
        jaccard_full=_jaccard(cond.sets[0], full.sets[0]) if full is not None else None,
        masked_nothing=cond.masks_nothing)
    _add_specific(row, main)
    return row


def _add_specific(row: TransferRow, main) -> None:
    """The held-out culture's own culture-specific set of the same selection, from the main report's
    random-distribution rows (its drop on its culture's test-topic items, its empirical p)."""
    spec = getattr(main, "specificity", None) if main is not None else None
    if spec is None:
        return
    for block in spec.blocks:
        m, dist = block.set_measures, block.distribution
        if m is None or dist is None or len(m.condition.sets) != 1:
            continue
        s = m.condition.sets[0]
        if s.culture and norm(s.culture) == norm(row.culture) and _selection(m.condition) == row.selection:
            row.specific_drop, row.specific_p = dist.drop, dist.empirical_p
            row.specific_n_items, row.specific_n_random = dist.n_items, dist.n_random
            return


def _main_cost(main, selection: str) -> tuple[str | None, float | None]:
    """(perplexity task, the full set's perplexity ratio) in the main report."""
    ma = getattr(main, "analysis", None) if main is not None else None
    if ma is None or not ma.ppl_tasks:
        return None, None
    full = _full_set(ma.set_conds, selection)
    if full is None:
        return ma.ppl_tasks[0], None
    ppl = ma.ppl(full, ma.ppl_tasks[0])
    return ma.ppl_tasks[0], (ppl.ratio if ppl is not None and stats.is_finite(ppl.ratio) else None)


def pooled_transfer(ma: ModelAnalysis, selection: str, rows: list[TransferRow],
                    conds: dict[str, Condition], main=None) -> PooledTransfer:
    """The mean held-out drop over ``rows`` (one per held-out culture), its interval and its
    place among the random sets' means; ``conds``: culture -> the held-out set's condition."""
    measured = [r for r in rows if r.n_items and stats.is_finite(r.held_out_drop)]
    groups = []
    for r in measured:
        items = culture_items(ma, r.culture, r.tasks)
        masked, unmasked = ma.paired_vectors(conds[r.culture], ma.unmasked, items)
        groups.append((unmasked, masked))  # mean(unmasked - masked): the drop
    o = ma.opts
    ci = stats.stratified_bootstrap_ci(groups, o.n_resamples, o.seed, o.alpha)
    drop = sum(r.held_out_drop for r in measured) / len(measured) if measured else float("nan")
    keys = [k for k in (measured[0].random_keys if measured else [])
            if all(k in r.random_keys for r in measured)]
    random_means = [sum(r.random_drops[r.random_keys.index(k)] for r in measured) / len(measured) for k in keys]
    spread = stats.distribution_summary(random_means)
    in_sample = [r.in_sample_drop for r in measured]
    ppl_task, ppl_ratio = _main_cost(main, selection)
    pooled = PooledTransfer(
        model=ma.base_model, selection=selection, cultures=[r.culture for r in measured],
        n_items=sum(r.n_items for r in measured), held_out_drop=drop, ci_low=ci.low, ci_high=ci.high,
        in_sample_drop=(sum(in_sample) / len(in_sample)) if in_sample and None not in in_sample else None,
        n_random=spread["n"], random_drops=random_means, random_drop_mean=spread["mean"],
        random_drop_p5=spread["low"], random_drop_p95=spread["high"],
        empirical_p=stats.empirical_p(drop, random_means), ppl_task=ppl_task, ppl_ratio=ppl_ratio)
    pooled.verdict = transfer_verdict(pooled, o.alpha, o.ppl_threshold,
                                      masked_nothing=bool(rows) and all(r.masked_nothing for r in rows))
    return pooled


def transfer_verdict(p: PooledTransfer, alpha: float, ppl_threshold: float, masked_nothing: bool = False) -> str:
    """"transfers: ..." when the mean held-out drop is > 0 and beyond its random sets' means
    (empirical p < ``alpha``) and the full set's general perplexity ratio is <= ``ppl_threshold``
    (the cost the specificity verdict allows); otherwise "does not transfer: " and every reason."""
    if masked_nothing:
        return "does not transfer: the held-out sets masked 0 neurons"
    if not p.cultures or not stats.is_finite(p.held_out_drop):
        return "does not transfer: no held-out culture's items to measure"
    reasons = []
    if p.held_out_drop <= 0:
        reasons.append(f"held-out accuracy did not drop (mean drop {p.held_out_drop:+.4f})")
    if not p.n_random or not stats.is_finite(p.empirical_p):
        reasons.append("no random baseline present for every held-out culture")
    elif p.empirical_p >= alpha:
        reasons.append(f"mean held-out drop {p.held_out_drop:.4f} is within its random sets' ({p.n_random}) "
                       f"(empirical p {p.empirical_p:.3f} >= {alpha:g})")
    if p.ppl_ratio is None:
        reasons.append("the full set's general perplexity was not measured (main report)")
    elif p.ppl_ratio > ppl_threshold:
        reasons.append(f"the full set's general perplexity ratio {p.ppl_ratio:.4f} > {ppl_threshold:g}")
    if reasons:
        return "does not transfer: " + "; ".join(reasons)
    return (f"transfers: mean held-out drop {p.held_out_drop:.4f} over {len(p.cultures)} cultures, empirical p "
            f"{p.empirical_p:.3f} < {alpha:g} among {p.n_random} random means, general perplexity ratio "
            f"{p.ppl_ratio:.4f} <= {ppl_threshold:g}")


def transfer_section(ma: ModelAnalysis, main=None) -> TransferSection | None:
    """None without an unmasked run or a held-out set among ``ma``'s conditions."""
    held = [c for c in ma.set_conds if held_out_culture(c)]
    if ma.unmasked is None or not held:
        return None
    rows, pooled, notes = [], [], []
    for selection in dict.fromkeys(_selection(c) for c in held):
        conds = {held_out_culture(c): c for c in held if _selection(c) == selection}
        mine = sorted((transfer_row(ma, c, main) for c in conds.values()), key=lambda r: r.culture.lower())
        rows += mine
        pooled.append(pooled_transfer(ma, selection, mine, conds, main))
        if _full_set(ma.set_conds, selection) is None:
            notes.append(f"{selection}: the full culture-general set did not run on the held-out items, so the "
                         "in-sample drop is not shown")
    unmeasured = [f"{r.selection}/{r.culture}" for r in rows if not r.n_items]
    if unmeasured:
        notes.append(f"no paired item of the held-out culture for {', '.join(unmeasured)} (the unmasked model and "
                     "the held-out set must run the culture's items)")
    return TransferSection(model=ma.base_model, rows=rows, pooled=pooled, notes=notes)


def transfer_sections(transfer_dirs, models: list, opts, sets_dir=None) -> list[TransferSection]:
    """The transfer section of every model with held-out sets in ``transfer_dirs`` (lm-eval output
    folders, read on their own so their per-culture tasks stay out of the main report);
    ``models``: the main report's :class:`~.sections.ModelReport` list, matched by base model_args."""
    from .analysis import analyse
    from .collect import collect

    missing = [str(d) for d in transfer_dirs if not Path(d).exists()]
    if missing:
        raise FileNotFoundError(f"transfer folder {', '.join(missing)} does not exist; give the transfer/ folder "
                                "of a culnig-experiment run with leave_one_out")
    if not transfer_dirs:
        return []
    groups: dict[str, list[Condition]] = {}
    for c in collect(transfer_dirs, sets_dir=sets_dir).conditions:
        groups.setdefault(c.base_key, []).append(c)
    main = {mr.analysis.base_key: mr for mr in models}
    found = [transfer_section(analyse(conds, opts), main.get(key)) for key, conds in sorted(groups.items())]
    return [s for s in found if s is not None]
