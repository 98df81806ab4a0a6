"""``hf``'s log-likelihoods with each distinct context run once and only scored positions projected.

lm-eval's ``HFLM._loglikelihood_tokens`` runs every (context, continuation) pair as one
sequence and applies the vocabulary projection and log-softmax at every position.  Here the
requests that share a context (the options of one multiple-choice document) run it once.  A
batch of documents is one call of the decoder on rows that are token tries: contexts with a
common beginning (a question stem) share its positions, and each continuation's tokens hang
below its context, under a 4D attention mask in which a position sees exactly its ancestors,
with its depth as position id -- the same arithmetic as running every pair on its own.  Where
that mask cannot be used (an attention without 4D masks, a row wider than the model's sliding
window, a model whose probe rejects it) contexts run left-padded and continuations of two or
more tokens afterwards on the cached keys and values.  The decoder's hidden states at the scored positions (the
last context position, and every continuation position but the last) are collected over many
batches and projected onto the vocabulary together, in chunks: a projection of a few positions
at a time would read the whole output matrix for each (671 MB for Gemma-3's 262k vocabulary).

The token ids are ``hf``'s own (the requests carry its ``_encode_pair`` output), so a
continuation that merges with its context in the joint encoding is scored on exactly the ids
``hf`` scores.  Requests longer than the model's window, which ``hf`` truncates from the left,
go through ``hf``'s own method, and so does everything for a model whose output is not its
output embedding applied to its decoder's last hidden state (checked once per model), or whose
cache cannot be shared.
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

log = logging.getLogger("culnig-lm-eval")

Request = tuple  # ((context, continuation) | None, context token ids, continuation token ids)
PROJECTED_LOGITS = 1 << 25  # logits per projection chunk (128 MB in fp32): chunk positions = this // vocab


@dataclass
class ContextGroup:
    """One distinct context and its distinct continuations -> indices of the requests asking for each."""

    context: tuple[int, ...]
    continuations: dict[tuple[int, ...], list[int]] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.context) + max(map(len, self.continuations))

    @property
    def branches(self) -> list[tuple[int, ...]]:
        """The continuations of two or more tokens: their tokens but the last are decoder inputs."""
        return [cont for cont in self.continuations if len(cont) > 1]

    @property
    def tree_width(self) -> int:
        """Positions of the context and all its branches in one row."""
        return len(self.context) + sum(len(cont) - 1 for cont in self.branches)


def group_by_context(requests: list[Request], indices: list[int], row_width: int = 0) -> list[ContextGroup]:
    """Requests grouped by context.  Groups that fit a trie row (``row_width`` positions) come first,
    in token order (neighbours share the most); the rest longest first (as ``hf`` orders them:
    out-of-memory shows at once)."""
    groups: dict[tuple[int, ...], ContextGroup] = {}
    for i in indices:
        _, context, continuation = requests[i]
        group = groups.setdefault(tuple(context), ContextGroup(tuple(context)))
        group.continuations.setdefault(tuple(continuation), []).append(i)
    narrow = sorted((g for g in groups.values() if g.tree_width <= row_width), key=lambda g: g.context)
    wide = sorted((g for g in groups.values() if g.tree_width > row_width), key=lambda g: (-g.length, g.context))
    return narrow + wide


def length_buckets(rows: list, most: int, waste: float = 0.25) -> list[list]:
    """``rows`` (group, continuation) in chunks of similar length: at most ``most`` rows, and
    padding at most ``waste`` of a chunk's positions (sorted longest first, so a chunk's first
    row sets its width)."""
    chunks: list[list] = []
    real = 0
    for row in sorted(rows, key=lambda r: -len(r[1])):
        width = len(row[1]) - 1
        if chunks:
            chunk = chunks[-1]
            size = len(chunk[0][1]) - 1
            if len(chunk) < most and (len(chunk) + 1) * size - (real + width) <= waste * (len(chunk) + 1) * size:
                chunk.append(row)
                real += width
                continue
        chunks.append([row])
        real = width
    return chunks


def cache_rows(cache, rows: torch.Tensor):
    """A shallow copy of a ``DynamicCache`` holding the batch rows ``rows`` (repeats allowed); the
    context's cache is shared by several continuation chunks, so the original is never changed."""
    chosen = copy.copy(cache)
    chosen.layers = []
    for layer in cache.layers:
        layer = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            index = rows.to(layer.keys.device)
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        chosen.layers.append(layer)
    return chosen


