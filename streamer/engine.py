"""The inference loop: per-stream feeds in, ordered emotion events out (threads and locks).

Threads: ``StreamFeed.feed``/``close`` run on the caller's thread (one thread per stream; an
asyncio loop may call them directly, they only block when ``realtime=False`` applies
backpressure). Resampling, VAD gating and windowing happen there (cheap, pure cores). Ready
windows go to the :class:`~streamer.scheduler.RoundRobinWindowScheduler` (bounded per-stream
queues, the drop rules); ``workers`` inference threads owned by the :class:`Engine` take them
round-robin across streams, run the model and settle each window in its stream's
:class:`~streamer.outbox.StreamOutbox`, which turns results into
:class:`~streamer.events.WindowLabel` and :class:`~streamer.events.Utterance` in stream order.
This module is the shell around those two pure cores: the worker threads, the condition they
wait on, one lock per stream, the stream registry, counters and logs. The sink is called from
the feeding thread or a worker.

Ordering: an event (SpeechStart, SpeechEnd, StreamClosed) is held until every window submitted
before it is labelled or dropped, so one stream's events reach the sink in stream order, one at
a time (under the stream's lock), and ``StreamClosed`` comes after the last WindowLabel.

Queue rules (per stream, ``queue_windows`` deep; :mod:`streamer.scheduler`):

- ``realtime=True`` (live): when full, the oldest waiting window is dropped; a worker drops a
  window older than ``max_lag_s`` instead of running it. Both count in ``windows_dropped``.
- ``realtime=False`` (``analyze``): ``feed`` blocks until there is room; nothing is dropped
  (except windows still queued when ``close`` times out, which are counted).
- Either way, a model call that fails (raises, e.g. a remote tier that timed out, or returns no
  valid probabilities) drops its windows: counted in ``windows_dropped`` and ``windows_failed``.
  A :class:`~streamer.errors.ModelError` is an expected failure and logged as one line at most
  every few seconds; anything else is logged with its traceback.

The model is driven only through :class:`~streamer.models.protocol.ClassifierModel`: its
``device`` and ``preferred_batch`` size batches, ``worker_count`` sizes the pool, and each
worker calls ``set_worker_threads`` once at start.

Capture counters: pass the source (anything with ``blocks_dropped`` and ``input_overflows``
attributes, e.g. :class:`~streamer.capture.MicrophoneSource`) as ``open_stream(..., capture=)``;
:meth:`Engine.stats` adds them up (totals are kept after the stream closes).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import soxr
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ
from streamer.errors import AudioError, ModelError, StreamerError
from streamer.events import (
    WIDEBAND_MODEL_ON_NARROWBAND_AUDIO,
    EngineStats,
    Event,
    SpeechEnd,
    SpeechStart,
    StreamClosed,
    StreamOpened,
    WindowLabel,
)
from streamer.models.protocol import ClassifierModel
from streamer.outbox import StreamOutbox
from streamer.protocol.limits import MAX_INPUT_RATE_HZ, MIN_INPUT_RATE_HZ
from streamer.scheduler import QueuedWindow, RoundRobinWindowScheduler, TakenWindows
from streamer.smoothing import SmoothingConfig
from streamer.vad import GateClosed, GatedAudio, GateItem, GateOpened, VadConfig, VadGate
from streamer.windows import SpeechWindow, Windower

__all__ = ["CaptureCounters", "Engine", "EngineConfig", "Sink", "StreamFeed", "available_cpus"]

logger = logging.getLogger(__name__)

_DROP_LOG_INTERVAL_S = 5.0
_CUDA_MAX_BATCH = 8  # windows per call on a GPU when EngineConfig.max_batch is None

Sink = Callable[[Event], None]


class CaptureCounters(Protocol):
    """A capture source's counters (read on any thread; plain ints)."""

    @property
    def blocks_dropped(self) -> int: ...

    @property
    def input_overflows(self) -> int: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Windowing, VAD, smoothing and inference-loop settings (times in seconds).

    ``max_batch`` None means 8 when the model's ``device`` is CUDA, and on CPU the model's
    ``preferred_batch`` (what ``emotion-monitor optimize`` measured to pay). A worker never
    waits to fill a batch: it takes what is queued, up to ``max_batch`` windows of different
    streams. ``workers`` None means the model's ``worker_count(available_cpus())``.
    ``threads_per_worker`` is passed to the model's ``set_worker_threads`` on each worker (its
    intra-op thread count there: torch's, ONNX Runtime's).
    """

    window_s: float = 2.0
    hop_s: float = 0.5
    min_window_s: float = 0.5
    vad: VadConfig = field(default_factory=VadConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    realtime: bool = True
    max_lag_s: float = 2.0
    queue_windows: int = 8
    workers: int | None = None
    max_batch: int | None = None
    threads_per_worker: int = 1
    close_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0.1 <= self.window_s <= 30.0:
            raise ValueError(f"window_s must be between 0.1 and 30 s, got {self.window_s!r}")
        if not 0.0 < self.hop_s <= self.window_s:
            raise ValueError(f"hop_s must be in (0, window_s={self.window_s}], got {self.hop_s!r}")
        if not 0.0 < self.min_window_s <= self.window_s:
            raise ValueError(
                f"min_window_s must be in (0, window_s={self.window_s}], got {self.min_window_s!r}"
            )
        if not self.max_lag_s > 0.0:
            raise ValueError(f"max_lag_s must be > 0 s, got {self.max_lag_s!r}")
        if not 1 <= self.queue_windows <= 1024:
            raise ValueError(f"queue_windows must be 1..1024, got {self.queue_windows!r}")
        if self.workers is not None and not 1 <= self.workers <= 64:
            raise ValueError(f"workers must be 1..64, got {self.workers!r}")
        if self.max_batch is not None and not 1 <= self.max_batch <= 256:
            raise ValueError(f"max_batch must be None or 1..256, got {self.max_batch!r}")
        if not 1 <= self.threads_per_worker <= 64:
            raise ValueError(f"threads_per_worker must be 1..64, got {self.threads_per_worker!r}")
        if not self.close_timeout_s > 0.0:
            raise ValueError(f"close_timeout_s must be > 0 s, got {self.close_timeout_s!r}")



class _OpenStream:
    """One stream as the engine holds it: its outbox behind its own lock (the scheduler's key)."""

    __slots__ = ("stream_id", "lock", "outbox")

    def __init__(self, stream_id: str, outbox: StreamOutbox) -> None:
        self.stream_id = stream_id
        self.lock = threading.Lock()  # guards outbox and serialises this stream's sink calls
        self.outbox = outbox


_Job = QueuedWindow[_OpenStream]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class Engine:
    """Owns the inference worker threads and the model; a context manager, ``close()`` twice ok.

    ``Engine(model, config, sink)`` starts the workers at once. ``sink(event)`` must be cheap and
    thread-safe (e.g. ``loop.call_soon_threadsafe``); an exception in it is logged and ignored.
    """

    def __init__(self, model: ClassifierModel, config: EngineConfig, sink: Sink) -> None:
        labels = tuple(model.labels)
        if not labels:
            raise ModelError(f"model {model.name!r} has no labels")
        if int(model.sample_rate_hz) != MODEL_RATE_HZ:
            raise ModelError(
                f"model {model.name!r} expects {model.sample_rate_hz} Hz; the engine feeds "
                f"{MODEL_RATE_HZ} Hz"
            )
        self.model = model
        self.config = config
        self.labels = labels
        self._sink = sink
        cuda = str(model.device).startswith("cuda")
        self.max_batch = config.max_batch or (
            _CUDA_MAX_BATCH if cuda else max(1, int(model.preferred_batch)))
        self.workers = config.workers or max(1, int(model.worker_count(available_cpus())))
        self._cond = threading.Condition()  # guards everything below but the streams' outboxes
        self._scheduler: RoundRobinWindowScheduler[_OpenStream] = RoundRobinWindowScheduler(
            queue_windows=config.queue_windows, max_batch=self.max_batch,
            realtime=config.realtime, max_lag_s=config.max_lag_s,
        )
        self._in_flight = 0  # windows taken by a worker and not yet settled
        self._windows_done = 0
        self._windows_dropped = 0
        self._windows_failed = 0  # of those dropped: the model call failed
        self._drops_logged_at = -math.inf  # monotonic time of the last drop warning
        self._drops_logged = 0
        self._failures_logged_at = -math.inf  # monotonic time of the last ModelError warning
        self._failures_unlogged = 0  # failed calls since that warning
        self._closing = False  # workers stop; blocked feeds give up
        self._closed = False
        self._close_lock = threading.Lock()
        self._feeds: dict[str, StreamFeed] = {}
        self._captures: dict[str, CaptureCounters] = {}
        self._capture_totals = [0, 0]  # counters of captures whose stream has closed
        self._threads = [
            threading.Thread(target=self._work, name=f"engine-worker-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        logger.info(
            "engine started: model %s, %s worker(s), batch %s, realtime %s",
            model.name, self.workers, self.max_batch, config.realtime,
        )

    # -- public API ---------------------------------------------------------------------------

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stream_ids(self) -> tuple[str, ...]:
        """Ids of the streams open now."""
        with self._cond:
            return tuple(self._feeds)

    def open_stream(
        self,
        stream_id: str,
        *,
        sample_rate_hz: int,
        metadata: Mapping[str, str] | None = None,
        capture: CaptureCounters | None = None,
    ) -> StreamFeed:
        """Start a stream fed at ``sample_rate_hz`` (8000-192000); emits StreamOpened."""
        if not isinstance(stream_id, str) or not stream_id:
            raise StreamerError(f"stream id must be a non-empty string, got {stream_id!r}")
        rate = _check_rate(sample_rate_hz)
        stream = _OpenStream(stream_id, StreamOutbox(stream_id, self.labels,
                                                     self.config.smoothing))
        feed = StreamFeed(self, stream, rate, dict(metadata or {}))
        with self._cond:
            if self._closed:
                raise StreamerError("the engine is closed")
            if stream_id in self._feeds:
                raise StreamerError(f"stream {stream_id!r} is already open")
            self._feeds[stream_id] = feed
            if capture is not None:
                self._captures[stream_id] = capture
        logger.info("stream %s opened at %s Hz", stream_id, rate)
        flagged: tuple[str, ...] = ()
        if rate < MODEL_RATE_HZ and not self.model.narrowband_ok:
            # band-limited input (a phone line) on a model not trained or measured for it
            flagged = (WIDEBAND_MODEL_ON_NARROWBAND_AUDIO,)
            logger.warning(
                "stream %s: %s Hz input on model %s, which is not marked narrowband (trained "
                "and measured on %s Hz audio only); its labels may be unreliable here",
                stream_id, rate, self.model.name, MODEL_RATE_HZ,
            )
        self.emit_event(stream, StreamOpened(stream_id, rate, time.time(), dict(feed.metadata),
                                             flagged))
        return feed

    def stats(self) -> EngineStats:
        """Counters since start; ``lag_s`` is the age of the oldest window waiting for the model."""
        now = time.monotonic()
        with self._cond:
            oldest = self._scheduler.oldest_submitted_s()
            dropped, overflows = self._capture_totals
            for capture in self._captures.values():
                dropped += int(capture.blocks_dropped)
                overflows += int(capture.input_overflows)
            return EngineStats(
                wall_time=time.time(),
                lag_s=0.0 if oldest is None else max(0.0, now - oldest),
                windows_done=self._windows_done,
                windows_dropped=self._windows_dropped,
                blocks_dropped=dropped,
                input_overflows=overflows,
                windows_failed=self._windows_failed,
            )

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted window is labelled or dropped; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._scheduler.queued and self._in_flight == 0, timeout
            )

    def close(self) -> None:
        """Close open streams (reason "shutdown"), finish queued windows, stop the workers.

        Waits at most ``close_timeout_s`` for queued windows; any left are dropped and counted.
        Safe to call twice and from any thread except a worker (i.e. not from the sink).
        """
        with self._close_lock:
            with self._cond:
                if self._closed:
                    return
                self._closed = True
                feeds = list(self._feeds.values())
            for feed in feeds:
                feed.close(reason="shutdown")
            if not self.drain(self.config.close_timeout_s):
                logger.warning("engine close: windows still queued after %.1f s; dropping them",
                               self.config.close_timeout_s)
            with self._cond:
                self._closing = True
                leftovers = self._scheduler.clear()
                self._count_drops_locked(len(leftovers))
                self._cond.notify_all()
            for job in leftovers:
                self._settle(job, None)
            for thread in self._threads:
                thread.join(self.config.close_timeout_s)
                if thread.is_alive():
                    logger.warning("engine close: %s did not stop in time", thread.name)
            stats = self.stats()
            logger.info(
                "engine closed: %s windows labelled, %s dropped",
                stats.windows_done, stats.windows_dropped,
            )

    # -- what StreamFeed asks of the engine (on the feeding thread) ---------------------------

    def submit_window(self, stream: _OpenStream, window: SpeechWindow) -> None:
        """Queue ``window`` for the model behind the stream's earlier events and windows.

        Not realtime: blocks while the stream's queue is full. A window evicted by it (realtime,
        queue full) or refused because the engine is shutting down is dropped and counted.
        """
        with stream.lock:
            ticket = stream.outbox.reserve(window)
        job = QueuedWindow(stream, ticket, window, time.monotonic())
        with self._cond:
            if not self.config.realtime:
                self._cond.wait_for(lambda: self._closing or self._scheduler.has_room(stream))
            if self._closing:
                dropped: _Job | None = job
            else:
                dropped = self._scheduler.push(job)
                self._cond.notify_all()
            if dropped is not None:
                self._count_drops_locked(1)
        if dropped is not None:
            logger.debug("stream %s: dropped window %.2f-%.2f s (queue full)",
                         stream.stream_id, dropped.window.start_s, dropped.window.end_s)
            self._settle(dropped, None)

    def emit_event(self, stream: _OpenStream, event: Event) -> None:
        """Send ``event`` to the sink once every window submitted before it is settled."""
        with stream.lock:
            stream.outbox.put(event)
            self._release_locked(stream)

    def end_stream(self, stream: _OpenStream) -> None:
        """The feed closed: forget the stream (its outbox still drains) and keep its counters."""
        with self._cond:
            self._feeds.pop(stream.stream_id, None)
            capture = self._captures.pop(stream.stream_id, None)
            if capture is not None:
                self._capture_totals[0] += int(capture.blocks_dropped)
                self._capture_totals[1] += int(capture.input_overflows)

    # -- worker side --------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self.model.set_worker_threads(self.config.threads_per_worker)
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._scheduler.queued or self._closing)
                    if self._closing:
                        return
                    batch = self._scheduler.take(time.monotonic())
                    self._in_flight += len(batch)
                    self._count_drops_locked(len(batch.stale))
                    self._cond.notify_all()  # room in a queue: wake a blocked feed
                try:
                    self._run(batch)
                except Exception:  # a bug, not a bad window: keep the worker and the order
                    logger.exception("inference worker failed on a batch; dropping it")
                    self._abandon(batch)
                finally:
                    with self._cond:
                        self._in_flight -= len(batch)
                        self._cond.notify_all()
        except Exception:
            logger.exception("inference worker crashed")

    def _run(self, batch: TakenWindows[_OpenStream]) -> None:
        for job in batch.stale:
            logger.debug("stream %s: dropped stale window %.2f-%.2f s",
                         job.stream.stream_id, job.window.start_s, job.window.end_s)
            self._settle(job, None)
        for jobs in batch.groups:  # windows of one length each
            probs = self._predict(jobs)
            with self._cond:
                if probs is None:
                    self._count_drops_locked(len(jobs))
                    self._windows_failed += len(jobs)
                else:
                    self._windows_done += len(jobs)
            for i, job in enumerate(jobs):
                self._settle(job, None if probs is None else probs[i])

    def _predict(self, jobs: tuple[_Job, ...]) -> NDArray[np.float32] | None:
        """The model's probabilities for ``jobs``, or None (logged) when it fails or lies."""
        if len(jobs) == 1:  # a view: no copy of the window for a batch of one
            windows = jobs[0].window.samples[np.newaxis, :]
        else:
            windows = np.stack([job.window.samples for job in jobs])
        try:
            probs = np.asarray(self.model.predict_proba(windows), dtype=np.float32)
        except ModelError as exc:  # expected (e.g. a remote tier is down): one line, rate-limited
            self._log_model_error(exc, len(jobs))
            return None
        except Exception:
            logger.exception("model failed on %s window(s); skipping them", len(jobs))
            return None
        if probs.shape != (len(jobs), len(self.labels)) or not np.all(np.isfinite(probs)):
            logger.error("model returned shape %s (expected %s); skipping the windows",
                         probs.shape, (len(jobs), len(self.labels)))
            return None
        return probs

    def _log_model_error(self, exc: ModelError, windows: int) -> None:
        """Warn about a failed model call, at most every few seconds with the calls since."""
        now = time.monotonic()
        with self._cond:
            self._failures_unlogged += 1
            if now - self._failures_logged_at < _DROP_LOG_INTERVAL_S:
                return
            calls, self._failures_unlogged = self._failures_unlogged, 0
            self._failures_logged_at = now
        logger.warning("model failed on %s window(s), skipping them (%s failed call(s) since the "
                       "last warning): %s", windows, calls, exc)

    def _abandon(self, batch: TakenWindows[_OpenStream]) -> None:
        """Mark the batch's still-pending windows dropped (counted) so their streams move on."""
        for job in batch.windows:
            with job.stream.lock:
                if not job.stream.outbox.is_pending(job.ticket):
                    continue
            with self._cond:
                self._count_drops_locked(1)
            self._settle(job, None)

    def _count_drops_locked(self, n: int) -> None:
        """Count dropped windows; warn at most every few seconds (caller holds ``_cond``)."""
        if not n:
            return
        self._windows_dropped += n
        now = time.monotonic()
        if now - self._drops_logged_at >= _DROP_LOG_INTERVAL_S:
            logger.warning(
                "inference is behind: %s window(s) dropped (%s since the last warning)",
                self._windows_dropped, self._windows_dropped - self._drops_logged,
            )
            self._drops_logged_at = now
            self._drops_logged = self._windows_dropped

    # -- outbox side (any thread) -------------------------------------------------------------

    def _settle(self, job: _Job, probs: NDArray[np.float32] | None) -> None:
        """Fill (or drop) the job's outbox slot and deliver what that releases."""
        stream = job.stream
        with stream.lock:
            if probs is None:
                stream.outbox.drop(job.ticket)
            else:
                stream.outbox.fill(job.ticket, probs)
            self._release_locked(stream)

    def _release_locked(self, stream: _OpenStream) -> None:
        """Deliver the outbox's settled prefix in order (caller holds ``stream.lock``)."""
        for event in stream.outbox.release(wall_time=time.time()):
            if isinstance(event, WindowLabel):
                logger.debug("stream %s: window %s %.2f-%.2f s %s (%.2f) smoothed %s",
                             event.stream, event.seq, event.start_s, event.end_s, event.label,
                             event.confidence, event.smoothed_label)
            try:
                self._sink(event)
            except Exception:
                logger.exception("event sink failed on %s", type(event).__name__)


