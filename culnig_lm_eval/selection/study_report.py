"""The selection study's results: per variant and culture the drops, ratios and empirical p
(:func:`analyse`, pure), then ``study.md`` (:func:`render_markdown`) and the Pareto figure
(:func:`pareto_figure`), which only format what :func:`analyse` computed."""

from __future__ import annotations

import math
from pathlib import Path

from ..report.markdown import table


# -- analysis (pure) --------------------------------------------------------------------------
def empirical_p(value: float, null: list[float]) -> float | None:
    """:func:`culnig_lm_eval.report.stats.empirical_p` (one-sided, ``(1 + #{null >= value}) / (1 + n)``),
    None instead of NaN without random sets (study.json holds no NaN)."""
    from ..report.stats import empirical_p as p_value

    p = p_value(value, null)
    return None if math.isnan(p) else p


def analyse(settings, evaluations: dict, info: dict) -> dict:
    """The study's results from :func:`~.study.evaluate_all`'s ``evaluations`` and the selection ``info``;
    ``settings`` (a :class:`~.study.StudySettings`) gives the pass criteria."""
    base = evaluations["unmasked"]
    cultures = sorted(base["acc"])
    ppl_base = base.get("nll_per_token")

    def drops(result):
        return {c: base["acc"][c] - result["acc"][c] for c in cultures}

    random_drops = [drops(r) for r in evaluations["random"]]
    variants = {}
    for name, labelled in evaluations["sets"].items():
        rows = {}
        for culture in cultures:
            result = labelled.get(culture)
            stability = info[name]["stability"].get(culture, {})
            row = {"neurons": info[name]["sizes"].get(culture, 0),
                   "halves_jaccard": stability.get("halves_jaccard"), "seeds_jaccard": stability.get("seeds_jaccard")}
            if result is None or result.get("empty"):
                rows[culture] = {**row, "empty": True, "passes": False}
                continue
            d = drops(result)
            own = d[culture]
            other = sum(v for c, v in d.items() if c != culture) / max(len(cultures) - 1, 1)
            # None where the other cultures did not drop on average (float noise of a zero mean included)
            ratio = own / other if other > 1e-9 else None
            p = empirical_p(own, [r[culture] for r in random_drops])
            ppl_ratio = (math.exp(result["nll_per_token"] - ppl_base)
                         if ppl_base is not None and "nll_per_token" in result else None)
            passes = (own > 0 and own >= settings.ratio_min * other and p is not None
                      and p < settings.alpha and (ppl_ratio is None or ppl_ratio <= settings.ppl_max))
            rows[culture] = {**row, "empty": False, "own_drop": own, "other_drop": other, "ratio": ratio,
                             "p_random": p, "ppl_ratio": ppl_ratio, "passes": bool(passes)}
        filled = [r for r in rows.values() if not r["empty"]]
        mean = lambda key: (sum(r[key] for r in filled if r[key] is not None) / len(filled)) if filled else None
        jaccards = [r["halves_jaccard"] for r in rows.values() if r["halves_jaccard"] is not None]
        variants[name] = {
            "selection": info[name]["selection"],
            "seconds": info[name]["seconds"],
            "passing": sum(r["passes"] for r in rows.values()),
            "empty": sum(r["empty"] for r in rows.values()),
            "mean_own_drop": mean("own_drop"),
            "mean_other_drop": mean("other_drop"),
            "mean_ppl_ratio": mean("ppl_ratio"),
            "mean_halves_jaccard": sum(jaccards) / len(jaccards) if jaccards else None,
            "halves": _halves_used(info[name]["stability"]),
            "masks_nothing": not filled,  # every culture's set is empty: no effect to speak of
            "per_culture": rows,
        }
    # a variant whose sets are all empty masks nothing: it cannot be recommended, however the others fare
    candidates = [n for n in variants if not variants[n]["masks_nothing"]]
    ranked = sorted(candidates, key=lambda n: (-variants[n]["passing"],
                                               -((variants[n]["mean_own_drop"] or 0) - (variants[n]["mean_other_drop"] or 0))))
    return {
        "cultures": cultures,
        "unmasked_acc": base["acc"],
        "items_per_culture": base["n"],
        "random": {"draws": len(random_drops),
                   "mean_drop": {c: sum(r[c] for r in random_drops) / len(random_drops) for c in cultures}
                   if random_drops else {}},
        "criteria": {"ratio_min": settings.ratio_min, "alpha": settings.alpha, "ppl_max": settings.ppl_max},
        "variants": variants,
        "recommended": ranked[0] if ranked else None,
    }


