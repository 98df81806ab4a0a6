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

import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import torch

from ._io import _umask, atomic_write, file_sha256, now_iso, package_version  # noqa: F401 (re-exported)
from .architectures import MODULE_KINDS

FORMAT = "culnig-neuron-set/1"
SUFFIXES = (".pt", ".json")


class NeuronSetError(ValueError):
    """A neuron set file is missing, corrupt, inconsistent, or made for another model."""


def _as_index(value, where: str, fail) -> torch.Tensor:
    """One layer's indices -> 1-D int64 tensor; floats, bools and nested lists are refused."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.dtype.is_floating_point or value.dtype.is_complex:
            fail(f"{where} holds {value.dtype} values; neuron indices must be integers")
        if value.dim() > 1:
            fail(f"{where} is a {value.dim()}-D tensor; neuron indices must be a 1-D list per layer")
        return value.to(torch.long).flatten()
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            fail(f"{where} must be a list of integers")
        return torch.tensor(value, dtype=torch.long)
    fail(f"{where} must be a tensor or a list of integers, not {type(value).__name__}")


@dataclass
class NeuronSet:
    """Neuron indices per module kind and layer, plus metadata (see the module docstring)."""

    indices: dict[str, list[torch.Tensor]]
    meta: dict = field(default_factory=dict)
    source: str = "<memory>"  # file it came from, for error messages

    def __post_init__(self):
        if not isinstance(self.indices, dict):
            self._fail("'indices' must map module kinds to per-layer index lists")
        if not isinstance(self.meta, dict):
            self._fail("'meta' must be a dict")
        if not isinstance(self.meta.get("model", {}) or {}, dict):
            self._fail("'meta.model' must be a dict")
        clean = {}
        for kind, per_layer in self.indices.items():
            if kind not in MODULE_KINDS:
                self._fail(f"unknown module kind {kind!r}; known kinds: {', '.join(MODULE_KINDS)}")
            if not isinstance(per_layer, (list, tuple)):
                self._fail(f"{kind} must be a list with one index list per layer")
            clean[kind] = [_as_index(t, f"{kind} layer {i}", self._fail) for i, t in enumerate(per_layer)]
        self.indices = clean
        self.validate()
        self.indices = {k: [t.sort().values for t in v] for k, v in clean.items()}

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
        made_for = mine.get("name") or mine.get("model_type") or "?"
        if mine.get("num_layers") is not None and mine["num_layers"] != shape["num_layers"]:
            self._fail(
                f"was made for a model with {mine['num_layers']} layers ({made_for}), "
                f"but this model ({shape.get('name') or shape.get('model_type')}) has {shape['num_layers']}"
            )
        for kind in self.indices:
            theirs, ours = (mine.get("widths") or {}).get(kind), shape["widths"][kind]
            if theirs is not None and theirs != ours:
                self._fail(
                    f"was made for a model whose {kind} width is {theirs} ({made_for}), "
                    f"but this model's is {ours}"
                )
        self.validate(shape)

    # -- numbers ------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return max((len(v) for v in self.indices.values()), default=0)

    def counts(self) -> dict[str, int]:
        """Neurons per module kind."""
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
        return {
            kind: n / (widths[kind] * layers)
            for kind, n in self.counts().items()
            if widths.get(kind) and layers
        }

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
    def _combine(self, others, op, name: str) -> "NeuronSet":
        operands = [self, *others]
        kinds = [k for k in MODULE_KINDS if any(k in s.indices for s in operands)]
        model = dict(self.meta.get("model") or {})
        widths: dict[str, int] = {}
        for s in operands:
            m = s.meta.get("model") or {}
            if m.get("num_layers") is None or any(not (m.get("widths") or {}).get(k) for k in s.indices):
                s._fail(f"has no model shape (num_layers, widths) in its metadata; it cannot take part in a {name}")
            clash = [k for k, w in m["widths"].items() if widths.setdefault(k, w) != w]
            types = {t for t in (m.get("model_type"), model.get("model_type")) if t}
            if len(types) > 1 or m["num_layers"] != model["num_layers"] or clash:
                raise NeuronSetError(
                    f"cannot {name} {self.source} and {s.source}: they were made for different models "
                    f"({model.get('name') or model.get('model_type')}: {model['num_layers']} layers, "
                    f"widths {model.get('widths')} vs {m.get('name') or m.get('model_type')}: "
                    f"{m['num_layers']} layers, widths {m['widths']})"
                )
        model["widths"] = widths
        layers = model["num_layers"]
        none = {k: torch.zeros(layers, widths[k], dtype=torch.bool) for k in kinds}
        all_masks = [{**none, **s.masks(widths)} for s in operands]
        masks = {k: reduce(op, [m[k] for m in all_masks]) for k in kinds}
        shared = lambda key: self.meta.get(key) if all(s.meta.get(key) == self.meta.get(key) for s in operands) else None  # noqa: E731
        meta = new_meta(
            model,
            method="set-algebra",
            culture=shared("culture"),
            selection=shared("selection"),
            tasks=sorted({t for s in operands for t in s.meta.get("tasks") or []}),
            provenance={"operation": name, "operands": [s.summary_meta() for s in operands]},
        )
        return NeuronSet.from_masks(masks, meta)

    def union(self, *others: "NeuronSet") -> "NeuronSet":
        return self._combine(others, torch.logical_or, "union")

    def intersect(self, *others: "NeuronSet") -> "NeuronSet":
        return self._combine(others, torch.logical_and, "intersect")

    def subtract(self, *others: "NeuronSet") -> "NeuronSet":
        """Neurons of this set that are in none of ``others``."""
        return self._combine(others, lambda x, y: x & ~y, "subtract")

    def random_like(self, seed: int) -> "NeuronSet":
        """Same number of neurons in every (module kind, layer), drawn uniformly: the paper's baseline."""
        model = self.meta.get("model") or {}
        widths = model.get("widths") or {}
        missing = [k for k in self.indices if not widths.get(k)]
        if missing:
            self._fail(
                f"has no width for {', '.join(missing)} in its metadata, so a random set of the same "
                "shape cannot be drawn"
            )
        gen = torch.Generator().manual_seed(int(seed))
        indices = {
            kind: [torch.randperm(widths[kind], generator=gen)[: t.numel()] for t in per_layer]
            for kind, per_layer in self.indices.items()
        }
        meta = new_meta(
            model,
            method="random",
            selection=f"random-like:{self.meta.get('selection') or self.meta.get('method') or 'set'}",
            tasks=list(self.meta.get("tasks") or []),
            hyperparameters={"seed": int(seed)},
            provenance={"size_matched_to": self.summary_meta()},
        )
        return NeuronSet(indices, meta)

    def summary_meta(self) -> dict:
        keep = ("method", "selection", "culture", "tasks", "created")
        out = {"source": self.source, **{k: self.meta.get(k) for k in keep if k in self.meta}}
        if Path(self.source).is_file():
            out["sha256"] = file_sha256(self.source)
        out["counts"] = self.counts()
        return out

    # -- files --------------------------------------------------------------------------
    def to_payload(self, as_lists: bool = False) -> dict:
        ind = {k: [t.tolist() if as_lists else t.clone() for t in v] for k, v in self.indices.items()}
        return {"format": FORMAT, "indices": ind, "meta": self.meta}

    def _writer(self, suffix: str):
        """Validate, then return ``write(tmp_path)`` for the format picked by ``suffix``."""
        self.validate()
        if suffix == ".json":
            try:
                text = json.dumps(self.to_payload(as_lists=True), indent=1, sort_keys=True)
            except TypeError as err:
                self._fail(f"metadata cannot be written as JSON ({err})")
            return lambda tmp: Path(tmp).write_text(text)
        payload = self.to_payload()
        return lambda tmp: torch.save(payload, tmp)

    def save(self, path: str | Path) -> Path:
        """Write atomically: ``.json`` gives the JSON twin, anything else a torch ``.pt`` file."""
        path = Path(path)
        return atomic_write(path, self._writer(path.suffix))

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
            text = str(err)
            if "WeightsUnpickler error:" in text:  # keep torch's one-line reason, drop its advice
                text = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].split(" Please use")[0]
            if "Unsupported global" in text:
                raise NeuronSetError(
                    f"neuron set {path}: refused, the file holds pickled Python objects ({text[:160]}) that "
                    "torch.load(weights_only=True) will not run. Neuron sets hold only tensors, lists, dicts, "
                    "numbers and strings; rebuild it with culnig-score or culnig-sets."
                ) from None
            raise NeuronSetError(
                f"neuron set {path}: cannot be read, the file is corrupt or not a neuron set "
                f"({type(err).__name__}: {' '.join(text.split())[:160]}). Neuron sets are written by culnig-score "
                "or culnig-sets; published CULNIG/LAPE files must first be imported with `culnig-sets convert`."
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            what = type(payload).__name__ if not isinstance(payload, dict) else f"dict without format={FORMAT!r}"
            raise NeuronSetError(
                f"neuron set {path}: not a {FORMAT} file (found a {what}). If it is a published "
                "CULNIG JSON or LAPE .pt file, import it with `culnig-sets convert`."
            )
        indices, meta = payload.get("indices"), payload.get("meta", {})
        try:
            return cls(indices, meta, source=str(path))
        except NeuronSetError:
            raise
        except Exception as err:
            raise NeuronSetError(f"neuron set {path}: malformed indices ({err})") from None


def save_many(items: list[tuple[NeuronSet, str | Path]]) -> list[Path]:
    """Save several sets together: each is written to a temporary file next to its target, and
    the files are renamed into place only once every one of them was written (a failure leaves
    none of them and no temporary file)."""
    staged: list[tuple[str, Path]] = []
    try:
        writers = [(neuron_set._writer(Path(path).suffix), Path(path)) for neuron_set, path in items]
        for write, path in writers:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            staged.append((tmp, path))
            write(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
        raise
    return [path for _, path in staged]


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
    paths = [p.strip() for p in str(spec).split("+") if p.strip()]
    if not paths:
        raise NeuronSetError("neurons= names no file")
    return [NeuronSet.load(p) for p in paths]
