"""The SQLite timeline store: WAL, commits visible to other readers, schema and label checks,
export of windows, utterances and alerts (refusing an existing timeline, appending once)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from server.alerts import AlertMonitor, parse_rule
from server.errors import ServerError
from server.hub import EventHub
from server.recorder import StoreRecorder
from server.session import ModelInfo
from server.store import (
    SCHEMA_VERSION,
    TimelineStore,
    choose_sessions,
    export_timeline,
    read_events,
    read_sessions,
)
from streamer.events import StreamClosed, StreamOpened, Utterance, WindowLabel
from streamer.protocol.messages import (
    AlertMessage,
    Hello,
    StreamOpenMessage,
    WindowMessage,
    encode,
)
from streamer.protocol.timeline import kind_path, read_timeline


def hello(session: str, labels: tuple[str, ...] = ("a", "b")) -> Hello:
    return Hello(session=session, model="m", labels=labels, window_s=2.0, hop_s=0.5,
                 sample_rate_hz=16000)


def window(seq: int, labels: tuple[str, ...] = ("a", "b")) -> WindowMessage:
    probs = {label: 1.0 / len(labels) for label in labels}
    return WindowMessage("s", seq, seq * 0.5, seq * 0.5 + 2, 1.0, probs, labels[0], 0.5,
                         labels[0], 0.5)


def test_wal_mode_and_every_record_is_committed(tmp_path: Path) -> None:
    """The file is in WAL mode and each record is visible to another connection at once."""
    path = tmp_path / "s.sqlite3"
    with TimelineStore(path) as store:
        store.start_session(hello("one"), started_at=1.0)
        reader = sqlite3.connect(path)
        try:
            assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            for seq in range(3):
                store.record(window(seq), encode(window(seq)))
                count = reader.execute("SELECT count(*) FROM events").fetchone()[0]
                assert count == seq + 1
        finally:
            reader.close()
    assert [s.session for s in read_sessions(path)] == ["one"]


def test_record_needs_a_session_and_an_open_store(tmp_path: Path) -> None:
    """Recording before start_session or after close is refused with a ServerError."""
    store = TimelineStore(tmp_path / "s.sqlite3").open()
    message = StreamOpenMessage("s", 16000, 1.0)
    with pytest.raises(ServerError, match="start_session"):
        store.record(message, encode(message))
    store.start_session(hello("x"), started_at=1.0)
    store.close()
    store.close()
    with pytest.raises(ServerError, match="not open"):
        store.record(message, encode(message))


def test_other_schema_versions_are_refused(tmp_path: Path) -> None:
    """A store written by another schema version is refused for writing and reading."""
    path = tmp_path / "s.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ServerError, match="schema"):
        TimelineStore(path).open()
    with pytest.raises(ServerError, match="schema"):
        read_sessions(path)


def test_export_refuses_sessions_with_different_labels(tmp_path: Path) -> None:
    """Sessions of models with different labels cannot share one timeline without --session."""
    path = tmp_path / "s.sqlite3"
    for session, labels in (("one", ("a", "b")), ("two", ("x", "y", "z"))):
        with TimelineStore(path) as store:
            store.start_session(hello(session, labels), started_at=len(session))
            store.record(window(0, labels), encode(window(0, labels)))
    with pytest.raises(ServerError, match="different labels"):
        export_timeline(path, tmp_path / "all.csv")
    assert export_timeline(path, tmp_path / "two.csv", session="two") == 1
    assert export_timeline(path, tmp_path / "latest.jsonl", latest=True) == 1
    assert [m for _, m in read_events(path, session="one")] == [window(0)]
    assert [s.session for s in choose_sessions(path, latest=True)] == ["two"]
    with pytest.raises(ServerError, match="not both"):
        choose_sessions(path, session="one", latest=True)


def alert(state: str, reason: str = "", speech_s: float = 0.0) -> AlertMessage:
    return AlertMessage(alert_id=1, stream="s", state=state, rule="a>=0.5 for 1s", label="a",
                        threshold=0.5, for_s=1.0, since_s=2.0, at_s=3.0, probability=0.6,
                        wall_time=1.0, reason=reason, speech_s=speech_s)


def test_alerts_view_reads_reasons_and_a_file_from_before_it_migrates(tmp_path: Path) -> None:
    """A version-1 file written before the alerts view gets it on open; old rows read NULL."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE sessions (session TEXT PRIMARY KEY, started_at REAL NOT NULL, model TEXT "
        "NOT NULL, labels TEXT NOT NULL, window_s REAL NOT NULL, hop_s REAL NOT NULL, "
        "sample_rate_hz INTEGER NOT NULL);"
        "CREATE TABLE events (id INTEGER PRIMARY KEY, session TEXT NOT NULL REFERENCES "
        "sessions(session), type TEXT NOT NULL, stream TEXT, seq INTEGER, wall_time REAL, "
        "frame TEXT NOT NULL);"
        "PRAGMA user_version=1;"
    )
    old_frame = ('{"type":"alert","v":1,"alert_id":1,"stream":"s","state":"end","rule":"a>=0.5'
                 ' for 1s","label":"a","threshold":0.5,"for_s":1.0,"since_s":2.0,"at_s":3.0,'
                 '"probability":0.6,"wall_time":1.0}')
    with db:
        db.execute("INSERT INTO sessions VALUES ('old', 1, 'm', '[\"a\",\"b\"]', 2, 0.5, 16000)")
        db.execute("INSERT INTO events (session, type, stream, wall_time, frame) "
                   "VALUES ('old', 'alert', 's', 1.0, ?)", (old_frame,))
    db.close()
    with TimelineStore(path) as store:
        store.start_session(hello("new"), started_at=2.0)
        for message in (alert("start", speech_s=1.0), alert("end", "stream_closed", 1.5)):
            store.record(message, encode(message))
    reader = sqlite3.connect(path)
    try:
        assert reader.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
        rows = reader.execute(
            "SELECT session, alert_id, state, reason, speech_s, at_s FROM alerts ORDER BY id"
        ).fetchall()
    finally:
        reader.close()
    assert rows == [("old", 1, "end", None, None, 3.0), ("new", 1, "start", None, 1.0, 3.0),
                    ("new", 1, "end", "stream_closed", 1.5, 3.0)]
    old, *new = [m for _, m in read_events(path, types=("alert",))]
    assert isinstance(old, AlertMessage) and (old.reason, old.speech_s) == ("", 0.0)
    assert new == [alert("start", speech_s=1.0), alert("end", "stream_closed", 1.5)]



