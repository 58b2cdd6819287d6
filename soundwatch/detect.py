"""Scores -> detection events that do not flicker: one ``start`` and one ``end`` per sound.

Per label: the score is smoothed over the last ``smooth_windows`` windows; an event becomes
a candidate when the smoothed score reaches the label's threshold (per-class thresholds
from a calibration file, else the default) in a window loud enough (``min_level_dbfs``),
is reported (``start``) once it has lasted ``min_duration_s``, and ends when the smoothed
score falls under ``threshold * release_ratio`` (hysteresis) or the audio goes quiet.
The ``end`` event carries the peak score and the duration. A model's ``background`` class
(``soundwatch adapt``: "none of the others") is scored like any class but never starts an event.

Level and time (optional, off when their settings are 0):
- **Noise-floor gate** (``floor_gate_db``): the room's background level is tracked as a low
  percentile of the recent hop levels (``floor_window_s``); a window may start an event only
  when its level stands ``floor_gate_db`` over it, so the room's own faint noise (which the
  per-window normalised log-mel makes look like loud rain) starts nothing.
- **Fast onset** (``instant_threshold``): a window whose own (unsmoothed) score reaches it
  reports the event at once, without waiting out smoothing and ``min_duration_s``.
- **Onset estimate**: from the frame levels of the newest ``ONSET_LOOKBACK_S`` seconds, an event's
  ``start`` is the first loud frame of the newest sound, followed back across pauses shorter than
  ``onset_pause_s`` (a dog's barks, a clock's ticks are one sound); without such a pause in the
  lookback (a loud background throughout), or with ``onset_pause_s`` 0, the time the level last rose
  within the window; else the window's end.

Speech (optional, when the window's speech share is given, see soundwatch/vad.py): while speech
dominates (share >= ``speech_hold_ratio``), labels that speech is confused with
(``speech_confusable``) are held back: they open no new event and a candidate of theirs not yet
reported is not reported (it may still be once speech no longer dominates). Events already
reported run their course; other labels are not affected.

Music (optional, with the model's music context, see soundwatch/music.py): while music plays, a
label starts an event only at a score of at least ``music_threshold`` (its own threshold where that
is higher); with ``music_confusable`` naming labels, only those labels; with ``music_novelty``, a label
whose score is that many times its geometric mean over the music context still starts (a sound new to
the music, not one the music keeps making). Music is named sounds to a closed-set model, and a user's music is seldom music the
thresholds were calibrated on.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundwatch.errors import ConfigError
from soundwatch.labels import BACKGROUND_LABEL

log = logging.getLogger(__name__)


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
    return thresholds_from(_read_json(path), path, classes, default)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"thresholds file {path}: cannot read it ({exc.strerror or exc})") from exc
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ConfigError(f"thresholds file {path}: not valid JSON ({exc})") from exc


def thresholds_from(data, path: Path, classes: list[str], default: float) -> np.ndarray:
    """Per-class thresholds from the parsed content ``data`` of thresholds file ``path`` (see load_thresholds)."""
    table = data.get("thresholds", data) if isinstance(data, dict) else data
    if not isinstance(table, dict):
        raise ConfigError(
            f"thresholds file {path}: expected a JSON object of label: threshold "
            f'(or {{"thresholds": {{...}}}}), got {_json_kind(table)}'
        )
    unknown = sorted(set(table) - set(classes))
    if unknown:
        raise ConfigError(f"thresholds file {path}: labels the model does not know: {', '.join(unknown[:5])}")
    for label, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"thresholds file {path}: {label}: expected a number in (0, 1], got {_json_kind(value)} {value!r}"
            )
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ConfigError(f"thresholds file {path}: {label}: thresholds must be in (0, 1], got {value!r}")
    return np.array([float(table.get(c, default)) for c in classes])


def speech_confusable(d, classes: list[str]) -> tuple[str, ...]:
    """The labels held back while speech dominates: none without the VAD; the default list is kept to the
    model's own labels (a model of other classes), a list the user gave must name only labels it knows."""
    from soundwatch.config import SPEECH_CONFUSABLE

    if not d.vad:
        return ()
    if tuple(d.speech_confusable) == SPEECH_CONFUSABLE:
        return tuple(c for c in SPEECH_CONFUSABLE if c in classes)
    return tuple(d.speech_confusable)


