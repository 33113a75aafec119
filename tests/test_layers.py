"""The house rules: no stage package imports another; shared layers import no stage; only the entrances
import the runner; nothing but ``cli.py`` imports the commands; no import circle; no assignment to another
library's classes.

The entrances are where a user comes in: the ``cvops`` command (``cli.py``), its verbs (``commands/``) and
the Python API (``api.py``: ``cvops.run``, ``cvops.load``). They ask the stage packages and the runner for
work; nothing inside asks them for anything.

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
#: The entrances (first component of the module's path under ``cvops/``): they may import stage packages
#: (``loop``: the automated loop, which a scheduler enters through ``cvops loop``)
#: and the runner; no other module imports them (``cvops.commands``: only ``cli.py``).
ENTRANCES = ("cli", "commands", "api", "loop")


def owner(module: str, top: str, stages: Sequence[str]) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == top and len(parts) > 1 and parts[1] in stages else None


def violations(root: Path, top: str = "cvops", stages: Sequence[str] = BUILTIN_NAMES) -> List[str]:
    """``file:line -> module`` for every import that crosses from one stage package into another, or from
    a module outside the stage packages' plumbing (a shared layer) into a stage."""
    out = []
    shared_may_import = set(ENTRANCES)  # an entrance asks a stage package for its work (cvops serve, cvops.load)
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


