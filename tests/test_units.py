"""Unit tests of the live line's parts: ring buffer, windower resampling, config, checkpoints, detector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from soundwatch.audio.ring import RingBuffer
from soundwatch.audio.windows import Windower
from soundwatch.config import Settings, load_settings
from soundwatch.detect import Detector, load_thresholds
from soundwatch.errors import CheckpointError, ConfigError
from soundwatch.models.checkpoint import ModelCard, load_checkpoint, read_card, save_checkpoint

from conftest import esc50_classes, make_checkpoint

REPO = Path(__file__).resolve().parent.parent


def test_ring_wraps_and_reports_overwritten_reads():
    ring = RingBuffer(10)
    ring.write(np.arange(7, dtype=np.float32))
    ring.write(np.arange(7, 14, dtype=np.float32))  # wraps around
    assert ring.written == 14
    np.testing.assert_array_equal(ring.read(4, 14), np.arange(4, 14))
    assert ring.read(3, 8) is None  # sample 3 was overwritten
    fresh = RingBuffer(10)
    fresh.write(np.ones(4, dtype=np.float32))
    np.testing.assert_array_equal(fresh.read(-3, 2), [0, 0, 0, 1, 1])  # before the stream: silence
    ring.write(np.arange(100, 125, dtype=np.float32))  # longer than the ring: keeps the newest
    assert ring.written == 39
    np.testing.assert_array_equal(ring.read(29, 39), np.arange(115, 125))
    with pytest.raises(ValueError):
        ring.read(30, 40)


class _Source:
    """A fixed signal in a ring, as a source whose audio has all arrived."""

    realtime = False

    def __init__(self, signal: np.ndarray, rate: int):
        self.rate = rate
        self.ring = RingBuffer(len(signal) + 1)
        self.ring.write(signal.astype(np.float32))
        self.finished = True


def test_windower_resamples_48k_to_16k_cleanly():
    t = np.arange(48000 * 6) / 48000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    win = Windower(_Source(tone, 48000), 16000, window_s=5.0, hop_s=1.0)
    win.pump()
    assert win.flushed and win.ring.written == 16000 * 6
    ends = win.due()
    assert ends == [16000 * k for k in range(1, 7)]
    w = win.take(ends[-1])
    spectrum = np.abs(np.fft.rfft(w * np.hanning(len(w))))
    peak = np.argmax(spectrum) * 16000 / len(w)
    assert abs(peak - 1000) < 1
    expect = 0.5 * np.sin(2 * np.pi * 1000 * (np.arange(16000 * 6) / 16000))[-len(w) :]
    middle = slice(1000, -1000)
    assert np.abs(w[middle] - expect[middle]).max() < 0.01  # HQ resampler: no linear-interpolation error


def test_config_file_in_repo_holds_every_default():
    assert load_settings(REPO / "config.toml") == Settings()


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[listen]\nhop_s = "fast"\n', ":2: listen.hop_s: expected float"),
        ("[listen]\nbackend = 'gpu'\n", ":2: listen.backend: 'gpu' is not one of"),
        ("[audio]\n\nblocksize = -5\n", ":3: audio.blocksize: must be > 0"),
        ("[publish]\nendpont = 'tcp://*:1'\n", ":2: publish.endpont: unknown key"),
        ("[nosuch]\nx = 1\n", ":1: [nosuch]: unknown section"),
        ("[listen\n", "not valid TOML"),
    ],
)
def test_invalid_config_names_key_and_line(tmp_path, text, needle):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert needle in str(err.value)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    path = make_checkpoint(tmp_path / "m.safetensors")
    model, card = load_checkpoint(path, expect={"sample_rate": 16000, "classes": esc50_classes()})
    assert card.classes == esc50_classes() and card.window_samples == 80000
    assert json.loads(path.with_suffix(".json").read_text())["arch"] == "tiny"
    with pytest.raises(CheckpointError, match="sample_rate is 16000, expected 44100"):
        load_checkpoint(path, expect={"sample_rate": 44100})
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        read_card(garbage)
    # Weights that do not fit the card (10 classes declared, 50 stored) are refused.
    wrong = ModelCard(arch="tiny", classes=[f"c{i}" for i in range(10)], sample_rate=16000)
    from safetensors.torch import load_file, save_file

    save_file(
        load_file(str(path)), str(tmp_path / "wrong.safetensors"), metadata={"soundwatch": json.dumps(wrong.to_dict())}
    )
    with pytest.raises(CheckpointError, match="do not fit|size mismatch"):
        load_checkpoint(tmp_path / "wrong.safetensors")


def test_fp16_checkpoint_loads_as_float32(tmp_path):
    path = make_checkpoint(tmp_path / "a.safetensors")
    model, card = load_checkpoint(path)
    save_checkpoint(tmp_path / "h.safetensors", model, card, dtype=torch.float16)
    half, _ = load_checkpoint(tmp_path / "h.safetensors")
    x = torch.randn(2, 80000)
    with torch.no_grad():
        assert torch.allclose(model(x)[0], half(x)[0], atol=0.05)
    assert all(p.dtype == torch.float32 for p in half.parameters())


def _feed(det: Detector, scores: list[float], level: float = -20.0) -> list[dict]:
    events = []
    for i, score in enumerate(scores):
        events += det.update(np.array([score, 0.0]), level, float(i))
    return events


def test_detector_one_start_one_end_with_peak():
    det = Detector(["dog", "siren"], threshold=0.5, release_ratio=0.6, smooth_windows=1, min_duration_s=0)
    events = _feed(det, [0.1, 0.6, 0.9, 0.4, 0.2, 0.1])  # 0.4 is above the release (0.3): no flicker
    assert [(e["event"], e["label"]) for e in events] == [("start", "dog"), ("end", "dog")]
    assert events[1]["peak_score"] == 0.9 and events[1]["duration_s"] == 3.0


def test_detector_smoothing_and_min_duration_suppress_blips():
    det = Detector(["dog", "siren"], threshold=0.5, release_ratio=0.7, smooth_windows=3, min_duration_s=2.0)
    assert _feed(det, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]) == []  # one loud window: smoothed 0.33, never starts
    det = Detector(["dog", "siren"], threshold=0.5, release_ratio=0.7, smooth_windows=1, min_duration_s=2.0)
    assert _feed(det, [0.9, 0.9, 0.1, 0.1]) == []  # lasted 1 s < 2 s: not reported, not even its end
    events = _feed(det, [0.9, 0.9, 0.9, 0.9, 0.1])
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[0]["start"] == 0.0  # the start is when it began, reported once it lasted 2 s


def test_detector_gate_and_per_class_thresholds(tmp_path):
    det = Detector(
        ["dog", "siren"], threshold=np.array([0.9, 0.2]), smooth_windows=1, min_duration_s=0, min_level_dbfs=-60
    )
    assert det.update(np.array([0.8, 0.2]), -20.0, 0.0)[0]["label"] == "siren"  # 0.8 < dog's 0.9
    assert [e["event"] for e in det.update(np.array([0.8, 0.9]), -80.0, 1.0)] == ["end"]  # too quiet: ends
    assert det.update(np.array([0.95, 0.95]), -80.0, 2.0) == []  # and nothing starts below the gate
    path = tmp_path / "thresholds.json"
    path.write_text('{"thresholds": {"dog": 0.7}}')
    assert list(load_thresholds(path, ["dog", "siren"], 0.5)) == [0.7, 0.5]
    path.write_text('{"thresholds": {"cat": 0.7}}')
    with pytest.raises(ConfigError, match="labels the model does not know: cat"):
        load_thresholds(path, ["dog", "siren"], 0.5)


def _probs(n: int, **scores: float) -> np.ndarray:
    p = np.full(n, 0.001)
    for idx, value in scores.items():
        p[int(idx[1:])] = value
    return p


def test_noise_floor_gate_keeps_the_rooms_own_noise_from_starting_events():
    from soundwatch.detect import Detector

    classes = [f"c{i}" for i in range(4)]
    for gate, expect in ((0.0, ["c1"]), (6.0, [])):
        det = Detector(classes, 0.5, smooth_windows=1, min_duration_s=0.0, floor_gate_db=gate, floor_window=10)
        started = []
        for k in range(5):  # the room at -55 dBFS, nothing recognised
            started += det.update(_probs(4), -55.0, float(k))
        for k in range(5, 10):  # the same faint room noise, which the model calls c1 ("rain")
            started += [
                e["label"]
                for e in det.update(_probs(4, c1=0.9), -55.0 + 0.5 * (k % 2), float(k))
                if e["event"] == "start"
            ]
        assert started == expect, (gate, started)
    loud = det.update(_probs(4, c2=0.9), -30.0, 10.0)  # a real sound well over the floor still starts
    assert [e["label"] for e in loud if e["event"] == "start"] == ["c2"] and det.gated == 10  # the first: no floor yet


def test_a_streams_first_window_starts_no_event_while_the_floor_is_unknown():
    """Room noise rising out of the silence before a stream reads as a sound (the shipped model called a
    quiet room's first window glass_breaking): with the gate on, the first window starts nothing; from
    the second, with a floor known, a window over it does. With the gate off, the first window may."""
    from soundwatch.detect import Detector

    for gate, expect in ((3.0, [[], ["c1"]]), (0.0, [["c1"], []])):
        det = Detector(["c0", "c1"], 0.5, smooth_windows=1, min_duration_s=0.0, floor_gate_db=gate, floor_window=10)
        got = [
            [e["label"] for e in det.update(_probs(2, c1=0.9), level, t, hop) if e["event"] == "start"]
            for t, (level, hop) in enumerate([(-40.0, -40.0), (-30.0, -30.0)])
        ]
        assert got == expect, (gate, got)


def test_instant_threshold_alerts_from_the_first_strong_window():
    from soundwatch.detect import Detector

    classes = ["a", "b"]
    for instant, first_start in ((0.0, 2.0), (0.8, 1.0)):  # smoothing + 1 s minimum vs at once
        det = Detector(classes, 0.5, smooth_windows=3, min_duration_s=1.0, instant_threshold=instant)
        det.update(np.array([0.9, 0.1]), -20.0, 0.0)
        starts = []
        for t in (1.0, 2.0, 3.0, 4.0):
            starts += [
                t for e in det.update(np.array([0.02, 0.98]), -20.0, t) if e["event"] == "start" and e["label"] == "b"
            ]
        assert starts[:1] == [first_start], (instant, starts)


def test_onset_estimate_from_the_level_rise_within_the_window():
    from soundwatch.detect import Detector, onset_offset_s

    frames = np.array([-60.0] * 60 + [-20.0] * 40)  # 5 s of 50 ms frames: the sound began 2.0 s before the end
    assert onset_offset_s(frames, 0.05, -50.0) == pytest.approx(2.0)
    assert onset_offset_s(np.full(100, -20.0), 0.05, -50.0) is None  # loud throughout: no rise to see
    det = Detector(["a"], 0.5, smooth_windows=1, min_duration_s=0.0)
    (start,) = det.update(np.array([0.9]), -25.0, 100.0, frame_levels=frames, frame_s=0.05)
    assert start["start"] == pytest.approx(98.0)


def test_onset_estimate_follows_a_sound_back_across_short_pauses_and_windows():
    from soundwatch.detect import Detector, onset_offset_s

    room, bark, pause = [-60.0], [-20.0] * 6, [-60.0] * 10  # 50 ms frames: 0.3 s barks, 0.5 s pauses
    frames = np.array(room * 40 + (bark + pause) * 3 + bark)  # 4.7 s: barks from 2.0 s, the newest at 4.4 s
    assert onset_offset_s(frames, 0.05, -50.0) == pytest.approx(0.3)  # the newest bark alone
    assert onset_offset_s(frames, 0.05, -50.0, -54.0, pause_frames=41) is None  # no 2.05 s pause before
    assert onset_offset_s(frames, 0.05, -50.0, -54.0, pause_frames=20) == pytest.approx(2.7)  # the first bark
    assert onset_offset_s(frames, 0.05, -50.0, -54.0, pause_frames=10) == pytest.approx(0.3)  # 0.5 s splits
    # a level between quiet (-54) and loud (-50) is neither sound nor pause: the murmur at 1.0-2.0 s does not
    # move the start, and only the 1 s (20 frames) of room before it can end the sound
    murmur = np.array(room * 20 + [-52.0] * 20 + (bark + pause) * 3 + bark)
    assert onset_offset_s(murmur, 0.05, -50.0, -54.0, pause_frames=20) == pytest.approx(2.7)
    assert onset_offset_s(murmur, 0.05, -50.0, -54.0, pause_frames=21) is None

    # The detector joins windows: the barks began 4.0 s before a window that is loud from its first frame.
    timeline = np.array(room * 60 + (bark + pause) * 10)  # 3 s of room, then barks from t = 3 s
    for pause_s, first_start in ((2.0, 3.0), (0.0, 6.2)):  # 0: the newest bark of the window (at 6.2 s)
        det = Detector(["dog"], 0.5, smooth_windows=1, onset_pause_s=pause_s)
        starts = []
        for end in range(60, len(timeline) + 1, 10):  # 5 s windows (100 frames) every 0.5 s, ending at end * 0.05
            window = timeline[max(0, end - 100) : end]
            if len(window) < 100:
                window = np.concatenate([np.full(100 - len(window), -60.0), window])
            probs = np.array([0.9 if end * 0.05 >= 7.0 else 0.1])  # named only once 4 s of barks are heard
            level, hop = (10 * np.log10(np.mean(10 ** (w / 10))) for w in (window, window[-10:]))
            starts += [e["start"] for e in det.update(probs, level, end * 0.05, hop, window, 0.05)]
        assert starts == [pytest.approx(first_start)], pause_s

    # A pause of over 2 s splits: the new sound starts at its own first frame.
    det = Detector(["dog"], 0.5, smooth_windows=1)
    two = np.array(room * 20 + [-20.0] * 4 + room * 50 + [-20.0] * 10)  # a sound, 2.5 s of room, a 0.5 s sound
    (start,) = det.update(np.array([0.9]), -25.0, 10.0, frame_levels=two, frame_s=0.05)
    assert start["start"] == pytest.approx(10.0 - 0.5)


def test_default_event_log_follows_xdg_state_home(monkeypatch, tmp_path):
    from soundwatch.events import state_path

    default = Settings().events.log_path
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert state_path(default) == tmp_path / "soundwatch" / "events.jsonl"
    assert state_path("~/logs/events.jsonl") == Path.home() / "logs" / "events.jsonl"  # only the default's place moves
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")  # the specification: a relative path is ignored
    assert state_path(default) == Path.home() / ".local" / "state" / "soundwatch" / "events.jsonl"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert state_path(default) == Path.home() / ".local" / "state" / "soundwatch" / "events.jsonl"
