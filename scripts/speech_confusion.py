#!/usr/bin/env python3
"""Which labels does a model give on pure speech? Evidence for ``[detect] speech_confusable``.

Runs the model (ONNX Runtime, 1 thread) over the speech recordings of one split of the background
corpus, concatenated, in 5 s windows every 1 s, with the VAD, and prints for the windows where
speech dominates (VAD share >= 0.5) each label's share of top-1, of windows at or over 0.5, of
3-window-smoothed scores at or over 0.5, its mean and 95th-percentile score. Use the ``val`` split
to decide; ``test`` is refused (it is for claims only).

    PYTHONPATH=$PWD python3 scripts/speech_confusion.py --corpus data/background \
        --manifest data/background-manifest.csv --out docs/evidence/speech-confusion-val.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("data/background"))
    ap.add_argument("--manifest", type=Path, default=Path("data/background-manifest.csv"))
    ap.add_argument("--split", default="val", choices=["val", "train"])
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--out", type=Path, default=None, help="write the counts as JSON")
    args = ap.parse_args()

    from soundwatch.engines import create_engine
    from soundwatch.engines.base import softmax
    from soundwatch.models.checkpoint import resolve_model
    from soundwatch.vad import SpeechDetector

    engine = create_engine("onnx", resolve_model(args.model), threads=1)
    rate = engine.sample_rate
    rows = [r for r in csv.DictReader(open(args.manifest)) if r["split"] == args.split and r["type"] == "speech"]
    parts = []
    for r in rows:
        audio, sr = sf.read(args.corpus / r["path"], dtype="float32", always_2d=True)
        if sr != rate:
            sys.exit(f"{r['path']}: {sr} Hz, the model takes {rate} Hz")
        parts.append(audio.mean(axis=1))
    audio = np.concatenate(parts)
    vad = SpeechDetector(rate)
    window, hop = engine.window_samples, rate
    ends = list(range(window, len(audio) + 1, hop))
    shares, probs = [], []
    for i in range(0, len(ends), 8):
        batch = np.stack([audio[e - window : e] for e in ends[i : i + 8]])
        for e, w, p in zip(ends[i : i + 8], batch, softmax(engine.infer(batch))):
            shares.append(vad.update(w, e))
            probs.append(p)
    shares, probs = np.array(shares), np.stack(probs)
    smooth = np.stack([probs[max(0, k - 2) : k + 1].mean(0) for k in range(len(probs))])
    sel = shares >= 0.5
    P, S, n = probs[sel], smooth[sel], int(sel.sum())
    classes = engine.classes
    top1 = Counter(classes[i] for i in P.argmax(1))
    table = {
        c: {
            "top1": top1[c] / n,
            "p_ge_0.5": float((P[:, i] >= 0.5).mean()),
            "smoothed_ge_0.5": float((S[:, i] >= 0.5).mean()),
            "mean": float(P[:, i].mean()),
            "p95": float(np.percentile(P[:, i], 95)),
        }
        for i, c in enumerate(classes)
    }
    order = sorted(classes, key=lambda c: -table[c]["p95"])
    print(
        f"{len(audio) / rate:.0f} s of {args.split} speech ({len(rows)} files), {len(shares)} windows, "
        f"{n} with speech share >= 0.5 (mean share {shares.mean():.3f})"
    )
    print(f"{'label':18s} {'top1%':>6s} {'p>=.5%':>7s} {'smooth%':>8s} {'mean':>6s} {'p95':>6s}")
    for c in order[:15]:
        t = table[c]
        print(
            f"{c:18s} {100 * t['top1']:6.1f} {100 * t['p_ge_0.5']:7.1f} {100 * t['smoothed_ge_0.5']:8.1f} "
            f"{t['mean']:6.3f} {t['p95']:6.3f}"
        )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "split": args.split,
                    "files": len(rows),
                    "seconds": len(audio) / rate,
                    "windows_speech": n,
                    "labels": {c: table[c] for c in order},
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
