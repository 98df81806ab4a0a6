"""A masked checkpoint: the model with neuron sets folded into its weights, for any engine.

The sets are folded exactly as ``masked-hf`` folds them (:class:`~.ablation.Ablation`,
``mode=fold``), then the model is saved with ``save_pretrained`` (safetensors, config) beside
its tokenizer, and ``culnig_export.json`` names the sets (path, sha256, counts).  Stock ``hf``,
vLLM or SGLang then evaluate the masked model at their own speed.  Suppression (rows set to 0)
is exact in any dtype; ``enhance``/``scale`` are exported only for a power-of-two factor, the one
case where multiplying a weight is exact in every floating-point format (otherwise the saved
weights would carry a rounding the hook-based ``masked-hf`` does not make).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .._io import atomic_folder, check_output_folder, file_sha256, now_iso, package_version, write_text
from ..neuron_set import load_sets
from .ablation import Ablation, operation_factor
from .lm import load_lm, parse_model_args

MARKER = "culnig_export.json"
FORMAT = "culnig-masked-model/1"
# what an export writes (an export made before output markers existed is recognised by these)
EXPORT_FILES = (MARKER, "*.safetensors", "*.json", "*.jinja", "*.model", "*.txt")


def exact_factor(operation: str, factor) -> float:
    """The multiplier of ``operation``; refuses one that cannot be folded exactly."""
    value = operation_factor(operation, factor)
    if value != 0.0 and math.frexp(abs(value))[0] != 0.5:
        raise ValueError(f"operation={operation} factor={value:g} cannot be folded into the weights exactly "
                         "(only 0 and powers of two can); export with a power-of-two factor, or evaluate with "
                         "lm_eval --model masked-hf,...,mode=hooks instead")
    return value


def export_masked_model(model_args: str, neurons: str, out: str | Path, operation: str = "suppress",
                        factor=None) -> Path:
    """Fold ``neurons`` (``a.pt+b.pt``) into the model of ``model_args`` and save it to ``out``."""
    parse_model_args(model_args)
    value = exact_factor(operation, factor)  # every check before the model loads
    neuron_sets = load_sets(neurons)
    out = check_output_folder(out, "--out", legacy=EXPORT_FILES)
    lm = load_lm(model_args, batch_size=1)
    ablation = Ablation(lm.model, neuron_sets, operation, factor, mode="fold")  # checks every set first
    record = {
        "format": FORMAT,
        "model_args": model_args,
        "operation": operation,
        "factor": value,
        "neurons": ablation.num_neurons,
        "neuron_sets": [{"path": s.source, "sha256": file_sha256(s.source), "counts": s.counts()}
                        for s in neuron_sets],
        "created": now_iso(),
        "package_version": package_version(),
    }
    with atomic_folder(out, "--out", legacy=EXPORT_FILES) as staging:
        lm.model.save_pretrained(staging, safe_serialization=True)
        lm.tokenizer.save_pretrained(staging)
        write_text(staging / MARKER, json.dumps(record, indent=1))
    ablation.remove()
    return out
