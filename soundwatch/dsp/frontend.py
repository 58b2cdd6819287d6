"""The log-mel frontend shared by the daemon, the trainer and the exported engines.

SoundCLR's input (Nasiri & Hu, 2021): a power mel spectrogram (n_fft 1024, hop 512,
128 slaney mel bands, periodic Hann window, centred frames padded with zeros), turned
into decibels against the window's own maximum with an 80 dB floor. The values match
``librosa.feature.melspectrogram`` followed by ``librosa.power_to_db(ref=np.max,
top_db=80)``; a test checks that on real clips.

The short-time transform has two interchangeable implementations: ``torch.stft`` (fast,
used for training and the torch backend) and a 1-D convolution with a fixed DFT basis
(``dft="conv"``), which exports to ONNX with operators TensorRT supports (no STFT/DFT
node). Both give the same numbers to float32 rounding.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from soundwatch.models.card import FrontendConfig  # noqa: F401 - its home is the torch-free card

AMIN = 1e-10


@functools.lru_cache(maxsize=8)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular mel filter bank, shape (n_mels, n_fft // 2 + 1).

    torchaudio's ``melscale_fbanks`` (librosa's default filters: ``librosa.filters.mel`` with
    ``htk=False, norm="slaney"``; the frontend's librosa parity test checks it)."""
    from torchaudio.functional import melscale_fbanks

    fb = melscale_fbanks(
        n_fft // 2 + 1, float(f_min), float(f_max), n_mels, sample_rate, norm="slaney", mel_scale="slaney"
    )
    return fb.T.contiguous().numpy().astype(np.float32)


def dft_basis(n_fft: int) -> torch.Tensor:
    """Hann-windowed real/imaginary DFT kernels for ``conv1d``: shape (2 * (n_fft//2+1), 1, n_fft)."""
    n = np.arange(n_fft, dtype=np.float64)
    k = np.arange(n_fft // 2 + 1, dtype=np.float64)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
    angle = 2 * np.pi * k * n / n_fft
    kernels = np.concatenate([window * np.cos(angle), -window * np.sin(angle)], axis=0)
    return torch.from_numpy(kernels.astype(np.float32)).unsqueeze(1)


class LogMel(nn.Module):
    """Waveform (batch, samples) -> log-mel in dB (batch, n_mels, frames), values in [-top_db, 0]."""

    def __init__(self, config: FrontendConfig = FrontendConfig(), dft: str = "fft"):
        super().__init__()
        if dft not in ("fft", "conv"):
            raise ValueError(f"dft must be 'fft' or 'conv', not {dft!r}")
        self.config = config
        self.dft = dft
        f_max = config.f_max if config.f_max is not None else config.sample_rate / 2
        fb = mel_filters(config.sample_rate, config.n_fft, config.n_mels, float(config.f_min), float(f_max))
        self.register_buffer("mel_fb", torch.from_numpy(fb.copy()), persistent=False)
        self.register_buffer("window", torch.hann_window(config.n_fft, periodic=True), persistent=False)
        self.register_buffer("basis", dft_basis(config.n_fft), persistent=False)

    def power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """|STFT|^2, shape (batch, n_fft//2+1, frames)."""
        cfg = self.config
        if self.dft == "fft":
            spec = torch.stft(
                wave,
                cfg.n_fft,
                cfg.hop_length,
                window=self.window,
                center=True,
                pad_mode="constant",
                return_complex=True,
            )
            return spec.real.square() + spec.imag.square()
        pad = cfg.n_fft // 2
        framed = nn.functional.conv1d(
            nn.functional.pad(wave.unsqueeze(1), (pad, pad)), self.basis, stride=cfg.hop_length
        )
        n_bins = cfg.n_fft // 2 + 1
        return framed[:, :n_bins].square() + framed[:, n_bins:].square()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.mel_fb, self.power_spectrogram(wave))
        db = 10.0 * torch.log10(torch.clamp(mel, min=AMIN))
        db = db - torch.amax(db, dim=(1, 2), keepdim=True)
        return torch.clamp(db, min=-self.config.top_db)
