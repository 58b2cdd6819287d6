"""The live loop: sources -> windows -> one engine -> detectors -> publisher (+ event log, clips, metrics, sinks).

Each source is a ``Lane``: its ring, windower, detector, VAD state, clip recorder and recovery.
The loop runs in the main thread while audio arrives on the sources' own threads (PortAudio's
callback, a file reader, a stream decoder). Each turn it moves new audio into every lane's
model-rate ring, gathers the windows that are due across all lanes and classifies them together,
up to ``max_batch`` windows per engine call (N sources cost one call per hop, not N); in live
capture a lane's windows beyond ``max_batch`` are dropped, oldest first, and counted on that lane,
so latency stays bounded and capture never waits. It publishes ``scores.<source>`` and
``detection.<label>.<source>`` messages, and every interval a ``status.<source>`` per source and
a ``status`` with the totals.

A live source that stops delivering audio (stream error, device unplugged, sound server
restarted, network stream stalled) puts its lane in the ``no_audio`` state, published at once;
it is reopened (a device by name, a stream by URL) with exponential back-off, without touching
the other lanes, and is ``running`` again once it delivers audio (one outage, one ``no_audio``
spell, however many tries). Audio from before the outage is never stitched to new audio.

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

from soundwatch import __version__
from soundwatch.audio.sources import join_sources
from soundwatch.audio.windows import Windower
from soundwatch.detect import Detector
from soundwatch.dsp.clips import recent_view
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


def _percentile(values, q: float, digits: int | None = None) -> float | None:
    """The ``q`` quantile (nearest rank below) of ``values``, rounded to ``digits``; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    value = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return value if digits is None else round(value, digits)


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


