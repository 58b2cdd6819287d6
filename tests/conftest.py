"""Shared test fixtures: real data paths and small checkpoints built on the spot."""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from soundwatch.models.checkpoint import ModelCard, build_model, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
ESC50_DIR = SHARED_DATA / "esc50-16k"
ESC10_DIR = SHARED_DATA / "esc10-44k"


def esc50_classes() -> list[str]:
    """The 50 ESC-50 labels in target order (the package's own list; test_datasets checks it against the metadata)."""
    from soundwatch.data.datasets import ESC50_CLASSES

    return list(ESC50_CLASSES)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]):
    """A costly session fixture's value, built once per test run rather than once per pytest-xdist worker:
    the first worker to ask builds it (``build(folder)``) in a folder that this run's workers share, under a
    file lock; the others wait for it and take the same value. Without xdist, a folder of this session's own."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / f"built-once-{name}"  # pytest-N/, this run's alone
    value = shared / "value.pickle"
    with open(f"{shared}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not value.is_file():
            shared.mkdir(exist_ok=True)
            built = build(shared)
            value.write_bytes(pickle.dumps(built))
        return pickle.loads(value.read_bytes())


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
    return built_once(
        tmp_path_factory,
        "effl0",
        lambda folder: make_checkpoint(folder / "effl0.safetensors", "efficientnet_lite0", True),
    )


@pytest.fixture(scope="session")
def tones_model(tmp_path_factory) -> tuple[Path, Path]:
    """A real trained model: the trainer fits the tiny CNN on a synthetic 4-class set of 5 s, 16 kHz
    clips (tone, noise band, clicks, chirp) in the ESC-50 layout. Returns (checkpoint, data dir)."""
    return built_once(tmp_path_factory, "tones", _train_tones_model)


def _train_tones_model(root: Path) -> tuple[Path, Path]:
    import sys

    from soundwatch.train.synthetic import make_esc

    data = make_esc(root / "data", n_classes=4, per_fold=4, sample_rate=16000, seconds=5.0)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "soundwatch",
            "train",
            "esc50",
            "--data-dir",
            str(data),
            "--folds",
            "1",
            "--arch",
            "tiny",
            "--no-pretrained",
            "--epochs",
            "12",
            "--batch-size",
            "16",
            "--warmup-epochs",
            "1",
            "--lr",
            "0.003",
            "--threads",
            "1",
            "--out",
            str(root / "run"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root / "run" / "fold1" / "best.safetensors", data


@pytest.fixture(scope="session")
def _pulse_server() -> str:
    """Start (or reuse) the PulseAudio virtual microphone of scripts/pulse-mic.sh; its XDG_RUNTIME_DIR."""
    if shutil.which("pulseaudio") is None or shutil.which("paplay") is None:
        if os.environ.get("SOUNDWATCH_REQUIRE_PULSE"):
            pytest.fail("pulseaudio/paplay missing but SOUNDWATCH_REQUIRE_PULSE is set (run scripts/test.sh)")
        pytest.skip("pulseaudio not installed (scripts/test.sh installs it)")
    os.environ["XDG_RUNTIME_DIR"] = os.environ.get("XDG_RUNTIME_DIR") or "/tmp/soundwatch-pulse"
    subprocess.run([str(REPO / "scripts" / "pulse-mic.sh"), "start"], check=True, capture_output=True, timeout=30)
    return os.environ["XDG_RUNTIME_DIR"]


@pytest.fixture
def pulse_mic(_pulse_server):
    """The virtual microphone, this test's alone: an exclusive lock on a file beside the server, held from
    set-up to teardown, so no other process's test plays into it (two would hear each other's sounds) or
    restarts the server under it. Grouping by pytest-xdist (below) is not enough: with pytest 9.2,
    xdist 3.8's `--dist loadgroup` silently stops grouping (pytest-dev/pytest-xdist#1386)."""
    import fcntl

    with open(Path(_pulse_server) / "soundwatch-tests.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            os.environ["XDG_RUNTIME_DIR"] = _pulse_server
            yield _pulse_server
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path_factory, monkeypatch) -> Path:
    """Every test's daemons keep their default event log (~/.local/state/soundwatch/events.jsonl) under
    a fresh $XDG_STATE_HOME: the suite never writes the user's own log, and two daemons of tests
    running side by side (pytest-xdist) never contend for one log's lock."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group markers
def pytest_collection_modifyitems(items):
    """Under pytest-xdist (`-n 2 --dist loadgroup`, scripts/test.sh), every test that plays through the one
    PulseAudio virtual microphone runs on the same worker, one after another: two would hear each other's
    sounds, and the restart test stops the server under everyone. (Where xdist does not group them, the
    pulse_mic fixture's lock still keeps them one at a time.)"""
    for item in items:
        if item.get_closest_marker("pulse") or "pulse_mic" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("pulse"))
