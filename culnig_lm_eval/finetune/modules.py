"""Which modules hold the selected neurons: rank a model's linear modules, pick some by budget.

The CULNIG paper fine-tunes "the modules that hold the most culture-general neurons" (top) or
modules that hold none (bottom), about 10% of the parameters either way (GitHub ynklab/CULNIG
``train/config.yaml`` lists the chosen modules with their counts, whole MLPs of the top layers).

**Counting rule.** A neuron set names output rows of ``gate_proj`` / ``up_proj`` (MLP) and of
``q_proj`` / ``k_proj`` / ``v_proj`` (attention), per layer.  An MLP neuron *i* is row *i* of
``gate_proj``, row *i* of ``up_proj`` and column *i* of ``down_proj``: the three modules of a
layer's MLP each count the layer's distinct MLP neurons (gate or up).  The attention modules
``q_proj`` / ``k_proj`` / ``v_proj`` each count their own neurons, and ``o_proj`` (which reads
what they produce) counts all of the layer's attention neurons.  Fused projections (Phi-3's
``gate_up_proj`` / ``qkv_proj``) count everything fused into them.  Every other ``nn.Linear``
inside a decoder layer counts 0, as do embeddings and norms (not ranked: they are not modules
of one layer).

**Budget rule.** Modules are taken in ranking order until their parameters reach
``budget × all parameters``; the last module taken is the one that crosses the budget, so the
choice overshoots by less than one module.  ``top``: most neurons first (ties: layer, then
position inside the layer).  ``bottom``: fewest neurons first, ties in a seeded random order
(there are usually many modules with none: which ones is a draw, recorded by its seed).
``random``: all modules in a seeded random order, ignoring the counts.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..architectures import adapter_for, decoder_layers

CHOICES = ("top", "bottom", "random")


@dataclass(frozen=True)
class ModuleCount:
    name: str  # qualified module name in the model (PEFT target_modules entry)
    layer: int
    part: str  # "mlp" or "attention" (or "other" for an unrecognised linear inside a layer)
    neurons: int
    parameters: int
    position: int  # order inside its layer, for stable ties


def _layer_path(model: nn.Module) -> str:
    layers = decoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise ValueError("decoder layers not reachable by name")  # decoder_layers found it by attribute


def _neurons_per_layer(neuron_sets, num_layers: int) -> dict[str, list[set[int]]]:
    """Union of every set's indices, per module kind and layer."""
    union: dict[str, list[set[int]]] = {}
    for neuron_set in neuron_sets:
        for kind, per_layer in neuron_set.indices.items():
            slots = union.setdefault(kind, [set() for _ in range(num_layers)])
            for layer, idx in enumerate(per_layer):
                slots[layer].update(int(i) for i in idx.tolist())
    return union


def _count_rule(union: dict[str, list[set[int]]], layer: int, parent: str, leaf: str) -> tuple[str, int]:
    def n(kind: str) -> int:
        slots = union.get(kind)
        return len(slots[layer]) if slots else 0

    def distinct(*kinds: str) -> int:
        found: set[int] = set()
        for kind in kinds:
            if union.get(kind):
                found |= union[kind][layer]
        return len(found)

    mlp = distinct("mlp_gate", "mlp_up")
    attention = n("attn_q") + n("attn_k") + n("attn_v")
    per_leaf = {
        ("mlp", "gate_proj"): mlp, ("mlp", "up_proj"): mlp, ("mlp", "down_proj"): mlp, ("mlp", "gate_up_proj"): mlp,
        ("attention", "q_proj"): n("attn_q"), ("attention", "k_proj"): n("attn_k"), ("attention", "v_proj"): n("attn_v"),
        ("attention", "qkv_proj"): attention, ("attention", "o_proj"): attention,
    }
    return parent, per_leaf.get((parent, leaf), 0)


_HOLDS = {  # (part, leaf) -> the neuron kinds a module holds (module docstring)
    ("mlp", "gate_proj"): ("mlp_gate", "mlp_up"), ("mlp", "up_proj"): ("mlp_gate", "mlp_up"),
    ("mlp", "down_proj"): ("mlp_gate", "mlp_up"), ("mlp", "gate_up_proj"): ("mlp_gate", "mlp_up"),
    ("attention", "q_proj"): ("attn_q",), ("attention", "k_proj"): ("attn_k",), ("attention", "v_proj"): ("attn_v",),
    ("attention", "qkv_proj"): ("attn_q", "attn_k", "attn_v"), ("attention", "o_proj"): ("attn_q", "attn_k", "attn_v"),
}


