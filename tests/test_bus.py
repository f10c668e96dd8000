"""The cluster event bus: a real redis-server (Debian package), real nodes and real clients.

Each test that needs Redis starts its own ``redis-server`` on a free 127.0.0.1 port in a temp
folder, without persistence, and stops it by PID. Nodes are real :class:`Monitor` runs with
``bus=BusConfig(...)`` (the zero-cost FixedProbabilitiesModel); the node that is killed runs
in a subprocess (``emotion-monitor run --bus``) so that SIGKILL leaves no goodbye.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from server.cli import main as cli_main
from server.cluster import (
    BusConfig,
    BusEntry,
    ClusterStreams,
    EchoWait,
    LiveRecord,
    Outbox,
    bus_address,
)
from server.config import ServerConfig
from server.errors import ServerError
from server.monitor import Monitor
from server.store import read_events
from streamer.audio import float32_to_int16
from streamer.engine import EngineConfig
from streamer.extras import MissingExtraError, require_extra
from streamer.protocol.messages import (
    Hello,
    IngestAck,
    IngestEnd,
    IngestStart,
    Message,
    StatsMessage,
    StreamCloseMessage,
    StreamOpenMessage,
    UtteranceMessage,
    WindowMessage,
    decode,
    encode,
)
from streamer.testing import FixedProbabilitiesModel, speech_like
from tests.conftest import REPO, TIMEOUT_S
from tests.realparts.procs import OutputProcess, monitor_command, require_binary, require_module

TTL_S = 1.0  # short, so that a lost node is noticed quickly in tests


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


# -- a private redis-server -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of our own on 127.0.0.1 (no persistence); restarts keep its port."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary = binary
        self.folder = folder
        self.port = 0
        self.process: OutputProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (a first start picks a free port, trying again if it was taken)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3 if not self.port else 1):
            port = self.port or _free_port()
            process = OutputProcess([
                self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no",
            ])
            try:
                process.wait_for("Ready to accept connections", timeout_s=TIMEOUT_S)
            except AssertionError:
                process.stop()
                if self.port:
                    raise
                continue
            self.port, self.process = port, process
            return
        raise AssertionError("redis-server did not start on any of three free ports")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server; skips (fails in CI) when the Debian package is not installed."""
    binary = require_binary("redis-server", "redis-server")
    require_module("redis", "'emotion-monitor[redis]'")
    server = RedisServer(binary, tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- nodes, calls, clients ------------------------------------------------------------------------


@asynccontextmanager
async def node(url: str, name: str, store: Path | None = None, *,
               shutdown_timeout_s: float = TIMEOUT_S) -> AsyncIterator[Monitor]:
    """An in-process cluster node serving pushed calls on 127.0.0.1:0."""
    config = ServerConfig(
        port=0, store_path=store, shutdown_timeout_s=shutdown_timeout_s, stats_interval_s=0.5,
        bus=BusConfig(url=url, node_id=name, node_ttl_s=TTL_S),
    )
    async with Monitor(FixedProbabilitiesModel(), engine_config=EngineConfig(),
                       server_config=config) as running:
        yield running


def pcm(audio: np.ndarray) -> bytes:
    return float32_to_int16(np.ascontiguousarray(audio, dtype=np.float32)).tobytes()


class Call:
    """One pushed mono 16 kHz call over a raw /ingest connection."""

    def __init__(self, ws: ClientConnection, stream: str) -> None:
        self.ws = ws
        self.stream = f"{stream}/ch0"

    @classmethod
    async def open(cls, url: str, stream: str) -> Call:
        ws = await connect(url)
        await ws.send(encode(IngestStart(stream, 16000, 1, "s16le")))
        assert isinstance(decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S)), IngestAck)
        return cls(ws, stream)

    async def speak(self, seconds: float, *, seed: int = 0) -> None:
        """Speech then a pause (so its windows come out), unpaced in 0.1 s frames."""
        audio = np.concatenate([speech_like(seconds, seed=seed), np.zeros(8000, np.float32)])
        for i in range(0, audio.size, 1600):
            await self.ws.send(pcm(audio[i : i + 1600]))

    async def end(self) -> None:
        await self.ws.send(encode(IngestEnd()))
        await self.ws.wait_closed()


def client(url: str) -> connect:
    """A /ws client whose unread frames never stop it reading (so its close is prompt)."""
    return connect(url, max_queue=None)


async def receive(ws: ClientConnection) -> Message:
    return decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))


