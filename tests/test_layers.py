"""The layer stack (DESIGN.md): fer_cli -> flows -> fer_models -> fer_data. Nothing imports upward,
the project's modules import each other without cycles, and importing the data library leaves the
process as it was (no environment variables set, no Prefect, no models).

Imports are read from the source with `ast`, inside functions too: a lazy import is still a
dependency. Package registries that load their submodules by name (`importlib.import_module`)
are invisible here, by design."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from fer_cli.env import OFFLINE_ENV

ROOT = Path(__file__).resolve().parent.parent
# Each layer and the layers it may import (besides itself).
MAY_IMPORT = {
    "fer_cli": {"flows", "fer_models", "fer_data"},
    "flows": {"fer_models", "fer_data"},
    "fer_models": {"fer_data"},
    "fer_data": set(),
}


def _module_files() -> dict[str, Path]:
    """Every module of the four layers by dotted name (a package by its own name)."""
    files = {}
    for layer in MAY_IMPORT:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


MODULES = _module_files()


def _imports(module: str, path: Path) -> set[str]:
    """Dotted names a module imports: `from pkg import name` is `pkg.name` where that module
    exists, else `pkg`; relative imports resolved against the module's package."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
    return found


def _project_imports() -> dict[str, set[str]]:
    """Per module, the project modules it imports. Importing `a.b.c` also runs `a/b/__init__.py`,
    so enclosing packages count too, except the importer's own (Python has run them already)."""
    graph = {}
    for module, path in MODULES.items():
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
        targets = set()
        for name in _imports(module, path):
            parts = name.split(".")
            if parts[0] in MAY_IMPORT:
                targets.add(name)
                targets.update({".".join(parts[:i]) for i in range(1, len(parts))} - own)
        graph[module] = targets - {module}
    return graph


def test_layers_import_only_downwards() -> None:
    upward = sorted(f"{module} imports {target}"
                    for module, targets in _project_imports().items() for target in targets
                    if (layer := module.split(".")[0]) != (other := target.split(".")[0])
                    and other not in MAY_IMPORT[layer])
    assert not upward, "against the layer order fer_cli -> flows -> fer_models -> fer_data:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = {m: {t for t in targets if t in MODULES} for m, targets in _project_imports().items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {' imports '.join(reversed(err.args[1]))}") from None


def _third_party_imports(layer: str) -> set[str]:
    """What a layer's modules import from outside the project when they are imported (not inside
    functions): those packages' own doings (cv2 and insightface set variables) are not the layer's."""
    names = set()
    for module, path in MODULES.items():
        if module.split(".")[0] != layer:
            continue
        pending: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
        while pending:
            node = pending.pop()
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add(node.module)
            elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                pending.extend(ast.iter_child_nodes(node))
    return {name for name in names if name.split(".")[0] not in MAY_IMPORT}


def test_importing_the_data_library_changes_nothing() -> None:
    """A fresh interpreter without the entry point's environment, which fer_data must not set."""
    code = textwrap.dedent("""
        import contextlib, importlib, os, sys
        for name in sys.argv[1:]:
            with contextlib.suppress(ImportError):  # platform-only packages (decord)
                importlib.import_module(name)
        before = dict(os.environ)
        import fer_data, fer_data.ingest, fer_data.catalog, fer_data.loaders, fer_data.datasets
        changed = sorted(k for k in before.keys() | os.environ.keys() if before.get(k) != os.environ.get(k))
        assert not changed, f"importing fer_data changed the environment: {changed}"
        loaded = [m for m in ("prefect", "fer_models", "flows", "fer_cli") if m in sys.modules]
        assert not loaded, f"importing fer_data imported {loaded}"
    """)
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    result = subprocess.run([sys.executable, "-c", code, *sorted(_third_party_imports("fer_data"))], cwd=ROOT,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
