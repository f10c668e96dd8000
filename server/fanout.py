"""Fan-out of encoded frames to WebSocket clients, plus the per-stream backlog (event loop only).

Every client gets its own :class:`ClientQueue`, bounded, newest wins: when it is full the
oldest frame is dropped and counted, so a slow or stalled client loses its own stale events but
never blocks the publisher (and so never the engine) or the other clients. Frames are encoded
once (text and UTF-8 bytes) and shared by all queues.

Matching a frame to its clients is a lookup, not a scan: :class:`FanOut` indexes the queues by
subscription (everything; exact stream names; ``/``-terminated prefixes). A stream id has one
candidate prefix per ``/`` it contains, so publishing costs a few dict lookups plus one
``put`` per matching client, whatever the number and size of other clients' subscriptions.

:class:`Backlog` keeps the last few events of each stream (windows and speech start/end, plus the
stream's close if it ended) so a client that connects mid-stream starts with a filled chart. It
is bounded per stream and in the number of ended streams it remembers, and a replay is cut to a
frame budget (half the client queue) without ever cutting a stream's ``stream_open`` ...
``stream_close`` brackets: fewer events per stream first, then fewer (the oldest ended) streams.

Nothing here is thread-safe: all methods run on the server's event loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode

__all__ = [
    "Backlog",
    "BacklogRole",
    "ClientQueue",
    "FanOut",
    "Frame",
    "QueueClosed",
    "prefix_keys",
    "text_frame",
]


class QueueClosed(Exception):
    """The client queue was closed (the server is shutting down or the client left)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded message and the stream it belongs to (``None``: not stream-specific)."""

    text: str
    stream: str | None = None
    data: bytes = b""  # the text as UTF-8 (filled in when not given)
    wire: bytes = b""  # the whole WebSocket text frame, server side (see text_frame)

    def __post_init__(self) -> None:
        if not self.data and self.text:
            object.__setattr__(self, "data", self.text.encode())


def text_frame(data: bytes) -> bytes:
    """``data`` as one unmasked WebSocket text frame, the same bytes for every client.

    Valid for connections without extensions (the server turns compression off).
    """
    return WsFrame(Opcode.TEXT, data).serialize(mask=False)


def prefix_keys(stream: str) -> Iterator[str]:
    """The subscription prefixes that cover ``stream``: ``a/b/c`` -> ``a/``, ``a/b/``."""
    i = stream.find("/")
    while i >= 0:
        yield stream[: i + 1]
        i = stream.find("/", i + 1)


class _Subscription:
    """A client's subscription split for O(1) matching: exact names and ``/`` prefixes."""

    __slots__ = ("streams", "names", "prefixes")

    def __init__(self, streams: Collection[str]) -> None:
        self.streams: frozenset[str] = frozenset(streams)  # empty = every stream
        self.prefixes = frozenset(s for s in self.streams if s.endswith("/"))
        self.names = self.streams - self.prefixes

    def wants(self, stream: str | None) -> bool:
        if stream is None or not self.streams or stream in self.names:
            return True
        return bool(self.prefixes) and any(p in self.prefixes for p in prefix_keys(stream))