async def read_until(ws: ClientConnection, done: Callable[[Message], bool],
                     got: list[Message] | None = None) -> list[Message]:
    """Messages (appended to ``got``) up to and including the first one ``done`` accepts."""
    got = [] if got is None else got
    while True:
        message = await receive(ws)
        got.append(message)
        if done(message):
            return got


def closed(stream: str, reason: str | None = None) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, StreamCloseMessage) and m.stream == stream and (
        reason is None or m.reason == reason)


def utterance_of(stream: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, UtteranceMessage) and m.stream == stream


def window_of(stream: str, after: int = -1) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, WindowMessage) and m.stream == stream and m.seq > after


def of_stream(messages: list[Message], stream: str) -> list[Message]:
    return [m for m in messages if getattr(m, "stream", None) == stream]


def assert_bracketed_in_order(messages: list[Message], stream: str, reason: str) -> None:
    """stream_open first, windows numbered 0, 1, 2 ... with nothing missing, the close last."""
    mine = of_stream(messages, stream)
    assert isinstance(mine[0], StreamOpenMessage), mine[:2]
    assert isinstance(mine[-1], StreamCloseMessage) and mine[-1].reason == reason, mine[-1]
    seqs = [m.seq for m in mine if isinstance(m, WindowMessage)]
    assert seqs and seqs == list(range(len(seqs))), seqs


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for state another task changes; fails naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def bus_health(monitor: Monitor) -> dict[str, Any]:
    assert monitor.hub is not None
    return monitor.hub.health()["bus"]


# -- pure parts -----------------------------------------------------------------------------------


def test_bus_config_refuses_passwords_in_the_url_and_bad_values() -> None:
    """A password in --bus, another scheme, bad names or ranges: one clear ServerError each."""
    assert BusConfig(url="redis://cache:6380/2").address == "redis://cache:6380/2"
    assert bus_address("rediss://user@cache") == "rediss://cache:6379/0"
    assert "hunter2" not in repr(BusConfig(url="redis://cache", password="hunter2"))
    assert BusConfig(url="redis://cache").node_name("3f9c2a71b0d4") == "3f9c2a71b0d4"
    for fields, match in [
        ({"url": "redis://:hunter2@cache"}, "no password"),
        ({"url": "redis://cache?password=x"}, "no password"),
        ({"url": "http://cache"}, "redis://"),
        ({"url": "redis://cache/x"}, "database"),
        ({"url": "redis://cache", "node_id": "a b"}, "--node-id"),
        ({"url": "redis://cache", "node_ttl_s": 0.1}, "node_ttl_s"),
        ({"url": "redis://cache", "replay_entries": 200_000}, "replay_entries"),
    ]:
        with pytest.raises(ServerError, match=match):
            BusConfig(**fields)


def _entry(counter: int, role: str = "event", stream: str | None = "s",
           kind: str = "window") -> BusEntry:
    return BusEntry("n", "inc", counter, role, stream, kind, float(counter), f"t{counter}")  # type: ignore[arg-type]


def test_outbox_drops_oldest_events_first_and_keeps_order() -> None:
    """Past its size the outbox drops the oldest events; opens and closes survive, in order."""
    box = Outbox(3)
    entries = [_entry(1, "open"), _entry(2), _entry(3), _entry(4), _entry(5, "close"),
               _entry(6)]
    dropped = [d.counter for e in entries for d in box.put(e)]
    assert dropped == [2, 3] and box.dropped == 2
    first = box.batch(2)
    assert [e.counter for e in first] == [1, 4]
    assert [e.counter for e in box.batch(2)] == [1, 4]  # the same batch until it is sent
    box.sent()
    assert [e.counter for e in box.batch(10)] == [5, 6]
    assert box.discard(["s"]) == 2 and len(box) == 0


def test_echo_wait_delivers_in_counter_order_and_skips_late_echoes() -> None:
    """Own entries wait for their echo; a skipped echo releases the older ones; marks skip."""
    wait = EchoWait(limit=2)
    first, second, third = (_entry(wait.next_counter()) for _ in range(3))
    assert wait.hold(first) == [] and wait.hold(second) == []
    assert [e.counter for e in wait.hold(third)] == [1]  # over the limit: the oldest goes now
    assert [e.counter for e in wait.through(3)] == [2, 3]
    assert wait.through(2) == []  # a late echo of something delivered
    fourth = _entry(wait.next_counter())
    wait.mark(fourth.counter)
    assert wait.through(4) == [] and len(wait) == 0


