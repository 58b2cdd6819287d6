"""Speech awareness: the share of a window that is speech, from Silero VAD run in ONNX Runtime alone.

The model comes from the ``silero-vad`` package (PyPI, MIT licence), which ships ONNX graphs
under ``silero_vad/data/``. Its Python wrapper imports torch; soundwatch does not use it: the
graph is found with ``importlib.util.find_spec`` (which does not run the package) and run here
with ONNX Runtime, so the serving path stays torch-free.

The model (16 kHz) classifies consecutive 32 ms chunks (512 samples), each fed with the 64
samples that precede it as context, and carries an LSTM state (h, c: 2 x 1 x 128) from chunk to
chunk. ``silero_vad_16k_sequence.onnx`` takes many chunks in one call (the same computation as
the per-chunk ``silero_vad.onnx``, one call per window instead of one per chunk); where only
``silero_vad.onnx`` is there (older packages), it is run chunk by chunk.

**What ``SpeechDetector.update`` reports**: the share of the window's 32 ms chunks whose speech
probability is at least ``threshold`` (0.5, Silero's own default): 0 = no speech, 1 = speech
all along. Only chunks of audio that was heard count: the first windows of a stream, padded with
zeros before its start (negative positions), get the share of the audio they do hold. The VAD runs as a stream, the way it was trained: each hop only the chunks that are
new since the previous window are classified, with the state carried over, and the share is
taken over every chunk that lies inside the window. When the windows are not contiguous (the
first window, audio lost and resumed, a jump in positions) the state starts afresh on the whole
window. At another model rate than 16 kHz, each window is resampled to 16 kHz and classified
on its own from a fresh state (costlier, same meaning).
"""

from __future__ import annotations

import importlib.util
from collections import deque
from pathlib import Path

import numpy as np

from soundwatch.errors import UserError

VAD_RATE = 16000
CHUNK = 512  # samples per 32 ms chunk at 16 kHz
CONTEXT = 64  # samples of the previous chunk fed before each chunk
SEQUENCE_MODEL = "silero_vad_16k_sequence.onnx"
STREAM_MODEL = "silero_vad.onnx"


