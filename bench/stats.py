"""Small statistics helpers for benchmarks."""

from __future__ import annotations

import statistics


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values),
        "p50": statistics.median(values),
        "p95": pct(values, 95),
        "max": max(values),
    }


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"
