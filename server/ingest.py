"""``WS /ingest``: pushed call audio into engine streams, one per channel (event loop).

Protocol (see ``docs/protocol.md``): the sender's first frame is an ``ingest_start`` JSON text
frame; the server answers ``ingest_ack`` (or ``error`` and a close); then binary frames of
interleaved little-endian samples; an ``ingest_end`` text frame (or the connection closing)
ends the call. Channel ``i`` feeds the engine stream ``<call>/<role i>`` (``<call>/ch<i>``
without roles), each with its own VAD, windows, smoothing, events and timeline.

The pure parts (:func:`check_start`, :func:`decode_audio`) validate and convert; the handler
(:class:`IngestEndpoint`) is a thin adapter. A rejected sender gets one ``error`` frame (its
``code`` names the case) and a close code: 1008 for protocol order (audio before start, a
second start, a duplicate live call id, an idle sender), 1003 for data the server will not
take (bad start fields, unsupported format/rate/channels, frames that are not whole sample
frames, non-finite floats), 1009 for a frame over ``max_frame_bytes``; limits (of
:class:`~server.config.IngestConfig`): ``too_many_calls`` (1013, ``max_calls`` live already)
and ``call_too_long`` (1008, more than ``max_call_s`` seconds of audio), each counted in
``stats.refused``. The formats, rates and channel counts allowed are those of
:mod:`streamer.protocol.limits`. Only that call ends; whatever it produced is already in the
store. Closes: 1000 after ``ingest_end``, 1001 at server shutdown. ``stream_close.reason``:
``end`` (ingest_end or a clean close), ``disconnected`` (the connection dropped),
``idle_timeout``, ``max_length`` (the call reached ``max_call_s``), ``error`` (rejected
mid-call), ``shutdown``.

Log lines a sender causes go through a :class:`~server.limits.ClientLog` (per address, the
rest counted). Anyone allowed to push may take a call id that is not live yet; the real sender
then gets ``duplicate_stream`` (see docs/protocol.md: give pushing senders their own token).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from server.config import IngestConfig
from server.connectors.calls import CallDesk, CallRefused, HandlerTasks
from server.limits import ClientLog, ServerCounters, address_of
from streamer.audio import f32le_to_float32, s16le_to_float32
from streamer.engine import Engine, StreamFeed
from streamer.errors import StreamerError
from streamer.protocol.limits import (
    INGEST_BYTES_PER_SAMPLE,
    INGEST_FORMATS,
    MAX_INGEST_CHANNELS,
    MAX_INGEST_RATE_HZ,
    MIN_INGEST_RATE_HZ,
)
from streamer.protocol.messages import (
    ErrorMessage,
    IngestAck,
    IngestEnd,
    IngestStart,
    MessageError,
    decode,
    encode,
)

__all__ = [
    "RESERVED_METADATA",
    "IdleWatch",
    "IngestEndpoint",
    "IngestRejected",
    "IngestSpec",
    "check_start",
    "decode_audio",
    "frame_waiting",
]

logger = logging.getLogger(__name__)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}")
_MAX_METADATA = 32
_MAX_METADATA_CHARS = 256
#: metadata keys the server sets on each channel's stream_open (a sender's own keys may not)
RESERVED_METADATA = ("source", "call", "role", "channel", "channels", "format")


class IngestRejected(Exception):
    """A sender's frame the server refuses: ``code`` for the error frame, ``close`` code."""

    def __init__(self, code: str, message: str, close: int) -> None:
        super().__init__(message)
        self.code = code
        self.close = close


