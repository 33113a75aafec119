"""Production monitoring: per-image statistics and drift tests against a reference profile."""
