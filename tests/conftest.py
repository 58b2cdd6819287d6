"""Shared test fixtures: real data paths and small checkpoints built on the spot."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from soundwatch.models.checkpoint import ModelCard, build_model, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
ESC50_DIR = SHARED_DATA / "esc50-16k"
ESC10_DIR = SHARED_DATA / "esc10-44k"


def esc50_classes() -> list[str]:
    """The 50 ESC-50 labels in target order, read from the real metadata."""
    with open(ESC50_DIR / "meta" / "esc50.csv") as f:
        by_target = {int(r["target"]): r["category"] for r in csv.DictReader(f)}
    return [by_target[i] for i in range(len(by_target))]


def make_checkpoint(path: Path, arch: str = "tiny", pretrained: bool = False, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    card = ModelCard(arch=arch, classes=esc50_classes(), sample_rate=16000)
    model = build_model(card, pretrained=pretrained)
    return save_checkpoint(path, model, card)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init 'tiny' SoundCLR for the 50 ESC-50 classes at 16 kHz (fast)."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def effnet_checkpoint(tmp_path_factory) -> Path:
    """An ImageNet-initialised (untrained heads) efficientnet_lite0 SoundCLR: the real architecture."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "effl0.safetensors", "efficientnet_lite0", True)
