"""What MQTT publishing costs, at the default settings: CPU per window and the delay it adds to an alert.

    python bench/bench_mqtt.py [--clips 40] [--trials 3] [--data-dir DIR]

A local Mosquitto (started here, loopback) and `soundwatch listen --file` over a scene of
ESC-50 fold-1 clips (one per class in target order, the first --clips classes, never trained
on), 2 s of silence between them, shipped model, ONNX, one thread, --as-fast-as-possible:
- (a) CPU per window of the whole `listen` process (user + system, the child's rusage) without
  and with `--mqtt`, alternating in each trial, so both see the same machine load; the
  difference is what MQTT costs (events, states, discovery and the paho network thread).
- (b) the same in one process without a model: the MQTT sink alone fed the scores payloads and
  events of a run (process CPU, paho's thread included), per window and per event, against
  one ONNX window of the shipped model timed in the same process (the reference).
- (c) delay added to an alert: for every event, its arrival on an MQTT subscriber minus its
  arrival on a ZeroMQ subscriber (both in this process, loopback).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_alert_latency import fold1_clips  # noqa: E402
from helpers import Collector, free_endpoint, free_port, soundwatch, wait_until  # noqa: E402


def make_scene(data_dir: Path, count: int, out: Path) -> int:
    parts = []
    for path, _ in fold1_clips(data_dir, count):
        audio, rate = sf.read(path, dtype="float32")
        assert rate == 16000, path
        parts += [audio, np.zeros(2 * rate, np.float32)]
    sf.write(out, np.concatenate(parts), 16000, subtype="PCM_16")
    return len(parts) // 2


def start_broker(directory: Path) -> tuple[subprocess.Popen, int]:
    import getpass
    import socket

    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser {getpass.getuser()}\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False

    assert wait_until(up, 10), "mosquitto did not start"
    return proc, port


class MqttEvents:
    """An MQTT subscriber keeping the arrival time of each event JSON."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.arrivals: dict[tuple, float] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{time.time_ns()}")
        self.client.on_connect = lambda c, *a: c.subscribe("soundwatch/+/event", qos=1)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client, userdata, msg) -> None:
        e = json.loads(msg.payload)
        self.arrivals.setdefault((e["label"], e["event"], e["start"]), time.time())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_listen(scene: Path, port: int | None, config: Path) -> dict:
    endpoint = free_endpoint()
    sub = Collector(endpoint)
    mq = MqttEvents(port) if port else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    args = [
        "listen",
        "--file",
        str(scene),
        "--as-fast-as-possible",
        "--backend",
        "onnx",
        "--threads",
        "1",
        "--endpoint",
        endpoint,
        "--no-dashboard",
        "--config",
        str(config),
    ]
    proc = soundwatch(*args, *(["--mqtt", f"mqtt://127.0.0.1:{port}"] if port else []))
    _, err = proc.communicate(timeout=1800)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, err
    final = sub.wait_stopped(10)
    events = {(p["label"], p["event"], p["start"]): ts for ts, t, p in sub.messages if t.startswith("detection.")}
    delays = []
    if mq is not None:
        wait_until(lambda: len(mq.arrivals) >= len(events), 5)
        delays = [1000 * (mq.arrivals[k] - ts) for k, ts in events.items() if k in mq.arrivals]
        assert len(delays) == len(events), f"{len(events) - len(delays)} events never reached MQTT"
        mq.close()
    sub.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "cpu_ms_per_window": 1000 * cpu / final["windows"],
        "windows": final["windows"],
        "events": len(events),
        "delays_ms": delays,
        "mqtt": final.get("mqtt"),
    }


