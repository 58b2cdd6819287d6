"""MQTT, Home Assistant discovery and webhooks, for real: a Mosquitto broker with a password file started
by the test on a loopback port, a paho subscriber, `soundwatch listen` as a process (the PulseAudio
virtual microphone or a file at real-time pace), loopback HTTP servers (one that answers, one that hangs).

The model is the tiny CNN the trainer fits on synthetic tones (fixture ``tones_model``: classes
class0..class3), heard in scenes of fresh clips separated by silence (test_daemon.scene).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import Broker, Collector, MqttCollector, free_endpoint, free_port, run_soundwatch, soundwatch, wait_until
from test_daemon import play, scene

PREFIX = "soundwatch"
HA = "homeassistant"


def need_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        if os.environ.get("SOUNDWATCH_REQUIRE_BROKER"):
            pytest.fail("mosquitto missing but SOUNDWATCH_REQUIRE_BROKER is set (run scripts/test.sh)")
        pytest.skip("mosquitto not installed (scripts/test.sh installs it)")


@pytest.fixture
def broker(tmp_path):
    need_mosquitto()
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def config(path: Path, broker: Broker, mqtt: str = "", extra: str = "") -> Path:
    path.write_text(
        "[detect]\nthreshold = 0.6\nmin_duration_s = 1.0\nsmooth_windows = 3\n"
        f'[events]\nlog_path = ""\n{extra}' + broker.mqtt_config(mqtt)
    )
    return path


def node(source: str) -> str:
    return f"soundwatch_{socket.gethostname().lower().replace('-', '_')}_{source}"


def configs_of(sub: MqttCollector, source: str) -> dict[str, dict]:
    """The discovery configs seen for ``source`` (the last non-empty payload of each topic)."""
    out = {}
    for _, topic, payload, _ in list(sub.messages):
        if topic.startswith(f"{HA}/") and f"/{node(source)}/" in topic and payload:
            out[topic] = json.loads(payload)
    return out


@pytest.mark.pulse
def test_home_assistant_discovery_on_off_and_last_will(pulse_mic, tones_model, broker, tmp_path):
    """Discovery configs for the listened labels; ON then OFF for a tone played through the virtual
    microphone, with its event and last detection; discovery again on Home Assistant's birth message;
    offline on the bridge's availability (the last-will) when the daemon is killed with SIGKILL."""
    model, _ = tones_model
    tone = scene(tmp_path / "tone.wav", [0], gap_s=0.5, lead_s=0.2)
    cfg = config(
        tmp_path / "config.toml", broker, 'labels = ["class0", "class2"]\nlevel_interval_s = 1.0\nkeepalive_s = 5\n'
    )
    sub = MqttCollector(broker, (f"{HA}/#", f"{PREFIX}/#"))
    zmq_sub = Collector(endpoint := free_endpoint())
    proc = soundwatch(
        "listen",
        "--device",
        "pulse",
        "--model",
        str(model),
        "--backend",
        "torch",
        "--hop",
        "0.5",
        "--endpoint",
        endpoint,
        "--no-dashboard",
        "--config",
        str(cfg),
    )
    try:
        src = "pulse"
        online = sub.wait_for(lambda t, p: t == f"{PREFIX}/{src}/availability" and p == "online", 60)
        assert online, proc.stderr.read() if proc.poll() is not None else sub.messages
        configs = configs_of(sub, src)
        n = node(src)
        assert set(configs) == {
            f"{HA}/binary_sensor/{n}/class0/config",
            f"{HA}/binary_sensor/{n}/class2/config",
            f"{HA}/event/{n}/detection/config",
            f"{HA}/sensor/{n}/level/config",
            f"{HA}/sensor/{n}/last_detection/config",
        }, list(configs)
        sensor = configs[f"{HA}/binary_sensor/{n}/class0/config"]
        assert sensor["state_topic"] == f"{PREFIX}/{src}/class0/state" and sensor["device_class"] == "sound"
        assert sensor["availability_mode"] == "all" and [a["topic"] for a in sensor["availability"]] == [
            f"{PREFIX}/bridge/availability",
            f"{PREFIX}/{src}/availability",
        ]
        assert sensor["device"]["identifiers"] == [n] and sensor["device"]["via_device"] == n.rsplit("_pulse", 1)[0]
        assert configs[f"{HA}/event/{n}/detection/config"]["event_types"] == ["class0", "class2"]
        assert len({c["unique_id"] for c in configs.values()}) == 5
        bridge = sub.wait_for(
            lambda t, p: t.startswith(f"{HA}/binary_sensor/") and t.endswith("/connectivity/config"), 5
        )
        assert bridge and json.loads(bridge[2])["state_topic"] == f"{PREFIX}/bridge/availability"
        assert sub.wait_for(lambda t, p: t == f"{PREFIX}/{src}/level" and float(p) < -60, 10), "no level"

        played = time.time()
        play(tone).wait(timeout=20)
        state = f"{PREFIX}/{src}/class0/state"
        on = sub.wait_for(lambda t, p: t == state and p == "ON", 20)
        assert on is not None, sub.payloads(state)
        off = wait_until(
            lambda: next((m for m in sub.messages if m[1] == state and m[2] == "OFF" and m[0] > on[0]), None), 20
        )
        assert off is not None, sub.payloads(state)
        # the end's JSON goes out on its own topic right after the OFF state: wait for it, do not race it
        ended = wait_until(lambda: any('"end"' in p for p in sub.payloads(f"{PREFIX}/{src}/event")), 10)
        events = [json.loads(p) for p in sub.payloads(f"{PREFIX}/{src}/event")]
        assert ended and [(e["label"], e["event"]) for e in events] == [("class0", "start"), ("class0", "end")], events
        assert zmq_sub.wait_for(lambda t, p: t.startswith("detection.") and p["event"] == "end", 10)
        zmq_events = [p for _, t, p in zmq_sub.messages if t.startswith("detection.")]
        assert [(e["start"], e["event"]) for e in events] == [(e["start"], e["event"]) for e in zmq_events]
        assert json.loads(sub.payloads(f"{PREFIX}/{src}/last_detection")[-1])["label"] == "class0"
        assert on[0] > played

        # Home Assistant restarts: its birth message brings the configs again.
        def sensor_configs() -> int:
            return len([m for m in sub.messages if m[1].startswith(f"{HA}/binary_sensor/{n}/")])

        before = sensor_configs()
        sub.publish(f"{HA}/status", "online")
        assert wait_until(lambda: sensor_configs() >= before + 2, 10), (
            "discovery not sent again after the birth message"
        )

        # A late subscriber (Home Assistant starting now) gets the retained states and configs.
        late = MqttCollector(broker, (f"{PREFIX}/#", f"{HA}/#"))
        try:
            assert late.wait_for(lambda t, p: t == state and p == "OFF", 5)
            # retained messages come per subscription: the configs may follow the state
            assert wait_until(lambda: len(configs_of(late, src)) == 5, 5), configs_of(late, src)

            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            offline = late.wait_for(lambda t, p: t == f"{PREFIX}/bridge/availability" and p == "offline", 10)
            assert offline is not None, "the broker did not publish the daemon's last-will"
        finally:
            late.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
        zmq_sub.close()


