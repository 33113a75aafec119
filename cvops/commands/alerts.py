"""``cvops alerts recipe=X [--out FILE]``: the Prometheus alerting and recording rules of the served model.

::

    cvops alerts recipe=quickstart --out /etc/prometheus/rules/cvops-quickstart.yml
    promtool check rules /etc/prometheus/rules/cvops-quickstart.yml

The rules come from the recipe's ``monitor.alerts`` (:mod:`cvops.monitor.alerts`); Prometheus scrapes
``cvops serve``'s ``/metrics``, evaluates them and sends what fires to Alertmanager (docs/alerts.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

from cvops.commands._prologue import guarded, parse_args


def main(argv: List[str]) -> int:
    """``cvops alerts``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="cvops alerts", description="Prometheus alerting and recording rules of the "
                                 "recipe's served model (monitor.alerts).")
    ap.add_argument("--out", type=Path, default=None, help="write the rule file here (default: print it)")
    args, overrides = parse_args(ap, argv)

    def work() -> int:
        import yaml

        from cvops.monitor.alerts import rules
        from cvops.session import compose_job

        from cvops.monitor.checks import check as check_monitor
        from cvops.serve.limits import check as check_serve

        cfg = compose_job(overrides)
        check_monitor(cfg.monitor)  # whatever the recipe's stages: these rules are about its served model
        check_serve(cfg.serve)
        command = [o for o in overrides if not o.startswith(("monitor.alerts.", "stages="))]
        text = yaml.safe_dump(rules(cfg, command), sort_keys=False, width=200, allow_unicode=True)
        if args.out is None:
            print(text, end="")
            return 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        n = text.count("- alert: ")
        print(f"cvops alerts: {n} alerts and their recording rules for {cfg.project} -> {args.out}; check them with "
              f"promtool check rules {args.out}, and add the file to rule_files in prometheus.yml (docs/alerts.md)")
        return 0

    return guarded(work)
