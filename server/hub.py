"""The publish path: engine event -> wire message -> alerts -> store -> client queues (event loop).

:meth:`EventHub.publish_event` is the whole path for one engine event, top to bottom:

1. convert it to its wire message (:mod:`streamer.convert`; stats get the fan-out's and the
   server's counters);
2. run the alert rules on it (:class:`~server.alerts.AlertMonitor`, when there are rules;
   :meth:`EventHub.publish_stats` also ends the alerts of streams quiet for too long);
3. publish the message, then the alerts it caused (an alert follows the window that caused
   it; a ``stream_close`` goes after the alerts it ended), each alert's frame also handed to
   ``on_alert`` (the webhook's non-blocking ``submit``).

:meth:`EventHub.publish` is one message's part: encode once, **record in the store
(committed)** (:class:`~server.recorder.StoreRecorder`), note open streams
(:class:`~server.session.StreamRegistry`), and only then queue it for the clients and the
backlog (:class:`~server.fanout.FanOut`): whatever a client has received is on disk. With a
cluster bus (``run --bus``, :class:`~server.cluster.EventBus`) the last step is the bus's: it
sends the frame to the cluster and feeds the fan-out from there, so ``hello`` lists the
cluster's live streams and stats frames carry this node's id.

The hub also answers what a client asks about the run: ``hello`` and ``health``. Getting events
here from the engine's threads is :class:`~server.bridge.ThreadBridge`'s job; the periodic
stats are :class:`~server.ticker.StatsTicker`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from server.alerts import AlertMonitor
from server.cluster import EventBus
from server.errors import ServerError
from server.fanout import Backlog, BacklogRole, FanOut, Frame, text_frame
from server.limits import ServerCounters
from server.recorder import StoreRecorder
from server.session import ModelInfo, StreamRegistry, hello
from streamer.convert import event_message
from streamer.errors import StreamerError
from streamer.events import EngineStats, Event, StreamClosed
from streamer.protocol.messages import (
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
from streamer.protocol.timeline import new_session_id

__all__ = ["AlertSink", "EventHub", "backlog_role"]

logger = logging.getLogger(__name__)

AlertSink = Callable[[str], None]

_BACKLOG_TYPES = (
    WindowMessage, SpeechStartMessage, SpeechEndMessage, UtteranceMessage, AlertMessage
)


def _alert_text(alert: AlertMessage) -> str:
    """One log line's words for an alert, e.g. ``end #3 on c/customer: Sad>=0.6 for 3s ...``."""
    text = (f"{alert.state} #{alert.alert_id} on {alert.stream}: {alert.rule} "
            f"since {alert.since_s:.2f} s, at {alert.at_s:.2f} s (p {alert.probability:.2f}, "
            f"{alert.speech_s:.1f} s of speech)")
    return text if alert.state != "end" else f"{text}, ended: {alert.reason}"


def backlog_role(message: Message) -> BacklogRole:
    """How a message takes part in the per-stream backlog new clients get."""
    if isinstance(message, StreamOpenMessage):
        return "open"
    if isinstance(message, StreamCloseMessage):
        return "close"
    if isinstance(message, _BACKLOG_TYPES):
        return "event"
    return "none"


