"""``soundwatch devices``, ``listen`` and ``subscribe``: the live line's commands."""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import typer

from soundwatch.config import default_config_path, load_settings, override
from soundwatch.errors import ConfigError, UserError, check_json_output, check_new_file, check_output_file

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


def _warn(message: str) -> None:
    print(f"soundwatch: warning: {message}", file=sys.stderr, flush=True)


def _warn_about_exposure(settings) -> None:
    """Warn (not refuse) about settings that are allowed but leave data open to others."""
    from soundwatch.publish import is_local

    p, clips = settings.publish, settings.events.clips_dir
    if clips:
        path = Path(clips).expanduser()
        if path.is_symlink():
            _warn(
                f"clips directory {path} is a symlink (to {os.readlink(path)}): clips go wherever it points, "
                "and whoever can change the link can redirect them"
            )
        elif path.is_dir() and path.stat().st_mode & stat.S_IWOTH:
            _warn(
                f"clips directory {path} is world-writable: any user of this machine can add, replace or "
                "remove files there"
            )
    if p.insecure and not p.curve_secret_key and not is_local(p.endpoint):
        _warn(
            f"--insecure: {p.endpoint} publishes without encryption beyond loopback: anyone on the network "
            "can read the detections"
        )


def _close_sinks(sinks) -> None:
    for sink in sinks:
        try:
            sink.close()
        except Exception as exc:  # noqa: BLE001 - closing one must not keep the others open
            _warn(f"closing {sink.name}: {exc}")


def _stopped_before_start(daemon) -> dict:
    """A signal came while the model loaded: publish a last ``status`` and release what was opened."""
    daemon.t0 = time.time()
    daemon.state = "stopped"
    for lane in daemon.lanes:
        lane.t0, lane.state = daemon.t0, "stopped"
    final = daemon._publish_status()
    for lane in daemon.lanes:
        lane.source.stop()
        lane.windower.close()
    return final


def source_specs(settings, devices=(), files=(), streams=()) -> list:
    """What to listen to: the command line's --device/--file/--stream (each repeatable, mixed), else the
    config's [[sources]], else the one device of [audio] device."""
    from soundwatch.config import SourceSettings

    if devices or files or streams:
        return (
            [SourceSettings(kind="device", device=str(d)) for d in devices]
            + [SourceSettings(kind="file", path=str(f)) for f in files]
            + [SourceSettings(kind="stream", url=u) for u in streams]
        )
    if settings.sources:
        return list(settings.sources)
    return [SourceSettings(kind="device", device=settings.audio.device)]


def _open_source(spec, settings, model_rate: int, realtime: bool):
    from soundwatch.audio.sources import FileSource, MicSource, StreamSource

    a = settings.audio
    if spec.kind == "file":
        return FileSource(Path(spec.path), realtime=realtime, blocksize=a.blocksize, ring_s=a.ring_s)
    if spec.kind == "stream":
        return StreamSource(spec.url, model_rate, ring_s=a.ring_s, read_timeout_s=a.no_audio_timeout_s)
    return MicSource(spec.device, model_rate, a.sample_rate, a.channels, a.blocksize, a.ring_s, a.latency)


