"""The CULNIG selection rules: score tables -> a culture-general set and culture-specific sets.

:func:`select` applies the rule a :class:`Thresholds` names (``rule``: ``paper``, the published
code, ``paper-gate-only``, the same on the MLP neurons only, or ``crc-first``, this package's
earlier rule; ``specific_rule``: ``z``, ``contrast`` or ``rank-contrast`` for the
culture-specific side) and records it in every set's ``meta["selection"]``
(:func:`selection_name`: ``culnig-paper`` only where the tables allow the published rule).
What each rule and option does is in ``docs/method.md``; every remaining difference from the
published code, with its measured effect, in ``docs/differences.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from .._io import safe_name
from ..checks import number_in, true_or_false, whole_number
from ..neuron_set import NeuronSet, new_meta
from ..scoring.attribution import ScoreTable
from .ranking import neuron_order, ordered_sum, pooled_top, reference_z, top_mask

PAPER = "culnig-paper"
PAPER_GATE_ONLY = PAPER + "-gate-only"
CRC_FIRST = "culnig-crc-first"
RULES = {"paper": PAPER, "paper-gate-only": PAPER_GATE_ONLY, "crc-first": CRC_FIRST}
PAPER_RULES = ("paper", "paper-gate-only")
ATTENTION_KINDS = ("attn_q", "attn_k", "attn_v")
GENERAL_EXCLUSION = PAPER + "+general-exclusion"
NORMALISED_Z = "+normalised-z"
SPECIFIC_RULES = ("z", "contrast", "rank-contrast")

# rankings of the paper rule: module kinds pooled into one ranking
GENERAL_GROUPS = (("mlp_gate",), ("mlp_up",), ("attn_q", "attn_k", "attn_v"))
SPECIFIC_GROUPS = (("mlp_gate", "attn_q", "attn_k", "attn_v"), ("mlp_up",))
# labels select_and_save uses itself; a culture may not take them
RESERVED_LABELS = ("general", "selection")
RANDOM_PREFIX = "random"


class ThresholdError(ValueError):
    """A selection threshold out of its range."""


class ScoreTableError(ValueError):
    """A score table selection cannot use."""


@dataclass
class Thresholds:
    top_mlp: float = 1.0  # t, % of MLP neurons (culture-general)
    top_attention: float = 0.2  # t, % of attention neurons (culture-general)
    top_specific: float = 0.3  # t_s, % per culture
    crc_exclude: float = 1.0  # r, % by CRC score; 0 = exclude nothing
    general_exclude: float | None = None  # r_g, % by general-prose score; None = paper method
    z_min: float = 0.5
    min_samples: int = 5  # a culture with fewer task samples gets no culture-specific set
    # opt-in: divide each culture's S_c by its mean |S_c| before the z-score, so one culture whose
    # answers the model finds likely (P^2 weighting) does not dominate every neuron's z-score
    normalise_z: bool = False
    # "paper" (the published code), "paper-gate-only" (the same on the MLP neurons only) or
    # "crc-first" (ours: CRC excluded before the cut)
    rule: str = "paper"
    specific_rule: str = "z"  # "z" (the paper), "contrast" or "rank-contrast" (ours; docs/method.md)
    exclude_general_set: bool = False  # contrast rules: culture-general neurons never in a specific set
    # ours: a culture-specific set keeps only the neurons that the same rule also selects on both
    # disjoint halves of the items (complementary-pairs stability selection with one pair, kept
    # at frequency 1); needs the fold tables, so select_and_save / the study apply it (stability.py)
    halves_agree: bool = False
    # ours: stability selection (stability.py): a culture-specific set is the neurons the rule
    # selects on at least this fraction of the halves of up to stable_pairs complementary pairs
    # of fold tables (drawn with stable_seed when there are more); None = off
    stable_fraction: float | None = None
    stable_pairs: int = 25
    stable_seed: int = 0

    def __post_init__(self):
        def check(key: str, test, **bounds):
            value = getattr(self, key)
            return test(value, f"{key}={value!r}", error=ThresholdError, **bounds)

        percent = {"low": 0, "high": 100, "low_open": True, "what": "percentage"}
        self.top_mlp = check("top_mlp", number_in, **percent)
        self.top_attention = check("top_attention", number_in, **percent)
        self.top_specific = check("top_specific", number_in, **percent)
        self.crc_exclude = check("crc_exclude", number_in, **{**percent, "low_open": False})  # 0: exclude nothing
        if self.general_exclude is not None:
            self.general_exclude = check("general_exclude", number_in, **percent)
        self.z_min = check("z_min", number_in)
        check("min_samples", whole_number)
        check("normalise_z", true_or_false)
        if self.rule not in RULES:
            raise ThresholdError(f"rule={self.rule!r}: must be one of {', '.join(RULES)}")
        if self.specific_rule not in SPECIFIC_RULES:
            raise ThresholdError(f"specific_rule={self.specific_rule!r}: must be one of {', '.join(SPECIFIC_RULES)}")
        if self.specific_rule != "z" and self.rule not in PAPER_RULES:
            raise ThresholdError(f"specific_rule={self.specific_rule!r} works with rule='paper' only")
        check("exclude_general_set", true_or_false)
        if self.exclude_general_set and self.specific_rule == "z":
            raise ThresholdError("exclude_general_set needs specific_rule 'contrast' or 'rank-contrast'")
        check("halves_agree", true_or_false)
        if self.stable_fraction is not None:
            self.stable_fraction = check("stable_fraction", number_in, low=0, high=1, low_open=True)
            if self.halves_agree:
                raise ThresholdError("halves_agree and stable_fraction are two stability filters: choose one")
        check("stable_pairs", whole_number, least=1, below=2**63 - 1)
        check("stable_seed", whole_number, least=0, below=2**63 - 1)

    def top_for(self, kind: str) -> float:
        return self.top_mlp if kind.startswith("mlp") else self.top_attention

    @property
    def selection_name(self) -> str:
        """The name from the thresholds alone; :func:`selection_name` adds what the tables change."""
        return RULES[self.rule] + self.name_suffix

    @property
    def name_suffix(self) -> str:
        name = "+general-exclusion" if self.general_exclude is not None else ""
        name += NORMALISED_Z if self.normalise_z else ""
        name += f"+{self.specific_rule}" if self.specific_rule != "z" else ""
        name += "+general-set-excluded" if self.exclude_general_set else ""
        name += "+halves-agree" if self.halves_agree else ""
        return name + (f"+stable{100 * self.stable_fraction:g}" if self.stable_fraction is not None else "")


# -- checks ------------------------------------------------------------------------------
def _where(table: ScoreTable, role: str) -> str:
    return f"{role} score table {table.meta.get('path') or '<memory>'}"


def check_table(table: ScoreTable, role: str, kinds=None):
    """Refuse a table whose cultures, counts and scores disagree or hold NaN/inf (names the file)."""
    where = _where(table, role)
    n = len(table.cultures)
    if len(set(table.cultures)) != n:
        raise ScoreTableError(f"{where}: the same culture is listed twice")
    counts = torch.as_tensor(table.counts)
    if counts.shape != (n,):
        raise ScoreTableError(f"{where}: {n} cultures but counts of shape {tuple(counts.shape)}")
    if counts.is_floating_point() or bool((counts < 0).any()):
        raise ScoreTableError(f"{where}: sample counts must be non-negative integers")
    if not table.scores:
        raise ScoreTableError(f"{where}: holds no scores")
    for kind, scores in table.scores.items():
        if scores.dim() != 3 or scores.shape[-1] != n:
            raise ScoreTableError(
                f"{where}: {kind} scores have shape {tuple(scores.shape)}, expected [layers, width, {n} cultures]"
            )
        if not math.isfinite(float(scores.sum(dtype=torch.float64))):  # NaN/inf propagate; no fp64 overflow
            raise ScoreTableError(f"{where}: {kind} scores contain NaN or infinite values; re-run the scoring")
    missing = [k for k in (kinds or ()) if k not in table.scores]
    if missing:
        raise ScoreTableError(f"{where}: no scores for {', '.join(missing)} (the task table has them); "
                              "score every role with the same module kinds")


def _check_cultures(task: ScoreTable):
    for culture in task.cultures:
        safe_name(culture, f"culture name in {_where(task, 'task')}")
        if culture in RESERVED_LABELS or culture.startswith(RANDOM_PREFIX):
            raise ScoreTableError(
                f"{_where(task, 'task')}: culture name {culture!r} clashes with the file names of the sets "
                f"folder ({', '.join(RESERVED_LABELS)}, {RANDOM_PREFIX}*); rename the culture"
            )


def _check_tables(tables: dict[str, ScoreTable | None]):
    present = {role: t for role, t in tables.items() if t is not None}
    task = present["task"]
    for role, table in present.items():
        check_table(table, role, kinds=list(task.scores) if role != "task" else None)
        for kind in task.scores:
            if table.scores[kind].shape[:2] != task.scores[kind].shape[:2]:
                raise ScoreTableError(
                    f"{_where(table, role)}: {kind} scores are {tuple(table.scores[kind].shape[:2])} "
                    f"(layers, width) but the task table's are {tuple(task.scores[kind].shape[:2])}: different models"
                )
    shapes = {role: t.meta.get("model") for role, t in present.items()}
    for role, shape in shapes.items():
        if shape != shapes["task"]:
            raise ValueError(f"score tables come from different models: {role} has {shape}, expected {shapes['task']}")
    _check_cultures(task)


# -- ranking (top_mask, pooled_top and the published order of ties: ranking.py) ----------
def _groups(kinds, groups) -> list[list[str]]:
    return [[k for k in group if k in kinds] for group in groups if any(k in kinds for k in group)]


def _order(table: ScoreTable) -> dict[str, torch.Tensor]:
    """The published scorer's order of the table's neurons: ties at a cut go to the first."""
    shapes = {k: tuple(v.shape[:2]) for k, v in table.scores.items()}
    return neuron_order(shapes, (table.meta.get("model") or {}).get("model_type"))


def _sum_scores(table: ScoreTable, kind: str) -> torch.Tensor:
    """[layers, width, cultures] in float64 (exact sums for the comparisons of the paper rule)."""
    return table.scores[kind].to(torch.float64)


def _count(table: ScoreTable) -> int:
    return max(int(torch.as_tensor(table.counts).sum()), 1)


def _culture_columns(table: ScoreTable, kind: str, cultures: list[str]) -> torch.Tensor:
    """[layers, width, len(cultures)] float64 sums / the table's total count; an absent culture gives 0."""
    scores = table.scores[kind]
    out = torch.zeros(*scores.shape[:2], len(cultures), dtype=torch.float64)
    mine = [(j, table.cultures.index(c)) for j, c in enumerate(cultures) if c in table.cultures]
    if mine:
        to, source = (torch.tensor(ix) for ix in zip(*mine))
        out[..., to] = scores.index_select(-1, source).to(torch.float64)
    return out.div_(_count(table))


