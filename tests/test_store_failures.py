"""Store failures (full, locked) never stop live fan-out or stats; writes resume by themselves."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from server.store import read_events
from streamer.events import StreamOpened
from streamer.protocol.messages import Hello, StatsMessage, WindowMessage
from tests.conftest import TIMEOUT_S
from tests.test_server import http_get, label, receive, running, stats


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 3))


def stored_windows(path: Path) -> list[tuple[str, int]]:
    """(stream, seq) of the windows a store holds, in recording order."""
    return [(m.stream, m.seq) for _, m in read_events(path, types=("window",))
            if isinstance(m, WindowMessage)]


async def windows_received(ws: Any, n: int) -> list[tuple[str, int]]:
    got: list[tuple[str, int]] = []
    while len(got) < n:
        message = await receive(ws)
        if isinstance(message, WindowMessage):
            got.append((message.stream, message.seq))
    return got


def test_full_store_keeps_clients_and_stats_going_then_writes_resume(tmp_path: Path) -> None:
    """A store at its size cap (SQLITE_FULL) is counted and shown; room again writes it all."""
    path = tmp_path / "store.sqlite3"

    async def scenario() -> None:
        async with running(tmp_path) as (hub, server):
            store = hub.recorder.store
            assert store is not None
            hub.recorder.retry_s = 0.0  # retry on every event: the test drives the timing
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                hub.publish_event(StreamOpened("a", 16000, 0.0, {}))
                store.set_max_bytes(path.stat().st_size)  # the file may not grow: disk full
                for seq in range(300):
                    hub.publish_event(label("a", seq))
                assert await windows_received(ws, 300) == [("a", n) for n in range(300)]
                health = hub.health()
                assert health["ok"] is False and "full" in health["reason"]
                status, _, body = await asyncio.to_thread(http_get, server.port, "/healthz")
                shown = json.loads(body)  # no tokens on loopback: the admin details too
                assert status == 200 and shown["ok"] is False and "full" in shown["reason"]
                assert "ws_clients" in shown["refused"] and "store_errors" in shown
                assert health["store_errors"] >= 1 and health["store_pending"] > 0
                hub.publish_stats(stats())  # stats still flow, with the store counters
                while not isinstance(message := await receive(ws), StatsMessage):
                    pass
                assert message.store_errors >= 1 and message.store_events_dropped == 0
                store.set_max_bytes(None)  # room again
                hub.publish_event(label("a", 300))
                assert await windows_received(ws, 1) == [("a", 300)]
                assert hub.health()["ok"] is True and hub.health()["store_pending"] == 0
        assert stored_windows(path) == [("a", n) for n in range(301)]  # in order, none lost

    run(scenario())


def test_locked_store_is_counted_then_resumes_and_stays_crash_safe(tmp_path: Path) -> None:
    """Another process holding the write lock: events go out, are kept, and are written later."""
    path = tmp_path / "store.sqlite3"

    async def scenario() -> None:
        async with running(tmp_path) as (hub, server):
            hub.recorder.retry_s = 0.0
            async with connect(server.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                hub.publish_event(label("b", 0))
                assert await windows_received(ws, 1) == [("b", 0)]
                other = sqlite3.connect(str(path), isolation_level=None)
                other.execute("BEGIN IMMEDIATE")  # holds the write lock
                try:
                    hub.publish_event(label("b", 1))
                    assert await windows_received(ws, 1) == [("b", 1)]
                    assert "locked" in hub.health()["reason"]
                finally:
                    other.execute("COMMIT")
                    other.close()
                hub.publish_event(label("b", 2))
                got = await windows_received(ws, 1)
                # once the store can write, what a client received is stored first
                assert got == [("b", 2)] and stored_windows(path) == [("b", n) for n in range(3)]
                assert hub.health()["ok"] is True and hub.recorder.errors >= 1

    run(scenario())


def test_retry_buffer_is_bounded_and_drops_are_counted(tmp_path: Path) -> None:
    """Past store_retry_events the oldest kept events are dropped and counted, never silently."""
    path = tmp_path / "store.sqlite3"

    async def scenario() -> None:
        async with running(tmp_path) as (hub, server):
            hub.recorder.retry_events = 10
            hub.recorder.retry_s = 0.0
            hub.recorder.store.set_max_bytes(path.stat().st_size)
            seq = 0
            while hub.recorder.errors == 0:  # the file's free pages fill first
                assert seq < 10_000
                hub.publish_event(label("c", seq))
                seq += 1
            first_failed = seq - 1
            for _ in range(24):  # 25 events in all since the first failure
                hub.publish_event(label("c", seq))
                seq += 1
            assert hub.recorder.events_dropped == 15 and hub.health()["store_pending"] == 10
            hub.recorder.store.set_max_bytes(None)
            hub.publish_event(label("c", seq))
            assert hub.health()["ok"] is True
        kept = [*range(first_failed), *range(first_failed + 15, seq + 1)]
        assert stored_windows(path) == [("c", n) for n in kept]
        return None

    run(scenario())
