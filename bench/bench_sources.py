"""How many sources one process sustains in real time, and what each costs, against one process per source.

    python bench/bench_sources.py [--counts 1,16,64,96] [--reference 16] [--seconds 30]

Each source is a file played at real-time pace (`--file`, repeated; a file source is read, paced and
resampled like a stream, without the network): 60 s of ESC-50 fold-1 clips, a different rotation of
them per source. One `soundwatch listen` per count, shipped model, ONNX Runtime, default settings
(1 s hop, 5 s window, VAD on, max_batch 8), for --seconds. From its final `status` (totals):
windows, dropped windows, p99 latency (window captured -> scores published; the target is under
hop + 500 ms), windows per engine call; peak RSS of the process (wait4); start to the first `scores`.
"Sustained" = no dropped window and p99 latency under 1500 ms.

Reference, in the same run: --reference sources as that many separate `listen` processes (one file
each), started together: their summed peak RSS and their worst drop and latency.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_alert_latency import fold1_clips  # noqa: E402
from bench_startup import wait_child  # noqa: E402
from helpers import Collector, free_endpoint  # noqa: E402


def make_files(data_dir: Path, count: int, out: Path) -> list[Path]:
    clips = [sf.read(p, dtype="float32")[0] for p, _ in fold1_clips(data_dir, 50)]
    files = []
    for i in range(count):
        audio = np.concatenate([clips[(i + k) % len(clips)] for k in range(12)])  # 60 s
        path = out / f"src{i:03d}.wav"
        sf.write(path, audio, 16000, subtype="PCM_16")
        files.append(path)
    return files


def listen_command(files: list[Path], endpoint: str, seconds: float) -> list[str]:
    """One `soundwatch listen` over ``files`` at real-time pace, ONNX, no event log, the 1 s hop the
    tables were measured at."""
    config = files[0].parent / "bench.toml"
    config.write_text('[listen]\nhop_s = 1.0\n[events]\nlog_path = ""\n')
    args = [sys.executable, "-m", "soundwatch", "listen", "--backend", "onnx", "--endpoint", endpoint]
    args += ["--no-dashboard", "--duration", str(seconds), "--config", str(config)]
    for f in files:
        args += ["--file", str(f)]
    return args


def run(files: list[Path], seconds: float) -> dict:
    endpoint = free_endpoint()
    sub = Collector(endpoint, ("status", "scores"))
    args = listen_command(files, endpoint, seconds)
    t0 = time.time()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    code, rss_mib = wait_child(proc)
    err = proc.stderr.read()
    assert code == 0, err[-2000:]
    final = sub.wait_stopped(10)
    first = min((ts for ts, t, _ in sub.messages if t.startswith("scores.")), default=float("nan"))
    sub.close()
    return {"final": final, "rss_mib": rss_mib, "first_s": first - t0}


def reference(files: list[Path], seconds: float) -> dict:
    """One process per file, all at once."""
    procs, subs = [], []
    for f in files:
        endpoint = free_endpoint()
        subs.append(Collector(endpoint, ("status",)))
        args = listen_command([f], endpoint, seconds)
        procs.append(subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    rss = 0.0
    for proc in procs:
        code, peak_mib = wait_child(proc)
        assert code == 0
        rss += peak_mib
    finals = [s.wait_stopped(10) for s in subs]
    for s in subs:
        s.close()
    return {
        "rss_mib": rss,
        "dropped": sum(f["dropped_windows"] for f in finals),
        "windows": sum(f["windows"] for f in finals),
        "p99": max(f["latency_p99_ms"] or 0 for f in finals),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,16,64,96")
    ap.add_argument("--reference", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "esc50-16k")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(args.data_dir, max(counts + [args.reference]), Path(tmp))
        rows = []
        for n in counts:
            r = run(files[:n], args.seconds)
            f = r["final"]
            rows.append((n, r, f))
            print(
                f"{n} sources: {f['windows']} windows, {f['dropped_windows']} dropped, p99 {f['latency_p99_ms']} ms, "
                f"batch {f['batch']}, {r['rss_mib']:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
        ref = reference(files[: args.reference], args.seconds)
        print(f"reference: {ref}", file=sys.stderr, flush=True)
    one = next((r["rss_mib"] for n, r, _ in rows if n == 1), None)
    print(
        "\n| sources in one process | windows | dropped | p99 latency | windows per engine call | infer ms/window "
        "| peak RSS | RSS per added source | first scores | sustained |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, r, f in rows:
        per = f"{(r['rss_mib'] - one) / (n - 1):.1f} MiB" if one is not None and n > 1 else "-"
        ok = f["dropped_windows"] == 0 and (f["latency_p99_ms"] or 1e9) < 1500
        print(
            f"| {n} | {f['windows']} | {f['dropped_windows']} | {f['latency_p99_ms']} ms | {f['batch']} | "
            f"{f['infer_ms']} | {r['rss_mib']:.0f} MiB | {per} | {r['first_s']:.2f} s | {'yes' if ok else 'no'} |"
        )
    same = next(((n, r) for n, r, _ in rows if n == args.reference), None)
    print(
        f"\nReference: {args.reference} sources as {args.reference} processes: {ref['windows']} windows, "
        f"{ref['dropped']} dropped, worst p99 {ref['p99']} ms, summed peak RSS {ref['rss_mib']:.0f} MiB"
        + (
            f" ({ref['rss_mib'] / same[1]['rss_mib']:.1f}x the one process's {same[1]['rss_mib']:.0f} MiB)"
            if same
            else ""
        )
    )


if __name__ == "__main__":
    main()
