"""Issue 11: the contrast selections, fold tables and stability, and ``culnig-score study``."""

import json
import math

import pytest
import torch

from culnig_lm_eval.scoring.attribution import ScoreTable
from culnig_lm_eval.selection.rules import Thresholds, ThresholdError, select
from culnig_lm_eval.selection.stability import HalfTableError, complement, halves, jaccard
from culnig_lm_eval.selection.study import StudyError, StudySettings
from culnig_lm_eval.selection.study_report import analyse, empirical_p

LAYERS = 3
WIDTHS = {"mlp_gate": 40, "attn_q": 16, "attn_k": 4, "attn_v": 4}
GROUP = ["mlp_gate", "attn_q", "attn_k", "attn_v"]
CULTURES = ["china", "iran", "spain", "uk"]
SHAPE = {"model_type": "llama", "num_layers": LAYERS, "widths": WIDTHS}


def random_table(gen, counts, role, cultures=CULTURES, loud=None):
    scores = {k: torch.randn(LAYERS, w, len(cultures), generator=gen, dtype=torch.float64).float()
              for k, w in WIDTHS.items()}
    if loud is not None:  # one culture whose answers the model finds likely: every score x50
        for s in scores.values():
            s[..., loud] *= 50
    return ScoreTable(list(cultures), scores, torch.tensor(counts), {"model": SHAPE, "task": role, "path": role})


def tables(seed, loud=None):
    gen = torch.Generator().manual_seed(seed)
    return (random_table(gen, [5, 6, 7, 8], "task", loud=loud), random_table(gen, [5, 6, 7, 8], "control"),
            random_table(gen, [3, 3, 3, 3], "crc"), random_table(gen, [9], "general", cultures=["none"]))


def members(neuron_set):
    return {(k, layer, int(i)) for k, rows in neuron_set.indices.items() for layer, idx in enumerate(rows) for i in idx}


# -- the slow reference: per-neuron dictionaries and sorted lists -----------------------------------
def neuron_values(table, culture=None):
    out = {}
    n = int(table.counts.sum())
    for kind in GROUP:
        values = table.scores[kind].double()
        for layer in range(LAYERS):
            for idx in range(WIDTHS[kind]):
                row = {c: float(values[layer, idx, j]) for j, c in enumerate(table.cultures)}
                out[(kind, layer, idx)] = row
    return out, n


def top(scores: dict, percent: float, allowed=None) -> set:
    k = int(len(scores) * percent / 100 + 1e-9)
    ranked = sorted(((v, key) for key, v in scores.items() if allowed is None or key in allowed), reverse=True)
    return {key for _, key in ranked[:k]}


def reference_contrast(task, control, crc, general, general_set, culture, ranked, t_s=5.0, r=10.0, r_g=None):
    task_v, n_task = neuron_values(task)
    control_v, n_control = neuron_values(control)
    crc_v, _ = neuron_values(crc)
    s = {key: {c: task_v[key][c] / n_task - control_v[key][c] / n_control for c in CULTURES} for key in task_v}
    scaled = {}
    for c in CULTURES:
        column = {key: s[key][c] for key in s}
        if ranked:
            order = sorted(column, key=lambda key: column[key])
            rank = {key: i / (len(order) - 1) for i, key in enumerate(order)}
            scaled[c] = rank
        else:
            mean_abs = sum(abs(v) for v in column.values()) / len(column)
            scaled[c] = {key: v / mean_abs for key, v in column.items()}
    contrast = {key: scaled[culture][key] - sum(scaled[c][key] for c in CULTURES if c != culture) / (len(CULTURES) - 1)
                for key in s}
    excluded = top({key: crc_v[key][culture] for key in crc_v}, r)
    if r_g is not None:
        general_v, _ = neuron_values(general)
        excluded |= top({key: general_v[key]["none"] for key in general_v}, r_g)
    excluded |= general_set
    allowed = {key for key in s if key not in excluded and s[key][culture] > 0}
    return top(contrast, t_s, allowed)


@pytest.mark.parametrize("rule", ["contrast", "rank-contrast"])
@pytest.mark.parametrize("exclusions", [False, True])
def test_contrast_rules_match_a_slow_reference(rule, exclusions):
    task, control, crc, general = tables(3)
    extra = {"exclude_general_set": True, "general_exclude": 4.0} if exclusions else {}
    thresholds = Thresholds(top_specific=5.0, crc_exclude=10.0, specific_rule=rule, **extra)
    sets = select(task, control, crc, general if exclusions else None, thresholds)
    general_set = members(sets["general"]) if exclusions else set()
    for culture in CULTURES:
        expected = reference_contrast(task, control, crc, general, general_set, culture, rule == "rank-contrast",
                                      r_g=4.0 if exclusions else None)
        assert members(sets[culture]) == expected
        assert len(sets[culture]) == int(sum(LAYERS * w for w in WIDTHS.values()) * 5 / 100)  # fixed size
        assert sets[culture].meta["selection"].endswith(rule + ("+general-set-excluded" if exclusions else ""))


