"""The ONNX export: frontend inside, TensorRT-parsable ops, dynamic batch, parity with torch on real clips."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from soundwatch.data.datasets import load_dataset
from soundwatch.engines.export import (
    FORBIDDEN_OPS,
    INPUT,
    OUTPUTS,
    export_onnx,
    graph_metadata,
    is_current,
)
from soundwatch.engines.onnx_engine import open_session
from soundwatch.models.checkpoint import file_sha256, load_checkpoint

from conftest import ESC50_DIR, built_once, make_checkpoint
from helpers import building_elsewhere, soundwatch, stderr_until

N_CLIPS = 8


@pytest.fixture(scope="session")
def engines(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


# the tests of the effnet's graphs run on one xdist worker (--dist loadgroup): the other would only wait
# for the export that built_once gives them, instead of running other tests meanwhile
EFFNET_GRAPHS = pytest.mark.xdist_group("effl0-onnx")


@pytest.fixture(scope="session")
def effnet_onnx(effnet_checkpoint, tmp_path_factory) -> dict:
    return built_once(
        tmp_path_factory,
        "effl0-onnx",
        lambda folder: {p: export_onnx(effnet_checkpoint, precision=p, directory=folder) for p in ("fp32", "fp16")},
    )


@pytest.fixture(scope="session")
def fold1_waves() -> np.ndarray:
    """Real ESC-50 fold-1 clips, one from each of the first N_CLIPS classes."""
    clips = load_dataset("esc50", ESC50_DIR, 16000)
    fold1 = clips.indices([1])
    rows = [fold1[np.flatnonzero(clips.labels[fold1] == label)[0]] for label in range(N_CLIPS)]
    return np.asarray(clips.waves[rows])


@pytest.fixture(scope="session")
def torch_reference(effnet_checkpoint, fold1_waves):
    torch.set_num_threads(1)
    model, _ = load_checkpoint(effnet_checkpoint)  # fft frontend: the training/serving reference
    with torch.inference_mode():
        logits, embedding = model(torch.from_numpy(fold1_waves))
    return logits.numpy(), embedding.numpy()


@EFFNET_GRAPHS
def test_graph_is_waveform_in_logits_out_without_stft(effnet_onnx):
    graph = onnx.load(str(effnet_onnx["fp32"]))
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & FORBIDDEN_OPS
    assert "Conv" in ops and "Log" in ops and "MatMul" in ops  # the conv-DFT log-mel is inside
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    assert 17 <= opset <= 24
    (wave,) = graph.graph.input
    assert wave.name == INPUT
    dims = wave.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
    assert dims[1].dim_value == 80000
    assert [o.name for o in graph.graph.output] == list(OUTPUTS)
    constants = {i.name for i in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type == "ReduceMax":  # TensorRT: axes must be an initializer (opset >= 18: an input)
            assert len(node.input) == 2 and node.input[1] in constants


@EFFNET_GRAPHS
def test_fp32_parity_with_torch_on_real_clips(effnet_onnx, fold1_waves, torch_reference):
    logits, embedding = open_session(effnet_onnx["fp32"], threads=1).run(None, {INPUT: fold1_waves})
    ref_logits, ref_embedding = torch_reference
    assert np.abs(logits - ref_logits).max() <= 1e-3
    assert np.abs(embedding - ref_embedding).max() <= 1e-4
    assert (logits.argmax(1) == ref_logits.argmax(1)).all()


@EFFNET_GRAPHS
def test_fp16_graph_keeps_frontend_fp32_and_agrees(effnet_onnx, fold1_waves, torch_reference):
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(effnet_onnx["fp16"])))
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.graph.value_info, *graph.graph.input)}
    frontend = [n for n in graph.graph.node if n.op_type in ("Pow", "Log", "ReduceMax")]
    assert len(frontend) == 4
    for node in frontend:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
    backbone_convs = [
        n for n in graph.graph.node if n.op_type == "Conv" and types.get(n.input[0]) == onnx.TensorProto.FLOAT16
    ]
    assert len(backbone_convs) >= 40  # every efficientnet conv runs in fp16; the DFT conv does not
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.graph.output)

    logits, _ = open_session(effnet_onnx["fp16"], threads=1).run(None, {INPUT: fold1_waves})
    ref_logits, _ = torch_reference
    assert np.abs(logits - ref_logits).max() <= 0.05
    assert (logits.argmax(1) == ref_logits.argmax(1)).all()


def test_dynamic_batch(tiny_checkpoint, engines):
    session = open_session(export_onnx(tiny_checkpoint, directory=engines), threads=1)
    waves = np.random.default_rng(0).standard_normal((3, 80000)).astype(np.float32)
    three = session.run(["logits"], {INPUT: waves})[0]
    one = session.run(["logits"], {INPUT: waves[1:2]})[0]
    assert three.shape == (3, 50)
    np.testing.assert_allclose(one[0], three[1], atol=1e-5)


def test_export_is_cached_by_checkpoint_hash(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "model.safetensors", seed=1)
    first = export_onnx(checkpoint, directory=tmp_path / "engines")
    assert file_sha256(checkpoint)[:16] in first.name and first.name.endswith("-fp32.onnx")
    stamp = first.stat().st_mtime_ns
    assert export_onnx(checkpoint, directory=tmp_path / "engines") == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rewritten

    make_checkpoint(checkpoint, seed=2)  # same path, new weights
    second = export_onnx(checkpoint, directory=tmp_path / "engines")
    assert second != first and not is_current(first, file_sha256(checkpoint), "fp32")
    assert graph_metadata(second)["soundwatch.checkpoint_sha256"] == file_sha256(checkpoint)
    # graph_metadata reads the metadata without the onnx package: the same keys and values as onnx.load's
    model = onnx.load(str(second))
    assert graph_metadata(second) == {p.key: p.value for p in model.metadata_props if p.key.startswith("soundwatch.")}
    assert len(graph_metadata(second)) == 4
    # a cache entry cut short (a copy that broke off), or a file that is no graph: not current, rebuilt
    data = second.read_bytes()
    cut = tmp_path / "engines" / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    (tmp_path / "engines" / "notes.onnx").write_text("not a graph")
    assert graph_metadata(cut) == {} and graph_metadata(tmp_path / "engines" / "notes.onnx") == {}
    assert not is_current(cut, file_sha256(checkpoint), "fp32")


@pytest.mark.timeout(240)  # a second process that waited without saying so would block the read below
def test_processes_starting_on_a_cold_cache_export_once(tiny_checkpoint, tmp_path):
    """Two processes that need the same graph at once (two daemons, listen beside eval-scenes): the later one
    waits for the first one's export and serves it, instead of exporting it a second time beside it."""
    engines = tmp_path / "engines"
    with building_elsewhere(tiny_checkpoint, engines) as target:  # this test is the first process
        later = soundwatch("export", str(tiny_checkpoint), "--engines-dir", str(engines))
        said = stderr_until(later, "waiting for it", "the second process did not wait for the first one's export")
        assert not target.exists()
        export_onnx(tiny_checkpoint, out=target)  # the first process's export lands
        inode = target.stat().st_ino
    out, err = later.communicate(timeout=120)
    assert later.returncode == 0, said + err
    assert out.strip() == str(target)
    assert target.stat().st_ino == inode  # served the first one's file, did not export and replace it


