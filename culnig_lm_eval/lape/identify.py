"""LAPE identification: activation counts -> one culture (language) neuron mask per corpus.

Language Activation Probability Entropy (Tang et al. 2024), as used for culture neurons by
namazifard/Culture_Neurons.  Inputs are ``over_zero`` (int64 ``[L, I, K]``: on how many real
tokens of corpus ``k`` the MLP gate pre-activation of neuron ``(l, i)`` was > 0) and ``n``
(int64 ``[K]``: real tokens of corpus ``k``).

1. ``p = over_zero / n`` (float64, ``[L, I, K]``), the activation probabilities.
2. ``q = p / p.sum(-1)``, 0 for a neuron never active (NaN -> 0).
3. ``H = -sum_k q ln q`` with ``0 ln 0 = 0``.
4. ``tau`` = the ``k``-th smallest value of the flattened ``p`` with ``k = round(N * filter_rate)``,
   ``N = L * I * K``, ``k`` clipped into ``[1, N]`` (Python's ``round``, as the reference's
   ``kthvalue(round(len * filter_rate))``).  A neuron with no corpus where ``p > tau`` (strict)
   gets ``H = inf``.
5. The ``target = round(top_rate * L * I)`` neurons of lowest ``H`` are kept, jointly across all
   layers.  Ties: a *stable* ascending sort over the layer-major flat index, so the lower layer,
   then the lower neuron index, wins.  **Fix vs the reference**: a neuron with ``H = inf`` is
   never kept (the reference's ``topk`` pads the selection with filtered-out neurons when fewer
   than ``target`` pass the filter), so fewer than ``target`` may be kept.
6. ``bar`` = the ``k``-th smallest of the flattened ``p`` with ``k = round(N * activation_bar_ratio)``
   (same clipping).  A kept neuron belongs to EVERY corpus ``k`` with ``p[l, i, k] > bar``
   (strict): to several corpora, or to none.
7. One boolean ``[L, I]`` mask per corpus, in corpus order.  **Fix vs the reference**: the
   reference splits by ``bincount`` of the corpus index, which drops trailing corpora without
   neurons (and so shifts the names given to later lists); here there are always exactly ``K``
   masks, empty ones included.

Counts are int64 (the reference's int32 overflows on large corpora).  Everything is vectorised
over neurons; a 48 x 15360 x 6 table (a 12B model) takes well under the 5 s budget on 2 CPU
cores (``benchmarks/lape_identify_speed.py``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch

from ..checks import number_in
from ..neuron_set import NeuronSet, new_meta

__all__ = ["LapeHyperparameters", "LapeResult", "identify", "sets_from_result"]


@dataclass(frozen=True)
class LapeHyperparameters:
    """The three LAPE rates; defaults are the culture-neurons paper's.

    * ``top_rate``: share of all ``L * I`` gate neurons kept (lowest entropy), ``round``-ed.
    * ``filter_rate``: quantile of all activation probabilities a neuron must exceed in at
      least one corpus to be eligible.
    * ``activation_bar_ratio``: quantile of all activation probabilities a kept neuron must
      exceed in a corpus to belong to it.

    Each must be a finite number in ``(0, 1]``; anything else is a ValueError naming it.
    """

    top_rate: float = 0.01
    filter_rate: float = 0.95
    activation_bar_ratio: float = 0.95

    def __post_init__(self):
        for name in ("top_rate", "filter_rate", "activation_bar_ratio"):
            value = getattr(self, name)
            object.__setattr__(self, name, number_in(value, f"{name}={value!r}", low=0, high=1, low_open=True))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LapeResult:
    """What :func:`identify` found; ``masks[k]`` is corpus ``k``'s boolean ``[L, I]`` mask."""

    masks: list[torch.Tensor]  # K boolean [L, I] masks, corpus order
    probs: torch.Tensor  # [L, I, K] float64 activation probabilities
    entropy: torch.Tensor  # [L, I] float64, inf for filtered neurons
    kept: torch.Tensor  # bool [L, I]: the lowest-entropy neurons kept
    filter_value: float  # tau
    activation_bar: float  # bar
    target: int  # round(top_rate * L * I)
    hyperparameters: LapeHyperparameters = field(default_factory=LapeHyperparameters)


def _kth_smallest(flat: torch.Tensor, rate: float) -> float:
    """The ``round(len * rate)``-th smallest value (1-based, clipped into ``[1, len]``)."""
    k = min(max(round(flat.numel() * rate), 1), flat.numel())
    return float(flat.kthvalue(k).values)


