"""The live pushed calls of one server, shared by ``/ingest`` and every connector (event loop).

A telephony platform's call becomes a :class:`PlatformCall`: one engine stream per party
(``<call id>/agent``, ``<call id>/customer``, or whatever roles the connector names), each with
its own VAD, windows, smoothing, events and timeline, and the platform's call id and custom
parameters in each stream's ``stream_open`` metadata. The :class:`CallDesk` holds what is
shared across calls: the live call ids (a second call with a live id is refused), the
``max_calls`` limit and the ``max_call_s`` length limit of :class:`~server.config.IngestConfig`
(the same limits as ``/ingest``, counted in the same ``stats.refused`` counters).

Everything here is platform-independent: a connector parses its platform's messages and calls
:meth:`CallDesk.open`, :meth:`PlatformCall.feed` and :meth:`PlatformCall.close`; a refusal is a
:class:`CallRefused` whose ``code`` the connector maps onto what its platform expects.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
from numpy.typing import NDArray

from server.config import IngestConfig
from server.limits import ServerCounters
from streamer.engine import Engine, StreamFeed
from streamer.errors import StreamerError

__all__ = [
    "MAX_METADATA_CHARS",
    "MAX_METADATA_KEYS",
    "CallDesk",
    "CallRefused",
    "HandlerTasks",
    "PlatformCall",
    "bounded_metadata",
    "call_id_ok",
]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}")
_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: most metadata keys a platform's parameters may add to a stream_open
MAX_METADATA_KEYS = 32
#: longest metadata value kept (longer ones are cut, counted)
MAX_METADATA_CHARS = 256


class CallRefused(Exception):
    """A call (or a frame of it) the server will not take; ``code`` names the case.

    Codes: ``duplicate_stream``, ``too_many_calls``, ``call_too_long``, ``shutting_down``,
    ``bad_call_id``, ``bad_audio``, ``call_closed`` (audio for a call or role already closed).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def call_id_ok(call_id: str) -> bool:
    """Whether ``call_id`` may name a call (letters, digits, ``_.:@+-``; at most 128)."""
    return isinstance(call_id, str) and _ID.fullmatch(call_id) is not None


def bounded_metadata(
    items: Iterable[tuple[object, object]], *, prefix: str = ""
) -> tuple[dict[str, str], int]:
    """A platform's parameters as stream metadata: ``(kept, dropped)``.

    Keeps at most :data:`MAX_METADATA_KEYS` entries whose key (with ``prefix``) is a plain
    name, values as strings cut to :data:`MAX_METADATA_CHARS`; ``dropped`` counts the entries
    left out or cut, so the connector can count and log them instead of losing them silently.
    """
    kept: dict[str, str] = {}
    dropped = 0
    for key, value in items:
        name = f"{prefix}{key}"
        if len(kept) >= MAX_METADATA_KEYS or not isinstance(key, str) or not _KEY.fullmatch(name):
            dropped += 1
            continue
        text = value if isinstance(value, str) else str(value)
        if len(text) > MAX_METADATA_CHARS:
            text = text[:MAX_METADATA_CHARS]
            dropped += 1
        kept[name] = text
    return kept, dropped


