#!/usr/bin/env python
"""An adaptation job for a lent GPU machine (issue 11): pack it here, run it there in one call, join the model here.

    python scripts/gpu_job.py pack                     # writes .gpujob/ (gitignored), says how big the call is
    # with the device tool, in one call (size --epochs by bench/gpu_check.sh's adapt row):
    #   run(command="scripts/gpu-job.sh --epochs 12 --mixed-per-clip 1 --background-windows 1600 --distill 2",
    #       carry=[".gpujob"], timeout_s=580)
    python scripts/gpu_job.py join FILES_AT runs/gpu-adapt/     # the adapted model and its card, checked

Only the working tree travels to a lent machine, 64 MiB in all (the tracked files take about 30 MB of it),
and nothing there can reach the network. So the job carries, under .gpujob/:

- ESC-50's clips of the folds the shipped model was trained on (its card's, 2-5), as Opus at 32 kbps
  (29 MB with the first 64 clips of fold 1, which bench/gpu_check.sh's parity part finds here). At 32 kbps
  Opus is near-transparent for the model; lower rates are not (``python scripts/gpu_job.py codec``: on 100
  fold-1 clips the shipped model gives the FLAC's top label for 98 at 32 kbps, 93 at 28, 89 at 24, 86 at 16).
- Train and val backgrounds (speech and music) as Opus at 14 kbps, taken in turn from each of the corpus'
  packages up to ``--minutes`` (16) of each type for train and a third of that for val (fewer where the call
  cannot carry them after the tracked files, the clips and the wheels: pack says so), 30 s of a song at most,
  from a seeded place in it: variety matters more than hours (a CPU run of ``adapt --end-to-end`` hears 24
  minutes of each type, 12 streams of 2 minutes). The manifest beside them is the corpus manifest's rows
  for those files.
- The wheels the machine lacks (soundfile, cffi, pycparser for reading audio; efficientnet-lite-pytorch, the
  networks' architecture; Python 3.12, manylinux x86-64).
- The commit it was packed at (recorded in the adapted model's card).

``scripts/gpu-job.sh`` runs ``soundwatch adapt --end-to-end --device cuda`` over it there and splits the model
into parts small enough to come back (16 MiB a file); ``join`` puts them together and checks their sha256.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from soundwatch.data.corpus import MANIFEST_FIELDS, read_manifest  # noqa: E402
from soundwatch.data.datasets import index_audio  # noqa: E402
from soundwatch.errors import UserError  # noqa: E402

LIMIT = 64 * 2**20  # what travels to a lent machine in one call
SLACK = 2**18  # for the manifests, the commit file and the estimate's error
PART = 15 * 2**20  # a file that comes back is at most 16 MiB
# what soundwatch needs there that its image lacks: audio reading, and the EfficientNet-Lite architecture that every
# model of this project is built on (not its 17 MB ImageNet weights: adaptation starts from a trained model)
WHEELS = ("soundfile==0.14.0", "cffi==2.0.0", "pycparser==3.00", "efficientnet-lite-pytorch==0.1.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def encode(src: Path, dst: Path, kbps: int, max_s: float | None = None, start_s: float = 0.0) -> None:
    """``src`` as mono Opus in Ogg at 16 kHz and ``kbps``, ``max_s`` seconds of it from ``start_s``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    cut = ["-ss", f"{start_s:.3f}", "-t", f"{max_s:g}"] if max_s else []
    cmd = ["ffmpeg", "-v", "error", "-y", *cut, "-i", str(src), "-ac", "1", "-ar", "16000"]
    cmd += ["-c:a", "libopus", "-b:a", f"{kbps}k", str(dst)]
    got = subprocess.run(cmd, capture_output=True, text=True)
    if got.returncode != 0:
        raise UserError(f"ffmpeg could not encode {src}: {got.stderr.strip()[-300:]}")


def pick_backgrounds(rows: list[dict], minutes: float, max_file_s: float, seed: int) -> list[dict]:
    """Rows taken in turn from each package (a seeded order within each) until ``minutes`` of audio, each file
    counted at most ``max_file_s``."""
    by_package: dict[str, list[dict]] = {}
    for r in rows:
        by_package.setdefault(r["package"], []).append(r)
    rng = random.Random(seed)
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_package.items())]
    picked, total = [], 0.0
    while total < minutes * 60 and any(queues):
        for q in queues:
            if q and total < minutes * 60:
                r = q.pop()
                picked.append(r)
                total += min(float(r["duration_s"]), max_file_s)
    return picked


def tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pack(args) -> None:
    if shutil.which("ffmpeg") is None:
        raise UserError("pack needs ffmpeg with libopus (apt-get install ffmpeg)")
    esc50, corpus, manifest, out = Path(args.esc50), Path(args.corpus), Path(args.manifest), Path(args.out)
    if not (esc50 / "meta" / "esc50.csv").is_file():
        raise UserError(f"--esc50 {esc50}: no meta/esc50.csv (ESC-50 at 16 kHz in the official layout)")
    if not manifest.is_file() or not corpus.is_dir():
        raise UserError(f"no background corpus at {corpus} ({manifest}): run scripts/build-background-corpus.sh")
    if out.exists():
        raise UserError(f"{out} already exists: remove it first (pack never adds to an older job)")
    try:
        _pack(args, esc50, corpus, manifest, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # never half a job left behind: a failed pack leaves nothing
        raise


def _pack(args, esc50: Path, corpus: Path, manifest: Path, out: Path) -> None:
    folds = [str(f) for f in args.folds]
    with open(esc50 / "meta" / "esc50.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    clips = [r for r in rows if r["fold"] in folds]
    if args.max_clips:
        clips = clips[: args.max_clips]
    # bench/gpu_check.sh's parity part reads the first --check-clips clips of fold 1 (in the meta file's order)
    clips += [r for r in rows if r["fold"] == "1" and "1" not in folds][: args.check_clips]
    audio = index_audio(esc50 / "audio")
    missing = [r["filename"] for r in clips if Path(r["filename"]).stem not in audio]
    if missing:
        raise UserError(f"--esc50 {esc50}: {len(missing)} clips of folds {','.join(folds)} are missing ({missing[0]})")
    corpus_rows = read_manifest(manifest)
    pools = {}
    for split in ("train", "val"):
        for kind in ("speech", "music"):
            pools[split, kind] = [r for r in corpus_rows if r["split"] == split and r["type"] == kind]
            if not pools[split, kind]:
                raise UserError(f"background manifest {manifest}: split {split!r} has no {kind}")
    limit = int(args.limit_mb * 2**20)
    tracked = tracked_bytes()
    if tracked >= limit:
        raise UserError(
            f"the tracked files alone are {tracked / 1e6:.1f} MB, over the {limit / 1e6:.1f} MB a call carries"
        )
    # the clips and the wheels first: the backgrounds take what is left of the call
    esc50_audio = out / "esc50" / "audio"
    jobs = [(audio[Path(r["filename"]).stem], esc50_audio / f"{Path(r['filename']).stem}.ogg", args.clip_kbps, None)
            for r in clips]  # fmt: skip
    print(f"encoding {len(clips)} ESC-50 clips (folds {','.join(folds)})", file=sys.stderr)
    encode_all(jobs, args.workers)
    if args.wheels:
        download_wheels(out / "wheels")
    size = {"esc50": folder_bytes(out / "esc50"), "wheels": folder_bytes(out / "wheels") if args.wheels else 0}
    room = limit - tracked - sum(size.values()) - SLACK
    minutes = fit_minutes(args.minutes, args.val_share, args.background_kbps, room)
    if minutes <= 0:
        raise UserError(
            f"no room left for backgrounds: the tracked files ({tracked / 1e6:.1f} MB), the clips "
            f"({size['esc50'] / 1e6:.1f} MB) and the wheels ({size['wheels'] / 1e6:.1f} MB) fill the "
            f"{limit / 1e6:.1f} MB a call carries; pack with a lower --clip-kbps"
        )
    if minutes < args.minutes:
        print(f"backgrounds: {minutes:.2f} of the {args.minutes:g} minutes asked a type fit in the "
              f"{room / 1e6:.1f} MB left of the call", file=sys.stderr)  # fmt: skip
    chosen = []
    for (split, _), pool_rows in pools.items():
        chosen += pick_backgrounds(
            pool_rows, minutes * (1 if split == "train" else args.val_share), args.max_file_s, args.seed
        )
    jobs, bg_rows, rng = [], [], random.Random(args.seed)
    for r in chosen:  # a long file's cut from a seeded place in it, not always its opening
        rel = str(Path(r["path"]).with_suffix(".ogg"))
        start = rng.uniform(0, max(0.0, float(r["duration_s"]) - args.max_file_s))
        jobs.append((corpus / r["path"], out / "background" / rel, args.background_kbps, args.max_file_s, start))
        bg_rows.append({**r, "path": rel, "duration_s": f"{min(float(r['duration_s']), args.max_file_s):.3f}"})
    print(f"encoding {len(bg_rows)} background files", file=sys.stderr)
    encode_all(jobs, args.workers)
    (out / "esc50" / "meta").mkdir(parents=True)
    with open(out / "esc50" / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(clips)
    with open(out / "background" / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        w.writeheader()
        w.writerows(bg_rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    (out / "commit").write_text((commit.stdout.strip() or "unknown") + "\n")
    got = {
        f"{s}/{k}": round(sum(float(r["duration_s"]) for r in bg_rows if (r["split"], r["type"]) == (s, k)) / 60, 1)
        for s, k in pools
    }
    size = {"esc50": folder_bytes(out / "esc50"), "background": folder_bytes(out / "background"),
            "wheels": size["wheels"]}  # fmt: skip
    whole = tracked + sum(size.values())
    report = {
        "clips": len(clips),
        "background_minutes": got,
        "packages": len({r["package"] for r in bg_rows}),
        "mb": {k: round(v / 1e6, 1) for k, v in size.items()},
        "travels_mb": round(whole / 1e6, 1),
        "limit_mb": round(limit / 1e6, 1),
    }
    print(json.dumps(report, indent=1))
    if whole > limit:  # the fit is an estimate from the bit rate; this is the measure
        raise UserError(
            f"the tree with {out} is {whole / 1e6:.1f} MB, over the {limit / 1e6:.1f} MB a call carries: "
            "pack again with fewer --minutes or a lower --clip-kbps"
        )


def encode_all(jobs: list[tuple], workers: int) -> None:
    """``encode(*job)`` for every job, ``workers`` at a time."""
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda j: encode(*j), jobs))


def download_wheels(dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
           "-d", str(dest), *WHEELS]  # fmt: skip
    if subprocess.run(cmd).returncode != 0:
        raise UserError("pip could not download the wheels for the lent machine (needs PyPI); --no-wheels skips them")


def background_bytes(minutes: float, val_share: float, kbps: int) -> float:
    """About what ``minutes`` of train background a type (and ``val_share`` of that for val), two types, take at
    ``kbps`` (Ogg's pages and headers on top of the bit rate: +12%; 14 kbps measured +5% on the corpus)."""
    return minutes * 60 * kbps * 1000 / 8 * 1.12 * 2 * (1 + val_share)


def fit_minutes(asked: float, val_share: float, kbps: int, room: float) -> float:
    """The most train minutes a type (to 0.01, at most ``asked``) whose backgrounds fit in ``room`` bytes."""
    return max(0.0, min(asked, int(room / background_bytes(1.0, val_share, kbps) * 100) / 100))


def codec(args) -> None:
    """How the shipped model's top label on ESC-50 fold-1 clips (every ``--every``-th) changes when the clips
    are Opus at each ``--kbps`` instead of FLAC: the table behind pack's --clip-kbps."""
    import tempfile

    import numpy as np
    import soundfile as sf

    from soundwatch.engines import create_engine
    from soundwatch.models.card import resolve_model

    if shutil.which("ffmpeg") is None:
        raise UserError("codec needs ffmpeg with libopus (apt-get install ffmpeg)")
    esc50 = Path(args.esc50)
    with open(esc50 / "meta" / "esc50.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["fold"] == "1"][:: args.every]
    audio = index_audio(esc50 / "audio")
    files = [audio[Path(r["filename"]).stem] for r in rows]
    labels = np.array([int(r["target"]) for r in rows])
    engine = create_engine("onnx", resolve_model(None), threads=args.threads)
    events = [i for i, c in enumerate(engine.classes) if c != "background"]

    def top(paths) -> np.ndarray:
        waves = np.stack([sf.read(p, dtype="float32")[0][:80000] for p in paths])
        return np.asarray(engine.infer(waves))[:, events].argmax(1)

    flac = top(files)
    print(f"| clips (fold 1, every {args.every}th) | kbps | MB for 1600 clips | accuracy | same top label as FLAC |")
    print("|---|---|---|---|---|")
    print(f"| {len(files)} | FLAC | - | {np.mean(flac == labels):.0%} | - |")
    with tempfile.TemporaryDirectory() as tmp:
        for kbps in args.kbps:
            coded = [Path(tmp) / f"{kbps}-{p.stem}.ogg" for p in files]
            for src, dst in zip(files, coded):
                encode(src, dst, kbps)
            got = top(coded)
            mb = sum(p.stat().st_size for p in coded) / len(coded) * 1600 / 1e6
            print(f"| {len(files)} | {kbps} | {mb:.1f} | {np.mean(got == labels):.0%} | {np.mean(got == flac):.0%} |")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def split(args) -> None:
    """The model in parts of at most 15 MiB, its card, and their digests, in ``dest``."""
    model, dest = Path(args.model), Path(args.dest)
    card = model.with_suffix(".json")
    if not model.is_file() or not card.is_file():
        raise UserError(f"{model} or its card {card} is missing")
    dest.mkdir(parents=True, exist_ok=True)
    data, parts, size = model.read_bytes(), [], args.part_bytes
    for i in range(0, len(data), size):
        part = dest / f"{model.name}.part{i // size}"
        part.write_bytes(data[i : i + size])
        parts.append(part.name)
    shutil.copy(card, dest / card.name)
    index = {"model": model.name, "card": card.name, "parts": parts, "sha256": sha256(model), "bytes": len(data)}
    (dest / "parts.json").write_text(json.dumps(index, indent=1) + "\n")


def join(args) -> None:
    """The model and its card from ``split``'s parts, checked against the recorded digest."""
    src, dest = Path(args.src), Path(args.dest)
    index_file = src / "parts.json"
    if not index_file.is_file():
        raise UserError(f"{src}: no parts.json (the folder scripts/gpu-job.sh wrote under $OUT)")
    index = json.loads(index_file.read_text())
    model = dest / index["model"]
    if model.exists():
        raise UserError(f"{model} already exists: join never replaces a model")
    missing = [p for p in index["parts"] if not (src / p).is_file()]
    if missing:
        raise UserError(f"{src}: part {missing[0]} did not come back; run the job again")
    data = b"".join((src / p).read_bytes() for p in index["parts"])
    if len(data) != index["bytes"] or hashlib.sha256(data).hexdigest() != index["sha256"]:
        raise UserError(f"{src}: the parts do not make the model that was written there (sha256 differs)")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / index["card"], dest / index["card"])
    model.write_bytes(data)
    print(f"{model} ({len(data) / 1e6:.1f} MB, sha256 {index['sha256'][:12]}) and its card", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write .gpujob/ here")
    p.add_argument("--esc50", default=str(REPO.parent / "shared" / "data" / "esc50-16k"))
    p.add_argument("--corpus", default=str(REPO / "data" / "background"))
    p.add_argument("--manifest", default=str(REPO / "data" / "background-manifest.csv"))
    p.add_argument("--out", default=str(REPO / ".gpujob"))
    p.add_argument("--folds", type=int, nargs="+", default=[2, 3, 4, 5], help="the model's training folds")
    p.add_argument("--max-clips", type=int, default=0, help="only the first N clips (a trial)")
    p.add_argument("--check-clips", type=int, default=64, help="fold-1 clips for bench/gpu_check.sh's parity part")
    p.add_argument(
        "--minutes",
        type=float,
        default=16.0,
        help="train background minutes of each type, at most (fewer when the call cannot carry them)",
    )
    p.add_argument("--limit-mb", type=float, default=LIMIT / 2**20, help="MiB a call carries, the tree included")
    p.add_argument("--val-share", type=float, default=0.34, help="val minutes as a share of --minutes")
    p.add_argument("--max-file-s", type=float, default=30.0, help="at most this much of a file, from a seeded place")
    p.add_argument("--clip-kbps", type=int, default=32)
    p.add_argument("--background-kbps", type=int, default=14)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-wheels", dest="wheels", action="store_false", help="do not download the wheels")
    p.set_defaults(run=pack)
    p = sub.add_parser("codec", help="the shipped model's labels on Opus-coded fold-1 clips against FLAC")
    p.add_argument("--esc50", default=str(REPO.parent / "shared" / "data" / "esc50-16k"))
    p.add_argument("--every", type=int, default=4, help="every N-th fold-1 clip (4: 100 clips)")
    p.add_argument("--kbps", type=int, nargs="+", default=[16, 24, 28, 32])
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(run=codec)
    p = sub.add_parser("split", help="(on the lent machine) the model in parts that can come back")
    p.add_argument("model")
    p.add_argument("dest")
    p.add_argument("--part-bytes", type=int, default=PART, help="at most this many bytes a part (15 MiB)")
    p.set_defaults(run=split)
    p = sub.add_parser("join", help="the model from the parts that came back")
    p.add_argument("src")
    p.add_argument("dest")
    p.set_defaults(run=join)
    args = ap.parse_args()
    try:
        args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