def test_cluster_streams_follow_entries_and_make_the_node_lost_close() -> None:
    """Opens add (in order), events move the stream time, closes remove; node_lost at the end."""
    view = ClusterStreams()
    open_text = encode(StreamOpenMessage("a/ch0", 8000, 1.0, {"call": "a"}))
    fields = {b"n": b"node-a", b"c": b"inc-a", b"i": b"1", b"r": b"open", b"s": b"a/ch0",
              b"y": b"stream_open", b"e": b"0.0", b"t": open_text.encode()}
    view.apply(BusEntry.from_fields(fields))
    b_open = encode(StreamOpenMessage("b/ch0", 16000, 1.5))
    view.load("b/ch0", LiveRecord.decode(LiveRecord("inc-b", "node-b", b_open).encode()))
    view.apply(BusEntry("node-a", "inc-a", 2, "event", "a/ch0", "window", 2.5, "{}"))
    assert [s.stream for s in view.streams] == ["a/ch0", "b/ch0"]
    assert view.streams[0].metadata == {"call": "a"} and view.streams[0].sample_rate_hz == 8000
    assert view.owners() == {("node-a", "inc-a"), ("node-b", "inc-b")}
    close = view.lost_close("a/ch0", 9.0)
    assert (close.reason, close.end_s, close.windows) == ("node_lost", 2.5, 1)
    view.apply(BusEntry("node-a", "inc-a", 3, "close", "a/ch0", "stream_close", 3.0, "{}"))
    assert view.owned_by("inc-a") == [] and len(view) == 1
    with pytest.raises(ValueError, match="role"):
        BusEntry.from_fields({**fields, b"r": b"sideways"})
    with pytest.raises(ValueError):
        view.apply(BusEntry("x", "y", 1, "open", "c", "stream_open", 0.0, "not json"))


def test_missing_redis_extra_and_bus_flags_without_bus_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The redis extra is named when absent; bus flags without --bus and a URL password: exit 2."""
    with pytest.raises(MissingExtraError) as caught:
        require_extra("no_such_redis_module", purpose="--bus", extra="redis")
    assert str(caught.value) == ("--bus needs no_such_redis_module, which is not installed: "
                                 "pip install 'emotion-monitor[redis]'")
    assert cli_main(["run", "--source", "none", "--no-store", "--node-id", "a"]) == 2
    assert "--node-id need(s) --bus URL" in capsys.readouterr().err
    assert cli_main(["run", "--source", "none", "--no-store",
                     "--bus", "redis://:secret@127.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert "--bus-password-file" in err and "secret" not in err


# -- two nodes, one view --------------------------------------------------------------------------


def test_two_nodes_show_every_call_in_order_with_the_same_backlog(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A call on A and one on B: clients on both nodes see both, in order, and the same backlog."""
    stores = {name: tmp_path / f"{name}.sqlite3" for name in "ab"}

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with node(redis_server.url, "a", stores["a"]) as a, \
                node(redis_server.url, "b", stores["b"]) as b, \
                client(a.ws_url) as on_a, client(b.ws_url) as on_b:
            assert isinstance(await receive(on_a), Hello)
            assert isinstance(await receive(on_b), Hello)
            call_a = await Call.open(a.ingest_url, "call-a")
            await call_a.speak(2.5, seed=1)
            got = {"a": [], "b": await read_until(on_b, window_of(call_a.stream))}
            async with client(b.ws_url) as joining:  # while call-a is live on A
                hello = await receive(joining)
                out["joining_hello"] = hello
                out["joining_first"] = await receive(joining)
            async with node(redis_server.url, "c") as c, client(c.ws_url) as on_c:
                # a node that joins mid-call reads the call's history for its backlog
                out["c_hello"] = await receive(on_c)
                out["c_backlog"] = await read_until(on_c, window_of(call_a.stream))
            call_b = await Call.open(b.ingest_url, "call-b")
            await call_b.speak(2.0, seed=2)
            await call_a.end()
            await call_b.end()
            for ws, name in ((on_a, "a"), (on_b, "b")):
                for stream in (call_a.stream, call_b.stream):
                    if not any(closed(stream)(m) for m in got[name]):
                        await read_until(ws, closed(stream), got[name])
            out.update(got)
            async with client(b.ws_url) as late:  # both calls over: the backlog replays both
                assert isinstance(await receive(late), Hello)
                out["late"] = await read_until(late, closed(call_b.stream))
            out["health_b"] = bus_health(b)
        return out

    out = run(scenario())
    streams = ("call-a/ch0", "call-b/ch0")
    for name in ("a", "b", "late"):
        for stream in streams:
            assert_bracketed_in_order(out[name], stream, "end")
    on_a = [m for m in out["a"] if not isinstance(m, StatsMessage)]
    on_b = [m for m in out["b"] if not isinstance(m, StatsMessage)]
    assert on_a == on_b  # one order for every node's clients
    for stream in streams:  # the late client's backlog is what the live clients saw
        assert of_stream(out["late"], stream) == of_stream(on_b, stream)
    hello = out["joining_hello"]
    assert [s.stream for s in hello.streams] == ["call-a/ch0"]  # A's call, on B's hello
    assert isinstance(out["joining_first"], StreamOpenMessage)  # its backlog, bracketed
    assert out["joining_first"].stream == "call-a/ch0"
    assert [s.stream for s in out["c_hello"].streams] == ["call-a/ch0"]
    from_c = of_stream(out["c_backlog"], "call-a/ch0")
    assert from_c == of_stream(on_b, "call-a/ch0")[: len(from_c)]  # the same history
    assert {m.node for m in out["b"] if isinstance(m, StatsMessage)} >= {"a", "b"}
    health = out["health_b"]
    assert health["state"] == "up" and health["errors"] == 0 and health["node"] == "b"
    assert health["published"] > 0 and health["received"] > health["published"]
    for name, own, other in (("a", "call-a/ch0", "call-b/ch0"), ("b", "call-b/ch0", "call-a/ch0")):
        recorded = {getattr(m, "stream", None) for _, m in read_events(stores[name])}
        assert own in recorded and other not in recorded  # each node stores its own calls


