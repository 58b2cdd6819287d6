"""``soundwatch devices``, ``listen`` and ``subscribe``: the live line's commands."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import typer

from soundwatch.config import default_config_path, load_settings, override
from soundwatch.errors import UserError

ConfigOption = typer.Option(None, "--config", "-c", help="config.toml (default: $SOUNDWATCH_CONFIG or ./config.toml)")


def devices() -> None:
    """List the audio input devices: index, name, host API, default rate, channels."""
    from rich.console import Console
    from rich.table import Table

    from soundwatch.audio.devices import list_input_devices

    table = Table(title="Input devices")
    for col in ("index", "name", "host API", "default rate", "channels"):
        table.add_column(col)
    found = list_input_devices()
    for d in found:
        table.add_row(str(d.index), d.name, d.hostapi, f"{d.default_samplerate:g}", str(d.channels))
    Console().print(table if found else "No input devices found (no microphone, or no sound server running).")


def listen(
    device: Optional[str] = typer.Option(None, "--device", "-d", help="input device: index or name substring"),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="read a WAV/FLAC/OGG instead of a device"),
    as_fast_as_possible: bool = typer.Option(False, "--as-fast-as-possible", help="with --file: no real-time pacing"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="checkpoint (default: the shipped model)"),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="auto|torch|onnx|tensorrt"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", "-e", help="ZeroMQ PUB endpoint to bind"),
    hop_s: Optional[float] = typer.Option(None, "--hop-s", "--hop", help="seconds between windows"),
    sample_rate: Optional[int] = typer.Option(None, "--sample-rate", help="capture rate (0 = automatic)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for inference"),
    duration: Optional[float] = typer.Option(None, "--duration", help="stop after this many seconds"),
    record_input: Optional[Path] = typer.Option(None, "--record-input", help="debug tap: write the model-rate audio to this WAV"),
    dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard", help="live terminal dashboard (on a TTY)"),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Capture audio, classify sliding windows and publish scores, detections and status over ZeroMQ."""
    from soundwatch.audio.sources import FileSource, MicSource
    from soundwatch.daemon import Daemon
    from soundwatch.detect import Detector
    from soundwatch.engines import create_engine
    from soundwatch.models.checkpoint import resolve_model
    from soundwatch.publish import Publisher

    settings = load_settings(config or default_config_path())
    override(settings, "audio", device=device, sample_rate=sample_rate)
    override(settings, "listen", backend=backend, hop_s=hop_s, threads=threads,
             model=str(model) if model else None)
    override(settings, "publish", endpoint=endpoint)
    a, li, p, d = settings.audio, settings.listen, settings.publish, settings.detect

    engine = create_engine(li.backend, resolve_model(Path(li.model) if li.model else None),
                           compute=li.compute, threads=li.threads)
    if file is not None:
        source = FileSource(file, realtime=not as_fast_as_possible, blocksize=a.blocksize, ring_s=a.ring_s)
    else:
        source = MicSource(a.device, engine.sample_rate, a.sample_rate, a.channels, a.blocksize, a.ring_s, a.latency)
    publisher = Publisher(p.endpoint, source.name, p.sndhwm)
    daemon = Daemon(source, engine, publisher, Detector(engine.classes, d.threshold, d.release, d.min_level_dbfs),
                    window_s=li.window_s, hop_s=li.hop_s, max_batch=li.max_batch, top_k=li.top_k,
                    status_interval_s=p.status_interval_s, tap=record_input)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"soundwatch: listening on {source.name} ({source.rate} Hz -> {engine.sample_rate} Hz), "
          f"backend {engine.name}/{engine.precision} on {engine.device}, publishing on {publisher.bound}",
          file=sys.stderr, flush=True)
    try:
        if dashboard and sys.stdout.isatty():
            from soundwatch.dashboard import run_with_dashboard

            final = run_with_dashboard(daemon, stop, duration)
        else:
            final = daemon.run(stop, duration)
    finally:
        publisher.close()
    if getattr(source, "error", None):
        raise UserError(source.error)
    print(f"soundwatch: stopped after {final['windows']} windows, {final['input_overflows']} input overflows, "
          f"{final['dropped_windows']} dropped windows", file=sys.stderr)


def subscribe(
    endpoint: str = typer.Option("tcp://127.0.0.1:5556", "--endpoint", "-e", help="endpoint to connect to"),
    topic: list[str] = typer.Option([], "--topic", "-t", help="topic prefix (repeatable; default: all)"),
    count: int = typer.Option(0, "--count", "-n", help="exit after this many messages (0 = never)"),
    timeout: float = typer.Option(0.0, "--timeout", help="exit after this many seconds without a message (0 = never)"),
) -> None:
    """Print every message as one JSON object per line, its topic included."""
    from soundwatch.publish import receive, subscribe as connect

    sock = connect(endpoint, topic)
    seen = 0
    last = time.monotonic()
    try:
        while count == 0 or seen < count:
            got = receive(sock, 200)
            if got is None:
                if timeout and time.monotonic() - last > timeout:
                    break
                continue
            last = time.monotonic()
            print(json.dumps({"topic": got[0], **got[1]}), flush=True)
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def register(app: typer.Typer) -> None:
    """Add the live-line commands to ``app``."""
    app.command()(devices)
    app.command()(listen)
    app.command()(subscribe)