def _build_daemon(settings, publisher, specs, realtime: bool, record_input: Path | None, engine=None, sinks=()):
    """Model, sources with their detectors, event log, clips and metrics from ``settings``, around ``publisher``.

    ``specs``: the sources (``source_specs``; a path: that one file). ``engine``: an engine already loaded
    from the same settings, reused (eval-scenes runs many files)."""
    import dataclasses
    from functools import partial

    from soundwatch.config import SourceSettings
    from soundwatch.daemon import Daemon, Lane, Recovery
    from soundwatch.detect import detector_from_settings, resolve_thresholds, resolve_view
    from soundwatch.engines import create_engine
    from soundwatch.events import ClipRecorder, EventLog
    from soundwatch.integrations import source_id
    from soundwatch.models.card import read_card, resolve_model
    from soundwatch.music import resolve_music

    if isinstance(specs, (str, Path)):
        specs = [SourceSettings(kind="file", path=str(specs))]
    a, li, p, ev = settings.audio, settings.listen, settings.publish, settings.events
    if record_input is not None and len(specs) > 1:
        raise UserError("--record-input taps one source; give one --device, --file or --stream with it")
    checkpoint = resolve_model(Path(li.model) if li.model else None)
    # Every source's detector settings are checked against the model's card before the engine is built: a
    # misspelt label or a foreign thresholds file is refused at once, not after a first-run export.
    classes = engine.classes if engine is not None else read_card(checkpoint).classes
    detection = []
    for number, spec in enumerate(specs, 1):
        d = dataclasses.replace(settings.detect, **spec.detect)
        try:
            threshold = resolve_thresholds(d.thresholds_file, checkpoint, classes, d.threshold)
            music = resolve_music(d, checkpoint, classes)
            detection.append(
                (
                    d,
                    detector_from_settings(d, classes, threshold, li.hop_s, music),
                    resolve_view(d, checkpoint, li.hop_s),
                )
            )
        except ConfigError as exc:  # with [sources.detect] overrides: say which source (never its URL)
            if not spec.detect:
                raise
            named = f" ({spec.name})" if spec.name else ""
            raise ConfigError(f"[[sources]] #{number}{named}, with its [sources.detect]: {exc}") from exc
    engine = engine or create_engine(
        li.backend,
        checkpoint,
        compute=li.compute,
        threads=li.threads,
        **({} if li.precision == "auto" else {"precision": li.precision}),
    )
    lanes, opened = [], []
    try:
        for spec, (d, detector, view_s) in zip(specs, detection):
            vad = None
            if d.vad:
                from soundwatch.vad import SpeechDetector

                vad = SpeechDetector(engine.sample_rate, threads=1)
            source = _open_source(spec, settings, engine.sample_rate, realtime)
            opened.append(source)
            sid = spec.name or source_id(source)
            taken = {lane.id for lane in lanes}
            if sid in taken:
                sid = next(f"{sid}_{k}" for k in range(2, len(specs) + 2) if f"{sid}_{k}" not in taken)
            clips_dir = Path(ev.clips_dir).expanduser() / (sid if len(specs) > 1 else "")
            clips = (
                partial(
                    ClipRecorder,
                    clips_dir,
                    pre_roll_s=ev.pre_roll_s,
                    post_roll_s=ev.post_roll_s,
                    max_clips=ev.max_clips,
                    max_bytes=ev.max_clip_bytes,
                    privacy=ev.privacy,
                )
                if ev.clips_dir
                else None
            )
            lanes.append(
                Lane(
                    source,
                    sid,
                    detector,
                    model_rate=engine.sample_rate,
                    window_samples=engine.window_samples,
                    window_s=li.window_s,
                    hop_s=li.hop_s,
                    tap=record_input,
                    clips=clips,
                    recovery=Recovery(a.no_audio_timeout_s, a.reopen_backoff_max_s),
                    pre_roll_s=ev.pre_roll_s if ev.clips_dir else 0.0,
                    vad=vad,
                    gain=10 ** (spec.gain_db / 20),
                    view_s=view_s,
                )
            )
    except BaseException:
        for source in opened:
            source.stop()
        raise
    publisher.source = lanes[0].id if len(lanes) == 1 else ""
    metrics = None
    if p.metrics_port:
        from soundwatch.metrics import Metrics

        metrics = Metrics(p.metrics_port)
    return Daemon(
        engine,
        publisher,
        lanes,
        max_batch=li.max_batch,
        top_k=li.top_k,
        status_interval_s=p.status_interval_s,
        event_log=EventLog(ev.log_path, ev.log_max_bytes, ev.log_backups) if ev.log_path else None,
        metrics=metrics,
        sinks=sinks,
    )


