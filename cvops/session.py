"""One recipe opened for work: composed once and validated, its store open, its artifacts found.

What every entrance shares, the ``cvops <verb>`` commands (:mod:`cvops.commands`) and the Python API
(:mod:`cvops.api`) alike::

    recipe = open_recipe(["recipe=quickstart", "serve.port=9000"])
    export = recipe.require("export")        # or the error naming the stages=[...] that build it

:func:`open_recipe` validates the overrides exactly as ``cvops recipe=X`` does
(:func:`cvops.config.preflight`: unknown keys, wrong types, refused ``_target_``
values), through the same compose cache, and composes them once; the
:class:`Recipe` it returns holds the config, the store and, computed on first
use, every stage's fingerprint. A missing artifact is one error that names the
``stages=[...]`` to run (:meth:`Recipe.require`).

A run of the stages (``cvops recipe=X`` and :func:`cvops.run`) takes the same
composition with its ``hydra`` node (:func:`compose_job`) and runs it as one
Hydra job (:func:`run_job`). This module never imports the runner: the job's
work is handed in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from omegaconf import DictConfig, open_dict

from cvops.errors import ConfigError, UpstreamMissing

#: The primary config every recipe composes on (``conf/config.yaml``).
CONFIG_NAME = "config"


@dataclass
class Recipe:
    """A composed, validated recipe with its artifact store: what a command (or the Python API) works on.

    Attributes:
        overrides: the Hydra overrides, as given.
        cfg: the composed config (without the ``hydra`` node).
        store: the artifact store ``paths`` names (:func:`cvops.store.open_store`).
        name: the recipe's name (``recipe=X``), or None.
    """

    overrides: List[str]
    cfg: DictConfig
    store: Any
    name: Optional[str]
    #: the fingerprints computed so far (stage -> what :func:`cvops.fingerprint.fingerprints` gives)
    _known: Dict[str, Dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)

    @functools.cached_property
    def fingerprints(self) -> Dict[str, Dict[str, Any]]:
        """Every stage's fingerprint and what went into it (:func:`cvops.fingerprint.fingerprints`), computed
        once, on first use."""
        from cvops.fingerprint import fingerprints

        self._known.update(fingerprints(self.cfg))
        return dict(self._known)

    def fingerprint(self, stage: str) -> str:
        """The fingerprint of ``stage`` for this config; only it and its upstream stages are computed (a
        command that needs none, ``cvops models``, computes none; ``cvops app`` never reads train's state)."""
        if stage not in self._known:
            from cvops.fingerprint import fingerprints

            self._known.update(fingerprints(self.cfg, [stage]))
        return str(self._known[stage]["fingerprint"])

    def artifact(self, stage: str) -> Optional[Any]:
        """The stored artifact of ``stage`` for this config, or None when it is not built."""
        return self.store.get(stage, self.fingerprint(stage))

    def require(self, stage: str, alternative: str = "") -> Any:
        """The stored artifact of ``stage`` for this config.

        Raises:
            UpstreamMissing: it is not built; the message names the ``stages=[...]`` that build it (the
                stage and each upstream stage not in the store) as a command to run, then ``alternative``.
        """
        art = self.artifact(stage)
        if art is not None:
            return art
        from cvops.stages import graph
        from cvops.summary import command_args, program

        stages = graph(self.cfg)
        todo, need = [stage], {stage}
        while todo:
            for up in stages[todo.pop()].inputs:
                if up not in need and not self.store.is_complete(up, self.fingerprint(up)):
                    need.add(up)
                    todo.append(up)
        order = ",".join(s for s in stages if s in need)
        line = " ".join(p for p in (program(), command_args(self.name, self.overrides)) if p)
        raise UpstreamMissing(f"no {stage} artifact for this config ({stage} {self.fingerprint(stage)}) in the store "
                              f"{self.store}; build it first: {line} stages=[{order}]"
                              + (f", {alternative}" if alternative else ""))

    def view(self, stage: str) -> Any:
        """The typed config sections ``stage`` declares (what the stage itself is given as ``ctx.config``)."""
        from cvops.stages import declared, typed_view

        return typed_view(stage, self.cfg, declared()[stage].sections)


def compose_job(overrides: Sequence[str], *, check_missing: bool = True) -> DictConfig:
    """Validate and compose one configuration, ``hydra`` node included (its run dir, logging, callbacks).

    Args:
        overrides: Hydra overrides, e.g. ``["recipe=quickstart", "serve.port=9000"]``.
        check_missing: refuse a required value left ``???``.

    Raises:
        ConfigError: any composition or validation problem, or a sweep (``a,b`` values): this works on one
            configuration.
    """
    from cvops.config import preflight

    overrides = list(overrides)
    cfg = preflight(overrides, check_missing=check_missing, cache=True)
    if cfg is None:
        raise ConfigError(f"this works on one configuration, not a sweep: give one value per key "
                          f"({' '.join(overrides)}); a sweep runs from the command line: cvops -m ...")
    return cfg


def recipe_name(cfg: DictConfig) -> Optional[str]:
    """The recipe a composition (with its ``hydra`` node) selected with ``recipe=X``, or None."""
    name = cfg.hydra.runtime.choices.get("recipe")
    return None if name in (None, "null") else str(name)


def open_recipe(overrides: Sequence[str], *, check_missing: bool = True) -> Recipe:
    """Validate and compose the overrides once, and open their store.

    Args:
        overrides: Hydra overrides, e.g. ``["recipe=quickstart", "serve.port=9000"]``.
        check_missing: refuse a required value left ``???`` (off for work that only reads the project's
            name and store).

    Raises:
        ConfigError: any composition or validation problem, or a sweep (see :func:`compose_job`).
    """
    from cvops.store import open_store

    cfg = compose_job(overrides, check_missing=check_missing)
    name = recipe_name(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return Recipe(list(overrides), cfg, open_store(cfg.paths), name)


def run_job(cfg: DictConfig, task: Callable[[DictConfig], Any], *, configure_logging: bool = True) -> Any:
    """Run ``task`` as one Hydra job on a composition (:func:`compose_job`), as Hydra's own main runs one.

    What Hydra's ``run`` does after composing, with the composition it would have made: the mode set to
    RUN (as the override ``hydra.mode=RUN``, which Hydra adds when nothing set a mode), its resolvers set
    up, the configured callbacks around :func:`hydra.core.utils.run_job`, which makes the run dir
    (``hydra.run.dir``), writes ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, applies
    ``hydra.job.env_set``, configures the job's logging (``configure_logging``: the command line; a library
    caller keeps its own) and sets ``HydraConfig`` while ``task`` runs on the config without its ``hydra`` node.

    Returns:
        Hydra's ``JobReturn``: ``status`` and ``return_value`` (which raises the task's error, as Hydra does).
    """
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import JobRuntime, configure_log, run_job as hydra_run_job, setup_globals
    from hydra.types import HydraContext, RunMode
    from omegaconf import read_write

    if cfg.hydra.mode is None:  # as Hydra's main does when nothing set the mode
        with read_write(cfg), open_dict(cfg):
            cfg.hydra.mode = RunMode.RUN
            cfg.hydra.overrides.hydra.append("hydra.mode=RUN")
    setup_globals()  # Hydra's resolvers (${now:...} in hydra.run.dir), registered when Hydra composes
    JobRuntime.instance().set("name", str(cfg.hydra.job.name))
    if configure_logging:
        configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name=CONFIG_NAME)
    # run_job reads only the callbacks from its context; the config loader is for launchers (sweeps)
    ret = hydra_run_job(hydra_context=HydraContext(config_loader=None, callbacks=callbacks),  # type: ignore[arg-type]
                        task_function=task, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None,
                        configure_logging=configure_logging)
    callbacks.on_run_end(config=cfg, config_name=CONFIG_NAME, job_return=ret)
    return ret


__all__ = ["Recipe", "open_recipe", "compose_job", "recipe_name", "run_job", "CONFIG_NAME"]
