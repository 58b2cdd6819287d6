"""Live-line benchmark: onset latency through a real (virtual) microphone, per-window cost, idle CPU.

    XDG_RUNTIME_DIR=/tmp/soundwatch-pulse scripts/pulse-mic.sh start
    XDG_RUNTIME_DIR=/tmp/soundwatch-pulse python bench/bench_live.py [--trials 10] [--model CKPT]

(a) onset latency: silence, then `paplay` of a loud 0.5 s burst into the virtual microphone;
    the time from starting paplay to the first `scores` message whose level reflects it
    (window RMS above -60 dBFS after a -120 dBFS floor). Median of --trials; target <= hop + 250 ms.
(b) processing time per window and real-time factor, one CPU thread, batch 1, torch eager vs
    ONNX Runtime measured in the same run (RTF = processing time / hop).
(c) CPU use of an idle `listen` (silence through the virtual microphone), % of one core.

The model is --model, else the shipped default, else a freshly built ImageNet-initialised
efficientnet_lite0 SoundCLR (same architecture and cost as a trained one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import Collector, free_endpoint, soundwatch  # noqa: E402


def pick_model(given: str | None, workdir: Path) -> tuple[Path, str]:
    from soundwatch.models.checkpoint import DEFAULT_MODEL

    if given:
        return Path(given), given
    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL, f"shipped {DEFAULT_MODEL.name}"
    from conftest import make_checkpoint

    return make_checkpoint(
        workdir / "effl0.safetensors", "efficientnet_lite0", True
    ), "ImageNet-init efficientnet_lite0"


def onset_latency(model: Path, trials: int, workdir: Path) -> list[float]:
    burst = workdir / "burst.wav"
    t = np.arange(24000) / 48000
    sf.write(burst, (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 48000)
    endpoint = free_endpoint()
    sub = Collector(endpoint, ("scores",))
    proc = soundwatch(
        "listen", "--device", "pulse", "--model", str(model), "--endpoint", endpoint, "--no-dashboard", "--threads", "1"
    )
    latencies = []
    try:
        if not sub.wait_for(lambda _t, p: p["level_dbfs"] < -100, 90):
            raise RuntimeError("listen produced no quiet window: " + (proc.stderr.read() if proc.poll() else ""))
        for _ in range(trials):
            sub.wait_for(lambda _t, p, since=time.time(): p["ts"] > since and p["level_dbfs"] < -100, 15)
            time.sleep(np.random.uniform(0.0, 1.0))  # land anywhere within a hop
            start = time.time()
            subprocess.Popen(["paplay", "-d", "virt", str(burst)])
            hit = sub.wait_for(lambda _t, p: p["ts"] > start and p["level_dbfs"] > -60, 10)
            if hit is None:
                raise RuntimeError("the burst never showed up in `scores`")
            latencies.append(hit[0] - start)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        sub.close()
    return latencies


def processing_time(model: Path, backends: list[str], n: int = 30) -> dict[str, float]:
    from soundwatch.engines import create_engine

    out = {}
    rng = np.random.default_rng(0)
    for name in backends:
        engine = create_engine(name, model, threads=1)
        x = (0.1 * rng.standard_normal((1, engine.window_samples))).astype(np.float32)
        for _ in range(3):
            engine.infer(x)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            engine.infer(x)
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    return out


def idle_cpu(model: Path, backend: str, seconds: float = 10.0) -> float:
    endpoint = free_endpoint()
    sub = Collector(endpoint, ("status",))
    proc = soundwatch(
        "listen",
        "--device",
        "pulse",
        "--model",
        str(model),
        "--backend",
        backend,
        "--endpoint",
        endpoint,
        "--no-dashboard",
        "--threads",
        "1",
    )
    try:
        if not sub.wait_for(lambda _t, p: p["windows"] >= 3, 90) or proc.poll() is not None:
            raise RuntimeError(
                f"listen --backend {backend} did not run: " + (proc.stderr.read() if proc.poll() else "")
            )

        def cpu_s() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        c0, t0 = cpu_s(), time.monotonic()
        time.sleep(seconds)
        return 100 * (cpu_s() - c0) / (time.monotonic() - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        sub.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--model")
    ap.add_argument("--hop", type=float, default=1.0, help="the daemon's hop (config default)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model, what = pick_model(args.model, workdir)
        print(f"model: {what}; machine: {os.cpu_count()} CPUs; one inference thread\n")

        per_window = processing_time(model, ["torch", "onnx"])
        ref = per_window["torch"]
        print("(b) processing time per window, batch 1, 1 thread")
        print(f"{'backend':<8} {'ms/window':>10} {'RTF (/hop)':>11} {'speed-up vs torch':>18}")
        for name, sec in per_window.items():
            print(f"{name:<8} {1000 * sec:>10.1f} {sec / args.hop:>11.4f} {ref / sec:>17.2f}x")

        lat = onset_latency(model, args.trials, workdir)
        target = args.hop + 0.25
        print(f"\n(a) onset latency over {len(lat)} trials (hop {args.hop:g} s, target <= {1000 * target:.0f} ms)")
        print(
            f"median {1000 * statistics.median(lat):.0f} ms, min {1000 * min(lat):.0f} ms, "
            f"max {1000 * max(lat):.0f} ms; within target: {sum(x <= target for x in lat)}/{len(lat)}"
        )

        print("\n(c) CPU use of an idle `listen` (silence in, % of one core)")
        for backend in ("torch", "onnx"):
            print(f"{backend:<8} {idle_cpu(model, backend):6.1f} %")


if __name__ == "__main__":
    main()
