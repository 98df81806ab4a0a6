"""Model loading, scoring and experiment wiring: one factory, one device decision, and the bad
inputs that used to give tracebacks or silently wrong numbers (issue: reliability)."""

from __future__ import annotations

import json
import logging
import pytest
import torch
from cli_inprocess import run_module
from tiny_models import save_tiny_llama

from culnig_lm_eval.model.ablation import operation_factor
from culnig_lm_eval.architectures import model_shape
from culnig_lm_eval.neuron_set import NeuronSet, new_meta
from culnig_lm_eval.scoring.attribution import ScoreTable
from culnig_lm_eval.scoring.run import ScoringSettings, parse_task_specs
from culnig_lm_eval.scoring.tables import ScoreFileError, load_table, save_table


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"), num_hidden_layers=2, intermediate_size=64)


# -- masked-hf arguments ----------------------------------------------------------------------
@pytest.mark.parametrize("factor", ["nan", "inf", "-inf", float("nan")])
def test_non_finite_factor_is_refused(factor):
    with pytest.raises(ValueError, match="finite"):
        operation_factor("scale", factor)


def test_non_finite_factor_fails_before_the_model_loads(monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    monkeypatch.setattr(HFLM, "__init__", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ValueError, match="finite"):
        MaskedHFLM.create_from_arg_string("pretrained=x,operation=scale,factor=nan")


def test_device_in_model_args_and_on_the_command_line(checkpoint):
    """lm_eval passes device=cuda:0 by default; device= in --model_args must win, not raise."""
    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    lm = MaskedHFLM.create_from_arg_string(f"pretrained={checkpoint},device=cpu", {"device": "cuda:0", "batch_size": 2})
    assert lm.device.type == "cpu"
    # lm-eval 0.4.13's CLI parses --model_args itself and calls create_from_arg_obj
    lm = MaskedHFLM.create_from_arg_obj({"pretrained": str(checkpoint), "device": "cpu"}, {"device": "cuda:0", "batch_size": 2})
    assert lm.device.type == "cpu"


def test_model_args_are_parsed_by_lm_eval(monkeypatch, checkpoint):
    """parallelize=False is the boolean False (hand-parsed it was the true string "False")."""
    from lm_eval.models.huggingface import HFLM

    from culnig_lm_eval.model.lm import load_lm

    seen = {}

    def fake_init(self, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(HFLM, "__init__", fake_init)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match="stop here"):
        load_lm(f"pretrained={checkpoint},parallelize=False", batch_size=4)
    assert seen["parallelize"] is False and seen["batch_size"] == 4
    # the one device decision: CUDA where it is available (mocked here), unless asked otherwise
    assert seen["device"] == "cuda"
    seen.clear()
    with pytest.raises(RuntimeError):
        load_lm(f"pretrained={checkpoint},device=cpu")
    assert seen["device"] == "cpu"


def test_model_args_without_pretrained_is_a_clear_error():
    from culnig_lm_eval.model.lm import parse_model_args

    with pytest.raises(ValueError, match="pretrained="):
        parse_model_args("dtype=float32")


# -- masked runs record what they applied; empty sets are loud ------------------------------------
def test_masked_context_records_the_applied_sets_and_restores(checkpoint, tmp_path, caplog):
    from culnig_lm_eval.model.lm import load_lm

    lm = load_lm(f"pretrained={checkpoint},dtype=float32", batch_size=2)
    shape = model_shape(lm.model.config)
    chosen = NeuronSet({"mlp_gate": [[1, 2], [3]]}, new_meta(shape, "test")).save(tmp_path / "s.pt")
    empty = NeuronSet({"mlp_gate": [[], []]}, new_meta(shape, "test")).save(tmp_path / "empty.pt")
    gate = lm.model.model.layers[0].mlp.gate_proj.weight
    before = gate.detach().clone()
    with lm.masked([NeuronSet.load(chosen)]):
        info = lm.get_model_info()["culnig_ablation"]
        assert info["neurons"] == 3
        assert info["neuron_sets"][0]["counts"] == {"mlp_gate": 3}
        assert info["neuron_sets"][0]["sha256"]
        assert torch.all(gate[[1, 2]] == 0)
    assert torch.equal(gate, before)
    assert lm.get_model_info()["culnig_ablation"]["neurons"] == 0
    with caplog.at_level(logging.WARNING), lm.masked([NeuronSet.load(empty)]):
        pass
    assert "0 neurons" in caplog.text and "masks nothing" in caplog.text


# -- score files --------------------------------------------------------------------------------
SHAPE = {"model_type": "llama", "num_layers": 2, "widths": {"mlp_gate": 8}, "name": "tiny"}


def table(cultures, scores, counts):
    return ScoreTable(cultures, {"mlp_gate": scores}, torch.tensor(counts), {"model": SHAPE})


@pytest.mark.parametrize("bad, match", [
    (table(["a", "b", "c"], torch.zeros(2, 8, 2), [1, 1, 1]), "cultures"),
    (table(["a", "b"], torch.zeros(2, 8, 2), [1, 1, 1]), "counts"),
    (table(["a", "b"], torch.full((2, 8, 2), float("nan")), [1, 1]), "NaN"),
    (table(["a", "b"], torch.zeros(2, 8, 2), [1, -1]), "negative"),
])
def test_malformed_score_files_are_refused(tmp_path, bad, match):
    path = save_table(bad, tmp_path / "task.scores.pt")
    with pytest.raises(ScoreFileError, match=match):
        load_table(path)


def test_task_spec_limits():
    assert parse_task_specs(["crc:96", "blend"], 5) == [("crc", 96), ("blend", 5)]
    for bad in ("crc:", "crc:x", "crc:0", "crc:-3"):
        with pytest.raises(ValueError, match="TASK:N"):
            parse_task_specs([bad], None)


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("window", 0), ("stride", -1), ("limit", 0)])
def test_scoring_settings_ranges(field, value):
    with pytest.raises(ValueError, match=field):
        ScoringSettings(**{field: value})


