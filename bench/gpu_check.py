"""The one-shot GPU check's parity part (bench/gpu_check.sh runs it, then the throughput and training parts).

    python bench/gpu_check.py --data-dir DIR [--clips 64]
    python bench/gpu_check.py --data-dir DIR --adapt      # the adapt part alone


On real ESC-50 fold-1 clips (the first --clips, in file order), shipped model:
- frontend: the log-mel on CUDA against the CPU (max |difference| in dB);
- torch on CUDA (fp32) against ONNX Runtime on the CPU (fp32): top-1 agreement, max |logit difference|;
- TensorRT (fp16 plan; built here, timed) against ONNX Runtime fp32, when `tensorrt` imports.
Prints one Markdown table; a part that cannot run says why in its row instead of failing the rest.

With --adapt: one epoch of `soundwatch adapt --end-to-end --device cuda` (the shipped model's networks
trained on folds 2-5, one fresh mixture a clip, 800 background windows), over a stand-in background
corpus of ESC-50 clips (the real corpus does not travel to a lent machine unless carried): its windows a
second, which sizes an adaptation job on such a machine.
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def clips(data_dir: Path, count: int, rate: int) -> np.ndarray:
    from soundwatch.data.datasets import load_dataset

    dataset = load_dataset("esc50", data_dir, rate)
    rows = dataset.indices([1])[:count]
    return np.asarray(dataset.waves[rows], dtype=np.float32)


def frontend_parity(waves: np.ndarray, card) -> str:
    import torch

    from soundwatch.dsp.frontend import LogMel

    frontend = LogMel(card.frontend_config)
    with torch.no_grad():
        cpu = frontend(torch.from_numpy(waves))
        cuda = frontend.to("cuda")(torch.from_numpy(waves).cuda()).cpu()
    return f"max |CUDA - CPU| {float((cuda - cpu).abs().max()):.4f} dB over {len(waves)} clips"


def compare(a: np.ndarray, b: np.ndarray) -> str:
    agree = float((a.argmax(1) == b.argmax(1)).mean())
    return f"top-1 agreement {agree:.2%}, max |logit difference| {float(np.abs(a - b).max()):.4f}"


def adapt_part(data_dir: Path, device: str) -> str:
    """One end-to-end adaptation epoch on ``device``; its windows a second."""
    import tempfile

    import torch

    from soundwatch.data.datasets import load_dataset
    from soundwatch.models.card import resolve_model
    from soundwatch.train.adapt import AdaptOptions, adapt
    from soundwatch.train.synthetic import standin_background_manifest

    if device == "cuda" and not torch.cuda.is_available():
        return "skipped: torch sees no CUDA GPU"
    clips = load_dataset("esc50", data_dir, 16000)
    records: list[dict] = []
    opts = AdaptOptions(
        end_to_end=True, epochs=1, mixed_per_clip=1, background_windows=800, streams_per_type=2, stream_s=30.0
    )
    with tempfile.TemporaryDirectory() as tmp:
        manifest = standin_background_manifest(data_dir, Path(tmp) / "manifest.csv", per_type=8)
        t = time.perf_counter()
        adapt(
            resolve_model(None), clips, [2, 3, 4, 5], data_dir / "audio", manifest, Path(tmp) / "adapted.safetensors",
            opts, on_epoch=records.append, device=device,
        )  # fmt: skip
        whole = time.perf_counter() - t
    rec = records[0]
    return (
        f"{rec['windows']} windows in {rec['epoch_s']:.1f} s ({rec['windows'] / rec['epoch_s']:.0f} windows/s, "
        f"mixing on the CPU included); the whole run (streams, prototypes, gate, writing) {whole:.0f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--adapt", action="store_true", help="run the adapt part alone")
    ap.add_argument("--device", default="cuda", help="the adapt part's device (cpu: to try this script without a GPU)")
    args = ap.parse_args()
    import torch

    from soundwatch.engines import create_engine
    from soundwatch.models.card import read_card, resolve_model

    model = resolve_model(None)
    card = read_card(model)
    rows: list[tuple[str, str]] = [
        (
            "machine",
            f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA GPU'}; torch "
            f"{torch.__version__} (CUDA {torch.version.cuda})",
        ),
    ]

    def part(name: str, run) -> None:
        try:
            rows.append((name, run()))
        except Exception as exc:  # noqa: BLE001 - one part failing must not hide the others
            rows.append((name, f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
            traceback.print_exc()

    if args.adapt:
        part(
            f"`soundwatch adapt --end-to-end --device {args.device}`, one epoch",
            lambda: adapt_part(args.data_dir, args.device),
        )
        for name, result in rows[1:]:
            print(f"| {name} | {result} |")
        return
    waves = clips(args.data_dir, args.clips, card.sample_rate)
    onnx = create_engine("onnx", model, threads=0)
    reference = onnx.infer(waves)
    part("frontend CUDA vs CPU", lambda: frontend_parity(waves, card))
    part(
        "torch CUDA fp32 vs ONNX CPU fp32",
        lambda: compare(create_engine("torch", model, compute="cuda").infer(waves), reference),
    )

    def tensorrt() -> str:
        import importlib.util

        if importlib.util.find_spec("tensorrt") is None:
            return "skipped: tensorrt is not installed (pip install 'soundwatch[tensorrt-cu12]' or '[tensorrt-cu13]')"
        t = time.perf_counter()
        engine = create_engine("tensorrt", model, precision="fp16")
        built = time.perf_counter() - t
        return f"{compare(engine.infer(waves), reference)}; plan ready in {built:.0f} s ({engine.plan.name})"

    part("TensorRT fp16 vs ONNX CPU fp32", tensorrt)
    print("| check | result |\n|---|---|")
    for name, result in rows:
        print(f"| {name} | {result} |")


if __name__ == "__main__":
    main()
