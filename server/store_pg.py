"""The timeline store on PostgreSQL, one database for many nodes (event loop; reads: any thread).

The SQLite store (:mod:`server.store`) stays the embedded default; this one has the same tables,
rows and guarantees, in the PostgreSQL schema (namespace) ``emotion_monitor`` of any database::

    emotion_monitor.store_version(version integer)        -- one row: SCHEMA_VERSION
    emotion_monitor.sessions(session text PRIMARY KEY, started_at float8, model text,
                             labels text -- JSON list, window_s float8, hop_s float8,
                             sample_rate_hz integer, id bigint -- SQLite's rowid)
    emotion_monitor.events(id bigint PRIMARY KEY -- identity, in recording order, session text,
                           type text, stream text, seq bigint, wall_time float8, frame text)

Many servers ("nodes") may write to one database at once: each run writes only its own session
(ids are unique per run) and event ids come from one identity sequence, so nothing conflicts.
Creating the tables is serialised by an advisory lock; an existing store is only checked, so a
node's role needs no CREATE right once the tables exist.

:meth:`PostgresTimelineStore.record_rows` is one ``INSERT`` statement, committed by the server
(``synchronous_commit`` as the database sets it; on by default) before it returns: whatever a
client has received is in the database, even if the node is killed a moment later. Like the
SQLite store, any failure is a :class:`~server.errors.ServerError` with the reason, nothing is
half-written, and :class:`~server.recorder.StoreRecorder` keeps and retries the events. A lost
connection is opened again on the next write. When a connection broke during a write, whether
that write committed is settled on the next connection (by counting the session's events), so
a retry neither loses nor duplicates events. Waits on the event loop are bounded: a write by
``write_timeout_s`` (``statement_timeout``, and ``tcp_user_timeout`` on TCP), a connect by
``connect_timeout_s``, and after a connect that failed slowly (a server that does not answer)
no new one is tried for 9 times as long, so at most a tenth of the loop's time goes to it.

Passwords never appear in a log line or an error: every message names the store by its URL
with the password shown as ``***`` and has any password scrubbed out. The password comes from
:attr:`PostgresStoreConfig.password` (the CLI reads ``--store-password-file``) or from libpq
itself (``PGPASSWORD``, ``~/.pgpass``, a service file: ``postgresql:///?service=NAME``).

:class:`PostgresTimelineReader` is the read side (``read_sessions`` / ``read_events``, as in
:mod:`server.store`), each call on its own read-only connection; passed as the store to
:func:`server.store.export_timeline` it exports from PostgreSQL. The driver is psycopg 3, of the
extra ``emotion-monitor[postgres]``; without it, opening a store is a
:class:`~streamer.extras.MissingExtraError` naming the extra. Importing this module loads no
driver.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from server.errors import ServerError
from server.store import SCHEMA_VERSION, SessionInfo, StoreRow, store_row
from streamer.extras import POSTGRES_EXTRA, require_extra
from streamer.protocol.messages import Hello, Message, MessageError, decode

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "PG_SCHEMA",
    "POSTGRES_SCHEMES",
    "PostgresStoreConfig",
    "PostgresTimelineReader",
    "PostgresTimelineStore",
    "after_committed",
    "is_postgres_url",
    "redact_store_url",
    "require_driver",
]

logger = logging.getLogger(__name__)

#: the PostgreSQL schema (namespace) that holds the store's tables
PG_SCHEMA = "emotion_monitor"
#: URL schemes that name a PostgreSQL store (as libpq spells them)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: the driver module (of the ``postgres`` extra)
_DRIVER = "psycopg"
#: advisory lock key that serialises creating the tables ("emomon" in ASCII)
_SCHEMA_LOCK = 0x656D6F6D6F6E
#: after a connect that failed in t seconds, none is tried for this many times t
_CONNECT_HOLD_OFF = 9.0

_DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}",
    f"CREATE TABLE IF NOT EXISTS {PG_SCHEMA}.store_version (version integer NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS {PG_SCHEMA}.sessions (
        session text PRIMARY KEY,
        started_at double precision NOT NULL,
        model text NOT NULL,
        labels text NOT NULL,
        window_s double precision NOT NULL,
        hop_s double precision NOT NULL,
        sample_rate_hz integer NOT NULL,
        id bigint GENERATED ALWAYS AS IDENTITY UNIQUE
    )""",
    f"""CREATE TABLE IF NOT EXISTS {PG_SCHEMA}.events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        session text NOT NULL REFERENCES {PG_SCHEMA}.sessions(session),
        type text NOT NULL,
        stream text,
        seq bigint,
        wall_time double precision,
        frame text NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS events_by_stream ON {PG_SCHEMA}.events"
    "(session, stream, type, seq)",
)
_SESSION_COLUMNS = "session, started_at, model, labels, window_s, hop_s, sample_rate_hz"
_INSERT_SESSION = (f"INSERT INTO {PG_SCHEMA}.sessions ({_SESSION_COLUMNS}) "
                   "VALUES (%s, %s, %s, %s, %s, %s, %s)")
# one statement for any number of rows: atomic, one round trip; ORDER BY n keeps their order
_INSERT_EVENTS = (
    f"INSERT INTO {PG_SCHEMA}.events (session, type, stream, seq, wall_time, frame) "
    "SELECT %s, type, stream, seq, wall_time, frame FROM unnest("
    "%s::text[], %s::text[], %s::bigint[], %s::float8[], %s::text[]) "
    "WITH ORDINALITY AS r(type, stream, seq, wall_time, frame, n) ORDER BY n"
)


def is_postgres_url(text: str) -> bool:
    """Whether ``text`` names a PostgreSQL store (``postgresql://...`` or ``postgres://...``)."""
    return text.strip().lower().startswith(POSTGRES_SCHEMES)


def _split_store_url(url: str) -> tuple[str, str, str, str]:
    """``scheme://``, ``user[:password]@``, hosts and path, query: split by hand (any text)."""
    scheme, sep, rest = url.partition("://")
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    userinfo, at, hosts = rest[:cut].rpartition("@")
    path, _, query = rest[cut:].partition("?")
    return scheme + sep, userinfo + at, hosts + path, query


def redact_store_url(url: str) -> str:
    """``url`` with any password (in the user part or a ``password=`` parameter) as ``***``."""
    scheme, userinfo, rest, query = _split_store_url(url)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***@"
    pairs = [("password=***" if unquote(pair.partition("=")[0]) == "password" else pair)
             for pair in query.split("&")] if query else []
    return scheme + userinfo + rest + ("?" + "&".join(pairs) if pairs else "")


def _url_passwords(url: str) -> tuple[str, ...]:
    """The passwords written in ``url``, as written, decoded and encoded (for scrubbing)."""
    _, userinfo, _, query = _split_store_url(url)
    userinfo = userinfo.removesuffix("@")
    found = [userinfo.split(":", 1)[1]] if ":" in userinfo else []
    found += [value for key, _, value in (pair.partition("=") for pair in query.split("&"))
              if unquote(key) == "password"]
    found = [p for p in found if p]
    return tuple(dict.fromkeys([*found, *(unquote(p) for p in found),
                                *(quote(p, safe="") for p in found)]))


def require_driver() -> None:
    """MissingExtraError (exit 2) naming ``emotion-monitor[postgres]`` when psycopg is absent."""
    require_extra(_DRIVER, purpose="a PostgreSQL timeline store (--store postgresql://...)",
                  extra=POSTGRES_EXTRA)


@dataclass(frozen=True, slots=True, repr=False)
class PostgresStoreConfig:
    """Where the PostgreSQL store is and how long the event loop may wait for it.

    - ``url``: a libpq URL, ``postgresql://[user@]host[:port][,host2...]/dbname[?param=...]``
      (libpq's environment variables fill in what it leaves out). A password in it works but
      is discouraged (the CLI refuses it: command lines are visible to other users).
    - ``password``: the password (None: libpq's ``PGPASSWORD``, ``~/.pgpass`` or service file).
    - ``connect_timeout_s``: one connection attempt (libpq's minimum is 2 s).
    - ``write_timeout_s``: one write (``statement_timeout``, ``tcp_user_timeout``).

    Its repr and :attr:`redacted` never show the password.
    """

    url: str
    password: str | None = None
    connect_timeout_s: float = 3.0
    write_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not is_postgres_url(self.url):
            shown = redact_store_url(self.url) if isinstance(self.url, str) else repr(self.url)
            raise ServerError(
                f"a PostgreSQL store URL starts with postgresql:// or postgres://, got {shown}"
            )
        if self.password is not None and (not isinstance(self.password, str)
                                          or not self.password):
            raise ServerError("the store password must be a non-empty string or None")
        if not 2 <= self.connect_timeout_s <= 600:
            raise ServerError(
                f"store connect_timeout_s must be 2-600 s, got {self.connect_timeout_s!r}"
            )
        if not 0.05 <= self.write_timeout_s <= 600:
            raise ServerError(
                f"store write_timeout_s must be 0.05-600 s, got {self.write_timeout_s!r}"
            )

    def __repr__(self) -> str:
        return f"PostgresStoreConfig({self.redacted!r})"

    @property
    def redacted(self) -> str:
        """The URL with its password (if any) shown as ``***``: for logs and errors."""
        return redact_store_url(self.url)

    @property
    def url_has_password(self) -> bool:
        """Whether the URL itself holds a password."""
        return bool(_url_passwords(self.url))

    def secrets(self) -> tuple[str, ...]:
        """Every form of the password this config knows, longest first (for scrubbing)."""
        found = [*_url_passwords(self.url), *([self.password] if self.password else [])]
        return tuple(sorted(set(found), key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """``text`` on one line, with the URL redacted and any password replaced by ``***``."""
        text = text.replace(self.url, self.redacted)
        for secret in self.secrets():
            text = text.replace(secret, "***")
        return "; ".join(line.strip() for line in text.splitlines() if line.strip())

    def connect_params(self, *, writer: bool) -> dict[str, Any]:
        """libpq parameters: the URL's, our timeouts where it sets none, the password."""
        from psycopg import Error
        from psycopg.conninfo import conninfo_to_dict

        try:
            params: dict[str, Any] = dict(conninfo_to_dict(self.url))
        except Error as exc:
            raise ServerError(f"{self.redacted}: bad store URL ({self.scrub(str(exc))})") from None
        params.setdefault("connect_timeout", str(math.ceil(self.connect_timeout_s)))
        params.setdefault("application_name", "emotion-monitor")
        if writer:
            params.setdefault("tcp_user_timeout", str(math.ceil(self.write_timeout_s * 1000)))
        if self.password is not None:
            params["password"] = self.password
        return params


def after_committed(rows: Sequence[StoreRow], committed: Sequence[StoreRow]
                    ) -> Sequence[StoreRow]:
    """``rows`` less their first ones that are the last of ``committed`` (pure).

    A retry repeats the rows of a write whose commit did go through, less the oldest its
    buffer dropped meanwhile: those must not be written twice.
    """
    for start in range(len(committed)):
        tail = committed[start:]
        if len(tail) <= len(rows) and tuple(rows[: len(tail)]) == tuple(tail):
            return rows[len(tail):]
    return rows


def _connect(config: PostgresStoreConfig, *, writer: bool) -> psycopg.Connection[Any]:
    """A new autocommit connection (ServerError with the scrubbed reason when it fails)."""
    require_driver()
    import psycopg

    params = config.connect_params(writer=writer)
    try:
        return psycopg.connect(autocommit=True, **params)
    except psycopg.Error as exc:
        # from None: the driver's own exception may quote the connection string
        raise ServerError(f"{config.redacted}: cannot connect to the timeline store "
                          f"({config.scrub(str(exc))})") from None


def _schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The store's version in this database (None: no store here yet)."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                       (f"{PG_SCHEMA}.store_version",)).fetchone()
    if row is None or not row[0]:
        return None
    found = conn.execute(f"SELECT version FROM {PG_SCHEMA}.store_version").fetchone()
    return None if found is None else int(found[0])


def _ensure_schema(conn: psycopg.Connection[Any], where: str) -> None:
    """Create the tables when missing (one node at a time), or check their version."""
    version = _schema_version(conn)
    if version is None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _DDL:
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {PG_SCHEMA}.store_version (version) SELECT %s "
                f"WHERE NOT EXISTS (SELECT 1 FROM {PG_SCHEMA}.store_version)",
                (SCHEMA_VERSION,),
            )
        version = _schema_version(conn)
    if version != SCHEMA_VERSION:
        raise ServerError(f"{where}: timeline store schema {version}, this version writes "
                          f"{SCHEMA_VERSION}; use another database")


class PostgresTimelineStore:
    """Appends the events of one server run (session) to a PostgreSQL store. Loop-bound.

    Usage (as :class:`server.store.TimelineStore`)::

        with PostgresTimelineStore(PostgresStoreConfig(url)) as store:
            store.start_session(hello, started_at=time.time())
            store.record(message, frame)   # committed when this returns

    ``path`` is the store's redacted URL (for ``/healthz`` and logs). ``close()`` is
    idempotent; recording after close is refused.
    """

    def __init__(self, config: PostgresStoreConfig | str) -> None:
        self.config = config if isinstance(config, PostgresStoreConfig) else (
            PostgresStoreConfig(config))
        self.path = self.config.redacted
        self.session: str | None = None
        self.events_recorded = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._session_values: tuple[object, ...] | None = None
        self._in_doubt: tuple[StoreRow, ...] = ()  # the rows of a write cut off mid-way
        self._connect_after = 0.0  # monotonic: no connect attempt before this
        self._connect_error = ""
        self._opened = False
        self._closed = False

    def open(self) -> PostgresTimelineStore:
        """Connect, create the tables when missing (or check them); called by ``__enter__``."""
        if self._conn is not None:
            return self
        if self._closed:
            raise ServerError(f"{self.path}: timeline store already closed")
        self._conn = self._connect()
        self._opened = True
        logger.info("timeline store %s open", self.path)
        return self

    def _connect(self) -> psycopg.Connection[Any]:
        """A writer connection with the tables checked; after a slow failure, none for a while."""
        import psycopg

        started = time.monotonic()
        if started < self._connect_after:
            raise ServerError(f"{self._connect_error}; next try in "
                              f"{self._connect_after - started:.1f} s")
        try:
            conn = _connect(self.config, writer=True)
        except ServerError as exc:
            failed = time.monotonic()
            self._connect_after = failed + _CONNECT_HOLD_OFF * (failed - started)
            self._connect_error = str(exc)
            raise
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false)",
                         (str(math.ceil(self.config.write_timeout_s * 1000)),))
            _ensure_schema(conn, self.path)
        except psycopg.Error as exc:
            conn.close()
            raise self._error(exc) from None
        except ServerError:
            conn.close()
            raise
        return conn

    def _error(self, exc: Exception) -> ServerError:
        return ServerError(f"{self.path}: timeline store error ({self.config.scrub(str(exc))})")

    def _writer(self) -> psycopg.Connection[Any]:
        """The open connection, or a new one (session row ensured, an in-doubt write settled)."""
        import psycopg

        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if self._closed or not self._opened:
            raise ServerError(f"{self.path}: timeline store is not open")
        conn = self._connect()
        try:
            if self._session_values is not None:
                conn.execute(_INSERT_SESSION + " ON CONFLICT (session) DO NOTHING",
                             self._session_values)
        except psycopg.Error as exc:
            conn.close()
            raise self._error(exc) from None
        self._conn = conn
        logger.warning("timeline store %s: connected again", self.path)
        return conn

    def start_session(self, hello: Hello, *, started_at: float) -> None:
        """Register this server run (its session id, model and labels)."""
        import psycopg

        values = (hello.session, started_at, hello.model, json.dumps(list(hello.labels)),
                  hello.window_s, hello.hop_s, hello.sample_rate_hz)
        conn = self._writer()
        try:
            conn.execute(_INSERT_SESSION, values)
        except psycopg.Error as exc:
            self._drop_if_broken(conn)
            raise self._error(exc) from None
        self._session_values = values
        self.session = hello.session

    def record(self, message: Message, frame: str) -> None:
        """Append one event (its wire frame) and commit before returning."""
        self.record_rows((store_row(message, frame),))

    def record_rows(self, rows: Iterable[StoreRow]) -> None:
        """Append events in order, in one statement, committed before returning.

        Any error is a ServerError with the scrubbed reason; then none of them is written.
        """
        import psycopg

        if self.session is None:
            raise ServerError("start_session() must come before record()")
        batch: Sequence[StoreRow] = tuple(rows)
        conn = self._writer()
        if self._in_doubt:
            batch = self._settle(conn, batch)
        if not batch:
            return
        columns = [list(column) for column in zip(*batch, strict=True)]
        try:
            conn.execute(_INSERT_EVENTS, (self.session, *columns))
        except psycopg.Error as exc:
            if self._drop_if_broken(conn):
                self._in_doubt = tuple(batch)
            raise self._error(exc) from None
        self.events_recorded += len(batch)

    def _settle(self, conn: psycopg.Connection[Any], rows: Sequence[StoreRow]
                ) -> Sequence[StoreRow]:
        """Whether the write cut off by a lost connection committed; ``rows`` less what did."""
        import psycopg

        try:
            found = conn.execute(f"SELECT count(*) FROM {PG_SCHEMA}.events WHERE session = %s",
                                 (self.session,)).fetchone()
        except psycopg.Error as exc:
            self._drop_if_broken(conn)
            raise self._error(exc) from None
        stored = 0 if found is None else int(found[0])
        doubt, self._in_doubt = self._in_doubt, ()
        if stored == self.events_recorded + len(doubt):
            self.events_recorded = stored
            logger.info("timeline store %s: the %d event(s) of the write cut off were "
                        "committed; not written again", self.path, len(doubt))
            return after_committed(rows, doubt)
        if stored != self.events_recorded:
            logger.warning("timeline store %s: session %s has %d event(s), %d expected",
                           self.path, self.session, stored, self.events_recorded)
            self.events_recorded = stored
        return rows

    def _drop_if_broken(self, conn: psycopg.Connection[Any]) -> bool:
        """Forget a connection that broke (the next write connects again); whether it did."""
        if not (conn.broken or conn.closed):
            return False
        conn.close()
        if self._conn is conn:
            self._conn = None
        return True

    def close(self) -> None:
        """Close the connection. Idempotent."""
        opened = self._opened and not self._closed
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if opened:
            logger.info("timeline store %s closed (%d events this run)", self.path,
                        self.events_recorded)

    def __enter__(self) -> PostgresTimelineStore:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PostgresTimelineReader:
    """The read side of a PostgreSQL store, as :mod:`server.store`'s read functions (any thread).

    Each call opens its own read-only connection. ``str()`` is the redacted URL, so messages
    that name the store (e.g. :func:`server.store.export_timeline`'s) never show a password.
    """

    def __init__(self, config: PostgresStoreConfig | str) -> None:
        self.config = config if isinstance(config, PostgresStoreConfig) else (
            PostgresStoreConfig(config))

    def __str__(self) -> str:
        return self.config.redacted

    def _open(self) -> psycopg.Connection[Any]:
        import psycopg

        conn = _connect(self.config, writer=False)
        try:
            conn.execute("SELECT set_config('default_transaction_read_only', 'on', false)")
            version = _schema_version(conn)
        except psycopg.Error as exc:
            conn.close()
            raise self._error(exc) from None
        if version != SCHEMA_VERSION:
            conn.close()
            if version is None:
                raise ServerError(f"{self}: no timeline store in this database "
                                  f"(schema {PG_SCHEMA} has no store_version table)")
            raise ServerError(f"{self}: timeline store schema {version}, "
                              f"expected {SCHEMA_VERSION}")
        return conn

    def _error(self, exc: Exception) -> ServerError:
        return ServerError(f"{self}: timeline store error ({self.config.scrub(str(exc))})")

    def read_sessions(self) -> list[SessionInfo]:
        """Every session recorded in the store, oldest first."""
        import psycopg

        conn = self._open()
        try:
            rows = conn.execute(f"SELECT {_SESSION_COLUMNS} FROM {PG_SCHEMA}.sessions "
                                "ORDER BY started_at, id").fetchall()
        except psycopg.Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()
        return [
            SessionInfo(s, float(t), m, tuple(json.loads(labels)), float(w), float(h), int(r))
            for s, t, m, labels, w, h, r in rows
        ]

    def read_events(
        self,
        *,
        session: str | None = None,
        stream: str | None = None,
        types: tuple[str, ...] = (),
    ) -> Iterator[tuple[str, Message]]:
        """``(session, message)`` for recorded events in recording order, optionally filtered."""
        import psycopg

        query = f"SELECT session, frame FROM {PG_SCHEMA}.events WHERE true"
        params: list[object] = []
        if session is not None:
            query += " AND session = %s"
            params.append(session)
        if stream is not None:
            query += " AND stream = %s"
            params.append(stream)
        if types:
            query += " AND type = ANY(%s)"
            params.append(list(types))
        query += " ORDER BY id"
        conn = self._open()
        try:
            for session_id, frame in conn.cursor().stream(query, params):
                try:
                    yield session_id, decode(frame)
                except MessageError as exc:
                    raise ServerError(
                        f"{self}: a recorded event cannot be decoded ({exc})") from exc
        except psycopg.Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()
