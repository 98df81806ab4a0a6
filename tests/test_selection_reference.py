"""The ``culnig-paper`` rule against a plain re-implementation of the published selection
(ynklab/CULNIG ``decide_culture_general_neurons.py`` / ``decide_culture_specific_neuron.py`` /
``decide_random_neuron.py``), written here with per-neuron dictionaries and sorted lists the
way those scripts work.  Nothing here is shared with the package.

Where a misreading would hide, the tables are built to expose it: exact ties at the cut (the
scripts' stable ``sorted`` keeps the order the scorer met the neurons), a culture only the
control has, neurons with equal scores across cultures (the scripts' own mean and std), CRC
tables with negative sums (CountryRC samples are not clamped), and attention kinds of
different widths (grouped-query attention), on the Llama order and Phi-3's fused one."""

import numpy as np
import pytest
import torch

from culnig_lm_eval.scoring.attribution import ScoreTable
from culnig_lm_eval.selection.random_sets import random_uniform
from culnig_lm_eval.selection.rules import Thresholds, departures, select

LAYERS = 3
WIDTHS = {"mlp_gate": 160, "attn_q": 64, "attn_k": 16, "attn_v": 16}
CULTURES = ["china", "iran", "mexico", "spain", "uk"]
SHAPE = {"model_type": "llama", "num_layers": LAYERS, "widths": WIDTHS}

# the published scorer (calc_neuron_score.py) registers hooks on TARGET_MODULES per layer and
# stores neurons in the order the hooks fire in the first batch: inside a layer the attention
# projections (Phi-3's fused qkv_proj fires its hooks in registration order: v, q, k), then the
# MLP's gate and up.  Its JSON keeps that order; the selection scripts' sorts are stable.
FORWARD = {"llama": ["attn_q", "attn_k", "attn_v", "mlp_gate", "mlp_up"],
           "phi3": ["attn_v", "attn_q", "attn_k", "mlp_gate", "mlp_up"]}
MLP_GENERAL, ATTENTION_GENERAL = ["mlp.gate_proj"], ["self_attn.v_proj", "self_attn.q_proj", "self_attn.k_proj"]
SPECIFIC_MODULES = ["mlp.gate_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.k_proj"]
MODULE = {"mlp_gate": "mlp.gate_proj", "mlp_up": "mlp.up_proj", "attn_q": "self_attn.q_proj",
          "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj"}


def make_table(cultures, counts, scores, role, model_type="llama", widths=WIDTHS, layers=LAYERS, **meta):
    shape = {"model_type": model_type, "num_layers": layers, "widths": widths}
    return ScoreTable(list(cultures), {k: v.float() for k, v in scores.items()}, torch.tensor(counts),
                      {"model": shape, "task": role, "path": role, **meta})


def random_table(gen, cultures, counts, role, spread=1.0, widths=WIDTHS, layers=LAYERS, model_type="llama"):
    scores = {k: torch.randn(layers, w, len(cultures), generator=gen, dtype=torch.float64) * spread
              for k, w in widths.items()}
    return make_table(cultures, counts, scores, role, model_type, widths, layers)


def tables(seed):
    gen = torch.Generator().manual_seed(seed)
    task = random_table(gen, CULTURES, [7, 3, 11, 5, 9], "task")
    control = random_table(gen, CULTURES, [4, 6, 2, 8, 5], "control", spread=0.5)
    crc = random_table(gen, CULTURES[:4], [3, 3, 3, 3], "crc")  # uk has no CRC data
    return task, control, crc


# -- the reference, plainly -------------------------------------------------------------------
def neuron_dict(table, model_type="llama", last_layer_first=False):
    """{"module_layer_index": {country: sum}} as the published score JSON holds it: neurons in
    the scorer's order, and only the countries that had samples."""
    countries = [(j, c) for j, c in enumerate(table.cultures) if int(table.counts[j]) > 0]
    values = {k: v.double().numpy() for k, v in table.scores.items()}
    layers = next(iter(values.values())).shape[0]
    out = {}
    for layer in (reversed(range(layers)) if last_layer_first else range(layers)):
        for kind in FORWARD[model_type]:
            if kind in values:
                for idx in range(values[kind].shape[1]):
                    out[f"{MODULE[kind]}_{layer}_{idx}"] = {c: float(values[kind][layer, idx, j]) for j, c in countries}
    return out


