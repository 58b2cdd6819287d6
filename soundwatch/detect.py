"""Scores -> detection events: one ``start`` and one ``end`` per sound, with hysteresis.

A label's event starts when its score reaches ``threshold`` in a window loud enough
(``min_level_dbfs``), and ends when the score falls under ``release``; the end event
carries the peak score and the event's duration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _Open:
    start: float
    peak: float


class Detector:
    def __init__(self, classes: list[str], threshold: float, release: float, min_level_dbfs: float):
        self.classes = classes
        self.threshold = threshold
        self.release = release
        self.min_level_dbfs = min_level_dbfs
        self.open: dict[int, _Open] = {}

    def update(self, probs: np.ndarray, level_dbfs: float, t_end: float) -> list[dict]:
        """Feed one window's class probabilities; returns the events it causes."""
        events = []
        for idx in list(self.open):
            state = self.open[idx]
            if probs[idx] < self.release or level_dbfs < self.min_level_dbfs:
                del self.open[idx]
                events.append({"event": "end", "label": self.classes[idx], "score": float(probs[idx]),
                               "peak_score": state.peak, "start": state.start, "end": t_end,
                               "duration_s": round(t_end - state.start, 3)})
            else:
                state.peak = max(state.peak, float(probs[idx]))
        if level_dbfs >= self.min_level_dbfs:
            for idx in np.flatnonzero(probs >= self.threshold):
                if idx not in self.open:
                    self.open[int(idx)] = _Open(t_end, float(probs[idx]))
                    events.append({"event": "start", "label": self.classes[idx], "score": float(probs[idx]),
                                   "start": t_end})
        return events

    def close_all(self, t_end: float) -> list[dict]:
        """End every open event (at shutdown), so each start has its end."""
        events = [{"event": "end", "label": self.classes[i], "score": None, "peak_score": s.peak,
                   "start": s.start, "end": t_end, "duration_s": round(t_end - s.start, 3)}
                  for i, s in self.open.items()]
        self.open.clear()
        return events
