#!/usr/bin/env python
"""Make a trained checkpoint the package's default model: fp16 weights, card kept, a `shipped` note added.

    python scripts/ship_model.py runs/esc50-hybrid-v2-fold1/fold1/best.safetensors \
        --status "default model: 86.0% on ESC-50 fold 1 (docs/results.md)"

Writes soundwatch/assets/soundclr-esc50-effl0.safetensors (and its .json card). The
weights are stored as float16 and run in float32; evaluate the shipped file itself
(`soundwatch eval`), not the fp32 source. INT8 calibration ranges are keyed to the
file's hash: re-run `soundwatch calibrate int8` after shipping.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from soundwatch.models.checkpoint import DEFAULT_MODEL, file_sha256, load_checkpoint, save_checkpoint

MAX_BYTES = 25 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="trained checkpoint (.safetensors with its card)")
    parser.add_argument("--status", required=True, help="one line for the card: what this model is and how good")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL, help=f"destination (default {DEFAULT_MODEL})")
    args = parser.parse_args(argv)

    model, card = load_checkpoint(args.checkpoint)
    card.extra["shipped"] = {"status": args.status, "from": str(args.checkpoint),
                             "source_sha256": file_sha256(args.checkpoint), "dtype": "float16"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as staging:  # the current default stays until it fits
        staged = save_checkpoint(Path(staging) / args.out.name, model, card, dtype=torch.float16)
        size = staged.stat().st_size
        if size > MAX_BYTES:
            print(f"error: {args.out} would be {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB limit; "
                  "nothing was replaced", file=sys.stderr)
            return 1
        staged.replace(args.out)
        staged.with_suffix(".json").replace(args.out.with_suffix(".json"))
    print(f"{args.out}: {size / 2**20:.1f} MiB, sha256 {file_sha256(args.out)[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
