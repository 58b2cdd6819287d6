"""Backends behind the engine interface: ONNX Runtime vs torch, refusals, TensorRT absence, bench."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from soundwatch.engines import create_engine
from soundwatch.engines.bench import markdown, parse_spec, run_bench
from soundwatch.engines.export import export_onnx
from soundwatch.engines.onnx_engine import OnnxEngine, check_graph, open_session
from soundwatch.errors import CheckpointError, UserError
from soundwatch.models.checkpoint import read_card


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def waves():
    return (np.random.default_rng(1).standard_normal((2, 80000)) * 0.1).astype(np.float32)


def test_onnx_engine_matches_torch_engine(tiny_checkpoint, engines, waves):
    onnx_engine = create_engine("onnx", tiny_checkpoint, threads=1, compute="cpu", engines_dir=engines)
    torch_engine = create_engine("torch", tiny_checkpoint, threads=1, compute="cpu")
    assert (onnx_engine.name, onnx_engine.precision, onnx_engine.device) == ("onnx", "fp32", "cpu")
    assert onnx_engine.classes == torch_engine.classes and onnx_engine.window_samples == 80000
    np.testing.assert_allclose(onnx_engine.infer(waves), torch_engine.infer(waves), atol=1e-3)
    with pytest.raises(ValueError, match="80000"):
        onnx_engine.infer(waves[:, :1000])


def test_graph_for_another_model_is_refused(tiny_checkpoint, engines):
    card = read_card(tiny_checkpoint)
    session = open_session(export_onnx(tiny_checkpoint, directory=engines), threads=1)
    check_graph(session, card, "graph")  # its own card passes
    with pytest.raises(CheckpointError, match=r"logits are .*expected \[batch, 10\]"):
        check_graph(session, replace(card, classes=card.classes[:10]), "graph")
    with pytest.raises(CheckpointError, match="expected tensor\\(float\\) \\[batch, 32000\\]"):
        check_graph(session, replace(card, window_s=2.0), "graph")
    renamed = replace(card, classes=[f"x{i}" for i in range(50)])
    with pytest.raises(CheckpointError, match="its model card has classes"):
        check_graph(session, renamed, "graph")
    with pytest.raises(CheckpointError, match="its model card has members 1, the checkpoint 2"):
        check_graph(session, replace(card, members=2, projector=False), "graph")  # a single net's graph, an ensemble


def test_int8_without_calibration_says_what_to_run(tiny_checkpoint, engines):
    with pytest.raises(UserError, match="soundwatch calibrate int8"):
        OnnxEngine(tiny_checkpoint, threads=1, precision="int8", engines_dir=engines)
    with pytest.raises(UserError, match="not 'int4'"):
        OnnxEngine(tiny_checkpoint, precision="int4")


def test_tensorrt_missing_is_a_user_error(tiny_checkpoint):
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("this machine has TensorRT and a GPU")
    with pytest.raises(UserError, match="TensorRT backend needs") as info:
        create_engine("tensorrt", tiny_checkpoint)
    assert ("tensorrt package" in str(info.value)) == (importlib.util.find_spec("tensorrt") is None)
    assert ("CUDA GPU" in str(info.value)) == (not torch.cuda.is_available())

    run = subprocess.run(
        [sys.executable, "-m", "soundwatch", "build-engine", str(tiny_checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "TensorRT backend needs" in run.stderr and "Traceback" not in run.stderr


def test_nothing_imports_tensorrt_at_start_up():
    code = (
        "import sys, soundwatch.cli as c; c._register_commands(); "
        "import soundwatch.engines.tensorrt_engine, soundwatch.engines.onnx_engine; "
        "print('tensorrt' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip()
        == "False"
    )


def test_bench_measures_against_torch_and_notes_skips(tiny_checkpoint, engines):
    assert parse_spec("onnx-int8") == ("onnx", "int8") and parse_spec("tensorrt") == ("tensorrt", "fp16")
    with pytest.raises(UserError):
        parse_spec("openvino")
    results, skipped = run_bench(
        tiny_checkpoint,
        ["onnx", "onnx-int8"],
        [1, 2],
        threads=1,
        repeats=4,
        warmup=1,
        compute="cpu",
        engines_dir=engines,
        rounds=3,
    )
    assert [(r.backend, r.batch) for r in results] == [("torch", 1), ("onnx", 1), ("torch", 2), ("onnx", 2)]
    assert all(r.vs_torch == 1.0 for r in results if r.backend == "torch")
    for r in results:
        assert 0 < r.p50_ms <= r.p99_ms and r.windows_per_s == pytest.approx(r.batch / r.p50_ms * 1e3)
    assert len(skipped) == 1 and skipped[0].startswith("onnx-int8:")
    assert markdown(results).count("\n") == 5


def test_bench_without_its_torch_reference_still_reports(tiny_checkpoint, engines):
    """torch on CUDA cannot run here (no GPU): the others are measured, with no ratio, and torch is noted as
    skipped (it once ended in a KeyError: what bench/gpu_check.sh would hit on a broken CUDA)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: torch on CUDA runs")
    results, skipped = run_bench(
        tiny_checkpoint, ["onnx"], [1], threads=1, repeats=2, warmup=0, compute="cuda", engines_dir=engines, rounds=1
    )
    assert [(r.backend, r.vs_torch) for r in results] == [("onnx", None)]
    assert len(skipped) == 1 and skipped[0].startswith("torch-fp32:") and "no CUDA GPU" in skipped[0]
    assert "| onnx | fp32 | 1 |" in markdown(results) and markdown(results).endswith(" - |")