def detector_from_settings(
    d, classes: list[str], threshold: float | np.ndarray, hop_s: float, music=None
) -> "Detector":
    """The Detector that ``[detect]`` settings ``d`` describe, with ``threshold`` (one or per label) and
    ``music``, the model's music context (``soundwatch.music.resolve_music``; None: none)."""
    return Detector(
        classes,
        threshold,
        d.release_ratio,
        d.smooth_windows,
        d.min_duration_s,
        d.min_level_dbfs,
        d.floor_gate_db,
        max(1, round(d.floor_window_s / hop_s)),
        d.instant_threshold,
        speech_confusable(d, classes),
        d.speech_hold_ratio,
        d.onset_pause_s,
        music,
        getattr(d, "music_threshold", 0.0),
        tuple(getattr(d, "music_confusable", ())),
        getattr(d, "music_novelty", 0.0),
        tuple(getattr(d, "labels", ())),
    )


def sidecar_thresholds(checkpoint: Path) -> Path:
    """Where a model's own calibrated thresholds live: ``<checkpoint stem>.thresholds.json`` beside it."""
    return Path(checkpoint).with_name(Path(checkpoint).stem + ".thresholds.json")


def resolve_thresholds(setting: str, checkpoint: Path, classes: list[str], default: float) -> float | np.ndarray:
    """The thresholds ``[detect] thresholds_file`` asks for: ``auto`` = the model's own calibrated file
    when there is one made for these exact weights (else ``default``), ``""``/``none`` = ``default``
    for every label, anything else = that file."""
    if setting in ("", "none"):
        return default
    if setting != "auto":
        return load_thresholds(Path(setting), classes, default)
    path = sidecar_thresholds(checkpoint)
    if not path.is_file():
        return default
    data = _own_calibration(checkpoint)
    try:
        fits = data is not None and set(data.get("thresholds", {})) <= set(classes)
    except TypeError:  # a "thresholds" that is not a table: not a file this model made
        fits = False
    if not fits:
        log.warning(
            "%s was not calibrated for %s as it is now; using threshold %s for every label", path, checkpoint, default
        )
        return default
    return thresholds_from(data, path, classes, default)


def _own_calibration(checkpoint: Path) -> dict | None:
    """The model's own thresholds file (``<stem>.thresholds.json``) when it was made for these exact weights."""
    path = sidecar_thresholds(checkpoint)
    if not path.is_file():
        return None
    from soundwatch.models.card import file_sha256

    try:
        data = _read_json(path)
        return data if data.get("checkpoint_sha256") == file_sha256(checkpoint) else None
    except (ConfigError, AttributeError):
        return None


def _calibrated_with(data: dict | None) -> dict[str, float]:
    """The view, hop, music threshold and music novelty a thresholds file records (files from before
    they were recorded: none)."""
    out: dict[str, float] = {}
    try:
        for key in ("view_s", "music_threshold", "music_novelty"):
            if data and key in data.get("detect", {}):
                out[key] = float(data["detect"][key])
        if data and "hop_s" in data:
            out["hop_s"] = float(data["hop_s"])
    except (AttributeError, TypeError, ValueError):
        return {}
    return out


def _view_from(d, own: dict | None) -> float:
    return float(d.view_s) if d.view_s != "auto" else _calibrated_with(own).get("view_s", 0.0)


def _settings_calibration(settings) -> dict | None:
    """The own calibration of the model ``settings`` run (``[listen] model``, or the shipped one)."""
    from soundwatch.models.card import resolve_model

    return _own_calibration(resolve_model(Path(settings.listen.model) if settings.listen.model else None))


def resolved_detect(settings) -> dict:
    """``[detect]`` as the daemon runs it, for reports: ``view_s`` in seconds (``auto`` resolved against the
    model's own calibration)."""
    d = settings.detect
    return {
        **{k: getattr(d, k) for k in d.__dataclass_fields__},
        "view_s": _view_from(d, _settings_calibration(settings)),
    }


def calibration_view_note(settings) -> str:
    """One line for ``calibrate thresholds``: the view and hop the thresholds will hold for, and where
    ``view_s = "auto"`` took the view from (a model without its own calibration gets the whole window)."""
    d = settings.detect
    own = _settings_calibration(settings)
    view = _view_from(d, own)
    if d.view_s != "auto":
        source = "[detect] view_s"
    elif own is not None:
        source = "view_s auto: the model's own thresholds file"
    else:
        source = "view_s auto: the model has no calibrated view yet"
    what = "the whole window" if view == 0 else f"the newest {view:g} s"
    return (
        f"calibrating for view_s {view:g} ({what}; {source}) and hop_s {settings.listen.hop_s:g}; "
        "set [detect] view_s and [listen] hop_s in --config to calibrate for others"
    )


