"""Limits: each refusal a close code or error code, counted in stats; fan-out index; backlog fit."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.config import IngestConfig
from server.errors import ServerError
from server.fanout import Backlog, FanOut, Frame
from server.limits import ClientLog, LimitsConfig, ServerCounters, TokenBucket
from streamer.events import StreamClosed, StreamOpened
from streamer.protocol.messages import (
    ErrorMessage,
    Hello,
    IngestAck,
    StatsMessage,
    StreamCloseMessage,
    StreamOpenMessage,
    WindowMessage,
    decode,
    stream_wanted,
)
from streamer.testing import speech_like
from tests.conftest import TIMEOUT_S
from tests.test_ingest import monitor, open_call, pcm, rejection
from tests.test_server import label, receive, running, stats


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 3))


@pytest.fixture(scope="module")
def tiny_model(tiny_wav2vec2: Path) -> Any:
    from streamer.models.loading import load_model

    return load_model(str(tiny_wav2vec2), device="cpu")


async def closed_with(ws: Any) -> tuple[list[Any], int | None]:
    """Everything the server sends until it closes, and the close code."""
    got = []
    try:
        while True:
            got.append(decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S)))
    except ConnectionClosed:
        pass
    return got, ws.close_code


async def last_stats(hub: Any, ws: Any) -> StatsMessage:
    """Publish a stats message and read it back on ``ws``."""
    hub.publish_stats(stats())
    while True:
        message = await receive(ws)
        if isinstance(message, StatsMessage):
            return message


# -- pure parts -------------------------------------------------------------------------------


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    """A bucket of burst 3 at 2/s: 3 at once, then one more after half a second."""
    bucket = TokenBucket(2.0, 3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)


def test_client_log_limits_lines_per_address_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One address gets its burst of lines, the rest are counted; other addresses unaffected."""
    now = [0.0]
    counters = ServerCounters()
    log = ClientLog(logging.getLogger("test.limits"), counters, per_minute=60, burst=3,
                    clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="test.limits")
    for n in range(10):
        log.warning("10.0.0.1", "line %d", n)
    log.warning("10.0.0.2", "other address")
    assert counters.log_lines_suppressed == 7
    now[0] = 1.0  # one more token
    log.warning("10.0.0.1", "later")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:4] == ["line 0", "line 1", "line 2", "other address"]
    assert lines[4] == "later (7 earlier line(s) from this address suppressed)"


def test_fanout_index_matches_exactly_what_stream_wanted_says() -> None:
    """With many random subscriptions, each published frame reaches exactly the wanting queues."""
    rng = random.Random(7)
    fanout = FanOut(queue_size=10_000, backlog=Backlog(per_stream=0))
    streams = [f"call-{c}/{r}" for c in range(30) for r in ("agent", "customer")] + ["mic"]
    subs = []
    for _ in range(300):
        entries = rng.sample(streams + [f"call-{c}/" for c in range(30)] + ["call-1"],
                             rng.randint(0, 4))
        subs.append((fanout.connect(streams=entries), frozenset(entries)))
    for queue, _ in subs[::3]:  # re-subscribe some: the index must follow
        entries = frozenset(rng.sample(streams, 2))
        fanout.subscribe(queue, entries)
        subs[subs.index((queue, _))] = (queue, entries)
    for stream in [*streams, "call-1", "call-10/agent", None]:
        before = {id(q): len(q) for q, _ in subs}
        fanout.publish(Frame("x", stream))
        for queue, entries in subs:
            assert len(queue) - before[id(queue)] == int(stream_wanted(stream, entries))
    for queue, _ in subs:
        fanout.disconnect(queue)
    assert fanout.clients == 0 and not fanout._by_name and not fanout._by_prefix