def module_of(key):
    return "_".join(key.split("_")[:-2])


def top_keys(scores: dict, proportion: float) -> list:
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    return [key for key, _ in ranked[: int(len(ranked) * proportion)]]


def ties_at_cut(scores: dict, proportion: float) -> bool:
    """Whether the last neuron in and the first neuron out of the cut have the same score."""
    ranked = sorted(scores.values(), reverse=True)
    k = int(len(ranked) * proportion)
    return 0 < k < len(ranked) and ranked[k - 1] == ranked[k]


def general_scores(task, control, model_type, modules, last_layer_first=False):
    n_task, n_control = int(task.counts.sum()), int(control.counts.sum())
    task_d, control_d = neuron_dict(task, model_type, last_layer_first), neuron_dict(control, model_type)
    out = {}
    for key, score in task_d.items():
        if module_of(key) in modules:
            out[key] = 0.0
            out[key] += sum(score.values()) / n_task - sum(control_d[key].values()) / n_control
    return out


def reference_general(task, control, crc, t_mlp, t_att, r, model_type="llama", attention=True):
    crc_d = neuron_dict(crc, model_type)
    chosen, countryrc = [], set()
    groups = ((MLP_GENERAL, t_mlp),) + (((ATTENTION_GENERAL, t_att),) if attention else ())
    for modules, t in groups:
        chosen += top_keys(general_scores(task, control, model_type, modules), t / 100)
        countryrc |= set(top_keys({k: sum(v.values()) for k, v in crc_d.items() if module_of(k) in modules}, r / 100))
    return {key for key in chosen if key not in countryrc}


def country_scores(task, control, model_type, modules):
    n_task, n_control = int(task.counts.sum()), int(control.counts.sum())
    task_d, control_d = neuron_dict(task, model_type), neuron_dict(control, model_type)
    out = {}
    for key, score in task_d.items():
        if module_of(key) in modules:
            out[key] = {}
            for country, value in score.items():
                out[key][country] = 0.0
                out[key][country] += value / n_task - control_d[key][country] / n_control
    return out


def reference_specific(task, control, crc, t_s, r, z_min, model_type="llama", modules=SPECIFIC_MODULES):
    per_country = country_scores(task, control, model_type, modules)
    crc_d = neuron_dict(crc, model_type)
    result = {}
    for country in [c for j, c in enumerate(crc.cultures) if int(crc.counts[j]) > 0]:
        own = {key: v[country] for key, v in per_country.items()}
        excluded = set(top_keys({k: v[country] for k, v in crc_d.items() if module_of(k) in modules}, r / 100))
        kept = set()
        for key in top_keys(own, t_s / 100):
            if key in excluded:
                continue
            scores = per_country[key]
            mean = sum(scores.values()) / len(scores)
            std = (sum((x - mean) ** 2 for x in scores.values()) / len(scores)) ** 0.5
            z = 0 if std == 0 else (own[key] - mean) / std
            if z < z_min:
                continue
            kept.add(key)
        result[country] = kept
    return result


def members(neuron_set):
    return {f"{MODULE[kind]}_{layer}_{int(i)}" for kind, per_layer in neuron_set.indices.items()
            for layer, idx in enumerate(per_layer) for i in idx}


def check_against_reference(task, control, crc, setting, model_type="llama", attention=True, **extra):
    sets = select(task, control, crc, thresholds=Thresholds(**setting, min_samples=0, **extra))
    expected_general = reference_general(task, control, crc, setting["top_mlp"], setting["top_attention"],
                                         setting["crc_exclude"], model_type, attention)
    assert members(sets["general"]) == expected_general
    modules = SPECIFIC_MODULES if attention else MLP_GENERAL
    expected_specific = reference_specific(task, control, crc, setting["top_specific"], setting["crc_exclude"],
                                           setting["z_min"], model_type, modules)
    assert set(sets) - {"general"} == set(expected_specific)
    for country, expected in expected_specific.items():
        assert members(sets[country]) == expected, country
    return sets, expected_general, expected_specific


SETTINGS = [
    dict(top_mlp=5.0, top_attention=4.0, top_specific=3.0, crc_exclude=10.0, z_min=0.5),
    dict(top_mlp=10.0, top_attention=2.0, top_specific=6.0, crc_exclude=5.0, z_min=0.0),
    dict(top_mlp=1.0, top_attention=0.5, top_specific=1.5, crc_exclude=1.0, z_min=1.0),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"t{s['top_mlp']}-r{s['crc_exclude']}")
