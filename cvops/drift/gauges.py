"""The live drift gauges ``cvops serve`` shows on ``/metrics``: the monitor's tests over the server's
sliding window of request records, against the model's reference profile."""

from __future__ import annotations

from typing import Any, Dict, List

from cvops.drift.profile import Seen, profile_of, record_from_log
from cvops.drift.stats import compare


class DriftGauges:
    """The live drift check the server runs over its sliding window of request records (picklable)."""

    def __init__(self, reference: Any, p_value: float, psi_threshold: float, permutations: int, low: float) -> None:
        self.reference, self.p_value, self.psi_threshold = reference, p_value, psi_threshold
        self.permutations, self.low = permutations, low

    def __call__(self, records: List[dict]) -> Dict[str, float]:
        seen = [Seen(r.get("id", "?"), record_from_log(r, self.low)[0]) for r in records if "width" in r]
        if len(seen) < 20:  # too few to say anything
            return {}
        rep = compare(self.reference, profile_of(seen), p_value=self.p_value, psi_threshold=self.psi_threshold,
                      permutations=self.permutations)
        out: Dict[str, float] = {"drift_detected": float(rep.drift_detected)}
        out.update({f.name: float(f.drifted) for f in rep.features if f.test != "skipped"})
        return out
