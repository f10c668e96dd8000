"""The event server: real server on port 0, real WebSocket and HTTP clients, events via the hub."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.app import EventServer
from server.auth import SecurityConfig
from server.bridge import ThreadBridge
from server.config import IngestConfig, ServerConfig
from server.errors import ServerError
from server.fanout import Backlog, FanOut
from server.hub import EventHub
from server.limits import LimitsConfig
from server.recorder import StoreRecorder
from server.session import ModelInfo
from server.store import TimelineStore, read_events
from streamer.events import EngineStats, SpeechStart, StreamClosed, StreamOpened, WindowLabel
from streamer.protocol.messages import (
    ErrorMessage,
    Hello,
    Message,
    StatsMessage,
    StreamCloseMessage,
    StreamOpenMessage,
    WindowMessage,
    decode,
    encode,
)
from tests.conftest import TIMEOUT_S

LABELS = ("Angry", "Happy", "Neutral", "Sad")
INFO = ModelInfo(name="test-model", labels=LABELS, window_s=2.0, hop_s=0.5, sample_rate_hz=16000)


def label(stream: str, seq: int) -> WindowLabel:
    probs = (0.1, 0.2, 0.6, 0.1)
    return WindowLabel(stream, seq, 0.5 * seq, 0.5 * seq + 2.0, time.time(), probs, "Neutral",
                       0.6, "uncertain", 0.3)


def stats() -> EngineStats:
    return EngineStats(time.time(), 0.0, 1, 0, 0, 0)


@asynccontextmanager
async def running(
    tmp_path: Path | None = None, static_dir: Path | None = None, **overrides: Any
) -> AsyncIterator[tuple[EventHub, EventServer]]:
    """A hub (with a store when tmp_path is given) and a started server on 127.0.0.1:0."""
    fields: dict[str, Any] = {"port": 0, "store_path": None, "shutdown_timeout_s": TIMEOUT_S}
    if static_dir is not None:
        fields["static_dir"] = static_dir
    fields.update(overrides)
    config = ServerConfig(**fields)
    store = TimelineStore(tmp_path / "store.sqlite3").open() if tmp_path is not None else None
    hub = EventHub(
        INFO,
        fanout=FanOut(queue_size=config.client_queue_size,
                      backlog=Backlog(per_stream=config.backlog_per_stream)),
        recorder=StoreRecorder(store),
    )
    try:
        async with hub, EventServer(config, hub) as server:
            yield hub, server
    finally:
        if store is not None:
            store.close()


async def receive(ws: ClientConnection) -> Message:
    return decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))


async def receive_until(ws: ClientConnection, done: Callable[[Message], bool]) -> list[Message]:
    got: list[Message] = []
    while True:
        message = await receive(ws)
        got.append(message)
        if done(message):
            return got


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 3))  # type: ignore[arg-type]


def http_get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def test_hello_then_backlog_then_live_events() -> None:
    """A client gets hello, the stream's recent windows, then live events, in order."""

    async def scenario() -> None:
        async with running() as (hub, server):
            hub.publish_event(StreamOpened("call", 16000, time.time(), {"role": "agent"}))
            for seq in range(3):
                hub.publish_event(label("call", seq))
            async with connect(server.ws_url) as ws:
                hello = await receive(ws)
                assert isinstance(hello, Hello)
                assert hello.labels == LABELS and hello.model == "test-model"
                assert [s.stream for s in hello.streams] == ["call"]
                assert hello.streams[0].metadata == {"role": "agent"}
                backlog = [await receive(ws) for _ in range(4)]
                assert isinstance(backlog[0], StreamOpenMessage)
                hub.publish_event(label("call", 3))
                hub.publish_event(StreamClosed("call", 3.5, time.time()))
                live = await receive_until(ws, lambda m: isinstance(m, StreamCloseMessage))
            windows = [m for m in backlog + live if isinstance(m, WindowMessage)]
            assert [w.seq for w in windows] == [0, 1, 2, 3]
            assert windows[0].probabilities == dict(zip(LABELS, (0.1, 0.2, 0.6, 0.1), strict=True))

    run(scenario())


