"""``hf``'s log-likelihoods with each distinct context run once and only scored positions projected.

lm-eval's ``HFLM._loglikelihood_tokens`` runs every (context, continuation) pair as one
sequence and applies the vocabulary projection and log-softmax at every position.  Here the
requests that share a context (the options of one multiple-choice document) run it once,
left-padded in a batch with other documents' contexts, which also gives every continuation's
first-token distribution; continuations of two or more tokens then run on the cached keys and
values.  The projection and log-softmax are applied only where a continuation token is scored.

The token ids are ``hf``'s own (the requests carry its ``_encode_pair`` output), so a
continuation that merges with its context in the joint encoding is scored on exactly the ids
``hf`` scores.  Requests longer than the model's window, which ``hf`` truncates from the left,
and models whose cache cannot be shared go through ``hf``'s own method.
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


@dataclass
class ContextGroup:
    """One distinct context and its distinct continuations -> indices of the requests asking for each."""

    context: tuple[int, ...]
    continuations: dict[tuple[int, ...], list[int]] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.context) + max(map(len, self.continuations))


def group_by_context(requests: list[Request], indices: list[int]) -> list[ContextGroup]:
    """Requests grouped by context, longest first (as ``hf`` orders them: out-of-memory shows at once)."""
    groups: dict[tuple[int, ...], ContextGroup] = {}
    for i in indices:
        _, context, continuation = requests[i]
        group = groups.setdefault(tuple(context), ContextGroup(tuple(context)))
        group.continuations.setdefault(tuple(continuation), []).append(i)
    return sorted(groups.values(), key=lambda g: (-g.length, g.context))


def forward_parameters(model) -> set[str]:
    """Keyword names the model's ``forward`` takes (through PEFT's wrapper, if any)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def cache_rows(cache, rows: torch.Tensor):
    """A shallow copy of a ``DynamicCache`` holding the batch rows ``rows`` (repeats allowed).

    The context's cache is shared by the continuation chunks, so each chunk selects its rows
    into new tensors and the original cache is never changed."""
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


