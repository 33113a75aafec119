"""Serving an exported detector over HTTP.

:mod:`cvops.serve.app` builds the FastAPI application (``/v1/predict``,
``/v1/model``, ``/healthz``, ``/metrics``), :mod:`cvops.requestlog` keeps
the append-only request log the monitor stage reads, and
:mod:`cvops.serve.server` runs the application with uvicorn.
"""
