"""An exact cache of composed configs for the ``cvops`` command.

Hydra's compose is most of what a fully cached rerun or ``--cfg job`` costs (0.10-0.18 s of about 0.5 s on two
cores); loading its result back costs about 2 ms. A cached composition is used only when everything the
composition read is unchanged: config and cvops files compared by content (a same-size edit within one
second is seen), other loaded modules by their change time, which every write moves:

- the command line, the working directory, the whole environment, ``sys.path``, the interpreter's options and
  the Python version (:func:`key`): Hydra writes the working directory and ``hydra.job.env_copy`` into the config, and recipe
  directories and plug-ins come from the environment;
- the code that declares structured configs (:func:`code_digest`): every ``.py`` file of cvops and of every
  ``hydra_plugins`` folder on ``sys.path`` (launchers and sweepers register their configs), what each
  ``cvops.stages`` entry point names, the Hydra, OmegaConf and PyYAML versions, and the path, size and time
  stamps of every other module loaded once the stage plug-ins are (the plug-ins, what they import, a
  ``sitecustomize`` module);
- every config file and folder the composition could have read (:func:`sources_digest`): all ``*.yaml``
  files and folder names in each config source on the search path the composition recorded in
  ``hydra.runtime.config_sources`` (cvops' ``conf/``, Hydra's own, the recipe directories, any
  ``hydra.searchpath``), hidden folders included, and the symbolic links on the way.

A composition is not stored (it is composed again next time) when it cannot be checked this way: a config
source of another kind, a package source that is not a folder (a zip), a folder that cannot be listed, a
fifo or device among the configs, more than :data:`MAX_FILES` files or :data:`MAX_BYTES` bytes in a source, a config name
that may lie outside its source's folders (``recipe=/abs/x.yaml``, ``train=../x``: :func:`plain_name`), a
value that may compose differently each time (:func:`volatile`), a schema from a plug-in (a stage plug-in's,
a Hydra launcher's or sweeper's: code whose defaults may read a file or the machine), a warning shown while
composing (shown again each run), a source that hashes otherwise after
composing than just before (:func:`snapshot`), or a file it depends on that changed since shortly before the
process started (:data:`SETTLE_NS`: Hydra may have read it before the change and the digest after it).

What a composition read is found after composing (:func:`inspect`: Hydra's defaults-list computation again,
through a repository that implements Hydra's own repository interface and remembers what it loads), never by
wrapping Hydra's classes.

The ``cvops`` command uses it (:func:`cvops.cli.main` and the verbs' prologue, :func:`cvops.session.open_recipe`),
and so does the Python API (:func:`cvops.run`, :func:`cvops.load`), through the same prologue: what the
composition takes from Hydra's ConfigStore is then what the files above declare (a composition that took
any other schema from it is never stored). A library caller that composes with Hydra itself
(:func:`cvops.config.compose_config` without ``cache``) always composes. ``CVOPS_COMPOSE_CACHE=0`` turns it off.

Entries live in ``$CVOPS_CACHE_DIR/compose-<uid>`` (default ``~/.cache/cvops/compose-<uid>``, a folder only its
owner may write), at most :data:`MAX_ENTRIES` of them, the least recently used pruned first. An entry is read
with an unpickler that only builds OmegaConf nodes, the schema dataclasses and enums of cvops, Hydra and the
plug-ins, and plain values, from modules already imported (or that Hydra's plug-in scan imports anyway): a
planted entry cannot run code. A damaged, foreign or refused entry is a miss.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import pickle
import re
import stat
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger("cvops.detail")

FORMAT = 1
MAX_ENTRIES = 256
#: a config source with more files and folders than this (a search path over a large tree) makes a
#: composition uncacheable
MAX_FILES = 2000
#: the files of one digest (the code, or the config sources) may hold this many bytes at most (cvops' code is
#: about 0.8 MiB, its configs a few KiB): past it a composition is not cached
MAX_BYTES = 16 * 1024 * 1024
#: a composition is not stored when a file it depends on changed less than this before the process started
#: (time stamps are coarse on some file systems; a file changed after it started may have been read before
#: the change and hashed after it)
SETTLE_NS = 2_000_000_000
_MAGIC = b"cvops-compose\n"


def enabled() -> bool:
    return os.environ.get("CVOPS_COMPOSE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """``$CVOPS_CACHE_DIR/compose-<uid>``: one folder per user, so a machine's shared cache folder works for all."""
    base = os.environ.get("CVOPS_CACHE_DIR") or "~/.cache/cvops"
    return Path(base).expanduser() / f"compose-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


