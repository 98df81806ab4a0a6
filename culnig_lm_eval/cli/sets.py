"""``culnig-sets``: inspect, combine, randomise and import neuron-set files.

Subcommands::

    culnig-sets info SET [SET ...] [--json]
    culnig-sets union A B [C ...] --out OUT
    culnig-sets intersect A B [C ...] --out OUT
    culnig-sets subtract A B [C ...] --out OUT          # A minus (B or C ...)
    culnig-sets random SET [--seeds 0,1,2] --out OUT
    culnig-sets convert FILE (--model_args pretrained=M | --num-layers N --widths mlp_gate=1536,...) --out OUT
                        [--format auto|culnig-json|lape] [--cultures a,b,c] [--lape-layout auto|mask|indices]
    culnig-sets export-model --model_args pretrained=M --sets A.pt+B.pt --out DIR [--operation OP --factor F]

Sets are ``culnig-neuron-set/1`` files (format: ``culnig_lm_eval.neuron_set``); published
formats are read by ``culnig_lm_eval.importers``.  This module only parses arguments, calls
those, and prints.  The outputs of one command are written as a unit (``save_many``) after all
inputs were read and checked; on any bad input the command prints one line saying what is
wrong and what to do, exits with status 2, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import importers
from ..architectures import MODULE_KINDS
from ..neuron_set import JOIN, SUFFIXES, NeuronSet, check_seed, save_many
from ._common import HelpFormatter, epilog, old_spellings, run

PROG = "culnig-sets"


class UsageError(ValueError):
    """A bad command line: printed as one line by ``_common.run``, exit status 2."""


# -- argument checks ----------------------------------------------------------------------------
def _load(paths) -> list[NeuronSet]:
    return [NeuronSet.load(p) for p in paths]


def _output(path: str, what: str = "--out") -> Path:
    out = Path(path)
    if out.suffix not in SUFFIXES:
        raise UsageError(f"{what} {path}: name the output file with a .pt or .json suffix")
    if out.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file name ending in .pt or .json")
    if JOIN in out.name:
        raise UsageError(f"{what} {path}: '{JOIN}' joins several set files in neurons=a.pt{JOIN}b.pt, "
                         f"so a set file's name must not contain it; choose a name without '{JOIN}'")
    return out


def _seeds(text: str, what: str) -> list[int]:
    """Comma-separated seeds, each a whole number in 0 .. 2**63-1 (torch's seed range)."""
    items = [v.strip() for v in str(text).split(",") if v.strip()]
    if not items:
        raise UsageError(f"{what} is empty: give comma-separated integers, e.g. {what} 0,1,2")
    seeds = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise UsageError(f"{what}={text!r}: give comma-separated integers, e.g. {what} 0,1,2") from None
        seeds.append(check_seed(value, what))
    if len(seeds) != len(set(seeds)):
        raise UsageError(f"{what} {text}: list each seed once")
    return seeds


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


def _model_args(text: str) -> str:
    """``--model_args`` of ``convert``; the old ``--model NAME`` gives a bare name: ``pretrained=NAME``."""
    return text if "=" in text else f"pretrained={text}"


def model_shape_from_args(args) -> dict:
    """The model shape for ``convert``: from ``--model_args`` or from ``--num-layers`` + ``--widths``."""
    if args.model_args and (args.num_layers or args.widths):
        raise UsageError("give either --model_args or --num-layers with --widths, not both")
    if args.model_args:
        from ..model.lm import parse_model_args

        return importers.shape_of_model(str(parse_model_args(args.model_args)["pretrained"]))
    if not (args.num_layers and args.widths):
        raise UsageError(
            "convert needs the model shape: --model_args pretrained=NAME_OR_FOLDER, or --num-layers N "
            "--widths mlp_gate=WIDTH,..."
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
    for info in infos:
        if info["total"] == 0:  # on stderr so that --json output stays parseable
            print(f"{PROG}: warning: {info['path']} holds 0 neurons: masking it changes nothing", file=sys.stderr)


def _algebra(args, operation: str):
    if len(args.sets) < 2:
        raise UsageError(f"{operation} needs at least two sets")
    out = _output(args.out)
    first, *rest = _load(args.sets)
    result = getattr(first, operation)(*rest)
    save_many([(result, out)])
    print(f"{operation}: {len(result)} neurons {result.counts()} -> {out}")


def _seed_path(out: Path, seed: int, many: bool) -> Path:
    if "{seed}" in str(out):
        return Path(str(out).replace("{seed}", str(seed)))
    return out.with_name(f"{out.stem}-seed{seed}{out.suffix}") if many else out


def cmd_random(args):
    seeds = _seeds(args.seeds, "--seeds")
    out = _output(args.out)
    [base] = _load([args.set])
    items = [(base.random_like(seed), _seed_path(out, seed, len(seeds) > 1)) for seed in seeds]
    for path in save_many(items):  # all seeds' files, or none
        print(f"random: {len(base)} neurons, same count per layer and kind as {base.source} -> {path}")


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
    out = _output(args.out)
    fmt = args.format
    if fmt == "auto":
        fmt = "culnig-json" if src.suffix == ".json" else "lape"
    cultures = [c.strip() for c in (args.cultures or "").split(",") if c.strip()]
    if fmt == "culnig-json":
        if len(cultures) > 1:
            raise UsageError(f"--cultures {args.cultures}: a CULNIG JSON holds one set; name its one culture "
                             "(or none for a culture-general set)")
        if args.lape_layout != "auto":
            raise UsageError("--lape-layout is for LAPE files")
    elif not cultures:
        raise UsageError("a LAPE file holds one set per culture: name them in order with --cultures a,b,c")
    shape = model_shape_from_args(args)
    if fmt == "culnig-json":
        items = [(importers.import_culnig_json(src, shape, culture=cultures[0] if cultures else None), out)]
    else:
        sets = importers.import_lape(src, shape, cultures, layout=args.lape_layout)
        items = [(s, _culture_path(out, s.meta["culture"], len(sets) > 1)) for s in sets]
    for (neuron_set, _), path in zip(items, save_many(items), strict=True):
        culture = neuron_set.meta.get("culture")
        tag = f" culture={culture}" if culture else ""
        layout = neuron_set.meta["provenance"].get("layout")
        read_as = f" (read as {layout})" if layout else ""
        print(f"convert: {len(neuron_set)} neurons {neuron_set.counts()}{tag}{read_as} -> {path}")


# -- parser ------------------------------------------------------------------------------------
def cmd_export_model(args):
    from ..model.export import export_masked_model

    sets = "+".join(args.sets)  # as in neurons=a.pt+b.pt
    out = export_masked_model(args.model_args, sets, args.out, args.operation, args.factor)
    print(f"{out}: masked model ({sets} folded in); evaluate it with "
          f"lm_eval --model hf --model_args pretrained={out} (or vllm, sglang)")


def _out_arg(p, help_text: str):
    old_spellings(p, p.add_argument("--out", required=True, metavar="OUT", help=help_text), "-o", "--output")


SHIPPED = "neuron_sets/smollm2-135m"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Inspect, combine, randomise and import culture-neuron sets (culnig-neuron-set/1 files, "
        ".pt or .json). Outputs are written atomically; bad input exits with status 2 and writes nothing.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text, description, example, **kwargs):
        return sub.add_parser(name, help=help_text, description=description, formatter_class=HelpFormatter,
                              epilog=epilog(example, folders=False), **kwargs)

    p = command("info", "counts, share of all neurons, per-layer histogram and metadata of sets",
                "Print neurons per module kind, their share of all neurons of that kind, a per-layer histogram "
                "and a metadata summary.", f"culnig-sets info {SHIPPED}/general.pt")
    p.add_argument("sets", nargs="+", metavar="SET", help="neuron-set files (.pt or .json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (one object, or a list for several sets)")
    p.set_defaults(func=cmd_info)

    for name, doc in (
        ("union", "neurons in any of the sets"),
        ("intersect", "neurons in all of the sets"),
        ("subtract", "neurons of the first set that are in none of the others"),
    ):
        p = command(name, doc, f"Write the {name} of neuron sets made for the same model: {doc}.",
                    f"culnig-sets {name} {SHIPPED}/general.pt {SHIPPED}/korea.pt --out {name}.pt")
        p.add_argument("sets", nargs="+", metavar="SET", help="two or more neuron-set files")
        _out_arg(p, "output file (.pt or .json)")
        p.set_defaults(func=lambda a, _op=name: _algebra(a, _op))

    p = command("random", "size-matched random sets: the paper's baseline",
                "Draw random neurons with the same count in every (module kind, layer) as SET, seeded, uniformly "
                "among that layer's neurons.", f"culnig-sets random {SHIPPED}/general.pt --seeds 0,1 --out random.pt")
    p.add_argument("set", metavar="SET", help="the neuron set to match")
    old_spellings(p, p.add_argument("--seeds", default="0", metavar="S1,S2,...",
                                    help="random seeds, 0 to 2**63-1, one output each; with several, OUT may "
                                         "contain {seed}, otherwise -seedN is added before the suffix"), "--seed")
    _out_arg(p, "output file (.pt or .json)")
    p.set_defaults(func=cmd_random)

    p = sub.add_parser(
        "convert", help="import a published CULNIG JSON or LAPE .pt file",
        formatter_class=HelpFormatter,
        description="Import published neuron lists as culnig-neuron-set/1 files.\n\n"
        "  culnig-json: {\"top_neurons\": [{\"module_name\": \"mlp.gate_proj\", \"layer_idx\": 3, \"neuron_idx\": 17, ...}]}\n"
        "               module names gate_proj/up_proj/q_proj/k_proj/v_proj (any prefix)\n"
        "               -> mlp_gate/mlp_up/attn_q/attn_k/attn_v\n"
        "  lape:        a torch list indexed [culture][layer] of MLP intermediate-neuron index tensors\n"
        "               (Culture_Neurons / LAPE activation masks), or of 0/1 masks of the layer's width\n"
        "               (see --lape-layout) -> one mlp_gate set per culture, named by --cultures.\n"
        "               Suppressing a gate neuron zeroes that intermediate activation (act(0) = 0),\n"
        "               as LAPE masking does.\n"
        "  Details: culnig_lm_eval.importers; the output format: culnig_lm_eval.neuron_set.\n\n"
        "The model shape comes from --model_args (pretrained= a hub id, local folder or embedded alias such as "
        "smollm2-135m) or from --num-layers with --widths.",
        epilog=epilog("culnig-sets convert activation_mask.pt --model_args pretrained=smollm2-135m "
                      "--cultures uk,usa,china --out 'lape/{culture}.pt'", folders=False),
    )
    p.add_argument("input", metavar="FILE", help="CULNIG .json or LAPE .pt file")
    g = p.add_argument_group("input")
    g.add_argument("--format", choices=("auto", "culnig-json", "lape"), default="auto",
                   help="input format ('auto': by suffix, .json = culnig-json, else lape)")
    old_spellings(g, g.add_argument("--cultures", metavar="A,B,...",
                                    help="culture names: a LAPE file's, in the file's order; a CULNIG JSON's one "
                                         "culture (omit it for a culture-general set)"), "--culture")
    g.add_argument("--lape-layout", choices=importers.LAPE_LAYOUTS, default="auto",
                   help="LAPE: each layer lists neuron 'indices', or is a 0/1 'mask' of the layer's width; "
                   "'auto' detects it and refuses files that could be either")
    g = p.add_argument_group("model shape", "--model_args, or --num-layers with --widths")
    old_spellings(g, g.add_argument("--model_args", type=_model_args, metavar="pretrained=M",
                                    help="the model the neurons belong to: a hub id, local folder or embedded "
                                         "alias (only its config is read)"), "--model")
    g.add_argument("--num-layers", type=int, help="number of decoder layers")
    g.add_argument("--widths", metavar="KIND=N,...", help="neurons per layer per kind, e.g. mlp_gate=1536")
    g.add_argument("--model-name", help="model name to record with --num-layers/--widths")
    g = p.add_argument_group("output")
    _out_arg(g, "output file (.pt or .json); for several LAPE cultures put {culture} in it "
                "(otherwise -CULTURE is added before the suffix)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "export-model", help="save the model with sets folded into its weights, for vLLM, SGLang or stock hf",
        formatter_class=HelpFormatter,
        description="Fold neuron sets into the weights (as masked-hf does) and save the model (safetensors, "
        "config, tokenizer) with culnig_export.json naming the sets.",
        epilog=epilog(f"culnig-sets export-model --model_args pretrained=smollm2-135m --sets {SHIPPED}/paper/general.pt "
                      "--out masked-model"))
    p.add_argument("--model_args", required=True, help="the model, as lm_eval takes it: pretrained=...[,dtype=...]")
    p.add_argument("--sets", nargs="+", required=True, metavar="A.pt+B.pt",
                   help="set files joined with '+' (or given as several arguments); their union is folded in")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder (or an earlier export, replaced as a unit)")
    p.add_argument("--operation", choices=("suppress", "enhance", "scale"), default="suppress",
                   help="suppress (set to 0), enhance or scale by --factor (a power of two: exact)")
    p.add_argument("--factor", help="multiplier for enhance/scale")
    p.set_defaults(func=cmd_export_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(PROG, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
