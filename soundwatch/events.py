"""What a detection leaves behind: a durable JSONL event log and a WAV clip per event.

- ``EventLog`` appends one JSON object per event, flushed and fsynced before ``append``
  returns, and rotates by size (``events.jsonl`` -> ``.1`` ... ``.N``). It holds an advisory
  lock (``events.jsonl.lock``) so a second daemon on the same log is refused, not interleaved.
- ``ClipRecorder`` streams each event's audio, from ``pre_roll_s`` before its start to
  ``post_roll_s`` after its end, into a hidden partial file as the audio arrives (so a long
  event never outgrows the ring), then fsyncs it and links it under its final name: a clip
  exists under its name only once it is complete. Retention (oldest first past a count or
  byte limit) runs when a clip is written and only ever deletes clips this recorder wrote:
  they are listed in a manifest (``.soundwatch-clips.json``) with inode and size, and a file
  that is no longer the one written (replaced, a symlink, a directory) is never touched.
  With ``privacy``, no clip holds speech: the recorder writes only audio the voice-activity
  detector has already checked (``speech``), drops a clip (and its partial file) whose audio up to
  the event's end holds speech (the ``end`` event says ``clip: null``, ``clip_error: "privacy:
  speech"``), and ends a clip early when speech comes in its post-roll.

Directories are created 0700 and files 0600. File names are built from the model's own
label list and a timestamp, never from anything a message carries.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from soundwatch import strict_json
from soundwatch.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = ".soundwatch-clips.json"
SPEECH_PAD_S = 0.25  # privacy: audio this close to detected speech counts as speech
PART_SUFFIX = ".soundwatch-part"


def private_dir(path: Path, what: str = "directory") -> Path:
    """Create ``path`` (and parents) readable by the owner only; UserError if it cannot be a directory."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UserError(f"{what} {path}: cannot create it, a part of the path is a file ({exc.filename})") from exc
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot create it ({exc.strerror})") from exc
    if not path.is_dir():
        raise UserError(f"{what} {path}: exists and is not a directory")
    return path


def safe_name(label: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "_", label.lower()).strip("_") or "event"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


XDG_STATE_DEFAULT = "~/.local/state/"


def state_path(path: str | Path) -> Path:
    """A path under ``~/.local/state/`` (the default event log's) moves to ``$XDG_STATE_HOME`` when that
    is set to an absolute path, as the XDG base-directory specification defines it; any other path is
    only ``~``-expanded."""
    text = str(path)
    home = os.environ.get("XDG_STATE_HOME", "")
    if text.startswith(XDG_STATE_DEFAULT) and os.path.isabs(home):
        return Path(home) / text[len(XDG_STATE_DEFAULT) :]
    return Path(text).expanduser()


