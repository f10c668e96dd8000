"""Twilio Media Streams (``<Start><Stream>``) into per-party engine streams (event loop).

Twilio opens a WebSocket to the ``url`` of the TwiML ``<Stream>`` and sends JSON text messages:
``connected`` (protocol and version), ``start`` (streamSid, accountSid, callSid, tracks,
customParameters, mediaFormat), then ``media`` (track, chunk, timestamp and a base64 payload of
8 kHz mu-law), ``dtmf`` and ``mark`` as they happen, and ``stop`` at the end. Every message but
``connected`` carries a ``sequenceNumber`` that counts up from 1 over the whole connection.

The pure parts take text and return values: :func:`parse_twilio_message` turns one message into
one frozen dataclass per kind (or raises :class:`TwilioRejected` naming the case), and
:func:`twilio_signature` / :func:`twilio_signature_ok` compute and check ``X-Twilio-Signature``
(base64 HMAC-SHA1 of the URL Twilio connected to, keyed with the account's auth token). The
:class:`TwilioConnector` is the thin adapter the event server routes ``--twilio-path`` to:

- the upgrade request must carry a valid signature (403 before the upgrade otherwise, counted);
- ``start`` opens the call ``<callSid>`` on the shared :class:`~server.connectors.calls.CallDesk`
  with one engine stream per track: ``inbound`` -> ``--twilio-inbound-role`` (customer by
  default), ``outbound`` -> the other role; each ``media`` payload is decoded and fed to its
  track's stream at 8 kHz;
- ``stop`` ends the call (``stream_close`` reason ``end``, close 1000); a dropped connection
  ends it with ``disconnected``; the idle timeout and the message size limit are /ingest's.

Twilio reads nothing a unidirectional stream sends back, so a malformed message is answered by
closing the WebSocket with a close code (1003 data we will not take, 1008 protocol order, 1009
too big, 1013 server full, 1011 our own failure) whose reason is the case's code; every case is
logged (rate-limited per address) and counted in ``/healthz`` ``connectors.twilio.refused``.
Unknown events are counted and skipped (Twilio may add kinds); ``dtmf`` and ``mark`` are counted
only: DTMF digits can be PINs or card numbers, so they are neither logged nor stored.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from numpy.typing import NDArray
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request

from server.connectors.base import ConnectorContext, ConnectorStats, Refusal
from server.connectors.calls import CallRefused, HandlerTasks, PlatformCall, bounded_metadata
from server.errors import ServerError
from server.ingest import IdleWatch, frame_waiting
from server.limits import address_of
from server.webhook import read_credential
from streamer.audio import int16_to_float32
from streamer.telephony import PHONE_RATE_HZ, mulaw_decode

__all__ = [
    "TWILIO_AUTH_TOKEN_ENV",
    "TWILIO_SIGNATURE_HEADER",
    "TwilioConfig",
    "TwilioConnected",
    "TwilioConnector",
    "TwilioDtmf",
    "TwilioMark",
    "TwilioMedia",
    "TwilioMessage",
    "TwilioRejected",
    "TwilioStart",
    "TwilioStop",
    "TwilioUnknown",
    "add_twilio_flags",
    "twilio_config_from_args",
    "parse_twilio_message",
    "twilio_signature",
    "twilio_signature_ok",
]

logger = logging.getLogger(__name__)

#: the environment variable the auth token may come from (instead of --twilio-auth-token-file)
TWILIO_AUTH_TOKEN_ENV = "EMOTION_MONITOR_TWILIO_AUTH_TOKEN"
#: the request header Twilio signs its WebSocket upgrade with
TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
_DEFAULT_PATH = "/twilio"
_ROLES = ("customer", "agent")
_TRACKS = ("inbound", "outbound")
#: the one media format Twilio streams: 8 kHz mono G.711 mu-law
_MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": PHONE_RATE_HZ, "channels": 1}
_SID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_PATH = re.compile(r"/[A-Za-z0-9_./-]{0,199}")
_UNSUPPORTED = CloseCode.UNSUPPORTED_DATA  # 1003: data the server will not take
_POLICY = CloseCode.POLICY_VIOLATION  # 1008: protocol order


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TwilioConfig:
    """The Twilio connector's settings (``run --twilio-*`` flags).

    - ``auth_token``: the Twilio account's auth token, the key of ``X-Twilio-Signature``.
    - ``path``: the server path Twilio connects to (``--twilio-path``).
    - ``public_url``: the exact ``wss://`` URL given to Twilio in the TwiML; the signature is
      computed over it. Without it the URL is rebuilt from the request (``wss://`` + Host +
      path), which is right unless a proxy in front changes the host or the path.
    - ``inbound_role``: the role of Twilio's ``inbound`` track (audio from the caller's side of
      the call leg, the customer in a call centre that Twilio answers); ``outbound`` gets the
      other role.
    """

    auth_token: str = field(repr=False)
    path: str = _DEFAULT_PATH
    public_url: str | None = None
    inbound_role: str = "customer"
    name: str = "twilio"

    def __post_init__(self) -> None:
        token = self.auth_token
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n\0"):
            raise ServerError("the Twilio auth token must be one non-empty line (from "
                              f"--twilio-auth-token-file or {TWILIO_AUTH_TOKEN_ENV})")
        if not _PATH.fullmatch(self.path):
            raise ServerError(f"--twilio-path must be a plain absolute path such as "
                              f"{_DEFAULT_PATH}, got {self.path[:80]!r}")
        if self.public_url is not None:
            _check_public_url(self.public_url)
        if self.inbound_role not in _ROLES:
            raise ServerError(f"--twilio-inbound-role must be one of {', '.join(_ROLES)}, got "
                              f"{self.inbound_role!r}")

    @property
    def roles(self) -> dict[str, str]:
        """Twilio track -> role of its engine stream."""
        other = _ROLES[1] if self.inbound_role == _ROLES[0] else _ROLES[0]
        return {"inbound": self.inbound_role, "outbound": other}

    def build(self, context: ConnectorContext) -> TwilioConnector:
        return TwilioConnector(self, context)


def _check_public_url(url: str) -> None:
    """A ``wss://host[:port]/path`` URL, as Twilio takes it (no query string, no fragment)."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
        parts = urlsplit("")
    if (not port_ok or parts.scheme != "wss" or not parts.hostname or parts.query
            or parts.fragment or parts.username or not _PATH.fullmatch(parts.path or "/")):
        raise ServerError("--twilio-public-url must be the wss://HOST[:PORT]/PATH URL given to "
                          f"Twilio (no query string: Twilio does not take one), got {url[:120]!r}")