class PlatformCall:
    """One live call: an engine stream per role, fed as the platform's audio comes (loop).

    ``feed(role, samples)`` takes mono float32 in [-1, 1] at ``sample_rate_hz``; with a
    non-realtime engine (backpressure) the feed runs in a worker thread so the loop never
    blocks. Past ``max_call_s`` of audio on any role :class:`CallRefused` ``call_too_long``
    (counted in ``stats.refused.call_length``). ``close(reason)`` closes every stream with that
    ``stream_close`` reason (``end``, ``disconnected``, ``idle_timeout``, ``max_length``,
    ``error``, ``shutdown``) and frees the call id; it is idempotent. Where each party comes on
    a connection of its own (AudioSocket), ``close_role(role, reason)`` ends that party's
    stream alone; the call and its id stay live until ``close``.
    """

    def __init__(
        self,
        desk: CallDesk,
        call_id: str,
        feeds: Mapping[str, StreamFeed],
        sample_rate_hz: int,
    ) -> None:
        self.desk = desk
        self.call_id = call_id
        self.feeds = dict(feeds)
        self.sample_rate_hz = sample_rate_hz
        self.samples = dict.fromkeys(self.feeds, 0)
        self._max_samples = int(desk.config.max_call_s * sample_rate_hz)
        self.closed = False

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.feeds)

    @property
    def stream_ids(self) -> tuple[str, ...]:
        return tuple(feed.stream_id for feed in self.feeds.values())

    async def feed(self, role: str, samples: NDArray[np.float32]) -> None:
        """Feed one role's block (mono float32); raises CallRefused past the length limit."""
        await self.feed_many({role: samples})

    async def feed_many(self, blocks: Mapping[str, NDArray[np.float32]]) -> None:
        """Feed several roles' blocks of the same moment (a stereo frame split by channel)."""
        if self.closed:
            raise CallRefused("call_closed", f"call {self.call_id!r} is closed")
        for role, samples in blocks.items():
            if role not in self.feeds:
                raise CallRefused("bad_audio", f"call {self.call_id!r} has no role {role!r}")
            if self.feeds[role].closed:
                raise CallRefused("call_closed", f"{self.call_id}/{role} is closed")
            total = self.samples[role] + len(samples)
            if total > self._max_samples:
                self.desk.counters.refuse("call_length")
                raise CallRefused(
                    "call_too_long", f"the call passed {self.desk.config.max_call_s:g} s of "
                    "audio (--ingest-max-call-s); start a new call to go on")
            self.samples[role] = total
        pairs = [(self.feeds[role], samples) for role, samples in blocks.items() if len(samples)]
        if not pairs:
            return
        try:
            if self.desk.engine.config.realtime:
                _feed_pairs(pairs)
            else:  # backpressure: feeding may wait for the inference queue
                await asyncio.to_thread(_feed_pairs, pairs)
        except StreamerError as exc:
            raise CallRefused("bad_audio", str(exc)) from exc

    async def close_role(self, role: str, reason: str) -> None:
        """Close one role's stream with ``reason``; the call stays live. Idempotent."""
        await self._close_feed(self.feeds[role], reason)

    async def close(self, reason: str) -> None:
        """Close every stream of the call with ``reason``; frees the call id. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            for feed in self.feeds.values():
                await self._close_feed(feed, reason)
        finally:
            self.desk.release(self.call_id)

    async def _close_feed(self, feed: StreamFeed, reason: str) -> None:
        if feed.closed:
            return
        if self.desk.engine.config.realtime:
            feed.close(reason=reason)
        else:  # the flush may wait for the inference queue: not on the loop
            await asyncio.to_thread(feed.close, reason)


class CallDesk:
    """The live call ids and the call limits of one server, shared by every push path (loop).

    ``reserve``/``release`` take and free a call id under the ``max_calls`` limit (``/ingest``
    uses them directly); ``open`` reserves and opens one engine stream per role.
    """

    def __init__(self, engine: Engine, config: IngestConfig, counters: ServerCounters) -> None:
        self.engine = engine
        self.config = config
        self.counters = counters
        self._live: set[str] = set()
        self.closing = False

    @property
    def live(self) -> int:
        """Calls live now, over every push path."""
        return len(self._live)

    def is_live(self, call_id: str) -> bool:
        return call_id in self._live

    def reserve(self, call_id: str, stream_ids: Sequence[str] = ()) -> None:
        """Take ``call_id``; CallRefused when it is live, the server is full or closing."""
        if self.closing:
            raise CallRefused("shutting_down", "the server is shutting down")
        if not call_id_ok(call_id):
            raise CallRefused(
                "bad_call_id", f"call id {str(call_id)[:64]!r} is not 1-128 letters, digits "
                "or _.:@+-")
        if call_id in self._live or set(stream_ids) & set(self.engine.stream_ids):
            raise CallRefused("duplicate_stream",
                              f"stream {call_id!r} is already live; use another id")
        if len(self._live) >= self.config.max_calls:
            self.counters.refuse("ingest_calls")
            raise CallRefused(
                "too_many_calls", f"{len(self._live)} calls are live, the most this server "
                f"takes (--max-ingest-calls {self.config.max_calls}); try again later")
        self._live.add(call_id)

    def release(self, call_id: str) -> None:
        """Free a call id taken by :meth:`reserve` (no error when it is not taken)."""
        self._live.discard(call_id)

    def open(
        self,
        call_id: str,
        roles: Sequence[str],
        *,
        sample_rate_hz: int,
        source: str,
        metadata: Mapping[str, str] | None = None,
    ) -> PlatformCall:
        """Reserve ``call_id`` and open ``<call id>/<role>`` for each role.

        ``metadata`` (a platform's parameters, see :func:`bounded_metadata`) goes into every
        stream's ``stream_open``; the server's own keys (``source``, ``call``, ``role``,
        ``channel``, ``channels``) come last and win.
        """
        if len(set(roles)) != len(roles) or not roles:
            raise CallRefused("bad_audio", f"roles must be distinct and not empty, got {roles!r}")
        streams = [f"{call_id}/{role}" for role in roles]
        self.reserve(call_id, streams)
        feeds: dict[str, StreamFeed] = {}
        try:
            for channel, (role, stream) in enumerate(zip(roles, streams, strict=True)):
                feeds[role] = self.engine.open_stream(
                    stream, sample_rate_hz=sample_rate_hz,
                    metadata={**(metadata or {}), "source": source, "call": call_id,
                              "role": role, "channel": str(channel),
                              "channels": str(len(roles))},
                )
        except StreamerError as exc:
            for feed in feeds.values():
                feed.close(reason="error")
            self.release(call_id)
            raise CallRefused("bad_audio", str(exc)) from exc
        return PlatformCall(self, call_id, feeds, sample_rate_hz)


class HandlerTasks:
    """The live handler tasks of one endpoint, so that a shutdown can end them all (loop).

    A handler runs inside ``with tasks.track():``; ``end_all(timeout_s)`` sets ``closing``
    (new connections are then turned away by their handler), cancels every tracked task and
    waits for them up to ``timeout_s``. Shared by ``/ingest`` and every connector.
    """

    def __init__(self) -> None:
        self.closing = False
        self._tasks: set[asyncio.Task[object]] = set()

    @contextmanager
    def track(self) -> Iterator[None]:
        """Track the current task for the duration of the block."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    async def end_all(self, timeout_s: float) -> None:
        """Cancel every tracked task and wait for them up to ``timeout_s``; sets ``closing``."""
        self.closing = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)


def _feed_pairs(pairs: Sequence[tuple[StreamFeed, NDArray[np.float32]]]) -> None:
    for feed, samples in pairs:
        feed.feed(samples)
