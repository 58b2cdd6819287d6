"""Speech awareness (issue 11, item 4): the voice-activity detector on real recordings, the detector
holding back speech-confusable labels while speech dominates, and privacy (no clip holds speech).

Real speech: the English prompts of the Debian package ``asterisk-core-sounds-en-wav`` (a recorded
voice, 8 kHz WAV), installed by ``scripts/setup.sh --dev``. Real non-speech: ESC-50 clips.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from soundwatch.detect import Detector
from soundwatch.errors import UserError

from conftest import ESC50_DIR, REPO
from helpers import ScoresKeeper

RATE = 16000
SPEECH = Path("/usr/share/asterisk/sounds/en_US_f_Allison/demo-congrats.wav")  # 30 s of a recorded voice
DOG = ESC50_DIR / "audio" / "1-100032-A-0.flac"  # ESC-50 fold 1, dog


def speech_16k() -> np.ndarray:
    if not SPEECH.is_file():
        pytest.fail(
            f"{SPEECH} is missing: install the Debian package asterisk-core-sounds-en-wav (scripts/setup.sh --dev)"
        )
    audio, rate = sf.read(SPEECH, dtype="float32")
    return soxr.resample(audio, rate, RATE).astype(np.float32)


def dog_16k() -> np.ndarray:
    audio, rate = sf.read(DOG, dtype="float32")
    assert rate == RATE
    return audio


@pytest.fixture(scope="module")
def vad():
    from soundwatch.vad import SpeechDetector

    return SpeechDetector(RATE)


def test_vad_hears_a_real_voice_and_not_a_dog(vad):
    speech, dog = speech_16k(), dog_16k()
    shares = [vad.share(speech[i : i + 5 * RATE]) for i in range(0, 25 * RATE, 5 * RATE)]
    assert min(shares) >= 0.6, shares
    assert vad.share(dog) <= 0.15
    assert vad.share(np.zeros(5 * RATE, np.float32)) == 0.0


def test_streaming_update_follows_the_stream_and_restarts_on_a_gap(vad):
    """update() classifies only the new chunks each hop (state carried), and still gives the window's
    share: high over speech, low over the dog clip that follows it, and a fresh start after a gap."""
    speech, dog = speech_16k()[: 12 * RATE], dog_16k()
    stream = np.concatenate([speech, dog])
    window, hop = 5 * RATE, RATE
    vad.reset()
    shares = {end: vad.update(stream[end - window : end], end) for end in range(window, len(stream) + 1, hop)}
    assert all(shares[end] >= 0.6 for end in range(window, 12 * RATE + 1, hop))
    assert shares[len(stream)] <= 0.15  # the newest window is all dog
    assert vad.pos > len(stream) - 512  # classified up to the newest whole chunk
    assert abs(shares[10 * RATE] - vad.share(stream[5 * RATE : 10 * RATE])) < 0.15  # ~ the window on its own
    far = len(stream) + 60 * RATE  # a jump: not contiguous, so the whole window from a fresh state
    assert vad.update(speech[:window], far) == pytest.approx(vad.share(speech[:window]))


def test_vad_at_another_model_rate_resamples(vad):
    from soundwatch.vad import SpeechDetector

    speech_16k()  # fails clearly if the recording is missing
    speech8k, rate = sf.read(SPEECH, dtype="float32")
    assert rate == 8000
    at8k = SpeechDetector(8000, model=vad.path)
    assert at8k.update(speech8k[: 5 * rate], 5 * rate) >= 0.6


def test_vad_serving_path_does_not_import_torch():
    code = (
        "import sys, numpy as np\nfrom soundwatch.vad import SpeechDetector\n"
        "print(SpeechDetector(16000).share(np.zeros(16000, np.float32)))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr


def test_missing_vad_model_is_a_clear_user_error(monkeypatch):
    import importlib.util

    from soundwatch import vad

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"silero-vad.*vad = false"):
        vad.find_model()


def test_speech_holds_back_confusable_labels_only():
    classes = ["dog", "coughing", "laughing"]
    det = Detector(
        classes,
        0.5,
        smooth_windows=1,
        min_duration_s=0.0,
        speech_confusable=("coughing", "laughing"),
        speech_hold_ratio=0.5,
    )
    p = np.array([0.6, 0.7, 0.1])
    events = det.update(p, -20.0, 1.0, speech=0.9)
    assert [(e["event"], e["label"]) for e in events] == [("start", "dog")]  # coughing held back, dog starts
    assert det.held == 1
    events = det.update(p, -20.0, 2.0, speech=0.4)  # speech no longer dominates: coughing starts
    assert [(e["event"], e["label"]) for e in events] == [("start", "coughing")]
    assert det.update(p, -20.0, 3.0, speech=1.0) == []  # a reported event runs its course
    # Without a speech share (no VAD), nothing is held back.
    det = Detector(classes, 0.5, smooth_windows=1, min_duration_s=0.0, speech_confusable=("coughing",))
    assert {e["label"] for e in det.update(p, -20.0, 1.0)} == {"dog", "coughing"}


def test_a_candidate_is_not_reported_while_speech_dominates():
    det = Detector(["dog", "coughing"], 0.5, smooth_windows=1, min_duration_s=2.0, speech_confusable=("coughing",))
    p = np.array([0.0, 0.8])
    assert det.update(p, -20.0, 1.0, speech=0.0) == []  # a candidate, not reported yet (min_duration_s)
    assert det.update(p, -20.0, 3.0, speech=0.8) == []  # lasted long enough, but speech dominates
    events = det.update(p, -20.0, 4.0, speech=0.1)
    assert [(e["event"], e["label"], e["start"]) for e in events] == [("start", "coughing", 1.0)]


def test_unknown_confusable_label_is_refused():
    from soundwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="speech_confusable.*not_a_label"):
        Detector(["dog"], 0.5, speech_confusable=("not_a_label",))


class ToneEngine:
    """A stand-in classifier: "dog" when the window's newest second holds a 1 kHz tone, else no label
    over a third."""

    name, precision, device = "tone", "fp32", "cpu"
    classes = ["dog", "rain", "wind"]
    sample_rate = RATE
    window_samples = 5 * RATE

    def infer(self, waves: np.ndarray) -> np.ndarray:
        power = np.abs(np.fft.rfft(waves[:, -RATE:], axis=1)) ** 2  # 1 Hz bins: bin 1000 = 1 kHz
        tone = power[:, 1000] / (power.sum(axis=1) + 1e-9)
        logits = np.zeros((len(waves), 3), np.float32)
        logits[:, 0] = np.where(tone > 0.05, 8.0, 0.0)
        return logits


def test_privacy_writes_no_clip_that_holds_speech(vad, tmp_path):
    """The daemon over a real recording: a tone in a quiet room, then the same tone while a real
    voice talks. With privacy on, the first event's clip is written (and holds no speech); the
    second's is not (clip null, "privacy: speech"), and no partial file is left."""
    from soundwatch.config import Settings
    from soundwatch.live_cli import _build_daemon
    from soundwatch.scenes_cli import MemoryPublisher

    speech = speech_16k()[: 8 * RATE]
    tone = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(2 * RATE) / RATE).astype(np.float32)
    quiet = lambda s: np.zeros(int(s * RATE), np.float32)  # noqa: E731
    talk = speech.copy()
    talk[3 * RATE : 5 * RATE] += tone
    audio = np.concatenate([quiet(6), tone, quiet(9), talk, quiet(9)])
    wav = tmp_path / "scene.wav"
    sf.write(wav, audio, RATE, subtype="FLOAT")

    settings = Settings()
    settings.detect.min_duration_s = 0.0
    settings.detect.smooth_windows = 1
    settings.detect.view_s = 0.0  # the stand-in reads the window's newest second as it is
    settings.events.log_path = ""
    settings.events.clips_dir = str(tmp_path / "clips")
    settings.events.pre_roll_s = 1.0
    settings.events.post_roll_s = 1.0
    settings.events.privacy = True
    publisher = MemoryPublisher()
    daemon = _build_daemon(settings, publisher, wav, realtime=False, record_input=None, engine=ToneEngine())
    final = daemon.run(threading.Event())
    ends = [d for d in publisher.detections if d["event"] == "end"]
    assert [e["label"] for e in ends] == ["dog", "dog"], publisher.detections
    first, second = ends
    assert first["clip"] and Path(first["clip"]).is_file() and "clip_error" not in first
    assert second["clip"] is None and second["clip_error"] == "privacy: speech"
    clips = list((tmp_path / "clips").iterdir())
    assert [p.name for p in clips if p.suffix == ".wav"] == [Path(first["clip"]).name]
    assert not [p for p in clips if p.name.endswith(".soundwatch-part")]
    written, rate = sf.read(first["clip"], dtype="float32")
    assert vad.share(written) == 0.0
    assert final["clips_written"] == 1 and final["clips_withheld"] == 1 and final["vad_ms"] is not None

    # The same scene without privacy: both clips are written, the second one holds the voice.
    settings.events.privacy = False
    settings.events.clips_dir = str(tmp_path / "open")
    publisher = MemoryPublisher()
    _build_daemon(settings, publisher, wav, realtime=False, record_input=None, engine=ToneEngine()).run(
        threading.Event()
    )
    ends = [d for d in publisher.detections if d["event"] == "end"]
    assert len(ends) == 2 and all(e["clip"] for e in ends)
    held, _ = sf.read(ends[1]["clip"], dtype="float32")
    assert vad.share(held) >= 0.3


