"""The engine's model when inference runs on the shared Ray Serve tier (engine worker threads;
needs ``emotion-monitor[ray]``).

:class:`RayServeModel` is a :class:`~streamer.models.protocol.ClassifierModel` whose
``predict_proba`` sends the engine's batch to the tier (:mod:`streamer.models.ray_tier`) through
a Serve deployment handle and waits for the answer. The engine does not change: it keeps its
ordering, its queues and their drop rules; ``worker_count`` is the number of requests kept in
flight (each worker thread waits on one), and the replicas batch windows of every caller.

Failure rule (:func:`call_with_retries`, a pure core): each call has ``timeout_s`` in all.
A request that fails (the replica died, Serve had no replica for it) is sent once more
(``retries``), to another replica where Serve has one; a request with no answer by the deadline
is cancelled and not retried (its windows would be stale). Either way the last failure is a
:class:`RemoteInferenceError`, a ModelError: the engine drops those windows and counts them
(``windows_dropped`` and ``windows_failed``) and the stream goes on. A request the tier refuses
as bad input, or one refused because the caller's queue for the tier is full, is not retried.
:attr:`RayServeModel.counters` keeps the requests, retries, timeouts and failures.

``connect_ray_model`` runs on the caller's thread; it joins the cluster (``ray.init``) unless
this process is connected already, and ``close`` leaves it again only in that case.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import numpy as np
from numpy.typing import NDArray

from streamer.errors import ModelError, StreamerError
from streamer.extras import RAY_EXTRA, import_extra
from streamer.models.ray_tier import DEFAULT_TIER_APP, TierModelInfo

__all__ = [
    "RayInferenceConfig",
    "RayServeModel",
    "RemoteCallCounters",
    "RemoteInferenceError",
    "call_with_retries",
    "connect_ray_model",
    "ray_address",
]

logger = logging.getLogger(__name__)

_R = TypeVar("_R")


class RemoteInferenceError(ModelError):
    """A request to the inference tier failed or timed out; its windows are dropped.

    ``timed_out``: no answer by the deadline; ``retries``: sends after the first one.
    """

    def __init__(self, message: str, *, timed_out: bool, retries: int) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.retries = retries


def ray_address(inference: str) -> str | None:
    """``--inference`` -> the address for ``ray.init`` (None for ``local``).

    ``ray:auto`` -> ``auto`` (the cluster this machine belongs to), ``ray://HOST:PORT`` (Ray
    Client) as it is, ``ray:HOST:PORT`` -> ``HOST:PORT`` (the cluster's GCS, from a node of it).
    ValueError for anything else.
    """
    text = inference.strip()
    if text == "local":
        return None
    if text.startswith("ray://"):
        if len(text) > len("ray://"):
            return text
    elif text.startswith("ray:") and len(text) > len("ray:"):
        return text[len("ray:"):]
    raise ValueError(f"--inference must be 'local', 'ray:auto', 'ray:HOST:PORT' or "
                     f"'ray://HOST:PORT', got {inference!r}")


@dataclass(frozen=True, slots=True)
class RayInferenceConfig:
    """How the engine uses the tier: where it is, and the timeout, retry and flight rules.

    ``address`` as for ``ray.init`` (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``).
    ``timeout_s``: the most one engine call may take, retry included (default: the engine's
    ``max_lag_s``, past which a window is stale anyway). ``in_flight``: requests kept in flight
    (the engine's worker threads); ``max_batch``: windows per request (the engine batches up to
    this, and the tier's own limit caps it).
    """

    address: str
    app_name: str = DEFAULT_TIER_APP
    timeout_s: float = 2.0
    retries: int = 1
    in_flight: int = 8
    max_batch: int = 8
    connect_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("address must not be empty (use 'auto' or 'ray://HOST:PORT')")
        if not self.app_name or len(self.app_name) > 100:
            raise ValueError(f"app_name must be 1-100 characters, got {self.app_name!r}")
        if not 0.0 < self.timeout_s <= 600:
            raise ValueError(f"timeout_s must be in (0, 600] s, got {self.timeout_s!r}")
        if not 0 <= self.retries <= 5:
            raise ValueError(f"retries must be 0..5, got {self.retries!r}")
        if not 1 <= self.in_flight <= 64:
            raise ValueError(f"in_flight must be 1..64, got {self.in_flight!r}")
        if not 1 <= self.max_batch <= 1024:
            raise ValueError(f"max_batch must be 1..1024, got {self.max_batch!r}")
        if not 0.0 < self.connect_timeout_s <= 3600:
            raise ValueError(f"connect_timeout_s must be in (0, 3600] s, got "
                             f"{self.connect_timeout_s!r}")


@dataclass(frozen=True, slots=True)
class RemoteCallCounters:
    """Totals since connecting: calls, retries, calls that timed out or failed (windows
    dropped), and the windows sent."""

    calls: int = 0
    retries: int = 0
    timeouts: int = 0
    failures: int = 0
    windows: int = 0


def call_with_retries(
    call: Callable[[float], _R],
    *,
    timeout_s: float,
    retries: int,
    retryable: Callable[[BaseException], bool],
    clock: Callable[[], float] = time.monotonic,
) -> tuple[_R, int]:
    """``call(remaining_s)`` until it returns; (its result, the retries it took).

    At most ``1 + retries`` attempts, all within ``timeout_s``. A ``TimeoutError`` from
    ``call`` ends it (no retry: the deadline has passed); so does an error ``retryable``
    rejects. Raises RemoteInferenceError with the last error as its cause.
    """
    deadline = clock() + timeout_s
    last: BaseException | None = None
    sent = 0  # retries made before the last failure
    for attempt in range(retries + 1):
        remaining = deadline - clock()
        if remaining <= 0:  # a failure used up the time: the windows would be stale
            break
        try:
            return call(remaining), attempt
        except TimeoutError as exc:
            raise RemoteInferenceError(f"no answer from the inference tier in {timeout_s:g} s",
                                       timed_out=True, retries=attempt) from exc
        except Exception as exc:  # the tier's errors; which of them to retry is retryable's
            last = exc
            if not retryable(exc):
                _raise_failed(exc, attempt)
            sent = attempt
    if last is None:  # timeout_s <= 0 (the config does not allow it)
        raise RemoteInferenceError("no time left for the inference tier", timed_out=True,
                                   retries=0)
    _raise_failed(last, sent)


def _raise_failed(exc: BaseException, retries: int) -> NoReturn:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    tries = f" (after {retries} retr{'y' if retries == 1 else 'ies'})" if retries else ""
    raise RemoteInferenceError(f"inference tier request failed{tries}: {first}",
                               timed_out=False, retries=retries) from exc


class RayServeModel:
    """The tier as the engine's model (see the module docstring); ``close()`` twice is ok.

    Made by :func:`connect_ray_model`. ``predict_proba`` may be called from every engine
    worker at once (the handle is thread-safe; the counters have a lock).
    """

    def __init__(self, config: RayInferenceConfig, info: TierModelInfo, handle: Any, *,
                 owns_connection: bool) -> None:
        self.config = config
        self.info = info
        self._predict = handle.options(method_name="predict")
        self._owns_connection = owns_connection
        self._lock = threading.Lock()
        self._counters = RemoteCallCounters()
        self._closed = False
        self._retryable = _ray_retryable()

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def labels(self) -> tuple[str, ...]:
        return self.info.labels

    @property
    def sample_rate_hz(self) -> int:
        return self.info.sample_rate_hz

    @property
    def device(self) -> str:
        return self.info.device

    @property
    def narrowband_ok(self) -> bool:
        return self.info.narrowband_ok

    @property
    def preferred_batch(self) -> int:
        return max(1, min(self.config.max_batch, self.info.max_windows_per_request))

    @property
    def counters(self) -> RemoteCallCounters:
        """The totals so far (a snapshot)."""
        with self._lock:
            return self._counters

    def worker_count(self, cpus: int) -> int:
        """Requests in flight: the model runs elsewhere, so local CPUs do not size it."""
        return self.config.in_flight

    def set_worker_threads(self, threads: int) -> None:
        """Nothing to set here: the replicas' threads are the tier's setting."""
        return None

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        """Send ``windows`` to the tier; RemoteInferenceError when it fails (see module doc)."""
        try:
            result, retries = call_with_retries(
                lambda remaining: self._attempt(windows, remaining),
                timeout_s=self.config.timeout_s, retries=self.config.retries,
                retryable=self._retryable)
        except RemoteInferenceError as exc:
            self._count(windows, retries=exc.retries, timeout=exc.timed_out, failure=True)
            raise
        self._count(windows, retries=retries, timeout=False, failure=False)
        return np.asarray(result, dtype=np.float32)

    def _attempt(self, windows: NDArray[np.float32], remaining_s: float) -> Any:
        response = self._predict.remote(windows)
        try:
            return response.result(timeout_s=remaining_s)
        except TimeoutError:
            response.cancel()  # the replica need not run windows nobody waits for
            raise

    def _count(self, windows: NDArray[np.float32], *, retries: int, timeout: bool,
               failure: bool) -> None:
        with self._lock:
            c = self._counters
            self._counters = RemoteCallCounters(
                calls=c.calls + 1, retries=c.retries + retries, timeouts=c.timeouts + timeout,
                failures=c.failures + failure, windows=c.windows + int(windows.shape[0]))

    def close(self) -> None:
        """Log the counters; leave the cluster if :func:`connect_ray_model` joined it."""
        if self._closed:
            return
        self._closed = True
        c = self.counters
        logger.info("inference tier %s: %s call(s), %s window(s), %s retried, %s timed out, %s "
                    "failed", self.config.app_name, c.calls, c.windows, c.retries, c.timeouts,
                    c.failures)
        if self._owns_connection:
            import ray

            ray.shutdown()

    def __enter__(self) -> RayServeModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _ray_retryable() -> Callable[[BaseException], bool]:
    """Which tier errors to send again: not bad input (our own errors, raised on the replica)
    and not a refusal because the caller's queue is full; every other failure (a replica that
    died or is unavailable, none to route to) once more."""
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError

    def retryable(exc: BaseException) -> bool:
        if isinstance(exc, BackPressureError):
            return False
        if isinstance(exc, RayTaskError) and isinstance(exc.cause, StreamerError):
            return False
        return not isinstance(exc, StreamerError)

    return retryable


def connect_ray_model(config: RayInferenceConfig) -> RayServeModel:
    """Join the cluster at ``config.address`` (unless connected) and find the tier's app.

    ModelError when the cluster cannot be reached, no tier runs under ``config.app_name``, or
    it does not answer within ``connect_timeout_s``.
    """
    ray = import_extra("ray", purpose="--inference ray:...", extra=RAY_EXTRA)
    serve = import_extra("ray.serve", purpose="--inference ray:...", extra=RAY_EXTRA)
    owns = not ray.is_initialized()
    if owns:
        try:
            ray.init(address=config.address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ModelError(f"cannot reach the Ray cluster at {config.address!r}: "
                             f"{str(exc).strip().splitlines()[0]}") from exc
    try:
        handle = serve.get_app_handle(config.app_name)
        info = handle.describe.remote().result(timeout_s=config.connect_timeout_s)
    except Exception as exc:  # RayServeException, TimeoutError, a dead replica: all "no tier"
        if owns:
            ray.shutdown()
        raise ModelError(f"no inference tier {config.app_name!r} answered on the Ray cluster at "
                         f"{config.address!r} (start it with 'emotion-monitor serve-ray'): "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
                         ) from exc
    if not isinstance(info, TierModelInfo):
        if owns:
            ray.shutdown()
        raise ModelError(f"the app {config.app_name!r} is not an emotion-monitor tier")
    logger.info("inference on the Ray Serve tier %s at %s: model %s (%d labels) on %s; %s "
                "request(s) in flight, up to %s window(s) each, timeout %.3g s", config.app_name,
                config.address, info.name, len(info.labels), info.device, config.in_flight,
                min(config.max_batch, info.max_windows_per_request), config.timeout_s)
    return RayServeModel(config, info, handle, owns_connection=owns)
