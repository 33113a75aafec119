"""Run the serving application with uvicorn.

::

    from cvops.schema import ServeConfig
    from cvops.serve.server import serve
    serve("outputs/.../model.onnx", ServeConfig(host="0.0.0.0", port=8000, sample_rate=0.1),
          info={"fingerprint": "..."}, log_dir="serve_logs")

Every setting is a field of the one :class:`cvops.schema.ServeConfig` handed
down (``serve`` -> :func:`build_app` -> :func:`cvops.serve.app.create_app`),
where its default lives; ``cvops serve`` builds it from the recipe's ``serve``
node. The bearer token is never a parameter: it is read from the environment variable
named by ``token_env`` so it stays out of command lines and logs. With
``workers > 1`` uvicorn starts that many processes, each with its own model
session (ONNX Runtime threads split between them), its own ``/metrics`` registry
and drift window; they share the request log directory (appends and rotation
are serialised with a file lock).

Binding a host that is not a loopback address without a token is refused
(anyone who reaches the machine could use the model and fill its request log)
unless ``allow_anonymous=True`` (``serve.allow_anonymous=true``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import pickle
import socket
from pathlib import Path
from typing import Any, Callable

from cvops.schema import MonitorConfig, ServeConfig

CONFIG_ENV = "CVOPS_SERVE_CONFIG"


def model_fingerprint(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a model file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def build_app(model_path: str | Path | None, cfg: ServeConfig, *, info: dict | None = None,
              log_dir: str | Path | None = None, token: str | None = None,
              drift: Callable[[list[dict]], dict[str, float]] | None = None,
              threads: int | None = None, seed: int = 0, drift_window: int = MonitorConfig.drift_window,
              drift_every: int = MonitorConfig.drift_every, engine_path: str | Path | None = None,
              source: Any = None) -> Any:
    """Load the model, open the request log and build the application.

    Args:
        model_path: the exported ``model.onnx`` (None with ``source`` and ``cfg.alias``: the alias's).
        info: reported by ``/v1/model``; ``fingerprint`` defaults to the model
            file's hash (:func:`model_fingerprint`).
        cfg: the ``serve`` config (:class:`cvops.schema.ServeConfig`: limits, batching, request log
            sampling and retention).
        log_dir: the request log directory (None: no request log).
        token: the bearer token (None or empty: no authentication).
        drift: the drift check, run every ``drift_every`` requests over the last ``drift_window``
            (see :func:`cvops.serve.app.create_app`).
        threads: ONNX Runtime intra-op threads (None: its default).
        seed: seeds the image sampling.
        engine_path: a TensorRT engine to serve instead of the ONNX model.
        source: with ``cfg.alias``, the store's exports (:class:`cvops.serve.models.ExportSource`): the
            application follows the alias (:class:`cvops.serve.models.AliasFollower`); with
            ``cfg.shadow_alias``, it also follows that one and shadows a share of requests with its export
            (:mod:`cvops.serve.shadow`).

    Returns:
        The FastAPI application, warmed up with one inference (following an alias that is not set yet:
        not ready, ``/readyz`` 503, until a promotion).
    """
    from cvops.serve.models import AliasFollower
    from cvops.requestlog import RequestLog

    log = (RequestLog(log_dir, sample_rate=cfg.sample_rate, seed=seed, max_total_mb=cfg.log_max_mb,
                      max_days=cfg.log_max_days) if log_dir else None)
    shadow = None
    if cfg.shadow_alias:
        if source is None:
            raise ValueError("serve.shadow_alias needs the store's exports (a source)")
        from cvops.serve.shadow import Shadow

        confidence = source.monitor.low_confidence if source.monitor is not None else 0.3
        shadow = Shadow(cfg.shadow_rate, confidence, Path(log_dir) if log_dir else None, None)
    app = _build(model_path, cfg, info, log, token, drift, drift_window, drift_every, threads, engine_path, source,
                 shadow)
    if shadow is not None:  # the shadow alias, followed like the live one (its model has no drift gauges)
        import dataclasses

        follow = AliasFollower(dataclasses.replace(source, alias=cfg.shadow_alias, monitor=None), shadow.load,
                               cfg.alias_poll_s)
        try:
            follow.check()
        except RuntimeError:  # said in the log; nothing shadowed until the alias names a model that loads
            pass
        app.state.shadow_follower = follow.start()
    return app


def _build(model_path: Any, cfg: ServeConfig, info: Any, log: Any, token: Any, drift: Any, drift_window: int,
           drift_every: int, threads: Any, engine_path: Any, source: Any, shadow: Any) -> Any:
    import numpy as np

    from cvops.serve.app import create_app
    from cvops.serve.models import AliasFollower, open_detector

    if source is not None and cfg.alias:
        follower: list = []
        app = create_app(None, cfg, info={"alias": cfg.alias}, log=log, token=token or None,
                         drift_window=drift_window, drift_every=drift_every, reload=lambda: follower[0].check(force=True),
                         shadow=shadow)
        f = AliasFollower(source, app.state.load, cfg.alias_poll_s)
        f.on_error = lambda why: app.state.metrics.errors.labels(reason="model_load").inc()
        follower.append(f)
        try:
            f.check()
        except RuntimeError:  # said in the log: not ready until the alias points at a model that loads
            pass
        app.state.follower = f.start()
        return app
    if model_path is None:
        raise ValueError("build_app needs a model_path, or a source with cfg.alias")
    # TensorRT where an engine runs (built by export=tensorrt_*; rebuilt if from another machine)
    detector = open_detector(Path(model_path), Path(engine_path) if engine_path else None, threads)
    pre = detector.preprocess
    detector.predict([np.zeros((pre.height, pre.width, 3), np.uint8)] * (detector.fixed_batch or 1))  # fail early
    info = dict(info or {})
    if not info.get("fingerprint"):
        info["fingerprint"] = model_fingerprint(model_path)
    info.setdefault("model_file", Path(model_path).name)  # a name, never a path: /v1/model is public to clients
    return create_app(detector, cfg, info=info, log=log, token=token or None, drift=drift, drift_window=drift_window,
                      drift_every=drift_every, shadow=shadow)


def app_from_env() -> Any:
    """The application of one uvicorn worker process, from :data:`CONFIG_ENV` (set by :func:`serve`)."""
    with open(os.environ[CONFIG_ENV], "rb") as f:  # written by serve() in the parent process (mode 0600)
        config = pickle.load(f)
    return build_app(**config, token=os.environ.get(config["cfg"].token_env) or None, seed=os.getpid())


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only reaches this machine: every address it resolves to is loopback."""
    name = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    if not name:
        return False  # "": every interface
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]).is_loopback for i in infos)


