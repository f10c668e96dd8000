"""GET /metrics: the Prometheus text format from a real server with traffic, and who may read it."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Awaitable
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.alerts import AlertsConfig, parse_rule
from server.auth import Credentials, SecurityConfig
from server.config import ServerConfig
from server.metrics import render_metrics
from server.monitor import Monitor
from server.webhook import WebhookConfig
from streamer.audio import float32_to_int16
from streamer.engine import EngineConfig
from streamer.protocol.messages import (
    ErrorMessage,
    IngestAck,
    IngestEnd,
    IngestStart,
    StreamCloseMessage,
    decode,
    encode,
)
from streamer.testing import FixedProbabilitiesModel, speech_like
from tests.conftest import TIMEOUT_S
from tests.test_webhook import Receiver

ADMIN = "admin-token-0123456789abcdef"
VIEW = "view-token-0123456789abcdef"

#: family name -> type of every metric a server with ingest and a webhook exposes
EXPECTED = {
    "emotion_monitor_info": "gauge",  # an info metric: one sample of 1 with the labels
    "emotion_monitor_start_time_seconds": "gauge",
    "emotion_monitor_streams": "gauge",
    "emotion_monitor_streams_opened": "counter",
    "emotion_monitor_calls": "gauge",
    "emotion_monitor_windows": "counter",
    "emotion_monitor_lag_seconds": "gauge",
    "emotion_monitor_audio_blocks_dropped": "counter",
    "emotion_monitor_input_overflows": "counter",
    "emotion_monitor_clients": "gauge",
    "emotion_monitor_client_messages_dropped": "counter",
    "emotion_monitor_events_published": "counter",
    "emotion_monitor_events_lost": "counter",
    "emotion_monitor_store_errors": "counter",
    "emotion_monitor_store_events_dropped": "counter",
    "emotion_monitor_store_pending": "gauge",
    "emotion_monitor_log_lines_suppressed": "counter",
    "emotion_monitor_refusals": "counter",
    "emotion_monitor_ingest_rejections": "counter",
    "emotion_monitor_alerts": "counter",
    "emotion_monitor_webhook_deliveries": "counter",
    "emotion_monitor_webhook_failures": "counter",
    "emotion_monitor_webhook_dropped": "counter",
    "emotion_monitor_webhook_retries": "counter",
}


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


def get(port: int, path: str, **headers: str) -> tuple[int, str, str]:
    """One GET: status, Content-Type and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        conn.close()


def parse(
    text: str, *, webhook: bool = True
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (sample name, sorted labels); checks each family's name and type (the
    webhook's only where one is configured)."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    expected = {name: kind for name, kind in EXPECTED.items()
                if webhook or not name.startswith("emotion_monitor_webhook")}
    assert types == expected
    return samples


async def scrape(
    port: int, *, webhook: bool = True, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics, checked and parsed (see :func:`parse`)."""
    status, content_type, body = await asyncio.to_thread(get, port, "/metrics", **headers)
    assert status == 200, body
    assert content_type.startswith("text/plain; version=")
    return parse(body, webhook=webhook)


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def push_call(url: str, stream: str) -> None:
    """A real sender: ingest_start, 4 s of speech in 0.1 s frames, ingest_end."""
    audio = np.concatenate([speech_like(3.0), np.zeros(16000, np.float32)])
    async with connect(url) as ws:
        await ws.send(encode(IngestStart(stream=stream, sample_rate_hz=16000, channels=1,
                                         format="s16le")))
        assert isinstance(decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S)), IngestAck)
        for i in range(0, audio.size, 1600):
            await ws.send(float32_to_int16(audio[i : i + 1600]).tobytes())
        await ws.send(encode(IngestEnd()))
        try:
            await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        except ConnectionClosed:
            pass


async def rejected_call(url: str) -> str:
    """A sender the server rejects (three channels); the error code it got."""
    async with connect(url) as ws:
        await ws.send(encode(IngestStart(stream="bad", sample_rate_hz=16000, channels=3,
                                         format="s16le")))
        error = decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    assert isinstance(error, ErrorMessage), error
    return error.code


def test_metrics_scraped_from_a_server_with_traffic_move() -> None:
    """Streams, windows, clients, events, alerts, ingest rejections and webhook deliveries."""

    async def scenario() -> None:
        async with Receiver([200, 400]) as hook:
            config = ServerConfig(
                port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S,
                alerts=AlertsConfig(rules=(parse_rule("neutral>=0.5"),)),
                webhook=WebhookConfig(f"http://{hook.base}/hook", max_attempts=1),
            )
            monitor = Monitor(FixedProbabilitiesModel(), engine_config=EngineConfig(),
                              server_config=config)
            async with monitor as m:
                before = await scrape(m.port)
                assert value(before, "emotion_monitor_streams_opened_total") == 0
                assert value(before, "emotion_monitor_clients") == 0
                info = [k for k in before if k[0] == "emotion_monitor_info"]
                assert dict(info[0][1])["session"] == m.session
                async with connect(m.ws_url) as client:
                    code = await rejected_call(m.ingest_url)
                    await push_call(m.ingest_url, "call")
                    while not isinstance(message := decode(await asyncio.wait_for(
                            client.recv(), TIMEOUT_S)), StreamCloseMessage):
                        pass
                    assert message.stream == "call/ch0"
                    during = await scrape(m.port)
                assert value(during, "emotion_monitor_clients") == 1
                assert value(during, "emotion_monitor_streams_opened_total") == 1
                assert value(during, "emotion_monitor_streams") == 0
                labelled = value(during, "emotion_monitor_windows_total", outcome="labelled")
                assert labelled > 0 and labelled == message.windows
                assert value(during, "emotion_monitor_windows_total", outcome="dropped") == (
                    message.windows_dropped)
                assert value(during, "emotion_monitor_events_published_total") > value(
                    before, "emotion_monitor_events_published_total")
                assert value(during, "emotion_monitor_alerts_total") == 1
                assert value(during, "emotion_monitor_ingest_rejections_total", reason=code) == 1
                assert value(during, "emotion_monitor_refusals_total", reason="ws_clients") == 0
            # the webhook's queue is sent at shutdown: the same registry, read after it
            body, _ = render_metrics(m.server.metrics, None)  # type: ignore[union-attr]
            after = parse(body.decode())
            assert value(after, "emotion_monitor_webhook_deliveries_total") == 1
            assert value(after, "emotion_monitor_webhook_failures_total") == 1  # the 400
            assert len(hook.requests) == 2

    run(scenario())


def test_metrics_need_an_admin_credential_when_tokens_are_configured() -> None:
    """No credential: 401; a view token: 403; an admin Bearer token: the metrics."""

    async def scenario() -> None:
        credentials = Credentials.from_tokens([("view", VIEW), ("admin", ADMIN)])
        config = ServerConfig(port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S,
                              security=SecurityConfig(credentials=credentials))
        async with Monitor(FixedProbabilitiesModel(), engine_config=EngineConfig(),
                           server_config=config) as m:
            status, _, body = await asyncio.to_thread(get, m.port, "/metrics")
            assert status == 401 and "admin token" in body
            status, _, _ = await asyncio.to_thread(get, m.port, "/metrics",
                                                   Authorization=f"Bearer {VIEW}")
            assert status == 403
            samples = await scrape(m.port, webhook=False, Authorization=f"Bearer {ADMIN}")
            assert value(samples, "emotion_monitor_refusals_total", reason="auth") == 2

    run(scenario())