def test_a_loud_culture_empties_the_paper_sets_but_not_the_contrast_sets():
    task, control, crc, _ = tables(5, loud=0)  # china's scores are 50x everyone else's
    paper = select(task, control, crc, thresholds=Thresholds(top_specific=5.0, crc_exclude=10.0, z_min=0.5))
    contrast = select(task, control, crc, thresholds=Thresholds(top_specific=5.0, crc_exclude=10.0,
                                                                specific_rule="contrast"))
    quiet = [c for c in CULTURES if c != "china"]
    # z across cultures is dominated by china, so the quiet cultures' top neurons rarely clear z >= 0.5
    assert sum(len(paper[c]) for c in quiet) < sum(len(contrast[c]) for c in quiet) / 2
    assert all(len(contrast[c]) == len(contrast["china"]) > 0 for c in quiet)


def test_contrast_options_are_checked():
    with pytest.raises(ThresholdError, match="specific_rule"):
        Thresholds(specific_rule="zz")
    with pytest.raises(ThresholdError, match="rule='paper'"):
        Thresholds(specific_rule="contrast", rule="crc-first")
    with pytest.raises(ThresholdError, match="exclude_general_set"):
        Thresholds(exclude_general_set=True)


# -- fold tables and stability ---------------------------------------------------------------------
def fold_table(full, seed, fold="0/2"):
    gen = torch.Generator().manual_seed(seed)
    part = random_table(gen, [2, 3, 3, 4], full.meta["task"])
    part.meta.update(settings={**full.meta.get("settings", {}), "fold": fold}, tasks=full.meta.get("tasks"))
    return part


def test_complement_is_full_minus_fold_and_checks_its_input():
    task, *_ = tables(1)
    task.meta.update(settings={"window": 1}, tasks=["t"])
    part = fold_table(task, 2)
    rest = complement(task, part, "task")
    for kind in WIDTHS:
        assert torch.allclose(rest.scores[kind] + part.scores[kind], task.scores[kind], atol=1e-5)
    assert rest.counts.tolist() == [3, 3, 4, 4]
    unfolded = fold_table(task, 2)
    unfolded.meta["settings"].pop("fold")
    with pytest.raises(HalfTableError, match="not a fold table"):
        complement(task, unfolded, "task")
    other = fold_table(task, 2)
    other.meta["settings"]["window"] = 2
    with pytest.raises(HalfTableError, match="other tasks or settings"):
        complement(task, other, "task")
    big = fold_table(task, 2)
    big.counts = torch.tensor([9, 0, 0, 0])
    with pytest.raises(HalfTableError, match="more samples"):
        complement(task, big, "task")
    with pytest.raises(HalfTableError, match="control"):
        halves({"task": task, "control": task}, {"task": part})


def test_folds_split_every_culture_evenly_and_a_task_and_its_control_alike():
    import random

    from culnig_lm_eval.scoring.run import fold_assignment, in_fold
    from culnig_lm_eval.scoring.samples import Sample

    rng = random.Random(3)
    sizes = {"china": 9, "iran": 1, "uk": 2, "usa": 30}
    docs = [(c, 1000 * i + d) for i, (c, n) in enumerate(sizes.items()) for d in range(n)]
    task = [Sample("neur", d, c, "t", (1,), (2,)) for c, d in docs]
    control = [Sample("ctrl", d, c, "t", (3,), (2,)) for c, d in docs]
    rng.shuffle(control)  # order does not matter
    for folds in (2, 3):
        assignment = fold_assignment(task, folds)
        assert assignment == fold_assignment(control, folds)
        for culture, n in sizes.items():
            per_fold = [sum(1 for (c, _), f in assignment.items() if c == culture and f == k) for k in range(folds)]
            assert sum(per_fold) == n and max(per_fold) - min(per_fold) <= 1, (culture, per_fold)
        parts = [in_fold(task, f"{k}/{folds}") for k in range(folds)]
        assert sorted(s.doc_id for part in parts for s in part) == sorted(d for _, d in docs)
    # a hash split, not the document order: fold 0 of usa is not its first 15 documents
    assert {s.doc_id for s in in_fold(task, "0/2") if s.culture == "usa"} != {3000 + d for d in range(15)}


