"""INT8 on the CPU with and without ONNX Runtime's x64 quantization precision mode.

On x86-64 CPUs without VNNI (AVX2 only), ORT's default int8 kernels add pairs of u8 x s8
products into saturating 16-bit lanes; ``session.x64quantprecision=1`` (which
soundwatch's ONNX sessions set) widens those sums. This script scores the shipped model's
INT8 graph on ESC-50 fold 1 both ways against the fp32 graph, and times one window (batch
1) of each, the sessions taking turns so load changes hit all alike. Prints a Markdown
table for docs/benchmarks.md.

    soundwatch calibrate int8          # once: makes the INT8 graph of the shipped model
    python bench/bench_int8_cpu_precision.py --threads 1
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from soundwatch.data.datasets import load_dataset
from soundwatch.engines.commands import esc50_dir
from soundwatch.engines.export import export_onnx
from soundwatch.engines.onnx_engine import open_session
from soundwatch.engines.quantize import current_int8_graph
from soundwatch.models.checkpoint import read_card, resolve_model

MODE = "session.x64quantprecision"


def outputs(sess: ort.InferenceSession, waves: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    name = sess.get_inputs()[0].name
    parts = [sess.run(None, {name: waves[i : i + batch]}) for i in range(0, len(waves), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = set(flags.split(":", 1)[1].split())
    return (
        ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in have) or "none of avx2/avx512/vnni"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--data", type=Path, default=None, help="ESC-50 tree (default: ../shared/data/esc50-16k)")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds (20 calls each per session)")
    args = parser.parse_args()

    checkpoint = resolve_model(args.checkpoint)
    card = read_card(checkpoint)
    fp32, int8 = export_onnx(checkpoint, precision="fp32"), current_int8_graph(checkpoint)
    clips = load_dataset("esc50", esc50_dir(args.data), card.sample_rate)
    rows = clips.indices([args.fold])
    waves = np.asarray(clips.waves[rows], dtype=np.float32)
    labels = np.array([card.classes.index(clips.classes[k]) for k in clips.labels[rows]])

    sessions = {
        "fp32": open_session(fp32, args.threads),
        "int8, ORT default": open_session(int8, args.threads, False),
        f"int8, {MODE}=1": open_session(int8, args.threads),
    }
    scored = {name: outputs(sess, waves) for name, sess in sessions.items()}
    ref_logits, ref_emb = scored["fp32"]

    one = waves[:1]
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for sess in sessions.values():
        for _ in range(5):
            sess.run(None, {sess.get_inputs()[0].name: one})
    for _ in range(args.rounds):
        for name, sess in sessions.items():
            feed = {sess.get_inputs()[0].name: one}
            start = time.perf_counter()
            for _ in range(20):
                sess.run(None, feed)
            times[name].append((time.perf_counter() - start) / 20 * 1e3)

    print(
        f"{checkpoint.name}, ESC-50 fold {args.fold} ({len(rows)} clips); {platform.processor() or platform.machine()}, "
        f"CPU flags: {cpu_flags()}; onnxruntime {ort.__version__}, {args.threads} thread(s)\n"
    )
    print("| graph | fold top-1 | same top-1 as fp32 | embedding cosine | p50 ms (batch 1) | x fp32 time |")
    print("|---|---|---|---|---|---|")
    ref_ms = float(np.median(times["fp32"]))
    for name, (logits, emb) in scored.items():
        ms = float(np.median(times[name]))
        print(
            f"| {name} | {(logits.argmax(1) == labels).mean():.2%} | {(logits.argmax(1) == ref_logits.argmax(1)).mean():.2%} "
            f"| {(emb * ref_emb).sum(1).mean():.4f} | {ms:.2f} | {ms / ref_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
