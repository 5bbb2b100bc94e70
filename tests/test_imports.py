"""One concept per module, and no import circles: the package's import graph is acyclic, lazy imports included."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import persyn_hub

PACKAGE = Path(persyn_hub.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: path
        for name, path in found.items()
        if "evaluate_modules" not in name or name.endswith("routing_metrics")
    }


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """persyn_hub modules a file imports anywhere (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets.add(base)
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rsplit(".", 1)[0] if "." in target else ""
        if target and target != name:
            resolved.add(target)
    return resolved


def test_the_import_graph_has_no_cycles():
    found = modules()
    # every import counts, a module's import of its own parent package too (`from persyn_hub.generation
    # import x` inside persyn_hub/generation/y.py runs that __init__, and what it imports); importing a
    # submodule runs its package's __init__ first, but a docstring-only __init__ has no edges to close a cycle
    graph = {name: imported(path, name, set(found)) for name, path in found.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                cycles.append(trail[trail.index(child) :] + [child] if child in trail else [node, child])
            elif child not in state:
                visit(child, [*trail, child])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_every_module_imports_alone():
    """Each module in a fresh interpreter (one process, `sys.modules` cleared of persyn_hub in between)."""
    names = sorted(modules())
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in ('persyn_hub',)]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed.append(f'{name}: {type(error).__name__}: {error}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert importlib.import_module("persyn_hub.router").load_router


def test_an_import_inside_a_function_says_why_it_is_not_at_the_top():
    """A file's dependencies are read at its top; an internal import inside a function (kept there so a
    light path, `import persyn_hub` or `persyn --help`, does not load torch, or to break a load-time cycle)
    carries a comment on its line or the line above saying which."""
    silent = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                internal = node.level > 0 if isinstance(node, ast.ImportFrom) else False
                names = (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                )
                if not internal and not any(n.startswith("persyn_hub") for n in names):
                    continue
                here, above = lines[node.lineno - 1], node.lineno - 2
                while above >= 0 and lines[above].lstrip().startswith(("from ", "import ")):
                    above -= 1  # one comment may head a block of lazy imports
                if "#" not in here and not (above >= 0 and lines[above].strip().startswith("#")):
                    silent.append(f"{name}:{node.lineno}: {here.strip()}")
    assert not silent, "in-function imports without a reason:\n" + "\n".join(sorted(set(silent)))


def test_no_module_over_400_lines_and_no_function_over_80():
    """Small modules with one concept each: a module that outgrows 400 lines holds two concepts (the evaluate
    module included, which must stay one self-contained file), a function over 80 lines mixes concerns."""
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{path.relative_to(PACKAGE)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_long.append(f"{path.relative_to(PACKAGE)}::{node.name}: {length} lines")
    assert not too_long, too_long


def test_no_code_reads_another_objects_underscored_attributes():
    """A class's underscored attributes are its own: code outside the class (another class, a function)
    asks for what it needs through a public name, so a class can change its insides alone."""
    own: set[str] = set()
    trees = {path: ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}
    for tree in trees.values():
        for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
            for node in ast.walk(cls):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_"):
                    own.add(node.name)
                elif (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                    and isinstance(node.ctx, ast.Store)
                ):
                    own.add(node.attr)
    own = {name for name in own if name.startswith("_") and not name.startswith("__")}
    reads = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value.id}.{node.attr}"
        for path, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in own
        and isinstance(node.value, ast.Name)
        and node.value.id not in ("self", "cls")
    ]
    assert not reads, reads
