"""The selection study's leave-one-culture-out rows (``culnig-score study --leave-out``).

For every variant: its culture-general set selected on every culture (``full``) and, for each
culture ``c``, the one selected without ``c`` (:mod:`.loco`).  Evaluated on the study's requests
(the first ``per_culture`` items of each culture), per (variant, c): the in-sample drop of the full
set on ``c``'s items, the held-out drop of the set selected without ``c``, and its empirical p
among the drops on ``c`` of ``random_draws`` uniform random sets of the LARGEST held-out set's
size (one pool for every variant and culture, like the study's culture-specific pool; a smaller
set is tested conservatively).  Per variant: the mean held-out drop over the cultures, its
empirical p among the random sets' means over the same cultures, and the full set's general
perplexity ratio; a variant *transfers* when that mean drop is > 0, p < ``alpha`` and the ratio is
<= ``ppl_max``.  :func:`select_transfer` and :func:`transfer_pool` build the sets,
:func:`analyse_transfer` the numbers (pure), :func:`transfer_markdown` only formats.
"""

from __future__ import annotations

import math

from ..neuron_set import NeuronSet
from ..report.markdown import table
from ..scoring.attribution import ScoreTable
from .loco import general_thresholds, held_out_cultures, select_without
from .random_sets import random_uniform
from .rules import Thresholds, select_tables


def select_transfer(settings, tables: dict[str, ScoreTable], model_name: str = "") -> dict[str, dict]:
    """{variant: {"full": its culture-general set, "held_out": {culture: the set selected without it}}}."""
    cultures = held_out_cultures(tables["task"], "all" if settings.leave_out is True else settings.leave_out)
    out = {}
    for name, overrides in settings.variants.items():
        thresholds = Thresholds(**{**settings.thresholds, **overrides})
        full = select_tables(tables, general_thresholds(thresholds), model_name)["general"]
        out[name] = {"full": full, "held_out": {c: select_without(tables, thresholds, c, model_name) for c in cultures}}
    return out


def transfer_pool(transfer: dict[str, dict], draws: int) -> list[NeuronSet]:
    """``draws`` uniform random sets of the largest held-out set's size ([] when every one is empty)."""
    held = [s for v in transfer.values() for s in v["held_out"].values()]
    largest = max(held, key=len, default=None)
    if largest is None or largest.is_empty:
        return []
    return [random_uniform(largest, seed) for seed in range(draws)]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _p(value, null):
    from ..report.stats import empirical_p

    p = empirical_p(value, null) if value is not None else float("nan")
    return None if math.isnan(p) else p


def _jaccard(a: NeuronSet, b: NeuronSet) -> float | None:
    union = len(a.union(b))
    return len(a.intersect(b)) / union if union else None


def analyse_transfer(settings, evaluations: dict, transfer: dict[str, dict]) -> dict:
    """study.json's ``transfer`` from :func:`~.study.evaluate_all`'s ``evaluations`` (keys
    ``transfer`` and ``transfer_random``) and the sets (:func:`select_transfer`)."""
    base = evaluations["unmasked"]["acc"]

    def drop(result, culture):
        if result is None or result.get("empty") or culture not in result.get("acc", {}):
            return None
        return base[culture] - result["acc"][culture]

    randoms = evaluations.get("transfer_random", [])
    variants = {}
    for name, sets in transfer.items():
        ev = evaluations["transfer"][name]
        rows = {}
        for culture, held in sets["held_out"].items():
            if culture not in base:
                continue  # no evaluation item of this culture
            held_drop = drop(ev["held_out"].get(culture), culture)
            rows[culture] = {"neurons": len(held), "full_neurons": len(sets["full"]),
                             "jaccard_full": _jaccard(held, sets["full"]),
                             "in_sample_drop": drop(ev["full"], culture), "held_out_drop": held_drop,
                             "p_random": _p(held_drop, [drop(r, culture) for r in randoms])}
        measured = [c for c, r in rows.items() if r["held_out_drop"] is not None]
        mean_held = _mean(rows[c]["held_out_drop"] for c in measured)
        random_means = [_mean(drop(r, c) for c in measured) for r in randoms] if measured else []
        full = ev["full"]
        ppl = evaluations["unmasked"].get("nll_per_token")
        ppl_ratio = (math.exp(full["nll_per_token"] - ppl) if ppl is not None and "nll_per_token" in full else None)
        p_pooled = _p(mean_held, [m for m in random_means if m is not None])
        transfers = bool(mean_held is not None and mean_held > 0 and p_pooled is not None and p_pooled < settings.alpha
                         and (ppl_ratio is None or ppl_ratio <= settings.ppl_max))
        variants[name] = {"per_culture": rows, "mean_held_out_drop": mean_held,
                          "mean_in_sample_drop": _mean(rows[c]["in_sample_drop"] for c in measured),
                          "p_pooled": p_pooled, "ppl_ratio": ppl_ratio, "transfers": transfers}
    passing = [n for n, v in variants.items() if v["transfers"]]
    return {"random_draws": len(randoms), "variants": variants,
            "recommended": max(passing, key=lambda n: variants[n]["mean_held_out_drop"]) if passing else None}


def _fmt(value, spec=".1f", scale=1.0):
    return "–" if value is None else format(value * scale, spec)


def transfer_markdown(results: dict) -> list[str]:
    """The lines of study.md's transfer section (formatting only)."""
    t, c = results["transfer"], results["criteria"]
    lines = ["", "## Transfer: culture-general sets on held-out cultures", "",
             "Each culture-general set is selected again without one culture (its task, control and CountryRC "
             "columns; `--leave-out`) and evaluated on that culture's items. Drops are accuracy points; p is the "
             f"empirical p among {t['random_draws']} uniform random sets of the largest held-out set's size (per "
             "culture; for the mean, among the random sets' means over the same cultures). A variant transfers when "
             f"the mean held-out drop is > 0 with p < {c['alpha']:g} and the full set's general perplexity rises by "
             f"at most x{c['ppl_max']:g}.", ""]
    if t["recommended"]:
        lines += [f"**Transfers best:** {t['recommended']} (largest mean held-out drop among the variants that "
                  "transfer).", ""]
    else:
        lines += ["**No variant transfers** by that rule.", ""]
    lines += table(["variant", "mean held-out drop", "mean in-sample drop", "p (mean) vs random", "ppl ratio (full)",
                    "transfers"],
                   [[name, _fmt(v["mean_held_out_drop"], "+.1f", 100), _fmt(v["mean_in_sample_drop"], "+.1f", 100),
                     _fmt(v["p_pooled"], ".3f"), _fmt(v["ppl_ratio"], ".3f"), "yes" if v["transfers"] else "no"]
                    for name, v in t["variants"].items()])
    for name, v in t["variants"].items():
        lines += ["", f"### {name}: held out one at a time", ""]
        lines += table(["held-out culture", "neurons (held-out / full)", "Jaccard with full", "in-sample drop",
                        "held-out drop", "p vs random"],
                       [[culture, f"{r['neurons']} / {r['full_neurons']}", _fmt(r["jaccard_full"], ".2f"),
                         _fmt(r["in_sample_drop"], "+.1f", 100), _fmt(r["held_out_drop"], "+.1f", 100),
                         _fmt(r["p_random"], ".3f")] for culture, r in v["per_culture"].items()])
    return lines
