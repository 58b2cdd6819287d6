"""The live loop: source ring -> windows -> engine -> detector -> publisher (+ event log, clips, metrics).

Runs in the main thread while audio arrives on its own thread (PortAudio's callback or
the file reader). Each turn it moves new audio into the model-rate ring, classifies every
window that is due (batched when it fell behind; in live capture, windows beyond
``max_batch`` are dropped and counted, so latency stays bounded), publishes ``scores`` and
``detection.<label>`` messages, and a ``status`` heartbeat every interval.

A live source that stops delivering audio (stream error, device unplugged, sound server
restarted) puts the daemon in the ``no_audio`` state, published at once on ``status``; it
reopens the device by name with exponential back-off and is ``running`` again once the
reopened stream delivers audio (one outage, one ``no_audio`` spell, however many tries).
Audio from before the outage is never stitched to new audio: the windows start afresh.

With a voice-activity detector (``vad``, soundwatch/vad.py), every ``scores`` message carries
``speech``: the share (0..1) of the window that is speech; the detector holds back the labels
speech is confused with while speech dominates, and a privacy-minded clip recorder is told where
the speech is, so that it writes no clip holding speech.

Windows whose scores are not finite (a damaged engine) are counted and skipped, never
published: every message is strict JSON.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from soundwatch.audio.windows import Windower
from soundwatch.detect import Detector
from soundwatch.engines.base import Engine, softmax
from soundwatch.errors import CheckpointError, UserError
from soundwatch.publish import Publisher

log = logging.getLogger(__name__)

def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS); -120 for silence."""
    rms = math.sqrt(float(np.dot(x, x)) / max(1, len(x)))
    return round(20 * math.log10(rms), 2) if rms > 1e-6 else -120.0


def frame_levels_dbfs(x: np.ndarray, frame: int) -> np.ndarray:
    """RMS level (dBFS, floor -120) of each consecutive ``frame`` samples of ``x``."""
    n = len(x) // frame
    power = np.mean(np.square(x[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)
    return 10 * np.log10(np.maximum(power, 1e-12))


@dataclass
class Counters:
    windows: int = 0
    dropped_windows: int = 0
    nonfinite_windows: int = 0
    events: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=100))
    infer_ms: deque = field(default_factory=lambda: deque(maxlen=100))
    vad_ms: deque = field(default_factory=lambda: deque(maxlen=100))


@dataclass
class Recovery:
    """Reopening a lost live device: when to try next and how long to wait after a failure."""

    timeout_s: float = 2.0
    backoff_max_s: float = 5.0
    backoff_s: float = 0.25
    next_try: float = 0.0
    lost_at: float = 0.0
    outages: int = 0
    reopened_at: float = 0.0  # when the device was last reopened (0: not waiting for a reopened stream)
    resume_from: int = 0  # source ring position from which the reopened stream's audio starts


