"""The CULNIG paper's six models, each through its shipped experiment config, on the CPU.

For every ``culnig_lm_eval/experiments/<model>-blend.yaml`` of the paper's models a tiny random
model is built with the architecture its hub ``config.json`` declares (same ``model_type`` and
class, the same structural features: query/key-value head ratio, ``head_dim`` against
``hidden_size``, fused projections, sliding-window layers, rope scaling, tied embeddings), with
the sizes shrunk.  The config is read as a user's is, only ``pretrained=`` (and ``dtype=``, for
the CPU) replaced, the data switched to the shipped sample and the task lists limited; then the
experiment's own steps run: score -> select -> mask.

Facts from the hub configs (``config.json`` of each checkpoint; the shrunk values keep the
ratios and inequalities, not the sizes):

* google/gemma-3-12b-it: Gemma3ForConditionalGeneration, text_config hidden 3840, 16 query / 8
  key-value heads, head_dim 256 (16 x 256 = 4096 > hidden), query_pre_attn_scalar 256 (=
  head_dim), sliding window 1024 on 5 of every 6 layers, linear rope x8 on the full-attention
  layers, gelu_pytorch_tanh, no attention bias, embeddings tied.
* google/gemma-3-27b-it: as the 12B but hidden 5376, 32 / 16 heads, head_dim 128 (32 x 128 =
  4096 < hidden), query_pre_attn_scalar 168 (= hidden / heads, not head_dim).
* Qwen/Qwen3-14B: Qwen3ForCausalLM, hidden 5120, 40 / 8 heads, head_dim 128 (= hidden / heads),
  q/k norms, no attention bias, no sliding window, embeddings not tied.
* meta-llama/Llama-3.1-8B-Instruct: LlamaForCausalLM, hidden 4096, 32 / 8 heads, rope_theta
  500000 with llama3 rope scaling (factor 8, low 1, high 4, original 8192 positions of 131072).
* microsoft/phi-4: Phi3ForCausalLM, hidden 5120, 40 / 10 heads, fused gate_up_proj and
  qkv_proj, no sliding window, rope_theta 250000, no rope scaling, embeddings not tied.
* tiiuae/Falcon3-10B-Instruct: LlamaForCausalLM, hidden 3072, 12 / 4 heads, head_dim 256 (=
  hidden / heads), rope_theta 1000042, embeddings not tied.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from culnig_lm_eval.architectures import sites, widths
from culnig_lm_eval.experiment.config import DEFAULT_CONFIG, EvaluationPlan, ExperimentConfig
from culnig_lm_eval.experiment.run import data_environment, evaluate_conditions, select_all
from culnig_lm_eval.model.lm import load_lm, parse_model_args
from culnig_lm_eval.neuron_set import NeuronSet
from culnig_lm_eval.scoring.run import load_role_tasks, score_roles
from culnig_lm_eval.scoring.tables import load_table
from culnig_lm_eval.scoring.samples import samples_from_task
from tiny_models import tiny_model, tiny_tokenizer

EXPERIMENTS = DEFAULT_CONFIG.parent
TINY_SIZES = dict(num_hidden_layers=2, intermediate_size=128, max_position_embeddings=4096)
GEMMA3_LAYERS = ["sliding_attention", "full_attention"]  # one of each kind, as 5:1 cannot fit in two layers

# config stem -> the hub checkpoint, its declared architecture, and its structural fields shrunk
PAPER_MODELS = {
    "gemma-3-12b-it-blend": dict(
        hub_id="google/gemma-3-12b-it", model_type="gemma3", architecture="Gemma3ForConditionalGeneration",
        fields=dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                    sliding_window=16, layer_types=GEMMA3_LAYERS, rope_scaling={"rope_type": "linear", "factor": 8.0},
                    hidden_activation="gelu_pytorch_tanh", attention_bias=False, tie_word_embeddings=True),
        eager=True),
    "gemma-3-27b-it-blend": dict(
        hub_id="google/gemma-3-27b-it", model_type="gemma3", architecture="Gemma3ForConditionalGeneration",
        fields=dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=16,
                    sliding_window=16, layer_types=GEMMA3_LAYERS, rope_scaling={"rope_type": "linear", "factor": 8.0},
                    hidden_activation="gelu_pytorch_tanh", attention_bias=False, tie_word_embeddings=True),
        eager=True),
    "qwen3-14b-blend": dict(
        hub_id="Qwen/Qwen3-14B", model_type="qwen3", architecture="Qwen3ForCausalLM",
        fields=dict(hidden_size=80, num_attention_heads=5, num_key_value_heads=1, head_dim=16, attention_bias=False,
                    use_sliding_window=False, hidden_act="silu", tie_word_embeddings=False, rope_theta=1000000.0),
        eager=False),
    "llama-3.1-8b-instruct-blend": dict(
        hub_id="meta-llama/Llama-3.1-8B-Instruct", model_type="llama", architecture="LlamaForCausalLM",
        fields=dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, attention_bias=False, mlp_bias=False,
                    hidden_act="silu", tie_word_embeddings=False, rope_theta=500000.0,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 256}),
        eager=False),
    "phi-4-blend": dict(
        hub_id="microsoft/phi-4", model_type="phi3", architecture="Phi3ForCausalLM",
        fields=dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, sliding_window=None, rope_theta=250000.0,
                    original_max_position_embeddings=4096, hidden_act="silu", tie_word_embeddings=False),
        eager=False),
    "falcon3-10b-instruct-blend": dict(
        hub_id="tiiuae/Falcon3-10B-Instruct", model_type="llama", architecture="LlamaForCausalLM",
        fields=dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16, attention_bias=False,
                    mlp_bias=False, hidden_act="silu", tie_word_embeddings=False, rope_theta=1000042.0),
        eager=False),
}

# A chat template of our own (the tiny tokenizer has none): the paper configs render prompts as a user turn
USER_MARK, ASSISTANT_MARK = "<|user|>", "<|assistant|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}" + USER_MARK + "\n{{ m['content'] }}\n"
    "{% else %}" + ASSISTANT_MARK + "\n{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT_MARK + "\n{% endif %}"
)

# documents per role: every sample neur item (8 cultures reach min_samples), seconds on one CPU thread
SCORING_LIMITS = {"tasks": 96, "control": 96, "crc": 16, "general": 1}


def save_tiny(folder: Path, spec: dict) -> Path:
    from transformers import AutoTokenizer

    model = tiny_model(spec["model_type"], seed=0, **{**TINY_SIZES, **spec["fields"]})
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # a copy: the shared tokenizer stays template-free
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def user_config(stem: str, checkpoint: Path) -> tuple[ExperimentConfig, dict]:
    """The shipped YAML, read through ``ExperimentConfig.from_mapping`` with the model pointed at
    ``checkpoint`` (float32 on the CPU), the shipped sample data and per-task document limits."""
    raw = yaml.safe_load((EXPERIMENTS / f"{stem}.yaml").read_text())
    original = parse_model_args(raw["model_args"])
    raw["model_args"] = raw["model_args"].replace(f"pretrained={original['pretrained']}", f"pretrained={checkpoint}")
    raw["model_args"] = raw["model_args"].replace("dtype=bfloat16", "dtype=float32")
    if not torch.cuda.is_available():
        # parallelize places layers over GPUs; without one accelerate leaves the weights on the meta device
        raw["model_args"] = raw["model_args"].replace(",parallelize=True", "")
    raw.update(data="sample", offline=True, require_data=[])
    for key, limit in SCORING_LIMITS.items():
        raw["scoring"][key] = [f"{task}:{limit}" for task in raw["scoring"][key]]
    raw["scoring"]["batch_size"] = 8
    raw["random_seeds"] = [0]
    return ExperimentConfig.from_mapping(raw, f"{stem}.yaml (tiny)"), original


def test_every_paper_model_has_a_config():
    shipped = {p.stem for p in EXPERIMENTS.glob("*.yaml")}
    assert set(PAPER_MODELS) <= shipped


@pytest.mark.parametrize("stem", sorted(PAPER_MODELS))
def test_shipped_config_names_the_hub_model_as_the_paper_runs_it(stem):
    spec = PAPER_MODELS[stem]
    raw = yaml.safe_load((EXPERIMENTS / f"{stem}.yaml").read_text())
    args = parse_model_args(raw["model_args"])
    assert args["pretrained"] == spec["hub_id"]
    assert args["dtype"] == "bfloat16"
    assert (args.get("attn_implementation") == "eager") == spec["eager"]
    config = ExperimentConfig.from_mapping(raw, stem)
    assert config.scoring.apply_chat_template
    assert set(config.scoring.kinds) == {"mlp_gate", "attn_q", "attn_k", "attn_v"}
    assert config.role_tasks["task"] == ["blend_neur"] and config.role_tasks["control"] == ["blend_ctrl"]
    assert "blend_test" in config.evaluate.cultural
    # the reference's thresholds (CULNIG/decide_*.py), one set for all six models
    assert config.thresholds == {"top_mlp": 1.0, "top_attention": 0.2, "top_specific": 0.3, "crc_exclude": 1.0,
                                 "z_min": 0.5}


def captured_outputs(model, kinds):
    """Forward hooks recording every neuron site's projection output; returns (records, handles)."""
    records, handles = {}, []
    for site in sites(model, kinds):
        def hook(_module, _inputs, output, site=site):
            records[(site.kind, site.layer)] = output[..., site.start:site.stop].detach().clone()
        handles.append(site.module.register_forward_hook(hook))
    return records, handles


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(PAPER_MODELS))
def test_paper_config_scores_selects_and_masks_a_tiny_model_of_its_architecture(stem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # hf's parallelize offload folder (./offload) lands here, not in the checkout
    spec = PAPER_MODELS[stem]
    checkpoint = save_tiny(tmp_path / "model", spec)
    config, _ = user_config(stem, checkpoint)

    with data_environment(config):
        tasks = load_role_tasks(config.role_tasks, config.scoring)
        lm = load_lm(config.model_args, batch_size=config.evaluate.batch_size)
        model = lm.model
        assert type(model).__name__ == spec["architecture"]
        assert model.config.model_type == spec["model_type"]
        if spec["eager"]:
            assert model.config._attn_implementation == "eager"

        # the prompts are rendered with the chat template, as the config asks
        name, _, limit = config.role_tasks["task"][0].partition(":")
        samples = samples_from_task(name, tasks[name], lm, limit=2, apply_chat_template=True)
        assert all(lm.tok_decode(list(s.context)).lstrip().startswith(USER_MARK) for s in samples)

        score_files = score_roles(lm, config.role_tasks, config.scoring, tmp_path / "scores", tasks=tasks)
        skipped: dict[str, str] = {}
        sets = select_all(config, score_files, tmp_path / "sets", False, skipped)

    # scores: finite, [layers, width, cultures] for every scored kind, widths from the architecture
    expected_widths = widths(model.config)
    text = model.config.get_text_config()
    fields = spec["fields"]
    head_dim = fields.get("head_dim") or fields["hidden_size"] // fields["num_attention_heads"]
    assert expected_widths["mlp_gate"] == TINY_SIZES["intermediate_size"]
    assert expected_widths["attn_q"] == fields["num_attention_heads"] * head_dim
    assert expected_widths["attn_k"] == expected_widths["attn_v"] == fields["num_key_value_heads"] * head_dim
    assert text.num_hidden_layers == TINY_SIZES["num_hidden_layers"]
    for role, path in score_files.items():
        table = load_table(path)
        assert set(table.scores) == set(config.scoring.kinds), role
        for kind, scores in table.scores.items():
            assert scores.shape == (text.num_hidden_layers, expected_widths[kind], len(table.cultures)), (role, kind)
            assert torch.isfinite(scores).all(), (role, kind)
            assert scores.abs().sum() > 0, (role, kind)  # gradients reached every kind

    # selection: both configured selections, a non-empty culture-general set, a set for every
    # culture with enough samples (the selection's min_samples)
    assert set(sets) == set(config.selections) and not skipped
    task_table = load_table(score_files["task"])
    enough = {c for c, n in zip(task_table.cultures, task_table.counts.tolist()) if n >= 5}
    assert enough and enough <= set(sets["paper"])
    general = NeuronSet.load(sets["paper"]["general"])
    assert len(general) > 0

    # evaluation renders the prompts as scoring did: lm-eval's logged contexts open with the user turn
    config.evaluate = EvaluationPlan(limit=2, cultural=["blend_test"], random_draws=[])
    with data_environment(config):
        evaluate_conditions(lm, config, {}, tmp_path / "eval", False, skipped)
    logged = [json.loads(line) for path in sorted((tmp_path / "eval").rglob("samples_*.jsonl"))
              for line in path.read_text().splitlines()]
    contexts = [arg["arg_0"] for row in logged for arg in row["arguments"].values()]
    assert len(logged) == 2 and contexts and all(c.lstrip().startswith(USER_MARK) for c in contexts)

    # masking: the set's neurons output exactly zero, the rest do not, and the model comes back bit-identical
    probe = torch.tensor([tiny_tokenizer().encode("Which festival is celebrated with lanterns?")])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        unmasked_logits = model(input_ids=probe).logits
    records, handles = captured_outputs(model, config.scoring.kinds)
    try:
        with lm.masked([general]), torch.no_grad():
            masked_logits = model(input_ids=probe).logits
    finally:
        for handle in handles:
            handle.remove()
    checked = 0
    for kind, per_layer in general.indices.items():
        for layer, idx in enumerate(per_layer):
            if len(idx):
                out = records[(kind, layer)]
                assert torch.all(out[..., idx] == 0), (kind, layer)
                keep = torch.ones(out.shape[-1], dtype=torch.bool)
                keep[idx] = False
                assert out[..., keep].abs().sum() > 0, (kind, layer)
                checked += len(idx)
    assert checked == len(general)
    assert not torch.equal(masked_logits, unmasked_logits)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(input_ids=probe).logits, unmasked_logits)


