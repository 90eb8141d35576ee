"""Argument checks shared by every statistic (messages name the argument) and the degenerate-data warning."""

from __future__ import annotations

import warnings

import numpy as np

class DegenerateDataWarning(RuntimeWarning):
    """Too little or degenerate data: the result is flagged, not an error."""


def _warn(msgs: list[str], flags: list[str], flag: str, msg: str) -> None:
    flags.append(flag)
    msgs.append(msg)
    warnings.warn(msg, DegenerateDataWarning, stacklevel=3)


def _as_1d(x, name: str, *, dtype=float) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {a.shape}")
    return a


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def _check_level(confidence_level: float) -> float:
    if not 0.0 < float(confidence_level) < 1.0:
        raise ValueError(f"`confidence_level` must be in (0, 1), got {confidence_level!r}")
    return float(confidence_level)


def _check_resamples(n_resamples: int) -> int:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"`n_resamples` must be a positive integer, got {n_resamples!r}")
    return int(n_resamples)