class Daemon:
    def __init__(self, source, engine: Engine, publisher: Publisher, detector: Detector, *,
                 window_s: float, hop_s: float, max_batch: int, top_k: int, status_interval_s: float,
                 tap=None, event_log=None, clips=None, metrics=None, recovery: Recovery | None = None,
                 pre_roll_s: float = 0.0, vad=None, sinks=()):
        self.source = source
        self.engine = engine
        self.publisher = publisher
        self.detector = detector
        self.windower = Windower(source, engine.sample_rate, window_s, hop_s, tap=tap, keep_s=pre_roll_s)
        if self.windower.window != engine.window_samples:
            raise CheckpointError(
                f"window_s {window_s} gives {self.windower.window} samples but the model takes "
                f"{engine.window_samples} ({engine.card.window_s} s at {engine.sample_rate} Hz)"
            )
        self.max_batch = max_batch
        self.frame = max(1, engine.sample_rate // 20)  # 50 ms frames for the onset estimate
        self.top_k = top_k
        self.status_interval_s = status_interval_s
        self.event_log = event_log
        self.clips = clips(self.windower.ring, engine.sample_rate) if clips else None
        self.metrics = metrics
        self.vad = vad
        self.sinks = list(sinks)  # MQTT, webhooks (soundwatch/integrations): told of every window, event, status
        self.sink_errors = 0
        self.recovery = recovery or Recovery()
        self.counters = Counters()
        self.state = "starting"
        self.t0 = 0.0
        self.last = None  # newest scores payload, for the dashboard
        self.recent_events: deque = deque(maxlen=20)  # for the dashboard

    def _origin(self) -> float:
        return self.windower.origin if self.source.realtime and self.windower.origin else self.t0

    def _stream_time(self, position: int) -> float:
        """UNIX time of model sample ``position``: when it was captured (a file: as if played from the start)."""
        return self._origin() + position / self.windower.model_rate

    def _position(self, t: float) -> int:
        return int(round((t - self._origin()) * self.windower.model_rate))

    def status(self) -> dict:
        c = self.counters
        lat = sorted(c.latencies_ms)
        inf = sorted(c.infer_ms)
        hop_ms = 1000 * self.windower.hop / self.windower.model_rate
        return {
            "state": self.state, "uptime_s": round(time.time() - self.t0, 3), "windows": c.windows,
            "input_overflows": self.source.overflows, "lost_samples": self.windower.lost_samples,
            "dropped_windows": c.dropped_windows, "nonfinite_windows": c.nonfinite_windows,
            "send_failures": self.publisher.send_failures,
            "events": c.events, "audio_outages": self.recovery.outages,
            **({"clips_written": self.clips.stats.written, "clips_failed": self.clips.stats.failed}
               if self.clips is not None else {}),
            **({"clips_withheld": self.clips.stats.withheld} if self.clips is not None and self.clips.privacy else {}),
            **({"vad_ms": round(sorted(c.vad_ms)[len(c.vad_ms) // 2], 2) if c.vad_ms else None,
                "speech_held": self.detector.held} if self.vad is not None else {}),
            "latency_ms": round(lat[len(lat) // 2], 1) if lat else None,
            "latency_p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
            "infer_ms": round(inf[len(inf) // 2], 1) if inf else None,
            "rtf": round(inf[len(inf) // 2] / hop_ms, 4) if inf else None,
            "backend": self.engine.name, "precision": self.engine.precision, "compute": self.engine.device,
            "device": self.source.name, "capture_rate": self.source.rate, "model_rate": self.engine.sample_rate,
            **({sink.name: sink.stats() for sink in self.sinks} if self.sinks else {}),
            **({"sink_errors": self.sink_errors} if self.sinks else {}),
        }

    def _tell_sinks(self, method: str, payload: dict) -> None:
        """Hand ``payload`` to every sink; a sink's failure is logged and counted, never stops detection."""
        for sink in self.sinks:
            try:
                getattr(sink, method)(payload)
            except Exception:  # noqa: BLE001 - a sink must not take the daemon down
                self.sink_errors += 1
                if self.sink_errors <= 3:
                    log.exception("%s sink failed on %s (counted as sink_errors on status)", sink.name, method)

    def _publish_status(self) -> None:
        status = self.status()
        self.publisher.publish("status", status)
        self._tell_sinks("status", status)
        if self.metrics:
            self.metrics.observe_status(status)

    def _emit(self, event: dict) -> None:
        """Publish an event, with its clip path on ``end`` (or ``clip: null`` and why), and log it durably."""
        if self.clips is not None:
            if event["event"] == "start":
                self.clips.pump()  # a file read fast: finish the clips whose audio has arrived before a new one
                self.clips.begin(event["label"], self._position(event["start"]), event["start"])
            else:
                path, why = self.clips.end(event["label"], self._position(event["end"]))
                event["clip"] = str(path) if path is not None else None
                if why:
                    event["clip_error"] = why
        self.publisher.publish(f"detection.{event['label']}", event)
        self._tell_sinks("event", event)
        self.counters.events += 1
        self.recent_events.append(event)
        if self.event_log is not None:
            self.event_log.append({"ts": time.time(), "source": self.source.name, **event})
        if self.metrics:
            self.metrics.events.labels(event["label"], event["event"]).inc()

    def _process(self, ends: list[int]) -> None:
        windows, kept = [], []
        for end in ends:
            w = self.windower.take(end)
            if w is None:
                self.counters.dropped_windows += 1
            else:
                windows.append(w)
                kept.append(end)
        if not windows:
            return
        t = time.perf_counter()
        probs = softmax(self.engine.infer(np.stack(windows)))
        self.counters.infer_ms.append(1000 * (time.perf_counter() - t) / len(windows))
        classes = self.engine.classes
        for end, window, p in zip(kept, windows, probs):
            if not np.isfinite(p).all():
                self.counters.nonfinite_windows += 1
                if self.counters.nonfinite_windows == 1:
                    log.error("the engine returned non-finite scores (NaN or infinity); such windows are "
                              "skipped and counted as nonfinite_windows on status")
                continue
            level = rms_dbfs(window)
            top = np.argsort(p)[::-1][: self.top_k]
            t_end = self._stream_time(end)
            payload = {
                "top": [{"label": classes[i], "score": round(float(p[i]), 5)} for i in top],
                "level_dbfs": level, "hop_level_dbfs": rms_dbfs(window[-self.windower.hop:]),
                "window_start": round(self._stream_time(end - self.windower.window), 4),
                "window_end": round(t_end, 4), "offset_s": round(end / self.windower.model_rate, 4),
            }
            speech = self._speech(window, end) if self.vad is not None else None
            if speech is not None:
                payload["speech"] = round(speech, 3)
            self.publisher.publish("scores", payload)
            self._tell_sinks("scores", payload)
            self.last = payload
            self.counters.windows += 1
            for event in self.detector.update(p, level, t_end, payload["hop_level_dbfs"],
                                              frame_levels_dbfs(window, self.frame), self.frame / self.windower.model_rate,
                                              speech=speech):
                self._emit(event)
            latency = time.time() - self.windower.arrival_time(end)
            self.counters.latencies_ms.append(1000 * latency)
            if self.metrics:
                self.metrics.windows.inc()
                self.metrics.latency.observe(latency)

    def _speech(self, window: np.ndarray, end: int) -> float:
        """The window's speech share; with privacy, tell the clip recorder where the speech is."""
        from soundwatch.vad import VAD_RATE

        t = time.perf_counter()
        share = self.vad.update(window, end)
        self.counters.vad_ms.append(1000 * (time.perf_counter() - t))
        if self.clips is not None and self.clips.privacy:
            start = end - len(window)
            if self.vad.rate == VAD_RATE:  # positions of the speech chunks
                self.clips.speech(self.vad.speech_spans(start), self.vad.pos)
            else:  # one share per window: all of a window with speech counts as speech
                self.clips.speech([(start, end)] if share > 0 else [], end)
        return share

    def _watch_audio(self) -> None:
        """Live sources only: notice lost audio, then reopen the device with back-off until it delivers."""
        if not self.source.realtime or not hasattr(self.source, "reopen"):
            return
        now = time.time()
        rec = self.recovery
        if self.state == "running":
            last = max(self.source.ring.last_write_time, self.started_at)
            if self.source.active and now - last < rec.timeout_s:
                return
            self._lose_audio(now)
        if self.state != "no_audio":
            return
        if rec.reopened_at:
            if self.source.active and self.source.ring.written > rec.resume_from:
                self._resume()
                return
            if now - rec.reopened_at < rec.timeout_s:
                return
            rec.reopened_at = 0.0  # reopened, but no audio came: try again (still the same outage)
        if now >= rec.next_try:
            rec.resume_from = self.source.ring.written
            try:
                self.source.reopen()
            except UserError:
                rec.next_try = time.time() + rec.backoff_s
                rec.backoff_s = min(2 * rec.backoff_s, rec.backoff_max_s)
                return
            rec.reopened_at = time.time()
            rec.next_try = rec.reopened_at + rec.backoff_s
            rec.backoff_s = min(2 * rec.backoff_s, rec.backoff_max_s)

    def _lose_audio(self, now: float) -> None:
        rec = self.recovery
        self.state = "no_audio"
        rec.outages += 1
        rec.lost_at, rec.next_try, rec.backoff_s, rec.reopened_at = now, now, 0.25, 0.0
        self.windower.pump()
        for event in self.detector.close_all(self._stream_time(self.windower.ring.written)):
            self._emit(event)
        if self.clips is not None:
            self.clips.pump(final=True)
        self._publish_status()

    def _resume(self) -> None:
        """The reopened stream delivers: windows start afresh on its audio."""
        self.windower.restart(self.recovery.resume_from)
        if self.vad is not None:
            self.vad.reset()  # never carry the speech state across an outage
        self.recovery.reopened_at = 0.0
        self.started_at = time.time()
        self.state = "running"
        self._publish_status()

    def run(self, stop: threading.Event, duration: float | None = None, on_tick=None) -> dict:
        """Run until ``stop`` is set, ``duration`` seconds pass, or a file source is exhausted."""
        self.t0 = self.started_at = time.time()
        self.source.start()
        self.state = "running"
        next_status = time.monotonic()
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._watch_audio()
                if self.state == "no_audio":  # nothing to classify; new audio waits for the restart
                    ends = []
                    stop.wait(0.05)
                else:
                    self.windower.pump()
                    ends = self.windower.due()
                if self.source.realtime:  # live audio: drop the oldest rather than fall further behind
                    excess = len(ends) - self.max_batch
                    if excess > 0:
                        self.counters.dropped_windows += excess
                        ends = ends[excess:]
                for i in range(0, len(ends), self.max_batch):
                    self._process(ends[i:i + self.max_batch])
                if self.clips is not None:
                    self.clips.pump()
                if time.monotonic() >= next_status:
                    self._publish_status()
                    next_status += self.status_interval_s
                if on_tick is not None:
                    on_tick(self)
                if self.source.finished and self.windower.flushed and not ends:
                    break
                if not ends:
                    self.source.ring.wait_for(self.source.ring.written + 1, 0.05)
        finally:
            self.state = "stopped"
            self.source.stop()
            for event in self.detector.close_all(self._stream_time(self.windower.ring.written)):
                self._emit(event)
            if self.clips is not None:
                self.clips.pump(final=True)
            final = self.status()
            self._publish_status()
            self.windower.close()
        return final
