"""Export a checkpoint to ONNX: one graph from waveform window to ``(logits, embedding)``.

The log-mel frontend is inside the graph, with its short-time transform as a 1-D
convolution over a fixed DFT basis (``LogMel(dft="conv")``), so the graph uses only
operators that ONNX Runtime and TensorRT's ONNX parser both take (no STFT/DFT node).
The batch dimension is dynamic; the window length is the model card's.

``fp16`` keeps the frontend (power, mel, log, dB floor) and the embedding's L2
normalisation and classifier in float32 and runs only the backbone in float16, with
explicit Cast nodes: TensorRT 11 networks are strongly typed, so the precision of
every layer comes from the graph itself. Inputs and outputs stay float32.

Exports are derived artefacts, cached under the engines directory with names keyed by
the checkpoint's sha256 and the precision, and rebuilt when the checkpoint changes.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from pathlib import Path

import onnx
import torch
from torch import nn

from soundwatch.engines.graphs import (  # noqa: F401 - the contract and the cache, re-exported
    CHECKOUT_ENGINES,
    ENGINES_ENV,
    EXPORT_VERSION,
    FORBIDDEN_OPS,
    INPUT,
    MAX_BATCH,
    META_CARD,
    META_PRECISION,
    META_SHA,
    META_VERSION,
    OUTPUTS,
    PRECISIONS,
    building,
    cached_name,
    check_precision,
    engines_dir,
    graph_metadata,
    is_current,
)
from soundwatch.models.checkpoint import ModelCard, file_sha256, load_checkpoint, read_card
from soundwatch.models.soundclr import SoundCLR, SoundCLREnsemble

OPSET = 18  # TensorRT 10/11 parse 9..24; 18 is the exporter's native opset (ReduceMax axes as initializer)


class _HalfPrecision(nn.Module):
    """Runs ``module`` in float16 between explicit casts: float32 in, float32 out."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


def serving_model(model: SoundCLR | SoundCLREnsemble, precision: str) -> SoundCLR | SoundCLREnsemble:
    """A copy of ``model`` ready to export: conv-DFT frontend, backbone(s) in ``precision``."""
    model = copy.deepcopy(model).eval()
    model.frontend.dft = "conv"
    if precision == "fp16":
        for network in getattr(model, "members", [model]):
            network.backbone = _HalfPrecision(network.backbone)
    return model


def stamp(model: onnx.ModelProto, card: ModelCard, sha256: str, precision: str) -> None:
    """Record what the graph was built from in its metadata (read back by the engines)."""
    values = {
        META_CARD: json.dumps(card.to_dict()),
        META_SHA: sha256,
        META_PRECISION: precision,
        META_VERSION: str(EXPORT_VERSION),
    }
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)


def save_atomic(model: onnx.ModelProto, out: Path) -> Path:
    """Write ``model`` to ``out`` through a temporary file, so readers never see half a graph."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name, suffix=".tmp", dir=out.parent)
    os.close(fd)
    onnx.save(model, tmp)
    os.chmod(tmp, 0o644)
    Path(tmp).replace(out)
    return out


# The exporter warns once per torchvision operator when torchvision is absent ("torchvision is not
# installed. Skipping torchvision::roi_align", four lines): nothing soundwatch exports uses them.
_EXPORTER_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


def to_onnx(model: SoundCLR | SoundCLREnsemble, card: ModelCard, precision: str) -> onnx.ModelProto:
    """Trace ``model`` (waveform -> logits, embedding) into an ONNX graph with a dynamic batch."""
    example = torch.zeros(2, card.window_samples)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    registry_log = logging.getLogger(_EXPORTER_REGISTRY_LOGGER)
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        program = torch.onnx.export(
            serving_model(model, precision),
            (example,),
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    finally:
        registry_log.setLevel(level)
    graph = program.model_proto
    forbidden = sorted({n.op_type for n in graph.graph.node} & FORBIDDEN_OPS)
    if forbidden:
        raise RuntimeError(f"export produced operators TensorRT cannot parse: {forbidden}")
    return graph


def export_onnx(
    checkpoint: Path,
    out: Path | None = None,
    precision: str = "fp32",
    directory: Path | None = None,
    force: bool = False,
) -> Path:
    """Export ``checkpoint`` (or reuse the cached export) and return the ONNX path.

    Without ``out`` the file goes to the engines directory, named by the checkpoint's
    sha256 and ``precision``; an existing file made from the same checkpoint bytes by
    the same export version is reused unless ``force``.
    """
    check_precision(precision)
    checkpoint = Path(checkpoint)
    read_card(checkpoint)  # refuse a missing or foreign file before hashing it
    sha256 = file_sha256(checkpoint)
    if out is None:  # the cache: one process exports, any others starting meanwhile wait and reuse it
        out = engines_dir(directory) / cached_name(checkpoint, sha256, precision)
        with building(out):
            return _export(checkpoint, Path(out), sha256, precision, force)
    return _export(checkpoint, Path(out), sha256, precision, force)


def _export(checkpoint: Path, out: Path, sha256: str, precision: str, force: bool) -> Path:
    if not force and is_current(out, sha256, precision):
        return out
    model, card = load_checkpoint(checkpoint)
    graph = to_onnx(model, card, precision)
    stamp(graph, card, sha256, precision)
    return save_atomic(graph, out)
