"""Prometheus rules from the recipe's ``monitor.alerts`` (``cvops alerts recipe=X``).

One rule group per project, ``cvops-<project>``: recording rules that put the project and model on the
server's per-source series (joined from ``cvops_model_info{project, model}``, which the server sets for
the model it serves), and alerts on them, each labelled ``project``, ``model``, ``source`` and
``severity`` and annotated with what to run. Prometheus evaluates them and Alertmanager routes them;
``promtool check rules`` accepts the output (a test checks every shipped recipe).

The alerts (``monitor.alerts.<name>``, each ``enabled``, ``threshold``, ``duration``, ``severity``):

============== ====================================================================================
drift          the server's live drift check of a source found drift (``cvops_drift_detected``)
error_rate     failed share of a source's prediction requests above ``threshold`` over ``window``
latency_p95_ms 95th percentile latency of a source above ``threshold`` ms over ``window``
no_traffic     a source that sent requests sent none for ``duration``; also: no server of the
               project reports at all for ``duration``
precision_drop the estimated precision of a source (``cvops_estimated_precision``, class ``all``)
               is ``threshold`` below the validation split's (``cvops_reference_precision``)
class_mix      the mix of classes answered to a source drifted (the chi-square test of the window)
============== ====================================================================================
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence

#: a Prometheus duration: one or more number-unit pairs, largest unit first (30s, 5m, 1h30m)
DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
SEVERITY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
ALERTS = ("drift", "error_rate", "latency_p95_ms", "no_traffic", "precision_drop", "class_mix")


def problems(alerts: Any) -> List[str]:
    """What is wrong with a ``monitor.alerts`` block, each naming the key and the fix (empty: nothing)."""
    out: List[str] = []
    key = "monitor.alerts"

    def duration(name: str, value: Any) -> None:
        text = str(value)
        if not text or not DURATION.match(text) or not re.search(r"\d", text):
            out.append(f"{key}.{name}={value!r}: a Prometheus duration, a whole number and a unit (ms, s, m, h, d, w, "
                       "y), e.g. 30s, 5m or 1h30m; never negative")

    duration("window", alerts.window)
    if str(alerts.window) in ("0s", "0m", "0ms"):
        out.append(f"{key}.window={alerts.window}: the range of the rates, more than 0 (e.g. 5m)")
    for name in ALERTS:
        rule = getattr(alerts, name)
        duration(f"{name}.duration", rule.duration)
        if not SEVERITY.match(str(rule.severity)):
            out.append(f"{key}.{name}.severity={rule.severity!r}: a word (warning, critical, page, ...)")
        t = rule.threshold
        if name in ("error_rate", "precision_drop"):
            if t is None or not 0.0 < float(t) <= 1.0:
                out.append(f"{key}.{name}.threshold={t}: a share, more than 0 and at most 1")
        elif name == "latency_p95_ms":
            if t is None or not 0.0 < float(t) < 1e7:
                out.append(f"{key}.{name}.threshold={t}: milliseconds, more than 0")
        elif t is not None:
            out.append(f"{key}.{name}.threshold={t}: this alert has no threshold (it fires on the server's own "
                       "verdict); leave it null")
    return out


def _name(project: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", project)


def rules(cfg: Any, command: Sequence[str]) -> Dict[str, Any]:
    """The Prometheus rule file (as a dict) of the recipe ``cfg``; ``command`` is the recipe's overrides, for
    the commands the annotations name."""
    project = str(cfg.project)
    a = cfg.monitor.alerts
    w = str(a.window)
    sel = f'project="{project}"'
    info = f'on(instance, job) group_left(project, model) cvops_model_info{{{sel}}}'
    line = " ".join(command)
    rec = {
        "requests": f"cvops:requests:rate{w}",
        "errors": f"cvops:errors:ratio{w}",
        "p95": f"cvops:latency_seconds:p95_{w}",
        "drift": "cvops:drift_detected",
        "precision": "cvops:estimated_precision",
        "precision_ref": "cvops:reference_precision",
        "class_mix": "cvops:class_mix_drifted",
    }
    out: List[Dict[str, Any]] = [
        {"record": rec["requests"],
         "expr": f"sum by (project, model, source, status) (rate(cvops_requests_total[{w}]) * {info})"},
        {"record": rec["errors"],
         "expr": f'sum by (project, model, source) ({rec["requests"]}{{{sel}, status!="200"}}) / '
                 f'sum by (project, model, source) ({rec["requests"]}{{{sel}}})'},
        {"record": rec["p95"],
         "expr": f"histogram_quantile(0.95, sum by (le, project, model, source) "
                 f"(rate(cvops_request_latency_seconds_bucket[{w}]) * {info}))"},
        {"record": rec["drift"], "expr": f"max by (project, model, source) (cvops_drift_detected * {info})"},
        {"record": rec["precision"],
         "expr": f"min by (project, model, source, class) (cvops_estimated_precision * {info})"},
        {"record": rec["precision_ref"],
         "expr": f"max by (project, model, class) (cvops_reference_precision * {info})"},
        {"record": rec["class_mix"],
         "expr": f'max by (project, model, source) (cvops_drift_feature{{feature="classes"}} * {info})'},
    ]
    look = f"cvops {line} stages=[monitor] monitor.source=null   # the drift report of the served traffic"
    fix = [look, f"cvops annotate {line}   # review its edge cases", f"cvops loop {line}   # retrain, judge, promote"]
    alerts: List[Dict[str, Any]] = []

    def alert(name: str, key: str, expr: str, summary: str, what: List[str]) -> None:
        rule = getattr(a, key)
        if not rule.enabled:
            return
        ann = {"summary": summary, "description": f"monitor.alerts.{key} of {project} (recipe: {line})",
               "runbook": " | ".join(what)}
        if a.runbook_url:
            ann["runbook_url"] = str(a.runbook_url)
        alerts.append({"alert": name, "expr": expr, "for": str(rule.duration),
                       "labels": {"severity": str(rule.severity), "project": project, "cvops_alert": key},
                       "annotations": ann})

    alert("CvopsDrift", "drift", f'{rec["drift"]}{{{sel}}} == 1',
          "Drift on source {{ $labels.source }} of {{ $labels.project }} (model {{ $labels.model }})", fix)
    t = a.error_rate.threshold
    alert("CvopsErrorRate", "error_rate", f'{rec["errors"]}{{{sel}}} > {t}',
          f"More than {t:.0%} of the requests of source {{{{ $labels.source }}}} fail "
          "({{ $value | humanizePercentage }})",
          ["cvops_errors_total{reason} on /metrics says which refusal", "the server log has each 500's error id"])
    t = a.latency_p95_ms.threshold
    alert("CvopsLatencyP95", "latency_p95_ms", f'{rec["p95"]}{{{sel}}} > {float(t) / 1000:g}',
          f"p95 latency of source {{{{ $labels.source }}}} above {t:g} ms ({{{{ $value | humanizeDuration }}}})",
          [f"cvops serve {line} --workers N, serve.lanes, serve.max_batch", "benchmarks/serve_load.py"])
    d = str(a.no_traffic.duration)
    alert("CvopsNoTraffic", "no_traffic",
          f"sum by (project, source) (increase(cvops_requests_total[{d}]) * {info}) == 0",
          "No requests from source {{ $labels.source }} of {{ $labels.project }} for " + d,
          ["is the camera or client up and reaching the server?"])
    alert("CvopsNoServer", "no_traffic", f"absent(cvops_model_info{{{sel}}})",
          f"No cvops server of {project} reports to Prometheus", [f"cvops serve {line}", "check the scrape target"])
    t = a.precision_drop.threshold
    alert("CvopsPrecisionDrop", "precision_drop",
          f'{rec["precision_ref"]}{{{sel}, class="all"}} - ignoring(source) group_right '
          f'{rec["precision"]}{{{sel}, class="all"}} > {t}',
          "Estimated precision on source {{ $labels.source }} fell {{ $value | humanize }} below the "
          "validation split's", fix)
    alert("CvopsClassMix", "class_mix", f'{rec["class_mix"]}{{{sel}}} == 1',
          "The classes answered to source {{ $labels.source }} of {{ $labels.project }} drifted", fix)
    return {"groups": [{"name": f"cvops-{_name(project)}", "rules": [*out, *alerts]}]}
