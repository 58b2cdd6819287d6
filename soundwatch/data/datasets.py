"""Benchmark datasets in their official layouts, decoded once and cached as one array.

- ESC-50: ``audio/*`` + ``meta/esc50.csv`` (50 classes, 5 folds, 5 s clips).
- ESC-10: the ``esc10 == True`` rows of the same files, targets mapped to 0..9.
- UrbanSound8K: ``audio/fold1..10/*`` + ``metadata/UrbanSound8K.csv`` (10 classes, 10 folds, <= 4 s).

Clips resolve by file stem whatever the extension (the metadata names ``.wav``; a copy
may hold FLAC or OGG). Every clip is decoded with soundfile, mixed to mono, resampled
with soxr to the model rate and padded (zeros at the end) or cut to the clip length.
The result is one float32 array (clips, samples) stored as ``.npy`` under the cache
directory, keyed by dataset, rate and the list of files (name, size, mtime), so epochs
never decode again and a changed copy is decoded afresh. A clip that cannot be read is
skipped, counted and named in ``ClipSet.skipped``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from soundwatch.errors import UserError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: its folds, its clip length and its learning rate."""

    name: str
    n_folds: int
    clip_s: float


SPECS = {
    "esc50": DatasetSpec("esc50", 5, 5.0),
    "esc10": DatasetSpec("esc10", 5, 5.0),
    "us8k": DatasetSpec("us8k", 10, 4.0),
}


@dataclass
class ClipSet:
    """Decoded clips of one dataset at one rate: ``waves[i]`` has label ``labels[i]`` in fold ``folds[i]``."""

    name: str
    classes: list[str]
    sample_rate: int
    clip_s: float
    n_folds: int
    waves: np.ndarray  # (clips, samples) float32, possibly memory-mapped
    labels: np.ndarray  # (clips,) int64
    folds: np.ndarray  # (clips,) int64, 1-based
    names: list[str]
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"} per clip left out
    sources: list[str] = field(default_factory=list)  # source recording of each clip (ESC src_file, US8K fsID)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_s * self.sample_rate))

    def indices(self, folds: list[int]) -> np.ndarray:
        return np.flatnonzero(np.isin(self.folds, folds))


@dataclass
class _Row:
    stem: str
    subdir: str  # relative folder under audio/
    label: int
    fold: int
    category: str
    source: str  # clips cut from one recording share it: they must not straddle a train/validation split