def _halves_used(stability: dict) -> dict | None:
    """{"pairs", "folds"} of the halves behind a variant's stability entries (None without fold tables)."""
    entry = next(iter(stability.values()), None)
    return {"pairs": entry.get("pairs", 1), "folds": entry.get("folds", 2)} if entry else None


def selection_only_summary(info: dict) -> dict:
    return {"variants": {name: {"selection": v["selection"], "seconds": v["seconds"], "sizes": v["sizes"],
                                "halves": _halves_used(v["stability"]),
                                "halves_jaccard": {label: e["halves_jaccard"] for label, e in v["stability"].items()},
                                "seeds_jaccard": {label: e["seeds_jaccard"] for label, e in v["stability"].items()
                                                  if e.get("seeds_jaccard") is not None}}
                         for name, v in info.items()}}


# -- formatting only ------------------------------------------------------------------------------
def _fmt(value, spec=".1f", scale=1.0, none="–"):
    if value is None:
        return none
    return format(value * scale, spec)


def render_markdown(results: dict, command: str = "") -> str:
    lines = ["# Selection study", ""]
    if command:
        lines += ["```", command, "```", ""]
    if "cultures" not in results:  # selection only
        rows = [[name, f"`{v['selection']}`", f"{v['seconds']:.2f}",
                 ", ".join(f"{k} {n}" for k, n in v["sizes"].items()),
                 ", ".join(f"{k} {_fmt(j, '.2f')}" for k, j in v["halves_jaccard"].items()) or "–"]
                for name, v in results["variants"].items()]
        lines += table(["variant", "selection", "seconds", "sizes", "halves Jaccard"], rows)
        lines += _stability_notes(results["variants"])
        return "\n".join(lines) + "\n"
    c = results["criteria"]
    lines += [
        f"Items per culture: {results['items_per_culture']}; random sets: {results['random']['draws']}. "
        f"A culture passes when its own drop is > 0 and >= {c['ratio_min']:g}x the mean drop on the other cultures, "
        f"its empirical p among the random sets is < {c['alpha']:g}, and general perplexity rises by at most "
        f"x{c['ppl_max']:g}. Drops are accuracy points (unmasked minus masked).",
        "",
    ]
    empty = [name for name, v in results["variants"].items() if v.get("masks_nothing")]
    if empty:
        lines += [f"**Empty:** {', '.join(empty)} selected no neuron for any culture (every set is empty, so masking "
                  "it changes nothing); such a variant is never recommended.", ""]
    if results["recommended"] is None:
        lines += ["**No variant is recommended:** none selected a neuron.", ""]
    rows = [[name + (" **(recommended)**" if name == results["recommended"] else "")
             + (" (empty: masks nothing)" if v.get("masks_nothing") else ""),
             f"{v['passing']}/{len(results['cultures'])}", v["empty"], _fmt(v["mean_own_drop"], "+.1f", 100),
             _fmt(v["mean_other_drop"], "+.1f", 100), _fmt(v["mean_ppl_ratio"], ".3f"),
             _fmt(v["mean_halves_jaccard"], ".2f"), f"{v['seconds']:.2f}"]
            for name, v in results["variants"].items()]
    lines += table(["variant", "cultures passing", "empty", "mean own drop", "mean other drop", "mean ppl ratio",
                    "mean halves Jaccard", "selection s"], rows)
    lines += _stability_notes(results["variants"])
    for name, v in results["variants"].items():
        rows = []
        for culture, r in v["per_culture"].items():
            if r["empty"]:
                rows.append([culture, 0, "–", "–", "–", "–", "–", _fmt(r["halves_jaccard"], ".2f"), "empty"])
                continue
            flag = " (unstable)" if r["halves_jaccard"] is not None and r["halves_jaccard"] < 0.3 else ""
            rows.append([culture, r["neurons"], _fmt(r["own_drop"], "+.1f", 100), _fmt(r["other_drop"], "+.1f", 100),
                         _fmt(r["ratio"], ".1f"), _fmt(r["p_random"], ".3f"), _fmt(r["ppl_ratio"], ".3f"),
                         _fmt(r["halves_jaccard"], ".2f") + flag, "yes" if r["passes"] else "no"])
        lines += ["", f"## {name} (`{v['selection']}`)", ""]
        lines += table(["culture", "neurons", "own drop", "other drop", "own/other", "p vs random", "ppl ratio",
                        "halves Jaccard", "passes"], rows)
    return "\n".join(lines) + "\n"