def _z_scores(per_c: torch.Tensor, normalise: bool) -> torch.Tensor:
    """Across cultures, population std, in the published arithmetic (ranking.reference_z);
    z = 0 where every culture has the same score."""
    if normalise:
        per_c = per_c / per_c.abs().mean(dim=(0, 1), keepdim=True).clamp(min=1e-30)
    return reference_z(per_c)


def _general_excluded(general, group, thresholds, order=None) -> dict[str, torch.Tensor] | None:
    """Our pre-cut extension: the top r_g% by general-prose score, ranked like the cut."""
    if general is None:
        return None
    return pooled_top({k: _sum_scores(general, k).sum(-1) for k in group}, thresholds.general_exclude, order=order)


def contrast_scores(per_culture: torch.Tensor, ranked: bool) -> torch.Tensor:
    """[neurons, cultures] -> contrast [neurons, cultures]: a culture's scaled score minus the
    mean scaled score of the other cultures.  Scaled = divided by the culture's mean |score|
    (``ranked=False``) or replaced by its percentile rank in [0, 1] (``ranked=True``)."""
    n, cultures = per_culture.shape
    if ranked:
        # one contiguous fp32 row per culture: sorting rows is several times faster than columns of fp64
        rows = per_culture.t().to(torch.float32).contiguous()
        order = rows.argsort(dim=1)
        ranks = torch.empty(rows.shape, dtype=per_culture.dtype)
        ranks.scatter_(1, order, torch.arange(n, dtype=per_culture.dtype).expand(cultures, n).contiguous())
        scaled = ranks.t() / max(n - 1, 1)
    else:
        scaled = per_culture / per_culture.abs().mean(dim=0, keepdim=True).clamp(min=1e-30)
    if cultures == 1:
        return scaled
    others = (scaled.sum(dim=1, keepdim=True) - scaled) / (cultures - 1)
    return scaled - others


