"""Imports flow one way: the layer order is declared here, once, and every import in the package obeys it.

A module may import modules of its own layer group's package and of lower layers only. Peers (packages in one
layer) do not import each other. Function-level imports count as much as module-level ones: an import
placed inside a function to dodge a cycle is still an upward edge. No cycles among the package's modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import convert

PACKAGE = Path(convert.__file__).parent

# Lowest first. Each entry: the top-level parts of `convert` in that layer (peers: none imports another).
LAYERS: list[tuple[str, ...]] = [
    ("_version", "errors"),
    ("primitives",),            # opening sources safely, hashing, fsync/rename, temp folders, locks, fault hooks
    ("model",),                 # records, torch types + dtypes, views, limits, tensor bytes
    ("sidecar",),               # the format: codec, schema, JSON I/O, integrity checks
    ("sign",),                  # OpenSSF model signing of a finished folder, trust policies (optional dependency)
    ("read", "write", "load"),  # the pickle reader; the folder writer; the folder loader
    ("sources",),               # every input kind as a Source; discovery
    ("ops", "scan"),            # convert/verify/inspect/read/save over any Source; scan beside it
    ("export",),                # plain weights out of any Source (uses ops.checkpoint.open_source)
    ("migrate",),               # folders and fleets: discovery + ops
    ("api",),                   # the public API: re-exports of the operations
    ("cli", "lightning"),       # front ends
    ("__init__", "__main__"),
]
LAYER_OF = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            target = node.module or ""
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                name = f"{target}.{alias.name}"
                found.add(name if name in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules and name != module}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_every_part_has_a_layer():
    assert {_part(m) for m in _modules()} <= set(LAYER_OF), "a new top-level module: add it to LAYERS"


def test_imports_flow_downward():
    wrong = []
    for module, targets in _graph().items():
        here = _part(module)
        for target in targets:
            there = _part(target)
            if there != here and LAYER_OF[there] >= LAYER_OF[here]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
