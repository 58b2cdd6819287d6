"""ONNX Runtime backend on the CPU: the exported waveform-to-logits graph (``auto`` without a GPU).

With a current export in the engines cache this imports no torch (the light serving path):
a ``listen`` process is ONNX Runtime, numpy and the audio libraries.

``precision`` picks the graph: ``fp32`` / ``fp16`` are exported from the checkpoint on
first use (then reused from the engines cache); ``int8`` is the Q/DQ graph that
``soundwatch calibrate int8`` writes, and must be made first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from soundwatch.engines.base import Engine
from soundwatch.engines.graphs import INPUT, META_CARD, OUTPUTS, PRECISIONS, serving_graph
from soundwatch.errors import CheckpointError, UserError
from soundwatch.models.card import ModelCard, read_card

ONNX_PRECISIONS = (*PRECISIONS, "int8")


def open_session(path: Path, threads: int = 0, x64_quant_precision: bool = True) -> ort.InferenceSession:
    """A CPU session with every graph optimisation; ``threads`` intra-op threads (0: ORT's default).

    ``x64_quant_precision=False`` only exists so bench/bench_int8_cpu_precision.py can show ORT's default.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # INT8 graphs: on x86-64 without VNNI (AVX2 only) ORT's default u8s8 kernels add pairs of
    # products in saturating 16-bit lanes, which wrecked the Q/DQ graph here (fp32/INT8 top-1
    # agreement 0.38, embedding cosine 0.78 on an AVX2 EPYC; 0.81 / 0.97 with this mode, as on
    # VNNI machines). The mode widens those sums; float graphs are untouched by it.
    if x64_quant_precision:
        options.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _dims(value: ort.NodeArg) -> list:
    return list(value.shape)


def check_graph(session: ort.InferenceSession, card: ModelCard, source: str) -> None:
    """Refuse a graph whose input/outputs or recorded model card do not fit ``card``."""
    inputs = {v.name: v for v in session.get_inputs()}
    outputs = {v.name: v for v in session.get_outputs()}
    problems = []
    if list(inputs) != [INPUT]:
        problems.append(f"inputs are {list(inputs)}, expected [{INPUT!r}]")
    elif _dims(inputs[INPUT])[1:] != [card.window_samples] or inputs[INPUT].type != "tensor(float)":
        problems.append(
            f"input {INPUT!r} is {inputs[INPUT].type} {_dims(inputs[INPUT])}, "
            f"expected tensor(float) [batch, {card.window_samples}]"
        )
    missing = [name for name in OUTPUTS if name not in outputs]
    if missing:
        problems.append(f"outputs are {list(outputs)}, expected {list(OUTPUTS)}")
    elif _dims(outputs["logits"])[1:] != [len(card.classes)]:
        problems.append(f"logits are {_dims(outputs['logits'])}, expected [batch, {len(card.classes)}]")
    recorded = session.get_modelmeta().custom_metadata_map.get(META_CARD)
    if recorded is None:
        problems.append("the graph carries no soundwatch model card")
    else:
        theirs = json.loads(recorded)
        theirs.setdefault("members", 1)  # cards of single networks leave it out
        ours = {**card.to_dict(), "members": card.members}
        for key in ("arch", "classes", "sample_rate", "window_s", "frontend", "members"):
            if theirs.get(key) != ours.get(key):
                problems.append(f"its model card has {key} {theirs.get(key)!r}, the checkpoint {ours.get(key)!r}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the checkpoint: " + "; ".join(problems) + " (delete it to rebuild)"
        )


class OnnxEngine(Engine):
    name = "onnx"

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
        if compute not in ("auto", "cpu"):
            raise UserError(
                f"--compute {compute}: the onnx backend runs ONNX Runtime on the CPU; for a GPU use --backend tensorrt"
            )
        if precision not in ONNX_PRECISIONS:
            raise UserError(f"onnx backend runs {', '.join(ONNX_PRECISIONS)}, not {precision!r}")
        checkpoint = Path(checkpoint)
        self.card = read_card(checkpoint)
        self.path = serving_graph(checkpoint, precision, engines_dir)  # torch only when it must export
        self.session = open_session(self.path, threads)
        check_graph(self.session, self.card, str(self.path))
        self.precision = precision
        self.device = "cpu"

    def infer(self, waves: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {INPUT: self.check_input(waves)})[0]
