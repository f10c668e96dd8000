"""The PostgreSQL timeline store against a real PostgreSQL server started from Debian's binaries.

The server (tests/pgserver.py) is private to the test session: 127.0.0.1 on a free port,
scram-sha-256 passwords; every test gets a fresh database. It is stopped and started again by
the test of a database going away mid-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client.push import push_file
from server.app import EventServer
from server.cli import main
from server.config import ServerConfig
from server.errors import ServerError
from server.fanout import Backlog, FanOut
from server.hub import EventHub
from server.monitor import Monitor
from server.recorder import StoreRecorder
from server.store import (
    TimelineStore,
    export_timeline,
    read_events,
    read_sessions,
    store_row,
)
from server.store_pg import (
    PostgresStoreConfig,
    PostgresTimelineReader,
    PostgresTimelineStore,
    after_committed,
    is_postgres_url,
    redact_store_url,
)
from streamer.convert import event_message
from streamer.engine import EngineConfig
from streamer.events import (
    EngineStats,
    SpeechEnd,
    SpeechStart,
    StreamClosed,
    StreamOpened,
    Utterance,
    WindowLabel,
)
from streamer.extras import MissingExtraError
from streamer.protocol.messages import (
    Hello,
    Message,
    StatsMessage,
    StreamCloseMessage,
    WindowMessage,
    decode,
    encode,
)
from streamer.protocol.timeline import TIMELINE_KINDS, kind_path
from streamer.testing import FixedProbabilitiesModel, speech_like
from tests.conftest import REPO, TIMEOUT_S
from tests.pgserver import PostgresServer, postgres_binaries
from tests.realparts.procs import OutputProcess, monitor_command, require_or_fail
from tests.test_server import INFO, http_get, label, receive, stats

LABELS = ("Angry", "Happy", "Neutral", "Sad")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session (skips without Debian's binaries)."""
    import importlib.util

    if importlib.util.find_spec("psycopg") is None:
        require_or_fail("psycopg not installed: pip install -e '.[postgres]'")
    postgres_binaries()
    with PostgresServer(timeout_s=TIMEOUT_S) as server:
        yield server


@pytest.fixture
def pg(pg_server: PostgresServer) -> PostgresStoreConfig:
    """A fresh database of the session's server, as a store config with the password."""
    url = pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    return PostgresStoreConfig(url, password=pg_server.password)


