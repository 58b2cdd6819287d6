"""Inference backends benchmark (issue 5): torch eager vs ONNX Runtime fp32/fp16/INT8 (and TensorRT).

Runs on the shipped model when there is one; otherwise on a freshly built ImageNet-
initialised efficientnet_lite0 SoundCLR for the 50 ESC-50 classes (same architecture,
same cost; untrained heads), saved under .cache/bench/. The INT8 graph is calibrated
first if an ``-int8`` backend is asked for and it is missing. Prints a Markdown table
for docs/benchmarks.md.

    python bench/bench_engines.py --threads 1 --batch 1,8                  # CPU
    python bench/bench_engines.py --backend torch,tensorrt,tensorrt-int8 \
        --batch 1,64,256 --compute cuda                                     # GPU
"""

from __future__ import annotations

import argparse
import platform
import subprocess
from pathlib import Path

import onnxruntime
import torch

from soundwatch.data.datasets import load_dataset
from soundwatch.engines.bench import markdown, run_bench
from soundwatch.engines.commands import DEFAULT_MANIFEST, esc50_dir
from soundwatch.engines.quantize import int8_path, quantize_int8
from soundwatch.errors import CheckpointError
from soundwatch.models.checkpoint import ModelCard, build_model, resolve_model, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
BENCH_CHECKPOINT = REPO / ".cache" / "bench" / "effl0-imagenet-esc50.safetensors"


def bench_checkpoint() -> tuple[Path, str]:
    """The shipped model, else an ImageNet-initialised efficientnet_lite0 built once."""
    try:
        return resolve_model(None), "the shipped model"
    except CheckpointError:
        pass
    if not BENCH_CHECKPOINT.is_file():
        card = ModelCard(
            arch="efficientnet_lite0", classes=load_dataset("esc50", esc50_dir(), 16000).classes, sample_rate=16000
        )
        torch.manual_seed(0)
        save_checkpoint(BENCH_CHECKPOINT, build_model(card, pretrained=True), card)
    return BENCH_CHECKPOINT, "an ImageNet-initialised efficientnet_lite0 (no trained model is shipped yet)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch,onnx,onnx-fp16,onnx-int8,tensorrt")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--compute", default="auto", help="torch device: auto | cpu | cuda")
    args = parser.parse_args()

    checkpoint, what = bench_checkpoint()
    specs = args.backend.split(",")
    if any(spec.endswith("-int8") for spec in specs) and not int8_path(checkpoint).is_file():
        quantize_int8(checkpoint, load_dataset("esc50", esc50_dir(), 16000), DEFAULT_MANIFEST)
    results, skipped = run_bench(
        checkpoint,
        specs,
        [int(b) for b in args.batch.split(",")],
        args.threads,
        args.repeats,
        compute=args.compute,
        rounds=args.rounds,
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    print(
        f"model: {what}; {args.threads} thread(s); commit {commit.strip()}; {platform.processor() or platform.machine()}; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}\n"
    )
    print(markdown(results))
    for note in skipped:
        print(f"\nskipped {note}")


if __name__ == "__main__":
    main()
