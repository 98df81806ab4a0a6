"""culnig-experiment end to end on a tiny model and the shipped sample data: steps, skipping, --force,
a missing task, and the report built from the lm-eval output folders it wrote."""

import json
from pathlib import Path

import pytest

import culnig_lm_eval.experiment.config as experiment_module
from culnig_lm_eval.experiment.config import ConfigError, ExperimentConfig
from culnig_lm_eval.experiment.run import run_experiment
from culnig_lm_eval.neuron_set import NeuronSet
from tiny_models import save_tiny_llama


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2, intermediate_size=200)


def config_for(checkpoint):
    return ExperimentConfig.from_mapping({
        "name": "tiny",
        "model_args": f"pretrained={checkpoint},dtype=float32",
        "data": "sample",
        "scoring": {"tasks": ["blend_cloze_neur:24"], "control": ["blend_cloze_ctrl:24"], "crc": ["crc:16"],
                    "general": ["general_ppl_selection:1"], "batch_size": 8, "window": 32, "stride": 32},
        "thresholds": {"top_mlp": 1.0, "top_specific": 1.0, "min_samples": 2},
        "selections": {"paper": {}, "general-excluded": {"general_exclude": 5.0}},
        "random_seeds": [0, 1],
        "evaluate": {"batch_size": 8, "limit": 8, "cultural": ["blend_cloze_test"], "per_culture": ["blend_cloze_test"],
                     "general": ["general_ppl"], "nlu": ["no_such_task_here"], "instance_task": "blend_cloze_test",
                     # random sets for paper's general and culture sets, on the per-culture task only
                     "culture_sets_for": ["paper"], "random_for": ["paper"], "random_tasks": ["blend_cloze_test"]},
    })


