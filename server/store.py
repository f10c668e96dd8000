"""The timeline store: every event the server publishes, in SQLite (event loop thread; export: CLI).

One file can hold many server runs ("sessions"). Schema (``PRAGMA user_version`` = 1)::

    sessions(session TEXT PRIMARY KEY, started_at REAL, model TEXT, labels TEXT -- JSON list,
             window_s REAL, hop_s REAL, sample_rate_hz INTEGER)
    events(id INTEGER PRIMARY KEY, session TEXT, type TEXT, stream TEXT, seq INTEGER,
           wall_time REAL, frame TEXT)   -- frame: the exact JSON text sent to clients
    VIEW alerts(id, session, stream, wall_time, alert_id, state, rule, label, since_s, at_s,
                probability, speech_s, reason)   -- the alert rows of events, fields of frame

The ``alerts`` view was added within schema version 1: it only reads ``events``, so files
with and without it are the same version, and opening a file for writing creates it (``IF NOT
EXISTS``), in files written before it too. Its ``reason`` and ``speech_s`` are NULL for alert
rows recorded before those fields, and ``reason`` is NULL on a ``start``.

The database runs in WAL mode with ``synchronous=NORMAL`` and every :meth:`TimelineStore.record`
commits before it returns. The server records an event *before* it queues it for any client, so
whatever a client has received is in the store even if the process is killed (SIGKILL) a moment
later; a committed WAL transaction survives a process crash (only an OS crash or power loss can
take the last ones back).

Every SQLite error while writing (disk full, I/O error, a file locked by another process, a
read-only file) becomes a :class:`~server.errors.ServerError` naming the file and SQLite's
reason; nothing is half-written (each call is one transaction). A lock held elsewhere is waited
for at most ``busy_timeout_s`` (the caller is the event loop). ``max_bytes`` caps the file's
size (SQLite's ``max_page_count``): past it a write fails like on a full disk, and
:meth:`TimelineStore.set_max_bytes` lifts it again.

A :class:`TimelineStore` belongs to the thread that opened it (the server's event loop).
:func:`export_timeline` reads a store, read-only, into a CSV or JSONL timeline: windows,
utterances and alerts, each kind in its own file (see :mod:`streamer.protocol.timeline`); it
works while a server is still writing to the file.
The ``read_*`` functions do the same, each call on its own read-only connection, so any thread
may call them (the HTTP API calls them in worker threads, see :mod:`server.api`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from server.errors import ServerError
from streamer.protocol.errors import TimelineError
from streamer.protocol.messages import (
    AlertMessage,
    Hello,
    Message,
    MessageError,
    StreamCloseMessage,
    StreamOpenMessage,
    UtteranceMessage,
    WindowMessage,
    decode,
)
from streamer.protocol.timeline import TimelineFiles

__all__ = [
    "SCHEMA_VERSION",
    "SessionInfo",
    "StoreRow",
    "StoredStream",
    "TimelineStore",
    "choose_sessions",
    "export_events",
    "export_timeline",
    "read_events",
    "read_session",
    "read_session_page",
    "read_sessions",
    "read_stream_events",
    "read_stream_openings",
    "store_row",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    model TEXT NOT NULL,
    labels TEXT NOT NULL,
    window_s REAL NOT NULL,
    hop_s REAL NOT NULL,
    sample_rate_hz INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    session TEXT NOT NULL REFERENCES sessions(session),
    type TEXT NOT NULL,
    stream TEXT,
    seq INTEGER,
    wall_time REAL,
    frame TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_stream ON events(session, stream, type, seq);
CREATE VIEW IF NOT EXISTS alerts AS
SELECT id, session, stream, wall_time,
       json_extract(frame, '$.alert_id') AS alert_id,
       json_extract(frame, '$.state') AS state,
       json_extract(frame, '$.rule') AS rule,
       json_extract(frame, '$.label') AS label,
       json_extract(frame, '$.since_s') AS since_s,
       json_extract(frame, '$.at_s') AS at_s,
       json_extract(frame, '$.probability') AS probability,
       json_extract(frame, '$.speech_s') AS speech_s,
       NULLIF(json_extract(frame, '$.reason'), '') AS reason
FROM events WHERE type = 'alert';
"""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One server run recorded in a store."""

    session: str
    started_at: float
    model: str
    labels: tuple[str, ...]
    window_s: float
    hop_s: float
    sample_rate_hz: int


@dataclass(frozen=True, slots=True)
class StoredStream:
    """One opening of a stream recorded in a store, with its close when one was recorded.

    ``open_id`` is the ``events.id`` of the ``stream_open`` (a cursor for paging); ``closed``
    is None while the stream is live, or when its server run ended without closing it.
    """

    open_id: int
    session: str
    opened: StreamOpenMessage
    closed: StreamCloseMessage | None


#: one event as the store writes it: type, stream, seq, wall_time, frame
StoreRow = tuple[str, str | None, int | None, float | None, str]


def store_row(message: Message, frame: str) -> StoreRow:
    """The row of one event (``frame`` is its exact wire text)."""
    stream = getattr(message, "stream", None)
    seq = getattr(message, "seq", None)
    wall_time = getattr(message, "wall_time", None)
    return (
        message.TYPE,
        stream if isinstance(stream, str) else None,
        seq if isinstance(seq, int) else None,
        float(wall_time) if isinstance(wall_time, (int, float)) else None,
        frame,
    )


def _db_error(path: Path, exc: sqlite3.Error) -> ServerError:
    return ServerError(f"{path}: timeline store error ({exc})")


class TimelineStore:
    """Appends the events of one server run (session) to a SQLite file.

    Usage::

        with TimelineStore(path) as store:
            store.start_session(hello, started_at=time.time())
            store.record(message, frame)   # committed when this returns

    ``close()`` is idempotent; recording after close is refused.
    """

    def __init__(
        self, path: str | Path, *, busy_timeout_s: float = 0.1, max_bytes: int | None = None
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.max_bytes = max_bytes
        self.session: str | None = None
        self.events_recorded = 0
        self._db: sqlite3.Connection | None = None
        self._closed = False

    def open(self) -> TimelineStore:
        """Create or open the file, switch to WAL, create the tables; called by ``__enter__``."""
        if self._db is not None:
            return self
        if self._closed:
            raise ServerError(f"{self.path}: timeline store already closed")
        if not self.path.parent.is_dir():
            raise ServerError(f"{self.path}: folder {self.path.parent} does not exist")
        try:
            db = sqlite3.connect(str(self.path), isolation_level=None)  # 5 s lock wait at start
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ServerError(
                    f"{self.path}: timeline store schema {version}, this version writes "
                    f"{SCHEMA_VERSION}; use another --store file"
                )
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ServerError(f"{self.path}: cannot switch the store to WAL mode ({mode})")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # while serving, a lock held elsewhere must not stall the event loop for long
            db.execute(f"PRAGMA busy_timeout={max(0, int(self.busy_timeout_s * 1000))}")
        except sqlite3.Error as exc:
            db.close()
            raise _db_error(self.path, exc) from exc
        except ServerError:
            db.close()
            raise
        self._db = db
        if self.max_bytes is not None:
            self.set_max_bytes(self.max_bytes)
        logger.info("timeline store %s open", self.path)
        return self

    def set_max_bytes(self, max_bytes: int | None) -> None:
        """Cap the file's size (None: SQLite's own maximum); writes past it fail as if full."""
        db = self._conn()
        try:
            page = int(db.execute("PRAGMA page_size").fetchone()[0])
            pages = 2**32 - 2 if max_bytes is None else max(1, max_bytes // page)
            db.execute(f"PRAGMA max_page_count={pages}")
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc
        self.max_bytes = max_bytes

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ServerError(f"{self.path}: timeline store is not open")
        return self._db

    def start_session(self, hello: Hello, *, started_at: float) -> None:
        """Register this server run (its session id, model and labels)."""
        db = self._conn()
        try:
            with db:
                db.execute(
                    "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        hello.session,
                        started_at,
                        hello.model,
                        json.dumps(list(hello.labels)),
                        hello.window_s,
                        hello.hop_s,
                        hello.sample_rate_hz,
                    ),
                )
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc
        self.session = hello.session

    def record(self, message: Message, frame: str) -> None:
        """Append one event (its wire frame) and commit before returning."""
        self.record_rows((store_row(message, frame),))

    def record_rows(self, rows: Iterable[StoreRow]) -> None:
        """Append events in order, all in one transaction, committed before returning.

        Any SQLite error is a ServerError with SQLite's reason; then none of them is written.
        """
        if self.session is None:
            raise ServerError("start_session() must come before record()")
        db = self._conn()
        session = self.session
        values = [(session, *row) for row in rows]
        try:
            with db:  # one transaction, committed on exit (rolled back on an error)
                db.executemany(
                    "INSERT INTO events (session, type, stream, seq, wall_time, frame) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    values,
                )
        except sqlite3.Error as exc:
            raise _db_error(self.path, exc) from exc
        self.events_recorded += len(values)

    def close(self) -> None:
        """Checkpoint and close the file. Idempotent."""
        self._closed = True
        db, self._db = self._db, None
        if db is None:
            return
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # a reader holding the WAL: the data is safe anyway
            logger.warning("timeline store checkpoint skipped: %s", exc)
        finally:
            db.close()
        logger.info("timeline store %s closed (%d events this run)", self.path,
                    self.events_recorded)

    def __enter__(self) -> TimelineStore:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_readonly(path: str | Path) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise ServerError(f"{path}: no such timeline store")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        db.execute("SELECT count(*) FROM sessions").fetchone()
    except sqlite3.Error as exc:
        raise ServerError(f"{path}: not a timeline store ({exc})") from exc
    if version != SCHEMA_VERSION:
        db.close()
        raise ServerError(f"{path}: timeline store schema {version}, expected {SCHEMA_VERSION}")
    return db


def read_sessions(path: str | Path) -> list[SessionInfo]:
    """Every session recorded in a store, oldest first."""
    db = _open_readonly(path)
    try:
        rows = db.execute(
            "SELECT session, started_at, model, labels, window_s, hop_s, sample_rate_hz "
            "FROM sessions ORDER BY started_at, rowid"
        ).fetchall()
    except sqlite3.Error as exc:
        raise _db_error(Path(path), exc) from exc
    finally:
        db.close()
    return [
        SessionInfo(s, float(t), m, tuple(json.loads(labels)), float(w), float(h), int(r))
        for s, t, m, labels, w, h, r in rows
    ]


def read_events(
    path: str | Path,
    *,
    session: str | None = None,
    stream: str | None = None,
    types: tuple[str, ...] = (),
) -> Iterator[tuple[str, Message]]:
    """``(session, message)`` for recorded events in recording order, optionally filtered."""
    db = _open_readonly(path)
    query = "SELECT session, frame FROM events WHERE 1=1"
    params: list[object] = []
    if session is not None:
        query += " AND session = ?"
        params.append(session)
    if stream is not None:
        query += " AND stream = ?"
        params.append(stream)
    if types:
        query += f" AND type IN ({', '.join('?' * len(types))})"
        params.extend(types)
    query += " ORDER BY id"
    try:
        for session_id, frame in db.execute(query, params):
            try:
                yield session_id, decode(frame)
            except MessageError as exc:
                raise ServerError(f"{path}: a recorded event cannot be decoded ({exc})") from exc
    except sqlite3.Error as exc:
        raise _db_error(Path(path), exc) from exc
    finally:
        db.close()


def _session_info(row: Sequence[Any]) -> SessionInfo:
    session, started_at, model, labels, window_s, hop_s, rate = row
    return SessionInfo(str(session), float(started_at), str(model), tuple(json.loads(labels)),
                       float(window_s), float(hop_s), int(rate))


_SESSION_COLUMNS = "session, started_at, model, labels, window_s, hop_s, sample_rate_hz"


def read_session(path: str | Path, session: str) -> SessionInfo | None:
    """One recorded session by id (None when the store has no such session)."""
    db = _open_readonly(path)
    try:
        row = db.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session = ?",
                         (session,)).fetchone()
    except sqlite3.Error as exc:
        raise _db_error(Path(path), exc) from exc
    finally:
        db.close()
    return None if row is None else _session_info(row)


def read_session_page(
    path: str | Path, *, limit: int, before: int | None = None
) -> list[tuple[int, SessionInfo]]:
    """Up to ``limit`` sessions, newest first, each with its cursor (the row's rowid).

    ``before`` (a cursor from an earlier page) returns only the sessions recorded before it.
    """
    db = _open_readonly(path)
    query = f"SELECT rowid, {_SESSION_COLUMNS} FROM sessions"
    params: list[object] = []
    if before is not None:
        query += " WHERE rowid < ?"
        params.append(before)
    query += " ORDER BY rowid DESC LIMIT ?"
    params.append(limit)
    try:
        rows = db.execute(query, params).fetchall()
    except sqlite3.Error as exc:
        raise _db_error(Path(path), exc) from exc
    finally:
        db.close()
    return [(int(row[0]), _session_info(row[1:])) for row in rows]


def _decoded(path: str | Path, frame: str) -> Message:
    try:
        return decode(frame)
    except MessageError as exc:
        raise ServerError(f"{path}: a recorded event cannot be decoded ({exc})") from exc


def read_stream_openings(
    path: str | Path,
    *,
    limit: int,
    session: str | None = None,
    call: str | None = None,
    before: int | None = None,
    skip_open_of: str | None = None,
) -> list[StoredStream]:
    """Up to ``limit`` stream openings, newest first, each with the close that ended it.

    ``session`` keeps one server run's; ``call`` the streams named ``call`` or ``call/...``
    (a pushed call's channels); ``before`` (an ``open_id``) the openings recorded before it;
    ``skip_open_of`` leaves out that session's streams without a close (the running server's
    live streams). The close of an opening is the stream's first ``stream_close`` after it.
    """
    inner = (
        "SELECT o.id AS id, o.session AS session, o.frame AS frame, (SELECT c.frame FROM "
        "events c WHERE c.session = o.session AND c.stream = o.stream AND "
        "c.type = 'stream_close' AND c.id > o.id ORDER BY c.id LIMIT 1) AS closed "
        "FROM events o WHERE o.type = 'stream_open'"
    )
    params: list[object] = []
    if session is not None:
        inner += " AND o.session = ?"
        params.append(session)
    if call is not None:
        inner += " AND (o.stream = ? OR substr(o.stream, 1, ?) = ?)"
        params.extend((call, len(call) + 1, call + "/"))
    if before is not None:
        inner += " AND o.id < ?"
        params.append(before)
    query = f"SELECT id, session, frame, closed FROM ({inner})"
    if skip_open_of is not None:
        query += " WHERE session != ? OR closed IS NOT NULL"
        params.append(skip_open_of)
    query += " ORDER BY id DESC LIMIT ?"
    params.append(limit)
    db = _open_readonly(path)
    try:
        rows = db.execute(query, params).fetchall()
    except sqlite3.Error as exc:
        raise _db_error(Path(path), exc) from exc
    finally:
        db.close()
    found: list[StoredStream] = []
    for open_id, session_id, opened, closed in rows:
        open_message = _decoded(path, opened)
        close_message = None if closed is None else _decoded(path, closed)
        if not isinstance(open_message, StreamOpenMessage) or not (
            close_message is None or isinstance(close_message, StreamCloseMessage)
        ):
            raise ServerError(f"{path}: event {open_id} is not the stream_open it is filed as")
        found.append(StoredStream(int(open_id), str(session_id), open_message, close_message))
    return found


def read_stream_events(
    path: str | Path, *, session: str, stream: str, limit: int, after: int = 0
) -> list[tuple[int, str, str]]:
    """One run of a stream: ``(id, type, frame)`` of its events after event id ``after``.

    At most ``limit`` events in recording order, ending with the run's ``stream_close`` when
    it is among them (the events of a later run of the same stream name are not included).
    Frames are the exact recorded wire text, fields unknown to this version included.
    """
    db = _open_readonly(path)
    try:
        rows = db.execute(
            "SELECT id, type, frame FROM events WHERE session = ? AND stream = ? AND id > ? "
            "ORDER BY id LIMIT ?",
            (session, stream, after, limit),
        ).fetchall()
    except sqlite3.Error as exc:
        raise _db_error(Path(path), exc) from exc
    finally:
        db.close()
    events: list[tuple[int, str, str]] = []
    for event_id, kind, frame in rows:
        events.append((int(event_id), str(kind), str(frame)))
        if kind == StreamCloseMessage.TYPE:
            break
    return events



def choose_sessions(
    store_path: str | Path, *, session: str | None = None, latest: bool = False
) -> list[SessionInfo]:
    """The sessions to export: the one with id ``session``, the newest (``latest``), or all.

    They must share the same labels, since a timeline has one probability column per label.
    """
    sessions = read_sessions(store_path)
    if not sessions:
        raise ServerError(f"{store_path}: the store holds no sessions")
    if session is not None and latest:
        raise ServerError("choose one session id or the latest session, not both")
    if latest:
        chosen = [sessions[-1]]
    elif session is not None:
        chosen = [s for s in sessions if s.session == session]
        if not chosen:
            known = ", ".join(s.session for s in sessions)
            raise ServerError(f"{store_path}: no session {session!r}; it has {known}")
    else:
        chosen = sessions
    label_sets = {s.labels for s in chosen}
    if len(label_sets) > 1:
        raise ServerError(
            f"{store_path}: sessions use different labels {sorted(label_sets)}; "
            "pick one with --session"
        )
    return chosen


#: the stored event types a timeline has rows for
_TIMELINE_TYPES = (WindowMessage.TYPE, UtteranceMessage.TYPE, AlertMessage.TYPE)


def export_events(
    store_path: str | Path,
    files: TimelineFiles,
    sessions: Sequence[SessionInfo],
    *,
    stream: str | None = None,
) -> None:
    """Write the windows, utterances and alerts of ``sessions`` (optionally of one stream) to
    an open :class:`~streamer.protocol.timeline.TimelineFiles`, in recording order."""
    wanted = {s.session for s in sessions}
    try:
        for session_id, message in read_events(
            store_path,
            session=sessions[0].session if len(sessions) == 1 else None,
            stream=stream,
            types=_TIMELINE_TYPES,
        ):
            if session_id in wanted:
                files.write(message, session=session_id)
    except TimelineError as exc:  # a row that does not fit the timeline: one ServerError
        raise ServerError(str(exc)) from exc


def export_timeline(
    store_path: str | Path,
    out: str | Path,
    *,
    stream: str | None = None,
    session: str | None = None,
    latest: bool = False,
    append: bool = False,
) -> int:
    """Write the windows, utterances and alerts of a store as a CSV or JSONL timeline (``out``
    and its siblings, see :func:`~streamer.protocol.timeline.kind_path`); the rows written.

    ``session`` (an id) or ``latest`` chooses one session, neither every one (see
    :func:`choose_sessions`). A timeline file holding rows already is refused unless
    ``append``; appending leaves out the rows already there.
    """
    chosen = choose_sessions(store_path, session=session, latest=latest)
    try:
        with TimelineFiles(out, chosen[0].labels, append=append) as files:
            export_events(store_path, files, chosen, stream=stream)
    except TimelineError as exc:  # the timeline file (suffix, labels, folder): one ServerError
        raise ServerError(str(exc)) from exc
    return sum(files.written.values())
