"""The lent-GPU adaptation job's packing and its way back (scripts/gpu_job.py, scripts/gpu-job.sh).

- ``pack`` on a few real ESC-50 clips and a stand-in background corpus of real clips: the clips (and the
  first fold-1 clips, for the GPU check) come out as Opus at 16 kHz that the ESC-50 loader reads with their labels, the background files as Opus cut to
  ``--max-file-s``, with a manifest the scene mixer builds streams from, and the size of what would travel;
- ``pack`` when the call cannot carry the minutes asked: fewer background minutes, said on stderr, and the whole
  within the limit; when nothing fits: exit 2 naming what fills the call, nothing left behind;
- ``pack`` without ffmpeg: exit 2 naming it, nothing written;
- ``split``/``join``: a model in parts comes back byte for byte; a part missing or changed is refused (exit 2);
- ``scripts/gpu-job.sh`` without a packed job: exit 2 saying how to make one.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundwatch.train.synthetic import standin_background_manifest
from tests.conftest import ESC50_DIR, REPO

SCRIPT = REPO / "scripts" / "gpu_job.py"


def gpu_job(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture(scope="module")
def standin_manifest(tmp_path_factory) -> Path:
    """A background manifest whose speech and music are ESC-50 clips of folds 4-5 (two of each split and type,
    each a package of its own)."""
    manifest = tmp_path_factory.mktemp("corpus") / "manifest.csv"
    return standin_background_manifest(ESC50_DIR, manifest, per_type=2, package_per_file=True)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (scripts/test.sh installs it)")
def test_pack_writes_opus_clips_and_backgrounds_that_the_trainer_reads(tmp_path, standin_manifest):
    from soundwatch.data.datasets import load_dataset
    from soundwatch.data.scenes import Backgrounds

    out = tmp_path / "job"
    got = gpu_job("pack", "--esc50", str(ESC50_DIR), "--corpus", str(ESC50_DIR / "audio"), "--manifest",
                  str(standin_manifest), "--out", str(out), "--folds", "2", "--max-clips", "6", "--check-clips", "2", "--minutes", "0.1",
                  "--val-share", "1", "--max-file-s", "3", "--no-wheels")  # fmt: skip
    assert got.returncode == 0, got.stderr
    report = json.loads(got.stdout)
    assert report["clips"] == 8 and report["travels_mb"] > report["mb"]["esc50"] > 0
    # 0.1 minutes of each split and type: two 3 s cuts (6 s), one from each package in turn
    assert report["background_minutes"] == {k: 0.1 for k in ("train/speech", "train/music", "val/speech", "val/music")}
    assert (out / "commit").read_text().strip()

    packed = load_dataset("esc50", out / "esc50", 16000, cache_dir=tmp_path / "cache")
    original = load_dataset("esc50", ESC50_DIR, 16000)
    want = {n: original.labels[i] for i, n in enumerate(original.names)}
    assert len(packed.names) == 8 and all(packed.labels[i] == want[n] for i, n in enumerate(packed.names))
    # the six of fold 2 to train on, and the first two of fold 1 for bench/gpu_check.sh's parity part
    assert sorted(packed.folds.tolist()) == [1, 1, 2, 2, 2, 2, 2, 2]
    assert [packed.names[i] for i in packed.indices([1])] == [original.names[i] for i in original.indices([1])[:2]]
    for name in packed.names:
        audio, rate = sf.read(out / "esc50" / "audio" / f"{Path(name).stem}.ogg")
        assert rate == 16000 and audio.ndim == 1 and len(audio) == 80000
    with open(out / "background" / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["package"] for r in rows} == {
        f"esc50-{s}-{k}-{i}" for s in ("train", "val") for k in ("speech", "music") for i in (0, 1)
    }
    for r in rows:
        audio, rate = sf.read(out / "background" / r["path"])
        assert r["path"].endswith(".ogg") and rate == 16000 and float(r["duration_s"]) == 3.0
        assert abs(len(audio) - 3 * 16000) <= 16000 // 50  # cut to --max-file-s
    stream, used, _ = Backgrounds(out / "background", out / "background" / "manifest.csv", "train").make(
        "music", np.random.default_rng(0), 8 * 16000
    )
    assert len(stream) == 8 * 16000 and used and np.abs(stream).max() > 0
    again = gpu_job("pack", "--esc50", str(ESC50_DIR), "--corpus", str(ESC50_DIR / "audio"), "--manifest",
                    str(standin_manifest), "--out", str(out), "--no-wheels")  # fmt: skip
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (scripts/test.sh installs it)")
def test_pack_fits_the_backgrounds_to_what_the_call_can_carry(tmp_path, standin_manifest):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_job", SCRIPT)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    common = ["--esc50", str(ESC50_DIR), "--corpus", str(ESC50_DIR / "audio"), "--manifest", str(standin_manifest),
              "--folds", "2", "--max-clips", "2", "--check-clips", "0", "--minutes", "0.1", "--val-share", "1",
              "--max-file-s", "3", "--no-wheels"]  # fmt: skip
    free = gpu_job("pack", *common, "--out", str(tmp_path / "free"))
    assert free.returncode == 0, free.stderr
    assert "minutes asked" not in free.stderr
    with open(tmp_path / "free" / "background" / "manifest.csv") as f:
        assert len(list(csv.DictReader(f))) == 8  # 0.1 minutes = two 3 s cuts of each split and type
    clips = sum(p.stat().st_size for p in (tmp_path / "free" / "esc50" / "audio").iterdir())
    # room for 0.04 minutes a type (2.4 s, and a little: the limit goes as MiB): one 3 s cut of each
    limit = job.tracked_bytes() + clips + job.SLACK + job.background_bytes(0.045, 1, 14)
    tight = gpu_job("pack", *common, "--out", str(tmp_path / "tight"), "--limit-mb", repr(limit / 2**20))
    assert tight.returncode == 0, tight.stderr
    assert "backgrounds: 0.04 of the 0.1 minutes asked a type fit" in tight.stderr
    report = json.loads(tight.stdout)
    assert report["travels_mb"] <= report["limit_mb"]
    with open(tmp_path / "tight" / "background" / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["split"], r["type"]) for r in rows) == sorted(
        (s, k) for s in ("train", "val") for k in ("speech", "music")
    )
    assert all((tmp_path / "tight" / "background" / r["path"]).is_file() for r in rows)

    full = gpu_job("pack", *common, "--out", str(tmp_path / "full"), "--limit-mb", repr((limit - 60_000) / 2**20))
    assert full.returncode == 2 and "no room left for backgrounds" in full.stderr and "Traceback" not in full.stderr
    assert not (tmp_path / "full").exists()  # the clips it had encoded are gone with it


def test_pack_without_ffmpeg_says_so_and_writes_nothing(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    got = gpu_job("pack", "--out", str(tmp_path / "job"), "--no-wheels", env={"PATH": str(bare), "HOME": str(tmp_path)})
    assert got.returncode == 2 and "needs ffmpeg" in got.stderr and "Traceback" not in got.stderr
    assert not (tmp_path / "job").exists()


def test_a_model_split_into_parts_comes_back_byte_for_byte(tmp_path, tiny_checkpoint):
    model = tmp_path / "adapted.safetensors"
    shutil.copy(tiny_checkpoint, model)
    shutil.copy(tiny_checkpoint.with_suffix(".json"), model.with_suffix(".json"))
    size = model.stat().st_size
    back = tmp_path / "out"
    assert gpu_job("split", str(model), str(back), "--part-bytes", str(size // 3 + 1)).returncode == 0
    index = json.loads((back / "parts.json").read_text())
    assert len(index["parts"]) == 3 and all((back / p).stat().st_size <= size // 3 + 1 for p in index["parts"])

    got = gpu_job("join", str(back), str(tmp_path / "joined"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "joined" / model.name).read_bytes() == model.read_bytes()
    assert (tmp_path / "joined" / "adapted.json").read_text() == model.with_suffix(".json").read_text()

    part = back / index["parts"][1]
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF
    part.write_bytes(bytes(data))
    got = gpu_job("join", str(back), str(tmp_path / "changed"))
    assert got.returncode == 2 and "sha256 differs" in got.stderr and not (tmp_path / "changed").exists()
    part.unlink()
    got = gpu_job("join", str(back), str(tmp_path / "missing"))
    assert got.returncode == 2 and "did not come back" in got.stderr and not (tmp_path / "missing").exists()


def test_the_job_without_a_packed_folder_says_how_to_make_one(tmp_path):
    if (REPO / ".gpujob").exists():
        pytest.skip("a packed .gpujob/ is here: the script would run the job")
    got = subprocess.run(["bash", str(REPO / "scripts" / "gpu-job.sh")], capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and "python scripts/gpu_job.py pack" in got.stderr


def test_the_commit_recorded_where_the_code_travelled_without_its_git(monkeypatch):
    """On a lent machine only the working tree travels (no .git): gpu-job.sh passes the packed commit."""
    from soundwatch.train.loop import git_commit

    monkeypatch.setenv("SOUNDWATCH_COMMIT", "abc1234")
    assert git_commit() == "abc1234"
    monkeypatch.delenv("SOUNDWATCH_COMMIT")
    assert (
        git_commit()
        == subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    )
