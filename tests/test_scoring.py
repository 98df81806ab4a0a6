"""The batched CULNIG scorer against a slow, per-sample autograd implementation written here."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from culnig_lm_eval.scoring.attribution import AttributionScorer, ScoreTable, collate
from culnig_lm_eval.scoring.run import score_samples
from culnig_lm_eval.scoring.samples import Sample


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


def random_samples(n, seed=1, cultures=("korea", "spain", "uk")):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ctx_len = int(torch.randint(1, 12, (1,), generator=gen))
        cont_len = int(torch.randint(1, 4, (1,), generator=gen))
        ctx = torch.randint(1, 64, (ctx_len,), generator=gen).tolist()
        cont = torch.randint(1, 64, (cont_len,), generator=gen).tolist()
        out.append(Sample("t", i, cultures[i % len(cultures)], "", tuple(ctx), tuple(cont)))
    return out


def slow_scores(model, sample, kind_paths):
    """One sample, no batching: P via autograd, s = max_t(n_t * dP/dn_t) * P."""
    acts = {}
    hooks = []
    for name, module in model.named_modules():
        for kind, suffix in kind_paths.items():
            if name.endswith(suffix):
                layer = int(name.split(".")[2])
                hooks.append(module.register_forward_hook(
                    lambda m, i, o, key=(kind, layer): acts.__setitem__(key, o)))
    ids = torch.tensor([sample.input_ids])
    logits = model(input_ids=ids).logits[0].double()
    logprobs = torch.log_softmax(logits, -1)
    n_ctx = len(sample.context)
    logp = sum(logprobs[n_ctx - 1 + j, tok] for j, tok in enumerate(sample.continuation))
    prob = torch.exp(logp)
    keys = sorted(acts)
    grads = torch.autograd.grad(prob, [acts[k] for k in keys])
    for h in hooks:
        h.remove()
    out = {}
    for key, grad in zip(keys, grads):
        out[key] = (acts[key][0].double() * grad[0].double()).max(dim=0).values * prob
    return out


KINDS = {"mlp_gate": "mlp.gate_proj", "attn_q": "self_attn.q_proj", "attn_v": "self_attn.v_proj"}


def test_batched_scores_match_slow_reference():
    model = tiny_llama()
    samples = random_samples(7)
    scorer = AttributionScorer(model, kinds=tuple(KINDS))
    batched = scorer.sample_scores(collate(samples, pad_id=0))
    for i, sample in enumerate(samples):
        reference = slow_scores(model, sample, KINDS)
        for (kind, layer), expected in reference.items():
            got = batched[kind][layer, i].double()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-12 + 1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_scores_do_not_depend_on_batch_or_padding(padding_side):
    model = tiny_llama(3)
    samples = random_samples(9, seed=5)
    scorer = AttributionScorer(model, kinds=("mlp_gate", "attn_k"))
    alone = [scorer.sample_scores(collate([s], 0, padding_side)) for s in samples]
    shuffled = [samples[i] for i in (4, 0, 8, 2, 6, 1, 7, 3, 5)]
    together = scorer.sample_scores(collate(shuffled, 0, padding_side))
    for pos, s in enumerate(shuffled):
        for kind in ("mlp_gate", "attn_k"):
            ref = alone[s.doc_id][kind][:, 0]
            torch.testing.assert_close(together[kind][:, pos], ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())


def test_table_sums_per_culture_and_clamps_controls():
    """Control samples are clamped at 0 (the published scorer clamps data sets named "control");
    task and CountryRC samples are not, unless --clamp-crc asks for it; the table says which."""
    model = tiny_llama(2)
    samples = random_samples(6, seed=9)
    scorer = AttributionScorer(model)
    per_sample = scorer.sample_scores(collate(samples, 0))["mlp_gate"]  # [L, B, W]
    assert (per_sample < 0).any()  # negative sample scores exist: clamping changes the sums
    cultures = sorted({s.culture for s in samples})
    for role, clamp, flag in (("task", False, None), ("control", True, None), ("crc", False, None),
                              ("crc", True, True), ("general", True, None)):
        table, _ = score_samples(scorer, samples, role=role, batch_size=4, clamp_at_zero=flag)
        assert table.meta["clamped_at_zero"] is clamp
        assert table.cultures == cultures
        for ci, c in enumerate(cultures):
            members = [i for i, s in enumerate(samples) if s.culture == c]
            expected = per_sample[:, members]
            expected = expected.clamp(min=0) if clamp else expected
            torch.testing.assert_close(table.scores["mlp_gate"][..., ci], expected.sum(1), rtol=1e-5, atol=1e-9)
            assert int(table.counts[ci]) == len(members)
    assert table.scores["mlp_gate"].dtype == torch.float32


def test_empty_table_shape():
    scorer = AttributionScorer(tiny_llama(), kinds=("mlp_gate", "attn_q"))
    table = ScoreTable.empty(scorer, ["a", "b"], "cpu")
    assert table.scores["mlp_gate"].shape == (3, 48, 2)
    assert table.scores["attn_q"].shape == (3, 32, 2)


def _rank_worker(rank, world_size, init_file, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    scorer = AttributionScorer(tiny_llama(4))
    table, _ = score_samples(scorer, random_samples(11, seed=2), role="task", batch_size=2, rank=rank, world_size=world_size)
    if rank == 0:
        torch.save({"scores": table.scores["mlp_gate"], "counts": table.counts}, out_file)
    dist.destroy_process_group()


def test_data_parallel_ranks_share_batches_and_reduce_to_the_single_process_result(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.pt"
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    parallel = torch.load(out, weights_only=True)
    single, _ = score_samples(AttributionScorer(tiny_llama(4)), random_samples(11, seed=2), role="task", batch_size=2)
    assert parallel["counts"].tolist() == single.counts.tolist()
    torch.testing.assert_close(parallel["scores"], single.scores["mlp_gate"], rtol=1e-5, atol=1e-12)


def test_the_crc_stamp_says_whether_its_samples_were_clamped():
    """A CRC score file of the other clamping -- or of a version that clamped without saying
    so -- is not reused as if it were this run's; the other roles' stamps do not change."""
    from culnig_lm_eval.scoring.run import ScoringSettings, clamps_at_zero

    plain, clamped = ScoringSettings(), ScoringSettings(clamp_crc=True)
    assert plain.stamp("crc")["crc_clamped"] is False and clamped.stamp("crc")["crc_clamped"] is True
    for role in ("task", "control", "general"):
        assert plain.stamp(role) == clamped.stamp(role) and "crc_clamped" not in plain.stamp(role)
        assert "clamp_crc" not in plain.stamp(role)
    assert [clamps_at_zero(r) for r in ("task", "control", "crc", "general")] == [False, True, False, True]
    assert clamps_at_zero("crc", clamp_crc=True)
    with pytest.raises(ValueError, match="clamp_crc"):
        ScoringSettings(clamp_crc="yes")
