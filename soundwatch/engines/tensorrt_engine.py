"""TensorRT backend (GPU): a plan built from the exported ONNX graph, run by tensor name.

Written for TensorRT 11 and kept working on 10.x (>= 10.12; older versions are refused): the
network is strongly typed (``1 << int(STRONGLY_TYPED)``: required on 10.x, ignored on 11), so
precision comes from the graph — the fp16 export for fp16, the Q/DQ graph from ``soundwatch
calibrate int8`` for int8 — and no builder precision flag is set (TensorRT 11 removed them).
fp32 plans clear the TF32 flag (on by default), so fp32 means fp32. One optimisation profile
covers batch 1..max_batch, tuned for batch 1 (one source's window per hop). Plans are cached
under the engines directory, named by the ONNX graph's hash, the profile, the build settings
(workspace, optimisation level, TF32), the GPU and the TensorRT version, and written through a
unique temporary file. One ``trt.Logger`` serves the process.

The wheels: ``pip install 'soundwatch[tensorrt-cu13]'`` (``tensorrt``'s default, CUDA 13, NVIDIA
driver r580+) or ``'soundwatch[tensorrt-cu12]'`` (CUDA 12, driver r535+), matching the CUDA of
the installed torch (``torch.version.cuda``). A TensorRT that cannot start on the GPU (a driver
too old for its CUDA) is a UserError that says so, not a bare ``TypeError``.

The runtime uses ``execute_async_v3`` on torch CUDA tensors, on a stream of its own; no
pycuda. ``tensorrt`` is an optional extra, imported only when this backend is asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from soundwatch.engines.base import Engine
from soundwatch.engines.graphs import INPUT, OUTPUTS, building, engines_dir, serving_graph
from soundwatch.errors import CheckpointError, UserError
from soundwatch.models.card import read_card

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TRT_PRECISIONS = ("fp32", "fp16", "int8")
MIN_TRT = (10, 12)  # strongly typed networks are complete from 10.12 (8.6 lacks STRONGLY_TYPED altogether)
MIN_BATCH = 1
OPT_BATCH = 1  # what the daemon sends for one source each hop; many sources send up to listen.max_batch
MAX_BATCH = 256
WORKSPACE_BYTES = 4 << 30
OPTIMIZATION_LEVEL = 3  # TensorRT's default; 0 builds fastest, 5 searches longest
ALIGNMENT = 256  # bytes: TensorRT wants tensor addresses aligned to this
DRIVER_HINT = (
    "the tensorrt / tensorrt-cu13 wheels need NVIDIA driver r580 or newer, tensorrt-cu12 needs r535 or "
    "newer: install the extra that matches torch's CUDA ({cuda}): pip install 'soundwatch[tensorrt-cu{major}]'"
)
_LOGGER = None


def trt_logger(trt: ModuleType):
    """The process's one ``trt.Logger`` (TensorRT expects a single logger per process)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def trt_version(version: str) -> tuple[int, int]:
    """(major, minor) of a ``tensorrt.__version__`` such as ``"11.1.0.106"``."""
    parts = re.findall(r"\d+", version)[:2]
    return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) if parts else (0, 0)


def _driver_hint() -> str:
    import torch

    cuda = torch.version.cuda or "none"
    return DRIVER_HINT.format(cuda=cuda, major=cuda.split(".")[0] if cuda != "none" else "12")


def require_tensorrt() -> ModuleType:
    """``import tensorrt``, or a UserError (exit 2) naming what this machine lacks."""
    import torch

    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the tensorrt package (pip install 'soundwatch[tensorrt]')")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch sees none)")
    if missing:
        raise UserError(
            "the TensorRT backend needs "
            + " and ".join(missing)
            + "; use --backend onnx (CPU) or --backend torch instead"
        )
    try:
        import tensorrt
    except ImportError as exc:  # installed but its CUDA libraries do not load
        raise UserError(f"the tensorrt package is installed but does not load: {exc}; {_driver_hint()}") from exc
    if trt_version(tensorrt.__version__) < MIN_TRT:
        raise UserError(
            f"TensorRT {tensorrt.__version__} is too old: soundwatch needs {MIN_TRT[0]}.{MIN_TRT[1]} or "
            "newer (strongly typed networks); pip install 'soundwatch[tensorrt-cu12]' or "
            "'soundwatch[tensorrt-cu13]'"
        )
    return tensorrt


def _start(what: str, make):
    """``make()`` (a ``trt.Builder`` or ``trt.Runtime``), or a UserError naming the usual cause: a driver too
    old for the wheel's CUDA, which TensorRT reports as a bare TypeError or a null object."""
    try:
        made = make()
    except Exception as exc:  # noqa: BLE001 - TypeError, RuntimeError, pybind11 errors: all mean "cannot start"
        raise UserError(
            f"TensorRT could not create its {what} on this GPU ({type(exc).__name__}: {exc}); {_driver_hint()}"
        ) from exc
    if made is None:
        raise UserError(f"TensorRT could not create its {what} on this GPU; {_driver_hint()}")
    return made


def onnx_graph(checkpoint: Path, precision: str, directory: Path | None = None) -> Path:
    """The ONNX graph a plan of ``precision`` is built from (exported or calibrated first)."""
    if precision not in TRT_PRECISIONS:
        raise UserError(f"TensorRT precision must be one of {', '.join(TRT_PRECISIONS)}, not {precision!r}")
    return serving_graph(checkpoint, precision, directory)


