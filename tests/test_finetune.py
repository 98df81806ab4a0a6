"""culnig-modules / culnig-finetune on tiny random models: hand-counted rankings, budgets,
frozen parameters bit-identical, resumption, LoRA, the comparison report and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from cli_inprocess import run_console

from culnig_lm_eval.architectures import model_shape
from culnig_lm_eval.finetune.examples import Example, collate, tokenise
from culnig_lm_eval.finetune.modules import (CHOICES, choose, count_modules, module_choice, ordered,
                                             parameter_names_of, total_parameters)
from culnig_lm_eval.neuron_set import NeuronSet, new_meta
from tiny_models import tiny_model



def _set(model, picks: dict[str, dict[int, list[int]]], name="hand") -> NeuronSet:
    shape = model_shape(model.config)
    layers = shape["num_layers"]
    indices = {kind: [torch.tensor(picks.get(kind, {}).get(layer, []), dtype=torch.long) for layer in range(layers)]
               for kind in ("mlp_gate", "mlp_up", "attn_q", "attn_k", "attn_v")}
    return NeuronSet(indices, new_meta(shape, method=name))


HAND_PICKS = {"mlp_gate": {0: [1, 2, 3]}, "mlp_up": {0: [3, 4]}, "attn_q": {1: [0, 1]}, "attn_k": {1: [5]}}


def test_ranking_matches_a_hand_count():
    model = tiny_model("llama")
    rows = {r.name: r for r in count_modules(model, [_set(model, HAND_PICKS)])}
    # layer 0: gate rows {1,2,3} and up rows {3,4} are 4 distinct MLP neurons, named by gate, up and down
    expected = {
        "model.layers.0.mlp.gate_proj": 4, "model.layers.0.mlp.up_proj": 4, "model.layers.0.mlp.down_proj": 4,
        "model.layers.1.mlp.gate_proj": 0, "model.layers.1.mlp.up_proj": 0, "model.layers.1.mlp.down_proj": 0,
        "model.layers.0.self_attn.q_proj": 0, "model.layers.0.self_attn.o_proj": 0,
        "model.layers.1.self_attn.q_proj": 2, "model.layers.1.self_attn.k_proj": 1,
        "model.layers.1.self_attn.v_proj": 0, "model.layers.1.self_attn.o_proj": 3,
    }
    for name, neurons in expected.items():
        assert rows[name].neurons == neurons, name
    assert len(rows) == 2 * 7  # q, k, v, o, gate, up, down per layer
    for name, row in rows.items():
        assert row.parameters == model.get_submodule(name).weight.numel() + (
            model.get_submodule(name).bias.numel() if model.get_submodule(name).bias is not None else 0)
    top = ordered(list(rows.values()), "top")
    assert [r.neurons for r in top] == sorted((r.neurons for r in top), reverse=True)
    assert {r.name for r in top[:3]} == {f"model.layers.0.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}


def test_fused_projections_count_everything_fused_into_them():
    model = tiny_model("phi3")
    picks = {"mlp_gate": {0: [1]}, "mlp_up": {0: [1, 2]}, "attn_q": {1: [0]}, "attn_v": {1: [3, 4]}}
    rows = {r.name: r.neurons for r in count_modules(model, [_set(model, picks)])}
    assert rows["model.layers.0.mlp.gate_up_proj"] == 2 and rows["model.layers.0.mlp.down_proj"] == 2
    assert rows["model.layers.1.self_attn.qkv_proj"] == 3 and rows["model.layers.1.self_attn.o_proj"] == 3


@pytest.mark.parametrize("budget", [0.05, 0.1, 0.3])
@pytest.mark.parametrize("choice", CHOICES)
def test_budget_is_met_within_one_module(choice, budget):
    model = tiny_model("llama", num_hidden_layers=4)
    rows = count_modules(model, [_set(model, HAND_PICKS)])
    total = total_parameters(model)
    chosen = choose(rows, total, choice, budget, seed=3)
    size = sum(r.parameters for r in chosen)
    assert size >= budget * total > size - chosen[-1].parameters
    if choice == "bottom":  # fewest neurons first: nothing with neurons while a module without any is left
        left = [r for r in rows if r not in chosen]
        assert max(r.neurons for r in chosen[:-1] or chosen) <= min(r.neurons for r in left)
    assert choose(rows, total, choice, budget, seed=3) == chosen  # seeded
    if choice != "top":
        assert any(choose(rows, total, choice, budget, seed=s) != chosen for s in range(4, 12))


def test_neurons_held_counts_each_neuron_once():
    from culnig_lm_eval.finetune.modules import neurons_held

    model = tiny_model("llama")
    hand = _set(model, HAND_PICKS)
    rows = {r.name: r for r in count_modules(model, [hand])}
    held = lambda *names: neurons_held([rows[n] for n in names], [hand], 2)  # noqa: E731
    assert held("model.layers.0.mlp.down_proj") == 4
    assert held("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj") == 4
    assert held("model.layers.1.self_attn.q_proj") == 2 and held("model.layers.1.self_attn.o_proj") == 3
    assert held("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.0.mlp.up_proj") == 7
    assert held("model.layers.1.mlp.gate_proj", "model.layers.0.self_attn.o_proj") == 0


def test_module_choice_names_parameters_and_module_paths():
    model = tiny_model("llama")
    choice = module_choice(model, [_set(model, HAND_PICKS)], "top", 0.05)
    assert choice.target_modules[0].startswith("model.layers.0.mlp.")
    named = dict(model.named_parameters())
    assert set(choice.trainable_parameters) <= set(named)
    assert choice.chosen_parameters == sum(named[p].numel() for p in choice.trainable_parameters)
    with pytest.raises(ValueError, match="budget"):
        module_choice(model, [_set(model, HAND_PICKS)], "top", 1.5)


def _lm(folder):
    from culnig_lm_eval.model.lm import load_lm

    lm = load_lm(f"pretrained={folder},dtype=float32", batch_size=4, device="cpu")
    for p in lm.model.parameters():
        p.requires_grad_(False)
    return lm


def _data(lm, n=24):
    examples = [Example(f"Is {i} an even number? Answer:", " yes" if i % 2 == 0 else " no") for i in range(n)]
    return tokenise(lm, examples, 64)


def test_target_loss_equals_the_models_own_loss(tiny_llama_dir):
    from culnig_lm_eval.finetune.train import _target_loss

    lm = _lm(tiny_llama_dir)
    batch = collate(_data(lm, 5), pad_id=0)
    ours = _target_loss(lm.model, batch)
    # slow reference: full logits, HF's own shifted loss over the same labels
    reference = lm.model(**batch).loss
    assert torch.allclose(ours, reference, atol=1e-6)


def _settings(**kw):
    from culnig_lm_eval.finetune.train import FinetuneSettings

    base = dict(steps=4, batch_size=4, grad_accum=2, learning_rate=1e-2, max_length=64, eval_every=2,
                eval_tasks=["qa_match_demo"], eval_limit=4, seed=1)
    return FinetuneSettings(**{**base, **kw})


def test_training_changes_only_the_chosen_modules(tiny_llama_dir, tmp_path, fresh_data_state):
    from culnig_lm_eval.finetune.train import Run

    lm = _lm(tiny_llama_dir)
    model = lm.model
    choice = module_choice(model, [_set(model, HAND_PICKS)], "top", 0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    curve = Run(lm, _data(lm), choice.target_modules, _settings(), tmp_path / "run", "tiny", progress=False).run()
    assert [p["step"] for p in curve] == [0, 2, 4]
    assert all(0.0 <= p["tasks"]["qa_match_demo"]["acc"] <= 1.0 for p in curve)
    trained = set(choice.trainable_parameters)
    for name, p in model.named_parameters():
        if name in trained:
            assert not torch.equal(p, before[name]), f"{name} was chosen but did not change"
        else:
            assert torch.equal(p, before[name]), f"{name} was not chosen but changed"
        assert not p.requires_grad  # frozen again afterwards
    body = json.loads((tmp_path / "run" / "curve.json").read_text())
    assert body["done"] and body["modules"] == choice.target_modules


def test_an_interrupted_run_resumes_to_the_same_weights(tiny_llama_dir, tmp_path, fresh_data_state):
    from culnig_lm_eval.finetune.train import Run

    lm = _lm(tiny_llama_dir)
    model = lm.model
    modules = module_choice(model, [_set(model, HAND_PICKS)], "top", 0.1).target_modules
    names = parameter_names_of(model, modules)
    loaded = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    data = _data(lm)

    Run(lm, data, modules, _settings(), tmp_path / "whole", "tiny", progress=False).run()
    whole = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}

    class Interrupted(Run):
        def _save(self, step, optimizer, curve, model):
            super()._save(step, optimizer, curve, model)
            if step == 2:
                raise KeyboardInterrupt

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in loaded:
                p.copy_(loaded[n])
    with pytest.raises(KeyboardInterrupt):
        Interrupted(lm, data, modules, _settings(), tmp_path / "cut", "tiny", progress=False).run()
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.startswith(".")]  # no temp files left
    with torch.no_grad():  # a fresh process starts from the loaded weights again
        for n, p in model.named_parameters():
            if n in loaded:
                p.copy_(loaded[n])
    curve = Run(lm, data, modules, _settings(), tmp_path / "cut", "tiny", progress=False).run()
    assert [p["step"] for p in curve] == [0, 2, 4]
    for n, p in model.named_parameters():
        if n in whole:
            assert torch.allclose(p, whole[n], atol=1e-6, rtol=0), n
    # other settings must not pick up this checkpoint
    with pytest.raises(ValueError, match="other settings"):
        Run(lm, data, modules, _settings(learning_rate=5e-3), tmp_path / "cut", "tiny", progress=False).run()


def test_lora_trains_adapters_and_leaves_the_model_as_loaded(tiny_llama_dir, tmp_path, fresh_data_state):
    pytest.importorskip("peft")
    from culnig_lm_eval.finetune.train import LoraSettings, Run

    lm = _lm(tiny_llama_dir)
    model = lm.model
    modules = module_choice(model, [_set(model, HAND_PICKS)], "top", 0.1).target_modules
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = _settings(lora=LoraSettings(r=4, alpha=8))
    Run(lm, _data(lm), modules, settings, tmp_path / "lora", "tiny", progress=False).run()
    state = torch.load(tmp_path / "lora" / "checkpoint.pt", weights_only=True)
    assert state["tensors"] and all("lora_" in n for n in state["tensors"])
    assert {n for n, _ in model.named_parameters()} == set(before)  # adapters removed again
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def _cli(*args, env=None, cwd=None):
    """A console script in this process (cli_inprocess), offline on the sample data."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CULNIG_DATA": "sample",
            "OMP_NUM_THREADS": "1", **(env or {})}
    return run_console(list(args), env=full, cwd=cwd)