def test_export_command_writes_out_file(tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    def export(*args):
        return subprocess.run(
            [sys.executable, "-m", "soundwatch", "export", *map(str, args)], capture_output=True, text=True, timeout=120
        )

    out = tmp_path / "model.onnx"
    run = export(tiny_checkpoint, "--out", out)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    assert graph_metadata(out)["soundwatch.precision"] == "fp32"
    # the exporter's "torchvision is not installed. Skipping torchvision::..." lines are not for users
    assert "torchvision" not in run.stderr, run.stderr

    bad = export(tiny_checkpoint, "--precision", "int4")
    assert bad.returncode == 2 and "fp32, fp16" in bad.stderr
    # --out onto the checkpoint itself (a slip of the shell): refused, the model intact
    model = tmp_path / "mine.safetensors"
    model.write_bytes(tiny_checkpoint.read_bytes())
    onto = export(model, "--out", model)
    assert onto.returncode == 2 and "already exists and is not an .onnx file" in onto.stderr, onto.stderr
    assert model.read_bytes() == tiny_checkpoint.read_bytes()
    # --out onto an ONNX model soundwatch did not export (the user's own): refused, intact
    from onnx import TensorProto, helper

    theirs = tmp_path / "theirs.onnx"
    node = helper.make_node("Identity", ["x"], ["y"])
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    onnx.save(helper.make_model(helper.make_graph([node], "theirs", io[:1], io[1:])), theirs)
    before = theirs.read_bytes()
    foreign = export(tiny_checkpoint, "--out", theirs)
    assert foreign.returncode == 2 and "not a graph soundwatch exported" in foreign.stderr, foreign.stderr
    assert theirs.read_bytes() == before
    # an earlier export at that path is soundwatch's own: the command may replace it (checked without a second
    # export, which costs half a minute here; export_onnx writes any path through one rename)
    from soundwatch.engines.commands import _check_replaceable_graph

    _check_replaceable_graph(out)
