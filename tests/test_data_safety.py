"""A damaged model is refused, every message is strict JSON, one daemon per event log,
and event-log paths that are not plain files are refused (issue 12)."""

from __future__ import annotations

import json
import re
import signal

import numpy as np
import pytest
import soundfile as sf
import torch
import zmq

from soundwatch.errors import CheckpointError, UserError
from soundwatch.events import EventLog
from soundwatch.models.card import _header_length
from soundwatch.models.checkpoint import DIGEST_KEY, load_checkpoint, read_card, save_checkpoint, weights_digest
from soundwatch.publish import Publisher

from helpers import Collector, free_endpoint, run_soundwatch, soundwatch

RATE = 16000


def noise_file(path, seconds: float = 30.0):
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32), RATE, subtype="PCM_16")
    return path


def strict_loads(body: bytes):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(body, parse_constant=refuse)


def test_checkpoint_with_flipped_bytes_is_refused(tiny_checkpoint, tmp_path):
    card = read_card(tiny_checkpoint)
    assert card.extra[DIGEST_KEY] == weights_digest(tiny_checkpoint)  # save_checkpoint records it
    bad = tmp_path / "flipped.safetensors"
    data = bytearray(tiny_checkpoint.read_bytes())
    rng = np.random.default_rng(1)
    for i in rng.choice(np.arange(_header_length(tiny_checkpoint), len(data)), 100, replace=False):
        data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert bad.stat().st_size == tiny_checkpoint.stat().st_size
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(bad)
    proc = run_soundwatch(
        "listen",
        "--file",
        str(noise_file(tmp_path / "n.wav", 6)),
        "--model",
        str(bad),
        "--backend",
        "onnx",
        "--endpoint",
        free_endpoint(),
        "--no-dashboard",
        "--event-log",
        "",
    )
    assert proc.returncode == 2 and "digest" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_checkpoint_with_non_finite_weights_is_refused(tiny_checkpoint, tmp_path):
    model, card = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        next(p for p in model.parameters() if p.numel() > 1).view(-1)[0] = float("nan")
    nan_file = save_checkpoint(tmp_path / "nan.safetensors", model, card)  # a correct digest of bad weights
    with pytest.raises(CheckpointError, match="NaN or infinity"):
        load_checkpoint(nan_file)


def test_model_card_that_is_not_json_is_refused(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken.safetensors"
    save_file(load_file(str(tiny_checkpoint)), str(broken), metadata={"soundwatch": '{"format": "soundwatch-chec'})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_card(broken)
    proc = run_soundwatch("eval", str(broken), "--dataset", "esc50", "--data-dir", str(tmp_path), "--fold", "1")
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_non_finite_numbers_are_never_published():
    endpoint = free_endpoint()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    pub = Publisher(endpoint, "test")
    try:
        body = None
        for _ in range(100):  # until the subscription has reached the publisher
            pub.publish("scores", {"top": [{"label": "dog", "score": float("nan")}], "level_dbfs": float("-inf")})
            if sub.poll(50):
                body = sub.recv_multipart()[1]
                break
        assert body is not None
        message = strict_loads(body)
        assert message["top"][0]["score"] is None and message["level_dbfs"] is None
    finally:
        pub.close(linger=0)
        sub.close(linger=0)
        ctx.term()


def test_second_daemon_on_the_same_event_log_is_refused(tiny_checkpoint, tmp_path):
    log = tmp_path / "state" / "events.jsonl"
    endpoint = free_endpoint()
    sub = Collector(endpoint)
    first = soundwatch(
        "listen",
        "--file",
        str(noise_file(tmp_path / "n.wav")),
        "--model",
        str(tiny_checkpoint),
        "--backend",
        "onnx",
        "--endpoint",
        endpoint,
        "--no-dashboard",
        "--event-log",
        str(log),
    )
    try:
        assert sub.wait_for(lambda t, p: t.startswith("scores."), 60), (
            first.stderr.read() if first.poll() else "no scores"
        )
        second = run_soundwatch(
            "listen",
            "--file",
            str(tmp_path / "n.wav"),
            "--model",
            str(tiny_checkpoint),
            "--backend",
            "onnx",
            "--endpoint",
            free_endpoint(),
            "--no-dashboard",
            "--event-log",
            str(log),
        )
        assert second.returncode == 2, second.stderr
        assert f"process {first.pid}" in second.stderr and "in use" in second.stderr
        assert first.poll() is None  # the first one carries on
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=20)
        sub.close()
    assert first.returncode == 0
    EventLog(log, 10**6, 1).close()  # the lock is released when the holder exits