def listen(
    device: list[str] = typer.Option([], "--device", "-d", help="input device: index or name substring (repeatable)"),
    file: list[Path] = typer.Option([], "--file", "-f", help="read a WAV/FLAC/OGG instead of a device (repeatable)"),
    stream: list[str] = typer.Option(
        [], "--stream", "-s", help="a network stream: rtsp://, http://, anything FFmpeg opens (repeatable)"
    ),
    as_fast_as_possible: bool = typer.Option(False, "--as-fast-as-possible", help="with --file: no real-time pacing"),
    wait_for_subscriber: float = typer.Option(
        0.0,
        "--wait-for-subscriber",
        metavar="SECONDS",
        help="before the audio starts, wait up to this long for a first subscriber, so a short --file is not "
        "published before anyone listens (0 = do not wait)",
    ),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="checkpoint (default: the shipped model)"),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="auto|torch|onnx|tensorrt"),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto|fp32|fp16|int8"),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", "-e", help="ZeroMQ PUB endpoint to bind"),
    hop_s: Optional[float] = typer.Option(None, "--hop-s", "--hop", help="seconds between windows"),
    sample_rate: Optional[int] = typer.Option(None, "--sample-rate", help="capture rate (0 = automatic)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for inference"),
    duration: Optional[float] = typer.Option(None, "--duration", help="stop after this many seconds"),
    record_input: Optional[Path] = typer.Option(
        None,
        "--record-input",
        help="write the model-rate audio to this new .wav (float32) or .flac (24-bit); strftime codes such as "
        "%Y%m%d-%H%M in the name are filled in at start; an existing file is never overwritten",
    ),
    dashboard: bool = typer.Option(True, "--dashboard/--no-dashboard", help="live terminal dashboard (on a TTY)"),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", help="per-class thresholds JSON"),
    event_log: Optional[str] = typer.Option(None, "--event-log", help='JSONL event log path ("" = off)'),
    clips_dir: Optional[str] = typer.Option(None, "--clips-dir", help="write a WAV per event here"),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Prometheus metrics on 127.0.0.1:PORT"),
    curve_secret_key: Optional[str] = typer.Option(None, "--curve-secret-key", help="server .key_secret: CURVE on"),
    curve_clients_dir: Optional[str] = typer.Option(None, "--curve-clients-dir", help="authorised client keys"),
    insecure: Optional[bool] = typer.Option(None, "--insecure", help="allow a non-loopback endpoint without CURVE"),
    mqtt: Optional[str] = typer.Option(
        None,
        "--mqtt",
        help='also publish to this MQTT broker: mqtt://HOST[:PORT] or mqtts://... ([mqtt] in config.toml; "" = off)',
    ),
    webhook: list[str] = typer.Option(
        [], "--webhook", help="POST each event start's JSON to this http(s) URL (repeatable; replaces [webhook] urls)"
    ),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Capture audio, classify sliding windows and publish scores, detections and status over ZeroMQ
    (and MQTT, webhooks)."""
    from soundwatch.integrations import build_sinks
    from soundwatch.publish import Publisher

    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise UserError(f"--duration: a number of seconds > 0, got {duration}")
    if not (math.isfinite(wait_for_subscriber) and wait_for_subscriber >= 0):
        raise UserError(f"--wait-for-subscriber: a number of seconds >= 0 (0 = do not wait), got {wait_for_subscriber}")
    settings = load_settings(config or default_config_path())
    override(settings, "audio", sample_rate=sample_rate)
    override(
        settings,
        "listen",
        backend=backend,
        precision=precision,
        hop_s=hop_s,
        threads=threads,
        model=str(model) if model else None,
    )
    override(
        settings,
        "publish",
        endpoint=endpoint,
        metrics_port=metrics_port,
        insecure=insecure,
        curve_secret_key=curve_secret_key,
        curve_clients_dir=curve_clients_dir,
    )
    override(settings, "detect", thresholds_file=str(thresholds) if thresholds else None)
    override(settings, "events", log_path=event_log, clips_dir=clips_dir)
    override(settings, "mqtt", url=mqtt)
    override(settings, "webhook", urls=tuple(webhook) if webhook else None)
    p = settings.publish
    if record_input is not None:
        from soundwatch.audio.windows import tap_format

        if "%" in str(record_input):  # room-%Y%m%d-%H%M.flac: a new file each time
            record_input = Path(time.strftime(str(record_input)))
        check_output_file("--record-input", record_input)
        check_new_file(
            "--record-input",
            record_input,
            "a recording is never overwritten (it may be one you made, or the file being listened to): "
            "give a new name, e.g. with the date in it: room-%Y%m%d-%H%M.flac",
        )
        tap_format(record_input)
    specs = source_specs(settings, device, file, stream)
    for spec in specs:  # a missing, unreadable or undecodable file fails now, not after the model loads
        if spec.kind == "file":
            from soundwatch.audio.sources import open_sound_file

            open_sound_file(Path(spec.path)).close()
        if spec.kind == "stream" and "://" not in spec.url:
            raise UserError(f"--stream {spec.url!r}: expected a URL such as rtsp://HOST/PATH or http://HOST/PATH")

    # Signals set `stop` from here on: SIGTERM while the model loads ends cleanly, after it.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from soundwatch.engines import graphs

    graphs.stop_waiting = stop.is_set  # waiting for another process's export of the model: stop at once
    # Bind first: subscribers connect while the model loads, so they miss nothing of a short file.
    publisher = Publisher(
        p.endpoint,
        "",
        p.sndhwm,
        curve_secret_key=p.curve_secret_key,
        curve_clients_dir=p.curve_clients_dir,
        insecure=p.insecure,
    )
    _warn_about_exposure(settings)
    sinks = []
    try:
        sinks = build_sinks(settings)  # MQTT connects while the model loads
        daemon = _build_daemon(settings, publisher, specs, not as_fast_as_possible, record_input, sinks=sinks)
    except BaseException as exc:
        publisher.close(linger=0)
        _close_sinks(sinks)
        if not isinstance(exc, graphs.BuildWaitStopped):
            raise
        print(f"soundwatch: {exc}; nothing was listened to", file=sys.stderr)  # a stop while waiting: exit 0
        return
    engine, metrics = daemon.engine, daemon.metrics
    # Everything loaded so far (torch, the model, the engine) lives as long as the process. Freezing it keeps
    # the collector from walking it again: not on each full collection while listening, and not at exit,
    # where collecting torch's objects took 0.7 s of a 0.8 s SIGTERM-to-exit (2 s on a loaded CI machine).
    gc.freeze()

    try:
        for sink in sinks:
            sink.start(daemon)
        if stop.is_set():
            final = _stopped_before_start(daemon)
        else:
            heard = ", ".join(f"{lane.id} = {lane.source.name} ({lane.source.rate} Hz)" for lane in daemon.lanes[:4])
            if len(daemon.lanes) > 4:
                heard += f" and {len(daemon.lanes) - 4} more sources"
            print(
                f"soundwatch: listening on {heard} -> {engine.sample_rate} Hz, backend {engine.name}/"
                f"{engine.precision} on {engine.device}, publishing on {publisher.bound}",
                file=sys.stderr,
                flush=True,
            )
            _wait_for_subscriber(publisher, wait_for_subscriber, stop)
            if dashboard and sys.stdout.isatty():
                from soundwatch.dashboard import run_with_dashboard

                final = run_with_dashboard(daemon, stop, duration)
            else:
                final = daemon.run(stop, duration)
    finally:
        publisher.close()
        _close_sinks(sinks)
        if daemon.event_log is not None:
            daemon.event_log.close()
        if metrics is not None:
            metrics.close()
    errors = [lane.source.error for lane in daemon.lanes if getattr(lane.source, "error", None)]
    if errors:
        raise UserError("; ".join(errors))
    print(
        f"soundwatch: stopped after {final['windows']} windows, {final['input_overflows']} input overflows, "
        f"{final['dropped_windows']} dropped windows",
        file=sys.stderr,
    )
    for sink in sinks:
        print(f"soundwatch: {sink.summary()}", file=sys.stderr)


def _wait_for_subscriber(publisher, seconds: float, stop: threading.Event) -> None:
    if seconds <= 0 or stop.is_set():
        return
    print(f"soundwatch: waiting up to {seconds:g} s for a subscriber on {publisher.bound}", file=sys.stderr, flush=True)
    if publisher.wait_for_subscriber(seconds, stop):
        print("soundwatch: a subscriber joined; starting", file=sys.stderr, flush=True)
    elif not stop.is_set():
        print(
            f"soundwatch: no subscriber joined within {seconds:g} s; starting anyway "
            "(events still go to the event log and other sinks)",
            file=sys.stderr,
            flush=True,
        )


def subscribe(
    endpoint: str = typer.Option("tcp://127.0.0.1:5556", "--endpoint", "-e", help="endpoint to connect to"),
    topic: list[str] = typer.Option([], "--topic", "-t", help="topic prefix (repeatable; default: all)"),
    count: int = typer.Option(0, "--count", "-n", help="exit after this many messages (0 = never)"),
    timeout: float = typer.Option(0.0, "--timeout", help="exit after this many seconds without a message (0 = never)"),
    server_key: str = typer.Option("", "--server-key", help="server's public .key file: connect with CURVE"),
    client_key: str = typer.Option("", "--client-key", help="this client's .key_secret file (with --server-key)"),
) -> None:
    """Print every message as one JSON object per line, its topic included.

    A message that breaks the contract (not two frames, a topic that is not UTF-8, a body that is
    not a strict JSON object) is reported on stderr, counted, and skipped."""
    from soundwatch.publish import MalformedMessage, receive
    from soundwatch.publish import subscribe as connect

    if count < 0:
        raise UserError(f"--count: a number of messages >= 0 (0 = never stop), got {count}")
    if not (math.isfinite(timeout) and timeout >= 0):
        raise UserError(f"--timeout: a number of seconds >= 0 (0 = never), got {timeout}")
    sock = connect(endpoint, topic, server_key=server_key, client_secret_key=client_key)
    seen = malformed = 0
    last = time.monotonic()
    try:
        while count == 0 or seen < count:
            try:
                got = receive(sock, 200)
            except MalformedMessage as exc:
                malformed += 1
                print(f"soundwatch: skipped malformed message: {exc}", file=sys.stderr, flush=True)
                last = time.monotonic()
                continue
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
        if malformed:
            print(f"soundwatch: {malformed} malformed message{'s' * (malformed != 1)} skipped", file=sys.stderr)


def keys(
    out: Path = typer.Option(Path("soundwatch-keys"), "--out", "-o", help="directory for the key files"),
    force: bool = typer.Option(False, "--force", help="replace key files that already exist"),
) -> None:
    """Generate CURVE key pairs (server and client) for publishing beyond loopback."""
    from soundwatch.publish import make_keys

    made = make_keys(out, force=force)
    print(
        f"server secret key:   {made['server_secret']}   (listen --curve-secret-key)\n"
        f"server public key:   {made['server_public']}   (give to subscribers: subscribe --server-key)\n"
        f"client secret key:   {made['client_secret']}   (subscribe --client-key)\n"
        f"authorised clients:  {made['clients_dir']}/   (listen --curve-clients-dir)"
    )


def calibrate_thresholds(
    checkpoint: Optional[Path] = typer.Argument(None, help="model checkpoint (default: the shipped model)"),
    scenes: Optional[list[Path]] = typer.Option(
        None,
        "--scenes",
        help="annotated validation recordings (make-scenes "
        "--split val): thresholds for a false-alarm rate (recommended); repeat it to pool several folders",
    ),
    room: Optional[list[Path]] = typer.Option(
        None,
        "--room",
        help="recordings of your own room with nothing to report (any sound files, no annotation): every "
        "detection in them is a false alarm; repeatable; with or without --scenes",
    ),
    start_from: Optional[str] = typer.Option(
        None,
        "--start-from",
        help="thresholds file to start from, only ever raised (auto = the model's own): tune the shipped "
        "thresholds to your room with --room",
    ),
    false_per_hour: float = typer.Option(
        2.0,
        "--false-per-hour",
        min=0.0,
        help="with --scenes/--room: false events an hour allowed on the event-free stretches",
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="the dataset in its official layout: thresholds for a precision on held-in clips"
    ),
    dataset: str = typer.Option("esc50", "--dataset", help="esc50 | esc10 | us8k"),
    folds: Optional[str] = typer.Option(None, "--folds", help="held-in folds (default: the model's training folds)"),
    precision: float = typer.Option(0.9, "--precision", min=0.01, max=1.0, help="target precision per label"),
    min_threshold: Optional[float] = typer.Option(
        None,
        "--min-threshold",
        min=0.0,
        max=1.0,
        help="no threshold below this (default 0.5 with --scenes, 0.2 with --data-dir)",
    ),
    backend: str = typer.Option("auto", "--backend", help="auto | torch | onnx"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for inference"),
    out: Path = typer.Option(Path("calibration/thresholds.json"), "--out", help="thresholds file to write"),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Pick per-class thresholds: for a false-alarm rate on annotated scenes (--scenes), or for a
    precision on a dataset's held-in clips (--data-dir); write thresholds.json."""
    from soundwatch.data.datasets import SPECS, load_clips, parse_folds
    from soundwatch.engines import create_engine
    from soundwatch.models.card import refuse_shipped_file, resolve_model
    from soundwatch.thresholds import calibrate, write_thresholds

    scenes, room = scenes or [], room or []  # typer gives [] when the option is absent
    if bool(scenes or room) == (data_dir is not None):
        raise UserError(
            "give either --scenes DIR and/or --room DIR (recordings: thresholds for a false-alarm rate) "
            "or --data-dir DIR (a dataset: thresholds for a precision)"
        )
    if start_from is not None and not (scenes or room):
        raise UserError("--start-from goes with --scenes or --room")
    refuse_shipped_file(
        "--out",
        out,
        "write yours elsewhere (by default calibration/thresholds.json) and name it in [detect] thresholds_file "
        "(or --thresholds)",
    )
    check_json_output("--out", out)
    checkpoint = resolve_model(checkpoint)
    if scenes or room:
        _calibrate_on_scenes(
            checkpoint,
            scenes,
            false_per_hour,
            backend,
            threads,
            out,
            config,
            0.5 if min_threshold is None else min_threshold,
            room,
            start_from,
        )
        return
    min_threshold = 0.2 if min_threshold is None else min_threshold
    if dataset not in SPECS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(SPECS)}")
    engine = create_engine(backend, checkpoint)
    held_out = engine.card.extra.get("folds", {}).get("test")
    chosen = (
        parse_folds(folds, SPECS[dataset].n_folds, "cv")
        if folds
        else [k for k in range(1, SPECS[dataset].n_folds + 1) if k != held_out]
    )
    if held_out in chosen:
        raise UserError(
            f"--folds includes fold {held_out}, which {checkpoint.name} holds out for testing; "
            "thresholds must be chosen on held-in folds"
        )
    clips = load_clips(dataset, data_dir, engine.sample_rate)
    if list(clips.classes) != list(engine.classes):
        raise UserError(f"{checkpoint.name} does not classify {dataset}'s labels")
    result = calibrate(engine, clips, chosen, precision, min_threshold)
    write_thresholds(result, checkpoint, out)
    print(
        f"wrote {out}: {len(result['thresholds'])} labels from {result['n_clips']} clips of folds {chosen}; "
        f"target precision {precision} not reached for {len(result['unreached'])}: "
        f"{', '.join(result['unreached'][:8]) or 'none'}"
    )