class Lane:
    """One source and everything the daemon keeps for it."""

    def __init__(
        self,
        source,
        source_id: str,
        detector: Detector,
        *,
        model_rate: int,
        window_samples: int,
        window_s: float,
        hop_s: float,
        tap=None,
        clips=None,
        recovery: Recovery | None = None,
        pre_roll_s: float = 0.0,
        vad=None,
        gain: float = 1.0,
        view_s: float = 0.0,
    ):
        self.id = source_id
        self.source = source
        self.detector = detector
        self.vad = vad
        self.windower = Windower(source, model_rate, window_s, hop_s, tap=tap, keep_s=pre_roll_s, gain=gain)
        if self.windower.window != window_samples:
            raise CheckpointError(
                f"window_s {window_s} gives {self.windower.window} samples but the model takes {window_samples} samples"
            )
        self.view = int(round(view_s * model_rate))  # samples of the newest audio the model sees; 0 = all
        if self.view > self.windower.window:
            raise UserError(f"[detect] view_s {view_s} is longer than the model's {window_s} s window")
        self.frame = max(1, model_rate // 20)  # 50 ms frames for the onset estimate
        self.clips = clips(self.windower.ring, model_rate) if clips else None
        self.recovery = recovery or Recovery()
        self.counters = Counters()
        self.state = "starting"
        self.t0 = self.started_at = 0.0
        self.last = None  # newest scores payload, for the dashboard
        self.recent_events: deque = deque(maxlen=20)

    def _origin(self) -> float:
        return self.windower.origin if self.source.realtime and self.windower.origin else self.t0

    def stream_time(self, position: int) -> float:
        """UNIX time of model sample ``position``: when it was captured (a file: as if played from the start)."""
        return self._origin() + position / self.windower.model_rate

    def position(self, t: float) -> int:
        return int(round((t - self._origin()) * self.windower.model_rate))

    def status(self) -> dict:
        c = self.counters
        return {
            "source": self.id,
            "state": self.state,
            "uptime_s": round(time.time() - self.t0, 3),
            "windows": c.windows,
            "input_overflows": self.source.overflows,
            "lost_samples": self.windower.lost_samples,
            "dropped_windows": c.dropped_windows,
            "nonfinite_windows": c.nonfinite_windows,
            "events": c.events,
            "audio_outages": self.recovery.outages,
            **(
                {"clips_written": self.clips.stats.written, "clips_failed": self.clips.stats.failed}
                if self.clips is not None
                else {}
            ),
            **({"clips_withheld": self.clips.stats.withheld} if self.clips is not None and self.clips.privacy else {}),
            **(
                {
                    "vad_ms": _percentile(c.vad_ms, 0.5, 2),
                    "speech_held": self.detector.held,
                }
                if self.vad is not None
                else {}
            ),
            **({"music_held": self.detector.music_held} if getattr(self.detector, "music", None) is not None else {}),
            "latency_ms": _percentile(c.latencies_ms, 0.5, 1),
            "latency_p99_ms": _percentile(c.latencies_ms, 0.99, 1),
            "device": self.source.name,
            "capture_rate": self.source.rate,
            **(
                {"stream_error": self.source.last_error, "reopens": self.source.reopens}
                if hasattr(self.source, "last_error")
                else {}
            ),
        }


SUMMED = (
    "windows",
    "input_overflows",
    "lost_samples",
    "dropped_windows",
    "nonfinite_windows",
    "events",
    "audio_outages",
    "clips_written",
    "clips_failed",
    "clips_withheld",
    "speech_held",
    "music_held",
)


class Daemon:
    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        lanes: list[Lane],
        *,
        max_batch: int,
        top_k: int,
        status_interval_s: float,
        event_log=None,
        metrics=None,
        sinks=(),
    ):
        self.engine = engine
        self.publisher = publisher
        self.lanes = list(lanes)
        ids = [lane.id for lane in self.lanes]
        if len(set(ids)) != len(ids):
            raise UserError(
                f"two sources share a name ({', '.join(sorted({i for i in ids if ids.count(i) > 1}))}); "
                "give each [[sources]] entry its own name"
            )
        self.max_batch = max_batch
        self.top_k = top_k
        self.status_interval_s = status_interval_s
        self.event_log = event_log
        self.metrics = metrics
        self.sinks = list(sinks)  # MQTT, webhooks (soundwatch/integrations): told of every window, event, status
        self.sink_errors = 0
        self.infer_ms: deque = deque(maxlen=100)  # per window
        self.batches: deque = deque(maxlen=100)  # windows per engine call
        self.state = "starting"
        self.t0 = 0.0
        self._audio = threading.Event()  # set by any source's ring on a write

    # One source (offline evaluation, the dashboard's single panel): its lane's parts.
    @property
    def lane(self) -> Lane:
        return self.lanes[0]

    @property
    def source(self):
        return self.lane.source

    @property
    def windower(self) -> Windower:
        return self.lane.windower

    @property
    def detector(self) -> Detector:
        return self.lane.detector

    @detector.setter
    def detector(self, value) -> None:
        self.lane.detector = value

    def status(self, lanes: list[dict] | None = None) -> dict:
        """The totals over every source (``lanes``: their statuses, when already made), the engine's figures
        and the sinks' counters."""
        lanes = [lane.status() for lane in self.lanes] if lanes is None else lanes
        states = {s["state"] for s in lanes}
        latencies = [x for lane in self.lanes for x in lane.counters.latencies_ms]
        hop_ms = 1000 * self.lanes[0].windower.hop / self.lanes[0].windower.model_rate if self.lanes else 1000.0
        infer_ms = _percentile(self.infer_ms, 0.5, 1)
        totals = {key: sum(s.get(key, 0) for s in lanes) for key in SUMMED if any(key in s for s in lanes)}
        if self.state in ("stopped", "starting"):
            state = self.state
        else:  # every source's state when they agree; "degraded" when some run and some do not
            state = states.pop() if len(states) == 1 else "degraded"
        return {
            "state": state,
            "uptime_s": round(time.time() - self.t0, 3),
            "sources": len(self.lanes),
            "no_audio_sources": sum(s["state"] == "no_audio" for s in lanes),
            **totals,
            "send_failures": self.publisher.send_failures,
            **(
                {"vad_ms": _percentile([x for lane in self.lanes for x in lane.counters.vad_ms], 0.5, 2)}
                if any(lane.vad is not None for lane in self.lanes)
                else {}
            ),
            "latency_ms": _percentile(latencies, 0.5, 1),
            "latency_p99_ms": _percentile(latencies, 0.99, 1),
            "infer_ms": infer_ms,
            "rtf": round(_percentile(self.infer_ms, 0.5) / hop_ms, 4) if self.infer_ms else None,
            "batch": round(sum(self.batches) / len(self.batches), 2) if self.batches else None,
            "backend": self.engine.name,
            "precision": self.engine.precision,
            "compute": self.engine.device,
            "model_rate": self.engine.sample_rate,
            "model_sha256": self._model_sha256(),
            "version": __version__,
            **({sink.name: sink.stats() for sink in self.sinks} if self.sinks else {}),
            **({"sink_errors": self.sink_errors} if self.sinks else {}),
        }

    def _model_sha256(self) -> str | None:
        """The first 12 hex digits of the weights' SHA-256 as the model card records it (None: no card)."""
        card = getattr(self.engine, "card", None)  # an engine without a card (a stand-in) says nothing
        if card is None:
            return None
        return (card.extra.get("weights_sha256") or "")[:12] or None

    def _tell_sinks(self, method: str, payload: dict) -> None:
        """Hand ``payload`` to every sink; a sink's failure is logged and counted, never stops detection."""
        for sink in self.sinks:
            try:
                getattr(sink, method)(payload)
            except Exception:  # noqa: BLE001 - a sink must not take the daemon down
                self.sink_errors += 1
                if self.sink_errors <= 3:
                    log.exception("%s sink failed on %s (counted as sink_errors on status)", sink.name, method)

    def _publish_lane_status(self, lane: Lane) -> dict:
        status = lane.status()
        self.publisher.publish(f"status.{lane.id}", status)
        self._tell_sinks("status", status)
        return status

    def _publish_status(self) -> dict:
        """Every source's ``status.<source>``, then the totals on ``status`` (returned); each made once."""
        status = self.status([self._publish_lane_status(lane) for lane in self.lanes])
        self.publisher.publish("status", status)
        if self.metrics:
            self.metrics.observe_status(status)
        return status

    def _emit(self, lane: Lane, event: dict) -> None:
        """Publish an event, with its clip path on ``end`` (or ``clip: null`` and why), and log it durably."""
        if lane.clips is not None:
            if event["event"] == "start":
                lane.clips.pump()  # a file read fast: finish the clips whose audio has arrived before a new one
                lane.clips.begin(event["label"], lane.position(event["start"]), event["start"])
            else:
                path, why = lane.clips.end(event["label"], lane.position(event["end"]))
                event["clip"] = str(path) if path is not None else None
                if why:
                    event["clip_error"] = why
        event["source"] = lane.id
        self.publisher.publish(f"detection.{event['label']}.{lane.id}", event)
        self._tell_sinks("event", event)
        lane.counters.events += 1
        lane.recent_events.append(event)
        if self.event_log is not None:
            self.event_log.append({"ts": time.time(), **event, "device": lane.source.name})
        if self.metrics:
            self.metrics.events.labels(event["label"], event["event"]).inc()

    def _process(self, due: list[tuple[Lane, int]]) -> None:
        windows, kept = [], []
        for lane, end in due:
            w = lane.windower.take(end)
            if w is None:
                lane.counters.dropped_windows += 1
            else:
                windows.append(w)
                kept.append((lane, end))
        if not windows:
            return
        shown = [recent_view(w, lane.view) for w, (lane, _) in zip(windows, kept)]
        t = time.perf_counter()
        probs = softmax(self.engine.infer(np.stack(shown)))
        self.infer_ms.append(1000 * (time.perf_counter() - t) / len(windows))
        self.batches.append(len(windows))
        classes = self.engine.classes
        for (lane, end), window, p in zip(kept, windows, probs):
            if not np.isfinite(p).all():
                lane.counters.nonfinite_windows += 1
                if lane.counters.nonfinite_windows == 1:
                    log.error(
                        "%s for %s; such windows are skipped and counted as nonfinite_windows on status",
                        "the audio holds non-finite samples (NaN or infinity: a damaged file, stream or device)"
                        if not np.isfinite(window).all()
                        else "the engine returned non-finite scores (NaN or infinity)",
                        lane.id,
                    )
                continue
            level = rms_dbfs(window)
            top = np.argsort(p)[::-1][: self.top_k]
            w = lane.windower
            t_end = lane.stream_time(end)
            payload = {
                "source": lane.id,
                "top": [{"label": classes[i], "score": round(float(p[i]), 5)} for i in top],
                "level_dbfs": level,
                "hop_level_dbfs": rms_dbfs(window[-w.hop :]),
                "window_start": round(lane.stream_time(end - (lane.view or w.window)), 4),  # what the model saw
                "window_end": round(t_end, 4),
                "offset_s": round(end / w.model_rate, 4),
            }
            speech = self._speech(lane, window, end) if lane.vad is not None else None
            if speech is not None:
                payload["speech"] = round(speech, 3)
            music = lane.detector.hear_music(p, level)
            if music is not None:
                payload["music"] = round(music, 3)
            self.publisher.publish(f"scores.{lane.id}", payload)
            self._tell_sinks("scores", payload)
            lane.last = payload
            lane.counters.windows += 1
            for event in lane.detector.update(
                p,
                level,
                t_end,
                payload["hop_level_dbfs"],
                frame_levels_dbfs(window, lane.frame),
                lane.frame / w.model_rate,
                speech=speech,
            ):
                self._emit(lane, event)
            latency = time.time() - w.arrival_time(end)
            lane.counters.latencies_ms.append(1000 * latency)
            if self.metrics:
                self.metrics.windows.inc()
                self.metrics.latency.observe(latency)

    def _speech(self, lane: Lane, window: np.ndarray, end: int) -> float:
        """The window's speech share; with privacy, tell the clip recorder where the speech is."""
        from soundwatch.vad import VAD_RATE

        t = time.perf_counter()
        share = lane.vad.update(window, end)
        lane.counters.vad_ms.append(1000 * (time.perf_counter() - t))
        if lane.clips is not None and lane.clips.privacy:
            start = end - len(window)
            if lane.vad.rate == VAD_RATE:  # positions of the speech chunks
                lane.clips.speech(lane.vad.speech_spans(start), lane.vad.pos)
            else:  # one share per window: all of a window with speech counts as speech
                lane.clips.speech([(start, end)] if share > 0 else [], end)
        return share

    def _watch_audio(self, lane: Lane) -> None:
        """Live sources only: notice lost audio, then reopen the source with back-off until it delivers."""
        source = lane.source
        if not source.realtime or not hasattr(source, "reopen"):
            return
        now = time.time()
        rec = lane.recovery
        opening = source.active and getattr(source, "opening", False)  # a stream connecting: not lost yet
        if lane.state == "running":
            last = max(source.ring.last_write_time, lane.started_at)
            if opening or (source.active and now - last < rec.timeout_s):
                return
            self._lose_audio(lane, now)
        if lane.state != "no_audio":
            return
        if rec.reopened_at:
            if source.active and source.ring.written > rec.resume_from:
                self._resume(lane)
                return
            if opening or now - rec.reopened_at < rec.timeout_s:
                return
            rec.reopened_at = 0.0  # reopened, but no audio came: try again (still the same outage)
        if now >= rec.next_try:
            rec.resume_from = source.ring.written
            try:
                source.reopen()
            except UserError:
                rec.next_try = time.time() + rec.backoff_s
                rec.backoff_s = min(2 * rec.backoff_s, rec.backoff_max_s)
                return
            rec.reopened_at = time.time()
            rec.next_try = rec.reopened_at + rec.backoff_s
            rec.backoff_s = min(2 * rec.backoff_s, rec.backoff_max_s)

    def _lose_audio(self, lane: Lane, now: float) -> None:
        rec = lane.recovery
        lane.state = "no_audio"
        rec.outages += 1
        rec.lost_at, rec.next_try, rec.backoff_s, rec.reopened_at = now, now, 0.25, 0.0
        lane.windower.pump()
        for event in lane.detector.close_all(lane.stream_time(lane.windower.ring.written)):
            self._emit(lane, event)
        if lane.clips is not None:
            lane.clips.pump(final=True)
        self._publish_lane_status(lane)
        self.publisher.publish("status", self.status())

    def _resume(self, lane: Lane) -> None:
        """The reopened source delivers: windows start afresh on its audio."""
        lane.windower.restart(lane.recovery.resume_from)
        if lane.vad is not None:
            lane.vad.reset()  # never carry the speech state across an outage
        lane.recovery.reopened_at = 0.0
        lane.started_at = time.time()
        lane.state = "running"
        self._publish_lane_status(lane)
        self.publisher.publish("status", self.status())

    def _wait_for_audio(self) -> None:
        if len(self.lanes) == 1:  # one source: wake on its next block
            ring = self.lane.source.ring
            ring.wait_for(ring.written + 1, 0.05)
            return
        self._audio.wait(0.05)  # many: wake on any block, at most every 10 ms (a pump per source per turn)
        self._audio.clear()
        time.sleep(0.01)

    def run(self, stop: threading.Event, duration: float | None = None, on_tick=None) -> dict:
        """Run until ``stop`` is set, ``duration`` seconds pass, or every source is a file that is exhausted."""
        self.t0 = time.time()
        for lane in self.lanes:
            lane.t0 = lane.started_at = self.t0
            lane.source.ring.listener = self._audio
            lane.source.start()
            lane.state = "running"
        self.state = "running"
        next_status = time.monotonic()
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                due: list[tuple[Lane, int]] = []
                for lane in self.lanes:
                    self._watch_audio(lane)
                    if lane.state == "no_audio":  # nothing to classify; new audio waits for the restart
                        continue
                    lane.windower.pump()
                    ends = lane.windower.due()
                    if lane.source.realtime:  # live audio: drop the oldest rather than fall further behind
                        excess = len(ends) - self.max_batch
                        if excess > 0:
                            lane.counters.dropped_windows += excess
                            ends = ends[excess:]
                    due += [(lane, end) for end in ends]
                for i in range(0, len(due), self.max_batch):
                    self._process(due[i : i + self.max_batch])
                for lane in self.lanes:
                    if lane.clips is not None:
                        lane.clips.pump()
                if time.monotonic() >= next_status:
                    self._publish_status()
                    next_status += self.status_interval_s
                if on_tick is not None:
                    on_tick(self)
                if not due and all(lane.source.finished and lane.windower.flushed for lane in self.lanes):
                    break
                if not due:
                    if all(lane.state == "no_audio" for lane in self.lanes):
                        stop.wait(0.05)
                    else:
                        self._wait_for_audio()
        finally:
            self.state = "stopped"
            for lane in self.lanes:
                lane.state = "stopped"
                lane.source.stop()
                for event in lane.detector.close_all(lane.stream_time(lane.windower.ring.written)):
                    self._emit(lane, event)
                if lane.clips is not None:
                    lane.clips.pump(final=True)
            final = self._publish_status()
            for lane in self.lanes:
                lane.windower.close()
            join_sources([lane.source for lane in self.lanes])  # network readers leave FFmpeg before exit
        return final