def test_scoring_settings_kinds():
    assert ScoringSettings(kinds=("attn_v", "mlp_gate")).kinds == ("mlp_gate", "attn_v")
    with pytest.raises(ValueError, match="module kinds"):
        ScoringSettings(kinds=("mlp_gate", "mlp_down"))


# -- command lines: one line, exit 2, nothing loaded or written ------------------------------------
def run_cli(*argv, env=None):
    """``python -m MODULE ARGV`` in this process (cli_inprocess): the exit status and the one line."""
    return run_module(*argv, env=env)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, proc.stderr


@pytest.mark.parametrize("text, needle", [
    ("name: x\nmodel_args: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "mapping"),
    ("name: x\n", "missing section"),
    ("model_args: pretrained=x\nscoring: {tasks: [blend_cloze_neur], colour: 1}\nevaluate: {}\n", "unknown scoring key"),
    ("model_args: pretrained=x\nscoring: {tasks: [blend_cloze_neur]}\nevaluate: {}\nrandom_seeds: [-1]\n", "random_seeds"),
    ("model_args: pretrained=x\nscoring: {tasks: [blend_cloze_neur]}\nevaluate: {}\nthresholds: {top_mlp: .nan}\n", "top_mlp"),
    ("name: ../../escape\nmodel_args: pretrained=x\nscoring: {tasks: [blend_cloze_neur]}\nevaluate: {}\n", "cannot be used"),
    ("model_args: pretrained=x\nscoring: {tasks: [blend_cloze_neur]}\nevaluate: {}\nrequire_data: [blend_mqc]\n",
     "unknown dataset"),
    ("model_args: pretrained=x\nscoring: {tasks: [blend_cloze_neur]}\nevaluate: {}\nrequire_data: [blend_mcq]\n",
     "CULNIG_BLEND_MCQ"),
])
def test_bad_experiment_config(tmp_path, text, needle):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    proc = run_cli("culnig_lm_eval.cli.experiment", "--config", str(config), "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, str(config), needle)
    assert not (tmp_path / "out").exists()


def test_experiment_config_not_utf8(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_bytes(b"name: \xff\xfe\n")
    assert_one_line_error(run_cli("culnig_lm_eval.cli.experiment", "--config", str(config)), "not valid YAML")


def test_score_run_checks_data_before_loading_the_model(tmp_path, checkpoint):
    """A BLEnD file with a bad row fails while the tasks load, before any model is loaded."""
    mcq = tmp_path / "mcq.csv"
    mcq.write_text("MCQID,ID,country,prompt,choices,choice_countries,answer_idx\n"
                   'x1,Al-fo-01,UK,"What?","{""A"": ""tea"", ""B"": ""milk""}","{""A"": ""UK"", ""B"": ""US""}",Z\n')
    env = {**__import__("os").environ, "CULNIG_BLEND_MCQ": str(mcq), "CULNIG_DATA": "sample"}
    proc = run_cli("culnig_lm_eval.cli.score", "run", "--model_args", "pretrained=/no/such/model",
                   "--tasks", "blend_cloze_neur", "--out", str(tmp_path / "scores"), env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "/no/such/model" not in proc.stderr  # the model was never reached
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--tasks", "blend_cloze_neur:0"], "TASK:N"),
    (["--tasks", "blend_cloze_neur", "--batch_size", "0"], "batch_size"),
    (["--tasks", "blend_cloze_neur", "--model_args", "dtype=float32"], "pretrained="),
    (["--tasks", "no_such_task"], "unknown task"),
])
def test_score_run_bad_arguments(tmp_path, argv, needle):
    proc = run_cli("culnig_lm_eval.cli.score", "run", "--out", str(tmp_path / "scores"), *argv)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "scores").exists()


def test_score_select_bad_seeds_and_missing_folder(tmp_path):
    proc = run_cli("culnig_lm_eval.cli.score", "select", "--scores-dir", str(tmp_path / "nope"),
                   "--out", str(tmp_path / "sets"))
    assert_one_line_error(proc, "no such folder")
    save_table(table(["a", "b"], torch.rand(2, 8, 2), [3, 3]), tmp_path / "task.scores.pt")
    proc = run_cli("culnig_lm_eval.cli.score", "select", "--scores-dir", str(tmp_path), "--out",
                   str(tmp_path / "sets"), "--seeds", "1,-2")
    assert_one_line_error(proc, "--seeds")
    assert not (tmp_path / "sets").exists()


def test_results_record_the_applied_set(tmp_path, checkpoint, monkeypatch):
    """An experiment's masked results name the set file, its hash and counts (not neurons: 0)."""
    from culnig_lm_eval.experiment.config import ExperimentConfig
    from culnig_lm_eval.experiment.run import evaluate_conditions
    from culnig_lm_eval.model.lm import load_lm

    monkeypatch.setenv("CULNIG_DATA", "sample")
    lm = load_lm(f"pretrained={checkpoint},dtype=float32", batch_size=4)
    shape = model_shape(lm.model.config)
    path = NeuronSet({"mlp_gate": [[0, 5], [7]]}, new_meta(shape, "test")).save(tmp_path / "general.pt")
    config = ExperimentConfig.from_mapping({
        "model_args": f"pretrained={checkpoint},dtype=float32", "scoring": {"tasks": ["blend_cloze_neur"]},
        "evaluate": {"limit": 2, "cultural": ["blend_cloze_test"]}})
    skipped = {}
    evaluate_conditions(lm, config, {"paper": {"general": path}}, tmp_path / "eval", False, skipped)
    results = [json.loads(p.read_text()) for p in (tmp_path / "eval" / "paper" / "general").rglob("results_*.json")]
    assert len(results) == 1
    info = results[0]["config"]["culnig_ablation"]  # lm-eval merges get_model_info() into config
    assert info["neurons"] == 3
    assert info["neuron_sets"][0]["path"] == str(path) and info["neuron_sets"][0]["counts"] == {"mlp_gate": 3}


def test_unwritable_output_folders_fail_before_the_model_loads(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_cli("culnig_lm_eval.cli.score", "run", "--tasks", "blend_cloze_neur", "--model_args",
                   "pretrained=/no/such/model", "--out", str(blocker / "scores"),
                   env={**__import__("os").environ, "CULNIG_DATA": "sample"})
    assert_one_line_error(proc, "--out", "cannot write there")
    config = tmp_path / "c.yaml"
    config.write_text("model_args: pretrained=/no/such/model\nscoring: {tasks: [blend_cloze_neur]}\nevaluate: {}\n")
    proc = run_cli("culnig_lm_eval.cli.experiment", "--config", str(config), "--out", str(blocker / "run"))
    assert_one_line_error(proc, "--out", "cannot write there")