def test_backlog_replay_fits_the_limit_and_keeps_every_stream_bracketed() -> None:
    """Over the limit, every replayed stream still has its stream_open and stream_close."""
    backlog = Backlog(per_stream=240, max_ended_streams=16)
    for k in range(18):
        stream = f"c{k}/ch0"
        backlog.open(stream, f"open {stream}")
        for n in range(240):
            backlog.add(stream, f"{stream} {n}")
        if k < 17:
            backlog.end(stream, f"close {stream}")
    frames = backlog.frames(limit=200)
    assert len(frames) <= 200
    by_stream: dict[str, list[str]] = {}
    for frame in frames:
        assert frame.stream is not None
        by_stream.setdefault(frame.stream, []).append(frame.text)
    assert "c17/ch0" in by_stream  # the live stream is kept
    for stream, texts in by_stream.items():
        assert texts[0] == f"open {stream}" and len(texts) >= 2
        if stream != "c17/ch0":
            assert texts[-1] == f"close {stream}"
        assert texts[1:-1] == sorted(texts[1:-1], key=lambda t: int(t.split()[-1]))
    tiny = backlog.frames(limit=5)  # brackets of few streams only: the newest ones
    assert len(tiny) <= 5 and {f.stream for f in tiny} <= {"c17/ch0", "c16/ch0"}


def test_config_refuses_bad_limits_naming_the_field() -> None:
    """A limit out of range is a ServerError naming the field and its range."""
    with pytest.raises(ServerError, match="max_ws_clients must be 1-"):
        LimitsConfig(max_ws_clients=0)
    with pytest.raises(ServerError, match="client_messages_per_s"):
        LimitsConfig(client_messages_per_s=-1.0)


# -- /ws --------------------------------------------------------------------------------------


def test_ws_client_over_the_limit_is_closed_1013_and_counted() -> None:
    """With --max-ws-clients 2 a third client gets too_many_clients and 1013; stats count it."""

    async def scenario() -> None:
        async with running(limits=LimitsConfig(max_ws_clients=2)) as (hub, server):
            async with connect(server.ws_url) as a, connect(server.ws_url) as b:
                assert isinstance(await receive(a), Hello)
                assert isinstance(await receive(b), Hello)
                async with connect(server.ws_url) as c:
                    got, code = await closed_with(c)
                assert code == 1013
                assert isinstance(got[0], ErrorMessage) and got[0].code == "too_many_clients"
                message = await last_stats(hub, a)
                assert message.refused["ws_clients"] == 1
            assert hub.health()["refused"]["ws_clients"] == 1

    run(scenario())


def test_connections_per_address_over_the_limit_are_closed_1008() -> None:
    """With --max-connections-per-address 2 the third connection from 127.0.0.1 gets 1008."""

    async def scenario() -> None:
        async with running(limits=LimitsConfig(max_connections_per_address=2)) as (hub, server):
            async with connect(server.ws_url) as a, connect(server.ws_url) as b:
                await receive(a), await receive(b)
                async with connect(server.ws_url) as c:
                    got, code = await closed_with(c)
                assert code == 1008 and got[0].code == "too_many_connections"
                assert (await last_stats(hub, a)).refused["per_address"] == 1
            async with connect(server.ws_url) as d:  # slots are given back
                assert isinstance(await receive(d), Hello)

    run(scenario())


def test_oversized_subscribe_is_refused_and_the_subscription_kept() -> None:
    """Too many entries or characters: subscribe_too_large; the old subscription stays."""

    async def scenario() -> None:
        async with running(limits=LimitsConfig(max_subscribe_streams=3,
                                                max_subscribe_chars=64)) as (hub, server):
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                await ws.send(encode_subscribe(["a"]))
                await ws.send(encode_subscribe(["p/", "q/", "r/", "s/"]))
                error = await receive(ws)
                assert isinstance(error, ErrorMessage) and error.code == "subscribe_too_large"
                await ws.send(encode_subscribe(["x" * 65]))
                assert (await receive(ws)).code == "subscribe_too_large"  # type: ignore[union-attr]
                hub.publish_event(label("b", 0))
                hub.publish_event(label("a", 0))
                window = await receive(ws)
                assert isinstance(window, WindowMessage) and window.stream == "a"
                assert (await last_stats(hub, ws)).refused["subscribe_size"] == 2

    run(scenario())


def encode_subscribe(streams: list[str]) -> str:
    return json.dumps({"type": "subscribe", "v": 1, "streams": streams})


def test_message_flood_is_closed_1008_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """A client sending faster than its rate after the burst is closed with 1008."""

    async def scenario() -> None:
        async with running(limits=LimitsConfig(client_messages_per_s=1.0,
                                                client_message_burst=5)) as (hub, server):
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                for _ in range(50):
                    try:
                        await ws.send(encode_subscribe(["a"]))
                    except ConnectionClosed:
                        break
                _, code = await closed_with(ws)
                assert code == 1008 and ws.close_reason == "message rate limit exceeded"
            assert hub.counters.refused["message_rate"] == 1

    run(scenario())
    assert sum("subscribed" in r.getMessage() for r in caplog.records) <= 10


