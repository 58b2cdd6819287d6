"""From the capture ring to model-rate windows: streaming resampling and the hop schedule.

``Windower.pump()`` takes every new capture-rate sample from the source's ring, resamples
it to the model's rate with soxr's streaming high-quality resampler (not linear
interpolation), and appends it to a model-rate ring. ``due()`` lists the window end
positions that are complete: one every ``hop`` samples, each window being the newest
``window`` samples up to that end (zeros before the stream began). After an outage,
``restart()`` starts the schedule afresh on the new audio: no window mixes audio from
before and after the gap, and the first one is due as soon as a window of new audio exists.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import soxr

from soundwatch.audio.ring import RingBuffer
from soundwatch.errors import UserError

# What ``--record-input`` writes, by the file's suffix: WAV holds the model's float32 samples exactly;
# FLAC (24-bit) takes about a quarter of the space (50-65 MB an hour), for recording a room for hours.
TAP_FORMATS = {".wav": {"format": "WAV", "subtype": "FLOAT"}, ".flac": {"format": "FLAC", "subtype": "PCM_24"}}


def tap_format(path) -> dict:
    """soundfile's format and subtype for a tap at ``path``; a UserError for a suffix it cannot be."""
    suffix = Path(path).suffix.lower()
    if suffix not in TAP_FORMATS:
        raise UserError(
            f"--record-input {path}: cannot write {suffix or 'a file without a suffix'}; name it .wav "
            "(32-bit float, the exact samples) or .flac (24-bit, about a quarter of the size)"
        )
    return TAP_FORMATS[suffix]


class Windower:
    def __init__(
        self,
        source,
        model_rate: int,
        window_s: float,
        hop_s: float,
        tap: Path | None = None,
        keep_s: float = 0.0,
        gain: float = 1.0,
    ):
        self.source = source
        self.gain = float(gain)  # linear factor applied to the source's audio (a source's gain_db)
        self.model_rate = int(model_rate)
        self.window = int(round(window_s * model_rate))
        self.hop = int(round(hop_s * model_rate))
        # Room for what one pump can bring (the source ring), a window, and ``keep_s`` more
        # (a clip's pre-roll) behind the oldest window still to be read.
        source_s = source.ring.capacity / source.rate
        self.ring = RingBuffer(
            max(4 * self.window, int(30 * model_rate), int((source_s + window_s + keep_s + 2 * hop_s) * model_rate))
        )
        self.next_end = self.hop
        self.read_pos = 0  # capture-rate samples taken from the source ring
        self.lost_samples = 0  # capture samples overwritten before they were read (counted, never hidden)
        self.flushed = False
        self.origin: float | None = None  # wall-clock time of model sample 0, set when audio first arrives
        self.offset_s = 0.0  # source seconds minus model seconds at the same sample (grows at each restart)
        self._resampler = self._new_resampler()
        self._pumps: deque[tuple[int, float]] = deque(maxlen=256)  # (model samples written, when)
        self._tap = None
        if tap is not None:
            import soundfile as sf

            self._tap = sf.SoundFile(str(tap), "w", samplerate=self.model_rate, channels=1, **tap_format(tap))

    def _new_resampler(self):
        if self.source.rate == self.model_rate:
            return None
        return soxr.ResampleStream(self.source.rate, self.model_rate, 1, dtype="float32", quality="HQ")

    def restart(self, source_position: int) -> None:
        """The source's audio from ``source_position`` on is a new stream (after an outage):
        forget the old stream's unread tail and the resampler's state, and schedule the first
        window to end one full window into the new audio."""
        self.read_pos = max(self.read_pos, source_position)
        self._resampler = self._new_resampler()
        self.offset_s = self.read_pos / self.source.rate - self.ring.written / self.model_rate
        self.next_end = self.ring.written + self.window
        self.origin = None  # the capture clock restarts with the new stream

    def pump(self) -> int:
        """Move new capture samples into the model-rate ring; returns how many model samples were added."""
        src = self.source.ring
        written = src.written
        oldest = written - src.capacity
        if self.read_pos < oldest:
            self.lost_samples += oldest - self.read_pos
            self.read_pos = oldest
        finishing = self.source.finished and not self.flushed
        if written == self.read_pos and not finishing:
            return 0
        if self.origin is None and written > self.read_pos:  # time of model sample 0 on this stream's clock
            self.origin = (
                src.last_write_time - (written - self.read_pos) / self.source.rate - self.ring.written / self.model_rate
            )
        chunk = src.read(self.read_pos, written)
        if chunk is None:  # overwritten while we copied: skip to what is there now
            return self.pump()
        self.read_pos = written
        src.consumed = written
        if self.gain != 1.0:
            chunk = chunk * np.float32(self.gain)
        if self._resampler is not None:
            chunk = self._resampler.resample_chunk(chunk, last=finishing)
        if finishing:
            self.flushed = self.source.finished and self.read_pos == src.written
        if len(chunk):
            self.ring.write(chunk)
            self._pumps.append((self.ring.written, time.time()))
            if self._tap is not None:
                self._tap.write(chunk)
        return len(chunk)

    def due(self) -> list[int]:
        """End positions (model-rate samples) of the windows that are complete, oldest first."""
        ends = []
        while self.next_end <= self.ring.written:
            ends.append(self.next_end)
            self.next_end += self.hop
        return ends

    def take(self, end: int) -> np.ndarray | None:
        """The window ending at ``end``; None if the ring already dropped part of it."""
        return self.ring.read(end - self.window, end)

    def arrival_time(self, end: int) -> float:
        """Wall-clock time at which model sample ``end`` was available (for latency).

        Live audio: when it was captured, from the newest block's time and how far the
        capture is ahead of ``end``. A file read as fast as possible has no capture
        clock, so it counts from the ``pump`` that brought the sample in.
        """
        if not self.source.realtime:
            return next((t for written, t in self._pumps if written >= end), time.time())
        src = self.source.ring
        behind = (src.written / self.source.rate) - self.offset_s - (end / self.model_rate)
        return src.last_write_time - max(0.0, behind)

    def close(self) -> None:
        if self._tap is not None:
            self._tap.close()
            self._tap = None