def query(config: PostgresStoreConfig, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a connection of our own (not the store's)."""
    import psycopg

    with psycopg.connect(config.url, password=config.password, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def hello(session: str, labels: tuple[str, ...] = LABELS) -> Hello:
    return Hello(session=session, model="m", labels=labels, window_s=2.0, hop_s=0.5,
                 sample_rate_hz=16000)


def traffic(stream: str, windows: int) -> list[tuple[Message, str]]:
    """(message, frame) of a little call: open, speech, windows, utterance, stats, close."""
    probs = (0.1, 0.2, 0.6, 0.1)
    events: list[Any] = [
        StreamOpened(stream, 8000, 1000.0, {"role": "agent"}),
        SpeechStart(stream, 0.25, 1000.3),
    ]
    events += [WindowLabel(stream, seq, 0.5 * seq, 0.5 * seq + 2.0, 1001.0 + seq, probs,
                           "Neutral", 0.6, "uncertain", 0.3) for seq in range(windows)]
    events += [
        SpeechEnd(stream, 0.25, 0.5 * windows + 2.0, 1001.0 + windows),
        Utterance(stream, 0.25, 0.5 * windows + 2.0, 1001.5 + windows, probs, "Neutral", 0.6,
                  windows),
        EngineStats(1002.0 + windows, 0.01, windows, 0, 0, 0),
        StreamClosed(stream, 0.5 * windows + 2.0, 1003.0 + windows, "end", windows),
    ]
    messages = [event_message(event, LABELS) for event in events]
    return [(message, encode(message)) for message in messages]


def sqlite_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT session, type, stream, seq, wall_time, frame FROM events "
                          "ORDER BY id").fetchall()


def pg_rows(config: PostgresStoreConfig) -> list[tuple[Any, ...]]:
    return query(config, "SELECT session, type, stream, seq, wall_time, frame "
                         "FROM emotion_monitor.events ORDER BY id")


def record_both(path: Path, config: PostgresStoreConfig) -> None:
    """The same two sessions (server runs) of traffic into a SQLite and a PostgreSQL store."""
    makers = (lambda: TimelineStore(path), lambda: PostgresTimelineStore(config))
    for make in makers:
        with make() as store:
            store.start_session(hello("run-1"), started_at=10.0)
            for message, frame in traffic("call-1/agent", 5):
                store.record(message, frame)
        with make() as store:
            store.start_session(hello("run-2"), started_at=20.0)
            batch = traffic("call-2", 3)
            store.record(*batch[0])
            store.record_rows([store_row(m, f) for m, f in batch[1:]])  # one transaction
            assert store.events_recorded == len(batch)


# -- pure parts -------------------------------------------------------------------------------


def test_store_urls_are_recognised_and_their_passwords_never_shown() -> None:
    """postgresql:// and postgres:// name the store; passwords become *** wherever shown."""
    assert is_postgres_url("postgresql://db/x") and is_postgres_url("POSTGRES://h/x")
    assert not is_postgres_url("store.sqlite3") and not is_postgres_url("/tmp/postgresql")
    assert redact_store_url("postgresql://u:pa%40ss@h:5432,h2/db?sslmode=require") == (
        "postgresql://u:***@h:5432,h2/db?sslmode=require")
    assert redact_store_url("postgres://h/db?password=x&application_name=a") == (
        "postgres://h/db?password=***&application_name=a")
    config = PostgresStoreConfig("postgresql://u:pa%40ss@h/db", password="other-secret")
    assert config.url_has_password and "pa" not in repr(config) and "other" not in repr(config)
    scrubbed = config.scrub("bad: \"postgresql://u:pa%40ss@h/db\" pa@ss\n  other-secret here")
    assert scrubbed == 'bad: "postgresql://u:***@h/db" ***; *** here'
    assert not PostgresStoreConfig("postgresql://u@h/db").url_has_password
    with pytest.raises(ServerError, match="starts with postgresql://"):
        PostgresStoreConfig("mysql://u:secret@h/db")
    with pytest.raises(ServerError) as caught:
        PostgresStoreConfig("http://u:secret@h/db")
    assert "secret" not in str(caught.value)


def test_a_retry_leaves_out_the_rows_a_cut_off_write_did_commit() -> None:
    """after_committed drops the leading rows that ended the committed write, nothing else."""
    rows = [("window", "s", n, 1.0, f"frame {n}") for n in range(6)]
    assert list(after_committed(rows, rows[:3])) == rows[3:]
    assert list(after_committed(rows[1:], rows[:3])) == rows[3:]  # the oldest was dropped
    assert list(after_committed(rows[3:], rows[:3])) == rows[3:]  # all of it dropped
    assert list(after_committed(rows, ())) == rows
    assert list(after_committed(rows[:2], rows[:3])) == rows[:2]  # not a retry of it


# -- the store against a real server ----------------------------------------------------------


def test_same_traffic_gives_the_same_rows_as_the_sqlite_store(
    pg: PostgresStoreConfig, tmp_path: Path
) -> None:
    """Rows, sessions and filtered reads of PostgreSQL equal the SQLite store's, in order."""
    path = tmp_path / "s.sqlite3"
    record_both(path, pg)
    assert pg_rows(pg) == sqlite_rows(path) and len(pg_rows(pg)) == 20
    reader = PostgresTimelineReader(pg)
    assert read_sessions(reader) == read_sessions(path)
    assert [s.session for s in read_sessions(reader)] == ["run-1", "run-2"]
    for filters in ({}, {"session": "run-2"}, {"stream": "call-1/agent"},
                    {"types": ("window", "stats")}, {"session": "run-1", "types": ("window",)}):
        assert list(read_events(reader, **filters)) == list(read_events(path, **filters))


def test_every_record_is_committed_when_it_returns(pg: PostgresStoreConfig) -> None:
    """Another connection sees each event at once; recording needs a session and an open store."""
    store = PostgresTimelineStore(pg).open()
    message, frame = traffic("s", 1)[0]
    with pytest.raises(ServerError, match="start_session"):
        store.record(message, frame)
    store.start_session(hello("one"), started_at=1.0)
    for n, (message, frame) in enumerate(traffic("s", 2), start=1):
        store.record(message, frame)
        assert query(pg, "SELECT count(*) FROM emotion_monitor.events")[0][0] == n
    assert store.path == pg.redacted
    store.close()
    store.close()
    with pytest.raises(ServerError, match="not open"):
        store.record(message, frame)


def test_several_nodes_write_to_one_database_at_once(pg: PostgresStoreConfig) -> None:
    """Stores opened at once on an empty database: one schema, each session whole and in order."""
    stores = [PostgresTimelineStore(pg) for _ in range(4)]
    errors: list[BaseException] = []

    def node(store: PostgresTimelineStore, n: int) -> None:
        try:
            store.open()
            store.start_session(hello(f"node-{n}"), started_at=float(n))
            for message, frame in traffic(f"call-{n}", 20):
                store.record(message, frame)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    for store in stores:
        store.close()
    assert errors == []
    assert query(pg, "SELECT version FROM emotion_monitor.store_version") == [(1,)]
    reader = PostgresTimelineReader(pg)
    assert [s.session for s in read_sessions(reader)] == [f"node-{n}" for n in range(4)]
    for n in range(4):
        got = [encode(m) for _, m in read_events(reader, session=f"node-{n}")]
        assert got == [frame for _, frame in traffic(f"call-{n}", 20)]


def test_other_schema_versions_and_empty_databases_are_refused(pg: PostgresStoreConfig) -> None:
    """A store of another schema version is refused for writing and reading; no store, too."""
    with pytest.raises(ServerError, match="no timeline store in this database"):
        read_sessions(PostgresTimelineReader(pg))
    PostgresTimelineStore(pg).open().close()
    query(pg, "UPDATE emotion_monitor.store_version SET version = 2 RETURNING version")
    with pytest.raises(ServerError, match="schema 2"):
        PostgresTimelineStore(pg).open()
    with pytest.raises(ServerError, match="schema 2"):
        read_sessions(PostgresTimelineReader(pg))


def test_export_from_postgres_matches_export_from_sqlite(
    pg: PostgresStoreConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export_timeline and `export --store URL` write the same timeline as from SQLite."""
    path = tmp_path / "s.sqlite3"
    record_both(path, pg)
    for suffix in ("csv", "jsonl"):
        rows = export_timeline(path, tmp_path / f"lite.{suffix}", latest=False)
        assert rows >= 8  # the windows, and the utterance and alert rows beside them
        assert export_timeline(PostgresTimelineReader(pg), tmp_path / f"pg.{suffix}",
                               latest=True) == export_timeline(
            path, tmp_path / f"lite-latest.{suffix}", latest=True)
        assert export_timeline(PostgresTimelineReader(pg), tmp_path / f"pg-all.{suffix}") == rows
        for kind in TIMELINE_KINDS:
            assert kind_path(tmp_path / f"pg-all.{suffix}", kind).read_text() == kind_path(
                tmp_path / f"lite.{suffix}", kind).read_text()
    password_file = tmp_path / "pw"
    password_file.write_text(pg.password + "\n")
    out = tmp_path / "cli.csv"
    code = main(["export", "--store", pg.url, "--store-password-file", str(password_file),
                 "--out", str(out), "--all"])
    assert code == 0 and "wrote 8 window row(s)" in capsys.readouterr().out
    assert out.read_text() == (tmp_path / "lite.csv").read_text()


# -- a real monitor and server ----------------------------------------------------------------


def test_monitor_with_a_postgres_store_keeps_every_event_a_client_received(
    pg: PostgresStoreConfig, tmp_path: Path
) -> None:
    """A pushed call through a real Monitor: each frame a /ws client got is in PostgreSQL."""
    wav = tmp_path / "call.wav"
    sf.write(wav, np.concatenate([speech_like(3.0), np.zeros(8000, np.float32)]), 16000)
    config = ServerConfig(port=0, postgres_store=pg, shutdown_timeout_s=TIMEOUT_S)
    assert config.store_path is None

    async def scenario() -> tuple[str, list[str], dict[str, Any]]:
        received: list[str] = []
        async with Monitor(FixedProbabilitiesModel(LABELS), engine_config=EngineConfig(),
                           server_config=config) as monitor:
            async with connect(monitor.ws_url) as ws:
                assert isinstance(decode(await ws.recv()), Hello)
                result = await push_file(wav, monitor.ingest_url, stream="call-7", fast=True)
                assert result.streams == ("call-7/ch0",)
                while True:
                    text = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
                    assert isinstance(text, str)
                    received.append(text)
                    if isinstance(decode(text), StreamCloseMessage):
                        break
                health = monitor.hub.health() if monitor.hub else {}
            return monitor.session, received, health

    session, received, health = run(scenario())
    assert health["ok"] is True and health["store"] == pg.redacted
    assert any(isinstance(decode(t), WindowMessage) for t in received)
    stored = [row[0] for row in query(
        pg, "SELECT frame FROM emotion_monitor.events WHERE session = %s ORDER BY id", session)]
    assert received and set(received) <= set(stored)
    order = {frame: n for n, frame in enumerate(stored)}
    assert [order[t] for t in received] == sorted(order[t] for t in received)


def test_sigkill_mid_call_loses_no_event_a_client_received(
    pg: PostgresStoreConfig, tmp_path: Path
) -> None:
    """`run --store URL` killed (SIGKILL) mid-call: PostgreSQL holds every frame /ws had got."""
    wav = tmp_path / "call.wav"
    sf.write(wav, speech_like(8.0, seed=5), 16000)
    password_file = tmp_path / "store-password"
    password_file.write_text(pg.password + "\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PGPASSWORD": ""}
    argv = monitor_command("--log-level", "WARNING", "run", "--source", "none", "--port", "0",
                           "--store", pg.url, "--store-password-file", str(password_file))
    with OutputProcess(argv, env=env, cwd=REPO) as server:
        ws_url = server.wait_for(r"^events:\s+(\S+)", timeout_s=TIMEOUT_S * 2).group(1)
        ingest_url = server.wait_for(r"^ingest:\s+(\S+)", timeout_s=TIMEOUT_S).group(1)
        session = server.wait_for(r"^session:\s+(\S+)", timeout_s=TIMEOUT_S).group(1)

        async def scenario() -> list[str]:
            received: list[str] = []
            async with connect(ws_url) as ws:
                assert isinstance(decode(await ws.recv()), Hello)
                push = asyncio.create_task(push_file(wav, ingest_url, stream="call-9"))
                try:
                    while sum(isinstance(decode(t), WindowMessage) for t in received) < 4:
                        text = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
                        assert isinstance(text, str)
                        received.append(text)
                    server.kill()  # mid-call: the pushed file is paced in real time
                    with contextlib.suppress(ConnectionClosed):
                        while True:  # frames already on their way still count
                            text = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
                            assert isinstance(text, str)
                            received.append(text)
                finally:
                    push.cancel()
                    await asyncio.gather(push, return_exceptions=True)
            return received

        received = run(scenario())
    assert not any(isinstance(decode(t), StreamCloseMessage) for t in received)  # mid-call
    stored = {row[0] for row in query(
        pg, "SELECT frame FROM emotion_monitor.events WHERE session = %s", session)}
    missing = [t for t in received if t not in stored]
    assert missing == [], f"received but not stored: {missing[:3]}"


@asynccontextmanager
async def pg_hub(config: PostgresStoreConfig) -> Any:
    """A hub recording to a PostgreSQL store, and a started server on 127.0.0.1:0."""
    server_config = ServerConfig(port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S)
    store = PostgresTimelineStore(config).open()
    hub = EventHub(INFO, fanout=FanOut(backlog=Backlog()), recorder=StoreRecorder(store))
    try:
        async with hub, EventServer(server_config, hub) as server:
            yield hub, server, store
    finally:
        store.close()


async def windows(ws: Any, n: int) -> list[tuple[str, int]]:
    got: list[tuple[str, int]] = []
    while len(got) < n:
        message = await receive(ws)
        if isinstance(message, WindowMessage):
            got.append((message.stream, message.seq))
    return got


def stored_windows(config: PostgresStoreConfig) -> list[tuple[str, int]]:
    return [(m.stream, m.seq) for _, m in read_events(PostgresTimelineReader(config),
                                                      types=("window",))
            if isinstance(m, WindowMessage)]


def test_database_going_away_is_retried_counted_and_shown(
    pg: PostgresStoreConfig, pg_server: PostgresServer
) -> None:
    """Server stopped mid-run: clients still get events, /healthz says why, all stored after."""

    async def scenario() -> None:
        async with pg_hub(pg) as (hub, server, _store), connect(server.ws_url) as ws:
            hub.recorder.retry_s = 0.0  # retry on every event: the test drives the timing
            assert isinstance(await receive(ws), Hello)
            hub.publish_event(label("a", 0))
            assert await windows(ws, 1) == [("a", 0)]
            await asyncio.to_thread(pg_server.stop)
            try:
                for seq in range(1, 30):
                    hub.publish_event(label("a", seq))
                assert await windows(ws, 29) == [("a", n) for n in range(1, 30)]
                health = hub.health()
                assert health["ok"] is False and "timeline store" in health["reason"]
                assert pg_server.password not in json.dumps(health)
                status, _, body = await asyncio.to_thread(http_get, server.port, "/healthz")
                shown = json.loads(body)
                assert status == 200 and shown["ok"] is False and shown["store_errors"] >= 1
                assert shown["store_pending"] == 29 and shown["store"] == pg.redacted
                hub.publish_stats(stats())
                while not isinstance(message := await receive(ws), StatsMessage):
                    pass
                assert message.store_errors >= 1
            finally:
                await asyncio.to_thread(pg_server.start)
            hub.publish_event(label("a", 30))
            assert await windows(ws, 1) == [("a", 30)]
            assert hub.health()["ok"] is True and hub.health()["store_pending"] == 0
        assert stored_windows(pg) == [("a", n) for n in range(31)]  # in order, none twice

    run(scenario())


def test_a_connection_cut_by_the_server_is_opened_again_and_nothing_doubles(
    pg: PostgresStoreConfig
) -> None:
    """pg_terminate_backend on the store's connection: the next writes resume, each row once."""

    async def scenario() -> None:
        async with pg_hub(pg) as (hub, server, store), connect(server.ws_url) as ws:
            hub.recorder.retry_s = 0.0
            assert isinstance(await receive(ws), Hello)
            for seq in range(3):
                hub.publish_event(label("b", seq))
            killed = query(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                               "datname = current_database() AND pid <> pg_backend_pid() "
                               "AND application_name = 'emotion-monitor'")
            assert killed == [(True,)]
            for seq in range(3, 6):
                hub.publish_event(label("b", seq))
            assert await windows(ws, 6) == [("b", n) for n in range(6)]
            assert hub.health()["ok"] is True and hub.recorder.errors == 1
            assert store.events_recorded == 6
        assert stored_windows(pg) == [("b", n) for n in range(6)]

    run(scenario())


class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers (a hung host)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        for conn in self.accepted:
            conn.close()
        self._thread.join(TIMEOUT_S)


def test_a_server_that_never_answers_holds_off_the_next_connect() -> None:
    """A connect that times out is one error, and none is tried again for a while after it."""
    silent = SilentServer()
    try:
        config = PostgresStoreConfig(f"postgresql://u@127.0.0.1:{silent.port}/db",
                                     password="never-shown", connect_timeout_s=2)
        store = PostgresTimelineStore(config)
        with pytest.raises(ServerError, match="cannot connect.*timeout") as caught:
            store.open()
        assert "never-shown" not in str(caught.value) and len(silent.accepted) == 1
        with pytest.raises(ServerError, match=r"next try in \d"):  # 9x the 2 s it waited
            store.open()
        assert len(silent.accepted) == 1
    finally:
        silent.close()


# -- errors on the command line ---------------------------------------------------------------


def export_error(args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> str:
    """Run `export ARGS --out ...` in this process: exit 2 and one line on stderr (returned)."""
    code = main(["export", *args, "--out", str(tmp_path / "t.csv")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_url_wrong_password_and_unreachable_server_are_one_line_errors(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export --store URL fails with one line, exit 2, and never the password."""
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-42\n")
    url = pg_server.url()
    err = export_error(["--store", url, "--store-password-file", str(wrong)], capsys, tmp_path)
    assert "password authentication failed" in err and "not-the-password-42" not in err
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    err = export_error(["--store", f"postgresql://monitor@127.0.0.1:{port}/db",
                        "--store-password-file", str(wrong)], capsys, tmp_path)
    assert "refused" in err and "not-the-password-42" not in err
    err = export_error(["--store", "postgresql://monitor@[bad/db"], capsys, tmp_path)
    assert "bad store URL" in err
    err = export_error(["--store", pg_server.url(password=True)], capsys, tmp_path)
    assert "holds a password" in err and pg_server.password not in err
    err = export_error(["--store", str(tmp_path / "s.sqlite3"), "--store-password-file",
                        str(wrong)], capsys, tmp_path)
    assert "needs --store postgresql://" in err
    with pytest.raises(ServerError) as caught:  # a password in a URL given in code: scrubbed
        PostgresTimelineStore("postgresql://monitor:hush-7@[bad/db").open()
    assert "hush-7" not in str(caught.value) and "***" in str(caught.value)


def test_run_with_a_wrong_password_exits_2_without_showing_it(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    """`run --store URL` with a wrong password: one error line, exit 2, no password in any log."""
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-secret-99\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PGPASSWORD": ""}
    result = subprocess.run(
        [sys.executable, "-m", "server", "run", "--source", "none", "--port", "0",
         "--store", pg_server.url(), "--store-password-file", str(wrong)],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S * 2,
        stdin=subprocess.DEVNULL, env=env,
    )
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "password authentication failed" in errors[0], result.stderr
    assert "wrong-secret-99" not in result.stderr + result.stdout


def test_a_missing_driver_is_one_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without psycopg, opening a store and `export --store URL` name emotion-monitor[postgres]."""
    monkeypatch.setattr("server.store_pg._DRIVER", "no_such_postgres_driver")
    with pytest.raises(MissingExtraError, match=r"emotion-monitor\[postgres\]'$"):
        PostgresTimelineStore("postgresql://h/db").open()
    err = export_error(["--store", "postgresql://h/db"], capsys, tmp_path)
    assert "pip install 'emotion-monitor[postgres]'" in err