# -- a node that dies ------------------------------------------------------------------------------


def _dead_node(url: str, tmp_path: Path) -> OutputProcess:
    """``emotion-monitor run --bus`` in a subprocess (bundled model, pushed calls only)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = OutputProcess(
        monitor_command("run", "--source", "none", "--port", "0", "--no-store", "--bus", url,
                        "--node-id", "doomed", "--bus-node-ttl-s", str(TTL_S),
                        "--stats-interval-s", "0.2"),
        env=env, cwd=tmp_path, log_path=tmp_path / "doomed.log",
    )
    return process


def test_killed_node_calls_end_with_node_lost_once_and_others_go_on(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL a node mid-call: its stream closes with node_lost, once; other calls go on."""
    with _dead_node(redis_server.url, tmp_path) as doomed:
        ingest_url = doomed.wait_for(r"ingest:\s+(\S+)", timeout_s=TIMEOUT_S * 2).group(1)

        async def scenario() -> dict[str, Any]:
            async with node(redis_server.url, "b") as b, node(redis_server.url, "c") as c, \
                    client(b.ws_url) as on_b, client(c.ws_url) as on_c:
                for ws in (on_b, on_c):
                    assert isinstance(await receive(ws), Hello)
                lost = await Call.open(ingest_url, "lost")
                kept = await Call.open(b.ingest_url, "kept")
                await lost.speak(2.5, seed=3)
                await kept.speak(2.0, seed=4)
                got_b = await read_until(on_b, window_of(lost.stream))
                got_c = await read_until(on_c, window_of(lost.stream))
                doomed.kill()  # no goodbye
                await lost.ws.close()
                await read_until(on_b, closed(lost.stream), got_b)
                await read_until(on_c, closed(lost.stream), got_c)
                last = max([m.seq for m in got_b if window_of(kept.stream)(m)], default=-1)
                await kept.speak(2.0, seed=5)  # B's call goes on after the loss
                await read_until(on_b, window_of(kept.stream, after=last), got_b)
                await kept.end()
                await read_until(on_b, closed(kept.stream), got_b)
                await read_until(on_c, closed(kept.stream), got_c)
                async with client(b.ws_url) as late:
                    hello = await receive(late)
                return {"b": got_b, "c": got_c, "hello": hello,
                        "health": [bus_health(b), bus_health(c)]}

        with caplog.at_level(logging.WARNING, logger="server.bus"):
            out = run(scenario())
    for name in ("b", "c"):
        got = out[name]
        closes = [m for m in got if closed("lost/ch0")(m)]
        assert [c.reason for c in closes] == ["node_lost"], closes  # exactly once, everywhere
        assert closes[0].end_s > 0 and closes[0].windows > 0
        mine = of_stream(got, "lost/ch0")
        assert isinstance(mine[0], StreamOpenMessage) and mine[-1] is closes[0]
        assert_bracketed_in_order(got, "kept/ch0", "end")
        kept_after = [m for m in got[got.index(closes[0]):] if window_of("kept/ch0")(m)]
        assert kept_after, "the surviving node's call stopped with the lost one"
    assert out["hello"].streams == ()
    health = out["health"]
    assert sum(h["nodes_lost"] for h in health) == 1  # one claim for the cluster
    assert sum(h["lost_streams_closed"] for h in health) == 1
    assert any("doomed" in r.getMessage() and "node_lost" in r.getMessage()
               for r in caplog.records)


