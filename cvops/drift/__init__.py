"""Drift statistics shared by serve (live gauges) and monitor (the batch report).

- :mod:`cvops.drift.stats`: per-image features, two-sample tests (KS, PSI, chi-square, MMD), profiles,
  the drift report.
- :mod:`cvops.drift.profile`: a model's reference profile on held-out data, windows from the request log.
- :mod:`cvops.drift.gauges`: the live gauges ``cvops serve`` exports on ``/metrics``.
"""
