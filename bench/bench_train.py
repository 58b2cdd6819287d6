"""Training throughput on the CPU: clips/s and the share of time spent waiting for data.

Runs the real training loop (``soundwatch.train.loop.train_fold``: cached waveforms ->
wave augmentation -> log-mel -> masks -> SoundCLR -> hybrid loss -> AdamW) for one short
epoch on a subset of the real data, for each setting below, and prints a table. "Data
wait" is the time the loop spends taking a batch out of the decoded-waveform cache,
over the epoch's training time (augmentation and the frontend run in the step, on the
training device, and count as compute).

    python bench/bench_train.py --threads 2 --clips 128
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from soundwatch.data.datasets import ClipSet, load_dataset
from soundwatch.train.loop import RunOptions, hardware, train_fold

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SETTINGS = [  # (label, dataset, folder, arch, batch size)
    ("efficientnet_lite0, ESC-50 16 kHz", "esc50", "esc50-16k", "efficientnet_lite0", 32),
    ("resnet50 (random init), ESC-10 44.1 kHz", "esc10", "esc10-44k", "resnet50", 16),
]


def subset(clips: ClipSet, n_train: int, n_test: int) -> ClipSet:
    """The first ``n_train`` clips of folds 2.. and ``n_test`` of fold 1, in memory."""
    train = np.flatnonzero(clips.folds != 1)[:n_train]
    test = np.flatnonzero(clips.folds == 1)[:n_test]
    idx = np.concatenate([train, test])
    return replace(
        clips,
        waves=np.ascontiguousarray(clips.waves[idx]),
        labels=clips.labels[idx],
        folds=clips.folds[idx],
        names=[clips.names[i] for i in idx],
    )


def measure(label: str, dataset: str, folder: str, arch: str, batch: int, n_clips: int) -> dict:
    data_dir = DATA / folder
    rate = 16000 if folder.endswith("16k") else 44100
    clips = subset(load_dataset(dataset, data_dir, rate), n_clips, 4)
    opts = RunOptions(
        arch=arch,
        pretrained=arch == "efficientnet_lite0",
        loss="hybrid",
        epochs=1,
        warmup_epochs=1,
        batch_size=batch,
        protocol="paper",
        val_fraction=0.0,
        data_dir=str(data_dir),
    )
    with tempfile.TemporaryDirectory() as tmp:
        train_fold(clips, 1, opts, Path(tmp))
        record = json.loads((Path(tmp) / "metrics.jsonl").read_text().splitlines()[0])
    return {
        "setting": label,
        "batch": batch,
        "clips": n_clips,
        "train_s": record["train_s"],
        "clips_per_s": n_clips / record["train_s"],
        "data_wait": record["data_wait_share"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=128, help="training clips per setting (one epoch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows = [measure(*s, n_clips=args.clips if s[3] != "resnet50" else max(args.clips // 4, 32)) for s in SETTINGS]
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {hardware()}; load average before: {load[0]:.2f}")
    print("| setting | batch | clips | train s | clips/s | data wait |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['setting']} | {r['batch']} | {r['clips']} | {r['train_s']:.1f} | {r['clips_per_s']:.2f} | "
            f"{r['data_wait']:.1%} |"
        )


if __name__ == "__main__":
    main()
