"""``create_app`` arguments from the flat keywords serve tests use."""

from __future__ import annotations

from typing import Any

from cvops.schema import ServeConfig


def app_args(info: dict, **kwargs: Any) -> dict:
    """``serve.*`` keys go into a :class:`ServeConfig` (``max_batch`` 1 unless given: one request, one
    inference, as most tests expect); ``window`` is the drift window; the rest pass through."""
    fields = set(ServeConfig.__dataclass_fields__)
    cfg = ServeConfig(**{"max_batch": 1, **{k: kwargs.pop(k) for k in list(kwargs) if k in fields}})
    if "window" in kwargs:
        kwargs["drift_window"] = kwargs.pop("window")
    return {"cfg": cfg, "info": info, "log": None, **kwargs}
