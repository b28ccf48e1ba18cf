"""Distribution drift between a baseline and a current sample of one numeric feature: PSI and the
two-sample Kolmogorov-Smirnov statistic (with its asymptotic p-value). Pure numpy, unit-tested.

Conventions (the usual ones in monitoring tools):
- PSI over ``bins`` bins cut at the baseline's quantiles (so each baseline bin holds ~1/bins of the
  mass), empty bins smoothed with ``eps``; PSI < 0.1 no change, 0.1-0.2 moderate, >= 0.2 significant.
- drifted when PSI >= psi_threshold, or when KS >= ks_threshold and its p-value < 0.01 (a large
  sample makes tiny KS differences significant, so the KS rule needs both effect size and evidence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import IndbRuntimeError

Values = Sequence[float | None] | np.ndarray | None


def _clean(values: Values, label: str) -> np.ndarray:
    a = np.asarray([v for v in (values if values is not None else []) if v is not None], dtype=float)
    a = a[np.isfinite(a)]
    if a.size < 2:
        raise IndbRuntimeError(
            "22000",
            f"the {label} sample has {a.size} non-null value(s); drift needs at least 2",
            hint="pick a baseline/current range or run that holds materialized values",
        )
    return a


def psi(baseline: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    qs = np.quantile(baseline, np.linspace(0, 1, bins + 1))
    edges = np.unique(qs[1:-1])  # inner cut points; ties collapse for discrete features
    b = np.bincount(np.searchsorted(edges, baseline, side="right"), minlength=edges.size + 1) / baseline.size
    c = np.bincount(np.searchsorted(edges, current, side="right"), minlength=edges.size + 1) / current.size
    b = np.clip(b, eps, None)
    c = np.clip(c, eps, None)
    return float(np.sum((c - b) * np.log(c / b)))


def ks(baseline: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic D and its asymptotic p-value."""
    a = np.sort(baseline)
    b = np.sort(current)
    allv = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, allv, side="right") / a.size
    cdf_b = np.searchsorted(b, allv, side="right") / b.size
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    n = a.size * b.size / (a.size + b.size)
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    # Kolmogorov distribution tail: 2 sum (-1)^(k-1) exp(-2 k^2 lam^2)
    if lam < 1e-3:
        p = 1.0
    else:
        p = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
        p = min(max(p, 0.0), 1.0)
    return d, p


def drift(
    baseline: Values, current: Values, psi_threshold: float = 0.2, ks_threshold: float = 0.1, bins: int = 10
) -> dict[str, Any]:
    a = _clean(baseline, "baseline")
    b = _clean(current, "current")
    p = psi(a, b, bins=bins)
    d, pval = ks(a, b)
    drifted = p >= psi_threshold or (d >= ks_threshold and pval < 0.01)
    return {
        "psi": round(p, 6),
        "ks": round(d, 6),
        "ks_pvalue": pval,
        "drift": bool(drifted),
        "baseline": {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std())},
        "current": {"n": int(b.size), "mean": float(b.mean()), "std": float(b.std())},
        "thresholds": {"psi": psi_threshold, "ks": ks_threshold, "ks_alpha": 0.01},
    }