class EventHub:
    """The publish path of one server run, and its hello and health. Loop-bound.

    Usage::

        async with EventHub(info, fanout=FanOut(), recorder=StoreRecorder(store)) as hub:
            hub.publish_event(event)   # on the loop (see server.bridge for engine threads)

    ``close()`` is idempotent: it closes the client queues; events published after it are
    dropped (and counted in ``events_lost``).
    """

    def __init__(
        self,
        info: ModelInfo,
        *,
        fanout: FanOut | None = None,
        recorder: StoreRecorder | None = None,
        session: str | None = None,
        alerts: AlertMonitor | None = None,
        on_alert: AlertSink | None = None,
        counters: ServerCounters | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.info = info
        self.session = session or new_session_id()
        self.fanout = fanout if fanout is not None else FanOut(backlog=Backlog())
        self.recorder = recorder if recorder is not None else StoreRecorder(None)
        self.alerts = alerts
        self.on_alert = on_alert
        #: refusals and suppressed log lines of the server and ingest (shared with them)
        self.counters = counters if counters is not None else ServerCounters()
        self.registry = StreamRegistry()  # this node's own open streams
        #: the cluster event bus (None: a single node, its fan-out fed here directly)
        self.bus = bus
        self.started_at = time.time()
        self.events_published = 0
        self.events_lost = 0  # published after close, or failed to convert/encode
        self._started = False
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> EventHub:
        """Register the session in the store (once)."""
        if self._started:
            return self
        self._started = True
        self.started_at = time.time()
        self.recorder.start_session(self.hello(), started_at=self.started_at)
        logger.info("session %s: model %s, labels %s", self.session, self.info.name,
                    ", ".join(self.info.labels))
        return self

    async def close(self) -> None:
        """Close the client queues (idempotent; the store is the caller's)."""
        self._closed = True
        self.fanout.close()

    async def __aenter__(self) -> EventHub:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the publish path ---------------------------------------------------------------------

    def publish_event(self, event: Event) -> None:
        """Convert, run the alert rules, record and fan out one engine event (see module doc)."""
        if self._closed:
            self.events_lost += 1
            return
        message = self._message(event)
        if message is None:
            return
        alerts = self._alerts(event)
        closing = isinstance(event, StreamClosed)  # its alerts end before the stream does
        if not closing:
            self.publish(message)
        self._publish_alerts(alerts)
        if closing:
            self.publish(message)

    def publish_stats(self, stats: EngineStats) -> None:
        """Publish one stats message (engine counters + fan-out and server counters).

        Each tick first ends the alerts of streams that went quiet for longer than the alert
        gap (by ``stats.wall_time``), so silence never keeps an alert on.
        """
        if self.alerts is not None and not self._closed:
            self._publish_alerts(self.alerts.expire(stats.wall_time))
        self.publish_event(stats)

    def _publish_alerts(self, alerts: list[AlertMessage]) -> None:
        """Publish, log and hand to ``on_alert`` each alert message."""
        for alert in alerts:
            text = self.publish(alert)
            logger.info("alert %s", _alert_text(alert))
            if text is not None and self.on_alert is not None:
                self.on_alert(text)

    def publish(self, message: Message) -> str | None:
        """Encode once, record (committed), note the stream, then queue for every client.

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
        self.recorder.record(message, text)  # before any client can have it
        self.registry.note(message)
        stream = getattr(message, "stream", None)
        data = text.encode()
        frame = Frame(text, stream if isinstance(stream, str) else None, data, text_frame(data))
        if self.bus is None:
            self.fanout.publish(frame, backlog=backlog_role(message))
        else:
            self.bus.publish(message, frame, backlog_role(message))
        self.events_published += 1
        if isinstance(message, WindowMessage):
            logger.debug("window %s#%d %s", message.stream, message.seq, message.smoothed_label)
        return text

    def _message(self, event: Event) -> Message | None:
        """The event's wire message (None, counted and logged, when it cannot be converted)."""
        try:
            message = event_message(
                event,
                self.info.labels,
                clients=self.fanout.clients,
                client_messages_dropped=self.fanout.messages_dropped,
            )
        except StreamerError:
            logger.exception("cannot convert %s; skipped", type(event).__name__)
            self.events_lost += 1
            return None
        if isinstance(message, StatsMessage):
            recorder = self.recorder
            message = dataclasses.replace(
                message,
                refused=dict(self.counters.refused),
                log_lines_suppressed=self.counters.log_lines_suppressed,
                store_errors=recorder.errors,
                store_events_dropped=recorder.events_dropped,
                node="" if self.bus is None else self.bus.node,
            )
        return message

    def _alerts(self, event: Event) -> list[AlertMessage]:
        """The alert messages ``event`` causes (none without rules, or when the rules fail)."""
        if self.alerts is None:
            return []
        try:
            return self.alerts.on_event(event, wall_time=time.time())
        except ServerError:
            logger.exception("alert rules failed on %s; skipped", type(event).__name__)
            return []

    # -- what clients are told ----------------------------------------------------------------

    @property
    def streams(self) -> tuple[StreamInfo, ...]:
        """Streams open now, in opening order (with a bus: anywhere in the cluster)."""
        return self.registry.streams if self.bus is None else self.bus.streams

    def hello(self) -> Hello:
        """The first message for a new client."""
        return hello(self.session, self.info, self.streams)

    def health(self) -> dict[str, Any]:
        """The ``GET /healthz`` body: ``ok`` is false while the store cannot write (``reason``).

        The server shows only ``ok`` (and its version) to the public; the rest is for admins.
        With a cluster bus, ``bus`` holds its state and counters (a bus that is down leaves
        ``ok`` true: this node's calls go on).
        """
        store = self.recorder.health()  # also tries a failed store again (rate-limited)
        error = store["store_error"]
        bus = {} if self.bus is None else {"bus": self.bus.health()}
        return {
            "ok": error is None,
            "reason": None if error is None else f"timeline store: {error}",
            "session": self.session,
            "model": self.info.name,
            "model_narrowband": self.info.narrowband,
            "streams": [s.stream for s in self.registry.streams],
            "narrowband_mismatch_streams": self.registry.narrowband_mismatches,
            "clients": self.fanout.clients,
            "client_messages_dropped": self.fanout.messages_dropped,
            "events": self.events_published,
            "alerts": 0 if self.alerts is None else self.alerts.alerts_started,
            **store,
            "refused": dict(self.counters.refused),
            "log_lines_suppressed": self.counters.log_lines_suppressed,
            "uptime_s": round(time.time() - self.started_at, 3),
            **bus,
        }
