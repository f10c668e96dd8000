"""The event hub: engine events -> store -> client queues (event loop; ``sink`` from any thread).

The engine calls :meth:`EventHub.sink` from its worker or feeding threads; ``sink`` only hands
the event to the loop with ``call_soon_threadsafe``, so it is cheap and never blocks the engine.
On the loop each event is converted to its wire message, encoded once, **recorded in the store
(committed)**, and only then queued for the clients: whatever a client has received is on disk.
Events from one thread keep their order (``call_soon_threadsafe`` is FIFO).

The hub also knows what a new client needs: the ``hello`` (session id, model, labels, window,
hop, live streams) and the backlog; and it publishes periodic stats from a stats source
(``Engine.stats``) with the fan-out's own counters added.

With an :class:`~server.alerts.AlertMonitor` every engine event also goes through the alert
rules; an ``alert`` message is published after the window that caused it (and before the
``stream_close`` that ends it) and its frame is handed to ``on_alert`` (the webhook's
non-blocking ``submit``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from client.messages import (
    AlertMessage,
    Hello,
    Message,
    MessageError,
    SpeechEndMessage,
    SpeechStartMessage,
    StreamCloseMessage,
    StreamInfo,
    StreamOpenMessage,
    UtteranceMessage,
    WindowMessage,
    encode,
)
from streamer.events import EngineStats, Event, StreamClosed

from .alerts import AlertMonitor
from .convert import event_message
from .errors import ServerError
from .fanout import Backlog, BacklogRole, FanOut, Frame
from .store import TimelineStore

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

    __slots__ = ("name", "labels", "window_s", "hop_s", "sample_rate_hz")

    def __init__(
        self,
        *,
        name: str,
        labels: Sequence[str],
        window_s: float,
        hop_s: float,
        sample_rate_hz: int,
    ) -> None:
        self.name = name
        self.labels = tuple(labels)
        self.window_s = float(window_s)
        self.hop_s = float(hop_s)
        self.sample_rate_hz = int(sample_rate_hz)


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
        self.events_lost = 0  # arrived after close, or failed to encode/record
        self._streams: dict[str, StreamInfo] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._closed = False
        self._store_failed = False

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
        if isinstance(message, StreamOpenMessage):
            self._streams[message.stream] = StreamInfo(
                message.stream, message.sample_rate_hz, dict(message.metadata)
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
        self.fanout.publish(Frame(text, stream), backlog=role)
        self.events_published += 1
        if isinstance(message, WindowMessage):
            logger.debug("window %s#%d %s", message.stream, message.seq, message.smoothed_label)
        return text

    def _record(self, message: Message, text: str) -> None:
        if self.store is None:
            return
        try:
            self.store.record(message, text)
        except ServerError:
            # keep monitoring live; say it loudly once, since the timeline now has a gap
            self.events_lost += 1
            if not self._store_failed:
                self._store_failed = True
                logger.exception("timeline store write failed; events are not being recorded")

    async def _stats_loop(self) -> None:
        assert self.stats_source is not None
        try:
            while True:
                await asyncio.sleep(self.stats_interval_s)
                self.publish_stats(self.stats_source())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("stats task failed; no more stats messages")

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
        )

    def health(self) -> dict[str, Any]:
        """The ``GET /healthz`` body."""
        return {
            "ok": True,
            "session": self.session,
            "model": self.info.name,
            "streams": [s.stream for s in self._streams.values()],
            "clients": self.fanout.clients,
            "client_messages_dropped": self.fanout.messages_dropped,
            "events": self.events_published,
            "alerts": 0 if self.alerts is None else self.alerts.alerts_started,
            "store": None if self.store is None else str(self.store.path),
            "uptime_s": round(time.time() - self.started_at, 3),
        }


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
