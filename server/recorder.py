"""Recording published events in the timeline store, surviving store failures (event loop).

:class:`StoreRecorder` commits each event to the :class:`~server.store.TimelineStore` before the
hub queues it for any client, so whatever a client has received is on disk. Store failures never
stop the server: a failed write (disk full, I/O error, locked file) is counted (``errors``), the
event is kept in a bounded retry buffer (``retry_events``; full: the oldest is dropped and
counted in ``events_dropped``), and writes are retried at most every ``retry_s`` (on the next
event or health check), in order, resuming by themselves once the store can write again.
Meanwhile ``error`` holds the reason (``/healthz`` says ``ok: false``) and the log says so at
most once per ``log_interval_s``. Without a store every call is a no-op. Any
:class:`RecordingStore` will do: the SQLite :class:`~server.store.TimelineStore` or the
PostgreSQL :class:`~server.store_pg.PostgresTimelineStore`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from server.errors import ServerError
from server.store import StoreRow, store_row
from streamer.protocol.messages import Hello, Message

__all__ = ["RecordingStore", "StoreRecorder"]

logger = logging.getLogger(__name__)


class RecordingStore(Protocol):
    """What the recorder needs of a store: its place (for health), a session, committed rows."""

    @property
    def path(self) -> str | Path: ...

    def start_session(self, hello: Hello, *, started_at: float) -> None: ...

    def record_rows(self, rows: Iterable[StoreRow]) -> None: ...


class StoreRecorder:
    """Commit-or-keep for one store (or none). Loop-bound; see the module doc."""

    def __init__(
        self,
        store: RecordingStore | None,
        *,
        retry_events: int = 10_000,
        retry_s: float = 1.0,
        log_interval_s: float = 30.0,
    ) -> None:
        self.store = store
        self.retry_events = retry_events
        self.retry_s = retry_s
        self.log_interval_s = log_interval_s
        self.errors = 0  # failed store writes (each retry that fails counts)
        self.events_dropped = 0  # events the store never got (retry buffer full)
        self.error: str | None = None  # the last write failure while not recovered
        self._pending: deque[StoreRow] = deque()
        self._tried_at = 0.0
        self._logged_at: float | None = None

    @property
    def pending(self) -> int:
        """Events kept for retry."""
        return len(self._pending)

    def start_session(self, hello: Hello, *, started_at: float) -> None:
        """Register the run's session (its labels and model) in the store."""
        if self.store is not None:
            self.store.start_session(hello, started_at=started_at)

    def record(self, message: Message, text: str) -> None:
        """Commit one event, or keep it for retry while the store cannot write."""
        store = self.store
        if store is None:
            return
        row = store_row(message, text)
        if self._pending:
            self.retry()  # the older events first (rate-limited while the store fails)
        if not self._pending:
            try:
                store.record_rows((row,))
                return
            except ServerError as exc:
                self._failed(exc, time.monotonic())
        self._keep(row)

    def retry(self) -> None:
        """Write the buffered events in order, at most every ``retry_s``."""
        store = self.store
        now = time.monotonic()
        if store is None or not self._pending or now - self._tried_at < self.retry_s:
            return
        self._tried_at = now
        rows = tuple(self._pending)
        try:
            store.record_rows(rows)
        except ServerError as exc:
            self._failed(exc, now)
            return
        self._pending.clear()
        logger.warning("timeline store writes resumed: %d buffered event(s) written, %d dropped "
                       "while it failed (%d failed write(s) so far)", len(rows),
                       self.events_dropped, self.errors)
        self.error = None
        self._logged_at = None

    def health(self) -> dict[str, Any]:
        """The store's part of ``/healthz`` (after one rate-limited retry of a failed store)."""
        self.retry()
        return {
            "store": None if self.store is None else str(self.store.path),
            "store_error": self.error,
            "store_errors": self.errors,
            "store_pending": len(self._pending),
            "store_events_dropped": self.events_dropped,
        }

    def _keep(self, row: StoreRow) -> None:
        if len(self._pending) >= self.retry_events:
            self._pending.popleft()
            self.events_dropped += 1
        self._pending.append(row)

    def _failed(self, exc: ServerError, now: float) -> None:
        self.errors += 1
        self._tried_at = now
        self.error = str(exc)
        logged = self._logged_at
        if logged is None or now - logged >= self.log_interval_s:
            self._logged_at = now
            logger.error("timeline store write failed: %s; live events still go to clients, "
                         "%d kept for retry (at most %d), %d dropped, %d failed write(s)",
                         exc, len(self._pending) + 1, self.retry_events,
                         self.events_dropped, self.errors)
