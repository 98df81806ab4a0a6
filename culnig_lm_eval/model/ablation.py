"""Apply neuron sets to a loaded model: fold the mask into the weights, or hook the outputs.

Both paths multiply chosen output channels of a projection by a factor (0 for suppress):

* ``fold``: scale the rows of the projection's weight (and bias) once, so a masked forward
  costs exactly what an unmasked one does.  A zeroed row gives an output of exactly 0.
* ``hooks``: a forward hook multiplies the projection's output by a per-channel scale vector.
  Used for weights that cannot be edited in place (quantised or offloaded layers) and as
  ``mode=hooks``.

``mode=auto`` folds wherever the weight is a plain floating-point ``nn.Linear`` weight and
hooks elsewhere.  The chosen rows of all sets are gathered per module into one index tensor
(their union), so nothing here loops over neurons.  :meth:`Ablation.remove` puts the saved
rows back bit for bit and drops the hooks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import model_shape, sites
from ..checks import finite
from ..neuron_set import NeuronSet

OPERATIONS = ("suppress", "enhance", "scale")
MODES = ("auto", "fold", "hooks")


def _number(factor, operation: str) -> float | None:
    if factor is None or (isinstance(factor, str) and factor.strip() == ""):
        return None
    # NaN or inf would turn every log-likelihood into NaN and the run into a coin flip
    return finite(factor, f"operation={operation} factor")


def operation_factor(operation: str, factor) -> float:
    """The multiplier an operation applies to its neurons: suppress 0, enhance > 1 (default 2), scale any."""
    if operation not in OPERATIONS:
        raise ValueError(f"operation={operation!r} is not one of {', '.join(OPERATIONS)}")
    value = _number(factor, operation)
    if operation == "suppress":
        if value not in (None, 0.0):
            raise ValueError("operation=suppress sets neurons to 0 and takes no factor; use operation=scale")
        return 0.0
    if operation == "enhance":
        value = 2.0 if value is None else value
        if not value > 1.0:
            raise ValueError(f"operation=enhance needs factor > 1 (got {value}); use operation=scale otherwise")
        return value
    if value is None:
        raise ValueError("operation=scale needs factor=<number>")
    return value


def _rows_by_module(model: nn.Module, neuron_sets: list[NeuronSet]) -> dict[nn.Module, torch.Tensor]:
    """Union of all sets -> {linear module: output rows to scale}; fused modules gather all slices."""
    shape = model_shape(model.config)
    kinds = [k for k in shape["widths"] if any(k in s.indices for s in neuron_sets)]
    for s in neuron_sets:
        s.check_model(shape)
    rows: dict[nn.Module, list[torch.Tensor]] = {}
    for site in sites(model, kinds):
        chosen = [s.indices[site.kind][site.layer] for s in neuron_sets if site.kind in s.indices]
        idx = torch.unique(torch.cat(chosen))
        if idx.numel():
            rows.setdefault(site.module, []).append(idx + site.start)
    return {m: torch.cat(r) for m, r in rows.items()}


def _foldable(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        isinstance(module, nn.Linear)
        and isinstance(weight, torch.Tensor)
        and weight.dtype.is_floating_point
        and weight.device.type != "meta"
        and not getattr(module, "_hf_hook", None)  # accelerate offload: weights are swapped in per call
    )


class Ablation:
    """The neuron sets applied to one model; ``remove()`` restores it.  Also a context manager."""

    def __init__(self, model: nn.Module, neuron_sets: list[NeuronSet], operation="suppress", factor=None, mode="auto"):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
        self.operation, self.mode = operation, mode
        self.factor = operation_factor(operation, factor)
        self.rows = _rows_by_module(model, neuron_sets)  # validates every set before any change
        if mode == "fold":
            stuck = [m for m in self.rows if not _foldable(m)]
            if stuck:
                raise ValueError(f"mode=fold cannot edit the weights of {stuck[0]}; use mode=hooks or auto")
        self._saved: list[tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._hooks = []
        self.folded = self.hooked = 0
        for module, rows in self.rows.items():
            if mode != "hooks" and _foldable(module):
                self._fold(module, rows)
            else:
                self._hook(module, rows)

    @torch.no_grad()
    def _fold(self, module: nn.Linear, rows: torch.Tensor):
        rows = rows.to(module.weight.device)
        bias = module.bias
        self._saved.append((module, rows, module.weight[rows].clone(), None if bias is None else bias[rows].clone()))
        for param in (module.weight, bias):
            if param is None:
                continue
            if self.factor == 0.0:  # assign, so 0 * inf or 0 * nan cannot survive
                param[rows] = 0
            else:
                param[rows] *= self.factor
        self.folded += 1

    def _hook(self, module: nn.Module, rows: torch.Tensor):
        scale = torch.ones(module.out_features, dtype=torch.float32)
        scale[rows] = self.factor
        cache = {}

        def multiply(_mod, _inputs, output):
            key = (output.device, output.dtype)
            if key not in cache:
                cache[key] = scale.to(device=output.device, dtype=output.dtype)
            return output * cache[key]

        self._hooks.append(module.register_forward_hook(multiply))
        self.hooked += 1

    @torch.no_grad()
    def remove(self):
        """Undo everything: saved weight rows go back exactly, hooks are removed.  Idempotent."""
        for module, rows, weight, bias in self._saved:
            module.weight[rows] = weight
            if bias is not None:
                module.bias[rows] = bias
        for handle in self._hooks:
            handle.remove()
        self._saved, self._hooks = [], []
        self.folded = self.hooked = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    @property
    def num_neurons(self) -> int:
        return sum(r.numel() for r in self.rows.values())

    def describe(self) -> dict:
        return {
            "operation": self.operation,
            "factor": self.factor,
            "mode": self.mode,
            "neurons": self.num_neurons,
            "modules_folded": self.folded,
            "modules_hooked": self.hooked,
        }