def test_backlog_is_bounded_and_kept_after_stream_end() -> None:
    """The backlog holds a stream's open, its last N events, and its close once it ended."""

    async def scenario() -> None:
        async with running(backlog_per_stream=2) as (hub, server):
            hub.publish_event(StreamOpened("a", 16000, time.time()))
            for seq in range(5):
                hub.publish_event(label("a", seq))
            hub.publish_event(StreamClosed("a", 4.0, time.time()))
            async with connect(server.ws_url) as ws:
                hello = await receive(ws)
                assert isinstance(hello, Hello) and hello.streams == ()
                got = [await receive(ws) for _ in range(4)]
            assert [getattr(m, "seq", None) for m in got] == [None, 3, 4, None]
            assert isinstance(got[0], StreamOpenMessage)
            assert isinstance(got[3], StreamCloseMessage)

    run(scenario())


def test_subscribe_filters_streams() -> None:
    """After subscribe(streams=[b]) a client receives only b's events (and stream-less stats)."""

    async def scenario() -> None:
        async with running() as (hub, server):
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                await ws.send('{"type":"subscribe","v":1,"streams":["b"]}')
                # a marker round trip: the reply to a bad frame proves the subscribe was read
                await ws.send("{")
                assert isinstance(await receive(ws), ErrorMessage)
                hub.publish_event(label("a", 0))
                hub.publish_event(label("b", 0))
                hub.publish_stats(stats())
                got = [await receive(ws) for _ in range(2)]
            assert isinstance(got[0], WindowMessage) and got[0].stream == "b"
            assert isinstance(got[1], StatsMessage) and got[1].clients == 1

    run(scenario())


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{", "bad_json"),
        ("[" * 50_000, "bad_json"),
        (b"\x00\x01", "binary_frame"),
        ('{"type":"nope","v":1}', "unknown_type"),
        ('{"type":"subscribe","v":7}', "bad_version"),
        ('{"type":"subscribe","v":1,"streams":"a"}', "bad_message"),
        ('{"type":"error","v":1,"code":"x","message":"y"}', "unexpected_type"),
    ],
)
def test_bad_client_frames_get_an_error_and_keep_the_connection(
    frame: str | bytes, code: str
) -> None:
    """Malformed or unknown client frames get an error reply; events keep flowing after it."""

    async def scenario() -> None:
        async with running() as (hub, server):
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                await ws.send(frame)
                reply = await receive(ws)
                assert isinstance(reply, ErrorMessage) and reply.code == code
                hub.publish_event(label("a", 0))
                assert isinstance(await receive(ws), WindowMessage)

    run(scenario())


def test_too_many_bad_frames_close_with_1008() -> None:
    """A client that keeps sending bad frames is closed with 1008 (policy)."""

    async def scenario() -> None:
        async with running(limits=LimitsConfig(max_client_errors=3)) as (_, server):
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                for _ in range(3):
                    await ws.send("{")
                with pytest.raises(ConnectionClosed):
                    while True:
                        await receive(ws)
                assert ws.close_code == 1008

    run(scenario())


def test_oversized_frame_closes_with_1009_and_others_stay() -> None:
    """A frame over max_message_bytes closes that client with 1009; another client stays."""

    async def scenario() -> None:
        async with running(limits=LimitsConfig(max_message_bytes=1024)) as (hub, server):
            async with connect(server.ws_url) as big, connect(server.ws_url) as other:
                assert isinstance(await receive(big), Hello)
                assert isinstance(await receive(other), Hello)
                await big.send(encode_subscribe_of_size(4096))
                with pytest.raises(ConnectionClosed):
                    while True:
                        await receive(big)
                assert big.close_code == 1009
                hub.publish_event(label("a", 0))
                assert isinstance(await receive(other), WindowMessage)

    run(scenario())


def encode_subscribe_of_size(n: int) -> str:
    return json.dumps({"type": "subscribe", "v": 1, "streams": ["x" * n]})


