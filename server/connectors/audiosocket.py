"""Asterisk AudioSocket: a TCP listener taking one call leg per connection (event loop).

The protocol (docs.asterisk.org, AudioSocket channel driver page): every message is one type
byte, a two-byte big-endian payload length, the payload. Asterisk opens the connection
(``AudioSocket(<uuid>,<host>:<port>)`` in the dialplan, or ``Dial(AudioSocket/<host>:<port>/
<uuid>)``) and sends ``0x01`` with the 16-byte binary UUID first, then ``0x10`` frames of signed
16-bit little-endian 8 kHz mono PCM (newer Asterisk: ``0x11``-``0x18`` for 12-192 kHz through
the channel driver), ``0x03`` DTMF digits, ``0x00`` hangup and ``0xff`` errors (payload: the
error code; Asterisk's are ``0x01`` caller hung up, ``0x02`` frame forwarding, ``0x04``
memory). Closing the socket also ends the stream.

What this listener makes of it:

- Credential: AudioSocket has none, so the listener binds loopback unless told otherwise, an
  optional allow-list of peer networks is checked first, and the UUID must be in the leg map
  the dialplan writes (:mod:`server.connectors.audiosocket_map`), each UUID good for one
  connection. Anything else is refused (fail closed).
- Legs to streams: the map names each UUID's call id and role; the first leg of a call opens
  ``<call>/<role>`` for every call role (default ``agent`` and ``customer``) on the shared
  desk, a later leg of the same call joins it, each leg's end closes its role's stream, the
  last leg's end closes the call.
- Bounded reading: a payload longer than the frame limit is refused from its header (nothing
  more is read), every read waits at most the idle timeout, a connection that ends inside a
  message is a truncated frame (counted, streams closed ``disconnected``), unknown kinds and
  DTMF are counted and skipped.
- A refusal is answered as Asterisk understands it: a hangup message (``0x00 0x00 0x00``)
  and the socket closed, which ends the AudioSocket application gracefully. Every refusal is
  counted by code in ``stats()`` (``/healthz`` ``connectors.audiosocket``) and logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.auth import is_loopback
from server.connectors.audiosocket_map import AudioSocketMap, LegEntry
from server.connectors.base import ConnectorContext, ConnectorStats
from server.connectors.calls import CallRefused, HandlerTasks, PlatformCall
from server.errors import ServerError
from server.limits import address_of
from streamer.audio import s16le_to_float32
from streamer.protocol.limits import MAX_INGEST_RATE_HZ, MIN_INGEST_RATE_HZ

__all__ = [
    "AUDIOSOCKET_AUDIO_RATES_HZ",
    "AUDIOSOCKET_DTMF",
    "AUDIOSOCKET_ERROR",
    "AUDIOSOCKET_HANGUP",
    "AUDIOSOCKET_HANGUP_MESSAGE",
    "AUDIOSOCKET_UUID",
    "AudioSocketConfig",
    "AudioSocketConnector",
    "AudioSocketRefused",
    "add_audiosocket_flags",
    "audiosocket_config_from_args",
    "parse_audiosocket_header",
    "uuid_from_payload",
]

logger = logging.getLogger(__name__)

AUDIOSOCKET_HANGUP = 0x00
AUDIOSOCKET_UUID = 0x01
AUDIOSOCKET_DTMF = 0x03
AUDIOSOCKET_ERROR = 0xFF
#: audio message kinds -> sample rate (signed linear 16-bit little-endian mono)
AUDIOSOCKET_AUDIO_RATES_HZ = {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000,
                              0x15: 44100, 0x16: 48000, 0x17: 96000, 0x18: 192000}
#: what the server sends to end a leg (kind 0x00, length 0)
AUDIOSOCKET_HANGUP_MESSAGE = b"\x00\x00\x00"

_HEADER_BYTES = 3
_MAX_LENGTH = 0xFFFF  # the two-byte length field
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,63}")
#: Asterisk's error code for "the calling party hung up": the leg ended normally
_CALLER_HUNG_UP = 0x01


class AudioSocketRefused(Exception):
    """A leg the server ends: ``code`` names the case, ``reason`` is the stream_close reason."""

    def __init__(self, code: str, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


def parse_audiosocket_header(header: bytes) -> tuple[int, int]:
    """The three header bytes -> ``(kind, payload length)`` (length big-endian)."""
    if len(header) != _HEADER_BYTES:
        raise ValueError(f"an AudioSocket header is {_HEADER_BYTES} bytes, got {len(header)}")
    return header[0], int.from_bytes(header[1:], "big")


def uuid_from_payload(payload: bytes) -> str:
    """A ``0x01`` payload (16 bytes, binary UUID) -> its canonical text form."""
    if len(payload) != 16:
        raise AudioSocketRefused("bad_uuid", f"the UUID message carries {len(payload)} bytes, "
                                 "not 16")
    return str(uuid.UUID(bytes=payload))


@dataclass(frozen=True, slots=True)
class AudioSocketConfig:
    """The AudioSocket listener (``run --audiosocket-*`` flags; validated when made).

    - ``port``: TCP port (0: any free one); ``host``: address to bind (loopback by default).
    - ``roles_file``: the leg map the dialplan writes (required: without it every UUID would
      be unknown).
    - ``allow_peers``: networks (``10.0.0.5``, ``10.0.0.0/24``) peers must come from; none:
      any peer, which is only allowed on a loopback ``host``.
    - ``call_roles``: the streams every call opens (the roles the map may name).
    """

    port: int
    roles_file: Path
    host: str = "127.0.0.1"
    allow_peers: tuple[str, ...] = ()
    call_roles: tuple[str, ...] = ("agent", "customer")
    name: str = field(default="audiosocket", init=False)

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
                0 <= self.port <= 65535):
            raise ServerError(f"--audiosocket-port must be 0-65535, got {self.port!r}")
        if not isinstance(self.host, str) or not self.host.strip():
            raise ServerError(f"--audiosocket-host must be an address, got {self.host!r}")
        object.__setattr__(self, "roles_file", Path(self.roles_file))
        self.networks()  # validates allow_peers
        if not self.allow_peers and not is_loopback(self.host):
            raise ServerError(
                f"--audiosocket-host {self.host} is not loopback and AudioSocket has no "
                "credential: name the Asterisk servers with --audiosocket-allow-peer ADDR[/BITS]")
        roles = self.call_roles
        if not 1 <= len(roles) <= 4 or len(set(roles)) != len(roles) or not all(
                isinstance(r, str) and _ROLE.fullmatch(r) for r in roles):
            raise ServerError(f"--audiosocket-call-roles must be 1-4 distinct names, got "
                              f"{list(roles)}")

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The allow-list as networks (ServerError for a bad entry)."""
        try:
            return tuple(ipaddress.ip_network(peer, strict=False) for peer in self.allow_peers)
        except ValueError as exc:
            raise ServerError(f"--audiosocket-allow-peer: {exc}") from None

    def build(self, context: ConnectorContext) -> AudioSocketConnector:
        return AudioSocketConnector(self, context)