LABELS = ("Angry", "Happy", "Neutral", "Sad")
INFO = ModelInfo(name="m", labels=LABELS, window_s=2.0, hop_s=0.5, sample_rate_hz=16000)


def record_call(path: Path, session: str, *, wall: float) -> None:
    """One call through the real hub with an alert rule: windows, an utterance, an alert."""

    async def scenario() -> None:
        with TimelineStore(path) as store:
            alerts = AlertMonitor([parse_rule("angry>=0.6")], LABELS)
            async with EventHub(INFO, recorder=StoreRecorder(store), session=session,
                                alerts=alerts) as hub:
                hub.publish_event(StreamOpened("call", 16000, wall))
                for seq in range(3):
                    hub.publish_event(WindowLabel(
                        "call", seq, 0.5 * seq, 0.5 * seq + 2, wall + seq, (0.7, 0.1, 0.1, 0.1),
                        "Angry", 0.7, "Angry", 0.7, smoothed_probabilities=(0.7, 0.1, 0.1, 0.1)))
                hub.publish_event(Utterance("call", 0.0, 3.0, wall + 3, (0.7, 0.1, 0.1, 0.1),
                                            "Angry", 0.7, windows=3))
                hub.publish_event(StreamClosed("call", 3.0, wall + 4))

    asyncio.run(scenario())


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_writes_windows_utterances_and_alerts(tmp_path: Path, suffix: str) -> None:
    """Every stored window, utterance and alert start/end lands in its file, once per append."""
    store = tmp_path / "store.sqlite3"
    record_call(store, "one", wall=1.7e9)
    out = tmp_path / f"calls{suffix}"
    assert export_timeline(store, out) == 3 + 1 + 2
    windows = read_timeline(out)
    assert [(r["session"], r["seq"]) for r in windows] == [("one", 0), ("one", 1), ("one", 2)]
    (utterance,) = read_timeline(kind_path(out, "utterance"))
    assert (utterance["label"], utterance["windows"], utterance["p_Angry"]) == ("Angry", 3, 0.7)
    alerts = read_timeline(kind_path(out, "alert"))
    assert [(a["alert_id"], a["state"]) for a in alerts] == [(1, "start"), (1, "end")]
    assert alerts[0]["rule"] == "Angry>=0.6 for 0s"
    before = {kind: kind_path(out, kind).read_bytes() for kind in ("window", "alert")}
    with pytest.raises(ServerError, match="already exists: pass --append"):
        export_timeline(store, out)
    assert export_timeline(store, out, append=True) == 0  # nothing new: nothing twice
    assert {kind: kind_path(out, kind).read_bytes() for kind in before} == before
    record_call(store, "two", wall=1.8e9)
    assert export_timeline(store, out, append=True) == 6
    assert [r["session"] for r in read_timeline(out)] == ["one"] * 3 + ["two"] * 3
    assert len(read_timeline(kind_path(out, "alert"))) == 4
