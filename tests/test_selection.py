"""Selection on hand-made score tables where the right sets are known."""

import pytest
import torch

from culnig_lm_eval.scoring.attribution import ScoreTable
from culnig_lm_eval.selection.rules import (
    CRC_FIRST,
    PAPER_GATE_ONLY,
    Thresholds,
    select,
    top_mask,
)

L, W = 2, 50  # 100 neurons: 1% = 1 neuron, 3% = 3 neurons
SHAPE = {"model_type": "llama", "num_layers": L, "widths": {"mlp_gate": W}}
CULTURES = ["korea", "spain", "uk"]


def table(per_culture_means, counts=(2, 2, 2), cultures=CULTURES):
    """Score table whose per-culture mean is per_culture_means [L, W, C] (sums = mean * count)."""
    counts = torch.tensor(counts)
    sums = per_culture_means * counts.float()
    return ScoreTable(list(cultures), {"mlp_gate": sums}, counts, {"model": SHAPE, "task": "t"})


def flat(layer, idx):
    return layer * W + idx


def base():
    return torch.zeros(L, W, len(CULTURES))


def test_top_mask_counts_and_respects_allowed():
    values = torch.arange(10.0)
    assert top_mask(values, 30).nonzero().flatten().tolist() == [7, 8, 9]
    allowed = torch.ones(10, dtype=torch.bool)
    allowed[9] = False
    assert top_mask(values, 30, allowed).nonzero().flatten().tolist() == [6, 7, 8]
    assert top_mask(values, 0).sum() == 0


def general_tables():
    task = base()
    task[0, 1] = 10.0   # high on the task, but also high on the control: task-format neuron
    task[0, 2] = 8.0
    task[1, 3] = 7.0    # the CRC neuron
    task[1, 4] = 6.0
    task[0, 5] = 5.0
    task[0, 6] = 4.0
    control = base()
    control[0, 1] = 9.5
    crc = base()
    crc[1, 3] = 3.0
    return table(task), table(control), table(crc)


def chosen_general(sets):
    general = sets["general"]
    return sorted(flat(layer, int(i)) for layer, idx in enumerate(general.indices["mlp_gate"]) for i in idx)


def test_crc_first_rule_subtracts_control_and_excludes_crc_before_the_cut():
    thresholds = Thresholds(top_mlp=3.0, crc_exclude=1.0, rule="crc-first")
    sets = select(*general_tables(), thresholds=thresholds)
    general = sets["general"]
    chosen = sorted(flat(layer, int(i)) for layer, idx in enumerate(general.indices["mlp_gate"]) for i in idx)
    # diff ranks: (0,2)=8, (1,3)=7 excluded by CRC, (1,4)=6, (0,5)=5, (0,6)=4, (0,1)=0.5
    assert chosen == sorted([flat(0, 2), flat(1, 4), flat(0, 5)])
    assert general.meta["selection"] == CRC_FIRST
    assert general.meta["culture"] is None
    assert general.meta["hyperparameters"]["top_mlp"] == 3.0
    assert general.meta["provenance"]["task"]["samples"] == {"korea": 2, "spain": 2, "uk": 2}


def test_paper_rule_cuts_first_then_removes_crc_neurons():
    sets = select(*general_tables(), thresholds=Thresholds(top_mlp=3.0, crc_exclude=1.0))
    # top 3 by diff: (0,2)=8, (1,3)=7, (1,4)=6; then the CRC neuron (1,3) leaves: 2 neurons, not 3
    assert chosen_general(sets) == sorted([flat(0, 2), flat(1, 4)])
    assert sets["general"].meta["selection"] == PAPER_GATE_ONLY  # gate-only tables: not named culnig-paper
    assert sets["general"].meta["hyperparameters"]["rule"] == "paper"


def test_general_exclusion_is_opt_in_and_named():
    task = base()
    task[0, 0] = 9.0
    task[0, 7] = 8.0
    general_prose = base()
    general_prose[0, 0] = 1.0  # the top general-language neuron
    tables = dict(task=table(task), general=table(general_prose))
    paper = select(**tables, thresholds=Thresholds(top_mlp=1.0))["general"]
    assert paper.indices["mlp_gate"][0].tolist() == [0]
    extended = select(**tables, thresholds=Thresholds(top_mlp=1.0, general_exclude=1.0))["general"]
    assert extended.indices["mlp_gate"][0].tolist() == [7]
    assert extended.meta["selection"] == PAPER_GATE_ONLY + "+general-exclusion"
    with pytest.raises(ValueError, match="general"):
        select(table(task), thresholds=Thresholds(general_exclude=5.0))


def specific_tables():
    task = base()
    # korea: neuron (0,10) is korea-only -> z high; neuron (0,11) is high for every culture -> z = 0
    task[0, 10] = torch.tensor([5.0, 0.0, 0.0])
    task[0, 11] = torch.tensor([6.0, 6.0, 6.0])
    # spain: its best neuron (1,20) is a spain CRC neuron, the runner-up (1,21) is kept
    task[1, 20] = torch.tensor([0.0, 9.0, 0.0])
    task[1, 21] = torch.tensor([0.0, 4.0, 0.0])
    crc = base()
    crc[1, 20] = torch.tensor([0.0, 2.0, 0.0])  # only spain's CRC run lights it up
    crc[0, 40] = torch.tensor([1.0, 0.0, 0.0])  # korea's CRC neuron, irrelevant to its task
    return table(task), table(crc)


def members(neuron_set):
    return {(layer, int(i)) for layer, idx in enumerate(neuron_set.indices["mlp_gate"]) for i in idx}


