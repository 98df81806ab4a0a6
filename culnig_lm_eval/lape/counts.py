"""LAPE activation counts: how often each MLP neuron fires on a corpus.

For every MLP neuron (output row ``j`` of the gate projection of decoder layer ``l``, found
through :func:`culnig_lm_eval.architectures.sites`, so fused Phi-3 ``gate_up_proj`` is the gate
slice) LAPE counts the real tokens on which the neuron's activation ``act(gate_proj(x))`` is
positive.  For the activations in :data:`SUPPORTED_ACTIVATIONS` ``act(x) > 0`` iff ``x > 0``,
so the count is taken on the gate pre-activation, ``gate_proj(x)[..., j] > 0``.  Unlike some
reference code this counts the *neurons* (intermediate channels, not the d_model channels of
the MLP output), keeps int64 counts (no overflow), and leaves padding out of the counts and
out of ``n``.

File format ``culnig-lape-counts/1`` (one corpus): a ``.pt`` file read with
``torch.load(weights_only=True)``::

    {
      "format": "culnig-lape-counts/1",
      "over_zero": int64 tensor [num_layers, mlp_gate width],  # 0 <= over_zero <= n
      "n": int,                                                  # counted (real) tokens
      "meta": {"model": model_shape dict, "corpus": str, "source": {...}, "row_length": int,
               "rows": int, "created": ISO-8601 str, "package_version": str, ...},
    }

Multi-process runs (``accelerate launch``): each process calls :func:`record_counts` on its
own shard of rows and then :func:`data_parallel_reduce` on the result, which sums
``over_zero`` and ``n`` over the processes (``record_counts`` never communicates by itself).
Count files of shards recorded separately are merged with ``a + b``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._io import atomic_write, now_iso, package_version
from ..architectures import model_shape, sites, text_config
from ..model.lm import parameter_device

FORMAT = "culnig-lape-counts/1"
_FORMAT_PREFIX = "culnig-lape-counts/"

# act(x) > 0 iff x > 0, so the sign of the gate pre-activation decides.
SUPPORTED_ACTIVATIONS = {"silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python"}

# Rows of one gate output compared per step: the 0/1 float buffer stays <= 64 MiB, and a
# float32 sum of at most 2**24 zeros and ones is exact.
_CHUNK_ELEMENTS = 1 << 24
_BATCH_KEYS = {"input_ids", "attention_mask", "count_mask", "position_ids"}


class CountsError(ValueError):
    """A count file is missing, corrupt, inconsistent, or made for another model."""


def new_meta(shape: dict, corpus: str, *, source: dict | None = None, row_length: int | None = None,
             rows: int | None = None, **extra) -> dict:
    """The ``meta`` dict of a fresh count record (``created`` and ``package_version`` filled in)."""
    return {"model": shape, "corpus": corpus, "source": source or {}, "row_length": row_length, "rows": rows,
            **extra, "created": now_iso(), "package_version": package_version()}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class ActivationCounts:
    """``over_zero[l, j]``: tokens (out of ``n``) on which gate neuron ``j`` of layer ``l`` was > 0."""

    over_zero: torch.Tensor
    n: int
    meta: dict = field(default_factory=dict)
    source: str = "<memory>"

    def _fail(self, what: str):
        raise CountsError(f"lape counts {self.source}: {what}")

    def __post_init__(self):
        oz = self.over_zero
        if not isinstance(oz, torch.Tensor):
            self._fail(f"over_zero must be a tensor, not {type(oz).__name__}")
        if oz.dtype != torch.int64:
            self._fail(f"over_zero holds {oz.dtype} values; counts must be int64 token counts")
        if oz.dim() != 2:
            self._fail(f"over_zero is {oz.dim()}-D with shape {tuple(oz.shape)}; it must be [layers, neurons]")
        if isinstance(self.n, torch.Tensor) and self.n.dim() == 0 and not (
                self.n.dtype.is_floating_point or self.n.dtype.is_complex or self.n.dtype == torch.bool):
            self.n = int(self.n)
        if not _is_int(self.n):
            self._fail(f"n={self.n!r} must be an integer token count")
        if self.n < 0:
            self._fail(f"n={self.n} is negative")
        if oz.numel():
            low, high = int(oz.min()), int(oz.max())
            if low < 0:
                self._fail(f"over_zero has negative counts (min {low})")
            if high > self.n:
                self._fail(f"over_zero has counts above n={self.n} (max {high}): a neuron cannot fire on more "
                           "tokens than were counted")
        if not isinstance(self.meta, dict):
            self._fail(f"meta must be a dict, not {type(self.meta).__name__}")
        model = self.meta.get("model")
        if model is None:
            return
        if not isinstance(model, dict):
            self._fail("meta.model must be a dict (num_layers, widths, model_type)")
        layers = model.get("num_layers")
        if layers is not None:
            if not _is_int(layers) or layers <= 0:
                self._fail(f"meta.model.num_layers={layers!r} must be a positive integer")
            if oz.shape[0] != layers:
                self._fail(f"over_zero has {oz.shape[0]} layers but meta.model.num_layers is {layers}")
        widths = model.get("widths")
        if widths is not None and not isinstance(widths, dict):
            self._fail("meta.model.widths must map module kinds to widths")
        width = (widths or {}).get(self.kind)
        if width is not None:
            if not _is_int(width) or width <= 0:
                self._fail(f"meta.model.widths.{self.kind}={width!r} must be a positive integer")
            if oz.shape[1] != width:
                self._fail(f"over_zero has {oz.shape[1]} neurons per layer but meta.model.widths.{self.kind} is {width}")

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "mlp_gate")

    # ---- files ---------------------------------------------------------------------------

    def payload(self) -> dict:
        return {"format": FORMAT, "over_zero": self.over_zero.detach().cpu(), "n": int(self.n), "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        """Write the record atomically (readers see the old file or the new one, never a part)."""
        path = Path(path)
        payload = self.payload()
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | Path) -> ActivationCounts:
        """Read and check a ``culnig-lape-counts/1`` file; every problem is a :class:`CountsError` naming it."""
        from ..neuron_set import NeuronSetError, load_torch_file

        path = Path(path)

        def fail(what: str):
            raise CountsError(f"lape counts {path}: {what}")

        if not path.exists():
            fail("no such file")
        if path.is_dir():
            fail("is a folder, not a count file")
        try:
            payload = load_torch_file(path, "lape counts", "a LAPE count file (culnig-lape-counts/1)")
        except NeuronSetError as err:
            raise CountsError(str(err)) from None
        if not isinstance(payload, dict) or "format" not in payload:
            fail(f"not a LAPE count file (expected a dict with format {FORMAT!r}, got {type(payload).__name__}"
                 + (f" with keys {sorted(map(str, payload))[:6]}" if isinstance(payload, dict) else "") + ")")
        fmt = payload["format"]
        if fmt != FORMAT:
            if isinstance(fmt, str) and fmt.startswith(_FORMAT_PREFIX):
                fail(f"format {fmt!r} is not supported by this culnig-lm-eval ({package_version()}), which reads "
                     f"{FORMAT!r}")
            fail(f"format {fmt!r} is not a LAPE count file (expected {FORMAT!r})")
        missing = [k for k in ("over_zero", "n", "meta") if k not in payload]
        if missing:
            fail(f"missing {', '.join(missing)}")
        over_zero = payload["over_zero"]
        if not isinstance(over_zero, torch.Tensor):
            fail(f"over_zero must be a tensor, not {type(over_zero).__name__}")
        if over_zero.dtype == torch.bool or over_zero.dtype.is_floating_point or over_zero.dtype.is_complex:
            fail(f"over_zero holds {over_zero.dtype} values; counts must be integer token counts")
        if over_zero.layout != torch.strided:
            fail(f"over_zero is a {over_zero.layout} tensor; counts must be a dense tensor")
        return cls(over_zero.to(torch.int64), payload["n"], payload["meta"], source=str(path))

    # ---- checks and arithmetic -----------------------------------------------------------

    def check_model(self, shape: dict):
        """Refuse counts made for another model (layer count, gate width or model type differ)."""
        mine = self.meta.get("model") or {}
        layers, width = self.over_zero.shape
        theirs_width = (shape.get("widths") or {}).get(self.kind)
        problems = []
        if shape.get("num_layers") is not None and shape["num_layers"] != layers:
            problems.append(f"{layers} layers vs {shape['num_layers']}")
        if theirs_width is not None and theirs_width != width:
            problems.append(f"{width} {self.kind} neurons per layer vs {theirs_width}")
        if mine.get("model_type") and shape.get("model_type") and mine["model_type"] != shape["model_type"]:
            problems.append(f"model_type {mine['model_type']!r} vs {shape['model_type']!r}")
        if problems:
            name = mine.get("name") or mine.get("model_type") or "another model"
            other = shape.get("name") or shape.get("model_type") or "the model"
            self._fail(f"made for {name}, not for {other} ({'; '.join(problems)})")

    def __add__(self, other):
        if not isinstance(other, ActivationCounts):
            return NotImplemented
        mine, theirs = self.meta.get("model") or {}, other.meta.get("model") or {}
        if self.over_zero.shape != other.over_zero.shape or self.kind != other.kind:
            self._fail(f"cannot add counts of shape {tuple(other.over_zero.shape)} ({other.source}) to "
                       f"{tuple(self.over_zero.shape)}: they are for different models")
        for key in ("model_type", "name", "num_layers", "widths"):
            a, b = mine.get(key), theirs.get(key)
            if a is not None and b is not None and a != b:
                self._fail(f"cannot add counts of another model ({other.source}: {key} {b!r} vs {a!r})")

        def same_or(key, merge):
            a, b = self.meta.get(key), other.meta.get(key)
            return a if a == b else merge(a, b)

        meta = {**self.meta,
                "model": mine or theirs,
                "corpus": same_or("corpus", lambda a, b: f"{a}+{b}"),
                "source": same_or("source", lambda a, b: {"merged": [a, b]}),
                "row_length": same_or("row_length", lambda a, b: None),
                "rows": (self.meta["rows"] + other.meta["rows"]
                         if _is_int(self.meta.get("rows")) and _is_int(other.meta.get("rows")) else None),
                "created": now_iso(), "package_version": package_version()}
        over_zero = self.over_zero.cpu() + other.over_zero.cpu()
        return ActivationCounts(over_zero, self.n + other.n, meta)

    def __radd__(self, other):
        if other == 0:  # sum([a, b, c])
            return self
        return NotImplemented


def check_activation(config) -> str:
    """The model's MLP activation if LAPE's sign rule holds for it, else a ValueError naming it."""
    cfg = text_config(config)
    act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
    if act not in SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"LAPE counts a neuron as active where its gate pre-activation is > 0, which needs act(x) > 0 iff "
            f"x > 0; the MLP activation {act!r} of model_type={config.model_type!r} is not one known to keep that "
            f"sign rule (supported: {', '.join(sorted(SUPPORTED_ACTIVATIONS))})"
        )
    return act


def data_parallel_reduce(over_zero: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """Sum ``over_zero`` and ``n`` over all processes when ``torch.distributed`` is initialised.

    Each process of an ``accelerate launch`` run records its own shard of rows with
    :func:`record_counts` and then calls this; all processes get the totals.  Without an
    initialised process group the inputs come back unchanged.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return over_zero, int(n)
    device = over_zero.device
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    total = over_zero.to(device=device, dtype=torch.int64, copy=True)
    count = torch.tensor([int(n)], dtype=torch.int64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    return total.to(over_zero.device), int(count.item())


def _forward_kwargs(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def prepare_batch(batch, device) -> tuple[dict, torch.Tensor]:
    """Model inputs on ``device`` and the 2-D bool count mask of one batch (checked)."""
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise ValueError("each batch must be a dict with input_ids [B, T] (and attention_mask, count_mask)")
    unknown = sorted(set(batch) - _BATCH_KEYS)
    if unknown:
        raise ValueError(f"unknown batch keys {unknown}; a batch holds {sorted(_BATCH_KEYS)}")
    input_ids = torch.as_tensor(batch["input_ids"]).to(device)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}")

    def mask(key, default):
        value = batch.get(key)
        if value is None:
            return default
        value = torch.as_tensor(value).to(device)
        if value.shape != input_ids.shape:
            raise ValueError(f"{key} has shape {tuple(value.shape)} but input_ids has {tuple(input_ids.shape)}")
        if value.dtype.is_floating_point or value.dtype.is_complex:
            raise ValueError(f"{key} holds {value.dtype} values; give a bool or 0/1 integer mask")
        return value.bool()

    attention = mask("attention_mask", torch.ones_like(input_ids, dtype=torch.bool))
    count = mask("count_mask", attention)
    if bool((count & ~attention).any()):
        raise ValueError("count_mask marks padding positions (attention_mask 0); it must be a subset of attention_mask")
    inputs = {"input_ids": input_ids, "attention_mask": attention.long()}
    if batch.get("position_ids") is not None:
        inputs["position_ids"] = torch.as_tensor(batch["position_ids"]).to(device)
    else:  # positions count real tokens only, so left padding does not shift them
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp_(min=0)
    return inputs, count


def forward_inputs(model, inputs: dict) -> dict:
    """Keyword arguments of the counting forward: no cache, logits of the last position only."""
    accepted = _forward_kwargs(model)
    kwargs = {k: v for k, v in inputs.items() if k in accepted or k == "input_ids"}
    kwargs["use_cache"] = False
    if "logits_to_keep" in accepted:  # the counts never need the vocabulary projection
        kwargs["logits_to_keep"] = 1
    return kwargs


@torch.no_grad()
def record_counts(model, batches, *, kind: str = "mlp_gate") -> tuple[torch.Tensor, int]:
    """Forward every batch once and count, per neuron, the counted tokens with a gate output > 0.

    ``batches`` yields dicts with ``input_ids`` [B, T], ``attention_mask`` [B, T] and optionally
    ``count_mask`` [B, T] (bool: the positions that are counted, default ``attention_mask``;
    it must be a subset of ``attention_mask``) and ``position_ids`` (default: positions of the
    real tokens, so left and right padding give the same counts).  Returns ``(over_zero, n)``:
    int64 ``[num_layers, width]`` on the CPU and the number of counted tokens.

    One forward hook per layer compares the gate slice with 0 and adds the masked sum over the
    batch's positions into an int64 accumulator on the layer's device (the masked sum is a 0/1
    float32 matrix-vector product, exact in chunks of at most 2**24 values).  The model runs in
    eval mode with ``use_cache=False``; its training flag is restored and the hooks removed
    afterwards, also when a forward raises.  In a multi-process run, call
    :func:`data_parallel_reduce` on the result of each process's shard.
    """
    found = sites(model, (kind,))
    if not found:
        raise ValueError(f"{type(model).__name__} has no {kind} modules to count")
    device = parameter_device(model)
    state: dict = {"count": None, "weights": {}}
    acc: dict[int, torch.Tensor] = {}

    def weights_on(dev) -> torch.Tensor:
        w = state["weights"].get(dev)
        if w is None:
            w = state["weights"][dev] = state["count"].reshape(-1).to(dev, torch.float32)
        return w

    def make_hook(site):
        start, stop = site.start, site.stop
        width = stop - start

        def hook(_module, _args, output):
            out = output[0] if isinstance(output, tuple) else output
            flat = out.reshape(-1, out.shape[-1])
            w = weights_on(flat.device)
            if flat.shape[0] != w.shape[0]:
                raise RuntimeError(f"layer {site.layer} {kind}: output has {flat.shape[0]} positions but the batch "
                                   f"has {w.shape[0]}")
            total = acc.get(site.layer)
            if total is None:
                total = acc[site.layer] = torch.zeros(width, dtype=torch.int64, device=flat.device)
            step = max(1, _CHUNK_ELEMENTS // width)
            for r0 in range(0, flat.shape[0], step):
                rows = flat[r0:r0 + step, start:stop]
                fired = torch.gt(rows, 0, out=torch.empty(rows.shape, dtype=torch.float32, device=rows.device))
                total += torch.mv(fired.T, w[r0:r0 + step]).to(torch.int64)

        return hook

    was_training = model.training
    handles = []
    n = torch.zeros((), dtype=torch.int64, device=device)
    try:
        model.eval()
        handles = [site.module.register_forward_hook(make_hook(site)) for site in found]
        for batch in batches:
            inputs, count = prepare_batch(batch, device)
            state["count"], state["weights"] = count, {}
            n += count.sum()
            model(**forward_inputs(model, inputs))
    finally:
        for handle in handles:
            handle.remove()
        state.clear()
        model.train(was_training)
    width = found[0].stop - found[0].start
    layers = len(found)
    over_zero = torch.zeros((layers, width), dtype=torch.int64)
    for layer, total in acc.items():
        over_zero[layer] = total.cpu()
    return over_zero, int(n)
