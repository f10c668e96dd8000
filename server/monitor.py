"""The composition root of ``emotion-monitor run``: it builds, starts and stops every part (loop).

:class:`Monitor` owns, in start-up order (each part is handed the ones before it):

1. the :class:`~server.store.TimelineStore` (unless ``store_path`` is None), or the
   :class:`~server.store_pg.PostgresTimelineStore` with ``postgres_store``, behind a
   :class:`~server.recorder.StoreRecorder`;
2. the :class:`~server.webhook.WebhookSender` (with a webhook URL; its own task and queue);
3. with ``bus`` configured, the :class:`~server.bus.RedisBus` (the cluster's frames in and
   out; it feeds the fan-out), then the :class:`~server.hub.EventHub` (the publish path:
   convert, alerts, record, fan out or hand to the bus);
4. the :class:`~server.bridge.ThreadBridge` and the :class:`~streamer.engine.Engine` (its
   inference worker threads hand events to the bridge, the bridge to the hub on the loop);
5. the :class:`~server.ticker.StatsTicker` (engine and server counters every interval);
6. the :class:`~server.connectors.calls.CallDesk` (live call ids and call limits, shared by
   every push path), the :class:`~server.ingest.IngestEndpoint` (``WS /ingest``), the
   telephony connectors configured (:mod:`server.connectors`), and the
   :class:`~server.app.EventServer` (HTTP + WebSocket on one port; TCP connectors listen on
   their own);
7. one task per audio source (a tracked set) feeding the source's blocks to its engine stream.

:meth:`Monitor.close` shuts down from source to sink, each wait bounded: stop the sources and
the pushed calls and connectors (their streams close and flush; senders get 1001), drain the
engine, publish what it produced and the final stats, flush the bus (bounded) and leave the
cluster, let clients receive their queues and close them with 1001, stop the engine, send the
webhook's queued alerts, close the store. ``close()`` is idempotent. Offline analysis of
files (no server) is :mod:`streamer.analyze`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from server.alerts import AlertMonitor
from server.app import EventServer
from server.bridge import ThreadBridge
from server.bus import RedisBus
from server.config import ServerConfig
from server.connectors.base import ConnectorContext, TcpConnector, WebSocketConnector
from server.connectors.calls import CallDesk
from server.errors import ServerError
from server.fanout import Backlog, FanOut
from server.hub import EventHub
from server.ingest import IngestEndpoint
from server.limits import ClientLog, ServerCounters
from server.recorder import StoreRecorder
from server.session import ModelInfo
from server.store import TimelineStore
from server.store_pg import PostgresTimelineStore
from server.ticker import StatsTicker
from server.webhook import WebhookSender
from streamer.engine import Engine, EngineConfig, StreamFeed
from streamer.errors import StreamerError
from streamer.models.protocol import ClassifierModel
from streamer.protocol.timeline import new_session_id

__all__ = ["AudioSource", "Monitor"]

logger = logging.getLogger(__name__)


class AudioSource(Protocol):
    """What the monitor feeds from: ``FileSource`` and ``MicrophoneSource`` fit.

    Async-iterable mono float32 blocks at ``sample_rate_hz``; ``close()`` ends the iteration
    and is idempotent. A ``start()`` method, when present, is called before iterating.
    """

    name: str
    sample_rate_hz: int

    def __aiter__(self) -> AsyncIterator[NDArray[np.float32]]: ...

    def close(self) -> None: ...


class Monitor:
    """Capture + engine + store + server for one run. An async context manager.

    Usage::

        async with Monitor(model, engine_config=EngineConfig(), server_config=ServerConfig(),
                           sources=[FileSource("call.wav")]) as monitor:
            print(monitor.url)
            await monitor.sources_done.wait()

    ``errors`` collects source failures (a device that went away, a file that cannot be read
    mid-way); the other sources and the server keep running.
    """

    def __init__(
        self,
        model: ClassifierModel,
        *,
        engine_config: EngineConfig,
        server_config: ServerConfig,
        sources: Sequence[AudioSource] = (),
        session: str | None = None,
    ) -> None:
        names = [source.name for source in sources]
        if len(set(names)) != len(names):
            raise ServerError(f"two sources share a stream name: {names}")
        self.model = model
        self.engine_config = engine_config
        self.server_config = server_config
        self.sources = tuple(sources)
        self.session = session or new_session_id()
        self.errors: list[StreamerError] = []
        self.sources_done = asyncio.Event()
        self.store: TimelineStore | PostgresTimelineStore | None = None
        self.webhook: WebhookSender | None = None
        self.bus: RedisBus | None = None
        self.hub: EventHub | None = None
        self.bridge: ThreadBridge | None = None
        self.engine: Engine | None = None
        self.ticker: StatsTicker | None = None
        self.ingest: IngestEndpoint | None = None
        self.desk: CallDesk | None = None
        self.connectors: list[WebSocketConnector | TcpConnector] = []
        self.server: EventServer | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._closed = False
        self._started = False

    # -- start-up -----------------------------------------------------------------------------

    async def start(self) -> Monitor:
        """Build and start every part, sink first (see module doc), then feed the sources."""
        if self._started:
            return self
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def _start(self) -> None:
        config = self.server_config
        counters = ServerCounters()
        client_log = ClientLog(logger, counters,
                               per_minute=config.limits.client_log_lines_per_min)
        self.hub = hub = await self._start_hub(counters)
        self.bridge = bridge = ThreadBridge(hub.publish_event).start()
        self.engine = engine = Engine(self.model, self.engine_config, bridge.sink)
        self.ticker = StatsTicker(lambda: hub.publish_stats(engine.stats()),
                                  interval_s=config.stats_interval_s).start()
        self.desk = desk = CallDesk(engine, config.ingest, counters)
        self.ingest = IngestEndpoint(engine, config.ingest, log=client_log, counters=counters,
                                     shutdown_timeout_s=config.shutdown_timeout_s, desk=desk)
        context = ConnectorContext(desk=desk, ingest=config.ingest, log=client_log,
                                   counters=counters, host=config.host,
                                   shutdown_timeout_s=config.shutdown_timeout_s)
        self.connectors = [connector.build(context) for connector in config.connectors]
        self.server = await EventServer(
            config, hub, ingest=self.ingest, client_log=client_log,
            connectors=[c for c in self.connectors if isinstance(c, WebSocketConnector)],
            connector_stats=self.connector_stats if self.connectors else None,
            engine_stats=engine.stats, webhook=self.webhook,
        ).start()
        for connector in self.connectors:
            if isinstance(connector, TcpConnector):
                await connector.start()
        for source in self.sources:
            task = asyncio.create_task(self._pump(source), name=f"source-{source.name}")
            self._pumps.add(task)
        if not self._pumps:
            self.sources_done.set()

    async def _start_hub(self, counters: ServerCounters) -> EventHub:
        """The store, the webhook and the hub that records to and posts through them."""
        config, model = self.server_config, self.model
        rules = config.alerts.rules
        alerts = (AlertMonitor(rules, model.labels, max_gap_s=config.alerts.max_gap_s)
                  if rules else None)
        if config.postgres_store is not None:
            self.store = PostgresTimelineStore(config.postgres_store).open()
        elif config.store_path is not None:
            self.store = TimelineStore(config.store_path).open()
        if config.webhook is not None:
            if not rules:
                logger.warning("--webhook given without --alert rules: nothing will be POSTed")
            self.webhook = await WebhookSender(config.webhook).start()
        info = ModelInfo(
            name=model.name,
            labels=model.labels,
            window_s=self.engine_config.window_s,
            hop_s=self.engine_config.hop_s,
            sample_rate_hz=int(model.sample_rate_hz),
            narrowband=bool(getattr(model, "narrowband_ok", False)),
        )
        fanout = FanOut(queue_size=config.client_queue_size,
                        backlog=Backlog(per_stream=config.backlog_per_stream))
        recorder = StoreRecorder(self.store, retry_events=config.store_retry_events)
        if config.bus is not None:
            self.bus = await RedisBus(config.bus, fanout, session=self.session,
                                      record=recorder.record).start()
        hub = EventHub(
            info, fanout=fanout, session=self.session, counters=counters, alerts=alerts,
            recorder=recorder,
            on_alert=None if self.webhook is None else self.webhook.submit, bus=self.bus,
        )
        return await hub.start()

    @property
    def port(self) -> int:
        """The bound port of the server."""
        return self._server().port

    @property
    def url(self) -> str:
        """The dashboard URL."""
        return self._server().url

    @property
    def ws_url(self) -> str:
        """The events URL."""
        return self._server().ws_url

    @property
    def ingest_url(self) -> str:
        """The audio ingest URL (``ws://HOST:PORT/ingest``)."""
        return self._server().ingest_url

    def connector_stats(self) -> dict[str, object]:
        """Every connector's counters by name (``/healthz`` ``connectors``)."""
        return {connector.name: connector.stats() for connector in self.connectors}

    def connector(self, name: str) -> WebSocketConnector | TcpConnector:
        """The connector of that name (ServerError when it is not configured)."""
        for connector in self.connectors:
            if connector.name == name:
                return connector
        raise ServerError(f"connector {name!r} is not configured")

    def _server(self) -> EventServer:
        if self.server is None:
            raise ServerError("the monitor is not started")
        return self.server

    # -- shutdown, source to sink -------------------------------------------------------------

    async def close(self) -> None:
        """Graceful shutdown, source to sink (see module doc). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        await self._stop_sources()
        if self.desk is not None:
            self.desk.closing = True
        if self.ingest is not None:
            await self.ingest.close()
        for connector in self.connectors:
            await connector.close()
        await self._drain_engine()
        if self.ticker is not None:
            await self.ticker.close()
        if self.bus is not None:
            await self.bus.close(self.server_config.shutdown_timeout_s)
        if self.hub is not None:
            await self.hub.close()
        if self.server is not None:
            await self.server.close()  # clients get their queues, then 1001
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
        if self.bridge is not None:
            await self.bridge.flush()  # what the engine's close emitted is published or lost
            self.bridge.close()
        if self.webhook is not None:
            await self.webhook.close(self.server_config.shutdown_timeout_s)
        if self.store is not None:
            self.store.close()
        logger.info("monitor stopped")

    async def _stop_sources(self) -> None:
        """Close every source and wait (bounded) for its feeding task to flush its stream."""
        for source in self.sources:
            source.close()
        if not self._pumps:
            return
        _, pending = await asyncio.wait(set(self._pumps),
                                        timeout=self.server_config.shutdown_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _drain_engine(self) -> None:
        """Let the engine finish what it has (bounded), then publish it and the final stats."""
        engine, timeout_s = self.engine, self.engine_config.close_timeout_s
        if engine is None:
            return
        if not await asyncio.to_thread(engine.drain, timeout_s):
            logger.warning("engine still busy after %.1f s; closing it anyway", timeout_s)
        if self.bridge is not None:
            await self.bridge.flush()
        if self.hub is not None:
            self.hub.publish_stats(engine.stats())  # the final counters

    async def __aenter__(self) -> Monitor:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- sources ------------------------------------------------------------------------------

    async def _pump(self, source: AudioSource) -> None:
        """Feed one source into its engine stream until it ends, fails, or the monitor stops."""
        assert self.engine is not None
        feed: StreamFeed | None = None
        reason = "end"
        blocking = not self.engine_config.realtime  # backpressure: feeding may wait
        try:
            start = getattr(source, "start", None)
            if callable(start):
                start()
            capture = source if hasattr(source, "blocks_dropped") else None
            feed = self.engine.open_stream(
                source.name,
                sample_rate_hz=int(source.sample_rate_hz),
                metadata={"source": type(source).__name__},
                capture=capture,  # type: ignore[arg-type]
            )
            async for block in source:
                if blocking:
                    await asyncio.to_thread(feed.feed, block)
                else:
                    feed.feed(block)
        except StreamerError as exc:
            reason = "error"
            if not self._stopping:
                logger.error("source %s failed: %s", source.name, exc)
                self.errors.append(exc)
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        except Exception:
            reason = "error"
            logger.exception("source %s: feeding task failed", source.name)
        finally:
            if self._stopping and reason == "end":
                reason = "shutdown"
            await self._end_pump(source, feed, reason)

    async def _end_pump(self, source: AudioSource, feed: StreamFeed | None, reason: str) -> None:
        """Close the source and its stream; the last pump to end sets ``sources_done``."""
        source.close()
        try:
            if feed is not None:
                if not self.engine_config.realtime:  # the flush may wait for inference
                    await asyncio.to_thread(feed.close, reason)
                else:
                    feed.close(reason=reason)
        finally:
            self._pumps.discard(asyncio.current_task())  # type: ignore[arg-type]
            if not self._pumps:
                self.sources_done.set()
            logger.info("source %s finished (%s)", source.name, reason)
