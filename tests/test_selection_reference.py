"""The ``culnig-paper`` rule against a plain re-implementation of the published selection
(ynklab/CULNIG ``decide_culture_general_neurons.py`` / ``decide_culture_specific_neuron.py``),
written here with per-neuron dictionaries and sorted lists the way those scripts work."""

import math

import numpy as np
import pytest
import torch

from culnig_lm_eval.scoring.attribution import ScoreTable
from culnig_lm_eval.selection.random_sets import random_uniform
from culnig_lm_eval.selection.rules import Thresholds, select

LAYERS = 3
WIDTHS = {"mlp_gate": 160, "attn_q": 64, "attn_k": 16, "attn_v": 16}
MLP, ATTENTION = ["mlp_gate"], ["attn_q", "attn_k", "attn_v"]
CULTURES = ["china", "iran", "mexico", "spain", "uk"]
SHAPE = {"model_type": "llama", "num_layers": LAYERS, "widths": WIDTHS}


def random_table(gen, cultures, counts, role, spread=1.0):
    scores = {k: torch.randn(LAYERS, w, len(cultures), generator=gen, dtype=torch.float64).float() * spread
              for k, w in WIDTHS.items()}
    return ScoreTable(list(cultures), scores, torch.tensor(counts), {"model": SHAPE, "task": role, "path": role})


def tables(seed):
    gen = torch.Generator().manual_seed(seed)
    task = random_table(gen, CULTURES, [7, 3, 11, 5, 9], "task")
    control = random_table(gen, CULTURES, [4, 6, 2, 8, 5], "control", spread=0.5)
    crc = random_table(gen, CULTURES[:4], [3, 3, 3, 3], "crc")  # uk has no CRC data
    return task, control, crc


# -- the reference, plainly -------------------------------------------------------------------
def neuron_dict(table):
    """{(kind, layer, index): {culture: sum}} like the reference's score JSON."""
    out = {}
    for kind, scores in table.scores.items():
        values = scores.double().numpy()
        for layer in range(values.shape[0]):
            for idx in range(values.shape[1]):
                out[(kind, layer, idx)] = {c: float(values[layer, idx, j]) for j, c in enumerate(table.cultures)}
    return out


def top_keys(scores: dict, proportion: float) -> list:
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    return [key for key, _ in ranked[: int(len(ranked) * proportion)]]


def reference_general(task, control, crc, t_mlp, t_att, r):
    n_task, n_control = int(task.counts.sum()), int(control.counts.sum())
    task_d, control_d, crc_d = neuron_dict(task), neuron_dict(control), neuron_dict(crc)
    chosen = set()
    for group, t in ((MLP, t_mlp), (ATTENTION, t_att)):
        scores = {key: sum(v.values()) / n_task - sum(control_d[key].values()) / n_control
                  for key, v in task_d.items() if key[0] in group}
        crc_scores = {key: sum(v.values()) for key, v in crc_d.items() if key[0] in group}
        excluded = set(top_keys(crc_scores, r / 100))
        chosen |= {key for key in top_keys(scores, t / 100) if key not in excluded}
    return chosen


def reference_specific(task, control, crc, t_s, r, z_min):
    n_task, n_control = int(task.counts.sum()), int(control.counts.sum())
    task_d, control_d, crc_d = neuron_dict(task), neuron_dict(control), neuron_dict(crc)
    per_country = {key: {c: v[c] / n_task - control_d[key][c] / n_control for c in v} for key, v in task_d.items()}
    result = {}
    for country in crc.cultures:
        own = {key: v[country] for key, v in per_country.items()}
        excluded = set(top_keys({key: v[country] for key, v in crc_d.items()}, r / 100))
        kept = set()
        for key in top_keys(own, t_s / 100):
            if key in excluded:
                continue
            values = list(per_country[key].values())
            mean = sum(values) / len(values)
            std = math.sqrt(sum((x - mean) ** 2 for x in values) / len(values))
            z = 0.0 if std == 0 else (own[key] - mean) / std
            if z >= z_min:
                kept.add(key)
        result[country] = kept
    return result


def members(neuron_set):
    return {(kind, layer, int(i)) for kind, per_layer in neuron_set.indices.items()
            for layer, idx in enumerate(per_layer) for i in idx}


SETTINGS = [
    dict(top_mlp=5.0, top_attention=4.0, top_specific=3.0, crc_exclude=10.0, z_min=0.5),
    dict(top_mlp=10.0, top_attention=2.0, top_specific=6.0, crc_exclude=5.0, z_min=0.0),
    dict(top_mlp=1.0, top_attention=0.5, top_specific=1.5, crc_exclude=1.0, z_min=1.0),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"t{s['top_mlp']}-r{s['crc_exclude']}")
def test_paper_rule_matches_the_reference(seed, setting):
    task, control, crc = tables(seed)
    sets = select(task, control, crc, thresholds=Thresholds(**setting, min_samples=0))

    expected_general = reference_general(task, control, crc, setting["top_mlp"], setting["top_attention"],
                                         setting["crc_exclude"])
    assert members(sets["general"]) == expected_general
    assert expected_general  # the comparison is not vacuous

    expected_specific = reference_specific(task, control, crc, setting["top_specific"], setting["crc_exclude"],
                                           setting["z_min"])
    assert set(sets) - {"general"} == set(expected_specific) == set(CULTURES[:4])
    for country, expected in expected_specific.items():
        assert members(sets[country]) == expected, country
    assert any(expected_specific.values())


def test_general_cut_holds_at_most_t_percent_and_pools_attention():
    task, control, crc = tables(5)
    general = select(task, control, crc, thresholds=Thresholds(top_mlp=5.0, top_attention=4.0, crc_exclude=10.0))[
        "general"]
    counts = general.counts()
    assert counts["mlp_gate"] <= int(LAYERS * 160 * 0.05)
    attention = counts["attn_q"] + counts["attn_k"] + counts["attn_v"]
    assert attention <= int(LAYERS * 96 * 0.04)
    # pooled: the per-kind budgets of a per-kind cut would give q exactly int(3*64*0.04) = 7
    unpooled = select(task, control, crc, thresholds=Thresholds(top_mlp=5.0, top_attention=4.0, crc_exclude=10.0,
                                                                 rule="crc-first"))["general"]
    assert unpooled.counts()["attn_q"] == int(LAYERS * 64 * 0.04)


def test_random_uniform_draws_the_same_number_from_the_pooled_neurons():
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