def test_paper_rule_matches_the_reference(seed, setting):
    task, control, crc = tables(seed)
    sets, expected_general, expected_specific = check_against_reference(task, control, crc, setting)
    assert expected_general and any(expected_specific.values())  # the comparison is not vacuous
    assert set(expected_specific) == set(CULTURES[:4])
    assert sets["general"].meta["selection"] == "culnig-paper"


# -- where a misreading would hide ---------------------------------------------------------------
def tied_tables(seed, model_type="llama", widths=WIDTHS, layers=LAYERS):
    """Scores of a few small whole numbers: many neurons share a score exactly, at every cut."""
    gen = torch.Generator().manual_seed(seed)

    def draw(cultures, counts, role, low, high):
        scores = {k: torch.randint(low, high, (layers, w, len(cultures)), generator=gen).double()
                  for k, w in widths.items()}
        return make_table(cultures, counts, scores, role, model_type, widths, layers)

    return (draw(CULTURES, [8, 4, 8, 4, 8], "task", 0, 4), draw(CULTURES, [4, 4, 4, 4, 4], "control", 0, 2),
            draw(CULTURES[:4], [3, 3, 3, 3], "crc", -1, 2))


@pytest.mark.parametrize("model_type", ["llama", "phi3"])
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_ties_at_the_cut_go_to_the_neuron_the_published_scorer_met_first(model_type, seed):
    task, control, crc = tied_tables(seed, model_type)
    setting = dict(top_mlp=5.0, top_attention=4.0, top_specific=3.0, crc_exclude=10.0, z_min=0.0)
    # the ties are real: the cut falls inside a group of equal scores, general and per culture
    mlp = general_scores(task, control, model_type, MLP_GENERAL)
    attention = general_scores(task, control, model_type, ATTENTION_GENERAL)
    assert ties_at_cut(mlp, 0.05) and ties_at_cut(attention, 0.04)
    per_country = country_scores(task, control, model_type, SPECIFIC_MODULES)
    assert any(ties_at_cut({k: v[c] for k, v in per_country.items()}, 0.03) for c in CULTURES[:4])
    crc_sums = {k: sum(v.values()) for k, v in neuron_dict(crc, model_type).items() if module_of(k) in MLP_GENERAL}
    assert ties_at_cut(crc_sums, 0.10)
    check_against_reference(task, control, crc, setting, model_type)
    # the order decides: the same scores met in another order put other neurons in the cut
    for modules, t in ((MLP_GENERAL, 0.05), (ATTENTION_GENERAL, 0.04)):
        assert top_keys(general_scores(task, control, model_type, modules), t) \
            != top_keys(general_scores(task, control, model_type, modules, last_layer_first=True), t)


def test_a_culture_only_the_control_has_counts_in_the_general_score():
    gen = torch.Generator().manual_seed(11)
    task = random_table(gen, CULTURES, [7, 3, 11, 5, 9], "task")
    # the control also holds "korea", which the task lacks, with large scores on a few neurons
    control = random_table(gen, CULTURES + ["korea"], [4, 6, 2, 8, 5, 6], "control", spread=0.5)
    control.scores["mlp_gate"][:, :40, -1] += 30.0
    crc = random_table(gen, CULTURES[:4], [3, 3, 3, 3], "crc")
    setting = dict(top_mlp=10.0, top_attention=4.0, top_specific=3.0, crc_exclude=5.0, z_min=0.5)
    sets, expected_general, _ = check_against_reference(task, control, crc, setting)
    # not vacuous: leaving korea out of the control's sum would pick other culture-general neurons
    without = make_table(CULTURES, [4, 6, 2, 8, 5], {k: v[..., :-1] for k, v in control.scores.items()},
                         "control-without-korea")
    without.counts = control.counts[:-1].clone()
    without_general = reference_general(task, without, crc, 10.0, 4.0, 5.0)
    assert expected_general != without_general


def test_a_culture_with_no_task_sample_is_in_no_mean_or_z_score():
    task, control, crc = tables(4)
    # iran: a column in the task and CRC tables, but no sample (the published JSON would not name it)
    for table in (task, crc):
        table.counts[1] = 0
        table.scores = {k: v.clone() for k, v in table.scores.items()}
        for scores in table.scores.values():
            scores[..., 1] = 0.0
    sets, _, expected = check_against_reference(task, control, crc, SETTINGS[1])
    assert "iran" not in expected and "iran" not in sets


