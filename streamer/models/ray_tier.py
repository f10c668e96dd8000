"""The shared inference tier on Ray Serve: one deployment serving the emotion model to every
engine of every ingest node (runs inside the Ray cluster; needs ``emotion-monitor[ray]``).

:class:`EmotionReplica` is the deployment's class. Each replica loads the model once with
:func:`~streamer.models.loading.load_model` (the ONNX path for the bundled model: no torch) and
answers two methods:

- ``predict(windows)``: one caller's (n, samples) float32 windows -> (n, labels) probabilities.
  Requests of all callers are gathered by ``@serve.batch`` (counted in windows, up to
  ``max_batch_windows``, waiting at most ``batch_wait_s`` for more) and run as one model call per
  window length (:func:`predict_merged`, a pure core). The call runs in a thread so the
  replica's event loop keeps accepting requests and answering health checks meanwhile.
- ``describe()``: what a client needs to act as the model (:class:`TierModelInfo`).

Threads: ``EmotionReplica`` methods run on the replica's asyncio loop (Ray Serve's), the model
in a thread of that loop's default executor, one batch at a time. :func:`deploy_tier` and
:func:`delete_tier` run on the caller's thread (a driver connected with ``ray.init``).

Every request is checked before it joins a batch (shape, dtype, finite values, at most
``max_batch_windows`` windows of at most :data:`MAX_TIER_WINDOW_SAMPLES` samples): a bad one
fails alone with an :class:`~streamer.errors.AudioError`. Importing this module imports no Ray.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ
from streamer.errors import AudioError, ModelError
from streamer.extras import RAY_EXTRA, import_extra

__all__ = [
    "DEFAULT_TIER_APP",
    "MAX_TIER_WINDOW_SAMPLES",
    "EmotionReplica",
    "RayTierConfig",
    "TierModelInfo",
    "check_tier_request",
    "delete_tier",
    "deploy_tier",
    "predict_merged",
]

logger = logging.getLogger(__name__)

#: the Serve application name the tier runs under unless told otherwise
DEFAULT_TIER_APP = "emotion-monitor"
#: the longest window a replica takes: 30 s at the model rate (EngineConfig's window_s limit)
MAX_TIER_WINDOW_SAMPLES = 30 * MODEL_RATE_HZ

_Predict = Callable[[NDArray[np.float32]], NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class RayTierConfig:
    """The deployment: model, replicas (fixed or autoscaled), batching and resources.

    ``model`` None is the bundled model; ``backend``/``precision`` as for ``load_model``.
    ``min_replicas == max_replicas`` is a fixed count; otherwise Serve autoscales between them,
    aiming at ``target_ongoing_requests`` requests per replica (running plus queued). A replica
    runs up to ``max_batch_windows`` windows per model call, waiting at most ``batch_wait_s``
    for more requests once one is there. ``cpus_per_replica`` also sets the model's intra-op
    threads (rounded, at least 1); ``gpus_per_replica`` > 0 puts the model on CUDA.
    ``max_queued_requests`` bounds each caller's queue of requests waiting for a replica (more
    are refused, and the client drops their windows, counted).
    """

    model: str | None = None
    backend: str = "auto"
    precision: str = "auto"
    app_name: str = DEFAULT_TIER_APP
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 2.0
    max_batch_windows: int = 32
    batch_wait_s: float = 0.005
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_queued_requests: int = 256

    def __post_init__(self) -> None:
        if not self.app_name or len(self.app_name) > 100:
            raise ValueError(f"app_name must be 1-100 characters, got {self.app_name!r}")
        if not 1 <= self.min_replicas <= self.max_replicas <= 1024:
            raise ValueError("replicas must satisfy 1 <= min_replicas <= max_replicas <= 1024, "
                             f"got {self.min_replicas!r}..{self.max_replicas!r}")
        if not 0.0 < self.target_ongoing_requests <= 1024:
            raise ValueError("target_ongoing_requests must be in (0, 1024], got "
                             f"{self.target_ongoing_requests!r}")
        if not 1 <= self.max_batch_windows <= 1024:
            raise ValueError(f"max_batch_windows must be 1..1024, got {self.max_batch_windows!r}")
        if not 0.0 <= self.batch_wait_s <= 1.0:
            raise ValueError(f"batch_wait_s must be 0..1 s, got {self.batch_wait_s!r}")
        if not 0.0 < self.cpus_per_replica <= 256:
            raise ValueError(f"cpus_per_replica must be in (0, 256], got "
                             f"{self.cpus_per_replica!r}")
        if not 0.0 <= self.gpus_per_replica <= 16:
            raise ValueError(f"gpus_per_replica must be 0..16, got {self.gpus_per_replica!r}")
        if not 1 <= self.max_queued_requests <= 100_000:
            raise ValueError("max_queued_requests must be 1..100000, got "
                             f"{self.max_queued_requests!r}")

    @property
    def device(self) -> str:
        """Where each replica runs the model: ``cuda`` with a GPU share, else ``cpu``."""
        return "cuda" if self.gpus_per_replica > 0 else "cpu"

    @property
    def model_threads(self) -> int:
        """Intra-op threads of the replica's model: its CPU share, rounded, at least 1."""
        return max(1, round(self.cpus_per_replica))


