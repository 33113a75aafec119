"""The one prologue of every ``cvops <verb>``: parse, compose the recipe once, open the store, find artifacts.

::

    def main(argv):
        args, overrides = parse_args(parser, argv)
        return guarded(lambda: _work(args, open_recipe(overrides)))

:func:`open_recipe` validates the command line exactly as ``cvops recipe=X`` does
(:func:`cvops.config.preflight`: unknown keys, wrong types, refused ``_target_``
values) and composes it once; the :class:`Recipe` it returns holds the config,
the store and, computed on first use, every stage's fingerprint. A missing
artifact is one error that names the ``stages=[...]`` to run (:meth:`Recipe.require`).
:func:`guarded` turns every :class:`cvops.errors.UserError` (and ``OSError``)
into one ``cvops: error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, open_dict

from cvops.errors import EXIT_STATUS, ConfigError, UpstreamMissing, UserError, one_line

#: What a command reports as one line with exit status 2 instead of a traceback: the user's to fix.
USER_ERRORS = (UserError, OSError)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    """The command's own flags, and the rest as Hydra overrides (``recipe=X key=value``).

    An unknown ``--flag`` is refused with the usage (exit status 2) rather than read as an override.
    """
    args, rest = parser.parse_known_args(list(argv))
    flags = [a for a in rest if a.startswith("-")]  # no Hydra override starts with '-'
    if flags:
        parser.error(f"unrecognized arguments: {' '.join(flags)} (a config value is key=value, e.g. recipe=quickstart)")
    return args, rest


@dataclass
class Recipe:
    """A composed, validated recipe with its artifact store: what a command works on.

    Attributes:
        overrides: the command line's Hydra overrides, as given.
        cfg: the composed config (without the ``hydra`` node).
        store: the artifact store ``paths`` names (:func:`cvops.store.open_store`).
        name: the recipe's name (``recipe=X``), or None.
    """

    overrides: List[str]
    cfg: DictConfig
    store: Any
    name: Optional[str]

    @functools.cached_property
    def fingerprints(self) -> Dict[str, Dict[str, Any]]:
        """Every stage's fingerprint and what went into it (:func:`cvops.fingerprint.fingerprints`), computed
        once, on first use (a command that needs none, ``cvops models``, computes none)."""
        from cvops.fingerprint import fingerprints

        return fingerprints(self.cfg)

    def fingerprint(self, stage: str) -> str:
        return str(self.fingerprints[stage]["fingerprint"])

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


def open_recipe(overrides: Sequence[str], *, check_missing: bool = True) -> Recipe:
    """Validate and compose the command line once, and open its store.

    Args:
        overrides: Hydra overrides, e.g. ``["recipe=quickstart", "serve.port=9000"]``.
        check_missing: refuse a required value left ``???`` (off for commands that only read the
            project's name and store).

    Raises:
        ConfigError: any composition or validation problem, or a sweep (``a,b`` values): a command works
            on one configuration.
    """
    from cvops.store import open_store
    from cvops.config import preflight

    overrides = list(overrides)
    cfg = preflight(overrides, check_missing=check_missing, cache=True)
    if cfg is None:
        raise ConfigError(f"this command works on one configuration, not a sweep: give one value per key "
                          f"({' '.join(overrides)})")
    name = cfg.hydra.runtime.choices.get("recipe")
    with open_dict(cfg):
        del cfg["hydra"]
    return Recipe(overrides, cfg, open_store(cfg.paths), None if name in (None, "null") else str(name))


def guarded(work: Callable[[], int]) -> int:
    """``work()``, with a user's error as one ``cvops: error:`` line on stderr and exit status 2."""
    try:
        return work()
    except USER_ERRORS as e:
        print(one_line(e), file=sys.stderr)
        return EXIT_STATUS
