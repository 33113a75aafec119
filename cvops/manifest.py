"""``run.json``: what a run was, what it did, and with what.

Written into the Hydra run dir when the run starts and rewritten atomically
after every stage, so a killed run still shows how far it got::

    {recipe, project, config_hash, git_sha, versions{...}, overrides,
     status: running|ok|failed, error?, started, finished, seconds,
     headline{metric, value},
     stages{<name>: {status: ran|cached|skipped|failed, fingerprint, seconds,
                     artifacts{...}, metrics{...}, reason?}}}
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from cvops.store.base import write_json_atomic
from cvops.recipes import ROOT

#: Distributions whose versions every run records (None when not installed).
TRACKED = ("torch", "mmdet", "mmcv", "mmengine", "fiftyone", "onnxruntime", "tensorrt")


@lru_cache(maxsize=1)
def _installed() -> Dict[str, str]:
    """Normalised distribution name -> version, from the ``*.dist-info`` and ``*.egg-info`` names on
    ``sys.path`` (the first entry that has a distribution wins, as for imports); one directory listing per
    entry instead of a metadata search per name. An ``egg-info`` without a version in its name maps to ""."""
    found: Dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in names:
            if n.endswith(".dist-info") and "-" in n:
                name, _, version = n[: -len(".dist-info")].rpartition("-")
                found.setdefault(_normal(name), version)
            elif n.endswith(".egg-info"):  # name[-version[-pyX.Y]].egg-info (dashes in names are escaped)
                parts = n[: -len(".egg-info")].split("-")
                found.setdefault(_normal(parts[0]), parts[1] if len(parts) > 1 else "")
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_version(name: str) -> Optional[str]:
    """Installed version of distribution ``name`` (None when it is not installed); nothing is imported.

    A name found nowhere on ``sys.path`` is not installed (no metadata search: that import and scan cost a
    cached run tens of milliseconds for each library that is absent, e.g. TensorRT on a CPU machine)."""
    v = _installed().get(_normal(name))
    if v:
        return v
    if v is None:
        return None
    import importlib.metadata

    try:  # an egg-info whose name carries no version: read its metadata
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def versions() -> Dict[str, Optional[str]]:
    """Versions of the stack, read from package metadata (nothing is imported)."""
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for dist in TRACKED:
        out[dist] = dist_version(dist)
    return out


_GIT: Dict[str, Any] = {}


def prefetch_git_sha() -> None:
    """Start :func:`git_sha` in the background (two ``git`` processes), so that ``run.json`` does not wait."""
    if "thread" not in _GIT:
        t = threading.Thread(target=lambda: _GIT.setdefault("sha", _git_sha()), name="cvops-git", daemon=True)
        _GIT["thread"] = t
        t.start()


def git_sha() -> Optional[str]:
    """Commit of the cvops checkout, with ``-dirty`` when it has local changes."""
    t = _GIT.get("thread")
    if t is not None:
        t.join(timeout=10)
    if "sha" not in _GIT:
        _GIT["sha"] = _git_sha()
    return _GIT["sha"]


def _git_sha() -> Optional[str]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def config_hash(cfg: DictConfig) -> str:
    """sha256 of the resolved recipe (Hydra's own node excluded)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(data, dict):
        data.pop("hydra", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _overrides() -> List[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not running under Hydra (a Runner called directly, as tests do)
        return []


class RunManifest:
    """The ``run.json`` of one run."""

    def __init__(self, path: Path, cfg: DictConfig, recipe: Optional[str]) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.data: Dict[str, Any] = {
            "recipe": recipe,
            "project": cfg.project,
            "config_hash": config_hash(cfg),
            "git_sha": git_sha(),
            "versions": versions(),
            "overrides": _overrides(),
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "stages": {},
        }
        self._t0 = time.perf_counter()

    def start(self) -> None:
        self._write()

    def stage(self, name: str, *, status: str, fingerprint: Optional[str], seconds: float,
              artifacts: Optional[Dict[str, str]] = None, metrics: Optional[Dict[str, Any]] = None,
              reason: Optional[str] = None) -> None:
        entry: Dict[str, Any] = {
            "status": status,
            "fingerprint": fingerprint,
            "seconds": round(seconds, 3),
            "artifacts": artifacts or {},
            "metrics": metrics or {},
        }
        if reason:
            entry["reason"] = reason
        self.data["stages"][name] = entry
        self._write()

    def headline(self) -> Dict[str, Any]:
        metric = str(self.cfg.leaderboard.metric)
        stage, _, key = metric.partition(".")
        value = self.data["stages"].get(stage, {}).get("metrics", {}).get(key)
        return {"metric": metric, "mode": str(self.cfg.leaderboard.mode), "value": value}

    def finish(self, error: Optional[str] = None) -> None:
        failed = error is not None or any(s["status"] == "failed" for s in self.data["stages"].values())
        self.data["status"] = "failed" if failed else "ok"
        if error:
            self.data["error"] = error
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.data["seconds"] = round(time.perf_counter() - self._t0, 3)
        self.data["headline"] = self.headline()
        self._write(durable=True)

    def _write(self, durable: bool = False) -> None:
        # progress rewrites are atomic but not synced (a crash mid-run leaves an older progress record);
        # the finished record is synced
        write_json_atomic(self.path, self.data, durable=durable)
