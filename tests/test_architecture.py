"""Structure checks: the import graph has no cycle and generic code knows no model.

Imports inside functions count: a cycle hidden by a function-level import
still ties the modules together for anyone changing them.
"""

import ast
import pathlib

import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[1] / "mistral_hub"
# Model families live in their own folders under `models/`; everything else
# in the package is generic machinery.
MODEL_FAMILY_PACKAGES = ("mistral_hub.models.mistral",)


def _module_name(path):
    relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}


def _imports(module, path, modules):
    """Package modules imported anywhere in `path` (functions included)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            # `from a.b import c` imports module a.b.c when it is one, else a.b.
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def _graph():
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _is_family_module(name):
    return any(name == p or name.startswith(p + ".") for p in MODEL_FAMILY_PACKAGES)


def test_generic_modules_import_no_model_family():
    offenders = {
        module: sorted(i for i in imports if _is_family_module(i))
        for module, imports in _graph().items()
        # The package roots re-export the public API, the one place that
        # names every model.
        if not _is_family_module(module)
        and module not in ("mistral_hub", "mistral_hub.models")
    }
    offenders = {m: i for m, i in offenders.items() if i}
    assert not offenders, f"generic modules import model families: {offenders}"


def test_import_graph_has_no_cycle():
    graph = _graph()
    # Package `__init__` modules only re-export; an edge into one stands for
    # the submodule really used, so they are left out of the cycle search.
    packages = {m for m in graph if (PACKAGE_ROOT.parent / m.replace(".", "/") / "__init__.py").exists()}
    edges = {m: {i for i in deps if i not in packages} for m, deps in graph.items() if m not in packages}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_module_size_is_bounded(module):
    lines = len(_modules()[module].read_text(encoding="utf-8").splitlines())
    assert lines <= 600, f"{module} has {lines} lines; split it by concept"
