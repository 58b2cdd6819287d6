"""INT8 calibration: a class-balanced training-fold manifest, a symmetric Q/DQ graph, fp32 agreement."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from soundwatch.data.datasets import load_dataset
from soundwatch.engines.export import graph_metadata
from soundwatch.engines.quantize import compare_on_fold, make_manifest, quantize_int8

from conftest import ESC50_DIR, built_once


@pytest.fixture(scope="session")
def quantized(effnet_checkpoint, tmp_path_factory):
    """The efficientnet_lite0 fixture calibrated on one training-fold clip per class (50 clips)."""

    def calibrate(root):
        manifest = root / "calibration" / "manifest.json"
        graph = quantize_int8(
            effnet_checkpoint, load_dataset("esc50", ESC50_DIR, 16000), manifest, root / "engines", per_class=1
        )
        return {"graph": graph, "manifest": manifest, "engines": root / "engines", "calibration": root / "calibration"}

    return built_once(tmp_path_factory, "int8", calibrate)


def test_manifest_is_class_balanced_from_training_folds():
    data = load_dataset("esc50", ESC50_DIR, 16000)
    manifest = make_manifest(data, per_class=3)
    clips = manifest["clips"]
    assert len(clips) == 150 and manifest["folds"] == [2, 3, 4, 5]
    assert all(c["fold"] != 1 and c["name"][0] == str(c["fold"]) for c in clips)  # ESC-50 names start with the fold
    assert sorted(Counter(c["category"] for c in clips).values()) == [3] * 50
    assert make_manifest(data, per_class=3) == manifest  # seeded: the same draw every time
    assert make_manifest(data, per_class=3, seed=1) != manifest


def test_a_manifest_path_holding_something_else_is_refused_intact(tmp_path):
    """--manifest names a file to read, or to make where none is: a user's other file there (not a manifest,
    not JSON) or a folder is refused with its path, and left as it was."""
    from soundwatch.engines.quantize import load_or_make_manifest
    from soundwatch.errors import UserError

    for name, text, needle in (
        ("list.json", '["my", "own", "list"]', "not a calibration manifest"),
        ("other.json", '{"clips": "not a list"}', "not a calibration manifest"),
        ("notes.txt", "what I calibrated and why", "cannot read it as JSON"),
    ):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(UserError, match=needle):
            load_or_make_manifest(path, None, (2, 3, 4, 5), 1)
        assert path.read_text() == text
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="not a file"):
        load_or_make_manifest(tmp_path / "folder", None, (2, 3, 4, 5), 1)


def test_calibration_writes_manifest_statistics_and_graph(quantized):
    manifest = json.loads(quantized["manifest"].read_text())
    assert len(manifest["clips"]) == 50 and all(c["fold"] != 1 for c in manifest["clips"])
    (stats,) = quantized["calibration"].glob("*-int8-ranges.json")
    assert stats.stat().st_size < 100_000 and "highest" in stats.read_text()
    meta = graph_metadata(quantized["graph"])
    assert meta["soundwatch.precision"] == "int8" and quantized["graph"].name.endswith("-int8.onnx")


def test_graph_is_symmetric_int8_qdq_tensorrt_accepts(quantized):
    graph = onnx.load(str(quantized["graph"]))
    consts = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    qdq = [n for n in graph.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 100
    for node in qdq:
        zero_point = consts[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name  # symmetric
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            assert consts[node.input[0]].dtype == np.int8, node.name  # no int32 bias quantization
    produced_by_dq = {n.output[0] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    frontend = [n for n in graph.graph.node if n.op_type in ("Pow", "MatMul", "Log", "ReduceMax")]
    assert frontend and not any(i in produced_by_dq for n in frontend for i in n.input)
    dft_conv = next(n for n in graph.graph.node if n.op_type == "Conv")  # the first conv: the DFT basis
    assert dft_conv.input[1] in consts and consts[dft_conv.input[1]].dtype == np.float32


def test_int8_agrees_with_fp32_on_real_clips(effnet_checkpoint, quantized):
    result = compare_on_fold(
        effnet_checkpoint, load_dataset("esc50", ESC50_DIR, 16000), 1, quantized["engines"], threads=1, limit=32
    )
    assert result.clips == 32
    # The fixture's heads are untrained (near-tied logits), so top-1 agreement is a loose check here;
    # the embedding, which the heads read, must stay close.
    assert result.agreement >= 0.6
    assert result.embedding_cosine >= 0.9
