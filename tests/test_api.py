"""GET /api/sessions, /api/calls, /api/timeline: a real server, real pushed calls, a real store."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from client.push import push_file
from server.alerts import AlertsConfig, parse_rule
from server.api import (
    CALLS_LIMIT,
    SESSIONS_LIMIT,
    TIMELINE_LIMIT,
    ApiRequestError,
    StoreApi,
    group_calls,
    parse_query,
)
from server.auth import Credentials, SecurityConfig
from server.config import ServerConfig
from server.monitor import Monitor
from server.store import StoredStream, TimelineStore, read_stream_openings
from streamer.engine import EngineConfig
from streamer.protocol.messages import (
    Hello,
    StreamCloseMessage,
    StreamOpenMessage,
    Subscribe,
    WindowMessage,
    decode,
    encode,
)
from streamer.testing import DEFAULT_LABELS, FixedProbabilitiesModel, speech_like
from tests.conftest import TIMEOUT_S

VIEW = "view-token-0123456789abcdef"
INGEST = "ingest-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
RATE_HZ = 8000


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


def model() -> FixedProbabilitiesModel:
    """Angry leads every window (zero model cost)."""
    return FixedProbabilitiesModel(DEFAULT_LABELS, [0.7, 0.1, 0.1, 0.1])


@asynccontextmanager
async def monitor(store: Path | None, **overrides: Any) -> AsyncIterator[Monitor]:
    """A pushed-calls-only monitor on 127.0.0.1:0 with an alert rule that every window meets."""
    fields: dict[str, Any] = {
        "port": 0, "store_path": store, "shutdown_timeout_s": TIMEOUT_S,
        "alerts": AlertsConfig(rules=(parse_rule("angry>=0.5"),)),
    }
    fields.update(overrides)
    async with Monitor(model(), engine_config=EngineConfig(),
                       server_config=ServerConfig(**fields)) as running:
        yield running


def get(port: int, path: str, **headers: str) -> tuple[int, Any]:
    """One GET; the status and the JSON body (the text when it is not JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        kind = response.headers.get("Content-Type", "")
        return response.status, json.loads(body) if kind == "application/json" else body.decode()
    finally:
        conn.close()


async def aget(port: int, path: str, **headers: str) -> tuple[int, Any]:
    return await asyncio.to_thread(get, port, path, **headers)


def stereo_wav(path: Path, *, seed: int) -> Path:
    """Speech-like audio on the first channel, silence on the second, then a pause."""
    speech = np.concatenate([speech_like(2.5, rate_hz=RATE_HZ, seed=seed),
                             np.zeros(RATE_HZ, np.float32)])
    sf.write(str(path), np.stack([speech, np.zeros_like(speech)], axis=1), RATE_HZ,
             subtype="PCM_16")
    return path


async def push_calls(running: Monitor, wav: Path, names: list[str]) -> list[dict[str, Any]]:
    """Push the calls one after another; every /ws message until all their streams closed."""
    assert running.server is not None
    streams = {f"{name}/{role}" for name in names for role in ("agent", "customer")}
    got: list[dict[str, Any]] = []
    async with connect(running.ws_url) as ws:
        assert isinstance(decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S)), Hello)
        await ws.send(encode(Subscribe(())))  # the (empty) backlog now, then live events
        for name in names:
            await push_file(wav, running.server.ingest_url, stream=name,
                            roles=("agent", "customer"), fast=True)
        while streams:
            message = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            got.append(message)
            if message["type"] == "stream_close":
                streams.discard(message["stream"])
    return got


# -- the pure parts -----------------------------------------------------------------------------