@pytest.mark.parametrize("stem", sorted(PAPER_MODELS))
def test_tiny_model_keeps_the_hub_structure(stem, tmp_path):
    """The tiny stand-in really has the features the adapter table must handle."""
    spec = PAPER_MODELS[stem]
    model = tiny_model(spec["model_type"], seed=0, **{**TINY_SIZES, **spec["fields"]})
    text = model.config.get_text_config()
    fields = spec["fields"]
    layer = next(iter(sites(model, ("mlp_gate",)))).module
    if spec["model_type"] == "phi3":  # fused: gate | up in one module, q | k | v in another
        by_kind = {s.kind: s for s in sites(model)}
        assert by_kind["mlp_gate"].module is by_kind["mlp_up"].module
        assert by_kind["attn_q"].module is by_kind["attn_k"].module is by_kind["attn_v"].module
        assert layer.out_features == 2 * TINY_SIZES["intermediate_size"]
    for key in ("num_attention_heads", "num_key_value_heads", "head_dim", "query_pre_attn_scalar", "sliding_window",
                "layer_types"):
        if key in fields:
            assert getattr(text, key) == fields[key], key
    if "rope_scaling" in fields:
        rope = text.rope_parameters
        rope = rope.get("full_attention", rope)  # Gemma-3: scaled on the global layers only
        assert rope["rope_type"] == fields["rope_scaling"]["rope_type"]
        assert rope["factor"] == fields["rope_scaling"]["factor"]
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == fields["tie_word_embeddings"]
    assert re.fullmatch(r"\w+For(CausalLM|ConditionalGeneration)", type(model).__name__)
    assert type(model).__name__ == spec["architecture"]