def add_audiosocket_flags(parser: argparse.ArgumentParser) -> None:
    """The ``--audiosocket-*`` argument group of ``run``."""
    group = parser.add_argument_group(
        "Asterisk AudioSocket (see docs/connectors.md)",
        "A TCP listener for AudioSocket() / Dial(AudioSocket/...) legs, off unless "
        "--audiosocket-port is given. AudioSocket has no credential: a leg's UUID must be "
        "in --audiosocket-roles-file (written by the dialplan), once.")
    group.add_argument("--audiosocket-port", type=int, default=None, metavar="PORT",
                       help="listen for AudioSocket on this TCP port (0: any free one)")
    group.add_argument("--audiosocket-host", default=None, metavar="HOST",
                       help="address to listen on (default 127.0.0.1)")
    group.add_argument("--audiosocket-roles-file", type=Path, default=None, metavar="FILE",
                       help="leg map: lines 'UUID CALL_ID ROLE [KEY=VALUE ...]'")
    group.add_argument("--audiosocket-allow-peer", action="append", default=None,
                       metavar="ADDR[/BITS]", help="accept legs only from these addresses "
                       "(repeatable; required with a non-loopback --audiosocket-host)")
    group.add_argument("--audiosocket-call-roles", default=None, metavar="ROLE,ROLE",
                       help="the streams of every call (default agent,customer)")


