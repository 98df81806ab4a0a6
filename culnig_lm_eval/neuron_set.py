"""Neuron sets: which neurons of which model, and where they came from.

File format (``.pt``, read with ``torch.load(weights_only=True)``; a ``.json`` twin holds
the same structure with lists instead of tensors)::

    {
      "format": "culnig-neuron-set/1",
      "indices": {                        # module kind -> one sorted int64 tensor per layer
        "mlp_gate": [tensor([...]), ...],   # len == model num_layers
        "attn_q":   [...],                  # kinds: see culnig_lm_eval.architectures.MODULE_KINDS
      },
      "meta": {
        "model": {"name": str, "model_type": str, "num_layers": int,
                  "widths": {"mlp_gate": int, ...}},
        "method": str,             # "culnig", "lape", "random", "imported", "set-algebra"
        "selection": str | None,   # e.g. "culnig-paper", "culnig-paper+general-exclusion"
        "culture": str | None,     # None for culture-general sets
        "tasks": [str, ...],
        "hyperparameters": {...},
        "provenance": {...},       # scores file hash, sample counts, parent sets ...
        "created": ISO-8601 str, "package_version": str,
      },
    }

An index ``i`` in ``indices[kind][layer]`` is output channel ``i`` of that layer's projection
(inside the right slice for fused projections).  Sets are validated when read and again
against the model they are applied to; every problem is a :class:`NeuronSetError` naming
the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .architectures import MODULE_KINDS

FORMAT = "culnig-neuron-set/1"


class NeuronSetError(ValueError):
    """A neuron set file is missing, corrupt, inconsistent, or made for another model."""


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("culnig-lm-eval")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename into place: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class NeuronSet:
    indices: dict[str, list[torch.Tensor]]
    meta: dict = field(default_factory=dict)
    source: str = "<memory>"  # file it came from, for error messages

    def __post_init__(self):
        self.indices = {k: [torch.as_tensor(t, dtype=torch.long).flatten() for t in v] for k, v in self.indices.items()}
        self.validate()

    # -- checks -------------------------------------------------------------------------
    def _fail(self, what: str):
        raise NeuronSetError(f"neuron set {self.source}: {what}")

    def validate(self, shape: dict | None = None):
        """Internal consistency, and against ``shape`` (see architectures.model_shape) if given."""
        shape = shape or self.meta.get("model") or {}
        num_layers = shape.get("num_layers")
        widths = shape.get("widths") or {}
        layer_counts = set()
        for kind, per_layer in self.indices.items():
            if kind not in MODULE_KINDS:
                self._fail(f"unknown module kind {kind!r}; known kinds: {', '.join(MODULE_KINDS)}")
            layer_counts.add(len(per_layer))
            if num_layers is not None and len(per_layer) != num_layers:
                self._fail(
                    f"{kind} has {len(per_layer)} layers but the model has {num_layers}: "
                    "this set was made for another model"
                )
            width = widths.get(kind)
            for layer, idx in enumerate(per_layer):
                if idx.numel() == 0:
                    continue
                if int(idx.min()) < 0:
                    self._fail(f"{kind} layer {layer} has a negative index ({int(idx.min())})")
                if width is not None and int(idx.max()) >= width:
                    self._fail(
                        f"{kind} layer {layer} has index {int(idx.max())} but the layer has only {width} "
                        "neurons: this set was made for another model"
                    )
                if torch.unique(idx).numel() != idx.numel():
                    self._fail(f"{kind} layer {layer} lists the same neuron more than once")
        if len(layer_counts) > 1:
            self._fail(f"module kinds disagree on the number of layers: {sorted(layer_counts)}")

    def check_model(self, shape: dict):
        """Raise unless this set fits a model of ``shape`` (architectures.model_shape)."""
        mine = self.meta.get("model") or {}
        for key in ("num_layers",):
            if mine.get(key) is not None and mine[key] != shape[key]:
                self._fail(
                    f"was made for a model with {key}={mine[key]} ({mine.get('name', '?')}), "
                    f"but this model has {key}={shape[key]}"
                )
        for kind in self.indices:
            theirs, ours = (mine.get("widths") or {}).get(kind), shape["widths"][kind]
            if theirs is not None and theirs != ours:
                self._fail(
                    f"was made for a model whose {kind} width is {theirs} ({mine.get('name', '?')}), "
                    f"but this model's is {ours}"
                )
        self.validate(shape)

    # -- numbers ------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return max((len(v) for v in self.indices.values()), default=0)

    def counts(self) -> dict[str, int]:
        return {k: int(sum(t.numel() for t in v)) for k, v in self.indices.items()}

    def __len__(self) -> int:
        return sum(self.counts().values())

    def per_layer(self) -> dict[str, list[int]]:
        """Histogram: neurons per layer for each module kind."""
        return {k: [t.numel() for t in v] for k, v in self.indices.items()}

    def fraction(self) -> dict[str, float]:
        """Share of all neurons of each module kind (needs the model shape in the metadata)."""
        model = self.meta.get("model") or {}
        widths, layers = model.get("widths") or {}, model.get("num_layers")
        out = {}
        for kind, n in self.counts().items():
            if widths.get(kind) and layers:
                out[kind] = n / (widths[kind] * layers)
        return out

    def masks(self, widths: dict[str, int]) -> dict[str, torch.Tensor]:
        """Boolean [layers, width] tensor per module kind."""
        out = {}
        for kind, per_layer in self.indices.items():
            mask = torch.zeros(len(per_layer), widths[kind], dtype=torch.bool)
            for layer, idx in enumerate(per_layer):
                mask[layer, idx] = True
            out[kind] = mask
        return out

    @classmethod
    def from_masks(cls, masks: dict[str, torch.Tensor], meta: dict, source="<memory>") -> "NeuronSet":
        indices = {k: [row.nonzero().flatten() for row in m] for k, m in masks.items()}
        return cls(indices, meta, source)

    # -- set algebra ----------------------------------------------------------------------
    def _combine(self, other: "NeuronSet", op, name: str) -> "NeuronSet":
        a, b = self.meta.get("model") or {}, other.meta.get("model") or {}
        if a.get("num_layers") != b.get("num_layers") or a.get("widths") != b.get("widths"):
            raise NeuronSetError(
                f"cannot {name} {self.source} and {other.source}: they were made for different models "
                f"({a.get('name')} vs {b.get('name')})"
            )
        widths = a["widths"]
        kinds = sorted(set(self.indices) | set(other.indices))
        empty = lambda: torch.zeros(a["num_layers"], 1, dtype=torch.bool)  # noqa: E731
        ma, mb = self.masks(widths), other.masks(widths)
        masks = {k: op(ma.get(k, empty()).expand(a["num_layers"], widths[k]),
                       mb.get(k, empty()).expand(a["num_layers"], widths[k])) for k in kinds}
        meta = {
            **new_meta(a, method="set-algebra"),
            "provenance": {"operation": name, "operands": [self.summary_meta(), other.summary_meta()]},
        }
        return NeuronSet.from_masks(masks, meta)

    def union(self, other):
        return self._combine(other, torch.logical_or, "union")

    def intersect(self, other):
        return self._combine(other, torch.logical_and, "intersect")

    def subtract(self, other):
        return self._combine(other, lambda x, y: x & ~y, "subtract")

    def random_like(self, seed: int) -> "NeuronSet":
        """Same number of neurons in every (module kind, layer), drawn uniformly: the paper's baseline."""
        model = self.meta.get("model") or {}
        if not model.get("widths"):
            self._fail("has no model shape in its metadata, so a random set of the same shape cannot be drawn")
        gen = torch.Generator().manual_seed(seed)
        indices = {
            kind: [torch.randperm(model["widths"][kind], generator=gen)[: t.numel()].sort().values for t in per_layer]
            for kind, per_layer in self.indices.items()
        }
        meta = {
            **new_meta(model, method="random", culture=None),
            "hyperparameters": {"seed": seed},
            "provenance": {"size_matched_to": self.summary_meta()},
        }
        return NeuronSet(indices, meta)

    def summary_meta(self) -> dict:
        keep = ("method", "selection", "culture", "tasks", "created")
        return {"source": self.source, **{k: self.meta.get(k) for k in keep if k in self.meta}}

    # -- files --------------------------------------------------------------------------
    def to_payload(self, as_lists: bool = False) -> dict:
        ind = {k: [t.tolist() if as_lists else t.clone() for t in v] for k, v in self.indices.items()}
        return {"format": FORMAT, "indices": ind, "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix == ".json":
            text = json.dumps(self.to_payload(as_lists=True), indent=1, sort_keys=True)
            return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        return atomic_write(path, lambda tmp: torch.save(self.to_payload(), tmp))

    @classmethod
    def load(cls, path: str | Path) -> "NeuronSet":
        path = Path(path)
        if not path.is_file():
            raise NeuronSetError(f"neuron set {path}: no such file")
        try:
            if path.suffix == ".json":
                payload = json.loads(path.read_text())
            else:
                payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise NeuronSetError(
                f"neuron set {path}: cannot be read as a neuron set ({type(err).__name__}: {str(err)[:200]}). "
                "Neuron sets are written by culnig-score or culnig-sets; published CULNIG/LAPE files "
                "must first be imported with `culnig-sets convert`."
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise NeuronSetError(
                f"neuron set {path}: not a {FORMAT} file. If it is a published CULNIG JSON or a "
                "LAPE .pt file, import it with `culnig-sets convert`."
            )
        indices, meta = payload.get("indices"), payload.get("meta", {})
        if not isinstance(indices, dict) or not all(isinstance(v, list) for v in indices.values()):
            raise NeuronSetError(f"neuron set {path}: 'indices' must map module kinds to per-layer index lists")
        try:
            return cls(indices, meta, source=str(path))
        except NeuronSetError:
            raise
        except Exception as err:
            raise NeuronSetError(f"neuron set {path}: malformed indices ({err})") from None


def new_meta(model: dict, method: str, **extra) -> dict:
    meta = {
        "model": model,
        "method": method,
        "selection": None,
        "culture": None,
        "tasks": [],
        "hyperparameters": {},
        "provenance": {},
        "created": now_iso(),
        "package_version": package_version(),
    }
    meta.update(extra)
    return meta


def load_sets(spec: str) -> list[NeuronSet]:
    """``a.pt+b.pt`` -> the sets, in order (the harness model_args join files with ``+``)."""
    paths = [p for p in spec.split("+") if p]
    if not paths:
        raise NeuronSetError("neurons= names no file")
    return [NeuronSet.load(p) for p in paths]
