"""MQTT publishing (paho-mqtt), with Home Assistant discovery.

Topics (``P`` = ``[mqtt] topic_prefix``, ``S`` = each source's id, e.g. ``pulse``, a file's stem or a
``[[sources]]`` name):

| topic | payload | retained |
|---|---|---|
| ``P/bridge/availability`` | ``online`` / ``offline`` (the last-will: ``offline`` when the daemon dies) | yes |
| ``P/S/availability`` | ``online`` while the source delivers audio, else ``offline`` | yes |
| ``P/S/<label>/state`` | ``ON`` at an event's start, ``OFF`` at its end | ``retain`` |
| ``P/S/event`` | every event's JSON (start and end), as on ZeroMQ ``detection.<label>`` | no |
| ``P/S/last_detection`` | the JSON of the last event start | ``retain`` |
| ``P/S/level`` | input level, Leq over ``level_interval_s``, dBFS | no |
| ``P/S/status`` | the daemon's status JSON every ``status_interval_s`` | no |

Never in the way of detection: paho's network thread does all socket work; ``publish`` only
queues. While the broker is away, messages of QoS > 0 are held (up to ``max_queued``) and sent on
reconnection; QoS 0 messages, and anything past ``max_queued``, are lost and counted
(``mqtt.lost`` on status). QoS 1 is at-least-once: a message in flight when the connection drops
can arrive twice (MQTT's redelivery); an event's ``(source, label, event, start)`` identifies it, so
a subscriber that must not count one twice drops repeats by that key. Reconnection backs off 1 s,
2 s, 4 s, ... up to ``reconnect_max_s``.
At start, a broker that refuses the credentials is a user error (exit 2); one that cannot be
reached is a warning, and soundwatch keeps trying in the background.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from soundwatch import strict_json
from soundwatch.config import MQTT_LABELS
from soundwatch.errors import UserError
from soundwatch.integrations import Sink, host_id, slug
from soundwatch.integrations.homeassistant import Topics, discovery_configs, source_config_filter
from soundwatch.labels import BACKGROUND_LABEL
from soundwatch.publish import SCHEMA
from soundwatch.urls import mask_password

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_url(url: str) -> tuple[str, int, bool, str]:
    """``(host, port, tls, username)`` from ``mqtt://[user@]host[:port]`` or ``mqtts://...``."""
    shown = mask_password(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UserError(f"MQTT broker URL {shown}: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise UserError(f"MQTT broker URL {shown}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)")
    if not parts.hostname:
        raise UserError(f"MQTT broker URL {shown}: no host")
    if parts.password is not None:
        raise UserError(
            f"MQTT broker URL {shown}: holds a password; URLs end up in process lists and logs. "
            "Put it in a file ([mqtt] password_file) or the environment variable named by "
            "[mqtt] password_env (SOUNDWATCH_MQTT_PASSWORD)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UserError(
            f"MQTT broker URL {shown}: nothing may follow HOST:PORT (the topics are set by [mqtt] topic_prefix)"
        )
    return parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts", parts.username or ""


def read_password(settings) -> str | None:
    """The broker password from ``password_file`` (its first line) or the ``password_env`` variable; None if neither."""
    if settings.password_file:
        path = Path(settings.password_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(
                f"[mqtt] password_file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})"
            ) from None
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("MQTT password file %s can be read by other users of this machine (chmod 600 it)", path)
        return text.splitlines()[0] if text.strip() else ""
    if settings.password_env and settings.password_env in os.environ:
        return os.environ[settings.password_env]
    return None


def _level_text(energy: float, n: int) -> str:
    return f"{10 * math.log10(max(energy / n, 1e-12)):.1f}"


class _Source:
    """What the sink keeps per source: its topics, label states, availability and level accumulator."""

    def __init__(self, topics: Topics):
        self.topics = topics
        self.states: dict[str, bool] = {}
        self.online: bool | None = None  # availability as last published
        self.level_energy, self.level_n = 0.0, 0
        self.next_level = self.next_status = 0.0


class MqttSink(Sink):
    name = "mqtt"

    def __init__(self, settings):
        self.s = settings
        self.host, self.port, tls, url_user = parse_url(settings.url)
        self.where = f"{'mqtts' if tls else 'mqtt'}://{self.host}:{self.port}"
        username = settings.username or url_user
        password = read_password(settings)
        if password is not None and not username:
            raise UserError("[mqtt]: a password is set but no username (set [mqtt] username, or mqtt://USER@HOST)")
        self.host_id = host_id()
        self.bridge = Topics(settings.topic_prefix, "")  # its bridge_availability (the last-will's topic)
        self._lock = threading.RLock()  # guards what on_connect re-announces and the counters
        self._started = False
        self._closing = False
        self.labels: list[str] = []
        self.configs: dict[str, dict] = {}  # every source's discovery configs
        self.sources: dict[str, _Source] = {}
        self.answered = threading.Event()
        self.refused: str | None = None
        self.connected = False
        self.counts = {
            "published": 0,
            "lost": 0,
            "queued_offline": 0,
            "connects": 0,
            "disconnects": 0,
            "discovery_sent": 0,
            "discovery_removed": 0,
        }
        self.last_error: str | None = None

        client_id = settings.client_id or f"soundwatch-{self.host_id}-{os.getpid()}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.enable_logger(logging.getLogger("soundwatch.integrations.paho"))
        if username:
            self.client.username_pw_set(username, password)
        self.client.will_set(self.bridge.bridge_availability, "offline", qos=settings.qos, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(settings.reconnect_max_s)))
        self.client.max_queued_messages_set(settings.max_queued)
        self.client.connect_timeout = settings.connect_timeout_s
        if tls:
            ca = Path(settings.ca_file).expanduser() if settings.ca_file else None
            if ca is not None and not ca.is_file():
                raise UserError(f"[mqtt] ca_file {ca}: no such file")
            try:
                self.client.tls_set(ca_certs=str(ca) if ca else None)
            except (ssl.SSLError, OSError) as exc:
                raise UserError(f"[mqtt] ca_file {ca}: not a usable CA bundle ({exc})") from None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.tcp_ok = self._first_connect()
        self.client.loop_start()

    # -- connection -------------------------------------------------------------------------------

    def _first_connect(self) -> bool:
        """Open the connection now, so that a TLS or name problem is reported at start with its reason."""
        try:
            self.client.connect(self.host, self.port, keepalive=self.s.keepalive_s)
            return True
        except ssl.SSLError as exc:
            raise UserError(
                f"MQTT broker {self.where}: TLS handshake failed ({exc.reason or exc}); check the "
                "broker's certificate and [mqtt] ca_file"
            ) from None
        except (socket.gaierror, OSError) as exc:
            reason = exc.strerror if getattr(exc, "strerror", None) else (str(exc) or type(exc).__name__)
            self.last_error = f"cannot reach {self.where}: {reason}"
            log.warning(
                "MQTT broker %s cannot be reached (%s); detection goes on and soundwatch keeps trying "
                "(back-off up to %g s)",
                self.where,
                reason,
                self.s.reconnect_max_s,
            )
            self.client.connect_async(self.host, self.port, keepalive=self.s.keepalive_s)
            return False

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            self.last_error = f"broker refused the connection: {reason_code}"
            if self._started:
                log.error("MQTT broker %s refused the connection: %s", self.where, reason_code)
            self.answered.set()
            return
        with self._lock:
            self.connected = True
            self.refused = None
            self.counts["connects"] += 1
            reconnect = self.counts["connects"] > 1
        if reconnect:
            log.warning("MQTT broker %s: connected again", self.where)
        self._publish(self.bridge.bridge_availability, "online", retain=True)
        if self.s.discovery:
            client.subscribe(f"{self.s.discovery_prefix}/status", qos=1)
        with self._lock:
            if self._started:
                self._announce()
        self.answered.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was = self.connected
            self.connected = False
            if was:
                self.counts["disconnects"] += 1
        if was and not self._closing:
            self.last_error = f"connection lost: {reason_code}"
            log.warning(
                "MQTT broker %s went away (%s); reconnecting with back-off up to %g s; detection goes on",
                self.where,
                reason_code,
                self.s.reconnect_max_s,
            )

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == f"{self.s.discovery_prefix}/status":
            if msg.payload == b"online":  # Home Assistant (re)started: it needs the configs again
                log.info("Home Assistant is online: sending discovery again")
                with self._lock:
                    if self._started:
                        self._send_discovery()
            return
        if msg.payload and msg.topic.endswith("/config"):
            with self._lock:
                stale = msg.topic not in self.configs
            if stale:  # an entity of a label no longer listened for
                self._publish(msg.topic, "", retain=True)
                with self._lock:
                    self.counts["discovery_removed"] += 1
                log.info("Home Assistant discovery: removed %s (no longer listened for)", msg.topic)

    # -- publishing -------------------------------------------------------------------------------

    def _publish(self, topic: str, payload: str, retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        qos = self.s.qos
        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, RuntimeError) as exc:
            log.error("MQTT: cannot publish on %r: %s", topic, exc)
            rc = None
            info = None
        else:
            rc = info.rc
        with self._lock:
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.counts["published"] += 1
            elif rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0:
                self.counts["queued_offline"] += 1  # held by paho, sent on reconnection
            else:
                self.counts["lost"] += 1
        return info

    def _announce(self) -> None:
        """After a (re)connection (the broker may have restarted empty): availability, discovery, states."""
        self._send_discovery()
        for src in self.sources.values():
            if src.online is not None:  # else the daemon's first status says it
                self._publish(src.topics.source_availability, "online" if src.online else "offline", retain=True)
            for label in self.labels:
                self._publish(src.topics.state(label), "ON" if src.states.get(label) else "OFF", retain=self.s.retain)
            for label, on in src.states.items():
                if on and label not in self.labels:
                    self._publish(src.topics.state(label), "ON", retain=self.s.retain)
            if self.s.discovery:  # its retained configs come back: those of labels no longer listened are removed
                self.client.subscribe(source_config_filter(self.s.discovery_prefix, src.topics, self.host_id), qos=1)

    def _send_discovery(self) -> None:
        if not self.s.discovery:
            return
        for topic, config in self.configs.items():
            self._publish(topic, strict_json.dumps(config), retain=True)
        self.counts["discovery_sent"] += 1

    # -- the daemon's side ------------------------------------------------------------------------

    def start(self, daemon) -> None:
        classes = [c for c in daemon.engine.classes if c != BACKGROUND_LABEL]
        wanted = list(self.s.labels)
        if wanted == ["*"]:
            labels = classes
        else:
            unknown = [label for label in wanted if label not in classes]
            if unknown and tuple(wanted) != MQTT_LABELS:
                raise UserError(
                    f"[mqtt] labels: {', '.join(unknown)} not among the model's labels "
                    f'({", ".join(classes)}); or ["*"] for every label'
                )
            if unknown:
                log.info("MQTT: the model has no label %s; no entity for it", ", ".join(unknown))
            labels = [label for label in wanted if label in classes]
        with self._lock:
            self.labels = [slug(label) for label in labels]
            self.configs = {}
            for lane in daemon.lanes:
                topics = Topics(self.s.topic_prefix, lane.id)
                self.sources[lane.id] = _Source(topics)
                if self.s.discovery:
                    self.configs.update(
                        discovery_configs(
                            topics,
                            self.labels,
                            host=self.host_id,
                            source_name=lane.source.name,
                            discovery_prefix=self.s.discovery_prefix,
                            qos=self.s.qos,
                        )
                    )
            if not self.labels:  # an event entity needs at least one event type
                self.configs = {t: c for t, c in self.configs.items() if "/event/" not in t}
        if self.tcp_ok:
            self.answered.wait(self.s.connect_timeout_s)
            if self.refused is not None:
                raise UserError(
                    f"MQTT broker {self.where} refused the connection: {self.refused}; check [mqtt] "
                    f"username and the password ([mqtt] password_file or ${self.s.password_env})"
                )
            if not self.answered.is_set():
                log.warning(
                    "MQTT broker %s did not answer within %g s; detection goes on and soundwatch keeps trying",
                    self.where,
                    self.s.connect_timeout_s,
                )
        now = time.monotonic()
        with self._lock:
            for src in self.sources.values():
                src.next_level = now + self.s.level_interval_s
                src.next_status = now + self.s.status_interval_s
            self._started = True
            if self.connected:
                self._announce()

    def scores(self, payload: dict) -> None:
        src = self.sources[payload["source"]]
        src.level_energy += 10 ** (payload["hop_level_dbfs"] / 10)
        src.level_n += 1
        now = time.monotonic()
        if now >= src.next_level:
            self._publish(src.topics.level, _level_text(src.level_energy, src.level_n))
            src.level_energy, src.level_n = 0.0, 0
            src.next_level = max(src.next_level + self.s.level_interval_s, now)

    def event(self, event: dict) -> None:
        src = self.sources[event["source"]]
        label = slug(event["label"])
        on = event["event"] == "start"
        with self._lock:
            src.states[label] = on
        self._publish(src.topics.state(label), "ON" if on else "OFF", retain=self.s.retain)
        body = strict_json.dumps({"schema": SCHEMA, "ts": time.time(), **event})
        self._publish(src.topics.event, body)
        if on:
            self._publish(src.topics.last_detection, body, retain=self.s.retain)

    def status(self, status: dict) -> None:
        """A source's status (``status.<source>``): its availability, and its status JSON now and then."""
        src = self.sources.get(status.get("source"))
        if src is None:
            return
        online = status["state"] == "running"
        with self._lock:
            changed = online != src.online
            src.online = online
        if changed:
            self._publish(src.topics.source_availability, "online" if online else "offline", retain=True)
        now = time.monotonic()
        if changed or now >= src.next_status or status["state"] == "stopped":
            self._publish(src.topics.status, strict_json.dumps({"schema": SCHEMA, "ts": time.time(), **status}))
            src.next_status = now + self.s.status_interval_s

    def stats(self) -> dict:
        with self._lock:
            return {"connected": self.connected, **self.counts, "last_error": self.last_error}

    def summary(self) -> str:
        c = self.stats()
        return (
            f"MQTT: {c['published']} messages published, {c['queued_offline']} held while the broker was away, "
            f"{c['lost']} lost, {c['disconnects']} disconnections"
        )

    def close(self) -> None:
        """Say offline (a clean exit sends no last-will), then disconnect; at most about 1.5 s."""
        self._closing = True
        if self.connected:
            infos = [self._publish(self.bridge.bridge_availability, "offline", retain=True)]
            infos += [
                self._publish(src.topics.source_availability, "offline", retain=True)
                for src in self.sources.values()
                if src.online is not False
            ]
            deadline = time.monotonic() + 1.0
            for info in infos:
                if info is not None:
                    try:
                        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                    except (RuntimeError, ValueError):
                        pass
        self.client.disconnect()
        stopper = threading.Thread(target=self.client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(0.5)
