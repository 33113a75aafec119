"""The cache contract, attacked key by key and module by module.

A stage's fingerprint must change exactly when something it reads changes:
every config key it reads and every cvops module it imports. Each key of the
composed quickstart recipe and each file of the cvops package is mutated, one
at a time, and the stages whose fingerprints moved must be exactly the stages
that read it plus everything downstream of them - nothing more (a needless
rebuild), nothing less (a stale artifact).

What a stage reads is established here independently of the runner: config
keys from the attribute chains ``ctx.config.<a>.<b>`` in the stage's source
(checked against its declaration; the typed view refuses anything else at run
time), modules by walking the package's imports with ``ast`` (the runner
scans lines with a regex).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import enum
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.nodes import BooleanNode, EnumNode, FloatNode, IntegerNode, StringNode

import cvops.fingerprint as fingerprint
from cvops.config import compose_config
from cvops.stages import BUILTIN, graph, typed_view

PKG = Path(fingerprint.__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers.imports import imports  # noqa: E402


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> DictConfig:
    return compose_config(["recipe=quickstart", f"paths.store={tmp_path_factory.mktemp('store')}"])


def downstream(g, names: Set[str]) -> Set[str]:
    out = set(names)
    changed = True
    while changed:
        changed = False
        for name, st in g.items():
            if name not in out and any(i in out for i in st.inputs):
                out.add(name)
                changed = True
    return out


def changed_stages(before: Dict[str, dict], after: Dict[str, dict]) -> Set[str]:
    return {k for k in before if before[k]["fingerprint"] != after[k]["fingerprint"]}


# ------------------------------------------------------------------ config keys
def leaves(node, prefix: str = "") -> Iterator[Tuple[str, object]]:
    for key in node.keys() if isinstance(node, DictConfig) else ():
        path = f"{prefix}{key}"
        child = node._get_node(key)
        # a dict with dotted keys (model.cfg_options: mmengine paths) is one value: a dotted path cannot name its keys
        if (isinstance(child, DictConfig) and len(child) and not child._is_none()
                and not any("." in str(k) for k in child.keys())):
            yield from leaves(child, path + ".")
        else:
            yield path, child


def mutated(node):
    """A different valid value for a config node, or raise LookupError."""
    value = node._value() if not isinstance(node, (DictConfig, ListConfig)) else None
    if isinstance(value, str) and node._is_interpolation():  # a default taken from another key: its value
        value = node._dereference_node()._value()
    if isinstance(node, ListConfig):
        items = OmegaConf.to_container(node, resolve=True)
        if not items:
            raise LookupError("empty list")
        return items + [items[-1]] if not isinstance(items[-1], (int, float)) else [v + 1 for v in items]
    if isinstance(node, DictConfig):
        if node._is_none():
            raise LookupError("null section")
        return {"cvops_test_key": "x"}
    if isinstance(node, EnumNode):  # an unset Optional[Enum] too: its type says which values are valid
        return next(m for m in node.enum_type if m is not value)
    if isinstance(node, BooleanNode):
        return not value if value is not None else True
    if isinstance(node, IntegerNode):
        return (value or 0) + 1
    if isinstance(node, FloatNode):
        return (value or 0.0) + 0.25
    if isinstance(node, StringNode) or isinstance(value, str):
        return (value or "") + "_x"
    if value is None:
        return "x"
    raise LookupError(type(node).__name__)


def readers(g, key: str) -> Set[str]:
    """Stages that declare ``key`` (or a section containing it), minus keys they exclude."""
    out = set()
    for name, st in g.items():
        covered = any(key == s or key.startswith(s + ".") for s in st.sections)
        excluded = any(key == x or key.startswith(x + ".") for x in st.exclude)
        if covered and not excluded:
            out.add(name)
    return out


#: keys whose mutation is not tried, with why
UNMUTATED = {"stages": "selects what runs, not what a stage computes"}


def test_every_config_key_moves_exactly_its_readers_and_downstream(cfg):
    g = graph(cfg)
    base = fingerprint.fingerprints(cfg)
    tried, untested = 0, []
    for key, node in leaves(cfg):
        if key in UNMUTATED:
            continue
        try:
            new = mutated(node)
        except LookupError as e:
            untested.append(f"{key} ({e})")
            continue
        c = copy.deepcopy(cfg)
        OmegaConf.update(c, key, new, merge=False)
        got = changed_stages(base, fingerprint.fingerprints(c))
        want = downstream(g, readers(g, key))
        assert got == want, f"{key}: {node!r} -> {new!r} moved {sorted(got)}, expected {sorted(want)}"
        tried += 1
    assert tried > 120, tried  # the quickstart has ~130 leaf keys
    # what could not be mutated is only empty free-form lists (data.sources, data.extra, tracker tags, ...)
    assert all("empty list" in u for u in untested), untested


def test_keys_no_stage_reads_move_nothing(cfg):
    base = fingerprint.fingerprints(cfg)
    for key, value in [("paths.store", "/elsewhere/store"), ("tracker.project", "other"), ("lock_timeout_s", 5.0),
                       ("leaderboard.metric", "evaluate.mAP"), ("train.resume", True)]:
        c = copy.deepcopy(cfg)
        OmegaConf.update(c, key, value, merge=False)
        assert changed_stages(base, fingerprint.fingerprints(c)) == set(), key


def config_reads(files: List[Path]) -> Set[str]:
    """Dotted keys read as ``ctx.config.a.b...`` (or through a name bound to ``ctx.config.a``) in these files."""
    reads: Set[str] = set()
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain, cur = [], node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            chain.reverse()
            if isinstance(cur, ast.Name) and cur.id == "ctx" and chain[:1] == ["config"] and len(chain) >= 2:
                reads.add(".".join(chain[1:]))
    return reads


@pytest.mark.parametrize("stage", BUILTIN, ids=lambda s: s.name)
def test_a_stage_reads_only_declared_keys(stage, cfg):
    pkg = PKG / stage.name
    reads = config_reads(sorted(pkg.rglob("*.py")))
    undeclared = [r for r in reads if not any(r == s or r.startswith(s + ".") or s.startswith(r + ".")
                                              for s in stage.sections)]
    assert not undeclared, f"{stage.name} reads {undeclared} outside its sections {stage.sections}"
    view = typed_view(stage.name, cfg, stage.sections)
    for r in reads:  # and each of those reads works on the real typed view
        obj = view
        for part in r.split("."):
            if dataclasses.is_dataclass(obj) or hasattr(obj, part):
                obj = getattr(obj, part)
    with pytest.raises(AttributeError, match="did not declare"):
        view.tracker  # no stage declares the tracker: the runner owns it


def test_the_typed_view_refuses_an_undeclared_key(cfg):
    view = typed_view("export", cfg, ("export", "evaluate.confusion_score_thr"))
    assert view.export.gate.max_map_drop == cfg.export.gate.max_map_drop
    assert view.export.format == "onnx" and view.evaluate.confusion_score_thr == cfg.evaluate.confusion_score_thr
    with pytest.raises(AttributeError, match="evaluate.splits"):
        view.evaluate.splits


# --------------------------------------------------------------------- modules
def ast_imports(path: Path, pkg_root: Path) -> Set[str]:
    return {m for _, m in imports(path, pkg_root, "cvops") if m == "cvops" or m.startswith("cvops.")}


def module_file(mod: str, pkg_root: Path) -> Path | None:
    base = pkg_root.joinpath(*mod.split(".")[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def closure(stage: str, pkg_root: Path) -> Set[Path]:
    todo = list((pkg_root / stage).rglob("*.py"))
    seen: Set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        rel = f.relative_to(pkg_root)
        if fingerprint.is_plumbing(rel) or fingerprint.is_entrance(rel):
            continue
        seen.add(f)
        todo += [pkg_root.joinpath(*rel.parts[:i], "__init__.py") for i in range(len(rel.parts))]
        todo += [p for p in (module_file(m, pkg_root) for m in ast_imports(f, pkg_root)) if p is not None]
    return seen


def test_every_module_moves_exactly_its_importers_and_downstream(cfg, tmp_path, monkeypatch):
    copy_root = tmp_path / "cvops"
    shutil.copytree(PKG, copy_root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PKG_DIR", copy_root)
    fingerprint.clear_code_caches()
    g = graph(cfg)
    closures = {s.name: closure(s.name, copy_root) for s in BUILTIN}
    base = fingerprint.fingerprints(cfg)
    files = sorted(copy_root.rglob("*.py"))
    assert len(files) > 40
    for f in files:
        original = f.read_bytes()
        f.write_bytes(original + b"\n# cache-contract mutation\n")
        fingerprint.clear_code_caches()
        try:
            got = changed_stages(base, fingerprint.fingerprints(cfg))
        finally:
            f.write_bytes(original)
        want = downstream(g, {s for s, files_ in closures.items() if f in files_})
        rel = f.relative_to(copy_root)
        if fingerprint.is_plumbing(rel) or fingerprint.is_entrance(rel):
            assert got == set(), f"{rel} is plumbing or a way in (cvops.fingerprint) but moved {sorted(got)}"
        else:
            assert got == want, f"editing cvops/{rel} moved {sorted(got)}, expected {sorted(want)}"
    fingerprint.clear_code_caches()
    # the shared layers are really shared: evaluate and export gate on the same COCO evaluation code
    shared = {p for p in closures["evaluate"] & closures["export"] if p.name != "__init__.py"}
    assert shared, "evaluate and export share no module"


def test_plumbing_cannot_shape_a_result():
    """The exception (:data:`cvops.fingerprint.PLUMBING` is not in any code version) holds only while those
    modules move values and files: none lives in a stage package or imports a stage or a shared layer."""
    stage_names = {s.name for s in BUILTIN}

    def module(rel: Path) -> str:
        parts = rel.with_suffix("").parts
        return ".".join(("cvops", *(parts[:-1] if parts[-1] == "__init__" else parts)))

    for name in fingerprint.PLUMBING:
        assert (PKG / name).exists(), f"{name} is listed as plumbing but does not exist"
        assert Path(name).parts[0] not in stage_names, name
    plumbing = [f for f in sorted(PKG.rglob("*.py")) if fingerprint.is_plumbing(f.relative_to(PKG))]
    assert any(f.parent.name == "store" for f in plumbing)  # a package entry covers its files
    allowed = {module(f.relative_to(PKG)) for f in plumbing} | {"cvops", "cvops.track", "cvops.instantiate"}
    for f in plumbing:
        name = f.relative_to(PKG)
        bad = {m for m in ast_imports(f, PKG) if m not in allowed and m.rsplit(".", 1)[0] not in allowed}
        assert not bad, f"{name} is plumbing but imports {sorted(bad)}"