def _contrast_specific(per_c, crc_c, crc_index, general, general_masks, thresholds, cultures, specific, order):
    """{culture: masks}: the top t_s% by contrast (docs/method.md), exclusions before the cut."""
    kinds = list(per_c)
    out = {c: {} for c in specific}
    for group in _groups(kinds, SPECIFIC_GROUPS):
        sizes = [per_c[k][..., 0].numel() for k in group]
        values = torch.cat([per_c[k].reshape(-1, len(cultures)) for k in group])  # [neurons, cultures]
        ranks = torch.cat([order[k].flatten() for k in group])
        contrast = contrast_scores(values, ranked=thresholds.specific_rule == "rank-contrast")
        excluded = torch.zeros(values.shape[0], dtype=torch.bool)
        prose = _general_excluded(general, group, thresholds, order)
        if prose is not None:
            excluded |= torch.cat([prose[k].flatten() for k in group])
        if thresholds.exclude_general_set:
            excluded |= torch.cat([general_masks[k].flatten() if k in general_masks
                                   else torch.zeros(per_c[k][..., 0].numel(), dtype=torch.bool) for k in group])
        for c in specific:
            i = cultures.index(c)
            allowed = ~excluded & (values[:, i] > 0)
            if crc_c is not None:
                crc_top = pooled_top({k: crc_c[k][..., crc_index[c]] for k in group}, thresholds.crc_exclude,
                                     order=order)
                allowed &= ~torch.cat([crc_top[k].flatten() for k in group])
            chosen = top_mask(contrast[:, i], thresholds.top_specific, allowed, ranks)
            for k, part in zip(group, chosen.split(sizes)):
                out[c][k] = part.view_as(per_c[k][..., 0])
    return out


