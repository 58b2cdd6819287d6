"""Dataset loaders on small synthetic trees in the official layouts, and the download path."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from soundwatch.data.datasets import load_dataset, stratified_split
from soundwatch.errors import UserError
from soundwatch.train.download import ensure_esc50
from soundwatch.train.synthetic import make_esc, make_us8k


def test_esc50_layout_resolves_stems_and_caches(tmp_path):
    root = make_esc(tmp_path / "esc", n_classes=3, per_fold=1, sample_rate=8000, seconds=1.0, ext="ogg")
    clips = load_dataset("esc50", root, 16000, cache_dir=tmp_path / "cache")
    assert clips.waves.shape == (15, 80000)  # resampled to 16 kHz, padded to 5 s
    assert clips.classes == ["class0", "class1", "class2"]
    assert sorted(set(clips.folds.tolist())) == [1, 2, 3, 4, 5]
    assert not clips.skipped
    assert np.abs(clips.waves[:, 16000:]).max() == 0  # 1 s of audio, zeros after it
    again = load_dataset("esc50", root, 16000, cache_dir=tmp_path / "cache")
    assert isinstance(again.waves, np.memmap)  # served from the cache, not decoded again
    np.testing.assert_array_equal(np.asarray(again.waves), np.asarray(clips.waves))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_ragged_clips_padded_or_cut_to_five_seconds(tmp_path):
    root = make_esc(tmp_path / "esc", n_classes=2, per_fold=1, sample_rate=8000, seconds=6.5)
    clips = load_dataset("esc50", root, 8000, cache_dir=tmp_path / "cache")
    assert clips.waves.shape == (10, 40000)


def test_esc10_maps_targets_to_0_9(tmp_path):
    root = make_esc(
        tmp_path / "esc", n_classes=4, per_fold=1, sample_rate=8000, seconds=0.5, esc10_targets=[0, 10, 20, 38]
    )
    clips = load_dataset("esc10", root, 8000, cache_dir=tmp_path / "cache")
    assert clips.classes == ["class0", "class20"]  # only rows flagged esc10
    assert sorted(set(clips.labels.tolist())) == [0, 1]


def test_corrupt_and_missing_clips_are_skipped_and_counted(tmp_path):
    root = make_esc(tmp_path / "esc", n_classes=2, per_fold=1, sample_rate=8000, seconds=0.5)
    files = sorted((root / "audio").iterdir())
    files[0].write_bytes(b"this is not audio at all")
    files[1].unlink()
    clips = load_dataset("esc50", root, 8000, cache_dir=tmp_path / "cache")
    assert len(clips.labels) == 8
    reasons = sorted(s["reason"].split(":")[0] for s in clips.skipped)
    assert reasons == ["missing", "unreadable"]


def test_wrong_layout_says_what_is_missing(tmp_path):
    root = make_esc(tmp_path / "esc", n_classes=2, per_fold=1, sample_rate=8000, seconds=0.5)
    (root / "meta" / "esc50.csv").unlink()
    with pytest.raises(UserError, match="meta/esc50.csv is missing"):
        load_dataset("esc50", root, 8000, cache_dir=tmp_path / "cache")


def test_us8k_ten_folds_four_seconds(tmp_path):
    root = make_us8k(tmp_path / "us8k", n_classes=3, per_fold=1, sample_rate=8000)
    clips = load_dataset("us8k", root, 8000, cache_dir=tmp_path / "cache")
    assert clips.waves.shape == (30, 32000)
    assert clips.n_folds == 10 and sorted(set(clips.folds.tolist())) == list(range(1, 11))
    assert clips.classes == ["sound0", "sound1", "sound2"]
    shutil.rmtree(root / "audio" / "fold7")
    with pytest.raises(UserError, match="audio/fold7"):
        load_dataset("us8k", root, 8000, cache_dir=tmp_path / "cache")


def test_stratified_split_holds_out_each_class():
    labels = np.repeat(np.arange(5), 8)
    train, val = stratified_split(labels, 0.125, seed=3)
    assert len(val) == 5 and sorted(labels[val].tolist()) == [0, 1, 2, 3, 4]
    assert not set(train) & set(val)
    assert np.array_equal(val, stratified_split(labels, 0.125, seed=3)[1])


def test_source_split_keeps_recordings_on_one_side():
    labels = np.repeat(np.arange(4), 12)
    groups = [f"rec{i // 3}" for i in range(48)]  # 3 clips a recording, 4 recordings a class
    train, val = stratified_split(labels, 0.25, seed=0, groups=groups)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(48))
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert sorted(np.bincount(labels[val]).tolist()) == [3, 3, 3, 3]


def test_loader_records_source_recordings(tmp_path):
    root = make_esc(tmp_path / "esc", n_classes=2, per_fold=1, sample_rate=8000, seconds=0.5)
    clips = load_dataset("esc50", root, 8000, cache_dir=tmp_path / "cache")
    assert len(clips.sources) == len(clips.labels) and clips.sources[0].isdigit()


@pytest.fixture
def loopback_server(tmp_path):
    """An http.server on 127.0.0.1 serving ``tmp_path/www``."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _official_zip(tmp_path: Path, www: Path) -> tuple[Path, str]:
    src = make_esc(
        tmp_path / "src" / "ESC-50-master", n_classes=2, per_fold=1, sample_rate=8000, seconds=0.5, ext="wav"
    )
    archive = www / "master.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, path.relative_to(src.parent))
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_verifies_unpacks_and_caches(tmp_path, loopback_server):
    www, base = loopback_server
    _, md5 = _official_zip(tmp_path, www)
    root = ensure_esc50(tmp_path / "cache", url=f"{base}/master.zip", md5=md5)
    assert (root / "meta" / "esc50.csv").is_file() and len(list((root / "audio").glob("*.wav"))) == 10
    assert not list((tmp_path / "cache").glob("*.zip*"))  # archive removed after unpacking
    (www / "master.zip").unlink()  # a second call must not need the network
    assert ensure_esc50(tmp_path / "cache", url=f"{base}/master.zip", md5=md5) == root
    clips = load_dataset("esc50", root, 8000, cache_dir=tmp_path / "cache")
    assert len(clips.labels) == 10


