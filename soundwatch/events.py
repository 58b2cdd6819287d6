"""What a detection leaves behind: a durable JSONL event log and a WAV clip per event.

- ``EventLog`` appends one JSON object per event, flushed and fsynced before ``append``
  returns, and rotates by size (``events.jsonl`` -> ``.1`` ... ``.N``).
- ``ClipRecorder`` writes, for each ended event, the audio from ``pre_roll_s`` before its
  start to ``post_roll_s`` after its end, taken from the model-rate ring once the post-roll
  has arrived; the oldest clips are deleted past a count or byte limit.

Directories are created 0700 and files 0600. File names are built from the model's own
label list and a timestamp, never from anything a message carries.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the owner only."""
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def safe_name(label: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "_", label.lower()).strip("_") or "event"


class EventLog:
    def __init__(self, path: Path, max_bytes: int, backups: int):
        self.path = Path(path).expanduser()
        private_dir(self.path.parent)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)

    def _rotate(self) -> None:
        os.close(self._fd)
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._fd = self._open()

    def append(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode()
        if os.fstat(self._fd).st_size + len(line) > self.max_bytes and os.fstat(self._fd).st_size > 0:
            self._rotate()
        os.write(self._fd, line)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


@dataclass
class _Pending:
    path: Path
    first: int  # model-rate sample positions
    last: int


class ClipRecorder:
    def __init__(self, directory: Path, ring, rate: int, pre_roll_s: float, post_roll_s: float,
                 max_clips: int, max_bytes: int):
        self.dir = private_dir(directory)
        self.ring = ring
        self.rate = rate
        self.pre = int(pre_roll_s * rate)
        self.post = int(post_roll_s * rate)
        self.max_clips = max_clips
        self.max_bytes = max_bytes
        self.pending: list[_Pending] = []
        self.written = 0

    def plan(self, label: str, start_pos: int, end_pos: int, wall_start: float) -> Path:
        """Schedule the clip of an ended event; returns the path it will have."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall_start)) + f"{wall_start % 1:.3f}"[1:]
        path = self.dir / f"{stamp}Z_{safe_name(label)}.wav"
        self.pending.append(_Pending(path, max(0, start_pos - self.pre), end_pos + self.post))
        return path

    def flush(self, final: bool = False) -> None:
        """Write every clip whose post-roll has arrived (all of them when ``final``)."""
        import soundfile as sf

        for clip in list(self.pending):
            if clip.last > self.ring.written and not final:
                continue
            self.pending.remove(clip)
            last = min(clip.last, self.ring.written)
            first = max(clip.first, last - self.ring.capacity + 1, 0)
            audio = self.ring.read(first, last)
            if audio is None or not len(audio):
                continue
            fd = os.open(clip.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                sf.write(f, np.clip(audio, -1, 1), self.rate, format="WAV", subtype="PCM_16")
            self.written += 1
        self._retain()

    def _retain(self) -> None:
        clips = sorted(self.dir.glob("*.wav"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in clips)
        while clips and (len(clips) > self.max_clips or total > self.max_bytes):
            oldest = clips.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink()
