"""The serve stage's own check of its config: every ``serve`` value a server cannot run with, refused at once.

:func:`check` is the one place these rules live. ``cvops serve`` and the
``serve`` stage (:func:`cvops.serve.stage.serve_export`),
:func:`cvops.serve.server.serve` and :func:`cvops.serve.app.create_app` all
call it before anything loads, and a preflight can run it on the composed
recipe before any stage starts. The defaults themselves live in
:class:`cvops.schema.ServeConfig`. It imports nothing heavy (no Hydra, no
FastAPI), so checking costs nothing.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from cvops.errors import ConfigError


def check(cfg: Any, workers: int = 1) -> None:
    """Refuse ``serve`` values no server can run with, naming the key, the value and the fix.

    Args:
        cfg: the ``serve`` config (:class:`cvops.schema.ServeConfig`, or the recipe's ``serve`` node).
        workers: the server processes asked for (``cvops serve --workers N``).

    Raises:
        ConfigError: the first bad value.
    """
    why = _problem(cfg, workers)
    if why is not None:
        raise ConfigError(why)


def _problem(cfg: Any, workers: int) -> Optional[str]:
    """What is wrong with ``cfg`` (the first problem), or None."""
    # `not x > 0` rather than `x <= 0`: a NaN passes every comparison and must be refused too
    if workers < 1:
        return f"--workers {workers}: the number of server processes, 1 or more"
    if not 0 <= cfg.port <= 65535:
        return f"serve.port={cfg.port}: a TCP port, 0..65535 (0: any free port)"
    if cfg.lanes < 0:
        return f"serve.lanes={cfg.lanes}: inference lanes per worker, 1 or more (0: one per core)"
    if not 0.0 <= float(getattr(cfg, "shadow_rate", 0.0)) <= 1.0:
        return f"serve.shadow_rate={cfg.shadow_rate}: the share of requests shadowed, 0..1 (default 0.1)"
    shadow = getattr(cfg, "shadow_alias", None)
    if shadow and shadow == getattr(cfg, "alias", None):
        return f"serve.shadow_alias={shadow}: the shadow must be another alias than serve.alias (e.g. staging)"
    if not 1 <= int(getattr(cfg, "max_sources", 1)) <= 10000:
        return (f"serve.max_sources={cfg.max_sources}: the sources (X-Cvops-Source) with series of their own, "
                "1..10000 (later ones count as 'other'; default 32)")
    if cfg.max_batch < 1:
        return f"serve.max_batch={cfg.max_batch}: images per inference call, 1 or more (1: no batching)"
    if not cfg.batch_wait_ms >= 0:
        return f"serve.batch_wait_ms={cfg.batch_wait_ms}: how long a batch waits for company, 0 or more ms"
    if not cfg.header_timeout_s > 0:
        return (f"serve.header_timeout_s={cfg.header_timeout_s}: seconds a request's headers may take, "
                "more than 0 (default 20)")
    if not cfg.body_timeout_s > 0:
        return (f"serve.body_timeout_s={cfg.body_timeout_s}: seconds a request's body may take, more than 0 "
                "(default 30)")
    if not (cfg.max_upload_mb > 0 and math.isfinite(cfg.max_upload_mb)):
        return f"serve.max_upload_mb={cfg.max_upload_mb}: the largest request body in MB, more than 0"
    if not cfg.max_pixels > 0:
        return f"serve.max_pixels={cfg.max_pixels}: the most pixels (width x height) of an image, more than 0"
    if not cfg.max_aspect_ratio >= 1:
        return (f"serve.max_aspect_ratio={cfg.max_aspect_ratio}: the longest side over the shortest an image may "
                "have, 1 or more")
    if not (cfg.decode_memory_mb > 0 and math.isfinite(cfg.decode_memory_mb)):
        return (f"serve.decode_memory_mb={cfg.decode_memory_mb}: the memory of the image decodes in flight, in "
                "MiB, more than 0")
    if not cfg.decode_wait_s >= 0:
        return f"serve.decode_wait_s={cfg.decode_wait_s}: how long a decode waits for memory, 0 or more seconds"
    if not (cfg.upload_memory_mb > 0 and math.isfinite(cfg.upload_memory_mb)):
        return (f"serve.upload_memory_mb={cfg.upload_memory_mb}: the memory of the request bodies in flight, in "
                "MiB, more than 0")
    if cfg.upload_memory_mb < cfg.max_upload_mb:
        return (f"serve.upload_memory_mb={cfg.upload_memory_mb:g} is below serve.max_upload_mb="
                f"{cfg.max_upload_mb:g}: one upload of the largest size must fit; raise "
                "serve.upload_memory_mb or lower serve.max_upload_mb")
    if not 0 <= cfg.sample_rate <= 1:
        return f"serve.sample_rate={cfg.sample_rate}: the fraction of request images kept, 0..1"
    if not cfg.log_max_mb > 0:
        return f"serve.log_max_mb={cfg.log_max_mb}: the request log's size limit in MiB, more than 0"
    if not cfg.log_max_days >= 0:
        return f"serve.log_max_days={cfg.log_max_days}: the request log's age limit in days, 0 or more (0: none)"
    if not cfg.alias_poll_s > 0:
        return f"serve.alias_poll_s={cfg.alias_poll_s}: seconds between two reads of serve.alias, more than 0"
    return None


def check_stage(config: Any) -> None:
    """:func:`check` of a stage's typed view (``Stage.check``): the values every server of the recipe needs."""
    check(config.serve)
