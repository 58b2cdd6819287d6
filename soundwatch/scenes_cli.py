"""``soundwatch make-scenes`` and ``eval-scenes``: the soundscape benchmark (issue 11).

``make-scenes`` mixes ESC-50 events over the background corpus (soundwatch/data/scenes.py).
``eval-scenes DIR`` runs the daemon's own path over every audio file of DIR that has a DCASE-style
``.tsv`` beside it: ``FileSource`` (as fast as possible) -> ``Windower`` -> engine -> ``Detector``,
built by ``live_cli._build_daemon`` from the config (event log, clips and metrics off), with a
publisher that keeps the messages in memory instead of a ZeroMQ socket. It scores the ``start``/
``end`` events with soundwatch/evaluate/scenes.py, per background type (from ``NAME.json``'s
``background_type`` when there is one, else "unknown").
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import typer

from soundwatch.errors import UserError, check_json_output, check_output_dir

DEFAULT_FOLDS = {"test": [1], "val": [2], "train": [3, 4, 5], "judge": [2], "tune": [2]}  # judge, tune: music only


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def make_scenes(
    out: Path = typer.Option(..., "--out", help="directory for the scenes (FLAC + TSV + JSON each)"),
    split: str = typer.Option(
        "test",
        "--split",
        help="background corpus split: test | val | train | judge | tune (judge, tune: music only, for event-free scenes)",
    ),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed, same scenes, byte for byte)"),
    esc50_dir: Path = typer.Option(..., "--esc50-dir", help="ESC-50 at 16 kHz in its official layout"),
    folds: Optional[str] = typer.Option(
        None, "--folds", help="ESC-50 folds of the events (default: 1 for test, 2 for val, 3-5 for train)"
    ),
    corpus: Path = typer.Option(Path("data/background"), "--corpus", help="background corpus directory"),
    manifest: Path = typer.Option(Path("data/background-manifest.csv"), "--manifest", help="its manifest"),
    types: str = typer.Option(
        "speech,music,tv,quiet", "--types", help="background types (also: silence, digital silence)"
    ),
    scenes_per_type: int = typer.Option(8, "--scenes-per-type", min=0, help="scenes with events per type"),
    free_scenes_per_type: int = typer.Option(4, "--free-scenes-per-type", min=0, help="event-free scenes per type"),
    duration: float = typer.Option(90.0, "--duration", min=10.0, help="seconds per scene"),
    ebr: str = typer.Option("-6,0,6,12", "--ebr", help="event-to-background ratios in dB, used in turn"),
    gap: str = typer.Option("8,14", "--gap", help="seconds of background between events: min,max"),
    quiet_events: str = typer.Option(
        "faint",
        "--quiet-events",
        help="events of quiet scenes: faint (at --ebr over the room's -55 dBFS hiss) or everyday (at --ebr over "
        "-35..-25 dBFS, as loud as over speech and music, the room silent)",
    ),
) -> None:
    """Mix ESC-50 events over real backgrounds into annotated scenes (seeded)."""
    from soundwatch.data.datasets import parse_folds
    from soundwatch.data.scenes import QUIET_EVENTS, MixOptions
    from soundwatch.data.scenes import make_scenes as mix

    check_output_dir("--out", out)
    if split not in DEFAULT_FOLDS:
        raise UserError(f"--split {split!r}: choose test, val, train, judge or tune")
    chosen = parse_folds(folds, 5, "cv") if folds else DEFAULT_FOLDS[split]
    gaps = _floats(gap, "--gap")
    if len(gaps) != 2 or not 0 < gaps[0] <= gaps[1]:
        raise UserError(f"--gap {gap!r}: give min,max seconds, e.g. 8,14")
    if quiet_events not in QUIET_EVENTS:
        raise UserError(f"--quiet-events {quiet_events!r}: choose {' or '.join(QUIET_EVENTS)}")
    kinds = [t.strip() for t in types.split(",") if t.strip()]
    if quiet_events != "faint" and "quiet" not in kinds:
        raise UserError(
            f"--quiet-events {quiet_events}: sets the events of quiet scenes, and --types {types!r} makes none; "
            "add quiet to --types"
        )
    opts = MixOptions(
        duration_s=duration, ebrs_db=tuple(_floats(ebr, "--ebr")), gap_s=(gaps[0], gaps[1]), quiet_events=quiet_events
    )
    if not opts.ebrs_db:
        raise UserError("--ebr: give at least one ratio in dB")
    metas = mix(
        out,
        corpus,
        manifest,
        esc50_dir,
        split,
        chosen,
        kinds,
        scenes_per_type,
        free_scenes_per_type,
        seed,
        opts,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    n_events = sum(len(m["events"]) for m in metas)
    print(
        f"wrote {len(metas)} scenes ({len(metas) * duration / 3600:.2f} h, {n_events} events, ESC-50 folds "
        f"{chosen}, {split} backgrounds, seed {seed}) to {out}",
        file=sys.stderr,
    )


class MemoryPublisher:
    """The Publisher interface, keeping the messages in memory (offline evaluation: no socket)."""

    def __init__(self) -> None:
        self.source = ""
        self.seq = 0
        self.send_failures = 0
        self.detections: list[dict] = []

    def publish(self, topic: str, payload: dict) -> None:
        self.seq += 1
        if topic.startswith("detection."):
            self.detections.append(dict(payload))

    def close(self, linger: int = 0) -> None:
        pass


def _sound_files(folder: Path) -> list[Path]:
    """The sound files of ``folder`` (what the file source reads), sorted."""
    from soundwatch.audio.sources import SOUND_FILE_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SOUND_FILE_SUFFIXES and p.is_file())


def _kinds() -> str:
    from soundwatch.audio.sources import SOUND_FILE_SUFFIXES

    return "/".join(s[1:].upper() for s in SOUND_FILE_SUFFIXES)


def annotated_files(folder: Path) -> list[Path]:
    """Sound files of ``folder`` that have a ``.tsv`` of the same name, sorted.

    Every ``.tsv`` must have exactly one sound file: an annotation left without its recording (or one
    whose recording is in a format libsndfile does not read) would silently shrink what is scored."""
    folder = Path(folder)
    _require_folder(folder)
    audio: dict[str, list[Path]] = {}
    for p in _sound_files(folder):
        audio.setdefault(p.stem, []).append(p)
    files, orphans, twice = [], [], []
    for tsv in sorted(folder.glob("*.tsv")):
        found = audio.get(tsv.stem, [])
        if not found:
            orphans.append(tsv.name)
        elif len(found) > 1:
            twice.append(f"{tsv.name} ({', '.join(p.name for p in found)})")
        else:
            files.append(found[0])
    if orphans:
        raise UserError(
            f"{folder}: {len(orphans)} annotation(s) without a sound file of the same name ({_kinds()}): "
            f"{', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}; add the recording or move the .tsv out"
        )
    if twice:
        raise UserError(f"{folder}: one annotation, several recordings: {'; '.join(twice[:5])}; keep one of each")
    if not files:
        raise UserError(f"{folder}: no sound file ({_kinds()}) with a .tsv annotation of the same name")
    return files


def _require_folder(folder: Path, shown: str = "") -> None:
    if folder.is_dir():
        return
    what = "is a file, not a folder" if folder.exists() else "no such directory"
    raise UserError(f"{shown}{folder}: {what} (give a folder of recordings)")


def sound_files(folder: Path, option: str) -> list[Path]:
    """Every sound file of ``folder`` (given with ``option``), annotated or not."""
    folder = Path(folder)
    _require_folder(folder, f"{option} ")
    files = _sound_files(folder)
    if not files:
        raise UserError(f"{option} {folder}: no sound file ({_kinds()})")
    return files


def room_files(folder: Path) -> list[Path]:
    """Every sound file of ``folder``: recordings of a room with nothing to report (``calibrate --room``)."""
    files = sound_files(folder, "--room")
    annotated = sorted(p.name for p in Path(folder).glob("*.tsv"))
    if annotated:
        raise UserError(
            f"--room {folder}: holds annotations ({', '.join(annotated[:3])}); a --room folder is recordings with "
            "nothing to report: give annotated recordings with --scenes"
        )
    return files


def reference_events(audio: Path):
    """(background type, reference events with their EBR where the scene's meta has one)."""
    from soundwatch.evaluate.scenes import Event, read_annotations

    refs = read_annotations(audio.with_suffix(".tsv"))
    meta_path = audio.with_suffix(".json")
    if not meta_path.is_file():
        return "unknown", refs
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{meta_path}: not valid JSON ({exc})") from exc
    ebrs = {(round(e["onset"], 3), e["label"]): e.get("ebr_db") for e in meta.get("events", [])}
    refs = [Event(r.onset, r.offset, r.label, ebrs.get((round(r.onset, 3), r.label))) for r in refs]
    return str(meta.get("background_type", "unknown")), refs


def _check_within_recording(audio: Path, refs) -> None:
    """A UserError when an annotated event starts after ``audio`` ends: it can never be found, and it
    usually means the times are not in seconds (milliseconds, samples) or the .tsv belongs to another
    recording. Also fails here, before any model runs, on a recording libsndfile cannot decode."""
    from soundwatch.audio.sources import open_sound_file

    if not refs:
        return
    with open_sound_file(audio) as f:
        seconds = f.frames / f.samplerate if f.samplerate else 0.0
    late = [r for r in refs if r.onset >= seconds]
    if late:
        first = late[0]
        raise UserError(
            f"annotation {audio.with_suffix('.tsv')}: {len(late)} event(s) start after the recording ends "
            f"({audio.name} lasts {seconds:.2f} s), the first {first.label} at {first.onset:g}-{first.offset:g} s; "
            "are the times in seconds, and is this the recording's own annotation?"
        )


def check_annotations(files: list[Path], classes: list[str]) -> tuple[dict[str, int], list[tuple[str, list]]]:
    """Read every file's annotation before any audio is run (a malformed line stops the command now, not
    after hours of work), and warn about labels the model does not know: it can never find those events,
    so they count as missed. Returns ({unknown label: events}, each file's ``reference_events``)."""
    import difflib

    from soundwatch.labels import BACKGROUND_LABEL

    known = [c for c in classes if c != BACKGROUND_LABEL]
    unknown: dict[str, list[str]] = {}
    annotations = [reference_events(path) for path in files]
    for path, (_, refs) in zip(files, annotations):
        _check_within_recording(path, refs)
        for ref in refs:
            if ref.label not in known:
                unknown.setdefault(ref.label, []).append(path.with_suffix(".tsv").name)
    if unknown:

        def said(label: str, where: list[str]) -> str:
            near = difflib.get_close_matches(label.lower().replace(" ", "_"), known, n=1, cutoff=0.75)
            hint = f"; did you mean {near[0]}?" if near and near[0] != label else ""
            return f"{label!r} ({len(where)}, first in {where[0]}{hint})"

        print(
            f"soundwatch: warning: {sum(map(len, unknown.values()))} annotated events have labels the model "
            "does not know, so it can never find them (they count as missed): "
            + ", ".join(said(label, where) for label, where in sorted(unknown.items())),
            file=sys.stderr,
            flush=True,
        )
    return {label: len(where) for label, where in sorted(unknown.items())}, annotations


def offline_settings(config: Path | None, **listen):
    """Settings from ``config`` for running the daemon over files offline: ``listen`` overrides, no
    event log, no clips, no metrics server."""
    from soundwatch.config import default_config_path, load_settings, override

    settings = load_settings(config or default_config_path())
    override(settings, "listen", **listen)
    override(settings, "events", log_path="", clips_dir="")
    override(settings, "publish", metrics_port=0)
    return settings


def run_offline(settings, path: Path, engine=None, prepare=None):
    """Run the daemon's own path over ``path`` as fast as possible (``prepare(daemon)`` first, if
    given), publishing into memory: (the daemon after its run, its publisher, seconds of audio)."""
    from soundwatch.live_cli import _build_daemon

    publisher = MemoryPublisher()
    daemon = _build_daemon(settings, publisher, path, realtime=False, record_input=None, engine=engine)
    if prepare is not None:
        prepare(daemon)
    daemon.run(threading.Event())
    if getattr(daemon.source, "error", None):
        raise UserError(daemon.source.error)
    return daemon, publisher, daemon.windower.ring.written / daemon.windower.model_rate


def file_events(detections: list[dict], t0: float):
    """The ``end`` events among ``detections`` as ``Event``s in seconds from the file's start (``t0``)."""
    from soundwatch.evaluate.scenes import Event

    ends = [d for d in detections if d["event"] == "end"]
    return sorted(
        (Event(round(d["start"] - t0, 3), round(d["end"] - t0, 3), d["label"]) for d in ends),
        key=lambda e: (e.onset, e.offset, e.label),
    )


def detect_file(settings, path: Path, engine=None):
    """Run the daemon over ``path`` as fast as possible: (detected events in file seconds, engine, duration)."""
    daemon, publisher, duration = run_offline(settings, path, engine)
    return file_events(publisher.detections, daemon.t0), daemon.engine, duration


def _git_commit() -> str:
    """The code's commit, with "+dirty" when the working tree differs from it."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=here,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) or "unknown"


def eval_scenes(
    folder: Path = typer.Argument(..., help="recordings with DCASE-style .tsv annotations (onset offset event_label)"),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="checkpoint (default: the config's / shipped)"),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="auto|torch|onnx|tensorrt"),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto|fp32|fp16|int8"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for inference"),
    thresholds: Optional[Path] = typer.Option(None, "--thresholds", help="per-class thresholds JSON"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="one threshold for every label"),
    collar: float = typer.Option(1.0, "--collar", min=0.0, help="event-based F1: onset collar in seconds"),
    offset_ratio: float = typer.Option(
        0.0,
        "--offset-ratio",
        min=0.0,
        help="event-based F1: offset within "
        "max(collar, ratio x length) (sed_eval's percentage_of_length); 0: no offset criterion",
    ),
    late: float = typer.Option(
        5.0,
        "--late",
        min=0.0,
        help="recall/precision/false alarms: a reference event "
        "counts as heard until this long after its offset (the window length)",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the results (and every detection) as JSON"),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="config.toml (default: $SOUNDWATCH_CONFIG or ./config.toml)"
    ),
) -> None:
    """Run the daemon's own path over annotated recordings; event recall, precision, F1 and false events
    per hour, per background type."""
    from soundwatch.config import override
    from soundwatch.detect import resolved_detect, watch_mask
    from soundwatch.evaluate.scenes import (
        false_labels_line,
        missed_labels_line,
        per_file,
        report,
        score_file,
        table,
        watched_events,
    )
    from soundwatch.models.card import read_card, resolve_model

    if out is not None:
        check_json_output("--out", out)
    settings = offline_settings(
        config, backend=backend, precision=precision, threads=threads, model=str(model) if model else None
    )
    # --threshold alone means one threshold for every label, not the model's calibrated file
    override(
        settings,
        "detect",
        thresholds_file=str(thresholds) if thresholds else ("" if threshold else None),
        threshold=threshold,
    )
    files = annotated_files(folder)
    checkpoint = resolve_model(Path(settings.listen.model) if settings.listen.model else None)
    classes = read_card(checkpoint).classes
    unknown, annotations = check_annotations(files, classes)
    watch = tuple(dict.fromkeys(settings.detect.labels))  # in order, each once
    if watch:
        watch_mask(classes, watch)  # a label the model does not know, or background: an error before any audio
        others = sum(1 for _, refs in annotations for r in refs if r.label not in watch)
        print(
            f"scoring the events of [detect] labels only ({', '.join(watch)}); the {others} events of other "
            "labels are background, where a detection is a false event",
            file=sys.stderr,
        )
    engine, scores, started = None, [], time.perf_counter()
    for i, (path, (kind, refs)) in enumerate(zip(files, annotations), 1):
        refs = watched_events(refs, watch)
        ests, engine, duration = detect_file(settings, path, engine)
        scores.append(
            score_file(
                path.name,
                kind,
                duration,
                refs,
                ests,
                collar_s=collar,
                offset_ratio=offset_ratio,
                late_s=late,
                pre_s=collar,
            )
        )
        print(
            f"[{i}/{len(files)}] {path.name} ({kind}): {len(refs)} reference, {len(ests)} detected events",
            file=sys.stderr,
            flush=True,
        )
    result = report(scores)
    result["settings"] = {
        "folder": str(folder),
        "files": len(files),
        "commit": _git_commit(),
        "model": settings.listen.model or f"shipped ({checkpoint.name})",
        "backend": engine.name,
        "precision": engine.precision,
        "threads": settings.listen.threads,
        "window_s": settings.listen.window_s,
        "hop_s": settings.listen.hop_s,
        "detect": resolved_detect(settings),
        "collar_s": collar,
        "offset_ratio": offset_ratio,
        "late_s": late,
        "pre_s": collar,
        "seconds": round(time.perf_counter() - started, 1),
        "labels_not_in_model": unknown,
    }
    result["per_file"] = per_file(scores)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"event-based F1: onset collar {collar:g} s, "
        + (f"offset within max({collar:g} s, {offset_ratio:g} x length)" if offset_ratio else "no offset criterion")
        + f"; recall/precision: same label, overlap up to {late:g} s after the offset; "
        f"false/h: detections starting on event-free stretches",
        file=sys.stderr,
    )
    print(table(result))
    print(false_labels_line(result))
    print(missed_labels_line(result))


def register(app: typer.Typer) -> None:
    """Add the soundscape-benchmark commands to ``app``."""
    app.command("make-scenes")(make_scenes)
    app.command("eval-scenes")(eval_scenes)
