"""Scores -> detection events that do not flicker: one ``start`` and one ``end`` per sound.

Per label: the score is smoothed over the last ``smooth_windows`` windows; an event becomes
a candidate when the smoothed score reaches the label's threshold (per-class thresholds
from a calibration file, else the default) in a window loud enough (``min_level_dbfs``),
is reported (``start``) once it has lasted ``min_duration_s``, and ends when the smoothed
score falls under ``threshold * release_ratio`` (hysteresis) or the audio goes quiet.
The ``end`` event carries the peak score and the duration.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundwatch.errors import ConfigError


@dataclass
class _Event:
    start: float
    peak: float
    reported: bool = False


def _json_kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}.get(type(value), "a number")


def load_thresholds(path: Path, classes: list[str], default: float) -> np.ndarray:
    """Per-class thresholds from a ``calibration/thresholds.json``; labels it lacks keep ``default``.

    The file is a JSON object ``{"thresholds": {label: threshold}}`` (what ``soundwatch calibrate
    thresholds`` writes) or the bare ``{label: threshold}``; every threshold a finite number in (0, 1].
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"thresholds file {path}: cannot read it ({exc.strerror or exc})") from exc
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ConfigError(f"thresholds file {path}: not valid JSON ({exc})") from exc
    table = data.get("thresholds", data) if isinstance(data, dict) else data
    if not isinstance(table, dict):
        raise ConfigError(f"thresholds file {path}: expected a JSON object of label: threshold "
                          f"(or {{\"thresholds\": {{...}}}}), got {_json_kind(table)}")
    unknown = sorted(set(table) - set(classes))
    if unknown:
        raise ConfigError(f"thresholds file {path}: labels the model does not know: {', '.join(unknown[:5])}")
    for label, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"thresholds file {path}: {label}: expected a number in (0, 1], "
                              f"got {_json_kind(value)} {value!r}")
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ConfigError(f"thresholds file {path}: {label}: thresholds must be in (0, 1], got {value!r}")
    return np.array([float(table.get(c, default)) for c in classes])


class Detector:
    def __init__(self, classes: list[str], threshold: float | np.ndarray, release_ratio: float = 0.7,
                 smooth_windows: int = 3, min_duration_s: float = 0.0, min_level_dbfs: float = -70.0):
        self.classes = classes
        self.thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(classes),))
        self.releases = self.thresholds * release_ratio
        self.min_duration_s = min_duration_s
        self.min_level_dbfs = min_level_dbfs
        self.history: deque[np.ndarray] = deque(maxlen=max(1, smooth_windows))
        self.open: dict[int, _Event] = {}

    def _end(self, idx: int, event: _Event, score: float | None, t_end: float) -> dict:
        return {"event": "end", "label": self.classes[idx], "score": score, "peak_score": round(event.peak, 5),
                "start": event.start, "end": t_end, "duration_s": round(t_end - event.start, 3)}

    def update(self, probs: np.ndarray, level_dbfs: float, t_end: float) -> list[dict]:
        """Feed one window's class probabilities (ending at ``t_end``); returns the events it causes."""
        loud = level_dbfs >= self.min_level_dbfs
        self.history.append(probs if loud else np.zeros_like(probs))
        smooth = np.mean(self.history, axis=0)
        events = []
        for idx in list(self.open):
            ev = self.open[idx]
            score = float(smooth[idx])
            if score < self.releases[idx] or not loud:
                del self.open[idx]
                if ev.reported:
                    events.append(self._end(idx, ev, round(score, 5), t_end))
                continue
            ev.peak = max(ev.peak, score)
            if not ev.reported and t_end - ev.start >= self.min_duration_s:
                ev.reported = True
                events.append({"event": "start", "label": self.classes[idx], "score": round(score, 5),
                               "start": ev.start})
        if loud:
            for idx in np.flatnonzero(smooth >= self.thresholds):
                idx = int(idx)
                if idx not in self.open:
                    ev = self.open[idx] = _Event(t_end, float(smooth[idx]))
                    if self.min_duration_s <= 0:
                        ev.reported = True
                        events.append({"event": "start", "label": self.classes[idx],
                                       "score": round(float(smooth[idx]), 5), "start": t_end})
        return events

    def close_all(self, t_end: float) -> list[dict]:
        """End every reported event (at shutdown or when audio is lost), so each start has its end."""
        events = [self._end(i, ev, None, t_end) for i, ev in self.open.items() if ev.reported]
        self.open.clear()
        self.history.clear()
        return events