@dataclass(frozen=True, slots=True)
class TierModelInfo:
    """What a replica tells a client: the model as the engine sees it, and the request limit."""

    name: str
    labels: tuple[str, ...]
    sample_rate_hz: int
    device: str
    narrowband_ok: bool
    max_windows_per_request: int


def check_tier_request(windows: object, *, max_windows: int) -> NDArray[np.float32]:
    """``windows`` as a (n, samples) float32 array, or AudioError naming what is wrong.

    Bounds: 1..``max_windows`` windows of 1..:data:`MAX_TIER_WINDOW_SAMPLES` finite samples.
    """
    if not isinstance(windows, np.ndarray):
        raise AudioError(f"windows must be a numpy array, got {type(windows).__name__}")
    if windows.ndim != 2 or windows.dtype != np.float32:
        raise AudioError(f"windows must be 2-D float32 (batch, samples), got {windows.ndim}-D "
                         f"{windows.dtype}")
    n, samples = windows.shape
    if not 1 <= n <= max_windows:
        raise AudioError(f"a request holds 1..{max_windows} windows, got {n}")
    if not 1 <= samples <= MAX_TIER_WINDOW_SAMPLES:
        raise AudioError(f"a window holds 1..{MAX_TIER_WINDOW_SAMPLES} samples, got {samples}")
    if not math.isfinite(float(np.add.reduce(windows, axis=None, dtype=np.float64))):
        raise AudioError("windows hold NaN or infinite values: only finite samples allowed")
    return windows


def predict_merged(
    predict: _Predict, requests: Sequence[NDArray[np.float32]], n_labels: int
) -> list[NDArray[np.float32]]:
    """Run the windows of several requests as one model call per window length.

    Returns each request's (n, ``n_labels``) rows in request order. ModelError when the model
    returns the wrong shape or non-finite values (every request of that length fails).
    """
    results: list[NDArray[np.float32] | None] = [None] * len(requests)
    by_length: dict[int, list[int]] = {}
    for i, windows in enumerate(requests):
        by_length.setdefault(int(windows.shape[1]), []).append(i)
    for indices in by_length.values():
        parts = [requests[i] for i in indices]
        merged = parts[0] if len(parts) == 1 else np.concatenate(parts)
        probs = np.asarray(predict(merged), dtype=np.float32)
        if probs.shape != (merged.shape[0], n_labels) or not np.all(np.isfinite(probs)):
            raise ModelError(f"the model returned shape {probs.shape} (expected "
                             f"{(merged.shape[0], n_labels)}) or non-finite values")
        start = 0
        for i in indices:
            end = start + requests[i].shape[0]
            results[i] = probs[start:end]
            start = end
    return [r for r in results if r is not None]


def _windows_in(requests: list[Any]) -> int:
    """The size of a would-be batch in windows (Serve's ``batch_size_fn``)."""
    return sum(int(r.shape[0]) for r in requests)


