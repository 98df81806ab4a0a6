"""Read published neuron lists into :class:`~culnig_lm_eval.neuron_set.NeuronSet` objects.

Two formats (the neuron-set format itself is described in :mod:`culnig_lm_eval.neuron_set`):

* **CULNIG JSON** (GitHub ynklab/CULNIG): ``{"top_neurons": [{"module_name": "mlp.gate_proj",
  "layer_idx": 3, "neuron_idx": 17, ...}, ...]}``; module names ending in
  gate_proj/up_proj/q_proj/k_proj/v_proj become mlp_gate/mlp_up/attn_q/attn_k/attn_v.
* **LAPE** torch files (GitHub RUCAIBox/Language-Specific-Neurons, namazifard/Culture_Neurons):
  a list over cultures (or languages) of a list over layers of MLP intermediate-neuron index
  tensors.  Some files hold 0/1 masks of the layer's width instead; the layout is detected
  (see :func:`import_lape`) and recorded in the provenance.  Every culture becomes one
  ``mlp_gate`` set: suppressing a gate neuron zeroes that intermediate activation
  (act(0) = 0), as LAPE masking does.

Every function returns NeuronSets and raises :class:`NeuronSetError` (one line naming the
file) for any bad input; nothing here writes files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ._io import UnsafeNameError, file_sha256, safe_name
from .architectures import MODULE_KINDS, model_shape
from .neuron_set import FORMAT, NeuronSet, NeuronSetError, load_torch_file, new_meta

# CULNIG JSON module names (last dotted component) -> module kinds
CULNIG_MODULES = {
    "gate_proj": "mlp_gate",
    "up_proj": "mlp_up",
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    **{k: k for k in MODULE_KINDS},
}
LAPE_LAYOUTS = ("auto", "mask", "indices")


def config_for(model: str):
    """AutoConfig of a hub id, a local folder, or an embedded alias (without converting it if avoidable)."""
    from transformers import AutoConfig

    from .model import embedded

    if embedded.is_alias(model):
        cached = embedded.cache_root() / "models" / model
        if (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(cached)
        try:  # the GGUF header has the shape: no need for the one-minute conversion
            gguf = embedded.EMBEDDED[model].gguf()
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception:
            return AutoConfig.from_pretrained(embedded.checkpoint_dir(model))
    return AutoConfig.from_pretrained(model)


def shape_of_model(model: str) -> dict:
    """The shape (architectures.model_shape) of ``model``: a hub id, local folder or embedded alias."""
    try:
        config = config_for(model)
    except Exception as err:
        first_line = (str(err).splitlines() or [""])[0][:160]
        raise NeuronSetError(
            f"--model {model}: cannot read its config ({type(err).__name__}: {first_line}); "
            "give a local model folder, an embedded alias, a reachable hub id, or --num-layers/--widths"
        ) from None
    shape = model_shape(config)
    shape["name"] = model
    return shape


# -- shared -------------------------------------------------------------------------------------
def _group(columns: dict[str, tuple[torch.Tensor, torch.Tensor]], shape: dict, where: str):
    """{kind: (layer column, neuron column)} -> ({kind: [unique indices per layer]}, duplicates dropped)."""
    num_layers, widths = shape["num_layers"], shape["widths"]
    indices, duplicates = {}, 0
    for kind in [k for k in MODULE_KINDS if k in columns]:
        layers, neurons = columns[kind]
        if kind not in widths:
            raise NeuronSetError(f"{where} has {kind} neurons but no {kind} width was given: add {kind}=WIDTH to --widths")
        for column, limit, what in ((layers, num_layers, "layer index"), (neurons, widths[kind], f"{kind} neuron")):
            if column.numel() and (int(column.min()) < 0 or int(column.max()) >= limit):
                bad = int(column.min()) if int(column.min()) < 0 else int(column.max())
                raise NeuronSetError(f"{where} has {what} {bad} but the model has {limit}: wrong --model or --widths?")
        # one sort over (layer, neuron) pairs, then split per layer: no loop over neurons
        pairs = torch.unique(layers * widths[kind] + neurons)
        duplicates += neurons.numel() - pairs.numel()
        counts = torch.bincount(pairs // widths[kind], minlength=num_layers).tolist()
        indices[kind] = list(torch.split(pairs % widths[kind], counts))
    return indices, duplicates


# -- CULNIG JSON --------------------------------------------------------------------------------
def _read_culnig_json(path: Path) -> tuple[list[dict], dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NeuronSetError(f"{path}: not readable as CULNIG JSON ({type(err).__name__}: {err})") from None
    records = data.get("top_neurons") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise NeuronSetError(
            f"{path}: expected a CULNIG JSON object {{\"top_neurons\": [{{\"module_name\", \"layer_idx\", "
            "\"neuron_idx\", ...}}, ...]}}; use --format lape for a LAPE .pt file"
        )
    scalars = (str, int, float, bool)
    extra = {k: v for k, v in data.items() if isinstance(v, scalars)} if isinstance(data, dict) else {}
    return records, extra


def _integer_column(records: list[dict], key: str, path: Path) -> torch.Tensor:
    """One field of every record as int64; booleans (true would become 1), floats and strings are refused."""
    values = [r[key] for r in records]
    bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, int)), None)
    if bad is not None or any(not -(2**63) <= v < 2**63 for v in values):
        shown = bad if bad is not None else next(v for v in values if not -(2**63) <= v < 2**63)
        raise NeuronSetError(f"{path}: layer_idx and neuron_idx must be integers, found {key}={shown!r}")
    return torch.tensor(values, dtype=torch.long)


def import_culnig_json(path: str | Path, shape: dict, culture: str | None = None) -> NeuronSet:
    """A CULNIG ``{"top_neurons": [...]}`` file -> one set (``culture`` None for a culture-general one)."""
    path = Path(path)
    if not path.is_file():
        raise NeuronSetError(f"{path}: no such file")
    records, extra = _read_culnig_json(path)
    missing = [i for i, r in enumerate(records) if not {"module_name", "layer_idx", "neuron_idx"} <= r.keys()]
    if missing:
        raise NeuronSetError(f"{path}: entry {missing[0]} lacks module_name, layer_idx or neuron_idx")
    names = [str(r["module_name"]).rsplit(".", 1)[-1] for r in records]
    unknown = sorted(set(names) - set(CULNIG_MODULES))
    if unknown:
        raise NeuronSetError(
            f"{path}: module_name {unknown[0]!r} is not a neuron kind culnig-lm-eval masks "
            f"(known: {', '.join(sorted(CULNIG_MODULES))})"
        )
    layers = _integer_column(records, "layer_idx", path)
    neurons = _integer_column(records, "neuron_idx", path)
    kind_ids = torch.tensor([MODULE_KINDS.index(CULNIG_MODULES[n]) for n in names], dtype=torch.long)
    columns = {k: (layers[kind_ids == i], neurons[kind_ids == i]) for i, k in enumerate(MODULE_KINDS)
               if bool((kind_ids == i).any())}
    indices, duplicates = _group(columns, shape, str(path))
    provenance = {"imported_from": str(path), "sha256": file_sha256(path), "format": "culnig-json",
                  "entries": len(records), "duplicates_dropped": duplicates, "source_fields": extra}
    meta = new_meta(shape, "culnig", selection="imported", culture=culture, provenance=provenance)
    return NeuronSet(indices, meta)


# -- LAPE ---------------------------------------------------------------------------------------
def _read_lape(path: Path) -> list:
    data = load_torch_file(
        path, "LAPE file",
        "a LAPE file (a torch list indexed [culture][layer] of neuron-index tensors); use --format culnig-json "
        "for a CULNIG JSON",
    )
    if isinstance(data, dict) and data.get("format") == FORMAT:
        raise NeuronSetError(f"{path} is already a neuron set: use it directly, or `culnig-sets info` it")
    if isinstance(data, torch.Tensor) and data.dim() == 3:  # [cultures, layers, width] stacked masks
        data = [list(c) for c in data]
    cultures = [list(c) if isinstance(c, torch.Tensor) and c.dim() == 2 else c for c in data] \
        if isinstance(data, (list, tuple)) else None
    if not cultures or not all(isinstance(c, (list, tuple)) for c in cultures):
        raise NeuronSetError(
            f"{path}: expected a LAPE file, a list indexed [culture][layer] of index tensors "
            f"(found {type(data).__name__}); use --format culnig-json for a CULNIG JSON"
        )
    return cultures


def _layer_tensor(value, where: str) -> torch.Tensor:
    """One layer's entry -> 1-D tensor; floats (NaN included) and nested lists are refused."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise NeuronSetError(f"{where}: each layer must be a tensor or list of integer neuron indices") from None
    if tensor.numel() and (tensor.dtype.is_floating_point or tensor.dtype.is_complex):
        raise NeuronSetError(f"{where}: neuron indices must be integers, found {tensor.dtype} values")
    if tensor.dim() > 1:
        raise NeuronSetError(f"{where}: each layer must be a 1-D tensor, found {tensor.dim()}-D")
    return tensor.flatten()


