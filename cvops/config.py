"""Compose and validate recipes before any work starts.

:func:`preflight` composes the recipe exactly as the ``cvops`` command will
(Hydra's compose API, same primary config, same overrides) and turns any
problem into a :class:`ConfigError` naming the key, the value, the file and
line it came from (or the command line) and close matches. Sweeps are checked
value by value, so ``train.lr=0.01,abc`` fails before the first job starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from cvops import recipes
from cvops.errors import ConfigError  # re-exported: cvops.config.ConfigError stays importable
from cvops.trust import NotAllowed, check_config
from cvops.recipes import CONF_DIR, available_recipes, find_recipe, recipe_dirs
from cvops.schema import GROUPS
from cvops.stages import declared, graph, register_configs

_REGISTERED = False


def ensure_configs() -> None:
    """Put cvops' schema (and each plug-in stage's) into Hydra's ConfigStore, once per process.

    Before any composition by Hydra: :func:`compose_config` calls it, and so does ``cvops`` before Hydra's
    main composes (a sweep's jobs). A ``cvops`` run whose composition comes from the compose cache
    (:mod:`cvops.composecache`) never needs it, which saves the schema's conversion (about 20 ms).
    """
    global _REGISTERED
    if not _REGISTERED:
        register_configs(ConfigStore.instance())
        _REGISTERED = True


# ------------------------------------------------------------------ compose
def compose_config(overrides: Sequence[str] = (), *, hydra_node: bool = False, cache: bool = False) -> DictConfig:
    """Compose ``conf/config.yaml`` + overrides the way ``cvops`` does.

    Args:
        overrides: Hydra overrides, e.g. ``["recipe=quickstart", "train.lr=0.01"]``.
        hydra_node: keep the ``hydra`` node (its ``runtime.choices`` say which
            option of each group was picked).
        cache: use the compose cache (:mod:`cvops.composecache`); only for a process whose ConfigStore
            holds nothing but what installed code declares (the ``cvops`` command).

    Raises:
        ConfigError: with the key, file and fix, for any composition problem.
    """
    if not cache:
        return _compose(overrides, hydra_node)[0]
    from cvops import composecache

    name, cfg = composecache.lookup(overrides)
    if cfg is None:
        before = composecache.snapshot(overrides) if name is not None else {}
        cfg, seen = _compose(overrides, True, inspect=name is not None)
        if name is not None and seen is not None:
            composecache.store(name, cfg, overrides, seen, before)
    if not hydra_node:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def _compose(overrides: Sequence[str], hydra_node: bool, inspect: bool = False) -> Tuple[DictConfig, Any]:
    """Hydra's composition, and with ``inspect`` what it read (:func:`cvops.composecache.inspect`; None when
    that cannot be told: the composition is then not cached)."""
    ensure_configs()
    seen = None
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="cvops"):
            if not inspect:
                return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_node), None
            with warnings.catch_warnings(record=True) as caught:
                cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_node)
            for w in caught:  # shown as usual (after composing), and remembered: such a composition is not cached
                warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
            try:
                from cvops import composecache

                with warnings.catch_warnings(record=True):  # asking again shows nothing twice
                    seen = composecache.inspect(cfg, "config", overrides, [str(w.message) for w in caught])
            except Exception as e:  # an odd source or plug-in: compose this command line every time
                import logging

                logging.getLogger("cvops.detail").debug("compose cache: cannot tell what was read: %s", e)
            return cfg, seen
    except Exception as e:  # Hydra wraps OmegaConf/YAML errors; explain them
        raise explain(e, overrides) from e


def preflight(overrides: Sequence[str], *, check_missing: bool = True, cache: bool = False) -> Optional[DictConfig]:
    """Validate a command line (one job, or every value of every sweep); ``cache``: see :func:`compose_config`.

    Returns:
        The composed config (``hydra`` node included) when the line is one job (no sweep), else None.

    Raises:
        ConfigError: at the first problem, before anything is written.
    """
    variants = _variants(overrides)
    cfg = None
    for variant in variants:
        cfg = compose_config(variant, hydra_node=True, cache=cache)
        names = list(graph(cfg))
        bad = [st for st in cfg.stages if st not in names]
        if bad:
            close = {b: difflib.get_close_matches(b, names, n=1) for b in bad}
            hint = "; ".join(f"'{b}' -> did you mean '{c[0]}'?" for b, c in close.items() if c)
            plug = [b for b in bad if b in declared()]
            if plug:  # an installed plug-in stage whose config group this recipe does not select
                hint = "; ".join([*([hint] if hint else []), *(
                    f"'{b}' is a plug-in stage ({declared()[b].origin}): select its config group with {b}=default "
                    f"(or '- /{b}: default' in the recipe's defaults)" for b in plug)])
            raise ConfigError(f"unknown stage(s) {bad} in stages ({_origin(['stages'], variant)}); "
                              f"stages are {names}" + (f". {hint}" if hint else ""))
        extra = next(_unknown(cfg, skip=("hydra",)), None)
        if extra is not None:  # `+key=value` force-adds past the schema; refuse it here
            raise ConfigError(_unknown_key_message(_split_key(extra), _origin(_split_key(extra), variant)))
        check_safe(cfg, variant)
        check_task(cfg, variant)
        check_nodes(cfg, variant)
        if check_missing:
            missing = sorted(_missing(cfg, skip=("hydra",)))
            if missing:
                fixes = " ".join(f"{k}=..." for k in missing)
                raise ConfigError(
                    f"required value{'s' if len(missing) > 1 else ''} missing: {', '.join(missing)}. "
                    f"Set {'them' if len(missing) > 1 else 'it'} in your recipe or on the command line: cvops {fixes}"
                    + ("" if _recipe_override(variant) else f"\n  (no recipe selected; available: {', '.join(available_recipes())})")
                )
        check_stages(cfg)
    return cfg if variants == [list(overrides)] else None  # a sweep (an interval one too) is not one job


def check_stages(cfg: DictConfig) -> None:
    """Every stage's own check (``Stage.check``: values its schema's types cannot refuse, such as a negative
    limit) on its typed view, for each stage of the recipe's graph, whichever stages this run asks for: a bad
    ``serve.lanes`` is refused before curate starts, not when ``cvops serve`` does.

    A stage whose sections hold a required value left ``???`` is skipped (the missing-value check names it,
    or the command does not need it).

    Raises:
        ConfigError: the first refusal, naming the key, its value and the fix.
    """
    import importlib

    from omegaconf.errors import MissingMandatoryValue

    from cvops.stages import typed_view

    for name, stage in graph(cfg).items():
        if not stage.check:
            continue
        try:
            view = typed_view(name, cfg, stage.sections)
        except MissingMandatoryValue:
            continue
        module, _, function = stage.check.partition(":")
        getattr(importlib.import_module(module), function)(view)


def mask_models() -> List[str]:
    """The model config groups that predict instance masks (``masks: true`` in ``conf/model/<name>.yaml``)."""
    import yaml

    out = []
    for f in sorted((CONF_DIR / "model").glob("*.yaml")):
        try:
            if (yaml.safe_load(f.read_text()) or {}).get("masks") is True:
                out.append(f.stem)
        except (OSError, yaml.YAMLError):
            continue
    return out


def check_task(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """The recipe's ``task`` agrees with its model and its curated labels, or one message with the fix."""
    masks = bool(OmegaConf.select(cfg, "model.masks", default=False))
    task = OmegaConf.select(cfg, "task", default=None)
    task = str(task) if task is not None else ("instance_segmentation" if masks else "detection")
    model = OmegaConf.select(cfg, "model.name", default="?")
    curated = bool(OmegaConf.select(cfg, "curate.masks", default=False))
    def where() -> str:  # only when there is something to say: it reads the composed files
        return f"(task: {_origin(['task'], overrides)})"

    if task == "instance_segmentation" and not masks:
        raise ConfigError(f"task=instance_segmentation needs a model that predicts masks, and model={model} "
                          f"predicts boxes only {where()}. Choose one of: "
                          f"{', '.join(f'model={m}' for m in mask_models()) or '(none installed)'}")
    if task == "detection" and masks:
        raise ConfigError(f"model={model} is an instance segmentation model (boxes and masks) but task=detection "
                          f"{where()}. Set task=instance_segmentation (with curate.masks=true), or choose a "
                          "detection model, e.g. model=rtmdet_tiny")
    if task == "instance_segmentation" and not curated:
        raise ConfigError(f"task=instance_segmentation (model={model}) trains on masks, but curate.masks=false "
                          f"keeps boxes only "
                          f"({_origin(['curate', 'masks'], overrides)}). Set curate.masks=true (data with COCO "
                          "segmentations or YOLO segment labels)")