def test_slow_client_does_not_stall_others() -> None:
    """A client that never reads loses its oldest frames (counted); another receives everything."""

    async def scenario() -> None:
        async with running(client_queue_size=16) as (hub, server):
            async with connect(server.ws_url, max_queue=1, compression=None) as slow, \
                    connect(server.ws_url) as fast:
                assert isinstance(await receive(slow), Hello)
                assert isinstance(await receive(fast), Hello)
                sent = 0
                # publish until the stalled client has dropped frames, reading with the fast one
                # (batches smaller than the queue, so the fast client itself never falls behind)
                while hub.fanout.messages_dropped == 0:
                    for _ in range(8):
                        hub.publish_event(label("a", sent))
                        sent += 1
                    for seq in range(sent - 8, sent):
                        message = await receive(fast)
                        assert isinstance(message, WindowMessage) and message.seq == seq
                    assert sent < 200_000, "the slow client never dropped a frame"
                hub.publish_stats(stats())
                last = await receive(fast)
                assert isinstance(last, StatsMessage) and last.client_messages_dropped > 0
                slow.transport.abort()  # it would never read its way to a clean close

    run(scenario())


def test_shutdown_closes_clients_with_1001_after_queued_events() -> None:
    """Closing the server delivers queued events, then closes clients with 1001."""

    async def scenario() -> None:
        async with running() as (hub, server):
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                for seq in range(20):
                    hub.publish_event(label("a", seq))
                closing = asyncio.create_task(server.close())
                seqs = []
                with pytest.raises(ConnectionClosed):
                    while True:
                        message = await receive(ws)
                        seqs.append(getattr(message, "seq", None))
                await closing
                assert seqs == list(range(20))
                assert ws.close_code == 1001

    run(scenario())


def test_events_are_recorded_before_clients_get_them(tmp_path: Path) -> None:
    """Every event a client received is already committed in the store (read by another reader)."""

    async def scenario() -> None:
        async with running(tmp_path) as (hub, server):
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                hub.publish_event(StreamOpened("a", 16000, time.time()))
                hub.publish_event(SpeechStart("a", 0.0, time.time()))
                hub.publish_event(label("a", 0))
                hub.publish_stats(stats())
                received = [await receive(ws) for _ in range(4)]
                # a separate read-only connection: only committed rows are visible to it
                stored = [m for _, m in read_events(tmp_path / "store.sqlite3")]
                assert stored == received

    run(scenario())