def _check_counts(over_zero, n) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(over_zero, torch.Tensor):
        raise ValueError(f"over_zero must be a torch tensor of integer counts, not {type(over_zero).__name__}")
    if over_zero.dtype == torch.bool or over_zero.dtype.is_floating_point or over_zero.dtype.is_complex:
        raise ValueError(f"over_zero holds {over_zero.dtype} values; it must hold integer token counts")
    if over_zero.dim() != 3:
        raise ValueError(f"over_zero must be [layers, neurons, corpora], got shape {tuple(over_zero.shape)}")
    layers, width, corpora = over_zero.shape
    if layers == 0 or width == 0:
        raise ValueError(f"over_zero of shape {tuple(over_zero.shape)} holds no neuron")
    if corpora < 2:
        raise ValueError(
            f"over_zero has {corpora} corpus/corpora; LAPE needs at least 2 (the entropy of a neuron's "
            "activation over a single corpus is always 0)"
        )
    n = torch.as_tensor(n)
    if n.dtype == torch.bool or n.dtype.is_floating_point or n.dtype.is_complex:
        raise ValueError(f"n holds {n.dtype} values; it must hold integer token counts")
    if n.dim() != 1 or n.numel() != corpora:
        raise ValueError(f"n must be a 1-D tensor of {corpora} token counts (one per corpus), got shape {tuple(n.shape)}")
    over_zero, n = over_zero.to(torch.int64), n.to(torch.int64)
    empty = (n <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"corpus {empty[0]} has n={int(n[empty[0]])} tokens; every corpus needs at least one token"
        )
    if bool((over_zero < 0).any()):
        raise ValueError(f"over_zero has negative counts (min {int(over_zero.min())})")
    over = (over_zero > n).flatten(0, 1).any(0).nonzero().flatten().tolist()
    if over:
        k = over[0]
        raise ValueError(
            f"over_zero for corpus {k} exceeds its token count n={int(n[k])} (max {int(over_zero[..., k].max())}): "
            "a neuron cannot be active on more tokens than the corpus has"
        )
    return over_zero, n


def identify(
    over_zero: torch.Tensor, n: torch.Tensor, hp: LapeHyperparameters = LapeHyperparameters()
) -> LapeResult:
    """LAPE culture neurons from activation counts (see the module docstring for every step)."""
    if not isinstance(hp, LapeHyperparameters):
        raise ValueError(f"hp must be a LapeHyperparameters, not {type(hp).__name__}")
    over_zero, n = _check_counts(over_zero, n)
    layers, width, corpora = over_zero.shape

    probs = over_zero.to(torch.float64) / n.to(torch.float64)  # [L, I, K]
    total = probs.sum(-1, keepdim=True)
    normed = torch.where(total > 0, probs / total, torch.zeros((), dtype=torch.float64))
    entropy = -torch.special.xlogy(normed, normed).sum(-1)  # xlogy(0, 0) = 0

    flat = probs.flatten()
    filter_value = _kth_smallest(flat, hp.filter_rate)
    eligible = (probs > filter_value).any(-1)
    entropy = entropy.masked_fill(~eligible, math.inf)

    target = round(hp.top_rate * layers * width)
    order = torch.sort(entropy.flatten(), stable=True).indices[:target]
    order = order[eligible.flatten()[order]]  # an inf-entropy neuron is never kept
    kept = torch.zeros(layers * width, dtype=torch.bool)
    kept[order] = True
    kept = kept.view(layers, width)

    activation_bar = _kth_smallest(flat, hp.activation_bar_ratio)
    masks = [kept & (probs[..., k] > activation_bar) for k in range(corpora)]
    return LapeResult(masks, probs, entropy, kept, filter_value, activation_bar, int(target), hp)


def sets_from_result(
    result: LapeResult,
    names: list[str],
    model_shape: dict,
    *,
    provenance: dict | None = None,
    hp: LapeHyperparameters | None = None,
) -> list[NeuronSet]:
    """One ``mlp_gate`` :class:`NeuronSet` per corpus of ``result``, named by ``names`` in order.

    ``model_shape`` is :func:`culnig_lm_eval.architectures.model_shape`'s dict; its layer count
    and ``mlp_gate`` width must match the counts.  ``hp`` defaults to the hyperparameters the
    result was computed with; giving different ones is refused (the metadata would lie).
    ``provenance`` is copied into every set's provenance, next to ``filter_value``,
    ``activation_bar``, ``kept`` (neurons kept before the corpus split) and ``target``.
    """
    hp = result.hyperparameters if hp is None else hp
    if not isinstance(hp, LapeHyperparameters):
        raise ValueError(f"hp must be a LapeHyperparameters, not {type(hp).__name__}")
    if hp != result.hyperparameters:
        raise ValueError(
            f"hp={hp.as_dict()} differs from the hyperparameters the result was computed with "
            f"({result.hyperparameters.as_dict()})"
        )
    names = list(names)
    if len(names) != len(result.masks):
        raise ValueError(f"{len(result.masks)} corpora but {len(names)} names were given: give one name per corpus, in order")
    if any(not isinstance(x, str) or not x for x in names):
        raise ValueError(f"names {names!r} must be non-empty strings")
    if len(set(names)) != len(names):
        dupes = sorted({x for x in names if names.count(x) > 1})
        raise ValueError(f"names must be distinct; repeated: {', '.join(dupes)}")
    layers, width = result.kept.shape
    model_layers = model_shape.get("num_layers")
    model_width = (model_shape.get("widths") or {}).get("mlp_gate")
    model_name = model_shape.get("name") or model_shape.get("model_type") or "the model"
    if model_layers != layers or model_width != width:
        raise ValueError(
            f"the counts are {layers} layers x {width} gate neurons but {model_name} has {model_layers} layers x "
            f"{model_width} mlp_gate neurons: the counts were made for another model"
        )
    stats = {
        "filter_value": float(result.filter_value),
        "activation_bar": float(result.activation_bar),
        "kept": int(result.kept.sum()),
        "target": int(result.target),
    }
    out = []
    for name, mask in zip(names, result.masks, strict=True):
        meta = new_meta(
            copy.deepcopy(model_shape),
            method="lape",
            selection="lape",
            culture=name,
            hyperparameters=hp.as_dict(),
            provenance={**(provenance or {}), **stats},
        )
        out.append(NeuronSet.from_masks({"mlp_gate": mask}, meta))
    return out