def _saved_set(folder: Path, model_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    neuron_set = _set(model, HAND_PICKS)
    neuron_set.meta["model"]["name"] = None
    return neuron_set.save(folder / "hand.pt")


def test_modules_cli_writes_a_peft_ready_choice(tiny_llama_dir, tmp_path):
    set_path = _saved_set(tmp_path, tiny_llama_dir)
    for out in (tmp_path / "top.json", tmp_path / "top.yaml"):
        proc = _cli("culnig-modules", "--model_args", f"pretrained={tiny_llama_dir}", "--sets", str(set_path),
                    "--budget", "0.05", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        assert "model.layers.0.mlp.gate_proj" in proc.stdout and "cumulative" in proc.stdout
    from culnig_lm_eval.finetune.modules import load_choice

    a, b = load_choice(tmp_path / "top.json"), load_choice(tmp_path / "top.yaml")
    assert a["target_modules"] == b["target_modules"] and a["target_modules"][0].startswith("model.layers.0.mlp")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    wrapped = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                                  peft.LoraConfig(r=2, target_modules=a["target_modules"]))
    adapted = {n.rsplit(".lora_A", 1)[0].replace("base_model.model.", "") for n, _ in wrapped.named_parameters()
               if ".lora_A" in n}
    assert adapted == set(a["target_modules"])


def test_compare_cli_trains_every_choice_and_reports(tiny_llama_dir, tmp_path):
    set_path = _saved_set(tmp_path, tiny_llama_dir)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Is {i} even? Answer:", "target": " yes" if i % 2 == 0 else " no"})
                             + "\n" for i in range(16)))
    out = tmp_path / "run"
    args = ("culnig-finetune", "compare", "--model_args", f"pretrained={tiny_llama_dir},dtype=float32", "--device",
            "cpu", "--sets", str(set_path), "--train-file", str(train), "--train-eval-task", "qa_match_demo",
            "--eval-tasks", "blend_cloze_test", "--eval-limit", "4", "--steps", "2", "--eval-every", "1",
            "--batch_size", "4", "--grad-accum", "1", "--learning-rate", "1e-3", "--budget", "0.1", "--out", str(out))
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = json.loads((out / "report" / "comparison.json").read_text())
    assert {r["choice"] for r in body["analysis"]["rows"]} == set(CHOICES)
    assert all(len(curve) == 3 for curve in body["analysis"]["points"].values())
    baseline = {name: points[0]["blend_cloze_test"]["acc"] for name, points in body["analysis"]["points"].items()}
    assert len(set(baseline.values())) == 1  # one shared step-0 evaluation
    assert (out / "report" / "finetune-curves.png").stat().st_size > 1000
    assert "top" in (out / "report" / "finetune.md").read_text()
    # run again: every choice resumes from its finished checkpoint, nothing is retrained
    proc = _cli(*args)
    assert proc.returncode == 0 and "fine-tune" not in proc.stderr.replace("culnig-finetune", "")


