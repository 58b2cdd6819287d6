"""Helpers for the integration tests: free ports, a real subscriber, running the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parent.parent


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def soundwatch(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start ``python -m soundwatch ARGS`` (stdout/stderr captured)."""
    return subprocess.Popen([sys.executable, "-m", "soundwatch", *args], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run_soundwatch(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soundwatch", *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


class Collector:
    """A real SUB socket on a thread, keeping every (topic, payload) with its arrival time."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",)):
        self.messages: list[tuple[float, str, dict]] = []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self._sock.connect(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(50):
                topic, body = self._sock.recv_multipart()
                self.messages.append((time.time(), topic.decode(), json.loads(body)))

    def wait_for(self, predicate, timeout: float) -> tuple[float, str, dict] | None:
        deadline = time.time() + timeout
        seen = 0
        while time.time() < deadline:
            for m in self.messages[seen:]:
                if predicate(m[1], m[2]):
                    return m
            seen = len(self.messages)
            time.sleep(0.02)
        return None

    def wait_stopped(self, timeout: float = 5.0) -> dict:
        """The daemon's last ``status`` (state ``stopped``), once it has arrived; fails if it does not."""
        got = self.wait_for(lambda t, p: t == "status" and p.get("state") == "stopped", timeout)
        assert got is not None, f"no final status within {timeout} s"
        return got[2]

    def of(self, topic: str) -> list[dict]:
        return [p for _, t, p in self.messages if t == topic]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        self._ctx.term()


def best_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Peak normalised cross-correlation of ``b`` (the shorter) anywhere inside ``a``."""
    n = len(a) + len(b)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    energy_b = float(np.dot(b, b))
    window_energy = np.convolve(a * a, np.ones(len(b)), "full")[len(b) - 1:]  # energy of a[k:k+len(b)]
    lags = np.arange(len(a) - len(b) + 1)
    scores = corr[lags] / np.sqrt(np.maximum(window_energy[lags], 1e-12) * energy_b)
    return float(scores.max())