def neurons_held(chosen: list[ModuleCount], neuron_sets, num_layers: int) -> int:
    """Distinct neurons held by at least one chosen module (gate, up and down of a layer share them)."""
    union = _neurons_per_layer(neuron_sets, num_layers)
    held: set[tuple] = set()
    for row in chosen:
        for kind in _HOLDS.get((row.part, row.name.rsplit(".", 1)[-1]), ()):
            # gate and up rows name the same MLP neuron: one key for both
            group = "mlp" if kind.startswith("mlp") else kind
            held |= {(group, row.layer, i) for i in (union.get(kind) or [set()] * num_layers)[row.layer]}
    return len(held)


def _part_of(adapter, relative: str) -> str:
    """"mlp" / "attention" from the adapter's projection paths (their parent attribute)."""
    parents = {p.path.rsplit(".", 1)[0]: kind.split("_")[0] for kind, p in adapter.projections.items()}
    parent = relative.rsplit(".", 1)[0] if "." in relative else ""
    part = parents.get(parent)
    return {"mlp": "mlp", "attn": "attention"}.get(part, "other")


def count_modules(model: nn.Module, neuron_sets) -> list[ModuleCount]:
    """Every ``nn.Linear`` of every decoder layer with its neuron count (module docstring)."""
    adapter = adapter_for(model.config)
    layers = decoder_layers(model)
    prefix = _layer_path(model)
    union = _neurons_per_layer(neuron_sets, len(layers))
    rows = []
    for layer_idx, layer in enumerate(layers):
        position = 0
        for relative, module in layer.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            part, neurons = _count_rule(union, layer_idx, _part_of(adapter, relative), relative.rsplit(".", 1)[-1])
            params = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append(ModuleCount(f"{prefix}.{layer_idx}.{relative}", layer_idx, part, neurons, params, position))
            position += 1
    return rows


def check_sets_hold_neurons(neuron_sets) -> None:
    """Refuse sets whose union is empty: every module would count 0 and the ranking would be the
    layer order (and a comparison of such choices says nothing about the sets)."""
    if neuron_sets and not any(len(s) for s in neuron_sets):
        names = ", ".join(str(s.source) for s in neuron_sets)
        raise ValueError(f"--sets {names}: the set{'s hold' if len(neuron_sets) > 1 else ' holds'} 0 neurons, so no "
                         "module holds any and the ranking would be the layer order; give a set with neurons")


def check_target_modules(model: nn.Module, names: list[str], source) -> None:
    """Every name of a module file must be an ``nn.Linear`` of ``model`` (PEFT's target_modules and
    the parameters a full update trains); checked on the model's structure before weights load."""
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"--modules {source}: {name!r} is not a module of this model (was the file made for "
                             "another model?)") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"--modules {source}: {name!r} is a {type(module).__name__}, not a linear module; "
                             "culnig-modules files name nn.Linear modules such as model.layers.0.mlp.gate_proj")


def total_parameters(model: nn.Module) -> int:
    """All parameters, tied ones once (``parameters()`` de-duplicates shared tensors)."""
    return sum(p.numel() for p in model.parameters())


def check_budget(budget) -> float:
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise ValueError(f"--budget {budget!r}: give a fraction of the model's parameters, e.g. 0.1") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"--budget {budget!r}: must be between 0 and 1 (a fraction of all parameters, e.g. 0.1)")
    return value


def ordered(rows: list[ModuleCount], choice: str, seed: int = 0) -> list[ModuleCount]:
    """The ranking that ``choice`` takes modules from (module docstring)."""
    if choice not in CHOICES:
        raise ValueError(f"--choice {choice!r}: use one of {', '.join(CHOICES)}")
    stable = sorted(rows, key=lambda r: (r.layer, r.position))
    if choice == "top":
        return sorted(stable, key=lambda r: -r.neurons)
    shuffled = list(stable)
    random.Random(seed).shuffle(shuffled)
    if choice == "bottom":
        return sorted(shuffled, key=lambda r: r.neurons)  # sort is stable: ties keep the seeded order
    return shuffled


def choose(rows: list[ModuleCount], total: int, choice: str, budget: float, seed: int = 0) -> list[ModuleCount]:
    """Modules in ranking order until their parameters reach ``budget × total``."""
    target = check_budget(budget) * total
    chosen, size = [], 0
    for row in ordered(rows, choice, seed):
        if size >= target:
            break
        chosen.append(row)
        size += row.parameters
    if size < target:
        raise ValueError(f"--budget {budget}: the decoder layers' linear modules hold only "
                         f"{size / total:.1%} of the parameters; choose a smaller budget")
    return chosen


