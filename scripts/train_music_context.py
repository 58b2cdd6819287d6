#!/usr/bin/env python
"""Fit the shipped model's music context from scene folders recorded by scripts/replay_detect.py.

    python scripts/train_music_context.py data/scenes/train-ctx --out soundwatch/assets/soundclr-esc50-effl0.music.json

Reads (or makes) the recording runs/replay/<folder>-<model sha256 prefix>-onnx.pkl of each folder, as
replay_detect.py does, and fits soundwatch.music.fit_music on it: music scenes against quiet, speech and
TV scenes. `soundwatch calibrate music` does the same for any model, without the cache.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenes", type=Path, nargs="+", help="folders of scenes (make-scenes), the train split's")
    ap.add_argument("--out", type=Path, required=True, help="music context file to write")
    ap.add_argument("--context-s", type=float, default=10.0, help="seconds of windows the context averages")
    ap.add_argument("--min-windows", type=int, help="windows of sound before music may play (default: a full context)")
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "replay", help="where recordings are kept")
    ap.add_argument("--config", type=Path, help="config.toml (its [listen] model; default: the repository's)")
    args = ap.parse_args()

    from soundwatch.models.card import read_card, resolve_model
    from soundwatch.music import fit_music, write_music
    from soundwatch.scenes_cli import offline_settings
    from soundwatch.thresholds import recorded_folders

    settings = offline_settings(args.config, backend="onnx", threads=1)
    checkpoint = resolve_model(Path(settings.listen.model) if settings.listen.model else None)
    classes = read_card(checkpoint).classes
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    recorded = recorded_folders(settings, args.scenes, checkpoint, "onnx", args.cache, log=log)
    windows = max(1, round(args.context_s / settings.listen.hop_s))
    model, summary = fit_music(
        recorded, classes, windows, min_windows=args.min_windows, min_level_dbfs=settings.detect.min_level_dbfs
    )
    write_music(
        model,
        checkpoint,
        args.out,
        scene_folders=[str(f) for f in args.scenes],
        hop_s=settings.listen.hop_s,
        context_s=args.context_s,
        fitted_on=summary,
        command="python scripts/train_music_context.py " + " ".join(sys.argv[1:]),
    )
    print(f"wrote {args.out}: {summary}")


if __name__ == "__main__":
    main()