def _paper_masks(task, control, crc, general, thresholds, cultures, specific):
    """(general masks, {culture: masks}) by the published rule (docs/method.md), in its
    arithmetic: the culture-general score is the task's sum over its cultures / N_task minus the
    control's sum over ALL its cultures / N_control (a culture only the control has counts
    there, as in decide_culture_general_neurons.py); ties at every cut in its order."""
    kinds = list(task.scores)
    order = _order(task)
    per_c = {k: _culture_columns(task, k, cultures) for k in kinds}
    if control is not None:
        per_c = {k: v - _culture_columns(control, k, cultures) for k, v in per_c.items()}
    crc_c = {k: _sum_scores(crc, k) for k in kinds} if crc is not None else None

    general_masks = {}
    for group in _groups(kinds, GENERAL_GROUPS):
        diff = {k: ordered_sum(_sum_scores(task, k)) / _count(task) for k in group}
        if control is not None:
            diff = {k: v - ordered_sum(_sum_scores(control, k)) / _count(control) for k, v in diff.items()}
        excluded = _general_excluded(general, group, thresholds, order)
        chosen = pooled_top(diff, thresholds.top_for(group[0]), excluded, order)
        if crc_c is not None:
            crc_top = pooled_top({k: ordered_sum(crc_c[k]) for k in group}, thresholds.crc_exclude, order=order)
            chosen = {k: chosen[k] & ~crc_top[k] for k in group}
        general_masks.update(chosen)

    crc_index = {c: i for i, c in enumerate(crc.cultures)} if crc is not None else {}
    if thresholds.specific_rule != "z":
        return general_masks, _contrast_specific(per_c, crc_c, crc_index, general, general_masks, thresholds,
                                                 cultures, specific, order)
    z = {k: _z_scores(per_c[k], thresholds.normalise_z) for k in kinds}
    specific_masks = {c: {} for c in specific}
    for group in _groups(kinds, SPECIFIC_GROUPS):
        excluded = _general_excluded(general, group, thresholds, order)
        for c in specific:
            i = cultures.index(c)
            chosen = pooled_top({k: per_c[k][..., i] for k in group}, thresholds.top_specific, excluded, order)
            chosen = {k: chosen[k] & (z[k][..., i] >= thresholds.z_min) for k in group}
            if crc_c is not None:
                crc_top = pooled_top({k: crc_c[k][..., crc_index[c]] for k in group}, thresholds.crc_exclude,
                                     order=order)
                chosen = {k: chosen[k] & ~crc_top[k] for k in group}
            specific_masks[c].update(chosen)
    return general_masks, specific_masks