def resolve_view(d, checkpoint: Path, hop_s: float) -> float:
    """``[detect] view_s`` in seconds: a number as given; ``auto`` = the view the model's own calibration
    (its thresholds file) records, else 0 (the whole window). Warns when the thresholds in use were
    calibrated with another view or hop than the daemon runs with: their false-alarm rate no longer holds."""
    own = _own_calibration(checkpoint)
    view = _view_from(d, own)
    if d.thresholds_file == "auto":
        in_use, path = own, sidecar_thresholds(checkpoint)
    elif d.thresholds_file in ("", "none"):
        in_use, path = None, None
    else:
        path = Path(d.thresholds_file)
        try:
            in_use = _read_json(path)
        except ConfigError:
            in_use = None  # resolve_thresholds reports an unreadable file
    made = _calibrated_with(in_use)
    ours = {
        "view_s": view,
        "hop_s": hop_s,
        "music_threshold": float(getattr(d, "music_threshold", 0.0)),
        "music_novelty": float(getattr(d, "music_novelty", 0.0)),
    }
    if any(abs(v - ours[k]) > 1e-9 for k, v in made.items()):
        log.warning(
            "%s was calibrated with %s; running with %s: its false-alarm rate may not hold "
            "(recalibrate: soundwatch calibrate thresholds --scenes DIR)",
            path,
            ", ".join(f"{k} {v:g}" for k, v in made.items()),
            ", ".join(f"{k} {ours[k]:g}" for k in made),
        )
    held = _calibrated_labels(in_use, "music_confusable")
    if held is not None and ours["music_threshold"] > 0 and held != set(getattr(d, "music_confusable", ())):
        log.warning(
            "%s was calibrated with music_confusable %s; running with %s: its false-alarm rate over music "
            "may not hold (recalibrate: soundwatch calibrate thresholds --scenes DIR)",
            path,
            sorted(held) or "[] (every label)",
            sorted(getattr(d, "music_confusable", ())) or "[] (every label)",
        )
    if isinstance(in_use, dict):
        made_for = _calibrated_labels(in_use, "labels") or set()  # files from before the watch list: every label
        running = set(getattr(d, "labels", ()))
        if made_for and not (running and running <= made_for):
            log.warning(
                "%s was calibrated watching only %s; running with %s: the labels it did not watch kept thresholds "
                "no false alarm was counted for (recalibrate: soundwatch calibrate thresholds --scenes DIR)",
                path,
                sorted(made_for),
                sorted(running) or "[] (every label)",
            )
        elif running and running != made_for:
            log.info(
                "%s was calibrated for %s; calibrating with [detect] labels %s would spend the false-alarm "
                "budget on them alone (soundwatch calibrate thresholds --scenes DIR)",
                path,
                sorted(made_for) or "every label",
                sorted(running),
            )
    if isinstance(in_use, dict) and "music_context_sha256" in in_use:
        from soundwatch.music import music_context_file, music_context_sha256

        made_with, running = in_use["music_context_sha256"], music_context_sha256(d, checkpoint)
        if made_with != running and running is not None:
            log.warning(
                "%s was calibrated with %s; running with the music context %s: its false-alarm rate over music "
                "may not hold (recalibrate: soundwatch calibrate thresholds --scenes DIR or --room DIR)",
                path,
                f"another music context (sha256 {str(made_with)[:12]})" if made_with else "no music context",
                music_context_file(d, checkpoint),
            )
    return view


def _calibrated_labels(data: dict | None, key: str) -> set[str] | None:
    """A label list a thresholds file records in its ``detect`` settings (``music_confusable``: the labels
    held back over music; ``labels``: the watch list); None where it does not say (files from before it)."""
    try:
        listed = data["detect"][key]
    except (KeyError, TypeError):
        return None
    return {str(label) for label in listed} if isinstance(listed, (list, tuple)) else None


ONSET_RANGE_DB = 30.0  # a sound's frames: within this of the window's loudest frame ...
ONSET_GATE_DB = 6.0  # ... and this far over the noise floor; quieter than the latter is a pause
ONSET_PAUSE_S = 2.0  # default [detect] onset_pause_s: shorter pauses do not split a sound (docs/results.md)
ONSET_LOOKBACK_S = 7.0  # how far back an onset is looked for