def _calibrate_on_scenes(
    checkpoint: Path,
    scenes: list[Path],
    false_per_hour: float,
    backend: str,
    threads: int | None,
    out: Path,
    config: Path | None,
    min_threshold: float,
    room: list[Path] = (),
    start_from: str | None = None,
) -> None:
    from soundwatch.detect import calibration_view_note
    from soundwatch.models.card import read_card
    from soundwatch.scenes_cli import annotated_files, check_annotations, offline_settings, room_files
    from soundwatch.thresholds import calibrate_on_scenes, write_thresholds

    settings = offline_settings(config, backend=backend, threads=threads, model=str(checkpoint))
    override(settings, "detect", thresholds_file="")
    seen: dict[Path, str] = {}
    for option, folder in [("--scenes", f) for f in scenes] + [("--room", f) for f in room]:
        here = f"{option} {folder}"
        first = seen.setdefault(Path(folder).resolve(), here)
        if first is not here:
            raise UserError(f"{here}: the same folder as {first}; its recordings would count twice")
    classes = read_card(checkpoint).classes
    floors = None if start_from is None else _start_from(start_from, checkpoint, classes, min_threshold)
    files = [f for folder in scenes for f in annotated_files(folder)]
    _, annotations = check_annotations(files, classes)  # all read before hours of audio are run
    quiet = tuple(f for folder in room for f in room_files(folder))
    print(calibration_view_note(settings), file=sys.stderr, flush=True)
    result = calibrate_on_scenes(
        settings,
        files,
        false_per_hour,
        classes,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        min_threshold=min_threshold,
        event_free=quiet,
        floors=floors,
        annotations=annotations,
    )
    result["scene_folders"] = [str(folder) for folder in scenes]
    result["room_folders"] = [str(folder) for folder in room]
    result["start_from"] = start_from
    write_thresholds(result, checkpoint, out)
    hours = result["event_free_hours"]
    if hours * false_per_hour < 1:  # the budget is whole false events (README "Tune them to your room")
        span = f"{hours * 60:.1f} min" if hours >= 1 / 60 else f"{hours * 3600:.1f} s"
        advice = f"; to measure the rate itself, give at least {1 / false_per_hour:.2g} h" if false_per_hour > 0 else ""
        print(
            f"note: {span} of event-free audio at {false_per_hour:g} false events an hour allows none: every "
            f"label that fired in it at all was raised until it did not{advice}",
            file=sys.stderr,
            flush=True,
        )
    raised = [c for c, t in result["thresholds"].items() if t > result["floors"][c]]
    if raised:
        print(
            "raised: " + ", ".join(f"{c} {result['floors'][c]} -> {result['thresholds'][c]}" for c in raised),
            flush=True,
        )
    print(
        f"wrote {out}: on {len(files) + len(quiet)} recordings ({result['event_free_hours']} h event-free), "
        f"{result['found']} of {result['reference_events']} events found with "
        f"{result['false_per_hour']} false events an hour (target {false_per_hour}); "
        f"{len(result['near_silent'])} labels start only when near-certain: "
        f"{', '.join(result['near_silent'][:8]) or 'none'}"
    )


