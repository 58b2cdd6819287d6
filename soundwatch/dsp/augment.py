"""SoundCLR's training augmentations, in torch, on whatever device the batch is on.

Waveform: a random gain of 1.25**U(-1, 1), then a random zero padding around the clip
and a random crop back to the clip length (a random shift of up to ``max_shift`` of the
clip, in either direction). Spectrogram (after the log-mel frontend): two frequency
masks and one time mask, each of a random width in [0, ``max_width``], filled with the
spectrogram's own mean. All randomness comes from the ``torch.Generator`` passed in, so
a run is repeatable from its seed and resumable from the generator's state.
"""

from __future__ import annotations

import torch

GAIN_BASE = 1.25
MAX_SHIFT = 0.1  # share of the clip length a random pad + crop may move the clip by
MASK_WIDTH = 32
FREQ_MASKS = 2
TIME_MASKS = 1


def _uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device)


def random_gain(waves: torch.Tensor, generator: torch.Generator, base: float = GAIN_BASE) -> torch.Tensor:
    """Scale each clip by ``base ** U(-1, 1)``."""
    exponent = _uniform(waves.shape[0], generator, waves.device) * 2 - 1
    return waves * (base**exponent).unsqueeze(1)


def random_pad_crop(waves: torch.Tensor, generator: torch.Generator, max_shift: float = MAX_SHIFT) -> torch.Tensor:
    """Zero-pad ``max_shift`` of the length on both sides, then crop a random window of the original length."""
    batch, length = waves.shape
    pad = int(round(max_shift * length))
    if pad == 0:
        return waves
    padded = torch.nn.functional.pad(waves, (pad, pad))
    starts = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(waves.device)
    idx = starts.unsqueeze(1) + torch.arange(length, device=waves.device).unsqueeze(0)
    return torch.gather(padded, 1, idx)


def augment_wave(waves: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(batch, samples) -> same shape: random gain, then random pad and crop."""
    return random_pad_crop(random_gain(waves, generator), generator)


def _mask(spec: torch.Tensor, axis: int, n_masks: int, max_width: int, generator: torch.Generator) -> torch.Tensor:
    batch, size = spec.shape[0], spec.shape[axis]
    positions = torch.arange(size, device=spec.device).unsqueeze(0)
    masked = torch.zeros(batch, size, dtype=torch.bool, device=spec.device)
    for _ in range(n_masks):
        width = (torch.rand(batch, generator=generator) * (min(max_width, size) + 1)).long().to(spec.device)
        start = (torch.rand(batch, generator=generator) * (size - width + 1).cpu()).long().to(spec.device)
        masked |= (positions >= start.unsqueeze(1)) & (positions < (start + width).unsqueeze(1))
    shape = [batch, 1, 1]
    shape[axis] = size
    return masked.view(shape)


def mask_spec(
    spec: torch.Tensor,
    generator: torch.Generator,
    freq_masks: int = FREQ_MASKS,
    time_masks: int = TIME_MASKS,
    max_width: int = MASK_WIDTH,
) -> torch.Tensor:
    """(batch, mels, frames) -> same shape with frequency and time bands set to each spectrogram's mean."""
    mask = _mask(spec, 1, freq_masks, max_width, generator) | _mask(spec, 2, time_masks, max_width, generator)
    fill = spec.mean(dim=(1, 2), keepdim=True)
    return torch.where(mask, fill, spec)
