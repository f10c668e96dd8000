"""The inference loop: per-stream feeds in, ordered emotion events out.

Threads: ``StreamFeed.feed``/``close`` run on the caller's thread (one thread per stream; an
asyncio loop may call them directly, they only block when ``realtime=False`` applies
backpressure). Resampling, VAD gating and windowing happen there (cheap, pure cores). Ready
windows go to a bounded per-stream queue; ``workers`` inference threads owned by the
:class:`Engine` take them round-robin across streams (fair), run the model and emit
:class:`~streamer.events.WindowLabel`. The sink is called from the feeding thread or a worker.

Ordering: each stream has an ordered outbox. An event (SpeechStart, SpeechEnd, StreamClosed) is
held until every window submitted before it is labelled or dropped, so one stream's events reach
the sink in stream order, one at a time, and ``StreamClosed`` comes after the last WindowLabel.
Right after a SpeechEnd comes the segment's :class:`~streamer.events.Utterance` (the mean of its
labelled windows' probabilities), when at least one of its windows was labelled.
``WindowLabel.seq`` counts emitted labels per stream from 0 (dropped windows take no number);
smoothing is applied in that order, and SpeechStart/SpeechEnd tell the smoother where the
silences are (it resets or decays over them, :mod:`streamer.smoothing`).

Queue rules (per stream, ``queue_windows`` deep):

- ``realtime=True`` (live): when full, the oldest waiting window is dropped; a worker drops a
  window older than ``max_lag_s`` instead of running it. Both count in ``windows_dropped``.
- ``realtime=False`` (``analyze``): ``feed`` blocks until there is room; nothing is dropped
  (except windows still queued when ``close`` times out, which are counted).

Capture counters: pass the source (anything with ``blocks_dropped`` and ``input_overflows``
attributes, e.g. :class:`~streamer.capture.MicrophoneSource`) as ``open_stream(..., capture=)``;
:meth:`Engine.stats` adds them up (totals are kept after the stream closes).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import sys
import threading
import time
from collections import deque
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
    Utterance,
    WindowLabel,
)
from streamer.smoothing import Smoother, SmoothingConfig
from streamer.vad import GateClosed, GatedAudio, GateItem, GateOpened, VadConfig, VadGate
from streamer.windows import SpeechWindow, Windower

__all__ = [
    "MAX_INPUT_RATE_HZ",
    "MIN_INPUT_RATE_HZ",
    "CaptureCounters",
    "ClassifierModel",
    "Engine",
    "EngineConfig",
    "StreamFeed",
    "auto_workers",
    "available_cpus",
]

logger = logging.getLogger(__name__)

_DROP_LOG_INTERVAL_S = 5.0
MIN_INPUT_RATE_HZ = 8_000
MAX_INPUT_RATE_HZ = 192_000

Sink = Callable[[Event], None]


class ClassifierModel(Protocol):
    """What the engine needs from a model (``streamer.models.loading.load_model`` returns one)."""

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def sample_rate_hz(self) -> int: ...

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        """(batch, samples) float32 at ``sample_rate_hz`` -> (batch, len(labels)) probabilities."""
        ...


class CaptureCounters(Protocol):
    """A capture source's counters (read on any thread; plain ints)."""

    @property
    def blocks_dropped(self) -> int: ...

    @property
    def input_overflows(self) -> int: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Windowing, VAD, smoothing and inference-loop settings (times in seconds).

    ``max_batch`` None means 8 when the model reports a CUDA ``device``, and on CPU the
    model's ``preferred_batch`` (what ``emotion-monitor optimize`` measured to pay; 1 when the
    model has none). A worker never waits to fill a batch: it takes what is queued, up to
    ``max_batch`` windows of different streams. ``workers`` None means :func:`auto_workers`.
    ``threads_per_worker`` is each worker's intra-op thread count on CPU (torch's, and the
    model's ``set_worker_threads`` when it has one, e.g. ONNX Runtime).
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


class _State(enum.Enum):
    READY = 1  # holds an event
    PENDING = 2  # a window waiting for the model
    DONE = 3  # a window with probabilities
    DROPPED = 4  # a window that will not be labelled


class _Slot:
    """One entry of a stream's ordered outbox."""

    __slots__ = ("state", "event", "window", "probs")

    def __init__(self, state: _State, event: Event | None = None) -> None:
        self.state = state
        self.event = event
        self.window: SpeechWindow | None = None
        self.probs: NDArray[np.float32] | None = None


@dataclass(slots=True)
class _Job:
    stream: _StreamState
    slot: _Slot
    window: SpeechWindow
    submitted: float  # time.monotonic()