def default_cache_dir() -> Path:
    """$SOUNDWATCH_CACHE, else $XDG_CACHE_HOME/soundwatch, else ~/.cache/soundwatch."""
    env = os.environ.get("SOUNDWATCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "soundwatch"


def _require(path: Path, what: str, root: Path, layout: str) -> None:
    if not path.exists():
        raise UserError(f"{root} is not in the official {layout} layout: {what} {path.relative_to(root)} is missing")


# ESC-50's classes in target order (Piczak 2015): a copy that holds only some of them keeps this list,
# so a model trained on ESC-50 can score a user's own recordings of a few of its classes.
ESC50_CLASSES = (
    "dog",
    "rooster",
    "pig",
    "cow",
    "frog",
    "cat",
    "hen",
    "insects",
    "sheep",
    "crow",
    "rain",
    "sea_waves",
    "crackling_fire",
    "crickets",
    "chirping_birds",
    "water_drops",
    "wind",
    "pouring_water",
    "toilet_flush",
    "thunderstorm",
    "crying_baby",
    "sneezing",
    "clapping",
    "breathing",
    "coughing",
    "footsteps",
    "laughing",
    "brushing_teeth",
    "snoring",
    "drinking_sipping",
    "door_wood_knock",
    "mouse_click",
    "keyboard_typing",
    "door_wood_creaks",
    "can_opening",
    "washing_machine",
    "vacuum_cleaner",
    "clock_alarm",
    "clock_tick",
    "glass_breaking",
    "helicopter",
    "chainsaw",
    "siren",
    "car_horn",
    "engine",
    "train",
    "church_bells",
    "airplane",
    "fireworks",
    "hand_saw",
)


def is_esc50_numbering(pairs) -> bool:
    """Whether there are (target, category) pairs and each is ESC-50's (else: another dataset in ESC-50's layout)."""
    pairs = list(pairs)
    return bool(pairs) and all(0 <= t < len(ESC50_CLASSES) and ESC50_CLASSES[t] == c for t, c in pairs)


def _read_esc_rows(root: Path, esc10: bool) -> list[_Row]:
    _require(root / "meta" / "esc50.csv", "metadata file", root, "ESC-50")
    _require(root / "audio", "folder", root, "ESC-50")
    with open(root / "meta" / "esc50.csv", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"filename", "fold", "target", "category"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{root / 'meta' / 'esc50.csv'}: columns {', '.join(sorted(missing))} are missing")
        rows = list(reader)
    if esc10:
        rows = [r for r in rows if r.get("esc10", "").strip().lower() == "true"]
        if not rows:
            raise UserError(f"{root / 'meta' / 'esc50.csv'}: no rows with esc10 == True")
    targets = sorted({int(r["target"]) for r in rows})
    if not esc10 and is_esc50_numbering((int(r["target"]), r["category"]) for r in rows):
        targets = list(range(len(ESC50_CLASSES)))  # ESC-50 keeps its classes whatever clips the copy holds
    remap = {t: i for i, t in enumerate(targets)}
    return [
        _Row(
            Path(r["filename"]).stem,
            "",
            remap[int(r["target"])],
            int(r["fold"]),
            r["category"],
            r.get("src_file") or Path(r["filename"]).stem,
        )
        for r in rows
    ]


def _read_us8k_rows(root: Path) -> list[_Row]:
    meta = root / "metadata" / "UrbanSound8K.csv"
    _require(meta, "metadata file", root, "UrbanSound8K")
    _require(root / "audio", "folder", root, "UrbanSound8K")
    with open(meta, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"slice_file_name", "fold", "classID", "class"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{meta}: columns {', '.join(sorted(missing))} are missing")
        rows = list(reader)
    folds = sorted({int(r["fold"]) for r in rows})
    absent = [f"fold{k}" for k in folds if not (root / "audio" / f"fold{k}").is_dir()]
    if absent:
        raise UserError(f"{root} is not in the official UrbanSound8K layout: audio/{', audio/'.join(absent)} missing")
    return [
        _Row(
            Path(r["slice_file_name"]).stem,
            f"fold{r['fold']}",
            int(r["classID"]),
            int(r["fold"]),
            r["class"],
            r.get("fsID") or Path(r["slice_file_name"]).stem,
        )
        for r in rows
    ]


def index_audio(folder: Path) -> dict[str, Path]:
    """stem -> file for every audio file in ``folder`` (first extension in AUDIO_EXTENSIONS order wins)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    rank = {ext: i for i, ext in enumerate(AUDIO_EXTENSIONS)}
    for entry in os.scandir(folder):
        ext = os.path.splitext(entry.name)[1].lower()
        if ext in rank:
            stem = os.path.splitext(entry.name)[0]
            if stem not in found or rank[ext] < rank[found[stem].suffix.lower()]:
                found[stem] = Path(entry.path)
    return found


def decode_clip(path: Path, sample_rate: int, n_samples: int) -> np.ndarray:
    """Read ``path``, mix to mono, resample to ``sample_rate``, pad with zeros or cut to ``n_samples``."""
    import soxr

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32)
    if not np.all(np.isfinite(mono)):
        raise ValueError("non-finite samples")
    out = np.zeros(n_samples, np.float32)
    n = min(n_samples, mono.shape[0])
    out[:n] = mono[:n]
    return out


def _fingerprint(files: list[Path | None]) -> str:
    h = hashlib.sha256()
    for p in files:
        if p is None:
            h.update(b"-\n")
            continue
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_dataset(
    name: str,
    data_dir: Path,
    sample_rate: int,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClipSet:
    """Decode (or read from the cache) every clip of dataset ``name`` under ``data_dir``."""
    if name not in SPECS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(SPECS)}")
    spec = SPECS[name]
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist")
    rows = _read_us8k_rows(root) if name == "us8k" else _read_esc_rows(root, esc10=name == "esc10")
    if name == "esc50" and is_esc50_numbering((r.label, r.category) for r in rows):
        classes = list(ESC50_CLASSES)
    else:
        by_label = {r.label: r.category for r in rows}
        classes = [by_label[i] for i in range(len(by_label))]
    indexes: dict[str, dict[str, Path]] = {}
    files: list[Path | None] = []
    for r in rows:
        if r.subdir not in indexes:
            indexes[r.subdir] = index_audio(root / "audio" / r.subdir)
        files.append(indexes[r.subdir].get(r.stem))
    n_samples = int(round(spec.clip_s * sample_rate))

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = f"{name}-{sample_rate}-{_fingerprint(files)}"
    wave_file, index_file = cache / f"{key}.npy", cache / f"{key}.json"
    if wave_file.is_file() and index_file.is_file():
        index = json.loads(index_file.read_text())
    else:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"{key}.{os.getpid()}.tmp.npy"  # concurrent loaders never share a partial file
        # written clip by clip into the file: a large dataset never sits in memory twice
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(rows), n_samples))
        kept, skipped = [], []
        for i, (row, path) in enumerate(zip(rows, files)):
            if progress:
                progress(i, len(rows))
            if path is None:
                skipped.append(
                    {"file": f"audio/{row.subdir + '/' if row.subdir else ''}{row.stem}.*", "reason": "missing"}
                )
                continue
            try:
                out[len(kept)] = decode_clip(path, sample_rate, n_samples)
                kept.append(i)
            except Exception as exc:  # any decoder failure: corrupt, truncated, unsupported
                skipped.append({"file": str(path.relative_to(root)), "reason": f"unreadable: {exc}"})
        if progress:
            progress(len(rows), len(rows))
        out.flush()
        del out
        tmp.replace(wave_file)
        index = {"kept": kept, "skipped": skipped}
        index_tmp = cache / f"{key}.{os.getpid()}.tmp.json"  # a concurrent reader never sees half an index
        index_tmp.write_text(json.dumps(index))
        index_tmp.replace(index_file)
    kept = index["kept"]
    waves = np.load(wave_file, mmap_mode="r")[: len(kept)]  # rows past the kept clips stay unused
    if not kept:
        raise UserError(f"{root}: no readable clips ({len(index['skipped'])} missing or corrupt)")
    return ClipSet(
        name=name,
        classes=classes,
        sample_rate=sample_rate,
        clip_s=spec.clip_s,
        n_folds=spec.n_folds,
        waves=waves,
        labels=np.array([rows[i].label for i in kept], np.int64),
        folds=np.array([rows[i].fold for i in kept], np.int64),
        names=[rows[i].stem for i in kept],
        skipped=index["skipped"],
        sources=[rows[i].source for i in kept],
    )


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, groups: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, val) of ``labels``: about ``fraction`` of each class (at least one clip) held out, seeded.

    With ``groups`` (the source recording of each clip) whole groups are held out, so no
    recording has clips on both sides: a validation split that shares recordings with
    the training clips flatters the model (ESC-50 keeps a recording's clips in one fold
    for the same reason).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        train, val = [], []
        for label in np.unique(labels):
            pos = np.flatnonzero(labels == label)
            rng.shuffle(pos)
            n_val = max(1, int(round(fraction * len(pos)))) if fraction > 0 and len(pos) > 1 else 0
            val.extend(pos[:n_val])
            train.extend(pos[n_val:])
        return np.sort(np.array(train, np.int64)), np.sort(np.array(val, np.int64))
    held: set[str] = set()
    for label in np.unique(labels):
        pos = np.flatnonzero(labels == label)
        names = sorted({groups[i] for i in pos})
        if fraction <= 0 or len(names) < 2:
            continue
        rng.shuffle(names)
        size = {g: 0 for g in names}
        for i in pos:
            size[groups[i]] += 1
        want, taken = max(1, int(round(fraction * len(pos)))), 0
        for g in names[:-1]:  # never the whole class
            if taken >= want:
                break
            held.add(g)
            taken += size[g]
    in_val = np.array([g in held for g in groups], bool)
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def parse_folds(text: str | None, n_folds: int, protocol: str = "cv") -> list[int]:
    """Folds from ``1``, ``1,3`` or ``1-5`` (a --folds flag); none given: every fold, or fold 1 under the paper's
    protocol. A fold the dataset lacks is a UserError."""
    if not text:
        return [1] if protocol == "paper" else list(range(1, n_folds + 1))
    folds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                folds += list(range(lo, hi + 1))
            else:
                folds.append(int(part))
        except ValueError:
            raise UserError(f"--folds: cannot read {part!r}; use e.g. 1 or 1,3 or 1-5") from None
    bad = [k for k in folds if not 1 <= k <= n_folds]
    if bad:
        raise UserError(f"--folds: fold {bad[0]} does not exist; this dataset has folds 1-{n_folds}")
    return sorted(set(folds))


def progress_bar():
    """A rich progress bar on stderr, drawn only on a terminal."""
    import sys

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
        disable=not sys.stderr.isatty(),
        console=__import__("rich.console", fromlist=["Console"]).Console(stderr=True),
    )


def load_clips(dataset: str, data_dir: Path, sample_rate: int) -> "ClipSet":
    """``load_dataset`` with a progress bar on a terminal (stderr); skipped clips are logged."""
    with progress_bar() as progress:
        task = progress.add_task(f"decoding {dataset} at {sample_rate} Hz", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        clips = load_dataset(dataset, data_dir, sample_rate, progress=report)
    if clips.skipped:
        log.warning(
            "skipped %d clip(s) of %s: %s%s",
            len(clips.skipped),
            dataset,
            "; ".join(f"{s['file']} ({s['reason']})" for s in clips.skipped[:5]),
            " ..." if len(clips.skipped) > 5 else "",
        )
    return clips
