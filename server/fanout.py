"""Fan-out of encoded frames to WebSocket clients, plus the per-stream backlog (event loop only).

Every client gets its own :class:`ClientQueue`, bounded, newest wins: when it is full the
oldest frame is dropped and counted, so a slow or stalled client loses its own stale events but
never blocks the publisher (and so never the engine) or the other clients. Frames are encoded
once and shared by all queues.

:class:`Backlog` keeps the last few events of each stream (windows and speech start/end, plus the
stream's close if it ended) so a client that connects mid-stream starts with a filled chart. It
is bounded per stream and in the number of ended streams it remembers.

Nothing here is thread-safe: all methods run on the server's event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Literal

from client.messages import stream_wanted

__all__ = [
    "Backlog",
    "BacklogRole",
    "ClientQueue",
    "FanOut",
    "Frame",
    "QueueClosed",
]


class QueueClosed(Exception):
    """The client queue was closed (the server is shutting down or the client left)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded message and the stream it belongs to (``None``: not stream-specific)."""

    text: str
    stream: str | None = None


class ClientQueue:
    """A bounded queue of frames for one client; full -> drop the oldest and count it."""

    def __init__(self, maxsize: int, *, streams: Collection[str] = ()) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.dropped = 0
        self.streams: frozenset[str] = frozenset(streams)  # empty = every stream
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    def wants(self, stream: str | None) -> bool:
        """Whether this client's subscription covers ``stream`` (``None`` = every client).

        Entries ending in ``/`` are prefixes (``call-42/`` covers ``call-42/agent``).
        """
        return stream_wanted(stream, self.streams)

    def subscribe(self, streams: Collection[str]) -> None:
        """Change the subscription; queued frames of streams no longer wanted are skipped."""
        self.streams = frozenset(streams)

    def put(self, frame: Frame) -> bool:
        """Enqueue without waiting; returns False when an older frame had to be dropped."""
        if self._closed:
            return True
        kept = True
        if len(self._frames) >= self.maxsize:
            self._frames.popleft()
            self.dropped += 1
            kept = False
        self._frames.append(frame)
        self._ready.set()
        return kept

    async def get(self) -> str:
        """The oldest wanted frame's text, waiting for one; QueueClosed once closed and empty."""
        while True:
            while not self._frames:
                if self._closed:
                    raise QueueClosed
                self._ready.clear()
                await self._ready.wait()
            frame = self._frames.popleft()
            if self.wants(frame.stream):
                return frame.text

    def close(self) -> None:
        """Wake the reader; frames already queued can still be read. Idempotent."""
        self._closed = True
        self._ready.set()


@dataclass(slots=True)
class _StreamBacklog:
    opened: tuple[int, str] | None
    events: deque[tuple[int, str]]
    closed: tuple[int, str] | None = None


BacklogRole = Literal["none", "open", "event", "close"]


