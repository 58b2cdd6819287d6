"""The detector's cost per window beside the model's, measured in one run (issue 11: processing cost per window).

    python bench/bench_detector.py data/scenes/test --files 8 [--rounds 5]

The daemon's own path (offline_settings: default config, ONNX, one thread) runs over the first --files
recordings of the folder (sorted by name, not chosen by result) once, keeping what its detector was fed
(soundwatch.thresholds.record_windows, as `calibrate thresholds` does); that pass, divided by its windows,
is the reference: the whole per-window cost of scoring (frontend, model, VAD, detector). The recorded
windows are then replayed through fresh detectors of the default settings, --rounds times, taking turns:
- the detector as it is;
- the same detector with the noise floor of commit 2934499 (np.percentile over the recent hop levels at
  every ask, about three times a window), to show what caching the floor per hop saved.
The table gives the median of the rounds per window and the ratio to the reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


class PercentileEveryAsk:
    """The noise floor before caching: the same percentile, computed at every ask."""

    def __init__(self, floor):
        self.levels, self.percentile = floor.levels, floor.percentile

    def update(self, hop_level_dbfs: float) -> None:
        self.levels.append(hop_level_dbfs)

    @property
    def level(self) -> float | None:
        return float(np.percentile(self.levels, self.percentile)) if self.levels else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenes", type=Path, help="a folder of recordings with .tsv annotations (make-scenes)")
    ap.add_argument("--files", type=int, default=8, help="the first N recordings, by name")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from soundwatch.detect import detector_from_settings, resolve_thresholds
    from soundwatch.models.card import read_card, resolve_model
    from soundwatch.music import resolve_music
    from soundwatch.scenes_cli import annotated_files, offline_settings
    from soundwatch.thresholds import record_windows, replay

    settings = offline_settings(None, backend="onnx", threads=1)
    checkpoint = resolve_model(None)
    classes = read_card(checkpoint).classes
    files = annotated_files(args.scenes)[: args.files]
    record_windows(settings, files[:1])  # the graph loaded, caches warm: not timed
    t = time.perf_counter()
    recorded = record_windows(settings, files)
    windows = sum(len(s["windows"]) for s in recorded)
    reference = (time.perf_counter() - t) / windows

    d = settings.detect
    thresholds = resolve_thresholds(d.thresholds_file, checkpoint, classes, d.threshold)
    music = resolve_music(d, checkpoint, classes)

    def detector(old_floor: bool):
        det = detector_from_settings(d, classes, thresholds, settings.listen.hop_s, music)
        if old_floor:
            det.floor = PercentileEveryAsk(det.floor)
        return det

    timings: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for _ in range(args.rounds):
        for old in (False, True):
            t = time.perf_counter()
            results[old] = replay(recorded, lambda old=old: detector(old))
            timings[old].append((time.perf_counter() - t) / windows)
    if results[False] != results[True]:
        sys.exit("the two noise floors detected different events: not the same detector")
    print(f"{len(files)} recordings of {args.scenes}, {windows} windows; shipped model, default settings, 1 thread\n")
    print("| per window | time | vs the whole scoring pass |")
    print("|---|---|---|")
    print(f"| scoring pass (daemon path: frontend, model, VAD, detector) | {reference * 1e3:.2f} ms | 1.000 |")
    for old, name in ((False, "detector alone, as it is"), (True, "detector alone, floor computed at every ask")):
        m = statistics.median(timings[old])
        print(f"| {name} | {m * 1e3:.3f} ms | {m / reference:.4f} |")


if __name__ == "__main__":
    main()