def audiosocket_config_from_args(args: argparse.Namespace) -> AudioSocketConfig | None:
    """The config the flags give, or None without ``--audiosocket-port``."""
    given = {name: getattr(args, f"audiosocket_{name}") for name in (
        "host", "roles_file", "allow_peer", "call_roles")
        if getattr(args, f"audiosocket_{name}") is not None}
    if args.audiosocket_port is None:
        if given:
            raise ServerError(f"--audiosocket-{next(iter(given)).replace('_', '-')} given "
                              "without --audiosocket-port")
        return None
    if "roles_file" not in given:
        raise ServerError("--audiosocket-port needs --audiosocket-roles-file FILE (the leg "
                          "map; AudioSocket has no other credential)")
    if "allow_peer" in given:
        given["allow_peers"] = tuple(given.pop("allow_peer"))
    if "call_roles" in given:
        given["call_roles"] = tuple(r.strip() for r in given["call_roles"].split(","))
    return AudioSocketConfig(args.audiosocket_port, **given)


@dataclass(slots=True)
class _SharedCall:
    """A call whose parties come on legs of their own (the legs connected now)."""

    call: PlatformCall
    legs: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Leg:
    """One connection's state (its handler's own)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: str
    entry: LegEntry | None = None
    rate_hz: int | None = None
    shared: _SharedCall | None = None
    reason: str = "error"


class AudioSocketConnector:
    """The AudioSocket listener: legs in, per-role streams of shared-desk calls out (loop).

    Shared across connections: the leg map, the live calls by id (legs join them), the
    counters and the handler tasks. ``close()`` is idempotent.
    """

    def __init__(self, config: AudioSocketConfig, context: ConnectorContext) -> None:
        self.config = config
        self.context = context
        self.name = config.name
        self.map = AudioSocketMap(config.roles_file, config.call_roles)
        self._networks = config.networks()
        self._max_payload = min(context.ingest.max_frame_bytes, _MAX_LENGTH)
        self._calls: dict[str, _SharedCall] = {}
        self._stats = ConnectorStats()
        self._kinds = {"dtmf": 0, "unknown_kinds": 0}
        self._asterisk_errors: dict[str, int] = {}
        self._handlers = HandlerTasks()  # the legs' tasks, for shutdown
        self._server: asyncio.Server | None = None
        self._closed = False

    async def start(self) -> None:
        """Listen on the configured address; ServerError when the map or port is unusable."""
        try:
            self.map.check_readable()
        except OSError as exc:
            raise ServerError(f"--audiosocket-roles-file {self.config.roles_file}: "
                              f"{exc.strerror or exc}") from None
        try:
            self._server = await asyncio.start_server(self._handle, self.config.host,
                                                      self.config.port)
        except OSError as exc:
            detail = "the address is already in use" if exc.errno == errno.EADDRINUSE else (
                exc.strerror or str(exc))
            raise ServerError(f"cannot listen for AudioSocket on {self.config.host}:"
                              f"{self.config.port}: {detail}") from None
        logger.info("AudioSocket listening on %s:%d (leg map %s)", self.config.host, self.port,
                    self.config.roles_file)

    @property
    def port(self) -> int:
        """The bound port; 0 while not listening."""
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    def stats(self) -> dict[str, Any]:
        return {**self._stats.as_dict(len(self._calls)), **self._kinds,
                "asterisk_errors": dict(self._asterisk_errors), "map": self.map.stats()}

    async def close(self) -> None:
        """Stop listening; end every leg (hangup, streams closed ``shutdown``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        await self._handlers.end_all(self.context.shutdown_timeout_s)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One leg, UUID to hangup (the connection's task, made by asyncio's server)."""
        with self._handlers.track():
            leg = _Leg(reader, writer, address_of(writer.get_extra_info("peername")))
            try:
                await self._serve(leg)
            except AudioSocketRefused as exc:
                await self._refuse(leg, exc)
            finally:
                await self._end_leg(leg)
                writer.close()

    async def _serve(self, leg: _Leg) -> None:
        """Run the leg; each way it can end sets ``leg.reason`` (refusals propagate)."""
        try:
            if not self._peer_allowed(leg.address):
                raise AudioSocketRefused("peer_not_allowed", f"peer {leg.address} is not in "
                                         "--audiosocket-allow-peer")
            leg.entry = await self._accept(leg)
            leg.reason = await self._receive(leg)
        except (ConnectionError, OSError) as exc:
            leg.reason = "disconnected"
            self.context.log.info(leg.address, "AudioSocket leg from %s dropped: %s",
                                  leg.address, exc)
        except asyncio.CancelledError:
            leg.reason = "shutdown"
            _send_hangup(leg.writer)
            raise
        except AudioSocketRefused:
            raise
        except Exception:
            logger.exception("AudioSocket leg from %s: handler failed; ending that leg only",
                             leg.address)
            _send_hangup(leg.writer)

    async def _accept(self, leg: _Leg) -> LegEntry:
        """Read the UUID message and find the leg in the map."""
        message = await self._read_message(leg)
        if message is None:
            raise AudioSocketRefused("no_uuid", "the connection closed before its UUID",
                                     "disconnected")
        kind, payload = message
        if kind != AUDIOSOCKET_UUID:
            raise AudioSocketRefused("expected_uuid", f"the first message is kind 0x{kind:02x}, "
                                     "not the UUID (0x01)")
        leg_uuid = uuid_from_payload(payload)
        entry = await self.map.take(leg_uuid)
        if isinstance(entry, str):
            raise AudioSocketRefused(entry, f"UUID {leg_uuid} is not in the leg map "
                                     f"{self.config.roles_file}" if entry == "unknown_uuid" else
                                     f"UUID {leg_uuid} was used by an earlier connection")
        self.context.log.info(leg.address, "AudioSocket leg %s from %s: call %s, %s", leg_uuid,
                              leg.address, entry.call_id, entry.role)
        return entry

    async def _receive(self, leg: _Leg) -> str:
        """Handle messages until the leg ends; its stream_close reason."""
        while True:
            message = await self._read_message(leg)
            if message is None:
                return "end"  # socket closed between messages: a documented way to end
            kind, payload = message
            if kind in AUDIOSOCKET_AUDIO_RATES_HZ:
                await self._audio(leg, AUDIOSOCKET_AUDIO_RATES_HZ[kind], payload)
            elif kind == AUDIOSOCKET_HANGUP:
                return "end"
            elif kind == AUDIOSOCKET_ERROR:
                return self._asterisk_error(leg, payload)
            elif kind == AUDIOSOCKET_DTMF:
                self._kinds["dtmf"] += 1
            elif kind == AUDIOSOCKET_UUID:
                raise AudioSocketRefused("unexpected_uuid", "a second UUID message")
            else:
                self._kinds["unknown_kinds"] += 1
                self.context.log.warning(leg.address, "AudioSocket leg from %s: skipped a "
                                         "message of unknown kind 0x%02x", leg.address, kind)

    async def _read_message(self, leg: _Leg) -> tuple[int, bytes] | None:
        """The next message; None when the peer closed between messages."""
        header = await self._read(leg, _HEADER_BYTES, between_messages=True)
        if header is None:
            return None
        kind, length = parse_audiosocket_header(header)
        if length > self._max_payload:
            raise AudioSocketRefused("frame_too_big", f"a kind 0x{kind:02x} message of {length} "
                                     f"bytes is over the {self._max_payload}-byte limit "
                                     "(--ingest-max-frame-bytes)")
        payload = await self._read(leg, length) if length else b""
        assert payload is not None
        self._stats.frames += 1
        self._stats.bytes += _HEADER_BYTES + length
        return kind, payload

    async def _read(self, leg: _Leg, size: int, *, between_messages: bool = False
                    ) -> bytes | None:
        """Exactly ``size`` bytes within the idle timeout; a short read is a truncated message."""
        timeout_s = self.context.ingest.idle_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await leg.reader.readexactly(size)
        except TimeoutError:
            raise AudioSocketRefused("idle_timeout", f"nothing for {timeout_s:g} s "
                                     "(--ingest-idle-timeout-s)", "idle_timeout") from None
        except asyncio.IncompleteReadError as exc:
            if between_messages and not exc.partial:
                return None
            raise AudioSocketRefused("truncated_frame", f"the connection ended {len(exc.partial)}"
                                     f" byte(s) into a {size}-byte read",
                                     "disconnected") from None

    async def _audio(self, leg: _Leg, rate_hz: int, payload: bytes) -> None:
        """One audio message: the first opens or joins the call; all feed the leg's role."""
        if leg.rate_hz is None:
            if not MIN_INGEST_RATE_HZ <= rate_hz <= MAX_INGEST_RATE_HZ:
                raise AudioSocketRefused("unsupported_rate", f"{rate_hz} Hz audio: allowed "
                                         f"{MIN_INGEST_RATE_HZ}-{MAX_INGEST_RATE_HZ} Hz")
            self._join(leg, rate_hz)
            leg.rate_hz = rate_hz
        elif rate_hz != leg.rate_hz:
            raise AudioSocketRefused("rate_changed", f"audio changed from {leg.rate_hz} to "
                                     f"{rate_hz} Hz mid-leg")
        if len(payload) % 2:
            raise AudioSocketRefused("partial_sample", f"an audio payload of {len(payload)} "
                                     "bytes is not whole 16-bit samples")
        assert leg.shared is not None and leg.entry is not None
        try:
            await leg.shared.call.feed(leg.entry.role, s16le_to_float32(payload))
        except CallRefused as exc:
            raise AudioSocketRefused(exc.code, str(exc), _REASONS.get(exc.code, "error")
                                     ) from exc

    def _join(self, leg: _Leg, rate_hz: int) -> None:
        """Open the leg's call (first leg) or join it (a later one)."""
        entry = leg.entry
        assert entry is not None
        shared = self._calls.get(entry.call_id)
        if shared is None:
            metadata = {**dict(entry.params), f"uuid.{entry.role}": entry.uuid}
            try:
                call = self.context.desk.open(entry.call_id, self.config.call_roles,
                                              sample_rate_hz=rate_hz, source=self.name,
                                              metadata=metadata)
            except CallRefused as exc:
                raise AudioSocketRefused(exc.code, str(exc)) from exc
            shared = self._calls[entry.call_id] = _SharedCall(call)
            self._stats.calls += 1
            self._stats.metadata_dropped += entry.params_dropped
        elif shared.call.sample_rate_hz != rate_hz:
            raise AudioSocketRefused("rate_mismatch", f"this leg sends {rate_hz} Hz, call "
                                     f"{entry.call_id} runs at {shared.call.sample_rate_hz} Hz")
        elif entry.role in shared.legs or shared.call.feeds[entry.role].closed:
            raise AudioSocketRefused("duplicate_leg", f"call {entry.call_id} already had its "
                                     f"{entry.role} leg")
        shared.legs.add(entry.role)
        leg.shared = shared

    async def _end_leg(self, leg: _Leg) -> None:
        """Close the leg's stream; the last leg of a call closes the call. Idempotent."""
        shared, entry = leg.shared, leg.entry
        if shared is None or entry is None:
            return
        leg.shared = None
        shared.legs.discard(entry.role)
        await shared.call.close_role(entry.role, leg.reason)
        if not shared.legs:
            if self._calls.get(entry.call_id) is shared:
                del self._calls[entry.call_id]
            await shared.call.close(leg.reason)

    def _asterisk_error(self, leg: _Leg, payload: bytes) -> str:
        """An ``0xff`` message: counted by code, logged; the leg ends."""
        code = f"0x{payload[0]:02x}" if payload else "none"
        self._asterisk_errors[code] = self._asterisk_errors.get(code, 0) + 1
        self.context.log.warning(leg.address, "AudioSocket leg from %s: Asterisk sent error %s",
                                 leg.address, code)
        return "end" if payload[:1] == bytes([_CALLER_HUNG_UP]) else "error"

    def _peer_allowed(self, address: str) -> bool:
        if not self._networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks)

    async def _refuse(self, leg: _Leg, exc: AudioSocketRefused) -> None:
        """Count and log the refusal; answer with a hangup message (Asterisk ends gracefully)."""
        leg.reason = exc.reason
        self._stats.refuse(exc.code)
        self.context.log.warning(leg.address, "AudioSocket leg from %s ended: %s (%s)",
                                 leg.address, exc, exc.code)
        await self._end_leg(leg)  # the streams are closed before Asterisk hears the hangup
        await self._hang_up(leg)

    async def _hang_up(self, leg: _Leg) -> None:
        """Send the hangup, then let Asterisk close first (bounded in time and bytes).

        Closing with its next audio messages unread would make the kernel answer with a
        reset, which can reach Asterisk before the hangup does; reading them away until it
        closes keeps the end graceful.
        """
        _send_hangup(leg.writer)
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            if leg.writer.can_write_eof():
                leg.writer.write_eof()
            await leg.writer.drain()
            async with asyncio.timeout(_LINGER_S):
                discarded = 0
                while discarded < _LINGER_BYTES:
                    data = await leg.reader.read(_LINGER_BYTES)
                    if not data:
                        break
                    discarded += len(data)


def _send_hangup(writer: asyncio.StreamWriter) -> None:
    if not writer.is_closing():
        writer.write(AUDIOSOCKET_HANGUP_MESSAGE)


#: after a hangup, how long (and how many bytes) the listener waits for Asterisk to close
_LINGER_S = 2.0
_LINGER_BYTES = 64 * 1024
#: a desk refusal's code -> the stream_close reason (others: "error")
_REASONS = {"call_too_long": "max_length"}