def test_query_parameters_are_checked_by_name_count_and_encoding() -> None:
    """Known names once each; an unknown or repeated name or a bad encoding is a clear 400."""
    assert parse_query("/api/calls", "") == {}
    assert parse_query("/api/calls", "limit=5&session=ab12") == {"limit": "5", "session": "ab12"}
    assert parse_query("/api/timeline", "stream=call-1%2Fagent") == {"stream": "call-1/agent"}
    for path, query, match in (
        ("/api/calls", "limt=5", "unknown parameter 'limt' for /api/calls; known: before"),
        ("/api/calls", "limit=5&limit=6", "parameter 'limit' given twice"),
        ("/api/sessions", "a=1&b=2&c=3", "at most one each of before, limit"),
        ("/api/timeline", "stream=%ff", "cannot read the query"),
        ("/api/calls", "limit", "cannot read the query"),
    ):
        with pytest.raises(ApiRequestError, match=match) as info:
            parse_query(path, query)
        assert info.value.status == 400 and info.value.code == "bad_parameter"


def opening(open_id: int, stream: str, *, call: str | None = None, role: str | None = None,
            session: str = "s1", closed: bool = True) -> StoredStream:
    """A stored stream opening as the store reads it back."""
    metadata = {"source": "ingest"} if call is None else {
        "source": "ingest", "call": call, "role": role or ""}
    return StoredStream(
        open_id, session, StreamOpenMessage(stream, 8000, 100.0 + open_id, metadata),
        StreamCloseMessage(stream, 3.0, 200.0 + open_id) if closed else None)


def test_openings_group_into_calls_and_page_on_call_boundaries() -> None:
    """Consecutive openings of one call id are one call; a page never splits a call."""
    rows = [  # newest first, as the store returns them
        opening(9, "c3/customer", call="c3", role="customer", closed=False),
        opening(8, "c3/agent", call="c3", role="agent"),
        opening(7, "mic"),
        opening(6, "c2/agent", call="c2", role="agent"),  # c2 reused after it ended
        opening(5, "c2/agent", call="c2", role="agent"),
        opening(4, "c1/customer", call="c1", role="customer"),
    ]
    calls, cursor = group_calls(rows, current="s1", limit=10, complete=True)
    assert [(c["call"], [s["stream"] for s in c["streams"]]) for c in calls] == [
        ("c3", ["c3/agent", "c3/customer"]), ("mic", ["mic"]), ("c2", ["c2/agent"]),
        ("c2", ["c2/agent"]), ("c1", ["c1/customer"])]
    assert cursor is None
    assert [c["state"] for c in calls] == ["live", "ended", "ended", "ended", "ended"]
    assert calls[0]["ended_at"] is None and calls[1]["ended_at"] == 207.0
    assert calls[0]["started_at"] == 108.0 and calls[0]["streams"][1]["role"] == "customer"
    assert calls[1]["streams"][0]["role"] == "mic"
    # in a past session, a stream without a close did not end cleanly: unfinished
    calls, _ = group_calls(rows[:2], current="s2", limit=10, complete=True)
    assert calls[0]["state"] == "unfinished" and calls[0]["streams"][1]["state"] == "unfinished"
    # more rows than this page: the oldest group may go on, the cursor follows the last call
    calls, cursor = group_calls(rows, current="s1", limit=2, complete=False)
    assert [c["call"] for c in calls] == ["c3", "mic"] and cursor == 7
    calls, cursor = group_calls(rows[:5], current="s1", limit=10, complete=False)
    assert [c["call"] for c in calls] == ["c3", "mic", "c2"] and cursor == 6


def test_reads_beyond_the_limit_are_refused_not_queued() -> None:
    """With max_reads running, one more read is answered busy at once; a slot frees later."""
    api = StoreApi(None, session="s1", max_reads=1)
    release = threading.Event()

    async def main() -> None:
        first = asyncio.create_task(api._read(lambda: release.wait(TIMEOUT_S)))
        await asyncio.sleep(0)
        with pytest.raises(ApiRequestError, match="1 store reads are running") as info:
            await api._read(lambda: True)
        assert info.value.status == 503 and info.value.code == "busy"
        release.set()
        assert await first is True
        assert await api._read(lambda: 7) == 7

    run(main())


# -- end to end ---------------------------------------------------------------------------------