def test_halves_are_selected_with_half_the_minimum_of_samples(tmp_path):
    from culnig_lm_eval.selection.stability import half_selections, half_thresholds

    assert half_thresholds(Thresholds(min_samples=5)).min_samples == 3
    assert half_thresholds(Thresholds(min_samples=0)).min_samples == 0
    task, control, crc, _ = tables(6)
    for t in (task, control):
        t.meta.update(settings={"window": 1}, tasks=[t.meta["task"]])
    half = {"task": fold_table(task, 7), "control": fold_table(control, 8)}
    sets_a, _ = half_selections({"task": task, "control": control, "crc": crc}, half,
                                Thresholds(top_specific=5.0, min_samples=5))
    half_counts = dict(zip(half["task"].cultures, half["task"].counts.tolist()))  # 2, 3, 3, 4
    full_sets = select(half["task"], half["control"], crc, thresholds=Thresholds(top_specific=5.0, min_samples=5))
    assert [c for c in CULTURES if c in full_sets] == []  # with the whole minimum no half-sized culture is selected
    for culture in CULTURES:
        assert (culture in sets_a) == (half_counts[culture] >= 3), culture


def test_halves_agree_keeps_the_neurons_selected_on_both_halves(tmp_path):
    from culnig_lm_eval.selection.save import select_and_save
    from culnig_lm_eval.selection.stability import select_with_halves

    task, control, crc, _ = tables(6)
    for t in (task, control):
        t.meta.update(settings={"window": 1}, tasks=[t.meta["task"]])
    half = {"task": fold_table(task, 7), "control": fold_table(control, 8)}
    roles = {"task": task, "control": control, "crc": crc}
    rule = Thresholds(top_specific=20.0, specific_rule="contrast", min_samples=0)
    agree = Thresholds(top_specific=20.0, specific_rule="contrast", min_samples=0, halves_agree=True)
    sets, stability = select_with_halves(roles, half, agree)
    # the slow way: three selections, intersected neuron by neuron
    full = select(task, control, crc, thresholds=rule)
    sets_a = select(half["task"], half["control"], crc, thresholds=rule)
    rest = {r: complement(t, half[r], r) for r, t in (("task", task), ("control", control))}
    sets_b = select(rest["task"], rest["control"], crc, thresholds=rule)
    assert members(sets["general"]) == members(full["general"])  # the culture-general set is not filtered
    kept_any = False
    for culture in CULTURES:
        expected = members(full[culture]) & members(sets_a[culture]) & members(sets_b[culture])
        assert members(sets[culture]) == expected
        assert sets[culture].meta["halves_agree"] == {"before": len(full[culture]), "kept": len(expected), "halves": 2}
        assert sets[culture].meta["selection"].endswith("+contrast+halves-agree")
        kept_any |= 0 < len(expected) < len(full[culture])
        assert stability[culture]["halves_jaccard"] == pytest.approx(jaccard(sets_a[culture], sets_b[culture]))
    assert kept_any  # the filter did something on these tables
    # it needs the halves: select() and select_and_save without them refuse
    with pytest.raises(ThresholdError, match="halves_agree"):
        select(task, control, crc, thresholds=agree)
    with pytest.raises(ThresholdError, match="half-scores-dir"):
        select_and_save(roles, agree, tmp_path / "sets")
    assert not (tmp_path / "sets").exists()
    written = select_and_save(roles, agree, tmp_path / "sets", half_tables=half)
    from culnig_lm_eval.neuron_set import NeuronSet

    assert members(NeuronSet.load(written["china"])) == members(sets["china"])


