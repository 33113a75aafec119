"""An exact cache of composed configs for the ``cvops`` command.

Hydra's compose is most of what a fully cached rerun or ``--cfg job`` costs (0.10-0.18 s of about 0.5 s on two
cores); loading its result back costs about 2 ms. A cached composition is used only when everything the
composition read is unchanged, compared by content, never by time stamp:

- the command line, the working directory, the whole environment, ``sys.path`` and the Python version
  (:func:`key`): Hydra writes the working directory and ``hydra.job.env_copy`` into the config, and recipe
  directories and plug-ins come from the environment;
- the code that declares structured configs (:func:`code_digest`): every ``.py`` file of cvops, of every
  ``hydra_plugins`` folder on ``sys.path`` (launchers and sweepers register their configs) and of every
  ``cvops.stages`` plug-in package, a ``sitecustomize``/``usercustomize`` module, plus the Hydra, OmegaConf
  and PyYAML versions;
- every config file the composition could have read (:func:`sources_digest`): all ``*.yaml`` files in each
  config source on the search path the composition recorded in ``hydra.runtime.config_sources`` (cvops'
  ``conf/``, Hydra's own, the recipe directories, any ``hydra.searchpath`` a recipe adds). A source of any
  other kind makes the composition uncacheable.

Only the ``cvops`` command uses it (:func:`cvops.cli.main`): it starts from a fresh process, so Hydra's
ConfigStore holds only what the files above declare. A library caller composing in its own process (which may
have put its own configs in the ConfigStore) always composes. ``CVOPS_COMPOSE_CACHE=0`` turns it off.

Entries live in ``$CVOPS_CACHE_DIR/compose-<uid>`` (default ``~/.cache/cvops/compose-<uid>``, a folder only its
owner may write), at most :data:`MAX_ENTRIES` of them. An entry is read with an unpickler that only builds OmegaConf
nodes, the schema dataclasses and enums of cvops, Hydra and the plug-ins, and plain values: a planted entry
cannot run code. A damaged, foreign or refused entry is a miss.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

log = logging.getLogger("cvops.detail")

FORMAT = 1
MAX_ENTRIES = 256
#: a config source with more files than this (a search path pointing at a large tree) is not hashed per run
MAX_FILES = 4000
_MAGIC = b"cvops-compose\n"


def enabled() -> bool:
    return os.environ.get("CVOPS_COMPOSE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """``$CVOPS_CACHE_DIR/compose-<uid>``: one folder per user, so a machine's shared cache folder works for all."""
    base = os.environ.get("CVOPS_CACHE_DIR") or "~/.cache/cvops"
    return Path(base).expanduser() / f"compose-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


# ------------------------------------------------------------------ digests
def _walk(root: Path, suffix: str, budget: List[int], skip: Sequence[str] = ()) -> Iterable[Path]:
    """Files under ``root`` ending in ``suffix``, sorted; folders and files count against ``budget``."""
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__" and not x.startswith(".") and x not in skip)
        budget[0] -= len(dirs)
        for f in sorted(files):
            if f.endswith(suffix):
                budget[0] -= 1
                if budget[0] < 0:
                    raise _Uncacheable(f"more than {MAX_FILES} files under {root}")
                yield Path(d, f)


class _Uncacheable(Exception):
    pass


def _hash_files(h: Any, label: str, paths: Iterable[Path]) -> None:
    h.update(f"\0{label}\0".encode())
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        h.update(f"{p}\0{len(data)}\0".encode())
        h.update(data)


def _plugin_roots() -> List[Path]:
    """The folders (or single files) of the installed ``cvops.stages`` plug-ins, found without importing them."""
    import importlib.util

    from cvops.entrypoints import entry_points

    out: List[Path] = []
    for ep in entry_points("cvops.stages"):
        top = ep.value.partition(":")[0].split(".")[0]
        spec = importlib.util.find_spec(top)
        if spec is None:
            raise _Uncacheable(f"plug-in module {top} not found")
        if spec.submodule_search_locations:
            out += [Path(p) for p in spec.submodule_search_locations]
        elif spec.origin:
            out.append(Path(spec.origin))
    return out


def code_digest(pkg_dir: Optional[Path] = None, extra_roots: Sequence[Path] = ()) -> str:
    """Hash of the code that shapes a composition (see the module docstring)."""
    import hydra
    import omegaconf
    import yaml

    h = hashlib.sha256(f"{sys.version}\0{hydra.__version__}\0{omegaconf.__version__}\0{yaml.__version__}".encode())
    budget = [MAX_FILES * 4]
    roots: List[Path] = [pkg_dir or Path(__file__).resolve().parent, *extra_roots]
    try:
        import hydra_plugins

        roots += [Path(p) for p in hydra_plugins.__path__]
    except ImportError:
        pass
    roots += _plugin_roots()
    for mod in ("sitecustomize", "usercustomize"):  # code every process runs first (it could declare configs)
        origin = getattr(sys.modules.get(mod), "__file__", None)
        if origin:
            roots.append(Path(origin))
    for root in roots:
        if root.is_file():
            _hash_files(h, "file", [root])
        else:
            # cvops/_conf and cvops/_recipes hold configs (hashed as config sources), not code
            _hash_files(h, str(root), _walk(root, ".py", budget, skip=("_conf", "_recipes")))
    return h.hexdigest()


def key(overrides: Sequence[str], code: str) -> str:
    """The entry's name: command line, working directory, environment, import path and code."""
    material = json.dumps({"format": FORMAT, "overrides": list(overrides), "cwd": os.getcwd(),
                           "env": sorted(os.environ.items()), "path": sys.path, "code": code}, sort_keys=True)
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