def shareable(cache) -> bool:
    """Only caches of per-layer key/value tensors (``DynamicCache``) can be split by rows."""
    return cache is not None and all(hasattr(layer, "keys") and hasattr(layer, "values")
                                     for layer in getattr(cache, "layers", [None]))


class TrieRow:
    """One decoder row holding token sequences as a trie: a node is a token at a depth (its
    position id) under its parent; a node sees exactly its ancestors and itself."""

    def __init__(self):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self.children: dict[tuple[int, int], int] = {}  # (parent, token) -> node
        self.scored: list[tuple[int, int, int]] = []  # (node, target token, owner)

    def __len__(self) -> int:
        return len(self.tokens)

    def insert(self, tokens, below: int = -1) -> int:
        """The node of ``tokens`` under node ``below`` (-1: the root), added where missing."""
        node = below
        for token in tokens:
            key = (node, token)
            if key not in self.children:
                self.children[key] = len(self.tokens)
                self.tokens.append(token)
                self.depths.append(self.depths[node] + 1 if node >= 0 else 0)
                self.parents.append(node)
            node = self.children[key]
        return node

    def added_by(self, group: ContextGroup) -> int:
        """How many nodes ``group`` (its context and every continuation but its last token) would add."""
        new = set()
        for sequence in [group.context] + [group.context + cont[:-1] for cont in group.branches]:
            node = -1
            for i, token in enumerate(sequence):
                node = self.children.get((node, token)) if node is not None else None
                if node is None:
                    new.add(sequence[:i + 1])
        return len(new)

    def add(self, group: ContextGroup, owners: dict):
        """``group``'s context and continuations, and every position they score."""
        end = self.insert(group.context)
        for cont in group.continuations:  # the first token is predicted at the context's last position
            node, owner = end, owners[cont]
            for k, target in enumerate(cont):
                if k:
                    node = self.insert([cont[k - 1]], below=node)
                self.scored.append((node, target, owner))

    @property
    def is_chain(self) -> bool:
        """One sequence, each node under the one before: the attention is the plain causal one."""
        return all(parent == i - 1 for i, parent in enumerate(self.parents))

    def allowed(self) -> torch.Tensor:
        """[width, width]: node i sees node j when j is i or an ancestor of i."""
        seen = torch.eye(len(self), dtype=torch.bool)
        for i, parent in enumerate(self.parents):  # parents come before their children
            if parent >= 0:
                seen[i] |= seen[parent]
        return seen


