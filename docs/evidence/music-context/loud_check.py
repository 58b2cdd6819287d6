"""Step 1 of rule-loud.md: does the music context hear a loud sound alone as music?

The first clip of each class of an ESC-50 fold, 7 s apart, over digital silence and over room tone at
-55 dBFS, through the daemon's own path (shipped model, [detect] music_threshold 0.8): the clips during
which (or up to 2.5 s after) the context says music (>= 0.5).

    python docs/evidence/music-context/loud_check.py --fold 2
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))

from helpers import ScoresKeeper  # noqa: E402

from soundwatch.config import Settings  # noqa: E402
from soundwatch.data.scenes import room_tone  # noqa: E402
from soundwatch.live_cli import _build_daemon  # noqa: E402

RATE = 16000


def first_clips(data_dir: Path, fold: int) -> list[tuple[Path, str]]:
    rows = sorted(
        csv.DictReader(open(data_dir / "meta" / "esc50.csv")), key=lambda r: (int(r["target"]), r["filename"])
    )
    chosen, seen = [], set()
    for row in rows:
        if row["fold"] == str(fold) and row["category"] not in seen:
            seen.add(row["category"])
            chosen.append((next((data_dir / "audio").glob(Path(row["filename"]).stem + ".*")), row["category"]))
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fold", type=int, default=2)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "esc50-16k")
    args = ap.parse_args()
    parts, spans, t = [], [], 0.0
    for path, label in first_clips(args.data_dir, args.fold):
        audio, rate = sf.read(path, dtype="float32")
        assert rate == RATE
        parts += [np.zeros(7 * RATE), audio]
        spans.append((label, t + 7, t + 7 + len(audio) / RATE))
        t += 7 + len(audio) / RATE
    silence = np.concatenate(parts + [np.zeros(7 * RATE)])
    room = silence + room_tone(np.random.default_rng(0), len(silence), -55.0)
    for name, audio in (("digital silence", silence), ("room tone -55 dBFS", room)):
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "clips.wav"
            sf.write(wav, audio.astype(np.float32), RATE)
            settings = Settings()
            settings.events.log_path, settings.listen.threads, settings.detect.vad = "", 1, False
            settings.detect.music_threshold = 0.8
            pub = ScoresKeeper()
            _build_daemon(settings, pub, wav, realtime=False, record_input=None).run(threading.Event())
        heard = [(s["offset_s"], s.get("music")) for s in pub.scores]
        flagged = []
        for label, a, z in spans:
            during = [m for t, m in heard if a <= t <= z + 2.5 and m is not None]
            if during and max(during) >= 0.5:
                flagged.append(f"{label} {max(during):.2f}")
        print(f"{name}: {len(flagged)} of {len(spans)} clips heard as music: {', '.join(flagged) or 'none'}")


if __name__ == "__main__":
    main()
