"""Neuron sets: which neurons of which model, and where they came from.

This docstring is the one description of the neuron-set file format; everything else refers
to it.

File format ``culnig-neuron-set/1``: a ``.pt`` file read with ``torch.load(weights_only=True)``,
or its ``.json`` twin holding the same structure with lists instead of tensors::

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
        "provenance": {...},       # scores file hash, sample counts, parent sets, import layout ...
        "created": ISO-8601 str, "package_version": str, "code_version": {package, commit, modified},
      },
    }

An index ``i`` in ``indices[kind][layer]`` is output channel ``i`` of that layer's projection
(inside the right slice for fused projections).  Indices are integers (never booleans or
floats), unique per layer and inside the layer's width; ``num_layers`` and the widths are
positive integers.  A file holds only tensors, lists, dicts, numbers and strings: pickled
Python objects are refused without being run.  Set file names never contain ``+``, which
joins several files in ``neurons=a.pt+b.pt``.  Sets are validated when read and again
against the model they are applied to; every problem is a :class:`NeuronSetError` naming the
file.  Published CULNIG JSON and LAPE files are imported by :mod:`culnig_lm_eval.importers`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import torch

from ._io import atomic_write, code_version, current_umask, file_sha256, now_iso, package_version, signals_deferred
from .architectures import MODULE_KINDS

FORMAT = "culnig-neuron-set/1"
SUFFIXES = (".pt", ".json")
JOIN = "+"  # joins several set files in neurons=a.pt+b.pt, so never part of a set file's name
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's signed 64-bit range


class NeuronSetError(ValueError):
    """A neuron set file is missing, corrupt, inconsistent, or made for another model."""


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` as an int in 0 .. 2**63-1; booleans, floats and out-of-range numbers are refused."""
    try:
        if isinstance(seed, bool):
            raise TypeError
        value = operator.index(seed)
    except TypeError:
        raise ValueError(f"{what}={seed!r} is not an integer; give a whole number from 0 to {MAX_SEED}") from None
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{what}={value} is out of range; give a whole number from 0 to {MAX_SEED}")
    return value


def _refuse_join_in_name(path: Path):
    if JOIN in path.name:  # the name only: a '+' in a parent folder is the user's to keep
        raise NeuronSetError(
            f"cannot write {path}: '{JOIN}' joins several set files in neurons=a.pt{JOIN}b.pt, so a set file's "
            f"name must not contain it; choose a name without '{JOIN}'"
        )


@contextlib.contextmanager
def _naming_target(path: Path):
    """Re-raise an OSError (full disk, no permission) naming the file the user asked for."""
    try:
        yield
    except OSError as err:
        if err.errno is None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


def _unreadable_torch_file(path: Path, what: str, err: Exception, hint: str) -> str:
    """One line for a file ``torch.load(weights_only=True)`` refused; never advises weights_only=False."""
    text = str(err)
    pickled = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if pickled:
        return (
            f"{what} {path}: refused: the file holds pickled Python objects (loading it would call "
            f"{pickled.group(1)}), but neuron sets contain only tensors, lists, dicts, numbers and strings; "
            "rebuild it with culnig-score, or import a published CULNIG/LAPE file with culnig-sets convert"
        )
    text = text.split("WeightsUnpickler error:", 1)[-1]
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    reason = " ".join(x for x in sentences if "weights_only" not in x and "documentation" not in x)[:160]
    return f"{what} {path}: cannot be read, the file is corrupt or not {hint} ({type(err).__name__}: {reason})"