def test_sessions_calls_and_timelines_come_from_the_store(tmp_path: Path) -> None:
    """Two server runs on one store: sessions, calls (live, ended) and timelines read back."""
    store = tmp_path / "store.sqlite3"
    wav = stereo_wav(tmp_path / "call.wav", seed=1)

    async def first_run() -> tuple[str, list[dict[str, Any]]]:
        async with monitor(store) as running:
            return running.session, await push_calls(running, wav, ["call-1", "call-2"])

    async def second_run() -> dict[str, Any]:
        async with monitor(store) as running:
            assert running.server is not None
            port = running.server.port
            seen = {"session": running.session}
            seen["sent"] = await push_calls(running, wav, ["call-3"])
            seen["sessions"] = await aget(port, "/api/sessions")
            seen["one_session"] = await aget(port, "/api/sessions?limit=1")
            seen["calls"] = await aget(port, "/api/calls")
            seen["ended"] = await aget(port, "/api/calls?state=ended&limit=2")
            seen["page_2"] = await aget(
                port, f"/api/calls?state=ended&limit=2&before={seen['ended'][1]['next_before']}")
            seen["of_call"] = await aget(port, "/api/calls?call=call-1")
            seen["this_run"] = await aget(port, f"/api/calls?session={running.session}")
            agent = quote("call-1/agent", safe="")
            seen["timeline"] = await aget(
                port, f"/api/timeline?session={old_session}&stream={agent}")
            pages, after = [], 0
            while after is not None:  # a small limit: the cursor walks the same events
                status, page = await aget(port, f"/api/timeline?session={old_session}"
                                                f"&stream={agent}&limit=3&after={after}")
                assert status == 200, page
                pages.extend(page["events"])
                after = page["next_after"]
            seen["paged"] = pages
            return seen

    old_session, sent = run(first_run())
    seen = run(second_run())

    status, body = seen["sessions"]
    assert status == 200
    assert [s["session"] for s in body["sessions"]] == [seen["session"], old_session]
    assert [s["current"] for s in body["sessions"]] == [True, False]
    assert body["sessions"][0]["labels"] == list(DEFAULT_LABELS) and body["next_before"] is None
    status, body = seen["one_session"]
    assert [s["session"] for s in body["sessions"]] == [seen["session"]]
    assert body["next_before"] == body["sessions"][0]["cursor"]

    # Calls, newest first, each with its parties in channel order and how each ended.
    status, body = seen["calls"]
    assert status == 200 and body["next_before"] is None
    assert [(c["session"], c["call"]) for c in body["calls"]] == [
        (seen["session"], "call-3"), (old_session, "call-2"), (old_session, "call-1")]
    call_1 = body["calls"][2]
    assert call_1["state"] == "ended" and call_1["ended_at"] >= call_1["started_at"]
    assert [(s["stream"], s["role"], s["reason"]) for s in call_1["streams"]] == [
        ("call-1/agent", "agent", "end"), ("call-1/customer", "customer", "end")]
    closes = {m["stream"]: m for m in sent if m["type"] == "stream_close"}
    assert call_1["streams"][0]["windows"] == closes["call-1/agent"]["windows"] > 0
    assert call_1["streams"][0]["end_s"] == closes["call-1/agent"]["end_s"]
    assert call_1["streams"][0]["metadata"]["call"] == "call-1"
    # Paged two at a time with state=ended: the next page starts where the first ended.
    assert [c["call"] for c in seen["ended"][1]["calls"]] == ["call-3", "call-2"]
    assert [c["call"] for c in seen["page_2"][1]["calls"]] == ["call-1"]
    assert seen["page_2"][1]["next_before"] is None
    assert [c["call"] for c in seen["of_call"][1]["calls"]] == ["call-1"]
    assert [c["call"] for c in seen["this_run"][1]["calls"]] == ["call-3"]

    # The timeline of one stream: exactly the events /ws sent for it, in order.
    status, body = seen["timeline"]
    assert status == 200 and body["closed"] is True and body["next_after"] is None
    assert body["labels"] == list(DEFAULT_LABELS) and body["session"] == old_session
    expected = [m for m in sent if m.get("stream") == "call-1/agent"]
    assert body["events"] == expected
    assert {m["type"] for m in expected} >= {"stream_open", "window", "utterance", "alert",
                                             "stream_close"}
    assert seen["paged"] == expected