def add_twilio_flags(parser: argparse.ArgumentParser) -> None:
    """The ``run`` flags of the Twilio connector (one argument group)."""
    group = parser.add_argument_group(
        "Twilio Media Streams",
        "Serve Twilio <Start><Stream track=\"both_tracks\"> calls on --twilio-path of this "
        "port. On when the account's auth token is given (--twilio-auth-token-file, or the "
        f"environment variable {TWILIO_AUTH_TOKEN_ENV}); every connection must carry a valid "
        "X-Twilio-Signature.",
    )
    group.add_argument("--twilio-auth-token-file", type=Path, default=None, metavar="FILE",
                       help="file whose first line is the Twilio account's auth token "
                       "(chmod 600)")
    group.add_argument("--twilio-path", default=None, metavar="PATH",
                       help=f"the path Twilio connects to (default: {_DEFAULT_PATH})")
    group.add_argument("--twilio-public-url", default=None, metavar="URL",
                       help="the wss:// URL given to Twilio, when a proxy in front changes the "
                       "host or path (default: wss:// + the request's Host + path)")
    group.add_argument("--twilio-inbound-role", default=None, choices=_ROLES,
                       help="role of Twilio's inbound track; the outbound track gets the other "
                       "(default: customer)")


def twilio_config_from_args(args: argparse.Namespace) -> TwilioConfig | None:
    """The Twilio config from ``run`` flags; None when no auth token is configured.

    A ``--twilio-*`` setting without a token is a ServerError: the connector never runs
    without its credential (fail closed), and a half-configured one is a mistake worth saying.
    """
    token = read_credential(args.twilio_auth_token_file, TWILIO_AUTH_TOKEN_ENV,
                            "Twilio auth token")
    given = {"--twilio-path": args.twilio_path, "--twilio-public-url": args.twilio_public_url,
             "--twilio-inbound-role": args.twilio_inbound_role}
    if token is None:
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            raise ServerError(f"{', '.join(named)} needs the Twilio auth token: give "
                              f"--twilio-auth-token-file or set {TWILIO_AUTH_TOKEN_ENV}")
        return None
    return TwilioConfig(
        auth_token=token,
        path=args.twilio_path or _DEFAULT_PATH,
        public_url=args.twilio_public_url,
        inbound_role=args.twilio_inbound_role or "customer",
    )