class EmotionReplica:
    """One replica of the tier: the model loaded once, windows of every caller batched.

    Ray Serve builds it in the replica's process (``__init__`` loads the model; a model that
    fails to load fails the deployment with its ModelError); its methods run on the replica's
    event loop.
    """

    def __init__(self, config: RayTierConfig) -> None:
        from ray import serve

        from streamer.models.loading import load_model

        self._config = config
        self._model = load_model(config.model, device=config.device, backend=config.backend,
                                 precision=config.precision)
        self._model.set_worker_threads(config.model_threads)
        self._info = TierModelInfo(
            name=str(self._model.name), labels=tuple(self._model.labels),
            sample_rate_hz=int(self._model.sample_rate_hz), device=str(self._model.device),
            narrowband_ok=bool(self._model.narrowband_ok),
            max_windows_per_request=config.max_batch_windows,
        )
        self._batched = serve.batch(
            max_batch_size=config.max_batch_windows, batch_wait_timeout_s=config.batch_wait_s,
            batch_size_fn=_windows_in,
        )(self._run_batch)
        logger.info("tier replica ready: model %s on %s, %s thread(s), up to %s window(s) per "
                    "call", self._info.name, self._info.device, config.model_threads,
                    config.max_batch_windows)

    def describe(self) -> TierModelInfo:
        """The model as clients present it to their engines."""
        return self._info

    async def predict(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        """One caller's windows -> their probabilities, batched with other callers' windows."""
        checked = check_tier_request(windows, max_windows=self._config.max_batch_windows)
        result: NDArray[np.float32] = await self._batched(checked)
        return result

    async def _run_batch(self, requests: list[NDArray[np.float32]]) -> list[NDArray[np.float32]]:
        """Serve's batch handler: the gathered requests in one model call per window length."""
        return await asyncio.to_thread(
            predict_merged, self._model.predict_proba, requests, len(self._info.labels))


def _deployment_options(config: RayTierConfig) -> dict[str, Any]:
    """``serve.deployment`` options: resources, replica count or autoscaling, queue bounds."""
    actor: dict[str, Any] = {"num_cpus": config.cpus_per_replica}
    if config.gpus_per_replica > 0:
        actor["num_gpus"] = config.gpus_per_replica
    options: dict[str, Any] = {
        "name": "EmotionReplica",
        "ray_actor_options": actor,
        "max_ongoing_requests": max(config.max_batch_windows,
                                    math.ceil(2 * config.target_ongoing_requests)),
        "max_queued_requests": config.max_queued_requests,
    }
    if config.min_replicas == config.max_replicas:
        options["num_replicas"] = config.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.target_ongoing_requests,
        }
    return options


def deploy_tier(config: RayTierConfig) -> Any:
    """Deploy (or update) the tier on the cluster this process is connected to; its handle.

    Needs ``ray.init(address=...)`` first. Starts Serve without HTTP proxies when it is not
    running yet (engines call the tier through deployment handles). Waits until the
    application runs; a deployment that fails (e.g. the model does not load on a replica) is a
    ModelError.
    """
    ray = import_extra("ray", purpose="the Ray Serve inference tier", extra=RAY_EXTRA)
    serve = import_extra("ray.serve", purpose="the Ray Serve inference tier", extra=RAY_EXTRA)
    if not ray.is_initialized():
        raise ModelError("deploy_tier needs a Ray connection: call ray.init(address=...) first")
    serve.start(proxy_location="Disabled")
    deployment = serve.deployment(EmotionReplica, **_deployment_options(config))
    try:
        handle = serve.run(deployment.bind(config), name=config.app_name, route_prefix=None)
    except RuntimeError as exc:  # Serve's "Deploying app ... failed" (RayServeException too)
        raise ModelError(f"the tier {config.app_name!r} did not start: "
                         f"{str(exc).strip().splitlines()[0]}") from exc
    logger.info("tier %s deployed: %s..%s replica(s), %s CPU(s) and %s GPU(s) each",
                config.app_name, config.min_replicas, config.max_replicas,
                config.cpus_per_replica, config.gpus_per_replica)
    return handle


def delete_tier(app_name: str) -> None:
    """Remove the tier's application from the cluster this process is connected to."""
    serve = import_extra("ray.serve", purpose="the Ray Serve inference tier", extra=RAY_EXTRA)
    serve.delete(app_name)
    logger.info("tier %s deleted", app_name)