# ------------------------------------------------------------------ digests
class _Uncacheable(Exception):
    pass


class _Digest:
    """A sha256 over files' paths and contents, the newest change time among them, and a file budget."""

    def __init__(self, seed: str = "", budget: int = MAX_FILES) -> None:
        self.h = hashlib.sha256(seed.encode())
        self.newest = 0  # ns: the latest mtime or ctime of a hashed file (see :data:`SETTLE_NS`)
        self.budget = budget
        self.bytes = MAX_BYTES

    def walk(self, root: Path, suffix: str, skip: Sequence[str] = ()) -> None:
        """Every folder's name and every file ending in ``suffix`` under ``root`` (links followed). A folder that
        cannot be listed makes the composition uncacheable: Hydra may still open a file in it by name."""
        def fail(e: OSError) -> None:
            raise _Uncacheable(f"cannot list {e.filename}: {e.strerror}")

        self.links(root)
        self.h.update(f"\0{root}\0".encode("utf-8", "surrogateescape"))
        for d, dirs, files in os.walk(root, onerror=fail, followlinks=True):
            dirs[:] = sorted(x for x in dirs if x not in skip)
            self.budget -= len(dirs) + len(files)
            if self.budget < 0:
                raise _Uncacheable(f"more than {MAX_FILES} files and folders under {root}")
            # a folder's name matters even when empty (a group folder changes what an override means); its
            # change time moves when an entry is added, removed or renamed in it
            self.changed(os.stat(d), os.lstat(d))
            self.h.update(f"\0dir {d}\0".encode("utf-8", "surrogateescape"))
            for f in sorted(files):
                if f.endswith(suffix):
                    self.file(Path(d, f))

    def links(self, path: Path) -> None:
        """The change times of the symbolic links on ``path``'s way (a link re-pointed to another tree)."""
        p = Path(os.path.abspath(path))
        for part in (p, *p.parents):
            try:
                st = os.lstat(part)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                self.changed(st)
                self.h.update(f"\0link {part} -> {os.readlink(part)}\0".encode("utf-8", "surrogateescape"))

    def changed(self, *stats: os.stat_result) -> None:
        for st in stats:
            self.newest = max(self.newest, st.st_mtime_ns, st.st_ctime_ns)

    def file(self, path: Path) -> None:
        """A regular file's content (anything else, a fifo or a device, is refused without reading it)."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _Uncacheable(f"{path} is not a regular file")
            self.bytes -= st.st_size
            if self.bytes < 0:
                raise _Uncacheable(f"more than {MAX_BYTES} bytes of files to hash (at {path})")
            data = f.read(st.st_size + 1)
        self.changed(st, os.lstat(path))
        self.h.update(f"{path}\0{len(data)}\0".encode("utf-8", "surrogateescape"))
        self.h.update(data)

    def text(self, value: str) -> None:
        self.h.update(f"\0{value}\0".encode("utf-8", "surrogateescape"))

    def hexdigest(self) -> str:
        return self.h.hexdigest()


#: the newest change time among the code files of the last :func:`code_digest` (ns)
_CODE_NEWEST = [0]


def code_digest() -> str:
    """Hash of the code that shapes a composition (see the module docstring)."""
    import hydra
    import omegaconf
    import yaml

    from cvops.entrypoints import entry_points

    d = _Digest(f"{sys.version}\0{hydra.__version__}\0{omegaconf.__version__}\0{yaml.__version__}", MAX_FILES * 4)
    for ep in entry_points("cvops.stages"):  # which object each plug-in names, not only its package's files
        d.text(f"{ep.name}={ep.value} ({ep.dist})")
    pkg = Path(__file__).resolve().parent
    # cvops/_conf and cvops/_recipes hold configs (hashed as config sources), not code
    d.walk(pkg, ".py", skip=("__pycache__", "_conf", "_recipes"))
    try:  # imported by Hydra's plug-in scan while composing, so not among the loaded modules below yet
        import hydra_plugins

        roots = [Path(p) for p in hydra_plugins.__path__]
    except ImportError:
        roots = []
    for root in roots:
        if root.is_dir():
            d.walk(root, ".py", skip=("__pycache__",))
        else:  # e.g. the placeholder an editable install puts on a namespace package's path
            d.text(f"absent {root}")
    # the stage plug-ins (loaded here), what they import, a sitecustomize module, every other library
    _loaded_modules(d, pkg)
    _CODE_NEWEST[0] = d.newest
    return d.hexdigest()


def _loaded_modules(d: _Digest, pkg: Path) -> None:
    """Every module this process has imported once the stage plug-ins are loaded (what a plug-in imports may
    shape its schema or put configs in the ConfigStore), outside the standard library and cvops (hashed whole
    above): by path, size and time stamps. A change always moves the change time, and a file that changed
    shortly before the process started is never cached (:data:`SETTLE_NS`), so this is exact too."""
    import sysconfig

    from cvops.stages import plugins

    plugins()
    std = tuple(os.path.join(p, "") for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
    own = os.path.join(str(pkg), "")
    for name, mod in sorted(sys.modules.items()):
        origin = getattr(mod, "__file__", None)
        if not isinstance(origin, str) or origin.startswith(std) or origin.startswith(own):
            continue
        try:
            st = os.stat(origin)
        except OSError:
            d.text(f"module {name} {origin} absent")
            continue
        d.changed(st)
        d.text(f"module {name} {origin} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}")


def key(overrides: Sequence[str], code: str) -> str:
    """The entry's name: command line, working directory, environment, import path, interpreter options
    (``-W``, ``-O``, ...) and code."""
    material = json.dumps({"format": FORMAT, "overrides": list(overrides), "cwd": os.getcwd(),
                           "env": sorted(os.environ.items()), "path": [str(p) for p in sys.path], "code": code,
                           "warnings": list(sys.warnoptions), "flags": repr(sys.flags)}, sort_keys=True)
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

        parent = path.rpartition(".")[0]
        if parent and parent not in sys.modules:  # finding it would import its parent package: a source named
            raise _Uncacheable(f"package config source {path}: {parent} is not imported")  # by an entry runs nothing
        spec = importlib.util.find_spec(path)
        dirs = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
        if not dirs or not all(p.is_dir() for p in dirs):  # e.g. a package inside a zip file
            raise _Uncacheable(f"package config source {path} is not a folder")
        return dirs
    raise _Uncacheable(f"config source scheme {schema}:// is not known to the compose cache")


def _sources(sources: Sequence[Any]) -> _Digest:
    d = _Digest()
    for source in sources:
        d.text(json.dumps(dict(source), sort_keys=True))
        for folder in _source_dirs(source):
            if folder.is_dir():  # every file, hidden folders too: Hydra reads .drafts/x.yaml when asked
                d.walk(folder, ".yaml")
            else:
                d.text(f"absent {folder}")
    return d


def sources_digest(sources: Sequence[Any]) -> str:
    """Hash of every ``*.yaml`` file in the given config sources (a missing folder hashes as missing)."""
    return _sources(sources).hexdigest()


#: resolvers whose value a composition may depend on: their inputs are in the key (the environment)
_KEYED_RESOLVERS = frozenset({"oc.env", "cvops_recipe_path"})
_RESOLVER = re.compile(r"\$\{\s*([A-Za-z_][\w.\-]*)\s*:")


def volatile(text: str) -> Optional[str]:
    """Why ``text`` (an override, a defaults list) may compose differently from run to run, or None: a resolver
    evaluated while composing (``${now:...}`` in a defaults list) or ``shuffle(...)``."""
    if "shuffle(" in text:
        return "shuffle() picks a new order each time"
    other = sorted(set(_RESOLVER.findall(text)) - _KEYED_RESOLVERS)
    return f"resolver {other[0]} is evaluated while composing" if other else None


def snapshot(overrides: Sequence[str] = ()) -> Dict[Tuple[str, str], Optional[str]]:
    """Digests of the config sources a cvops composition has (Hydra's own, cvops' ``conf/``, the recipe folders,
    a ``hydra.searchpath=[...]`` on the command line), taken before composing: :func:`store` keeps a
    composition only if its sources still hash the same afterwards (a folder renamed or re-linked while Hydra
    read it)."""
    from cvops.recipes import CONF_DIR, _recipe_path

    where = [("pkg", "hydra.conf"), ("file", str(CONF_DIR)), ("recipes", _recipe_path())]
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") == "hydra.searchpath" and value.startswith("[") and value.endswith("]"):
            for entry in value[1:-1].split(","):
                scheme, sep, path = entry.strip().strip("'\"").partition("://")
                if sep:
                    where.append((scheme, path))
    out: Dict[Tuple[str, str], Optional[str]] = {}
    for schema, path in where:
        try:
            out[(schema, path)] = _sources([{"schema": schema, "path": path}]).hexdigest()
        except Exception:  # such a source is checked (and refused) again when the composition is stored
            out[(schema, path)] = None
    return out


def plain_name(config_path: str) -> bool:
    """A config name Hydra looks up inside its sources' folders: no absolute path, no ``..``, no empty part."""
    parts = config_path.split("/")
    return "\\" not in config_path and all(p not in ("", ".", "..") for p in parts)


