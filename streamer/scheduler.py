"""Which queued window the model runs next (pure: values in, values out; no threads or clocks).

The engine calls it under its condition lock, from a feeding thread (``push``) or an inference
worker (``take``); it holds no locks itself and reads no clock: callers pass ``now_s``, a
monotonic time in seconds, the same clock as each window's ``submitted_s``.

Rules (per stream, at most ``queue_windows`` waiting):

- Round-robin: ``take`` hands out one window per stream per turn, in the order streams got
  their first waiting window, up to ``max_batch`` windows in all. A stream with a backlog does
  not starve another.
- ``realtime=True`` (live): a push to a full queue evicts that stream's oldest window
  (returned to the caller, counted as ``queue_full``); a taken window older than ``max_lag_s``
  is stale (returned apart from the ready ones, counted as ``stale``), not run.
- ``realtime=False`` (``analyze``): nothing is dropped; the caller waits for :meth:`has_room`
  before pushing (a push to a full queue is an error).
- ``clear`` (engine shutdown) hands back every window still waiting, counted as ``cleared``.
- Ready windows are grouped by length, so one model call gets windows of one shape: full
  windows batch together, a segment's shorter flush window goes in its own group.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from streamer.windows import SpeechWindow

__all__ = ["DropCounts", "QueuedWindow", "RoundRobinWindowScheduler", "TakenWindows"]

_K = TypeVar("_K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class QueuedWindow(Generic[_K]):
    """A window waiting for the model: its stream's key, the caller's ticket, when it came."""

    stream: _K  # the queue it waits in (the engine passes its per-stream object)
    ticket: int  # the caller's handle for the result (the stream outbox's slot)
    window: SpeechWindow
    submitted_s: float  # monotonic seconds, the clock ``take(now_s)`` is given


@dataclass(frozen=True, slots=True)
class TakenWindows(Generic[_K]):
    """What one ``take`` hands a worker: stale windows to drop and same-length groups to run."""

    stale: tuple[QueuedWindow[_K], ...]
    groups: tuple[tuple[QueuedWindow[_K], ...], ...]

    @property
    def windows(self) -> tuple[QueuedWindow[_K], ...]:
        """Every window taken (stale first, then the groups in order)."""
        return self.stale + tuple(job for group in self.groups for job in group)

    def __len__(self) -> int:
        return len(self.stale) + sum(len(group) for group in self.groups)


@dataclass(frozen=True, slots=True)
class DropCounts:
    """Windows the scheduler dropped so far, by rule."""

    queue_full: int = 0  # evicted by a newer window (realtime)
    stale: int = 0  # older than max_lag_s when taken (realtime)
    cleared: int = 0  # still waiting at shutdown

    @property
    def total(self) -> int:
        return self.queue_full + self.stale + self.cleared


class RoundRobinWindowScheduler(Generic[_K]):
    """Bounded per-stream window queues served round-robin; see the module docstring."""

    def __init__(
        self, *, queue_windows: int, max_batch: int, realtime: bool, max_lag_s: float
    ) -> None:
        if queue_windows < 1:
            raise ValueError(f"queue_windows must be >= 1, got {queue_windows!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        if not max_lag_s > 0.0:
            raise ValueError(f"max_lag_s must be > 0 s, got {max_lag_s!r}")
        self.queue_windows = queue_windows
        self.max_batch = max_batch
        self.realtime = realtime
        self.max_lag_s = max_lag_s
        # a stream is in _queues (and once in _rotation) exactly while it has waiting windows
        self._queues: dict[_K, deque[QueuedWindow[_K]]] = {}
        self._rotation: deque[_K] = deque()
        self._queued = 0
        self._drops = DropCounts()

    @property
    def queued(self) -> int:
        """Windows waiting, all streams."""
        return self._queued

    @property
    def drops(self) -> DropCounts:
        """Windows dropped so far, by rule."""
        return self._drops

    def has_room(self, stream: _K) -> bool:
        """True when ``stream``'s queue can take a window without evicting one."""
        queue = self._queues.get(stream)
        return queue is None or len(queue) < self.queue_windows

    def push(self, job: QueuedWindow[_K]) -> QueuedWindow[_K] | None:
        """Queue ``job``; return the window it evicted (realtime, queue full), else None."""
        queue = self._queues.get(job.stream)
        if queue is None:
            queue = self._queues[job.stream] = deque()
            self._rotation.append(job.stream)
        evicted = None
        if len(queue) >= self.queue_windows:
            if not self.realtime:
                raise ValueError(
                    f"queue of {job.stream!r} is full ({self.queue_windows} windows): "
                    "wait for has_room when not realtime"
                )
            evicted = queue.popleft()
            self._count(queue_full=1)
        else:
            self._queued += 1
        queue.append(job)
        return evicted

    def take(self, now_s: float) -> TakenWindows[_K]:
        """Up to ``max_batch`` windows, one per stream per turn; stale ones apart (realtime)."""
        taken: list[QueuedWindow[_K]] = []
        while self._rotation and len(taken) < self.max_batch:
            stream = self._rotation.popleft()
            queue = self._queues[stream]
            taken.append(queue.popleft())
            if queue:
                self._rotation.append(stream)
            else:
                del self._queues[stream]
        self._queued -= len(taken)
        stale: list[QueuedWindow[_K]] = []
        groups: dict[int, list[QueuedWindow[_K]]] = {}  # samples per window -> windows
        for job in taken:
            if self.realtime and now_s - job.submitted_s > self.max_lag_s:
                stale.append(job)
            else:
                groups.setdefault(job.window.samples.size, []).append(job)
        self._count(stale=len(stale))
        return TakenWindows(tuple(stale), tuple(tuple(group) for group in groups.values()))

    def oldest_submitted_s(self) -> float | None:
        """When the oldest waiting window was submitted (None when nothing waits)."""
        return min((queue[0].submitted_s for queue in self._queues.values()), default=None)

    def clear(self) -> list[QueuedWindow[_K]]:
        """Remove and return every waiting window (round-robin order of streams, then age)."""
        left = [job for stream in self._rotation for job in self._queues[stream]]
        self._queues.clear()
        self._rotation.clear()
        self._queued = 0
        self._count(cleared=len(left))
        return left

    def _count(self, *, queue_full: int = 0, stale: int = 0, cleared: int = 0) -> None:
        d = self._drops
        self._drops = DropCounts(
            d.queue_full + queue_full, d.stale + stale, d.cleared + cleared)
