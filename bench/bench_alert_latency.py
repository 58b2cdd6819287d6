"""Alert latency in real time, quiet room: ESC-50 fold-1 clips played into the virtual microphone.

    XDG_RUNTIME_DIR=/tmp/soundwatch-pulse scripts/pulse-mic.sh start
    XDG_RUNTIME_DIR=/tmp/soundwatch-pulse python bench/bench_alert_latency.py [--clips 20] [--data-dir DIR]

`soundwatch listen --device pulse` runs with the shipped model (or --model) and default settings (ONNX). For
each of the first clip of the first --clips classes in ESC-50 fold 1 (never trained on; chosen
by order, not by result), in turn: silence, then `paplay` of the clip. The true onset is when
paplay started plus the clip's first frame within 30 dB of its loudest (ESC-50 clips begin
with padding). Reported, over the clips whose label was detected (a `detection.<label>` start
within 10 s):
- onset-to-message: arrival of the `start` message minus the true onset (paplay's own start-up
  delay counts against us); target median <= 2.0 s;
- start error: the message's `start` field minus the true onset; target |error| <= 0.5 s for
  80% of the found events.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import Collector, free_endpoint, soundwatch  # noqa: E402


def active_onset_s(audio: np.ndarray, rate: int, frame_s: float = 0.02) -> float:
    """Start of the first frame within 30 dB of the clip's loudest frame."""
    n = int(frame_s * rate)
    frames = audio[: len(audio) // n * n].reshape(-1, n)
    db = 10 * np.log10(np.maximum(np.mean(frames**2, axis=1), 1e-12))
    return float(np.flatnonzero(db >= db.max() - 30)[0] * frame_s)


def fold1_clips(data_dir: Path, count: int) -> list[tuple[Path, str]]:
    rows = list(csv.DictReader(open(data_dir / "meta" / "esc50.csv")))
    chosen, seen = [], set()
    for row in sorted(rows, key=lambda r: (int(r["target"]), r["filename"])):
        if row["fold"] == "1" and row["category"] not in seen:
            seen.add(row["category"])
            stem = Path(row["filename"]).stem
            path = next((data_dir / "audio").glob(stem + ".*"))
            chosen.append((path, row["category"]))
    return chosen[:count]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "esc50-16k")
    ap.add_argument(
        "--model",
        type=Path,
        help="checkpoint to listen with (default: the shipped model); its "
        "<name>.thresholds.json beside it is used as `listen` would",
    )
    ap.add_argument("--config", type=Path, help="config.toml to listen with (default: the repository's)")
    args = ap.parse_args()
    endpoint = free_endpoint()
    sub = Collector(endpoint)
    model = ("--model", str(args.model)) if args.model else ()
    model += ("--config", str(args.config)) if args.config else ()
    proc = soundwatch(
        "listen",
        "--device",
        "pulse",
        "--backend",
        "onnx",
        "--threads",
        "1",
        "--endpoint",
        endpoint,
        "--no-dashboard",
        "--event-log",
        "",
        *model,
    )
    rows = []
    try:
        if not sub.wait_for(lambda t, p: t.startswith("scores."), 90):
            sys.exit(f"no scores from listen: {proc.stderr.read() if proc.poll() is not None else ''}")
        for path, label in fold1_clips(args.data_dir, args.clips):
            audio, rate = sf.read(path, dtype="float32")
            quiet_since = time.time()
            # wait for 6 s of quiet windows (no event open) before each clip
            sub.wait_for(lambda t, p: t.startswith("scores.") and p["ts"] > quiet_since + 6.0, 20)
            started = time.time()
            subprocess.run(["paplay", "-d", "virt", str(path)], check=True, timeout=30)
            onset = started + active_onset_s(audio, rate)
            got = sub.wait_for(
                lambda t, p: t.startswith(f"detection.{label}.") and p["event"] == "start" and p["ts"] > started,
                max(0.0, started + 10.0 - time.time()),
            )
            if got is None:
                rows.append((label, None, None))
                print(f"{label:18s} not detected", flush=True)
                continue
            latency, error = got[0] - onset, got[2]["start"] - onset
            rows.append((label, latency, error))
            print(f"{label:18s} onset-to-message {latency:5.2f} s, start error {error:+5.2f} s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        sub.close()
    found = [r for r in rows if r[1] is not None]
    if found:
        lat = sorted(r[1] for r in found)
        within = sum(abs(r[2]) <= 0.5 for r in found)
        print(
            f"\n| clips | detected | onset-to-message median / max | start within 0.5 s |\n|---|---|---|---|\n"
            f"| {len(rows)} | {len(found)} | {statistics.median(lat):.2f} s / {lat[-1]:.2f} s | "
            f"{within} of {len(found)} ({100 * within / len(found):.0f}%) |"
        )


if __name__ == "__main__":
    main()