class _StreamState:
    """Per-stream engine state: the outbox (own lock) and the job queue (engine's lock)."""

    def __init__(self, stream_id: str, labels: tuple[str, ...], smoothing: SmoothingConfig):
        self.stream_id = stream_id
        self.lock = threading.Lock()
        self.outbox: deque[_Slot] = deque()
        self.smoother = Smoother(labels, smoothing)
        self.labels = labels
        self.seq = 0
        # the open speech segment's labelled windows (sum of probabilities) and drops
        self.segment_sum = np.zeros(len(labels), dtype=np.float64)
        self.segment_windows = 0
        self.segment_dropped = 0
        self.dropped = 0  # windows of this stream dropped so far
        self.jobs: deque[_Job] = deque()  # guarded by Engine._cond
        self.scheduled = False  # in Engine._rotation; guarded by Engine._cond


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def auto_workers(model: ClassifierModel) -> int:
    """Inference workers that pay off for ``model`` (``EngineConfig.workers`` None).

    One per available CPU (at most 8) for transformer-size models on CPU: each worker runs one
    intra-op thread, and two workers doubled wav2vec2 throughput on two idle cores
    (``docs/performance.md``). One for the compact model, whose 2 ms windows leave the Python
    side (VAD, windowing, one feeder thread) as the limit, and one on CUDA, where the engine
    batches windows across streams instead.
    """
    if str(getattr(model, "device", "cpu")).startswith("cuda"):
        return 1
    config = getattr(model, "config", None)
    if config is None:
        config = getattr(getattr(model, "model", None), "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None or model_type == "emotion-compact":
        return 1
    return min(8, available_cpus())


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
        self._cuda = str(getattr(model, "device", "cpu")).startswith("cuda")
        self.max_batch = config.max_batch or (
            8 if self._cuda else max(1, int(getattr(model, "preferred_batch", 1) or 1)))
        self.workers = config.workers or auto_workers(model)
        self._cond = threading.Condition()
        self._rotation: deque[_StreamState] = deque()  # streams with queued jobs, round-robin
        self._in_flight = 0
        self._windows_done = 0
        self._windows_dropped = 0
        self._drops_logged_at = -math.inf  # monotonic time of the last drop warning
        self._drops_logged = 0
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
        state = _StreamState(stream_id, self.labels, self.config.smoothing)
        feed = StreamFeed(self, state, rate, dict(metadata or {}))
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
        if rate < MODEL_RATE_HZ and not getattr(self.model, "narrowband_ok", False):
            # band-limited input (a phone line) on a model not trained or measured for it
            flagged = (WIDEBAND_MODEL_ON_NARROWBAND_AUDIO,)
            logger.warning(
                "stream %s: %s Hz input on model %s, which is not marked narrowband (trained "
                "and measured on %s Hz audio only); its labels may be unreliable here",
                stream_id, rate, self.model.name, MODEL_RATE_HZ,
            )
        self._emit(state, StreamOpened(stream_id, rate, time.time(), dict(feed.metadata),
                                       flagged))
        return feed

    def stats(self) -> EngineStats:
        """Counters since start; ``lag_s`` is the age of the oldest window waiting for the model."""
        now = time.monotonic()
        with self._cond:
            oldest = min((s.jobs[0].submitted for s in self._rotation if s.jobs), default=now)
            dropped, overflows = self._capture_totals
            for capture in self._captures.values():
                dropped += int(capture.blocks_dropped)
                overflows += int(capture.input_overflows)
            return EngineStats(
                wall_time=time.time(),
                lag_s=max(0.0, now - oldest),
                windows_done=self._windows_done,
                windows_dropped=self._windows_dropped,
                blocks_dropped=dropped,
                input_overflows=overflows,
            )

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted window is labelled or dropped; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._rotation and self._in_flight == 0, timeout
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
                leftovers = [job for s in self._rotation for job in s.jobs]
                for s in self._rotation:
                    s.jobs.clear()
                    s.scheduled = False
                self._rotation.clear()
                self._count_drops_locked(len(leftovers))
                self._cond.notify_all()
            for job in leftovers:
                self._complete(job, None)
            for thread in self._threads:
                thread.join(self.config.close_timeout_s)
                if thread.is_alive():
                    logger.warning("engine close: %s did not stop in time", thread.name)
            stats = self.stats()
            logger.info(
                "engine closed: %s windows labelled, %s dropped",
                stats.windows_done, stats.windows_dropped,
            )

    # -- feeding side (called by StreamFeed on the feeding thread) ----------------------------

    def _submit(self, state: _StreamState, window: SpeechWindow) -> None:
        slot = _Slot(_State.PENDING)
        slot.window = window
        with state.lock:
            state.outbox.append(slot)
        job = _Job(state, slot, window, time.monotonic())
        evicted: _Job | None = None
        with self._cond:
            if self.config.realtime:
                if len(state.jobs) >= self.config.queue_windows and not self._closing:
                    evicted = state.jobs.popleft()
                    self._count_drops_locked(1)
            else:
                while len(state.jobs) >= self.config.queue_windows and not self._closing:
                    self._cond.wait()
            if self._closing:
                self._count_drops_locked(1)
                evicted = job
            else:
                state.jobs.append(job)
                if not state.scheduled:
                    state.scheduled = True
                    self._rotation.append(state)
                self._cond.notify_all()
        if evicted is not None:
            logger.debug("stream %s: dropped window %.2f-%.2f s (queue full)",
                         state.stream_id, evicted.window.start_s, evicted.window.end_s)
            self._complete(evicted, None)

    def _count_drops_locked(self, n: int) -> None:
        """Count dropped windows; warn at most every few seconds (caller holds ``_cond``)."""
        self._windows_dropped += n
        now = time.monotonic()
        if n and now - self._drops_logged_at >= _DROP_LOG_INTERVAL_S:
            logger.warning(
                "inference is behind: %s window(s) dropped (%s since the last warning)",
                self._windows_dropped, self._windows_dropped - self._drops_logged,
            )
            self._drops_logged_at = now
            self._drops_logged = self._windows_dropped

    def _emit(self, state: _StreamState, event: Event) -> None:
        with state.lock:
            state.outbox.append(_Slot(_State.READY, event))
            self._flush_locked(state)

    def _stream_closed(self, state: _StreamState) -> None:
        with self._cond:
            self._feeds.pop(state.stream_id, None)
            capture = self._captures.pop(state.stream_id, None)
            if capture is not None:
                self._capture_totals[0] += int(capture.blocks_dropped)
                self._capture_totals[1] += int(capture.input_overflows)

    # -- worker side --------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            if not self._cuda:
                torch = sys.modules.get("torch")
                if torch is not None:
                    torch.set_num_threads(self.config.threads_per_worker)
                # backends with their own thread pools (ONNX Runtime) size it here
                set_threads = getattr(self.model, "set_worker_threads", None)
                if callable(set_threads):
                    set_threads(self.config.threads_per_worker)
            while True:
                with self._cond:
                    while not self._rotation and not self._closing:
                        self._cond.wait()
                    if self._closing:
                        return
                    batch = self._take_locked()
                    self._in_flight += len(batch)
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

    def _abandon(self, batch: list[_Job]) -> None:
        """Mark the batch's still-pending windows dropped (counted) so their streams move on."""
        for job in batch:
            if job.slot.state is _State.PENDING:
                with self._cond:
                    self._count_drops_locked(1)
                self._complete(job, None)

    def _take_locked(self) -> list[_Job]:
        """Up to ``max_batch`` jobs, one per stream per turn (round-robin across streams)."""
        batch: list[_Job] = []
        while self._rotation and len(batch) < self.max_batch:
            state = self._rotation.popleft()
            batch.append(state.jobs.popleft())
            if state.jobs:
                self._rotation.append(state)
            else:
                state.scheduled = False
        self._cond.notify_all()  # room in a queue: wake a blocked feed
        return batch

    def _run(self, batch: list[_Job]) -> None:
        now = time.monotonic()
        live: list[_Job] = []
        for job in batch:
            if self.config.realtime and now - job.submitted > self.config.max_lag_s:
                with self._cond:
                    self._count_drops_locked(1)
                logger.debug("stream %s: dropped stale window %.2f-%.2f s",
                             job.stream.stream_id, job.window.start_s, job.window.end_s)
                self._complete(job, None)
            else:
                live.append(job)
        # Batch only windows of equal length (full windows); flush windows may be shorter.
        groups: dict[int, list[_Job]] = {}
        for job in live:
            groups.setdefault(job.window.samples.size, []).append(job)
        for jobs in groups.values():
            probs = self._predict(jobs)
            with self._cond:
                if probs is None:
                    self._count_drops_locked(len(jobs))
                else:
                    self._windows_done += len(jobs)
            for i, job in enumerate(jobs):
                self._complete(job, None if probs is None else probs[i])

    def _predict(self, jobs: list[_Job]) -> NDArray[np.float32] | None:
        windows = np.stack([job.window.samples for job in jobs])
        try:
            probs = np.asarray(self.model.predict_proba(windows), dtype=np.float32)
        except Exception:
            logger.exception("model failed on %s window(s); skipping them", len(jobs))
            return None
        if probs.shape != (len(jobs), len(self.labels)) or not np.all(np.isfinite(probs)):
            logger.error("model returned shape %s (expected %s); skipping the windows",
                         probs.shape, (len(jobs), len(self.labels)))
            return None
        return probs

    # -- outbox (any thread) ------------------------------------------------------------------

    def _complete(self, job: _Job, probs: NDArray[np.float32] | None) -> None:
        state = job.stream
        with state.lock:
            job.slot.probs = probs
            job.slot.state = _State.DROPPED if probs is None else _State.DONE
            self._flush_locked(state)

    def _flush_locked(self, state: _StreamState) -> None:
        """Deliver the outbox's finished prefix, in order (caller holds ``state.lock``)."""
        while state.outbox and state.outbox[0].state is not _State.PENDING:
            slot = state.outbox.popleft()
            if slot.state is _State.READY:
                assert slot.event is not None
                if isinstance(slot.event, StreamClosed):
                    slot.event = dataclasses.replace(
                        slot.event, windows=state.seq, windows_dropped=state.dropped
                    )
                self._deliver(slot.event)
                if isinstance(slot.event, SpeechStart):
                    state.smoother.speech_start(slot.event.start_s)  # reset/decay over the gap
                if isinstance(slot.event, SpeechEnd):
                    state.smoother.speech_end(slot.event.end_s)
                    utterance = self._utterance(state, slot.event)
                    if utterance is not None:
                        self._deliver(utterance)
            elif slot.state is _State.DONE:
                assert slot.window is not None and slot.probs is not None
                state.segment_sum += slot.probs
                state.segment_windows += 1
                self._deliver(self._label(state, slot.window, slot.probs))
            else:
                state.segment_dropped += 1
                state.dropped += 1

    def _utterance(self, state: _StreamState, end: SpeechEnd) -> Utterance | None:
        """The closed segment's utterance (None when none of its windows was labelled)."""
        n, dropped = state.segment_windows, state.segment_dropped
        mean = state.segment_sum / max(n, 1)
        state.segment_sum = np.zeros_like(state.segment_sum)
        state.segment_windows = state.segment_dropped = 0
        if n == 0:
            return None
        top = int(np.argmax(mean))
        return Utterance(
            stream=state.stream_id,
            start_s=end.start_s,
            end_s=end.end_s,
            wall_time=time.time(),
            probabilities=tuple(float(p) for p in mean),
            label=state.labels[top],
            confidence=float(mean[top]),
            windows=n,
            windows_dropped=dropped,
        )

    def _label(self, state: _StreamState, window: SpeechWindow, probs: NDArray[np.float32]
               ) -> WindowLabel:
        smoothed = state.smoother.update(probs)
        top = int(np.argmax(probs))
        label = WindowLabel(
            stream=state.stream_id,
            seq=state.seq,
            start_s=window.start_s,
            end_s=window.end_s,
            wall_time=time.time(),
            probabilities=tuple(float(p) for p in probs),
            label=state.labels[top],
            confidence=float(probs[top]),
            smoothed_label=smoothed.label,
            smoothed_confidence=smoothed.confidence,
            smoothed_probabilities=smoothed.probabilities,
        )
        state.seq += 1
        logger.debug("stream %s: window %s %.2f-%.2f s %s (%.2f) smoothed %s",
                     state.stream_id, label.seq, label.start_s, label.end_s, label.label,
                     label.confidence, label.smoothed_label)
        return label

    def _deliver(self, event: Event) -> None:
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
        self, engine: Engine, state: _StreamState, sample_rate_hz: int, metadata: dict[str, str]
    ) -> None:
        cfg = engine.config
        self.stream_id = state.stream_id
        self.sample_rate_hz = sample_rate_hz
        self.metadata = metadata
        self._engine = engine
        self._state = state
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
            engine = self._engine
            engine._stream_closed(self._state)
            closed = StreamClosed(self.stream_id, self.time_s, time.time(), reason)
            engine._emit(self._state, closed)
        logger.info("stream %s closed (%s) at %.2f s", self.stream_id, reason, self.time_s)

    def _process(self, samples: NDArray[np.float32]) -> None:
        if samples.size == 0:
            return
        self._samples += samples.size
        self._handle(self._gate.push(samples))

    def _handle(self, items: list[GateItem]) -> None:
        engine, state = self._engine, self._state
        for item in items:
            if isinstance(item, GatedAudio):
                for window in self._windower.push(item.start_s, item.samples):
                    engine._submit(state, window)
            elif isinstance(item, GateOpened):
                engine._emit(state, SpeechStart(self.stream_id, item.start_s, time.time()))
            elif isinstance(item, GateClosed):
                for window in self._windower.end_segment():
                    engine._submit(state, window)
                engine._emit(
                    state, SpeechEnd(self.stream_id, item.start_s, item.end_s, time.time())
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
    if not np.all(np.isfinite(samples)):
        raise AudioError("audio block holds NaN or infinite values: only finite samples allowed")