class NoiseFloor:
    """The room's running background level: a low percentile of the recent hop levels (dBFS)."""

    def __init__(self, window: int, percentile: float = 10.0):
        self.levels: deque[float] = deque(maxlen=max(1, window))
        self.percentile = percentile
        self._level: float | None = None  # the percentile of ``levels`` as they stand (None: not yet computed)

    def update(self, hop_level_dbfs: float) -> None:
        self.levels.append(hop_level_dbfs)
        self._level = None

    @property
    def level(self) -> float | None:
        """Computed once per update (the detector asks several times a window; offline scoring of long
        recordings spent a third of its time in np.percentile)."""
        if self._level is None and self.levels:
            self._level = float(np.percentile(self.levels, self.percentile))
        return self._level


def onset_offset_s(
    frame_levels: np.ndarray,
    frame_s: float,
    loud_dbfs: float,
    quiet_dbfs: float | None = None,
    pause_frames: int = 1,
) -> float | None:
    """Seconds before the end of ``frame_levels`` at which its newest sound began.

    The newest loud frame (at or over ``loud_dbfs``) is followed back across pauses shorter than
    ``pause_frames`` frames under ``quiet_dbfs`` (default ``loud_dbfs``; frames in between neither
    end the sound nor count towards a pause) to the first loud frame after a pause of that length.
    None when no frame is loud, or when no such pause precedes the sound (loud from the first frame)."""
    levels = np.asarray(frame_levels)
    loud = levels >= loud_dbfs
    if not loud.any():
        return None
    quiet = levels < (loud_dbfs if quiet_dbfs is None else min(quiet_dbfs, loud_dbfs))
    start = int(np.flatnonzero(loud).max())
    run = 0
    for i in range(start - 1, -1, -1):
        if loud[i]:
            start, run = i, 0
        elif quiet[i]:
            run += 1
            if run >= pause_frames:
                return (len(levels) - start) * frame_s
        else:
            run = 0
    return None


def _label_mask(classes: list[str], labels, setting: str) -> np.ndarray:
    """Which of ``classes`` the ``[detect] setting`` names (``labels``); a label the model does not know is
    a ConfigError."""
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        import difflib

        def said(label: str) -> str:
            near = difflib.get_close_matches(str(label).lower().replace(" ", "_"), classes, n=1, cutoff=0.6)
            return f"{label} (did you mean {near[0]}?)" if near else str(label)

        raise ConfigError(
            f"detect.{setting}: labels the model does not know: {', '.join(map(said, unknown[:5]))}"
            f"{' ...' if len(unknown) > 5 else ''}"
        )
    mask = np.zeros(len(classes), bool)
    mask[[classes.index(c) for c in labels]] = True
    return mask


def watch_mask(classes: list[str], labels) -> np.ndarray:
    """Which of ``classes`` a watch list (``[detect] labels``) names; a label the model does not know, or
    ``background`` (what the model says when none of its sounds is there: never an event), is a ConfigError."""
    if BACKGROUND_LABEL in labels:
        raise ConfigError(
            f"detect.labels: {BACKGROUND_LABEL!r} never starts an event (the model says it when none of its sounds "
            "is there): name the sounds to watch, or [] for every label"
        )
    return _label_mask(classes, labels, "labels")


