"""What the torch and ONNX runners share: the window check, the worker policy, and
``predict_proba`` from a runner's logits (inference worker threads; no I/O).

A runner subclasses :class:`Runner` and writes ``full`` (logits from the feature extractor's
output), ``encode`` and ``head`` (the two halves of a split wav2vec2, for the frame cache) and
``set_worker_threads``. :class:`Runner` then implements the rest of
:class:`~streamer.models.protocol.ClassifierModel`.

Thread-safety: ``predict_proba`` may be called from several worker threads at once. The base
keeps no per-call state; the feature extractors (numpy only) and the frame cache (its own lock)
allow it; each runner says why its own part does.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from streamer.errors import AudioError
from streamer.models.calibration import softmax
from streamer.models.encoder_cache import FrameCache
from streamer.models.settings import COMPACT_MODEL_TYPE

__all__ = ["MAX_CPU_WORKERS", "Runner", "check_windows", "workers_for"]

# Workers for transformer-size models on CPU: one per available CPU, at most this many
MAX_CPU_WORKERS = 8


def check_windows(windows: object) -> None:
    """Raise AudioError unless ``windows`` is a non-empty (batch, samples) float32 array."""
    if not isinstance(windows, np.ndarray):
        raise AudioError(f"windows must be a numpy array, got {type(windows).__name__}")
    if windows.ndim != 2:
        raise AudioError(
            f"windows must have shape (batch, samples), got {windows.ndim}-D {windows.shape}"
        )
    if windows.dtype != np.float32:
        raise AudioError(f"windows must be float32, got {windows.dtype}")
    if windows.shape[0] == 0 or windows.shape[1] == 0:
        raise AudioError(f"windows must not be empty, got shape {windows.shape}")


def workers_for(device: str, model_type: str | None, cpus: int, *,
                gil_free: bool = False) -> int:
    """Inference workers that pay off for a model of ``model_type`` on ``device``.

    One per available CPU (at most :data:`MAX_CPU_WORKERS`) for transformer-size models on CPU:
    each worker runs one intra-op thread, and two workers doubled wav2vec2 throughput on two
    idle cores (``docs/performance.md``). The same for the compact model when ``gil_free``
    (its fused ONNX graph: the whole window in one ``InferenceSession.run``, which releases the
    GIL): on 2 busy cores 2 workers labelled every window of 40 pushed streams where one lost
    up to 23 % (docs/performance.md). One for the compact model otherwise (torch, or an older
    folder's numpy front end, which holds the GIL against the event loop), and one on CUDA,
    where the engine batches windows across streams instead.
    """
    if device.startswith("cuda") or model_type is None:
        return 1
    if model_type == COMPACT_MODEL_TYPE and not gil_free:
        return 1
    return max(1, min(MAX_CPU_WORKERS, cpus))


class Runner:
    """An emotion classifier on one backend and precision (see the module docstring).

    Subclasses set these attributes (the loader fills them from the checkpoint's config):
    ``name``, ``labels``, ``sample_rate_hz``, ``device``, ``precision``, ``feature_extractor``,
    ``temperature`` (calibration: logits are divided by it before the softmax),
    ``narrowband_ok`` (config ``"narrowband": true``: fit for 8 kHz phone audio),
    ``encoder_cache`` (a :class:`~streamer.models.encoder_cache.FrameCache` or None) and
    ``preferred_batch``; and the class constant ``backend``.
    """

    backend: ClassVar[str]
    name: str
    labels: tuple[str, ...]
    sample_rate_hz: int
    device: str
    precision: str
    feature_extractor: Any
    temperature: float
    narrowband_ok: bool
    encoder_cache: FrameCache | None
    preferred_batch: int

    @property
    def model_type(self) -> str | None:
        """The checkpoint's ``config.model_type`` (the worker policy reads it)."""
        raise NotImplementedError

    @property
    def split(self) -> bool:
        """True when the model runs as conv encoder + head (``encode`` and ``head`` work)."""
        raise NotImplementedError

    def worker_count(self, cpus: int) -> int:
        """Inference worker threads worth running on ``cpus`` CPUs (:func:`workers_for`)."""
        return workers_for(self.device, self.model_type, cpus)

    def set_worker_threads(self, threads: int) -> None:
        """Called once on each worker thread at start: intra-op threads that worker may use."""
        raise NotImplementedError

    def full(self, inputs: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
        """Feature-extractor output (numpy) -> (batch, n_labels) float32 logits."""
        raise NotImplementedError

    def encode(self, values: NDArray[np.float32]) -> NDArray[np.float32]:
        """(batch, samples) input values -> conv features (batch, channels, frames)."""
        raise NotImplementedError

    def head(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        """Conv features (batch, channels, frames) -> (batch, n_labels) float32 logits."""
        raise NotImplementedError

    def logits(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        """(batch, samples) float32 mono at ``sample_rate_hz`` -> (batch, n_labels) logits,
        through the frame cache where the runner has one."""
        check_windows(windows)
        inputs = self.feature_extractor(
            windows, sampling_rate=self.sample_rate_hz, return_tensors="np"
        )
        if self.encoder_cache is not None and self.split:
            values = np.ascontiguousarray(inputs["input_values"], dtype=np.float32)
            return self.head(self.encoder_cache.features(values, self.encode))
        return self.full(dict(inputs))

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        """(batch, samples) float32 mono at ``sample_rate_hz`` -> (batch, n_labels) rows of
        ``softmax(logits / temperature)``."""
        return softmax(self.logits(windows), self.temperature).astype(np.float32)