def _source_dirs(source: Any) -> List[Path]:
    schema, path = str(source["schema"]), str(source["path"])
    if schema == "structured":  # the ConfigStore: declared by the code in code_digest
        return []
    if schema == "file":
        return [Path(path)]
    if schema == "recipes":  # cvops.recipes.RecipeConfigSource: an os.pathsep list of folders
        return [Path(p) for p in path.split(os.pathsep) if p]
    if schema == "pkg":
        import importlib.util

        spec = importlib.util.find_spec(path)
        if spec is None or not spec.submodule_search_locations:
            raise _Uncacheable(f"package config source {path} not found")
        return [Path(p) for p in spec.submodule_search_locations]
    raise _Uncacheable(f"config source scheme {schema}:// is not known to the compose cache")


def sources_digest(sources: Sequence[Any]) -> str:
    """Hash of every ``*.yaml`` file in the given config sources (a missing folder hashes as missing)."""
    h = hashlib.sha256()
    budget = [MAX_FILES]
    for source in sources:
        h.update(json.dumps(dict(source), sort_keys=True).encode())
        for d in _source_dirs(source):
            if d.is_dir():
                _hash_files(h, str(d), _walk(d, ".yaml", budget))
            else:
                h.update(f"\0absent {d}\0".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ loading
#: modules whose classes an entry may name (each class must also be a dataclass, an enum or an OmegaConf type)
_MODULES = ("omegaconf.", "hydra.", "hydra_plugins.", "cvops.")
_PLAIN = {("builtins", n) for n in ("bool", "dict", "float", "int", "list", "str", "tuple", "set", "frozenset",
                                      "bytes", "complex", "NoneType")} | {("collections", "defaultdict"),
                                                                          ("collections", "OrderedDict")}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, modules: Tuple[str, ...]) -> None:
        super().__init__(io.BytesIO(data))
        self.modules = modules

    def find_class(self, module: str, name: str) -> Any:
        import dataclasses
        import enum
        import typing

        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        if module == "typing" and name in ("Any", "Dict", "List", "Optional", "Union", "Tuple"):
            return getattr(typing, name)
        if module == "_operator" and name == "getitem":  # typing.Dict[str, Any] and the like
            return super().find_class(module, name)
        if module.startswith(self.modules) or module in {m.rstrip(".") for m in self.modules}:
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)
                                          or obj.__module__.startswith("omegaconf.")):
                return obj
        raise pickle.UnpicklingError(f"a compose cache entry may not name {module}.{name}")


def _plugin_modules() -> Tuple[str, ...]:
    from cvops.entrypoints import entry_points

    return tuple(f"{ep.value.partition(':')[0].split('.')[0]}." for ep in entry_points("cvops.stages"))


def _private(*paths: Path) -> bool:
    """Each path is owned by this user and writable by nobody else."""
    if not hasattr(os, "getuid"):
        return True
    try:
        for p in paths:
            st = os.stat(p)
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
    except OSError:
        return False
    return True


def load(name: str) -> Optional[Any]:
    """The cached composition named ``name``, if its config files are unchanged; else None."""
    path = cache_dir() / f"{name}.pkl"
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    try:
        if not blob.startswith(_MAGIC) or not _private(path.parent, path):
            return None
        head, _, payload = blob[len(_MAGIC):].partition(b"\n")
        meta = json.loads(head)
        if meta.get("format") != FORMAT or meta.get("key") != name:
            return None
        if sources_digest(meta["sources"]) != meta["sources_digest"]:
            return None
        cfg = _Unpickler(payload, _MODULES + _plugin_modules()).load()
    except Exception as e:  # a damaged or refused entry is a miss; the composition runs as usual
        log.debug("compose cache: entry %s not used: %s: %s", name, type(e).__name__, e)
        return None
    from omegaconf import DictConfig

    return cfg if isinstance(cfg, DictConfig) else None


def store(name: str, cfg: Any) -> None:
    """Keep ``cfg`` (a fresh composition with its ``hydra`` node) under ``name``; best effort, never raises."""
    from omegaconf import OmegaConf

    try:
        sources = OmegaConf.to_container(cfg.hydra.runtime.config_sources)
        meta = {"format": FORMAT, "key": name, "sources": sources, "sources_digest": sources_digest(sources)}
        payload = pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not _private(d):
            return
        tmp = d / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + json.dumps(meta, sort_keys=True).encode() + b"\n" + payload)
        os.replace(tmp, d / f"{name}.pkl")
        _prune(d)
    except Exception as e:  # the cache is an optimisation: a full disk or an odd source must not fail a run
        log.debug("compose cache: not stored: %s: %s", type(e).__name__, e)


def _prune(d: Path) -> None:
    entries = list(d.glob("*.pkl"))
    if len(entries) <= MAX_ENTRIES:
        return
    by_age = sorted(entries, key=lambda p: p.stat().st_mtime)
    for p in by_age[: len(entries) - MAX_ENTRIES]:
        try:
            p.unlink()
        except OSError:
            pass


def lookup(overrides: Sequence[str]) -> Tuple[Optional[str], Optional[Any]]:
    """``(name, cfg)``: the entry name for this command line and its cached composition (or None).
    The name is None when this process cannot use the cache (turned off, or an input cannot be hashed)."""
    if not enabled():
        return None, None
    try:
        name = key(overrides, code_digest())
    except Exception as e:  # an input that cannot be hashed (a huge search path, an odd sys.path entry): compose
        log.debug("compose cache: off for this run: %s: %s", type(e).__name__, e)
        return None, None
    return name, load(name)
