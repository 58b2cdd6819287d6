#!/usr/bin/env python
"""Try detector settings on annotated scenes in seconds: record the model's windows once, replay the detector.

    python scripts/replay_detect.py data/scenes/val                        # the settings of config.toml
    python scripts/replay_detect.py data/scenes/val --set onset_pause_s=0 --set instant_threshold=0.8
    python scripts/replay_detect.py data/scenes/val --set smooth_windows=1 --thresholds T.json
    python scripts/replay_detect.py data/scenes/val --set music_confusable=siren,rain   # a list: comma-separated
    python scripts/replay_detect.py data/scenes/val-large --set smooth_windows=1 --calibrate T.json

The first run over a folder records what the daemon's detector is fed, window by window (the daemon's
own path, as `soundwatch eval-scenes` runs it: model, view, level, VAD), into
runs/replay/<folder>-<model sha256 prefix>-<backend>.pkl; later runs replay only the detector
(soundwatch.thresholds.replay), so [detect] settings that act after the model (thresholds,
smoothing, gates, onset, speech hold) can be compared quickly. Settings that change what the model
sees (view_s, hop_s, the model, vad) need a new recording: --record.

Prints eval-scenes' table for the settings, and the alert delay: for each found event, the end of
the window whose `start` message named it, minus the event's onset in the annotation (the real-time
alert adds the audio and processing delay to this).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenes", type=Path, nargs="+", help="folders of recordings with .tsv annotations (pooled)")
    ap.add_argument("--config", type=Path, help="config.toml (default: the repository's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a [detect] setting (repeatable)")
    ap.add_argument("--thresholds", type=Path, help="per-label thresholds JSON (default: as the config says)")
    ap.add_argument("--record", action="store_true", help="record the windows again")
    ap.add_argument("--backend", default="onnx", help="engine for the recording (default onnx, 1 thread)")
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "replay", help="where recordings are kept")
    ap.add_argument("--out", type=Path, help="write the report JSON here")
    ap.add_argument(
        "--calibrate",
        type=Path,
        metavar="FILE",
        help="instead of replaying: calibrate per-label thresholds on the recording for the settings "
        "(as `calibrate thresholds --scenes` does) and write them to FILE",
    )
    ap.add_argument("--false-per-hour", type=float, default=1.0, help="with --calibrate: the false-alarm budget")
    ap.add_argument("--min-threshold", type=float, default=0.5, help="with --calibrate: the lowest threshold")
    args = ap.parse_args()

    from soundwatch.detect import detector_from_settings, resolve_thresholds
    from soundwatch.evaluate.scenes import false_labels_line, missed_labels_line, per_file, report, score_file, table
    from soundwatch.models.card import read_card, resolve_model
    from soundwatch.scenes_cli import offline_settings
    from soundwatch.thresholds import recorded_folders, replay, watched_scenes

    settings = offline_settings(args.config, backend=args.backend, threads=1)
    checkpoint = resolve_model(Path(settings.listen.model) if settings.listen.model else None)
    classes = read_card(checkpoint).classes
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    recorded = recorded_folders(settings, args.scenes, checkpoint, args.backend, args.cache, args.record, log)

    fields = {f.name for f in dataclasses.fields(settings.detect)}
    changes = {}
    for item in args.set:
        key, _, text = item.partition("=")
        if key not in fields or not _:
            sys.exit(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        listed = isinstance(getattr(settings.detect, key), tuple)  # a list of labels: comma-separated
        changes[key] = tuple(x for x in text.split(",") if x) if listed else _value(text)
    d = dataclasses.replace(settings.detect, **changes)
    recorded = watched_scenes(recorded, d.labels)  # a watch list: only its labels' events are scored
    if args.calibrate:
        from soundwatch.thresholds import thresholds_for_budget, write_thresholds

        settings.detect = dataclasses.replace(d, thresholds_file="")
        result = thresholds_for_budget(settings, recorded, args.false_per_hour, classes, log, args.min_threshold)
        result["scene_folders"] = [str(folder) for folder in args.scenes]
        write_thresholds(result, checkpoint, args.calibrate)
        print(
            f"wrote {args.calibrate}: {result['found']} of {result['reference_events']} events found with "
            f"{result['false_events']} false events in {result['event_free_hours']} event-free hours"
        )
        return
    thresholds = resolve_thresholds(
        str(args.thresholds) if args.thresholds else d.thresholds_file, checkpoint, classes, d.threshold
    )

    starts: dict[str, list] = {}  # per scene: (label, start, window end) of every `start` message, file seconds

    def heard(scene: dict, t_end: float, events: list[dict]) -> None:
        t0 = scene["t0"]
        starts.setdefault(scene["name"], []).extend(
            (e["label"], e["start"] - t0, t_end - t0) for e in events if e["event"] == "start"
        )

    from soundwatch.music import resolve_music

    music = resolve_music(d, checkpoint, classes)
    detections = replay(
        recorded, lambda: detector_from_settings(d, classes, thresholds, settings.listen.hop_s, music), heard
    )
    scores, delays = [], []
    for scene, ests in zip(recorded, detections):
        s = score_file(scene["name"], scene["type"], scene["duration_s"], scene["refs"], ests)
        scores.append(s)
        said_all = starts.get(scene["name"], [])
        for ref, hit in zip(s.refs, s.found):
            said = [
                t
                for label, start, t in said_all
                if label == ref.label and ref.onset - 1.0 <= t and start <= ref.offset + 5
            ]
            if hit and said:
                delays.append(min(said) - ref.onset)
    result = report(scores)
    result["alert_delay_median_s"] = statistics.median(delays) if delays else None
    result["settings"] = {"detect": dataclasses.asdict(d), "thresholds": str(args.thresholds or "")}
    result["per_file"] = per_file(scores)  # which scene raised which detection: where false alarms come from
    print(table(result))
    print(false_labels_line(result))
    print(missed_labels_line(result))
    print(
        f"alert delay (window end of the `start` message - annotated onset), median over {len(delays)} found events: "
        + (f"{result['alert_delay_median_s']:.2f} s" if delays else "-")
    )
    if args.out:
        import json

        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
