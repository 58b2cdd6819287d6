"""PyTorch eager backend: the reference every compiled backend is compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from soundwatch.engines.base import Engine
from soundwatch.errors import UserError
from soundwatch.models.checkpoint import load_checkpoint


class TorchEngine(Engine):
    name = "torch"

    def __init__(
        self,
        checkpoint: Path,
        *,
        compute: str = "auto",
        threads: int = 0,
        precision: str | None = None,
        engines_dir: Path | None = None,
    ):
        precision = precision or "fp32"
        if compute == "auto":
            compute = "cuda" if torch.cuda.is_available() else "cpu"
        if compute not in ("cpu", "cuda"):
            raise UserError(f"--compute {compute}: the torch backend runs on cpu or cuda")
        if compute == "cuda" and not torch.cuda.is_available():
            raise UserError("--compute cuda: torch sees no CUDA GPU on this machine")
        if precision not in ("fp32", "fp16"):
            raise UserError(f"torch backend runs fp32 or fp16, not {precision}")
        if precision == "fp16" and compute != "cuda":  # autocast to fp16 is a GPU path: it would run fp32
            raise UserError(
                "the torch backend runs fp16 only on a CUDA GPU; on the CPU use --precision fp32, "
                "or --backend onnx --precision fp16"
            )
        if threads:
            torch.set_num_threads(threads)
        self.model, self.card = load_checkpoint(checkpoint)
        self.device = compute
        self.precision = precision
        self.model.to(compute)
        self.autocast = precision == "fp16"

    @torch.inference_mode()
    def infer(self, waves: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.check_input(waves)).to(self.device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
            logits, _ = self.model(x)
        return logits.float().cpu().numpy()
