"""The ``cvops`` command (also ``python -m cvops``).

::

    cvops recipe=quickstart                      # run the stages the recipe lists
    cvops recipe=quickstart stages=[curate]      # a part
    cvops recipe=quickstart --cfg job            # the whole composed spec
    cvops -m recipe=quickstart train.lr=0.01,0.004   # a sweep (Hydra multirun)
    cvops doctor                                 # what is installed and working
    cvops recipes                                # the recipes cvops can see
    cvops app recipe=quickstart                  # the curated dataset in the FiftyOne App
    cvops -v recipe=quickstart                   # with the libraries' full logs on the console

The console shows one line per stage start and finish, progress bars and a
closing summary; everything (mmengine, FiftyOne, warnings) is in
``<run dir>/cvops.log`` (:mod:`cvops.console`).

Everything after ``cvops`` is a Hydra command line. It is validated first
(:func:`cvops.config.preflight`): a typo, a wrong type or a disallowed
``_target_`` exits with status 2 and one message before anything is written.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import hydra
from omegaconf import DictConfig

from cvops.config import ConfigError, check_safe, compose_config, ensure_configs, preflight
from cvops.recipes import CONF_DIR, available_recipes, recipe_dirs

log = logging.getLogger("cvops")

#: Errors that are the user's to fix: one message, no traceback.
USER_ERRORS = (ConfigError, OSError)


def _task(cfg: DictConfig) -> Optional[float]:
    """One Hydra job: run the recipe's stages. Returns the headline metric."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cvops.runner import Runner

    from cvops import console

    hc = HydraConfig.get()
    if hc.verbose:
        console.set_verbose(True)
    console.install()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        if multirun or not _HANDED_OVER:  # again per job: a sweep's values reach each job's config here (one job's
            check_safe(cfg, [])           # config is the preflight's own, checked there)
        runner = Runner(cfg, run_dir, recipe=hc.runtime.choices.get("recipe"))
        try:
            return runner.run().headline()["value"]
        finally:
            _write_report(runner)
            _print_summary(runner)
    except USER_ERRORS as e:
        if multirun:  # Hydra records the failed job and goes on with the others
            raise
        log.debug("cvops: error: %s", e)
        print(f"cvops: error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if multirun:
            from cvops.sweep import update_leaderboard

            update_leaderboard(Path(hc.sweep.dir), cfg)


def _write_report(runner: object) -> None:
    try:
        page = runner.write_report()  # type: ignore[attr-defined]
    except Exception as e:  # the page must not hide the run's own result or error
        logging.getLogger("cvops.detail").warning("run report failed: %s: %s", type(e).__name__, e)
        return
    logging.getLogger("cvops.detail").info("run report %s", page)


def _print_summary(runner: object) -> None:
    try:
        lines = runner.summary()  # type: ignore[attr-defined]
    except Exception as e:  # the summary must not hide the run's own result or error
        logging.getLogger("cvops.detail").warning("closing summary failed: %s", e)
        return
    for line in lines:
        log.info("%s", line)


#: True once Hydra's main took the preflight's composed (and checked) config as its one job's config
_HANDED_OVER = False

_hydra_main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_task)


def _cmd_doctor(argv: List[str]) -> int:
    from cvops.doctor import main as doctor

    return doctor(argv)


def _cmd_recipes(argv: List[str]) -> int:
    from cvops.recipes import find_recipe

    for name in available_recipes():
        print(f"{name:20s} {find_recipe(name)}")
    print(f"(searched {', '.join(str(d) for d in recipe_dirs())}; add directories with CVOPS_RECIPE_PATH)")
    return 0


#: Subcommands implemented elsewhere: ``cvops <name> ...`` calls ``module:function(argv)`` (imported on use,
#: so that ``cvops recipe=...`` never pays for them).
LAZY_COMMANDS = {"app": "cvops.fiftyone_app:main", "serve": "cvops.serve.cli:main",
                 "review": "cvops.monitor.review:main", "promote": "cvops.registry:cmd_promote",
                 "rollback": "cvops.registry:cmd_rollback", "models": "cvops.registry:cmd_models",
                 "report": "cvops.report:main", "train-worker": "cvops.train.worker:main"}


def _lazy(target: str) -> Callable[[List[str]], int]:
    def run(argv: List[str]) -> int:
        import importlib

        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)(argv)

    return run