class _Totals:
    """Drop count shared by every queue of one fan-out (kept O(1) to read)."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = 0


class ClientQueue:
    """A bounded queue of frames for one client; full -> drop the oldest and count it.

    ``direct``, when its writer sets it, hands a frame straight to the connection while the
    queue is empty (returns False when the connection's buffer is full: then it is queued):
    a client that keeps up costs one write per frame, no task switch, so 1,000 clients do
    not make the loop (and the ingest readers on it) wait behind 1,000 writer wake-ups.
    """

    def __init__(
        self, maxsize: int, *, streams: Collection[str] = (), totals: _Totals | None = None
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.dropped = 0
        self._sub = _Subscription(streams)
        self._generation = 0  # bumped by subscribe(): frames queued before are re-checked
        self._frames: deque[tuple[Frame, int]] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._totals = totals
        self.direct: Callable[[Frame], bool] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def streams(self) -> frozenset[str]:
        """The subscription (empty = every stream)."""
        return self._sub.streams

    def wants(self, stream: str | None) -> bool:
        """Whether this client's subscription covers ``stream`` (``None`` = every client).

        Entries ending in ``/`` are prefixes (``call-42/`` covers ``call-42/agent``).
        """
        return self._sub.wants(stream)

    def subscribe(self, streams: Collection[str]) -> None:
        """Change the subscription; queued frames of streams no longer wanted are skipped.

        A queue registered with a :class:`FanOut` must change through
        :meth:`FanOut.subscribe`, which keeps the fan-out's index in step.
        """
        self._sub = _Subscription(streams)
        self._generation += 1

    def put(self, frame: Frame) -> bool:
        """Enqueue without waiting; returns False when an older frame had to be dropped."""
        if self._closed:
            return True
        direct = self.direct
        if direct is not None and not self._frames and direct(frame):
            return True  # in order: nothing older is waiting
        kept = True
        if len(self._frames) >= self.maxsize:
            self._frames.popleft()
            self.dropped += 1
            if self._totals is not None:
                self._totals.dropped += 1
            kept = False
        self._frames.append((frame, self._generation))
        self._ready.set()
        return kept

    async def next_frame(self) -> Frame:
        """The oldest wanted frame, waiting for one; QueueClosed once closed and empty."""
        while True:
            while not self._frames:
                if self._closed:
                    raise QueueClosed
                self._ready.clear()
                await self._ready.wait()
            frame, generation = self._frames.popleft()
            # matched at put time under the same subscription: no need to look again
            if generation == self._generation or self._sub.wants(frame.stream):
                return frame

    async def get(self) -> str:
        """The oldest wanted frame's text (see :meth:`next_frame`)."""
        return (await self.next_frame()).text

    def close(self) -> None:
        """Wake the reader; frames already queued can still be read. Idempotent."""
        self._closed = True
        self.direct = None
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

    def frames(self, streams: Collection[str] = (), *, limit: int | None = None) -> list[Frame]:
        """The backlog in original order, for ``streams`` (empty = all), at most ``limit``.

        Over ``limit`` the replay keeps every chosen stream's brackets and its most recent
        events: first the number of events per stream shrinks (the same cap for all), and when
        even the brackets do not fit, whole streams are left out, oldest ended ones first.
        """
        sub = _Subscription(streams)
        wanted = [(s, e) for s, e in self._streams.items() if sub.wants(s)]
        if limit is None:
            chosen = [(s, e, len(e.events)) for s, e in wanted]
        else:
            chosen = _fit(wanted, max(0, limit))
        runs = []
        for stream, entry, cap in chosen:
            items = list(entry.events)[len(entry.events) - cap:] if cap else []
            if entry.opened is not None:
                items.insert(0, entry.opened)
            if entry.closed is not None:
                items.append(entry.closed)
            runs.append([(n, stream, text) for n, text in items])
        return [Frame(text, stream) for _, stream, text in heapq.merge(*runs)]


def _fit(
    chosen: list[tuple[str, _StreamBacklog]], limit: int
) -> list[tuple[str, _StreamBacklog, int]]:
    """Streams and events per stream so that the replay holds at most ``limit`` frames."""

    def brackets(entry: _StreamBacklog) -> int:
        return (entry.opened is not None) + (entry.closed is not None)

    # leave out whole streams (oldest ended first, then oldest live) until the brackets fit,
    # keeping room for at least one event per stream that has any
    order = sorted(range(len(chosen)),
                   key=lambda i: (chosen[i][1].closed is None, _latest(chosen[i][1])))
    keep = set(range(len(chosen)))
    need = sum(brackets(e) + bool(e.events) for _, e in chosen)
    for i in order:
        if need <= limit:
            break
        keep.discard(i)
        entry = chosen[i][1]
        need -= brackets(entry) + bool(entry.events)
    kept = [chosen[i] for i in range(len(chosen)) if i in keep]
    room = limit - sum(brackets(e) for _, e in kept)
    lengths = [len(e.events) for _, e in kept]
    cap = _water_level(lengths, room)
    return [(s, e, min(len(e.events), cap)) for s, e in kept]


def _latest(entry: _StreamBacklog) -> int:
    """When the stream last changed (the backlog's running counter)."""
    if entry.closed is not None:
        return entry.closed[0]
    if entry.events:
        return entry.events[-1][0]
    return entry.opened[0] if entry.opened is not None else -1


def _water_level(lengths: Iterable[int], room: int) -> int:
    """The largest per-stream cap ``c`` with ``sum(min(n, c)) <= room``."""
    values = sorted(lengths)
    if not values or sum(values) <= room:
        return max(values, default=0)
    used, count = 0, len(values)
    for n in values:
        # every remaining stream (count of them) has at least n events
        if used + n * count > room:
            return (room - used) // count
        used += n
        count -= 1
    return values[-1]


class FanOut:
    """Publishes frames to every connected client's queue (and keeps the backlog).

    ``backlog_limit`` caps a new client's replay (default: half the client queue, so live
    frames arriving during the replay do not push replayed ones out).
    """

    def __init__(
        self,
        *,
        queue_size: int = 256,
        backlog: Backlog | None = None,
        backlog_limit: int | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"client queue size must be >= 1, got {queue_size}")
        self.queue_size = queue_size
        self.backlog = backlog if backlog is not None else Backlog()
        self.backlog_limit = max(1, queue_size // 2) if backlog_limit is None else backlog_limit
        self._clients: set[ClientQueue] = set()
        self._everything: set[ClientQueue] = set()
        self._by_name: dict[str, set[ClientQueue]] = {}
        self._by_prefix: dict[str, set[ClientQueue]] = {}
        self._totals = _Totals()
        self._closed = False

    @property
    def clients(self) -> int:
        """How many clients are connected now."""
        return len(self._clients)

    @property
    def messages_dropped(self) -> int:
        """Frames dropped for slow clients since start (including clients that left)."""
        return self._totals.dropped

    def connect(self, *, streams: Collection[str] = ()) -> ClientQueue:
        """A new client: its queue, pre-filled with the backlog of the streams it wants.

        Taking the backlog and registering the queue happen without yielding to the loop, so the
        client sees every event exactly once: from the backlog or live.
        """
        queue = ClientQueue(self.queue_size, streams=streams, totals=self._totals)
        if self._closed:
            queue.close()
            return queue
        for frame in self.backlog.frames(streams, limit=self.backlog_limit):
            queue.put(frame)
        self._clients.add(queue)
        self._index(queue)
        return queue

    def subscribe(self, queue: ClientQueue, streams: Collection[str]) -> None:
        """Change a connected client's subscription (queue and index together)."""
        registered = queue in self._clients
        if registered:
            self._unindex(queue)
        queue.subscribe(streams)
        if registered:
            self._index(queue)

    def disconnect(self, queue: ClientQueue) -> None:
        """A client left; its drop count stays in the totals. Idempotent."""
        if queue in self._clients:
            self._clients.discard(queue)
            self._unindex(queue)
        queue.close()

    def publish(self, frame: Frame, *, backlog: BacklogRole = "none") -> None:
        """Queue ``frame`` for every client that wants its stream; never waits.

        ``backlog`` says what the frame is to the backlog: a stream's ``open``, an ``event`` to
        remember, its ``close``, or ``none`` (stats: not replayed).
        """
        if self._closed:
            return
        stream = frame.stream
        if stream is not None and backlog != "none" and self.backlog.per_stream > 0:
            if backlog == "open":
                self.backlog.open(stream, frame.text)
            elif backlog == "close":
                self.backlog.end(stream, frame.text)
            else:
                self.backlog.add(stream, frame.text)
        if stream is None:
            for queue in self._clients:
                queue.put(frame)
            return
        for queue in self._everything:
            queue.put(frame)
        named = self._by_name.get(stream)
        matched: set[ClientQueue] | None = set(named) if named else None
        if self._by_prefix:
            for key in prefix_keys(stream):
                more = self._by_prefix.get(key)
                if more:
                    if matched is None:
                        matched = set(more)
                    else:
                        matched |= more
        if matched:
            for queue in matched:
                queue.put(frame)

    def close(self) -> None:
        """Close every client queue (readers drain what is queued, then stop). Idempotent."""
        self._closed = True
        for queue in list(self._clients):
            queue.close()

    # -- the subscription index ---------------------------------------------------------------

    def _index(self, queue: ClientQueue) -> None:
        sub = queue._sub
        if not sub.streams:
            self._everything.add(queue)
            return
        for name in sub.names:
            self._by_name.setdefault(name, set()).add(queue)
        for prefix in sub.prefixes:
            self._by_prefix.setdefault(prefix, set()).add(queue)

    def _unindex(self, queue: ClientQueue) -> None:
        sub = queue._sub
        self._everything.discard(queue)
        for table, keys in ((self._by_name, sub.names), (self._by_prefix, sub.prefixes)):
            for key in keys:
                members = table.get(key)
                if members is not None:
                    members.discard(queue)
                    if not members:
                        del table[key]
