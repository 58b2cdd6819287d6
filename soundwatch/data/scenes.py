"""The soundscape mixer: ESC-50 events over real backgrounds, seeded, with DCASE-style annotations.

A scene is ``duration_s`` of one background type from one split of the background corpus:

- ``speech``: recordings of one source package (one speaker/language) one after another, with
  pauses of 0.3-1.5 s; ``music``: tracks from a random point, one after another with a 1 s
  cross-fade; ``tv``: such speech over such music, the music 6-14 dB under the speech (a radio or
  TV-like mix); ``quiet``: room tone only (pink noise at ``QUIET_DBFS``, no real room tone being
  in the corpus). Speech, music and tv are set to a level drawn in ``BACKGROUND_DBFS`` (RMS over
  the scene) and get the room tone ``FLOOR_DBFS`` under them, as any room has a floor.
- Events: ESC-50 clips of the chosen folds, trimmed to their active part (the clips are zero-padded:
  from the first to the last 10 ms frame within ``ACTIVE_DB`` of the clip's loudest frame), placed
  one after another with gaps of ``gap_s`` and never overlapping. Event scenes start with a lead-in
  and end with at least one gap of background; event-free scenes hold no event at all.
- **Event-to-background ratio (EBR)**: RMS of the event's active part (after its gain) over the RMS
  of the background (room tone included) over the same span, in dB. Events are placed where
  the background is not in a pause (span RMS at most ``PAUSE_DB`` under the scene's) when such a
  place is found within a few seconds; the ratio is always the one measured over the actual span.
  Quiet scenes made with ``quiet_events="everyday"`` (make-scenes ``--quiet-events everyday``) take
  the ratio to a level drawn in ``BACKGROUND_DBFS`` instead (``event_reference_dbfs`` in the meta):
  the events as loud as over speech and music, in a silent room, where "faint" (the default, and the
  project's test split) puts them at -6 to +12 dB over the room's hiss, at or under what a gate
  on the room's floor lets through.
  A scene whose peak would clip is scaled down whole (ratios unchanged; ``scaled_db`` in the meta).

Output per scene: ``NAME.flac`` (16 kHz mono, 16 bit), ``NAME.tsv`` (onset, offset, event_label;
onset/offset of the active part) and ``NAME.json`` (background type and sources, seed, every
event with its clip, EBR and gain). Everything comes from one ``numpy`` generator seeded with
``seed``: the same arguments give the same bytes.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soundwatch.data.corpus import read_manifest
from soundwatch.errors import UserError
from soundwatch.evaluate.scenes import Event, write_annotations

SAMPLE_RATE = 16000
TYPES = ("speech", "music", "tv", "quiet")
# make-scenes also makes "silence": digital silence, events at their ratio to a quiet room's level (a gated
# or noise-suppressed input; clean sounds alone, for fitting the music context)
SCENE_TYPES = TYPES + ("silence",)
# the corpus types each background type is made from (see Backgrounds.make)
CORPUS_TYPES = {"speech": ("speech",), "music": ("music",), "tv": ("speech", "music"), "quiet": (), "silence": ()}
QUIET_DBFS = -55.0
QUIET_EVENTS = ("faint", "everyday")  # MixOptions.quiet_events
FLOOR_DBFS = -60.0
BACKGROUND_DBFS = (-35.0, -25.0)
TV_MUSIC_UNDER_DB = (6.0, 14.0)
ACTIVE_DB = -50.0
PAUSE_DB = 10.0
FRAME = 160  # 10 ms at 16 kHz
PEAK_LIMIT = 0.99


@dataclass
class MixOptions:
    duration_s: float = 90.0
    ebrs_db: tuple[float, ...] = (-6.0, 0.0, 6.0, 12.0)
    gap_s: tuple[float, float] = (8.0, 14.0)
    lead_in_s: tuple[float, float] = (4.0, 10.0)
    # events of quiet scenes: "faint", each at its ratio to the room tone itself (QUIET_DBFS: at -6 dB an
    # event is fainter than the room's hiss); "everyday", at its ratio to a level drawn in BACKGROUND_DBFS,
    # as loud as the events over speech, music and TV, with the room silent around them
    quiet_events: str = "faint"


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def db(x: np.ndarray) -> float:
    r = rms(x)
    return 20 * np.log10(r) if r > 1e-10 else -200.0


def set_level(x: np.ndarray, dbfs: float) -> np.ndarray:
    r = rms(x)
    return x * (10 ** (dbfs / 20) / r) if r > 0 else x


def active_span(x: np.ndarray, floor_db: float = ACTIVE_DB) -> tuple[int, int]:
    """(start, end) samples of the active part: first to last 10 ms frame within ``floor_db`` of the loudest."""
    n = len(x) // FRAME
    if n == 0:
        return 0, len(x)
    frames = np.sqrt(np.mean(np.square(x[: n * FRAME].reshape(n, FRAME), dtype=np.float64), axis=1))
    peak = frames.max()
    if peak <= 0:
        return 0, 0
    on = np.flatnonzero(frames >= peak * 10 ** (floor_db / 20))
    return int(on[0] * FRAME), int(min(len(x), (on[-1] + 1) * FRAME))


def room_tone(rng: np.random.Generator, n: int, dbfs: float) -> np.ndarray:
    """Pink (1/f) noise at ``dbfs`` RMS: a stand-in for a quiet room's floor."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum *= 1 / np.sqrt(np.maximum(f, 20.0))
    return set_level(np.fft.irfft(spectrum, n), dbfs)


