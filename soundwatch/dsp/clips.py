"""Fitting whole clips to a model's window (numpy only: scoring, calibration and training share it)."""

from __future__ import annotations

import numpy as np


def center_fit(waves: np.ndarray, n: int) -> np.ndarray:
    """Centre-crop or centre-pad (zeros) every row of ``waves`` to ``n`` samples."""
    length = waves.shape[1]
    if length == n:
        return waves
    if length > n:
        start = (length - n) // 2
        return waves[:, start : start + n]
    left = (n - length) // 2
    return np.pad(waves, ((0, 0), (left, n - length - left)))
