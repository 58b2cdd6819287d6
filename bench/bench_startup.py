"""Start-up time and memory of one `listen` process: the ONNX serving path against the torch backend,
and a bare ONNX Runtime session on the same graph as the floor, measured in the same run.

    python bench/bench_startup.py [--trials 5]

- start to first `scores`: from spawning `soundwatch listen --file CLIP --as-fast-as-possible` (shipped
  model, one thread, default settings otherwise) to its first `scores` message on a ZeroMQ subscriber
  (so audio arrival does not count: at real-time pace the first window waits one hop for audio);
- peak resident memory (the child's own ru_maxrss, from wait4);
- the floor: `python -c` that imports onnxruntime, opens the cached graph and runs one window.
The graph is exported once before the trials (a first ONNX run does that, with torch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import Collector, free_endpoint  # noqa: E402

CLIP = REPO.parent / "shared" / "data" / "esc50-16k" / "audio" / "1-100032-A-0.flac"
FLOOR = """
import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
s.run(["logits"], {"wave": np.zeros((1, 80000), np.float32)})
"""


def wait_child(proc: subprocess.Popen) -> tuple[int, float]:
    """(exit status, peak RSS in MiB) of ``proc``, reaped with wait4 for its own rusage."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def listen_once(backend: str) -> tuple[float, float]:
    endpoint = free_endpoint()
    sub = Collector(endpoint, ("scores",))
    t0 = time.time()  # the subscriber stamps arrivals with time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "soundwatch",
            "listen",
            "--file",
            str(CLIP),
            "--as-fast-as-possible",
            "--backend",
            backend,
            "--threads",
            "1",
            "--endpoint",
            endpoint,
            "--no-dashboard",
            "--event-log",
            "",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = sub.wait_for(lambda t, p: True, 120)
    code, rss = wait_child(proc)
    sub.close()
    assert code == 0 and first is not None, f"{backend}: exit {code}"
    return first[0] - t0, rss


def floor_once(graph: Path) -> tuple[float, float]:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR, str(graph)])
    code, rss = wait_child(proc)
    assert code == 0
    return time.monotonic() - t0, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    from soundwatch.engines.onnx_engine import OnnxEngine
    from soundwatch.models.card import resolve_model

    graph = OnnxEngine(resolve_model(None), threads=1).path  # exports it if need be
    rows: dict[str, list[tuple[float, float]]] = {"onnx": [], "torch": [], "floor": []}
    for trial in range(args.trials):
        for backend in ("onnx", "torch") if trial % 2 == 0 else ("torch", "onnx"):
            rows[backend].append(listen_once(backend))
        rows["floor"].append(floor_once(graph))
        print(
            f"trial {trial}: " + ", ".join(f"{k} {v[-1][0]:.2f} s {v[-1][1]:.0f} MiB" for k, v in rows.items()),
            file=sys.stderr,
            flush=True,
        )
    med = {k: (statistics.median(t for t, _ in v), statistics.median(m for _, m in v)) for k, v in rows.items()}
    print(f"\n| process | start to first `scores` (median of {args.trials}) | peak RSS | vs the bare session |")
    print("|---|---|---|---|")
    names = {
        "onnx": "`listen --backend onnx`",
        "torch": "`listen --backend torch`",
        "floor": "bare ONNX Runtime session, one window (the floor)",
    }
    for k in ("onnx", "torch", "floor"):
        t, m = med[k]
        print(
            f"| {names[k]} | {t:.2f} s | {m:.0f} MiB | {t / med['floor'][0]:.1f}x time, {m / med['floor'][1]:.2f}x memory |"
        )


if __name__ == "__main__":
    main()