class StreamFeed:
    """One stream's input: resampler -> VAD gate -> windower -> the engine's queue.

    Made by :meth:`Engine.open_stream`. Call ``feed``/``close`` from one thread at a time (a
    lock makes a concurrent ``Engine.close`` safe). A context manager; ``close()`` twice is ok.
    """

    def __init__(
        self, engine: Engine, stream: _OpenStream, sample_rate_hz: int, metadata: dict[str, str]
    ) -> None:
        cfg = engine.config
        self.stream_id = stream.stream_id
        self.sample_rate_hz = sample_rate_hz
        self.metadata = metadata
        self._engine = engine
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False
        self._resampler = (
            None
            if sample_rate_hz == MODEL_RATE_HZ
            else soxr.ResampleStream(sample_rate_hz, MODEL_RATE_HZ, 1, dtype="float32")
        )
        self._gate = VadGate(cfg.vad)
        self._windower = Windower(
            window_s=cfg.window_s, hop_s=cfg.hop_s, min_window_s=cfg.min_window_s
        )
        self._samples = 0  # samples at the model rate since the stream opened

    def __enter__(self) -> StreamFeed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def time_s(self) -> float:
        """Stream seconds fed so far (at the model rate, after resampling)."""
        return self._samples / MODEL_RATE_HZ

    @property
    def closed(self) -> bool:
        """True once ``close`` ran."""
        return self._closed

    def feed(self, samples: NDArray[np.float32]) -> None:
        """Add mono float32 samples at this stream's rate; emits events, submits windows.

        Raises AudioError for a non-array, a dtype other than float32, a shape other than 1-D,
        NaN/inf values, or a closed stream. With ``realtime=False`` it blocks while the stream's
        inference queue is full.
        """
        _check_block(samples)
        with self._lock:
            if self._closed:
                raise AudioError(f"stream {self.stream_id!r} is closed")
            if samples.size == 0:
                return
            out = samples if self._resampler is None else self._resampler.resample_chunk(samples)
            self._process(np.ascontiguousarray(out, dtype=np.float32))

    def close(self, reason: str = "end") -> None:
        """Flush (the last short utterance is classified) and emit StreamClosed after it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._resampler is not None:
                tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                self._process(np.ascontiguousarray(tail, dtype=np.float32))
            self._handle(self._gate.flush())
            self._engine.end_stream(self._stream)
            closed = StreamClosed(self.stream_id, self.time_s, time.time(), reason)
            self._engine.emit_event(self._stream, closed)
        logger.info("stream %s closed (%s) at %.2f s", self.stream_id, reason, self.time_s)

    def _process(self, samples: NDArray[np.float32]) -> None:
        if samples.size == 0:
            return
        self._samples += samples.size
        self._handle(self._gate.push(samples))

    def _handle(self, items: list[GateItem]) -> None:
        engine, stream = self._engine, self._stream
        for item in items:
            if isinstance(item, GatedAudio):
                for window in self._windower.push(item.start_s, item.samples):
                    engine.submit_window(stream, window)
            elif isinstance(item, GateOpened):
                engine.emit_event(stream, SpeechStart(self.stream_id, item.start_s, time.time()))
            elif isinstance(item, GateClosed):
                for window in self._windower.end_segment():
                    engine.submit_window(stream, window)
                engine.emit_event(
                    stream, SpeechEnd(self.stream_id, item.start_s, item.end_s, time.time())
                )


def _check_rate(sample_rate_hz: object) -> int:
    if (
        isinstance(sample_rate_hz, bool)
        or not isinstance(sample_rate_hz, (int, np.integer))
        or not MIN_INPUT_RATE_HZ <= int(sample_rate_hz) <= MAX_INPUT_RATE_HZ
    ):
        raise AudioError(
            f"unsupported sample rate {sample_rate_hz!r} Hz: allowed are whole numbers from "
            f"{MIN_INPUT_RATE_HZ} to {MAX_INPUT_RATE_HZ} Hz"
        )
    return int(sample_rate_hz)


def _check_block(samples: object) -> None:
    if not isinstance(samples, np.ndarray):
        raise AudioError(f"audio block must be a numpy array, got {type(samples).__name__}")
    if samples.dtype != np.float32:
        raise AudioError(f"audio block dtype {samples.dtype} not allowed: use float32 in [-1, 1]")
    if samples.ndim != 1:
        raise AudioError(f"audio block shape {samples.shape} not allowed: use 1-D mono samples")
    # one reduction: a float64 sum of finite float32 values is finite, and any NaN or inf
    # makes it NaN or inf
    if not math.isfinite(float(np.add.reduce(samples, dtype=np.float64))):
        raise AudioError("audio block holds NaN or infinite values: only finite samples allowed")

