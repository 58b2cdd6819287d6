"""Webhooks: an HTTP POST of each event's JSON to configured URLs, for users without a broker.

One worker thread per URL posts in order from its own bounded queue, so a slow or hanging
server delays only its own posts, never detection nor the other URLs: a request is abandoned
after ``timeout_s`` (per connect and per read) and counted as failed; past ``max_queued`` waiting
events the oldest is dropped and counted; at exit, what is still unsent after a second is
abandoned and counted. A label's ``start`` is posted at most once per
``cooldown_s`` per URL; the ``end`` of a start that was not posted is not posted either.
Credentials in a URL (``https://user:password@host/...``) are sent as HTTP Basic authentication
and never shown: logs and status print the URL with ``***`` for the password.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from urllib.parse import unquote, urlsplit, urlunsplit

from soundwatch import __version__, strict_json
from soundwatch.integrations import Sink
from soundwatch.publish import SCHEMA
from soundwatch.urls import mask_password

log = logging.getLogger(__name__)


def _split_credentials(url: str) -> tuple[str, dict]:
    """``https://user:pass@host/x`` -> (``https://host/x``, a Basic ``Authorization`` header); urllib does
    not take credentials in the URL itself."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    return urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


class _Poster:
    """One URL: a queue and the thread that empties it."""

    def __init__(self, url: str, timeout_s: float, max_queued: int, counts: dict, lock: threading.Lock):
        self.url, self.auth = _split_credentials(url)
        self.shown, self.timeout_s = mask_password(url), timeout_s
        self.queue: deque[bytes] = deque()
        self.max_queued = max_queued
        self.counts, self.lock = counts, lock
        self.cond = threading.Condition()
        self.stopping = False
        self.busy = False
        self.last_sent: dict[str, float] = {}  # label -> monotonic time of its last posted start
        self.posted_starts: set[str] = set()  # labels whose current event's start was posted
        self.thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self.thread.start()

    def put(self, body: bytes) -> None:
        with self.cond:
            if len(self.queue) >= self.max_queued:
                self.queue.popleft()
                with self.lock:
                    self.counts["dropped"] += 1
            self.queue.append(body)
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if not self.queue:
                    return
                body = self.queue.popleft()
                self.busy = True
            self._post(body)
            with self.cond:
                self.busy = False
                self.cond.notify_all()

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": f"soundwatch/{__version__}", **self.auth},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read(65536)
            ok, why = True, None
        except urllib.error.HTTPError as exc:
            ok, why = False, f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            ok, why = False, f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)
        with self.lock:
            self.counts["sent" if ok else "failed"] += 1
            if not ok:
                self.counts["last_error"] = f"{self.shown}: {why}"
        if not ok:
            log.warning("webhook %s: %s (the event is not retried)", self.shown, why)

    def drain(self, deadline: float) -> None:
        """Stop taking events; post what is queued until ``deadline`` (monotonic), then give up on the rest."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            while (self.queue or self.busy) and time.monotonic() < deadline:
                self.cond.wait(max(0.0, deadline - time.monotonic()))
            left = len(self.queue) + self.busy  # the request in flight is abandoned too
            self.queue.clear()
        if left:
            with self.lock:
                self.counts["abandoned"] += left


class WebhookSink(Sink):
    name = "webhook"

    def __init__(self, settings):
        self.s = settings
        self.lock = threading.Lock()
        self.counts: dict = {"sent": 0, "failed": 0, "dropped": 0, "cooled_down": 0, "abandoned": 0, "last_error": None}
        self.posters = [
            _Poster(url, settings.timeout_s, settings.max_queued, self.counts, self.lock)
            for url in dict.fromkeys(settings.urls)
        ]

    def event(self, event: dict) -> None:
        label, kind = event["label"], event["event"]
        if self.s.labels and label not in self.s.labels:
            return
        body = None
        now = time.monotonic()
        for poster in self.posters:
            if kind == "start":
                last = poster.last_sent.get(label)
                if last is not None and now - last < self.s.cooldown_s:
                    with self.lock:
                        self.counts["cooled_down"] += 1
                    poster.posted_starts.discard(label)
                    continue
                poster.last_sent[label] = now
                poster.posted_starts.add(label)
            elif label not in poster.posted_starts:
                continue  # its start was cooled down (or never seen): no lone end
            else:
                poster.posted_starts.discard(label)
            if kind not in self.s.events:
                continue
            if body is None:
                body = strict_json.dumps({"schema": SCHEMA, "ts": time.time(), **event}).encode()
            poster.put(body)

    def stats(self) -> dict:
        with self.lock:
            return dict(self.counts)

    def summary(self) -> str:
        c = self.stats()
        return (
            f"webhooks: {c['sent']} sent, {c['failed']} failed, {c['abandoned']} abandoned at exit, "
            f"{c['cooled_down']} within the cool-down"
            + (f", {c['dropped']} dropped (queue full)" if c["dropped"] else "")
        )

    def close(self) -> None:
        deadline = time.monotonic() + 1.0
        for poster in self.posters:
            poster.drain(deadline)