def _looks_like_mask(t: torch.Tensor, width: int) -> bool:
    return t.numel() == width and (t.dtype == torch.bool or bool(((t == 0) | (t == 1)).all()))


def _lape_layout(layers: list[list[torch.Tensor]], width: int, path: Path, requested: str) -> str:
    """'mask' or 'indices' for the whole file.

    A layer whose length equals the layer width and whose values are all 0/1 is a mask row; an
    index list that long would repeat neurons.  Mixed files, and widths of 2 or less (where an
    index list can look like a mask), are refused unless ``requested`` forces a layout.
    """
    flat = [t for culture in layers for t in culture]
    mask_like = [_looks_like_mask(t, width) for t in flat]
    if requested == "auto":
        if all(mask_like) and width > 2:
            return "mask"
        if not any(mask_like) and not any(t.dtype == torch.bool for t in flat):
            return "indices"
        first = mask_like.index(True) if any(mask_like) else next(i for i, t in enumerate(flat) if t.dtype == torch.bool)
        culture, layer = divmod(first, len(layers[0]))
        if all(mask_like):
            why = f"every layer is a 0/1 row of width {width}, and with a width of 2 or less an index list looks the same"
        elif mask_like[first]:
            why = f"culture {culture} layer {layer} looks like a 0/1 mask of width {width}, other layers do not"
        else:
            why = f"culture {culture} layer {layer} holds booleans but is not {width} long"
        raise NeuronSetError(
            f"{path}: cannot tell whether it holds 0/1 masks or neuron indices ({why}); "
            "give --lape-layout mask or --lape-layout indices"
        )
    if requested == "mask":
        bad = next((i for i, m in enumerate(mask_like) if not m), None)
        if bad is not None:
            culture, layer = divmod(bad, len(layers[0]))
            raise NeuronSetError(
                f"{path} culture {culture} layer {layer}: --lape-layout mask needs {width} values of 0 or 1 per "
                f"layer, found {flat[bad].numel()} values"
            )
    elif any(t.dtype == torch.bool for t in flat):
        raise NeuronSetError(f"{path}: holds boolean tensors, which are masks, not neuron indices; use --lape-layout mask")
    return requested


