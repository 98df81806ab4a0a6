"""Random baselines of a neuron set, size-matched to it, and how their files are named.

Two draws: ``layer-matched`` (:meth:`NeuronSet.random_like`: the same number of neurons in every
(module kind, layer)) and ``uniform`` (:func:`random_uniform`, the reference's
``decide_random_neuron.py``: the same total drawn from all neurons of the set's module kinds
pooled).  A sets folder names them ``random<seed>.pt`` and ``random-uniform<seed>.pt``.
"""

from __future__ import annotations

import torch

from ..neuron_set import NeuronSet, new_meta

# draw -> file-name prefix of its random sets (``<prefix><seed>.pt``)
RANDOM_DRAWS = {"layer-matched": "random", "uniform": "random-uniform"}


def random_uniform(reference: NeuronSet, seed: int) -> NeuronSet:
    """As many neurons as ``reference``, drawn uniformly from all neurons of its module kinds
    pooled (the reference's ``decide_random_neuron.py``; layers and kinds are not matched)."""
    model = reference.meta.get("model") or {}
    widths, layers = model.get("widths") or {}, model.get("num_layers")
    kinds = list(reference.indices)
    missing = [k for k in kinds if not widths.get(k)]
    if missing or not layers:
        reference._fail(f"has no model shape for {', '.join(missing) or 'num_layers'} in its metadata, "
                        "so a random set of the same size cannot be drawn")
    sizes = [layers * widths[k] for k in kinds]
    gen = torch.Generator().manual_seed(int(seed))
    mask = torch.zeros(sum(sizes), dtype=torch.bool)
    mask[torch.randperm(sum(sizes), generator=gen)[: len(reference)]] = True
    masks = {k: part.view(layers, widths[k]) for k, part in zip(kinds, mask.split(sizes))}
    meta = new_meta(
        model,
        method="random",
        selection=f"random-uniform:{reference.meta.get('selection') or reference.meta.get('method') or 'set'}",
        tasks=list(reference.meta.get("tasks") or []),
        hyperparameters={"seed": int(seed)},
        provenance={"size_matched_to": reference.summary_meta()},
    )
    return NeuronSet.from_masks(masks, meta)


def random_set(draw: str, neuron_set: NeuronSet, seed: int) -> NeuronSet:
    """A random set like ``neuron_set``: ``draw`` is "layer-matched" or "uniform" (:data:`RANDOM_DRAWS`)."""
    return neuron_set.random_like(seed) if draw == "layer-matched" else random_uniform(neuron_set, seed)


def random_draw(label: str) -> str | None:
    """"uniform" for ``random-uniform<seed>``, "layer-matched" for ``random<seed>``, else None."""
    for draw, prefix in sorted(RANDOM_DRAWS.items(), key=lambda kv: -len(kv[1])):
        if label.startswith(prefix) and label[len(prefix):].isdigit():
            return draw
    return None
