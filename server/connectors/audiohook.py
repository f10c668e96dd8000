"""Genesys Cloud AudioHook Monitor on ``WS /audiohook``: each session one call (event loop).

Genesys Cloud opens one WebSocket per monitored conversation and speaks the AudioHook protocol
(version 2, :mod:`server.connectors.audiohook_protocol`, the pure core this module wraps):
``open`` -> ``opened`` (the server takes PCMU or L16 8 kHz, both channels when offered), binary
audio, ``ping``/``pong``, ``paused``/``resumed``, ``close`` -> ``closed``. The conversation
becomes the call ``<conversationId>`` with one stream per channel: ``external`` (the customer by
default, ``--audiohook-external-role``) and ``internal`` (the agent). Their ``stream_open``
metadata holds the AudioHook session, organisation, correlation and participant ids, the
language and the integration's custom config (``param.<key>``), bounded.

Credentials are checked on the upgrade request (:meth:`AudioHookConnector.authorize`): the
``X-API-KEY`` header must be the configured API key, and with a client secret configured the
request must carry a valid HTTP message signature (:mod:`server.connectors.httpsig`) covering
the request target, the authority, the ``Audiohook-*`` id headers and the API key, no older
than ``--audiohook-max-signature-age-s``, with a nonce not seen before. Anything else is refused
with 401 before the WebSocket opens. The connector does not exist without an API key
(:func:`audiohook_config_from_args` refuses to build it): fail closed.

A session silent for ``--ingest-idle-timeout-s`` is ended the same way, except while the client
has paused it (Genesys Cloud pauses a session while monitoring is off, possibly for long).

Malformed or refused messages (bad JSON, a format not offered, audio before ``opened``, a
``seq`` out of order, a frame over ``--ingest-max-frame-bytes``, a frame that is not whole
sample frames, a call over the limits of :class:`~server.config.IngestConfig`) end the session
the way AudioHook ends one: a ``disconnect`` (reason ``error``, ``info`` saying why), then the
client's ``close`` is answered with ``closed``. Each is counted by code in ``/healthz``
``connectors.audiohook.refused``; the call's streams close with reason ``error``
(``idle_timeout``, ``max_length``) and keep what they produced.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request

from server.connectors.audiohook_protocol import (
    AUDIOHOOK_RATE_HZ,
    MAX_TEXT_CHARS,
    AudioHookError,
    AudioHookSession,
    ClientMessage,
    OpenRequest,
)
from server.connectors.base import ConnectorContext, ConnectorStats, Refusal
from server.connectors.calls import CallRefused, HandlerTasks, PlatformCall, bounded_metadata
from server.connectors.httpsig import (
    CLOCK_SKEW_S,
    NonceCache,
    SignatureError,
    verify_hmac_signature,
)
from server.errors import ServerError
from server.limits import address_of
from server.webhook import read_credential

__all__ = [
    "API_KEY_ENV",
    "CLIENT_SECRET_ENV",
    "DEFAULT_AUDIOHOOK_PATH",
    "SIGNED_COMPONENTS",
    "AudioHookConfig",
    "AudioHookConnector",
    "add_audiohook_flags",
    "audiohook_config_from_args",
]

logger = logging.getLogger(__name__)

API_KEY_ENV = "EMOTION_MONITOR_AUDIOHOOK_API_KEY"
CLIENT_SECRET_ENV = "EMOTION_MONITOR_AUDIOHOOK_CLIENT_SECRET"
DEFAULT_AUDIOHOOK_PATH = "/audiohook"
#: what a signed upgrade request must cover
SIGNED_COMPONENTS = ("@request-target", "@authority", "audiohook-organization-id",
                     "audiohook-session-id", "audiohook-correlation-id", "x-api-key")
_ROLES = ("customer", "agent")
_DEFAULT_MAX_AGE_S = 10.0
#: a client close reason -> the streams' stream_close reason
_CLOSE_REASONS = {"end": "end", "error": "error", "disconnect": "end",
                  "reconnect": "disconnected"}


@dataclass(frozen=True, slots=True)
class AudioHookConfig:
    """The AudioHook connector's settings (secrets kept out of ``repr``).

    - ``api_key``: what Genesys Cloud sends as ``X-API-KEY`` (required: fail closed).
    - ``client_secret``: the decoded client secret; when set every upgrade must be signed.
    - ``path``: the WebSocket path (the integration's connection URI ends with it).
    - ``max_signature_age_s``: how old a signature may be (its ``created``).
    - ``external_role``: the role of the ``external`` channel (``internal`` gets the other).
    """

    api_key: str = field(repr=False)
    client_secret: bytes | None = field(default=None, repr=False)
    path: str = DEFAULT_AUDIOHOOK_PATH
    max_signature_age_s: float = _DEFAULT_MAX_AGE_S
    external_role: str = "customer"
    name: str = field(default="audiohook", init=False)

    def __post_init__(self) -> None:
        if not self.api_key or len(self.api_key) > 4096 or not self.api_key.isprintable():
            raise ServerError("the AudioHook API key must be 1-4096 printable characters "
                              f"(--audiohook-api-key-file or {API_KEY_ENV})")
        if self.client_secret is not None and not 1 <= len(self.client_secret) <= 1024:
            raise ServerError("the AudioHook client secret must decode to 1-1024 bytes")
        if not self.path.startswith("/") or any(c in self.path for c in "?# ") or (
            len(self.path) > 200
        ):
            raise ServerError(f"--audiohook-path must be a plain path such as "
                              f"{DEFAULT_AUDIOHOOK_PATH}, got {self.path[:200]!r}")
        if not 1 <= self.max_signature_age_s <= 300:
            raise ServerError("--audiohook-max-signature-age-s must be 1-300, got "
                              f"{self.max_signature_age_s!r}")
        if self.external_role not in _ROLES:
            raise ServerError(f"--audiohook-external-role must be one of {', '.join(_ROLES)}, "
                              f"got {self.external_role!r}")

    def roles_of(self, channels: Sequence[str]) -> tuple[str, ...]:
        """The role of each AudioHook channel (``external``, ``internal``), in their order."""
        internal = next(role for role in _ROLES if role != self.external_role)
        return tuple(self.external_role if c == "external" else internal for c in channels)

    def build(self, context: ConnectorContext) -> AudioHookConnector:
        return AudioHookConnector(self, context)


def _decode_secret(text: str) -> bytes:
    """The client secret as Genesys Cloud shows it (base64) -> its bytes."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServerError("the AudioHook client secret is not base64 (paste it as Genesys "
                          "Cloud shows it)") from None


def add_audiohook_flags(parser: argparse.ArgumentParser) -> None:
    """The ``run`` flags of the AudioHook connector (one argument group)."""
    group = parser.add_argument_group(
        "Genesys Cloud AudioHook Monitor (see docs/connectors.md)",
        f"The API key comes from --audiohook-api-key-file or {API_KEY_ENV}; the client secret "
        f"(optional: with it every connection must be signed) from "
        f"--audiohook-client-secret-file or {CLIENT_SECRET_ENV}; never from the command line.",
    )
    group.add_argument("--audiohook", action="store_true",
                       help="serve Genesys Cloud AudioHook Monitor sessions on --audiohook-path "
                       "(needs the API key)")
    group.add_argument("--audiohook-path", default=None, metavar="PATH",
                       help=f"its WebSocket path (default: {DEFAULT_AUDIOHOOK_PATH})")
    group.add_argument("--audiohook-api-key-file", type=Path, default=None, metavar="FILE",
                       help="file holding the integration's API key (chmod 600)")
    group.add_argument("--audiohook-client-secret-file", type=Path, default=None, metavar="FILE",
                       help="file holding the integration's client secret (base64, chmod 600)")
    group.add_argument("--audiohook-max-signature-age-s", type=float, default=None,
                       metavar="S", help="refuse signatures older than this "
                       f"(default: {_DEFAULT_MAX_AGE_S:g})")
    group.add_argument("--audiohook-external-role", choices=_ROLES, default=None,
                       help="role of the external channel; internal gets the other "
                       "(default: customer)")


_OPTIONAL_FLAGS = (("--audiohook-path", "audiohook_path"),
                   ("--audiohook-api-key-file", "audiohook_api_key_file"),
                   ("--audiohook-client-secret-file", "audiohook_client_secret_file"),
                   ("--audiohook-max-signature-age-s", "audiohook_max_signature_age_s"),
                   ("--audiohook-external-role", "audiohook_external_role"))


def audiohook_config_from_args(args: argparse.Namespace) -> AudioHookConfig | None:
    """The connector's config from ``run`` flags; None without ``--audiohook``.

    ServerError without an API key (the connector fails closed), for an unreadable or
    non-base64 secret, and for ``--audiohook-*`` flags given without ``--audiohook``.
    """
    given = [flag for flag, dest in _OPTIONAL_FLAGS if getattr(args, dest) is not None]
    if not args.audiohook:
        if given:
            raise ServerError(f"{given[0]} is an AudioHook setting: add --audiohook")
        return None
    api_key = read_credential(args.audiohook_api_key_file, API_KEY_ENV, "AudioHook API key")
    if api_key is None:
        raise ServerError(f"--audiohook needs the integration's API key: "
                          f"--audiohook-api-key-file FILE or {API_KEY_ENV}")
    secret = read_credential(args.audiohook_client_secret_file, CLIENT_SECRET_ENV,
                             "AudioHook client secret")
    return AudioHookConfig(
        api_key=api_key,
        client_secret=None if secret is None else _decode_secret(secret),
        path=args.audiohook_path or DEFAULT_AUDIOHOOK_PATH,
        max_signature_age_s=args.audiohook_max_signature_age_s or _DEFAULT_MAX_AGE_S,
        external_role=args.audiohook_external_role or "customer",
    )


def _single(headers: Headers, name: str) -> str | None:
    """A header given exactly once, or None."""
    values = headers.get_all(name)
    return values[0].strip() if len(values) == 1 else None


def _component(request: Request, name: str) -> str | None:
    """A signature component's value in the upgrade request (see httpsig)."""
    if name == "@request-target":
        return request.path
    if name == "@authority":
        host = _single(request.headers, "Host")
        return host.lower() if host else None
    values = request.headers.get_all(name)
    return ", ".join(value.strip() for value in values) if values else None


@dataclass(slots=True)
class _Link:
    """What one AudioHook connection has (its handler's own state, never shared)."""

    connection: ServerConnection
    address: str
    session: AudioHookSession
    correlation_id: str | None
    call: PlatformCall | None = None
    reason: str = "disconnected"  # the streams' stream_close reason if it ended now
    disconnected: bool = False  # whether we sent disconnect

    @property
    def name(self) -> str:
        return self.session.session_id or "(no session id yet)"


class AudioHookConnector:
    """Serves AudioHook sessions on one path into the shared call desk (event loop).

    What a session has lives in its handler (:class:`_Link`); shared are the counters, the
    signature nonces and the handler tasks (for shutdown). ``close()`` is idempotent.
    """

    def __init__(self, config: AudioHookConfig, context: ConnectorContext) -> None:
        self.config = config
        self.context = context
        self.name = config.name
        self.path = config.path
        self._stats = ConnectorStats()
        self._nonces = NonceCache(config.max_signature_age_s + CLOCK_SKEW_S)
        self._live = 0
        self._probes = 0
        self._dropped = 0
        self._client_errors: dict[str, int] = {}
        self._handlers = HandlerTasks()  # the connections' handler tasks, for shutdown

    @property
    def max_message_bytes(self) -> int:
        """Room for the largest audio frame and text message, with slack: a message between
        the connector's own limits and this one gets a ``disconnect``; past it, 1009."""
        return 2 * max(self.context.ingest.max_frame_bytes, 4 * MAX_TEXT_CHARS)

    def stats(self) -> dict[str, Any]:
        return {**self._stats.as_dict(self._live), "probes": self._probes,
                "dropped": self._dropped, "client_errors": dict(self._client_errors),
                "signed": self.config.client_secret is not None}

    # -- credentials (the upgrade request) -------------------------------------------------

    def authorize(self, connection: ServerConnection, request: Request) -> Refusal | None:
        """The API key, then (with a client secret) the signature; 401 when either fails."""
        try:
            self._check_credentials(request)
        except SignatureError as exc:
            self._stats.refuse(exc.code)
            self.context.log.warning(address_of(connection.remote_address),
                                     "audiohook: refused the connection from %s: %s (%s)",
                                     connection.remote_address, exc, exc.code)
            return Refusal(HTTPStatus.UNAUTHORIZED, f"AudioHook credentials refused: {exc}\n")
        return None

    def _check_credentials(self, request: Request) -> None:
        key = _single(request.headers, "X-API-KEY")
        if key is None:
            raise SignatureError("no_api_key", "no single X-API-KEY header")
        if not hmac.compare_digest(key.encode(), self.config.api_key.encode()):
            raise SignatureError("bad_api_key", "the X-API-KEY is not this server's API key")
        if self.config.client_secret is None:
            return
        verify_hmac_signature(
            signature_input=_single(request.headers, "Signature-Input"),
            signature=_single(request.headers, "Signature"),
            lookup=lambda name: _component(request, name),
            secret=self.config.client_secret,
            keyid=self.config.api_key,
            required=SIGNED_COMPONENTS,
            max_age_s=self.config.max_signature_age_s,
            now=time.time(),
            nonces=self._nonces,
        )

    # -- one session -------------------------------------------------------------------------

    async def handle(self, connection: ServerConnection) -> None:
        """One AudioHook session, start to end (the connection's handler task)."""
        if self._handlers.closing:
            await connection.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        with self._handlers.track():
            link = self._link(connection)
            try:
                await self._serve(link)
            except ConnectionClosed:
                pass  # link.reason says how far the session got
            except asyncio.CancelledError:
                await self._shut(link)
                raise
            except Exception:
                logger.exception("audiohook session %s: handler failed; closing that session only",
                                 link.name)
                link.reason = "error"
                await connection.close(CloseCode.INTERNAL_ERROR, "internal error")
            finally:
                await self._finish(link)

    def _link(self, connection: ServerConnection) -> _Link:
        headers = connection.request.headers if connection.request is not None else Headers()
        session = AudioHookSession(
            session_id=_single(headers, "Audiohook-Session-Id"),
            organization_id=_single(headers, "Audiohook-Organization-Id"),
            max_frame_bytes=self.context.ingest.max_frame_bytes,
        )
        return _Link(connection, address_of(connection.remote_address), session,
                     _single(headers, "Audiohook-Correlation-Id"))

    async def _serve(self, link: _Link) -> None:
        """Take messages until ``closed`` is sent; a refusal sends ``disconnect`` and goes on
        (the client answers with ``close``)."""
        while link.session.state != "closed":
            try:
                frame = await self._recv(link)
                if isinstance(frame, str):
                    await self._text(link, frame)
                else:
                    await self._audio(link, frame)
            except AudioHookError as exc:
                if not await self._refuse(link, exc):  # silent after our disconnect: give up
                    await link.connection.close(CloseCode.POLICY_VIOLATION, exc.code)
                    return
        await self._drain(link)

    async def _recv(self, link: _Link) -> str | bytes:
        """The next message; AudioHookError ``idle_timeout`` when none comes in time.

        Not while the client has paused: Genesys Cloud keeps a session open and paused while
        monitoring is off for part of a call (IVR, queue, secure pause), which may last long;
        the WebSocket keepalive pings still find a peer that is gone.
        """
        timeout_s = None if link.session.state == "paused" else self.context.ingest.idle_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await link.connection.recv()
        except TimeoutError:
            raise AudioHookError(
                "idle_timeout", f"no message for {timeout_s:g} s (--ingest-idle-timeout-s)",
                close_reason="idle_timeout") from None

    async def _text(self, link: _Link, text: str) -> None:
        message = link.session.receive_text(text)
        if message is None:
            return
        kind = message.type
        if kind == "open":
            await self._open(link)
        elif kind == "ping":
            await link.connection.send(link.session.pong())
        elif kind == "close":
            await self._close(link, message)
        elif kind == "error":
            self._client_error(link, message)
        else:  # paused, resumed, update, discarded: client-paced, so rate-limited
            self.context.log.log(logging.INFO, link.address, "audiohook session %s: %s at "
                                 "%.3f s", link.name, kind, link.session.position_s)

    async def _open(self, link: _Link) -> None:
        """Open the call named by the ``open`` (not for a probe), then answer ``opened``."""
        request = link.session.open_request
        assert request is not None
        if request.probe:
            self._probes += 1
            await link.connection.send(link.session.opened())
            self.context.log.info(link.address, "audiohook: connection probe %s from %s "
                                  "answered", link.name, link.connection.remote_address)
            return
        roles = self.config.roles_of(request.media.channels)
        try:
            link.call = self.context.desk.open(
                request.conversation_id, roles, sample_rate_hz=AUDIOHOOK_RATE_HZ,
                source=self.name, metadata=self._metadata(link, request))
        except CallRefused as exc:
            raise AudioHookError(exc.code, str(exc)) from exc
        self._stats.calls += 1
        self._live += 1
        await link.connection.send(link.session.opened())
        self.context.log.info(
            link.address, "audiohook session %s from %s: conversation %s, %s 8000 Hz %s -> %s",
            link.name, link.connection.remote_address, request.conversation_id,
            request.media.format, "+".join(request.media.channels),
            ", ".join(link.call.stream_ids))

    def _metadata(self, link: _Link, request: OpenRequest) -> dict[str, str]:
        """The streams' metadata: the AudioHook ids, the language, the custom config."""
        ours = [("audiohook.session_id", link.session.session_id),
                ("audiohook.organization_id", request.organization_id),
                ("audiohook.correlation_id", link.correlation_id),
                ("audiohook.participant_id", request.participant_id),
                ("audiohook.format", request.media.format),
                ("language", request.language)]
        kept, dropped = bounded_metadata((k, v) for k, v in ours if v is not None)
        custom, more = bounded_metadata(
            ((key, value if isinstance(value, str) else json.dumps(value))
             for key, value in request.custom_config.items()), prefix="param.")
        if dropped + more:
            self._stats.metadata_dropped += dropped + more
            self.context.log.warning(link.address, "audiohook session %s: %d custom config "
                                     "entries left out or cut", link.name, dropped + more)
        return {**custom, **kept}

    async def _audio(self, link: _Link, data: bytes) -> None:
        self._stats.frames += 1
        self._stats.bytes += len(data)
        audio = link.session.receive_audio(data)
        call = link.call
        if audio is None or not audio.shape[0]:
            return
        if call is None:  # a probe that sends audio: nothing to feed
            self._dropped += 1
            return
        try:
            await call.feed_many({role: np.ascontiguousarray(audio[:, i])
                                  for i, role in enumerate(call.roles)})
        except CallRefused as exc:
            raise AudioHookError(exc.code, str(exc), close_reason=(
                "max_length" if exc.code == "call_too_long" else "error")) from exc

    async def _close(self, link: _Link, message: ClientMessage) -> None:
        """The client's ``close``: end the call, answer ``closed``."""
        if not link.disconnected:
            reason = message.parameters.get("reason")
            link.reason = _CLOSE_REASONS.get(reason if isinstance(reason, str) else "", "end")
        if link.call is not None:
            await link.call.close(link.reason)
        await link.connection.send(link.session.closed())

    def _client_error(self, link: _Link, message: ClientMessage) -> None:
        """An ``error`` the client reports about our messages: counted and logged."""
        code = str(message.parameters.get("code"))
        if code in self._client_errors or len(self._client_errors) < 64:
            self._client_errors[code] = self._client_errors.get(code, 0) + 1
        text = message.parameters.get("message")
        self.context.log.warning(link.address, "audiohook session %s: the client reports "
                                 "error %s: %.200r", link.name, code, text)

    async def _refuse(self, link: _Link, exc: AudioHookError) -> bool:
        """Count, log and answer a refusal with ``disconnect``; False when one was sent already."""
        message = link.session.disconnect(exc.reason, exc.info)
        if message is None:
            return False
        self._stats.refuse(exc.code)
        link.reason, link.disconnected = exc.close_reason, True
        if link.call is not None:
            await link.call.close(link.reason)  # what came later is not fed
        self.context.log.warning(link.address, "audiohook session %s from %s refused: %s (%s)",
                                 link.name, link.connection.remote_address, exc, exc.code)
        await link.connection.send(message)
        return True

    async def _drain(self, link: _Link) -> None:
        """After ``closed``: let the client close the WebSocket; close it ourselves if it
        does not within the idle timeout. What still comes is dropped (counted)."""
        try:
            async with asyncio.timeout(self.context.ingest.idle_timeout_s):
                while True:
                    frame = await link.connection.recv()
                    if isinstance(frame, str):
                        link.session.receive_text(frame)
                    else:
                        link.session.receive_audio(frame)
        except TimeoutError:
            await link.connection.close(CloseCode.NORMAL_CLOSURE, "session closed")

    async def _shut(self, link: _Link) -> None:
        """Server shutdown: end the call, tell the client (``disconnect``), close with 1001."""
        link.reason = "shutdown"
        if link.call is not None:
            await link.call.close(link.reason)
        message = link.session.disconnect("completed", "the server is shutting down")
        try:
            if message is not None:
                await link.connection.send(message)
            await link.connection.close(CloseCode.GOING_AWAY, "server shutting down")
        except ConnectionClosed:
            pass

    async def _finish(self, link: _Link) -> None:
        """Whatever way the session ended: its streams closed, its counts added, one log line."""
        self._dropped += link.session.dropped
        sent = link.connection.protocol.close_sent
        if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:  # websockets' own limit
            self._stats.refuse("frame_too_big")
            self.context.log.warning(link.address, "audiohook session %s: a message over %d "
                                     "bytes; closed with 1009", link.name,
                                     self.max_message_bytes)
        if link.call is None:
            return
        self._live -= 1
        await link.call.close(link.reason)
        self.context.log.info(link.address, "audiohook session %s ended (%s) after %.1f s of "
                              "audio", link.name, link.reason, link.session.position_s)

    async def close(self) -> None:
        """End every session (streams close with reason shutdown); idempotent."""
        await self._handlers.end_all(self.context.shutdown_timeout_s)