class Seen:
    """What a composition read, found without touching Hydra (:func:`inspect`): ``names``, the config names it
    looked up; ``defaults``, the text of every defaults list it read; ``structured``, the configs it took from
    the ConfigStore, with their providers; ``warned``, the warnings it showed."""

    def __init__(self, warned: Sequence[str] = ()) -> None:
        self.names: List[str] = []
        self.defaults: List[str] = []
        self.structured: List[Tuple[str, str]] = []  # (name, provider) of each config taken from the ConfigStore
        self.warned: List[str] = list(warned)


def inspect(cfg: Any, config_name: str, overrides: Sequence[str], warned: Sequence[str] = ()) -> Seen:
    """What composing ``config_name`` with ``overrides`` (giving ``cfg``, its ``hydra`` node kept) read, found
    after composing without touching Hydra.

    Hydra's own defaults-list computation (what ``--info defaults`` shows) runs again over the config sources
    the composition recorded (``hydra.runtime.config_sources``: the search path with any ``hydra.searchpath``),
    reading through a repository that implements Hydra's repository interface and remembers each config it
    is asked for, found or not: its name, its source (a file, or a schema from the ConfigStore and who put it
    there) and its raw defaults list, unresolved. ``warned``: the warnings composing showed.
    """
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra._internal.defaults_list import create_defaults_list
    from hydra.core.override_parser.overrides_parser import OverridesParser

    search = ConfigSearchPathImpl()
    for source in cfg.hydra.runtime.config_sources:
        search.append(provider=str(source.provider), path=f"{source.schema}://{source.path}")
    repo = _recording_repository()(ConfigRepository(search))
    create_defaults_list(repo=repo, config_name=config_name, prepend_hydra=True, skip_missing=False,
                         overrides_list=OverridesParser.create().parse_overrides(list(overrides)))
    seen = Seen(warned)
    for name, loaded in repo.loaded.items():
        seen.names.append(name)
        if loaded is None:
            continue
        if str(loaded.path).startswith("structured:"):
            seen.structured.append((name, str(loaded.provider)))
        # the defaults list as written (an interpolation in it is kept unresolved: see volatile())
        seen.defaults.append(repr(loaded.defaults_list or []))
        for entry in loaded.defaults_list or []:  # names it asks for, found or not (an optional one may be absent)
            seen.names += _raw_names(entry)
    return seen