COMMANDS: Dict[str, Callable[[List[str]], int]] = {"doctor": _cmd_doctor, "recipes": _cmd_recipes,
                                                   **{k: _lazy(v) for k, v in LAZY_COMMANDS.items()}}


def _check_safe_if_composable(overrides: List[str]) -> None:
    """``--help``/``--info`` compose too: refuse code-bearing values even there (other problems are shown by Hydra)."""
    try:
        cfg = compose_config(overrides, hydra_node=True)
    except ConfigError:
        return
    check_safe(cfg, overrides)


def _run_on(composed: DictConfig, overrides: List[str]) -> None:
    """Hand the preflight's composed config to Hydra's main as the job's config, instead of it composing again.

    For one job Hydra's main composes ``config`` with the command line, plus ``hydra.mode=RUN`` when
    nothing set the mode; the preflight composed that same primary config and command line. The next
    such composition gets the preflight's config, with ``hydra.mode=RUN`` applied the way Hydra's loader
    applies a ``hydra.*`` override (set, and listed in ``hydra.overrides.hydra``); any other request
    composes as usual. Once: the config is Hydra's from then on.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    compose = ConfigLoaderImpl.load_configuration
    line, pending = list(overrides), [composed]

    def load_configuration(self: ConfigLoaderImpl, config_name: Optional[str], overrides: List[str],
                           run_mode: RunMode, from_shell: bool = True, validate_sweep_overrides: bool = True
                           ) -> DictConfig:
        extra = list(overrides[len(line):])
        if (pending and config_name == "config" and run_mode == RunMode.RUN and list(overrides[:len(line)]) == line
                and extra in ([], ["hydra.mode=RUN"])):
            global _HANDED_OVER
            cfg = pending.pop()
            _HANDED_OVER = True
            ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(extra), cfg)
            cfg.hydra.overrides.hydra.extend(extra)
            return cfg
        ensure_configs()  # a composition by Hydra after all: it needs cvops' schema in the ConfigStore
        return compose(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)

    ConfigLoaderImpl.load_configuration = load_configuration  # type: ignore[method-assign]


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``cvops``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-v", "--verbose") for a in argv):  # cvops' own flag (Hydra's is hydra.verbose=...)
        from cvops.console import set_verbose

        set_verbose(True)
        argv = [a for a in argv if a not in ("-v", "--verbose")]
    if argv and argv[0] in COMMANDS:
        sys.exit(COMMANDS[argv[0]](argv[1:]))
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    informational = args.help or args.hydra_help or args.info or args.shell_completion
    try:
        if args.config_path or args.config_name or args.config_dir:
            raise ConfigError("--config-path, --config-name and --config-dir are not cvops options: cvops composes "
                              "conf/config.yaml with a recipe; select one with recipe=<name> (recipe folders: "
                              "CVOPS_RECIPE_PATH)")
        if getattr(args, "experimental_rerun", None):
            raise ConfigError("--experimental-rerun is not a cvops option: it unpickles a file, which can run code. "
                              "Rerun a job from its recipe and overrides (run.json lists them)")
        composed = None
        if not informational and args.cfg is None:  # a run: run.json's git commit, found while composing
            from cvops.manifest import prefetch_git_sha

            prefetch_git_sha()
        if informational:
            _check_safe_if_composable(args.overrides)
        else:
            composed = preflight(args.overrides, check_missing=args.cfg is None, cache=True)
    except ConfigError as e:
        print(f"cvops: error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.cfg == "job" and composed is not None and not (args.package or args.resolve or args.multirun):
        # the spec the preflight just composed is the one Hydra would compose again: print it once
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"])), end="")
        return
    handed_over = False
    if composed is not None and not args.multirun:
        # Hydra's main composes the command line once only to read hydra.mode, then again to run: the
        # preflight's composition (same primary config, same overrides) already says it
        from hydra._internal.hydra import Hydra
        from omegaconf import OmegaConf

        mode = OmegaConf.select(composed, "hydra.mode")
        Hydra.get_mode = lambda self, config_name, overrides: mode  # type: ignore[method-assign]
        if mode is None or mode.name == "RUN":  # hydra.mode: MULTIRUN in a recipe sweeps: Hydra composes each job
            _run_on(composed, args.overrides)
            handed_over = True
    if not handed_over:  # Hydra's main composes (a sweep, --cfg hydra, --info ...): it needs cvops' schema
        ensure_configs()
    sys.argv = [sys.argv[0] if sys.argv and sys.argv[0] else "cvops", *argv]
    _hydra_main()


if __name__ == "__main__":
    main()