def sink_alone(port: int, payloads: int, events: int) -> dict:
    """The MQTT sink without a model: CPU per scores payload and per event, paho's thread included."""
    from soundwatch.config import MqttSettings
    from soundwatch.engines import create_engine
    from soundwatch.integrations.mqtt import MqttSink
    from soundwatch.models.checkpoint import resolve_model

    engine = create_engine("onnx", resolve_model(None), threads=1)
    window = np.random.default_rng(0).standard_normal((1, engine.window_samples)).astype(np.float32) * 0.1
    engine.infer(window)
    t = time.process_time()
    for _ in range(50):
        engine.infer(window)
    onnx_ms = 1000 * (time.process_time() - t) / 50

    sink = MqttSink(MqttSettings(url=f"mqtt://127.0.0.1:{port}"))
    daemon = SimpleNamespace(
        engine=SimpleNamespace(classes=list(engine.classes)),
        source=SimpleNamespace(name="bench", path=Path("bench.wav")),
    )
    sink.start(daemon)
    sink.status({"state": "running"})
    payload = {"hop_level_dbfs": -40.0, "top": [{"label": "dog", "score": 0.9}]}
    t = time.process_time()
    for _ in range(payloads):
        sink.scores(payload)
    per_window = 1000 * (time.process_time() - t) / payloads
    t = time.process_time()
    for i in range(events):
        kind = "start" if i % 2 == 0 else "end"
        sink.event({"event": kind, "label": "dog", "score": 0.9, "start": float(i)})
    wait_until(lambda: sink.stats()["published"] >= 2 * events, 30)
    time.sleep(0.5)  # let paho's thread finish writing (its CPU counts)
    per_event = 1000 * (time.process_time() - t) / events
    sink.close()
    return {"onnx_ms": onnx_ms, "sink_ms_per_window": per_window, "sink_ms_per_event": per_event}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "esc50-16k")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scene = tmp / "scene.wav"
        n = make_scene(args.data_dir, args.clips, scene)
        config = tmp / "config.toml"
        config.write_text('[events]\nlog_path = ""\n')  # everything else at its default
        broker, port = start_broker(tmp)
        try:
            rows = {"without": [], "with": []}
            delays: list[float] = []
            for trial in range(args.trials):
                for mode in ("without", "with") if trial % 2 == 0 else ("with", "without"):
                    r = run_listen(scene, port if mode == "with" else None, config)
                    rows[mode].append(r)
                    delays += r["delays_ms"]
                    print(
                        f"trial {trial} {mode}: {r['cpu_ms_per_window']:.2f} ms CPU/window, {r['windows']} windows, "
                        f"{r['events']} events",
                        file=sys.stderr,
                        flush=True,
                    )
            alone = sink_alone(port, 20000, 2000)
        finally:
            broker.terminate()
            broker.wait(10)
    med = {m: statistics.median(r["cpu_ms_per_window"] for r in rs) for m, rs in rows.items()}
    windows, events = rows["with"][0]["windows"], rows["with"][0]["events"]
    d = sorted(delays)
    print(f"\nScene: {n} ESC-50 fold-1 clips, {windows} windows, {events} events per run; {args.trials} trials.\n")
    print("| measure | without MQTT | with MQTT | ratio |\n|---|---|---|---|")
    print(
        f"| (a) `listen` CPU per window (median of {args.trials}) | {med['without']:.2f} ms | {med['with']:.2f} ms | "
        f"{med['with'] / med['without']:.3f} |"
    )
    print(
        f"| (b) MQTT sink alone, per window / per event (paho thread included) | - | "
        f"{alone['sink_ms_per_window'] * 1000:.1f} us / {alone['sink_ms_per_event'] * 1000:.0f} us | "
        f"{alone['sink_ms_per_window'] / alone['onnx_ms']:.5f} / {alone['sink_ms_per_event'] / alone['onnx_ms']:.4f} "
        f"of one ONNX window ({alone['onnx_ms']:.1f} ms) |"
    )
    print(
        f"| (c) event on MQTT after ZeroMQ, median / p95 / max over {len(d)} events | - | "
        f"{d[len(d) // 2]:.2f} / {d[int(0.95 * (len(d) - 1))]:.2f} / {d[-1]:.2f} ms | - |"
    )


if __name__ == "__main__":
    main()
