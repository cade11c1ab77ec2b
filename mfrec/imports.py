"""mfrec's own import graph, read from the source (no module is executed).

What a logged model carries is the part of the package its pyfunc imports; the architecture
test checks depth and cycles on the same graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def module_path(name: str) -> Path:
    """The source file of module ``name`` (``mfrec.x.y``): ``x/y.py`` or ``x/y/__init__.py``."""
    base = PACKAGE_DIR.joinpath(*name.split(".")[1:])
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def own_imports(name: str) -> set[str]:
    """The mfrec modules that module ``name`` imports, anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(module_path(name).read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "mfrec"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "mfrec":
            for alias in node.names:  # `from mfrec.x import y`: y is a module or a name in x
                sub = f"{node.module}.{alias.name}"
                found.add(sub if module_path(sub).exists() else node.module)
    return {m for m in found if module_path(m).exists()}


def closure(name: str) -> set[str]:
    """``name`` and every mfrec module it imports, directly or not, with their packages."""
    seen, pending = set(), [name]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]  # packages run their __init__
        pending += sorted(own_imports(module))
    return seen
