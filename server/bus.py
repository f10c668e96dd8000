"""The cluster event bus on Redis Streams: publish, follow, liveness, lost nodes (event loop).

:class:`RedisBus` connects one node's :class:`~server.hub.EventHub` to the cluster. The hub
hands it each frame it produced (:meth:`RedisBus.publish`, after the store has it); the bus
writes them to one shared Redis stream and feeds this node's :class:`~server.fanout.FanOut`
from that stream, every node's frames alike, its own included, so every node's clients see
the same frames in the same order. Three tasks, owned here:

- the **writer** sends the outbox (:class:`~server.cluster.Outbox`) in batches through one
  Lua script that, atomically, refuses if this node was declared lost, refreshes the node's
  liveness key (``{P}:node:NODE``, expiring after ``node_ttl_s``), adds the entries to
  ``{P}:events`` (``MAXLEN ~ max_entries``) and keeps ``{P}:live`` (the live streams, their
  owner and their ``stream_open``) in step. Idle, it still runs the script every third of the
  TTL: the heartbeat.
- the **reader** follows ``{P}:events`` with ``XREAD BLOCK`` from the last id it saw.
- the **watcher** looks, every third of the TTL, at the liveness keys of the nodes that own
  live streams; for one whose key is gone, a second script claims it (``SET NX``, once for
  the cluster) and, in the same step, publishes ``stream_close`` reason ``node_lost`` for each
  of its live streams.

Redis down: every failed call is counted and retried with a short capped backoff; while the
writer or the reader is failing, this node's frames go to its own clients directly (counted
as ``local_only``) and keep queueing for Redis (bounded), so local calls and their clients
go on and the other nodes get the frames once Redis is back. A node declared lost while it
was only cut off (its key expired) is *fenced*: its streams that the cluster closed stay
closed (their later frames are dropped, counted) and it goes on under a new incarnation.

Key names carry a hash tag (``{PREFIX}``), so a Redis Cluster keeps them in one slot, as the
scripts need. See docs/bus.md (the design, its failure modes and limits).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from server.cluster import (
    BusConfig,
    BusEntry,
    ClusterStreams,
    EchoWait,
    LiveRecord,
    Outbox,
    stream_id_after,
)
from server.errors import ServerError
from server.fanout import BacklogRole, FanOut, Frame
from streamer.extras import REDIS_EXTRA, import_extra
from streamer.protocol.messages import Message, StreamCloseMessage, StreamInfo, encode

__all__ = ["RedisBus"]

logger = logging.getLogger(__name__)

#: entries per write (one script call) and per read
_BATCH = 256
#: how long one XREAD waits for new entries
_BLOCK_S = 1.0
#: a claim on a lost incarnation is kept this long (a fenced node learns of it meanwhile)
_CLAIM_TTL_S = 86_400
#: the first retry waits this long, doubling up to a third of the TTL
_RETRY_FIRST_S = 0.05
#: while the bus stays down, one log line per this many seconds
_DOWN_LOG_S = 30.0
#: lost incarnations remembered (not checked again)
_LOST_REMEMBERED = 1024

# KEYS: events, live, this node's liveness key, the claim key of this incarnation.
# ARGV: incarnation, node, ttl ms, maxlen, announcements n, n x (stream, live record),
#       then per entry: counter, role, stream, type, stream time, text.
_PUBLISH = """
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[3])
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local sep = string.char(31)
local mine = ARGV[1] .. sep
local n = 0
while i <= #ARGV do
  local role, stream = ARGV[i + 1], ARGV[i + 2]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'n', ARGV[2], 'c', ARGV[1],
    'i', ARGV[i], 'r', role, 's', stream, 'y', ARGV[i + 3], 'e', ARGV[i + 4], 't', ARGV[i + 5])
  if role == 'open' then
    redis.call('HSET', KEYS[2], stream, mine .. ARGV[2] .. sep .. ARGV[i + 5])
  elseif role == 'close' then
    local v = redis.call('HGET', KEYS[2], stream)
    if v and string.sub(v, 1, #mine) == mine then redis.call('HDEL', KEYS[2], stream) end
  end
  n = n + 1
  i = i + 6
end
return n
"""

# KEYS: the lost node's liveness key, the claim key, events, live.
# ARGV: the lost incarnation, the claiming node, claim ttl s, maxlen,
#       then per stream: stream, stream time, stream_close text.
# A stream passed but absent from the live index is closed too (a Redis restarted without its
# data before the lost node could announce it again); one live under another owner is not.
_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return -1 end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[3]) then return -2 end
local owner = ARGV[1] .. string.char(31)
local closed = {}
for i = 5, #ARGV, 3 do
  local v = redis.call('HGET', KEYS[4], ARGV[i])
  if not v or string.sub(v, 1, #owner) == owner then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'n', ARGV[2], 'c', '', 'i', '0',
      'r', 'close', 's', ARGV[i], 'y', 'stream_close', 'e', ARGV[i + 1], 't', ARGV[i + 2])
    if v then redis.call('HDEL', KEYS[4], ARGV[i]) end
    closed[#closed + 1] = ARGV[i]
  end
end
return closed
"""


class _Keys:
    """The cluster's Redis keys under one hash tag."""

    def __init__(self, prefix: str) -> None:
        tag = "{" + prefix + "}"
        self.events = f"{tag}:events"
        self.live = f"{tag}:live"
        self._tag = tag

    def node(self, node: str) -> str:
        return f"{self._tag}:node:{node}"

    def lost(self, incarnation: str) -> str:
        return f"{self._tag}:lost:{incarnation}"


class RedisBus:
    """One node's link to the cluster's Redis event bus (see module doc). Loop-bound.

    Usage::

        bus = await RedisBus(config, fanout, session=session).start()
        hub = EventHub(info, fanout=fanout, bus=bus, ...)
        ...
        await bus.close(timeout_s)   # before the fan-out closes

    ``start()`` fails (ServerError) for a refused credential or a key of the wrong type; an
    unreachable Redis only makes the node start with the bus down (retried). ``close()`` is
    idempotent: own frames still on their way reach this node's clients at once, the outbox
    gets ``timeout_s`` to reach Redis, then the liveness key is removed.
    """

    def __init__(
        self,
        config: BusConfig,
        fanout: FanOut,
        *,
        session: str,
        record: Callable[[Message, str], None] | None = None,
    ) -> None:
        self.config = config
        #: records the node_lost closes this node claims and publishes (the store's recorder):
        #: the closes of a dead node's calls are stored by the node that closed them
        self._record = record
        self._node = config.node_name(session)
        self._session = session
        self._epoch = 0
        self._incarnation = session
        self._mine = {session}
        self._fanout = fanout
        self._keys = _Keys(config.key_prefix)
        self._view = ClusterStreams()
        self._echo = EchoWait(config.outbox_size)
        self._outbox = Outbox(config.outbox_size)
        self._announced: dict[str, str] = {}  # own streams live in Redis -> their open text
        self._open_here: set[str] = set()  # own streams open now
        self._fenced: set[str] = set()  # own streams the cluster closed while we were cut off
        self._lost: OrderedDict[str, None] = OrderedDict()
        self._writer: Any = None
        self._reader: Any = None
        self._scripts: dict[str, Any] = {}
        self._exc: Any = None  # redis.exceptions, once started
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._stop = asyncio.Event()
        self._last_id: bytes = b"0-0"
        self._synced = False
        self._check_gap = False
        self._announce_due = False
        self._writer_ok = False
        self._reader_ok = False
        self._up_since = 0.0  # loop time both became ok
        self._down_since: float | None = None
        self._down_logged = 0.0
        self._last_error: str | None = None
        self._closing = False
        self._closed = False
        self.counts: dict[str, int] = dict.fromkeys((
            "published", "received", "local_only", "fenced_frames", "errors", "gaps",
            "bad_entries", "nodes_lost", "lost_streams_closed", "fences",
        ), 0)

    # -- what the hub asks ---------------------------------------------------------------------

    @property
    def node(self) -> str:
        """This node's id in the cluster."""
        return self._node

    @property
    def streams(self) -> tuple[StreamInfo, ...]:
        """The cluster's live streams, in opening order (the ``hello`` list)."""
        return self._view.streams

    @property
    def up(self) -> bool:
        """Whether frames go through Redis now (writer and reader both working)."""
        return self._writer_ok and self._reader_ok and not self._closing

    def health(self) -> dict[str, Any]:
        """The ``bus`` object of ``/healthz`` (no credential in it)."""
        return {
            "node": self._node,
            "address": self.config.address,
            "state": "up" if self.up else "down",
            "error": None if self.up else self._last_error,
            "cluster_streams": len(self._view),
            "outbox": len(self._outbox),
            "outbox_dropped": self._outbox.dropped,
            "echo_waiting": len(self._echo),
            **self.counts,
        }

    def publish(self, message: Message, frame: Frame, role: BacklogRole) -> None:
        """Queue one own frame for the cluster; this node's clients get it from its echo.

        While the bus is down (or closing) the frame goes to this node's clients at once and
        still waits for Redis. Frames of a fenced stream go nowhere (counted).
        """
        stream = frame.stream
        if stream is not None:
            if role == "open":
                self._open_here.add(stream)
            elif role == "close":
                self._open_here.discard(stream)
            if stream in self._fenced:
                self.counts["fenced_frames"] += 1
                if role == "close":
                    self._fenced.discard(stream)
                return
        entry = BusEntry.own(message, frame, role, node=self._node,
                             incarnation=self._incarnation, counter=self._echo.next_counter())
        for dropped in self._outbox.put(entry):  # never reaches the bus: deliver it here
            self._deliver_local(self._echo.through(dropped.counter))
        if self.up:
            self._deliver_local(self._echo.hold(entry))
        else:
            self._echo.mark(entry.counter)
            self._deliver_local([entry])
        self._drained.clear()
        self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> RedisBus:
        """Connect, read the cluster's live streams and recent history, start the tasks."""
        self._exc = errors = import_extra("redis.exceptions", purpose="the event bus (--bus)",
                                          extra=REDIS_EXTRA)
        self._writer = self._client(self.config.timeout_s)
        self._reader = self._client(self.config.timeout_s + _BLOCK_S)
        self._scripts = {name: self._writer.register_script(text)
                         for name, text in (("publish", _PUBLISH), ("claim", _CLAIM))}
        try:
            await self._sync(history=True)
            await self._write_once()
        except (errors.AuthenticationError, errors.ResponseError) as exc:
            await self._close_clients()
            raise ServerError(f"event bus {self.config.address}: {exc}") from None
        except errors.RedisError as exc:
            self._failed("start", exc)
        else:
            self._writer_ok = self._reader_ok = True
            self._up_since = asyncio.get_running_loop().time()
            logger.info("event bus %s: node %s joined; %d live stream(s) in the cluster",
                        self.config.address, self._node, len(self._view))
        for part, body in (("writer", self._write_loop), ("reader", self._read_loop),
                           ("watcher", self._watch_loop)):
            task = asyncio.create_task(self._supervise(part, body), name=f"bus-{part}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return self

    async def close(self, timeout_s: float) -> None:
        """Deliver what waits for its echo, flush the outbox (bounded), leave. Idempotent."""
        if self._closed:
            return
        self._closed = self._closing = True
        self._deliver_local(self._echo.all())
        for task in list(self._tasks):
            if task.get_name() != "bus-writer":
                task.cancel()
        self._wake.set()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except asyncio.TimeoutError:
            logger.warning("event bus %s: %d own entries not written at shutdown",
                           self.config.address, len(self._outbox))
        self._stop.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=timeout_s)
            if pending:
                logger.warning("event bus %s: %d task(s) still stopping",
                               self.config.address, len(pending))
        if self._writer is not None and self._drained.is_set():
            try:  # a clean goodbye: no one waits for this node's key to expire
                await asyncio.wait_for(self._writer.delete(self._keys.node(self._node)),
                                       self.config.timeout_s)
            except (asyncio.TimeoutError, self._exc.RedisError):
                pass
        await self._close_clients()

    def _client(self, timeout_s: float) -> Any:
        """A redis-py asyncio client: no retries of its own (ours are counted), RESP2."""
        asyncio_redis = import_extra("redis.asyncio", purpose="the event bus (--bus)",
                                     extra=REDIS_EXTRA)
        retry = import_extra("redis.asyncio.retry", purpose="the event bus", extra=REDIS_EXTRA)
        backoff = import_extra("redis.backoff", purpose="the event bus", extra=REDIS_EXTRA)
        return asyncio_redis.Redis.from_url(
            self.config.url, password=self.config.password, socket_timeout=timeout_s,
            socket_connect_timeout=self.config.timeout_s,
            retry=retry.Retry(backoff.NoBackoff(), 0), protocol=2,
            client_name=f"emotion-monitor:{self._node}",
        )

    async def _close_clients(self) -> None:
        for client in (self._writer, self._reader):
            if client is not None:
                await client.aclose()

    # -- health --------------------------------------------------------------------------------

    def _failed(self, part: str, exc: BaseException) -> None:
        """A Redis call failed: count it, mark the part down, say so (rate-limited)."""
        was_up = self.up
        self.counts["errors"] += 1
        self._last_error = f"{part}: {type(exc).__name__}: {exc}"[:300]
        if part in ("start", "writer"):
            self._writer_ok = False
            self._announce_due = True
        if part in ("start", "reader"):
            self._reader_ok = False
            self._check_gap = True
        loop_time = asyncio.get_running_loop().time()
        if was_up or part == "start":
            self._down_since = self._down_logged = loop_time
            self._deliver_local(self._echo.all())
            logger.warning("event bus %s down (%s); local calls go on, their frames reach this "
                           "node's clients directly; retrying", self.config.address,
                           self._last_error)
        elif loop_time - self._down_logged >= _DOWN_LOG_S:
            self._down_logged = loop_time
            logger.warning("event bus %s still down (%d errors so far; %s)",
                           self.config.address, self.counts["errors"], self._last_error)

    def _recovered(self, part: str) -> None:
        was_up = self.up
        if part == "writer":
            self._writer_ok = True
        else:
            self._reader_ok = True
        if self.up and not was_up:
            loop_time = asyncio.get_running_loop().time()
            self._up_since = loop_time
            down_s = loop_time - (self._down_since if self._down_since is not None else loop_time)
            logger.info("event bus %s up again after %.1f s (%d errors so far)",
                        self.config.address, down_s, self.counts["errors"])

    async def _supervise(self, part: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run one of the bus's tasks; a bug in it is logged and the task started again."""
        attempt = 0
        while not self._stopped(part):
            try:
                await body()
                return
            except Exception as exc:
                logger.exception("event bus %s: the %s task failed; starting it again",
                                 self.config.address, part)
                self._failed(part, exc)
                attempt += 1
                await self._pause(attempt)

    def _stopped(self, part: str) -> bool:
        """Whether a task of the bus is to end: the writer at the very end, others at close.

        The loops check it too: a cancellation that a client library turned into an error
        would otherwise only start the next retry.
        """
        return self._stop.is_set() or (part != "writer" and self._closing)

    async def _pause(self, attempt: int) -> None:
        """Wait before retry ``attempt`` (capped doubling; ends early when closing)."""
        delay = min(_RETRY_FIRST_S * 2 ** min(attempt, 16), self.config.node_ttl_s / 3)
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
        except asyncio.TimeoutError:
            pass

    # -- delivery to this node's clients -------------------------------------------------------

    def _deliver(self, entry: BusEntry) -> None:
        """One entry to the cluster view and this node's fan-out (clients and backlog)."""
        try:
            self._view.apply(entry)
        except ValueError as exc:
            self._bad_entry(exc)
            return
        self._fanout.publish(entry.to_frame(), backlog=entry.role)

    def _deliver_local(self, entries: Sequence[BusEntry]) -> None:
        """Own entries delivered without waiting for their echo (counted)."""
        self.counts["local_only"] += len(entries)
        for entry in entries:
            self._deliver(entry)

    def _bad_entry(self, exc: Exception) -> None:
        self.counts["bad_entries"] += 1
        if self.counts["bad_entries"] in (1, 10, 100) or self.counts["bad_entries"] % 1000 == 0:
            logger.warning("event bus %s: skipped a bad entry (%s; %d so far)",
                           self.config.address, exc, self.counts["bad_entries"])

    def _on_entry(self, fields: Mapping[bytes, bytes]) -> None:
        """One entry read from the bus."""
        try:
            entry = BusEntry.from_fields(fields)
        except ValueError as exc:
            self._bad_entry(exc)
            return
        self.counts["received"] += 1
        if entry.incarnation in self._mine:  # our own echo: deliver it (and anything older)
            for own in self._echo.through(entry.counter):
                self._deliver(own)
            return
        if entry.role == "close" and not entry.incarnation and entry.stream in self._announced:
            self._fence(f"node {entry.node} closed our stream {entry.stream} as lost")
        self._deliver(entry)

    # -- the writer ----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Write the outbox (and the heartbeat) until closed; retries counted."""
        attempt = 0
        idle_s = self.config.node_ttl_s / 3
        while not self._stopped("writer"):
            self._wake.clear()
            try:
                await self._write_once()
            except self._exc.RedisError as exc:
                self._failed("writer", exc)
                attempt += 1
                await self._pause(attempt)
                continue
            attempt = 0
            self._recovered("writer")
            if len(self._outbox):
                continue
            self._drained.set()
            try:
                await asyncio.wait_for(self._wake.wait(), idle_s)
            except asyncio.TimeoutError:
                pass  # the heartbeat

    async def _write_once(self) -> None:
        """One publish script call: the liveness key, announcements, up to a batch of entries."""
        batch = self._outbox.batch(_BATCH)
        incarnation = self._incarnation
        announce = list(self._announced.items()) if self._announce_due else []
        args: list[str] = [incarnation, self._node,
                           str(int(self.config.node_ttl_s * 1000)),
                           str(self.config.max_entries), str(len(announce))]
        for stream, text in announce:
            args += (stream, LiveRecord(incarnation, self._node, text).encode())
        for entry in batch:
            args += entry.script_args()
        keys = [self._keys.events, self._keys.live, self._keys.node(self._node),
                self._keys.lost(incarnation)]
        result = await self._scripts["publish"](keys=keys, args=args, client=self._writer)
        if result == -1:
            self._fence("a survivor claimed it after its liveness key expired")
            return
        self._outbox.sent()
        self._announce_due = False
        self.counts["published"] += len(batch)
        for entry in batch:
            if entry.stream is None:
                continue
            if entry.role == "open":
                self._announced[entry.stream] = entry.text
            elif entry.role == "close":
                self._announced.pop(entry.stream, None)
        if incarnation != self._incarnation:  # fenced while this batch was on its way
            self._fence_streams({e.stream for e in batch if e.role == "open" and e.stream})

    def _fence(self, why: str) -> None:
        """This node was declared lost: its announced streams stay closed; new incarnation."""
        self.counts["fences"] += 1
        closed = set(self._announced)
        logger.warning("event bus %s: node %s was declared lost (%s); its %d stream(s) live "
                       "in the cluster stay closed there; new calls are published as usual",
                       self.config.address, self._node, why, len(closed))
        self._deliver_local(self._echo.all())
        self._announced.clear()
        self._fence_streams(closed)
        self._epoch += 1
        self._incarnation = f"{self._session}.{self._epoch}"
        self._mine.add(self._incarnation)
        self._wake.set()

    def _fence_streams(self, streams: set[str]) -> None:
        for stream in streams:
            self._announced.pop(stream, None)
        self._fenced |= streams & self._open_here
        self.counts["fenced_frames"] += self._outbox.discard(streams)

    # -- the reader ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Follow the shared stream until closed; retries counted."""
        attempt = 0
        while not self._stopped("reader"):
            try:
                reply = await self._read_once()
            except self._exc.RedisError as exc:
                self._failed("reader", exc)
                attempt += 1
                await self._pause(attempt)
                continue
            attempt = 0
            self._recovered("reader")
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    self._last_id = entry_id
                    self._on_entry(fields)

    async def _read_once(self) -> Any:
        if not self._synced:
            await self._sync(history=False)
        elif self._check_gap:
            await self._gap_check()
        return await self._reader.xread({self._keys.events: self._last_id}, count=_BATCH,
                                        block=int(_BLOCK_S * 1000))

    async def _sync(self, *, history: bool) -> None:
        """Read the live streams and (``history``) the recent entries, atomically."""
        count = max(1, self.config.replay_entries) if history else 1
        async with self._reader.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._keys.live)
            pipe.xrevrange(self._keys.events, "+", "-", count=count)
            records, recent = await pipe.execute()
        self._last_id = recent[0][0] if recent else b"0-0"
        live = self._load(records)
        if history and self.config.replay_entries:
            self._replay(live, list(reversed(recent)))
        else:  # clients may be connected already: they get the opens of streams new to them
            for stream in live:
                self._fanout.publish(Frame(live[stream].open_text, stream), backlog="open")
        self._synced = True
        self._check_gap = False

    def _load(self, records: Mapping[bytes, bytes]) -> dict[str, LiveRecord]:
        """Redis's live streams into the view; those new to it."""
        new: dict[str, LiveRecord] = {}
        for key, value in records.items():
            try:
                stream, record = key.decode(), LiveRecord.decode(value)
                if self._view.load(stream, record):
                    new[stream] = record
            except ValueError as exc:
                self._bad_entry(exc)
        return new

    def _replay(self, live: Mapping[str, LiveRecord], recent: list[tuple[bytes, Any]]) -> None:
        """Recent entries into the backlog (no client is connected yet), brackets kept."""
        backlog = self._fanout.backlog
        entries: list[BusEntry] = []
        for _, fields in recent:
            try:
                entries.append(BusEntry.from_fields(fields))
            except ValueError as exc:
                self._bad_entry(exc)
        opened = {e.stream for e in entries if e.role == "open"}
        known = set(live) - opened
        for name in known:  # live streams that opened before the replayed entries
            backlog.open(name, live[name].open_text)
        for entry in entries:
            stream = entry.stream
            if stream is None or entry.role == "none":
                continue
            if entry.role == "open":
                backlog.open(stream, entry.text)
                known.add(stream)
            elif stream in known and entry.role == "close":
                backlog.end(stream, entry.text)
                known.discard(stream)
            elif stream in known:
                backlog.add(stream, entry.text)
                self._view.apply(entry)

    async def _gap_check(self) -> None:
        """After a failed read: were entries after our last id trimmed meanwhile? (counted)"""
        self._check_gap = False
        try:
            info = await self._reader.xinfo_stream(self._keys.events)
        except self._exc.ResponseError:
            return  # no stream (yet): nothing was missed
        first = info.get("first-entry")
        if first and self._last_id != b"0-0" and stream_id_after(first[0], self._last_id):
            self.counts["gaps"] += 1
            logger.warning("event bus %s: entries after %s were trimmed while this node could "
                           "not read (more than --bus-max-entries); some frames are missed",
                           self.config.address, self._last_id.decode())

    # -- the watcher ---------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        """Every third of the TTL: close the streams of nodes whose liveness key expired.

        Only once this node has itself been up for a whole TTL, so that after an outage the
        other nodes have had the time to refresh their keys.
        """
        interval = self.config.node_ttl_s / 3
        loop = asyncio.get_running_loop()
        while not self._stopped("watcher"):
            await asyncio.sleep(interval)
            if not self.up or loop.time() - self._up_since < self.config.node_ttl_s:
                continue
            try:
                await self._check_nodes()
            except self._exc.RedisError as exc:
                self.counts["errors"] += 1
                self._last_error = f"watcher: {type(exc).__name__}: {exc}"[:300]

    async def _check_nodes(self) -> None:
        owners = sorted((node, inc) for node, inc in self._view.owners()
                        if inc and inc not in self._mine and inc not in self._lost)
        if not owners:
            return
        nodes = sorted({node for node, _ in owners})
        values = await self._writer.mget([self._keys.node(node) for node in nodes])
        alive = {node: (v.decode() if v is not None else None)
                 for node, v in zip(nodes, values, strict=True)}
        for node, inc in owners:
            if alive[node] != inc:
                await self._claim(node, inc)

    async def _claim(self, node: str, incarnation: str) -> None:
        """Claim a lost incarnation and close its live streams with ``node_lost`` (once)."""
        records = await self._writer.hgetall(self._keys.live)
        streams = dict.fromkeys(self._view.owned_by(incarnation))
        for key, value in records.items():
            try:
                if LiveRecord.decode(value).incarnation == incarnation:
                    streams[key.decode()] = None
            except ValueError as exc:
                self._bad_entry(exc)
        now = time.time()
        args = [incarnation, self._node, str(_CLAIM_TTL_S), str(self.config.max_entries)]
        closes: dict[str, tuple[StreamCloseMessage, str]] = {}
        for stream in streams:
            close = self._view.lost_close(stream, now)
            closes[stream] = (close, encode(close))
            args += (stream, repr(close.end_s), closes[stream][1])
        keys = [self._keys.node(node), self._keys.lost(incarnation), self._keys.events,
                self._keys.live]
        result = await self._scripts["claim"](keys=keys, args=args, client=self._writer)
        if result == -1:
            return  # it refreshed its key meanwhile
        self._lost[incarnation] = None
        while len(self._lost) > _LOST_REMEMBERED:
            self._lost.popitem(last=False)
        if isinstance(result, list):  # ours: the streams the claim closed (-2: another's)
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in result]
            if self._record is not None:  # the claimer stores the closes it published
                for name in names:
                    if name in closes:
                        self._record(*closes[name])
            self.counts["nodes_lost"] += 1
            self.counts["lost_streams_closed"] += len(names)
            logger.warning("event bus %s: node %s (incarnation %s) stopped refreshing its "
                           "liveness key; closed its %d live stream(s) with reason node_lost",
                           self.config.address, node, incarnation, len(names))