@pytest.mark.parametrize("kind", ["symlink", "directory", "under_a_file"])
def test_event_log_path_that_is_not_a_plain_file_is_refused(kind, tiny_checkpoint, tmp_path):
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("")
    log = tmp_path / "events.jsonl"
    if kind == "symlink":
        log.symlink_to(target)
    elif kind == "directory":
        log.mkdir()
    else:
        log = target / "events.jsonl"
    with pytest.raises(UserError):
        EventLog(log, 10**6, 1)
    proc = run_soundwatch(
        "listen",
        "--file",
        str(noise_file(tmp_path / "n.wav", 6)),
        "--model",
        str(tiny_checkpoint),
        "--backend",
        "onnx",
        "--endpoint",
        free_endpoint(),
        "--no-dashboard",
        "--event-log",
        str(log),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(r"symbolic link|not a regular file|a part of the path is a file", proc.stderr), proc.stderr
    assert target.read_text() == ""


@pytest.mark.parametrize(
    "command,shipped,hint",
    [
        (["calibrate", "thresholds", "--room", "ROOM"], "thresholds.json", "name it in [detect] thresholds_file"),
        (["calibrate", "music", "--music", "ROOM", "--other", "OTHER"], "music.json", "name it in [detect] music_file"),
    ],
)
def test_a_calibration_never_overwrites_the_files_shipped_with_the_model(command, shipped, hint, tmp_path):
    """--out at the shipped thresholds or music context (measured with, and each other's partner) is
    refused before any work, and the file is left as it was."""
    from soundwatch.models.card import DEFAULT_MODEL

    target = DEFAULT_MODEL.with_name(f"{DEFAULT_MODEL.stem}.{shipped}")
    before = target.read_bytes()
    for name in ("ROOM", "OTHER"):
        (tmp_path / name).mkdir()
        noise_file(tmp_path / name / "a.wav", 12.0)
    args = [str(tmp_path / a) if a in ("ROOM", "OTHER") else a for a in command]
    got = run_soundwatch(*args, "--out", str(target), timeout=120)
    assert got.returncode == 2, got.stderr
    assert f"--out {target}: is a file shipped with soundwatch beside its model" in got.stderr
    assert hint in got.stderr and "Traceback" not in got.stderr
    assert target.read_bytes() == before


@pytest.mark.parametrize("command", ["eval-scenes", "calibrate-thresholds", "calibrate-music"])
def test_a_report_or_calibration_never_overwrites_a_file_that_is_not_json(command, tmp_path):
    """--out onto a recording (or a model, or notes) by a slip of the shell is refused before any work,
    exit 2, the file intact; an earlier JSON report at that path may be replaced."""
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    noise_file(scenes / "a.wav", 12.0)
    (scenes / "a.tsv").write_text("onset\toffset\tevent_label\n1.0\t2.0\tdog\n")
    victim = noise_file(tmp_path / "evening.wav", 3.0)
    before = victim.read_bytes()
    args = {
        "eval-scenes": ["eval-scenes", str(scenes)],
        "calibrate-thresholds": ["calibrate", "thresholds", "--scenes", str(scenes)],
        "calibrate-music": ["calibrate", "music", "--music", str(scenes), "--other", str(tmp_path / "none")],
    }[command]
    got = run_soundwatch(*args, "--out", str(victim), timeout=120)
    assert got.returncode == 2, got.stderr
    assert f"--out {victim}: already exists and is not a JSON file soundwatch wrote" in got.stderr
    assert "Traceback" not in got.stderr and victim.read_bytes() == before
