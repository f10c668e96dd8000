"""The running monitor: sources -> engine -> hub -> store + clients (event loop; engine threads).

:class:`Monitor` composes the parts ``emotion-monitor run`` needs and owns them:

- one task per audio source (a tracked set) that feeds the source's blocks to its engine stream;
- the :class:`~streamer.engine.Engine` (its inference worker threads);
- the :class:`~server.hub.EventHub` (engine events -> store -> client queues, periodic stats);
- the :class:`~server.store.TimelineStore` (unless ``store_path`` is None);
- the :class:`~server.app.EventServer` (HTTP + WebSocket) and its
  :class:`~server.ingest.IngestEndpoint` (``WS /ingest``: pushed calls, one stream per channel);
- the alert rules (:class:`~server.alerts.AlertMonitor`, in the hub) and, with a webhook URL,
  the :class:`~server.webhook.WebhookSender`.

Shutdown goes from source to sink: stop the sources and the pushed calls (their streams close
and flush; ingest senders get 1001), drain
the engine, publish what it produced, let clients receive their queues and close them with
1001, stop the engine, send the webhook's queued alerts, close the store. ``close()`` is
idempotent.

:func:`analyze_files` runs the same engine and conversion without a server, as fast as the model
allows (``realtime=False``: backpressure instead of drops), and writes a timeline file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from server.alerts import AlertMonitor
from server.app import EventServer
from server.config import ServerConfig
from server.convert import window_message
from server.errors import ServerError
from server.fanout import Backlog, FanOut
from server.hub import EventHub, ModelInfo, new_session_id
from server.ingest import IngestEndpoint
from server.store import TimelineStore
from server.webhook import WebhookSender
from streamer.engine import ClassifierModel, Engine, EngineConfig, StreamFeed
from streamer.errors import StreamerError
from streamer.events import EngineStats, Event, SpeechStart, StreamClosed, WindowLabel
from streamer.protocol.messages import WindowMessage
from streamer.protocol.timeline import TimelineWriter, timeline_format

__all__ = ["AnalyzeResult", "AudioSource", "Monitor", "analyze_files"]

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
        self.store: TimelineStore | None = None
        self.hub: EventHub | None = None
        self.engine: Engine | None = None
        self.server: EventServer | None = None
        self.ingest: IngestEndpoint | None = None
        self.webhook: WebhookSender | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._closed = False
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Monitor:
        """Open the store, start the engine and the server, then start feeding the sources."""
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
        config, engine_config = self.server_config, self.engine_config
        alerts = AlertMonitor(config.alerts, self.model.labels) if config.alerts else None
        if config.store_path is not None:
            self.store = TimelineStore(config.store_path).open()
        info = ModelInfo(
            name=self.model.name,
            labels=self.model.labels,
            window_s=engine_config.window_s,
            hop_s=engine_config.hop_s,
            sample_rate_hz=int(self.model.sample_rate_hz),
            narrowband=bool(getattr(self.model, "narrowband_ok", False)),
        )
        fanout = FanOut(
            queue_size=config.client_queue_size,
            backlog=Backlog(per_stream=config.backlog_per_stream),
        )
        if config.webhook_url is not None:
            if not config.alerts:
                logger.warning("--webhook given without --alert rules: nothing will be POSTed")
            self.webhook = await WebhookSender(config.webhook()).start()
        self.hub = hub = EventHub(
            info, fanout=fanout, store=self.store, session=self.session,
            stats_interval_s=config.stats_interval_s, stats_source=self._stats,
            alerts=alerts, on_alert=None if self.webhook is None else self.webhook.submit,
            store_retry_events=config.store_retry_events,
        )
        await hub.start()
        self.engine = Engine(self.model, engine_config, hub.sink)
        self.ingest = IngestEndpoint(self.engine, config)
        self.server = await EventServer(config, hub, ingest=self.ingest).start()
        for source in self.sources:
            task = asyncio.create_task(self._pump(source), name=f"source-{source.name}")
            self._pumps.add(task)
        if not self._pumps:
            self.sources_done.set()

    def _stats(self) -> EngineStats:
        assert self.engine is not None
        return self.engine.stats()

    @property
    def port(self) -> int:
        """The bound port of the server."""
        if self.server is None:
            raise ServerError("the monitor is not started")
        return self.server.port

    @property
    def url(self) -> str:
        """The dashboard URL."""
        if self.server is None:
            raise ServerError("the monitor is not started")
        return self.server.url

    @property
    def ws_url(self) -> str:
        """The events URL."""
        if self.server is None:
            raise ServerError("the monitor is not started")
        return self.server.ws_url

    @property
    def ingest_url(self) -> str:
        """The audio ingest URL (``ws://HOST:PORT/ingest``)."""
        if self.server is None:
            raise ServerError("the monitor is not started")
        return self.server.ingest_url

    async def close(self) -> None:
        """Graceful shutdown, source to sink (see module doc). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        timeout_s = self.server_config.shutdown_timeout_s
        for source in self.sources:
            source.close()
        if self._pumps:
            _, pending = await asyncio.wait(set(self._pumps), timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self.ingest is not None:
            await self.ingest.close()
        engine, hub = self.engine, self.hub
        if engine is not None:
            drained = await asyncio.to_thread(engine.drain, self.engine_config.close_timeout_s)
            if not drained:
                logger.warning("engine still busy after %.1f s; closing it anyway",
                               self.engine_config.close_timeout_s)
        if hub is not None:
            await hub.flush()
            if engine is not None:
                hub.publish_stats(engine.stats())  # the final counters
            await hub.close()
        if self.server is not None:
            await self.server.close()
        if engine is not None:
            await asyncio.to_thread(engine.close)
        if hub is not None:
            await hub.flush()  # anything the engine's close emitted is recorded or counted lost
        if self.webhook is not None:
            await self.webhook.close(timeout_s)
        if self.store is not None:
            self.store.close()
        logger.info("monitor stopped")

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
            source.close()
            try:
                if feed is not None:
                    if blocking:  # the flush may wait for the inference queue: not on the loop
                        await asyncio.to_thread(feed.close, reason)
                    else:
                        feed.close(reason=reason)
            finally:
                self._pumps.discard(asyncio.current_task())  # type: ignore[arg-type]
                if not self._pumps:
                    self.sources_done.set()
                logger.info("source %s finished (%s)", source.name, reason)


@dataclass(frozen=True, slots=True)
class AnalyzeResult:
    """What ``analyze`` did for one file."""

    path: Path
    stream: str
    duration_s: float
    windows: int
    speech_segments: int


def analyze_files(
    model: ClassifierModel,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    engine_config: EngineConfig,
    channel: int | None = None,
    session: str | None = None,
) -> list[AnalyzeResult]:
    """Run each file through the engine as fast as possible and append its windows to ``out``.

    Same engine, conversion and row format as the live server (stream name = file stem, made
    unique with ``-2``, ``-3`` ...), but ``realtime=False``: nothing is dropped. Every file is
    opened (and checked) before anything is written. Runs on the caller's thread.
    """
    from streamer.sources import FileSource

    timeline_format(out)  # a bad suffix fails before any work
    if not paths:
        raise ServerError("no audio files given")
    config = replace(engine_config, realtime=False)
    sources: list[FileSource] = []
    try:
        used: set[str] = set()
        for path in paths:
            name = Path(path).stem or "audio"
            unique, n = name, 1
            while unique in used:
                n += 1
                unique = f"{name}-{n}"
            used.add(unique)
            sources.append(FileSource(path, channel=channel, realtime=False, name=unique))
        session = session or new_session_id()
        events: list[Event] = []  # appended by engine threads (list.append is atomic)
        results = []
        with Engine(model, config, events.append) as engine, \
                TimelineWriter(out, model.labels) as writer:
            for source in sources:
                events.clear()
                with engine.open_stream(
                    source.name, sample_rate_hz=source.sample_rate_hz,
                    metadata={"source": "FileSource"},
                ) as feed:
                    for block in source.blocks():
                        feed.feed(block)
                engine.drain(None)
                windows = [e for e in list(events) if isinstance(e, WindowLabel)]
                for event in windows:
                    message: WindowMessage = window_message(event, model.labels)
                    writer.write_window(message, session=session)
                closed = [e for e in events if isinstance(e, StreamClosed)]
                results.append(
                    AnalyzeResult(
                        path=source.path,
                        stream=source.name,
                        duration_s=closed[-1].end_s if closed else source.duration_s,
                        windows=len(windows),
                        speech_segments=sum(isinstance(e, SpeechStart) for e in events),
                    )
                )
                logger.info("%s: %d windows in %.1f s of audio", source.path, len(windows),
                            results[-1].duration_s)
        return results
    finally:
        for source in sources:
            source.close()
