"""Inference backends behind one interface: raw waveform windows in, class logits out.

``create_engine(backend, checkpoint)`` picks one by name; ``auto`` takes TensorRT where a
GPU and the ``tensorrt`` package are present, else ONNX Runtime, else torch. Backends
are imported lazily so that nothing heavy (or optional, like tensorrt) loads at start-up.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from soundwatch.errors import UserError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from soundwatch.engines.base import Engine

BACKENDS = {
    "torch": "soundwatch.engines.torch_engine:TorchEngine",
    "onnx": "soundwatch.engines.onnx_engine:OnnxEngine",
    "tensorrt": "soundwatch.engines.tensorrt_engine:TensorRTEngine",
}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_backend(backend: str) -> str:
    """``auto`` -> the best backend this machine can run."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
        return backend
    if importlib.util.find_spec("tensorrt") is not None and cuda_available():
        return "tensorrt"
    if importlib.util.find_spec("onnxruntime") is not None:
        return "onnx"
    return "torch"


def _construct(name: str, checkpoint: Path, options: dict) -> Engine:
    module_name, cls_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(Path(checkpoint), **options)


def create_engine(backend: str, checkpoint: Path, **options) -> Engine:
    """Load ``checkpoint`` into the named backend (``options`` go to its constructor).

    With ``auto``, a TensorRT backend that fails (no plan can be built, the GPU or driver refuses)
    falls back to ONNX Runtime on the CPU, saying why; a backend asked for by name does not."""
    name = resolve_backend(backend)
    if backend != "auto" or name != "tensorrt":
        return _construct(name, checkpoint, options)
    try:
        return _construct(name, checkpoint, options)
    except (UserError, RuntimeError) as exc:
        log.warning(
            "the TensorRT backend failed (%s); falling back to ONNX Runtime on the CPU "
            "(--backend tensorrt to see the failure as an error)",
            exc,
        )
        fallback = {**options, "compute": "auto"}
        if fallback.get("precision") == "fp16":
            fallback["precision"] = "fp32"  # ONNX Runtime's CPU kernels have no fast fp16
        return _construct("onnx", checkpoint, fallback)
