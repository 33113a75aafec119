"""A recipe is data: what a composed config may make cvops import or call.

Every route by which a value in a recipe file, a recipe directory or a
command-line override could reach code is checked here, on the composed
config, before anything runs (:func:`check_config`, called by preflight), and
again where the value is used (:func:`check_targets` in
:func:`cvops.instantiate.instantiate`, :func:`check_mmengine_options` and
:func:`mmdet_config_path` when the training config is built):

* ``_target_`` anywhere outside the ``hydra`` node names one of
  :data:`TARGETS` (or a plug-in's, see below). The check is on the object the
  name resolves to: only names whose top-level package is cvops' or a
  plug-in's are imported at all, and ``cvops.track.os.system`` resolves to
  ``os.system``, which is not on the list.
* the ``hydra`` node: callbacks, launcher and sweeper (and its sampler) are
  objects of :data:`HYDRA_TARGETS`; logging configs (``job_logging``,
  ``hydra_logging``) use only classes of the ``logging`` package, no ``()``
  factories, and ``ext://`` only for ``sys.stdout``/``sys.stderr``;
  ``hydra.job.env_set`` sets only :data:`ENV_SET_ALLOWED` variables (no
  ``LD_PRELOAD``, no ``PYTHONPATH``); a launcher's ``setup`` (shell lines) and
  a sweeper's ``custom_search_space`` (a function) are refused; sweeper
  ``params`` cannot reach ``hydra.*`` keys.
* ``model.cfg_options`` (raw mmengine overrides): every ``type`` is a name in
  an mmengine/mmdet/mmcv registry (``RTMDetHead``, ``mmdet.RTMDetHead``), never
  a dotted import path; ``_scope_``/``default_scope`` only mmdet, mmengine or
  mmcv; no ``custom_imports``, ``_base_``, ``load_from``, ``resume`` or
  ``work_dir``; keys are identifiers (they are written into the trained
  model's ``config.py``, which mmengine executes when it reads it back);
  no ``http://`` checkpoints (https ones are downloaded and checked by cvops).
* ``model.mmdet_config`` names a config inside the installed mmdet package
  (``mmdet::...``, no way out with ``..`` or links); a config file elsewhere
  only when its folder is listed in ``$CVOPS_TRUSTED_CONFIGS`` (the user's
  environment, never the recipe).
* ``model.load_from`` is a local file or an ``https://`` URL; cvops downloads
  it and loads it under torch's ``weights_only`` allow-list
  (:mod:`cvops.detector.checkpoint`).

Plug-ins: an installed package adds objects to :data:`TARGETS` through the
entry-point group ``cvops.targets`` (``name = "pkg.module:Object"``). Installing
a package is the user's act of trust; a recipe is not.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterator, List, Mapping, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

#: What a ``_target_`` outside the ``hydra`` node may name.
TARGETS: Tuple[str, ...] = ("cvops.track.WandbTracker", "cvops.track.NullTracker")

#: ``ray.init`` arguments a config may give the Ray launcher (``hydra.launcher.init``): none loads code.
RAY_INIT_ALLOWED = frozenset({"namespace", "runtime_env", "logging_level", "log_to_driver", "include_dashboard"})

#: What the ``hydra`` node may instantiate: cvops' callbacks, the launchers and
#: sweepers cvops ships presets for, and Optuna's samplers.
HYDRA_TARGETS: Dict[str, Tuple[str, ...]] = {
    "callbacks": ("cvops.sweep.LeaderboardCallback",),
    "launcher": (
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "hydra_plugins.cvops_ray_launcher.ray_launcher.RayLauncher",
    ),
    "sweeper": (
        "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
        "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    ),
    "sampler": tuple(f"optuna.samplers.{n}" for n in ("TPESampler", "RandomSampler", "CmaEsSampler",
                                                       "NSGAIISampler", "MOTPESampler", "GridSampler",
                                                       "QMCSampler")),
}

#: Environment variables ``hydra.job.env_set`` may set.
ENV_SET_ALLOWED = re.compile(r"^(CUDA_VISIBLE_DEVICES|[A-Z]+_NUM_THREADS|WANDB_[A-Z_]+|NCCL_[A-Z_]+|"
                             r"CUBLAS_WORKSPACE_CONFIG|TZ)$")

#: Logging config values that may name an object through ``ext://``.
LOGGING_EXT = frozenset({"ext://sys.stdout", "ext://sys.stderr"})

#: ``model.cfg_options`` keys refused anywhere in the tree (they import, or they are cvops' to set).
MMENGINE_REFUSED_KEYS = frozenset({"custom_imports", "_base_", "load_from", "resume", "work_dir", "launcher"})
MMENGINE_SCOPES = frozenset({"mmdet", "mmengine", "mmcv"})
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLUGIN_GROUP = "cvops.targets"
TRUSTED_CONFIGS_ENV = "CVOPS_TRUSTED_CONFIGS"


class NotAllowed(ValueError):
    """A config value that would make cvops import or call code outside the allow-list.

    Attributes:
        key: the dotted config key (``hydra.callbacks.x._target_``).
        value: the offending value.
    """

    def __init__(self, key: str, value: Any, why: str) -> None:
        self.key, self.value = key, value
        super().__init__(f"'{key}: {value}' is not allowed: {why} (a recipe is data, not code; see README "
                         "'Trust model')")


# ---------------------------------------------------------------- resolving
@lru_cache(maxsize=None)
def _plugins() -> Tuple[str, ...]:
    from cvops.entrypoints import entry_points

    return tuple(ep.value.replace(":", ".") for ep in entry_points(group=_PLUGIN_GROUP))


def _import_object(dotted: str) -> Any:
    """The object a dotted name resolves to (longest importable module prefix, then attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


@lru_cache(maxsize=None)
def _allowed_objects(names: Tuple[str, ...]) -> Tuple[FrozenSet[int], FrozenSet[str]]:
    """(ids of the objects ``names`` resolve to, their top-level packages); names not installed are skipped."""
    ids, roots = set(), set()
    for name in names:
        roots.add(name.split(".", 1)[0])
        try:
            ids.add(id(_import_object(name)))
        except (ImportError, AttributeError):
            continue  # an optional plug-in that is not installed
    return frozenset(ids), frozenset(roots)


def resolves_to_allowed(value: Any, names: Sequence[str]) -> bool:
    """Whether ``value`` names one of the objects ``names`` name.

    Only names inside the allowed names' top-level packages are imported, so
    checking never runs code of a package the user did not install for cvops.
    """
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", value):
        return False
    if value in names:  # an allowed name itself: nothing to resolve (and no plug-in imported to check it)
        return True
    ids, roots = _allowed_objects(tuple(names))
    if value.split(".", 1)[0] not in roots:
        return False
    try:
        return id(_import_object(value)) in ids
    except Exception:
        return False


# ------------------------------------------------------------------ walking
def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node


def _walk(node: Any, path: str) -> Iterator[Tuple[str, Any, Any]]:
    """(dotted key, key, value) of every entry of nested dicts/lists."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{path}.{k}" if path else str(k)
            yield key, k, v
            yield from _walk(v, key)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            key = f"{path}[{i}]"
            yield key, i, v
            yield from _walk(v, key)


def check_targets(node: Any, skip: Sequence[str] = (), prefix: str = "") -> None:
    """Refuse any ``_target_`` (outside the top-level keys in ``skip``) that is not in :data:`TARGETS`."""
    node = _plain(node)
    if isinstance(node, Mapping) and skip:
        node = {k: v for k, v in node.items() if k not in skip}
    allowed = TARGETS + _plugins()
    for key, k, v in _walk(node, prefix):
        if k == "_target_" and not resolves_to_allowed(v, allowed):
            raise NotAllowed(key, v, f"targets must be one of {', '.join(allowed)}; wrap what you need in a "
                                     f"plug-in registered under the entry-point group '{_PLUGIN_GROUP}'")


# ------------------------------------------------------------- hydra node
def check_hydra(hydra: Any) -> None:
    """The ``hydra`` node instantiates and configures only what cvops allows (see the module docstring)."""
    hydra = _plain(hydra) or {}
    for key, k, v in _walk(hydra, "hydra"):
        if k != "_target_":
            continue
        role = _hydra_role(key)
        names = HYDRA_TARGETS.get(role, ()) + (_plugins() if role in ("callbacks", "launcher", "sweeper") else ())
        if not resolves_to_allowed(v, names):
            allowed = ", ".join(n.rsplit(".", 1)[-1] for n in names) or "nothing"
            raise NotAllowed(key, v, f"Hydra may instantiate here only {allowed}")
    for section in ("job_logging", "hydra_logging"):
        _check_logging(hydra.get(section), f"hydra.{section}")
    env = ((hydra.get("job") or {}).get("env_set") or {})
    for name in env:
        if not ENV_SET_ALLOWED.match(str(name)):
            raise NotAllowed(f"hydra.job.env_set.{name}", env[name],
                             "only thread counts, CUDA_VISIBLE_DEVICES, WANDB_* and NCCL_* may be set from a "
                             "config; export other variables in your shell")
    launcher = hydra.get("launcher") or {}
    if launcher.get("setup"):
        raise NotAllowed("hydra.launcher.setup", launcher["setup"],
                         "shell lines run on the cluster node; put them in your job environment instead")
    init = launcher.get("init") or {}
    for name in init:
        if str(name) not in RAY_INIT_ALLOWED:
            raise NotAllowed(f"hydra.launcher.init.{name}", init[name],
                             f"the Ray launcher passes only {', '.join(sorted(RAY_INIT_ALLOWED))} to ray.init from a "
                             "config")
    for name in ((init.get("runtime_env") or {}) if isinstance(init.get("runtime_env"), dict) else {}):
        if str(name) != "env_vars":
            raise NotAllowed(f"hydra.launcher.init.runtime_env.{name}", init["runtime_env"][name],
                             "a runtime_env key other than env_vars installs or runs code on the workers; set the "
                             "cluster's environment up when it is started (ray start), not from a recipe")
    for name in ((init.get("runtime_env") or {}).get("env_vars") or {}) if isinstance(init.get("runtime_env"), dict) else ():
        if not ENV_SET_ALLOWED.match(str(name)) and not str(name).startswith(("CVOPS_", "AWS_", "FIFTYONE_")):
            raise NotAllowed(f"hydra.launcher.init.runtime_env.env_vars.{name}", init["runtime_env"]["env_vars"][name],
                             "only thread counts, CUDA_VISIBLE_DEVICES, WANDB_*, NCCL_*, CVOPS_*, AWS_* and "
                             "FIFTYONE_* may be set from a config; export other variables where the cluster starts")
    sweeper = hydra.get("sweeper") or {}
    if sweeper.get("custom_search_space"):
        raise NotAllowed("hydra.sweeper.custom_search_space", sweeper["custom_search_space"],
                         "it names a Python function; use hydra.sweeper.params")
    for name in (sweeper.get("params") or {}):
        if str(name).lstrip("+~").startswith("hydra"):
            raise NotAllowed(f"hydra.sweeper.params.{name}", sweeper["params"][name],
                             "a sweep may vary recipe keys, not Hydra's own")


def _hydra_role(key: str) -> str:
    parts = key.split(".")
    if parts[1] == "callbacks":
        return "callbacks"
    if parts[1] == "sweeper" and "sampler" in parts:
        return "sampler"
    return parts[1] if parts[1] in ("launcher", "sweeper") and len(parts) == 3 else "other"


def _check_logging(cfg: Any, where: str) -> None:
    """A ``logging.config.dictConfig`` dict that builds only ``logging`` classes."""
    import logging

    if not cfg:
        return
    for key, k, v in _walk(cfg, where):
        if k == "()":
            raise NotAllowed(key, v, "'()' calls a factory; use 'class' with a logging handler or formatter")
        if isinstance(v, str) and v.startswith("ext://") and v not in LOGGING_EXT:
            raise NotAllowed(key, v, f"logging configs may refer only to {', '.join(sorted(LOGGING_EXT))}")
        if k == "class":
            obj = _logging_class(v)
            if not (isinstance(obj, type) and issubclass(obj, (logging.Handler, logging.Formatter, logging.Filter))):
                raise NotAllowed(key, v, "logging configs may use only handler, formatter and filter classes "
                                         "of the logging package (e.g. logging.StreamHandler)")
        elif isinstance(v, str) and "${" in v and k not in ("filename", "format"):
            raise NotAllowed(key, v, "interpolations in logging configs are allowed only in 'filename' and 'format'")


def _logging_class(name: Any) -> Any:
    if not isinstance(name, str) or not name.startswith("logging."):
        return None
    try:
        obj = _import_object(name)
    except Exception:
        return None
    module = getattr(obj, "__module__", "") or ""
    return obj if module == "logging" or module.startswith("logging.") else None


# ---------------------------------------------------------------- mmengine
def check_mmengine_options(options: Any, where: str = "model.cfg_options",
                           registry_names: Optional[FrozenSet[str]] = None) -> None:
    """Raw mmengine overrides that cannot import modules or inject code.

    Args:
        options: the ``cfg_options`` mapping (plain or OmegaConf).
        where: the config key, for messages.
        registry_names: every name registered in mmengine/mmdet/mmcv registries;
            when given, each ``type`` must be one of them (None: the name-shape
            check only, which needs no mmdet import: preflight).
    """
    options = _plain(options) or {}
    if not isinstance(options, Mapping):
        raise NotAllowed(where, options, "model.cfg_options must be a mapping of mmengine keys")
    for key, k, v in _walk(options, where):
        if isinstance(k, str):
            top = key == f"{where}.{k}"
            parts = k.split(".") if top else [k]  # merge_from_dict takes dotted keys at the top level
            if not all(_IDENT.match(p) or p.isdigit() for p in parts):
                raise NotAllowed(key, v, f"key {k!r} is not a Python identifier (mmengine writes keys into the "
                                         "trained model's config.py)")
            if any(p in MMENGINE_REFUSED_KEYS for p in parts):
                bad = next(p for p in parts if p in MMENGINE_REFUSED_KEYS)
                fix = {"load_from": "set model.load_from", "resume": "set train.resume",
                       "launcher": "set train.launcher"}.get(bad, "cvops sets it")
                raise NotAllowed(key, v, f"'{bad}' cannot be set through cfg_options ({fix})")
            if k == "type":
                _check_registry_type(key, v, registry_names)
            elif k in ("_scope_", "default_scope") and v not in MMENGINE_SCOPES:
                raise NotAllowed(key, v, f"scopes are {', '.join(sorted(MMENGINE_SCOPES))}")
            elif k == "checkpoint" and isinstance(v, str) and v.startswith("http://"):
                raise NotAllowed(key, v, "remote checkpoints must be https:// URLs (or mmengine's torchvision:// "
                                         "and open-mmlab:// zoos)")


def _check_registry_type(key: str, value: Any, registry_names: Optional[FrozenSet[str]]) -> None:
    if not isinstance(value, str):
        raise NotAllowed(key, value, "an mmengine 'type' must be a registered name (a string)")
    scope, _, name = value.rpartition(".")
    if scope and (scope not in MMENGINE_SCOPES or "." in scope):
        raise NotAllowed(key, value, "an mmengine 'type' must be a registered name such as 'RTMDetHead' or "
                                     "'mmdet.RTMDetHead', not an import path")
    if not _IDENT.match(name):
        raise NotAllowed(key, value, "an mmengine 'type' must be a registered name")
    if registry_names is not None and name not in registry_names:
        raise NotAllowed(key, value, "no mmengine, mmdet or mmcv registry has this name")


def registry_names() -> FrozenSet[str]:
    """Every name registered in the mmengine registry tree (mmdet's modules registered first)."""
    from mmdet.utils import register_all_modules
    from mmengine.registry import Registry

    import mmengine.registry as root_registries

    register_all_modules(init_default_scope=False)
    names, todo, seen = set(), [r for r in vars(root_registries).values() if isinstance(r, Registry)], set()
    while todo:
        reg = todo.pop()
        if id(reg) in seen:
            continue
        seen.add(id(reg))
        names.update(reg.module_dict)
        todo.extend(reg.children.values())
    return frozenset(names)


# ----------------------------------------------------------- mmdet configs
def mmdet_configs_dir() -> Path:
    """The installed mmdet package's config folder (found without importing mmdet)."""
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.origin:
        raise NotAllowed("model.mmdet_config", "mmdet::", "mmdet is not installed")
    return Path(os.path.realpath(Path(spec.origin).parent / ".mim" / "configs"))


def trusted_config_dirs() -> List[Path]:
    return [Path(os.path.realpath(Path(p).expanduser())) for p in
            os.environ.get(TRUSTED_CONFIGS_ENV, "").split(os.pathsep) if p]


def mmdet_config_path(name: str, key: str = "model.mmdet_config") -> Path:
    """The real path of a model's mmdet config; refused outside mmdet's configs and trusted folders.

    Raises:
        NotAllowed: a path outside the installed mmdet configs that no
            ``$CVOPS_TRUSTED_CONFIGS`` folder contains, or not a ``.py`` file.
    """
    scope, sep, rel = str(name).partition("::")
    if sep:
        if scope != "mmdet":
            raise NotAllowed(key, name, "only the mmdet:: scope is supported")
        root = mmdet_configs_dir()
        path = Path(os.path.realpath(root / rel))
        if not _inside(path, root):
            raise NotAllowed(key, name, f"it resolves outside mmdet's configs ({root})")
    else:
        path = Path(os.path.realpath(Path(name).expanduser()))
        trusted = trusted_config_dirs()
        if not any(_inside(path, d) or path == d for d in trusted):
            raise NotAllowed(key, name, "mmengine executes config files, so a config outside the installed mmdet "
                                        f"package needs its folder in ${TRUSTED_CONFIGS_ENV} (set it in your "
                                        f"shell: export {TRUSTED_CONFIGS_ENV}={path.parent}); or use mmdet::<config>")
    if path.suffix != ".py":
        raise NotAllowed(key, name, "an mmdet config is a .py file")
    return path


def _inside(path: Path, root: Path) -> bool:
    return root in path.parents


# ---------------------------------------------------------------- load_from
def check_load_from(value: Any, key: str = "model.load_from") -> None:
    if isinstance(value, str) and "://" in value and not value.startswith("https://"):
        raise NotAllowed(key, value, "remote checkpoints must be https:// URLs (downloaded, then loaded under "
                                     "torch's weights_only allow-list)")


# ------------------------------------------------------------ the entrance
def check_config(cfg: DictConfig) -> None:
    """Every route of the module docstring, on a composed config (with or without its ``hydra`` node).

    Raises:
        NotAllowed: at the first value that would reach code.
    """
    check_targets(cfg, skip=("hydra",))
    if "hydra" in cfg:
        check_hydra(cfg.hydra)
    model = cfg.get("model")
    if model is None:
        return
    if model.get("cfg_options"):
        try:
            options = OmegaConf.to_container(model.cfg_options, resolve=True)
        except Exception as e:
            raise NotAllowed("model.cfg_options", "${...}", f"its interpolations do not resolve before the run ({e})")
        check_mmengine_options(options)
    if not OmegaConf.is_missing(model, "mmdet_config") and model.get("mmdet_config"):
        mmdet_config_path(str(model.mmdet_config))
    check_load_from(model.get("load_from"))
