"""Catastrophic forgetting: per-example measures (`measures`) and the retention suite they score (`suite`)."""