def test_broker_restart_loses_no_detection_and_never_stalls_zeromq(tones_model, tmp_path, request):
    """The broker stops mid-run (while an event lasts) and comes back on the same port: every detection
    reaches an MQTT subscriber with a persistent session (those during the outage after reconnection),
    the ZeroMQ `scores` stream never pauses, and status counts the outage."""
    need_mosquitto()
    model, _ = tones_model
    broker = Broker(tmp_path / "broker", persistence=True).start()
    request.addfinalizer(broker.stop)  # whatever fails below, no broker is left running
    wav = scene(tmp_path / "scene.wav", [0, 2, 1], gap_s=2.0, lead_s=2.0)
    cfg = config(
        tmp_path / "config.toml",
        broker,
        'labels = ["*"]\nreconnect_max_s = 1.0\n',
        extra="[publish]\nstatus_interval_s = 0.5\n",
    )
    sub = MqttCollector(broker, (f"{PREFIX}/+/event",), client_id="persistent-subscriber", persistent=True)
    zmq_sub = Collector(endpoint := free_endpoint())
    metrics = free_port()
    key = lambda e: (e["label"], e["event"], e["start"])  # noqa: E731  an event's identity
    proc = soundwatch(
        "listen",
        "--file",
        str(wav),
        "--model",
        str(model),
        "--backend",
        "torch",
        "--hop",
        "0.5",
        "--endpoint",
        endpoint,
        "--no-dashboard",
        "--config",
        str(cfg),
        "--metrics-port",
        str(metrics),
    )

    def connected_gauge() -> str:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2).read().decode()
        return next(line for line in text.splitlines() if line.startswith("soundwatch_mqtt_connected "))

    try:
        first = zmq_sub.wait_for(lambda t, p: t.startswith("detection.") and p["event"] == "start", 60)
        assert first is not None, proc.stderr.read() if proc.poll() is not None else "no detection"
        assert connected_gauge() == "soundwatch_mqtt_connected 1.0"
        # Stop only once the subscriber has this start: one stopped with it in flight may redeliver it
        # (QoS 1 is at-least-once), which is MQTT working, not the outage path this test is about.
        assert sub.wait_for(lambda t, p: key(json.loads(p)) == key(first[2]), 10) is not None
        broker.stop()
        down = zmq_sub.wait_for(lambda t, p: t == "status" and p["mqtt"]["connected"] is False, 10)
        assert down is not None
        assert connected_gauge() == "soundwatch_mqtt_connected 0.0"
        # Down until the first event has ended (a detection the daemon must hold), then back on the same port.
        ended = zmq_sub.wait_for(lambda t, p: t.startswith("detection.") and p["event"] == "end", 20)
        assert ended is not None, "the first event never ended"
        broker.start()
        up = zmq_sub.wait_for(lambda t, p: t == "status" and p["ts"] > down[2]["ts"] and p["mqtt"]["connected"], 15)
        assert up is not None, "the daemon did not reconnect"
        assert proc.wait(timeout=90) == 0, proc.stderr.read()
        final = zmq_sub.wait_stopped()
    finally:
        if proc.poll() is None:
            proc.kill()
        zmq_sub.close()
    detections = [p for _, t, p in zmq_sub.messages if t.startswith("detection.")]
    during = [p for p in detections if down[2]["ts"] <= p["ts"] <= up[2]["ts"]]
    assert during, "no detection happened while the broker was down: the test proves nothing"
    try:
        wanted = set(map(key, detections))
        got = lambda: {key(json.loads(p)) for p in sub.payloads(f"{PREFIX}/scene/event")}  # noqa: E731
        assert wait_until(lambda: got() >= wanted, 10), (
            len(detections),
            sub.payloads(f"{PREFIX}/scene/event"),
        )
    finally:
        sub.close()
        broker.stop()
    received = [json.loads(p) for p in sub.payloads(f"{PREFIX}/scene/event")]
    # Every detection arrives, and nothing else; QoS 1 allows a repeat (the key tells a subscriber).
    assert set(map(key, received)) == set(map(key, detections)), (received, detections)
    assert len(set(map(key, detections))) == len(detections), "two detections share a key"
    # The scores stream went on at its pace through the outage (hop 0.5 s, file at real-time pace).
    scores = [ts for ts, t, _ in zmq_sub.messages if t.startswith("scores.")]
    gaps = [b - a for a, b in zip(scores, scores[1:])]
    assert max(gaps) < 0.5 + 0.4, max(gaps)
    m = final["mqtt"]
    assert m["connects"] == 2 and m["disconnects"] == 1 and m["lost"] == 0 and m["queued_offline"] >= len(during)
    assert m["connected"] is True