@dataclass(frozen=True, slots=True)
class IngestSpec:
    """A validated ``ingest_start``: what the binary frames hold and where they go."""

    call: str
    sample_rate_hz: int
    channels: int
    format: str
    streams: tuple[str, ...]  # engine stream id per channel
    roles: tuple[str, ...]  # role per channel ("ch0", "ch1" without roles)
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (all channels)."""
        return self.channels * INGEST_BYTES_PER_SAMPLE[self.format]

    def stream_metadata(self, channel: int) -> dict[str, str]:
        """The stream_open metadata of one channel: the sender's, then ours."""
        return {
            **self.metadata,
            "source": "ingest",
            "call": self.call,
            "role": self.roles[channel],
            "channel": str(channel),
            "channels": str(self.channels),
            "format": self.format,
        }


def _unsupported(code: str, message: str) -> IngestRejected:
    return IngestRejected(code, message, CloseCode.UNSUPPORTED_DATA)


def check_start(start: IngestStart) -> IngestSpec:
    """Validate an ``ingest_start``; IngestRejected names the bad value and the allowed ones."""
    if not _ID.fullmatch(start.stream):
        raise _unsupported(
            "bad_stream_id",
            f"stream id {start.stream!r} not allowed: 1-128 characters, letters, digits and "
            "_ . : @ + - (no '/': the server appends '/<role>')",
        )
    _check_audio(start)
    roles = _check_roles(start)
    metadata = _check_metadata(start)
    return IngestSpec(
        call=start.stream,
        sample_rate_hz=start.sample_rate_hz,
        channels=start.channels,
        format=start.format,
        streams=tuple(f"{start.stream}/{role}" for role in roles),
        roles=roles,
        metadata=metadata,
    )


def _check_audio(start: IngestStart) -> None:
    """The sample format, rate and channel count: what streamer.protocol.limits allows."""
    if start.format not in INGEST_FORMATS:
        raise _unsupported(
            "unsupported_format",
            f"unsupported format {start.format!r}: allowed {', '.join(INGEST_FORMATS)}",
        )
    if not MIN_INGEST_RATE_HZ <= start.sample_rate_hz <= MAX_INGEST_RATE_HZ:
        raise _unsupported(
            "unsupported_rate",
            f"unsupported sample_rate_hz {start.sample_rate_hz}: allowed {MIN_INGEST_RATE_HZ}.."
            f"{MAX_INGEST_RATE_HZ}",
        )
    if not 1 <= start.channels <= MAX_INGEST_CHANNELS:
        raise _unsupported(
            "unsupported_channels",
            f"unsupported channels {start.channels}: allowed 1..{MAX_INGEST_CHANNELS}",
        )


def _check_roles(start: IngestStart) -> tuple[str, ...]:
    """One distinct role id per channel; ``ch0``, ``ch1`` ... when the sender gives none."""
    roles = start.roles
    if not roles:
        return tuple(f"ch{i}" for i in range(start.channels))
    if len(roles) != start.channels:
        raise _unsupported(
            "bad_roles",
            f"{len(roles)} role(s) {list(roles)} for {start.channels} channel(s): give one "
            "role per channel or none",
        )
    if len(set(roles)) != len(roles) or not all(_ID.fullmatch(r) for r in roles):
        raise _unsupported(
            "bad_roles",
            f"roles {list(roles)} not allowed: distinct ids of letters, digits, _ . : @ + -",
        )
    return tuple(roles)


def _check_metadata(start: IngestStart) -> dict[str, str]:
    """The sender's metadata: bounded in size, and none of the keys the server sets."""
    metadata = dict(start.metadata)
    if len(metadata) > _MAX_METADATA or any(
        len(k) > _MAX_METADATA_CHARS or len(v) > _MAX_METADATA_CHARS for k, v in metadata.items()
    ):
        raise _unsupported(
            "bad_metadata",
            f"metadata too large: at most {_MAX_METADATA} entries of {_MAX_METADATA_CHARS} "
            "characters",
        )
    reserved = sorted(set(metadata) & set(RESERVED_METADATA))
    if reserved:
        raise _unsupported(
            "bad_metadata", f"metadata keys {reserved} are set by the server; use other names"
        )
    return metadata