# ----------------------------------------------------------------- the commands' room and the import graph
def _modules(root: Path, top: str = "cvops") -> dict:
    """Module name -> file, for every ``.py`` file under ``root`` (a package's ``__init__.py`` by its name)."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = [top, *f.relative_to(root).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def lazy_attribute_lines(path: Path) -> set:
    """The lines of a module-level ``def __getattr__`` (PEP 562: a module's lazy attributes) in ``path``."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {line for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1)}


def _edges(root: Path, top: str = "cvops") -> dict:
    """Module -> the set of ``top`` modules it imports (at any depth: module level and inside functions);
    ``from pkg import name`` counts as ``pkg.name`` when that is a module, else as ``pkg``.

    One kind of import is not an edge: the package's front door (``top/__init__.py``) importing, inside its
    ``__getattr__``, the module of a lazy attribute (``cvops.run`` -> ``cvops.api``). Every module imports
    its package first (an edge back to the package is implicit everywhere), and ``__getattr__`` runs only
    when a caller asks the loaded package for that name, never while the package loads, so it closes no
    circle; :func:`test_the_front_door_imports_nothing_of_cvops_as_it_loads` holds the package to that."""
    mods = _modules(root, top)
    out = {}
    for name, f in mods.items():
        targets = set()
        lazy = lazy_attribute_lines(f) if name == top else set()
        for line, mod in imports(f, root, top):
            if line in lazy:
                continue
            if mod == top or mod.startswith(top + "."):
                while mod not in mods and "." in mod:  # `from cvops.x import function` -> cvops.x
                    mod = mod.rsplit(".", 1)[0]
                if mod in mods and mod != name:
                    targets.add(mod)
        out[name] = targets
    return out


def importers(root: Path, target: str, top: str = "cvops") -> List[str]:
    """The modules (outside ``target`` itself) that import ``target`` or anything in it."""
    return sorted(m for m, ts in _edges(root, top).items()
                  if not (m == target or m.startswith(target + ".")) and any(t == target or t.startswith(target + ".")
                                                                             for t in ts))


def cycles(root: Path, top: str = "cvops") -> List[List[str]]:
    """Every import circle (a strongly connected component of more than one module, or a module importing
    itself), each as its sorted module names (Tarjan's algorithm, iterative)."""
    graph = _edges(root, top)
    index: dict = {}
    low: dict = {}
    on, stack, found = set(), [], []
    counter = [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def entrance(module: str, top: str = "cvops") -> bool:
    """``module`` is one of the :data:`ENTRANCES` (or inside one: ``cvops.commands.serve``)."""
    return any(module == f"{top}.{e}" or module.startswith(f"{top}.{e}.") for e in ENTRANCES)


def test_only_the_entrances_import_the_runner():
    """The runner runs a recipe's stages for whoever a user came in through: the command line (``cvops.cli``,
    ``cvops.commands``) or the Python API (``cvops.api``). A shared layer or a stage never does."""
    found = [m for m in importers(PKG, "cvops.runner") if not entrance(m)]
    assert not found, f"modules that import cvops.runner (only the entrances {ENTRANCES} may): {found}"


def test_nothing_imports_the_python_api_but_the_package_front_door():
    """``cvops.api`` is an entrance: only the package's lazy attributes (``cvops.run``) lead to it."""
    found = [m for m in importers(PKG, "cvops.api") if m != "cvops"]
    assert not found, f"modules that import cvops.api (only cvops/__init__.py, lazily, may): {found}"


def test_nothing_imports_the_command_package_but_the_entry_point():
    found = [m for m in importers(PKG, "cvops.commands") if m != "cvops.cli"]
    assert not found, f"modules that import cvops.commands (only cvops.cli may): {found}"


def test_the_front_door_imports_nothing_of_cvops_as_it_loads():
    """``cvops/__init__.py`` imports cvops modules in its ``__getattr__`` only (``import cvops`` stays light,
    and the lazy imports are the only ones :func:`_edges` leaves out)."""
    init = PKG / "__init__.py"
    lazy = lazy_attribute_lines(init)
    eager = [f"cvops/__init__.py:{line} -> {mod}" for line, mod in imports(init, PKG, "cvops")
             if (mod == "cvops" or mod.startswith("cvops.")) and line not in lazy]
    assert not eager, f"the package's front door imports cvops modules as it loads: {eager}"


def test_no_import_circle_anywhere_in_the_package():
    found = cycles(PKG)
    assert not found, "import circles (imports inside functions count too):\n" + "\n".join(map(" -> ".join, found))


def test_the_graph_rules_find_what_they_look_for(tmp_path):
    root = tmp_path / "pkg"
    (root / "commands").mkdir(parents=True)
    for f, text in {"__init__.py": "", "cli.py": "from pkg.commands import serve\n",
                    "commands/__init__.py": "", "commands/serve.py": "def main():\n    from pkg import runner\n",
                    "runner.py": "from pkg.a import f\n", "a.py": "def f():\n    from pkg.b import g\n",
                    "b.py": "from pkg import a\nimport pkg.commands.serve\n"}.items():
        (root / f).write_text(text)
    assert importers(root, "pkg.runner", "pkg") == ["pkg.commands.serve"]
    assert importers(root, "pkg.commands", "pkg") == ["pkg.b", "pkg.cli"]
    assert cycles(root, "pkg") == [["pkg.a", "pkg.b", "pkg.commands.serve", "pkg.runner"]]


def test_only_the_front_doors_lazy_attributes_are_left_out(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("def __getattr__(name):\n    from pkg import api\n    return api\n"
                                      "def helper():\n    from pkg import b\n")
    (root / "sub" / "__init__.py").write_text("def __getattr__(name):\n    from pkg import a\n")
    for f, text in {"api.py": "from pkg import a\n", "a.py": "import pkg\n", "b.py": ""}.items():
        (root / f).write_text(text)
    edges = _edges(root, "pkg")
    assert edges["pkg"] == {"pkg.b"}  # a plain function of the front door counts; its __getattr__ does not
    assert "pkg.a" in edges["pkg.sub"]  # only the top package's front door is special
    assert cycles(root, "pkg") == []  # pkg -(lazy)-> pkg.api -> pkg.a -> pkg is no load-order circle
    assert importers(root, "pkg.api", "pkg") == []


# ------------------------------------------------------------- no patched libraries (STYLE rule 17)
def class_patches(root: Path, top: str = "cvops") -> List[str]:
    """``file:line target`` for every assignment to (or ``setattr``/``del`` on) an attribute of a class from
    outside the package: a name imported from another package that reads as a class (``Hydra``), or a
    dotted path through an imported module that ends in one (``hydra._internal.hydra.Hydra``)."""
    import ast

    out = []
    for f in sorted(root.rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        foreign = {}  # local name -> (is it a class by its imported name, is it a module)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and not (node.module or "").startswith(top):
                for a in node.names:
                    foreign[a.asname or a.name] = a.name[:1].isupper()
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if not a.name.startswith(top):
                        foreign[a.asname or a.name.split(".")[0]] = False

        def classy(expr: ast.AST) -> bool:
            """``expr`` names a class from outside the package."""
            if isinstance(expr, ast.Name):
                return foreign.get(expr.id, False)
            chain = []
            while isinstance(expr, ast.Attribute):
                chain.append(expr.attr)
                expr = expr.value
            return isinstance(expr, ast.Name) and expr.id in foreign and bool(chain) and chain[0][:1].isupper()

        for node in ast.walk(tree):
            targets = []
            if isinstance(node, (ast.Assign, ast.Delete)):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("setattr", "delattr") and node.args and classy(node.args[0])):
                out.append(f"{top}/{f.relative_to(root)}:{node.lineno} {node.func.id}({ast.unparse(node.args[0])}, ...)")
            flat = []
            for t in targets:
                flat += list(t.elts) if isinstance(t, (ast.Tuple, ast.List)) else [t]
            for t in flat:
                if isinstance(t, ast.Attribute) and classy(t.value):
                    out.append(f"{top}/{f.relative_to(root)}:{node.lineno} {ast.unparse(t)}")
    return out


def test_no_assignment_to_a_third_party_class_attribute():
    found = class_patches(PKG)
    assert not found, ("assignments to another library's classes (compose around it, STYLE rule 17):\n"
                       + "\n".join(found))


def test_the_patch_finder_finds_every_kind(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "m.py").write_text(
        "import hydra._internal.hydra\nfrom hydra._internal.hydra import Hydra\nfrom pkg.own import Mine\nimport sys\n"
        "Hydra.get_mode = None\n"                                  # 5
        "hydra._internal.hydra.Hydra.run = None\n"                 # 6
        "def f():\n    from omegaconf import OmegaConf as O\n    O.x, y = 1, 2\n"  # 9
        "setattr(Hydra, 'run', None)\n"                            # 10
        "Mine.x = 1\nsys.argv = []\nhydra.x = 1\n")                # allowed: our class, modules
    assert class_patches(root, "pkg") == ["pkg/m.py:5 Hydra.get_mode", "pkg/m.py:6 hydra._internal.hydra.Hydra.run",
                                          "pkg/m.py:9 O.x", "pkg/m.py:10 setattr(Hydra, ...)"]
