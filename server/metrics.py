"""``GET /metrics``: the server's live counters in the Prometheus text format (event loop).

:class:`ServerMetrics` is a ``prometheus_client`` collector that keeps no numbers of its own:
each scrape reads the counters the parts already keep (the hub's fan-out, store recorder,
stream registry and refusal counters, the engine's :meth:`~streamer.engine.Engine.stats`, the
HTTP refusals of :class:`~server.app.EventServer`, ``/ingest``'s rejections, the connectors'
refusals and the webhook sender's deliveries), so ``/metrics``, ``/healthz`` and ``stats``
always agree. Each server registers it in a private :class:`~prometheus_client.CollectorRegistry`
(:func:`metrics_registry`), never the library's global one, so two servers in one process (the
tests) do not mix their numbers. Every name starts with ``emotion_monitor_``; label values are
our own fixed reason codes and the configured connector names, never client input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from server.hub import EventHub
from server.ingest import IngestEndpoint
from server.webhook import WebhookSender
from streamer.events import EngineStats

__all__ = ["METRICS_PATH", "ServerMetrics", "metrics_registry", "render_metrics"]

METRICS_PATH = "/metrics"
_PREFIX = "emotion_monitor"


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{_PREFIX}_{name}", doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{_PREFIX}_{name}", doc, value=value)


def _by_label(
    name: str, doc: str, label: str, counts: Mapping[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{_PREFIX}_{name}", doc, labels=[label])
    for key in sorted(counts):
        family.add_metric([key], counts[key])
    return family


class ServerMetrics(Collector):
    """Reads one server's counters at scrape time (event loop; see the module doc).

    ``http_refused`` is the server's own refusal dict (auth, origin, host ...), read live;
    ``engine_stats``, ``ingest``, ``connector_stats`` and ``webhook`` are optional parts (a
    server without them simply has fewer metrics).
    """

    def __init__(
        self,
        hub: EventHub,
        *,
        version: str,
        http_refused: Mapping[str, int],
        engine_stats: Callable[[], EngineStats] | None = None,
        ingest: IngestEndpoint | None = None,
        connector_stats: Callable[[], Mapping[str, Any]] | None = None,
        webhook: WebhookSender | None = None,
    ) -> None:
        self.hub = hub
        self.version = version
        self.http_refused = http_refused
        self.engine_stats = engine_stats
        self.ingest = ingest
        self.connector_stats = connector_stats
        self.webhook = webhook

    def collect(self) -> Iterator[Metric]:
        """Every metric, read now (prometheus_client calls this per scrape)."""
        yield from self._run()
        if self.engine_stats is not None:
            yield from self._engine(self.engine_stats())
        yield from self._clients_and_store()
        yield from self._refusals()
        yield from self._alerts()

    def _run(self) -> Iterator[Metric]:
        hub = self.hub
        yield InfoMetricFamily(_PREFIX, "this server run: version, model and session",
                               value={"version": self.version, "model": hub.info.name,
                                      "session": hub.session})
        yield _gauge("start_time_seconds", "when this server run started (Unix seconds)",
                     hub.started_at)
        yield _gauge("streams", "streams open now", len(hub.registry.streams))
        yield _counter("streams_opened", "streams opened since start", hub.registry.opened)
        if self.ingest is not None:
            yield _gauge("calls", "pushed calls live now (/ingest and connectors)",
                         self.ingest.desk.live)

    def _engine(self, stats: EngineStats) -> Iterator[Metric]:
        windows = CounterMetricFamily(
            f"{_PREFIX}_windows", "windows since start: labelled by the model, or dropped "
            "(stale under overload, or left at shutdown)", labels=["outcome"])
        windows.add_metric(["labelled"], stats.windows_done)
        windows.add_metric(["dropped"], stats.windows_dropped)
        yield windows
        yield _gauge("lag_seconds", "age of the oldest window waiting for the model", stats.lag_s)
        yield _counter("audio_blocks_dropped", "capture blocks dropped (hand-off queue full)",
                       stats.blocks_dropped)
        yield _counter("input_overflows", "overflows the audio driver reported",
                       stats.input_overflows)

    def _clients_and_store(self) -> Iterator[Metric]:
        hub = self.hub
        recorder = hub.recorder
        yield _gauge("clients", "/ws clients connected now", hub.fanout.clients)
        yield _counter("client_messages_dropped",
                       "messages dropped for slow /ws clients (their queue was full)",
                       hub.fanout.messages_dropped)
        yield _counter("events_published", "events published (recorded, then fanned out)",
                       hub.events_published)
        yield _counter("events_lost", "events that could not be converted or encoded, or came "
                       "after shutdown", hub.events_lost)
        yield _counter("store_errors", "failed timeline store writes (each failed retry counts)",
                       recorder.errors)
        yield _counter("store_events_dropped",
                       "events the store never got (its retry buffer was full)",
                       recorder.events_dropped)
        yield _gauge("store_pending", "events kept for retry while the store cannot write",
                     recorder.pending)
        yield _counter("log_lines_suppressed", "client-caused log lines left out (rate limit)",
                       hub.counters.log_lines_suppressed)

    def _refusals(self) -> Iterator[Metric]:
        refused = {**self.hub.counters.refused, **self.http_refused}
        yield _by_label("refusals", "requests and connections refused, by limit or check",
                        "reason", refused)
        if self.ingest is not None:
            yield _by_label("ingest_rejections", "/ingest senders rejected, by error code",
                            "reason", self.ingest.rejected)
        if self.connector_stats is not None:
            family = CounterMetricFamily(
                f"{_PREFIX}_connector_refusals", "telephony connector refusals and malformed "
                "messages, by connector and code", labels=["connector", "reason"])
            for name, stats in sorted(self.connector_stats().items()):
                for reason, count in sorted(dict(stats.get("refused", {})).items()):
                    family.add_metric([name, reason], count)
            yield family

    def _alerts(self) -> Iterator[Metric]:
        alerts = self.hub.alerts
        yield _counter("alerts", "alerts started", 0 if alerts is None else alerts.alerts_started)
        webhook = self.webhook
        if webhook is None:
            return
        yield _counter("webhook_deliveries", "alerts the webhook accepted (2xx)", webhook.sent)
        yield _counter("webhook_failures", "alerts given up after every attempt, or refused",
                       webhook.failed)
        yield _counter("webhook_dropped", "alerts dropped unsent (queue full, or shutdown)",
                       webhook.dropped)
        yield _counter("webhook_retries", "webhook attempts retried", webhook.retries)


def metrics_registry(collector: Collector) -> CollectorRegistry:
    """A private registry holding ``collector`` only (never the library's global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render_metrics(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The scrape body and its Content-Type: the Prometheus text format, or OpenMetrics when
    the ``Accept`` header asks for it."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