# -- the earlier rule (crc-first), unchanged --------------------------------------------
def _mean(table: ScoreTable, kind: str) -> torch.Tensor:
    """[layers, width]: score summed over all samples / number of samples."""
    return table.scores[kind].sum(-1) / table.counts.sum().clamp(min=1)


def _per_culture(table: ScoreTable, kind: str, cultures: list[str]) -> torch.Tensor:
    """[layers, width, len(cultures)] per-culture means; a culture the table lacks gets the overall mean."""
    overall = _mean(table, kind)
    cols = []
    for c in cultures:
        if c in table.cultures and table.counts[table.cultures.index(c)] > 0:
            i = table.cultures.index(c)
            cols.append(table.scores[kind][..., i] / table.counts[i])
        else:
            cols.append(overall)
    return torch.stack(cols, dim=-1)


def _crc_first_masks(task, control, crc, general, thresholds, cultures, specific):
    general_masks, specific_masks = {}, {c: {} for c in specific}
    for kind in task.scores:
        diff = _mean(task, kind) - (_mean(control, kind) if control is not None else 0)
        per_c = _per_culture(task, kind, cultures)
        if control is not None:
            per_c = per_c - _per_culture(control, kind, cultures)

        excluded = torch.zeros_like(diff, dtype=torch.bool)
        if general is not None:
            excluded |= top_mask(_mean(general, kind), thresholds.general_exclude)
        crc_general = top_mask(_mean(crc, kind), thresholds.crc_exclude) if crc is not None else excluded
        general_masks[kind] = top_mask(diff, thresholds.top_for(kind), ~(excluded | crc_general))

        z = _z_scores(per_c, thresholds.normalise_z)
        crc_c = _per_culture(crc, kind, cultures) if crc is not None else None
        for i, c in enumerate(cultures):
            if c not in specific:
                continue
            allowed = ~excluded
            if crc_c is not None:
                allowed &= ~top_mask(crc_c[..., i], thresholds.crc_exclude)
            specific_masks[c][kind] = top_mask(per_c[..., i], thresholds.top_specific, allowed) & (
                z[..., i] >= thresholds.z_min
            )
    return general_masks, specific_masks


# -- names: culnig-paper only where the tables allow the published rule ------------------
def crc_clamped(crc: ScoreTable | None) -> bool:
    """Whether a CRC table's samples were clamped at 0.  Tables record it (``clamped_at_zero``);
    a score file of an earlier version (``settings`` but no record) clamped its CRC samples."""
    if crc is None:
        return False
    recorded = crc.meta.get("clamped_at_zero")
    return bool(recorded) if recorded is not None else "settings" in crc.meta


def _kinds(tables: dict) -> set[str]:
    task = tables.get("task")
    return set(task.scores) if task is not None else set()


def selection_name(thresholds: Thresholds, tables: dict[str, ScoreTable | None]) -> str:
    """``thresholds.selection_name`` with what the tables change: the paper rule on tables
    without attention scores is ``culnig-paper-gate-only``; ``+up-proj`` where up_proj was
    scored (the paper rules rank it; the published code never does); ``+crc-clamped`` where the
    CRC samples were clamped at 0 (the published scorer leaves them unclamped)."""
    kinds = _kinds(tables)
    name = RULES[thresholds.rule]
    if thresholds.rule == "paper" and not kinds & set(ATTENTION_KINDS):
        name = PAPER_GATE_ONLY
    if thresholds.rule in PAPER_RULES and "mlp_up" in kinds:
        name += "+up-proj"
    if crc_clamped(tables.get("crc")):
        name += "+crc-clamped"
    return name + thresholds.name_suffix


