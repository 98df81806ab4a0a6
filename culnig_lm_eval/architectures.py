"""Where the neurons live: one adapter table for every supported architecture.

A *neuron* is one output channel of a projection inside a decoder layer:

* ``mlp_gate``: the MLP gate projection (``gate_proj``), the CULNIG default;
* ``mlp_up``: the MLP up projection (``up_proj``);
* ``attn_q`` / ``attn_k`` / ``attn_v``: the attention query/key/value projections.

Some models fuse projections into one ``nn.Linear`` (Phi-3/Phi-4 ``gate_up_proj`` = gate | up
and ``qkv_proj`` = q | k | v along the output rows); there a neuron is a row inside a slice of
the fused output, and :class:`Projection` records the slice.  Multimodal checkpoints (Gemma-3
``Gemma3ForConditionalGeneration``, model_type ``gemma3``) keep their sizes in ``text_config``
and their text tower under ``model.language_model`` (transformers >= 4.52; older releases
used ``language_model.model``); only the text tower has neurons here.

Everything that touches neurons (masking, scoring, set validation) goes through
:func:`sites` / :func:`widths` / :func:`model_shape`, so adding an architecture means adding
one row to :data:`ADAPTERS`; an unknown ``model_type`` raises
:class:`UnsupportedArchitecture` listing the supported ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

MODULE_KINDS = ("mlp_gate", "mlp_up", "attn_q", "attn_k", "attn_v")


@dataclass(frozen=True)
class Projection:
    """A neuron kind inside one decoder layer: the linear module and the slice of its output."""

    path: str  # attribute path relative to the decoder layer, e.g. "mlp.gate_proj"
    # (start, stop) of the slice of the module's output rows, from the text config; None = all rows
    slice_of: Callable[[object], tuple[int, int]] | None = None


@dataclass(frozen=True)
class Adapter:
    layers: tuple[str, ...]  # candidate paths from the model to its decoder-layer list, in order
    text_config: str | None  # sub-config holding the text tower's sizes (multimodal models)
    projections: dict[str, Projection]


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _q_width(cfg) -> int:
    return cfg.num_attention_heads * _head_dim(cfg)


def _kv_width(cfg) -> int:
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return heads * _head_dim(cfg)


def _separate(mlp: str = "mlp", attn: str = "self_attn") -> dict[str, Projection]:
    return {
        "mlp_gate": Projection(f"{mlp}.gate_proj"),
        "mlp_up": Projection(f"{mlp}.up_proj"),
        "attn_q": Projection(f"{attn}.q_proj"),
        "attn_k": Projection(f"{attn}.k_proj"),
        "attn_v": Projection(f"{attn}.v_proj"),
    }


def _fused_phi3() -> dict[str, Projection]:
    # Phi3MLP: gate, up = gate_up_proj(x).chunk(2, dim=-1); Phi3Attention: q | k | v along the rows.
    inter = lambda c: c.intermediate_size  # noqa: E731
    q, kv = _q_width, _kv_width
    return {
        "mlp_gate": Projection("mlp.gate_up_proj", lambda c: (0, inter(c))),
        "mlp_up": Projection("mlp.gate_up_proj", lambda c: (inter(c), 2 * inter(c))),
        "attn_q": Projection("self_attn.qkv_proj", lambda c: (0, q(c))),
        "attn_k": Projection("self_attn.qkv_proj", lambda c: (q(c), q(c) + kv(c))),
        "attn_v": Projection("self_attn.qkv_proj", lambda c: (q(c) + kv(c), q(c) + 2 * kv(c))),
    }


# "layers" covers the bare decoder (LlamaModel ...) next to the *ForCausalLM wrapper.
_DECODER = ("model.layers", "layers")
_GEMMA3_MM = ("model.language_model.layers", "language_model.model.layers", "language_model.layers")

ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter(_DECODER, None, _separate()),  # Llama 2/3, SmolLM2
    "mistral": Adapter(_DECODER, None, _separate()),
    "qwen2": Adapter(_DECODER, None, _separate()),
    "qwen3": Adapter(_DECODER, None, _separate()),
    "gemma": Adapter(_DECODER, None, _separate()),
    "gemma2": Adapter(_DECODER, None, _separate()),
    "gemma3_text": Adapter(_DECODER, None, _separate()),
    "gemma3": Adapter(_GEMMA3_MM, "text_config", _separate()),
    "phi3": Adapter(_DECODER, None, _fused_phi3()),
}


class UnsupportedArchitecture(ValueError):
    """The model's architecture is not in :data:`ADAPTERS`, or does not look like its row."""


def adapter_for(config) -> Adapter:
    model_type = getattr(config, "model_type", None)
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"culnig-lm-eval does not know where the neurons of model_type={model_type!r} live. "
            f"Supported model types: {', '.join(sorted(ADAPTERS))}. "
            "Add a row to culnig_lm_eval.architectures.ADAPTERS for a new architecture."
        ) from None


def text_config(config):
    sub = adapter_for(config).text_config
    return getattr(config, sub) if sub else config


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    adapter = adapter_for(model.config)
    for path in adapter.layers:
        try:
            layers = _get(model, path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise UnsupportedArchitecture(
        f"could not find the decoder layers of {type(model).__name__} "
        f"(model_type={model.config.model_type!r}) at any of {', '.join(adapter.layers)}"
    )


def widths(config) -> dict[str, int]:
    """Neurons per layer for each module kind, from the (text) config."""
    cfg = text_config(config)
    return {
        "mlp_gate": cfg.intermediate_size,
        "mlp_up": cfg.intermediate_size,
        "attn_q": _q_width(cfg),
        "attn_k": _kv_width(cfg),
        "attn_v": _kv_width(cfg),
    }


def model_shape(config) -> dict:
    """What a neuron set is checked against: layer count and width per module kind (+ name)."""
    cfg = text_config(config)
    return {
        "name": getattr(config, "name_or_path", None) or None,
        "model_type": config.model_type,
        "num_layers": cfg.num_hidden_layers,
        "widths": widths(config),
    }


@dataclass
class NeuronSite:
    """One (module kind, layer): the linear module and the rows of its output that are neurons."""

    kind: str
    layer: int
    module: nn.Linear
    start: int
    stop: int


def sites(model: nn.Module, kinds=MODULE_KINDS) -> list[NeuronSite]:
    """Every (kind, layer) of ``model``; checks each module against the widths of its config."""
    adapter = adapter_for(model.config)
    cfg = text_config(model.config)
    expected = widths(model.config)
    found = []
    for layer_idx, layer in enumerate(decoder_layers(model)):
        for kind in kinds:
            proj = adapter.projections[kind]
            try:
                module = _get(layer, proj.path)
            except AttributeError:
                raise UnsupportedArchitecture(
                    f"{type(model).__name__} layer {layer_idx} has no {proj.path} "
                    f"(expected for model_type={model.config.model_type!r})"
                ) from None
            rows = getattr(module, "out_features", None)
            start, stop = proj.slice_of(cfg) if proj.slice_of else (0, rows)
            if rows is None or stop - start != expected[kind] or stop > rows:
                raise UnsupportedArchitecture(
                    f"{type(model).__name__} layer {layer_idx} {proj.path} has {rows} output rows, which "
                    f"does not match {kind} width {expected[kind]} from the config"
                )
            found.append(NeuronSite(kind, layer_idx, module, start, stop))
    return found