def check_nodes(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """A multi-node training (``train.nnodes``) is a torchrun of ``nnodes`` machines: ranks and port in range."""
    nnodes = OmegaConf.select(cfg, "train.nnodes", default=1)
    rank = OmegaConf.select(cfg, "train.node_rank", default=0)
    port = OmegaConf.select(cfg, "train.master_port", default=29500)
    launcher = str(OmegaConf.select(cfg, "train.launcher", default="none"))
    if nnodes is None or int(nnodes) < 1:
        raise ConfigError(f"train.nnodes={nnodes}: the number of machines, at least 1 "
                          f"({_origin(['train', 'nnodes'], overrides)})")
    if rank is None or not 0 <= int(rank) < int(nnodes):
        raise ConfigError(f"train.node_rank={rank}: a machine's rank, 0..{int(nnodes) - 1} for train.nnodes={nnodes} "
                          f"({_origin(['train', 'node_rank'], overrides)})")
    if port is None or not 1 <= int(port) <= 65535:
        raise ConfigError(f"train.master_port={port}: a TCP port, 1..65535 ({_origin(['train', 'master_port'], overrides)})")
    if int(nnodes) > 1 and launcher != "pytorch":
        raise ConfigError(f"train.nnodes={nnodes} trains on several machines through torchrun: set "
                          f"train.launcher=pytorch ({_origin(['train', 'launcher'], overrides)})")


def check_safe(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Refuse, naming the key and where it was set, any value that would reach code (:mod:`cvops.trust`)."""
    try:
        check_config(cfg)
    except NotAllowed as e:
        raise ConfigError(f"{e} ({_origin(_split_key(e.key), overrides)})") from e


def _unknown(node: DictConfig, prefix: str = "", skip: Sequence[str] = ()) -> Iterable[str]:
    """Keys of schema-typed nodes that the schema does not declare."""
    typ = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(typ)} if dataclasses.is_dataclass(typ) else None
    for key in node.keys():
        if key in skip:
            continue
        if fields is not None and key not in fields:
            yield f"{prefix}{key}"
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            yield from _unknown(child, f"{prefix}{key}.")


def _missing(node: DictConfig, prefix: str = "", skip: Sequence[str] = ()) -> Iterable[str]:
    """Keys still ``???`` (interpolations are not resolved, so nothing else can fail here)."""
    for key in node.keys():
        if key in skip:
            continue
        if OmegaConf.is_missing(node, key):
            yield f"{prefix}{key}"
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            yield from _missing(child, f"{prefix}{key}.")


def _recipe_override(overrides: Iterable[str]) -> Optional[str]:
    for o in overrides:
        m = re.match(r"^recipe=([^,]+)", o)
        if m:
            return m.group(1)
    return None


def _variants(overrides: Sequence[str]) -> List[List[str]]:
    """One override list per value of each sweep (not the whole product).

    Only an override with a comma or a parenthesis can be a sweep (``a,b``, ``range(...)``, ``choice(...)``):
    the others are taken as they are (the grammar is checked when composing; a bad one is never cached).
    """
    maybe = [o for o in overrides if "," in o or "(" in o]
    if not maybe:
        return [list(overrides)]
    try:
        parsed = dict(zip(maybe, OverridesParser.create().parse_overrides(maybe)))
    except Exception as e:
        raise explain(e, overrides) from e
    sweeps: List[Tuple[int, List[str]]] = []
    base: List[str] = []
    for i, line in enumerate(overrides):
        o = parsed.get(line)
        if o is None:
            base.append(line)
        elif o.is_sweep_override() and not o.is_interval_sweep():
            values = [_override_text(o, v) for v in o.sweep_string_iterator()]
            sweeps.append((i, values))
            base.append(values[0])
        elif o.is_interval_sweep():  # e.g. Optuna interval(0.001, 0.1): key checked only
            base.append(f"{o.get_key_element()}={o.value().start}")
        else:
            base.append(o.input_line)
    variants = [base]
    for i, values in sweeps:
        for v in values[1:]:
            variants.append(base[:i] + [v] + base[i + 1 :])
    return variants


def _override_text(o: Override, value: str) -> str:
    prefix = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~"}.get(o.type.name, "")
    return f"{prefix}{o.get_key_element()}={value}"


# -------------------------------------------------------------- explaining
def explain(exc: BaseException, overrides: Sequence[str] = ()) -> ConfigError:
    """Turn a Hydra/OmegaConf/YAML composition error into one clear message."""
    import yaml

    chain = _chain(exc)
    for e in chain:
        if isinstance(e, yaml.YAMLError):
            return ConfigError(_yaml_message(e))
        if isinstance(getattr(e, "override", None), str):  # Hydra's OverrideParseException: name the override
            hint = ""
            key, _, value = e.override.partition("=")
            if value.startswith("[") and "=" in value:  # a list of overrides (loop.retrain): quote each one
                items = ", ".join(f'"{x.strip()}"' for x in value.strip("[]").split(","))
                hint = f"; a list of overrides takes each one quoted: '{key}=[{items}]'"
            return ConfigError(f"cannot parse the command line: {e.override!r}: {str(e).splitlines()[0]}{hint} "
                               "(the override grammar: https://hydra.cc/docs/advanced/override_grammar/basic)")
    text = "\n".join(str(e) for e in chain if str(e))
    if "Could not override 'recipe'" in text and any(o.lstrip("+~").startswith("hydra.searchpath=") for o in overrides):
        from cvops.recipes import _recipe_path

        return ConfigError(
            "hydra.searchpath on the command line replaces cvops' own search path, which holds the recipe "
            f"folders: keep them in the list, e.g. hydra.searchpath=[recipes://{_recipe_path()},file:///your/configs]"
        )
    m = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if m:
        group, name = m.group(1), m.group(2)
        if group == "recipe":
            dirs = ", ".join(str(d) for d in recipe_dirs())
            return ConfigError(
                f"unknown recipe '{name}'. Available recipes: {', '.join(available_recipes())} "
                f"(searched {dirs}; add your own directory with CVOPS_RECIPE_PATH)"
            )
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) if (CONF_DIR / group).is_dir() else []
        close = difflib.get_close_matches(name, options, n=1)
        hint = f" Did you mean {group}={close[0]}?" if close else ""
        return ConfigError(
            f"unknown {group} option '{name}' ({_origin([group], overrides)}). "
            f"Choices: {', '.join(options) or '(none)'}.{hint}"
        )
    for e in chain:
        if not isinstance(e, OmegaConfBaseException) or not getattr(e, "full_key", None):
            continue
        key = str(e.full_key)
        parts = _split_key(key)
        where = _origin(parts, overrides)
        name = type(e).__name__
        if parts and parts[0] == "recipe" and name in ("ConfigKeyError", "ConfigAttributeError"):
            recipe = _recipe_override(overrides)
            path = find_recipe(recipe) if recipe else None
            return ConfigError(
                f"recipe {_short(path) if path else recipe} must start with the line '# @package _global_' "
                "so that its keys apply to the whole config (see recipes/quickstart.yaml)"
            )
        if name in ("ConfigKeyError", "ConfigAttributeError"):
            return ConfigError(_unknown_key_message(parts, where))
        if name == "ValidationError":
            msg = str(e).splitlines()[0]
            expected = _expected_type(parts)
            return ConfigError(
                f"wrong type for '{key}' ({where}): {msg}" + (f"; expected {expected}" if expected else "")
            )
        return ConfigError(f"invalid value for '{key}' ({where}): {str(e).splitlines()[0]}")
    first = str(exc).strip() or text.strip() or type(exc).__name__
    return ConfigError(first)


def _chain(exc: BaseException) -> List[BaseException]:
    out, seen = [], set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        out.append(e)
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return out


def _yaml_message(e: Any) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if mark is not None:
        return f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: YAML does not parse: {problem}"
    return f"YAML does not parse: {problem}"


def _split_key(key: str) -> List[str]:
    return [p for p in re.split(r"\.|\[|\]", key) if p]


def _schema_fields(parts: Sequence[str]) -> Optional[Dict[str, Any]]:
    """Field name -> type of the dataclass at ``parts`` (None if free-form)."""
    from cvops.stages import root_schema

    cls: Any = root_schema()
    for p in parts:
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if p not in hints:
            return None
        cls = hints[p]
        if typing.get_origin(cls) is typing.Union:  # Optional[<plug-in schema>]
            cls = next((a for a in typing.get_args(cls) if a is not type(None)), cls)
    if not dataclasses.is_dataclass(cls):
        return None
    return typing.get_type_hints(cls)


def _unknown_key_message(parts: List[str], where: str) -> str:
    key = ".".join(parts)
    parent, leaf = parts[:-1], parts[-1]
    fields = _schema_fields(parent)
    msg = f"unknown key '{key}' ({where})."
    grand = _schema_fields(parent[:-1]) if parent else None
    if fields is None and grand and parent[-1] in grand and "Dict" in str(grand[parent[-1]]):
        mapping = ".".join(parent)
        return (f"cannot add '{leaf}' to the mapping '{mapping}' with a plain override ({where}). "
                f"Add entries with ++{mapping}.{leaf}=<value>, or set the whole mapping with ++{mapping}={{...}}")
    if fields:
        close = difflib.get_close_matches(leaf, list(fields), n=3, cutoff=0.6)
        prefix = ".".join(parent) + "." if parent else ""
        if close:
            msg += " Did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?"
        msg += f"\n  valid keys{(' under ' + repr('.'.join(parent))) if parent else ''}: {', '.join(sorted(fields))}"
    return msg


def _expected_type(parts: Sequence[str]) -> Optional[str]:
    fields = _schema_fields(parts[:-1])
    if not fields or parts[-1] not in fields:
        return None
    t = fields[parts[-1]]
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


# -------------------------------------------------------------- provenance
def _origin(parts: Sequence[str], overrides: Sequence[str]) -> str:
    """Where a key was set: the command line, or ``file, line N``."""
    key = ".".join(parts)
    hits = [(len(k), o) for o in overrides for k in [o.lstrip("+~").split("=", 1)[0]]
            if k == key or key.startswith(k + ".") or k.startswith(key + ".")]
    if hits:
        return f"command line: {max(hits)[1]}"
    for path, inner in _candidate_files(overrides):
        sub = list(parts[len(inner) :]) if list(parts[: len(inner)]) == inner else None
        if sub is None:
            continue
        line = _yaml_line(path, sub)
        if line is not None:
            return f"{_short(path)}, line {line}"
    return "composed config"


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _candidate_files(overrides: Sequence[str]) -> List[Tuple[Path, List[str]]]:
    """Files that went into the composition, with the key prefix each maps to."""
    files: List[Tuple[Path, List[str]]] = []
    choices: Dict[str, str] = {}
    primary = CONF_DIR / "config.yaml"
    for g, c in _defaults(primary):
        choices[g] = c
    name = _recipe_override(overrides)
    recipe = find_recipe(name) if name else None
    if recipe is not None:
        for g, c in _defaults(recipe):
            choices[g.lstrip("/")] = c
        files.append((recipe, []))
    for o in overrides:
        k, _, v = o.partition("=")
        if k in GROUPS:
            choices[k] = v
    for g in GROUPS:
        c = choices.get(g)
        seen = set()
        while c and (g, c) not in seen:  # follow a group file's own defaults (onnx_int8 -> onnx)
            seen.add((g, c))
            p = CONF_DIR / g / f"{c}.yaml"
            if not p.is_file():
                break
            files.append((p, [g]))
            parents = [pc for pg, pc in _defaults(p) if pg == ""]
            c = parents[0] if parents else None
    files.append((primary, []))
    return files


def _defaults(path: Path) -> List[Tuple[str, str]]:
    """(group, choice) pairs from a YAML defaults list; group '' = same group."""
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:
        return []
    out = []
    for d in (data or {}).get("defaults", []) if isinstance(data, dict) else []:
        if isinstance(d, str):
            out.append(("", d))
        elif isinstance(d, dict):
            for k, v in d.items():
                k = k.replace("override ", "").replace("optional ", "").strip()
                if isinstance(v, str):
                    out.append((k, v))
    return out


def _yaml_line(path: Path, parts: Sequence[str]) -> Optional[int]:
    import yaml

    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except Exception:
        return None
    line = None
    for p in parts:
        if not isinstance(node, yaml.MappingNode):
            return line
        for k, v in node.value:
            if k.value == p:
                line, node = k.start_mark.line + 1, v
                break
        else:
            return None
    return line


def to_container(cfg: DictConfig, key: Optional[str] = None) -> Any:
    """Resolved plain-Python copy of ``cfg`` (or of ``cfg[key]``)."""
    node = cfg if key is None else OmegaConf.select(cfg, key)
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node


__all__ = ["ConfigError", "compose_config", "preflight", "explain", "to_container", "recipes"]
