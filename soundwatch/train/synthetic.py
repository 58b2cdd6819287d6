"""Small synthetic datasets in the official ESC-50 and UrbanSound8K layouts, for tests and smoke runs.

Each class has a texture of its own (tone, noise band, click train, chirp; at a pitch of its
own beyond four classes) so a tiny CNN, which pools over frequency and time, separates
the classes after a few steps and a random one does not.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf


def class_clip(label: int, n_classes: int, sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One clip of class ``label``: a texture of its own (tone, noise band, click train or chirp; the
    pattern repeats every four classes at a higher pitch), at a random level, phase and onset."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    kind, octave = label % 4, label // 4
    freq = min(300.0 * 2**octave * rng.uniform(0.9, 1.1), sample_rate / 4)
    if kind == 0:  # steady tone with two harmonics
        wave = sum(np.sin(2 * np.pi * k * freq * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
    elif kind == 1:  # band of noise above the pitch
        spectrum = np.fft.rfft(rng.standard_normal(n))
        bins = np.fft.rfftfreq(n, 1 / sample_rate)
        spectrum[(bins < freq) | (bins > 3 * freq)] = 0
        wave = np.fft.irfft(spectrum, n)
    elif kind == 2:  # click train, 8 clicks a second
        wave = np.zeros(n)
        wave[rng.integers(0, sample_rate // 8) :: sample_rate // 8] = 1.0
        wave = np.convolve(wave, np.hanning(32) * np.sin(2 * np.pi * freq * np.arange(32) / sample_rate), "same")
    else:  # rising chirp, repeated twice a second
        phase = 2 * np.pi * np.cumsum(freq * (1 + 3 * ((t * 2) % 1.0))) / sample_rate
        wave = np.sin(phase)
    wave = wave + 0.01 * rng.standard_normal(n)
    onset = rng.integers(0, n // 8)
    wave[:onset] *= 0.05
    return (wave * rng.uniform(0.2, 0.8) / (np.abs(wave).max() + 1e-9)).astype(np.float32)


def make_esc(
    root: Path,
    n_classes: int = 4,
    per_fold: int = 2,
    n_folds: int = 5,
    sample_rate: int = 8000,
    seconds: float = 1.0,
    ext: str = "flac",
    seed: int = 0,
    esc10_targets: list[int] | None = None,
) -> Path:
    """An ESC-50-layout tree (``audio/``, ``meta/esc50.csv``): ``per_fold`` clips per class and fold."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    rows = []
    for fold in range(1, n_folds + 1):
        for label in range(n_classes):
            target = esc10_targets[label] if esc10_targets else label
            for k in range(per_fold):
                stem = f"{fold}-{1000 * label + 10 * fold + k}-A-{target}"
                sf.write(
                    root / "audio" / f"{stem}.{ext}",
                    class_clip(label, n_classes, sample_rate, seconds, rng),
                    sample_rate,
                    subtype="PCM_16" if ext in ("wav", "flac") else None,
                )
                rows.append(
                    {
                        "filename": f"{stem}.wav",
                        "fold": fold,
                        "target": target,
                        "category": f"class{target}",
                        "esc10": str(esc10_targets is not None and label % 2 == 0),
                        "src_file": 1000 * label + 10 * fold + k,
                        "take": "A",
                    }
                )
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_us8k(
    root: Path, n_classes: int = 3, per_fold: int = 1, sample_rate: int = 8000, seconds: float = 0.5, seed: int = 0
) -> Path:
    """An UrbanSound8K-layout tree (``audio/fold1..10/``, ``metadata/UrbanSound8K.csv``), clips shorter than 4 s."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    rows = []
    for fold in range(1, 11):
        (root / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
        for label in range(n_classes):
            for k in range(per_fold):
                name = f"{100 * fold + k}-{label}-0-{k}.wav"
                clip = class_clip(label, n_classes, sample_rate, seconds * rng.uniform(0.5, 1.0), rng)
                sf.write(root / "audio" / f"fold{fold}" / name, clip, sample_rate, subtype="PCM_16")
                rows.append(
                    {
                        "slice_file_name": name,
                        "fsID": 100 * fold + k,
                        "start": 0.0,
                        "end": seconds,
                        "salience": 1,
                        "fold": fold,
                        "classID": label,
                        "class": f"sound{label}",
                    }
                )
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


# (split, corpus type) -> the ESC-50 category (folds 4-5) that stands in for it in standin_background_manifest
STANDIN_BACKGROUNDS = {
    ("train", "speech"): "laughing",
    ("train", "music"): "church_bells",
    ("val", "speech"): "coughing",
    ("val", "music"): "chirping_birds",
}


def standin_background_manifest(esc50_dir: Path, out: Path, per_type: int, package_per_file: bool = False) -> Path:
    """A background-corpus manifest at ``out`` whose train and val "speech" and "music" are real ESC-50 clips
    of folds 4-5 (``per_type`` of each category of STANDIN_BACKGROUNDS), for tests and the GPU check where
    the real corpus is not at hand; its corpus directory is ``esc50_dir/audio``. One package per split
    (``esc50-<split>``), or with ``package_per_file`` one per file (``esc50-<split>-<type>-<i>``)."""
    from soundwatch.data.corpus import MANIFEST_FIELDS
    from soundwatch.data.datasets import index_audio

    with open(Path(esc50_dir) / "meta" / "esc50.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["fold"] in ("4", "5")]
    audio = index_audio(Path(esc50_dir) / "audio")
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        for (split, kind), category in STANDIN_BACKGROUNDS.items():
            for i, r in enumerate([r for r in rows if r["category"] == category][:per_type]):
                writer.writerow(
                    {
                        "split": split,
                        "type": kind,
                        "package": f"esc50-{split}-{kind}-{i}" if package_per_file else f"esc50-{split}",
                        "version": "",
                        "licence": "CC-BY-NC",
                        "source_path": r["filename"],
                        "duration_s": "5.0",
                        "source_rate": "16000",
                        "path": audio[Path(r["filename"]).stem].name,
                    }
                )
    return Path(out)