def test_bad_credentials_and_settings_fail_clearly_and_an_absent_broker_does_not(tones_model, broker, tmp_path):
    model, _ = tones_model
    wav = scene(tmp_path / "s.wav", [0], gap_s=1.0, lead_s=1.0)
    base = (
        "listen",
        "--file",
        str(wav),
        "--as-fast-as-possible",
        "--model",
        str(model),
        "--backend",
        "torch",
        "--no-dashboard",
        "--endpoint",
        free_endpoint(),
    )
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[mqtt]\nusername = "sw"\npassword_file = "{wrong}"\n')
    r = run_soundwatch(*base, "--mqtt", broker.url, "--config", str(cfg))
    assert r.returncode == 2 and "refused the connection: Not authorized" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "password_file" in r.stderr

    r = run_soundwatch(*base, "--mqtt", f"mqtt://sw:secret@127.0.0.1:{broker.port}")
    assert r.returncode == 2 and "holds a password" in r.stderr and "secret" not in r.stderr, r.stderr

    r = run_soundwatch(*base, "--config", str(config(tmp_path / "l.toml", broker, 'labels = ["class0", "dog"]\n')))
    assert r.returncode == 2 and "dog not among the model's labels" in r.stderr and "class3" in r.stderr, r.stderr

    missing = tmp_path / "m.toml"
    missing.write_text(f'[mqtt]\nurl = "{broker.url}"\nusername = "sw"\npassword_file = "{tmp_path}/nope"\n')
    r = run_soundwatch(*base, "--config", str(missing))
    assert r.returncode == 2 and "password_file" in r.stderr and "No such file" in r.stderr, r.stderr

    # No broker at all: a warning, and detection runs to the end; the loss is on status.
    endpoint = free_endpoint()
    zmq_sub = Collector(endpoint)
    r = run_soundwatch(*base[:-1], endpoint, "--mqtt", "mqtt://127.0.0.1:1", "--config", str(cfg))
    zmq_sub.wait_stopped()
    zmq_sub.close()
    assert r.returncode == 0, r.stderr
    assert "cannot be reached (Connection refused)" in r.stderr and "detection goes on" in r.stderr
    final = zmq_sub.of("status")[-1]
    assert final["windows"] > 0 and final["mqtt"]["connected"] is False and final["mqtt"]["published"] == 0
    assert final["mqtt"]["queued_offline"] > 0


