"""The timeline logger behind ``emotion-monitor log`` (the CLI's event loop).

:class:`TimelineLogger` is the core: it takes events from an :class:`~client.api.EventClient`
and appends one row per window to a CSV or JSONL file through
:class:`streamer.protocol.timeline.TimelineWriter` (which flushes every row). It writes a window at
most once: windows are named by ``(session, stream, seq)``, and a server may resend a backlog of
recent windows after a reconnect. When the file already exists its rows are read back first,
so a restarted logger does not duplicate them either.

A resent window is the very same message, so its ``wall_time`` matches too; a window whose key
is known but whose ``wall_time`` differs (a stream name reused within one server run restarts
its sequence numbers) is written anyway, with a warning, rather than lost.

Only the keys of the current server session are kept once a Hello arrives (a session id names
one server run and never comes back), so memory stays bounded by one run, not the file.
The file is opened at the first Hello, because its columns depend on the model's labels; a
server whose labels differ from the file's is a ClientError (rows of different models never
mix in one file). The timeline format's own errors (``TimelineError``: a bad suffix, an
unreadable or foreign file) reach the caller as ClientError too, with the same message, so
every problem of the logger is one kind of error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from client.api import ClientEvent, EventClient
from client.errors import ClientError
from streamer.protocol.errors import TimelineError
from streamer.protocol.messages import Hello, WindowMessage
from streamer.protocol.timeline import TimelineWriter, iter_timeline, row_key, timeline_format

__all__ = ["TimelineLogger", "log_events"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _client_errors() -> Iterator[None]:
    """Re-raise the timeline format's TimelineError as the client's ClientError (same text)."""
    try:
        yield
    except TimelineError as exc:
        raise ClientError(str(exc)) from exc


class TimelineLogger:
    """Appends each window of a live event stream once to a timeline file.

    Usage::

        with TimelineLogger("out.csv") as timeline:
            async with EventClient(url) as client:
                await log_events(client, timeline)

    Opening checks the suffix and folder and reads back an existing file (ClientError if it is
    not a timeline). ``close()`` is idempotent.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with _client_errors():
            self.format = timeline_format(self.path)
        #: rows appended by this logger
        self.rows_written = 0
        #: windows skipped because their (session, stream, seq) was already in the file
        self.duplicates_skipped = 0
        # session -> {(stream, seq): wall times written under that key}
        self._seen: dict[str, dict[tuple[str, int], set[float]]] = {}
        #: windows written although their key was in the file already (a reused stream name)
        self.key_collisions = 0
        self._file_labels: tuple[str, ...] | None = None
        self._writer: TimelineWriter | None = None
        self._session: str | None = None
        self._labels: tuple[str, ...] = ()
        self._opened = False

    @property
    def session(self) -> str | None:
        """The session of the Hello most recently seen."""
        return self._session

    def open(self) -> TimelineLogger:
        """Validate the path and read back an existing file's keys; called by ``__enter__``."""
        if self._opened:
            return self
        with _client_errors():
            self._read_back()
        self._opened = True
        return self

    def _read_back(self) -> None:
        """Check the path; note the keys and labels of the rows an existing file holds."""
        parent = self.path.parent
        if not parent.is_dir():
            raise ClientError(f"{self.path}: folder {parent} does not exist")
        if self.path.is_dir():
            raise ClientError(f"{self.path}: is a folder, expected a .csv or .jsonl file")
        if self.path.exists():
            self._drop_torn_tail()
            rows = 0
            for row in iter_timeline(self.path):
                try:
                    session, stream, seq = row_key(row)
                except (KeyError, ValueError) as exc:
                    raise ClientError(f"{self.path}: not a timeline row: {row!r}") from exc
                walls = self._seen.setdefault(session, {}).setdefault((stream, seq), set())
                walls.add(float(row["wall_time"]))
                if self._file_labels is None:
                    self._file_labels = tuple(name[2:] for name in row if name.startswith("p_"))
                rows += 1
            logger.info("resuming %s: %d rows already there", self.path, rows)

    def _drop_torn_tail(self) -> None:
        """Cut a last line without its newline (a crash mid-row) so appending starts clean."""
        try:
            with self.path.open("rb+") as handle:
                data = handle.read()
                if not data or data.endswith(b"\n"):
                    return
                keep = data.rfind(b"\n") + 1
                handle.truncate(keep)
        except OSError as exc:
            raise ClientError(f"{self.path}: cannot open timeline ({exc.strerror or exc})") from exc
        logger.warning("%s: dropped a torn last row (%d bytes)", self.path, len(data) - keep)

    def _on_hello(self, hello: Hello) -> None:
        labels = tuple(hello.labels)
        expected = self._writer.labels if self._writer is not None else self._file_labels
        if expected is not None and labels != expected:
            raise ClientError(
                f"{self.path}: the server's labels {list(labels)} differ from the timeline's "
                f"{list(expected)}; log to a new file"
            )
        if hello.session != self._session:
            # keep only this run's keys: other sessions cannot send windows any more
            self._seen = {hello.session: self._seen.get(hello.session, {})}
            self._session = hello.session
        self._labels = labels
        if self._writer is None:
            with _client_errors():
                self._writer = TimelineWriter(self.path, labels).open()

    def handle(self, event: ClientEvent) -> bool:
        """Fold one event in; True when it appended a row."""
        if not self._opened:
            raise ClientError(f"{self.path}: timeline logger is not open")
        if isinstance(event, Hello):
            self._on_hello(event)
            return False
        if not isinstance(event, WindowMessage):
            return False
        if self._writer is None or self._session is None:
            logger.warning("window %s#%d before any hello; skipped", event.stream, event.seq)
            return False
        seen = self._seen[self._session]
        key = (event.stream, event.seq)
        known = seen.get(key)
        if known is not None:
            if event.wall_time in known:
                self.duplicates_skipped += 1
                logger.debug("skipping duplicate window %s#%d", event.stream, event.seq)
                return False
            # same key, another window: a stream name reused in this session restarts its
            # sequence numbers. Keep the window (losing data is worse than a repeated key).
            self.key_collisions += 1
            logger.warning(
                "window %s#%d of session %s repeats a key already in %s (stream reopened?); "
                "writing it anyway",
                event.stream,
                event.seq,
                self._session,
                self.path,
            )
        with _client_errors():
            self._writer.write_window(event, session=self._session)
        seen.setdefault(key, set()).add(event.wall_time)
        self.rows_written += 1
        logger.debug("wrote %s %s#%d", self._session, event.stream, event.seq)
        return True

    def close(self) -> None:
        """Flush and close the file; safe to call more than once."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            logger.info(
                "%s: %d rows written, %d duplicates skipped",
                self.path,
                self.rows_written,
                self.duplicates_skipped,
            )

    def __enter__(self) -> TimelineLogger:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def log_events(client: EventClient, timeline: TimelineLogger) -> None:
    """Append every window ``client`` yields to ``timeline`` until the client ends."""
    async for event in client.events():
        timeline.handle(event)
