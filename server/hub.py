"""The event hub: engine events -> store -> client queues (event loop; ``sink`` from any thread).

The engine calls :meth:`EventHub.sink` from its worker or feeding threads; ``sink`` only hands
the event to the loop with ``call_soon_threadsafe``, so it is cheap and never blocks the engine.
On the loop each event is converted to its wire message, encoded once, **recorded in the store
(committed)**, and only then queued for the clients: whatever a client has received is on disk.
Events from one thread keep their order (``call_soon_threadsafe`` is FIFO).

The hub also knows what a new client needs: the ``hello`` (session id, model, labels, window,
hop, live streams) and the backlog; and it publishes periodic stats from a stats source
(``Engine.stats``) with the fan-out's own counters added.

Store failures never stop the hub: a failed write (disk full, I/O error, locked file) is
counted (``store_errors``), the event is kept in a bounded retry buffer (``store_retry_events``;
full: the oldest is dropped and counted in ``store_events_dropped``) and still sent to the
clients; writes are retried at most every ``store_retry_s`` (on the next event or stats tick),
in order, and resume by themselves once the store can write again. Meanwhile ``health()`` says
``ok: false`` with the reason and the log says so at most once per ``store_log_interval_s``.
While the store can write, every event is committed before any client gets it.

With an :class:`~server.alerts.AlertMonitor` every engine event also goes through the alert
rules; an ``alert`` message is published after the window that caused it (and before the
``stream_close`` that ends it) and its frame is handed to ``on_alert`` (the webhook's
non-blocking ``submit``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from server.alerts import AlertMonitor
from server.convert import event_message
from server.errors import ServerError
from server.fanout import Backlog, BacklogRole, FanOut, Frame, text_frame
from server.limits import ServerCounters
from server.store import StoreRow, TimelineStore, store_row
from streamer.events import EngineStats, Event, StreamClosed
from streamer.protocol.messages import (
    WIDEBAND_MODEL_ON_NARROWBAND_AUDIO,
    AlertMessage,
    Hello,
    Message,
    MessageError,
    SpeechEndMessage,
    SpeechStartMessage,
    StatsMessage,
    StreamCloseMessage,
    StreamInfo,
    StreamOpenMessage,
    UtteranceMessage,
    WindowMessage,
    encode,
)

__all__ = ["EventHub", "ModelInfo", "new_session_id"]

logger = logging.getLogger(__name__)

StatsSource = Callable[[], EngineStats]
AlertSink = Callable[[str], None]

_BACKLOG_TYPES = (
    WindowMessage, SpeechStartMessage, SpeechEndMessage, UtteranceMessage, AlertMessage
)


def new_session_id() -> str:
    """A random id for one server run (12 hex digits)."""
    return secrets.token_hex(6)


class ModelInfo:
    """What clients are told about the model and windowing (from the engine's settings)."""

    __slots__ = ("name", "labels", "window_s", "hop_s", "sample_rate_hz", "narrowband")

    def __init__(
        self,
        *,
        name: str,
        labels: Sequence[str],
        window_s: float,
        hop_s: float,
        sample_rate_hz: int,
        narrowband: bool = False,
    ) -> None:
        self.name = name
        self.labels = tuple(labels)
        self.window_s = float(window_s)
        self.hop_s = float(hop_s)
        self.sample_rate_hz = int(sample_rate_hz)
        self.narrowband = bool(narrowband)  # the model is fit for 8 kHz (phone) input


class EventHub:
    """Routes events of one server run to the store and the fan-out. Loop-bound, see module doc.

    Usage::

        async with EventHub(info, fanout=FanOut(), store=store) as hub:
            engine = Engine(model, config, hub.sink)
            ...
            await hub.flush()   # every event the engine has handed over is published

    ``close()`` is idempotent; events arriving after it are dropped (and counted).
    """

    def __init__(
        self,
        info: ModelInfo,
        *,
        fanout: FanOut | None = None,
        store: TimelineStore | None = None,
        session: str | None = None,
        stats_interval_s: float = 1.0,
        stats_source: StatsSource | None = None,
        alerts: AlertMonitor | None = None,
        on_alert: AlertSink | None = None,
        counters: ServerCounters | None = None,
        store_retry_events: int = 10_000,
        store_retry_s: float = 1.0,
        store_log_interval_s: float = 30.0,
    ) -> None:
        self.info = info
        self.alerts = alerts
        self.on_alert = on_alert
        self.session = session or new_session_id()
        self.fanout = fanout if fanout is not None else FanOut(backlog=Backlog())
        self.store = store
        self.stats_interval_s = stats_interval_s
        self.stats_source = stats_source
        self.started_at = time.time()
        self.events_published = 0
        self.events_lost = 0  # arrived after close, or failed to convert/encode
        #: refusals and suppressed log lines of the server and ingest (shared with them)
        self.counters = counters if counters is not None else ServerCounters()
        self.store_errors = 0  # failed store writes (each retry that fails counts)
        self.store_events_dropped = 0  # events the store never got (retry buffer full)
        self.store_error: str | None = None  # the last write failure while not recovered
        self.store_retry_events = store_retry_events
        self.store_retry_s = store_retry_s
        self.store_log_interval_s = store_log_interval_s
        self._pending: deque[StoreRow] = deque()
        self._store_tried_at = 0.0
        self._store_logged_at: float | None = None
        self._streams: dict[str, StreamInfo] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> EventHub:
        """Bind to the running loop, register the session in the store, start the stats task."""
        if self._loop is not None:
            return self
        self._loop = asyncio.get_running_loop()
        self.started_at = time.time()
        if self.store is not None:
            self.store.start_session(self.hello(), started_at=self.started_at)
        if self.stats_source is not None:
            self._stats_task = self._loop.create_task(self._stats_loop(), name="hub-stats")
        logger.info("session %s: model %s, labels %s", self.session, self.info.name,
                    ", ".join(self.info.labels))
        return self

    async def close(self) -> None:
        """Stop the stats task, close the client queues (idempotent; the store is the caller's)."""
        self._closed = True
        task, self._stats_task = self._stats_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # never raises; the task's own CancelledError stays there
        self.fanout.close()

    async def __aenter__(self) -> EventHub:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- engine side --------------------------------------------------------------------------

    def sink(self, event: Event) -> None:
        """Thread-safe and cheap: hand ``event`` to the loop (called by the engine's threads)."""
        loop = self._loop
        if loop is None or self._closed:
            self.events_lost += 1
            return
        try:
            loop.call_soon_threadsafe(self.publish_event, event)
        except RuntimeError:  # the loop has been closed: too late to publish
            self.events_lost += 1

    async def flush(self) -> None:
        """Wait until every event handed to :meth:`sink` before this call has been published."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        # FIFO: this runs after every publish_event already scheduled from any thread
        loop.call_soon_threadsafe(_set_done, done)
        await done

    def publish_event(self, event: Event) -> None:
        """Convert, record, fan out one engine event (on the loop)."""
        if self._closed:
            self.events_lost += 1
            return
        try:
            message = event_message(
                event,
                self.info.labels,
                clients=self.fanout.clients,
                client_messages_dropped=self.fanout.messages_dropped,
            )
        except ServerError:
            logger.exception("cannot convert %s; skipped", type(event).__name__)
            self.events_lost += 1
            return
        if isinstance(message, StatsMessage):
            message = self._with_server_counters(message)
        if self.alerts is None:
            self.publish(message)
            return
        try:
            alerts = self.alerts.on_event(event, wall_time=time.time())
        except ServerError:
            logger.exception("alert rules failed on %s; skipped", type(event).__name__)
            alerts = []
        if not isinstance(event, StreamClosed):
            self.publish(message)
        for alert in alerts:
            text = self.publish(alert)
            logger.info("alert %s #%d on %s: %s (%.2f)", alert.state, alert.alert_id,
                        alert.stream, alert.rule, alert.probability)
            if text is not None and self.on_alert is not None:
                self.on_alert(text)
        if isinstance(event, StreamClosed):
            self.publish(message)

    def publish_stats(self, stats: EngineStats) -> None:
        """Publish one stats message (engine counters + fan-out counters)."""
        self.publish_event(stats)

    def publish(self, message: Message) -> str | None:
        """Encode once, record (committed), then queue for every interested client.

        Returns the frame text (None when the message was not published).
        """
        if self._closed:
            self.events_lost += 1
            return None
        try:
            text = encode(message)
        except MessageError:
            logger.exception("cannot encode %s; skipped", message.TYPE)
            self.events_lost += 1
            return None
        self._record(message, text)
        stream = getattr(message, "stream", None)
        if not isinstance(stream, str):
            stream = None
        if isinstance(message, StreamOpenMessage):
            self._streams[message.stream] = StreamInfo(
                message.stream, message.sample_rate_hz, dict(message.metadata),
                tuple(message.warnings),
            )
        elif isinstance(message, StreamCloseMessage):
            self._streams.pop(message.stream, None)
        role: BacklogRole = "none"
        if isinstance(message, StreamOpenMessage):
            role = "open"
        elif isinstance(message, StreamCloseMessage):
            role = "close"
        elif isinstance(message, _BACKLOG_TYPES):
            role = "event"
        data = text.encode()
        self.fanout.publish(Frame(text, stream, data, text_frame(data)), backlog=role)
        self.events_published += 1
        if isinstance(message, WindowMessage):
            logger.debug("window %s#%d %s", message.stream, message.seq, message.smoothed_label)
        return text

    def _with_server_counters(self, message: StatsMessage) -> StatsMessage:
        return dataclasses.replace(
            message,
            refused=dict(self.counters.refused),
            log_lines_suppressed=self.counters.log_lines_suppressed,
            store_errors=self.store_errors,
            store_events_dropped=self.store_events_dropped,
        )

    def _record(self, message: Message, text: str) -> None:
        """Commit one event, or keep it for retry while the store cannot write (see module doc)."""
        store = self.store
        if store is None:
            return
        row = store_row(message, text)
        if self._pending:
            self._retry()  # the older events first (rate-limited while the store fails)
        if not self._pending:
            try:
                store.record_rows((row,))
                return
            except ServerError as exc:
                self._store_failed(exc, time.monotonic())
        self._keep(row)

    def _keep(self, row: StoreRow) -> None:
        if len(self._pending) >= self.store_retry_events:
            self._pending.popleft()
            self.store_events_dropped += 1
        self._pending.append(row)

    def _retry(self) -> None:
        """Write the buffered events in order, at most every ``store_retry_s``."""
        store = self.store
        now = time.monotonic()
        if store is None or not self._pending or now - self._store_tried_at < self.store_retry_s:
            return
        self._store_tried_at = now
        rows = tuple(self._pending)
        try:
            store.record_rows(rows)
        except ServerError as exc:
            self._store_failed(exc, now)
            return
        self._pending.clear()
        logger.warning("timeline store writes resumed: %d buffered event(s) written, %d dropped "
                       "while it failed (%d failed write(s) so far)", len(rows),
                       self.store_events_dropped, self.store_errors)
        self.store_error = None
        self._store_logged_at = None

    def _store_failed(self, exc: ServerError, now: float) -> None:
        self.store_errors += 1
        self._store_tried_at = now
        self.store_error = str(exc)
        logged = self._store_logged_at
        if logged is None or now - logged >= self.store_log_interval_s:
            self._store_logged_at = now
            logger.error("timeline store write failed: %s; live events still go to clients, "
                         "%d kept for retry (at most %d), %d dropped, %d failed write(s)",
                         exc, len(self._pending) + 1, self.store_retry_events,
                         self.store_events_dropped, self.store_errors)

    async def _stats_loop(self) -> None:
        assert self.stats_source is not None
        while True:
            await asyncio.sleep(self.stats_interval_s)
            try:
                self.publish_stats(self.stats_source())
            except Exception:  # one bad tick must not end the stats for the rest of the run
                logger.exception("stats tick failed; trying again next interval")

    # -- client side --------------------------------------------------------------------------

    @property
    def streams(self) -> tuple[StreamInfo, ...]:
        """Streams open now, in opening order."""
        return tuple(self._streams.values())

    def hello(self) -> Hello:
        """The first message for a new client."""
        info = self.info
        return Hello(
            session=self.session,
            model=info.name,
            labels=info.labels,
            window_s=info.window_s,
            hop_s=info.hop_s,
            sample_rate_hz=info.sample_rate_hz,
            streams=self.streams,
            model_narrowband=info.narrowband,
        )

    def health(self) -> dict[str, Any]:
        """The ``GET /healthz`` body: ``ok`` is false while the store cannot write (``reason``).

        The server shows only ``ok`` (and its version) to the public; the rest is for admins.
        """
        self._retry()  # a health check also tries a failed store again (rate-limited)
        ok = self.store_error is None
        return {
            "ok": ok,
            "reason": None if ok else f"timeline store: {self.store_error}",
            "session": self.session,
            "model": self.info.name,
            "model_narrowband": self.info.narrowband,
            "streams": [s.stream for s in self._streams.values()],
            # open streams below 16 kHz on a model not marked narrowband (see stream_open)
            "narrowband_mismatch_streams": sum(
                WIDEBAND_MODEL_ON_NARROWBAND_AUDIO in s.warnings for s in self._streams.values()
            ),
            "clients": self.fanout.clients,
            "client_messages_dropped": self.fanout.messages_dropped,
            "events": self.events_published,
            "alerts": 0 if self.alerts is None else self.alerts.alerts_started,
            "store": None if self.store is None else str(self.store.path),
            "store_error": self.store_error,
            "store_errors": self.store_errors,
            "store_pending": len(self._pending),
            "store_events_dropped": self.store_events_dropped,
            "refused": dict(self.counters.refused),
            "log_lines_suppressed": self.counters.log_lines_suppressed,
            "uptime_s": round(time.time() - self.started_at, 3),
        }


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
