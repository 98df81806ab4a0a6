"""LAPE activation counts: record_counts against a slow reference, count files, checks."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest
import torch

from culnig_lm_eval.architectures import decoder_layers, model_shape
from culnig_lm_eval.lape.counts import (
    FORMAT,
    ActivationCounts,
    CountsError,
    check_activation,
    data_parallel_reduce,
    record_counts,
)
from tiny_models import tiny_config, tiny_llama, tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tea is served with milk.",
    "Rice, bread, maize and cassava are staple foods around the world.",
    "Culture neurons?",
]
PAD, BOS = 0, 1


@pytest.fixture(scope="module")
def llama():
    model, tok = tiny_llama(seed=3)
    model.double()  # padded and unpadded forwards round differently; float64 keeps gate signs apart
    seqs = [[BOS] + tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    return model, seqs


def padded(seqs, side: str):
    """input_ids / attention_mask of ``seqs`` padded to one length on ``side``."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[r, cols] = torch.tensor(s)
        mask[r, cols] = 1
    return {"input_ids": ids, "attention_mask": mask}


def gate_outputs(model, modules, ids, cut=None):
    """Run one unpadded sequence; per module its output rows (sliced by ``cut``) [T, width]."""
    stored = []
    handles = [m.register_forward_hook(lambda _m, _a, out, i=i: stored.append((i, out[0].detach().clone())))
               for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    gates = [g for _, g in sorted(stored, key=lambda x: x[0])]
    return [cut(g) if cut else g for g in gates]


def slow_reference(model, seqs, modules, skip_first=False, cut=None):
    """Per sequence alone, no padding, token by token: count gate > 0 per neuron."""
    width = (cut(modules[0].weight.T) if cut else modules[0].weight.T).shape[-1]
    over_zero = [[0] * width for _ in modules]
    n = 0
    for ids in seqs:
        gates = gate_outputs(model, modules, ids, cut)
        for t in range(skip_first, len(ids)):
            n += 1
            for layer, g in enumerate(gates):
                row = g[t].tolist()
                for j in range(width):
                    if row[j] > 0:
                        over_zero[layer][j] += 1
    return torch.tensor(over_zero, dtype=torch.int64), n


def gate_modules(model):
    return [layer.mlp.gate_proj for layer in decoder_layers(model)]


# ---- record_counts against the slow reference -----------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
def test_record_matches_slow_reference_with_padding(llama, side):
    model, seqs = llama
    ref, ref_n = slow_reference(model, seqs, gate_modules(model))
    # two batches of different lengths, both padded on ``side``
    batches = [padded(seqs[:2], side), padded(seqs[2:], side)]
    assert batches[0]["input_ids"].shape[1] != batches[1]["input_ids"].shape[1]
    assert all((b["attention_mask"] == 0).any() for b in batches)
    over_zero, n = record_counts(model, batches)
    assert over_zero.dtype == torch.int64 and over_zero.device.type == "cpu"
    assert over_zero.shape == (2, 64)
    assert n == ref_n == sum(map(len, seqs))
    assert torch.equal(over_zero, ref)
    assert 0 < int(over_zero.sum()) < n * over_zero.numel()  # neither all off nor all on


def test_count_mask_skips_bos(llama):
    model, seqs = llama
    ref, ref_n = slow_reference(model, seqs, gate_modules(model), skip_first=True)
    batches = []
    for part, side in ((seqs[:2], "left"), (seqs[2:], "right")):
        b = padded(part, side)
        first = b["attention_mask"].argmax(dim=1)  # the BOS of every row
        count = b["attention_mask"].bool().clone()
        count[torch.arange(len(part)), first] = False
        batches.append({**b, "count_mask": count})
    over_zero, n = record_counts(model, batches)
    full_n = record_counts(model, [padded(seqs, "right")])[1]
    assert n == full_n - len(seqs) == ref_n
    assert torch.equal(over_zero, ref)


def test_count_mask_must_be_inside_attention_mask(llama):
    model, seqs = llama
    b = padded(seqs, "right")
    with pytest.raises(ValueError, match="subset of attention_mask"):
        record_counts(model, [{**b, "count_mask": torch.ones_like(b["input_ids"], dtype=torch.bool)}])
    assert not gate_modules(model)[0]._forward_hooks


def test_no_batches_gives_zero_counts():
    model, _ = tiny_llama(seed=0)
    over_zero, n = record_counts(model, [])
    assert n == 0 and over_zero.shape == (2, 64) and not over_zero.any()


# ---- fused and multimodal models ------------------------------------------------------------


def independent_counts(model, modules, ids, width):
    """Hooks of our own on the gate slice (``[..., :width]``), summed over the whole batch."""
    totals = [torch.zeros(width, dtype=torch.int64) for _ in modules]

    def make(i):
        def hook(_m, _a, out):
            totals[i] += (out[..., :width] > 0).sum(dim=(0, 1))
        return hook

    handles = [m.register_forward_hook(make(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(totals)


@pytest.mark.parametrize("model_type", ["phi3", "gemma3"])
def test_fused_and_multimodal(model_type):
    model = tiny_model(model_type, seed=1)
    cfg = model.config.text_config if model_type == "gemma3" else model.config
    width = cfg.intermediate_size
    layers = decoder_layers(model)
    if model_type == "phi3":
        modules = [layer.mlp.gate_up_proj for layer in layers]  # gate | up along the rows
        assert modules[0].out_features == 2 * width
    else:
        modules = [layer.mlp.gate_proj for layer in layers]
    ids = torch.randint(3, 300, (3, 11), generator=torch.Generator().manual_seed(7))
    over_zero, n = record_counts(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}])
    assert over_zero.shape == (cfg.num_hidden_layers, width)
    assert n == ids.numel()
    assert torch.equal(over_zero, independent_counts(model, modules, ids, width))
    if model_type == "phi3":  # the up half of the fused output is not counted
        up = independent_counts(model, modules, ids, 2 * width)[:, width:]
        assert not torch.equal(over_zero, up)


# ---- hooks and model state ------------------------------------------------------------------


def test_hooks_removed_after_success_and_error(llama):
    model, seqs = llama
    gates = gate_modules(model)
    model.train()
    record_counts(model, [padded(seqs, "right")])
    assert all(not g._forward_hooks for g in gates)
    assert model.training  # restored

    def boom(*_):
        raise RuntimeError("boom inside the forward")

    handle = model.model.norm.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom inside the forward"):
            record_counts(model, [padded(seqs, "right")])
    finally:
        handle.remove()
    assert all(not g._forward_hooks for g in gates)
    model.eval()


# ---- count files ----------------------------------------------------------------------------


def make_counts(model=None, corpus="en", n=10, seed=0):
    model = model or tiny_llama(seed=0)[0]
    shape = model_shape(model.config)
    gen = torch.Generator().manual_seed(seed)
    over_zero = torch.randint(0, n + 1, (shape["num_layers"], shape["widths"]["mlp_gate"]), generator=gen)
    meta = {"model": shape, "corpus": corpus, "source": {"documents": 3}, "row_length": 8, "rows": 2,
            "created": "2024-01-01T00:00:00+00:00", "package_version": "0"}
    return ActivationCounts(over_zero, n, meta)


def test_save_load_round_trip(tmp_path):
    counts = make_counts()
    path = counts.save(tmp_path / "en.counts.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["en.counts.pt"]  # no temporary file left
    back = ActivationCounts.load(path)
    assert torch.equal(back.over_zero, counts.over_zero) and back.over_zero.dtype == torch.int64
    assert back.n == counts.n and back.meta == counts.meta and back.source == str(path)
    assert torch.load(path, weights_only=True)["format"] == FORMAT


def _bad(tmp_path, name, **changes):
    counts = make_counts()
    payload = {"format": FORMAT, "over_zero": counts.over_zero, "n": counts.n, "meta": counts.meta, **changes}
    path = tmp_path / name
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("case, match", [
    ("missing", "no such file"),
    ("text", "cannot be read"),
    ("other", "not a LAPE count file"),
    ("version", "not supported"),
    ("negative", "negative"),
    ("over_n", "above n"),
    ("float", "float"),
    ("shape", "layers"),
    ("not_dict", "not a LAPE count file"),
])
def test_load_refuses_bad_files(tmp_path, case, match):
    oz = make_counts().over_zero
    if case == "missing":
        path = tmp_path / "missing.counts.pt"
    elif case == "text":
        path = tmp_path / "text.counts.pt"
        path.write_text("over_zero,n\n1,2\n")
    elif case == "not_dict":
        path = tmp_path / "list.counts.pt"
        torch.save([1, 2, 3], path)
    else:
        changes = {
            "other": {"format": "other"},
            "version": {"format": "culnig-lape-counts/2"},
            "negative": {"over_zero": oz - 11},
            "over_n": {"over_zero": oz + 11},
            "float": {"over_zero": oz.double()},
            "shape": {"over_zero": oz[:1]},
        }[case]
        path = _bad(tmp_path, f"{case}.counts.pt", **changes)
    with pytest.raises(CountsError, match=match) as err:
        ActivationCounts.load(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_memory_record_checks():
    counts = make_counts()
    with pytest.raises(CountsError, match="int64"):
        ActivationCounts(counts.over_zero.int(), counts.n, counts.meta)
    with pytest.raises(CountsError, match="negative"):
        ActivationCounts(counts.over_zero, -1, {})
    with pytest.raises(CountsError, match="neurons per layer"):
        ActivationCounts(counts.over_zero[:, :5].clone(), counts.n, counts.meta)


def test_check_model():
    counts = make_counts()
    counts.check_model(model_shape(tiny_llama(seed=0)[0].config))
    with pytest.raises(CountsError, match="layers"):
        counts.check_model(model_shape(tiny_llama(seed=0, num_hidden_layers=3)[0].config))
    with pytest.raises(CountsError, match="neurons per layer"):
        counts.check_model(model_shape(tiny_llama(seed=0, intermediate_size=48)[0].config))
    with pytest.raises(CountsError, match="model_type"):
        counts.check_model({**counts.meta["model"], "model_type": "mistral"})


def test_add_sums_and_refuses_other_models():
    a, b = make_counts(seed=1, n=10), make_counts(seed=2, n=20)
    total = a + b
    assert torch.equal(total.over_zero, a.over_zero + b.over_zero) and total.n == 30
    assert total.meta["rows"] == 4 and total.meta["corpus"] == "en"
    assert sum([a, b]).n == 30
    other = make_counts(tiny_llama(seed=0, intermediate_size=48)[0])
    with pytest.raises(CountsError, match="different models"):
        a + other
    renamed = make_counts()
    renamed.meta["model"] = {**renamed.meta["model"], "model_type": "mistral"}
    with pytest.raises(CountsError, match="another model"):
        a + renamed


# ---- activation check and data-parallel reduction ---------------------------------------------


@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh"])
def test_check_activation_accepts(act):
    assert check_activation(SimpleNamespace(model_type="llama", hidden_act=act)) == act


@pytest.mark.parametrize("act", ["relu2", "tanh"])
def test_check_activation_refuses(act):
    with pytest.raises(ValueError, match=rf"{act}.*act\(x\) > 0 iff x > 0|act\(x\) > 0 iff x > 0.*{act}"):
        check_activation(SimpleNamespace(model_type="llama", hidden_act=act))


def test_check_activation_tiny_models():
    for model_type in ("llama", "gemma", "gemma2", "gemma3", "phi3"):
        assert check_activation(tiny_config(model_type)) in ("silu", "gelu_pytorch_tanh")


def test_data_parallel_reduce_without_process_group():
    oz = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    out, n = data_parallel_reduce(oz, 7)
    assert out is oz and n == 7


def test_data_parallel_reduce_single_process_gloo():
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        oz = torch.arange(6, dtype=torch.int64).reshape(2, 3)
        out, n = data_parallel_reduce(oz, 7)
        assert torch.equal(out, oz) and out is not oz and out.dtype == torch.int64 and n == 7
    finally:
        dist.destroy_process_group()