@pytest.mark.parametrize("case, message", [
    ("budget", "--budget"),
    ("missing-set", "hand-missing.pt"),
    ("both", "either --modules"),
    ("bad-train-file", "train.jsonl line 2"),
    ("unknown-task", "unknown task"),
])
def test_bad_input_is_one_line_before_the_model_loads(tmp_path, case, message, tiny_llama_dir):
    set_path = _saved_set(tmp_path, tiny_llama_dir)
    train = tmp_path / "train.jsonl"
    train.write_text('{"prompt": "a", "target": " b"}\n{"prompt": 3}\n')
    base = ["culnig-finetune", "train", "--model_args", "pretrained=/no/such/model", "--out", str(tmp_path / "o"),
            "--train-file", str(train)]
    args = {
        "budget": ["culnig-modules", "--model_args", "pretrained=/no/such/model", "--sets", str(set_path),
                   "--budget", "2"],
        "missing-set": ["culnig-modules", "--model_args", f"pretrained={tiny_llama_dir}", "--sets",
                        str(tmp_path / "hand-missing.pt")],
        "both": base + ["--sets", str(set_path), "--modules", str(tmp_path / "m.json")],
        "bad-train-file": base + ["--sets", str(set_path)],
        "unknown-task": [*base[:-1], str(tmp_path / "ok.jsonl"), "--sets", str(set_path), "--eval-tasks", "no_such_task"],
    }[case]
    (tmp_path / "ok.jsonl").write_text('{"prompt": "a", "target": " b"}\n')
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_a_set_for_another_model_is_refused(tiny_llama_dir, tmp_path):
    other = tiny_model("llama", num_hidden_layers=3)
    path = _set(other, HAND_PICKS).save(tmp_path / "other.pt")
    proc = _cli("culnig-modules", "--model_args", f"pretrained={tiny_llama_dir}", "--sets", str(path))
    assert proc.returncode == 2 and "layers" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