def k_fold_tables(full, folds, seed):
    """``folds`` random fold tables whose counts add up to ``full``'s (scores need not: the halves
    are sums of folds, never the full table minus them)."""
    gen = torch.Generator().manual_seed(seed)
    counts = [[n // folds + (i < n % folds) for n in full.counts.tolist()] for i in range(folds)]
    parts = []
    for index in range(folds):
        part = random_table(gen, counts[index], full.meta["task"])
        part.meta.update(settings={**full.meta["settings"], "fold": f"{index}/{folds}"}, tasks=full.meta["tasks"])
        parts.append(part)
    return parts


def test_pair_splits_use_every_split_or_draw_them_with_the_seed():
    from culnig_lm_eval.selection.stability import pair_splits

    assert pair_splits(2, 25, 0) == ([(0,)], False)
    every, sampled = pair_splits(4, 25, 0)
    assert every == [(0, 1), (0, 2), (0, 3)] and not sampled  # each unordered pair once
    assert len(pair_splits(5, 25, 0)[0]) == math.comb(5, 2)  # odd: halves of 2 and 3 folds
    drawn, sampled = pair_splits(10, 25, 0)
    assert sampled and len(set(drawn)) == 25 and all(len(a) == 5 and 0 in a for a in drawn)
    assert pair_splits(10, 25, 0) == (drawn, True) and pair_splits(10, 25, 1)[0] != drawn
    assert len(pair_splits(10, 500, 0)[0]) == math.comb(9, 4)


def test_a_half_of_empty_folds_selects_nothing():
    """Fewer items than folds leave folds empty; a half made only of them selects no set, and
    the pairs where that happens do not count towards the mean overlap."""
    from culnig_lm_eval.selection.stability import pair_splits, select_with_halves

    task, control, crc, _ = tables(6)
    for t in (task, control):
        t.meta.update(settings={"window": 1}, tasks=[t.meta["task"]])
    folds = {}
    for role, full in (("task", task), ("control", control)):
        parts = k_fold_tables(full, 4, 13)
        for part, counts in zip(parts, ([3, 3, 4, 4], [2, 3, 3, 4], [0, 0, 0, 0], [0, 0, 0, 0])):
            part.counts = torch.tensor(counts)
        folds[role] = parts
    thresholds = Thresholds(top_specific=20.0, specific_rule="contrast", min_samples=0)
    sets, stability = select_with_halves({"task": task, "control": control, "crc": crc}, folds, thresholds)
    assert pair_splits(4, 25, 0)[0] == [(0, 1), (0, 2), (0, 3)]  # (0, 1) against (2, 3): an empty half
    from culnig_lm_eval.selection.stability import HalfSelections

    split = HalfSelections({"task": task, "control": control, "crc": crc}, folds)
    a, b = split.pair((0, 1), thresholds)
    assert b == {} and set(a) == {"general", *CULTURES}
    for label in ("general", *CULTURES):
        entry = stability[label]
        assert entry["pairs"] == 3 and entry["halves_neurons"][1] is None  # some half selected no set
        defined = [j for half_a in ((0, 2), (0, 3)) if (j := jaccard(*(h.get(label) for h in split.pair(half_a, thresholds)))) is not None]
        assert entry["halves_jaccard"] == (pytest.approx(sum(defined) / len(defined)) if defined else None)


def test_stability_selection_keeps_the_neurons_frequent_over_the_halves(tmp_path):
    """``stable_fraction`` against a slow reference: every split's halves summed fold by fold,
    selected, and neurons counted one by one."""
    from culnig_lm_eval.selection.save import select_and_save
    from culnig_lm_eval.selection.stability import pair_splits, select_with_halves

    task, control, crc, _ = tables(6)
    for t in (task, control):
        t.meta.update(settings={"window": 1}, tasks=[t.meta["task"]])
    folds = {"task": k_fold_tables(task, 6, 11), "control": k_fold_tables(control, 6, 12)}
    roles = {"task": task, "control": control, "crc": crc}
    rule = Thresholds(top_specific=20.0, specific_rule="contrast", min_samples=4)
    stable = Thresholds(top_specific=20.0, specific_rule="contrast", min_samples=4, stable_fraction=0.8, stable_pairs=4)
    sets, stability = select_with_halves(roles, folds, stable)

    def summed(parts, chosen):
        table = random_table(torch.Generator(), [0] * len(CULTURES), parts[0].meta["task"])
        for kind in WIDTHS:
            table.scores[kind] = sum(parts[i].scores[kind] for i in chosen)
        table.counts = sum(parts[i].counts for i in chosen)
        return table

    half_rule = Thresholds(top_specific=20.0, specific_rule="contrast", min_samples=2)  # 4 halved
    splits, sampled = pair_splits(6, 4, 0)
    assert sampled and len(splits) == 4
    halves_selected = []
    for half_a in splits:
        half_b = [i for i in range(6) if i not in half_a]
        for chosen in (half_a, half_b):
            halves_selected.append(select(summed(folds["task"], chosen), summed(folds["control"], chosen), crc,
                                          thresholds=half_rule))
    full = select(task, control, crc, thresholds=rule)
    assert members(sets["general"]) == members(full["general"])  # never filtered
    changed = False
    for culture in CULTURES:
        votes = {}
        for selected in halves_selected:
            for neuron in members(selected[culture]) if culture in selected else ():
                votes[neuron] = votes.get(neuron, 0) + 1
        expected = {n for n, v in votes.items() if v >= math.ceil(0.8 * len(halves_selected))}
        assert members(sets[culture]) == expected, culture
        record = sets[culture].meta["stability_selection"]
        assert record["halves"] == 8 and record["kept"] == len(expected) and record["rule_selects"] == len(full[culture])
        assert sets[culture].meta["selection"].endswith("+contrast+stable80")
        changed |= expected != members(full[culture])
        pairs = [(halves_selected[2 * i][culture], halves_selected[2 * i + 1][culture]) for i in range(4)]
        assert stability[culture]["halves_jaccard"] == pytest.approx(sum(jaccard(a, b) for a, b in pairs) / 4)
        assert stability[culture]["pairs"] == 4 and stability[culture]["folds"] == 6
        assert 0.0 <= stability[culture]["seeds_jaccard"] <= 1.0  # drawn pairs: a second seed is compared
    assert changed
    # a deterministic split (all pairs used) has no seed overlap to report
    _, every = select_with_halves(roles, folds, Thresholds(top_specific=20.0, specific_rule="contrast",
                                                          min_samples=4, stable_fraction=0.8, stable_pairs=100))
    assert every["china"]["seeds_jaccard"] is None and every["china"]["pairs"] == math.comb(5, 2)
    # bad fold lists and bad settings are refused
    with pytest.raises(HalfTableError, match="expected folds"):
        select_with_halves(roles, {"task": folds["task"][:5], "control": folds["control"]}, stable)
    extra = ScoreTable(folds["task"][0].cultures, folds["task"][0].scores, folds["task"][0].counts + 1,
                       folds["task"][0].meta)  # a fold of another run: one more item per culture
    with pytest.raises(HalfTableError, match="do not add up"):
        select_with_halves(roles, {"task": [extra] + folds["task"][1:], "control": folds["control"]}, stable)
    for bad in ({"stable_fraction": 0.0}, {"stable_fraction": 1.5}, {"stable_fraction": 0.8, "halves_agree": True},
                {"stable_pairs": 0}, {"stable_seed": -1}):
        with pytest.raises(ThresholdError):
            Thresholds(**bad)
    with pytest.raises(ThresholdError, match="stable_fraction"):
        select(task, control, crc, thresholds=stable)
    written = select_and_save(roles, stable, tmp_path / "sets", half_tables=folds)
    summary = json.loads((tmp_path / "sets" / "selection.json").read_text())
    assert len(summary["half_score_files"]["task"]) == 6 and summary["selection"].endswith("+stable80")
    from culnig_lm_eval.neuron_set import NeuronSet

    assert members(NeuronSet.load(written["iran"])) == members(sets["iran"])


def test_jaccard_of_sets():
    task, control, crc, _ = tables(4)
    sets = select(task, control, crc, thresholds=Thresholds(top_specific=5.0, specific_rule="contrast"))
    a, b = sets["china"], sets["iran"]
    expected = len(members(a) & members(b)) / len(members(a) | members(b))
    assert jaccard(a, b) == pytest.approx(expected)
    assert jaccard(a, a) == 1.0
    assert jaccard(a, None) is None


def test_select_and_save_records_the_stability_of_every_set(tmp_path):
    from culnig_lm_eval.neuron_set import NeuronSet
    from culnig_lm_eval.selection.save import select_and_save

    task, control, crc, _ = tables(6)
    for t in (task, control):
        t.meta.update(settings={"window": 1}, tasks=[t.meta["task"]])
    half = {"task": fold_table(task, 7), "control": fold_table(control, 8)}
    thresholds = Thresholds(top_specific=5.0, specific_rule="contrast", min_samples=0)
    written = select_and_save({"task": task, "control": control, "crc": crc}, thresholds, tmp_path / "sets",
                              random_seeds=[0], half_tables=half)
    sets_a = select(half["task"], half["control"], crc, thresholds=thresholds)
    rest = {r: complement(t, half[r], r) for r, t in (("task", task), ("control", control))}
    sets_b = select(rest["task"], rest["control"], crc, thresholds=thresholds)
    for label in ["general", *CULTURES]:
        entry = NeuronSet.load(written[label]).meta["stability"]
        expected = jaccard(sets_a[label], sets_b[label])
        assert entry["halves_jaccard"] == pytest.approx(expected)
        assert entry["halves_neurons"] == [len(sets_a[label]), len(sets_b[label])]
        assert entry["unstable"] == (expected < 0.3)
        assert entry["seeds_jaccard"] is None
    summary = json.loads((tmp_path / "sets" / "selection.json").read_text())
    assert "stability" in summary["summary"]["china"] and "half_score_files" in summary


# -- the study's analysis ----------------------------------------------------------------------------
def test_empirical_p_counts_random_drops_at_least_as_large():
    assert empirical_p(0.10, [0.0, 0.2, 0.1, -0.1]) == pytest.approx((1 + 2) / 5)
    assert empirical_p(0.5, [0.0] * 19) == pytest.approx(1 / 20)
    assert empirical_p(0.1, []) is None


def test_analysis_applies_the_criteria_per_culture():
    cultures = ["a", "b", "c"]
    base = {"acc": {"a": 0.6, "b": 0.6, "c": 0.6}, "n": {c: 10 for c in cultures}, "nll_per_token": 2.0}
    sets = {
        "a": {"acc": {"a": 0.3, "b": 0.55, "c": 0.55}, "nll_per_token": 2.05},  # own 0.3 vs other 0.05: passes
        "b": {"acc": {"a": 0.4, "b": 0.4, "c": 0.4}, "nll_per_token": 2.0},  # own = other: not specific
        "c": {"acc": {"a": 0.6, "b": 0.6, "c": 0.2}, "nll_per_token": 2.5},  # specific, but ppl x1.65
    }
    randoms = [{"acc": {c: 0.6 - 0.01 * i for c in cultures}} for i in range(20)]
    info = {"v": {"selection": "x", "seconds": 0.1, "sizes": {c: 5 for c in cultures},
                  "stability": {"a": {"halves_jaccard": 0.5}}}}
    settings = StudySettings(variants={"v": {}}, select_only=True)
    out = analyse(settings, {"unmasked": base, "sets": {"v": sets}, "random": randoms}, info)
    rows = out["variants"]["v"]["per_culture"]
    assert rows["a"]["passes"] and rows["a"]["ratio"] == pytest.approx(6.0)
    assert rows["a"]["p_random"] == pytest.approx(1 / 21)
    assert rows["a"]["ppl_ratio"] == pytest.approx(math.exp(0.05))
    assert not rows["b"]["passes"] and not rows["c"]["passes"]
    assert out["variants"]["v"]["passing"] == 1 and out["recommended"] == "v"


def test_study_settings_are_checked():
    with pytest.raises(StudyError, match="per_culture"):
        StudySettings(per_culture=0)
    with pytest.raises(StudyError, match="variant bad"):
        StudySettings(variants={"bad": {"specific_rule": "nope"}})


# -- end to end on a tiny model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_llama_dir):
    """Full, fold-0 and fold-1 score folders of a tiny model on the shipped sample (scored once)."""
    from conftest import sample_data_only

    from culnig_lm_eval.taskdata import sources
    from culnig_lm_eval.cli.score import main

    folder = tmp_path_factory.mktemp("study")
    common = ["run", "--model_args", f"pretrained={tiny_llama_dir}", "--tasks", "blend_cloze_neur",
              "--control", "blend_cloze_ctrl", "--no-select", "--batch_size", "8", "--limit", "48"]
    with pytest.MonkeyPatch.context() as mp:
        sample_data_only(mp)
        assert main(common + ["--out", str(folder / "scores")]) == 0
        for fold in ("0/2", "1/2"):
            assert main(common + ["--out", str(folder / f"fold{fold[0]}"), "--fold", fold]) == 0
        for folds in (2, 4):  # every fold's tables from one pass
            assert main(common + ["--out", str(folder / f"k{folds}"), "--fold-tables", str(folds)]) == 0
        yield folder
    sources._read.cache_clear()


def test_folds_partition_the_items_and_the_complement_is_the_other_fold(scored):
    from culnig_lm_eval.scoring.tables import load_table

    full, fold0, fold1 = (load_table(scored / d / "task.scores.pt") for d in ("scores", "fold0", "fold1"))
    assert 0 < int(fold0.counts.sum()) < int(full.counts.sum())
    assert int(fold0.counts.sum()) + int(fold1.counts.sum()) == int(full.counts.sum())
    for culture, n in zip(full.cultures, full.counts.tolist()):  # every culture split evenly
        a, b = (int(t.counts[t.cultures.index(culture)]) if culture in t.cultures else 0 for t in (fold0, fold1))
        assert a + b == n and abs(a - b) <= 1, (culture, a, b)
    assert fold0.meta["settings"]["fold_scheme"] == "culture-stratified"
    rest = complement(full, fold0, "task")
    index = [rest.cultures.index(c) for c in fold1.cultures]
    for kind in full.scores:
        assert torch.allclose(rest.scores[kind][..., index], fold1.scores[kind], atol=1e-4, rtol=1e-4)


def test_fold_tables_of_one_pass_are_the_fold_runs_tables(scored, capsys):
    """``--fold-tables K`` writes, from one scoring pass, the tables K ``--fold i/K`` runs would
    write (same items, stamp and sums), and a full table equal to the unfolded run's."""
    from culnig_lm_eval.cli.score import main
    from culnig_lm_eval.scoring.tables import load_table

    for role in ("task", "control"):
        full, one_pass = (load_table(scored / d / f"{role}.scores.pt") for d in ("scores", "k2"))
        assert one_pass.meta["settings"] == full.meta["settings"] and one_pass.cultures == full.cultures
        assert torch.equal(one_pass.counts, full.counts)
        assert one_pass.meta["samples_digest"] == full.meta["samples_digest"]
        for kind in full.scores:
            assert torch.allclose(one_pass.scores[kind], full.scores[kind], atol=1e-4, rtol=1e-4)
        for index in (0, 1):
            run, part = (load_table(p / f"{role}.scores.pt") for p in (scored / f"fold{index}", scored / "k2" / "folds2" / str(index)))
            assert part.meta["settings"] == run.meta["settings"] and part.cultures == run.cultures
            assert part.meta["samples_digest"] == run.meta["samples_digest"] and torch.equal(part.counts, run.counts)
            for kind in run.scores:
                assert torch.allclose(part.scores[kind], run.scores[kind], atol=1e-4, rtol=1e-4)
        parts = [load_table(scored / "k4" / "folds4" / str(i) / f"{role}.scores.pt") for i in range(4)]
        assert sum(int(p.counts.sum()) for p in parts) == int(full.counts.sum())
        assert [p.meta["settings"]["fold"] for p in parts] == [f"{i}/4" for i in range(4)]
    assert not (scored / "k2" / "folds2" / "0" / "crc.scores.pt").exists()
    # the flag is checked before anything loads
    capsys.readouterr()
    for bad in (["--fold-tables", "1"], ["--fold-tables", "2", "--fold", "0/2"]):
        assert main(["run", "--tasks", "x", "--out", str(scored / "bad")] + bad) == 2
        assert "--fold-tables" in capsys.readouterr().err and not (scored / "bad").exists()


def test_select_and_study_take_the_fold_tables_folder(scored, capsys, fresh_data_state):
    """``--half-scores-dir OUT/foldsK`` of a ``--fold-tables`` run: every pair of halves for the
    stability entries, ``--stable-fraction`` end to end, and clear refusals."""
    import shutil

    from culnig_lm_eval.cli.score import main
    from culnig_lm_eval.neuron_set import NeuronSet

    k4 = scored / "k4"
    common = ["select", "--scores-dir", str(k4), "--specific-rule", "contrast", "--exclude-general-set",
              "--top-specific", "5", "--min-samples", "2"]
    assert main(common + ["--half-scores-dir", str(k4 / "folds4"), "--out", str(scored / "rule")]) == 0
    assert main(common + ["--half-scores-dir", str(k4 / "folds4"), "--out", str(scored / "stable"),
                          "--stable-fraction", "0.5"]) == 0
    summary = json.loads((scored / "stable" / "selection.json").read_text())
    assert summary["selection"].endswith("+general-set-excluded+stable50")
    assert len(summary["half_score_files"]["task"]) == 4 == len(summary["half_score_files"]["control"])
    cultures = [label for label in summary["files"] if label != "general"]
    assert cultures
    for label in cultures:
        kept = NeuronSet.load(scored / "stable" / summary["files"][label])
        assert set(kept.indices) == set(NeuronSet.load(scored / "rule" / f"{label}.pt").indices)
        entry = kept.meta["stability"]
        assert entry["pairs"] == 3 and entry["folds"] == 4 and entry["seeds_jaccard"] is None
        assert kept.meta["stability_selection"]["halves"] == 6
        assert NeuronSet.load(scored / "rule" / f"{label}.pt").meta["stability"]["halves_jaccard"] == entry["halves_jaccard"]
    assert NeuronSet.load(scored / "stable" / "general.pt").neurons_sha256() == \
        NeuronSet.load(scored / "rule" / "general.pt").neurons_sha256()
    # the study runs the -stable variants from the same folder (selection only: no model)
    out = scored / "study-stable"
    assert main(["study", "--scores-dir", str(k4), "--half-scores-dir", str(k4 / "folds4"), "--out", str(out),
                 "--variants", "rank-contrast,rank-contrast-stable", "--select-only", "--top-specific", "5",
                 "--min-samples", "2"]) == 0
    results = json.loads((out / "study.json").read_text())
    assert set(results["variants"]) == {"rank-contrast", "rank-contrast-stable"}
    # refusals: one line, exit 2
    capsys.readouterr()
    assert main(common + ["--out", str(scored / "x"), "--stable-fraction", "0.8"]) == 2
    assert "--stable-fraction" in capsys.readouterr().err
    assert main(common + ["--half-scores-dir", str(k4 / "folds4"), "--out", str(scored / "x"),
                          "--stable-fraction", "2"]) == 2
    assert "stable_fraction" in capsys.readouterr().err
    broken = scored / "broken-folds"
    shutil.copytree(k4 / "folds4", broken)
    (broken / "2" / "control.scores.pt").unlink()
    assert main(common + ["--half-scores-dir", str(broken), "--out", str(scored / "x")]) == 2
    assert "lacks its task or control" in capsys.readouterr().err
    shutil.rmtree(broken / "3")
    assert main(common + ["--half-scores-dir", str(scored), "--out", str(scored / "x")]) == 2
    assert "neither task.scores.pt nor fold folders" in capsys.readouterr().err
    assert main(["study", "--scores-dir", str(k4), "--out", str(out), "--variants", "rank-contrast-stable"]) == 2
    assert "--half-scores-dir" in capsys.readouterr().err
    assert not (scored / "x").exists()


def test_study_command_end_to_end(scored, tiny_llama_dir, capsys, fresh_data_state):
    from culnig_lm_eval.cli.score import main

    out = scored / "study"
    args = ["study", "--scores-dir", str(scored / "scores"), "--half-scores-dir", str(scored / "fold0"),
            "--out", str(out), "--model_args", f"pretrained={tiny_llama_dir}", "--variants", "paper,contrast",
            "--per-culture", "2", "--random-draws", "3", "--batch_size", "8",
            "--top-specific", "5", "--top-mlp", "5", "--top-attention", "5", "--crc-exclude", "0", "--min-samples", "1"]
    assert main(args) == 0
    results = json.loads((out / "study.json").read_text())
    assert set(results["variants"]) == {"paper", "contrast"} and len(results["evaluations"]["random"]) == 3
    assert (out / "pareto.png").stat().st_size > 0 and (out / "sets" / "contrast" / "general.pt").is_file()
    table = (out / "study.md").read_text()
    assert "| contrast" in table and "halves Jaccard" in table
    rows = {c: r for c, r in results["variants"]["contrast"]["per_culture"].items() if not r["empty"]}
    assert len(rows) >= 5 and any(r["halves_jaccard"] is not None for r in rows.values())
    for culture, row in rows.items():
        own = results["unmasked_acc"][culture] - results["evaluations"]["sets"]["contrast"][culture]["acc"][culture]
        assert row["own_drop"] == pytest.approx(own)
    # bad input: one line, exit 2, before any model loads
    capsys.readouterr()
    assert main(["study", "--scores-dir", str(scored / "nope"), "--out", str(out)]) == 2
    assert "--scores-dir" in capsys.readouterr().err
    assert main(["study", "--scores-dir", str(scored / "scores"), "--out", str(out), "--variants", "zz"]) == 2
    assert "--variants zz" in capsys.readouterr().err
    for flag, task in (("--eval-task", "general_ppl"), ("--general-task", "blend_cloze_test")):
        assert main(["study", "--scores-dir", str(scored / "scores"), "--out", str(scored / "bad"), flag, task]) == 2
        assert flag in capsys.readouterr().err and not (scored / "bad").exists()
    assert main(["run", "--tasks", "x", "--out", str(out), "--fold", "2/2"]) == 2
    assert "--fold '2/2'" in capsys.readouterr().err


def test_select_command_takes_the_new_rules_and_the_fold_tables(scored, capsys, fresh_data_state):
    from culnig_lm_eval.cli.score import main
    from culnig_lm_eval.neuron_set import NeuronSet

    out = scored / "sets"
    assert main(["select", "--scores-dir", str(scored / "scores"), "--half-scores-dir", str(scored / "fold0"),
                 "--out", str(out), "--specific-rule", "rank-contrast", "--exclude-general-set",
                 "--top-specific", "5", "--min-samples", "1"]) == 0
    summary = json.loads((out / "selection.json").read_text())
    assert summary["selection"] == "culnig-paper+rank-contrast+general-set-excluded"
    general = NeuronSet.load(out / "general.pt")
    cultures = [label for label in summary["files"] if label != "general"]
    assert cultures and "half_score_files" in summary
    for label in cultures:
        neuron_set = NeuronSet.load(out / summary["files"][label])
        assert "halves_jaccard" in neuron_set.meta["stability"]
        assert len(neuron_set.intersect(general)) == 0  # the culture-general set is kept out
    # --halves-agree: a subset of the rule's own sets, and refused without the fold tables
    agree = scored / "sets-agree"
    assert main(["select", "--scores-dir", str(scored / "scores"), "--half-scores-dir", str(scored / "fold0"),
                 "--out", str(agree), "--specific-rule", "rank-contrast", "--exclude-general-set",
                 "--top-specific", "5", "--min-samples", "1", "--halves-agree"]) == 0
    summary_agree = json.loads((agree / "selection.json").read_text())
    assert summary_agree["selection"].endswith("+halves-agree")
    for label in cultures:
        filtered = NeuronSet.load(agree / summary_agree["files"][label])
        assert len(filtered.subtract(NeuronSet.load(out / summary["files"][label]))) == 0
    capsys.readouterr()
    assert main(["select", "--scores-dir", str(scored / "scores"), "--out", str(scored / "nope-out"),
                 "--halves-agree"]) == 2
    assert "--halves-agree" in capsys.readouterr().err and not (scored / "nope-out").exists()
    assert main(["select", "--scores-dir", str(scored / "scores"), "--half-scores-dir", str(scored / "nope"),
                 "--out", str(out)]) == 2
    assert "--half-scores-dir" in capsys.readouterr().err