def _check_frame_size(spec: IngestSpec, data: bytes) -> int:
    """The sample frames in one binary frame; IngestRejected when it is not whole frames."""
    frames, rest = divmod(len(data), spec.frame_bytes)
    if rest:
        raise _unsupported(
            "partial_frame",
            f"a binary frame of {len(data)} bytes is not a whole number of {spec.frame_bytes}-"
            f"byte sample frames ({spec.channels} channel(s) x {spec.format})",
        )
    return frames


def decode_audio(spec: IngestSpec, data: bytes) -> NDArray[np.float32]:
    """One binary frame -> float32 (frames, channels); IngestRejected for a bad frame."""
    _check_frame_size(spec, data)
    if spec.format == "s16le":
        samples = s16le_to_float32(data)  # scaled to [-1, 1)
    else:
        samples = f32le_to_float32(data)
        if not np.all(np.isfinite(samples)):
            raise _unsupported("bad_samples", "f32le samples must be finite (no NaN or inf)")
    return samples.reshape(-1, spec.channels)


@dataclass(slots=True)
class _Call:
    """What one ``/ingest`` connection has so far (its handler's own state, never shared)."""

    connection: ServerConnection
    address: str
    spec: IngestSpec | None = None
    feeds: list[StreamFeed] = field(default_factory=list)
    reason: str = "error"  # the stream_close reason if the call ended now
    reserved: bool = False  # whether the call id is taken on the desk

    @property
    def name(self) -> str:
        return self.spec.call if self.spec is not None else "(not started)"


