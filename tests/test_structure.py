"""The package's shape, checked from its source (issue 11's goals): layers import downward only,
with no cycle even through imports inside functions; no module or function grows past what a
reader takes in at once; AWS is called from a few edge modules; handlers are one call each."""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "layers" / "parallelrun"
PACKAGE = SOURCE / "parallelrun"

# Lower layers first: a module may import its own layer and the layers before it, never after.
LAYERS = ["core", "aws", "store", "scoring", "pipeline", "local", "client"]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_LONG_FUNCTIONS = 2  # the argparse table may be one
MAX_AWS_MODULES = 8


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def layer(self) -> str:
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else ""


@functools.cache
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        found[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return found


def _resolve(module: Module, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package modules an import statement loads (``from a import b`` loads ``a.b`` if it is one)."""
    known = modules()
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.name.split(".")
            if module.path.name != "__init__.py":
                package.pop()
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    resolved = []
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module.name:
            resolved.append(target)
    return resolved


@functools.cache
def imports() -> dict[str, set[str]]:
    """Every module's imports of the package's modules, those inside functions included."""
    graph: dict[str, set[str]] = {}
    for module in modules().values():
        graph[module.name] = {target for node in ast.walk(module.tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                              for target in _resolve(module, node)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in graph.get(name, ()):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == name:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_even_inside_functions() -> None:
    assert cycles(imports()) == []


def test_layers_import_downward_only() -> None:
    known = modules()
    upward = []
    for name, targets in imports().items():
        layer = known[name].layer
        if layer not in LAYERS:
            continue
        for target in targets:
            other = known[target].layer
            if other in LAYERS and LAYERS.index(other) > LAYERS.index(layer):
                upward.append(f"{name} → {target}")
    assert upward == []


def test_every_module_is_in_a_layer() -> None:
    loose = [name for name, module in modules().items() if name != "parallelrun" and module.layer not in LAYERS]
    assert loose == []


def test_core_is_pure() -> None:
    impure = [f"{name} imports {alias}" for name, module in modules().items() if module.layer == "core"
              for node in ast.walk(module.tree) if isinstance(node, (ast.Import, ast.ImportFrom))
              for alias in ([node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
              if alias.split(".")[0] in ("boto3", "botocore", "moto") or alias.startswith("parallelrun.aws")]
    assert impure == []


def test_no_module_is_over_400_lines() -> None:
    long = {name: n for name, module in modules().items() if (n := len(module.path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_at_most_two_functions_are_over_60_lines() -> None:
    long = sorted(f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
                  for name, module in modules().items() for node in ast.walk(module.tree)
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES)
    assert len(long) <= MAX_LONG_FUNCTIONS, long


def _calls_aws(module: Module) -> bool:
    """Whether a module makes AWS clients or calls them: the shared clients (``aws.client``,
    ``aws.table``) or boto3 directly."""
    for node in ast.walk(module.tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(n == "boto3" or n.startswith("boto3.") for n in names):
                return True
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("client", "table")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "aws"):
            return True
    return False


def test_aws_is_called_from_at_most_eight_modules() -> None:
    callers = sorted(name for name, module in modules().items() if _calls_aws(module))
    assert len(callers) <= MAX_AWS_MODULES, callers


@pytest.mark.parametrize("app", sorted((ROOT / "functions").glob("*/app.py")), ids=lambda p: p.parent.name)
def test_handlers_are_one_call_each(app: Path) -> None:
    tree = ast.parse(app.read_text())
    handler = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "handler")
    body = [node for node in handler.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    assert len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, ast.Call)
