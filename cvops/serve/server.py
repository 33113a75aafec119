"""Run the serving application with uvicorn.

::

    from cvops.serve.server import serve
    serve("outputs/.../model.onnx", host="0.0.0.0", port=8000, info={"fingerprint": "..."},
          log_dir="serve_logs", sample_rate=0.1, max_upload_mb=20, max_pixels=40_000_000,
          token_env="CVOPS_SERVE_TOKEN")

The bearer token is never a parameter: it is read from the environment variable
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

import hashlib
import ipaddress
import os
import pickle
import socket
from pathlib import Path
from typing import Any, Callable

from cvops.schema import ServeConfig

CONFIG_ENV = "CVOPS_SERVE_CONFIG"
#: What :func:`serve` hands to :func:`build_app` (and through it to create_app / RequestLog) unchanged.
LIMITS = ("max_aspect_ratio", "decode_memory_mb", "decode_wait_s", "body_timeout_s", "log_max_mb", "log_max_days")


def model_fingerprint(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a model file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def build_app(model_path: str | Path, *, info: dict | None = None, log_dir: str | Path | None = None,
              sample_rate: float = 0.1, max_upload_mb: float = 20, max_pixels: int = 40_000_000,
              token: str | None = None, drift: Callable[[list[dict]], dict[str, float]] | None = None,
              threads: int | None = None, seed: int = 0, drift_window: int = 200, drift_every: int = 50,
              engine_path: str | Path | None = None, max_batch: int = 8, batch_wait_ms: float = 2.0,
              max_aspect_ratio: float = ServeConfig.max_aspect_ratio,
              decode_memory_mb: float = ServeConfig.decode_memory_mb, decode_wait_s: float = ServeConfig.decode_wait_s,
              body_timeout_s: float = ServeConfig.body_timeout_s, log_max_mb: float = ServeConfig.log_max_mb,
              log_max_days: float = ServeConfig.log_max_days) -> Any:
    """Load the model, open the request log and build the application.

    Args:
        model_path: the exported ``model.onnx``.
        info: reported by ``/v1/model``; ``fingerprint`` defaults to the model
            file's hash (:func:`model_fingerprint`).
        log_dir: the request log directory (None: no request log).
        sample_rate: share of request images kept in the log.
        max_upload_mb: the largest request body accepted, in MiB.
        max_pixels: the largest image (width x height) accepted.
        token: the bearer token (None or empty: no authentication).
        drift: the drift check (see :func:`cvops.serve.app.create_app`).
        threads: ONNX Runtime intra-op threads (None: its default).
        seed: seeds the image sampling.
        max_aspect_ratio, decode_memory_mb, decode_wait_s, body_timeout_s: the request limits of
            :func:`cvops.serve.app.create_app` (``serve.*``; defaults from :class:`cvops.schema.ServeConfig`).
        log_max_mb, log_max_days: the request log's retention (:class:`cvops.requestlog.RequestLog`).

    Returns:
        The FastAPI application, warmed up with one inference.
    """
    import numpy as np

    from cvops.detector.runtime import OnnxDetector
    from cvops.serve.app import create_app
    from cvops.requestlog import RequestLog

    if engine_path:  # TensorRT where an engine runs (built by export=tensorrt_*; rebuilt if from another machine)
        from cvops.detector.tensorrt import EngineDetector

        detector: Any = EngineDetector(Path(engine_path), Path(model_path))
    else:
        detector = OnnxDetector(model_path, threads=threads)
    pre = detector.preprocess
    detector.predict([np.zeros((pre.height, pre.width, 3), np.uint8)] * (detector.fixed_batch or 1))  # fail early
    info = dict(info or {})
    if not info.get("fingerprint"):
        info["fingerprint"] = model_fingerprint(model_path)
    info.setdefault("model_file", Path(model_path).name)  # a name, never a path: /v1/model is public to clients
    log = (RequestLog(log_dir, sample_rate=sample_rate, seed=seed, max_total_mb=log_max_mb, max_days=log_max_days)
           if log_dir else None)
    return create_app(detector, info=info, log=log, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                      token=token or None, drift=drift, window=drift_window, drift_every=drift_every,
                      max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_aspect_ratio=max_aspect_ratio,
                      decode_memory_mb=decode_memory_mb, decode_wait_s=decode_wait_s, body_timeout_s=body_timeout_s)


def app_from_env() -> Any:
    """The application of one uvicorn worker process, from :data:`CONFIG_ENV` (set by :func:`serve`)."""
    with open(os.environ[CONFIG_ENV], "rb") as f:  # written by serve() in the parent process (mode 0600)
        config = pickle.load(f)
    token_env = config.pop("token_env")
    return build_app(**config, token=os.environ.get(token_env) or None, seed=os.getpid())


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
    from cvops.config import ConfigError

    raise ConfigError(f"refusing to serve on {host!r} without a bearer token: it is not a loopback address, so "
                      f"anyone who can reach this machine could use the model. Set a token in ${token_env} "
                      "(serve.token_env), or bind serve.host=127.0.0.1, or set serve.allow_anonymous=true to "
                      "accept anonymous requests")


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def serve(model_path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, info: dict | None = None,
          log_dir: str | Path | None = None, sample_rate: float = 0.1, max_upload_mb: float = 20,
          max_pixels: int = 40_000_000, token_env: str = "CVOPS_SERVE_TOKEN",
          drift: Callable[[list[dict]], dict[str, float]] | None = None, workers: int = 1,
          drift_window: int = 200, drift_every: int = 50, engine_path: str | Path | None = None,
          max_batch: int = 8, batch_wait_ms: float = 2.0, allow_anonymous: bool = ServeConfig.allow_anonymous,
          **limits: float) -> None:
    """Serve an exported model over HTTP until interrupted (uvicorn, log level info, no reload).

    Args:
        model_path: the exported ``model.onnx``.
        host: the interface to listen on (``0.0.0.0``: all).
        port: the TCP port.
        info: reported by ``/v1/model`` (recipe, dataset version, ``fingerprint``, ...).
        log_dir: the request log directory (None: no request log).
        sample_rate: share of request images kept in the log.
        max_upload_mb: the largest request body accepted, in MiB.
        max_pixels: the largest image (width x height) accepted.
        token_env: the environment variable holding the bearer token; unset or
            empty means no authentication.
        drift: the drift check (see :func:`cvops.serve.app.create_app`); with
            several workers it must be picklable (a module-level function).
        workers: uvicorn worker processes.
        allow_anonymous: allow a non-loopback ``host`` without a token (else :func:`check_exposure` refuses).
        limits: any of :data:`LIMITS`, passed to :func:`build_app` (defaults: :class:`cvops.schema.ServeConfig`).

    Raises:
        ConfigError: a non-loopback ``host`` without a token and not ``allow_anonymous``.
        TypeError: an unknown keyword in ``limits``.
    """
    import uvicorn

    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise TypeError(f"serve() got unknown limits {unknown}; known: {list(LIMITS)}")
    token = os.environ.get(token_env) or None
    check_exposure(host, token, token_env, allow_anonymous)
    url = f"http://{_display_host(host)}:{port}"
    auth = f"-H \"Authorization: Bearer ${token_env}\" " if token else ""
    config: dict[str, Any] = dict(model_path=str(model_path), info=info,
                                  log_dir=None if log_dir is None else str(log_dir), sample_rate=sample_rate,
                                  max_upload_mb=max_upload_mb, max_pixels=max_pixels, drift=drift,
                                  drift_window=drift_window, drift_every=drift_every,
                                  engine_path=None if engine_path is None else str(engine_path),
                                  max_batch=max_batch, batch_wait_ms=batch_wait_ms, **limits)
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        # a file, not the variable itself: the reference profile easily exceeds Linux's 128 KiB per variable
        import tempfile

        fd, cfg_path = tempfile.mkstemp(prefix="cvops-serve-", suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            pickle.dump({**config, "threads": threads, "token_env": token_env}, f)
        os.environ[CONFIG_ENV] = cfg_path
        target: Any = "cvops.serve.server:app_from_env"
    else:
        target = build_app(**config, token=token)
    print(f"cvops serve: {url} ({workers} worker{'s' if workers > 1 else ''}, "
          f"{'bearer token from $' + token_env if token else 'no auth'}) | "
          f"curl {auth}-F image=@photo.jpg {url}/v1/predict | "
          f"curl {auth}-H 'Content-Type: image/jpeg' --data-binary @photo.jpg {url}/v1/predict | "
          f"curl {auth}{url}/metrics", flush=True)
    if workers > 1:
        uvicorn.run(target, host=host, port=port, log_level="info", reload=False, workers=workers, factory=True,
                    access_log=False)  # every request is in the request log and /metrics already
    else:
        uvicorn.run(target, host=host, port=port, log_level="info", reload=False, access_log=False)
