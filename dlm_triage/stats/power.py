"""Power analysis: runs per configuration cell for a two-sample t-test on log values (noncentral t)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _sps

from dlm_triage.stats.validate import _warn

@dataclass(frozen=True)
class PowerResult:
    """Runs per cell (per arm) for a two-sample t-test on log values to detect a given ratio."""

    n_per_cell: int | None
    ratio: float
    log_sd: float
    effect_size: float  # Cohen's d = ln(ratio) / log_sd
    alpha: float
    power: float
    achieved_power: float
    method: str
    flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def t_test_power(d: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test with n per arm at standardised effect d (noncentral t)."""
    df = 2 * n - 2
    nc = d * math.sqrt(n / 2.0)
    tc = _sps.t.ppf(1 - alpha / 2, df)
    return float(_sps.nct.sf(tc, df, nc) + _sps.nct.cdf(-tc, df, nc))


def runs_per_cell(log_sd: float, *, ratio: float = 2.0, alpha: float = 0.05, power: float = 0.8,
                  n_max: int = 100000) -> PowerResult:
    """Smallest n per arm such that a two-sided two-sample t-test on log max-grad detects `ratio` (a ratio of
    geometric means, = a ratio of medians under log-normality) with the given power; exact noncentral-t power.
    """
    method = ("two-sided two-sample t-test on ln(value), equal n and variance, noncentral t; "
              "d = ln(ratio) / pooled within-cell sd of ln(value)")
    flags: list[str] = []
    msgs: list[str] = []
    if not (ratio > 0 and ratio != 1):
        raise ValueError(f"`ratio` must be positive and != 1, got {ratio!r}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"`alpha` and `power` must be in (0, 1), got {alpha!r}, {power!r}")
    if not (math.isfinite(log_sd) and log_sd > 0):
        _warn(msgs, flags, "undefined_sd", f"log-scale sd must be finite and > 0, got {log_sd!r}: no power estimate")
        return PowerResult(None, ratio, float(log_sd), math.nan, alpha, power, math.nan, method, tuple(flags), tuple(msgs))
    d = abs(math.log(ratio)) / log_sd
    z = _sps.norm.ppf(1 - alpha / 2) + _sps.norm.ppf(power)
    n = max(2, int(math.floor(2 * (z / d) ** 2)))  # normal approximation, slightly low: step up from it
    while n > 2 and t_test_power(d, n - 1, alpha) >= power:
        n -= 1
    while t_test_power(d, n, alpha) < power:
        n += 1
        if n > n_max:
            _warn(msgs, flags, "n_too_large", f"more than {n_max} runs per cell needed")
            return PowerResult(None, ratio, float(log_sd), d, alpha, power, math.nan, method, tuple(flags), tuple(msgs))
    return PowerResult(n, ratio, float(log_sd), d, alpha, power, t_test_power(d, n, alpha), method,
                       tuple(flags), tuple(msgs))
