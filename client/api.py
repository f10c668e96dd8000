"""The async Python API: connect to ``WS /ws`` and iterate decoded events (caller's event loop).

Usage::

    async with EventClient("ws://127.0.0.1:8765/ws", streams=("mic",)) as client:
        async for event in client.events():
            if isinstance(event, WindowMessage):
                ...

``events()`` yields :mod:`streamer.protocol.messages` objects in the order the server sent them,
plus a client-side :class:`Disconnected` marker each time the connection is lost. With
``reconnect=True`` (the default) the client then reconnects with exponential backoff and
jitter, and the first message of the new connection is the server's new :class:`Hello`: its
``session`` differs from the previous one when the server restarted (old sequence numbers no
longer apply). A server may resend a backlog of recent windows after a reconnect, so callers
that must not see a window twice dedupe on ``(session, stream, seq)``.

Frames that are not valid messages are logged and skipped; the connection is kept. When
``streams`` is given the client sends :class:`Subscribe` after each connect and also filters
locally, because a server may send its backlog before it reads the subscription.

``token`` is sent as ``Authorization: Bearer`` in each handshake (see :mod:`client.auth`);
``wss://`` URLs verify the server against the system CAs or ``ca_file``. A server that refuses
the credential (401, 403) or the host name (421), or a certificate that does not verify, is a
ClientError at once, also with ``reconnect=True``: retrying would not help.

Imports only the protocol home (:mod:`streamer.protocol`) and websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from client.auth import QuietHandshakeLogger, auth_headers, ssl_context
from client.errors import ClientError
from streamer.protocol.limits import DEFAULT_EVENTS_URL
from streamer.protocol.messages import (
    ErrorMessage,
    Hello,
    Message,
    MessageError,
    Subscribe,
    decode,
    encode,
    stream_wanted,
)
from streamer.protocol.urls import UrlError, events_url

__all__ = [
    "ClientEvent",
    "Disconnected",
    "EventClient",
    "backoff_delays",
    "events",
    "normalize_url",
    "open_connection",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Disconnected:
    """Client-side marker (never on the wire): the connection was lost or could not be made.

    ``retry_in_s`` is the backoff before the next attempt, or ``None`` when the client will not
    reconnect (``reconnect=False``); ``attempt`` counts consecutive failures (1 = first).
    """

    reason: str
    retry_in_s: float | None
    attempt: int


#: what :meth:`EventClient.events` yields: a decoded message or a client-side marker
ClientEvent = Message | Disconnected


def normalize_url(url: str) -> str:
    """Check an events URL: ``ws://`` or ``wss://``; ``http(s)://`` becomes ``ws(s)://``.

    A URL without a path (or just ``/``, like the dashboard URL) gets the events path ``/ws``.
    Anything else is a ClientError naming the bad value and what is allowed.
    """
    try:
        return events_url(url)
    except UrlError as exc:
        raise ClientError(str(exc)) from exc


def _backoff(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before reconnect attempt ``attempt`` (1-based): doubling, capped, jittered 50-100%."""
    base = min(max_s, initial_s * (2.0 ** min(attempt - 1, 32)))
    return base * (0.5 + 0.5 * rng.random())


def backoff_delays(
    initial_s: float, max_s: float, count: int, *, seed: int | None = None
) -> list[float]:
    """The first ``count`` reconnect delays for these settings (pure; for docs and tests)."""
    rng = random.Random(seed)
    return [_backoff(attempt, initial_s, max_s, rng) for attempt in range(1, count + 1)]