def test_scores_carry_the_speech_share(tmp_path):
    """Every `scores` message of the daemon carries `speech` when the VAD is on, none when off."""
    from soundwatch.config import Settings
    from soundwatch.live_cli import _build_daemon

    wav = tmp_path / "talk.wav"
    sf.write(wav, np.concatenate([speech_16k()[: 10 * RATE], np.zeros(6 * RATE, np.float32)]), RATE)
    settings = Settings()
    settings.events.log_path = ""
    pub = ScoresKeeper()
    _build_daemon(settings, pub, wav, realtime=False, record_input=None, engine=ToneEngine()).run(threading.Event())
    speech = {round(s["offset_s"]): s["speech"] for s in pub.scores}
    assert speech[10] >= 0.6 and speech[16] == 0.0
    settings.detect.vad = False
    pub = ScoresKeeper()
    _build_daemon(settings, pub, wav, realtime=False, record_input=None, engine=ToneEngine()).run(threading.Event())
    assert pub.scores and all("speech" not in s for s in pub.scores)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[detect]\nspeech_confusable = "coughing"\n', "detect.speech_confusable: expected a list of strings"),
        ('[detect]\nspeech_confusable = ["coughing", 3]\n', "detect.speech_confusable: expected a list of strings"),
        ("[detect]\nspeech_hold_ratio = 0.0\n", r"detect.speech_hold_ratio: must be in \(0, 1\]"),
        ("[detect]\nvad = false\n[events]\nprivacy = true\n", "events.privacy: privacy = true needs"),
    ],
)
def test_speech_settings_are_checked(tmp_path, text, message):
    from soundwatch.config import ConfigError, load_settings

    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)
    path.write_text('[detect]\nspeech_confusable = ["dog"]\nspeech_hold_ratio = 1.0\n')
    d = load_settings(path).detect
    assert d.speech_confusable == ("dog",) and d.speech_hold_ratio == 1.0 and d.vad


def test_share_of_a_young_stream_counts_only_the_audio_heard(vad):
    """The first windows of a stream are zero-padded before its start: their share is that of the
    audio they hold (a second of speech after the start is speech, not 20% speech)."""
    speech = speech_16k()
    vad.reset()
    window = np.concatenate([np.zeros(4 * RATE, np.float32), speech[:RATE]])
    assert vad.update(window, RATE) >= 0.6