class IngestEndpoint:
    """Serves ``/ingest`` connections into one engine. ``close()`` is idempotent.

    ``handle(connection)`` runs one call (the server's handler for that path); what a call has
    (its spec and feeds) lives in that handler, never here. Shared across calls: the live call
    ids (a second sender with a live id is refused) and the handler tasks (for shutdown). With
    a non-realtime engine feeding may block (backpressure), so it runs in a worker thread.
    """

    def __init__(
        self,
        engine: Engine,
        config: IngestConfig,
        *,
        log: ClientLog,
        counters: ServerCounters,
        shutdown_timeout_s: float = 5.0,
        desk: CallDesk | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        #: refusals and rate-limited log lines, shared with the server
        self.counters = counters
        self.log = log
        self.shutdown_timeout_s = shutdown_timeout_s
        #: the live call ids and call limits, shared with the connectors
        self.desk = desk if desk is not None else CallDesk(engine, config, counters)
        #: rejected senders by error code (``bad_format``, ``idle_timeout``, ...; /metrics)
        self.rejected: dict[str, int] = {}
        self._handlers = HandlerTasks()  # the connections' handler tasks, for shutdown

    async def close(self) -> None:
        """Close every ingest connection with 1001; their streams close with reason shutdown."""
        await self._handlers.end_all(self.shutdown_timeout_s)

    async def handle(self, connection: ServerConnection) -> None:
        """One pushed call, start to end (the connection's handler task)."""
        if self._handlers.closing:
            await connection.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        call = _Call(connection, address_of(connection.remote_address))
        with self._handlers.track():
            try:
                await self._serve(call)
            finally:
                await self._close_feeds(call.feeds, call.reason)
                if call.spec is not None and call.reserved:
                    self.desk.release(call.spec.call)

    async def _serve(self, call: _Call) -> None:
        """Run the call; every way it can end sets ``call.reason`` and closes the connection."""
        connection, peer = call.connection, call.connection.remote_address
        try:
            spec = await self._accept(call)
            call.reason = await self._receive(connection, spec, call.feeds)
            if call.reason == "end":
                await self._close_feeds(call.feeds, call.reason)
                call.feeds = []
                await connection.close(CloseCode.NORMAL_CLOSURE, "stream ended")
        except IngestRejected as exc:
            await self._reject(call, exc)
        except ConnectionClosed as exc:
            clean = exc.rcvd is not None and exc.rcvd.code in (
                CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY)
            call.reason = "end" if clean else "disconnected"
            if call.spec is not None:
                self.log.info(call.address, "ingest %s: sender closed (%s)", call.name,
                              call.reason)
        except asyncio.CancelledError:
            call.reason = "shutdown"
            await self._close_feeds(call.feeds, call.reason)
            call.feeds = []
            await connection.close(CloseCode.GOING_AWAY, "server shutting down")
            raise
        except Exception:
            logger.exception("ingest %s: handler failed; closing that call only",
                             call.spec.call if call.spec else peer)
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")

    async def _accept(self, call: _Call) -> IngestSpec:
        """Read and check ``ingest_start``, open the streams, answer ``ingest_ack``."""
        call.spec = spec = await self._start(call.connection)
        if self._handlers.closing:
            raise IngestRejected("shutting_down", "the server is shutting down",
                                 CloseCode.GOING_AWAY)
        try:
            self.desk.reserve(spec.call, spec.streams)
        except CallRefused as exc:
            close = _DESK_CLOSE.get(exc.code, CloseCode.POLICY_VIOLATION)
            raise IngestRejected(exc.code, str(exc), close) from exc
        call.reserved = True
        call.feeds = self._open(spec)
        config = self.config
        await call.connection.send(encode(IngestAck(
            stream=spec.call, streams=spec.streams,
            max_frame_bytes=config.max_frame_bytes, idle_timeout_s=config.idle_timeout_s,
        )))
        self.log.info(call.address, "ingest %s from %s: %s Hz, %s x %s -> %s", spec.call,
                      call.connection.remote_address, spec.sample_rate_hz, spec.channels,
                      spec.format, ", ".join(spec.streams))
        return spec

    async def _reject(self, call: _Call, exc: IngestRejected) -> None:
        """Count and log a refusal, send its ``error`` frame and close with its code."""
        call.reason = _CLOSE_REASONS.get(exc.code, "error")
        self.rejected[exc.code] = self.rejected.get(exc.code, 0) + 1
        if exc.code in _REFUSALS:
            self.counters.refuse(_REFUSALS[exc.code])
        self.log.warning(call.address, "ingest %s from %s rejected: %s (%s)", call.name,
                         call.connection.remote_address, exc, exc.code)
        try:
            await call.connection.send(encode(ErrorMessage(code=exc.code, message=str(exc))))
            await call.connection.close(exc.close, exc.code)
        except ConnectionClosed:
            pass

    async def _recv(
        self, connection: ServerConnection, idle: IdleWatch | None = None
    ) -> str | bytes:
        """The next frame; IngestRejected ``idle_timeout`` when none comes for the timeout.

        With ``idle`` (the call's watch, see :class:`IdleWatch`) a frame costs no timer;
        without, one ``asyncio.timeout`` (``ingest_start``). asyncio.timeout, not wait_for: no
        task per frame, so frames already received are read without going round the loop.
        recv is cancellation-safe: a timeout loses no frame (none had arrived).
        """
        if idle is not None:
            idle.last = idle.loop.time()
            idle.waiting = True
            try:
                return await connection.recv()
            except asyncio.CancelledError:
                if not idle.expired():
                    raise
            finally:
                idle.waiting = False
        else:
            try:
                async with asyncio.timeout(self.config.idle_timeout_s):
                    return await connection.recv()
            except TimeoutError:
                pass
        raise IngestRejected(
            "idle_timeout",
            f"no frame for {self.config.idle_timeout_s:g} s (--ingest-idle-timeout-s)",
            CloseCode.POLICY_VIOLATION,
        ) from None

    async def _start(self, connection: ServerConnection) -> IngestSpec:
        frame = await self._recv(connection)
        if isinstance(frame, bytes):
            raise IngestRejected(
                "audio_before_start", "audio before ingest_start: send ingest_start first",
                CloseCode.POLICY_VIOLATION,
            )
        try:
            message = decode(frame)
        except MessageError as exc:
            raise _unsupported(exc.code, f"bad ingest_start: {exc}") from exc
        if not isinstance(message, IngestStart):
            raise IngestRejected(
                "expected_start", f"the first frame must be ingest_start, not {message.TYPE!r}",
                CloseCode.POLICY_VIOLATION,
            )
        return check_start(message)

    def _open(self, spec: IngestSpec) -> list[StreamFeed]:
        feeds: list[StreamFeed] = []
        try:
            for channel, stream in enumerate(spec.streams):
                feeds.append(self.engine.open_stream(
                    stream, sample_rate_hz=spec.sample_rate_hz,
                    metadata=spec.stream_metadata(channel),
                ))
        except StreamerError as exc:
            for feed in feeds:
                feed.close(reason="error")
            raise IngestRejected("duplicate_stream", str(exc), CloseCode.POLICY_VIOLATION) from exc
        return feeds

    async def _receive(
        self, connection: ServerConnection, spec: IngestSpec, feeds: list[StreamFeed]
    ) -> str:
        """Feed frames until ingest_end ("end"); raises for anything else."""
        with IdleWatch(self.config.idle_timeout_s) as idle:
            return await self._receive_frames(connection, spec, feeds, idle)

    async def _receive_frames(
        self,
        connection: ServerConnection,
        spec: IngestSpec,
        feeds: list[StreamFeed],
        idle: IdleWatch,
    ) -> str:
        """Check each frame as it comes; feed the frames already received in one go.

        Frames that were waiting together (a busy loop reads several per socket read) are fed
        as one block: one decode-and-feed pass per burst instead of per frame, no waiting
        added. Whatever came before a rejected frame or the ``ingest_end`` is fed first, so
        the streams get exactly what they got frame by frame.
        """
        limit = self.config.max_frame_bytes
        max_frames = int(self.config.max_call_s * spec.sample_rate_hz)
        # s16le: every value is valid, so frames wait as bytes and are decoded together
        raw = spec.format == "s16le"
        received = 0
        pending: list[bytes | NDArray[np.float32]] = []
        while True:
            frame = await self._recv(connection, idle)
            try:
                if isinstance(frame, str):
                    await self._feed(spec, feeds, pending)  # the audio before it first
                    pending = []
                    return self._text_after_start(frame)
                if len(frame) > limit:
                    raise IngestRejected(
                        "frame_too_big",
                        f"binary frame of {len(frame)} bytes over the {limit}-byte limit "
                        "(--ingest-max-frame-bytes)",
                        CloseCode.MESSAGE_TOO_BIG,
                    )
                audio = frame if raw else decode_audio(spec, frame)
                count = _check_frame_size(spec, frame)
                if count == 0:
                    continue
                received += count
                if received > max_frames:
                    raise IngestRejected(
                        "call_too_long", f"the call passed {self.config.max_call_s:g} s of "
                        "audio (--ingest-max-call-s); start a new call to go on",
                        CloseCode.POLICY_VIOLATION,
                    )
                pending.append(audio)
            except IngestRejected:
                await self._feed(spec, feeds, pending)  # what came before it counts
                raise
            if not frame_waiting(connection):
                await self._feed(spec, feeds, pending)
                pending = []

    def _text_after_start(self, frame: str) -> str:
        """A text frame mid-call: ``ingest_end`` ends it ("end"); anything else is refused."""
        try:
            message = decode(frame)
        except MessageError as exc:
            raise IngestRejected(exc.code, str(exc), CloseCode.POLICY_VIOLATION) from exc
        if isinstance(message, IngestEnd):
            return "end"
        raise IngestRejected(
            "unexpected_type",
            f"after ingest_start only binary audio and ingest_end, not {message.TYPE!r}",
            CloseCode.POLICY_VIOLATION,
        )

    async def _feed(
        self, spec: IngestSpec, feeds: list[StreamFeed], blocks: list[bytes | NDArray[np.float32]]
    ) -> None:
        """Feed checked frames (s16le bytes, or decoded arrays), in order, to the streams."""
        if not blocks:
            return
        raw = [block for block in blocks if isinstance(block, bytes)]
        if raw:  # all of them (s16le)
            audio = decode_audio(spec, b"".join(raw))
        else:
            arrays = [block for block in blocks if not isinstance(block, bytes)]
            audio = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            if spec.channels == 1 and self.engine.config.realtime:  # no copies, no lists
                feeds[0].feed(audio.reshape(-1))
                return
            channels = [np.ascontiguousarray(audio[:, i]) for i in range(spec.channels)]
            if not self.engine.config.realtime:  # backpressure: feeding may wait
                await asyncio.to_thread(_feed_all, feeds, channels)
            else:
                _feed_all(feeds, channels)
        except StreamerError as exc:
            raise _unsupported("bad_audio", str(exc)) from exc

    async def _close_feeds(self, feeds: list[StreamFeed], reason: str) -> None:
        for feed in feeds:
            if feed.closed:
                continue
            if self.engine.config.realtime:
                feed.close(reason=reason)
            else:  # the flush may wait for the inference queue: not on the loop
                await asyncio.to_thread(feed.close, reason)


class IdleWatch:
    """One call's idle timeout as one timer, not one per frame (a context manager, loop-bound).

    The handler marks when it waits in ``recv`` (``waiting``) and when a frame came (``last``);
    a single timer, moved on lazily when it fires early, cancels the handler task once it has
    waited ``timeout_s`` for one frame, and :meth:`expired` tells that cancellation apart from
    a shutdown's. Same rule as a timeout around each ``recv``, at a cost of two attribute
    writes per frame instead of a timer armed and cancelled per frame.
    """

    __slots__ = ("timeout_s", "loop", "task", "waiting", "last", "_handle", "_fired")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.waiting = False
        self.last = self.loop.time()  # when the current (or last) wait for a frame began
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    def __enter__(self) -> IdleWatch:
        self._arm(self.last + self.timeout_s)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def expired(self) -> bool:
        """True when the cancellation just caught was this watch's (and only that one)."""
        if not self._fired:
            return False
        self._fired = False
        return self.task.uncancel() == 0  # a shutdown's cancel as well: let that one win

    def _arm(self, when: float) -> None:
        self._handle = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        due = self.last + self.timeout_s
        if self.waiting and self.loop.time() >= due:
            self._handle = None
            self._fired = True
            self.task.cancel()
        else:  # a frame came since (or the handler is busy feeding): look again later
            self._arm(max(due, self.loop.time() + 0.001) if self.waiting
                      else self.loop.time() + self.timeout_s)


#: rejection code -> stream_close reason (others: "error")
_CLOSE_REASONS = {"idle_timeout": "idle_timeout", "call_too_long": "max_length"}
#: rejection code -> the stats.refused counter it counts in (too_many_calls: by the desk)
_REFUSALS = {"call_too_long": "call_length"}
#: a desk refusal's code -> the close code /ingest answers it with
_DESK_CLOSE = {"too_many_calls": CloseCode.TRY_AGAIN_LATER, "shutting_down": CloseCode.GOING_AWAY,
               "bad_call_id": CloseCode.UNSUPPORTED_DATA}


def frame_waiting(connection: ServerConnection) -> bool:
    """Whether ``recv`` would return a whole message at once (one is already received).

    websockets has no public call for this; it reads the connection's frame queue, and says
    False (feed now, frame by frame as before) where that is not there or a message is only
    partly in.
    """
    try:
        queued = connection.recv_messages.frames.queue
    except AttributeError:
        return False
    return bool(queued) and bool(queued[0].fin)


def _feed_all(feeds: list[StreamFeed], channels: list[NDArray[np.float32]]) -> None:
    for feed, samples in zip(feeds, channels, strict=True):
        feed.feed(samples)
