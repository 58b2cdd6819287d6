"""Ensemble checkpoints: made by the ship script from trained members, served as one model by every backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from soundwatch.engines.export import export_onnx
from soundwatch.engines.onnx_engine import OnnxEngine
from soundwatch.engines.quantize import backbone_nodes
from soundwatch.errors import CheckpointError
from soundwatch.models.checkpoint import ModelCard, file_sha256, load_checkpoint, read_card

from conftest import esc50_classes, make_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def ship(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ship_model.py"), *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [make_checkpoint(root / f"seed{s}.safetensors", seed=s) for s in (0, 1)]


@pytest.fixture(scope="module")
def shipped(members, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shipped") / "ens.safetensors"
    proc = ship(*map(str, members), "--status", "two seeds", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "an ensemble of 2 tiny SoundCLRs with 50 classes" in proc.stdout
    return out


def test_ensemble_output_is_the_mean_of_its_members_probabilities(members, shipped):
    torch.manual_seed(3)
    x = torch.randn(4, 80000) * 0.1
    singles = [load_checkpoint(p)[0] for p in members]
    model, card = load_checkpoint(shipped)
    with torch.inference_mode():
        probs = [torch.softmax(m(x)[0], dim=1) for m in singles]
        logits, embedding = model(x)
    assert not torch.allclose(probs[0], probs[1], atol=1e-3)  # the members differ, so the mean means something
    assert torch.allclose(logits.exp(), (probs[0] + probs[1]) / 2, atol=2e-3)  # fp16 storage, fp32 compute
    assert torch.allclose(logits.exp().sum(1), torch.ones(4), atol=1e-5)
    assert embedding.shape == (4, 2 * singles[0].embed_dim)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(4), atol=1e-5)


def test_ensemble_card_and_file_layout(members, shipped):
    card = read_card(shipped)
    meta = card.to_dict()
    assert card.members == 2 and card.projector is False and meta["format_version"] == 2
    assert [m["source_sha256"] for m in meta["ensemble"]["members"]] == [file_sha256(p) for p in members]
    assert meta["shipped"]["from"] == [str(p) for p in members] and meta["shipped"]["dtype"] == "float16"
    with safe_open(str(shipped), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("members.0.", "members.1.")) for k in keys)
    assert not any(".projector." in k for k in keys)  # training-only head left out
    single = sum(t.numel() for k, t in load_file(str(members[0])).items() if not k.startswith("projector."))
    assert sum(t.numel() for t in load_file(str(shipped)).values()) == 2 * single


def test_ship_refuses_members_that_do_not_match(members, tmp_path):
    odd = tmp_path / "odd.safetensors"
    card = ModelCard(arch="tiny", classes=esc50_classes()[::-1], sample_rate=16000)
    save_file(load_file(str(members[0])), str(odd), metadata={"soundwatch": json.dumps(card.to_dict())})
    out = tmp_path / "ens.safetensors"
    proc = ship(str(members[0]), str(odd), "--status", "x", "--out", str(out))
    assert proc.returncode == 1 and "classes is" in proc.stderr and "must match" in proc.stderr
    assert not out.exists()


def test_weights_that_do_not_fit_the_declared_ensemble_are_refused(members, tmp_path):
    liar = tmp_path / "liar.safetensors"
    card = ModelCard(arch="tiny", classes=esc50_classes(), sample_rate=16000, members=2, projector=False)
    save_file(load_file(str(members[0])), str(liar), metadata={"soundwatch": json.dumps(card.to_dict())})
    with pytest.raises(CheckpointError, match="do not fit an ensemble of 2 tiny SoundCLRs"):
        load_checkpoint(liar)


def test_ensemble_exports_to_onnx_with_both_backbones_quantizable(shipped, tmp_path):
    path = export_onnx(shipped, precision="fp32", directory=tmp_path)
    import onnx

    graph = onnx.load(str(path))
    names = set(backbone_nodes(graph))
    scopes = {
        next(p.value for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes")
        for n in graph.graph.node
        if n.name in names
    }
    assert any("members.0.backbone" in s for s in scopes) and any("members.1.backbone" in s for s in scopes)
    waves = np.random.default_rng(0).normal(0, 0.1, (3, 80000)).astype(np.float32)
    onnx_logits = OnnxEngine(shipped, threads=1, engines_dir=tmp_path).infer(waves)
    model, _ = load_checkpoint(shipped)
    with torch.inference_mode():
        torch_logits = model(torch.from_numpy(waves))[0].numpy()
    assert np.abs(onnx_logits - torch_logits).max() < 1e-3
    assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).all()
    half = OnnxEngine(shipped, threads=1, precision="fp16", engines_dir=tmp_path).infer(waves)
    casts = [
        n
        for n in onnx.load(str(export_onnx(shipped, precision="fp16", directory=tmp_path))).graph.node
        if n.op_type == "Cast"
    ]
    to_float = [n for n in casts if next(a.i for a in n.attribute if a.name == "to") == onnx.TensorProto.FLOAT]
    assert len(to_float) >= 2  # out of float16 after each member's backbone
    assert np.abs(np.exp(half) - np.exp(torch_logits)).max() < 0.02