def test_download_never_replaces_an_incomplete_copy_it_did_not_make(tmp_path, loopback_server):
    """A user's own partial ESC-50 where the download would go (a subset, clips removed): refused, intact."""
    www, base = loopback_server
    _, md5 = _official_zip(tmp_path, www)
    root = ensure_esc50(tmp_path / "cache", url=f"{base}/master.zip", md5=md5)
    clips = sorted((root / "audio").glob("*.wav"))
    clips[0].unlink()  # the user pruned a clip; the rest, and their own notes, must survive
    (root / "my-notes.txt").write_text("which clips I removed and why")
    with pytest.raises(UserError, match=r"incomplete ESC-50 \(it lacks 1 clip"):
        ensure_esc50(tmp_path / "cache", url=f"{base}/master.zip", md5=md5)
    assert (root / "my-notes.txt").is_file() and sorted((root / "audio").glob("*.wav")) == clips[1:]
    assert not list((tmp_path / "cache").glob("*.zip*"))  # refused before downloading


def test_download_refuses_a_bad_checksum(tmp_path, loopback_server):
    www, base = loopback_server
    _official_zip(tmp_path, www)
    with pytest.raises(UserError, match="checksum mismatch"):
        ensure_esc50(tmp_path / "cache", url=f"{base}/master.zip", md5="0" * 32)
    assert not list((tmp_path / "cache").glob("*.zip*"))


def test_download_failure_is_a_user_error(tmp_path, loopback_server):
    _, base = loopback_server
    with pytest.raises(UserError, match="cannot download"):
        ensure_esc50(tmp_path / "cache", url=f"{base}/nothing-here.zip", md5="none")


def test_esc50_copy_with_some_classes_keeps_esc50s_class_list_and_is_scored(tmp_path):
    """A user's own recordings of three ESC-50 classes, in ESC-50's layout: the shipped model scores them."""
    import csv
    import json
    import os

    from tests.conftest import ESC50_DIR
    from tests.helpers import run_soundwatch

    with open(ESC50_DIR / "meta" / "esc50.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        rows = [r for r in reader if r["category"] in ("dog", "rooster", "siren") and r["fold"] == "1"]
    root = tmp_path / "mine"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        stem = Path(r["filename"]).stem
        os.symlink(ESC50_DIR / "audio" / f"{stem}.flac", root / "audio" / f"{stem}.flac")
    clips = load_dataset("esc50", root, 16000, cache_dir=tmp_path / "cache")
    assert len(clips.classes) == 50 and clips.classes[42] == "siren"
    assert sorted(set(clips.labels.tolist())) == [0, 1, 42]  # ESC-50's own targets

    got = run_soundwatch(
        "eval",
        "--dataset",
        "esc50",
        "--data-dir",
        str(root),
        "--fold",
        "1",
        "--backend",
        "onnx",
        timeout=300,
        env={"SOUNDWATCH_CACHE": str(tmp_path / "cache")},
    )
    assert got.returncode == 0, got.stderr
    result = json.loads(got.stdout)
    assert result["n_clips"] == 24 and result["accuracy"] >= 0.8


def test_esc50_class_list_is_the_official_metadata_order():
    import csv

    from soundwatch.data.datasets import ESC50_CLASSES
    from tests.conftest import ESC50_DIR

    with open(ESC50_DIR / "meta" / "esc50.csv", newline="") as f:
        by_target = {int(r["target"]): r["category"] for r in csv.DictReader(f)}
    assert list(ESC50_CLASSES) == [by_target[i] for i in range(50)]
