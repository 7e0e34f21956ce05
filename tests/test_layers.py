"""The package is layered: every module imports only from its own layer or the layers below it.

io -> nn -> models / tokenizers -> hub -> data / sampling -> editing / evaluation -> training -> demo / app -> cli.
Imports are read from the source (module level and inside functions alike), so a lazy import cannot hide an
upward dependency, and the graph of module-level imports has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import anyorder

PKG = Path(anyorder.__file__).parent
LAYERS = {"io": 0, "nn": 1, "models": 2, "tokenizers": 2, "hub": 3, "data": 4, "sampling": 4, "editing": 5,
          "evaluation": 5, "training": 6, "demo": 7, "app": 7, "cli": 8}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported anyorder module, line, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                base = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")
                if path.name == "__init__.py" and node.level > 1:
                    base = module.split(".")[: -(node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [stem] + [f"{stem}.{a.name}" for a in node.names]
        for name in names:
            if name == "anyorder" or name.startswith("anyorder."):
                found.append((name, node.lineno, id(node) in top))
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


MODULES = _modules()


def test_every_subpackage_and_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if m != "anyorder" and _layer(m) is None]
    assert not unplaced, f"modules outside the layer map {sorted(LAYERS)}: {unplaced}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "anyorder"))
def test_no_module_imports_from_a_layer_above_it(module: str) -> None:
    own = _layer(module)
    bad = []
    for name, line, _ in _imports(MODULES[module], module):
        if name == "anyorder":
            bad.append(f"line {line}: imports the package root (the public façade, top of every layer)")
            continue
        target = _layer(name)
        if target is not None and own is not None and target > own:
            bad.append(f"line {line}: {name} (layer {target}) from layer {own}")
    assert not bad, f"{module} imports upwards:\n" + "\n".join(bad)


def test_module_level_imports_have_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps = set()
        for name, _, at_top in _imports(path, module):
            if not at_top:
                continue
            # the longest known module the import names (``anyorder.nn.orders`` or its package)
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                deps.add(name)
        graph[module] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_layer_check_sees_an_upward_and_a_lazy_import(tmp_path: Path) -> None:
    """The checker itself: an upward import inside a function is found."""
    src = tmp_path / "mod.py"
    src.write_text("import torch\n\ndef f():\n    from anyorder.cli.main import main\n    return main\n")
    name, line, at_top = _imports(src, "anyorder.nn.fake")[0]
    assert name == "anyorder.cli.main" and line == 4 and not at_top
    assert _layer(name) > _layer("anyorder.nn.fake")