# (not z_min = -1 or 1: there the published ``** 0.5`` (C pow) and a correctly rounded sqrt can
# put z one ulp either side of the threshold; docs/differences.md)
@pytest.mark.parametrize("z_min", [0.0, -0.5, 0.5])
def test_equal_scores_across_cultures_get_the_published_z_score(z_min):
    task, control, crc = tables(7)
    task.scores = {k: v.clone() for k, v in task.scores.items()}
    control.scores = {k: v.clone() for k, v in control.scores.items()}
    gen = torch.Generator().manual_seed(3)
    # 60 gate neurons of layer 0: every culture's S_c the same number, and at the top of every
    # culture's ranking (so the z filter decides alone)
    for idx in range(60):
        value = 50.0 + float(torch.rand((), generator=gen)) * 10
        task.scores["mlp_gate"][0, idx] = value * int(task.counts.sum())  # S_c = value for every c
        control.scores["mlp_gate"][0, idx] = 0.0
    per_country = country_scores(task, control, "llama", SPECIFIC_MODULES)
    equal = [per_country[f"mlp.gate_proj_0_{i}"] for i in range(60)]
    assert all(len(set(v.values())) == 1 for v in equal)
    # the published arithmetic: for some of them the mean is not exactly the common value, so
    # its std is not 0 and z is not 0 (here -1 or +-1): a rule with z = 0 for equal scores differs
    stds = [(sum((x - sum(v.values()) / 5) ** 2 for x in v.values()) / 5) ** 0.5 for v in equal]
    assert any(s == 0 for s in stds) and any(s != 0 for s in stds)
    setting = dict(top_mlp=5.0, top_attention=4.0, top_specific=6.0, crc_exclude=1.0, z_min=z_min)
    check_against_reference(task, control, crc, setting)


def test_countryrc_negative_sums_rank_as_they_are():
    task, control, crc = tables(9)
    crc.scores = {k: v.clone() for k, v in crc.scores.items()}
    # heavy-tailed CRC sums of both signs: large negative sums must rank last, not as 0
    gen = torch.Generator().manual_seed(5)
    for kind, scores in crc.scores.items():
        noise = torch.distributions.StudentT(1.5).sample(scores.shape)
        scores.copy_((noise * (1 + torch.rand(scores.shape, generator=gen))).float())
    assert (torch.cat([s.flatten() for s in crc.scores.values()]) < 0).float().mean() > 0.3
    sets, general, _ = check_against_reference(task, control, crc, SETTINGS[0])
    assert sets["general"].meta["selection"] == "culnig-paper"
    # the same numbers marked as a clamped CRC table: the selection is named for it
    crc.meta["clamped_at_zero"] = True
    clamped = select(task, control, crc, thresholds=Thresholds(**SETTINGS[0], min_samples=0))
    assert clamped["general"].meta["selection"] == "culnig-paper+crc-clamped"
    assert any("clamped" in line for line in departures(Thresholds(), {"task": task, "crc": crc}))


GQA = {"mlp_gate": 96, "attn_q": 48, "attn_k": 8, "attn_v": 8}  # 6 query heads per key/value head


@pytest.mark.parametrize("model_type", ["llama", "phi3"])
@pytest.mark.parametrize("seed", [0, 1])
def test_attention_widths_that_differ_per_kind(model_type, seed):
    task, control, crc = tied_tables(seed, model_type, widths=GQA, layers=4)
    setting = dict(top_mlp=5.0, top_attention=3.0, top_specific=2.0, crc_exclude=5.0, z_min=0.0)
    sets, general, _ = check_against_reference(task, control, crc, setting, model_type)
    counts = sets["general"].counts()
    # the attention cut is 3% of all 4 x 64 attention neurons pooled, not 3% of each kind
    attention_cut = top_keys(general_scores(task, control, model_type, ATTENTION_GENERAL), 0.03)
    assert len(attention_cut) == int(4 * 64 * 0.03)
    assert counts["attn_q"] + counts["attn_k"] + counts["attn_v"] <= len(attention_cut)