class EventLog:
    def __init__(self, path: Path | str, max_bytes: int, backups: int):
        self.path = state_path(path)
        if self.path.is_symlink():
            raise UserError(
                f"event log {self.path} is a symbolic link; soundwatch does not follow links for "
                "files it writes: point --event-log at a plain file path"
            )
        if self.path.exists() and not self.path.is_file():
            raise UserError(
                f"event log {self.path} exists and is not a regular file (a directory?): "
                "point --event-log at a file path"
            )
        private_dir(self.path.parent, "event log directory")
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = self._take_lock()
        try:
            self._fd = self._open()
        except BaseException:
            os.close(self._lock)
            raise

    def _take_lock(self) -> int:
        """An exclusive advisory lock on ``<log>.lock`` (holding our pid): one daemon per event log."""
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise UserError(f"event log lock {lock}: cannot open it ({exc.strerror})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"event log {self.path} is in use by another soundwatch (process {holder}, lock "
                f"{lock}); stop it, or give this one its own --event-log"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise UserError(f"event log {self.path}: cannot open it for writing ({exc.strerror})") from exc

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
        line = (strict_json.dumps(record) + "\n").encode()
        if os.fstat(self._fd).st_size + len(line) > self.max_bytes and os.fstat(self._fd).st_size > 0:
            self._rotate()
        os.write(self._fd, line)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
        os.close(self._lock)  # releases the lock


@dataclass
class _Clip:
    """One clip being streamed to its partial file."""

    label: str
    path: Path  # final name
    part: Path  # hidden partial file, linked to ``path`` once complete
    writer: object  # soundfile.SoundFile
    file: object  # the binary file object under it
    pos: int  # next model-rate sample position to write
    last: int | None = None  # end position (event end + post-roll), once the event has ended
    first: int = 0  # position of its first sample (event start - pre-roll)
    event_end: int | None = None  # position of the event's end, once it has ended
    gaps: int = 0  # samples lost because the ring overwrote them before they were written


@dataclass
class _Written:
    name: str
    ino: int
    size: int


@dataclass
class ClipStats:
    written: int = 0
    failed: int = 0
    deleted: int = 0  # removed by retention
    withheld: int = 0  # not written because they held speech (privacy)
    errors: list = field(default_factory=list)


class ClipRecorder:
    def __init__(
        self,
        directory: Path,
        ring,
        rate: int,
        pre_roll_s: float,
        post_roll_s: float,
        max_clips: int,
        max_bytes: int,
        privacy: bool = False,
    ):
        self.dir = private_dir(directory, "clips directory")
        self.privacy = privacy
        self.vetted = 0  # with privacy: audio before this position was checked for speech; only it is written
        self.speech_pad = int(SPEECH_PAD_S * rate)
        self._speech: list[tuple[int, int]] = []  # with privacy: recent speech, (first, end) positions, padded
        self._withheld: set[str] = set()  # labels whose current clip was dropped for speech
        self.ring = ring
        self.rate = rate
        self.pre = int(pre_roll_s * rate)
        self.post = int(post_roll_s * rate)
        self.max_clips = max_clips
        self.max_bytes = max_bytes
        self.open: dict[str, _Clip] = {}
        self.stats = ClipStats()
        self._manifest: list[_Written] = []
        self._parts: set[str] = set()
        self._load_manifest()

    @property
    def written(self) -> int:
        return self.stats.written

    # -- the manifest: the only clips retention may delete ------------------------------------
    def _load_manifest(self) -> None:
        path = self.dir / MANIFEST
        try:
            data = json.loads(path.read_text())
            self._manifest = [_Written(str(c["name"]), int(c["ino"]), int(c["size"])) for c in data.get("clips", [])]
            parts = [str(p) for p in data.get("parts", [])]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("clips manifest %s is unreadable (%s): clips written before are left alone", path, exc)
            self._manifest = []
            return
        for name in parts:  # partial files left by a crash: ours, never completed
            self._unlink_if(name, None)
        self._manifest = [c for c in self._manifest if self._is_ours(c)]
        self._save_manifest()

    def _save_manifest(self) -> None:
        path = self.dir / MANIFEST
        tmp = self.dir / (MANIFEST + ".tmp")
        data = {
            "written_by": "soundwatch",
            "note": "clips soundwatch wrote here; only these are ever deleted",
            "clips": [vars(c) for c in self._manifest],
            "parts": sorted(self._parts),
        }
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _is_ours(self, clip: _Written) -> bool:
        """Whether ``clip.name`` is still the regular file written (same inode and size), not a link."""
        try:
            st = os.lstat(self.dir / clip.name)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_ino == clip.ino and st.st_size == clip.size

    def _unlink_if(self, name: str, clip: _Written | None) -> None:
        path = self.dir / name
        try:
            st = os.lstat(path)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode) or (clip is not None and (st.st_ino, st.st_size) != (clip.ino, clip.size)):
            return
        try:
            path.unlink()
        except OSError as exc:
            log.warning("cannot delete %s: %s", path, exc.strerror)

    def _retain(self) -> None:
        """Delete the oldest clips this recorder wrote, past ``max_clips`` or ``max_bytes``."""
        total = sum(c.size for c in self._manifest)
        while self._manifest and (len(self._manifest) > self.max_clips or total > self.max_bytes):
            oldest = self._manifest.pop(0)
            total -= oldest.size
            if self._is_ours(oldest):
                self._unlink_if(oldest.name, oldest)
                self.stats.deleted += 1

    # -- streaming clips ----------------------------------------------------------------------
    def _free_name(self, stem: str) -> str:
        for k in range(1000):
            name = f"{stem}.wav" if k == 0 else f"{stem}-{k}.wav"
            if not os.path.lexists(self.dir / name) and not os.path.lexists(self.dir / f".{name}{PART_SUFFIX}"):
                return name
        raise OSError(errno.EEXIST, f"no free clip name for {stem}")

    def begin(self, label: str, start_pos: int, wall_start: float) -> None:
        """Start streaming the clip of an event of ``label`` that started at model sample ``start_pos``."""
        import soundfile as sf

        previous = self.open.get(label)
        if previous is not None:
            if previous.last is None:  # its event has not ended: this is not a new event
                return
            self._finish(label, previous)  # a new event of the label came before the previous clip's post-roll
        self._withheld.discard(label)
        first = max(0, start_pos - self.pre)
        if self.privacy and any(e > first for _, e in self._speech):
            self._withheld.add(label)  # speech in its pre-roll or since: no file at all
            self.stats.withheld += 1
            return
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall_start)) + f"{wall_start % 1:.3f}"[1:]
        try:
            name = self._free_name(f"{stamp}Z_{safe_name(label)}")
            part = self.dir / f".{name}{PART_SUFFIX}"
            self._parts.add(part.name)
            self._save_manifest()
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            f = os.fdopen(fd, "w+b")
            writer = sf.SoundFile(f, "w", samplerate=self.rate, channels=1, subtype="PCM_16", format="WAV")
        except OSError as exc:
            self._fail(label, exc)
            return
        oldest = max(0, self.ring.written - self.ring.capacity)
        clip = _Clip(label, self.dir / name, part, writer, f, max(first, oldest), first=first)
        clip.gaps = clip.pos - first
        self.open[label] = clip

    def end(self, label: str, end_pos: int) -> tuple[Path | None, str | None]:
        """The event of ``label`` ended at ``end_pos``: (clip path it will have, or None and why not)."""
        if label in self._withheld:
            self._withheld.discard(label)
            return None, "privacy: speech"
        clip = self.open.get(label)
        if clip is None:
            return None, self.stats.errors[-1] if self.stats.errors else "no clip was started for this event"
        clip.last = end_pos + self.post
        clip.event_end = end_pos
        return clip.path, None

    def speech(self, spans: list[tuple[int, int]], checked_to: int) -> None:
        """Privacy: the voice-activity detector checked the audio up to ``checked_to`` and found speech in
        ``spans`` ((first, end) positions). A clip whose audio up to its event's end holds speech is
        dropped; speech in a clip's post-roll ends the clip before it."""
        pad = self.speech_pad
        for first, end in spans:
            first, end = max(0, first - pad), end + pad
            if self._speech and first <= self._speech[-1][1]:
                self._speech[-1] = (min(first, self._speech[-1][0]), max(end, self._speech[-1][1]))
            else:
                self._speech.append((first, end))
            for label, clip in list(self.open.items()):
                if end <= clip.first or (clip.last is not None and first >= clip.last):
                    continue
                if clip.event_end is None:
                    del self.open[label]
                    self._abandon(clip)
                    self._withheld.add(label)
                    self.stats.withheld += 1
                else:  # the end event already named the clip: keep what was checked before the speech
                    clip.last = max(clip.pos, first)
        oldest = self.ring.written - self.ring.capacity - self.pre
        self._speech = [s for s in self._speech if s[1] > oldest]
        self.vetted = max(self.vetted, checked_to)

    def _fail(self, label: str, exc: Exception) -> None:
        self.stats.failed += 1
        message = f"clip for {label} not written: {getattr(exc, 'strerror', None) or exc}"
        self.stats.errors = (self.stats.errors + [message])[-5:]
        log.warning("%s", message)

    def pump(self, final: bool = False) -> None:
        """Append newly arrived audio to every open clip; complete those whose post-roll has arrived
        (every clip when ``final``: at shutdown or when the audio is lost)."""
        for label, clip in list(self.open.items()):
            try:
                self._append(clip)
                if final or (clip.last is not None and clip.pos >= clip.last):
                    del self.open[label]
                    self._complete(clip)
            except OSError as exc:
                self.open.pop(label, None)
                self._abandon(clip)
                self._fail(label, exc)

    def _finish(self, label: str, clip: _Clip) -> None:
        """Complete ``clip`` now, with the audio there is (its post-roll may be cut short)."""
        del self.open[label]
        try:
            self._append(clip)
            self._complete(clip)
        except OSError as exc:
            self._abandon(clip)
            self._fail(label, exc)

    def _append(self, clip: _Clip) -> None:
        stop = self.ring.written if clip.last is None else min(clip.last, self.ring.written)
        if self.privacy:
            stop = min(stop, self.vetted)  # only audio checked for speech
        oldest = self.ring.written - self.ring.capacity
        if clip.pos < oldest:  # fell behind the ring (not expected: pump runs every turn)
            clip.gaps += oldest - clip.pos
            clip.pos = oldest
        if stop <= clip.pos:
            return
        audio = self.ring.read(clip.pos, stop)
        if audio is None:
            return
        clip.writer.write(np.clip(audio, -1, 1))
        clip.pos = stop

    def _complete(self, clip: _Clip) -> None:
        """Close, fsync and link the partial file under its final name, then apply retention."""
        clip.writer.close()
        clip.file.flush()
        os.fsync(clip.file.fileno())
        clip.file.close()
        target = clip.path
        while True:
            try:
                os.link(clip.part, target)  # never replaces an existing file
                break
            except FileExistsError:
                target = self.dir / self._free_name(target.stem + "-x")
                log.warning("clip name %s was taken meanwhile; wrote %s instead", clip.path.name, target.name)
        os.unlink(clip.part)
        self._parts.discard(clip.part.name)
        _fsync_dir(self.dir)
        if clip.gaps:
            log.warning(
                "clip %s lacks its first %.2f s (overwritten before it could be written)",
                target.name,
                clip.gaps / self.rate,
            )
        st = os.lstat(target)
        self._manifest.append(_Written(target.name, st.st_ino, st.st_size))
        self.stats.written += 1
        self._retain()
        self._save_manifest()

    def _abandon(self, clip: _Clip) -> None:
        try:
            clip.writer.close()
        except Exception:  # the file is being thrown away; its own error was already counted
            pass
        try:
            clip.file.close()
        except OSError:
            pass
        self._unlink_if(clip.part.name, None)
        self._parts.discard(clip.part.name)