@functools.lru_cache(maxsize=None)
def _recording_repository() -> type:
    """A Hydra config repository (its own interface, ``IConfigRepository``) that delegates to another and
    remembers what it loaded; a class made on first use, so that a cache hit never imports Hydra's loader."""
    from hydra._internal.config_repository import IConfigRepository
    from hydra.core.object_type import ObjectType

    class Recording(IConfigRepository):
        def __init__(self, delegate: Any) -> None:
            self.delegate = delegate
            self.loaded: Dict[str, Any] = {}  # config name -> its ConfigResult (None: not found)

        def load_config(self, config_path: str) -> Any:
            if config_path not in self.loaded:
                self.loaded[config_path] = self.delegate.load_config(config_path)
            return self.loaded[config_path]

        def get_schema_source(self) -> Any:
            return self.delegate.get_schema_source()

        def group_exists(self, config_path: str) -> bool:
            return self.delegate.group_exists(config_path)

        def config_exists(self, config_path: str) -> bool:
            return self.delegate.config_exists(config_path)

        def get_group_options(self, group_name: str, results_filter: Any = ObjectType.CONFIG) -> List[str]:
            return self.delegate.get_group_options(group_name, results_filter)

        def get_sources(self) -> List[Any]:
            return self.delegate.get_sources()

        def initialize_sources(self, config_search_path: Any) -> None:
            self.delegate.initialize_sources(config_search_path)

    return Recording


