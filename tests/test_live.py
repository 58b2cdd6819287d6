"""The live line end to end, for real: a PulseAudio virtual microphone, paplay, `soundwatch listen`
as a process, and a real ZeroMQ SUB socket. Plus the file source on real ESC-50 clips."""

from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
import soxr

from soundwatch.daemon import rms_dbfs

from conftest import ESC50_DIR
from helpers import Collector, best_correlation, free_endpoint, soundwatch

CLIP = ESC50_DIR / "audio" / "1-100032-A-0.flac"  # a dog barking


@pytest.fixture(scope="module")
def loud_clip(tmp_path_factory) -> tuple[np.ndarray, object]:
    """2 s of a real dog bark, peak 0.5, as a 48 kHz WAV to play, and the 16 kHz reference."""
    audio, rate = sf.read(CLIP, dtype="float32")
    energy = np.convolve(audio**2, np.ones(rate // 4), "same")
    centre = int(np.argmax(energy))
    start = max(0, min(len(audio) - 2 * rate, centre - rate))
    ref = audio[start : start + 2 * rate]
    ref = 0.5 * ref / np.abs(ref).max()
    path = tmp_path_factory.mktemp("play") / "bark48k.wav"
    sf.write(path, soxr.resample(ref, rate, 48000), 48000, subtype="PCM_16")
    return ref, path


def _contiguous(messages) -> None:
    seqs = [p["seq"] for _, _, p in messages]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq gaps: {seqs}"


@pytest.mark.pulse
@pytest.mark.parametrize("capture_rate", ["0", "48000"], ids=["native-16k", "resampled-48k"])
def test_microphone_to_subscriber(pulse_mic, loud_clip, tiny_checkpoint, tmp_path, capture_rate):
    ref, wav = loud_clip
    endpoint = free_endpoint()
    tap = tmp_path / "tap.wav"
    sub = Collector(endpoint)
    proc = soundwatch(
        "listen",
        "--device",
        "pulse",
        "--model",
        str(tiny_checkpoint),
        "--backend",
        "torch",
        "--endpoint",
        endpoint,
        "--hop",
        "0.5",
        "--sample-rate",
        capture_rate,
        "--no-dashboard",
        "--record-input",
        str(tap),
    )
    try:
        # Quiet first: wait until a window is classified (the stream is up), then a second more.
        assert sub.wait_for(lambda t, p: t.startswith("scores."), 60), (
            proc.stderr.read() if proc.poll() else "no scores"
        )
        quiet_from = time.time()
        assert sub.wait_for(lambda t, p: t.startswith("scores.") and p["window_end"] > quiet_from + 1.0, 10)
        played_at = time.time()
        subprocess.run(["paplay", "-d", "virt", str(wav)], check=True, timeout=20)
        # The 5 s window holds the bark until 5 s after it ends; wait until the level falls again.
        fallen = sub.wait_for(
            lambda t, p: t.startswith("scores.") and p["window_start"] > played_at + 2.5 and p["level_dbfs"] < -60, 15
        )
        proc.send_signal(signal.SIGINT)
        stopped_at = time.time()
        assert proc.wait(timeout=5) == 0, proc.stderr.read()
        assert time.time() - stopped_at < 2.5
        sub.wait_stopped()
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    scores = sub.of("scores")
    assert fallen is not None, "level never fell back after the clip"
    before = [p["level_dbfs"] for p in scores if p["window_end"] < played_at - 0.2]
    during = [p["level_dbfs"] for p in scores if played_at + 2.0 < p["window_end"] < played_at + 5]
    assert before and max(before) < -60, before
    assert during and min(during) > max(before) + 40, during  # the bark is far above the silent floor
    assert scores[0]["top"] and len(scores[0]["top"]) == 5
    _contiguous(sub.messages)
    assert sub.messages[-1][1] == "status" and sub.messages[-1][2]["state"] == "stopped"
    statuses = sub.of("status.pulse")  # the source's own status (the totals have no capture rate)
    assert statuses[-1]["capture_rate"] == (48000 if capture_rate == "48000" else 16000)
    assert statuses[-1]["input_overflows"] == 0
    captured, rate = sf.read(tap, dtype="float32")
    assert rate == 16000
    assert best_correlation(captured, ref) > 0.9


def test_file_source_matches_the_file(tiny_checkpoint, tmp_path, own_state_dir):
    """--file --as-fast-as-possible: every hop gives one window, levels are the file's own, nothing lost.
    The default event log lies under $XDG_STATE_HOME (set for every test by conftest)."""
    endpoint = free_endpoint()
    sub = Collector(endpoint)
    tap = tmp_path / "tap.wav"
    proc = soundwatch(
        "listen",
        "--file",
        str(CLIP),
        "--as-fast-as-possible",
        "--model",
        str(tiny_checkpoint),
        "--backend",
        "torch",
        "--endpoint",
        endpoint,
        "--hop",
        "0.5",
        "--no-dashboard",
        "--record-input",
        str(tap),
    )
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    sub.wait_stopped()
    sub.close()
    audio, rate = sf.read(CLIP, dtype="float32")
    scores = sub.of("scores")
    hop, window = rate // 2, 5 * rate
    assert len(scores) == len(audio) // hop
    for msg in scores:
        end = int(round(msg["offset_s"] * rate))
        expect = np.concatenate([np.zeros(max(0, window - end), np.float32), audio[max(0, end - window) : end]])
        assert msg["level_dbfs"] == pytest.approx(rms_dbfs(expect), abs=0.02)
        assert msg["window_end"] - msg["window_start"] == pytest.approx(5.0, abs=1e-3)
    _contiguous(sub.messages)
    captured, _ = sf.read(tap, dtype="float32")
    np.testing.assert_allclose(captured, audio, atol=1e-6)
    assert (own_state_dir / "soundwatch" / "events.jsonl").is_file()


def test_file_realtime_pace_and_sigterm(tiny_checkpoint, tmp_path):
    """--file plays at real-time pace; SIGTERM stops within 2 s with a last status, exit 0."""
    endpoint = free_endpoint()
    sub = Collector(endpoint)
    proc = soundwatch(
        "listen",
        "--file",
        str(CLIP),
        "--model",
        str(tiny_checkpoint),
        "--backend",
        "torch",
        "--endpoint",
        endpoint,
        "--hop",
        "1.0",
        "--no-dashboard",
    )
    first = sub.wait_for(lambda t, p: t.startswith("scores."), 60)
    assert first is not None, proc.stderr.read() if proc.poll() is not None else "no scores"
    second = sub.wait_for(lambda t, p: t.startswith("scores.") and p["seq"] > first[2]["seq"], 5)
    assert second is not None
    assert 0.7 < second[0] - first[0] < 1.5  # one window per 1 s hop, at the file's pace
    proc.send_signal(signal.SIGTERM)
    t = time.time()
    assert proc.wait(timeout=5) == 0
    assert time.time() - t < 2.0
    sub.wait_stopped()
    sub.close()
    assert sub.messages[-1][1] == "status" and sub.messages[-1][2]["state"] == "stopped"
    assert sub.messages[-1][2]["windows"] < 5  # stopped early, not at the end of the 5 s clip


def test_onnx_serving_path_imports_no_torch_once_the_graph_exists(tiny_checkpoint, tmp_path):
    """The first ONNX run exports the graph (with torch); every later one serves it without importing torch,
    and gives the same scores."""
    engines = {"SOUNDWATCH_ENGINES": str(tmp_path / "engines")}
    runs = []
    for _ in range(2):
        endpoint = free_endpoint()
        sub = Collector(endpoint)
        proc = soundwatch(
            "listen",
            "--file",
            str(CLIP),
            "--as-fast-as-possible",
            "--model",
            str(tiny_checkpoint),
            "--backend",
            "onnx",
            "--endpoint",
            endpoint,
            "--no-dashboard",
            "--event-log",
            "",
            "--wait-for-subscriber",
            "60",
            env={**engines, "PYTHONPROFILEIMPORTTIME": "1"},
        )
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        sub.wait_stopped()
        sub.close()
        imported = {line.split("|")[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
        runs.append((imported, [p["top"] for p in sub.of("scores")]))
    (first, scores_first), (second, scores_second) = runs
    assert "torch" in first and "soundwatch.engines.export" in first  # it had to export
    assert "torch" not in second and "torchaudio" not in second and "soundwatch.engines.export" not in second
    assert "onnx" not in second  # the cache's metadata is read with protobuf alone (onnx's import: 1.2 s here)
    assert scores_second and len(scores_second) == len(scores_first)
    # The same scores. Not bit for bit: as fast as possible, windows are batched as they come, and ONNX
    # Runtime's kernels round a batch of 8 differently from a batch of 1 in the last digits.
    for a, b in zip(scores_first, scores_second):
        one, two = {x["label"]: x["score"] for x in a}, {x["label"]: x["score"] for x in b}
        assert all(abs(one[k] - two[k]) < 1e-3 for k in one.keys() & two.keys()), (a, b)
        assert a[0]["label"] == b[0]["label"] or abs(a[0]["score"] - a[1]["score"]) < 2e-3, (a, b)


def _fast_file_run(checkpoint, endpoint: str, wait_s: str):
    """``listen`` over CLIP as fast as possible with the tiny model, waiting ``wait_s`` for a subscriber."""
    return soundwatch(
        "listen",
        *("--file", str(CLIP), "--as-fast-as-possible", "--model", str(checkpoint), "--endpoint", endpoint),
        *("--no-dashboard", "--event-log", "", "--wait-for-subscriber", wait_s),
    )


def _windows_run(err: str) -> int:
    return int(err.split("stopped after ")[1].split(" windows")[0])


def test_a_late_subscriber_gets_a_short_file_whole_with_wait_for_subscriber(tiny_checkpoint):
    """The subscriber connects only after the daemon has loaded its model and says it is waiting: it still
    gets every message of the file from the first (seq 0), because the daemon waits for its subscription."""
    endpoint = free_endpoint()
    proc = _fast_file_run(tiny_checkpoint, endpoint, "120")
    lines = []
    while not lines or "waiting up to 120 s for a subscriber" not in lines[-1]:
        line = proc.stderr.readline()
        assert line, f"listen ended before waiting: {''.join(lines)[-3000:]}"
        lines.append(line)
    assert proc.poll() is None
    sub = Collector(endpoint)
    try:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert "a subscriber joined" in err
        sub.wait_stopped()
    finally:
        sub.close()
    seqs = [p["seq"] for _, _, p in sub.messages]
    assert seqs == list(range(len(seqs))), seqs[:20]  # from the first message, none missing
    assert _windows_run(err) > 0 and len(sub.of("scores")) == _windows_run(err)


def test_wait_for_subscriber_gives_up_and_runs_the_file_anyway(tiny_checkpoint):
    _, err = (proc := _fast_file_run(tiny_checkpoint, free_endpoint(), "0.3")).communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "no subscriber joined within 0.3 s; starting anyway" in err
    assert _windows_run(err) > 0


def test_subscribe_prints_json_lines(tiny_checkpoint):
    endpoint = free_endpoint()
    client = soundwatch("subscribe", "--endpoint", endpoint, "--topic", "scores", "--count", "3", "--timeout", "30")
    listen = soundwatch(  # publishes nothing until the client's subscription arrives
        "listen",
        "--file",
        str(CLIP),
        "--as-fast-as-possible",
        "--model",
        str(tiny_checkpoint),
        "--backend",
        "torch",
        "--endpoint",
        endpoint,
        "--hop",
        "0.25",
        "--no-dashboard",
        "--wait-for-subscriber",
        "30",
    )
    out, err = client.communicate(timeout=60)
    listen.wait(timeout=60)
    import json

    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3, err
    assert all(m["topic"] == "scores.1_100032_a_0" and m["schema"] == 1 and "top" in m for m in lines)
    # seq counts every message of the daemon: a status or detection may come between two scores
    seqs = [m["seq"] for m in lines]
    assert all(b > a for a, b in zip(seqs, seqs[1:])), seqs  # in order


def test_shipped_model_is_the_default_and_hears_a_dog():
    """No --model, no --backend: the shipped ESC-50 model on the automatic backend (ONNX Runtime here)."""
    endpoint = free_endpoint()
    sub = Collector(endpoint)
    proc = soundwatch(
        "listen",
        "--file",
        str(CLIP),
        "--as-fast-as-possible",
        "--endpoint",
        endpoint,
        "--no-dashboard",
        "--event-log",
        "",
    )
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    sub.wait_stopped()
    sub.close()
    scores = sub.of("scores")
    assert max(m["top"][0]["score"] for m in scores if m["top"][0]["label"] == "dog") > 0.5
    assert all(abs(m["window_end"] - m["window_start"] - 2.5) < 1e-3 for m in scores)  # its calibrated view
    status = sub.of("status")[-1]
    assert status["backend"] == "onnx" and status["model_rate"] == 16000
    # which soundwatch and which weights are running, for whoever watches many daemons
    from importlib.metadata import version

    from soundwatch.models.card import read_card, resolve_model

    assert status["version"] == version("soundwatch")
    assert status["model_sha256"] == read_card(resolve_model(None)).extra["weights_sha256"][:12]
