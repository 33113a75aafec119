"""Every import a Python file makes, found with ``ast``: module level and inside functions, relative
imports resolved, ``from pkg import sub`` counted as ``pkg.sub``."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Tuple


def imports(path: Path, root: Path, top: str) -> Iterator[Tuple[int, str]]:
    package = [top, *path.relative_to(root).with_suffix("").parts][:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield node.lineno, mod
            for a in node.names:  # `from cvops import export` imports the package cvops.export
                yield node.lineno, f"{mod}.{a.name}"
