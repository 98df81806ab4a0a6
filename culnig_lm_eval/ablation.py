"""Apply neuron sets to a loaded model: fold the mask into the weights, or hook the outputs.

Both paths multiply chosen output channels of a projection by a factor (0 for suppress):

* ``fold``: scale the rows of the projection's weight (and bias) once, so a masked forward
  costs exactly what an unmasked one does.  A zeroed row gives an output of exactly 0.
* ``hooks``: a forward hook multiplies the projection's output by a per-channel scale vector.
  Used for weights that cannot be edited in place (quantised layers) and as ``mode=hooks``.
"""

from __future__ import annotations

import torch
from torch import nn

from .architectures import model_shape, sites
from .neuron_set import NeuronSet

OPERATIONS = ("suppress", "enhance", "scale")


def operation_factor(operation: str, factor) -> float:
    if operation not in OPERATIONS:
        raise ValueError(f"operation={operation!r} is not one of {', '.join(OPERATIONS)}")
    if operation == "suppress":
        if factor not in (None, "", 0, 0.0):
            raise ValueError("operation=suppress sets neurons to 0 and takes no factor; use operation=scale")
        return 0.0
    if operation == "enhance":
        value = 2.0 if factor in (None, "") else float(factor)
        if value <= 1.0:
            raise ValueError(f"operation=enhance needs factor > 1 (got {value}); use operation=scale otherwise")
        return value
    if factor in (None, ""):
        raise ValueError("operation=scale needs factor=<number>")
    return float(factor)


def _rows_by_module(model: nn.Module, neuron_sets: list[NeuronSet]) -> dict[nn.Linear, torch.Tensor]:
    """Union of all sets -> {linear module: output rows to scale}; fused modules gather all slices."""
    shape = model_shape(model.config)
    kinds = sorted({k for s in neuron_sets for k in s.indices})
    for s in neuron_sets:
        s.check_model(shape)
    rows: dict[nn.Linear, list[torch.Tensor]] = {}
    for site in sites(model, kinds):
        chosen = [s.indices[site.kind][site.layer] for s in neuron_sets if site.kind in s.indices]
        idx = torch.unique(torch.cat(chosen)) if chosen else torch.empty(0, dtype=torch.long)
        if idx.numel():
            rows.setdefault(site.module, []).append(idx + site.start)
    return {m: torch.cat(r) for m, r in rows.items()}


def _foldable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and module.weight.dtype.is_floating_point and module.weight.device.type != "meta"


class Ablation:
    """The neuron sets applied to one model; ``remove()`` restores it."""

    def __init__(self, model: nn.Module, neuron_sets: list[NeuronSet], operation="suppress", factor=None, mode="auto"):
        if mode not in ("auto", "fold", "hooks"):
            raise ValueError(f"mode={mode!r} is not one of auto, fold, hooks")
        self.factor = operation_factor(operation, factor)
        self.rows = _rows_by_module(model, neuron_sets)
        self._saved: list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = []
        self._hooks = []
        for module, rows in self.rows.items():
            if mode == "fold" and not _foldable(module):
                raise ValueError(f"mode=fold cannot edit the weights of {module}; use mode=hooks")
            if mode != "hooks" and _foldable(module):
                self._fold(module, rows)
            else:
                self._hook(module, rows)

    @torch.no_grad()
    def _fold(self, module: nn.Linear, rows: torch.Tensor):
        rows = rows.to(module.weight.device)
        bias = module.bias
        self._saved.append((module, module.weight[rows].clone(), None if bias is None else bias[rows].clone()))
        module.weight[rows] *= self.factor
        if bias is not None:
            bias[rows] *= self.factor
        if self.factor == 0.0:  # 0 * inf or 0 * nan would not be 0
            module.weight[rows] = 0
            if bias is not None:
                bias[rows] = 0

    def _hook(self, module: nn.Linear, rows: torch.Tensor):
        scale = torch.ones(module.out_features, dtype=torch.float32)
        scale[rows] = self.factor
        cache = {}

        def multiply(_mod, _inputs, output):
            key = (output.device, output.dtype)
            if key not in cache:
                cache[key] = scale.to(device=output.device, dtype=output.dtype)
            return output * cache[key]

        self._hooks.append(module.register_forward_hook(multiply))

    @torch.no_grad()
    def remove(self):
        for module, weight, bias in self._saved:
            rows = self.rows[module].to(module.weight.device)
            module.weight[rows] = weight
            if bias is not None:
                module.bias[rows] = bias
        for handle in self._hooks:
            handle.remove()
        self._saved, self._hooks = [], []

    @property
    def num_neurons(self) -> int:
        return sum(r.numel() for r in self.rows.values())
