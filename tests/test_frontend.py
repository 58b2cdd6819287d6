"""The shared log-mel frontend against librosa, the reference, on real clips from ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from soundwatch.dsp.frontend import FrontendConfig, LogMel

from conftest import ESC10_DIR, ESC50_DIR

librosa = pytest.importorskip("librosa")

CLIPS = sorted((ESC50_DIR / "audio").glob("*.flac"))[::397] + sorted((ESC10_DIR / "audio").glob("*.ogg"))[::131]


def librosa_logmel(audio: np.ndarray, rate: int) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=audio, sr=rate, n_fft=1024, hop_length=512, n_mels=128)
    return librosa.power_to_db(mel, ref=np.max, top_db=80.0)


@pytest.mark.parametrize("dft", ["fft", "conv"])
@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.name)
def test_matches_librosa_on_real_clips(clip, dft):
    audio, rate = sf.read(clip, dtype="float32")
    ours = LogMel(FrontendConfig(sample_rate=rate), dft=dft)(torch.from_numpy(audio)[None])[0].numpy()
    ref = librosa_logmel(audio, rate)
    assert ours.shape == ref.shape == (128, 1 + len(audio) // 512)
    assert np.abs(ours - ref).max() <= 0.01


def test_batch_items_are_normalised_independently():
    """dB is against each window's own maximum: scaling one item changes nothing, in a batch too."""
    audio, rate = sf.read(CLIPS[0], dtype="float32")
    frontend = LogMel(FrontendConfig(sample_rate=rate))
    x = torch.from_numpy(audio)
    out = frontend(torch.stack([x, 0.25 * x, x.flip(0)]))
    assert torch.allclose(out[0], out[1], atol=1e-3)
    assert not torch.allclose(out[0], out[2], atol=1e-3)
    assert out.amax(dim=(1, 2)).abs().max() == 0 and out.min() >= -80.0