# -- Redis goes away ------------------------------------------------------------------------------


def test_redis_going_away_is_counted_and_survived(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stops mid-call: local clients keep the call, errors are counted; back, all catch up."""

    async def scenario() -> dict[str, Any]:
        async with node(redis_server.url, "a") as a, node(redis_server.url, "b") as b, \
                client(a.ws_url) as on_a, client(b.ws_url) as on_b:
            for ws in (on_a, on_b):
                assert isinstance(await receive(ws), Hello)
            call = await Call.open(a.ingest_url, "survivor")
            await call.speak(2.0, seed=6)
            # the whole first utterance is through the bus before Redis (and its data) goes
            got_a = await read_until(on_a, utterance_of(call.stream))
            got_b = await read_until(on_b, utterance_of(call.stream))
            redis_server.stop()
            await until(lambda: bus_health(a)["state"] == "down", "node a to see the bus down")
            await call.speak(2.0, seed=7)  # while Redis is away: A's own clients still get it
            await read_until(on_a, utterance_of(call.stream), got_a)
            down = {"a": bus_health(a), "b": bus_health(b)}
            redis_server.start()
            await until(lambda: bus_health(a)["state"] == bus_health(b)["state"] == "up",
                        "both nodes to see the bus up again")
            await call.end()
            await read_until(on_a, closed(call.stream), got_a)
            await read_until(on_b, closed(call.stream), got_b)  # B catches up, then the end
            after = await Call.open(a.ingest_url, "after")
            await after.speak(1.5, seed=8)
            await after.end()
            await read_until(on_a, closed(after.stream), got_a)
            await read_until(on_b, closed(after.stream), got_b)
            return {"a": got_a, "b": got_b, "down": down,
                    "up": {"a": bus_health(a), "b": bus_health(b)}}

    with caplog.at_level(logging.WARNING, logger="server.bus"):
        out = run(scenario())
    for name in ("a", "b"):
        assert_bracketed_in_order(out[name], "survivor/ch0", "end")
        assert_bracketed_in_order(out[name], "after/ch0", "end")
    assert out["down"]["a"]["error"] and out["down"]["a"]["errors"] > 0
    assert out["down"]["a"]["local_only"] > 0  # A's frames reached A's clients directly
    for health in out["up"].values():
        assert health["errors"] > 0 and health["nodes_lost"] == 0 and health["error"] is None
    assert any("down" in r.getMessage() for r in caplog.records)


def test_frames_published_while_the_bus_starts_down_reach_local_clients(
    tmp_path: Path,
) -> None:
    """A node whose Redis is unreachable at start still serves its calls (bus down, counted)."""
    require_module("redis", "'emotion-monitor[redis]'")
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there

    async def scenario() -> tuple[list[Message], dict[str, Any]]:
        async with node(url, "alone", shutdown_timeout_s=1.0) as alone, \
                client(alone.ws_url) as ws:
            assert isinstance(await receive(ws), Hello)
            call = await Call.open(alone.ingest_url, "solo")
            await call.speak(1.5)
            await call.end()
            return await read_until(ws, closed(call.stream)), bus_health(alone)

    got, health = run(scenario())
    assert_bracketed_in_order(got, "solo/ch0", "end")
    assert health["state"] == "down" and health["errors"] > 0 and health["local_only"] > 0
    assert health["outbox"] > 0  # kept for Redis, bounded


def test_a_refused_password_stops_the_start_and_is_never_shown(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis asks for a password: none is a one-line ServerError; the right one works, unlogged."""
    import redis

    secret = "s3cret-for-the-test"

    async def scenario() -> dict[str, Any]:
        admin = redis.asyncio.Redis.from_url(redis_server.url)
        await admin.config_set("requirepass", secret)
        await admin.aclose()
        with pytest.raises(ServerError, match="event bus redis://127.0.0.1:.*[Aa]uth"):
            async with node(redis_server.url, "nopass"):
                pass
        bus = BusConfig(url=redis_server.url, node_id="pass", password=secret)
        config = ServerConfig(port=0, store_path=None, bus=bus)
        async with Monitor(FixedProbabilitiesModel(), engine_config=EngineConfig(),
                           server_config=config) as running:
            return bus_health(running)

    with caplog.at_level(logging.DEBUG):
        health = run(scenario())
    assert health["state"] == "up" and health["errors"] == 0
    assert secret not in repr(health) and secret not in caplog.text


class Cutter:
    """A TCP forwarder between one node and Redis that the test cuts and restores (one port)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Drop every connection and stop listening (no FIN handshake: an abort)."""
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._transports |= {writer.transport, up_writer.transport}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_a_node_cut_off_too_long_is_lost_then_fenced_and_goes_on(
    redis_server: RedisServer,
) -> None:
    """Cut A off past its TTL: B closes A's call (node_lost); back, A keeps it closed, goes on."""
    import redis

    async def scenario() -> dict[str, Any]:
        cutter = Cutter(redis_server.port)
        await cutter.start()
        try:
            async with node(f"redis://127.0.0.1:{cutter.port}/0", "cut") as a, \
                    node(redis_server.url, "b") as b, \
                    client(a.ws_url) as on_a, client(b.ws_url) as on_b:
                for ws in (on_a, on_b):
                    assert isinstance(await receive(ws), Hello)
                call = await Call.open(a.ingest_url, "cut-off")
                await call.speak(2.0, seed=9)
                got_a = await read_until(on_a, utterance_of(call.stream))
                got_b = await read_until(on_b, utterance_of(call.stream))
                await cutter.cut()
                # as after a Redis restart without its data: B closes the call from its view
                admin = redis.asyncio.Redis.from_url(redis_server.url)
                await admin.delete("{emotion-monitor}:live")
                await admin.aclose()
                await read_until(on_b, closed(call.stream), got_b)  # B: A is lost
                await call.speak(1.5, seed=10)  # A's own clients still get it, cut off
                await read_until(on_a, utterance_of(call.stream), got_a)
                await cutter.start()
                await read_until(on_a, closed(call.stream), got_a)  # the cluster's verdict
                await until(lambda: bus_health(a)["state"] == "up", "node a back on the bus")
                await call.speak(1.5, seed=11)  # a fenced stream: its frames go nowhere
                await call.end()
                fresh = await Call.open(a.ingest_url, "fresh")  # new calls are published
                await fresh.speak(1.5, seed=12)
                await fresh.end()
                await read_until(on_a, closed(fresh.stream), got_a)
                await read_until(on_b, closed(fresh.stream), got_b)
                return {"a": got_a, "b": got_b, "health": (bus_health(a), bus_health(b))}
        finally:
            await cutter.cut()

    out = run(scenario())
    for name in ("a", "b"):
        mine = of_stream(out[name], "cut-off/ch0")
        assert isinstance(mine[0], StreamOpenMessage)
        closes = [m for m in mine if isinstance(m, StreamCloseMessage)]
        assert closes == [mine[-1]] and closes[0].reason == "node_lost"  # once, and last
        assert_bracketed_in_order(out[name], "fresh/ch0", "end")
    health_a, health_b = out["health"]
    assert health_a["fences"] == 1 and health_a["fenced_frames"] > 0
    assert health_a["local_only"] > 0 and health_b["nodes_lost"] == 1


def test_hub_without_a_bus_sends_stats_without_a_node() -> None:
    """A single node (no --bus) keeps its old frames: stats carry node "" and no bus object."""

    async def scenario() -> tuple[Message, dict[str, Any]]:
        config = ServerConfig(port=0, store_path=None, stats_interval_s=0.05)
        async with Monitor(FixedProbabilitiesModel(), engine_config=EngineConfig(),
                           server_config=config) as single, client(single.ws_url) as ws:
            assert isinstance(await receive(ws), Hello)
            stats = (await read_until(ws, lambda m: isinstance(m, StatsMessage)))[-1]
            assert single.hub is not None
            return stats, single.hub.health()

    stats, health = run(scenario())
    assert isinstance(stats, StatsMessage) and stats.node == ""
    assert "bus" not in health