def departures(thresholds: Thresholds, tables: dict[str, ScoreTable | None]) -> list[str]:
    """One line per way the tables keep the paper rule from being the published code (empty
    for another rule, or when they do not)."""
    if thresholds.rule not in PAPER_RULES:
        return []
    kinds, lines = _kinds(tables), []
    if thresholds.rule == "paper" and not kinds & set(ATTENTION_KINDS):
        lines.append("the task table has no attention q/k/v scores, which the published ranking pools beside the "
                     f"MLP gate: the sets are named {PAPER_GATE_ONLY} (culnig-score run scores attention unless "
                     "--no-attention)")
    if "mlp_up" in kinds:
        lines.append("up_proj was scored (--up-proj) and is ranked beside the gate: the sets are named +up-proj "
                     "(the published code never ranks up_proj)")
    if crc_clamped(tables.get("crc")):
        lines.append("the CountryRC samples were clamped at 0 (--clamp-crc, or a score file of an earlier version): "
                     "the sets are named +crc-clamped (the published scorer leaves CountryRC unclamped)")
    return lines


def _without_attention(table: ScoreTable | None) -> ScoreTable | None:
    if table is None:
        return None
    kept = {k: v for k, v in table.scores.items() if k not in ATTENTION_KINDS}
    return replace(table, scores=kept) if len(kept) < len(table.scores) else table


# -- public ------------------------------------------------------------------------------
def select(
    task: ScoreTable,
    control: ScoreTable | None = None,
    crc: ScoreTable | None = None,
    general: ScoreTable | None = None,
    thresholds: Thresholds = Thresholds(),
    model_name: str = "",
) -> dict[str, NeuronSet]:
    """{"general": set, "<culture>": set, ...} from the score tables."""
    if thresholds.halves_agree or thresholds.stable_fraction is not None:
        raise ThresholdError("halves_agree and stable_fraction need the fold tables of the items: select with "
                             "select_and_save(half_tables=...) or culnig-score select --half-scores-dir")
    _check_tables({"task": task, "control": control, "crc": crc, "general": general})
    if thresholds.rule == "paper-gate-only":  # the paper's rule on the MLP neurons alone
        task, control, crc, general = (_without_attention(t) for t in (task, control, crc, general))
    if thresholds.general_exclude is not None and general is None:
        raise ValueError("general_exclude was set but no general-prose score table was given")
    if thresholds.general_exclude is None:
        general = None  # unused by the paper's method: keep it out of the provenance too
    counts = dict(zip(task.cultures, torch.as_tensor(task.counts).tolist()))
    cultures = [c for c in task.cultures if counts[c] > 0]
    specific = [c for c in cultures if counts[c] >= thresholds.min_samples]
    if thresholds.rule in PAPER_RULES and crc is not None:
        crc_counts = dict(zip(crc.cultures, torch.as_tensor(crc.counts).tolist()))
        specific = [c for c in specific if crc_counts.get(c, 0) > 0]
    masks = _paper_masks if thresholds.rule in PAPER_RULES else _crc_first_masks
    general_masks, specific_masks = masks(task, control, crc, general, thresholds, cultures, specific)

    shape = dict(task.meta.get("model") or {})
    shape["name"] = model_name or shape.get("name", "")
    provenance = {
        role: {
            "path": t.meta.get("path"),
            "sha256": t.meta.get("sha256"),
            "task": t.meta.get("task"),
            "samples": dict(zip(t.cultures, torch.as_tensor(t.counts).tolist())),
            **({"data": t.meta["data"]} if t.meta.get("data") else {}),  # the files the samples came from
            **({"task_versions": t.meta["task_versions"]} if t.meta.get("task_versions") else {}),
        }
        for role, t in {"task": task, "control": control, "crc": crc, "general": general}.items()
        if t is not None
    }
    tasks = [t.meta.get("task") for t in (task, control, crc, general) if t is not None]
    name = selection_name(thresholds, {"task": task, "crc": crc})
    common = dict(method="culnig", selection=name, tasks=tasks,
                  hyperparameters=asdict(thresholds))
    sets = {"general": NeuronSet.from_masks(general_masks, {**new_meta(shape, **common), "provenance": provenance})}
    for c in specific:
        meta = {**new_meta(shape, culture=c, **common), "provenance": provenance}
        sets[c] = NeuronSet.from_masks(specific_masks[c], meta)
    return sets


def select_tables(tables: dict[str, ScoreTable], thresholds: Thresholds, model_name: str = "") -> dict[str, NeuronSet]:
    """:func:`select` on a {role: table} mapping."""
    return select(tables["task"], tables.get("control"), tables.get("crc"), tables.get("general"),
                  thresholds=thresholds, model_name=model_name)