def _raw_names(entry: Any) -> List[str]:
    """The config names one raw defaults-list entry asks for, relative to the search path (``/data: coco`` ->
    ``data/coco``); none for ``_self_``, an empty (``null``) choice or an interpolation (:func:`volatile`)."""
    if entry.is_self():
        return []
    group = getattr(entry, "group", None)
    if group is not None:  # ``group: option`` (or a list of options)
        values = entry.value if isinstance(entry.value, list) else [entry.value]
        return [f"{group.lstrip('/')}/{v}" for v in values if isinstance(v, str) and "${" not in v]
    path = getattr(entry, "path", None)
    return [path.lstrip("/")] if isinstance(path, str) and "${" not in path else []


# ------------------------------------------------------------------ loading
_PLAIN = {("builtins", n) for n in ("bool", "dict", "float", "int", "list", "str", "tuple", "set", "frozenset",
                                      "bytes", "complex", "NoneType")} | {("collections", "defaultdict"),
                                                                          ("collections", "OrderedDict")}
#: modules an entry's classes may come from once imported (cvops imports the ones a composition uses first)
_IMPORTED = ("omegaconf.", "hydra.", "cvops.")
#: modules an entry may import: what Hydra's plug-in scan imports while composing anyway
_LOADABLE = ("hydra._internal.core_plugins.", "hydra_plugins.")


class _Unpickler(pickle.Unpickler):
    """Builds OmegaConf nodes, dataclasses and enums of cvops, Hydra and the plug-ins, and plain values only."""

    def __init__(self, data: bytes, plugins: Tuple[str, ...]) -> None:
        super().__init__(io.BytesIO(data))
        self.plugins = plugins

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
        allowed = "__main__" not in module.split(".") and (
            (module.startswith(_IMPORTED) and module in sys.modules) or module.startswith(_LOADABLE)
            or any(module == p or module.startswith(p + ".") for p in self.plugins))
        if allowed:
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)
                                          or obj.__module__.startswith("omegaconf.")):
                return obj
        raise pickle.UnpicklingError(f"a compose cache entry may not name {module}.{name}")


