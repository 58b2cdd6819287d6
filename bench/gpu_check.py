"""The one-shot GPU check's parity part (bench/gpu_check.sh runs it, then the throughput and training parts).

    python bench/gpu_check.py --data-dir DIR [--clips 64]

On real ESC-50 fold-1 clips (the first --clips, in file order), shipped model:
- frontend: the log-mel on CUDA against the CPU (max |difference| in dB);
- torch on CUDA (fp32) against ONNX Runtime on the CPU (fp32): top-1 agreement, max |logit difference|;
- TensorRT (fp16 plan; built here, timed) against ONNX Runtime fp32, when `tensorrt` imports.
Prints one Markdown table; a part that cannot run says why in its row instead of failing the rest.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--clips", type=int, default=64)
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
