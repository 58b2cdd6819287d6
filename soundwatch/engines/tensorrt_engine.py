"""TensorRT backend (GPU): a plan built from the exported ONNX graph, run by tensor name.

Written for TensorRT 11 and kept working on 10.x (>= 10.12): the network is strongly
typed (``1 << int(STRONGLY_TYPED)``: required on 10.x, ignored on 11), so precision comes
from the graph — the fp16 export for fp16, the Q/DQ graph from ``soundwatch calibrate
int8`` for int8 — and no builder precision flag is set (TensorRT 11 removed them). One
optimisation profile covers batch 1..max_batch. Plans are cached under the engines
directory, named by the ONNX graph's hash, the profile, the GPU and the TensorRT version.

The runtime uses ``execute_async_v3`` on torch CUDA tensors, on a stream of its own; no
pycuda. ``tensorrt`` is an optional extra, imported only when this backend is asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from soundwatch.engines.base import Engine
from soundwatch.engines.export import INPUT, OUTPUTS, engines_dir, export_onnx
from soundwatch.errors import CheckpointError, UserError
from soundwatch.models.checkpoint import read_card

if TYPE_CHECKING:
    import torch

TRT_PRECISIONS = ("fp32", "fp16", "int8")
MIN_BATCH = 1
OPT_BATCH = 8  # the daemon's listen.max_batch
MAX_BATCH = 256
WORKSPACE_BYTES = 4 << 30
OPTIMIZATION_LEVEL = 3  # TensorRT's default; 0 builds fastest, 5 searches longest


def require_tensorrt() -> ModuleType:
    """``import tensorrt``, or a UserError (exit 2) naming what this machine lacks."""
    import torch

    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the tensorrt package (pip install 'soundwatch[tensorrt]')")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch sees none)")
    if missing:
        raise UserError("the TensorRT backend needs " + " and ".join(missing)
                        + "; use --backend onnx (CPU) or --backend torch instead")
    try:
        import tensorrt
    except ImportError as exc:  # installed but its CUDA libraries do not load
        raise UserError(f"the tensorrt package is installed but does not load: {exc}") from exc
    return tensorrt


def onnx_graph(checkpoint: Path, precision: str, directory: Path | None = None) -> Path:
    """The ONNX graph a plan of ``precision`` is built from (exported or calibrated first)."""
    if precision not in TRT_PRECISIONS:
        raise UserError(f"TensorRT precision must be one of {', '.join(TRT_PRECISIONS)}, not {precision!r}")
    if precision == "int8":
        from soundwatch.engines.graphs import current_int8_graph

        return current_int8_graph(checkpoint, directory)
    return export_onnx(checkpoint, precision=precision, directory=directory)


def plan_path(graph: Path, trt_version: str, gpu_name: str, max_batch: int, directory: Path | None = None) -> Path:
    """``<graph stem>-<graph sha256>-b<min>-<opt>-<max>-<gpu>-trt<version>.plan``."""
    digest = hashlib.sha256(Path(graph).read_bytes()).hexdigest()[:16]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    profile = f"b{MIN_BATCH}-{min(OPT_BATCH, max_batch)}-{max_batch}"
    return engines_dir(directory) / f"{Path(graph).stem}-{digest}-{profile}-{gpu}-trt{trt_version}.plan"


def build_plan(trt: ModuleType, graph: Path, out: Path, window_samples: int, max_batch: int = MAX_BATCH) -> Path:
    """Parse ``graph`` into a strongly typed network and write the serialized plan to ``out``."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {graph}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.builder_optimization_level = OPTIMIZATION_LEVEL
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, (MIN_BATCH, window_samples), (min(OPT_BATCH, max_batch), window_samples),
                      (max_batch, window_samples))
    if config.add_optimization_profile(profile) < 0:
        raise RuntimeError(f"TensorRT refused the optimisation profile for batch {MIN_BATCH}..{max_batch}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a plan from {graph} (see the log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".building")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out)
    return out


def ensure_plan(checkpoint: Path, precision: str = "fp16", max_batch: int = MAX_BATCH,
                directory: Path | None = None, force: bool = False) -> Path:
    """The cached plan for ``checkpoint`` at ``precision`` on this GPU and TensorRT; built if absent."""
    import torch

    trt = require_tensorrt()
    card = read_card(checkpoint)
    graph = onnx_graph(checkpoint, precision, directory)
    out = plan_path(graph, trt.__version__, torch.cuda.get_device_name(), max_batch, directory)
    if force or not out.is_file():
        build_plan(trt, graph, out, card.window_samples, max_batch)
    return out


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, checkpoint: Path, *, compute: str = "auto", threads: int = 0, precision: str | None = None,
                 engines_dir: Path | None = None):
        import torch

        precision = precision or "fp16"
        max_batch = MAX_BATCH
        if compute not in ("auto", "cuda"):
            raise UserError(f"--compute {compute}: the tensorrt backend runs on a CUDA GPU only")
        trt = require_tensorrt()
        checkpoint = Path(checkpoint)
        self.card = read_card(checkpoint)
        self.precision = precision
        self.max_batch = max_batch
        self.plan = ensure_plan(checkpoint, precision, max_batch, engines_dir)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise CheckpointError(f"{self.plan}: TensorRT could not load this plan (another TensorRT "
                                  "version or GPU?); delete it to rebuild")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != {INPUT, *OUTPUTS} or self.engine.get_tensor_mode(INPUT) != trt.TensorIOMode.INPUT:
            raise CheckpointError(f"{self.plan}: tensors {sorted(names)}, expected input {INPUT!r} "
                                  f"and outputs {list(OUTPUTS)}; delete it to rebuild")
        for name in (INPUT, *OUTPUTS):
            if self.engine.get_tensor_dtype(name) != trt.float32:
                raise CheckpointError(f"{self.plan}: tensor {name!r} is {self.engine.get_tensor_dtype(name)}, "
                                      "expected float32")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.device = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"

    def run(self, waves: torch.Tensor) -> dict[str, torch.Tensor]:
        """CUDA float32 (batch <= max_batch, window_samples) -> {"logits", "embedding"} CUDA tensors."""
        import torch

        waves = waves.to("cuda", torch.float32).contiguous()
        self.stream.wait_stream(torch.cuda.current_stream())  # inputs made on the caller's stream
        with torch.cuda.stream(self.stream):
            if not self.context.set_input_shape(INPUT, tuple(waves.shape)):
                raise ValueError(f"batch {tuple(waves.shape)} is outside the plan's profile 1..{self.max_batch}")
            out = {name: torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
                   for name in OUTPUTS}
            for name, tensor in ((INPUT, waves), *out.items()):
                if not self.context.set_tensor_address(name, tensor.data_ptr()):
                    raise RuntimeError(f"TensorRT refused the address of tensor {name!r}")
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the log above)")
        self.stream.synchronize()  # also keeps `waves` alive until TensorRT has read it
        return out

    def infer(self, waves: np.ndarray) -> np.ndarray:
        import torch

        waves = torch.from_numpy(self.check_input(waves))
        chunks = [self.run(part)["logits"].cpu() for part in waves.split(self.max_batch)]
        return torch.cat(chunks).numpy()
