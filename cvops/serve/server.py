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
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
from pathlib import Path
from typing import Any, Callable

CONFIG_ENV = "CVOPS_SERVE_CONFIG"


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
              engine_path: str | Path | None = None, max_batch: int = 8, batch_wait_ms: float = 2.0) -> Any:
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

    Returns:
        The FastAPI application, warmed up with one inference.
    """
    import numpy as np

    from cvops.export.runtime import OnnxDetector
    from cvops.serve.app import create_app
    from cvops.serve.requestlog import RequestLog

    if engine_path:  # TensorRT where an engine runs (built by export=tensorrt_*; rebuilt if from another machine)
        from cvops.export.tensorrt import EngineDetector

        detector: Any = EngineDetector(Path(engine_path), Path(model_path))
    else:
        detector = OnnxDetector(model_path, threads=threads)
    pre = detector.preprocess
    detector.predict([np.zeros((pre.height, pre.width, 3), np.uint8)] * (detector.fixed_batch or 1))  # fail early
    info = dict(info or {})
    if not info.get("fingerprint"):
        info["fingerprint"] = model_fingerprint(model_path)
    info.setdefault("model_path", str(model_path))
    log = RequestLog(log_dir, sample_rate=sample_rate, seed=seed) if log_dir else None
    return create_app(detector, info=info, log=log, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                      token=token or None, drift=drift, window=drift_window, drift_every=drift_every,
                      max_batch=max_batch, batch_wait_ms=batch_wait_ms)


def app_from_env() -> Any:
    """The application of one uvicorn worker process, from :data:`CONFIG_ENV` (set by :func:`serve`)."""
    with open(os.environ[CONFIG_ENV], "rb") as f:  # written by serve() in the parent process (mode 0600)
        config = pickle.load(f)
    token_env = config.pop("token_env")
    return build_app(**config, token=os.environ.get(token_env) or None, seed=os.getpid())


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def serve(model_path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, info: dict | None = None,
          log_dir: str | Path | None = None, sample_rate: float = 0.1, max_upload_mb: float = 20,
          max_pixels: int = 40_000_000, token_env: str = "CVOPS_SERVE_TOKEN",
          drift: Callable[[list[dict]], dict[str, float]] | None = None, workers: int = 1,
          drift_window: int = 200, drift_every: int = 50, engine_path: str | Path | None = None,
          max_batch: int = 8, batch_wait_ms: float = 2.0) -> None:
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
    """
    import uvicorn

    token = os.environ.get(token_env) or None
    url = f"http://{_display_host(host)}:{port}"
    auth = f"-H \"Authorization: Bearer ${token_env}\" " if token else ""
    config: dict[str, Any] = dict(model_path=str(model_path), info=info,
                                  log_dir=None if log_dir is None else str(log_dir), sample_rate=sample_rate,
                                  max_upload_mb=max_upload_mb, max_pixels=max_pixels, drift=drift,
                                  drift_window=drift_window, drift_every=drift_every,
                                  engine_path=None if engine_path is None else str(engine_path),
                                  max_batch=max_batch, batch_wait_ms=batch_wait_ms)
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