def test_plan_names_key_graph_gpu_and_tensorrt_version(tiny_checkpoint, engines):
    from soundwatch.engines.tensorrt_engine import onnx_graph, plan_path

    graph = onnx_graph(tiny_checkpoint, "fp16", engines)
    name = plan_path(graph, "11.1.0.106", "NVIDIA H100 80GB HBM3", 256, engines, "fp16").name
    assert name.startswith(graph.stem)
    assert name.endswith("-b1-1-256-ws4096m-o3-tf32-nvidia-h100-80gb-hbm3-trt11.1.0.106.plan"), name
    fp32 = plan_path(graph, "11.1.0.106", "NVIDIA H100 80GB HBM3", 256, engines, "fp32").name
    assert "-notf32-" in fp32 and fp32 != name  # fp32 plans are built without TF32, and cached apart
    assert plan_path(graph, "10.16.1.11", "NVIDIA H100 80GB HBM3", 256, engines).name != name
    assert plan_path(graph, "11.1.0.106", "NVIDIA L4", 256, engines).name != name
    assert (
        plan_path(
            onnx_graph(tiny_checkpoint, "fp32", engines), "11.1.0.106", "NVIDIA H100 80GB HBM3", 256, engines
        ).name
        != name
    )
    with pytest.raises(UserError, match="calibrate int8"):
        onnx_graph(tiny_checkpoint, "int8", engines)


def test_tensorrt_versions_and_a_failing_builder_give_clear_errors():
    """TensorRT older than 10.12 is refused by version; a Builder that cannot start names the driver."""
    from soundwatch.engines.tensorrt_engine import MIN_TRT, _start, trt_version

    assert trt_version("11.1.0.106") == (11, 1) and trt_version("10.16.1.11") >= MIN_TRT
    assert trt_version("8.6.1.6") < MIN_TRT and trt_version("10.11.0.33") < MIN_TRT

    def builder_on_an_old_driver():
        raise TypeError("pybind11::init(): factory function returned nullptr")

    with pytest.raises(UserError, match="driver r580 or newer.*tensorrt-cu12 needs r535"):
        _start("builder", builder_on_an_old_driver)
    with pytest.raises(UserError, match="could not create its runtime"):
        _start("runtime", lambda: None)


def test_every_backend_takes_the_same_constructor_arguments(tiny_checkpoint):
    """One engine contract: the same keyword arguments everywhere, a TypeError for any other."""
    import inspect

    from soundwatch.engines.onnx_engine import OnnxEngine
    from soundwatch.engines.tensorrt_engine import TensorRTEngine
    from soundwatch.engines.torch_engine import TorchEngine

    def params(cls):
        return [(p.name, p.kind, p.default) for p in inspect.signature(cls.__init__).parameters.values()][1:]

    assert params(TorchEngine) == params(OnnxEngine) == params(TensorRTEngine)
    assert [p[0] for p in params(TorchEngine)] == ["checkpoint", "compute", "threads", "precision", "engines_dir"]
    for cls in (TorchEngine, OnnxEngine):
        with pytest.raises(TypeError):
            cls(tiny_checkpoint, max_batch=8)


def test_a_backend_reports_the_precision_it_runs_and_refuses_what_it_cannot(tiny_checkpoint, tmp_path):
    from soundwatch.engines.onnx_engine import OnnxEngine
    from soundwatch.engines.torch_engine import TorchEngine

    assert TorchEngine(tiny_checkpoint, compute="cpu").precision == "fp32"
    with pytest.raises(UserError, match="fp16 only on a CUDA GPU"):  # it used to say fp16 and run fp32
        TorchEngine(tiny_checkpoint, compute="cpu", precision="fp16")
    with pytest.raises(UserError, match="CPU"):
        OnnxEngine(tiny_checkpoint, compute="cuda", engines_dir=tmp_path)
    assert OnnxEngine(tiny_checkpoint, precision="fp16", engines_dir=tmp_path).precision == "fp16"
