"""A preallocated float32 ring buffer: one writer (the audio thread), one reader.

Positions are absolute sample counts since the stream started (``written`` only grows),
so a reader asks for "samples [a, b)" and learns whether they are still there. The
writer never allocates and never blocks: ``write`` is a couple of numpy copies.
"""

from __future__ import annotations

import threading
import time

import numpy as np


class RingBuffer:
    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError("ring capacity must be positive")
        self.capacity = int(capacity)
        self._data = np.zeros(self.capacity, dtype=np.float32)
        self.written = 0  # absolute count of samples ever written
        self.last_write_time = 0.0  # time.time() of the newest write
        self.consumed = 0  # reader's position, for writers that must not outrun it (fast file mode)
        self._more = threading.Condition()
        self.listener: threading.Event | None = None  # set on every write (a reader watching many rings)

    def write(self, samples: np.ndarray) -> None:
        """Append ``samples`` (1-D float32), overwriting the oldest data when full."""
        total = len(samples)
        if total > self.capacity:
            samples = samples[-self.capacity :]
        n = len(samples)
        start = (self.written + total - n) % self.capacity
        first = min(n, self.capacity - start)
        self._data[start : start + first] = samples[:first]
        if first < n:
            self._data[: n - first] = samples[first:]
        self.last_write_time = time.time()
        self.written += total
        if self.listener is not None:
            self.listener.set()
        if self._more.acquire(blocking=False):  # never block the audio thread
            self._more.notify_all()
            self._more.release()

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray | None:
        """Samples [start, stop); zeros before position 0; None if already overwritten."""
        n = stop - start
        out = np.zeros(n, dtype=np.float32) if out is None else out
        if start < 0:
            skip = min(-start, n)
            out[:skip] = 0.0
            got = self.read(0, stop, out[skip:]) if stop > 0 else out
            return None if got is None else out
        if stop > self.written:
            raise ValueError(f"samples up to {stop} requested, only {self.written} written")
        if start < self.written - self.capacity:
            return None
        begin = start % self.capacity
        first = min(n, self.capacity - begin)
        out[:first] = self._data[begin : begin + first]
        if first < n:
            out[first:] = self._data[: n - first]
        if start < self.written - self.capacity:  # overwritten while copying
            return None
        return out

    def wait_for(self, position: int, timeout: float) -> bool:
        """Block until ``position`` samples are written or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._more:
            while self.written < position:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._more.wait(min(left, 0.05))
        return True