def test_live_calls_are_listed_live_and_left_out_of_ended(tmp_path: Path) -> None:
    """A call being pushed is live in /api/calls, not in state=ended; its timeline is readable."""
    store = tmp_path / "store.sqlite3"
    audio = np.zeros(RATE_HZ // 5, dtype="<i2").tobytes()

    async def main() -> dict[str, Any]:
        async with monitor(store) as running:
            assert running.server is not None
            port = running.server.port
            async with connect(running.server.ingest_url) as sender:
                await sender.send(json.dumps({
                    "type": "ingest_start", "v": 1, "stream": "live-1", "sample_rate_hz": RATE_HZ,
                    "channels": 1, "format": "s16le"}))
                json.loads(await asyncio.wait_for(sender.recv(), TIMEOUT_S))  # ingest_ack
                await sender.send(audio)
                calls = await aget(port, "/api/calls")
                ended = await aget(port, "/api/calls?state=ended")
                timeline = await aget(port, f"/api/timeline?session={running.session}"
                                            "&stream=live-1%2Fch0")
                await sender.send(json.dumps({"type": "ingest_end", "v": 1}))
            return {"calls": calls, "ended": ended, "timeline": timeline}

    seen = run(main())
    [call] = seen["calls"][1]["calls"]
    assert call["call"] == "live-1" and call["state"] == "live" and call["ended_at"] is None
    assert call["streams"][0]["state"] == "live" and call["streams"][0]["reason"] is None
    assert seen["ended"][1] == {"calls": [], "next_before": None}
    status, body = seen["timeline"]
    assert status == 200 and body["closed"] is False
    assert [m["type"] for m in body["events"]] == ["stream_open"]
    assert body["next_after"] == call["streams"][0]["open_id"]  # the events to come follow it


def test_a_past_run_that_never_closed_its_stream_lists_it_unfinished(tmp_path: Path) -> None:
    """A stream whose server run stopped without its stream_close (a crash) is 'unfinished'."""
    store = tmp_path / "store.sqlite3"
    with TimelineStore(store) as writer:
        hello = Hello("crashed1", "fixed", DEFAULT_LABELS, 2.0, 0.5, 16000)
        writer.start_session(hello, started_at=1.7e9)
        opened = StreamOpenMessage("mic", 16000, 1.7e9 + 1, {"source": "MicrophoneSource"})
        writer.record(opened, encode(opened))
        window = WindowMessage("mic", 0, 0.0, 2.0, 1.7e9 + 3, dict(zip(DEFAULT_LABELS,
                               (0.7, 0.1, 0.1, 0.1), strict=True)), "Angry", 0.7, "Angry", 0.7)
        writer.record(window, encode(window))
    [stored] = read_stream_openings(store, limit=10)
    assert stored.closed is None and stored.opened.stream == "mic"

    async def main() -> tuple[Any, Any]:
        async with monitor(store) as running:
            assert running.server is not None
            port = running.server.port
            return (await aget(port, "/api/calls"),
                    await aget(port, "/api/calls?state=ended"))

    (_, calls), (_, ended) = run(main())
    assert [(c["call"], c["state"]) for c in calls["calls"]] == [("mic", "unfinished")]
    assert ended["calls"] == calls["calls"]  # a past run's streams are never live


def test_bad_parameters_and_unknown_names_get_clear_errors(tmp_path: Path) -> None:
    """Bad limits, cursors and names: 400; unknown session, stream or endpoint: 404; no store."""
    store = tmp_path / "store.sqlite3"

    async def main() -> dict[str, tuple[int, Any]]:
        got: dict[str, tuple[int, Any]] = {}
        async with monitor(store) as running:
            assert running.server is not None
            port, session = running.server.port, running.session
            for key, path in {
                "limit_0": "/api/calls?limit=0",
                "limit_big": f"/api/calls?limit={CALLS_LIMIT[1] + 1}",
                "limit_text": "/api/sessions?limit=ten",
                "sessions_big": f"/api/sessions?limit={SESSIONS_LIMIT[1] + 1}",
                "timeline_big": f"/api/timeline?session={session}&stream=a"
                                f"&limit={TIMELINE_LIMIT[1] + 1}",
                "cursor": "/api/calls?before=-3",
                "state": "/api/calls?state=open",
                "no_stream": f"/api/timeline?session={session}",
                "bad_session": "/api/timeline?session=a%20b&stream=x",
                "control": f"/api/timeline?session={session}&stream=a%0Ab",
                "unknown_session": "/api/timeline?session=nosuch&stream=x",
                "unknown_stream": f"/api/timeline?session={session}&stream=nosuch",
                "endpoint": "/api/nothing",
                "health": "/healthz",
            }.items():
                got[key] = await aget(port, path)
        async with monitor(None) as running:
            assert running.server is not None
            got["no_store"] = await aget(running.server.port, "/api/sessions")
        return got

    got = run(main())
    messages = {
        "limit_0": f"limit must be an integer 1..{CALLS_LIMIT[1]}, got '0'",
        "limit_big": f"limit must be an integer 1..{CALLS_LIMIT[1]}",
        "limit_text": f"limit must be an integer 1..{SESSIONS_LIMIT[1]}, got 'ten'",
        "sessions_big": f"1..{SESSIONS_LIMIT[1]}",
        "timeline_big": f"1..{TIMELINE_LIMIT[1]}",
        "cursor": "before must be a cursor from an earlier page",
        "state": "state must be one of all, ended, got 'open'",
        "no_stream": "parameter 'stream' is required",
        "bad_session": "session must be 1-64 letters, digits",
        "control": "stream must be 1-256 characters, no control characters",
    }
    for key, text in messages.items():
        status, body = got[key]
        assert status == 400 and body["error"] == "bad_parameter", (key, body)
        assert text in body["message"], (key, body)
    for key, text in (("unknown_session", "no session 'nosuch' in the store"),
                      ("unknown_stream", "no stream 'nosuch' in session"),
                      ("endpoint", "no API endpoint /api/nothing; known: /api/sessions")):
        status, body = got[key]
        assert status == 404 and body["error"] == "not_found" and text in body["message"], body
    status, body = got["no_store"]
    assert status == 404 and body["error"] == "no_store" and "--no-store" in body["message"]
    status, health = got["health"]
    assert health["api"] == {"requests": 13, "bad_requests": 10, "not_found": 3, "busy": 0,
                             "store_errors": 0}


def test_the_api_needs_a_view_credential_when_tokens_are_configured(tmp_path: Path) -> None:
    """No credential: 401; an ingest token: 403; view and admin tokens and a login cookie: 200."""
    store = tmp_path / "store.sqlite3"
    credentials = Credentials.from_tokens([("view", VIEW), ("ingest", INGEST), ("admin", ADMIN)])

    async def main() -> dict[str, tuple[int, Any]]:
        security = SecurityConfig(credentials=credentials)
        async with monitor(store, security=security) as running:
            assert running.server is not None
            port = running.server.port
            login = await asyncio.to_thread(_login, port, VIEW)
            return {
                "none": await aget(port, "/api/sessions"),
                "ingest": await aget(port, "/api/sessions", Authorization=f"Bearer {INGEST}"),
                "wrong": await aget(port, "/api/calls", Authorization="Bearer " + "x" * 24),
                "view": await aget(port, "/api/sessions", Authorization=f"Bearer {VIEW}"),
                "admin": await aget(port, "/api/calls", Authorization=f"Bearer {ADMIN}"),
                "cookie": await aget(port, "/api/sessions", Cookie=login),
            }

    got = run(main())
    assert got["none"][0] == 401 and "a credential is required" in got["none"][1]
    assert got["wrong"][0] == 401 and "not valid" in got["wrong"][1]
    assert got["ingest"][0] == 403 and "cannot use view endpoints" in got["ingest"][1]
    for key in ("view", "admin", "cookie"):
        status, body = got[key]
        assert status == 200 and isinstance(body, dict), (key, body)


def _login(port: int, token: str) -> str:
    """POST /login with a token; the session cookie (name=value) the server set."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("POST", "/login", body=f"token={token}",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        response.read()
        return str(response.headers["Set-Cookie"]).split(";", 1)[0]
    finally:
        conn.close()
