"""Ablation on tiny random models of every supported architecture, and masked-hf end to end."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_CONFIGS, save_tiny_llama, tiny_model

from culnig_lm_eval.model.ablation import Ablation
from culnig_lm_eval.architectures import (
    ADAPTERS,
    MODULE_KINDS,
    UnsupportedArchitecture,
    adapter_for,
    decoder_layers,
    model_shape,
    sites,
)
from culnig_lm_eval.neuron_set import NeuronSet, NeuronSetError, new_meta

INPUT = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 64, 128, 5], [1, 300, 12, 12, 80, 81, 82, 200, 2, 9]])

# Where each kind lives, written out independently of the adapter table (from the modeling code):
# (layer-list path, module path inside a layer, slice of the module output as a function of the config)
SEPARATE = {"mlp_gate": "mlp.gate_proj", "mlp_up": "mlp.up_proj",
            "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj"}


def where(model_type: str, kind: str, cfg):
    """(layer list path, module path, (start, stop) of the kind's channels in the module output)."""
    layers = "model.language_model.layers" if model_type == "gemma3" else "model.layers"
    if model_type != "phi3":
        width = cfg.intermediate_size if kind.startswith("mlp") else (
            (cfg.num_attention_heads if kind == "attn_q" else cfg.num_key_value_heads) * cfg.head_dim
            if getattr(cfg, "head_dim", None) else
            (cfg.num_attention_heads if kind == "attn_q" else cfg.num_key_value_heads)
            * cfg.hidden_size // cfg.num_attention_heads)
        return layers, SEPARATE[kind], (0, width)
    # Phi3MLP: gate, up = gate_up_proj(x).chunk(2); Phi3Attention: qkv[..., :q], [q:q+kv], [q+kv:]
    inter, hd = cfg.intermediate_size, cfg.hidden_size // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return layers, {"mlp_gate": "mlp.gate_up_proj", "mlp_up": "mlp.gate_up_proj"}.get(kind, "self_attn.qkv_proj"), {
        "mlp_gate": (0, inter), "mlp_up": (inter, 2 * inter),
        "attn_q": (0, q), "attn_k": (q, q + kv), "attn_v": (q + kv, q + 2 * kv)}[kind]


def get(obj, path):
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def text_cfg(model):
    return getattr(model.config, "text_config", None) or model.config


def one_set(model, picks: dict[str, dict[int, list[int]]]) -> NeuronSet:
    """{kind: {layer: [neurons]}} -> a NeuronSet for ``model``."""
    shape = model_shape(model.config)
    indices = {k: [picks[k].get(layer, []) for layer in range(shape["num_layers"])] for k in picks}
    return NeuronSet(indices, new_meta(shape, "test"))


class Capture:
    """Records the output of a module on every forward (registered after any ablation hook)."""

    def __init__(self, module, inputs=False):
        self.outputs = []
        if inputs:  # the module's input instead
            self.handle = module.register_forward_pre_hook(lambda _m, args: self.outputs.append(args[0].detach().clone()))
        else:
            self.handle = module.register_forward_hook(lambda _m, _i, out: self.outputs.append(out.detach().clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def models():
    return {t: tiny_model(t, seed=3) for t in TINY_CONFIGS}


@torch.no_grad()
def logits(model, ids=INPUT):
    return model(ids).logits


@pytest.fixture(scope="module")
def reference(models):
    """Per model type: unmasked logits and the output of every projection module, from one forward."""
    out = {}
    for model_type, model in models.items():
        cfg = text_cfg(model)
        modules = {}
        for kind in MODULE_KINDS:
            layers, path, _ = where(model_type, kind, cfg)
            for layer in range(cfg.num_hidden_layers):
                modules[layer, path] = get(get(model, layers)[layer], path)
        captures = {key: Capture(m) for key, m in modules.items()}
        out[model_type] = {"logits": logits(model), **{key: c.outputs[0] for key, c in captures.items()}}
        for c in captures.values():
            c.handle.remove()
    return out


# -- the adapter table ------------------------------------------------------------------------
def test_every_tiny_architecture_is_in_the_table(models):
    assert set(TINY_CONFIGS) == set(ADAPTERS)  # every row of the table is exercised here
    for model_type, model in models.items():
        assert model.config.model_type == model_type
        layers, _, _ = where(model_type, "mlp_gate", text_cfg(model))
        assert decoder_layers(model) is get(model, layers)
        found = sites(model)
        assert len(found) == len(MODULE_KINDS) * text_cfg(model).num_hidden_layers


def test_unsupported_architecture_lists_supported_types():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    with pytest.raises(UnsupportedArchitecture) as err:
        adapter_for(model.config)
    message = str(err.value)
    assert "model_type='gpt2'" in message
    for supported in ("llama", "gemma3", "gemma3_text", "phi3", "qwen2", "qwen3", "mistral"):
        assert supported in message
    with pytest.raises(UnsupportedArchitecture):
        model_shape(model.config)


def test_gemma3_multimodal_shape_comes_from_text_config(models):
    model = models["gemma3"]
    shape = model_shape(model.config)
    text = model.config.text_config
    assert shape["model_type"] == "gemma3"
    assert shape["num_layers"] == text.num_hidden_layers
    assert shape["widths"]["attn_q"] == text.num_attention_heads * text.head_dim
    assert shape["widths"]["mlp_gate"] == text.intermediate_size
    # the vision tower's layers are not neuron sites
    vision = {id(m) for m in model.model.vision_tower.modules()}
    assert not any(id(s.module) in vision for s in sites(model))


@pytest.mark.parametrize("mode", ["fold", "hooks"])
@pytest.mark.parametrize("kind", MODULE_KINDS)
@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_masked_neuron_is_exactly_zero(models, reference, model_type, kind, mode):
    model = models[model_type]
    cfg = text_cfg(model)
    layers, path, (start, stop) = where(model_type, kind, cfg)
    width = stop - start
    chosen = [0, width // 2 + 1, width - 1]
    layer = cfg.num_hidden_layers - 1
    module = get(get(model, layers)[layer], path)
    with Ablation(model, [one_set(model, {kind: {layer: chosen}})], mode=mode) as ablation:
        assert ablation.num_neurons == 3 and (ablation.folded, ablation.hooked) == ((1, 0) if mode == "fold" else (0, 1))
        with Capture(module) as after:
            masked = logits(model)
    out, ref = after.outputs[0], reference[model_type][layer, path]
    rows = torch.tensor(chosen) + start
    assert torch.all(out[..., rows] == 0) and torch.all(ref[..., rows] != 0)
    keep = torch.ones(out.shape[-1], dtype=torch.bool)
    keep[rows] = False
    assert torch.all(out[..., keep] != 0)  # nothing else was zeroed ...
    assert torch.equal(out[..., keep], ref[..., keep])  # ... or changed (inputs of the last layer are equal)
    assert not torch.equal(masked, reference[model_type]["logits"])
    assert not any(m._forward_hooks for m in model.modules())  # removed on exit


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_suppressed_gate_zeroes_the_mlp_activation(models, model_type):
    """act(gate) * up is what LAPE masks: a zero gate gives a zero down_proj input."""
    model = models[model_type]
    layers, _, _ = where(model_type, "mlp_gate", text_cfg(model))
    down = get(model, layers)[0].mlp.down_proj
    with Ablation(model, [one_set(model, {"mlp_gate": {0: [3, 11]}})]):
        with Capture(down, inputs=True) as cap:
            logits(model)
    h = cap.outputs[0]
    assert torch.all(h[..., [3, 11]] == 0) and torch.all(h[..., [0, 1, 2, 4]] != 0)


def random_set(model, seed=0, share=0.25):
    shape = model_shape(model.config)
    gen = torch.Generator().manual_seed(seed)
    indices = {
        kind: [torch.randperm(w, generator=gen)[: max(1, int(share * w))] for _ in range(shape["num_layers"])]
        for kind, w in shape["widths"].items()
    }
    return NeuronSet(indices, new_meta(shape, "test"))


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_fold_equals_hooks_and_remove_restores(models, reference, model_type):
    model = models[model_type]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    s = random_set(model, seed=1)
    results = {}
    for operation, factor in (("suppress", None), ("scale", 0.5), ("enhance", 3.0)):
        for mode in ("fold", "hooks"):
            ablation = Ablation(model, [s], operation, factor, mode)
            results[operation, mode] = logits(model)
            ablation.remove()
            assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
            assert not any(m._forward_hooks for m in model.modules())
    assert torch.equal(logits(model), reference[model_type]["logits"])
    assert torch.equal(results["suppress", "fold"], results["suppress", "hooks"])  # zeros are exact either way
    for op in ("scale", "enhance"):
        torch.testing.assert_close(results[op, "fold"], results[op, "hooks"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(results["suppress", "fold"], reference[model_type]["logits"], atol=1e-3)


@pytest.mark.parametrize("mode", ["fold", "hooks"])
@pytest.mark.parametrize("operation,factor", [("enhance", None), ("enhance", 4.0), ("scale", -1.5)])
@pytest.mark.parametrize("model_type", ["qwen2", "phi3"])  # biased q/k/v; fused projections
def test_enhance_and_scale_multiply_the_channels(models, reference, model_type, operation, factor, mode):
    model = models[model_type]
    cfg = text_cfg(model)
    expected_factor = 2.0 if factor is None else factor
    layer = cfg.num_hidden_layers - 1
    for kind in ("mlp_up", "attn_k"):
        layers, path, (start, _) = where(model_type, kind, cfg)
        module = get(get(model, layers)[layer], path)
        chosen = [1, 4, 6]
        with Ablation(model, [one_set(model, {kind: {layer: chosen}})], operation, factor, mode):
            with Capture(module) as after:
                logits(model)
        rows = torch.tensor(chosen) + start
        out, ref = after.outputs[0], reference[model_type][layer, path]
        torch.testing.assert_close(out[..., rows], expected_factor * ref[..., rows], rtol=1e-6, atol=1e-6)
        keep = torch.ones(out.shape[-1], dtype=torch.bool)
        keep[rows] = False
        assert torch.equal(out[..., keep], ref[..., keep])


def test_union_of_several_sets_and_fused_slices_together(models):
    model = models["phi3"]
    a = one_set(model, {"mlp_gate": {0: [1, 2]}, "mlp_up": {0: [1]}})
    b = one_set(model, {"mlp_gate": {0: [2, 3]}, "attn_v": {1: [0]}})
    with Ablation(model, [a, b]) as ablation:
        assert ablation.num_neurons == 5  # 1, 2, 3 gate + 1 up + 1 v (neuron 2 counted once)
        module = model.model.layers[0].mlp.gate_up_proj
        inter = model.config.intermediate_size
        with Capture(module) as cap:
            logits(model)
        out = cap.outputs[0]
        assert torch.all(out[..., [1, 2, 3, inter + 1]] == 0) and torch.all(out[..., [0, 4, inter, inter + 2]] != 0)


def test_set_for_another_model_changes_nothing(models):
    model = models["llama"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    shape = model_shape(model.config)
    wrong_width = NeuronSet({"mlp_gate": [[1], [200]]}, new_meta(dict(shape, widths={**shape["widths"], "mlp_gate": 256}), "t"),
                            source="wide.pt")
    wrong_layers = NeuronSet({"mlp_gate": [[1], [2], [3]]}, new_meta(dict(shape, num_layers=3), "t"), source="deep.pt")
    good = one_set(model, {"mlp_gate": {0: [1]}})
    for bad, problem in ((wrong_width, "wide.pt: was made for a model whose mlp_gate width is 256"),
                         (wrong_layers, "deep.pt: was made for a model with 3 layers")):
        with pytest.raises(NeuronSetError, match=problem):
            Ablation(model, [good, bad])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_bad_arguments_change_nothing(models):
    model = models["llama"]
    s = one_set(model, {"mlp_gate": {0: [1]}})
    for kwargs, problem in (
        ({"mode": "magic"}, "mode='magic'"),
        ({"operation": "boost"}, "operation='boost'"),
        ({"operation": "suppress", "factor": 0.5}, "takes no factor"),
        ({"operation": "enhance", "factor": 0.5}, "factor > 1"),
        ({"operation": "scale"}, "needs factor"),
        ({"operation": "scale", "factor": "abc"}, "not a number"),
    ):
        with pytest.raises(ValueError, match=problem):
            Ablation(model, [s], **kwargs)
    # model_args arrive as strings
    with Ablation(model, [s], "scale", "0.5") as a:
        assert a.factor == 0.5
    with Ablation(model, [s], "suppress", "0") as a:
        assert a.factor == 0.0


def test_auto_hooks_what_it_cannot_fold(models):
    model = models["llama"]
    reference = logits(model)
    s = random_set(model, seed=4)
    with Ablation(model, [s], mode="fold"):
        folded = logits(model)
    gate = model.model.layers[0].mlp.gate_proj
    gate._hf_hook = object()  # what accelerate leaves on an offloaded module
    try:
        with pytest.raises(ValueError, match="mode=fold cannot edit"):
            Ablation(model, [s], mode="fold")
        assert torch.equal(logits(model), reference)  # refused before touching anything
        with Ablation(model, [s], mode="auto") as a:
            assert a.hooked == 1 and a.folded == len(a.rows) - 1
            assert (logits(model) - folded).abs().max() <= 1e-6
    finally:
        del gate._hf_hook
    assert torch.equal(logits(model), reference)


# -- masked-hf end to end ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=5)
    from transformers import AutoConfig

    shape = model_shape(AutoConfig.from_pretrained(folder))
    gen = torch.Generator().manual_seed(0)
    w = shape["widths"]["mlp_gate"]
    a = NeuronSet({"mlp_gate": [torch.randperm(w, generator=gen)[: w // 2] for _ in range(2)]}, new_meta(shape, "test"))
    b = NeuronSet({"attn_v": [[0, 1, 2], [5]]}, new_meta(shape, "test"))
    return folder, a.save(folder / "a.pt"), b.save(folder / "b.json"), a


def requests():
    from lm_eval.api.instance import Instance

    ll = [Instance("loglikelihood", {}, (ctx, cont), i) for i, (ctx, cont) in enumerate(
        [("The quick brown fox", " jumps"), ("Tea is served with", " milk"), ("Answer:", " yes"), ("Rice and", " bread")])]
    rolling = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(
        ["Culture neurons are output channels.", "Which festival is celebrated with lanterns?"])]
    gen = [Instance("generate_until", {}, (ctx, {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}), i)
           for i, ctx in enumerate(["The quick brown", "Tea is"])]
    return ll, rolling, gen


def run_all(lm):
    ll, rolling, gen = requests()
    return [x for x, _ in lm.loglikelihood(ll)], lm.loglikelihood_rolling(rolling), lm.generate_until(gen)


@pytest.fixture(scope="module")
def plain_results(checkpoint):
    from lm_eval.models.huggingface import HFLM

    folder = checkpoint[0]
    return run_all(HFLM(pretrained=str(folder), device="cpu", batch_size=2))


@pytest.fixture(scope="module")
def masked(checkpoint):
    """masked-hf (fold) with a.pt + b.json, its results, and the gate_proj outputs of layer 1."""
    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    folder, a_path, b_path, a = checkpoint
    lm = MaskedHFLM(pretrained=str(folder), neurons=f"{a_path}+{b_path}", device="cpu", batch_size=2)
    with Capture(lm.model.model.layers[1].mlp.gate_proj) as cap:
        results = run_all(lm)
    return lm, results, cap.outputs


def test_masked_hf_end_to_end(checkpoint, plain_results, masked):
    folder, a_path, b_path, a = checkpoint
    lm, (ll, rolling, gen), gate_outputs = masked
    assert [s.source for s in lm.neuron_sets] == [str(a_path), str(b_path)]
    assert lm.ablation.num_neurons == len(a) + 4
    info = lm.ablation.describe()
    assert info["operation"] == "suppress" and info["modules_folded"] == 4 and info["modules_hooked"] == 0
    rows = a.indices["mlp_gate"][1]
    assert gate_outputs and all(torch.all(o[..., rows] == 0) for o in gate_outputs)
    unmasked = torch.ones(gate_outputs[0].shape[-1], dtype=torch.bool)
    unmasked[rows] = False
    assert all(torch.all(o[..., unmasked] != 0) for o in gate_outputs)
    p_ll, p_rolling, p_gen = plain_results
    assert len(ll) == 4 and len(rolling) == 2 and len(gen) == 2
    assert all(abs(x - y) > 1e-4 for x, y in zip(ll, p_ll, strict=True))
    assert all(abs(x - y) > 1e-4 for x, y in zip(rolling, p_rolling, strict=True))
    assert gen != p_gen


def test_masked_hf_model_info_names_the_sets(checkpoint, masked, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from culnig_lm_eval._io import file_sha256

    monkeypatch.setattr(HFLM, "get_model_info", lambda self: {"model_dtype": "float32"})  # no hub lookup
    info = masked[0].get_model_info()
    assert info["model_dtype"] == "float32"
    ours = info["culnig_ablation"]
    assert ours["operation"] == "suppress" and ours["mode"] == "auto" and ours["neurons"] == len(checkpoint[3]) + 4
    assert [s["sha256"] for s in ours["neuron_sets"]] == [file_sha256(checkpoint[1]), file_sha256(checkpoint[2])]


def test_masked_hf_through_the_registry_in_hooks_mode(checkpoint, masked):
    from lm_eval.api.registry import get_model

    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    folder, a_path, b_path, _ = checkpoint
    cls = get_model("masked-hf")
    assert cls is MaskedHFLM
    hooks = cls.create_from_arg_string(f"pretrained={folder},neurons={a_path}+{b_path},mode=hooks",
                                       {"device": "cpu", "batch_size": 2})
    assert hooks.ablation.hooked == 4 and hooks.ablation.folded == 0
    r_hooks, r_fold = run_all(hooks), masked[1]
    for x, y in zip(r_fold[0] + r_fold[1], r_hooks[0] + r_hooks[1], strict=True):
        assert abs(x - y) <= 1e-5
    assert r_fold[2] == r_hooks[2]


def test_masked_hf_without_neurons_is_hf(checkpoint, plain_results):
    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    same = MaskedHFLM(pretrained=str(checkpoint[0]), device="cpu", batch_size=2, fast=False)
    assert same.ablation is None
    assert [x for x, _ in same.loglikelihood(requests()[0])] == plain_results[0]  # hf's own code: bit for bit
    same.fast = True  # the default: shared contexts, hf's numbers to float rounding
    fast = [x for x, _ in same.loglikelihood(requests()[0])]
    assert max(abs(a - b) for a, b in zip(fast, plain_results[0])) <= 1e-4


def test_masked_hf_enhance(checkpoint):
    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    folder, a_path, _, a = checkpoint
    lm = MaskedHFLM(pretrained=str(folder), neurons=str(a_path), operation="enhance", factor="3", device="cpu",
                    batch_size=2)
    assert lm.ablation.factor == 3.0
    rows = a.indices["mlp_gate"][0]
    weight = lm.model.model.layers[0].mlp.gate_proj.weight
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(folder).model.layers[0].mlp.gate_proj.weight
    torch.testing.assert_close(weight[rows], 3 * original[rows], rtol=1e-6, atol=0)


def test_masked_hf_rejects_bad_input_before_loading(checkpoint, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    from culnig_lm_eval.model.masked_hf import MaskedHFLM

    folder = checkpoint[0]
    loads = []
    monkeypatch.setattr(HFLM, "_create_model", lambda *a, **k: loads.append(1))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a set")
    with pytest.raises(NeuronSetError, match="bad.pt: cannot be read"):
        MaskedHFLM(pretrained=str(folder), neurons=str(bad), device="cpu")
    with pytest.raises(NeuronSetError, match="missing.pt: no such file"):
        MaskedHFLM(pretrained=str(folder), neurons=f"{checkpoint[1]}+{tmp_path / 'missing.pt'}", device="cpu")
    with pytest.raises(ValueError, match="operation=enhance needs factor > 1"):
        MaskedHFLM(pretrained=str(folder), neurons=str(checkpoint[1]), operation="enhance", factor=0.5, device="cpu")
    assert loads == []
