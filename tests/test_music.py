"""The music context (issue 11): a regression over the model's own outputs tells music from a room,
speech or a dog, and while music plays the detector asks more of a label before it starts an event.

Real music: the Debian package ``asterisk-moh-opsound-wav`` (music on hold, 16 kHz WAV; a source of
the corpus's validation split, never of the train split the shipped context was fitted on),
installed by ``scripts/setup.sh --dev``. Real speech: ``asterisk-core-sounds-en-wav``. A real dog:
ESC-50 fold 1. The shipped model runs them through the daemon's own path.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from soundwatch.detect import Detector
from soundwatch.errors import ConfigError
from soundwatch.models.card import DEFAULT_MODEL
from soundwatch.music import (
    MusicContext,
    MusicModel,
    context_features,
    fit_music,
    load_music,
    resolve_music,
    sidecar_music,
)

from conftest import ESC50_DIR, REPO
from helpers import ScoresKeeper, run_soundwatch

RATE = 16000
MUSIC = Path("/usr/share/asterisk/moh/manolo_camp-morning_coffee.wav")
SPEECH = Path("/usr/share/asterisk/sounds/en_US_f_Allison/demo-congrats.wav")
DOG = ESC50_DIR / "audio" / "1-100032-A-0.flac"  # ESC-50 fold 1, dog: never trained on


def _read(path: Path, package: str) -> np.ndarray:
    if not path.is_file():
        pytest.fail(f"{path} is missing: install the Debian package {package} (scripts/setup.sh --dev)")
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(audio.mean(axis=1), rate, RATE).astype(np.float32)


def _model(classes, music_class: str, windows: int = 4) -> MusicModel:
    """A context that calls it music while the geometric mean of ``music_class``'s probability over the
    newest ``windows`` windows is over e**-2 (0.135)."""
    weight = np.array([4.0 if c == music_class else 0.0 for c in classes])
    return MusicModel(classes, np.zeros(len(classes)), np.ones(len(classes)), weight, 8.0, windows)


def test_while_music_plays_a_label_needs_the_music_threshold():
    classes = ["dog", "rain", "siren"]
    music, dog = np.array([0.05, 0.9, 0.05]), np.array([0.7, 0.25, 0.05])
    per_label = np.array([0.5, 1.0, 1.0])  # only dog starts here

    def detector(threshold=0.95):
        return Detector(classes, per_label, smooth_windows=1, music=_model(classes, "rain"), music_threshold=threshold)

    det = detector()
    for t in range(1, 4):
        assert det.update(music, -20.0, float(t)) == [] and not det.music.playing  # 3 of 4 windows: not full
    det.update(music, -20.0, 4.0)
    assert det.music.playing  # 4 windows of music (rain's mean log -0.1)
    assert det.update(dog, -20.0, 5.0) == []  # music (mean log -0.4): dog at 0.7 is held back
    assert det.music_held == 1
    events = det.update(np.array([0.97, 0.02, 0.01]), -20.0, 6.0)  # strong enough over music
    assert [(e["event"], e["label"]) for e in events] == [("start", "dog")] and det.music.playing
    # No music heard, or not yet 4 windows of sound: 0.7 is enough.
    quiet = detector()
    for t in range(1, 5):
        quiet.update(np.array([0.05, 0.01, 0.94]), -20.0, float(t))
    assert quiet.music.probability < 0.5
    assert [e["label"] for e in quiet.update(dog, -20.0, 5.0)] == ["dog"] and quiet.music_held == 0
    assert [e["label"] for e in detector().update(dog, -20.0, 1.0)] == ["dog"]  # a young stream: no context yet
    # Silence (under min_level_dbfs) empties the context: no music plays in silence.
    det = detector()
    for t in range(1, 5):
        det.update(music, -20.0, float(t))
    assert det.music.playing
    det.update(np.zeros(3), -90.0, 5.0)
    assert not det.music.playing and det.music.probability is None
    assert [e["label"] for e in det.update(dog, -20.0, 6.0)] == ["dog"]
    # A music threshold of 0 turns the context off.
    off = detector(threshold=0.0)
    assert off.music is None and off.hear_music(music, -20.0) is None


def test_music_confusable_names_the_labels_music_holds_back():
    classes = ["dog", "rain", "siren", "car_horn"]
    music = np.array([0.05, 0.9, 0.03, 0.02])
    det = Detector(
        classes,
        np.array([0.5, 1.0, 0.5, 0.5]),
        smooth_windows=1,
        music=_model(classes, "rain"),
        music_threshold=0.95,
        music_confusable=["siren"],
    )
    for t in range(1, 5):
        det.update(music, -20.0, float(t))
    assert det.music.playing
    assert det.update(np.array([0.05, 0.25, 0.7, 0.0]), -20.0, 5.0) == [] and det.music_held == 1  # siren: held
    events = det.update(np.array([0.7, 0.25, 0.05, 0.0]), -20.0, 6.0)  # dog is not music-confusable
    assert [e["label"] for e in events] == ["dog"] and det.music_held == 1
    with pytest.raises(ConfigError, match="music_confusable.*barking"):
        Detector(classes, 0.5, music=_model(classes, "rain"), music_threshold=0.9, music_confusable=["barking"])


def test_music_novelty_lets_a_sound_new_to_the_music_start():
    """Over music, a label the music keeps making (siren near 0.45 every window) stays held under
    music_threshold when it rises a little; one that rises out of almost nothing (dog from 0.004)
    starts at its own threshold."""
    classes = ["dog", "rain", "siren"]
    music = np.array([0.004, 0.546, 0.45])  # music: rain (the context's cue), and siren under its threshold

    def detector(novelty):
        det = Detector(
            classes,
            np.array([0.5, 1.0, 0.5]),
            smooth_windows=1,
            music=_model(classes, "rain"),
            music_threshold=0.95,
            music_novelty=novelty,
        )
        for t in range(1, 5):
            assert det.update(music, -20.0, float(t)) == []
        assert det.music.playing
        np.testing.assert_allclose(det.music.usual(), music)  # what the music keeps making
        return det

    for novelty, dog_starts in ((0.0, False), (10.0, True), (300.0, False)):  # 0.7 / 0.004 = 175 times
        got = detector(novelty).update(np.array([0.7, 0.2, 0.1]), -20.0, 5.0)
        assert [e["label"] for e in got] == (["dog"] if dog_starts else []), novelty
    det = detector(10.0)
    assert det.update(np.array([0.004, 0.396, 0.6]), -20.0, 5.0) == []  # siren 1.3 times its usual: music
    assert det.music_held == 1


def test_music_novelty_under_one_is_refused(tmp_path):
    from soundwatch.config import load_settings

    config = tmp_path / "config.toml"
    config.write_text("[detect]\nmusic_novelty = 0.5\n")
    with pytest.raises(ConfigError, match=r"detect.music_novelty: a ratio of 1 or more"):
        load_settings(config)


def test_a_lost_stream_forgets_the_music_it_heard():
    classes = ["dog", "rain"]
    det = Detector(classes, [0.5, 1.0], smooth_windows=1, music=_model(classes, "rain"), music_threshold=0.9)
    for t in range(4):
        det.update(np.array([0.1, 0.9]), -20.0, float(t))
    assert det.music.playing
    assert det.update(np.array([0.8, 0.2]), -20.0, 4.0) == []  # held while music plays
    det.close_all(5.0)
    assert det.music.probability is None and not det.music.playing
    assert [e["label"] for e in det.update(np.array([0.8, 0.2]), -20.0, 6.0)] == ["dog"]


def test_the_running_context_is_the_mean_the_fit_sees():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=300)
    classes = list("abcde")
    model = MusicModel(classes, rng.normal(size=5), rng.uniform(0.5, 2, 5), rng.normal(size=5), 0.3, 20)
    ctx = MusicContext(model)
    running = [ctx.update(p) for p in probs]
    assert running[:19] == [None] * 19  # until the context is full
    offline = [model.probability(v) for v in context_features(probs, 20)]
    np.testing.assert_allclose(running[19:], offline[19:], rtol=1e-9, atol=1e-12)
    # Silent windows empty it; a context that may speak from 3 windows on; the fit's features agree.
    silent = np.zeros(300, bool)
    silent[[50, 51, 120, 200]] = True
    model.min_windows = 3
    ctx = MusicContext(model)
    running = [ctx.update(p, silent=q) for p, q in zip(probs, silent)]
    feats = context_features(probs, 20, silent)
    assert np.isnan(feats[silent]).all() and not np.isnan(feats[~silent]).any()
    assert running[50:54] == [None, None, None, None] and running[54] is not None  # 2 silent, then 2 too few
    offline = [
        None if q or k - last + 1 < 3 else model.probability(v)
        for k, (v, q, last) in enumerate(
            zip(feats, silent, np.maximum.accumulate(np.where(silent, np.arange(300) + 1, 0)))
        )
    ]
    assert [r is None for r in running] == [o is None for o in offline]
    np.testing.assert_allclose(
        [r for r in running if r is not None], [o for o in offline if o is not None], rtol=1e-9, atol=1e-12
    )


def test_fit_tells_the_types_apart_and_refuses_one_type():
    rng = np.random.default_rng(1)
    classes = ["dog", "rain", "background"]

    def scene(kind, alpha):
        return {"type": kind, "windows": [(p, -20.0) for p in rng.dirichlet(alpha, size=60)]}

    recorded = [scene("music", [1, 8, 1]) for _ in range(3)] + [scene("quiet", [1, 1, 8]) for _ in range(6)]
    model, summary = fit_music(recorded, classes, context_windows=4)
    assert summary["flagged_as_music"]["music"] > 0.9 and summary["flagged_as_music"]["quiet"] < 0.1
    assert summary["windows"] == 540 and summary["music_windows"] == 180
    with pytest.raises(ConfigError, match="no recording of music holds a window of sound"):
        fit_music(recorded[3:], classes)
    silent = [{"type": "music", "windows": [(p, -90.0) for p, _ in scene["windows"]]} for scene in recorded[:3]]
    with pytest.raises(ConfigError, match="no recording of music holds a window of sound"):
        fit_music(silent + recorded[3:], classes)  # music only in silence: nothing to learn it from


def test_a_context_file_is_bound_to_its_model(tmp_path, caplog):
    from soundwatch.config import DetectSettings
    from soundwatch.music import sidecar_music, write_music

    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(b"weights")
    classes = ["dog", "rain"]
    assert load_music(checkpoint, classes) is None  # none made
    write_music(_model(classes, "rain"), checkpoint, sidecar_music(checkpoint), note="test")
    assert load_music(checkpoint, classes).classes == classes
    with caplog.at_level(logging.WARNING):
        assert load_music(checkpoint, ["dog", "siren"]) is None
    assert "classes are not the model's" in caplog.text
    caplog.clear()
    d = DetectSettings(music_threshold=0.8)
    assert resolve_music(DetectSettings(music_threshold=0.0), checkpoint, classes) is None  # off by setting
    assert resolve_music(d, checkpoint, classes) is not None
    checkpoint.write_bytes(b"other weights")
    with caplog.at_level(logging.WARNING):
        assert load_music(checkpoint, classes) is None
    assert "not made for" in caplog.text
    caplog.clear()
    sidecar_music(checkpoint).unlink()
    with caplog.at_level(logging.WARNING):
        assert resolve_music(d, checkpoint, classes) is None
    assert "has no music context" in caplog.text and "calibrate music" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a second file or source of the same run: said once is enough
        assert resolve_music(d, checkpoint, classes) is None
    assert "has no music context" not in caplog.text
    sidecar_music(checkpoint).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read it as JSON"):
        load_music(checkpoint, classes)
    data = {"checkpoint_sha256": __import__("hashlib").sha256(b"other weights").hexdigest(), "classes": classes}
    sidecar_music(checkpoint).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="not a music context file"):
        load_music(checkpoint, classes)


def test_music_file_names_a_context_of_the_users_own(tmp_path, caplog):
    """[detect] music_file: a context kept away from the model (the shipped one is never overwritten).
    A file the user named that is missing or made for other weights is an error, not silently no context."""
    from soundwatch.config import DetectSettings, load_settings
    from soundwatch.music import sidecar_music, write_music

    checkpoint = tmp_path / "m.safetensors"
    checkpoint.write_bytes(b"weights")
    classes = ["dog", "rain"]
    write_music(_model(classes, "dog"), checkpoint, sidecar_music(checkpoint), note="the model's own")
    mine = tmp_path / "calibration" / "music.json"
    mine.parent.mkdir()
    d = DetectSettings(music_threshold=0.8, music_file=str(mine))
    with pytest.raises(ConfigError, match=r"detect.music_file .*music.json: no such file; make it with"):
        resolve_music(d, checkpoint, classes)
    write_music(_model(classes, "rain"), checkpoint, mine, note="mine")
    assert resolve_music(d, checkpoint, classes).to_dict() == _model(classes, "rain").to_dict()
    assert resolve_music(DetectSettings(music_threshold=0.8), checkpoint, classes).to_dict() == (
        _model(classes, "dog").to_dict()  # auto: the model's own, untouched
    )
    assert resolve_music(DetectSettings(music_threshold=0.0, music_file=str(mine)), checkpoint, classes) is None
    with pytest.raises(ConfigError, match="its labels are not the model's"):
        resolve_music(d, checkpoint, ["dog", "siren"])
    checkpoint.write_bytes(b"retrained weights")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ConfigError, match=r"made for m.safetensors, not for .* as it is now"):
            resolve_music(d, checkpoint, classes)
    config = tmp_path / "config.toml"
    config.write_text('[detect]\nmusic_file = " "\n')
    with pytest.raises(ConfigError, match=r'detect.music_file.*give "auto"'):
        load_settings(config)


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_music_threshold_is_checked(tmp_path, value):
    from soundwatch.config import load_settings

    path = tmp_path / "config.toml"
    path.write_text(f"[detect]\nmusic_threshold = {value}\n")
    with pytest.raises(ConfigError, match="detect.music_threshold"):
        load_settings(path)


def _music_heard(tmp_path: Path, name: str, audio: np.ndarray, engine=None, music_threshold: float = 0.8):
    from soundwatch.config import Settings
    from soundwatch.live_cli import _build_daemon

    wav = tmp_path / f"{name}.wav"
    sf.write(wav, audio, RATE)
    settings = Settings()
    settings.events.log_path = ""
    settings.listen.threads = 1
    settings.detect.vad = False
    settings.detect.music_threshold = music_threshold
    pub = ScoresKeeper()
    daemon = _build_daemon(settings, pub, wav, realtime=False, record_input=None, engine=engine)
    daemon.run(threading.Event())
    return daemon, np.array([s.get("music", np.nan) for s in pub.scores]), daemon.engine


def test_the_shipped_context_hears_real_music_and_not_speech_or_a_dog(tmp_path):
    music = _read(MUSIC, "asterisk-moh-opsound-wav")[: 40 * RATE]
    speech = _read(SPEECH, "asterisk-core-sounds-en-wav")[: 30 * RATE]
    dog, rate = sf.read(DOG, dtype="float32")
    assert rate == RATE
    room = np.random.default_rng(0).normal(0, 10 ** (-60 / 20), 30 * RATE).astype(np.float32)
    room[2 * RATE : 7 * RATE] += dog
    room[17 * RATE : 22 * RATE] += dog
    _, heard, engine = _music_heard(tmp_path, "music", music)
    settled = heard[20:]  # after the first 10 s (20 windows at hop 0.5 s) the context is full
    assert (settled >= 0.5).mean() >= 0.8, np.round(heard, 2)
    _, heard, _ = _music_heard(tmp_path, "speech", speech, engine)
    assert (heard >= 0.5).mean() <= 0.1, np.round(heard, 2)
    daemon, heard, _ = _music_heard(tmp_path, "dog", room, engine)
    assert (heard >= 0.5).mean() <= 0.1, np.round(heard, 2)
    assert "music_held" in daemon.lanes[0].status()  # on with a music context: the status counts holds
    daemon, heard, _ = _music_heard(tmp_path, "dog", room, engine, music_threshold=0.0)  # off: not on `scores`
    assert np.isnan(heard).all() and "music_held" not in daemon.lanes[0].status()


def test_calibrate_music_fits_a_context_from_your_recordings(tmp_path):
    music_dir, other_dir = tmp_path / "music", tmp_path / "other"
    music_dir.mkdir()
    other_dir.mkdir()
    sf.write(music_dir / "moh.wav", _read(MUSIC, "asterisk-moh-opsound-wav")[: 30 * RATE], RATE)
    sf.write(other_dir / "talk.flac", _read(SPEECH, "asterisk-core-sounds-en-wav")[: 20 * RATE], RATE)
    dog, _ = sf.read(DOG, dtype="float32")
    sf.write(other_dir / "dog.wav", np.concatenate([dog, dog]), RATE)
    shipped = sidecar_music(DEFAULT_MODEL)
    before = shipped.read_bytes()
    # The shipped model's context is never overwritten: by default the fit goes to calibration/music.json
    # (under the working directory), and listen is told how to use it.
    r = subprocess.run(
        [sys.executable, "-m", "soundwatch", "calibrate", "music", "--music", str(music_dir), "--other", str(other_dir)]
        + ["--backend", "onnx", "--threads", "1", "--config", str(REPO / "config.toml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "calibration" / "music.json"
    assert (
        "heard as music" in r.stdout
        and 'listen uses it with [detect] music_file = "calibration/music.json"' in r.stdout
    )
    assert "calibrate them again with this one" in r.stderr
    assert shipped.read_bytes() == before
    args = ["--backend", "onnx", "--threads", "1", "--out", str(out)]
    r = run_soundwatch(
        "calibrate", "music", "--music", str(music_dir), "--other", str(other_dir), "--out", str(shipped)
    )
    assert r.returncode == 2 and "is a file shipped with soundwatch beside its model" in r.stderr, r.stderr
    assert shipped.read_bytes() == before
    data = json.loads(out.read_text())
    assert data["fitted_on"]["flagged_as_music"]["music"] >= 0.8
    assert data["fitted_on"]["flagged_as_music"]["other"] <= 0.1
    assert data["context_s"] == 10.0 and len(data["weight"]) == len(data["classes"]) == 51
    # Bad input: a clear error, exit 2, nothing written.
    out.unlink()
    r = run_soundwatch(
        "calibrate", "music", "--music", str(tmp_path / "nope"), "--other", str(other_dir), *args, timeout=300
    )
    assert r.returncode == 2 and "--music" in r.stderr and "no such directory" in r.stderr and not out.exists()
    r = run_soundwatch("calibrate", "music", "--music", str(music_dir), "--other", str(music_dir), *args, timeout=300)
    assert r.returncode == 2 and "the same folder as --music" in r.stderr and not out.exists()
    hush = tmp_path / "hush"  # music that is all digital silence: nothing to fit, said plainly
    hush.mkdir()
    sf.write(hush / "zeros.wav", np.zeros(3 * RATE, np.float32), RATE)
    r = run_soundwatch("calibrate", "music", "--music", str(hush), "--other", str(other_dir), *args, timeout=300)
    assert r.returncode == 2 and "no recording of music holds a window of sound" in r.stderr and not out.exists()
    assert "Traceback" not in r.stderr


def test_running_with_another_music_threshold_than_the_thresholds_were_calibrated_with_warns(tmp_path, caplog):
    """Thresholds calibrated with the music context on hold their false-alarm rate over music only with it."""
    from types import SimpleNamespace

    from soundwatch.detect import resolve_view, sidecar_thresholds
    from soundwatch.models.card import file_sha256

    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    calibration = {"view_s": 2.5, "music_threshold": 0.8}
    sidecar_thresholds(model).write_text(
        json.dumps({"checkpoint_sha256": file_sha256(model), "hop_s": 0.5, "detect": calibration, "thresholds": {}})
    )
    with caplog.at_level(logging.WARNING):
        assert resolve_view(SimpleNamespace(view_s="auto", thresholds_file="auto", music_threshold=0.8), model, 0.5)
        assert not caplog.records
        resolve_view(SimpleNamespace(view_s="auto", thresholds_file="auto", music_threshold=0.0), model, 0.5)
    assert "music_threshold 0.8" in caplog.text and "running with view_s 2.5, music_threshold 0" in caplog.text
    # Calibrated letting sounds new to the music start: running without it warns.
    sidecar_thresholds(model).write_text(
        json.dumps(
            {
                "checkpoint_sha256": file_sha256(model),
                "hop_s": 0.5,
                "detect": {**calibration, "music_novelty": 10.0},
                "thresholds": {},
            }
        )
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resolve_view(
            SimpleNamespace(view_s="auto", thresholds_file="auto", music_threshold=0.8, music_novelty=10.0), model, 0.5
        )
        assert not caplog.records
        resolve_view(SimpleNamespace(view_s="auto", thresholds_file="auto", music_threshold=0.8), model, 0.5)
    assert "music_novelty 10, hop_s 0.5; running with view_s 2.5, music_threshold 0.8, music_novelty 0" in caplog.text
    # Calibrated holding back only some labels over music: running with every label held (or others) warns.
    calibration["music_confusable"] = ["siren"]
    sidecar_thresholds(model).write_text(
        json.dumps({"checkpoint_sha256": file_sha256(model), "hop_s": 0.5, "detect": calibration, "thresholds": {}})
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        d = SimpleNamespace(view_s="auto", thresholds_file="auto", music_threshold=0.8, music_confusable=("siren",))
        resolve_view(d, model, 0.5)
        assert not caplog.records
        resolve_view(SimpleNamespace(view_s="auto", thresholds_file="auto", music_threshold=0.8), model, 0.5)
    assert "music_confusable ['siren']; running with [] (every label)" in caplog.text


def test_the_shipped_thresholds_warn_when_run_with_a_music_context_of_your_own(tmp_path, caplog):
    """The shipped thresholds record the music context they were calibrated with (its sha256): running
    them with another one (``music_file``) warns, with the shipped one it does not."""
    from soundwatch.config import DetectSettings
    from soundwatch.detect import resolve_view
    from soundwatch.music import write_music

    classes = json.loads(sidecar_music(DEFAULT_MODEL).read_text())["classes"]
    with caplog.at_level(logging.WARNING):
        assert resolve_view(DetectSettings(), DEFAULT_MODEL, 0.5) == 2.5
        assert not caplog.records, caplog.text
        mine = tmp_path / "music.json"
        write_music(_model(classes, "rain"), DEFAULT_MODEL, mine, note="mine")
        resolve_view(DetectSettings(music_file=str(mine)), DEFAULT_MODEL, 0.5)
    assert "calibrated with another music context (sha256 e9c557afba73)" in caplog.text
    assert f"running with the music context {mine}" in caplog.text


def test_one_source_with_the_context_and_one_without_sum_their_counters(tmp_path):
    """[sources.detect] music_threshold off for one source: the daemon's totals count what the lanes have."""
    from soundwatch.config import Settings, SourceSettings
    from soundwatch.live_cli import _build_daemon

    music = _read(MUSIC, "asterisk-moh-opsound-wav")[: 12 * RATE]
    sf.write(tmp_path / "a.wav", music, RATE)
    sf.write(tmp_path / "b.wav", music, RATE)
    settings = Settings()
    settings.events.log_path, settings.listen.threads, settings.detect.vad = "", 1, False
    specs = [
        SourceSettings(kind="file", path=str(tmp_path / "a.wav"), name="a", detect={"music_threshold": 0.8}),
        SourceSettings(kind="file", path=str(tmp_path / "b.wav"), name="b", detect={"music_threshold": 0.0}),
    ]
    pub = ScoresKeeper()
    daemon = _build_daemon(settings, pub, specs, realtime=False, record_input=None)
    daemon.run(threading.Event())
    assert "music_held" in daemon.lanes[0].status() and "music_held" not in daemon.lanes[1].status()
    assert pub.totals and pub.totals[-1]["music_held"] == daemon.lanes[0].status()["music_held"]
    assert {s["source"] for s in pub.scores if "music" in s} == {"a"}
