"""What the engine asks of a model: the :class:`ClassifierModel` protocol (no I/O, no imports).

Every runner (torch, ONNX) and every model a test or benchmark builds implements it. The engine
reads these members and nothing else: no model-type checks, no reaching into ``model.config``,
no ``sys.modules["torch"]``. ``predict_proba`` may be called from several worker threads at
once; a model that cannot allow that returns 1 from ``worker_count``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["ClassifierModel", "SingleWorkerCpuModel"]


class ClassifierModel(Protocol):
    """A speech-emotion classifier as the engine drives it."""

    @property
    def name(self) -> str:
        """A short name for logs and ``hello`` (a hub id, a folder name, ``bundled``)."""
        ...

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names in output column order."""
        ...

    @property
    def sample_rate_hz(self) -> int:
        """The rate ``predict_proba`` expects its windows at."""
        ...

    @property
    def device(self) -> str:
        """Where it runs: ``cpu``, ``cuda`` or ``cuda:N``."""
        ...

    @property
    def narrowband_ok(self) -> bool:
        """Whether it was trained for phone-band audio (8 kHz streams get no warning then)."""
        ...

    @property
    def preferred_batch(self) -> int:
        """Windows per call that pay off (1 on CPU; the engine batches up to this)."""
        ...

    def worker_count(self, cpus: int) -> int:
        """Inference worker threads worth running on ``cpus`` available CPUs (at least 1)."""
        ...

    def set_worker_threads(self, threads: int) -> None:
        """Called once on each worker thread at start: intra-op threads that worker may use."""
        ...

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        """(batch, samples) float32 at ``sample_rate_hz`` -> (batch, len(labels)) probabilities."""
        ...


class SingleWorkerCpuModel:
    """Defaults for a model that runs in Python on the CPU: one worker, one window per call.

    Subclasses set ``name``, ``labels`` and ``sample_rate_hz`` and write ``predict_proba``.
    """

    name: str = "model"
    labels: tuple[str, ...] = ()
    sample_rate_hz: int = 16_000
    device: str = "cpu"
    narrowband_ok: bool = False
    preferred_batch: int = 1

    def worker_count(self, cpus: int) -> int:
        return 1

    def set_worker_threads(self, threads: int) -> None:
        return None

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        raise NotImplementedError
