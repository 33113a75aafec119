"""The live drift gauges ``cvops serve`` shows on ``/metrics``: the monitor's tests over the server's
sliding window of request records, against the model's reference profile."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from cvops.drift.profile import Seen, profile_of, record_from_log
from cvops.drift.stats import compare


class DriftGauges:
    """The live checks the server runs over a sliding window of request records (picklable): the drift tests
    against the model's reference profile and, with the export's precision calibration, the expected
    precision of the served detections (``precision/<class>``, ``precision/all``; ``reference/<class>``: the
    same on the validation split)."""

    def __init__(self, reference: Any, p_value: float, psi_threshold: float, permutations: int, low: float,
                 calibration: Optional[Dict[str, Any]] = None) -> None:
        self.reference, self.p_value, self.psi_threshold = reference, p_value, psi_threshold
        self.permutations, self.low = permutations, low
        self.calibration = calibration

    def __call__(self, records: List[dict]) -> Dict[str, float]:
        out: Dict[str, float] = {}
        if self.calibration is not None:
            out.update(precision_gauges(self.calibration, records))
        seen = [Seen(r.get("id", "?"), record_from_log(r, self.low)[0]) for r in records if "width" in r]
        if len(seen) < 20:  # too few to say anything
            return out
        rep = compare(self.reference, profile_of(seen), p_value=self.p_value, psi_threshold=self.psi_threshold,
                      permutations=self.permutations)
        out["drift_detected"] = float(rep.drift_detected)
        out.update({f.name: float(f.drifted) for f in rep.features if f.test != "skipped"})
        return out


def precision_gauges(calibration: Dict[str, Any], records: List[dict]) -> Dict[str, float]:
    """``precision/<class>`` (expected precision of the window's detections) and ``reference/<class>``."""
    from cvops.detector.calibration import Calibration

    cal = Calibration(calibration)
    est = cal.estimate(d for r in records for d in r.get("detections") or [] if isinstance(d, dict))
    out = {f"precision/{k}": v["precision"] for k, v in est.items()}
    out.update({f"reference/{k}": float(v) for k, v in cal.reference.items() if v is not None})
    return out
