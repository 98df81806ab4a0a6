"""The package layout: no import circle, no private name used across modules, no product file over
600 lines, and a docstring saying what every package holds.

The imports are read from the source (every ``import`` and ``from ... import``, inside functions
too, relative ones resolved), so a circle hidden by a function-level import is found as well.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "culnig_lm_eval"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 600


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. culnig_lm_eval.report.render; a package is its __init__
    path: Path
    is_package: bool

    @property
    def tree(self) -> ast.Module:
        return ast.parse(self.path.read_text(encoding="utf-8"), str(self.path))


def product_modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, path, is_package)
    return modules


MODULES = product_modules()


def imported(module: Module, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(absolute module, imported name or None) for every name of one import statement."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    if node.level:
        base = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [(target, alias.name) for alias in node.names]


def edges(module: Module) -> set[str]:
    """The product modules ``module`` imports: a submodule when the name is one, else the module
    (or the package's ``__init__``) the name is taken from."""
    found = set()
    for node in ast.walk(module.tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for target, name in imported(module, node):
            if name is not None and f"{target}.{name}" in MODULES:
                found.add(f"{target}.{name}")
            elif target in MODULES:
                found.add(target)
    found.discard(module.name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, colours white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions():
    render = edges(MODULES[f"{PACKAGE}.report.render"])
    assert f"{PACKAGE}.report.figures" in render and f"{PACKAGE}._io" in render
    assert f"{PACKAGE}.report.render" in edges(MODULES[f"{PACKAGE}.report"])  # a lazy import in __getattr__
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    graph = {name: edges(module) for name, module in MODULES.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def private_uses(module: Module) -> list[str]:
    """``from x import _name`` and ``x._name`` where ``x`` is another product module."""
    found, aliases = [], {}
    for node in ast.walk(module.tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for (target, name), alias in zip(imported(module, node), node.names):
            bound = alias.asname or (alias.name if name is not None else None)
            if name is not None and f"{target}.{name}" in MODULES:
                aliases[bound] = f"{target}.{name}"  # a module: private modules such as _io are fine
            elif name is None and alias.asname and target in MODULES:
                aliases[bound] = target
            elif (name or "").startswith("_") and not name.startswith("__") and target.startswith(PACKAGE):
                found.append(f"line {node.lineno}: from {target} import {name}")
    for node in ast.walk(module.tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"line {node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_used_across_modules():
    bad = {name: uses for name, module in MODULES.items() if (uses := private_uses(module))}
    assert not bad, "private names used across modules: " + "; ".join(
        f"{name} {use}" for name, uses in bad.items() for use in uses)


def test_no_product_file_over_the_limit():
    long = {m.path.relative_to(ROOT.parent).as_posix(): n for m in MODULES.values()
            if (n := m.path.read_text(encoding="utf-8").count("\n")) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split them by job): {long}"


def test_every_package_says_what_it_holds():
    silent = [m.path.relative_to(ROOT.parent).as_posix() for m in MODULES.values()
              if m.is_package and not (ast.get_docstring(m.tree) or "").strip()]
    assert not silent, f"give these packages a docstring saying what they hold: {silent}"