def test_close_right_after_hello_is_answered_at_once_with_1000() -> None:
    """A client closing right after hello gets the server's close, not a backlog first."""

    async def scenario() -> None:
        async with running() as (hub, server):
            for k in range(17):
                stream = f"c{k}/ch0"
                hub.publish_event(StreamOpened(stream, 16000, time.time(), {}))
                for seq in range(240):
                    hub.publish_event(label(stream, seq))
                hub.publish_event(StreamClosed(stream, 120.0, time.time(), "end"))
            async with connect(server.ws_url, close_timeout=TIMEOUT_S) as ws:
                assert isinstance(await receive(ws), Hello)
                await ws.close()
            assert ws.close_code == 1000
            async with connect(server.ws_url, max_queue=None) as ws:  # then the full replay
                assert isinstance(await receive(ws), Hello)
                fanout = server.hub.fanout
                replay = len(fanout.backlog.frames(limit=fanout.backlog_limit))
                assert replay <= fanout.backlog_limit
                got = [await receive(ws) for _ in range(replay)]
            opened = {m.stream for m in got if isinstance(m, StreamOpenMessage)}
            closed = {m.stream for m in got if isinstance(m, StreamCloseMessage)}
            seen = {m.stream for m in got if isinstance(m, WindowMessage)}
            assert seen and seen <= opened and closed <= opened and len(closed) == 16

    run(scenario())


# -- /ingest ----------------------------------------------------------------------------------


def test_ingest_calls_over_the_limit_get_too_many_calls_1013(tiny_model: Any) -> None:
    """With --max-ingest-calls 1 a second live call is refused; the first goes on."""

    async def scenario() -> None:
        async with monitor(tiny_model, ingest=IngestConfig(max_calls=1)) as mon:
            first, ack = await open_call(mon.ingest_url, stream="one")
            assert isinstance(ack, IngestAck)
            second, error = await open_call(mon.ingest_url, stream="two")
            assert isinstance(error, ErrorMessage) and error.code == "too_many_calls"
            with pytest.raises(ConnectionClosed):
                await second.recv()
            assert second.close_code == 1013
            assert mon.hub is not None and mon.hub.counters.refused["ingest_calls"] == 1
            await first.close()

    run(scenario())


def test_call_longer_than_the_limit_is_ended_with_call_too_long(
    tmp_path: Path, tiny_model: Any
) -> None:
    """Past --ingest-max-call-s the call gets call_too_long (1008); its streams end max_length."""
    store = tmp_path / "s.sqlite3"

    async def scenario() -> None:
        async with monitor(tiny_model, store=store, ingest=IngestConfig(max_call_s=1.0)) as mon:
            async with connect(mon.ws_url) as events:
                assert isinstance(await receive(events), Hello)
                ws, ack = await open_call(mon.ingest_url, stream="long")
                assert isinstance(ack, IngestAck)
                audio = speech_like(2.0, seed=3)
                try:
                    for i in range(0, audio.shape[0], 1600):
                        await ws.send(pcm(audio[i:i + 1600]))
                except ConnectionClosed:
                    pass
                error, code = await rejection(ws)
                assert error.code == "call_too_long" and code == 1008
                while True:
                    message = await receive(events)
                    if isinstance(message, StreamCloseMessage):
                        assert message.reason == "max_length"
                        break
                assert mon.hub is not None and mon.hub.counters.refused["call_length"] == 1

    run(scenario())


def test_a_burst_arrives_in_order_and_whatever_is_missing_is_counted() -> None:
    """Frames written directly or queued keep their order; a gap is always a counted drop."""

    async def scenario() -> None:
        async with running(client_queue_size=64) as (hub, server):
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                await ws.send(encode_subscribe([]))  # starts the live flow at once
                for seq in range(3000):
                    hub.publish_event(label("burst", seq))
                    if seq % 500 == 0:
                        await asyncio.sleep(0)  # let the loop write some out meanwhile
                seqs: list[int] = []
                while not seqs or seqs[-1] != 2999:
                    message = await receive(ws)
                    if isinstance(message, WindowMessage):
                        seqs.append(message.seq)
                assert seqs == sorted(set(seqs))
                assert 3000 - len(seqs) == hub.fanout.messages_dropped

    run(scenario())