# -- the signature ----------------------------------------------------------------------------


def twilio_signature(
    auth_token: str, url: str, params: Mapping[str, str] | None = None
) -> str:
    """``X-Twilio-Signature`` of a request: base64 HMAC-SHA1, keyed with the auth token, of the
    URL followed by each POST parameter's name and value in name order (a WebSocket upgrade is
    a GET: the URL alone)."""
    data = url + "".join(f"{name}{value}" for name, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _port_variants(url: str) -> list[str]:
    """``url`` as given, without its scheme's default port, and with it.

    Whether the signed URL names the default port depends on how it was written; Twilio's own
    validators accept both forms, and so does this one.
    """
    parts = urlsplit(url)
    default = {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parts.scheme)
    if default is None or parts.hostname is None:
        return [url]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if parts.port not in (None, default):
        return [url]
    bare = urlunsplit(parts._replace(netloc=host))
    ported = urlunsplit(parts._replace(netloc=f"{host}:{default}"))
    return [url, *(u for u in (bare, ported) if u != url)]


def twilio_signature_ok(auth_token: str, url: str, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``url`` (constant-time compare, each port form)."""
    if not header:
        return False
    given = header.strip().encode()
    return any(hmac.compare_digest(twilio_signature(auth_token, variant).encode(), given)
               for variant in _port_variants(url))


# -- messages -----------------------------------------------------------------------------------


class TwilioRejected(Exception):
    """A message (or call) the connector will not take: ``code`` names it, ``close`` is the
    WebSocket close code it is answered with."""

    def __init__(self, code: str, message: str, close: int) -> None:
        super().__init__(message)
        self.code = code
        self.close = close


@dataclass(frozen=True, slots=True)
class TwilioConnected:
    """``connected``: the first message, naming the protocol."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class TwilioStart:
    """``start``: the stream's metadata (its mediaFormat already checked: 8 kHz mono mu-law)."""

    sequence: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class TwilioMedia:
    """``media``: one chunk of one track, its payload already base64-decoded (mu-law bytes)."""

    sequence: int
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TwilioDtmf:
    """``dtmf``: a key pressed on the inbound track."""

    sequence: int
    stream_sid: str
    track: str
    digit: str = field(repr=False)  # may be part of a PIN: kept out of reprs and logs


@dataclass(frozen=True, slots=True)
class TwilioMark:
    """``mark``: audio sent with a mark finished playing (bidirectional streams)."""

    sequence: int
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class TwilioStop:
    """``stop``: the stream ended (the call hung up, or the stream was stopped)."""

    sequence: int
    stream_sid: str


@dataclass(frozen=True, slots=True)
class TwilioUnknown:
    """A message with an ``event`` this connector does not know (counted and skipped)."""

    event: str
    sequence: int | None


TwilioMessage = (TwilioConnected | TwilioStart | TwilioMedia | TwilioDtmf | TwilioMark
                 | TwilioStop | TwilioUnknown)


def _bad(what: str) -> TwilioRejected:
    return TwilioRejected("bad_message", what, _UNSUPPORTED)


def _object(message: Mapping[str, Any], key: str, event: str) -> Mapping[str, Any]:
    value = message.get(key)
    if not isinstance(value, dict):
        raise _bad(f"a {event} message needs a {key!r} object")
    return value


def _text(value: object, what: str, *, limit: int = 256) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise _bad(f"{what} must be a string of 1-{limit} characters, got {str(value)[:40]!r}")
    return value


def _sid(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SID.fullmatch(value):
        raise _bad(f"{what} must be an id of 1-128 letters, digits or _.:-, got "
                   f"{str(value)[:40]!r}")
    return value


def _number(value: object, what: str) -> int:
    """A counter Twilio sends as a string of digits (a plain integer is taken too)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
        return value
    if isinstance(value, str) and 0 < len(value) <= 18 and value.isascii() and value.isdigit():
        return int(value)
    raise _bad(f"{what} must be a string of digits, got {str(value)[:40]!r}")


def parse_twilio_message(text: str | bytes) -> TwilioMessage:
    """One Twilio WebSocket message -> its dataclass; TwilioRejected names what is wrong.

    Codes: ``binary_message`` (Twilio sends text only), ``bad_json`` (not a JSON object),
    ``bad_message`` (a field missing or of the wrong kind), ``unsupported_format`` (a
    mediaFormat other than audio/x-mulaw, 8000 Hz, 1 channel), ``bad_base64`` (a payload that
    is not base64).
    """
    if isinstance(text, bytes):
        raise TwilioRejected("binary_message", "Twilio sends JSON text messages, not binary",
                             _UNSUPPORTED)
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise TwilioRejected("bad_json", f"not JSON: {exc}", _UNSUPPORTED) from None
    if not isinstance(message, dict):
        raise TwilioRejected("bad_json", "a message must be a JSON object", _UNSUPPORTED)
    event = message.get("event")
    if not isinstance(event, str):
        raise _bad("a message needs an 'event' string")
    parse = _PARSERS.get(event)
    if parse is None:
        sequence = message.get("sequenceNumber")
        return TwilioUnknown(event[:32], None if sequence is None else
                             _number(sequence, "sequenceNumber"))
    return parse(message)


def _connected(message: Mapping[str, Any]) -> TwilioConnected:
    return TwilioConnected(_text(message.get("protocol"), "connected.protocol", limit=64),
                           _text(message.get("version"), "connected.version", limit=64))


def _start(message: Mapping[str, Any]) -> TwilioStart:
    start = _object(message, "start", "start")
    tracks = start.get("tracks")
    if (not isinstance(tracks, list) or not 1 <= len(tracks) <= len(_TRACKS)
            or len(set(map(str, tracks))) != len(tracks) or not set(tracks) <= set(_TRACKS)):
        raise _bad(f"start.tracks must list distinct tracks of {list(_TRACKS)}, got "
                   f"{str(tracks)[:80]}")
    _check_media_format(start.get("mediaFormat"))
    params = start.get("customParameters", {})
    if not isinstance(params, dict):
        raise _bad("start.customParameters must be an object")
    stream_sid = _sid(start.get("streamSid"), "start.streamSid")
    outer = message.get("streamSid", stream_sid)
    if outer != stream_sid:
        raise _bad("the start message's streamSid and start.streamSid differ")
    return TwilioStart(
        sequence=_number(message.get("sequenceNumber"), "sequenceNumber"),
        stream_sid=stream_sid,
        account_sid=_sid(start.get("accountSid"), "start.accountSid"),
        call_sid=_text(start.get("callSid"), "start.callSid", limit=128),
        tracks=tuple(tracks),
        custom_parameters=tuple(params.items()),
    )


def _check_media_format(media_format: object) -> None:
    """Twilio's one format; anything else is ``unsupported_format`` naming what came."""
    if not isinstance(media_format, dict):
        raise _bad("start.mediaFormat must be an object")
    got = {key: media_format.get(key) for key in _MEDIA_FORMAT}
    if got != _MEDIA_FORMAT or any(isinstance(v, bool) for v in got.values()):
        shown = ", ".join(f"{k}={str(v)[:40]!r}" for k, v in got.items())
        want = ", ".join(f"{k}={v!r}" for k, v in _MEDIA_FORMAT.items())
        raise TwilioRejected("unsupported_format", f"mediaFormat {shown}: this connector takes "
                             f"{want} only", _UNSUPPORTED)


def _media(message: Mapping[str, Any]) -> TwilioMedia:
    media = _object(message, "media", "media")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise _bad("media.payload must be a base64 string")
    try:
        audio = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        raise TwilioRejected("bad_base64", "media.payload is not base64", _UNSUPPORTED) from None
    return TwilioMedia(
        sequence=_number(message.get("sequenceNumber"), "sequenceNumber"),
        stream_sid=_text(message.get("streamSid"), "streamSid", limit=128),
        track=_text(media.get("track"), "media.track", limit=32),
        chunk=_number(media.get("chunk"), "media.chunk"),
        timestamp_ms=_number(media.get("timestamp"), "media.timestamp"),
        payload=audio,
    )


def _dtmf(message: Mapping[str, Any]) -> TwilioDtmf:
    dtmf = _object(message, "dtmf", "dtmf")
    return TwilioDtmf(
        sequence=_number(message.get("sequenceNumber"), "sequenceNumber"),
        stream_sid=_text(message.get("streamSid"), "streamSid", limit=128),
        track=_text(dtmf.get("track"), "dtmf.track", limit=32),
        digit=_text(dtmf.get("digit"), "dtmf.digit", limit=8),
    )


def _mark(message: Mapping[str, Any]) -> TwilioMark:
    mark = _object(message, "mark", "mark")
    return TwilioMark(
        sequence=_number(message.get("sequenceNumber"), "sequenceNumber"),
        stream_sid=_text(message.get("streamSid"), "streamSid", limit=128),
        name=_text(mark.get("name"), "mark.name"),
    )


def _stop(message: Mapping[str, Any]) -> TwilioStop:
    _object(message, "stop", "stop")
    return TwilioStop(
        sequence=_number(message.get("sequenceNumber"), "sequenceNumber"),
        stream_sid=_text(message.get("streamSid"), "streamSid", limit=128),
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any]], TwilioMessage]] = {
    "connected": _connected, "start": _start, "media": _media, "dtmf": _dtmf, "mark": _mark,
    "stop": _stop,
}


