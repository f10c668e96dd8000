"""Seams for tests and benchmarks: a zero-cost model and generated audio (any thread; pure).

:class:`FixedProbabilitiesModel` implements :class:`~streamer.models.protocol.ClassifierModel`
with no model cost at all, so a test or a benchmark drives the real engine and server and
measures everything around the model (httpx ships ``MockTransport`` for the same reason).
:func:`tone` and :func:`speech_like` make mono float32 audio that webrtcvad hears as silence or
speech. The runtime never imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from streamer.models.protocol import SingleWorkerCpuModel

__all__ = ["DEFAULT_LABELS", "FixedProbabilitiesModel", "speech_like", "tone"]

DEFAULT_LABELS = ("Angry", "Happy", "Neutral", "Sad")


class FixedProbabilitiesModel(SingleWorkerCpuModel):
    """Returns the same probabilities for every window, at no cost (thread-safe; counts calls).

    ``probabilities`` defaults to a clear lead for the third label; it must have one value per
    label, each in [0, 1], summing to 1.
    """

    def __init__(
        self,
        labels: Sequence[str] = DEFAULT_LABELS,
        probabilities: Sequence[float] | None = None,
        *,
        name: str = "fixed",
        sample_rate_hz: int = 16_000,
        workers: int = 1,
    ) -> None:
        self.labels = tuple(labels)
        if not self.labels:
            raise ValueError("a model needs at least one label")
        if probabilities is None:
            rest = 0.3 / max(1, len(self.labels) - 1)
            probabilities = [rest] * len(self.labels)
            probabilities[min(2, len(self.labels) - 1)] = 0.7 if len(self.labels) > 1 else 1.0
        row = np.asarray(probabilities, dtype=np.float32)
        if row.shape != (len(self.labels),) or np.any(row < 0) or np.any(row > 1):
            raise ValueError(
                f"need {len(self.labels)} probabilities in [0, 1], got {probabilities}")
        if not np.isclose(float(row.sum()), 1.0, atol=1e-4):
            raise ValueError(f"probabilities must sum to 1, got {float(row.sum()):.4f}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.name = name
        self.sample_rate_hz = int(sample_rate_hz)
        self._row = row
        self._workers = workers
        self.calls = 0  # a plain int: += under the GIL may miss a count across threads

    def worker_count(self, cpus: int) -> int:
        return self._workers

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        if windows.ndim != 2:
            raise ValueError(f"expected (batch, samples) windows, got shape {windows.shape}")
        self.calls += 1
        return np.broadcast_to(self._row, (windows.shape[0], self._row.size)).copy()


def tone(
    freq_hz: float, seconds: float, *, rate_hz: int = 16000, amplitude: float = 0.3
) -> NDArray[np.float32]:
    """A sine tone as float32 mono."""
    t = np.arange(int(seconds * rate_hz), dtype=np.float64) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def speech_like(
    seconds: float, *, rate_hz: int = 16000, seed: int = 0, pitch_hz: float = 140.0
) -> NDArray[np.float32]:
    """Voiced, syllable-modulated harmonic audio that webrtcvad reliably calls speech."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate_hz)
    t = np.arange(n, dtype=np.float64) / rate_hz
    f0 = pitch_hz * (1 + 0.08 * np.sin(2 * np.pi * 3.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate_hz
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
    noise = 0.02 * rng.standard_normal(n)
    signal = 0.25 * voiced * syllables + noise
    return (signal / np.max(np.abs(signal)) * 0.5).astype(np.float32)