@dataclass(slots=True)
class Backlog:
    """Recent events per stream, replayed to a client right after its hello.

    Per stream: its ``stream_open``, its last ``per_stream`` events (windows, speech start/end)
    and, once it ended, its ``stream_close``, so a replayed stream is always bracketed.
    Ended streams are kept until ``max_ended_streams`` newer ones have ended.
    """

    per_stream: int = 240
    max_ended_streams: int = 16
    _streams: OrderedDict[str, _StreamBacklog] = field(default_factory=OrderedDict)
    _ended: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if self.per_stream < 0:
            raise ValueError(f"per-stream backlog must be >= 0, got {self.per_stream}")
        if self.max_ended_streams < 0:
            raise ValueError(f"ended-stream backlog must be >= 0, got {self.max_ended_streams}")

    def open(self, stream: str, text: str) -> None:
        """A stream opened (a reopened stream starts afresh)."""
        self._ended.pop(stream, None)
        self._streams.pop(stream, None)
        self._streams[stream] = _StreamBacklog(
            (next(self._counter), text), deque(maxlen=self.per_stream)
        )

    def add(self, stream: str, text: str) -> None:
        """Remember one event of a stream."""
        entry = self._streams.get(stream)
        if entry is None or entry.closed is not None:
            entry = _StreamBacklog(None, deque(maxlen=self.per_stream))
            self._ended.pop(stream, None)
            self._streams[stream] = entry
        entry.events.append((next(self._counter), text))

    def end(self, stream: str, text: str) -> None:
        """A stream closed: keep it (with the close) among the last ended streams."""
        entry = self._streams.get(stream)
        if entry is None:
            return
        entry.closed = (next(self._counter), text)
        self._ended[stream] = None
        while len(self._ended) > self.max_ended_streams:
            old, _ = self._ended.popitem(last=False)
            self._streams.pop(old, None)

    def frames(self, streams: Collection[str] = ()) -> list[Frame]:
        """The backlog in original order, for ``streams`` (empty = all)."""
        runs = []
        for stream, entry in self._streams.items():
            if not stream_wanted(stream, frozenset(streams)):
                continue
            items = list(entry.events)
            if entry.opened is not None:
                items.insert(0, entry.opened)
            if entry.closed is not None:
                items.append(entry.closed)
            runs.append([(n, stream, text) for n, text in items])
        return [Frame(text, stream) for _, stream, text in heapq.merge(*runs)]


class FanOut:
    """Publishes frames to every connected client's queue (and keeps the backlog)."""

    def __init__(self, *, queue_size: int = 256, backlog: Backlog | None = None) -> None:
        if queue_size < 1:
            raise ValueError(f"client queue size must be >= 1, got {queue_size}")
        self.queue_size = queue_size
        self.backlog = backlog if backlog is not None else Backlog()
        self._clients: set[ClientQueue] = set()
        self._dropped_by_gone_clients = 0
        self._closed = False

    @property
    def clients(self) -> int:
        """How many clients are connected now."""
        return len(self._clients)

    @property
    def messages_dropped(self) -> int:
        """Frames dropped for slow clients since start (including clients that left)."""
        return self._dropped_by_gone_clients + sum(q.dropped for q in self._clients)

    def connect(self, *, streams: Collection[str] = ()) -> ClientQueue:
        """A new client: its queue, pre-filled with the backlog of the streams it wants.

        Taking the backlog and registering the queue happen without yielding to the loop, so the
        client sees every event exactly once: from the backlog or live.
        """
        queue = ClientQueue(self.queue_size, streams=streams)
        if self._closed:
            queue.close()
            return queue
        for frame in self.backlog.frames(streams):
            queue.put(frame)
        self._clients.add(queue)
        return queue

    def disconnect(self, queue: ClientQueue) -> None:
        """A client left; its drop count stays in the totals. Idempotent."""
        if queue in self._clients:
            self._clients.discard(queue)
            self._dropped_by_gone_clients += queue.dropped
        queue.close()

    def publish(self, frame: Frame, *, backlog: BacklogRole = "none") -> None:
        """Queue ``frame`` for every client that wants its stream; never waits.

        ``backlog`` says what the frame is to the backlog: a stream's ``open``, an ``event`` to
        remember, its ``close``, or ``none`` (stats: not replayed).
        """
        if self._closed:
            return
        if frame.stream is not None and backlog != "none" and self.backlog.per_stream > 0:
            if backlog == "open":
                self.backlog.open(frame.stream, frame.text)
            elif backlog == "close":
                self.backlog.end(frame.stream, frame.text)
            else:
                self.backlog.add(frame.stream, frame.text)
        for queue in self._clients:
            if queue.wants(frame.stream):
                queue.put(frame)

    def close(self) -> None:
        """Close every client queue (readers drain what is queued, then stop). Idempotent."""
        self._closed = True
        for queue in list(self._clients):
            queue.close()
