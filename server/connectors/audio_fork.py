"""``WS /audio-fork``: FreeSWITCH ``mod_audio_fork`` and ``mod_audio_stream`` calls (event loop).

What the modules send (their READMEs; see docs/connectors.md): FreeSWITCH opens a WebSocket to
the URL of ``uuid_audio_fork <uuid> start <url> <mix-type> <sampling-rate> <metadata>``
(``uuid_audio_stream`` takes the same arguments), sends ``<metadata>`` as one text frame, then
binary frames of 16-bit signed PCM at the sampling rate, in the byte order FreeSWITCH keeps
audio in memory (little-endian on x86 and ARM): one channel for ``mono`` (the caller) and
``mixed`` (both parties summed), two interleaved channels for ``stereo`` (caller, callee).
``uuid_audio_fork <uuid> send_text`` / ``stop <metadata>`` may send more text frames; FreeSWITCH
ends by closing the WebSocket.

What this server makes of it:

- Credential: HTTP Basic on the upgrade request (mod_audio_fork sends it when the channel
  variables ``MOD_AUDIO_BASIC_AUTH_USERNAME`` / ``..._PASSWORD`` are set; mod_audio_stream can
  send the header through ``STREAM_EXTRA_HEADERS``), compared in constant time with the
  configured ``user:password``. Without a configured credential the connector is not built
  (fail closed). A missing or wrong credential gets 401 before any audio is read.
- The frames carry neither rate nor channel count, so the server learns them from the metadata
  (``sampleRate``, ``mixType``), else the URL query (``rate``, ``mix``), else the flags
  (``--audio-fork-sample-rate``, ``--audio-fork-mix``); two sources that disagree refuse the
  call. The call id is the metadata's ``callId`` (else ``callid``, else ``uuid``); without one
  the call is refused. Its other fields become ``param.<key>`` stream metadata (bounded).
- Channels to streams: stereo -> ``<call>/<caller role>`` and ``<call>/<callee role>``
  (default caller = ``customer``, callee = ``agent``), mono -> ``<call>/<caller role>``, mixed
  -> ``<call>/<mixed role>`` (default ``mixed``).
- A refusal is one text frame ``{"type": "error", "data": {"code": ..., "message": ...}}``
  (mod_audio_fork turns a server's ``error`` message into a ``mod_audio_fork::error`` event)
  and a close: 1008 for order and limits (audio before metadata, idle, call too long, a live
  call id), 1003 for data the server will not take (bad JSON, no call id, unsupported or
  conflicting rate or mix, a frame that is not whole sample frames), 1009 for a frame over
  ``--ingest-max-frame-bytes`` or text over :data:`MAX_AUDIO_FORK_TEXT_BYTES`, 1013 when
  ``--max-ingest-calls`` are live, 1001 at shutdown. Every refusal is counted by code.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from numpy.typing import NDArray
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request
from websockets.typing import Subprotocol

from server.auth import MIN_TOKEN_CHARS
from server.connectors.base import ConnectorContext, ConnectorStats, Refusal
from server.connectors.calls import (
    CallRefused,
    HandlerTasks,
    PlatformCall,
    bounded_metadata,
    call_id_ok,
)
from server.errors import ServerError
from server.limits import address_of
from server.webhook import read_credential
from streamer.audio import s16le_to_float32

__all__ = [
    "AUDIO_FORK_CALL_ID_KEYS",
    "AUDIO_FORK_CREDENTIALS_ENV",
    "AUDIO_FORK_MIX_TYPES",
    "AUDIO_FORK_RATES_HZ",
    "MAX_AUDIO_FORK_TEXT_BYTES",
    "AudioForkConfig",
    "AudioForkConnector",
    "AudioForkRefused",
    "ForkSpec",
    "add_audio_fork_flags",
    "audio_fork_config_from_args",
    "check_basic_auth",
    "fork_spec",
    "parse_fork_rate",
]

logger = logging.getLogger(__name__)

#: the environment variable holding ``user:password`` when no credentials file is given
AUDIO_FORK_CREDENTIALS_ENV = "EMOTION_MONITOR_AUDIO_FORK_CREDENTIALS"
#: the ``<mix-type>`` values of ``uuid_audio_fork`` / ``uuid_audio_stream``
AUDIO_FORK_MIX_TYPES = ("mono", "mixed", "stereo")
#: sampling rates taken (the modules document 8k and 16k; newer builds resample to more)
AUDIO_FORK_RATES_HZ = (8000, 16000, 24000, 32000, 48000)
#: metadata fields that may hold the call id, in the order they are looked for
AUDIO_FORK_CALL_ID_KEYS = ("callId", "callid", "uuid")
#: largest text frame (the metadata, ``send_text``, the ``stop`` text) in UTF-8 bytes
MAX_AUDIO_FORK_TEXT_BYTES = 16 * 1024

_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,63}")
_PATH = re.compile(r"/[A-Za-z0-9_./-]{1,127}")
_MAX_AUTH_HEADER = 1024
_MAX_QUERY_FIELDS = 32
_BYTES_PER_SAMPLE = 2
#: metadata fields the server reads itself (never copied into param.*)
_FORMAT_KEYS = ("mixType", "sampleRate")


class AudioForkRefused(Exception):
    """A connection the server refuses: ``code`` for the error message, ``close`` code."""

    def __init__(self, code: str, message: str, close: int) -> None:
        super().__init__(message)
        self.code = code
        self.close = close


def _unsupported(code: str, message: str) -> AudioForkRefused:
    return AudioForkRefused(code, message, CloseCode.UNSUPPORTED_DATA)


@dataclass(frozen=True, slots=True)
class ForkSpec:
    """What one fork's metadata, URL and the flags say: the call, its format, its streams."""

    call_id: str
    mix: str
    sample_rate_hz: int
    roles: tuple[str, ...]  # one per channel, in channel order
    metadata: Mapping[str, str]
    metadata_dropped: int = 0

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (every channel)."""
        return _BYTES_PER_SAMPLE * len(self.roles)


def parse_fork_rate(value: object) -> int:
    """A sampling rate as the modules or a person write it (``16k``, ``16000``) -> Hz."""
    ok = isinstance(value, (str, int)) and not isinstance(value, bool)
    text = str(value).strip().lower() if ok else ""
    hz = int(text[:-1]) * 1000 if re.fullmatch(r"\d{1,3}k", text) else (
        int(text) if re.fullmatch(r"\d{4,6}", text) else 0)
    if hz not in AUDIO_FORK_RATES_HZ:
        raise _unsupported(
            "unsupported_rate", f"sampling rate {str(value)[:32]!r} not taken: use one of "
            f"{', '.join(f'{r // 1000}k' for r in AUDIO_FORK_RATES_HZ)}")
    return hz


def _parse_mix(value: object) -> str:
    mix = value.strip().lower() if isinstance(value, str) else ""
    if mix not in AUDIO_FORK_MIX_TYPES:
        raise _unsupported("unsupported_mix", f"mix type {str(value)[:32]!r} not taken: use "
                           f"one of {', '.join(AUDIO_FORK_MIX_TYPES)}")
    return mix


def check_basic_auth(values: Sequence[str], expected: str) -> bool:
    """Whether one ``Authorization: Basic`` header carries ``expected`` (``user:password``).

    Constant-time comparison of the decoded credential; a missing, repeated, oversized or
    malformed header is False.
    """
    if len(values) != 1 or len(values[0]) > _MAX_AUTH_HEADER:
        return False
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, expected.encode("utf-8"))


def fork_spec(config: AudioForkConfig, query: str, text: str) -> ForkSpec:
    """The call a fork's first text frame (metadata) and URL query describe; AudioForkRefused.

    Pure: ``query`` is the request URL's query string, ``text`` the metadata frame.
    """
    fields = _metadata_object(text)
    key = next((k for k in AUDIO_FORK_CALL_ID_KEYS if k in fields), None)
    if key is None:
        raise _unsupported("missing_call_id", "the metadata names no call: give "
                           f"{' or '.join(AUDIO_FORK_CALL_ID_KEYS)} (e.g. {{\"callId\": "
                           "\"${uuid}\"})")
    call_id = fields[key]
    if isinstance(call_id, bool) or not isinstance(call_id, (str, int)) or not call_id_ok(
            str(call_id)):
        raise _unsupported("bad_call_id", f"call id {str(call_id)[:64]!r} is not 1-128 "
                           "letters, digits or _.:@+-")
    try:
        params = parse_qs(query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError as exc:
        raise _unsupported("bad_query", f"the URL query has more than {_MAX_QUERY_FIELDS} "
                           "fields") from exc
    mix = _agree("mix", [fields.get("mixType"), *params.get("mix", [])], config.mix, _parse_mix)
    rate = _agree("rate", [fields.get("sampleRate"), *params.get("rate", [])],
                  config.sample_rate_hz, parse_fork_rate)
    extra = [(k, v if isinstance(v, str) else json.dumps(v, separators=(",", ":")))
             for k, v in fields.items() if k != key and k not in _FORMAT_KEYS]
    kept, dropped = bounded_metadata(extra, prefix="param.")
    return ForkSpec(str(call_id), mix, rate, config.roles(mix), {**kept, "mix": mix}, dropped)


def _metadata_object(text: str) -> dict[str, Any]:
    try:
        fields = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _unsupported("bad_json", f"the metadata (first text frame) is not JSON: {exc}"
                           if isinstance(exc, ValueError) else "the metadata nests too deeply"
                           ) from None
    if not isinstance(fields, dict):
        raise _unsupported("bad_json", "the metadata (first text frame) must be a JSON object, "
                           f"not {type(fields).__name__}")
    return fields


def _agree(name: str, given: list[object], default: Any, parse: Any) -> Any:
    """The one value the call states for ``name`` (metadata, query), else ``default``."""
    values = {parse(value) for value in given if value is not None}
    if len(values) > 1:
        raise _unsupported(f"conflicting_{name}", f"the metadata and URL give different "
                           f"{name} values: {sorted(map(str, values))}")
    return values.pop() if values else default


@dataclass(frozen=True, slots=True)
class AudioForkConfig:
    """``WS /audio-fork`` settings (``run --audio-fork*`` flags; validated when made).

    - ``credentials``: ``user:password`` FreeSWITCH sends as HTTP Basic (never logged).
    - ``path``: the WebSocket path on the main port.
    - ``mix`` / ``sample_rate_hz``: what a fork is taken to send when its metadata and URL do
      not say.
    - ``caller_role`` / ``callee_role``: the roles of a stereo fork's channels 0 and 1 (mono:
      the caller's); ``mixed_role``: the role of a mixed fork's one channel.
    """

    credentials: str = field(repr=False)
    path: str = "/audio-fork"
    mix: str = "stereo"
    sample_rate_hz: int = 8000
    caller_role: str = "customer"
    callee_role: str = "agent"
    mixed_role: str = "mixed"
    name: str = field(default="audio_fork", init=False)

    def __post_init__(self) -> None:
        credentials = self.credentials if isinstance(self.credentials, str) else ""
        user, sep, password = credentials.partition(":")
        if not sep or not 1 <= len(user) <= 64 or not MIN_TOKEN_CHARS <= len(password) <= 256 \
                or any(ord(c) < 32 for c in credentials):
            raise ServerError(
                "audio-fork credentials must be one line USER:PASSWORD (user 1-64 characters "
                f"without ':', password {MIN_TOKEN_CHARS}-256; make one with: python3 -c "
                "'import secrets; print(\"freeswitch:\" + secrets.token_urlsafe(24))')")
        if not _PATH.fullmatch(self.path):
            raise ServerError(f"--audio-fork-path must be /NAME (letters, digits, _./-), got "
                              f"{self.path!r}")
        _check_config_value(_parse_mix, self.mix, "--audio-fork-mix")
        _check_config_value(parse_fork_rate, self.sample_rate_hz, "--audio-fork-sample-rate")
        roles = (self.caller_role, self.callee_role, self.mixed_role)
        if not all(isinstance(r, str) and _ROLE.fullmatch(r) for r in roles) or (
                self.caller_role == self.callee_role):
            raise ServerError(f"audio-fork roles must be names (letters, digits, _.:@+-) and "
                              f"the caller's differ from the callee's, got {roles}")

    def roles(self, mix: str) -> tuple[str, ...]:
        """The role of each channel of a fork with that mix type."""
        if mix == "stereo":
            return (self.caller_role, self.callee_role)
        return (self.caller_role,) if mix == "mono" else (self.mixed_role,)

    def build(self, context: ConnectorContext) -> AudioForkConnector:
        return AudioForkConnector(self, context)


def add_audio_fork_flags(parser: argparse.ArgumentParser) -> None:
    """The ``--audio-fork*`` argument group of ``run``."""
    group = parser.add_argument_group(
        "FreeSWITCH mod_audio_fork / mod_audio_stream (see docs/connectors.md)",
        "WS PATH on the main port takes uuid_audio_fork / uuid_audio_stream forks. The "
        "credential (USER:PASSWORD, sent by FreeSWITCH as HTTP Basic) comes from "
        f"--audio-fork-credentials-file or ${AUDIO_FORK_CREDENTIALS_ENV}; without one the "
        "endpoint is not started.")
    group.add_argument("--audio-fork", action="store_true", default=None,
                       help="serve FreeSWITCH audio forks")
    group.add_argument("--audio-fork-path", default=None, metavar="PATH",
                       help="WebSocket path (default /audio-fork)")
    group.add_argument("--audio-fork-credentials-file", type=Path, default=None,
                       metavar="FILE",
                       help="file whose first line is USER:PASSWORD (chmod 600)")
    group.add_argument("--audio-fork-mix", default=None, choices=AUDIO_FORK_MIX_TYPES,
                       help="mix type of forks whose metadata and URL do not say "
                       "(default stereo)")
    group.add_argument("--audio-fork-sample-rate", default=None, metavar="RATE",
                       help="sampling rate (8k, 16k, ...) of forks whose metadata and URL "
                       "do not say (default 8k)")
    group.add_argument("--audio-fork-caller-role", default=None, metavar="ROLE",
                       help="role of the caller's channel (default customer)")
    group.add_argument("--audio-fork-callee-role", default=None, metavar="ROLE",
                       help="role of a stereo fork's callee channel (default agent)")
    group.add_argument("--audio-fork-mixed-role", default=None, metavar="ROLE",
                       help="role of a mixed fork's one channel (default mixed)")


def audio_fork_config_from_args(args: argparse.Namespace) -> AudioForkConfig | None:
    """The config the flags give, or None without ``--audio-fork`` (ServerError if bad)."""
    given = {name: getattr(args, f"audio_fork_{name}") for name in (
        "path", "mix", "sample_rate", "caller_role", "callee_role", "mixed_role",
        "credentials_file") if getattr(args, f"audio_fork_{name}") is not None}
    if not args.audio_fork:
        if given:
            raise ServerError(f"--audio-fork-{next(iter(given)).replace('_', '-')} given "
                              "without --audio-fork")
        return None
    credentials = read_credential(given.pop("credentials_file", None),
                                  AUDIO_FORK_CREDENTIALS_ENV, "audio-fork credentials")
    if credentials is None:
        raise ServerError("--audio-fork needs a credential: --audio-fork-credentials-file "
                          f"FILE or ${AUDIO_FORK_CREDENTIALS_ENV} (USER:PASSWORD)")
    if "sample_rate" in given:
        given["sample_rate_hz"] = _check_config_value(
            parse_fork_rate, given.pop("sample_rate"), "--audio-fork-sample-rate")
    return AudioForkConfig(credentials, **given)


def _check_config_value(parse: Any, value: object, flag: str) -> Any:
    try:
        return parse(value)
    except AudioForkRefused as exc:
        raise ServerError(f"{flag}: {exc}") from None


@dataclass(slots=True)
class _Fork:
    """One connection's state (its handler's own, never shared)."""

    connection: ServerConnection
    address: str
    call: PlatformCall | None = None
    reason: str = "error"  # the stream_close reason if the call ended now


class AudioForkConnector:
    """Serves FreeSWITCH forks on one path into calls of the shared desk (event loop).

    ``authorize`` is the HTTP Basic check of each upgrade; ``handle`` runs one fork to its
    end; what a fork has lives in its handler. Shared: the counters and the handler tasks (for
    shutdown). ``close()`` is idempotent.
    """

    def __init__(self, config: AudioForkConfig, context: ConnectorContext) -> None:
        self.config = config
        self.context = context
        self.name = config.name
        self.path = config.path
        self._stats = ConnectorStats()
        self._text_frames = 0
        self._live = 0
        self._handlers = HandlerTasks()  # the connections' handler tasks, for shutdown

    @property
    def max_message_bytes(self) -> int:
        # room above the limits, so that a frame over them gets the error message and 1009
        # from this connector (the library would close without one)
        return 2 * max(self.context.ingest.max_frame_bytes, MAX_AUDIO_FORK_TEXT_BYTES)

    def authorize(self, connection: ServerConnection, request: Request) -> Refusal | None:
        """HTTP Basic against the configured credential (loop); None lets the upgrade on."""
        values = request.headers.get_all("Authorization")
        if not check_basic_auth(values, self.config.credentials):
            code = "bad_credentials" if values else "missing_credentials"
            self._stats.refuse(code)
            return Refusal(HTTPStatus.UNAUTHORIZED, f"{self.path} needs the FreeSWITCH "
                           "credential (HTTP Basic: MOD_AUDIO_BASIC_AUTH_USERNAME/_PASSWORD)\n",
                           reason="audio_fork_auth",
                           headers={"WWW-Authenticate": 'Basic realm="emotion-monitor"'})
        # mod_audio_fork asks for its subprotocol (audio.drachtio.org by default); a
        # libwebsockets client may insist on the answer naming it, so it is echoed
        connection.protocol.select_subprotocol = _first_offered  # type: ignore[method-assign]
        return None

    def stats(self) -> dict[str, Any]:
        return {**self._stats.as_dict(self._live), "text_frames": self._text_frames}

    async def close(self) -> None:
        """End every fork (1001, streams closed ``shutdown``); waits up to the shutdown time."""
        await self._handlers.end_all(self.context.shutdown_timeout_s)

    async def handle(self, connection: ServerConnection) -> None:
        """One fork, metadata to close (the connection's handler task)."""
        if self._handlers.closing:
            await connection.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        with self._handlers.track():
            fork = _Fork(connection, address_of(connection.remote_address))
            try:
                await self._serve(fork)
            finally:
                await self._end_call(fork)

    async def _end_call(self, fork: _Fork) -> None:
        """Close the fork's streams with ``fork.reason`` (before its close frame, if any)."""
        if fork.call is not None:
            call, fork.call = fork.call, None
            self._live -= 1
            await call.close(fork.reason)

    async def _serve(self, fork: _Fork) -> None:
        """Run the fork; every way it can end sets ``fork.reason``."""
        try:
            spec = await self._accept(fork)
            await self._receive(fork, spec)
        except AudioForkRefused as exc:
            await self._refuse(fork, exc)
        except ConnectionClosed as exc:
            self._closed_by_peer(fork, exc)
        except asyncio.CancelledError:
            fork.reason = "shutdown"
            await self._end_call(fork)
            await fork.connection.close(CloseCode.GOING_AWAY, "server shutting down")
            raise
        except Exception:
            logger.exception("audio fork from %s: handler failed; closing that fork only",
                             fork.address)
            await fork.connection.close(CloseCode.INTERNAL_ERROR, "internal error")

    async def _accept(self, fork: _Fork) -> ForkSpec:
        """Read the metadata frame, open the call's streams."""
        first = await self._recv(fork.connection)
        if isinstance(first, bytes):
            raise AudioForkRefused("audio_before_metadata", "audio before the metadata text "
                                   "frame: give uuid_audio_fork a JSON <metadata> with the call "
                                   "id", CloseCode.POLICY_VIOLATION)
        self._check_text(first)
        request = fork.connection.request
        spec = fork_spec(self.config, urlsplit(request.path).query if request else "", first)
        try:
            fork.call = self.context.desk.open(
                spec.call_id, spec.roles, sample_rate_hz=spec.sample_rate_hz, source=self.name,
                metadata=spec.metadata)
        except CallRefused as exc:
            raise _desk_refusal(exc) from exc
        self._live += 1
        self._stats.calls += 1
        self._stats.metadata_dropped += spec.metadata_dropped
        self.context.log.info(fork.address, "audio fork %s from %s: %s, %s Hz -> %s",
                              spec.call_id, fork.address, spec.mix, spec.sample_rate_hz,
                              ", ".join(fork.call.stream_ids))
        return spec

    async def _receive(self, fork: _Fork, spec: ForkSpec) -> None:
        """Feed audio frames until the connection closes (which raises ConnectionClosed)."""
        call, limit = fork.call, self.context.ingest.max_frame_bytes
        assert call is not None
        while True:
            frame = await self._recv(fork.connection)
            if isinstance(frame, str):
                self._check_text(frame)
                self._text_frames += 1  # send_text / stop metadata: counted, not needed
                continue
            if len(frame) > limit:
                raise AudioForkRefused("frame_too_big", f"binary frame of {len(frame)} bytes "
                                       f"over the {limit}-byte limit (--ingest-max-frame-bytes)",
                                       CloseCode.MESSAGE_TOO_BIG)
            if len(frame) % spec.frame_bytes:
                raise _unsupported("partial_frame", f"a binary frame of {len(frame)} bytes is "
                                   f"not whole {spec.frame_bytes}-byte sample frames "
                                   f"({spec.mix}, 16-bit)")
            self._stats.frames += 1
            self._stats.bytes += len(frame)
            try:
                await call.feed_many(_split(s16le_to_float32(frame), spec.roles))
            except CallRefused as exc:
                raise _desk_refusal(exc) from exc

    def _check_text(self, text: str) -> None:
        size = len(text.encode())
        if size > MAX_AUDIO_FORK_TEXT_BYTES:
            raise AudioForkRefused("text_too_big", f"text frame of {size} bytes over the "
                                   f"{MAX_AUDIO_FORK_TEXT_BYTES}-byte limit",
                                   CloseCode.MESSAGE_TOO_BIG)

    async def _recv(self, connection: ServerConnection) -> str | bytes:
        """The next frame; AudioForkRefused ``idle_timeout`` when none comes in time."""
        timeout_s = self.context.ingest.idle_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await connection.recv()
        except TimeoutError:
            raise AudioForkRefused("idle_timeout", f"no frame for {timeout_s:g} s "
                                   "(--ingest-idle-timeout-s)", CloseCode.POLICY_VIOLATION
                                   ) from None

    async def _refuse(self, fork: _Fork, exc: AudioForkRefused) -> None:
        """Count and log a refusal, send its error message, close with its code."""
        fork.reason = _CLOSE_REASONS.get(exc.code, "error")
        self._stats.refuse(exc.code)
        self.context.log.warning(fork.address, "audio fork %s from %s refused: %s (%s)",
                                 fork.call.call_id if fork.call else "(no call)", fork.address,
                                 exc, exc.code)
        await self._end_call(fork)
        message = {"type": "error", "data": {"code": exc.code, "message": str(exc)}}
        try:
            await fork.connection.send(json.dumps(message))
            await fork.connection.close(exc.close, exc.code)
        except ConnectionClosed:
            pass

    def _closed_by_peer(self, fork: _Fork, exc: ConnectionClosed) -> None:
        """FreeSWITCH closed (``end`` when clean) or the library closed an oversized frame."""
        if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
            self._stats.refuse("frame_too_big")
            self.context.log.warning(fork.address, "audio fork from %s: frame over %d bytes, "
                                     "closed 1009", fork.address, self.max_message_bytes)
            return
        clean = exc.rcvd is not None and exc.rcvd.code in (CloseCode.NORMAL_CLOSURE,
                                                           CloseCode.GOING_AWAY)
        fork.reason = "end" if clean else "disconnected"
        if fork.call is not None:
            self.context.log.info(fork.address, "audio fork %s: FreeSWITCH closed (%s)",
                                  fork.call.call_id, fork.reason)


def _split(samples: NDArray[np.float32], roles: tuple[str, ...]) -> dict[str, NDArray[np.float32]]:
    """Interleaved samples -> one contiguous block per role (channel order)."""
    if len(roles) == 1:
        return {roles[0]: samples}
    frames = samples.reshape(-1, len(roles))
    return {role: np.ascontiguousarray(frames[:, i]) for i, role in enumerate(roles)}


def _first_offered(subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
    return subprotocols[0] if subprotocols else None


def _desk_refusal(exc: CallRefused) -> AudioForkRefused:
    return AudioForkRefused(exc.code, str(exc), _DESK_CLOSE.get(exc.code,
                                                                CloseCode.POLICY_VIOLATION))


#: refusal code -> stream_close reason (others: "error")
_CLOSE_REASONS = {"idle_timeout": "idle_timeout", "call_too_long": "max_length"}
#: a desk refusal's code -> the close code it is answered with (others: 1008)
_DESK_CLOSE = {"too_many_calls": CloseCode.TRY_AGAIN_LATER, "shutting_down": CloseCode.GOING_AWAY,
               "bad_call_id": CloseCode.UNSUPPORTED_DATA, "bad_audio": CloseCode.UNSUPPORTED_DATA}