@cache
def _mulaw_table() -> NDArray[np.float32]:
    """Every mu-law byte's value as float32 in [-1, 1) (G.711 decode, then int16 scaling)."""
    return int16_to_float32(mulaw_decode(np.arange(256, dtype=np.uint8)))


def _decode_mulaw(payload: bytes) -> NDArray[np.float32]:
    return _mulaw_table().take(np.frombuffer(payload, dtype=np.uint8))


# -- the connector ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Stream:
    """What one Twilio connection has so far (its handler's own state, never shared)."""

    connection: ServerConnection
    address: str
    start: TwilioStart | None = None
    call: PlatformCall | None = None
    roles: dict[str, str] = field(default_factory=dict)  # track -> role, from start.tracks
    connected: bool = False  # a connected message came
    sequence: int = 0  # the last sequenceNumber seen
    reason: str = "disconnected"  # the stream_close reason if the call ended now

    @property
    def name(self) -> str:
        return self.start.call_sid if self.start is not None else "(not started)"


#: rejection code -> stream_close reason (others: "error")
_CLOSE_REASONS = {"idle_timeout": "idle_timeout", "call_too_long": "max_length",
                  "shutting_down": "shutdown"}
#: a desk refusal's code -> its close code
_DESK_CLOSE = {"too_many_calls": CloseCode.TRY_AGAIN_LATER, "shutting_down": CloseCode.GOING_AWAY,
               "bad_call_id": _UNSUPPORTED, "bad_audio": _UNSUPPORTED}


