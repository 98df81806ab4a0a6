"""``masked-hf``: the stock ``hf`` model with culture neurons ablated (see :class:`MaskedHFLM`)."""

from __future__ import annotations

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from .ablation import MODES, Ablation, operation_factor
from .embedded import hf_kwargs
from .neuron_set import file_sha256, load_sets


@register_model("masked-hf")
class MaskedHFLM(HFLM):
    def __init__(
        self,
        pretrained,
        neurons: str | None = None,
        operation: str = "suppress",
        factor: float | None = None,
        mode: str = "auto",
        **kwargs,
    ):
        """HFLM with neuron sets ablated: ``--model masked-hf --model_args pretrained=...,neurons=a.pt+b.pt``.

        Args (besides everything ``hf`` takes):
            pretrained: hub id, local path, or an embedded alias (``smollm2-135m``, ``gemma-3-270m``).
            neurons: one or more neuron-set files joined with ``+``; their union is ablated.
                Without it the model is exactly ``hf``.
            operation: ``suppress`` (set to 0), ``enhance`` (multiply by ``factor`` > 1, default 2),
                or ``scale`` (multiply by ``factor``).
            mode: ``auto`` (fold into weights where exact, hooks elsewhere), ``fold`` or ``hooks``.

        A neuron-set file (``.pt``, read with ``torch.load(weights_only=True)``, or its ``.json``
        twin) is a dict::

            {
              "format": "culnig-neuron-set/1",
              "indices": {kind: [LongTensor of neuron indices, one per layer]},
              "meta": {"model": {"name", "model_type", "num_layers", "widths": {kind: int}},
                       "method", "selection", "culture", "tasks", "hyperparameters",
                       "provenance", "created", "package_version"},
            }

        where ``kind`` is ``mlp_gate``, ``mlp_up``, ``attn_q``, ``attn_k`` or ``attn_v`` and an index
        names an output channel of that projection (see ``culnig_lm_eval.neuron_set``).  The files
        are read and the arguments checked before the model loads; each set is then checked against
        the loaded model (layer count, widths, index range) before anything is changed.  Folding
        scales the chosen rows of ``gate_proj``/``up_proj``/``q_proj``/``k_proj``/``v_proj`` (or
        their slice of a fused projection) once, so masked evaluation costs nothing extra.
        """
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
        operation_factor(operation, factor)  # bad arguments fail before the model loads
        self.neuron_sets = load_sets(neurons) if neurons else []
        super().__init__(**hf_kwargs({"pretrained": pretrained, **kwargs}))
        self.ablation = (
            Ablation(self.model, self.neuron_sets, operation, factor, mode) if self.neuron_sets else None
        )

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["culnig_ablation"] = {
            **(self.ablation.describe() if self.ablation else {"neurons": 0}),
            "neuron_sets": [
                {"path": s.source, "sha256": file_sha256(s.source), "counts": s.counts()} for s in self.neuron_sets
            ],
        }
        return info