class Detector:
    def __init__(
        self,
        classes: list[str],
        threshold: float | np.ndarray,
        release_ratio: float = 0.7,
        smooth_windows: int = 3,
        min_duration_s: float = 0.0,
        min_level_dbfs: float = -70.0,
        floor_gate_db: float = 0.0,
        floor_window: int = 30,
        instant_threshold: float = 0.0,
        speech_confusable: tuple[str, ...] | list[str] = (),
        speech_hold_ratio: float = 0.3,
        onset_pause_s: float = ONSET_PAUSE_S,
        music=None,
        music_threshold: float = 0.0,
        music_confusable: tuple[str, ...] | list[str] = (),
        music_novelty: float = 0.0,
        labels: tuple[str, ...] | list[str] = (),
    ):
        self.classes = classes
        self.thresholds = np.array(np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(classes),)))
        self.thresholds[[i for i, c in enumerate(classes) if c == BACKGROUND_LABEL]] = np.inf  # never an event
        if labels:  # a watch list: the other labels never start an event
            self.thresholds[~watch_mask(classes, labels)] = np.inf
        self.releases = self.thresholds * release_ratio
        self.min_duration_s = min_duration_s
        self.min_level_dbfs = min_level_dbfs
        self.floor_gate_db = floor_gate_db
        self.floor = NoiseFloor(floor_window)
        self.instant = np.maximum(self.thresholds, instant_threshold) if instant_threshold > 0 else None
        self.history: deque[np.ndarray] = deque(maxlen=max(1, smooth_windows))
        self.open: dict[int, _Event] = {}
        self.gated = 0  # windows whose level did not clear the noise-floor gate
        self.confusable = _label_mask(classes, speech_confusable, "speech_confusable")
        self.speech_hold_ratio = speech_hold_ratio
        self.held = 0  # starts of speech-confusable labels held back while speech dominated
        self.onset_pause_s = onset_pause_s
        from soundwatch.music import MusicContext

        self.music = MusicContext(music) if music is not None and music_threshold > 0 else None
        self.music_threshold = music_threshold
        # the labels music_threshold applies to while music plays (none named: every label)
        self.music_confusable = (
            _label_mask(classes, music_confusable, "music_confusable")
            if music_confusable
            else np.ones(len(classes), bool)
        )
        # while music plays, a label under music_threshold may still start when its score is this many times its
        # geometric mean over the music context (a sound new to the music); 0: off
        self.music_novelty = music_novelty
        self.music_held = 0  # starts held back because music played and the score stayed under music_threshold
        self._music_heard = False  # hear_music was called for the window update is about to take
        self._levels: np.ndarray | None = None  # frame levels of the newest ONSET_LOOKBACK_S seconds ...
        self._levels_end = 0  # ... ending at this frame (t / frame_s)

    def gate_dbfs(self) -> float | None:
        """The level a window must reach to start an event (None: no noise-floor gate yet)."""
        if self.floor_gate_db <= 0 or self.floor.level is None:
            return None
        return self.floor.level + self.floor_gate_db

    def _join_levels(self, frame_levels: np.ndarray, frame_s: float, t_end: float) -> None:
        """Keep the newest ONSET_LOOKBACK_S seconds of frame levels: this window's joined to those before it."""
        end = int(round(t_end / frame_s))
        n, keep = len(frame_levels), max(len(frame_levels), int(round(ONSET_LOOKBACK_S / frame_s)))
        old = self._levels
        if old is None or end < self._levels_end or end - n > self._levels_end:
            joined = frame_levels  # the first window, or audio lost or restarted between windows
        else:  # the frames before this window's first, then this window's
            joined = np.concatenate([old[: max(0, len(old) - (self._levels_end - (end - n)))], frame_levels])
        self._levels, self._levels_end = joined[-keep:], end

    def _estimate_start(self, frame_levels: np.ndarray, frame_s: float, t_end: float, floor: float | None) -> float:
        """Where the newest sound began (see the module's docstring), from this window's frame levels and
        the joined ones (only when an event opens: most windows open none)."""
        loud = frame_levels.max() - ONSET_RANGE_DB
        quiet = None
        if floor is not None:
            quiet = floor + max(self.floor_gate_db, ONSET_GATE_DB)
            loud = max(loud, quiet)
        onset = None
        if self.onset_pause_s > 0:
            pause = max(1, int(round(self.onset_pause_s / frame_s)))
            onset = onset_offset_s(self._levels, frame_s, loud, quiet, pause)
        if onset is None:  # loud throughout the lookback: the last rise within the window
            onset = onset_offset_s(frame_levels, frame_s, loud)
        return t_end if onset is None else t_end - onset

    def _end(self, idx: int, event: _Event, score: float | None, t_end: float) -> dict:
        return {
            "event": "end",
            "label": self.classes[idx],
            "score": score,
            "peak_score": round(event.peak, 5),
            "start": event.start,
            "end": t_end,
            "duration_s": round(t_end - event.start, 3),
        }

    def update(
        self,
        probs: np.ndarray,
        level_dbfs: float,
        t_end: float,
        hop_level_dbfs: float | None = None,
        frame_levels: np.ndarray | None = None,
        frame_s: float = 0.0,
        speech: float | None = None,
    ) -> list[dict]:
        """Feed one window's class probabilities (ending at ``t_end``); returns the events it causes.

        ``hop_level_dbfs`` (the newest hop's level) feeds the noise floor; ``frame_levels`` (dBFS of
        consecutive ``frame_s`` frames of the window) give the onset estimate; ``speech`` (the share
        of the window that is speech, None: unknown) holds back the speech-confusable labels. With a music
        context, the window is heard by it (unless ``hear_music`` already was, for this window), and while
        music plays a label needs ``music_threshold`` to start."""
        hold = self.confusable if speech is not None and speech >= self.speech_hold_ratio else None
        if self.music is not None and not self._music_heard:
            self.hear_music(probs, level_dbfs)
        self._music_heard = False
        music_hold = self.music_confusable if self.music is not None and self.music.playing else None
        usual = self.music.usual() if music_hold is not None and self.music_novelty > 0 else None
        loud = level_dbfs >= self.min_level_dbfs
        gate = self.gate_dbfs()
        floor = self.floor.level  # before this window joins it
        # With the gate on, a stream's first window (no floor yet) starts nothing: its sound rises out of
        # the digital silence before the stream, an onset that is no event (a start-up alert otherwise).
        floor_known = self.floor_gate_db <= 0 or floor is not None
        may_start = loud and floor_known and (gate is None or level_dbfs >= gate)
        if loud and not may_start:
            self.gated += 1
        self.floor.update(level_dbfs if hop_level_dbfs is None else hop_level_dbfs)
        self.history.append(probs if loud else np.zeros_like(probs))
        smooth = np.mean(self.history, axis=0)
        levels = None
        if frame_levels is not None and frame_s > 0:
            levels = np.asarray(frame_levels, dtype=np.float64)
            self._join_levels(levels, frame_s, t_end)
        start_t = None  # estimated when the first new event of this window opens
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
            if not ev.reported and hold is not None and hold[idx]:
                self.held += 1
                continue
            if not ev.reported and self._music_holds(music_hold, usual, idx, score, score):
                self.music_held += 1
                continue
            if not ev.reported and t_end - ev.start >= self.min_duration_s:
                ev.reported = True
                events.append(
                    {"event": "start", "label": self.classes[idx], "score": round(score, 5), "start": ev.start}
                )
        if may_start:
            instant = set() if self.instant is None else {int(i) for i in np.flatnonzero(probs >= self.instant)}
            for idx in sorted(instant | {int(i) for i in np.flatnonzero(smooth >= self.thresholds)}):
                if idx in self.open:
                    continue
                if hold is not None and hold[idx]:
                    self.held += 1
                    continue
                if self._music_holds(
                    music_hold, usual, idx, max(smooth[idx], probs[idx] if idx in instant else 0.0), smooth[idx]
                ):
                    self.music_held += 1
                    continue
                score = float(max(smooth[idx], probs[idx])) if idx in instant else float(smooth[idx])
                if start_t is None:
                    start_t = t_end if levels is None else self._estimate_start(levels, frame_s, t_end, floor)
                ev = self.open[idx] = _Event(start_t, score)
                if self.min_duration_s <= 0 or idx in instant:
                    ev.reported = True
                    events.append(
                        {"event": "start", "label": self.classes[idx], "score": round(score, 5), "start": start_t}
                    )
        return events

    def _music_holds(self, music_hold, usual, idx: int, score: float, smoothed: float) -> bool:
        """While music plays (``music_hold``: the labels it holds back), whether label ``idx`` waits: its
        ``score`` is under ``music_threshold`` and its ``smoothed`` score is not ``music_novelty`` times what
        the music keeps making (``usual``; None: novelty off)."""
        return (
            music_hold is not None
            and bool(music_hold[idx])
            and score < self.music_threshold
            and not (usual is not None and smoothed >= self.music_novelty * usual[idx])
        )

    def hear_music(self, probs: np.ndarray, level_dbfs: float) -> float | None:
        """Let the music context hear this window before ``update`` takes it (the daemon publishes the
        result on ``scores`` first): the probability that music plays, None without a context or
        while it holds too few windows. A window under ``min_level_dbfs`` (silence) empties it."""
        if self.music is None:
            return None
        self._music_heard = True
        return self.music.update(probs, silent=level_dbfs < self.min_level_dbfs)

    def close_all(self, t_end: float) -> list[dict]:
        """End every reported event (at shutdown or when audio is lost), so each start has its end."""
        events = [self._end(i, ev, None, t_end) for i, ev in self.open.items() if ev.reported]
        self.open.clear()
        self.history.clear()
        self._levels = None
        if self.music is not None:  # the music heard before a loss of audio says nothing of what comes after
            self.music.reset()
        return events