@dataclass
class ModuleChoice:
    """What ``culnig-modules`` writes: PEFT ``target_modules`` and the parameters to train."""

    choice: str
    budget: float
    seed: int
    total_parameters: int
    target_modules: list[str]
    trainable_parameters: list[str]
    table: list[dict]  # every module in ranking order: name, layer, part, neurons, parameters, chosen
    sets: list[dict]
    neurons_held: int = 0  # distinct neurons of the sets held by the chosen modules

    @property
    def chosen_parameters(self) -> int:
        return sum(r["parameters"] for r in self.table if r["chosen"])

    def to_dict(self) -> dict:
        return {"format": "culnig-modules/1", **asdict(self),
                "chosen_parameters": self.chosen_parameters,
                "chosen_fraction": self.chosen_parameters / self.total_parameters}


def module_choice(model: nn.Module, neuron_sets, choice: str, budget: float, seed: int = 0) -> ModuleChoice:
    rows = count_modules(model, neuron_sets)
    total = total_parameters(model)
    chosen = choose(rows, total, choice, budget, seed)
    names = {r.name for r in chosen}
    params = [f"{name}.{p}" for r in chosen for name in [r.name]
              for p, _ in model.get_submodule(r.name).named_parameters(recurse=False)]
    table = [{**asdict(r), "chosen": r.name in names} for r in ordered(rows, choice, seed)]
    for entry in table:
        entry.pop("position")
    sets = [{"source": s.source, "neurons": len(s), "method": s.meta.get("method")} for s in neuron_sets]
    held = neurons_held(chosen, neuron_sets, len(decoder_layers(model)))
    return ModuleChoice(choice, float(budget), int(seed), total, [r.name for r in chosen], params, table, sets, held)


def load_choice(path) -> dict:
    """A ``culnig-modules`` file (JSON or YAML), checked."""
    import json
    from pathlib import Path

    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"--modules {path}: no such file (make one with culnig-modules)") from None
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"--modules {path}: not a culnig-modules JSON/YAML file ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("format") != "culnig-modules/1" \
            or not isinstance(data.get("target_modules"), list) or not data["target_modules"] \
            or not all(isinstance(n, str) for n in data["target_modules"]):
        raise ValueError(f"--modules {path}: not a culnig-modules/1 file with a non-empty target_modules list")
    return data


def format_table(choice: ModuleChoice, limit: int | None = None) -> str:
    """Plain-text table: module, neurons, parameters, cumulative fraction (chosen rows marked)."""
    lines = [f"{'':2}{'module':<44} {'neurons':>8} {'parameters':>12} {'cumulative':>10}"]
    cumulative = 0
    for row in choice.table[:limit]:
        if row["chosen"]:
            cumulative += row["parameters"]
        mark = "* " if row["chosen"] else "  "
        lines.append(f"{mark}{row['name']:<44} {row['neurons']:>8} {row['parameters']:>12,} "
                     f"{cumulative / choice.total_parameters:>10.2%}")
    if limit is not None and len(choice.table) > limit:
        lines.append(f"  ... {len(choice.table) - limit} more modules")
    lines.append(f"{choice.choice}: {len(choice.target_modules)} modules, {choice.chosen_parameters:,} of "
                 f"{choice.total_parameters:,} parameters ({choice.chosen_parameters / choice.total_parameters:.2%}; "
                 f"budget {choice.budget:.0%}), holding {choice.neurons_held} distinct neurons of the sets")
    return "\n".join(lines)


def trainable_only(model: nn.Module, parameter_names: list[str]) -> int:
    """Freeze everything but ``parameter_names``; returns the number of trainable parameters."""
    wanted = set(parameter_names)
    named = dict(model.named_parameters())
    missing = sorted(wanted - set(named))
    if missing:
        raise ValueError(f"the module choice names parameters this model does not have: {', '.join(missing[:3])}"
                         + (" ..." if len(missing) > 3 else "") + " (was it made for another model?)")
    count = 0
    for name, param in named.items():
        param.requires_grad_(name in wanted)
        count += param.numel() if name in wanted else 0
    return count


def parameter_names_of(model: nn.Module, module_names: list[str]) -> list[str]:
    names = []
    for module_name in module_names:
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ValueError(f"module {module_name!r} is not in this model (was the choice made for another model?)") \
                from None
        names += [f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)]
    return names


def meta_model(model_args: str) -> nn.Module:
    """The model's structure without its weights (meta device): enough to count and choose."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..model.embedded import resolve_pretrained
    from ..model.lm import parse_model_args

    args = parse_model_args(model_args)
    config = AutoConfig.from_pretrained(str(resolve_pretrained(args["pretrained"])),
                                        trust_remote_code=bool(args.get("trust_remote_code", False)))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
