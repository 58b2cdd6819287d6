"""Where events go besides ZeroMQ: MQTT (with Home Assistant discovery) and webhooks.

Each is a *sink*: the daemon hands it every ``scores`` payload, every event and every
``status``, from its own loop. A sink must never block that loop nor stop detection: it
queues, drops what it cannot deliver and counts it in ``stats()``, which the daemon
puts on its ``status`` message under the sink's name. An exception raised inside a sink
is logged and counted (``sink_errors`` on status), never propagated.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from urllib.parse import urlsplit


class Sink:
    """What the daemon calls; every method is optional."""

    name = "sink"

    def start(self, daemon) -> None:
        """The daemon is built (its engine's classes and its source are known); called once before it runs."""

    def scores(self, payload: dict) -> None:
        """A ``scores`` payload: one classified window."""

    def event(self, event: dict) -> None:
        """A detection event (``start`` or ``end``), as published on ZeroMQ."""

    def status(self, status: dict) -> None:
        """The daemon's ``status`` (every status interval, and at once when its state changes)."""

    def stats(self) -> dict:
        """Counters for the daemon's ``status`` message."""
        return {}

    def summary(self) -> str:
        """One line for the user at exit, after ``close``."""
        return ""

    def close(self) -> None:
        """The daemon stopped: flush what can be flushed within about a second, and release everything."""


def slug(text: str) -> str:
    """``text`` as an identifier safe in MQTT topics and Home Assistant ids: [a-z0-9_], never empty."""
    out = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return out or "default"


def source_id(source) -> str:
    """A stable short id for a source: its device's name (without the index, which changes between boots),
    its file's stem, or its stream's host and path (no scheme, port or credentials)."""
    url = getattr(source, "url", None)
    if url:
        parts = urlsplit(url)
        return slug(f"{parts.hostname or ''}{parts.path}")
    device = getattr(source, "device", None)
    if device is not None and getattr(device, "name", None):
        return slug(device.name)
    path = getattr(source, "path", None)
    if path is not None:
        return slug(Path(path).stem)
    return slug(getattr(source, "name", "") or "source")


def host_id() -> str:
    return slug(socket.gethostname())


def mqtt_settings(settings):
    """``[mqtt]`` as the daemon runs it: where its ``labels`` are the default and ``[detect] labels`` is a
    watch list, Home Assistant's entities are the watch list's labels (the others never start an event)."""
    import dataclasses

    from soundwatch.config import MQTT_LABELS

    watch = tuple(getattr(settings.detect, "labels", ()))
    if watch and tuple(settings.mqtt.labels) == MQTT_LABELS:
        return dataclasses.replace(settings.mqtt, labels=watch)
    return settings.mqtt


def build_sinks(settings) -> list[Sink]:
    """The sinks the settings turn on (MQTT, webhooks), connected or connecting; [] when none is."""
    sinks: list[Sink] = []
    try:
        if settings.mqtt.url:
            from soundwatch.integrations.mqtt import MqttSink

            sinks.append(MqttSink(mqtt_settings(settings)))
        if settings.webhook.urls:
            from soundwatch.integrations.webhook import WebhookSink

            sinks.append(WebhookSink(settings.webhook))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
