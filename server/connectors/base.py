"""What a telephony connector is to the server: its config, its context, its two shapes.

A connector turns one platform's call-audio stream into
:class:`~server.connectors.calls.PlatformCall` streams. It comes from a frozen config object
(one per platform, made from ``run`` flags by :mod:`server.connectors.registry`) whose
``build(context)`` returns one of:

- a :class:`WebSocketConnector`: served by the event server on its own ``path`` of the main
  port. The server checks Host and Origin as for every WebSocket, then hands the upgrade
  request to the connector's ``authorize`` (the platform's own credential check: a signature,
  an API key), then, once upgraded, the connection to ``handle``. Platforms cannot send this
  project's Bearer tokens, so the connector's check replaces the ``ingest`` role check there;
  a connector without a configured credential refuses every request (fail closed).
- a :class:`TcpConnector`: a listener of its own (Asterisk AudioSocket speaks raw TCP), started
  and closed by the monitor.

``stats()`` of each goes into ``/healthz`` (admin) under ``connectors.<name>``: calls opened and
live, frames, bytes, and every refusal and malformed message by code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol, runtime_checkable

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request

from server.config import IngestConfig
from server.connectors.calls import CallDesk
from server.limits import ClientLog, ServerCounters

__all__ = [
    "ConnectorConfig",
    "ConnectorContext",
    "ConnectorStats",
    "Refusal",
    "TcpConnector",
    "WebSocketConnector",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer to a refused upgrade request (``reason`` is the refusal counter's name)."""

    status: HTTPStatus
    text: str
    reason: str = "auth"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ConnectorStats:
    """Counters of one connector since start (event loop only)."""

    calls: int = 0
    frames: int = 0
    bytes: int = 0
    #: refusals and malformed messages by code (``bad_signature``, ``bad_json``, ...)
    refused: dict[str, int] = field(default_factory=dict)
    #: metadata entries left out or cut (see ``bounded_metadata``)
    metadata_dropped: int = 0

    def refuse(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1

    def as_dict(self, live: int) -> dict[str, Any]:
        return {"calls": self.calls, "live": live, "frames": self.frames, "bytes": self.bytes,
                "refused": dict(self.refused), "metadata_dropped": self.metadata_dropped}


@dataclass(frozen=True, slots=True)
class ConnectorContext:
    """What the monitor hands a connector when it builds it."""

    desk: CallDesk
    ingest: IngestConfig  # frame size, idle timeout, call limits: the same as /ingest
    log: ClientLog  # client-caused log lines, rate-limited per address
    counters: ServerCounters
    host: str  # the server's --host (a TCP listener binds here unless configured otherwise)
    shutdown_timeout_s: float = 5.0


@runtime_checkable
class WebSocketConnector(Protocol):
    """A connector on a path of the event server (see the module doc)."""

    name: str
    path: str

    @property
    def max_message_bytes(self) -> int:
        """Largest WebSocket message a platform sends (the connection's websockets limit)."""
        ...

    def authorize(self, connection: ServerConnection, request: Request) -> Refusal | None:
        """The platform's credential check of the upgrade request: None lets it through."""
        ...

    async def handle(self, connection: ServerConnection) -> None:
        """Serve one upgraded connection to its end (the connection's handler task)."""
        ...

    def stats(self) -> dict[str, Any]:
        ...

    async def close(self) -> None:
        """End every call with reason ``shutdown``; idempotent."""
        ...


@runtime_checkable
class TcpConnector(Protocol):
    """A connector with its own TCP listener (see the module doc)."""

    name: str

    async def start(self) -> None:
        """Listen; a port in use is a one-line ServerError."""
        ...

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        ...

    def stats(self) -> dict[str, Any]:
        ...

    async def close(self) -> None:
        """Stop listening, end every call with reason ``shutdown``; idempotent."""
        ...


class ConnectorConfig(Protocol):
    """A platform's settings (frozen, validated when made); ``build`` makes its connector."""

    @property
    def name(self) -> str:  # read-only: a frozen dataclass's field satisfies it
        ...

    def build(self, context: ConnectorContext) -> WebSocketConnector | TcpConnector:
        ...
