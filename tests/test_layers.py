"""The house rule: no stage package imports another; shared layers import no stage.

Walks every module of the package with ``ast`` (imports at module level and
inside functions, relative imports resolved), so a lazy ``from cvops.export
import x`` inside a function is caught as surely as one at the top.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Sequence

import cvops
from cvops.stages import BUILTIN_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers.imports import imports  # noqa: E402

PKG = Path(cvops.__file__).resolve().parent


def owner(module: str, top: str, stages: Sequence[str]) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == top and len(parts) > 1 and parts[1] in stages else None


def violations(root: Path, top: str = "cvops", stages: Sequence[str] = BUILTIN_NAMES) -> List[str]:
    """``file:line -> module`` for every import that crosses from one stage package into another, or from
    a module outside the stage packages' plumbing (a shared layer) into a stage."""
    out = []
    shared_may_import = {"cli"}  # the command line dispatches to each stage's own command
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        here = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in stages else None
        for line, mod in imports(f, root, top):
            there = owner(mod, top, stages)
            if there is None or there == here:
                continue
            if here is None and rel.with_suffix("").parts[0] in shared_may_import:
                continue
            out.append(f"{top}/{rel}:{line} -> {mod}")
    return sorted(set(out))


def test_no_stage_package_imports_another_and_shared_layers_import_no_stage():
    found = violations(PKG)
    assert not found, "imports across rooms (move the shared code into a shared layer):\n" + "\n".join(found)


def test_the_walker_finds_every_kind_of_crossing(tmp_path):
    root = tmp_path / "pkg"
    for d in ("a", "b", "shared"):
        (root / d).mkdir(parents=True)
        (root / d / "__init__.py").write_text("")
    (root / "a" / "stage.py").write_text(
        "from pkg.b.stage import run\n"                       # top level
        "def f():\n    import pkg.b.helpers as h\n"           # inside a function
        "from ..b import helpers\n"                           # relative
        "from pkg import b\n"                                 # the package itself
        "from pkg.a import own\nfrom pkg.shared import ok\n")  # allowed
    (root / "shared" / "util.py").write_text("def g():\n    from pkg.a.stage import run\n")
    found = violations(root, "pkg", ("a", "b"))
    assert found == sorted([
        "pkg/a/stage.py:1 -> pkg.b.stage", "pkg/a/stage.py:1 -> pkg.b.stage.run",
        "pkg/a/stage.py:3 -> pkg.b.helpers",
        "pkg/a/stage.py:4 -> pkg.b", "pkg/a/stage.py:4 -> pkg.b.helpers",
        "pkg/a/stage.py:5 -> pkg.b",
        "pkg/shared/util.py:2 -> pkg.a.stage", "pkg/shared/util.py:2 -> pkg.a.stage.run",
    ]), found