def _plugin_modules() -> Tuple[str, ...]:
    from cvops.entrypoints import entry_points

    return tuple(ep.value.partition(":")[0].split(".")[0] for ep in entry_points("cvops.stages"))


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
        cfg = _Unpickler(payload, _plugin_modules()).load()
    except Exception as e:  # a damaged or refused entry is a miss; the composition runs as usual
        log.debug("compose cache: entry %s not used: %s: %s", name, type(e).__name__, e)
        return None
    from omegaconf import DictConfig

    if not isinstance(cfg, DictConfig):
        return None
    try:
        os.utime(path)  # recently used: pruned last
    except OSError:
        pass
    return cfg


def _started_ns() -> int:
    import cvops

    return int(getattr(cvops, "STARTED_NS", 0)) or time.time_ns()


def store(name: str, cfg: Any, overrides: Sequence[str], seen: Seen,
          before: Dict[Tuple[str, str], Optional[str]]) -> None:
    """Keep ``cfg`` (a fresh composition with its ``hydra`` node) under ``name``; best effort, never raises.

    Not stored (composed again next time) when it cannot be checked by content: a config name that may lie
    outside its source's folder (``recipe=/abs/x.yaml``, ``train=../x``: that file is not in the digest), an
    override or defaults list whose value is not fixed by the key (:func:`volatile`), a config source that
    hashes otherwise than just before composing (``before``, :func:`snapshot`) or is not among those, or a
    hashed file that changed since shortly before this process started (:data:`SETTLE_NS`: Hydra may have
    read it before the change and the digest after it).
    """
    from omegaconf import OmegaConf

    def skip(why: str) -> None:
        log.debug("compose cache: not stored: %s", why)

    try:
        odd = next((n for n in seen.names if not plain_name(n)), None)
        if odd is not None:
            return skip(f"config name {odd!r} may lie outside its source")
        why = next(filter(None, map(volatile, [*overrides, *seen.defaults])), None)
        if why:
            return skip(why)
        foreign = next((f"{n} (from {p})" for n, p in seen.structured if n != "cvops_schema" and p != "hydra"), None)
        if foreign:  # a plug-in's or a Hydra plug-in's schema: its defaults are code that may read files or the
            return skip(f"{foreign} is a plug-in's schema")  # machine (a count of cores, a data file)
        if seen.warned:  # shown again on every run, as Hydra shows it
            return skip(f"composing warned: {seen.warned[0]}")
        sources = OmegaConf.to_container(cfg.hydra.runtime.config_sources)
        for source in sources:
            if source["schema"] == "structured":
                continue
            where = (source["schema"], source["path"])
            if where not in before or before[where] is None:
                return skip(f"config source {where} was not hashed before composing")
            if _sources([{"schema": where[0], "path": where[1]}]).hexdigest() != before[where]:
                return skip(f"config source {where} changed while composing")
        digest = _sources(sources)
        if max(digest.newest, _CODE_NEWEST[0]) >= _started_ns() - SETTLE_NS:
            return skip("a config or code file changed as this process started")
        meta = {"format": FORMAT, "key": name, "sources": sources, "sources_digest": digest.hexdigest()}
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
    """At most :data:`MAX_ENTRIES`: the least recently used go first (a time stamp in the future counts as old)."""
    entries = list(d.glob("*.pkl"))
    if len(entries) <= MAX_ENTRIES:
        return
    now = time.time()

    def used(p: Path) -> float:
        t = p.stat().st_mtime
        return 0.0 if t > now + 60 else t

    for p in sorted(entries, key=used)[: len(entries) - MAX_ENTRIES]:
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