def test_paper_gate_only_is_the_published_rule_on_the_mlp_neurons():
    task, control, crc = tables(1)
    setting = SETTINGS[0]
    sets, _, _ = check_against_reference(task, control, crc, setting, attention=False, rule="paper-gate-only")
    assert sets["general"].meta["selection"] == "culnig-paper-gate-only"
    assert set(sets["general"].counts()) == {"mlp_gate"}
    # the paper rule on tables without attention scores: the same sets, named and said so
    gate_only = [make_table(t.cultures, t.counts.tolist(), {"mlp_gate": t.scores["mlp_gate"]}, t.meta["task"])
                 for t in (task, control, crc)]
    plain = select(*gate_only, thresholds=Thresholds(**setting, min_samples=0))
    assert members(plain["general"]) == members(sets["general"])
    assert plain["general"].meta["selection"] == "culnig-paper-gate-only"
    said = departures(Thresholds(), {"task": gate_only[0], "crc": gate_only[2]})
    assert len(said) == 1 and "attention" in said[0] and "\n" not in said[0]
    assert departures(Thresholds(), {"task": task, "crc": crc}) == []


def test_random_uniform_draws_the_same_number_from_gate_and_attention_pooled():
    task, control, crc = tables(3)
    general = select(task, control, crc, thresholds=Thresholds(top_mlp=5.0, top_attention=4.0))["general"]
    draws = [random_uniform(general, seed) for seed in range(40)]
    assert all(len(d) == len(general) for d in draws)
    assert members(random_uniform(general, 7)) == members(draws[7])  # seeded
    assert len({frozenset(members(d)) for d in draws}) == 40
    # uniform over all pooled neurons: each kind's share follows its share of the neurons
    total = sum(sum(d.counts().values()) for d in draws)
    share = {k: sum(d.counts()[k] for d in draws) / total for k in WIDTHS}
    expected = {k: w / sum(WIDTHS.values()) for k, w in WIDTHS.items()}
    assert np.allclose([share[k] for k in WIDTHS], [expected[k] for k in WIDTHS], atol=0.06)
    assert draws[0].meta["selection"] == "random-uniform:culnig-paper"
    assert draws[0].meta["hyperparameters"]["seed"] == 0


def test_random_uniform_never_draws_up_proj():
    """decide_random_neuron.py draws from gate_proj, q, k and v only, even where up_proj was scored."""
    widths = {**WIDTHS, "mlp_up": 160}
    gen = torch.Generator().manual_seed(2)
    task = random_table(gen, CULTURES, [7, 3, 11, 5, 9], "task", widths=widths)
    control = random_table(gen, CULTURES, [4, 6, 2, 8, 5], "control", widths=widths)
    general = select(task, control, thresholds=Thresholds(top_mlp=5.0, top_attention=4.0))["general"]
    assert general.counts()["mlp_up"] > 0 and general.meta["selection"] == "culnig-paper+up-proj"
    draws = [random_uniform(general, seed) for seed in range(20)]
    assert all(len(d) == len(general) and d.counts().get("mlp_up", 0) == 0 for d in draws)
    assert draws[0].meta["hyperparameters"]["pool"] == ["mlp_gate", "attn_q", "attn_k", "attn_v"]
    assert sum(d.counts()["attn_q"] for d in draws) > 0


@pytest.mark.parametrize("model_type", ["llama", "phi3"])
def test_a_cut_inside_one_tie_takes_the_kinds_in_the_scorers_hook_order(model_type):
    """Every attention neuron scores the same: the pooled cut is decided by order alone -- layer 0
    first, and inside it q, k, v (Phi-3's fused qkv_proj: v, q, k)."""
    task, control, crc = tables(6)
    for table in (task, control):
        table.scores = {k: v.clone() for k, v in table.scores.items()}
        for kind in ("attn_q", "attn_k", "attn_v"):
            table.scores[kind].fill_(1.0 if table is task else 0.0)
    for table in (task, control, crc):
        table.meta["model"] = {**table.meta["model"], "model_type": model_type}
    setting = dict(top_mlp=5.0, top_attention=4.0, top_specific=10.0, crc_exclude=0.0, z_min=-0.5)
    sets, general, specific = check_against_reference(task, control, crc, setting, model_type)
    first = "attn_q" if model_type == "llama" else "attn_v"
    cut = int(LAYERS * 96 * 0.04)  # 11 of the 288 pooled attention neurons
    attention = {f"{MODULE[first]}_0_{i}" for i in range(cut)}
    assert {key for key in general if "self_attn" in key} == attention
