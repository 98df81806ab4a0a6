"""Random baselines of a neuron set, size-matched to it, and how their files are named.

Two draws: ``layer-matched`` (:meth:`NeuronSet.random_like`: the same number of neurons in every
(module kind, layer); ours) and ``uniform`` (:func:`random_uniform`, the published
``decide_random_neuron.py``: the same total drawn uniformly from the MLP gate and attention
q/k/v neurons of all layers pooled, never up_proj).  A sets folder names them
``random<seed>.pt`` and ``random-uniform<seed>.pt``.
"""

from __future__ import annotations

import torch

from ..neuron_set import NeuronSet, new_meta

# draw -> file-name prefix of its random sets (``<prefix><seed>.pt``)
RANDOM_DRAWS = {"layer-matched": "random", "uniform": "random-uniform"}
# the published uniform draw's candidates (decide_random_neuron.py MLP_TARGET_MODULES): gate, q, k, v
UNIFORM_POOL = ("mlp_gate", "attn_q", "attn_k", "attn_v")


def random_uniform(reference: NeuronSet, seed: int) -> NeuronSet:
    """As many neurons as ``reference``, drawn uniformly from the MLP gate and attention q/k/v
    neurons of every layer pooled, as the published ``decide_random_neuron.py`` draws them
    (layers and kinds are not matched; up_proj is never drawn).  The pool is those of the four
    kinds that ``reference``'s selection scored (its kinds): a gate-only set draws from the gate."""
    model = reference.meta.get("model") or {}
    widths, layers = model.get("widths") or {}, model.get("num_layers")
    kinds = [k for k in UNIFORM_POOL if k in reference.indices]
    if not kinds:
        reference._fail(f"holds none of the kinds the uniform draw takes ({', '.join(UNIFORM_POOL)}), "
                        "so a uniform random set like it cannot be drawn")
    missing = [k for k in kinds if not widths.get(k)]
    if missing or not layers:
        reference._fail(f"has no model shape for {', '.join(missing) or 'num_layers'} in its metadata, "
                        "so a random set of the same size cannot be drawn")
    sizes = [layers * widths[k] for k in kinds]
    if len(reference) > sum(sizes):
        reference._fail(f"holds {len(reference)} neurons, more than the {sum(sizes)} of {', '.join(kinds)} "
                        "a uniform random set is drawn from")
    gen = torch.Generator().manual_seed(int(seed))
    mask = torch.zeros(sum(sizes), dtype=torch.bool)
    mask[torch.randperm(sum(sizes), generator=gen)[: len(reference)]] = True
    masks = {k: part.view(layers, widths[k]) for k, part in zip(kinds, mask.split(sizes))}
    meta = new_meta(
        model,
        method="random",
        selection=f"random-uniform:{reference.meta.get('selection') or reference.meta.get('method') or 'set'}",
        tasks=list(reference.meta.get("tasks") or []),
        hyperparameters={"seed": int(seed), "pool": kinds},
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