def read_audio(path: Path) -> np.ndarray:
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise UserError(f"{path}: {rate} Hz; the corpus and ESC-50 copy must be {SAMPLE_RATE} Hz")
    return audio.mean(axis=1).astype(np.float64)


class Backgrounds:
    """The corpus files of one split, by type and package."""

    def __init__(self, corpus_dir: Path, manifest: Path, split: str, types: tuple[str, ...] = TYPES):
        """``types``: the background types that will be made; the split must hold the corpus types they need."""
        self.dir = Path(corpus_dir)
        rows = [r for r in read_manifest(manifest) if r["split"] == split]
        self.files: dict[str, dict[str, list[str]]] = {}
        for r in rows:
            self.files.setdefault(r["type"], {}).setdefault(r["package"], []).append(r["path"])
        for kind in sorted({k for t in types for k in CORPUS_TYPES[t]}):
            if kind not in self.files:
                raise UserError(f"background manifest {manifest}: split {split!r} has no {kind}")
        missing = [p for r in rows[:1] if not (self.dir / (p := r["path"])).is_file()]
        if missing:
            raise UserError(
                f"background corpus {self.dir}: {missing[0]} is missing; rebuild it with "
                "scripts/build-background-corpus.sh"
            )

    def speech(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
        package = sorted(self.files["speech"])[rng.integers(len(self.files["speech"]))]
        files = self.files["speech"][package]
        out, used, pos = np.zeros(n), [], 0
        while pos < n:
            pos += int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)
            rel = files[rng.integers(len(files))]
            x = read_audio(self.dir / rel)
            take = x[: max(0, n - pos)]
            out[pos : pos + len(take)] = take
            used.append(rel)
            pos += len(x)
        return out, used

    def music(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
        files = sorted(f for fs in self.files["music"].values() for f in fs)
        fade = SAMPLE_RATE
        out, used, pos = np.zeros(n), [], 0
        while pos < n:
            rel = files[rng.integers(len(files))]
            x = read_audio(self.dir / rel)
            start = int(rng.integers(0, max(1, len(x) - 20 * SAMPLE_RATE)))
            x = x[start : start + n - pos + fade]
            if len(x) > 2 * fade:
                ramp = np.linspace(0, 1, fade)
                x[:fade] *= ramp if pos else 1
                x[-fade:] *= ramp[::-1]
            out[pos : pos + len(x)] += x[: n - pos]
            used.append(f"{rel}@{start / SAMPLE_RATE:.1f}s")
            pos += max(len(x) - fade, fade)
        return out, used

    def make(self, kind: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str], float]:
        """Background of ``kind``: samples, the files used, its level (dBFS RMS, floor included)."""
        if kind == "quiet":
            x = room_tone(rng, n, QUIET_DBFS)
            return x, [], db(x)
        if kind == "silence":
            return np.zeros(n), [], -200.0
        level = rng.uniform(*BACKGROUND_DBFS)
        if kind == "speech":
            x, used = self.speech(rng, n)
        elif kind == "music":
            x, used = self.music(rng, n)
        elif kind == "tv":
            s, used_s = self.speech(rng, n)
            m, used_m = self.music(rng, n)
            x = set_level(s, 0.0) + set_level(m, -rng.uniform(*TV_MUSIC_UNDER_DB))
            used = used_s + used_m
        else:
            raise UserError(f"background type {kind!r}: choose from {', '.join(SCENE_TYPES)}")
        x = set_level(x, level) + room_tone(rng, n, FLOOR_DBFS)
        return x, used, db(x)