def test_crc_first_specific_sets_use_own_crc_and_z_score_filter():
    task, crc = specific_tables()
    # top_specific 2% = 2 neurons per culture before the z filter
    thresholds = Thresholds(top_specific=2.0, crc_exclude=1.0, z_min=0.5, min_samples=2, rule="crc-first")
    sets = select(task, crc=crc, thresholds=thresholds)
    korea = {(layer, int(i)) for layer, idx in enumerate(sets["korea"].indices["mlp_gate"]) for i in idx}
    spain = {(layer, int(i)) for layer, idx in enumerate(sets["spain"].indices["mlp_gate"]) for i in idx}
    assert korea == {(0, 10)}          # (0,11) has z = 0 < 0.5
    assert spain == {(1, 21)}          # (1,20) excluded by spain's CRC; (0,11) z = 0
    assert sets["korea"].meta["culture"] == "korea"
    # uk has no positive-z neuron among its top 2
    assert len(sets["uk"]) == 0


def test_paper_specific_sets_cut_first_then_drop_own_crc_and_low_z():
    task, crc = specific_tables()
    thresholds = Thresholds(top_specific=2.0, crc_exclude=1.0, z_min=0.5, min_samples=2)
    sets = select(task, crc=crc, thresholds=thresholds)
    assert members(sets["korea"]) == {(0, 10)}
    # spain's top 2 are (1,20) (its CRC neuron, removed after the cut) and (0,11) (z = 0): nothing left
    assert members(sets["spain"]) == set()
    assert sets["spain"].meta["selection"] == PAPER_GATE_ONLY


def test_paper_specific_sets_only_for_cultures_with_crc_samples():
    task, crc = specific_tables()
    crc.counts = torch.tensor([2, 2, 0])  # no CRC samples for uk
    sets = select(task, crc=crc, thresholds=Thresholds(min_samples=1))
    assert set(sets) == {"general", "korea", "spain"}
    assert set(select(task, thresholds=Thresholds(min_samples=1))) == {"general", *CULTURES}


def test_tables_from_different_models_are_refused():
    other = table(base())
    other.meta = {"model": {**SHAPE, "num_layers": 3}}
    with pytest.raises(ValueError, match="different models"):
        select(table(base()), other)


def test_cultures_with_too_few_samples_get_no_specific_set():
    task = base()
    task[0, 10] = torch.tensor([5.0, 0.0, 0.0])
    sets = select(table(task, counts=(6, 6, 2)), thresholds=Thresholds(min_samples=5))
    assert set(sets) == {"general", "korea", "spain"}


def test_normalised_z_stops_one_loud_culture_from_owning_every_z_score():
    task = base()
    task[0, 10] = torch.tensor([1.0, 0.0, 0.0])       # korea's own neuron, in korea's units
    task[0, 12] = torch.tensor([0.0, 0.0, 1000.0])    # uk is 1000x louder everywhere
    task[0, 13] = torch.tensor([0.9, 0.0, 900.0])
    common = dict(top_specific=1.0, z_min=0.5, min_samples=1)
    paper = select(table(task), thresholds=Thresholds(**common))
    assert paper["korea"].indices["mlp_gate"][0].tolist() == [10]
    # korea's second neuron (0,13) has z < 0 in raw units (uk dominates) but is korea's in relative terms
    two = dict(common, top_specific=2.0)
    raw = select(table(task), thresholds=Thresholds(**two))["korea"]
    normalised = select(table(task), thresholds=Thresholds(**two, normalise_z=True))["korea"]
    assert 13 not in raw.indices["mlp_gate"][0].tolist()
    assert 13 in normalised.indices["mlp_gate"][0].tolist()
    assert normalised.meta["selection"].endswith("normalised-z")


def test_select_and_save_writes_every_set_random_baselines_and_a_summary(tmp_path):
    import json

    from culnig_lm_eval.neuron_set import NeuronSet
    from culnig_lm_eval.selection.save import select_and_save

    task = base()
    task[0, 1] = torch.tensor([4.0, 1.0, 0.0])
    task[1, 2] = torch.tensor([0.0, 5.0, 1.0])
    scores = table(task)
    scores.meta.update(path="scores/task.scores.pt", sha256="ab" * 32)
    out = tmp_path / "sets"
    written = select_and_save({"task": scores}, Thresholds(top_mlp=2.0, min_samples=1), out, model_name="tiny",
                              random_seeds=[3, 4])
    labels = {"general", *CULTURES, "random3", "random4", "random-uniform3", "random-uniform4"}
    assert set(written) == labels
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} \
        == {f"{label}.pt" for label in labels} | {"selection.json"}
    general = NeuronSet.load(written["general"])
    assert general.meta["model"]["name"] == "tiny"
    layer_matched, uniform = NeuronSet.load(written["random3"]), NeuronSet.load(written["random-uniform3"])
    assert layer_matched.per_layer() == general.per_layer() and len(uniform) == len(general) == 2
    assert layer_matched.meta["selection"] == "random-like:culnig-paper-gate-only"
    assert uniform.meta["selection"] == "random-uniform:culnig-paper-gate-only"
    summary = json.loads((out / "selection.json").read_text())
    assert summary["files"]["general"] == "general.pt"
    assert summary["summary"]["general"]["neurons"] == 2
    assert summary["summary"]["general"]["fraction"] == {"mlp_gate": 0.02}
    assert summary["thresholds"]["top_mlp"] == 2.0 and summary["selection"] == PAPER_GATE_ONLY
    assert summary["score_files"]["task"] == {"path": "scores/task.scores.pt", "sha256": "ab" * 32}
    assert summary["random_seeds"] == [3, 4]