def load_torch_file(path: str | Path, what: str, hint: str):
    """``torch.load(path, weights_only=True)``; a refusal or corrupt file is one NeuronSetError line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise NeuronSetError(_unreadable_torch_file(Path(path), what, err, hint)) from None


def _check_model_numbers(model: dict, fail):
    """``num_layers`` and widths must be positive integers: a float or NaN would pass every range check."""
    layers = model.get("num_layers")
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers <= 0):
        fail(f"meta.model.num_layers={layers!r} must be a positive integer")
    widths = model.get("widths") or {}
    if not isinstance(widths, dict):
        fail("meta.model.widths must map module kinds to widths")
    bad = {k: w for k, w in widths.items() if isinstance(w, bool) or not isinstance(w, int) or w <= 0}
    if bad:
        fail(f"meta.model.widths {bad} must be positive integers")


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
        _check_model_numbers(self.meta.get("model") or {}, self._fail)
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

    @property
    def is_empty(self) -> bool:
        """True when the set holds no neuron: masking it changes nothing, which callers should say."""
        return len(self) == 0

    def neurons_sha256(self) -> str:
        """A hash of what masking this set does: the model shape and the sorted neuron indices,
        not the metadata.  Cached evaluations are keyed on it, so re-selecting the same neurons
        with new metadata (a stability entry, a new timestamp) does not re-run them."""
        h = hashlib.sha256()
        widths = (self.meta.get("model") or {}).get("widths") or {}
        h.update(json.dumps({k: widths.get(k) for k in sorted(self.indices)}, sort_keys=True).encode())
        for kind in sorted(self.indices):
            h.update(f"|{kind}:{len(self.indices[kind])}".encode())
            for layer, idx in enumerate(self.indices[kind]):
                h.update(f"/{layer}:".encode())
                h.update(torch.sort(idx.to(torch.int64)).values.numpy().tobytes())
        return h.hexdigest()

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
    def from_masks(cls, masks: dict[str, torch.Tensor], meta: dict, source="<memory>") -> NeuronSet:
        indices = {k: [row.nonzero().flatten() for row in m] for k, m in masks.items()}
        return cls(indices, meta, source)

    # -- set algebra ----------------------------------------------------------------------
    def _combine(self, others, op, name: str) -> NeuronSet:
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
        shared = lambda key: self.meta.get(key) if all(s.meta.get(key) == self.meta.get(key) for s in operands) else None
        meta = new_meta(
            model,
            method="set-algebra",
            culture=shared("culture"),
            selection=shared("selection"),
            tasks=sorted({t for s in operands for t in s.meta.get("tasks") or []}),
            provenance={"operation": name, "operands": [s.summary_meta() for s in operands]},
        )
        return NeuronSet.from_masks(masks, meta)

    def union(self, *others: NeuronSet) -> NeuronSet:
        return self._combine(others, torch.logical_or, "union")

    def intersect(self, *others: NeuronSet) -> NeuronSet:
        return self._combine(others, torch.logical_and, "intersect")

    def subtract(self, *others: NeuronSet) -> NeuronSet:
        """Neurons of this set that are in none of ``others``."""
        return self._combine(others, lambda x, y: x & ~y, "subtract")

    def random_like(self, seed: int) -> NeuronSet:
        """Same number of neurons in every (module kind, layer), drawn uniformly: the paper's baseline."""
        model = self.meta.get("model") or {}
        widths = model.get("widths") or {}
        missing = [k for k in self.indices if not widths.get(k)]
        if missing:
            self._fail(
                f"has no width for {', '.join(missing)} in its metadata, so a random set of the same "
                "shape cannot be drawn"
            )
        seed = check_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        indices = {
            kind: [torch.randperm(widths[kind], generator=gen)[: t.numel()] for t in per_layer]
            for kind, per_layer in self.indices.items()
        }
        meta = new_meta(
            model,
            method="random",
            selection=f"random-like:{self.meta.get('selection') or self.meta.get('method') or 'set'}",
            tasks=list(self.meta.get("tasks") or []),
            hyperparameters={"seed": seed},
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
                text = json.dumps(self.to_payload(as_lists=True), indent=1, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as err:  # ValueError: NaN or infinity in the metadata
                self._fail(f"metadata cannot be written as JSON ({err})")
            return lambda tmp: Path(tmp).write_text(text)
        payload = self.to_payload()
        return lambda tmp: torch.save(payload, tmp)

    def save(self, path: str | Path) -> Path:
        """Write atomically: ``.json`` gives the JSON twin, anything else a torch ``.pt`` file.

        A failure (full disk, unwritable folder) is an OSError naming ``path``; the previous file,
        if any, is left as it was and no temporary file remains.
        """
        path = Path(path)
        _refuse_join_in_name(path)
        write = self._writer(path.suffix)
        with _naming_target(path):
            return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> NeuronSet:
        path = Path(path)
        if not path.is_file():
            raise NeuronSetError(f"neuron set {path}: no such file")
        hint = (
            "a neuron set; neuron sets are written by culnig-score or culnig-sets, and published CULNIG/LAPE "
            "files must first be imported with `culnig-sets convert`"
        )
        if path.suffix == ".json":
            try:
                payload = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise NeuronSetError(
                    f"neuron set {path}: cannot be read, the file is corrupt or not {hint} "
                    f"({type(err).__name__}: {' '.join(str(err).split())[:160]})"
                ) from None
        else:
            payload = load_torch_file(path, "neuron set", hint)
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
    """Save several sets as a unit: all of them, or none.

    Each set is written to a temporary file next to its target; the files are renamed into
    place only once every one of them was written, with SIGINT/SIGTERM held during the renames
    so an interruption cannot leave some new and some old.  A failure or interruption before
    that leaves the previous files untouched and no temporary file; an OSError names the target.
    """
    staged: list[tuple[str, Path]] = []
    try:
        targets = [Path(path) for _, path in items]
        for path in targets:
            _refuse_join_in_name(path)
        writers = [(neuron_set._writer(path.suffix), path) for (neuron_set, _), path in zip(items, targets, strict=True)]
        for write, path in writers:
            with _naming_target(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                os.close(fd)
                staged.append((tmp, path))
                write(tmp)
                os.chmod(tmp, 0o666 & ~current_umask())
        with signals_deferred():
            for tmp, path in staged:
                with _naming_target(path):
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
        "code_version": code_version(),
    }
    meta.update(extra)
    return meta


def load_sets(spec: str) -> list[NeuronSet]:
    """``a.pt+b.pt`` -> the sets, in order (the harness model_args join files with ``+``)."""
    paths = [p.strip() for p in str(spec).split(JOIN) if p.strip()]
    if not paths:
        raise NeuronSetError("neurons= names no file")
    whole = Path(str(spec).strip())
    missing = [p for p in paths if not Path(p).is_file()]
    if len(paths) > 1 and missing and whole.is_file():
        raise NeuronSetError(
            f"neurons={spec}: '{JOIN}' joins several set files, so this names {' and '.join(map(repr, paths))}, "
            f"and {missing[0]!r} does not exist; the file {whole} does: rename {whole.name} to a name without '{JOIN}'"
        )
    return [NeuronSet.load(p) for p in paths]
