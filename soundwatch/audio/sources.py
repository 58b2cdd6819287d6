"""Audio sources that fill a RingBuffer at the capture rate: a microphone, a file or a network stream.

Both produce mono float32 in ``source.ring`` at ``source.rate``; everything after the
ring (resampling, windows, the model) is the same for both.

- ``MicSource``: a ``sounddevice.InputStream`` whose callback copies the block (downmixed
  into preallocated scratch memory) into the ring and counts ``input_overflow``. Nothing else.
- ``FileSource``: a thread reads a WAV/FLAC/OGG with soundfile and writes blocks into the
  ring at real-time pace, or as fast as the consumer takes them (``realtime=False``).
- ``StreamSource``: a thread decodes a network stream with PyAV (FFmpeg's libraries) and writes
  it, resampled by FFmpeg to the model's rate, into the ring.

Every source has ``start()``, ``stop()`` (stop writing, at once) and ``join(timeout)`` (after
``stop``: wait until its threads are gone; whether they are), and ``stop_wait_s``, the longest
``join`` may need. ``join_sources`` stops waiting for all of them at one deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from soundwatch.audio.devices import InputDevice, find_input_device
from soundwatch.audio.ring import RingBuffer
from soundwatch.errors import DeviceError, UserError
from soundwatch.urls import strip_credentials

log = logging.getLogger(__name__)


class MicSource:
    realtime = True  # audio arrives whether or not we keep up

    def __init__(
        self,
        device: str | int | None,
        preferred_rate: int,
        sample_rate: int = 0,
        channels: int = 0,
        blocksize: int = 1024,
        ring_s: float = 30.0,
        latency: str = "low",
    ):
        self.device: InputDevice = find_input_device(device)
        self.name = f"{self.device.name} (#{self.device.index})"
        self.reopens = 0
        self.channels = channels or min(2, self.device.channels)
        self.rate = sample_rate or self._pick_rate(preferred_rate)
        self.blocksize = blocksize
        self.latency = latency
        self.ring = RingBuffer(int(ring_s * self.rate))
        self.overflows = 0
        self.finished = False  # a microphone never ends
        self._scratch = np.zeros(max(blocksize, 8192), dtype=np.float32)
        self._stream = None

    def _pick_rate(self, preferred: int) -> int:
        """The model's rate when the device takes it (no resampling), else its default rate."""
        import sounddevice as sd

        try:
            sd.check_input_settings(device=self.device.index, samplerate=preferred, channels=self.channels)
            return preferred
        except Exception:
            return int(self.device.default_samplerate)

    def _callback(self, indata: np.ndarray, frames: int, time_info, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        if frames > len(self._scratch):  # PortAudio may hand a bigger block than asked: drop, count
            self.overflows += 1
            return
        mono = self._scratch[:frames]
        np.mean(indata, axis=1, out=mono)
        self.ring.write(mono)

    def start(self) -> None:
        import sounddevice as sd

        try:
            self._stream = sd.InputStream(
                device=self.device.index,
                samplerate=self.rate,
                channels=self.channels,
                dtype="float32",
                blocksize=self.blocksize,
                latency=self.latency,
                callback=self._callback,
            )
            self._stream.start()
        except sd.PortAudioError as exc:
            raise DeviceError(
                f"cannot open input device {self.name} at {self.rate} Hz, {self.channels} ch: {exc}"
            ) from exc

    @property
    def active(self) -> bool:
        return self._stream is not None and self._stream.active

    def stop(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            try:
                stream.abort()
                stream.close()
            except Exception:  # a stream whose device vanished may fail to close: it is gone either way
                pass

    stop_wait_s = 0.0  # PortAudio's callback thread is gone once ``stop`` has closed the stream

    def join(self, timeout: float | None = None) -> bool:
        return self._stream is None

    def reopen(self) -> None:
        """Close the stream, rescan the devices, find this device again by name and reopen it."""
        import sounddevice as sd

        self.stop()
        sd._terminate()  # PortAudio lists devices once per initialisation: rescan for a replugged device
        sd._initialize()
        self.device = find_input_device(self.device.name)
        self.start()
        self.reopens += 1


# What ``open_sound_file`` reads (libsndfile >= 1.1: MP3 too); Ogg holds Vorbis or Opus.
SOUND_FILE_SUFFIXES = (".flac", ".wav", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".caf", ".w64", ".rf64")


def open_sound_file(path: Path):
    """soundfile.SoundFile for ``path``, or a UserError naming the path and the reason."""
    import soundfile as sf

    path = Path(path)
    if path.is_dir():
        raise UserError(f"audio file {path}: is a directory, not a sound file")
    if not path.exists():
        raise UserError(f"audio file {path}: no such file")
    if not path.is_file():
        raise UserError(f"audio file {path}: not a regular file")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise UserError(f"audio file {path}: cannot decode it ({exc})") from exc


class FileSource:
    def __init__(self, path: Path, realtime: bool = True, blocksize: int = 1024, ring_s: float = 30.0):
        self.path = Path(path)
        self.name = str(self.path)
        self._file = open_sound_file(self.path)
        self.rate = int(self._file.samplerate)
        self.realtime = realtime
        self.blocksize = blocksize
        self.ring = RingBuffer(int(ring_s * self.rate))
        self.overflows = 0
        self.finished = False
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="file-source", daemon=True)

    def _run(self) -> None:
        import soundfile as sf

        start = time.monotonic()
        fed = 0
        try:
            for block in self._file.blocks(blocksize=self.blocksize, dtype="float32", always_2d=True):
                if self._stop.is_set():
                    break
                if self.realtime:
                    delay = start + fed / self.rate - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                else:  # never overwrite what the consumer has not read yet
                    while self.ring.written - self.ring.consumed > self.ring.capacity // 2 and not self._stop.is_set():
                        time.sleep(0.001)
                self.ring.write(block.mean(axis=1))
                fed += len(block)
        except (sf.LibsndfileError, RuntimeError) as exc:
            self.error = f"audio file {self.path}: decoding failed after {fed / self.rate:.1f} s ({exc})"
        finally:
            self.finished = True

    def start(self) -> None:
        self._thread.start()

    @property
    def active(self) -> bool:
        return self._thread.is_alive()

    stop_wait_s = 2.0

    def stop(self) -> None:
        self._stop.set()
        self.join()
        self._file.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the reader thread (it ends within a block once stopped); whether it has ended."""
        if self._thread.is_alive():
            self._thread.join(self.stop_wait_s if timeout is None else timeout)
        return not self._thread.is_alive()


def stream_name(url: str) -> str:
    """A stream's name for messages, logs and the dashboard: its URL without credentials and query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else strip_credentials(url.split("?")[0])


class StreamSource:
    """A network stream (RTSP, HTTP/Icecast, anything FFmpeg opens) through PyAV, decoded and resampled by
    FFmpeg to mono float32 at ``rate`` (the model's) in a reader thread.

    RTSP is asked for over TCP. The reader gives up on a read that blocks for ``read_timeout_s`` (a stalled
    server, a half-open connection) or on the end of the stream, and the source goes inactive: the
    daemon sees no audio, says ``no_audio`` and calls ``reopen`` with back-off. ``reopen`` never blocks:
    it starts a new reader and tells the old one to stop; a generation number keeps a reader that is
    still blocked from ever writing again. Credentials in the URL never leave this object: ``name``
    and every error say the URL without them."""

    realtime = True
    finished = False  # a stream is reopened, never finished

    def __init__(
        self, url: str, rate: int, ring_s: float = 30.0, open_timeout_s: float = 5.0, read_timeout_s: float = 2.0
    ):
        import av  # noqa: F401 - fail here, with the others' errors, if PyAV is missing

        self.url = url
        self.name = stream_name(url)
        self.rate = int(rate)
        self.ring = RingBuffer(int(ring_s * self.rate))
        self.overflows = 0
        self.error: str | None = None  # only for a source that cannot work at all (none: streams are retried)
        self.last_error: str | None = None  # why the stream last stopped, for status and logs
        self.reopens = 0
        self.timeouts = (open_timeout_s, read_timeout_s)
        self._generation = 0
        self._lock = threading.Lock()
        self._alive = threading.Event()
        self._readers: list[threading.Thread] = []  # this reader and any old one still blocked in FFmpeg
        self.opening = False  # connecting and probing (up to open_timeout_s): no audio expected yet

    def _options(self) -> dict:
        scheme = urlsplit(self.url).scheme.lower()
        if scheme in ("rtsp", "rtsps"):
            return {"rtsp_transport": "tcp"}
        return {}

    def _run(self, generation: int) -> None:
        import av

        container = None
        try:
            container = av.open(self.url, options=self._options(), timeout=self.timeouts)
            if not container.streams.audio:
                raise ValueError("no audio track")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
            for packet in container.demux(stream):
                for frame in packet.decode():
                    for out in resampler.resample(frame):
                        with self._lock:
                            if generation != self._generation:
                                return
                            self.ring.write(out.to_ndarray().reshape(-1))
                            self.opening = False
            self.last_error = "the stream ended"
        except Exception as exc:  # noqa: BLE001 - any failure of a network stream means: reopen it later
            self.last_error = strip_credentials(str(exc).replace(self.url, self.name))
        finally:
            if container is not None:
                try:
                    container.close()
                except Exception:  # noqa: BLE001
                    pass
            with self._lock:
                if generation == self._generation:
                    self._alive.clear()
                    self.opening = False
            if generation == self._generation and self.last_error:
                log.warning("stream %s: %s", self.name, self.last_error)

    def start(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._alive.set()
            self.opening = True
        reader = threading.Thread(target=self._run, args=(generation,), name=f"stream {self.name}", daemon=True)
        self._readers = [t for t in self._readers if t.is_alive()] + [reader]
        reader.start()

    @property
    def active(self) -> bool:
        return self._alive.is_set()

    def stop(self) -> None:
        """Stop writing at once; the reader thread ends at its next packet or read timeout."""
        with self._lock:
            self._generation += 1
            self._alive.clear()
            self.opening = False

    @property
    def stop_wait_s(self) -> float:
        """How long a stopped reader may stay in FFmpeg: an open timeout and a read timeout, and a margin."""
        return sum(self.timeouts) + 0.5

    def join(self, timeout: float | None = None) -> bool:
        """Wait (after ``stop``) until every reader has left FFmpeg, at most ``timeout`` seconds (default:
        ``stop_wait_s``); whether they all did. A process must not exit with a reader inside PyAV: its
        finalisation can then crash the process (SIGSEGV)."""
        deadline = time.monotonic() + (self.stop_wait_s if timeout is None else timeout)
        for reader in list(self._readers):
            reader.join(max(0.0, deadline - time.monotonic()))
        left = [t for t in self._readers if t.is_alive()]
        if left:
            log.warning("stream %s: %d reader(s) still blocked in FFmpeg at shutdown", self.name, len(left))
        return not left

    def reopen(self) -> None:
        self.stop()
        self.start()
        self.reopens += 1


def join_sources(sources) -> list:
    """After ``stop`` on each: wait for every source's threads under one deadline, the longest
    ``stop_wait_s`` among them (stopped together, their waits overlap: several stuck streams cost one
    wait, not one each). The sources whose threads outlived it."""
    deadline = time.monotonic() + max((source.stop_wait_s for source in sources), default=0.0)
    return [source for source in sources if not source.join(max(0.0, deadline - time.monotonic()))]
