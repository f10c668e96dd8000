"""The cluster event bus, its pure parts: settings, entries, the cluster's streams (event loop).

Several ``run --bus redis://...`` nodes share one Redis stream of encoded frames; every node
feeds its own fan-out from it (:mod:`server.bus` is the I/O shell). What is decided without
I/O lives here:

- :class:`BusConfig`: the ``--bus`` settings, validated (no password in the URL: it comes
  from a file or the environment, and never shows in a repr).
- :class:`BusEntry`: one frame on the bus and the fields that travel with it (who published
  it, the publisher's counter, its backlog role, stream, type and stream time).
- :class:`ClusterStreams`: the streams live anywhere in the cluster, with their owner, in
  opening order (the ``hello`` of a cluster node), and the ``node_lost`` close of a stream.
- :class:`EchoWait`: a node's own frames on their way through the bus, delivered to its own
  clients when they come back (so one rule orders everything) or at once while the bus is down.
- :class:`Outbox`: a node's own entries waiting for Redis, bounded; past the bound the oldest
  events go first, a stream's ``stream_open``/``stream_close`` are kept longer.
- :class:`EventBus`: what the hub asks of a bus.

Nothing here is thread-safe: all of it runs on the server's event loop.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args
from urllib.parse import unquote, urlsplit

from server.errors import ServerError
from server.fanout import BacklogRole, Frame, text_frame
from streamer.protocol.messages import (
    Message,
    MessageError,
    StreamCloseMessage,
    StreamInfo,
    StreamOpenMessage,
    decode,
)

__all__ = [
    "BUS_PASSWORD_ENV",
    "NODE_LOST",
    "BusConfig",
    "BusEntry",
    "ClusterStreams",
    "EchoWait",
    "EventBus",
    "LiveRecord",
    "Outbox",
    "bus_address",
    "stream_id_after",
]

#: the environment variable the bus password is read from (without ``--bus-password-file``)
BUS_PASSWORD_ENV = "EMOTION_MONITOR_BUS_PASSWORD"
#: the ``stream_close`` reason of a stream whose node stopped answering (see docs/protocol.md)
NODE_LOST = "node_lost"
#: node ids, key prefixes: letters, digits and ``_ . : -``
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_ROLES: tuple[str, ...] = get_args(BacklogRole)
#: separates the parts of a live-stream record (never in a node id, an incarnation or JSON)
_SEP = "\x1f"


def bus_address(url: str) -> str:
    """``scheme://host:port/db`` of a bus URL, for logs (no user name, never a password)."""
    parts = urlsplit(url)
    db = parts.path.strip("/") or "0"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}/{db}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BusConfig:
    """The cluster event bus (``run --bus URL``); flags map one to one onto the fields.

    - ``url``: ``redis://[user@]host[:port][/db]`` or ``rediss://`` (TLS); no password in it.
    - ``password``: from ``--bus-password-file`` or ``$EMOTION_MONITOR_BUS_PASSWORD``.
    - ``node_id``: this node's name in the cluster ("" = its session id, random per run);
      it must be unique among running nodes.
    - ``node_ttl_s``: a node that has not refreshed its liveness key for this long is lost.
    - ``max_entries``: the shared stream is trimmed to about this many entries (MAXLEN ~).
    - ``replay_entries``: entries a starting node reads back for its backlog.
    - ``outbox_size``: own entries waiting for Redis while it is slow or down (then the
      oldest events are dropped, counted; stream open/close records are kept as many again).
    - ``timeout_s``: one Redis call (connect, read, write).
    - ``key_prefix``: the cluster's name: its keys are ``{PREFIX}:...``.
    """

    url: str
    password: str | None = field(default=None, repr=False)
    node_id: str = ""
    node_ttl_s: float = 5.0
    max_entries: int = 100_000
    replay_entries: int = 20_000
    outbox_size: int = 10_000
    timeout_s: float = 2.0
    key_prefix: str = "emotion-monitor"

    def __post_init__(self) -> None:
        self._check_url()
        if self.node_id and not _NAME.fullmatch(self.node_id):
            raise ServerError(f"--node-id must be 1-64 letters, digits or _ . : -, "
                              f"got {self.node_id!r}")
        if not _NAME.fullmatch(self.key_prefix):
            raise ServerError(f"--bus-key-prefix must be 1-64 letters, digits or _ . : -, "
                              f"got {self.key_prefix!r}")
        for name, low, high in (("node_ttl_s", 0.5, 300.0), ("timeout_s", 0.1, 60.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and low <= value <= high
            ):
                raise ServerError(f"bus {name} must be {low:g}-{high:g} s, got {value!r}")
        for name, low, high in (("max_entries", 1000, 100_000_000),
                                ("replay_entries", 0, 100_000_000),
                                ("outbox_size", 100, 10_000_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ServerError(f"bus {name} must be {low}-{high}, got {value!r}")
        if self.replay_entries > self.max_entries:
            raise ServerError(f"bus replay_entries ({self.replay_entries}) must be at most "
                              f"max_entries ({self.max_entries})")
        if self.password is not None and (
            not self.password or any(c in self.password for c in "\r\n\0")
        ):
            raise ServerError("the bus password must be one non-empty line")

    def _check_url(self) -> None:
        try:
            parts = urlsplit(self.url)
            port = parts.port  # a port that is not a number raises ValueError here
        except (ValueError, TypeError, AttributeError) as exc:
            raise ServerError(f"--bus: not a URL: {exc}") from None
        if port == 0:
            raise ServerError("--bus port must be 1-65535, got 0")
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ServerError("--bus must be redis://HOST[:PORT][/DB] or rediss://..., "
                              f"got scheme {parts.scheme!r}")
        if parts.password is not None or parts.query or parts.fragment:
            raise ServerError(
                "--bus takes no password, query or fragment: give the password in "
                f"--bus-password-file FILE or ${BUS_PASSWORD_ENV}"
            )
        db = unquote(parts.path).strip("/")
        if db and not (db.isdigit() and int(db) < 1_000_000):
            raise ServerError(f"--bus database must be a number, got {db!r}")

    def node_name(self, session: str) -> str:
        """This node's id: ``node_id``, or the run's session id when none was given."""
        return self.node_id or session

    @property
    def address(self) -> str:
        """The bus for logs and ``/healthz``: ``scheme://host:port/db``."""
        return bus_address(self.url)


def stream_id_after(a: bytes | str, b: bytes | str) -> bool:
    """Whether Redis stream id ``a`` (``ms-seq``) comes after ``b``."""
    def key(value: bytes | str) -> tuple[int, int]:
        text = value.decode() if isinstance(value, bytes) else value
        ms, _, seq = text.partition("-")
        return int(ms), int(seq or 0)

    return key(a) > key(b)


def _at_s(message: Message) -> float:
    """The stream time a message speaks of (its end, else its start; 0 without either)."""
    for name in ("end_s", "start_s"):
        value = getattr(message, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


@dataclass(frozen=True, slots=True)
class BusEntry:
    """One frame on the bus with its routing fields (the Redis stream entry's fields).

    ``incarnation`` says which run (and fence epoch) of ``node`` published it: "" for the
    ``node_lost`` closes a survivor publishes for a lost node. ``counter`` orders one node's
    own entries (its echo, see :class:`EchoWait`).
    """

    node: str
    incarnation: str
    counter: int
    role: BacklogRole
    stream: str | None
    kind: str
    at_s: float
    text: str
    frame: Frame | None = field(default=None, compare=False, repr=False)

    @classmethod
    def own(cls, message: Message, frame: Frame, role: BacklogRole, *, node: str,
            incarnation: str, counter: int) -> BusEntry:
        """The entry of one of this node's frames."""
        return cls(node, incarnation, counter, role, frame.stream, message.TYPE,
                   _at_s(message), frame.text, frame)

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> BusEntry:
        """An entry read from Redis (ValueError when a field is missing or malformed)."""
        try:
            text = fields[b"t"].decode()
            role = fields[b"r"].decode()
            stream = fields[b"s"].decode()
            entry = cls(fields[b"n"].decode(), fields[b"c"].decode(), int(fields[b"i"]),
                        role, stream or None,  # type: ignore[arg-type]
                        fields[b"y"].decode(), float(fields[b"e"]), text)
        except (KeyError, UnicodeDecodeError) as exc:
            raise ValueError(f"bus entry without a valid field {exc}") from None
        if role not in _ROLES or (role != "none" and not stream):
            raise ValueError(f"bus entry with role {role!r} and stream {stream!r}")
        return entry

    def script_args(self) -> tuple[str, ...]:
        """The entry's fields as the publish script takes them (see :mod:`server.bus`)."""
        return (str(self.counter), self.role, self.stream or "", self.kind,
                repr(self.at_s), self.text)

    def to_frame(self) -> Frame:
        """The frame for the fan-out (the publisher's own, or made once from the text)."""
        if self.frame is not None:
            return self.frame
        data = self.text.encode()
        return Frame(self.text, self.stream, data, text_frame(data))


@dataclass(frozen=True, slots=True)
class LiveRecord:
    """One live stream in Redis's record of them: who owns it and its ``stream_open``."""

    incarnation: str
    node: str
    open_text: str

    def encode(self) -> str:
        return _SEP.join((self.incarnation, self.node, self.open_text))

    @classmethod
    def decode(cls, value: bytes | str) -> LiveRecord:
        """A record as stored (ValueError when it is not one)."""
        text = value.decode() if isinstance(value, bytes) else value
        parts = text.split(_SEP, 2)
        if len(parts) != 3:
            raise ValueError("not a live-stream record")
        return cls(*parts)


@dataclass(slots=True)
class _Live:
    node: str
    incarnation: str
    info: StreamInfo
    open_text: str
    at_s: float = 0.0
    windows: int = 0


def _info(open_text: str) -> StreamInfo:
    """The ``hello`` entry of a stream from its ``stream_open`` text (ValueError if not one)."""
    try:
        message = decode(open_text)
    except MessageError as exc:
        raise ValueError(f"a bad stream_open on the bus: {exc}") from None
    if not isinstance(message, StreamOpenMessage):
        raise ValueError(f"a {message.TYPE} where a stream_open belongs")
    return StreamInfo(message.stream, message.sample_rate_hz, dict(message.metadata),
                      tuple(message.warnings))


class ClusterStreams:
    """The streams live anywhere in the cluster, in opening order, with their owners."""

    def __init__(self) -> None:
        self._live: dict[str, _Live] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, stream: object) -> bool:
        return stream in self._live

    def apply(self, entry: BusEntry) -> None:
        """Follow one delivered entry (ValueError, nothing changed, for a bad stream_open)."""
        stream = entry.stream
        if stream is None:
            return
        if entry.role == "open":
            self._live.pop(stream, None)  # a reopened stream goes to the end
            self._live[stream] = _Live(entry.node, entry.incarnation, _info(entry.text),
                                       entry.text, entry.at_s)
        elif entry.role == "close":
            self._live.pop(stream, None)
        elif entry.role == "event":
            live = self._live.get(stream)
            if live is not None:
                live.at_s = max(live.at_s, entry.at_s)
                live.windows += entry.kind == "window"

    def load(self, stream: str, record: LiveRecord) -> bool:
        """A live stream from Redis's record (when not known yet); False when not added."""
        if stream in self._live:
            return False
        self._live[stream] = _Live(record.node, record.incarnation, _info(record.open_text),
                                   record.open_text)
        return True

    @property
    def streams(self) -> tuple[StreamInfo, ...]:
        """The live streams, in opening order (the ``hello`` list)."""
        return tuple(live.info for live in self._live.values())

    def owners(self) -> set[tuple[str, str]]:
        """The (node, incarnation) pairs that own a live stream."""
        return {(live.node, live.incarnation) for live in self._live.values()}

    def owned_by(self, incarnation: str) -> list[str]:
        """The live streams of one incarnation, in opening order."""
        return [s for s, live in self._live.items() if live.incarnation == incarnation]

    def lost_close(self, stream: str, wall_time: float) -> StreamCloseMessage:
        """The ``node_lost`` close of a live stream: at its last stream time seen on the bus.

        ``windows`` counts the windows the bus carried for it since this node knew it;
        ``windows_dropped`` is unknown (the engine that dropped them is gone): 0.
        """
        live = self._live.get(stream)
        at_s, windows = (live.at_s, live.windows) if live is not None else (0.0, 0)
        return StreamCloseMessage(stream=stream, end_s=at_s, wall_time=wall_time,
                                  reason=NODE_LOST, windows=windows)


class EchoWait:
    """This node's own entries published but not yet delivered to its clients (counter order).

    Own frames normally reach this node's clients when they come back from the bus, like
    every other node's (:meth:`through`). While the bus is down they are delivered at once
    (:meth:`mark`) and their late echo is skipped. At most ``limit`` wait: past that the
    oldest is delivered without waiting (the caller counts it).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: deque[BusEntry] = deque()
        self._counter = 0
        self._delivered = 0  # the highest counter delivered

    def __len__(self) -> int:
        return len(self._waiting)

    def next_counter(self) -> int:
        self._counter += 1
        return self._counter

    def hold(self, entry: BusEntry) -> list[BusEntry]:
        """Wait for ``entry``'s echo; returns older entries to deliver now (over the limit)."""
        self._waiting.append(entry)
        if len(self._waiting) <= self.limit:
            return []
        return self.through(self._waiting[0].counter)

    def through(self, counter: int) -> list[BusEntry]:
        """The echo of ``counter`` came (or never will): every waiting entry up to it."""
        out: list[BusEntry] = []
        while self._waiting and self._waiting[0].counter <= counter:
            out.append(self._waiting.popleft())
        self._delivered = max(self._delivered, counter)
        return out

    def all(self) -> list[BusEntry]:
        """Stop waiting (the bus went down): every waiting entry, oldest first."""
        out = list(self._waiting)
        self._waiting.clear()
        if out:
            self._delivered = max(self._delivered, out[-1].counter)
        return out

    def mark(self, counter: int) -> None:
        """``counter`` was delivered without waiting (nothing may be waiting then)."""
        self._delivered = max(self._delivered, counter)


class Outbox:
    """Own entries waiting to be written to Redis, oldest first (bounded, never blocks).

    Three parts, oldest to newest: the batch being written (``batch``, retried until
    ``sent``), brackets (``stream_open``/``stream_close``) pushed out of the queue, and the
    queue. When the queue holds more than ``size`` entries its oldest leaves it: a bracket
    moves to the brackets (at most ``size`` of them, then the oldest is dropped), anything
    else is dropped. So a long outage loses the oldest events but a stream's open and close
    still reach the cluster, in order.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.dropped = 0
        self._batch: list[BusEntry] = []
        self._brackets: deque[BusEntry] = deque()
        self._queue: deque[BusEntry] = deque()

    def __len__(self) -> int:
        return len(self._batch) + len(self._brackets) + len(self._queue)

    def put(self, entry: BusEntry) -> list[BusEntry]:
        """Queue ``entry``; returns the entries dropped to make room (counted in ``dropped``)."""
        self._queue.append(entry)
        if len(self._queue) <= self.size:
            return []
        oldest = self._queue.popleft()
        if oldest.role not in ("open", "close"):
            self.dropped += 1
            return [oldest]
        self._brackets.append(oldest)
        if len(self._brackets) <= self.size:
            return []
        self.dropped += 1
        return [self._brackets.popleft()]

    def batch(self, limit: int) -> list[BusEntry]:
        """The next entries to write, oldest first (the same ones until :meth:`sent`)."""
        while len(self._batch) < limit and (self._brackets or self._queue):
            source = self._brackets if self._brackets else self._queue
            self._batch.append(source.popleft())
        return list(self._batch)

    def sent(self) -> None:
        """The last batch is written."""
        self._batch.clear()

    def discard(self, streams: Iterable[str]) -> int:
        """Forget every entry of ``streams`` (a fenced node's closed streams); how many."""
        gone = set(streams)
        before = len(self)
        self._batch = [e for e in self._batch if e.stream not in gone]
        self._brackets = deque(e for e in self._brackets if e.stream not in gone)
        self._queue = deque(e for e in self._queue if e.stream not in gone)
        return before - len(self)


class EventBus(Protocol):
    """What :class:`~server.hub.EventHub` asks of a cluster bus (:class:`server.bus.RedisBus`)."""

    @property
    def node(self) -> str:
        """This node's id in the cluster."""
        ...

    @property
    def streams(self) -> tuple[StreamInfo, ...]:
        """The cluster's live streams, in opening order (the ``hello`` list)."""
        ...

    def publish(self, message: Message, frame: Frame, role: BacklogRole) -> None:
        """Send one of this node's frames to the cluster (its clients get it from the bus)."""
        ...

    def health(self) -> dict[str, Any]:
        """The ``bus`` object of ``/healthz``."""
        ...
