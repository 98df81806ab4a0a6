"""Many masked states on one loaded model: each task loaded and its requests built once, results
identical to a fresh ``simple_evaluate`` in the same state."""

from __future__ import annotations

import json

import pytest

from culnig_lm_eval.architectures import model_shape
from culnig_lm_eval.model.masked_hf import MaskedHFLM
from culnig_lm_eval.model.states import ReusedTasks, evaluate_state
from culnig_lm_eval.neuron_set import NeuronSet, new_meta

TASK = "blend_cloze_test"


@pytest.fixture
def lm(tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("CULNIG_DATA", "sample")
    return MaskedHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=4)


def per_sample(results) -> list:
    return [(s["doc_id"], [r[0][0] for r in s["resps"]], s["acc"]) for s in results["samples"][TASK]]


def test_requests_are_built_once_and_each_state_equals_a_fresh_evaluation(lm, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.api.task import ConfigurableTask

    builds = []
    real_build = ConfigurableTask.build_all_requests

    def counting(self, *args, **kwargs):
        builds.append(self.task_name)
        return real_build(self, *args, **kwargs)

    monkeypatch.setattr(ConfigurableTask, "build_all_requests", counting)
    shape = model_shape(lm.model.config)
    states = [[], [NeuronSet({"mlp_gate": [list(range(0, 64, 2)), list(range(32))]}, new_meta(shape, "test"))]]
    tasks = ReusedTasks()
    reused = []
    for neuron_sets in states + states:  # back and forth: nothing of one state leaks into the next
        with lm.masked(neuron_sets):
            reused.append(per_sample(evaluate_state(lm, tasks, TASK, None, model_args="x", limit=6)))
    assert builds == [TASK]
    assert reused[0] == reused[2] and reused[1] == reused[3] and reused[0] != reused[1]
    for neuron_sets, got in zip(states, reused):
        with lm.masked(neuron_sets):
            fresh = simple_evaluate(model=lm, tasks=[TASK], limit=6, log_samples=True, bootstrap_iters=0,
                                    random_seed=0, numpy_random_seed=0, torch_random_seed=0)
        assert per_sample(fresh) == got


def test_saved_folder_is_lm_evals_format(lm, tmp_path):
    with lm.masked([]):
        evaluate_state(lm, ReusedTasks(), TASK, tmp_path, model_args="pretrained=tiny", limit=4)
    results = list(tmp_path.rglob("results_*.json"))
    samples = list(tmp_path.rglob(f"samples_{TASK}_*.jsonl"))
    assert len(results) == 1 and len(samples) == 1
    saved = json.loads(results[0].read_text())
    assert saved["config"]["model_args"] == "pretrained=tiny" and TASK in saved["results"]
    assert len(samples[0].read_text().splitlines()) == 4


def test_one_cultures_items_are_evaluated_alone_and_match_the_full_run(lm, monkeypatch):
    from lm_eval.api.task import ConfigurableTask

    from culnig_lm_eval.experiment.run import culture_items

    builds = []
    real_build = ConfigurableTask.build_all_requests
    monkeypatch.setattr(ConfigurableTask, "build_all_requests",
                        lambda self, *a, **k: builds.append(k.get("samples")) or real_build(self, *a, **k))
    tasks = ReusedTasks()
    korea = culture_items(tasks.get(TASK), "korea", "culture")
    docs = tasks.get(TASK).eval_docs
    assert korea and all(docs[i]["culture"] == "korea" for i in korea)
    assert culture_items(tasks.get(TASK), None, "culture") is None and culture_items(tasks.get(TASK), "atlantis", "culture") == []
    runs = [per_sample(evaluate_state(lm, tasks, TASK, None, model_args="x", samples=s)) for s in (None, korea, None, korea)]
    assert [doc for doc, _, _ in runs[1]] == korea  # the culture's documents alone, numbered as in the full task
    full = {doc: (resps, acc) for doc, resps, acc in runs[0]}
    for doc, resps, acc in runs[1]:  # other batches: the same numbers up to float rounding
        assert full[doc][1] == acc and max(abs(a - b) for a, b in zip(full[doc][0], resps)) <= 1e-4
    assert runs[2] == runs[0] and runs[3] == runs[1] and len(builds) == 2  # each selection of items built once