class TwilioConnector:
    """Serves Twilio Media Streams on ``config.path`` (the event server's handler; event loop).

    ``authorize`` checks each upgrade request's signature; ``handle`` runs one stream to its
    end. What a stream has lives in its handler; shared across streams: the counters, the live
    call ids (on the desk) and the handler tasks (for shutdown). ``close()`` is idempotent.
    """

    def __init__(self, config: TwilioConfig, context: ConnectorContext) -> None:
        self.config = config
        self.context = context
        self.name = config.name
        self.path = config.path
        self._limit = context.ingest.max_frame_bytes
        self._stats = ConnectorStats()
        #: counted, not refused: dtmf and mark messages, sequenceNumber gaps, unknown events
        #: skipped, connections that closed before stop
        self._extra = dict.fromkeys(
            ("dtmf", "marks", "sequence_gaps", "skipped", "disconnected"), 0)
        self._live: set[str] = set()
        self._handlers = HandlerTasks()  # the connections' handler tasks, for shutdown

    @property
    def max_message_bytes(self) -> int:
        """websockets' hard cap: messages up to it get our own counted ``message_too_big``."""
        return 4 * self._limit

    def stats(self) -> dict[str, Any]:
        return {**self._stats.as_dict(len(self._live)), **self._extra}

    # -- the upgrade request ------------------------------------------------------------------

    def authorize(self, connection: ServerConnection, request: Request) -> Refusal | None:
        """403 unless ``X-Twilio-Signature`` signs the URL Twilio connected to (counted)."""
        headers = request.headers.get_all(TWILIO_SIGNATURE_HEADER)
        hosts = request.headers.get_all("Host")  # the server let only a single one through
        host = hosts[0] if len(hosts) == 1 else ""
        url = self.config.public_url or f"wss://{host}{request.path}"
        if len(headers) != 1:
            code = "missing_signature" if not headers else "bad_signature"
        elif twilio_signature_ok(self.config.auth_token, url, headers[0]):
            return None
        else:
            code = "bad_signature"
        self._stats.refuse(code)
        hint = "" if self.config.public_url else " (behind a proxy: set --twilio-public-url)"
        return Refusal(HTTPStatus.FORBIDDEN, f"X-Twilio-Signature missing or not valid for "
                       f"this URL{hint}\n", reason="twilio_signature")

    # -- one stream ---------------------------------------------------------------------------

    async def handle(self, connection: ServerConnection) -> None:
        """One Twilio stream, connect to close (the connection's handler task)."""
        if self._handlers.closing:
            await connection.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        with self._handlers.track():
            stream = _Stream(connection, address_of(connection.remote_address))
            try:
                await self._serve(stream)
            finally:
                if stream.call is not None:
                    self._live.discard(stream.call.call_id)
                    await stream.call.close(stream.reason)

    async def _serve(self, stream: _Stream) -> None:
        """Run the stream; every way it can end sets ``stream.reason`` and closes the socket."""
        connection = stream.connection
        try:
            await self._receive(stream)
            stream.reason = "end"
            if stream.call is not None:
                await stream.call.close("end")
            self.context.log.info(stream.address, "twilio %s: stop", stream.name)
            await connection.close(CloseCode.NORMAL_CLOSURE, "stream stopped")
        except TwilioRejected as exc:
            await self._reject(stream, exc)
        except ConnectionClosed as exc:
            self._closed(stream, exc)
        except asyncio.CancelledError:
            stream.reason = "shutdown"
            if stream.call is not None:
                await stream.call.close("shutdown")
            await connection.close(CloseCode.GOING_AWAY, "server shutting down")
            raise
        except Exception:
            stream.reason = "error"
            logger.exception("twilio %s: handler failed; closing that stream only", stream.name)
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _closed(self, stream: _Stream, exc: ConnectionClosed) -> None:
        """The connection closed before ``stop``: the call ended with ``disconnected``."""
        if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
            # websockets' own cap (max_message_bytes) closed it: count and say so
            self._stats.refuse("message_too_big")
            self.context.log.warning(stream.address, "twilio %s from %s: a message over %d "
                                     "bytes; closed with 1009 (message_too_big)", stream.name,
                                     stream.connection.remote_address, self.max_message_bytes)
            stream.reason = "error"
            return
        stream.reason = "disconnected"
        self._extra["disconnected"] += 1
        self.context.log.info(stream.address, "twilio %s: connection closed before stop (%s)",
                              stream.name, exc.rcvd.code if exc.rcvd is not None else "no close")

    async def _reject(self, stream: _Stream, exc: TwilioRejected) -> None:
        """Count and log a refusal, close with its code (Twilio reads no reply frames)."""
        stream.reason = _CLOSE_REASONS.get(exc.code, "error")
        self._stats.refuse(exc.code)
        self.context.log.warning(stream.address, "twilio %s from %s rejected: %s (%s)",
                                 stream.name, stream.connection.remote_address, exc, exc.code)
        if stream.call is not None:
            await stream.call.close(stream.reason)
        try:
            await stream.connection.close(exc.close, exc.code)
        except ConnectionClosed:
            pass

    async def _recv(self, stream: _Stream, idle: IdleWatch) -> str | bytes:
        """The next message; ``idle_timeout`` when none comes in time, ``message_too_big``.

        The call's :class:`~server.ingest.IdleWatch` (the same rule as /ingest) costs no timer
        per message; recv is cancellation-safe, so a timeout loses nothing.
        """
        idle.last = idle.loop.time()
        idle.waiting = True
        try:
            message = await stream.connection.recv()
        except asyncio.CancelledError:
            if not idle.expired():
                raise
            raise TwilioRejected("idle_timeout", f"no message for {idle.timeout_s:g} s "
                                 "(--ingest-idle-timeout-s)", _POLICY) from None
        finally:
            idle.waiting = False
        size = len(message)
        if size > self._limit or (isinstance(message, str) and 4 * size > self._limit
                                  and len(message.encode()) > self._limit):
            raise TwilioRejected("message_too_big", f"a message over the {self._limit}-byte "
                                 "limit (--ingest-max-frame-bytes)", CloseCode.MESSAGE_TOO_BIG)
        return message

    async def _receive(self, stream: _Stream) -> None:
        """Take messages until ``stop``; raises for anything that ends the stream otherwise.

        Media already received together (a busy loop reads several per socket read) is fed
        as one block per track: one feed per burst instead of per message, no waiting added.
        Whatever came before a rejected message, the ``stop`` or the connection's end is fed
        first, so the streams get exactly what they would message by message.
        """
        pending: dict[str, list[bytes]] = {}  # role -> mu-law payloads not fed yet
        with IdleWatch(self.context.ingest.idle_timeout_s) as idle:
            while True:
                try:
                    message = parse_twilio_message(await self._recv(stream, idle))
                    if isinstance(message, TwilioMedia):  # the common case first
                        role = self._media(stream, message)
                        pending.setdefault(role, []).append(message.payload)
                        if frame_waiting(stream.connection):
                            continue
                    batch, pending = pending, {}
                    await self._feed(stream, batch)
                    if isinstance(message, TwilioStop):
                        if stream.start is not None:
                            self._check_order(stream, message.sequence, message.stream_sid)
                        return
                    if not isinstance(message, TwilioMedia):
                        await self._other(stream, message)
                except (TwilioRejected, ConnectionClosed):
                    batch, pending = pending, {}
                    await self._feed(stream, batch)  # what came before it counts
                    raise

    async def _other(self, stream: _Stream, message: TwilioMessage) -> None:
        """Everything but media and stop: connected, start, dtmf, mark, unknown events."""
        if isinstance(message, TwilioConnected):
            if stream.connected or stream.start is not None:
                raise TwilioRejected("unexpected_connected", "connected comes once, first",
                                     _POLICY)
            stream.connected = True
        elif isinstance(message, TwilioStart):
            if stream.start is not None:
                raise TwilioRejected("duplicate_start", "a second start on one stream", _POLICY)
            self._check_order(stream, message.sequence, message.stream_sid)
            await self._open(stream, message)
        elif isinstance(message, TwilioUnknown):
            self._extra["skipped"] += 1
            self.context.log.log(logging.INFO, stream.address,  # rate-limited: per message
                                 "twilio %s: skipped an unknown event %r", stream.name,
                                 message.event)
            if message.sequence is not None and stream.start is not None:
                self._check_order(stream, message.sequence, stream.start.stream_sid)
        elif isinstance(message, (TwilioDtmf, TwilioMark)):
            if stream.start is None:
                raise TwilioRejected("event_before_start", "dtmf or mark before start", _POLICY)
            self._check_order(stream, message.sequence, message.stream_sid)
            self._extra["dtmf" if isinstance(message, TwilioDtmf) else "marks"] += 1

    def _check_order(self, stream: _Stream, sequence: int, stream_sid: str) -> None:
        """``sequenceNumber`` counts up (a gap is counted, a step back refused); one streamSid."""
        if stream.start is not None and stream_sid != stream.start.stream_sid:
            raise TwilioRejected("wrong_stream", f"streamSid {stream_sid!r} is not this "
                                 f"stream's ({stream.start.stream_sid!r})", _POLICY)
        if sequence <= stream.sequence:
            raise TwilioRejected("out_of_order", f"sequenceNumber {sequence} after "
                                 f"{stream.sequence}: messages must count up", _POLICY)
        if stream.sequence and sequence != stream.sequence + 1:
            self._extra["sequence_gaps"] += 1
        stream.sequence = sequence

    async def _open(self, stream: _Stream, start: TwilioStart) -> None:
        """Open ``<callSid>/<role>`` per track, with the stream's ids and custom parameters."""
        if self._handlers.closing:
            raise TwilioRejected("shutting_down", "the server is shutting down",
                                 CloseCode.GOING_AWAY)
        roles = {track: self.config.roles[track] for track in start.tracks}
        params, dropped = bounded_metadata(start.custom_parameters, prefix="param.")
        if dropped:
            self._stats.metadata_dropped += dropped
            self.context.log.warning(stream.address, "twilio %s: %d custom parameter(s) left "
                                     "out or cut (at most 32 names of letters, digits, _.:-; "
                                     "values up to 256 characters)", start.call_sid, dropped)
        metadata = {"streamSid": start.stream_sid, "accountSid": start.account_sid,
                    "tracks": ",".join(start.tracks), **params}
        try:
            stream.call = self.context.desk.open(
                start.call_sid, list(roles.values()), sample_rate_hz=PHONE_RATE_HZ,
                source=self.name, metadata=metadata)
        except CallRefused as exc:
            raise TwilioRejected(exc.code, str(exc), _DESK_CLOSE.get(exc.code, _POLICY)) from exc
        stream.start, stream.roles = start, roles
        self._live.add(start.call_sid)
        self._stats.calls += 1
        self.context.log.info(stream.address, "twilio %s from %s: stream %s, tracks %s -> %s",
                              start.call_sid, stream.connection.remote_address, start.stream_sid,
                              ",".join(start.tracks), ", ".join(stream.call.stream_ids))

    def _media(self, stream: _Stream, media: TwilioMedia) -> str:
        """Check one media message's place and track; the role its audio goes to."""
        if stream.call is None:
            raise TwilioRejected("media_before_start", "media before start", _POLICY)
        self._check_order(stream, media.sequence, media.stream_sid)
        role = stream.roles.get(media.track)
        if role is None:
            raise TwilioRejected("unexpected_track", f"media on track {media.track!r}, not one "
                                 f"of the start's tracks {list(stream.roles)}", _POLICY)
        self._stats.frames += 1
        self._stats.bytes += len(media.payload)
        return role

    async def _feed(self, stream: _Stream, batch: Mapping[str, list[bytes]]) -> None:
        """Decode each track's checked payloads (one block per track) and feed them, in order."""
        if not batch or stream.call is None:
            return
        blocks = {role: _decode_mulaw(parts[0] if len(parts) == 1 else b"".join(parts))
                  for role, parts in batch.items()}
        try:
            await stream.call.feed_many(blocks)
        except CallRefused as exc:
            close = _UNSUPPORTED if exc.code == "bad_audio" else _POLICY
            raise TwilioRejected(exc.code, str(exc), close) from exc

    async def close(self) -> None:
        """Close every stream with 1001; their calls end with reason ``shutdown``."""
        await self._handlers.end_all(self.context.shutdown_timeout_s)
