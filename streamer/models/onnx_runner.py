"""The ONNX Runtime runner: the graphs of an ``emotion-monitor optimize`` folder on CPU (built
on the main thread, run by the inference worker threads).

One full graph from ``input_values`` (the compact model's too: its log-mel front end is part
of the graph, :mod:`streamer.offline.onnx_frontend`, so a window runs in one
``InferenceSession.run``, which releases the GIL throughout), or, for a wav2vec2 classifier,
the conv encoder and the head from its features, so that the frame cache can skip the encoder
for frames it has seen. A compact folder optimised before the front end was fused holds the
CNN alone, from ``log_mel`` features that :class:`streamer.models.features.LogMelFeatures`
computes in numpy (holding the GIL for about as long as the CNN runs). Neither this module
nor the feature extractors import torch or transformers.
:class:`OnnxFiles` names the graphs of one precision from the folder's manifest;
:class:`OnnxRunner` opens and runs them. It imports nothing of the loader and reads no
transformers config: ``streamer.models.loading`` reads the folder and passes what the runner
needs (labels, model type, temperature, narrowband flag, frame cache) as plain values.

Thread-safety: ``predict_proba`` may be called from several worker threads at once
(``InferenceSession.run`` allows concurrent calls; the frame cache has its own lock).
``set_worker_threads`` rebuilds the sessions under a lock when the thread count changes; a call
already running goes on with the sessions it read (the same graphs, another thread count).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from streamer.errors import ModelError
from streamer.models.encoder_cache import FrameCache
from streamer.models.features import LOG_MEL_INPUT, WAVEFORM_INPUT
from streamer.models.runner import Runner, workers_for

__all__ = ["DISABLED_OPTIMIZERS", "OnnxFiles", "OnnxRunner", "onnx_session"]

# ONNX Runtime graph optimisations left off: its fused SkipLayerNormalization kernel took 8.9 of
# a wav2vec2-base window's 88 ms on one thread (25 calls), the unfused Add + LayerNormalization
# about a quarter of that (docs/performance.md, session 3). Same arithmetic either way.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
# what a graph of an optimize folder takes: raw samples, the compact CNN's log-mel features
# (older compact folders; computed in numpy, streamer.models.features), or a split wav2vec2's
# conv features
_KNOWN_INPUTS = (WAVEFORM_INPUT, LOG_MEL_INPUT, "extract_features")


def onnx_session(path: Path, options: Any) -> Any:
    """An ONNX Runtime CPU session for ``path`` as the engine runs it."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


@dataclass(frozen=True, slots=True)
class OnnxFiles:
    """The graphs of one precision: ``model`` (the head when split, else the full graph), the
    fp32 conv ``encoder`` whose frames the cache keeps (None: not split) and ``full_encoder``,
    the encoder in this precision for whole windows."""

    model: Path
    encoder: Path | None = None
    full_encoder: Path | None = None

    def __post_init__(self) -> None:
        for path in (self.model, self.encoder, self.full_encoder):
            if path is not None and not path.is_file():
                raise ModelError(f"{path}: missing (re-run emotion-monitor optimize)")

    @classmethod
    def from_manifest(cls, folder: Path, manifest: dict[str, Any], precision: str) -> OnnxFiles:
        """The files an optimize manifest lists for ``precision`` (fp32 or int8)."""
        files = manifest["files"]
        encoder = folder / files["encoder"] if files.get("encoder") else None
        # older manifests have an fp32 encoder only; frames for the cache always come from the
        # fp32 encoder, whose output for a frame does not depend on the other frames (int8
        # activation scales are per call)
        own = files.get(f"encoder_{precision}") if precision != "fp32" else None
        return cls(model=folder / files[precision], encoder=encoder,
                   full_encoder=folder / own if own else encoder)


class OnnxRunner(Runner):
    """ONNX Runtime sessions (CPU) as the engine drives them (see the module docstring)."""

    backend: ClassVar[str] = "onnx"

    def __init__(
        self,
        files: OnnxFiles,
        *,
        name: str,
        labels: tuple[str, ...],
        sample_rate_hz: int,
        feature_extractor: Any,
        precision: str,
        model_type: str | None,
        temperature: float = 1.0,
        narrowband_ok: bool = False,
        encoder_cache: FrameCache | None = None,
        preferred_batch: int = 1,
    ) -> None:
        self.files = files
        self.name = name
        self.labels = labels
        self.sample_rate_hz = sample_rate_hz
        self.device = "cpu"
        self.feature_extractor = feature_extractor
        self.precision = precision
        self._model_type = model_type
        self.temperature = temperature
        self.narrowband_ok = narrowband_ok
        self.encoder_cache = encoder_cache
        self.preferred_batch = preferred_batch
        self._lock = threading.Lock()
        self.threads = 0
        self.session_options: Any = None
        self._session: Any = None
        self._encoder_session: Any = None
        self._full_encoder_session: Any = None
        self._input_names: tuple[str, ...] = ()
        self.set_worker_threads(1)

    def __repr__(self) -> str:
        return (f"OnnxRunner(name={self.name!r}, precision={self.precision!r}, "
                f"model={str(self.files.model)!r}, threads={self.threads})")

    @property
    def model_type(self) -> str | None:
        return self._model_type

    @property
    def split(self) -> bool:
        return self.files.encoder is not None

    def worker_count(self, cpus: int) -> int:
        """:func:`~streamer.models.runner.workers_for`, GIL-free when one graph takes the raw
        samples (no numpy features between calls; the compact model's fused graph)."""
        gil_free = not self.split and self._input_names == (WAVEFORM_INPUT,)
        return workers_for(self.device, self.model_type, cpus, gil_free=gil_free)

    def set_worker_threads(self, threads: int) -> None:
        """Rebuild the sessions with ``intra_op_num_threads = threads`` (when it changed)."""
        import onnxruntime as ort

        with self._lock:
            if threads == self.threads:
                return
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            self._open(options)
            self.threads = threads
            self.session_options = options

    def _open(self, options: Any) -> None:
        files = self.files
        try:
            session = onnx_session(files.model, options)
            encoder = None if files.encoder is None else onnx_session(files.encoder, options)
            full = encoder
            if files.full_encoder is not None and files.full_encoder != files.encoder:
                full = onnx_session(files.full_encoder, options)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise ModelError(f"{files.model}: cannot load ({first})") from exc
        missing = [i.name for i in session.get_inputs() if i.name not in _KNOWN_INPUTS]
        if missing:
            raise ModelError(f"{files.model}: unknown graph input(s) {missing} (expected "
                             f"{', '.join(_KNOWN_INPUTS)})")
        self._input_names = tuple(i.name for i in session.get_inputs())
        self._session, self._encoder_session, self._full_encoder_session = session, encoder, full

    def full(self, inputs: dict[str, NDArray[Any]]) -> NDArray[np.float32]:
        if self.split:
            values = np.ascontiguousarray(inputs["input_values"], dtype=np.float32)
            feats = self._full_encoder_session.run(None, {"input_values": values})[0]
            return self.head(np.asarray(feats, np.float32))
        session = self._session
        # the graph's own inputs: input_values, or log_mel for an older compact folder's CNN
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.float32)
                for name in self._input_names}
        return np.asarray(session.run(None, feed)[0], np.float32)

    def encode(self, values: NDArray[np.float32]) -> NDArray[np.float32]:
        out = self._encoder_session.run(None, {"input_values": values})[0]
        return np.asarray(out, np.float32)

    def head(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        out = self._session.run(None, {"extract_features": np.ascontiguousarray(feats)})[0]
        return np.asarray(out, np.float32)