def import_lape(path: str | Path, shape: dict, cultures: list[str], layout: str = "auto") -> list[NeuronSet]:
    """A LAPE ``[culture][layer]`` file -> one ``mlp_gate`` set per culture, named by ``cultures`` in order.

    ``layout`` is 'indices' (each layer lists neuron indices), 'mask' (each layer is a 0/1 row of
    the layer's width) or 'auto' (detected; ambiguous files are refused).  The layout used and
    how it was chosen are recorded in each set's provenance.
    """
    path = Path(path)
    if layout not in LAPE_LAYOUTS:
        raise NeuronSetError(f"--lape-layout {layout!r}: choose one of {', '.join(LAPE_LAYOUTS)}")
    if not path.is_file():
        raise NeuronSetError(f"{path}: no such file")
    if len(set(cultures)) != len(cultures):
        raise NeuronSetError(f"--cultures {','.join(cultures)}: give distinct names")
    try:  # the names become parts of output file names
        for culture in cultures:
            safe_name(culture, "--cultures name")
    except UnsafeNameError as err:
        raise NeuronSetError(str(err)) from None
    if "mlp_gate" not in shape["widths"]:
        raise NeuronSetError(f"{path}: LAPE neurons are mlp_gate neurons but no mlp_gate width was given: add "
                             "mlp_gate=WIDTH to --widths")
    data = _read_lape(path)
    if len(cultures) != len(data):
        raise NeuronSetError(
            f"{path} holds {len(data)} cultures but --cultures names {len(cultures)}: "
            f"give {len(data)} comma-separated names in the file's order"
        )
    layers = []
    for c, (culture, per_layer) in enumerate(zip(cultures, data, strict=True)):
        if len(per_layer) != shape["num_layers"]:
            raise NeuronSetError(f"{path} culture {c} ({culture}) has {len(per_layer)} layers but the model has "
                                 f"{shape['num_layers']}: wrong --model?")
        layers.append([_layer_tensor(t, f"{path} culture {c} ({culture}) layer {i}") for i, t in enumerate(per_layer)])
    width = shape["widths"]["mlp_gate"]
    used = _lape_layout(layers, width, path, layout)
    digest = file_sha256(path)
    out = []
    for c, (culture, per_layer) in enumerate(zip(cultures, layers, strict=True)):
        if used == "mask":
            per_layer = [t.to(torch.bool).nonzero().flatten() for t in per_layer]
        layer_ids = torch.cat([torch.full((t.numel(),), i, dtype=torch.long) for i, t in enumerate(per_layer)])
        neurons = torch.cat([t.long() for t in per_layer])
        indices, duplicates = _group({"mlp_gate": (layer_ids, neurons)}, shape, f"{path} culture {c} ({culture})")
        provenance = {"imported_from": str(path), "sha256": digest, "format": "lape", "culture_index": c,
                      "layout": used, "layout_chosen_by": "detected" if layout == "auto" else "--lape-layout",
                      "duplicates_dropped": duplicates}
        meta = new_meta(shape, "lape", selection="imported", culture=culture, provenance=provenance)
        out.append(NeuronSet(indices, meta))
    return out