def rows_as_tensors(rows: list[TrieRow]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and position ids of ``rows``, left-padded to the widest."""
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    depths = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row.tokens)
        depths[r, width - len(row):] = torch.tensor(row.depths)
    return ids, depths


def rows_allowed(rows: list[TrieRow]) -> torch.Tensor:
    """[rows, width, width] allowed attention of left-padded ``rows``: padding positions see only
    themselves (no empty softmax) and nothing sees them."""
    width = max(map(len, rows))
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)
    for r, row in enumerate(rows):
        allowed[r, width - len(row):, width - len(row):] = row.allowed()
    return allowed


class DecoderAndHead:
    """The model split as ``logits = softcap(head(decoder(ids).last_hidden_state))``, if it is one.

    ``usable`` is False when the split does not reproduce the model's own logits on a probe
    input (an architecture with another output transform): the caller then uses ``hf``'s path."""

    def __init__(self, lm):
        model = lm.model.get_base_model() if hasattr(lm.model, "get_base_model") else lm.model
        self.lm, self.model = lm, model
        self.decoder, self.head = model.get_decoder(), model.get_output_embeddings()
        params = set(inspect.signature(self.decoder.forward).parameters)
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.softcap = None
        self.usable = self.decoder is not model and self.head is not None and self._matches(
            getattr(config, "final_logit_softcapping", None))
        # a tree-shaped mask is passed as a 4D mask, which the model uses as given: no sliding
        # window is applied to it, so rows stay within the window (and the model's length)
        self.mask_kind = {"sdpa": "bool", "eager": "additive"}.get(getattr(config, "_attn_implementation", None))
        window = getattr(config, "sliding_window", None)
        self.tree_width = min(lm.max_length, window or lm.max_length) if self.usable and self.mask_kind else 0
        if self.tree_width and not self._tree_matches():  # a model that builds its own mask (e.g. ALiBi)
            self.tree_width = 0
        # trie rows up to this width; wider groups (long prompts, perplexity windows) run as
        # contexts + cached continuations: a wide row's attention under an explicit mask (most of it
        # masked, no fused causal kernel) costs more than the positions it shares save
        self.row_width = min(self.tree_width, 256)

    def attention_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """``allowed`` [rows, width, width] (query sees key) as the 4D mask this model's attention takes."""
        mask = allowed[:, None].to(self.lm.device)
        if self.mask_kind == "bool":
            return mask
        dtype = self.head.weight.dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)

    @torch.no_grad()
    def _tree_matches(self) -> bool:
        """A probe continuation in a trie row (beside another branch) equals the same tokens run straight."""
        first = self.lm.prefix_token_id
        row = TrieRow()
        node = row.insert([first, 0, 1])
        row.insert([2], below=node)
        node = row.insert([4, 5], below=node)
        expected = self.hidden(input_ids=torch.tensor([[first, 0, 1, 4, 5]], device=self.lm.device))[0][0, -1].float()
        ids, depths = rows_as_tensors([row])
        got = self.hidden(input_ids=ids.to(self.lm.device), attention_mask=self.attention_mask(rows_allowed([row])),
                          position_ids=depths.to(self.lm.device))[0][0, node].float()
        tolerance = 1e-4 if self.head.weight.dtype == torch.float32 and self.lm.mixed_precision_dtype is None else 3e-2
        return bool((got - expected).norm() <= tolerance * expected.norm())

    def _autocast(self):
        lm = self.lm
        return torch.autocast(device_type=lm.device.type, dtype=lm.mixed_precision_dtype,
                              enabled=lm.mixed_precision_dtype is not None)

    @torch.no_grad()
    def _matches(self, softcap) -> bool:
        probe = torch.tensor([[self.lm.prefix_token_id, 0, 1]], device=self.lm.device)
        with self._autocast():
            expected = self.model(input_ids=probe).logits
            hidden = self.decoder(input_ids=probe).last_hidden_state
        for cap in dict.fromkeys((softcap, None)):
            self.softcap = cap
            if torch.equal(self.logits(hidden), expected):
                return True
        return False

    def hidden(self, **inputs):
        """Last hidden states ``[batch, length, hidden]`` and the cache (``use_cache=True``)."""
        if "cache" in inputs:
            inputs[self.cache_arg] = inputs.pop("cache")
        with torch.no_grad(), self._autocast():
            out = self.decoder(**inputs)
        # the key is "cache" on transformers 5, "past_key_values" before (read as a mapping: the
        # attribute of the old name warns on 5)
        cache = out.get("cache", out.get("past_key_values")) if inputs.get("use_cache") else None
        return out.last_hidden_state, cache

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._autocast():
            logits = self.head(hidden)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class ScoredPositions:
    """Hidden states of scored positions, projected together in chunks; sums per continuation.

    A position can score several targets (a context's last position predicts the first token of
    each of its continuations): it is projected once."""

    def __init__(self, split: DecoderAndHead):
        self.split = split
        self.chunk = max(1, PROJECTED_LOGITS // split.head.weight.shape[0])  # positions per projection
        self.clear()

    def clear(self):
        self.hidden: list[torch.Tensor] = []
        self.rows: list[torch.Tensor] = []  # per target: its position among all added hidden states
        self.targets: list[torch.Tensor] = []
        self.owners: list[torch.Tensor] = []
        self.keys: list[tuple] = []  # owner index -> (group id, continuation)
        self.pending = 0  # positions added

    def owner(self, key: tuple) -> int:
        self.keys.append(key)
        return len(self.keys) - 1

    def add(self, hidden: torch.Tensor, rows: list[int], targets: list[int], owners: list[int]):
        """``hidden`` [n, hidden size]; target k is scored at ``hidden[rows[k]]`` for ``owners[k]``."""
        device = hidden.device
        self.rows.append(torch.tensor(rows, device=device) + self.pending)
        self.targets.append(torch.tensor(targets, device=device))
        self.owners.append(torch.tensor(owners, device=device))
        self.hidden.append(hidden)
        self.pending += len(hidden)

    def project(self) -> dict[tuple, tuple[float, bool]]:
        """{(group id, continuation): (log-likelihood, is_greedy)} of everything added, then empty."""
        if not self.pending:
            return {}
        hidden, rows = torch.cat(self.hidden), torch.cat(self.rows)
        targets, owners = torch.cat(self.targets), torch.cat(self.owners)
        picked = torch.empty(len(targets), dtype=self.split.lm.softmax_dtype or hidden.dtype, device=hidden.device)
        hits = torch.empty(len(targets), dtype=torch.bool, device=hidden.device)
        for start in range(0, len(hidden), self.chunk):
            logprobs = F.log_softmax(self.split.logits(hidden[start:start + self.chunk]), dim=-1,
                                     dtype=self.split.lm.softmax_dtype)
            inside = ((rows >= start) & (rows < start + len(logprobs))).nonzero()[:, 0]
            local = rows[inside] - start
            picked[inside] = logprobs[local, targets[inside]].to(picked.dtype)
            # max's indices are argmax's (the first maximum), several times faster in bfloat16 on a CPU
            hits[inside] = logprobs.max(-1).indices[local] == targets[inside]
        total = torch.zeros(len(self.keys), dtype=picked.dtype, device=picked.device).index_add_(0, owners, picked)
        missed = torch.zeros(len(self.keys), dtype=torch.long, device=picked.device).index_add_(0, owners, (~hits).long())
        out = {key: (float(value), not miss) for key, value, miss in zip(self.keys, total.tolist(), missed.tolist())}
        self.clear()
        return out


def owners_of(groups: list[ContextGroup], group_ids: list[int], positions: ScoredPositions) -> dict:
    """(row in the batch, continuation) -> its owner index in ``positions``."""
    return {(b, cont): positions.owner((group_ids[b], cont))
            for b, group in enumerate(groups) for cont in group.continuations}


class SharedContextScorer:
    """Runs batches of context groups on the decoder, adding their scored positions to ``positions``."""

    def __init__(self, split: DecoderAndHead):
        self.split = split
        self.device = split.lm.device
        self.pad_id = 0  # any id: padded positions are masked out

    def run(self, groups: list[ContextGroup], group_ids: list[int], positions: ScoredPositions,
            rows_per_call: int) -> bool:
        """False when the model's cache cannot be shared between continuations."""
        if max(g.tree_width for g in groups) <= self.split.row_width:
            self._tries(groups, owners_of(groups, group_ids, positions), positions)
            return True
        return self._context_then_continuations(groups, group_ids, positions, rows_per_call)

    def _tries(self, groups: list[ContextGroup], owners: dict, positions: ScoredPositions):
        """One forward for the batch: groups (in token order) fill trie rows of at most
        ``split.row_width`` positions."""
        rows = [TrieRow()]
        for b, group in enumerate(groups):
            if len(rows[-1]) and len(rows[-1]) + rows[-1].added_by(group) > self.split.row_width:
                rows.append(TrieRow())
            rows[-1].add(group, {cont: owners[(b, cont)] for cont in group.continuations})
        ids, depths = rows_as_tensors(rows)
        if all(row.is_chain for row in rows):  # padding only: the model's own causal masking (and kernels)
            mask = (torch.arange(ids.shape[1]) >= ids.shape[1] - torch.tensor([len(r) for r in rows])[:, None]).long()
        else:
            mask = self.split.attention_mask(rows_allowed(rows))
        hidden, _ = self.split.hidden(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      position_ids=depths.to(self.device), use_cache=False)
        width = ids.shape[1]
        scored = [(r, width - len(row) + node, target, owner) for r, row in enumerate(rows)
                  for node, target, owner in row.scored]
        device = hidden.device  # under parallelize=True the last layer may sit on another device
        nodes = sorted({(r, c) for r, c, _, _ in scored})
        index = {node: i for i, node in enumerate(nodes)}  # a node scoring several targets is projected once
        picked = hidden[torch.tensor([r for r, _ in nodes], device=device), torch.tensor([c for _, c in nodes], device=device)]
        positions.add(picked, [index[(r, c)] for r, c, _, _ in scored], [t for *_, t, _ in scored],
                      [o for *_, o in scored])

    def _context_then_continuations(self, groups: list[ContextGroup], group_ids: list[int],
                                    positions: ScoredPositions, rows_per_call: int) -> bool:
        """The contexts in one forward, then tokens 2.. of the continuations on the repeated cache."""
        lengths = torch.tensor([len(g.context) for g in groups])
        width = int(lengths.max())
        ids = torch.full((len(groups), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(groups), width), dtype=torch.long)
        for b, group in enumerate(groups):  # left padding: every context ends at the last column
            ids[b, width - len(group.context):] = torch.tensor(group.context)
            mask[b, width - len(group.context):] = 1
        rows = [(b, cont) for b, group in enumerate(groups) for cont in group.continuations if len(cont) > 1]
        mask = mask.to(self.device)
        hidden, cache = self.split.hidden(input_ids=ids.to(self.device), attention_mask=mask,
                                          position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=bool(rows))
        if rows and not shareable(cache):
            return False
        owners = owners_of(groups, group_ids, positions)
        pairs = [(b, cont) for b, group in enumerate(groups) for cont in group.continuations]
        # a continuation's first token is predicted at its context's last position
        positions.add(hidden[:, -1], [b for b, _ in pairs], [cont[0] for _, cont in pairs], [owners[p] for p in pairs])
        for chunk in length_buckets(rows, rows_per_call):
            self._continuations(chunk, cache, mask, lengths, owners, positions)
        return True

    def _continuations(self, rows, cache, context_mask, context_lengths, owners, positions):
        """Tokens 2.. of each continuation, predicted on the repeated context cache."""
        width = max(len(cont) - 1 for _, cont in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, cont) in enumerate(rows):
            ids[r, :len(cont) - 1] = torch.tensor(cont[:-1])
            mask[r, :len(cont) - 1] = 1
        owner = torch.tensor([b for b, _ in rows])
        hidden, _ = self.split.hidden(
            input_ids=ids.to(self.device), use_cache=True, cache=cache_rows(cache, owner),
            attention_mask=torch.cat([context_mask[owner.to(self.device)], mask.to(self.device)], dim=1),
            position_ids=(context_lengths[owner, None] + torch.arange(width)).to(self.device))
        targets = [t for _, cont in rows for t in cont[1:]]
        # under parallelize=True the last layer's output may sit on another device than the inputs
        positions.add(hidden[mask.bool().to(hidden.device)], list(range(len(targets))), targets,
                      [owners[row] for row in rows for _ in row[1][1:]])


def shared_context_loglikelihood(lm, requests: list[Request], disable_tqdm: bool = False,
                                 override_bs: int | None = None) -> list[tuple[float, bool]]:
    """``HFLM._loglikelihood_tokens`` on ``lm`` with contexts shared (module docstring); same return."""
    from lm_eval.models.huggingface import HFLM

    def stock(indices):
        return HFLM._loglikelihood_tokens(lm, [requests[i] for i in indices], disable_tqdm=True,
                                          override_bs=override_bs)

    split = getattr(lm, "decoder_and_head", None)
    if split is None:
        split = lm.decoder_and_head = DecoderAndHead(lm)
        if not split.usable:
            log.warning("masked-hf: this model's logits are not its output embedding of the decoder's hidden "
                        "states; log-likelihoods use hf's own path (fast=false)")
    if not split.usable:
        return stock(range(len(requests)))
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    fits = [i for i, (_, ctx, cont) in enumerate(requests) if len(ctx) + len(cont) <= lm.max_length + 1]
    left_to_hf = sorted(set(range(len(requests))) - set(fits))  # hf truncates these from the left
    groups = group_by_context(requests, fits, row_width=split.row_width)
    batch_size = override_bs or lm.batch_size
    if batch_size == "auto" and groups:
        longest = max(groups, key=lambda g: (g.tree_width, g.length))
        # the widest row: the context and its branches (or its longest continuation)
        tail = [t for cont in longest.branches for t in cont[:-1]] + [0] if longest.branches else \
            list(max(longest.continuations, key=len))
        batch_size = lm._detect_batch_size([(None, list(longest.context), tail)])
    batch_size = max(int(batch_size), 1)
    scorer, positions = SharedContextScorer(split), ScoredPositions(split)
    bar = tqdm(total=len(requests), disable=disable_tqdm or lm.rank != 0, desc="Running loglikelihood requests")

    def settle(answers: dict[tuple, tuple[float, bool]]):
        for (group_id, cont), answer in answers.items():
            for i in groups[group_id].continuations[cont]:
                results[i] = answer
                if requests[i][0] is not None:
                    lm.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                bar.update(1)

    for start in range(0, len(groups), batch_size):
        ids = list(range(start, min(start + batch_size, len(groups))))
        if not scorer.run([groups[g] for g in ids], ids, positions, rows_per_call=4 * batch_size):
            log.warning("masked-hf: this model's cache cannot be shared between continuations; using hf's path")
            settle(positions.project())
            left_to_hf = sorted(set(left_to_hf) | {i for i in fits if results[i] is None})
            break
        if positions.pending >= positions.chunk:
            settle(positions.project())
    settle(positions.project())
    if left_to_hf:
        for i, answer in zip(left_to_hf, stock(left_to_hf)):
            results[i] = answer
        bar.update(len(left_to_hf))
    bar.close()
    return results