def esc50_clips(esc50_dir: Path, folds: list[int]) -> list[dict]:
    """ESC-50 clips of ``folds`` (official layout: meta/esc50.csv, audio/), sorted by file name."""
    meta = Path(esc50_dir) / "meta" / "esc50.csv"
    try:
        with open(meta, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["fold"]) in folds]
    except OSError as exc:
        raise UserError(f"ESC-50 metadata {meta}: cannot read it ({exc.strerror or exc})") from exc
    audio = Path(esc50_dir) / "audio"
    clips = []
    for r in sorted(rows, key=lambda r: r["filename"]):
        path = audio / r["filename"]
        if not path.is_file():
            path = path.with_suffix(".flac")
        clips.append({"path": path, "label": r["category"], "fold": int(r["fold"])})
    if not clips:
        raise UserError(f"ESC-50 at {esc50_dir}: no clip in folds {folds}")
    return clips


def place_events(
    rng: np.random.Generator,
    background: np.ndarray,
    next_clip,
    opts: MixOptions,
    reference_db: float | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Add events (``next_clip()`` gives each) to ``background`` one after another until it is full;
    the mixture and the events' metadata. ``reference_db``: set each event to its ratio to this level
    (dBFS RMS) instead of to the background's over its span (quiet scenes with everyday events)."""
    n = len(background)
    mix = background.copy()
    bg_db = db(background)
    events = []
    pos = int(rng.uniform(*opts.lead_in_s) * SAMPLE_RATE)
    ebr_offset = int(rng.integers(len(opts.ebrs_db)))
    while True:
        clip = next_clip()
        x = read_audio(clip["path"])
        a, b = active_span(x)
        event = x[a:b]
        if len(event) == 0:
            continue
        if pos + len(event) + opts.gap_s[0] * SAMPLE_RATE > n:
            break
        for shift in range(0, 3 * SAMPLE_RATE, SAMPLE_RATE // 4):  # avoid a pause in the background
            if pos + shift + len(event) + opts.gap_s[0] * SAMPLE_RATE > n:
                break
            if db(background[pos + shift : pos + shift + len(event)]) >= bg_db - PAUSE_DB:
                pos += shift
                break
        span_db = db(background[pos : pos + len(event)]) if reference_db is None else reference_db
        if span_db <= -200.0:  # digital silence: the ratio is to a quiet room's level
            span_db = QUIET_DBFS
        ebr = opts.ebrs_db[(len(events) + ebr_offset) % len(opts.ebrs_db)]
        gain_db = ebr - (db(event) - span_db)
        mix[pos : pos + len(event)] += event * 10 ** (gain_db / 20)
        events.append(
            {
                "onset": pos / SAMPLE_RATE,
                "offset": (pos + len(event)) / SAMPLE_RATE,
                "label": clip["label"],
                "clip": clip["path"].name,
                "fold": clip["fold"],
                "ebr_db": ebr,
                "gain_db": round(gain_db, 3),
                "clip_active_s": [a / SAMPLE_RATE, b / SAMPLE_RATE],
            }
        )
        pos += len(event) + int(rng.uniform(*opts.gap_s) * SAMPLE_RATE)
    return mix, events


def make_scenes(
    out: Path,
    corpus_dir: Path,
    manifest: Path,
    esc50_dir: Path,
    split: str,
    folds: list[int],
    types: list[str],
    scenes_per_type: int,
    free_scenes_per_type: int,
    seed: int,
    opts: MixOptions | None = None,
    log=lambda msg: None,
) -> list[dict]:
    """Write the scenes into ``out``; returns their metadata."""
    import soundfile as sf

    opts = opts or MixOptions()
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        held = sorted(p.name for p in out.iterdir())
        raise UserError(
            f"--out {out}: already holds {len(held)} file(s) ({', '.join(held[:3])}{' ...' if len(held) > 3 else ''}); "
            "scenes go into a new or empty folder, so that no file there is overwritten and a benchmark never "
            "mixes scenes of two runs: choose another folder, or remove this one to make its scenes again"
        )
    if opts.quiet_events not in QUIET_EVENTS:
        raise UserError(f"quiet events {opts.quiet_events!r}: choose {' or '.join(QUIET_EVENTS)}")
    bad = [t for t in types if t not in SCENE_TYPES]
    if bad:
        raise UserError(f"background type {bad[0]!r}: choose from {', '.join(SCENE_TYPES)}")
    backgrounds = Backgrounds(corpus_dir, manifest, split, tuple(types))
    clips = esc50_clips(esc50_dir, folds)
    rng = np.random.default_rng(seed)
    order: list[int] = []

    def next_clip() -> dict:
        if not order:
            order.extend(rng.permutation(len(clips)).tolist())
        return clips[order.pop()]

    out.mkdir(parents=True, exist_ok=True)
    n = int(round(opts.duration_s * SAMPLE_RATE))
    metas = []
    for kind in types:
        for k in range(scenes_per_type + free_scenes_per_type):
            with_events = k < scenes_per_type
            name = f"{split}-{kind}-{'ev' if with_events else 'free'}-{k:03d}"
            background, used, bg_db = backgrounds.make(kind, rng, n)
            reference = None
            if with_events and kind == "quiet" and opts.quiet_events == "everyday":
                # from a generator of its own: the scene is the faint one's, clips, places and hiss, but louder events
                reference = float(np.random.default_rng([seed, len(metas)]).uniform(*BACKGROUND_DBFS))
            mix, events = place_events(rng, background, next_clip, opts, reference) if with_events else (background, [])
            peak = float(np.max(np.abs(mix)))
            scaled_db = 0.0
            if peak > PEAK_LIMIT:
                scaled_db = 20 * np.log10(PEAK_LIMIT / peak)
                mix = mix * (PEAK_LIMIT / peak)
            sf.write(str(out / f"{name}.flac"), mix.astype(np.float32), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            write_annotations(out / f"{name}.tsv", [Event(e["onset"], e["offset"], e["label"]) for e in events])
            meta = {
                "scene": name,
                "split": split,
                "background_type": kind,
                "seed": seed,
                "folds": folds,
                "duration_s": opts.duration_s,
                "background_dbfs": round(bg_db, 2),
                **({"event_reference_dbfs": round(reference, 2)} if reference is not None else {}),
                "scaled_db": round(scaled_db, 3),
                "background_sources": used,
                "events": [{**e, "onset": round(e["onset"], 4), "offset": round(e["offset"], 4)} for e in events],
            }
            (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
            metas.append(meta)
            log(f"{name}: {len(events)} events, background {bg_db:.1f} dBFS")
    return metas