class EventClient:
    """One logical subscription to a server's ``/ws`` events, surviving reconnects.

    An async context manager; ``close()`` is idempotent and ends a running ``events()``
    iteration. Not safe to iterate ``events()`` from two tasks at once.
    """

    def __init__(
        self,
        url: str = DEFAULT_EVENTS_URL,
        *,
        streams: Sequence[str] = (),
        reconnect: bool = True,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        open_timeout_s: float = 10.0,
        max_frame_bytes: int = 1 << 20,
        token: str | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ClientError(
                f"backoff must satisfy 0 < backoff_initial_s ({backoff_initial_s}) "
                f"<= backoff_max_s ({backoff_max_s})"
            )
        if isinstance(streams, str):
            raise ClientError(f"streams must be a sequence of names, not the string {streams!r}")
        self.url = normalize_url(url)
        self.streams: tuple[str, ...] = tuple(streams)
        self.reconnect = reconnect
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self._headers = auth_headers(token)
        self._ssl = ssl_context(self.url, ca_file)
        #: the latest Hello received (None before the first connection)
        self.hello: Hello | None = None
        #: successful connections so far (1 after the first, 2 after the first reconnect, ...)
        self.connections = 0
        #: frames skipped because they were not valid messages
        self.bad_frames = 0
        self._connection: ClientConnection | None = None
        self._closed = asyncio.Event()
        self._rng = random.Random()

    @property
    def connected(self) -> bool:
        """Whether a connection is open right now."""
        return self._connection is not None

    async def __aenter__(self) -> EventClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop iterating and close the connection (1000); safe to call more than once."""
        self._closed.set()
        connection = self._connection
        if connection is not None:
            await connection.close()

    async def _open(self) -> ClientConnection:
        return await open_connection(
            self.url, headers=self._headers, tls=self._ssl, open_timeout_s=self.open_timeout_s,
            max_frame_bytes=self.max_frame_bytes,
        )

    def _wanted(self, message: Message) -> bool:
        stream = getattr(message, "stream", None)
        return stream_wanted(stream, self.streams)

    async def _wait_closed(self, delay_s: float) -> bool:
        """Sleep ``delay_s`` unless closed first; True if the client was closed."""
        try:
            await asyncio.wait_for(self._closed.wait(), delay_s)
        except TimeoutError:
            return False
        return True

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Decoded messages as they arrive, with :class:`Disconnected` markers between connections.

        Ends when the client is closed, or (``reconnect=False``) when the server closes the
        connection. Without reconnect, failing to connect is a ClientError.
        """
        failures = 0
        while not self._closed.is_set():
            try:
                connection = await self._open()
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                reason = f"cannot connect to {self.url}: {exc}"
                if not self.reconnect:
                    raise ClientError(reason) from exc
                retrying = f"{reason}; retrying"
            else:
                # aclosing: a caller that stops iterating closes the connection now, not at GC
                async with contextlib.aclosing(self._receive(connection)) as messages:
                    async for message in messages:
                        if isinstance(message, Hello):
                            failures = 0  # the server is up and answering: backoff restarts
                        yield message
                if self._closed.is_set():
                    return
                reason = _close_reason(connection)
                if not self.reconnect:
                    logger.info("disconnected from %s (%s)", self.url, reason)
                    yield Disconnected(reason=reason, retry_in_s=None, attempt=1)
                    return
                retrying = f"disconnected from {self.url} ({reason}); reconnecting"
            failures += 1
            delay = _backoff(failures, self.backoff_initial_s, self.backoff_max_s, self._rng)
            logger.info("%s in %.1f s", retrying, delay)
            yield Disconnected(reason=reason, retry_in_s=delay, attempt=failures)
            if await self._wait_closed(delay):
                return

    async def _receive(self, connection: ClientConnection) -> AsyncGenerator[Message, None]:
        """The wanted messages of one connection until it closes; closes it in the end."""
        if self._closed.is_set():  # closed while connecting: close() did not see it
            await connection.close()
            return
        self._connection = connection
        self.connections += 1
        logger.info("connected to %s", self.url)
        try:
            if self.streams:
                with contextlib.suppress(ConnectionClosed):  # still read what did arrive
                    await connection.send(encode(Subscribe(streams=self.streams)))
            async for frame in connection:
                message = self._decode(frame)
                if message is not None and self._wanted(message):
                    yield message
        except ConnectionClosed:
            pass  # the close frame (or its absence) is the reason; events() reads it
        finally:
            self._connection = None
            await connection.close()

    def _decode(self, frame: str | bytes) -> Message | None:
        """One frame -> its message, noting hello and server errors; None for a bad frame."""
        try:
            message = decode(frame)
        except MessageError as exc:
            self.bad_frames += 1
            logger.warning("skipping a bad frame from %s: %s", self.url, exc)
            return None
        if isinstance(message, Hello):
            self.hello = message
        elif isinstance(message, ErrorMessage):
            logger.warning("server error %s: %s", message.code, message.message)
        return message


#: handshake statuses that retrying cannot fix
_FATAL_STATUSES = {401: "the server wants a valid token (--token-file or the environment)",
                   403: "the server refused this credential or origin",
                   421: "the server does not answer for this host name"}


async def open_connection(
    url: str,
    *,
    headers: list[tuple[str, str]],
    tls: ssl.SSLContext | None,
    open_timeout_s: float,
    max_frame_bytes: int,
) -> ClientConnection:
    """Connect to a server's WebSocket endpoint (``/ws`` or ``/ingest``) with our settings.

    ClientError for what retrying cannot fix (a bad URL, 401/403/421, a certificate that does
    not verify); OSError, TimeoutError or InvalidHandshake for what it might.
    """
    try:
        return await connect(
            url,
            open_timeout=open_timeout_s,
            max_size=max_frame_bytes,
            proxy=None,
            additional_headers=headers or None,
            ssl=tls,
            logger=QuietHandshakeLogger(logging.getLogger("websockets.client")),
        )
    except InvalidURI as exc:
        raise ClientError(f"bad URL {url!r}: {exc}") from exc
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in _FATAL_STATUSES:
            raise ClientError(
                f"{url}: HTTP {status}: {_FATAL_STATUSES[status]}"
            ) from exc
        raise
    except ssl.SSLCertVerificationError as exc:
        raise ClientError(
            f"{url}: the server's certificate does not verify ({exc.verify_message}); "
            "give its CA with --ca-file"
        ) from exc


def _close_reason(connection: ClientConnection) -> str:
    # the close frame the server sent (None: the connection dropped without one); the same
    # frame a ConnectionClosed raised by this connection carries
    rcvd = connection.protocol.close_rcvd
    if rcvd is None:
        return "connection lost"
    return f"server closed the connection ({rcvd.code}{' ' + rcvd.reason if rcvd.reason else ''})"


async def events(
    url: str = DEFAULT_EVENTS_URL,
    *,
    streams: Sequence[str] = (),
    reconnect: bool = True,
    backoff_initial_s: float = 0.5,
    backoff_max_s: float = 10.0,
    token: str | None = None,
    ca_file: str | Path | None = None,
) -> AsyncIterator[ClientEvent]:
    """One-shot helper: ``async for event in events(url): ...`` with an owned EventClient."""
    async with EventClient(
        url,
        streams=streams,
        reconnect=reconnect,
        backoff_initial_s=backoff_initial_s,
        backoff_max_s=backoff_max_s,
        token=token,
        ca_file=ca_file,
    ) as client:
        async for event in client.events():
            yield event