def test_labels_no_longer_listened_are_removed_from_home_assistant(tones_model, broker, tmp_path):
    model, _ = tones_model
    wav = scene(tmp_path / "s.wav", [3], gap_s=0.5, lead_s=0.5)
    sub = MqttCollector(broker, (f"{HA}/#",))
    n = node("s")
    for labels in ('["class0", "class2"]', '["class0"]'):
        cfg = config(tmp_path / "c.toml", broker, f"labels = {labels}\n")
        r = run_soundwatch(
            "listen",
            "--file",
            str(wav),
            "--as-fast-as-possible",
            "--model",
            str(model),
            "--backend",
            "torch",
            "--no-dashboard",
            "--endpoint",
            free_endpoint(),
            "--config",
            str(cfg),
        )
        assert r.returncode == 0, r.stderr
    removed = sub.wait_for(lambda t, p: t == f"{HA}/binary_sensor/{n}/class2/config" and p == "", 10)
    sub.close()
    assert removed is not None, [m[1:3] for m in sub.messages if "class2" in m[1]]
    late = MqttCollector(broker, (f"{HA}/#",))
    try:  # what Home Assistant finds when it starts now: class0's entities, no class2
        assert late.wait_for(lambda t, p: t == f"{HA}/binary_sensor/{n}/class0/config", 5)
        assert f"{HA}/binary_sensor/{n}/class2/config" not in configs_of(late, "s")
    finally:
        late.close()


