"""Per-class detection thresholds for a target precision, chosen on held-in clips.

``soundwatch calibrate thresholds CHECKPOINT --data-dir DIR --folds 2-5`` scores every clip
of the given folds (the training folds: never the held-out test fold), and for each label
picks the lowest threshold (not under ``floor``: the open world is noisier than a closed
dataset) whose one-vs-rest precision on those clips reaches the target;
a label that cannot reach it keeps the highest score seen plus a margin (it will rarely
fire) and is flagged. The result, ``calibration/thresholds.json``, is what ``listen
--thresholds`` (or ``[detect] thresholds_file``) reads.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from soundwatch.engines.base import softmax
from soundwatch.labels import BACKGROUND_LABEL


def threshold_for_precision(
    scores: np.ndarray, positive: np.ndarray, target: float, floor: float = 0.2
) -> tuple[float, float, float, bool]:
    """(threshold, precision, recall, reached) for one label's scores on labelled clips."""
    order = np.argsort(-scores)
    s, pos = scores[order], positive[order]
    tp = np.cumsum(pos)
    precision = tp / np.arange(1, len(s) + 1)
    n_pos = max(1, int(pos.sum()))
    # Candidate cut-offs at every distinct score: keep those whose precision holds the target,
    # and take the one admitting the most clips (the lowest threshold, best recall).
    last_of_value = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero(last_of_value & (precision >= target) & (s >= floor))
    if len(ok) == 0:
        return float(min(1.0, s[0] + 1e-3)), 0.0, 0.0, False
    k = ok[-1]
    return float(s[k]), float(precision[k]), float(tp[k] / n_pos), True


def calibrate(engine, clips, folds: list[int], target: float, floor: float = 0.2, batch: int = 16) -> dict:
    from soundwatch.dsp.clips import center_fit

    idx = clips.indices(folds)
    probs = np.concatenate(
        [
            softmax(
                np.asarray(
                    engine.infer(
                        center_fit(np.asarray(clips.waves[idx[i : i + batch]], np.float32), engine.window_samples)
                    )
                )
            )
            for i in range(0, len(idx), batch)
        ]
    )
    labels = clips.labels[idx]
    table, details, unreached = {}, {}, []
    for c, name in enumerate(clips.classes):
        thr, prec, rec, reached = threshold_for_precision(probs[:, c], labels == c, target, floor)
        table[name] = round(thr, 4)
        details[name] = {"precision": round(prec, 4), "recall": round(rec, 4), "reached": reached}
        if not reached:
            unreached.append(name)
    return {
        "target_precision": target,
        "min_threshold": floor,
        "folds": folds,
        "n_clips": int(len(idx)),
        "thresholds": table,
        "details": details,
        "unreached": unreached,
    }


def write_thresholds(result: dict, checkpoint: Path, out: Path) -> Path:
    from soundwatch.models.card import file_sha256

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"checkpoint": Path(checkpoint).name, "checkpoint_sha256": file_sha256(checkpoint), **result}, indent=1
        )
        + "\n"
    )
    return out


# -- thresholds for a target false-alarm rate, chosen on annotated scenes -------------------------

GRID = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.995)
NEAR_SILENT = 0.98  # labels calibrated at or above this start only on near-certain windows: reported


class _Recording:
    """Wraps a daemon's detector: keeps what it is fed, one tuple per window, and passes it on."""

    def __init__(self, detector):
        self.detector = detector
        self.fed: list[tuple] = []

    def update(self, probs, level_dbfs, t_end, hop_level_dbfs=None, frame_levels=None, frame_s=0.0, speech=None):
        self.fed.append(
            (
                np.asarray(probs, np.float32),
                level_dbfs,
                t_end,
                hop_level_dbfs,
                None if frame_levels is None else np.asarray(frame_levels, np.float32),
                frame_s,
                speech,
            )
        )
        # (music is not kept: replay's detectors hear it again from the probabilities and level, as this one did)
        return self.detector.update(probs, level_dbfs, t_end, hop_level_dbfs, frame_levels, frame_s, speech)

    def __getattr__(self, name):  # held, gated, close_all, ...: the detector's own
        return getattr(self.detector, name)


