"""Serving an exported detector over HTTP.

:mod:`cvops.serve.app` builds the FastAPI application (``/v1/predict``,
``/v1/model``, ``/healthz``, ``/readyz``, ``/metrics``) from one module per
concern: reading the request (:mod:`~cvops.serve.upload`), decoding it
(:mod:`~cvops.serve.decode`) within the memory bounds (:mod:`~cvops.serve.budget`),
the model being served (:mod:`~cvops.serve.slots`, :mod:`~cvops.serve.models`),
batching (:mod:`~cvops.serve.batching`), answering and recording
(:mod:`~cvops.serve.predict`), metrics and drift gauges
(:mod:`~cvops.serve.metrics`, :mod:`~cvops.serve.driftwatch`), the token
(:mod:`~cvops.serve.auth`) and the error answers (:mod:`~cvops.serve.errors`).
:func:`cvops.serve.limits.check` refuses bad ``serve`` values before anything
loads; :mod:`cvops.requestlog` keeps the append-only request log the monitor
stage reads, and :mod:`cvops.serve.server` runs the application with uvicorn.
"""