def find_model() -> Path:
    """The Silero VAD ONNX graph shipped by the ``silero-vad`` package, without importing it
    (``import silero_vad`` imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    places = list(spec.submodule_search_locations or []) if spec is not None else []
    for name in (SEQUENCE_MODEL, STREAM_MODEL):
        for place in places:
            path = Path(place) / "data" / name
            if path.is_file():
                return path
    where = f" (looked in {', '.join(str(Path(p) / 'data') for p in places)})" if places else ""
    raise UserError(
        f"the voice-activity detector's model ({SEQUENCE_MODEL} or {STREAM_MODEL} of the silero-vad "
        f"package) was not found{where}: `pip install 'silero-vad>=6'`, or turn it off with "
        "`[detect] vad = false` in config.toml"
    )


_SESSIONS: dict = {}


def _session(path: str, threads: int):
    """One ONNX Runtime session per graph and thread count, shared by every detector (each keeps its own
    stream state; the graph itself is stateless), so many sources cost one session."""
    import onnxruntime as ort

    key = (path, threads)
    if key not in _SESSIONS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the graphs carry unused initialisers ORT warns about
        try:
            _SESSIONS[key] = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for an unreadable or damaged graph
            raise UserError(f"voice-activity detector model {path}: cannot load it ({exc})") from exc
    return _SESSIONS[key]


class SpeechDetector:
    """Speech share of consecutive windows (see the module's docstring)."""

    def __init__(self, rate: int, model: Path | None = None, threshold: float = 0.5, threads: int = 1):
        self.rate = int(rate)
        self.threshold = threshold
        path = Path(model) if model is not None else find_model()
        self.session = _session(str(path), max(1, threads))
        inputs = {i.name for i in self.session.get_inputs()}
        if {"input", "h", "c"} <= inputs:
            self.sequence = True
        elif {"input", "state", "sr"} <= inputs:
            self.sequence = False
        else:
            raise UserError(f"voice-activity detector model {path}: not a Silero VAD graph (inputs {sorted(inputs)})")
        self.path = path
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next window starts from a fresh state."""
        self.state = np.zeros((2, 1, 128), np.float32)  # (h, c)
        self.context = np.zeros(CONTEXT, np.float32)
        self.pos: int | None = None  # stream position (16 kHz samples) up to which chunks were classified
        self.chunks: deque[tuple[int, float]] = deque()  # (end position, speech probability) of recent chunks

    def _run(self, audio: np.ndarray) -> np.ndarray:
        """Speech probabilities of the whole chunks of ``audio`` (a multiple of CHUNK samples), continuing
        the stream: ``self.context`` and ``self.state`` are used and advanced."""
        n = len(audio) // CHUNK
        if n == 0:
            return np.zeros(0, np.float32)
        frames = np.ascontiguousarray(audio[: n * CHUNK], dtype=np.float32).reshape(n, CHUNK)
        blocks = np.empty((n, CONTEXT + CHUNK), np.float32)
        blocks[:, CONTEXT:] = frames
        blocks[0, :CONTEXT] = self.context
        blocks[1:, :CONTEXT] = frames[:-1, -CONTEXT:]
        self.context = frames[-1, -CONTEXT:].copy()
        if self.sequence:
            probs, h, c = self.session.run(
                ["speech_probs", "hn", "cn"], {"input": blocks, "h": self.state[:1], "c": self.state[1:]}
            )
            self.state = np.concatenate([h, c]).astype(np.float32)
            return np.asarray(probs, np.float32).reshape(-1)
        out = np.empty(n, np.float32)
        sr = np.array(VAD_RATE, np.int64)
        for i in range(n):
            p, self.state = self.session.run(None, {"input": blocks[i : i + 1], "state": self.state, "sr": sr})
            out[i] = float(np.asarray(p).reshape(-1)[0])
        return out

    def chunk_probs(self, audio: np.ndarray) -> np.ndarray:
        """Per-chunk speech probabilities of ``audio`` (at ``rate``) on its own, from a fresh state;
        the stream kept by ``update`` is reset."""
        self.reset()
        audio = self._to_vad_rate(audio)
        return self._run(audio[len(audio) % CHUNK :])  # chunks aligned to the newest sample

    def share(self, audio: np.ndarray) -> float:
        """Share of the chunks of ``audio`` classified as speech, on its own (fresh state)."""
        probs = self.chunk_probs(audio)
        return float(np.mean(probs >= self.threshold)) if len(probs) else 0.0

    def _to_vad_rate(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, np.float32).reshape(-1)
        if self.rate == VAD_RATE:
            return audio
        import soxr

        return soxr.resample(audio, self.rate, VAD_RATE).astype(np.float32)

    def update(self, window: np.ndarray, end: int) -> float:
        """Speech share of ``window``, whose newest sample is at stream position ``end - 1`` (positions
        in samples at ``rate``, increasing from window to window)."""
        if self.rate != VAD_RATE:
            return self.share(window)
        start = end - len(window)
        if self.pos is None or not start <= self.pos <= end:
            self.reset()  # not contiguous with what was classified: the whole window from a fresh state
            self.pos = start
        new = (end - self.pos) // CHUNK * CHUNK
        if new:
            offset = self.pos - start
            probs = self._run(window[offset : offset + new])
            ends = self.pos + CHUNK * np.arange(1, len(probs) + 1)
            self.chunks.extend(zip(ends.tolist(), probs.tolist()))
            self.pos += new
        while self.chunks and self.chunks[0][0] - CHUNK < start:
            self.chunks.popleft()
        heard = [p for chunk_end, p in self.chunks if chunk_end - CHUNK >= 0]  # not the zeros before the stream
        if not heard:
            return 0.0
        return sum(p >= self.threshold for p in heard) / len(heard)

    def speech_spans(self, start: int) -> list[tuple[int, int]]:
        """(first, end) stream positions of the runs of speech chunks that end after ``start``."""
        spans: list[tuple[int, int]] = []
        for chunk_end, p in self.chunks:
            if p < self.threshold or chunk_end <= start:
                continue
            if spans and spans[-1][1] == chunk_end - CHUNK:
                spans[-1] = (spans[-1][0], chunk_end)
            else:
                spans.append((chunk_end - CHUNK, chunk_end))
        return spans
