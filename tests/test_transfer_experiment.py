"""The experiment's leave_one_out section (issue 27): parsing, the planned transfer evaluations, and one
tiny run end to end (held-out sets written, evaluated on their culture's items only, the report's
transfer section)."""

import json
from pathlib import Path

import pytest

from culnig_lm_eval.experiment.config import ConfigError, ExperimentConfig
from culnig_lm_eval.experiment.run import run_experiment, transfer_conditions

BASE = {"model_args": "pretrained=x", "scoring": {"tasks": ["blend_cloze_neur"]},
        "selections": {"paper": {}, "general-excluded": {"general_exclude": 5.0}},
        "evaluate": {"per_culture": ["blend_cloze_test"], "random_draws": ["layer-matched", "uniform"]}}


def test_leave_one_out_config_defaults_and_errors():
    assert ExperimentConfig.from_mapping(BASE).leave_one_out is None
    loo = ExperimentConfig.from_mapping({**BASE, "leave_one_out": True}).leave_one_out
    # defaults: every selection, every culture, the per-culture tasks, the evaluated random draws
    assert loo.selections == ["paper", "general-excluded"] and loo.leave_out == "all"
    assert loo.tasks == ["blend_cloze_test"] and loo.random_draws == ["layer-matched", "uniform"]
    assert loo.tasks_for("korea") == ["blend_cloze_test_korea"] and loo.limit is None
    loo = ExperimentConfig.from_mapping({**BASE, "leave_one_out": {
        "selections": ["general-excluded"], "cultures": ["korea", "uk"], "tasks": ["blend_test"],
        "random_draws": ["uniform"], "limit": 50}}).leave_one_out
    assert (loo.selections, loo.leave_out, loo.tasks, loo.random_draws, loo.limit) == (
        ["general-excluded"], ["korea", "uk"], ["blend_test"], ["uniform"], 50)
    for bad, message in (({"selections": ["papr"]}, "names no configured selection: papr"),
                         ({"random_draws": ["sideways"]}, "random_draws must list"),
                         ({"cultures": []}, "cultures is empty"),
                         ({"cultures": ["../x"]}, "leave_one_out culture"),
                         ({"limit": 0}, "limit must be a positive number"),
                         ({"held_out": ["korea"]}, "unknown leave_one_out key"),
                         ("yes", "must be a mapping")):
        with pytest.raises(ConfigError, match=message):
            ExperimentConfig.from_mapping({**BASE, "leave_one_out": bad})


def test_transfer_conditions_run_each_held_out_set_on_its_cultures_items_only():
    config = ExperimentConfig.from_mapping({**BASE, "leave_one_out": {"random_draws": ["uniform"]}})
    sets = {"paper": {"general": Path("/s/paper/general.pt")}}
    loco = {"paper": {c: {label: Path(f"/s/paper/loco/{c}/{label}.pt")
                          for label in ("general", "random0", "random-uniform0", "random-uniform1")}
                      for c in ("korea", "uk")}}
    planned = {c.label: c for c in transfer_conditions(config, sets, loco)}
    assert planned["unmasked"].tasks == ["blend_cloze_test_korea", "blend_cloze_test_uk"]
    assert planned["paper/general"].tasks == ["blend_cloze_test_korea", "blend_cloze_test_uk"]  # in-sample
    assert planned["paper/loco/korea/general"].tasks == ["blend_cloze_test_korea"]
    assert planned["paper/loco/uk/random-uniform1"].tasks == ["blend_cloze_test_uk"]
    assert planned["paper/loco/uk/random-uniform1"].set_paths == [Path("/s/paper/loco/uk/random-uniform1.pt")]
    assert not any(label.endswith("/random0") for label in planned)  # the layer-matched draw is not evaluated
    assert len(planned) == 2 + 2 * 3


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from tiny_models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2, intermediate_size=200)


def test_a_tiny_experiment_with_leave_one_out(tiny_checkpoint, tmp_path):
    from culnig_lm_eval.neuron_set import NeuronSet
    from culnig_lm_eval.scoring.tables import load_table
    from culnig_lm_eval.selection.loco import select_without
    from culnig_lm_eval.selection.rules import Thresholds

    config = ExperimentConfig.from_mapping({
        "name": "tiny", "model_args": f"pretrained={tiny_checkpoint},dtype=float32", "data": "sample",
        "scoring": {"tasks": ["blend_cloze_neur:24"], "control": ["blend_cloze_ctrl:24"], "batch_size": 8,
                    "stability_fold": None},
        "thresholds": {"top_mlp": 2.0, "min_samples": 1}, "selections": {"paper": {}}, "random_seeds": [0, 1],
        "evaluate": {"batch_size": 8, "limit": 4, "per_culture": ["blend_cloze_test"], "culture_sets_for": [],
                     "random_for": [], "culture_random": False},
        "leave_one_out": {"cultures": ["korea", "uk"], "limit": 6},
    })
    out = tmp_path / "run"
    report = run_experiment(config, out)
    tables = {role: load_table(out / "scores" / f"{role}.scores.pt") for role in ("task", "control")}
    for culture in ("korea", "uk"):
        folder = out / "sets" / "paper" / "loco" / culture
        held = NeuronSet.load(folder / "general.pt")
        assert held.meta["held_out"] == culture
        expected = select_without(tables, Thresholds(top_mlp=2.0, min_samples=1), culture)
        assert held.neurons_sha256() == expected.neurons_sha256()
        assert sorted(p.name for p in folder.glob("*.pt")) == [
            "general.pt", "random-uniform0.pt", "random-uniform1.pt", "random0.pt", "random1.pt"]
        # evaluated on the culture's own items, 6 of them; its random sets likewise (layer-matched only)
        for label in ("general", "random0", "random1"):
            done = out / "transfer" / "paper" / "loco" / culture / label / f"blend_cloze_test_{culture}" / "done.json"
            assert json.loads(done.read_text())["limit"] == 6
        assert not (out / "transfer" / "paper" / "loco" / culture / "random-uniform0").exists()
        samples = next((out / "transfer" / "unmasked" / f"blend_cloze_test_{culture}").rglob("samples_*.jsonl"))
        docs = [json.loads(line)["doc"] for line in samples.read_text().splitlines()]
        assert len(docs) == 6 and {d["culture"] for d in docs} == {culture}
    assert (out / "transfer" / "paper" / "general" / "blend_cloze_test_uk" / "done.json").is_file()
    text = report.read_text()
    assert "## Transfer: culture-general sets on cultures they were not selected on" in text
    assert "| korea | 6 |" in text and "| uk | 6 |" in text
    rows = json.loads((report.parent / "report.json").read_text())["rows"]
    (pooled,) = [r for r in rows if r["section"] == "transfer_pooled"]
    assert pooled["cultures"] == ["korea", "uk"] and pooled["n_random"] == 2