def count_evaluations(monkeypatch):
    import lm_eval

    calls = []
    real = lm_eval.simple_evaluate

    def counting(*args, **kwargs):
        # tasks are passed as loaded objects (built once, reused in every state)
        names = [t if isinstance(t, str) else getattr(t, "task_name", None) or t.name for t in kwargs["tasks"]]
        calls.append((names, kwargs["model_args"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", counting)
    return calls


def test_experiment_runs_skips_and_forces(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = count_evaluations(monkeypatch)
    report = run_experiment(config_for(tiny_checkpoint), out)

    # every selection wrote a general set, size-matched random sets and culture sets
    for selection in ("paper", "general-excluded"):
        general = NeuronSet.load(out / "sets" / selection / "general.pt")
        random0 = NeuronSet.load(out / "sets" / selection / "random0.pt")
        assert general.per_layer() == random0.per_layer()
        assert len(general) == int(2 * 200 * 0.01)
    assert NeuronSet.load(out / "sets" / "general-excluded" / "general.pt").meta["selection"].endswith("general-exclusion")
    # every set records the code that made it and the versions of the tasks it was scored on
    meta = NeuronSet.load(out / "sets" / "paper" / "general.pt").meta
    assert meta["code_version"]["package"] and "commit" in meta["code_version"]
    assert meta["provenance"]["crc"]["task_versions"] == {"crc": 2.0}

    # stability: task and control scored again on fold 0 of 2; every set records its halves' overlap
    from culnig_lm_eval.scoring.tables import load_table

    for role in ("task", "control"):
        half = load_table(out / "scores" / "half0" / f"{role}.scores.pt")
        assert half.meta["settings"]["fold"] == "0/2"
        assert half.meta["num_samples"] < load_table(out / "scores" / f"{role}.scores.pt").meta["num_samples"]
    assert not (out / "scores" / "half0" / "crc.scores.pt").exists()
    stamp = json.loads((out / "sets" / ".paper.done.json").read_text())
    assert set(stamp["half_scores"]) == {"task", "control"}
    stability = NeuronSet.load(out / "sets" / "paper" / "general.pt").meta["stability"]
    assert set(stability) >= {"halves_jaccard", "seeds_jaccard", "unstable"}

    # random sets: random_seeds of them for the general set and for every non-empty culture set of paper
    selection = json.loads((out / "sets" / "paper" / "selection.json").read_text())
    cultures = [label for label, info in selection["summary"].items()
                if info["culture"] and info["neurons"] and not label.startswith("random")]
    assert cultures
    evaluated_sets = [Path(args.split("neurons=")[1]) for tasks, args in calls if "neurons=" in args]
    for label in cultures:  # culture sets record their stability too
        assert "halves_jaccard" in NeuronSet.load(out / "sets" / "paper" / f"{label}.pt").meta["stability"]
    for label in cultures:
        drawn = sorted((out / "sets" / "paper" / "random").glob(f"{label}-random*.pt"))
        assert [p.name for p in drawn] == [f"{label}-random0.pt", f"{label}-random1.pt"]
        own = NeuronSet.load(out / "sets" / "paper" / f"{label}.pt")
        assert all(NeuronSet.load(p).per_layer() == own.per_layer() for p in drawn)
        assert sorted(p for p in evaluated_sets if p.parent.name == "random" and p.name.startswith(f"{label}-random")) \
            == drawn
    general_randoms = [p for p in evaluated_sets if p.parent.name == "paper" and p.name.startswith("random")]
    assert sorted(p.name for p in general_randoms) == ["random0.pt", "random1.pt"]
    assert not any(p.parent.name == "general-excluded" and p.name.startswith("random") for p in evaluated_sets)
    # each random set ran the random task only
    assert all(tasks == ["blend_cloze_test"] for tasks, args in calls if "random" in args.split("neurons=")[-1])
    # the sets name the data files their samples came from, with their hashes
    from culnig_lm_eval._io import file_sha256
    from culnig_lm_eval._startup import task_dir

    data = NeuronSet.load(out / "sets" / "paper" / "general.pt").meta["provenance"]["task"]["data"]
    assert data["blend_mcq"]["kind"] == "sample"
    assert data["blend_mcq"]["sha256"] == file_sha256(task_dir() / "blend" / "sample" / "mc_questions.csv")
    assert set(data) == {"blend_mcq", "blend_questions"}

    # lm-eval's own output layout with per-sample logs, for every condition and task
    results = sorted(out.glob("eval/**/results_*.json"))
    samples = sorted(out.glob("eval/**/samples_*.jsonl"))
    assert results and len(samples) == len(results)
    first = json.loads(results[0].read_text())
    assert "model_args" in first["config"]

    # the unknown task is skipped with its reason, and the report says so
    skipped = json.loads((out / "eval" / "skipped.json").read_text())
    assert "no_such_task_here" in skipped
    text = report.read_text()
    assert "no_such_task_here" in text
    assert "**Drop vs its random sets.**" in text and "## Stability of the selected sets" in text
    assert list((out / "report").rglob("*.png"))
    n_first = len(calls)
    assert n_first > 0

    # a re-run skips every finished evaluation ...
    run_experiment(config_for(tiny_checkpoint), out)
    assert len(calls) == n_first
    # ... also when a set file is rewritten with other metadata but the same neurons (evaluations
    # are keyed on the neurons) ...
    label = cultures[0]
    path = out / "sets" / "paper" / f"{label}.pt"
    rewritten = NeuronSet.load(path)
    rewritten.meta["note"] = "re-selected"
    before = file_sha256(path)
    rewritten.save(path)
    assert file_sha256(path) != before
    run_experiment(config_for(tiny_checkpoint), out)
    assert len(calls) == n_first
    # ... but not when its neurons change: that set and its own random sets run again
    per_kind = {k: list(v) for k, v in rewritten.indices.items()}
    kind, layer = next((k, i) for k, v in per_kind.items() for i, t in enumerate(v) if t.numel())
    per_kind[kind][layer] = per_kind[kind][layer][1:]
    smaller = NeuronSet(per_kind, rewritten.meta)
    assert len(smaller) < len(rewritten)
    smaller.save(path)
    run_experiment(config_for(tiny_checkpoint), out)
    rerun = [args for _, args in calls[n_first:]]
    assert rerun and all(f"{label}" in args.split("neurons=")[-1] for args in rerun)
    n_now = len(calls)
    # ... and --force redoes them
    run_experiment(config_for(tiny_checkpoint), out, force=True)
    assert len(calls) == n_now + n_first


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    with pytest.raises(ValueError, match="missing section"):
        experiment_module.load_config(bad)
    with pytest.raises(experiment_module.ConfigError, match="no such file"):
        experiment_module.load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("config", sorted((Path(experiment_module.__file__).parent.parent / "experiments").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_experiment_configs_are_valid(config):
    loaded = experiment_module.load_config(config)
    assert loaded.name == config.stem
    if "blend" in config.stem:  # real-data studies never fall back to the shipped BLEnD sample
        assert {"blend_mcq", "blend_questions"} <= set(loaded.require_data)


def test_conditions_follow_random_draws_and_random_for():
    from culnig_lm_eval.experiment.config import EvaluationPlan
    from culnig_lm_eval.experiment.run import conditions

    sets = {sel: {label: Path(f"/sets/{sel}/{label}.pt") for label in
                  ("general", "korea", "random0", "random1", "random-uniform0", "random-uniform1")}
            for sel in ("paper", "general-excluded")}
    plan = EvaluationPlan(cultural=["blend_cloze_test"], per_culture=["blend_cloze_test"], general=["general_ppl"],
                          culture_sets_for=["paper"], random_for=["paper"], random_draws=["uniform"])
    labels = {c.label: c.tasks for c in conditions(plan, sets)}
    assert set(labels) == {"unmasked", "paper/general", "general-excluded/general", "paper/korea",
                           "paper/random-uniform0", "paper/random-uniform1"}
    assert labels["paper/random-uniform0"] == ["blend_cloze_test", "general_ppl"]
    plan.random_for, plan.random_draws = None, ["layer-matched", "uniform"]
    assert sum(c.label.split("/")[-1].startswith("random") for c in conditions(plan, sets)) == 8
    # the culture sets' random sets: on every item, or on their own culture's items only
    drawn = {"paper": {"korea": {"korea-random0": Path("/sets/paper/random/korea-random0.pt")}}}
    by_label = {c.label: c for c in conditions(plan, sets, drawn)}
    assert by_label["paper/random/korea-random0"].culture is None and by_label["paper/korea"].culture is None
    plan.culture_random_items = "own"
    by_label = {c.label: c for c in conditions(plan, sets, drawn)}
    assert by_label["paper/random/korea-random0"].culture == "korea" and by_label["paper/korea"].culture is None
    # generation tasks: the unmasked model and the culture-general sets of generation_for only
    plan.generation, plan.generation_for = ["blend_gen_test"], ["paper"]
    labels = {c.label: c.tasks for c in conditions(plan, sets)}
    assert [label for label, tasks in labels.items() if "blend_gen_test" in tasks] == ["unmasked", "paper/general"]
    plan.generation_for = None
    labels = {c.label: c.tasks for c in conditions(plan, sets)}
    assert [label for label, tasks in labels.items() if "blend_gen_test" in tasks] == [
        "unmasked", "paper/general", "general-excluded/general"]


@pytest.mark.parametrize("key", ["random_for", "culture_sets_for", "generation_for"])
def test_selection_lists_must_name_a_selection(key):
    raw = {"model_args": "pretrained=x", "scoring": {"tasks": ["blend_cloze_neur"]}, "evaluate": {key: ["papr"]}}
    with pytest.raises(experiment_module.ConfigError, match=f"{key} names no configured selection: papr"):
        ExperimentConfig.from_mapping(raw)


def test_an_evaluation_folder_with_a_users_file_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    from culnig_lm_eval._io import ForeignFilesError
    from culnig_lm_eval.experiment import run

    folder = tmp_path / "run" / "eval" / "unmasked" / "blend_cloze_test"
    (folder / "model").mkdir(parents=True)
    (folder / "done.json").write_text("{}")
    (folder / "model" / "results_2026.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")
    monkeypatch.setattr(run, "check_required_data", lambda config: None)
    with pytest.raises(ForeignFilesError, match="notes.txt"):
        run.run_experiment(config_for("never-loaded"), tmp_path / "run")
    assert (folder / "notes.txt").read_text() == "mine"


def test_stability_from_fold_tables_of_one_pass_and_no_culture_random_sets(tiny_checkpoint, tmp_path):
    from culnig_lm_eval.scoring.tables import load_table

    config = ExperimentConfig.from_mapping({
        "name": "tiny", "model_args": f"pretrained={tiny_checkpoint},dtype=float32", "data": "sample",
        "scoring": {"tasks": ["blend_cloze_neur:24"], "control": ["blend_cloze_ctrl:24"], "batch_size": 8,
                    "stability_folds": 2},
        "thresholds": {"top_mlp": 1.0, "top_specific": 1.0, "min_samples": 1},
        "selections": {"paper": {}}, "random_seeds": [0],
        "evaluate": {"batch_size": 8, "limit": 4, "per_culture": ["blend_cloze_test"], "culture_random": False,
                     "dtype": "bfloat16"},
    })
    assert config.stability_fold is None and config.scoring.fold_tables == 2
    assert config.evaluation_model_args == f"pretrained={tiny_checkpoint},dtype=bfloat16"
    out = tmp_path / "run"
    run_experiment(config, out)
    assert not (out / "scores" / "half0").exists()  # no second scoring pass
    folds = [load_table(out / "scores" / "folds2" / str(i) / "task.scores.pt") for i in (0, 1)]
    full = load_table(out / "scores" / "task.scores.pt")
    assert sum(f.meta["num_samples"] for f in folds) == full.meta["num_samples"]
    stability = NeuronSet.load(out / "sets" / "paper" / "general.pt").meta["stability"]
    assert stability["pairs"] == 1 and stability["folds"] == 2
    assert not (out / "sets" / "paper" / "random").exists()  # culture_random: false
    assert (out / "eval" / "paper" / "random0" / "blend_cloze_test" / "done.json").is_file()  # the general set's
    # scored in float32 (the table's stamp), evaluated in bfloat16 (the results file says so)
    assert "dtype=float32" in full.meta["settings"]["model_args"]
    (results,) = (out / "eval" / "unmasked" / "blend_cloze_test").rglob("results_*.json")
    assert "dtype=bfloat16" in json.loads(results.read_text())["config"]["model_args"]
    with pytest.raises(ConfigError, match="evaluate.dtype"):
        ExperimentConfig.from_mapping({"model_args": "pretrained=x", "scoring": {"tasks": ["blend_cloze_neur"]},
                                       "evaluate": {"dtype": "int8"}})


def test_stability_fold_and_folds_are_exclusive():
    with pytest.raises(ConfigError, match="give one"):
        ExperimentConfig.from_mapping({"model_args": "pretrained=x", "scoring": {
            "tasks": ["blend_cloze_neur"], "stability_fold": "0/2", "stability_folds": 4}, "evaluate": {}})


def test_a_set_with_the_same_neurons_as_an_earlier_condition_is_evaluated_once_and_an_empty_set_never(
        tmp_path, monkeypatch):
    import contextlib

    from culnig_lm_eval.architectures import model_shape
    from culnig_lm_eval.experiment import run
    from culnig_lm_eval.neuron_set import new_meta
    from tiny_models import tiny_config

    shape = model_shape(tiny_config("llama"))
    paths = {}
    for selection, rows in (("general-excluded", [1, 2]), ("contrast-excl", [1, 2]), ("paper", [3]), ("none", [])):
        paths[selection] = tmp_path / selection / "general.pt"
        NeuronSet({"mlp_gate": [rows, []]}, new_meta(shape, "test")).save(paths[selection])
    sets = {name: {"general": path} for name, path in paths.items()}
    # two cultures without specific neurons: masking nothing is the unmasked model
    for culture in ("iran", "korea"):
        NeuronSet({"mlp_gate": [[], []]}, new_meta(shape, "test")).save(tmp_path / "paper" / f"{culture}.pt")
        sets["paper"][culture] = tmp_path / "paper" / f"{culture}.pt"
    evaluated = []
    monkeypatch.setattr(run, "loadable_tasks", lambda names, tasks, skipped: names)
    monkeypatch.setattr("culnig_lm_eval.model.states.evaluate_state",
                        lambda lm, tasks, task, folder, **kw: evaluated.append((str(folder), task)))
    monkeypatch.setattr(run, "culture_items", lambda task, culture, field: None)

    class FakeLM:
        masked = staticmethod(lambda sets: contextlib.nullcontext())

    config = ExperimentConfig.from_mapping({"model_args": "pretrained=x", "scoring": {"tasks": ["blend_cloze_neur"]},
                                            "evaluate": {"cultural": ["blend_cloze_test"],
                                                         "per_culture": ["blend_cloze_test"]}})
    skipped = {}
    run.evaluate_conditions(FakeLM(), config, sets, tmp_path / "eval", False, skipped)
    assert sorted(Path(folder).relative_to(tmp_path / "eval").parts[0] for folder, _ in evaluated) == [
        "general-excluded", "paper", "unmasked"]
    assert skipped["contrast-excl/general"] == "the same neurons as general-excluded/general, evaluated there"
    for label in ("none/general", "paper/iran", "paper/korea"):
        assert skipped[label] == "the set holds no neuron: masking it leaves the unmasked model"


def test_culture_random_draws():
    from culnig_lm_eval.experiment.config import EvaluationPlan

    assert EvaluationPlan(random_draws=["layer-matched", "uniform"]).culture_random_draws == ["layer-matched", "uniform"]
    assert EvaluationPlan(random_draws=["uniform"], culture_random=False).culture_random_draws == []
    assert EvaluationPlan(random_draws=["uniform"], culture_random=["layer-matched"]).culture_random_draws == ["layer-matched"]
    with pytest.raises(ConfigError, match="culture_random"):
        ExperimentConfig.from_mapping({"model_args": "pretrained=x", "scoring": {"tasks": ["blend_cloze_neur"]},
                                       "evaluate": {"culture_random": ["sideways"]}})