def _stability_notes(variants: dict) -> list[str]:
    """One line on the halves behind the Jaccard columns, and the seed overlaps where a variant drew pairs."""
    halves = next((v["halves"] for v in variants.values() if v.get("halves")), None)
    if not halves:
        return []
    lines = ["", f"Halves Jaccard: the mean over {halves['pairs']} complementary pair(s) of halves of the items "
                 f"({halves['folds']} folds); a filtered variant (-agree, -stable) shows its rule's."]
    for name, v in variants.items():
        seeds = v.get("seeds_jaccard") or {c: r["seeds_jaccard"] for c, r in (v.get("per_culture") or {}).items()
                                           if r.get("seeds_jaccard") is not None}
        if seeds:
            lines.append(f"{name}: overlap of the sets kept with two seeds of the pairs: "
                         + ", ".join(f"{c} {_fmt(j, '.2f')}" for c, j in seeds.items()) + ".")
    return lines


def pareto_figure(results: dict, path: Path) -> Path:
    """Left: general cost (ppl ratio) vs specificity gap per variant; right: own vs other drop per culture."""
    from ..report.figures import new_figure, palette, save_figure

    fig = new_figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    names = list(results["variants"])
    colors = dict(zip(names, palette(len(names))))
    for name, v in results["variants"].items():
        rows = [r for r in v["per_culture"].values() if not r["empty"]]
        if not rows:
            continue
        gap = 100 * ((v["mean_own_drop"] or 0) - (v["mean_other_drop"] or 0))
        left.scatter([v["mean_ppl_ratio"] or 1.0], [gap], color=colors[name], s=60, label=f"{name} ({v['passing']} pass)")
        right.scatter([100 * r["other_drop"] for r in rows], [100 * r["own_drop"] for r in rows],
                      color=colors[name], s=18, alpha=0.8)
    left.set_xlabel("mean general perplexity ratio (masked / unmasked)")
    left.set_ylabel("mean own-minus-other drop (points)")
    left.axvline(results["criteria"]["ppl_max"], color="grey", ls=":", lw=1)
    left.legend(fontsize=7)
    left.set_title("cost vs specificity, per variant")
    lims = right.get_xlim()
    xs = [min(lims[0], 0), max(lims[1], 1)]
    right.plot(xs, [results["criteria"]["ratio_min"] * x for x in xs], color="grey", ls=":", lw=1,
               label=f"own = {results['criteria']['ratio_min']:g} x other")
    right.axhline(0, color="black", lw=0.5)
    right.axvline(0, color="black", lw=0.5)
    right.set_xlabel("mean drop on the other cultures (points)")
    right.set_ylabel("own-culture drop (points)")
    right.legend(fontsize=7)
    right.set_title("each culture-specific set")
    return save_figure(fig, path)