def test_http_endpoints(tmp_path: Path) -> None:
    """GET / serves index.html, /healthz is JSON, static files by name, everything else 404."""
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>dash</title>")
    (static / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("no")

    async def scenario() -> None:
        async with running(static_dir=static) as (hub, server):
            hub.publish_event(StreamOpened("a", 16000, time.time()))

            def check() -> None:
                status, ctype, body = http_get(server.port, "/")
                assert (status, ctype) == (200, "text/html; charset=utf-8")
                assert b"dash" in body
                status, ctype, body = http_get(server.port, "/healthz")
                health = json.loads(body)
                assert status == 200 and ctype == "application/json"
                assert health["ok"] is True and health["streams"] == ["a"]
                assert health["clients"] == 0 and health["uptime_s"] >= 0
                assert http_get(server.port, "/app.js")[:2] == (
                    200, "text/javascript; charset=utf-8")
                assert http_get(server.port, "/static/app.js")[0] == 200
                for path in ("/nope", "/../secret.txt", "/%2e%2e/secret.txt",
                             "/static/..%2fsecret.txt", "/__init__.py", "/.hidden.js"):
                    assert http_get(server.port, path)[0] == 404, path
                assert http_get(server.port, "/ws")[0] == 426

            await asyncio.to_thread(check)

    run(scenario())


def test_websocket_on_unknown_path_is_404() -> None:
    """A WebSocket handshake on a path other than /ws is refused with 404."""

    async def scenario() -> None:
        async with running() as (_, server):
            with pytest.raises(Exception, match="404"):
                async with connect(f"ws://127.0.0.1:{server.port}/nope"):
                    pass

    run(scenario())


def test_port_in_use_is_a_server_error() -> None:
    """Listening on a port that is taken raises a one-line ServerError saying so."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def scenario() -> None:
            with pytest.raises(ServerError, match="already in use") as info:
                async with running(port=port):
                    pass
            assert "\n" not in str(info.value)

        run(scenario())


def test_config_validation_names_the_bad_value() -> None:
    """A bad setting is refused when the config is made, naming the value."""
    with pytest.raises(ServerError, match="70000"):
        ServerConfig(port=70000)
    with pytest.raises(ServerError, match="client_queue_size"):
        ServerConfig(client_queue_size=0)


def test_config_parts_refuse_bad_values_by_name() -> None:
    """Each part of ServerConfig names a bad value when made; the defaults nest."""
    with pytest.raises(ServerError, match="max_frame_bytes"):
        IngestConfig(max_frame_bytes=10)
    with pytest.raises(ServerError, match="max_calls must be 1-"):
        IngestConfig(max_calls=0)
    with pytest.raises(ServerError, match="max_client_errors"):
        LimitsConfig(max_client_errors=0)
    with pytest.raises(ServerError, match="session_ttl_s"):
        SecurityConfig(session_ttl_s=1.0)
    with pytest.raises(ServerError, match="limits must be LimitsConfig"):
        ServerConfig(limits=5)  # type: ignore[arg-type]
    config = ServerConfig()
    assert config.ingest == IngestConfig() and config.limits == LimitsConfig()
    assert config.webhook is None and not config.tls and config.alerts.rules == ()


def test_thread_bridge_keeps_a_threads_order_and_counts_what_it_cannot_deliver() -> None:
    """Events sunk on another thread reach the loop in order; before start or after close, lost."""

    async def scenario() -> None:
        got: list[Any] = []
        bridge = ThreadBridge(got.append)
        bridge.sink(stats())  # not started: no loop to deliver on
        bridge.start()
        thread = threading.Thread(target=lambda: [bridge.sink(label("a", i)) for i in range(50)])
        thread.start()
        await asyncio.to_thread(thread.join)
        await bridge.flush()
        assert [event.seq for event in got] == list(range(50))
        bridge.close()
        bridge.sink(label("a", 50))
        await bridge.flush()
        assert len(got) == 50 and bridge.events_lost == 2

    run(scenario())


def test_store_session_and_messages(tmp_path: Path) -> None:
    """The store registers the session with its labels and returns events as sent."""
    path = tmp_path / "s.sqlite3"
    hello = Hello(session="abc", model="m", labels=LABELS, window_s=2.0, hop_s=0.5,
                  sample_rate_hz=16000)
    with TimelineStore(path) as store:
        store.start_session(hello, started_at=1.0)
        message = StreamOpenMessage("a", 16000, 1.0)
        store.record(message, encode(message))
        store.close()
    assert list(read_events(path)) == [("abc", message)]


def test_client_queue_drops_oldest_and_skips_unsubscribed() -> None:
    """A full queue drops its oldest frame (counted); a new subscription skips queued frames."""
    from server.fanout import ClientQueue, Frame, QueueClosed

    async def scenario() -> None:
        queue = ClientQueue(3)
        for n, stream in enumerate(["b", "a", "b", "a"]):
            queue.put(Frame(f"{stream}{n}", stream))
        assert queue.dropped == 1 and len(queue) == 3
        queue.subscribe(["a"])
        assert queue.wants(None) and not queue.wants("b")
        queue.close()
        assert [await queue.get() for _ in range(2)] == ["a1", "a3"]
        with pytest.raises(QueueClosed):
            await queue.get()

    run(scenario())


def test_backlog_merges_streams_in_original_order() -> None:
    """Backlog frames of several streams come back in the order they were published."""
    backlog = Backlog(per_stream=10, max_ended_streams=1)
    backlog.open("a", "a-open")
    backlog.open("b", "b-open")
    backlog.add("a", "a1")
    backlog.add("b", "b1")
    backlog.end("a", "a-close")
    backlog.add("b", "b2")
    assert [f.text for f in backlog.frames()] == ["a-open", "b-open", "a1", "b1", "a-close", "b2"]
    assert [f.text for f in backlog.frames(["b"])] == ["b-open", "b1", "b2"]
    backlog.end("b", "b-close")  # only one ended stream is kept: a is forgotten
    assert [f.text for f in backlog.frames()] == ["b-open", "b1", "b2", "b-close"]


def test_store_failure_keeps_clients_served(tmp_path: Path) -> None:
    """If the store stops accepting writes, clients still get events and the loss is counted."""

    async def scenario() -> None:
        async with running(tmp_path) as (hub, server):
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                assert hub.recorder.store is not None
                hub.recorder.store.close()
                hub.publish_event(label("a", 0))
                assert isinstance(await receive(ws), WindowMessage)
                assert hub.recorder.errors == 1 and hub.health()["ok"] is False

    run(scenario())