def test_event_entity_template_gives_home_assistant_event_types():
    """The event entity's value_template, rendered as Home Assistant renders it (Jinja2 with its to_json
    filter): an event for the start of a listened label, nothing (ignored by HA) otherwise."""
    import jinja2

    from soundwatch.integrations.homeassistant import event_template

    env = jinja2.Environment()
    env.filters["to_json"] = json.dumps
    template = env.from_string(event_template(["dog", "siren"]))
    start = {"event": "start", "label": "dog", "score": 0.91, "start": 1.5}
    assert json.loads(template.render(value_json=start)) == {"event_type": "dog", "score": 0.91, "start": 1.5}
    assert template.render(value_json={**start, "event": "end"}).strip() == ""
    assert template.render(value_json={**start, "label": "rain"}).strip() == ""


class _Hook(BaseHTTPRequestHandler):
    received: list = []
    auth: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        type(self).auth.append(self.headers.get("Authorization"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_posts_events_with_a_cooldown_and_a_hanging_server_holds_nothing_up(tones_model, tmp_path):
    """Starts are posted as JSON, one per label within the cool-down; a server that accepts and never
    answers (timeout 30 s) delays neither detection nor the exit; a password in its URL is never shown."""
    model, _ = tones_model
    received: list = []
    auth: list = []
    handler = type("Hook", (_Hook,), {"received": received, "auth": auth})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hang = socket.socket()  # the kernel accepts its connections; nobody ever answers
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    good = f"http://bob:s%40fe@127.0.0.1:{server.server_address[1]}/hook"  # Basic auth, password "s@fe"
    hanging = f"http://user:hunter2@127.0.0.1:{hang.getsockname()[1]}/hook"
    wav = scene(tmp_path / "s.wav", [0, 0, 2], gap_s=7.0, lead_s=1.0)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[detect]\nthreshold = 0.6\nmin_duration_s = 1.0\nsmooth_windows = 3\n[events]\nlog_path = ""\n'
        "[webhook]\ncooldown_s = 600.0\ntimeout_s = 30.0\n"
    )
    endpoint = free_endpoint()
    zmq_sub = Collector(endpoint)
    started = time.time()
    proc = soundwatch(
        "listen",
        "--file",
        str(wav),
        "--as-fast-as-possible",
        "--model",
        str(model),
        "--backend",
        "torch",
        "--hop",
        "0.5",
        "--endpoint",
        endpoint,
        "--no-dashboard",
        "--config",
        str(cfg),
        "--webhook",
        good,
        "--webhook",
        hanging,
    )
    try:
        assert proc.wait(timeout=90) == 0, proc.stderr.read()
        elapsed = time.time() - started
        stderr = proc.stderr.read()
        final = zmq_sub.wait_stopped()
    finally:
        if proc.poll() is None:
            proc.kill()
        zmq_sub.close()
        server.shutdown()
        hang.close()
    starts = [p for _, t, p in zmq_sub.messages if t.startswith("detection.") and p["event"] == "start"]
    assert [p["label"] for p in starts] == ["class0", "class0", "class2"], starts
    # The second class0 start falls within the cool-down: one post per label, its body the event's JSON.
    assert [(path, kind, body["label"], body["event"]) for path, kind, body in received] == [
        ("/hook", "application/json", "class0", "start"),
        ("/hook", "application/json", "class2", "start"),
    ]
    assert [body["start"] for _, _, body in received] == [starts[0]["start"], starts[2]["start"]]
    assert all(body["source"] == "s" and body["schema"] == 1 for _, _, body in received)
    assert auth == ["Basic " + base64.b64encode(b"bob:s@fe").decode()] * 2
    # Had a post to the hanging server held the daemon, this run would have taken 30 s or more.
    assert elapsed < 25, elapsed
    assert final["windows"] > 60 and final["dropped_windows"] == 0
    assert "webhooks: 2 sent, 0 failed, 2 abandoned at exit, 2 within the cool-down" in stderr, stderr
    assert "hunter2" not in stderr and "hunter2" not in json.dumps(zmq_sub.messages) and "s%40fe" not in stderr


def test_each_source_is_a_home_assistant_device_of_the_bridge(tones_model, broker, tmp_path):
    """Two sources in one process: a device each, linked to one bridge, with their own state topics."""
    model, _ = tones_model
    wav = scene(tmp_path / "s.wav", [0], gap_s=6.0, lead_s=1.0)
    sub = MqttCollector(broker, (f"{HA}/#", f"{PREFIX}/#"))
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[detect]\nthreshold = 0.6\nmin_duration_s = 1.0\nsmooth_windows = 3\n[events]\nlog_path = ""\n'
        f'[[sources]]\nname = "kitchen"\nkind = "file"\npath = "{wav}"\n'
        f'[[sources]]\nname = "hall"\nkind = "file"\npath = "{wav}"\n' + broker.mqtt_config('labels = ["class0"]\n')
    )
    r = run_soundwatch(
        "listen",
        "--as-fast-as-possible",
        "--model",
        str(model),
        "--backend",
        "torch",
        "--no-dashboard",
        "--endpoint",
        free_endpoint(),
        "--config",
        str(cfg),
    )
    assert r.returncode == 0, r.stderr
    try:
        for src in ("kitchen", "hall"):
            assert sub.wait_for(lambda t, p, s=src: t == f"{PREFIX}/{s}/class0/state" and p == "OFF", 10)
        ons = {
            src: sub.wait_for(lambda t, p, s=src: t == f"{PREFIX}/{s}/class0/state" and p == "ON", 10)
            for src in ("kitchen", "hall")
        }
    finally:
        sub.close()
    assert all(ons.values()), ons
    devices = {}
    for src in ("kitchen", "hall"):
        config = configs_of(sub, src)[f"{HA}/binary_sensor/{node(src)}/class0/config"]
        assert config["state_topic"] == f"{PREFIX}/{src}/class0/state"
        devices[src] = config["device"]
    assert devices["kitchen"]["identifiers"] != devices["hall"]["identifiers"]
    assert devices["kitchen"]["via_device"] == devices["hall"]["via_device"]