def record_windows(
    settings, files: list[Path], log=lambda msg: None, event_free: tuple[Path, ...] = (), annotations=None
) -> list[dict]:
    """Run the daemon's own path over each scene once, keeping what its detector was fed, per window.
    ``event_free`` recordings (a room with nothing to report) need no annotation: type "room".
    ``annotations``: each of ``files``' (type, reference events), already read (``check_annotations``)."""
    from soundwatch.scenes_cli import reference_events, run_offline

    def record(daemon) -> None:
        daemon.detector = _Recording(daemon.detector)

    known = dict(zip(files, annotations)) if annotations is not None else {}
    every = [(path, False) for path in files] + [(path, True) for path in event_free]
    engine, recorded = None, []
    for i, (path, quiet) in enumerate(every, 1):
        kind, refs = ("room", []) if quiet else known.get(path) or reference_events(path)
        daemon, _, duration = run_offline(settings, path, engine, prepare=record)
        engine = daemon.engine
        recorded.append(
            {
                "name": path.name,
                "type": kind,
                "refs": refs,
                "duration_s": duration,
                "t0": daemon.t0,
                "windows": daemon.detector.fed,
            }
        )
        log(f"[{i}/{len(every)}] {path.name}: {len(daemon.detector.fed)} windows")
    return recorded


def replay(recorded: list[dict], make_detector, on_events=None) -> list[list]:
    """Detected events (``Event``, in file seconds) per recorded scene, by a fresh detector per scene.
    ``on_events(scene, t_end, events)``, if given, hears what each window's update returned."""
    from soundwatch.scenes_cli import file_events

    out = []
    for scene in recorded:
        det, events = make_detector(), []
        for probs, level, t_end, hop, frames, frame_s, speech in scene["windows"]:
            got = det.update(probs, level, t_end, hop, frames, frame_s, speech)
            if on_events is not None:
                on_events(scene, t_end, got)
            events += got
        if scene["windows"]:
            events += det.close_all(scene["windows"][-1][2])
        out.append(file_events(events, scene["t0"]))
    return out


