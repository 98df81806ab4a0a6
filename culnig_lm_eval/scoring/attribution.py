"""CULNIG attribution scores: one batched forward + backward per batch, accumulated on tensors.

For a sample with context ``x`` and gold continuation ``y`` (tokens ``y_1..y_m``) let
``P = P(y | x) = prod_j p(y_j | x, y_<j)``.  The score of neuron ``n`` is

    s(n) = max_t ( n_t * dP/dn_t ) * P  =  P^2 * max_t ( n_t * d log P / dn_t )

where ``n_t`` is the neuron's activation at input position ``t`` and the max runs over the
sample's real input tokens only (padding never takes part, so a score does not depend on
the batch it was computed in).  One backward pass of ``sum_i log P_i`` gives every sample's
``d log P_i / dn`` at once, because samples in a batch do not interact.  Products and maxima
are taken in fp32 inside a tensor hook during the backward pass, so the [tokens x width]
product never outlives its layer; the per-sample results are summed into one
``[layers, width, cultures]`` fp32 tensor per module kind with ``index_add_``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..architectures import model_shape, sites, widths
from .samples import Sample


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T] bool
    position_ids: torch.Tensor  # [B, T]
    rows: torch.Tensor  # [N] sample of each continuation token
    cols: torch.Tensor  # [N] its predicting position, counted from the end of the sequence
    targets: torch.Tensor  # [N] the gold token
    keep: int  # logits kept from the end of the sequence


def collate(samples: list[Sample], pad_id: int, padding_side: str = "left", device="cpu") -> Batch:
    length = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.bool)
    rows, cols, targets = [], [], []
    for i, s in enumerate(samples):
        seq = torch.tensor(s.input_ids, dtype=torch.long)
        start = length - len(seq) if padding_side == "left" else 0
        ids[i, start : start + len(seq)] = seq
        mask[i, start : start + len(seq)] = True
        m = len(s.continuation)
        # input position predicting continuation token j is len(context) - 1 + j
        positions = torch.arange(len(s.context) - 1, len(s.context) - 1 + m) + start
        rows.append(torch.full((m,), i, dtype=torch.long))
        cols.append(positions - length)  # negative: offset from the end
        targets.append(torch.tensor(s.continuation, dtype=torch.long))
    rows, cols, targets = torch.cat(rows), torch.cat(cols), torch.cat(targets)
    keep = int(-cols.min())
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    to = lambda t: t.to(device)  # noqa: E731
    return Batch(to(ids), to(mask), to(position_ids), to(rows), to(cols + keep), to(targets), keep)


class AttributionScorer:
    """Computes per-sample neuron scores for the chosen module kinds of one model."""

    def __init__(self, model: nn.Module, kinds=("mlp_gate",)):
        self.model = model
        self.kinds = tuple(kinds)
        self.sites = sites(model, self.kinds)
        self.shape = model_shape(model.config)
        self.num_layers = self.shape["num_layers"]
        self.widths = {k: widths(model.config)[k] for k in self.kinds}

    def _forward_backward(self, batch: Batch, hooks: bool):
        """Returns (log P per sample, {(kind, layer): [B, width] max_t n*dlogP/dn})."""
        captured: dict[tuple[str, int], torch.Tensor] = {}
        real = batch.attention_mask
        handles = [self.model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_())]
        if hooks:
            for site in self.sites:
                handles.append(site.module.register_forward_hook(self._capture(site, real, captured)))
        frozen = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                logits = self.model(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask.long(),
                    position_ids=batch.position_ids,
                    use_cache=False,
                    logits_to_keep=batch.keep,
                ).logits
                token_logp = torch.log_softmax(logits[batch.rows, batch.cols].float(), dim=-1)
                token_logp = token_logp.gather(-1, batch.targets[:, None]).squeeze(-1)
                logp = torch.zeros(real.shape[0], device=token_logp.device).index_add_(0, batch.rows, token_logp)
                logp.sum().backward()
        finally:
            for h in handles:
                h.remove()
            for p, flag in frozen:
                p.requires_grad_(flag)
        return logp.detach(), captured

    @staticmethod
    def _capture(site, real: torch.Tensor, captured: dict):
        def forward_hook(_module, _inputs, output):
            activation = output[..., site.start : site.stop].detach()

            def grad_hook(grad):
                product = activation.float() * grad[..., site.start : site.stop].float()
                product.masked_fill_(~real.to(product.device)[..., None], float("-inf"))
                captured[(site.kind, site.layer)] = product.amax(dim=1)

            output.register_hook(grad_hook)

        return forward_hook

    def sample_scores(self, batch: Batch) -> dict[str, torch.Tensor]:
        """{kind: [layers, B, width]} fp32 scores ``P^2 * max_t n_t dlogP/dn_t`` of each sample."""
        logp, captured = self._forward_backward(batch, hooks=True)
        weight = torch.exp(2 * logp)  # P^2
        out = {}
        for kind in self.kinds:
            per_layer = [captured[(kind, layer)] for layer in range(self.num_layers)]
            device = per_layer[0].device
            out[kind] = torch.stack([t.to(device) for t in per_layer]) * weight.to(device)[None, :, None]
        return out

    def floor(self, batch: Batch):
        """Plain forward + backward on the same batch, nothing captured (the benchmark's floor)."""
        self._forward_backward(batch, hooks=False)


@dataclass
class ScoreTable:
    """Summed scores per culture: {kind: [layers, width, cultures]} fp32, and samples per culture."""

    cultures: list[str]
    scores: dict[str, torch.Tensor]
    counts: torch.Tensor  # [cultures] int64
    meta: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, scorer: AttributionScorer, cultures: list[str], device) -> "ScoreTable":
        scores = {
            k: torch.zeros(scorer.num_layers, w, len(cultures), dtype=torch.float32, device=device)
            for k, w in scorer.widths.items()
        }
        return cls(list(cultures), scores, torch.zeros(len(cultures), dtype=torch.long, device=device))

    def add(self, per_sample: dict[str, torch.Tensor], culture_ids: torch.Tensor, clamp_at_zero: bool):
        culture_ids = culture_ids.to(self.counts.device)
        for kind, s in per_sample.items():
            s = s.to(self.scores[kind].device)
            if clamp_at_zero:
                s = s.clamp(min=0)
            self.scores[kind].index_add_(2, culture_ids, s.permute(0, 2, 1))
        self.counts.index_add_(0, culture_ids, torch.ones_like(culture_ids))

    def all_reduce(self):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for t in self.scores.values():
                dist.all_reduce(t)
            dist.all_reduce(self.counts)

    def to_payload(self) -> dict:
        return {
            "format": "culnig-scores/1",
            "cultures": self.cultures,
            "scores": {k: v.cpu() for k, v in self.scores.items()},
            "counts": self.counts.cpu(),
            "meta": self.meta,
        }

    @classmethod
    def from_payload(cls, payload: dict) -> "ScoreTable":
        return cls(payload["cultures"], payload["scores"], payload["counts"], payload.get("meta", {}))
