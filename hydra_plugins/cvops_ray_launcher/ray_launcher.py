"""``hydra/launcher=ray``: each multirun job is a Ray task on an existing cluster (or a local one).

    ray start --head --port 6379                      # once, on the head node; `ray start --address=HEAD:6379` on workers
    cvops -m hydra/launcher=ray hydra.launcher.address=HEAD:6379 recipe=quickstart train.lr=0.01,0.004

Why not hydra-ray-launcher 1.2.2: it pins ``cloudpickle<3`` (joblib 1.6, which the local launcher uses, needs
3) and sets ``object_store_memory`` on ``ray.init``, which Ray refuses when joining an existing cluster. This
launcher is small and uses Ray's own API only:

- ``address``: the cluster to join (``host:6379``, ``ray://host:10001``, ``auto``); null: ``$RAY_ADDRESS``, else
  a Ray instance started for this sweep on this machine and stopped after it.
- ``num_cpus`` / ``num_gpus`` per job (Ray schedules jobs where they fit); ``max_calls=1``: each job runs in a
  fresh worker process (a job's imports, threads and GPU memory end with it).
- The driver resolves what a job on another machine could not (the sweep dir made absolute, ``paths.store``
  and ``paths.cache`` with the driver's environment) and forwards the ``CVOPS_*``, ``FIFTYONE_*``, ``AWS_*``,
  ``WANDB_*`` and ``MONGO*`` variables to the job.
- A job that fails (an exception in cvops, or a worker lost to the cluster) is a failed row in the sweep's
  leaderboard, with its error; the other jobs go on. Each job's ``run.json`` comes back to the driver's sweep
  dir, so the leaderboard is complete when the workers do not share the driver's disk.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
FORWARD = ("CVOPS_", "FIFTYONE_", "AWS_", "WANDB_", "MONGO", "HF_", "TORCH_")


def _job(hydra_context: HydraContext, config: DictConfig, task_function: TaskFunction, singleton_state: Dict[Any, Any],
         cwd: str) -> JobReturn:
    """One sweep job inside a Ray worker."""
    setup_globals()
    Singleton.set_state(singleton_state)
    if os.path.isdir(cwd):  # the driver's folder, when this worker shares its disk (relative data paths work)
        os.chdir(cwd)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    run_json = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir) / "run.json"
    try:
        ret.run_json = run_json.read_text(encoding="utf-8")  # type: ignore[attr-defined]
    except OSError:
        ret.run_json = None  # type: ignore[attr-defined]
    return ret


class RayLauncher(Launcher):
    def __init__(self, **kwargs: Any) -> None:
        self.conf = kwargs
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def _start(self) -> bool:
        import ray

        if ray.is_initialized():
            return False
        address = self.conf.get("address") or os.environ.get("RAY_ADDRESS")
        init = dict(self.conf.get("init") or {})
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD)}
        runtime_env = dict(init.pop("runtime_env", {}) or {})
        runtime_env["env_vars"] = {**env, **dict(runtime_env.get("env_vars", {}))}
        if address:
            log.info("Ray launcher: joining the cluster at %s", address)
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, **init)
        else:
            log.info("Ray launcher: no address (hydra.launcher.address / RAY_ADDRESS): starting Ray on this machine")
            ray.init(runtime_env=runtime_env, **init)
        return True

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        started = self._start()
        remote = ray.remote(num_cpus=float(self.conf.get("num_cpus", 1)), num_gpus=float(self.conf.get("num_gpus", 0)),
                            max_retries=int(self.conf.get("max_retries", 0)), max_calls=1)(_job)
        log.info("Ray launcher: %d jobs, %s cpu / %s gpu each, sweep dir %s", len(job_overrides),
                 self.conf.get("num_cpus", 1), self.conf.get("num_gpus", 0), sweep_dir)
        refs: List[Any] = []
        configs: List[DictConfig] = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = f"ray_{idx}"
                cfg.hydra.job.num = idx
                cfg.hydra.sweep.dir = str(sweep_dir)
                for key in ("store", "cache"):  # resolved here, with the driver's environment
                    value = OmegaConf.select(cfg, f"paths.{key}")
                    if value is not None:
                        value = str(value)
                        cfg.paths[key] = value if "://" in value else str(Path(value).expanduser().absolute())
            configs.append(cfg)
            refs.append(remote.remote(self.hydra_context, cfg, self.task_function, Singleton.get_state(),
                                      os.getcwd()))
        results: List[JobReturn] = []
        try:
            for cfg, ref in zip(configs, refs):
                results.append(self._collect(cfg, ref, sweep_dir))
        finally:
            from cvops.sweep import update_leaderboard

            update_leaderboard(sweep_dir, self.config)
            if started:
                ray.shutdown()
        return results

    def _collect(self, cfg: DictConfig, ref: Any, sweep_dir: Path) -> JobReturn:
        import ray

        job_dir = sweep_dir / str(cfg.hydra.sweep.subdir)
        try:
            ret = ray.get(ref)
        except Exception as e:  # the worker died (killed, out of memory, node lost): no run.json was written
            log.error("Ray launcher: job %s was lost: %s", cfg.hydra.job.num, e)
            job_dir.mkdir(parents=True, exist_ok=True)
            if not (job_dir / "run.json").exists():
                (job_dir / "run.json").write_text(json.dumps({
                    "project": OmegaConf.select(cfg, "project"), "status": "failed",
                    "error": f"Ray: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    "overrides": list(cfg.hydra.overrides.task), "stages": {},
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
            ret = JobReturn()
            ret.overrides = list(cfg.hydra.overrides.task)
            ret.status = JobStatus.FAILED
            ret._return_value = e
            return ret
        text = getattr(ret, "run_json", None)
        if text and not (job_dir / "run.json").exists():  # a worker on another machine: bring its record here
            job_dir.mkdir(parents=True, exist_ok=True)
            (job_dir / "run.json").write_text(text, encoding="utf-8")
        return ret