def test_home_assistant_entities_follow_a_watch_list(tones_model, broker, tmp_path):
    """[detect] labels = ["class3"] and [mqtt] labels left at its default: Home Assistant gets class3's
    entities and no others (the others never start an event); [mqtt] labels named by the user win."""
    model, _ = tones_model
    seen = {}
    for name, mqtt in (("watch", ""), ("named", 'labels = ["class0"]\n')):  # a file of its own: a node of its own
        wav = scene(tmp_path / f"{name}.wav", [3], gap_s=0.5, lead_s=0.5)
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(
            '[detect]\nthreshold = 0.6\nlabels = ["class3"]\n[events]\nlog_path = ""\n'
            + broker.mqtt_config(f'client_id = "{name}"\n' + mqtt)
        )
        r = run_soundwatch(
            "listen", "--file", str(wav), "--as-fast-as-possible", "--model", str(model), "--backend", "torch",
            "--no-dashboard", "--endpoint", free_endpoint(), "--config", str(cfg),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        late = MqttCollector(broker, (f"{HA}/#",))
        try:  # the retained discovery configs, as Home Assistant finds them when it starts
            assert late.wait_for(lambda t, p: t.startswith(f"{HA}/binary_sensor/{node(name)}/") and p, 5)
            seen[name] = {t.split("/")[3] for t in configs_of(late, name) if "/binary_sensor/" in t}
        finally:
            late.close()
    assert seen == {"watch": {"class3"}, "named": {"class0"}}