def build_settings(precision: str) -> str:
    """What the build depends on besides the graph and the profile, for the plan's name."""
    return f"ws{WORKSPACE_BYTES >> 20}m-o{OPTIMIZATION_LEVEL}-{'tf32' if precision != 'fp32' else 'notf32'}"


def plan_path(
    graph: Path, trt_version: str, gpu_name: str, max_batch: int, directory: Path | None = None, precision: str = "fp16"
) -> Path:
    """``<graph stem>-<graph sha256>-b<min>-<opt>-<max>-<build settings>-<gpu>-trt<version>.plan``."""
    digest = hashlib.sha256(Path(graph).read_bytes()).hexdigest()[:16]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    profile = f"b{MIN_BATCH}-{min(OPT_BATCH, max_batch)}-{max_batch}"
    name = f"{Path(graph).stem}-{digest}-{profile}-{build_settings(precision)}-{gpu}-trt{trt_version}.plan"
    return engines_dir(directory) / name


def build_plan(
    trt: ModuleType, graph: Path, out: Path, window_samples: int, max_batch: int = MAX_BATCH, precision: str = "fp16"
) -> Path:
    """Parse ``graph`` into a strongly typed network and write the serialized plan to ``out``."""
    logger = trt_logger(trt)
    builder = _start("builder", lambda: trt.Builder(logger))
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {graph}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.builder_optimization_level = OPTIMIZATION_LEVEL
    if precision == "fp32":  # TF32 is on by default: fp32 matmuls and convs would round to 10-bit mantissas
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(
        INPUT, (MIN_BATCH, window_samples), (min(OPT_BATCH, max_batch), window_samples), (max_batch, window_samples)
    )
    if config.add_optimization_profile(profile) < 0:
        raise RuntimeError(f"TensorRT refused the optimisation profile for batch {MIN_BATCH}..{max_batch}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a plan from {graph} (see the log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".building", dir=out.parent)  # one per builder
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(serialized))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def ensure_plan(
    checkpoint: Path,
    precision: str = "fp16",
    max_batch: int = MAX_BATCH,
    directory: Path | None = None,
    force: bool = False,
) -> Path:
    """The cached plan for ``checkpoint`` at ``precision`` on this GPU and TensorRT; built if absent."""
    import torch

    trt = require_tensorrt()
    card = read_card(checkpoint)
    graph = onnx_graph(checkpoint, precision, directory)
    out = plan_path(graph, trt.__version__, torch.cuda.get_device_name(), max_batch, directory, precision)
    if not force and out.is_file():
        return out
    with building(out):  # a second process starting meanwhile waits for this build instead of repeating it
        if force or not out.is_file():
            log.warning(
                "building a TensorRT %s plan for %s on %s: a one-off that takes minutes; it is cached as %s",
                precision,
                Path(checkpoint).name,
                torch.cuda.get_device_name(),
                out.name,
            )
            build_plan(trt, graph, out, card.window_samples, max_batch, precision)
    return out


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(
        self,
        checkpoint: Path,
        *,
        compute: str = "auto",
        threads: int = 0,
        precision: str | None = None,
        engines_dir: Path | None = None,
    ):
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
        self.logger = trt_logger(trt)
        self.runtime = _start("runtime", lambda: trt.Runtime(self.logger))  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise CheckpointError(
                f"{self.plan}: TensorRT could not load this plan (another TensorRT "
                "version or GPU?); delete it to rebuild"
            )
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != {INPUT, *OUTPUTS} or self.engine.get_tensor_mode(INPUT) != trt.TensorIOMode.INPUT:
            raise CheckpointError(
                f"{self.plan}: tensors {sorted(names)}, expected input {INPUT!r} "
                f"and outputs {list(OUTPUTS)}; delete it to rebuild"
            )
        for name in (INPUT, *OUTPUTS):
            if self.engine.get_tensor_dtype(name) != trt.float32:
                raise CheckpointError(
                    f"{self.plan}: tensor {name!r} is {self.engine.get_tensor_dtype(name)}, expected float32"
                )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.device = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"

    def run(self, waves: torch.Tensor) -> dict[str, torch.Tensor]:
        """CUDA float32 (batch <= max_batch, window_samples) -> {"logits", "embedding"} CUDA tensors."""
        import torch

        waves = waves.to("cuda", torch.float32).contiguous()
        if waves.data_ptr() % ALIGNMENT:  # a view at an odd offset: TensorRT wants aligned addresses
            waves = waves.clone()
        self.stream.wait_stream(torch.cuda.current_stream())  # inputs made on the caller's stream
        with torch.cuda.stream(self.stream):
            if not self.context.set_input_shape(INPUT, tuple(waves.shape)):
                raise ValueError(f"batch {tuple(waves.shape)} is outside the plan's profile 1..{self.max_batch}")
            out = {
                name: torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
                for name in OUTPUTS
            }
            for name, tensor in ((INPUT, waves), *out.items()):
                if tensor.data_ptr() % ALIGNMENT:
                    raise RuntimeError(f"tensor {name!r} at {tensor.data_ptr():#x} is not {ALIGNMENT}-byte aligned")
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
