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


def recent_view(window: np.ndarray, n: int) -> np.ndarray:
    """The newest ``n`` samples of ``window`` centred in silence of the window's length (``n`` 0 or the
    window's length: the window itself). ESC-50 clips are mostly short sounds padded with digital silence;
    shown this way, a sound that has only just begun fills the middle of what the model sees, as in
    training, instead of the last second of a 5 s window."""
    if n <= 0 or n >= len(window):
        return window
    return center_fit(window[None, -n:], len(window))[0]
