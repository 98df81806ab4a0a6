"""``culnig-sets``: inspect, combine, randomise and import neuron-set files.

Subcommands::

    culnig-sets info SET [SET ...] [--json]
    culnig-sets union A B [C ...] -o OUT
    culnig-sets intersect A B [C ...] -o OUT
    culnig-sets subtract A B [C ...] -o OUT          # A minus (B or C ...)
    culnig-sets random SET [--seed N | --seeds 0,1,2] -o OUT
    culnig-sets convert FILE (--model M | --num-layers N --widths mlp_gate=1536,...) -o OUT
                        [--format auto|culnig-json|lape] [--cultures a,b,c] [--culture NAME]

Sets are ``culnig-neuron-set/1`` files (``.pt`` or the ``.json`` twin; see
``culnig_lm_eval.neuron_set``).  Every output is written atomically (a temporary file renamed
into place) after all inputs were read and checked; on any bad input the command prints one
line saying what is wrong and what to do, exits with status 2, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..architectures import MODULE_KINDS, UnsupportedArchitecture, model_shape
from ..neuron_set import SUFFIXES, NeuronSet, NeuronSetError, file_sha256, new_meta, save_many

PROG = "culnig-sets"

# CULNIG JSON module names (last dotted component) -> module kinds
CULNIG_MODULES = {
    "gate_proj": "mlp_gate",
    "up_proj": "mlp_up",
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    **{k: k for k in MODULE_KINDS},
}


class UsageError(Exception):
    """A bad command line or input file: printed as one line, exit status 2."""


# -- helpers ----------------------------------------------------------------------------------
def _load(paths) -> list[NeuronSet]:
    return [NeuronSet.load(p) for p in paths]


def _output(path: str, what: str = "-o") -> Path:
    out = Path(path)
    if out.suffix not in SUFFIXES:
        raise UsageError(f"{what} {path}: name the output file with a .pt or .json suffix")
    if out.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file name ending in .pt or .json")
    return out


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what}={text!r}: give comma-separated integers, e.g. {what} 0,1,2") from None
    if not values:
        raise UsageError(f"{what} is empty: give comma-separated integers, e.g. {what} 0,1,2")
    return values


def _parse_widths(text: str) -> dict[str, int]:
    widths = {}
    for item in text.split(","):
        kind, sep, value = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in MODULE_KINDS:
            raise UsageError(
                f"--widths item {item!r}: write KIND=WIDTH with KIND one of {', '.join(MODULE_KINDS)}, "
                "e.g. --widths mlp_gate=1536,mlp_up=1536"
            )
        try:
            widths[kind] = int(value)
        except ValueError:
            raise UsageError(f"--widths {kind}={value!r}: the width must be an integer") from None
        if widths[kind] <= 0:
            raise UsageError(f"--widths {kind}={value}: the width must be positive")
    return widths


def _config_for(model: str):
    """AutoConfig of a hub id, a local folder, or an embedded alias (without converting it if avoidable)."""
    from transformers import AutoConfig

    from .. import embedded

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


def model_shape_from_args(args) -> dict:
    """The model shape for ``convert``: from ``--model`` or from ``--num-layers`` + ``--widths``."""
    if args.model and (args.num_layers or args.widths):
        raise UsageError("give either --model or --num-layers with --widths, not both")
    if args.model:
        try:
            config = _config_for(args.model)
        except Exception as err:
            raise UsageError(
                f"--model {args.model}: cannot read its config ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                "give a local model folder, an embedded alias, a reachable hub id, or --num-layers/--widths"
            ) from None
        shape = model_shape(config)
        shape["name"] = args.model
        return shape
    if not (args.num_layers and args.widths):
        raise UsageError(
            "convert needs the model shape: --model NAME_OR_FOLDER, or --num-layers N --widths mlp_gate=WIDTH,..."
        )
    if args.num_layers <= 0:
        raise UsageError(f"--num-layers {args.num_layers}: must be positive")
    return {"name": args.model_name, "model_type": None, "num_layers": args.num_layers, "widths": _parse_widths(args.widths)}


def _bar(n: int, top: int, width: int = 40) -> str:
    filled = 0 if top == 0 else round(width * n / top)
    return "#" * filled + "." * (width - filled)


def summary(s: NeuronSet) -> dict:
    model = s.meta.get("model") or {}
    widths = model.get("widths") or {}
    layers = model.get("num_layers")
    counts = s.counts()
    out = {
        "path": s.source,
        "total": len(s),
        "counts": counts,
        "fraction": s.fraction(),
        "per_layer": s.per_layer(),
        "meta": s.meta,
    }
    if layers and all(widths.get(k) for k in counts):
        out["fraction_of_kinds"] = len(s) / (layers * sum(widths[k] for k in counts)) if counts else 0.0
    return out


def _text(info: dict) -> str:
    meta, model = info["meta"], info["meta"].get("model") or {}
    lines = [info["path"]]
    lines.append(
        f"  model: {model.get('name') or '?'} ({model.get('model_type') or '?'}, "
        f"{model.get('num_layers', '?')} layers, widths {model.get('widths') or '?'})"
    )
    for key in ("method", "selection", "culture", "tasks", "created", "package_version"):
        if meta.get(key) not in (None, [], ""):
            lines.append(f"  {key}: {meta[key]}")
    for key in ("hyperparameters", "provenance"):
        if meta.get(key):
            lines.append(f"  {key}: {json.dumps(meta[key], sort_keys=True, default=str)[:300]}")
    lines.append(f"  neurons: {info['total']}")
    for kind, n in info["counts"].items():
        frac = info["fraction"].get(kind)
        share = f" = {100 * frac:.3f}% of all {kind} neurons" if frac is not None else ""
        lines.append(f"    {kind}: {n}{share}")
    if "fraction_of_kinds" in info and len(info["counts"]) > 1:
        lines.append(f"    together: {100 * info['fraction_of_kinds']:.3f}% of the neurons of these kinds")
    for kind, per_layer in info["per_layer"].items():
        top = max(per_layer, default=0)
        lines.append(f"  {kind} per layer (max {top}):")
        digits = len(str(max(len(per_layer) - 1, 0)))
        lines += [f"    L{i:0{digits}d} {_bar(n, top)} {n}" for i, n in enumerate(per_layer)]
    return "\n".join(lines)


# -- subcommands ----------------------------------------------------------------------------------
def cmd_info(args):
    infos = [summary(s) for s in _load(args.sets)]
    if args.json:
        print(json.dumps(infos[0] if len(infos) == 1 else infos, indent=1, sort_keys=True, default=str))
    else:
        print("\n\n".join(_text(i) for i in infos))


def _algebra(args, operation: str):
    out = _output(args.output)
    first, *rest = _load(args.sets)
    result = getattr(first, operation)(*rest)
    save_many([(result, out)])
    print(f"{operation}: {len(result)} neurons {result.counts()} -> {out}")


def cmd_random(args):
    seeds = _ints(args.seeds, "--seeds") if args.seeds is not None else [args.seed]
    out = _output(args.output)
    if len(seeds) != len(set(seeds)):
        raise UsageError(f"--seeds {args.seeds}: list each seed once")
    [base] = _load([args.set])
    items = []
    for seed in seeds:
        if "{seed}" in str(out):
            path = Path(str(out).replace("{seed}", str(seed)))
        elif len(seeds) > 1:
            path = out.with_name(f"{out.stem}-seed{seed}{out.suffix}")
        else:
            path = out
        items.append((base.random_like(seed), path))
    for path in save_many(items):
        print(f"random: {len(base)} neurons, same count per layer and kind as {base.source} -> {path}")


def _read_culnig_json(path: Path) -> tuple[list[dict], dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: not readable as CULNIG JSON ({type(err).__name__}: {err})") from None
    records = data.get("top_neurons") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UsageError(
            f"{path}: expected a CULNIG JSON object {{\"top_neurons\": [{{\"module_name\", \"layer_idx\", "
            "\"neuron_idx\", ...}}, ...]}}; use --format lape for a LAPE .pt file"
        )
    scalars = (str, int, float, bool)
    extra = {k: v for k, v in data.items() if isinstance(v, scalars)} if isinstance(data, dict) else {}
    return records, extra


def _group(columns: dict[str, tuple[torch.Tensor, torch.Tensor]], shape: dict, where: str):
    """{kind: (layer column, neuron column)} -> {kind: [sorted unique indices per layer]}, checked."""
    num_layers, widths = shape["num_layers"], shape["widths"]
    indices, duplicates = {}, 0
    for kind in [k for k in MODULE_KINDS if k in columns]:
        layers, neurons = columns[kind]
        if kind not in widths:
            raise UsageError(f"{where} has {kind} neurons but no {kind} width was given: add {kind}=WIDTH to --widths")
        for column, limit, what in ((layers, num_layers, "layer index"), (neurons, widths[kind], f"{kind} neuron")):
            if column.numel() and (int(column.min()) < 0 or int(column.max()) >= limit):
                bad = int(column.min()) if int(column.min()) < 0 else int(column.max())
                raise UsageError(f"{where} has {what} {bad} but the model has {limit}: wrong --model or --widths?")
        per_layer = []
        for layer in range(num_layers):
            idx = neurons[layers == layer]
            unique = torch.unique(idx)
            duplicates += idx.numel() - unique.numel()
            per_layer.append(unique)
        indices[kind] = per_layer
    return indices, duplicates


def convert_culnig_json(path: Path, shape: dict) -> tuple[dict, dict]:
    records, extra = _read_culnig_json(path)
    missing = [i for i, r in enumerate(records) if not {"module_name", "layer_idx", "neuron_idx"} <= r.keys()]
    if missing:
        raise UsageError(f"{path}: entry {missing[0]} lacks module_name, layer_idx or neuron_idx")
    names = [str(r["module_name"]).rsplit(".", 1)[-1] for r in records]
    unknown = sorted(set(names) - set(CULNIG_MODULES))
    if unknown:
        raise UsageError(
            f"{path}: module_name {unknown[0]!r} is not a neuron kind culnig-lm-eval masks "
            f"(known: {', '.join(sorted(CULNIG_MODULES))})"
        )
    try:
        layers = torch.tensor([r["layer_idx"] for r in records], dtype=torch.long)
        neurons = torch.tensor([r["neuron_idx"] for r in records], dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        raise UsageError(f"{path}: layer_idx and neuron_idx must be integers") from None
    if any(isinstance(r["layer_idx"], float) or isinstance(r["neuron_idx"], float) for r in records):
        raise UsageError(f"{path}: layer_idx and neuron_idx must be integers, found a float")
    kinds = [CULNIG_MODULES[n] for n in names]
    kind_ids = torch.tensor([MODULE_KINDS.index(k) for k in kinds], dtype=torch.long)
    columns = {
        k: (layers[kind_ids == i], neurons[kind_ids == i]) for i, k in enumerate(MODULE_KINDS) if k in set(kinds)
    }
    indices, duplicates = _group(columns, shape, str(path))
    provenance = {"imported_from": str(path), "sha256": file_sha256(path), "format": "culnig-json",
                  "entries": len(records), "duplicates_dropped": duplicates, "source_fields": extra}
    return indices, provenance


def _read_lape(path: Path) -> list:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        if "WeightsUnpickler error:" in text:  # torch's one-line reason, without its advice
            text = text.split("WeightsUnpickler error:", 1)[1]
        reason = " ".join(text.split()).split(" Please use")[0].split(" Check the documentation")[0][:160]
        raise UsageError(
            f"{path}: not readable as a LAPE .pt file with torch.load(weights_only=True) "
            f"({type(err).__name__}: {reason}); give --format culnig-json for a CULNIG JSON, or re-save "
            "the LAPE mask as plain lists of integer tensors"
        ) from None
    if isinstance(data, dict) and "format" in data:
        raise UsageError(f"{path} is already a neuron set: use it directly, or `culnig-sets info` it")
    if not isinstance(data, (list, tuple)) or not all(isinstance(c, (list, tuple)) for c in data) or not data:
        raise UsageError(
            f"{path}: expected a LAPE file, a list indexed [culture][layer] of index tensors "
            "(found " + type(data).__name__ + "); use --format culnig-json for a CULNIG JSON"
        )
    return list(data)


def convert_lape(path: Path, shape: dict, cultures: list[str]) -> list[tuple[str, dict, dict]]:
    data = _read_lape(path)
    if len(cultures) != len(data):
        raise UsageError(
            f"{path} holds {len(data)} cultures but --cultures names {len(cultures)}: "
            f"give {len(data)} comma-separated names in the file's order"
        )
    digest = file_sha256(path)
    out = []
    for c, (culture, per_layer) in enumerate(zip(cultures, data, strict=True)):
        where = f"{path} culture {c} ({culture})"
        if len(per_layer) != shape["num_layers"]:
            raise UsageError(f"{where} has {len(per_layer)} layers but the model has {shape['num_layers']}: wrong --model?")
        try:
            lists = [torch.as_tensor(t).flatten() for t in per_layer]
        except Exception:
            raise UsageError(f"{where}: each layer must be a tensor or list of neuron indices") from None
        if any(t.numel() and (t.dtype.is_floating_point or t.dtype == torch.bool) for t in lists):
            raise UsageError(f"{where}: neuron indices must be integers")
        layers = torch.cat([torch.full((t.numel(),), i, dtype=torch.long) for i, t in enumerate(lists)])
        neurons = torch.cat([t.long() for t in lists])
        indices, duplicates = _group({"mlp_gate": (layers, neurons)}, shape, where)
        provenance = {"imported_from": str(path), "sha256": digest, "format": "lape", "culture_index": c,
                      "duplicates_dropped": duplicates}
        out.append((culture, indices, provenance))
    return out


def _culture_path(template: Path, culture: str, many: bool) -> Path:
    text = str(template)
    if "{culture}" in text:
        return Path(text.replace("{culture}", culture))
    if many:
        return template.with_name(f"{template.stem}-{culture}{template.suffix}")
    return template


def cmd_convert(args):
    src = Path(args.input)
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    out = _output(args.output)
    fmt = args.format
    if fmt == "auto":
        fmt = "culnig-json" if src.suffix == ".json" else "lape"
    shape = model_shape_from_args(args)
    items = []
    if fmt == "culnig-json":
        if args.cultures:
            raise UsageError("--cultures is for LAPE files; name the culture of a CULNIG JSON with --culture")
        indices, provenance = convert_culnig_json(src, shape)
        meta = new_meta(shape, "culnig", selection="imported", culture=args.culture, provenance=provenance)
        items.append((NeuronSet(indices, meta), out))
    else:
        if not args.cultures:
            raise UsageError("a LAPE file holds one set per culture: name them in order with --cultures a,b,c")
        if args.culture:
            raise UsageError("--culture is for CULNIG JSON files; LAPE files take --cultures a,b,c")
        cultures = [c.strip() for c in args.cultures.split(",") if c.strip()]
        if len(set(cultures)) != len(cultures) or any(not c.replace("-", "").replace("_", "").isalnum() for c in cultures):
            raise UsageError(f"--cultures {args.cultures}: give distinct names made of letters, digits, - and _")
        for culture, indices, provenance in convert_lape(src, shape, cultures):
            meta = new_meta(shape, "lape", selection="imported", culture=culture, provenance=provenance)
            items.append((NeuronSet(indices, meta), _culture_path(out, culture, len(cultures) > 1)))
    for (neuron_set, _), path in zip(items, save_many(items), strict=True):
        culture = neuron_set.meta.get("culture")
        tag = f" culture={culture}" if culture else ""
        print(f"convert: {len(neuron_set)} neurons {neuron_set.counts()}{tag} -> {path}")


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, combine, randomise and import culture-neuron sets (culnig-neuron-set/1 files, "
        ".pt or .json). Outputs are written atomically; bad input exits with status 2 and writes nothing.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="counts, share of all neurons, per-layer histogram and metadata of sets",
                       description="Print neurons per module kind, their share of all neurons of that kind, "
                       "a per-layer histogram and a metadata summary.")
    p.add_argument("sets", nargs="+", metavar="SET", help="neuron-set files (.pt or .json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (one object, or a list for several sets)")
    p.set_defaults(func=cmd_info)

    for name, doc in (
        ("union", "neurons in any of the sets"),
        ("intersect", "neurons in all of the sets"),
        ("subtract", "neurons of the first set that are in none of the others"),
    ):
        p = sub.add_parser(name, help=doc, description=f"Write the {name} of neuron sets made for the same model: {doc}.")
        p.add_argument("sets", nargs="+", metavar="SET", help="two or more neuron-set files")
        p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (.pt or .json)")
        p.set_defaults(func=lambda a, _op=name: _algebra(a, _op))

    p = sub.add_parser("random", help="size-matched random sets: the paper's baseline",
                       description="Draw random neurons with the same count in every (module kind, layer) as SET, "
                       "seeded, uniformly among that layer's neurons.")
    p.add_argument("set", metavar="SET", help="the neuron set to match")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--seeds", metavar="S1,S2,...", help="several seeds, one output each; OUT may contain {seed}, "
                   "otherwise -seedN is added before the suffix")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (.pt or .json)")
    p.set_defaults(func=cmd_random)

    p = sub.add_parser(
        "convert", help="import a published CULNIG JSON or LAPE .pt file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Import published neuron lists as culnig-neuron-set/1 files.\n\n"
        "  culnig-json: {\"top_neurons\": [{\"module_name\": \"mlp.gate_proj\", \"layer_idx\": 3, \"neuron_idx\": 17, ...}]}\n"
        "               module names gate_proj/up_proj/q_proj/k_proj/v_proj (any prefix)\n"
        "               -> mlp_gate/mlp_up/attn_q/attn_k/attn_v\n"
        "  lape:        a torch list indexed [culture][layer] of MLP intermediate-neuron index tensors (Culture_Neurons /\n"
        "               LAPE activation masks) -> one mlp_gate set per culture, named by --cultures.  Suppressing a gate\n"
        "               neuron zeroes that intermediate activation (act(0) = 0), as LAPE masking does.\n\n"
        "The model shape comes from --model (hub id, local folder or embedded alias such as smollm2-135m) or from\n"
        "--num-layers with --widths.",
    )
    p.add_argument("input", metavar="FILE", help="CULNIG .json or LAPE .pt file")
    p.add_argument("--format", choices=("auto", "culnig-json", "lape"), default="auto",
                   help="input format (default: by suffix, .json = culnig-json, else lape)")
    p.add_argument("--model", help="model the neurons belong to: hub id, local folder, or embedded alias")
    p.add_argument("--num-layers", type=int, help="number of decoder layers (instead of --model)")
    p.add_argument("--widths", metavar="KIND=N,...", help="neurons per layer per kind, e.g. mlp_gate=1536 (instead of --model)")
    p.add_argument("--model-name", help="model name to record with --num-layers/--widths")
    p.add_argument("--cultures", metavar="A,B,...", help="LAPE: culture names in the file's order")
    p.add_argument("--culture", help="CULNIG JSON: the culture the set belongs to (omit for culture-general sets)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (.pt or .json); for several LAPE cultures put {culture} in it "
                   "(otherwise -CULTURE is added before the suffix)")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("union", "intersect", "subtract") and len(args.sets) < 2:
        parser.exit(2, f"{PROG}: error: {args.command} needs at least two sets\n")
    try:
        args.func(args)
    except (UsageError, NeuronSetError, UnsupportedArchitecture) as err:
        message = " ".join(str(err).split())
        parser.exit(2, f"{PROG}: error: {message}\n")
    except OSError as err:
        parser.exit(2, f"{PROG}: error: {err.filename or ''}: {err.strerror or err}; check the path and permissions\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
