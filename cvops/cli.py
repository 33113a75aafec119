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

One run composes the recipe once: the preflight's composition is the job's
config, and the job runs the way Hydra's own main runs one (its run dir, the
``.hydra/`` files, logging, callbacks and ``HydraConfig``:
:func:`hydra.core.utils.run_job`). Hydra's main runs what it alone knows:
sweeps (``-m``), ``--help``, ``--info``, ``--cfg hydra`` and the like. The
verbs (``cvops <verb> ...``) are the modules of :mod:`cvops.commands`.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
from pathlib import Path
from typing import List, Optional

from omegaconf import DictConfig

from cvops.commands import COMMANDS
from cvops.config import check_safe, compose_config, ensure_configs, preflight
from cvops.errors import EXIT_STATUS, ConfigError, UserError, one_line
from cvops.recipes import CONF_DIR
from cvops.session import CONFIG_NAME, run_job

log = logging.getLogger("cvops")

#: Errors that are the user's to fix: one message, no traceback.
USER_ERRORS = (UserError, OSError)


def _task(cfg: DictConfig) -> Optional[float]:
    """One Hydra job: run the recipe's stages. Returns the headline metric."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cvops import console
    from cvops.runner import Runner

    hc = HydraConfig.get()
    if hc.verbose:
        console.set_verbose(True)
    console.install()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    try:
        if multirun:  # a sweep's values reach each job's config here (one run's config is the preflight's own)
            check_safe(cfg, [])
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
        print(one_line(e), file=sys.stderr)
        sys.exit(EXIT_STATUS)
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


def _command(verb: str, argv: List[str]) -> int:
    """``cvops <verb> ...``: the command module's ``main`` (imported on use: ``cvops recipe=...`` never pays for it)."""
    return int(importlib.import_module(f"cvops.commands.{COMMANDS[verb]}").main(argv) or 0)


def _check_safe_if_composable(overrides: List[str]) -> None:
    """``--help``/``--info`` compose too: refuse code-bearing values even there (other problems are shown by Hydra)."""
    try:
        cfg = compose_config(overrides, hydra_node=True)
    except ConfigError:
        return
    check_safe(cfg, overrides)


def _hydra_main(argv: List[str]) -> int:
    """Hand the command line to Hydra's own main (a sweep, ``--help``, ``--info``, ``--cfg hydra`` ...)."""
    import hydra

    ensure_configs()  # Hydra composes: it needs cvops' schema in the ConfigStore
    sys.argv = [sys.argv[0] if sys.argv and sys.argv[0] else "cvops", *argv]
    hydra.main(config_path=str(CONF_DIR), config_name=CONFIG_NAME, version_base="1.3")(_task)()
    return 0


def _run(cfg: DictConfig) -> int:
    """Run one job on the preflight's composition, as Hydra's main runs a single run
    (:func:`cvops.session.run_job`: the run dir, the ``.hydra/`` files, the job's logging, the callbacks and
    ``HydraConfig`` while :func:`_task` runs); a job's unexpected error is shown as Hydra's main shows it."""
    from hydra._internal.utils import run_and_report

    def job() -> None:
        _ = run_job(cfg, _task).return_value  # a job's unexpected error is raised here

    run_and_report(job)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``cvops``; returns the exit status (a user's error: one line and :data:`EXIT_STATUS`)."""
    if argv is None:  # this process is the command: what it imported lives until it ends
        # keep the garbage collector from walking the imported modules (Hydra, OmegaConf, cvops) again at each
        # full collection: a sixth of a cached rerun's time otherwise; objects made from here on are collected
        gc.freeze()
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-v", "--verbose") for a in argv):  # cvops' own flag (Hydra's is hydra.verbose=...)
        from cvops.console import set_verbose

        set_verbose(True)
        argv = [a for a in argv if a not in ("-v", "--verbose")]
    if argv and argv[0] in COMMANDS:
        return _command(argv[0], argv[1:])
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    informational = bool(args.help or args.hydra_help or args.info or args.shell_completion)
    try:
        if args.config_path or args.config_name or args.config_dir:
            raise ConfigError("--config-path, --config-name and --config-dir are not cvops options: cvops composes "
                              "conf/config.yaml with a recipe; select one with recipe=<name> (recipe folders: "
                              "CVOPS_RECIPE_PATH)")
        if getattr(args, "experimental_rerun", None):
            raise ConfigError("--experimental-rerun is not a cvops option: it unpickles a file, which can run code. "
                              "Rerun a job from its recipe and overrides (run.json lists them)")
        if informational:
            _check_safe_if_composable(args.overrides)
            return _hydra_main(argv)
        if args.cfg is None:  # a run: run.json's git commit, found while composing
            from cvops.manifest import prefetch_git_sha

            prefetch_git_sha()
        composed = preflight(args.overrides, check_missing=args.cfg is None, cache=True)
    except UserError as e:
        print(one_line(e), file=sys.stderr)
        return EXIT_STATUS
    from omegaconf import OmegaConf

    mode = None if composed is None else OmegaConf.select(composed, "hydra.mode")
    single = composed is not None and not args.multirun and (mode is None or mode.name == "RUN")
    if single and args.cfg == "job" and not (args.package or args.resolve):
        # the spec the preflight just composed is the one Hydra would compose again: print it once
        print(OmegaConf.to_yaml(OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"])), end="")
        return 0
    if single and args.cfg is None:
        return _run(composed)  # type: ignore[arg-type]
    return _hydra_main(argv)  # a sweep (-m, a,b values, hydra.mode=MULTIRUN), --cfg hydra/all, --package ...


if __name__ == "__main__":
    sys.exit(main())