def per_label_counts(
    recorded: list[dict], detections: list[list], classes: list[str], late_s: float = 5.0, pre_s: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(hits, false events) per label: reference events of the label found by a detection of it, and
    detections of it starting on event-free stretches (the definitions of soundwatch.evaluate.scenes)."""
    from soundwatch.evaluate.scenes import score_file

    index = {c: k for k, c in enumerate(classes)}
    hits, false = np.zeros(len(classes)), np.zeros(len(classes))
    for scene, ests in zip(recorded, detections):
        s = score_file(
            scene["name"], scene["type"], scene["duration_s"], scene["refs"], ests, late_s=late_s, pre_s=pre_s
        )
        for ref, found in zip(s.refs, s.found):
            if found and ref.label in index:
                hits[index[ref.label]] += 1
        for label in s.false_labels:
            false[index[label]] += 1
    return hits, false


def choose_for_budget(hits: np.ndarray, false: np.ndarray, grid: tuple[float, ...], budget: float) -> np.ndarray:
    """Per label, one threshold from ``grid`` (rows of ``hits``/``false``: grid values; columns: labels)
    maximising the total hits while the total false events stay within ``budget``.

    Exact: a multiple-choice knapsack over the integer false-event budget, solved by dynamic
    programming (labels x budget x grid: 50 x a handful x 16 here). Among choices finding as many
    events, labels with no events to find take the lowest thresholds the budget allows (recordings of
    a room with nothing to report, ``calibrate --room``: the budget is what the user accepts), then
    the fewest false events win, then the lowest thresholds. No label is
    switched off: the top of the grid is the most a label gets (a user who wants a label silent
    can say so in the file). Where even every label's fewest false events exceed the budget, each
    label takes those. (A Lagrangian relaxation, used before, left budget unspent: on val-large
    plus the tune music it spent 2 of 4.9 false events an hour's worth.)

    Ties go low because validation events are few and often ones the model was trained on: a
    label whose events score 0.99 on them finds as many at 0.5 as at 0.95 there, but unseen
    events score lower, so only false alarms are evidence for raising a label."""
    return np.asarray(grid, dtype=float)[_choose_rows(hits, false, budget)]


def _choose_rows(hits: np.ndarray, false: np.ndarray, budget: float) -> np.ndarray:
    """choose_for_budget's choice, as a row index of ``hits``/``false`` per label."""
    h = np.rint(np.asarray(hits, dtype=float)).astype(np.int64)
    f = np.rint(np.asarray(false, dtype=float)).astype(np.int64)
    rows, labels = h.shape
    extra = f - f.min(axis=0)  # false events over each label's fewest
    spare = max(0, int(np.floor(budget + 1e-9)) - int(f.min(axis=0).sum()))
    # one number orders choices: more hits; then lower thresholds for labels with no events to find
    # (nothing to weigh against the budget: it is spent on them); then fewer false events; then lower rows
    row = np.arange(rows)[:, None]
    eventless = h.max(axis=0) == 0
    value = h * 10**12 - np.where(eventless, row, 0) * 10**8 - f * 10**3 - row
    neg = np.iinfo(np.int64).min // 4
    best = np.zeros(spare + 1, dtype=np.int64)  # best[b]: labels so far, at most b extra false events
    took = np.zeros((labels, spare + 1), dtype=np.int64)
    for c in range(labels):
        new = np.full(spare + 1, neg, dtype=np.int64)
        for k in range(rows):
            cost = int(extra[k, c])
            if cost > spare:
                continue
            cand = np.full(spare + 1, neg, dtype=np.int64)
            cand[cost:] = best[: spare + 1 - cost] + value[k, c]
            better = cand > new
            new[better], took[c, better] = cand[better], k
        best = new
    chosen, b = np.empty(labels, dtype=np.int64), int(np.argmax(best))
    for c in range(labels - 1, -1, -1):
        chosen[c] = took[c, b]
        b -= int(extra[chosen[c], c])
    return chosen


def recorded_folders(
    settings, folders: list[Path], checkpoint: Path, backend: str, cache: Path, again: bool = False, log=lambda m: None
) -> list[dict]:
    """``record_windows`` over the annotated scenes of each of ``folders``, pooled. Each folder's recording is
    kept in ``cache/<folder name>-<model sha256 prefix>-<backend>.pkl`` and read back from there on later
    calls (``again``: record anew), so detector settings can be replayed over it in seconds."""
    import pickle

    from soundwatch.models.card import file_sha256
    from soundwatch.scenes_cli import annotated_files

    recorded = []
    for folder in folders:
        kept = Path(cache) / f"{Path(folder).resolve().name}-{file_sha256(checkpoint)[:12]}-{backend}.pkl"
        if again or not kept.is_file():
            files = annotated_files(folder)
            got = record_windows(settings, files, log=log)
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_bytes(pickle.dumps(got))
            log(f"recorded {len(files)} scenes into {kept}")
        recorded += pickle.loads(kept.read_bytes())
    return recorded


def calibrate_on_scenes(
    settings,
    files: list[Path],
    false_per_hour: float,
    classes: list[str],
    log=lambda msg: None,
    min_threshold: float = 0.5,
    event_free: tuple[Path, ...] = (),
    floors: np.ndarray | None = None,
    annotations=None,
) -> dict:
    """Per-class thresholds for at most ``false_per_hour`` false events an hour on the scenes'
    event-free stretches, with as many events found as that allows, none under ``min_threshold``
    (nor under ``floors``, a threshold per class, where given: a calibration that only raises).
    ``event_free``: recordings with nothing to report, all of each an event-free stretch.

    The floor matters: a few events per label cannot show that a label may go lower (two 1 h
    validation sets gave thresholds 0.3 and 0.9 for the same labels), while a label's false alarms
    on real backgrounds are evidence for raising it. So labels start at the floor and go up, and
    only as far as their false alarms demand. ``annotations``: as ``record_windows`` takes them."""
    recorded = record_windows(settings, files, log, event_free, annotations)
    return thresholds_for_budget(settings, recorded, false_per_hour, classes, log, min_threshold, floors)


def watched_scenes(recorded: list[dict], labels) -> list[dict]:
    """``record_windows`` scenes with only the reference events of a watch list (``[detect] labels``; none
    named: all), the others being background (``soundwatch.evaluate.scenes.watched_events``)."""
    from soundwatch.evaluate.scenes import watched_events

    return [{**scene, "refs": watched_events(scene["refs"], labels)} for scene in recorded] if labels else recorded


def thresholds_for_budget(
    settings,
    recorded: list[dict],
    false_per_hour: float,
    classes: list[str],
    log=lambda msg: None,
    min_threshold: float = 0.5,
    floors: np.ndarray | None = None,
) -> dict:
    """calibrate_on_scenes over scenes already recorded with ``record_windows`` (same settings)."""
    from soundwatch.detect import detector_from_settings, resolved_detect
    from soundwatch.models.card import resolve_model
    from soundwatch.music import music_context_sha256, resolve_music

    d, hop_s = settings.detect, settings.listen.hop_s
    checkpoint = resolve_model(Path(settings.listen.model) if settings.listen.model else None)
    music = resolve_music(d, checkpoint, classes)
    recorded = watched_scenes(recorded, getattr(d, "labels", ()))
    free_h = 0.0
    from soundwatch.evaluate.scenes import event_free_seconds

    for scene in recorded:
        free_h += event_free_seconds(scene["refs"], scene["duration_s"], 1.0, 5.0) / 3600
    grid = tuple(t for t in GRID if t >= min_threshold) or GRID[-1:]
    # a row per grid value, a column per class: the grid value, or the class's floor where that is higher
    low = np.full(len(classes), min_threshold) if floors is None else np.maximum(min_threshold, floors)
    table = np.maximum(np.asarray(grid)[:, None], low[None, :])
    hits, false = [], []
    for t, row in zip(grid, table):
        h, f = per_label_counts(
            recorded, replay(recorded, partial(detector_from_settings, d, classes, row, hop_s, music)), classes
        )
        hits.append(h)
        false.append(f)
        log(
            f"threshold {t}{' (or the floor)' if floors is not None else ''}: {int(h.sum())} events found, "
            f"{int(f.sum())} false events"
        )
    hits, false = np.array(hits), np.array(false)
    rows = _choose_rows(hits, false, false_per_hour * free_h)
    chosen = table[rows, np.arange(len(classes))]
    found = sum(hits[k, c] for c, k in enumerate(rows))
    n_false = sum(false[k, c] for c, k in enumerate(rows))
    n_ref = sum(1 for s in recorded for r in s["refs"] if r.label in classes)
    at_floor = {c: int(false[0, k]) for k, c in enumerate(classes) if false[0, k] and c != BACKGROUND_LABEL}
    return {
        "target_false_per_hour": false_per_hour,
        "min_threshold": min_threshold,
        "scenes": [s["name"] for s in recorded],
        "event_free_hours": round(free_h, 4),
        "reference_events": n_ref,
        "found": int(found),
        "false_events": int(n_false),
        "false_per_hour": round(n_false / free_h, 3) if free_h else None,
        "detect": {k: v for k, v in resolved_detect(settings).items() if k != "thresholds_file"},
        "hop_s": hop_s,  # the thresholds hold for this hop (more windows a second: more chances to fire)
        # ... and over music, for this music context (listen warns when it runs with another)
        "music_context_sha256": music_context_sha256(d, checkpoint) if music is not None else None,
        "thresholds": {c: float(t) for c, t in zip(classes, chosen) if c != BACKGROUND_LABEL},
        "floors": {c: float(t) for c, t in zip(classes, table[0]) if c != BACKGROUND_LABEL},
        "false_at_floor": at_floor,  # the labels the recordings set off at their lowest threshold, how often
        "near_silent": [c for c, t in zip(classes, chosen) if t >= NEAR_SILENT and c != BACKGROUND_LABEL],
    }
