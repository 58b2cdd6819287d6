"""Helpers for the integration tests: free ports, a real subscriber, running the CLI."""

from __future__ import annotations

import contextlib
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
    return subprocess.Popen(
        [sys.executable, "-m", "soundwatch", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def run_soundwatch(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "soundwatch", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ScoresKeeper:
    """A publisher for the daemon that keeps its `scores` messages, and the totals of `status`, in memory
    (no socket: tests of what the messages carry, not of their transport)."""

    source, seq, send_failures = "", 0, 0

    def __init__(self):
        self.scores, self.totals = [], []

    def publish(self, topic, payload):
        if topic.startswith("scores."):
            self.scores.append(payload)
        elif topic == "status":
            self.totals.append(payload)


class Collector:
    """A real SUB socket on a thread, keeping every (topic, payload) with its arrival time."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",)):
        self.messages: list[tuple[float, str, dict]] = []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        # Retry every 10 ms (ZeroMQ's default: 100 ms) while the daemon starts: it binds before loading the
        # model, and a run without torch loads fast enough to publish its first windows inside 100 ms.
        self._sock.setsockopt(zmq.RECONNECT_IVL, 10)
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
        """Payloads of ``topic``: that topic exactly, or below it (``scores`` -> ``scores.<source>``); ``status``
        means the totals only (``status.<source>`` for one source's)."""
        below = "" if topic == "status" else topic + "."
        return [p for _, t, p in self.messages if t == topic or (below and t.startswith(below))]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        self._ctx.term()


@contextlib.contextmanager
def building_elsewhere(checkpoint: Path, engines: Path):
    """This test as another process in the middle of exporting ``checkpoint`` into the cache ``engines``: the
    cache's build lock held until the block ends. Yields the cached graph's path."""
    import fcntl

    from soundwatch.engines.graphs import build_lock, cached_name
    from soundwatch.models.card import file_sha256

    engines.mkdir(parents=True, exist_ok=True)
    target = engines / cached_name(checkpoint, file_sha256(checkpoint), "fp32")
    with open(build_lock(target), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield target


def stderr_until(proc: subprocess.Popen, needle: str, what: str) -> str:
    """``proc``'s standard error up to the line holding ``needle``; fails, saying ``what`` did not happen,
    if the process ends first (a test using it needs a timeout: a process that never says it blocks the read)."""
    said = ""
    while needle not in said:
        line = proc.stderr.readline()
        assert line, f"{what}: {said}"
        said += line
    return said


def best_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Peak normalised cross-correlation of ``b`` (the shorter) anywhere inside ``a``."""
    n = len(a) + len(b)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    energy_b = float(np.dot(b, b))
    window_energy = np.convolve(a * a, np.ones(len(b)), "full")[len(b) - 1 :]  # energy of a[k:k+len(b)]
    lags = np.arange(len(a) - len(b) + 1)
    scores = corr[lags] / np.sqrt(np.maximum(window_energy[lags], 1e-12) * energy_b)
    return float(scores.max())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, every: float = 0.02):
    """Poll ``condition()`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(every)
    return None


class Broker:
    """A real Mosquitto broker on a loopback port, with a password file (user ``sw``, password in
    ``password_file``); stopped, killed and restarted on the same port by the tests."""

    USER, PASSWORD = "sw", "correct horse"

    def __init__(self, directory: Path, persistence: bool = False):
        import getpass
        import shutil

        if shutil.which("mosquitto") is None:
            raise FileNotFoundError("mosquitto")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # started as root, mosquitto reads its files as the user below
        self.port = free_port()
        passwords = self.dir / "passwords"
        passwords.write_text("")
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwords), self.USER, self.PASSWORD],
            check=True,
            capture_output=True,
            timeout=10,
        )
        passwords.chmod(0o644)
        self.password_file = self.dir / "client-password"
        self.password_file.write_text(self.PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.config = self.dir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
            f"user {getpass.getuser()}\n"
            + (
                f"persistence true\npersistence_location {self.dir}/\nautosave_interval 0\n"
                if persistence
                else "persistence false\n"
            )
        )
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.config)], stdout=open(self.log, "a"), stderr=subprocess.STDOUT
        )

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                return False

        assert wait_until(listening, 10), f"mosquitto did not listen on {self.port}: {self.log.read_text()}"
        return self

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: mosquitto saves its persistent sessions)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def mqtt_config(self, extra: str = "") -> str:
        """The ``[mqtt]`` section of a config.toml for this broker."""
        return f'[mqtt]\nurl = "{self.url}"\nusername = "{self.USER}"\npassword_file = "{self.password_file}"\n' + extra


class MqttCollector:
    """A real MQTT subscriber (paho) on its own thread, keeping every (time, topic, payload, retained).
    It reconnects (and, with a persistent session, gets what the broker held for it) after a broker restart."""

    def __init__(self, broker: Broker, topics: tuple[str, ...] = ("#",), client_id: str = "", persistent: bool = False):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[float, str, str, bool]] = []
        self.connects = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{time.time_ns()}",
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(broker.USER, broker.PASSWORD)
        self.client.reconnect_delay_set(1, 1)

        def on_connect(client, userdata, flags, reason_code, properties):
            for topic in topics:
                client.subscribe(topic, qos=1)
            self.connects += 1

        self.client.on_connect = on_connect
        self.client.on_message = lambda c, u, m: self.messages.append(
            (time.time(), m.topic, m.payload.decode(), bool(m.retain))
        )
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert wait_until(lambda: self.connects, 10), "the test subscriber could not connect"

    def wait_for(self, predicate, timeout: float):
        """The first (time, topic, payload, retained) with ``predicate(topic, payload)``, or None."""
        return wait_until(lambda: next((m for m in list(self.messages) if predicate(m[1], m[2])), None), timeout)

    def payloads(self, topic: str) -> list[str]:
        return [m[2] for m in list(self.messages) if m[1] == topic]

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
