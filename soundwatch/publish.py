"""The ZeroMQ publisher and the message contract.

Every message is multipart ``[topic, JSON]`` (UTF-8). Topics: ``scores`` (every window),
``detection.<label>`` (event start/end), ``status`` (every ``status_interval_s``). Every
payload carries ``schema`` (integer version), ``seq`` (+1 per message from this
publisher, so a subscriber sees gaps), ``ts`` (UNIX seconds) and ``source``. Sends never
block: past the high-water mark ZeroMQ drops, and the drop shows as a ``seq`` gap.
"""

from __future__ import annotations

import json
import time

import zmq

from soundwatch.errors import UserError

SCHEMA = 1


class Publisher:
    def __init__(self, endpoint: str, source: str, sndhwm: int = 1000, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.source = source
        self.seq = 0
        self.send_failures = 0
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, 500)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._sock.close(linger=0)
            if exc.errno == zmq.EADDRINUSE:
                raise UserError(f"endpoint {endpoint} is already in use (another soundwatch?); pick another "
                                "with --endpoint") from exc
            raise UserError(f"cannot bind endpoint {endpoint}: {exc.strerror}") from exc
        self.bound = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    def publish(self, topic: str, payload: dict) -> None:
        message = {"schema": SCHEMA, "seq": self.seq, "ts": time.time(), "source": self.source, **payload}
        self.seq += 1
        try:
            self._sock.send_multipart([topic.encode(), json.dumps(message).encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.send_failures += 1

    def close(self) -> None:
        self._sock.close()


def subscribe(endpoint: str, topics: list[str], context: zmq.Context | None = None) -> zmq.Socket:
    """A SUB socket connected to ``endpoint`` and subscribed to each topic prefix ("" = all)."""
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for topic in topics or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        raise UserError(f"cannot connect to {endpoint}: {exc.strerror}") from exc
    return sock


def receive(sock: zmq.Socket, timeout_ms: int) -> tuple[str, dict] | None:
    """One ``(topic, payload)`` or None after ``timeout_ms``."""
    if not sock.poll(timeout_ms):
        return None
    topic, body = sock.recv_multipart()
    return topic.decode(), json.loads(body)
