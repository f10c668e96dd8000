"""The event server: ``WS /ws`` events, ``WS /ingest`` audio, ``GET /``, ``/healthz``, ``/metrics``
(loop).

One websockets server on one port. Plain HTTP GETs are answered in ``process_request`` (the
dashboard's static files, the health check, the Prometheus metrics of :mod:`server.metrics`,
the store's read-only JSON under ``/api/`` (see :mod:`server.api`; read in worker threads), 404
for anything else); ``/ws`` upgrades to a
WebSocket whose handler sends ``hello``, the backlog, then live events from the client's own
bounded queue (see :mod:`server.fanout`), while reading the client's frames: ``subscribe``
changes its filter, anything else gets an ``error`` reply and the connection stays open.

``/ingest`` (only when an :class:`~server.ingest.IngestEndpoint` is given) takes pushed call
audio; its connections may send frames up to 4 x ``ingest.max_frame_bytes`` before websockets
itself closes them with 1009 (the endpoint answers bigger-than-allowed frames with an ``error``
and 1009 first).

Close codes: 1001 at shutdown, 1008 after too many bad frames, 1009 for a frame larger than
``max_message_bytes`` (websockets does it), 1011 when our handler fails (only that connection).
Each connection runs two tasks it owns: the handler (reader) and its writer.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import importlib.metadata
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosed,
    HeaderLineTooLong,
    InvalidMessage,
    RequestLineTooLong,
    TooManyHeaders,
)
from websockets.frames import CloseCode
from websockets.http11 import Request, Response, parse_headers, parse_line
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from server.api import API_PREFIX, StoreApi
from server.auth import (
    OriginPolicy,
    SessionStore,
    bearer_token,
    cookie_value,
    expired_cookie,
    grants,
    is_loopback,
    login_token,
    session_cookie,
)
from server.config import ServerConfig
from server.connectors.base import WebSocketConnector
from server.errors import ServerError
from server.fanout import ClientQueue, Frame, QueueClosed
from server.hub import EventHub
from server.ingest import IngestEndpoint
from server.limits import AddressSlots, ClientLog, TokenBucket, address_of
from server.metrics import METRICS_PATH, ServerMetrics, metrics_registry, render_metrics
from server.webhook import WebhookSender
from streamer.events import EngineStats
from streamer.protocol.limits import EVENTS_PATH, INGEST_PATH
from streamer.protocol.messages import ErrorMessage, MessageError, Subscribe, decode, encode

__all__ = [
    "CONTENT_TYPES",
    "EventServer",
    "LOGIN_PATH",
    "LOGOUT_PATH",
    "MAX_BODY_BYTES",
    "HTTP_REFUSALS",
    "format_host",
]

logger = logging.getLogger(__name__)

#: static file suffix -> Content-Type; only these are served
CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: the server pings every 20 s (websockets' default) and waits this long for the pong
_PING_TIMEOUT_S = 60.0
#: a client's unsent bytes above which frames wait in its queue instead (bounded, drop-oldest)
_DIRECT_WRITE_LIMIT = 32 * 1024
#: frames for one client are gathered into one write at most this often (see _Coalescer)
_FLUSH_S = 0.05
#: how long a new client's backlog waits for the client's first frame (see ``_write``)
_BACKLOG_GRACE_S = 1.0
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
#: the largest request body read (a login form); a longer one is answered 413
MAX_BODY_BYTES = 4096
#: refusal counters in the admin /healthz ``refused`` object
HTTP_REFUSALS = ("auth", "origin", "host", "method", "body", "login")
_HTTP_METHODS = {LOGIN_PATH: "GET, POST", LOGOUT_PATH: "POST"}


def _version() -> str:
    try:
        return importlib.metadata.version("emotion-monitor")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _BodyReadingConnection(ServerConnection):
    """A websockets ServerConnection whose request parser also takes small request bodies.

    websockets' own parser gives no answer at all to a request with a body (it half-closes
    the connection) and refuses ``Transfer-Encoding``. This parser (the same request line and
    header parsing, from ``websockets.http11``) reads a ``Content-Length`` body of up to
    MAX_BODY_BYTES into ``body`` (the login form), and marks a longer or chunked one in
    ``body_error`` without reading it, so that ``process_request`` can answer 413 or 400.
    Everything else (414 for a long request line, 431 for big headers, silence for garbage,
    then WebSocket frames) is as websockets does it.
    """

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        self.body = b""
        self.body_error: HTTPStatus | None = None
        # Nothing has been received yet (the transport is not even connected): swap parsers.
        protocol.parser = self._parse(protocol)
        next(protocol.parser)

    def _parse(self, protocol: ServerProtocol) -> Generator[None, None, None]:
        reader = protocol.reader
        try:
            line = yield from parse_line(reader.read_line, RequestLineTooLong)
            method, path, version = line.split(b" ", 2)
            if version not in (b"HTTP/1.1", b"HTTP/1.0"):
                raise ValueError("unsupported HTTP version")
            headers = yield from parse_headers(reader.read_line)
            request = Request(path.decode("ascii"), headers, method.decode("ascii"),
                              version.decode("ascii"))
            lengths = set(headers.get_all("Content-Length"))
            if "Transfer-Encoding" in headers or len(lengths) > 1 or not all(
                n.isdigit() for n in lengths
            ):
                self.body_error = HTTPStatus.BAD_REQUEST
            elif lengths and int(lengths.pop()) > MAX_BODY_BYTES:
                self.body_error = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            elif (length := int(headers.get("Content-Length", "0"))) > 0:
                self.body = bytes((yield from reader.read_exact(length)))
        except RequestLineTooLong as exc:
            protocol.handshake_exc = exc
            protocol.send_response(protocol.reject(
                HTTPStatus.REQUEST_URI_TOO_LONG, f"Failed to open a WebSocket connection: {exc}.\n"
            ))
            yield
            return
        except (HeaderLineTooLong, TooManyHeaders) as exc:
            protocol.handshake_exc = exc
            protocol.send_response(protocol.reject(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"Failed to open a WebSocket connection: {exc}.\n",
            ))
            yield
            return
        except Exception as exc:  # EOF, not HTTP, not ASCII: no answer, as websockets does
            protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
            protocol.handshake_exc.__cause__ = exc
            protocol.send_eof()
            protocol.parser = protocol.discard()
            next(protocol.parser)
            yield
            return
        protocol.events.append(request)
        if self.body_error is not None:
            # the answer will be 400/413: drop the unread body instead of parsing it as frames
            while True:
                reader.discard()
                yield
        yield from Protocol.parse(protocol)  # WebSocket frames after the handshake


class _Coalescer:
    """Frames for clients that keep up, written at most once per ``interval_s`` per client.

    One ``send`` system call per client and frame was the fan-out's main cost (1,000 clients x
    40 windows/s); gathering what is published within ``interval_s`` into one write per client
    cuts it several-fold. A frame published after a quiet spell goes out on the next loop
    turn; under load a frame waits at most ``interval_s``. Pending bytes per client stay under
    ``limit`` (then frames wait in the client's own bounded queue instead).

    Shared by every connection, it holds only the timer and which writers have something
    pending; each connection's pending frames are in its own :class:`_DirectWriter`.
    """

    def __init__(self, *, interval_s: float, limit: int) -> None:
        self.interval_s = interval_s
        self.limit = limit
        self._waiting: set[_DirectWriter] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._last = 0.0

    def writer(self, connection: ServerConnection) -> _DirectWriter:
        """A new connection's writer (its ``ClientQueue.direct``)."""
        return _DirectWriter(self, connection)

    def schedule(self, writer: _DirectWriter) -> None:
        """``writer`` has frames pending: write them on the next timer tick."""
        self._waiting.add(writer)
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(max(loop.time(), self._last + self.interval_s),
                                        self._flush_all)

    def forget(self, writer: _DirectWriter) -> None:
        self._waiting.discard(writer)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for writer in list(self._waiting):
            writer.flush()

    def _flush_all(self) -> None:
        self._handle = None
        self._last = asyncio.get_running_loop().time()
        waiting, self._waiting = self._waiting, set()
        for writer in waiting:
            writer.flush()


class _DirectWriter:
    """One connection's frames waiting for the coalescer's next write (that connection only).

    Pre-encoded frames are written to the transport as whole frames, between websockets' own
    writes: websockets has no public call that sends many already-encoded frames in one write,
    and encoding each frame once per client is what this avoids (the one place the server uses
    the connection's transport). The server is served with ``compression=None`` and no
    extensions, so a frame's bytes are the same for every client and exactly what websockets
    would send; frames are taken only while the connection is open (its public ``state``).
    """

    __slots__ = ("coalescer", "connection", "_chunks", "_size")

    def __init__(self, coalescer: _Coalescer, connection: ServerConnection) -> None:
        self.coalescer = coalescer
        self.connection = connection
        self._chunks: list[bytes] = []
        self._size = 0

    def __call__(self, frame: Frame) -> bool:
        """Take ``frame`` for the next coalesced write; False: send it the normal way."""
        connection = self.connection
        if not frame.wire or connection.state is not State.OPEN:
            return False
        if self._size + connection.transport.get_write_buffer_size() >= self.coalescer.limit:
            return False
        if not self._chunks:
            self.coalescer.schedule(self)
        self._chunks.append(frame.wire)
        self._size += len(frame.wire)
        return True

    def flush(self) -> None:
        """Write what is pending now (before anything else is sent on the connection)."""
        chunks, self._chunks, self._size = self._chunks, [], 0
        self.coalescer.forget(self)
        if chunks and self.connection.state is State.OPEN:
            self.connection.transport.write(b"".join(chunks))

    def discard(self) -> None:
        """The connection is gone: drop what is pending."""
        self._chunks, self._size = [], 0
        self.coalescer.forget(self)


def format_host(host: str) -> str:
    """A host as it goes into a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _single(headers: Headers, name: str) -> str | None:
    """The value of a header sent exactly once, else None (absent, or sent twice)."""
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


def _origin(headers: Headers) -> str | None:
    """The Origin header; None when absent, "null" (never allowed) when sent twice."""
    values = headers.get_all("Origin")
    if not values:
        return None
    return values[0] if len(values) == 1 else "null"


def _peer(connection: ServerConnection) -> str:
    try:
        host, port = connection.remote_address[:2]
    except (TypeError, ValueError, OSError):
        return "?"
    return f"{format_host(str(host))}:{port}"


class _NoHeaderLogs(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' logger without its DEBUG lines: they print every request and response
    header, credentials and cookies included."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return level > logging.DEBUG and self.logger.isEnabledFor(level)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        return None


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "same-origin"),  # no-referrer would make POST Origin "null"
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _text(status: HTTPStatus, text: str) -> Response:
    return _response(status, text.encode(), "text/plain; charset=utf-8")


def _redirect(location: str, *cookies: str) -> Response:
    response = _text(HTTPStatus.SEE_OTHER, f"see {location}\n")
    response.headers["Location"] = location
    for cookie in cookies:
        response.headers["Set-Cookie"] = cookie
    return response


class EventServer:
    """Serves one :class:`EventHub` over HTTP and WebSocket. An async context manager.

    ``port`` is the bound port (useful with ``port=0``); ``url`` the dashboard URL and
    ``ws_url`` the events URL. ``close()`` is idempotent: it lets every client receive what is
    already queued (up to ``shutdown_timeout_s``), then closes the rest with 1001.
    """

    def __init__(
        self,
        config: ServerConfig,
        hub: EventHub,
        *,
        ingest: IngestEndpoint | None = None,
        client_log: ClientLog | None = None,
        connectors: Sequence[WebSocketConnector] = (),
        connector_stats: Callable[[], dict[str, Any]] | None = None,
        engine_stats: Callable[[], EngineStats] | None = None,
        webhook: WebhookSender | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        self.ingest = ingest
        #: every connector's counters (``/healthz`` ``connectors``), TCP ones included
        self._connector_stats = connector_stats
        #: telephony connectors by path (each checks its platform's own credential)
        self.connectors: dict[str, WebSocketConnector] = {c.path: c for c in connectors}
        reserved = {EVENTS_PATH, INGEST_PATH, LOGIN_PATH, LOGOUT_PATH, "/", "/healthz",
                    METRICS_PATH}
        if len(self.connectors) != len(connectors) or reserved & set(self.connectors):
            raise ServerError(f"connector paths must be distinct and free, got "
                              f"{[c.path for c in connectors]}")
        self.counters = hub.counters
        #: client-caused log lines, rate-limited per address (shared with ingest when given)
        self.client_log = client_log if client_log is not None else ClientLog(
            logger, self.counters, per_minute=config.limits.client_log_lines_per_min)
        self._slots = AddressSlots(config.limits.max_connections_per_address)
        self._coalescer = _Coalescer(interval_s=_FLUSH_S, limit=_DIRECT_WRITE_LIMIT)
        self._server: Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._closed = False
        #: dashboard logins (cookie sessions)
        self.sessions = SessionStore(ttl_s=config.security.session_ttl_s)
        #: refused requests by reason (HTTP_REFUSALS); shown in the admin /healthz
        self.refused: dict[str, int] = dict.fromkeys(HTTP_REFUSALS, 0)
        self._policy: OriginPolicy | None = None
        #: GET /metrics: a private registry whose collector reads the counters at scrape time
        self.metrics = metrics_registry(ServerMetrics(
            hub, version=_version(), http_refused=self.refused, engine_stats=engine_stats,
            ingest=ingest, connector_stats=connector_stats, webhook=webhook,
        ))
        #: GET /api/...: read-only JSON over the timeline store (server.api)
        self.api = StoreApi(config.store_path, session=hub.session)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> EventServer:
        """Listen; a port in use or a bad host is a one-line ServerError."""
        if self._server is not None:
            return self
        config = self.config
        tls = None
        if config.security.tls_cert is not None and config.security.tls_key is not None:
            from server.tls import server_context

            tls = server_context(config.security.tls_cert, config.security.tls_key)
        try:
            self._server = await serve(
                self._handle,
                config.host,
                config.port,
                process_request=self._http,
                max_size=config.limits.max_message_bytes,
                max_queue=16,
                # frames are encoded once for every client; per-client deflate would cost CPU
                # and memory per client and frame (the fan-out's main cost at 1,000 clients)
                compression=None,  # _DirectWriter relies on it
                # a loop that falls briefly behind must not cut calls: answer time for pings
                ping_timeout=_PING_TIMEOUT_S,
                close_timeout=config.shutdown_timeout_s,
                logger=_NoHeaderLogs(logging.getLogger("server.websockets")),
                create_connection=_BodyReadingConnection,
                ssl=tls,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServerError(
                    f"cannot listen on {config.host}:{config.port}: the address is already in "
                    "use (another emotion-monitor? pick another --port, or 0 for any free one)"
                ) from exc
            raise ServerError(
                f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}"
            ) from exc
        self._policy = config.origin_policy(self.port)
        logger.info("listening on %s (events at %s)", self.url, self.ws_url)
        credentials = config.security.credentials
        if credentials.configured:
            logger.info("tokens configured for: %s", ", ".join(credentials.roles))
            if not any(role in credentials.roles for role in ("view", "admin")):
                logger.warning("no view or admin token: nobody can read /ws or the dashboard")
        else:
            logger.info("no tokens configured: every local client may view and push (loopback "
                        "only)")
        if not tls and not config.security.tls_proxy and not is_loopback(config.host):
            logger.warning("serving %s without TLS: tokens and events cross the network in "
                           "clear text (use --tls-cert/--tls-key or a TLS proxy)", config.host)
        return self

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._server is None:
            raise ServerError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The dashboard URL, e.g. ``http://127.0.0.1:8765/``."""
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://{format_host(self.config.host)}:{self.port}/"

    @property
    def ws_url(self) -> str:
        """The events URL, e.g. ``ws://127.0.0.1:8765/ws``."""
        scheme = "wss" if self.config.tls else "ws"
        return f"{scheme}://{format_host(self.config.host)}:{self.port}{EVENTS_PATH}"

    @property
    def ingest_url(self) -> str:
        """The audio ingest URL, e.g. ``ws://127.0.0.1:8765/ingest``."""
        scheme = "wss" if self.config.tls else "ws"
        return f"{scheme}://{format_host(self.config.host)}:{self.port}{INGEST_PATH}"

    async def close(self) -> None:
        """Drain client queues, close clients with 1001, stop listening. Idempotent."""
        if self._closed:
            return
        self._closed = True
        server = self._server
        if server is None:
            return
        # Writers send what is queued, then close their connection with 1001.
        self.hub.fanout.close()
        self._coalescer.close()
        if self._connections:
            _, pending = await asyncio.wait(
                set(self._connections), timeout=self.config.shutdown_timeout_s
            )
            if pending:
                logger.warning("%d client(s) still receiving after %.1f s; closing them",
                               len(pending), self.config.shutdown_timeout_s)
        server.close(code=CloseCode.GOING_AWAY, reason="server shutting down")
        await server.wait_closed()
        logger.info("server closed")

    async def __aenter__(self) -> EventServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- HTTP ---------------------------------------------------------------------------------

    def _http(
        self, connection: ServerConnection, request: Request
    ) -> Response | Awaitable[Response] | None:
        """websockets' ``process_request``: an HTTP answer, or None for the WebSocket handshake.

        ``GET /api/...`` answers are awaitables (websockets awaits them): they read the store.
        """
        path = urlsplit(request.path).path
        policy = self._policy or self.config.origin_policy(int(connection.local_address[1]))
        refused = self._check_request(connection, request, path, policy)
        if refused is not None:
            return refused
        body: bytes = getattr(connection, "body", b"")
        if request.method == "POST":
            if not policy.origin_allowed(_origin(request.headers)):
                return self._refuse("origin", connection, request, HTTPStatus.FORBIDDEN,
                                    "cross-origin request refused\n")
            if path == LOGIN_PATH:
                return self._login(connection, request, body)
            return self._logout(request)
        if body:
            return self._refuse("body", connection, request, HTTPStatus.BAD_REQUEST,
                                f"a {request.method} request takes no body\n")
        if path == EVENTS_PATH or (path == INGEST_PATH and self.ingest is not None):
            return self._upgrade(connection, request, path, policy)
        if path in self.connectors:
            return self._upgrade_connector(connection, request, self.connectors[path])
        if path.startswith(API_PREFIX):
            return self._api(connection, request)
        return self._get(connection, request, path)

    def _check_request(
        self, connection: ServerConnection, request: Request, path: str, policy: OriginPolicy
    ) -> Response | None:
        """A refusal for a wrong Host, a body we will not read, or a method not allowed."""
        if not policy.host_allowed(_single(request.headers, "Host")):
            return self._refuse(
                "host", connection, request, HTTPStatus.MISDIRECTED_REQUEST,
                "this server does not answer for that host name (see --allow-host)\n",
            )
        body_error = getattr(connection, "body_error", None)
        if body_error is not None:
            return self._refuse(
                "body", connection, request, body_error,
                f"request bodies are taken only by POST {LOGIN_PATH}, up to "
                f"{MAX_BODY_BYTES} bytes with a Content-Length\n",
            )
        allowed_methods = _HTTP_METHODS.get(path, "GET")
        if request.method not in allowed_methods.split(", "):
            response = self._refuse(
                "method", connection, request, HTTPStatus.METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed on {path}; use {allowed_methods}\n",
            )
            response.headers["Allow"] = allowed_methods
            return response
        return None

    def _upgrade(
        self, connection: ServerConnection, request: Request, path: str, policy: OriginPolicy
    ) -> Response | None:
        """A WebSocket request: refused (origin, credential), or None to go on."""
        if not policy.origin_allowed(_origin(request.headers)):
            return self._refuse(
                "origin", connection, request, HTTPStatus.FORBIDDEN,
                "WebSocket from another origin refused (see --allow-origin)\n",
            )
        needed = "view" if path == EVENTS_PATH else "ingest"
        refused = self._check_role(connection, request, needed)
        if refused is not None:
            return refused
        if path == INGEST_PATH:
            # Audio frames are bigger than client messages. websockets has one max_size per
            # server and no public per-connection setting: this sets the limit of this
            # connection's own protocol before any frame of it is read.
            connection.protocol.max_message_size = 4 * self.config.ingest.max_frame_bytes
        return None  # the WebSocket handshake (websockets answers 426 to a plain GET)

    def _upgrade_connector(
        self,
        connection: ServerConnection,
        request: Request,
        connector: WebSocketConnector,
    ) -> Response | None:
        """A platform's WebSocket: the connector's own credential check decides.

        No Origin check here: platforms are servers, not browsers, and some send an Origin of
        their own (libwebsockets in mod_audio_fork sends ``http://<host>``). What protects these
        paths is the platform credential (an HMAC signature, an API key header, HTTP Basic),
        which a page in a browser cannot produce. Host is checked as for every request.
        """
        if "upgrade" not in ", ".join(request.headers.get_all("Connection")).lower():
            return _text(HTTPStatus.UPGRADE_REQUIRED,
                         f"{request.path[:200]} is a WebSocket endpoint ({connector.name})\n")
        refusal = connector.authorize(connection, request)
        if refusal is not None:
            response = self._refuse(refusal.reason, connection, request, refusal.status,
                                    refusal.text)
            for name, value in refusal.headers.items():
                response.headers[name] = value
            return response
        connection.protocol.max_message_size = connector.max_message_bytes
        return None

    def _get(self, connection: ServerConnection, request: Request, path: str) -> Response:
        """A plain GET: health, metrics, the login page, the dashboard or a static file."""
        if "upgrade" in ", ".join(request.headers.get_all("Connection")).lower():
            return _text(HTTPStatus.NOT_FOUND,
                         f"no WebSocket endpoint at {path}; use {EVENTS_PATH}\n")
        configured = self.config.security.credentials.configured
        if path == "/healthz":
            body = json.dumps(self._health(request), separators=(",", ":")).encode()
            return _response(HTTPStatus.OK, body, "application/json")
        if path == METRICS_PATH:
            return self._metrics(connection, request)
        if path == LOGIN_PATH:
            return self._static("login.html") if configured else _redirect("/")
        if path in ("/", "/index.html"):
            if configured and not grants(self._role(request), "view"):
                return _redirect(LOGIN_PATH)
            return self._static("index.html")
        name = unquote(path)
        for prefix in ("/static/", "/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        return self._static(name)

    def _api(
        self, connection: ServerConnection, request: Request
    ) -> Response | Awaitable[Response]:
        """``GET /api/...`` (view role): the store's answer, read in a worker thread."""
        refused = self._check_role(connection, request, "view")
        if refused is not None:
            return refused
        return self._api_answer(request)

    async def _api_answer(self, request: Request) -> Response:
        parts = urlsplit(request.path)
        answer = await self.api.answer(parts.path, parts.query)
        return _response(answer.status, answer.body, "application/json")

    # -- credentials --------------------------------------------------------------------------

    def _role(self, request: Request, *, cookies: bool = True) -> str | None:
        """The role a request's Bearer token (or, if ``cookies``, its session cookie) carries."""
        headers = request.headers
        if "Authorization" in headers:
            # two Authorization headers are no credential at all
            token = bearer_token(_single(headers, "Authorization"))
            return self.config.security.credentials.role_of(token)
        if cookies:
            session = cookie_value(headers.get_all("Cookie"))
            return self.sessions.role_of(session, time.monotonic())
        return None

    def _check_role(
        self, connection: ServerConnection, request: Request, needed: str
    ) -> Response | None:
        """None when the request may use an endpoint of role ``needed``, else a 401/403."""
        if not self.config.security.credentials.configured:
            return None  # loopback only, every local client trusted (see server.auth)
        # audio senders are programs: a Bearer header only, no dashboard cookie
        role = self._role(request, cookies=needed != "ingest")
        if grants(role, needed):
            return None
        headers = request.headers
        presented = "Authorization" in headers or (
            needed != "ingest" and cookie_value(headers.get_all("Cookie")) is not None
        )
        if role is None:
            why = "the credential is not valid" if presented else "a credential is required"
            response = self._refuse(
                "auth", connection, request, HTTPStatus.UNAUTHORIZED,
                f"{why}: send 'Authorization: Bearer TOKEN' with a {needed} token\n",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="emotion-monitor"'
            return response
        return self._refuse("auth", connection, request, HTTPStatus.FORBIDDEN,
                            f"a {role} credential cannot use {needed} endpoints\n")

    def _login(self, connection: ServerConnection, request: Request, body: bytes) -> Response:
        if not self.config.security.credentials.configured:
            return _redirect("/")
        role = self.config.security.credentials.role_of(login_token(body))
        if not grants(role, "view"):
            self._refuse("login", connection, request, HTTPStatus.SEE_OTHER,
                         "login refused" if role is None else f"login with a {role} token")
            return _redirect(f"{LOGIN_PATH}?failed=1")
        assert role is not None
        value = self.sessions.create(role, time.monotonic())
        logger.info("dashboard login (%s) from %s", role, _peer(connection))
        cookie = session_cookie(value, max_age_s=int(self.config.security.session_ttl_s),
                                secure=self.config.security.https)
        return _redirect("/", cookie)

    def _logout(self, request: Request) -> Response:
        self.sessions.revoke(cookie_value(request.headers.get_all("Cookie")))
        return _redirect(LOGIN_PATH if self.config.security.credentials.configured else "/",
                         expired_cookie(secure=self.config.security.https))

    def _refuse(
        self, reason: str, connection: ServerConnection, request: Request, status: HTTPStatus,
        text: str,
    ) -> Response:
        """Count and log a refused request (never its headers: they may hold credentials)."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        logger.warning("refused %s %s from %s: %s (%d %s)", request.method[:16],
                       urlsplit(request.path).path[:200], _peer(connection), reason,
                       status.value, status.phrase)
        return _text(status, text)

    def _health(self, request: Request) -> dict[str, Any]:
        """The ``/healthz`` body: ok and version for anyone, the details for admin."""
        health = self.hub.health()
        public = {"ok": bool(health.get("ok", True)), "version": _version()}
        if self.config.security.credentials.configured and not grants(
            self._role(request), "admin"
        ):
            return public
        # the hub's limit refusals (ws_clients, per_address, ...) and ours (auth, origin, ...)
        details = {**health, **public,
                   "refused": {**health.get("refused", {}), **self.refused},
                   "sessions": len(self.sessions)}
        if self.ingest is not None:
            details["ingest_rejected"] = dict(self.ingest.rejected)
        if self._connector_stats is not None:
            details["connectors"] = self._connector_stats()
        details["api"] = dict(self.api.counters)
        return details

    def _metrics(self, connection: ServerConnection, request: Request) -> Response:
        """``GET /metrics``; with tokens configured only for an admin credential (a Bearer
        token or an admin's dashboard session, as the ``/healthz`` details)."""
        refused = self._check_role(connection, request, "admin")
        if refused is not None:
            return refused
        body, content_type = render_metrics(self.metrics, _single(request.headers, "Accept"))
        return _response(HTTPStatus.OK, body, content_type)

    def _static(self, name: str) -> Response:
        """A file of the static folder by plain name only (no folders, no dot files)."""
        suffix = Path(name).suffix.lower()
        if not _SAFE_NAME.fullmatch(name) or suffix not in CONTENT_TYPES:
            return _text(HTTPStatus.NOT_FOUND, "not found\n")
        folder = self.config.static_dir.resolve()
        path = (folder / name).resolve()
        if path.parent != folder or not path.is_file():
            if name == "index.html":
                return _text(HTTPStatus.NOT_FOUND, "the dashboard is not installed\n")
            return _text(HTTPStatus.NOT_FOUND, "not found\n")
        try:
            body = path.read_bytes()
        except OSError as exc:
            logger.error("cannot read static file %s: %s", path, exc)
            return _text(HTTPStatus.INTERNAL_SERVER_ERROR, "cannot read file\n")
        return _response(HTTPStatus.OK, body, CONTENT_TYPES[suffix])

    # -- WebSocket ----------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        address = address_of(connection.remote_address)
        if not self._slots.acquire(address):
            # one address may not take every slot (counted; logged at most per ClientLog)
            self.counters.refuse("per_address")
            self.client_log.warning(
                address, "refused a connection from %s: %d open from that address "
                "(--max-connections-per-address)", address, self._slots.count(address))
            await self._refuse_ws(connection, CloseCode.POLICY_VIOLATION,
                               "too many connections from this address", "too_many_connections")
            return
        try:
            request = connection.request
            if self.ingest is not None and request is not None and (
                urlsplit(request.path).path == INGEST_PATH
            ):
                await self.ingest.handle(connection)
                return
            connector = None if request is None else self.connectors.get(
                urlsplit(request.path).path)
            if connector is not None:
                await connector.handle(connection)
                return
            await self._serve_client(connection, address)
        finally:
            self._slots.release(address)

    async def _refuse_ws(
        self, connection: ServerConnection, code: int, reason: str, error: str
    ) -> None:
        """One ``error`` frame, then close with ``code`` (a refusal before anything else)."""
        try:
            await connection.send(encode(ErrorMessage(code=error, message=reason)))
            await connection.close(code, reason)
        except ConnectionClosed:
            pass

    async def _serve_client(self, connection: ServerConnection, address: str) -> None:
        hub = self.hub
        peer = connection.remote_address
        if hub.fanout.clients >= self.config.limits.max_ws_clients:
            self.counters.refuse("ws_clients")
            self.client_log.warning(address, "refused /ws client %s: %d clients connected "
                                    "(--max-ws-clients)", peer, hub.fanout.clients)
            await self._refuse_ws(connection, CloseCode.TRY_AGAIN_LATER, "too many clients",
                               "too_many_clients")
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        # hello and the backlog snapshot are taken together, without yielding: no gap, no repeat
        hello = encode(hub.hello())
        queue = hub.fanout.connect()
        direct = self._coalescer.writer(connection)
        writer: asyncio.Task[None] | None = None
        self.client_log.info(address, "client %s connected (%d now)", peer, hub.fanout.clients)
        try:
            await connection.send(hello)
            # the writer starts after hello is out: the backlog and live frames follow it
            first_frame = asyncio.Event()
            writer = asyncio.create_task(self._write(connection, queue, direct, first_frame),
                                         name="ws-writer")
            await self._read(connection, queue, address, first_frame)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("client %s: handler failed; closing its connection", peer)
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            hub.fanout.disconnect(queue)
            direct.discard()
            if writer is not None:
                # the connection is closing or closed by now; the writer has nothing left to do
                writer.cancel()
                await asyncio.wait([writer])
            self._connections.discard(task)
            self.client_log.info(address, "client %s gone (%d left, %d frames dropped for it)",
                                 peer, hub.fanout.clients, queue.dropped)

    async def _write(
        self,
        connection: ServerConnection,
        queue: ClientQueue,
        direct: _DirectWriter,
        first_frame: asyncio.Event,
    ) -> None:
        """Send queued frames until the queue closes (then close 1001) or the peer goes.

        The backlog waits for the client's first frame or ``_BACKLOG_GRACE_S`` after
        ``hello``: a ``subscribe`` sent at once filters the backlog too, and a client that
        closes right after ``hello`` gets its close answered at once instead of behind a
        backlog it will not read (client libraries stop reading once their own queue is full,
        and bytes in flight cannot be recalled). Frames go out as bytes encoded once for all.
        """
        try:
            try:
                await asyncio.wait_for(first_frame.wait(), _BACKLOG_GRACE_S)
            except asyncio.TimeoutError:
                pass  # a client that only listens: its backlog and live events follow now
            queue.direct = direct
            while True:
                try:
                    frame = await queue.next_frame()
                except QueueClosed:
                    direct.flush()
                    await connection.close(CloseCode.GOING_AWAY, "server shutting down")
                    return
                direct.flush()  # older frames first
                await connection.send(frame.data, text=True)
        except ConnectionClosed:
            return
        except Exception:
            logger.exception("client %s: writer failed; closing its connection",
                             connection.remote_address)
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")

    async def _read(
        self,
        connection: ServerConnection,
        queue: ClientQueue,
        address: str,
        first_frame: asyncio.Event,
    ) -> None:
        """Handle the client's frames until it goes or breaks a limit (rate, bad frames)."""
        limits = self.config.limits
        errors = 0
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(limits.client_messages_per_s, limits.client_message_burst,
                             now=loop.time())
        async for frame in connection:
            if not first_frame.is_set():
                # after this frame is handled (a subscribe applies first): replay the backlog
                loop.call_soon(first_frame.set)
            if not bucket.take(loop.time()):
                self.counters.refuse("message_rate")
                self.client_log.warning(
                    address, "client %s closed: more than %g messages/s after a burst of %d "
                    "(--client-messages-per-s)", connection.remote_address,
                    limits.client_messages_per_s, limits.client_message_burst)
                await connection.close(CloseCode.POLICY_VIOLATION, "message rate limit exceeded")
                return
            reply = self._handle_frame(frame, connection, queue, address)
            if reply is None:
                continue
            errors += 1
            await connection.send(encode(reply))
            if errors >= limits.max_client_errors:
                self.client_log.warning(address, "client %s closed after %d bad frames",
                                        connection.remote_address, errors)
                await connection.close(CloseCode.POLICY_VIOLATION, "too many bad messages")
                return

    def _handle_frame(
        self, frame: str | bytes, connection: ServerConnection, queue: ClientQueue, address: str
    ) -> ErrorMessage | None:
        """Apply one client frame (a ``subscribe``); the ``error`` reply for anything else."""
        try:
            message = decode(frame)
        except MessageError as exc:
            return ErrorMessage(code=exc.code, message=str(exc))
        if not isinstance(message, Subscribe):
            return ErrorMessage(
                code="unexpected_type",
                message=f"clients may send only 'subscribe', not {message.TYPE!r}",
            )
        refusal = self._subscribe_refusal(message)
        if refusal is not None:
            self.counters.refuse("subscribe_size")
            return refusal
        self.hub.fanout.subscribe(queue, message.streams)
        self.client_log.log(logging.DEBUG, address,
                            "client %s subscribed to %d stream(s)/prefix(es)",
                            connection.remote_address, len(message.streams))
        return None

    def _subscribe_refusal(self, message: Subscribe) -> ErrorMessage | None:
        """An error for a subscribe over the size limits (None: within them)."""
        limits = self.config.limits
        streams = message.streams
        chars = sum(len(s) for s in streams)
        if len(streams) <= limits.max_subscribe_streams and chars <= limits.max_subscribe_chars:
            return None
        return ErrorMessage(
            code="subscribe_too_large",
            message=f"subscribe of {len(streams)} entries ({chars} characters) refused: at most "
            f"{limits.max_subscribe_streams} entries and {limits.max_subscribe_chars} characters"
            " (--max-subscribe-streams, --max-subscribe-chars); the subscription is unchanged",
        )
