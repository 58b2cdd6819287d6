"""The engine interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from soundwatch.models.card import ModelCard


class Engine(ABC):
    """A loaded model: ``infer`` maps waveform windows to logits.

    Every backend's constructor takes the same arguments::

        Backend(checkpoint, *, compute="auto", threads=0, precision=None, engines_dir=None)

    ``compute``: where to run (auto | cpu | cuda; a backend refuses a place it cannot run);
    ``threads``: CPU threads (0: the runtime's default; a GPU backend has none to set);
    ``precision``: None for the backend's default, else one it runs, refused otherwise;
    ``engines_dir``: where built graphs and plans are cached (a backend that builds none ignores it).
    Anything else is a ``TypeError``, as for any Python call.

    Attributes every backend sets: ``name`` (backend), ``precision`` (fp32/fp16/int8: what it
    actually runs), ``device`` (where it runs, for the status topic) and ``card`` (the model
    card: classes, sample rate, window length).
    """

    name: str
    precision: str
    device: str
    card: ModelCard

    @property
    def classes(self) -> list[str]:
        return self.card.classes

    @property
    def sample_rate(self) -> int:
        return self.card.sample_rate

    @property
    def window_samples(self) -> int:
        return self.card.window_samples

    @abstractmethod
    def infer(self, waves: np.ndarray) -> np.ndarray:
        """(batch, window_samples) float32 at ``sample_rate`` -> (batch, n_classes) float32 logits."""

    def check_input(self, waves: np.ndarray) -> np.ndarray:
        waves = np.ascontiguousarray(waves, dtype=np.float32)
        if waves.ndim != 2 or waves.shape[1] != self.window_samples:
            raise ValueError(f"expected (batch, {self.window_samples}) waveforms, got {waves.shape}")
        return waves


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
