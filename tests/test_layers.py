"""The layering the code relies on, read from the source (no imports executed).

- ``persistence/`` never imports Django, nor anything of ``dashboard``.
- No import cycle among ``dashboard`` modules: the graph of their imports (top-level and the
  lazy ones inside functions alike) is acyclic, so models never reach back into operations or
  jobs, and each operation module can be read without the ones that call it.
- No module in ``dashboard/`` is much over 500 lines, and no class over 250.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_LINES, CLASS_LINES = 520, 250


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, is_package: bool) -> set[str]:
    """Every module name ``path`` imports, with relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    base = name.split(".") if is_package else name.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # ``from pkg import module``
    return names


def _graph(package: str) -> dict[str, set[str]]:
    modules = _modules(package)
    graph = {}
    for name, path in modules.items():
        targets = _imports(name, path, path.name == "__init__.py")
        # A package's __init__ only re-exports: edges into it stand for its submodules, which
        # are nodes of their own, so they are left out.
        graph[name] = {t for t in targets if t in modules and t != name and not modules[t].name == "__init__.py"}
    return graph


def test_persistence_imports_no_django_and_no_dashboard():
    for name, path in _modules("persistence").items():
        imported = _imports(name, path, path.name == "__init__.py")
        bad = sorted(m for m in imported if m.split(".")[0] in {"django", "dashboard"})
        assert not bad, f"{name} imports {bad}"


def test_dashboard_modules_import_each_other_without_cycles():
    graph = _graph("dashboard")
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_models_do_not_import_operations_or_jobs():
    graph = _graph("dashboard")
    for name, targets in graph.items():
        if name.startswith("dashboard.models"):
            above = sorted(t for t in targets if not t.startswith(("dashboard.models", "dashboard.roots")))
            assert not above, f"{name} imports {above}"


def test_modules_and_classes_stay_small():
    for name, path in _modules("dashboard").items():
        text = path.read_text()
        assert text.count("\n") <= MODULE_LINES, f"{name}: {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= CLASS_LINES, f"{name}.{node.name}: {length} lines"
