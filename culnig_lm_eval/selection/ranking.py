"""Rankings of the selection rules: the top ``t``% of a score tensor, kinds pooled into one
ranking, ties broken in the published code's order, and sums taken in its order.

The published selection scripts (ynklab/CULNIG ``decide_*.py``) rank with Python's stable
``sorted(..., reverse=True)`` over a dictionary whose keys are in the order the scorer met the
neurons: layer by layer, inside a layer the projections in the order their forward hooks fire
(q, k, v, then the MLP gate and up; Phi-3's fused ``qkv_proj`` fires v, q, k in the order the
hooks were registered), then by index.  Among equal scores the neuron met first wins, so
:func:`top_mask` takes tied entries in :func:`neuron_order` and never leaves the choice to
``torch.topk``.  Sums over cultures (:func:`ordered_sum`) are taken one culture after another,
as Python's ``sum`` does, so a neuron whose scores are equal across cultures gets the same
mean, std and z-score as there.
"""

from __future__ import annotations

import torch

# the order the published scorer's forward hooks fire inside one decoder layer
FORWARD_ORDER = ("attn_q", "attn_k", "attn_v", "mlp_gate", "mlp_up")
FORWARD_ORDER_BY_MODEL_TYPE = {"phi3": ("attn_v", "attn_q", "attn_k", "mlp_gate", "mlp_up")}


def neuron_order(shapes: dict[str, tuple[int, int]], model_type: str | None) -> dict[str, torch.Tensor]:
    """{kind: int64 [layers, width]}: each neuron's place in the published scorer's order (layer,
    then the kind's forward-hook order, then index); comparable across the kinds given."""
    order = FORWARD_ORDER_BY_MODEL_TYPE.get(model_type or "", FORWARD_ORDER)
    widest = max((width for _, width in shapes.values()), default=1)
    out = {}
    for kind, (layers, width) in shapes.items():
        layer = torch.arange(layers, dtype=torch.long)[:, None] * (len(order) * widest)
        out[kind] = layer + order.index(kind) * widest + torch.arange(width, dtype=torch.long)[None, :]
    return out


def top_mask(values: torch.Tensor, percent: float, allowed: torch.Tensor | None = None,
             order: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the top ``percent``% of all entries of ``values`` (among ``allowed``).

    ``k = int(n * percent / 100)`` entries, never more (the published ``int(len * t)``).  Entries
    tied with the k-th value are taken by ``order`` (smallest first; default: flat index)."""
    k = int(values.numel() * percent / 100 + 1e-9)  # never more than percent%
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    flat = values.flatten()
    if allowed is not None:
        flat = flat.masked_fill(~allowed.flatten(), float("-inf"))
        k = min(k, int(allowed.sum()))
    if k == 0:
        return mask.view_as(values)
    kth = torch.topk(flat, k).values[-1]
    mask = flat > kth
    tied = (flat == kth).nonzero().flatten()
    if order is not None:
        tied = tied[torch.argsort(order.flatten()[tied], stable=True)]
    mask[tied[: k - int(mask.sum())]] = True
    return mask.view_as(values)


def pooled_top(values: dict[str, torch.Tensor], percent: float, excluded: dict[str, torch.Tensor] | None = None,
               order: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """{kind: mask}: the top ``percent``% of the neurons of all ``values`` ranked together
    (``percent`` of all of them; ``excluded`` neurons are never chosen; ties by ``order``)."""
    kinds = list(values)
    allowed = ~torch.cat([excluded[k].flatten() for k in kinds]) if excluded is not None else None
    ranks = torch.cat([order[k].flatten() for k in kinds]) if order is not None else None
    mask = top_mask(torch.cat([values[k].flatten() for k in kinds]), percent, allowed, ranks)
    parts = mask.split([values[k].numel() for k in kinds])
    return {k: part.view_as(values[k]) for k, part in zip(kinds, parts)}


def ordered_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension one column after another, left to right (Python's ``sum``
    over a dictionary of cultures), so equal inputs give bit-equal results as there."""
    if values.shape[-1] == 0:
        return torch.zeros(values.shape[:-1], dtype=values.dtype)
    total = values[..., 0].clone()
    for column in range(1, values.shape[-1]):
        total += values[..., column]
    return total


def reference_z(per_culture: torch.Tensor) -> torch.Tensor:
    """z-scores across the last dimension as the published script computes them: mean and
    population variance by :func:`ordered_sum`, std = sqrt(variance), z = 0 where std = 0."""
    n = per_culture.shape[-1]
    mean = ordered_sum(per_culture) / n
    deviation = per_culture - mean[..., None]
    std = torch.sqrt(ordered_sum(deviation * deviation) / n)
    z = deviation / std[..., None]
    return z.masked_fill_((std == 0)[..., None], 0.0)