class SharedContextScorer:
    """Scores one batch of context groups on ``lm`` (an ``HFLM``)."""

    def __init__(self, lm):
        self.lm = lm
        self.model = lm.model
        params = forward_parameters(self.model)
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_arg = "logits_to_keep" in params
        self.pad_id = 0

    def _call(self, **inputs):
        lm = self.lm
        keep = inputs.pop("keep_last", None)
        if keep is not None and self.keep_arg:
            inputs["logits_to_keep"] = keep
        with torch.no_grad(), torch.autocast(device_type=lm.device.type, dtype=lm.mixed_precision_dtype,
                                             enabled=lm.mixed_precision_dtype is not None):
            out = self.model(**inputs)
        logits = out.logits if keep is None or self.keep_arg else out.logits[:, -keep:]
        # the output's key is "cache" on transformers 5, "past_key_values" before (read as a mapping:
        # the attribute of the old name warns on 5)
        cache = out.get("cache", out.get("past_key_values")) if inputs.get("use_cache") else None
        return logits, cache

    def score(self, groups: list[ContextGroup], rows_per_call: int) -> dict[int, tuple[float, bool]] | None:
        """{request index: (log-likelihood, is_greedy)}; None when the model's cache cannot be shared."""
        lm, device = self.lm, self.lm.device
        lengths = torch.tensor([len(g.context) for g in groups])
        width = int(lengths.max())
        ids = torch.full((len(groups), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(groups), width), dtype=torch.long)
        for b, group in enumerate(groups):  # left padding: every context ends at the last column
            ids[b, width - len(group.context):] = torch.tensor(group.context)
            mask[b, width - len(group.context):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = [(b, cont) for b, group in enumerate(groups) for cont in group.continuations if len(cont) > 1]
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        logits, cache = self._call(input_ids=ids, attention_mask=mask, position_ids=positions,
                                   use_cache=bool(rows), keep_last=1)
        first = F.log_softmax(logits[:, -1], dim=-1, dtype=lm.softmax_dtype)  # [groups, vocab]
        first_greedy = first.argmax(-1).tolist()
        if rows and not shareable(cache):
            return None
        later: dict[tuple[int, tuple], tuple[torch.Tensor, bool]] = {}
        for chunk in length_buckets(rows, rows_per_call):
            later.update(self._continuations(chunk, cache, mask, lengths))
        out = {}
        for b, group in enumerate(groups):
            for cont, indices in group.continuations.items():
                value = first[b, cont[0]]
                greedy = first_greedy[b] == cont[0]
                if len(cont) > 1:
                    rest, rest_greedy = later[(b, cont)]
                    value, greedy = torch.cat([value[None], rest]).sum(), greedy and rest_greedy
                answer = (float(value), bool(greedy))
                out.update({i: answer for i in indices})
        return out

    def _continuations(self, rows, cache, context_mask, context_lengths):
        """Tokens 2.. of each continuation, run on the repeated context cache."""
        device = self.lm.device
        width = max(len(cont) - 1 for _, cont in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, cont) in enumerate(rows):
            ids[r, :len(cont) - 1] = torch.tensor(cont[:-1])
            mask[r, :len(cont) - 1] = 1
        owner = torch.tensor([b for b, _ in rows])
        positions = context_lengths[owner, None] + torch.arange(width)
        attention = torch.cat([context_mask[owner.to(device)], mask.to(device)], dim=1)
        logits, _ = self._call(input_ids=ids.to(device), attention_mask=attention,
                               position_ids=positions.to(device), use_cache=True,
                               **{self.cache_arg: cache_rows(cache, owner)})
        logprobs = F.log_softmax(logits, dim=-1, dtype=self.lm.softmax_dtype)  # [rows, width, vocab]
        targets = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, cont) in enumerate(rows):
            targets[r, :len(cont) - 1] = torch.tensor(cont[1:])
        targets = targets.to(device)
        picked = logprobs.gather(-1, targets[..., None])[..., 0]
        hits = (logprobs.argmax(-1) == targets) | ~mask.to(device).bool()
        return {(b, cont): (picked[r, :len(cont) - 1], bool(hits[r].all())) for r, (b, cont) in enumerate(rows)}


def shared_context_loglikelihood(lm, requests: list[Request], disable_tqdm: bool = False,
                                 override_bs: int | None = None) -> list[tuple[float, bool]]:
    """``HFLM._loglikelihood_tokens`` on ``lm`` with contexts shared (module docstring); same return."""
    from lm_eval.models.huggingface import HFLM

    results: list[tuple[float, bool] | None] = [None] * len(requests)
    fits = [i for i, (_, ctx, cont) in enumerate(requests) if len(ctx) + len(cont) <= lm.max_length + 1]
    stock = sorted(set(range(len(requests))) - set(fits))
    groups = group_by_context(requests, fits)
    batch_size = override_bs or lm.batch_size
    if batch_size == "auto" and groups:
        longest = groups[0]
        batch_size = lm._detect_batch_size([(None, list(longest.context), list(max(longest.continuations, key=len)))])
    batch_size = max(int(batch_size), 1)
    scorer = SharedContextScorer(lm)
    bar = tqdm(total=len(requests), disable=disable_tqdm or lm.rank != 0, desc="Running loglikelihood requests")
    for start in range(0, len(groups), batch_size):
        chunk = groups[start:start + batch_size]
        answers = scorer.score(chunk, rows_per_call=4 * batch_size)
        if answers is None:  # a cache of another kind: the rest goes the stock way
            log.warning("masked-hf: this model's cache cannot be shared between continuations; using hf's path")
            stock += [i for group in groups[start:] for indices in group.continuations.values() for i in indices]
            break
        for i, answer in answers.items():
            results[i] = answer
            if requests[i][0] is not None:
                lm.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        bar.update(len(answers))
    if stock:
        stock = sorted(stock)
        for i, answer in zip(stock, HFLM._loglikelihood_tokens(lm, [requests[i] for i in stock], disable_tqdm=True,
                                                               override_bs=override_bs)):
            results[i] = answer
        bar.update(len(stock))
    bar.close()
    return results