def check_exposure(host: str, token: str | None, token_env: str, allow_anonymous: bool) -> None:
    """Refuse to listen off loopback without a token, unless anonymous access was asked for.

    Raises:
        ConfigError: ``host`` is not loopback, no token is set and not ``allow_anonymous``.
    """
    if token or allow_anonymous or is_loopback(host):
        return
    from cvops.errors import ConfigError

    raise ConfigError(f"refusing to serve on {host!r} without a bearer token: it is not a loopback address, so "
                      f"anyone who can reach this machine could use the model. Set a token in ${token_env} "
                      "(serve.token_env), or bind serve.host=127.0.0.1, or set serve.allow_anonymous=true to "
                      "accept anonymous requests")


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask: a container's cpuset, ``taskset``), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def plan_cores(lanes: int, workers: int) -> tuple[int, int]:
    """``(lanes, intra-op threads)`` of each worker: the usable cores are split evenly between the
    ``workers``, then between ``lanes`` (``serve.lanes``, checked by :func:`cvops.serve.limits.check`; 0: one
    lane per core of the worker)."""
    per_worker = max(1, usable_cores() // max(1, workers))
    lanes = int(lanes) if lanes else per_worker
    return lanes, max(1, per_worker // lanes)


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def serve(model_path: str | Path | None, cfg: ServeConfig, *, info: dict | None = None,
          log_dir: str | Path | None = None, drift: Callable[[list[dict]], dict[str, float]] | None = None,
          workers: int = 1, drift_window: int = MonitorConfig.drift_window,
          drift_every: int = MonitorConfig.drift_every, engine_path: str | Path | None = None,
          source: Any = None) -> None:
    """Serve an exported model over HTTP until interrupted (uvicorn, log level info, no reload).

    Args:
        model_path: the exported ``model.onnx``.
        cfg: the ``serve`` config (:class:`cvops.schema.ServeConfig`): host, port, ``token_env`` (the
            environment variable holding the bearer token; unset or empty: no authentication),
            ``allow_anonymous``, limits, batching, request log.
        info: reported by ``/v1/model`` (recipe, dataset version, ``fingerprint``, ...).
        log_dir: the request log directory (None: ``cfg.log_dir``; both None: no request log).
        drift: the drift check (see :func:`cvops.serve.app.create_app`); with
            several workers it must be picklable (a module-level function).
        workers: uvicorn worker processes.
        engine_path: a TensorRT engine to serve instead of the ONNX model.
        source: follow ``cfg.alias`` among the store's exports (see :func:`build_app`).

    Raises:
        ConfigError: a ``serve`` value no server can run with (:func:`cvops.serve.limits.check`), or a
            non-loopback ``host`` without a token and not ``allow_anonymous``.
    """
    import uvicorn

    from cvops.serve.limits import check

    check(cfg, workers)
    host, port, token_env = cfg.host, cfg.port, cfg.token_env
    log_dir = log_dir if log_dir is not None else cfg.log_dir
    token = os.environ.get(token_env) or None
    check_exposure(host, token, token_env, cfg.allow_anonymous)
    url = f"http://{_display_host(host)}:{port}"
    auth = f"-H \"Authorization: Bearer ${token_env}\" " if token else ""
    config: dict[str, Any] = dict(model_path=None if model_path is None else str(model_path), cfg=cfg, info=info,
                                  log_dir=None if log_dir is None else str(log_dir), drift=drift,
                                  drift_window=drift_window, drift_every=drift_every,
                                  engine_path=None if engine_path is None else str(engine_path), source=source)
    lanes, threads = plan_cores(cfg.lanes, workers)
    config["cfg"] = cfg = dataclasses.replace(cfg, lanes=lanes)
    if source is not None:
        config["source"] = dataclasses.replace(source, threads=threads)
    if workers > 1:
        # a file, not the variable itself: the reference profile easily exceeds Linux's 128 KiB per variable
        import tempfile

        fd, cfg_path = tempfile.mkstemp(prefix="cvops-serve-", suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            pickle.dump({**config, "threads": threads}, f)
        os.environ[CONFIG_ENV] = cfg_path
        target: Any = "cvops.serve.server:app_from_env"
    else:
        target = build_app(**config, threads=threads, token=token)
    following = f"following alias {cfg.alias}, " if source is not None and cfg.alias else ""
    lanes_text = (f" x {lanes} lanes of {threads} thread{'s' if threads > 1 else ''}" if lanes > 1
                  else f", {threads} thread{'s' if threads > 1 else ''}")
    print(f"cvops serve: {url} ({following}{workers} worker{'s' if workers > 1 else ''}"
          f"{lanes_text} on the CPU (a TensorRT or GPU model: one lane), "
          f"{'bearer token from $' + token_env if token else 'no auth'}) | "
          f"curl {auth}-F image=@photo.jpg {url}/v1/predict | "
          f"curl {auth}-H 'Content-Type: image/jpeg' --data-binary @photo.jpg {url}/v1/predict | "
          f"curl {auth}{url}/metrics", flush=True)
    from cvops.serve.protocol import HEAD_TIMEOUT_ENV, BoundedHttpToolsProtocol

    os.environ[HEAD_TIMEOUT_ENV] = str(float(cfg.header_timeout_s))  # the workers inherit it

    # access_log off: every request is in the request log and /metrics already
    http = dict(log_level="info", reload=False, access_log=False, http=BoundedHttpToolsProtocol)
    if workers > 1:
        uvicorn.run(target, host=host, port=port, workers=workers, factory=True, **http)
    else:
        uvicorn.run(target, host=host, port=port, **http)