def _start_from(setting: str, checkpoint: Path, classes: list[str], min_threshold: float):
    """``--start-from``: a threshold per class (the model's own file for ``auto``; a label the file leaves out
    starts at ``min_threshold``). thresholds_for_budget raises any under ``min_threshold`` to it."""
    import numpy as np

    from soundwatch.detect import load_thresholds, resolve_thresholds

    if setting == "auto":
        values = resolve_thresholds("auto", checkpoint, classes, -1.0)
        if np.isscalar(values):
            raise UserError(f"--start-from auto: {checkpoint.name} has no thresholds file made for these weights")
        return values
    return load_thresholds(Path(setting), classes, min_threshold)


def calibrate_music(
    checkpoint: Optional[Path] = typer.Argument(None, help="model checkpoint (default: the shipped model)"),
    music: list[Path] = typer.Option(..., "--music", help="a folder of music recordings (any sound files); repeatable"),
    other: list[Path] = typer.Option(
        ...,
        "--other",
        help="a folder of recordings of anything but music: your room, speech, TV, street; repeatable",
    ),
    context_s: float = typer.Option(
        10.0, "--context-s", min=0.5, max=120.0, help="seconds of windows the context averages"
    ),
    backend: str = typer.Option("auto", "--backend", help="auto | torch | onnx"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for inference"),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        help="file to write (default: <model>.music.json beside your own model, where listen finds it; for the "
        "shipped model calibration/music.json, named in [detect] music_file)",
    ),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Fit the model's music context: which of its outputs mean "music is playing" (the detect setting
    music_threshold then asks more of a label while music plays)."""
    from soundwatch.models.card import DEFAULT_MODEL, read_card, refuse_shipped_file, resolve_model
    from soundwatch.music import fit_music, sidecar_music, write_music
    from soundwatch.scenes_cli import offline_settings, sound_files
    from soundwatch.thresholds import record_windows

    checkpoint = resolve_model(checkpoint)
    own = sidecar_music(checkpoint)
    shipped = checkpoint.resolve() == DEFAULT_MODEL.resolve()
    if out is None:
        out = Path("calibration/music.json") if shipped else own
    refuse_shipped_file(
        "--out",
        out,
        "the shipped thresholds were calibrated with the shipped music context: write yours elsewhere (by "
        "default calibration/music.json) and name it in [detect] music_file",
    )
    check_json_output("--out", out)
    seen: dict[Path, str] = {}
    for option, folder in [("--music", f) for f in music] + [("--other", f) for f in other]:
        here = f"{option} {folder}"
        if seen.setdefault(Path(folder).resolve(), here) is not here:
            raise UserError(f"{here}: the same folder as {seen[Path(folder).resolve()]}")
    music_files = [f for folder in music for f in sound_files(folder, "--music")]
    other_files = [f for folder in other for f in sound_files(folder, "--other")]
    settings = offline_settings(config, backend=backend, threads=threads, model=str(checkpoint))
    classes = read_card(checkpoint).classes
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    recorded = []
    for kind, files in (("music", music_files), ("other", other_files)):
        for scene in record_windows(settings, [], log=log, event_free=tuple(files)):
            recorded.append({**scene, "type": kind})
    windows = max(1, round(context_s / settings.listen.hop_s))
    model, summary = fit_music(recorded, classes, windows, min_level_dbfs=settings.detect.min_level_dbfs)
    write_music(
        model,
        checkpoint,
        out,
        music_folders=[str(f) for f in music],
        other_folders=[str(f) for f in other],
        hop_s=settings.listen.hop_s,
        context_s=context_s,
        fitted_on=summary,
    )
    flagged = summary["flagged_as_music"]
    print(
        f"wrote {out}: {summary['windows']} windows, {summary['music_windows']} of music; heard as music: "
        f"{flagged.get('music', 0):.1%} of the music, {flagged.get('other', 0):.1%} of the rest"
        + ("" if out.resolve() == own.resolve() else f'; listen uses it with [detect] music_file = "{out}"'),
        flush=True,
    )
    if shipped:
        print(
            "soundwatch: the shipped thresholds were calibrated with the shipped music context: calibrate them "
            "again with this one (soundwatch calibrate thresholds --scenes DIR or --room DIR, with music_file set)",
            file=sys.stderr,
        )


def register(app: typer.Typer) -> None:
    """Add the live-line commands to ``app``."""
    from soundwatch.engines.commands import calibrate_app

    calibrate_app.command("thresholds")(calibrate_thresholds)
    calibrate_app.command("music")(calibrate_music)
    app.command()(devices)
    app.command()(listen)
    app.command()(subscribe)
    app.command()(keys)
