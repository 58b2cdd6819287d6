"""Prometheus metrics (``--metrics-port``), served on 127.0.0.1 by prometheus_client (a dependency).

Windows processed, events by label and kind, input overflows, dropped windows, lost
samples, MQTT connection and losses, failed webhook posts (when those are on), and a histogram of the processing latency (window end captured -> published).
"""

from __future__ import annotations

from soundwatch.errors import UserError


class Metrics:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise UserError("--metrics-port needs prometheus_client: pip install prometheus-client") from exc
        self.registry = prom.CollectorRegistry()
        self.windows = prom.Counter("soundwatch_windows", "Windows classified", registry=self.registry)
        self.events = prom.Counter("soundwatch_events", "Detection events", ["label", "event"], registry=self.registry)
        self.overflows = prom.Gauge("soundwatch_input_overflows", "PortAudio input overflows", registry=self.registry)
        self.dropped = prom.Gauge(
            "soundwatch_dropped_windows", "Windows dropped (engine behind)", registry=self.registry
        )
        self.lost = prom.Gauge("soundwatch_lost_samples", "Capture samples overwritten unread", registry=self.registry)
        self.no_audio = prom.Gauge(
            "soundwatch_no_audio", "Sources whose audio is lost (0 when every source delivers)", registry=self.registry
        )
        self.mqtt_connected = prom.Gauge(
            "soundwatch_mqtt_connected", "1 while connected to the MQTT broker", registry=self.registry
        )
        self.mqtt_lost = prom.Gauge(
            "soundwatch_mqtt_lost_messages", "MQTT messages that could not be delivered", registry=self.registry
        )
        self.webhook_failed = prom.Gauge(
            "soundwatch_webhook_failed_posts", "Webhook posts that failed", registry=self.registry
        )
        self.latency = prom.Histogram(
            "soundwatch_latency_seconds",
            "Window end captured -> scores published",
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        try:
            self.server, self.thread = prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise UserError(f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror})") from exc

    def observe_status(self, status: dict) -> None:
        self.overflows.set(status["input_overflows"])
        self.dropped.set(status["dropped_windows"])
        self.lost.set(status["lost_samples"])
        self.no_audio.set(status["no_audio_sources"])
        if "mqtt" in status:
            self.mqtt_connected.set(1 if status["mqtt"]["connected"] else 0)
            self.mqtt_lost.set(status["mqtt"]["lost"])
        if "webhook" in status:
            self.webhook_failed.set(status["webhook"]["failed"])

    def close(self) -> None:
        self.server.shutdown()
