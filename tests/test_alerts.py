"""Alert rules: parsing, the pure evaluator on synthetic sequences, /ws + store + webhook."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from client.push import push_file
from server.alerts import (
    AlertEvaluator,
    AlertMonitor,
    AlertRule,
    AlertsConfig,
    bind_rules,
    parse_rule,
)
from server.config import ServerConfig
from server.errors import ServerError
from server.monitor import Monitor
from server.store import read_events
from server.webhook import WebhookConfig, WebhookSender
from streamer.engine import EngineConfig
from streamer.events import StreamClosed, WindowLabel
from streamer.models.loading import load_model
from streamer.protocol.messages import (
    AlertMessage,
    Hello,
    Message,
    StreamCloseMessage,
    decode,
    encode,
)
from streamer.testing import speech_like
from tests.conftest import REPO, TIMEOUT_S

LABELS = ("Angry", "Happy")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("angry>=0.7 for 5s", AlertRule("angry", 0.7, 5.0)),
        ("  Angry >= .5  ", AlertRule("Angry", 0.5, 0.0)),
        ("SAD>=1 for 0.5 s", AlertRule("SAD", 1.0, 0.5)),
    ],
)
def test_parse_rule_accepts_the_documented_forms(text: str, rule: AlertRule) -> None:
    """LABEL>=THRESHOLD [for Ns], spaces and case free."""
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("angry>0.7", "write LABEL>=THRESHOLD"),
        ("angry>=0.7 for 5", "write LABEL>=THRESHOLD"),
        ("", "write LABEL>=THRESHOLD"),
        ("angry>=1.5", "threshold must be 0..1"),
        ("angry>=0.5 for 5000s", "duration must be 0..3600"),
    ],
)
def test_parse_rule_errors_name_the_problem(text: str, needle: str) -> None:
    """A bad rule is one ServerError quoting the rule and what is allowed."""
    with pytest.raises(ServerError, match=needle) as info:
        parse_rule(text)
    assert repr(text) in str(info.value)


def test_bind_rules_matches_labels_case_insensitively_and_refuses_unknown() -> None:
    """Labels resolve to the model's spelling; an unknown label lists the model's labels."""
    assert bind_rules([parse_rule("angry>=0.7")], LABELS) == (AlertRule("Angry", 0.7, 0.0),)
    with pytest.raises(ServerError, match="unknown label 'calm'; the model's labels are Angry, "):
        bind_rules([parse_rule("calm>=0.7")], LABELS)


def test_evaluator_starts_after_the_duration_and_ends_below_the_threshold() -> None:
    """Start once the condition held for_s seconds, end at the first window below it."""
    ev = AlertEvaluator([AlertRule("Angry", 0.7, 1.0)], LABELS)
    seq = [(2.0, 0.8), (2.5, 0.75), (3.0, 0.9), (3.5, 0.95), (4.0, 0.5), (4.5, 0.8), (5.0, 0.8)]
    changes = [(t, c.state, c.since_s, c.probability) for t, p in seq
               for c in ev.update(t, (p, 1 - p))]
    assert changes == [(3.0, "start", 2.0, 0.9), (4.0, "end", 2.0, 0.5)]
    assert ev.active == ()
    assert ev.close() == []  # the new run (since 4.5) never lasted 1 s


def test_evaluator_breaks_a_run_at_one_low_window_and_close_ends_an_active_alert() -> None:
    """A dip resets the duration; closing the stream ends the alert with the last probability."""
    ev = AlertEvaluator([AlertRule("Angry", 0.7, 1.0), AlertRule("Happy", 0.0, 0.0)], LABELS)
    states = []
    for t, p in [(1.0, 0.8), (1.5, 0.6), (2.0, 0.8), (2.5, 0.8), (3.0, 0.85)]:
        states += [(t, c.rule.label, c.state) for c in ev.update(t, (p, 1 - p))]
    assert states == [(1.0, "Happy", "start"), (3.0, "Angry", "start")]
    ended = ev.close()
    assert [(c.rule.label, c.state, c.at_s) for c in ended] == [
        ("Angry", "end", 3.0), ("Happy", "end", 3.0)
    ]
    assert ended[0].probability == 0.85


def test_alert_monitor_numbers_alerts_per_run_and_per_stream() -> None:
    """Start and end of one alert share alert_id; streams are evaluated separately."""
    monitor = AlertMonitor([parse_rule("angry>=0.5")], LABELS)

    def window(stream: str, t: float, p: float) -> WindowLabel:
        return WindowLabel(stream, 0, t - 2, t, 0.0, (p, 1 - p), "Angry", p, "Angry", p, (p, 1 - p))

    out: list[AlertMessage] = []
    out += monitor.on_event(window("a", 2.0, 0.9), wall_time=1.0)
    out += monitor.on_event(window("b", 2.0, 0.9), wall_time=1.0)
    out += monitor.on_event(window("a", 2.5, 0.1), wall_time=1.0)
    out += monitor.on_event(StreamClosed("b", 3.0, 1.0), wall_time=1.0)
    assert [(m.stream, m.state, m.alert_id) for m in out] == [
        ("a", "start", 1), ("b", "start", 2), ("a", "end", 1), ("b", "end", 2)
    ]
    assert out[0].rule == "Angry>=0.5 for 0s"
    assert decode(encode(out[0])) == out[0]


class StandInWebhook:
    """An outer-edge fake: a tiny HTTP receiver answering POSTs with scripted statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[str] = []
        self.received = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        assert head.startswith(b"POST /hook ")
        self.bodies.append((await reader.readexactly(length)).decode())
        status = self.statuses.pop(0) if self.statuses else 200
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                     .encode())
        await writer.drain()
        writer.close()
        self.received.set()

    async def __aenter__(self) -> StandInWebhook:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture(scope="module")
def tiny_model(tiny_wav2vec2: Path) -> Any:
    return load_model(str(tiny_wav2vec2), device="cpu")


@asynccontextmanager
async def alerting_monitor(model: Any, store: Path, url: str) -> AsyncIterator[Monitor]:
    config = ServerConfig(
        port=0, store_path=store, shutdown_timeout_s=TIMEOUT_S,
        alerts=AlertsConfig(rules=(parse_rule("neutral>=0.0 for 1s"),)),
        webhook=WebhookConfig(url, max_attempts=3),
    )
    async with Monitor(model, engine_config=EngineConfig(), server_config=config) as running:
        yield running


def test_alerts_reach_ws_store_and_a_retried_webhook(tmp_path: Path, tiny_model: Any) -> None:
    """A rule that must hold fires start/end on /ws and in the store; the webhook gets a retry."""
    wav = tmp_path / "call.wav"
    sf.write(wav, np.concatenate([speech_like(3.0), np.zeros(8000, np.float32)]), 16000)
    store = tmp_path / "store.sqlite3"

    async def scenario() -> tuple[list[Message], list[str]]:
        async with StandInWebhook([500]) as hook:
            async with alerting_monitor(tiny_model, store, hook.url) as running, \
                    connect(running.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                await push_file(wav, running.ingest_url, stream="c", fast=True)
                got: list[Message] = []
                while not got or not isinstance(got[-1], StreamCloseMessage):
                    got.append(await receive(ws))
            return got, hook.bodies  # the monitor's close sent the webhook's queue

    got, bodies = run(scenario())
    alerts = [m for m in got if isinstance(m, AlertMessage)]
    assert [(a.state, a.alert_id, a.label) for a in alerts] == [
        ("start", 1, "Neutral"), ("end", 1, "Neutral")
    ]
    assert alerts[0].at_s - alerts[0].since_s >= 1.0
    assert got.index(alerts[1]) == len(got) - 2  # the end precedes the stream_close
    stored = [m for _, m in read_events(store, types=("alert",))]
    assert stored == alerts
    # the first POST got 500 and was retried; every body is the /ws frame
    assert bodies == [encode(alerts[0]), encode(alerts[0]), encode(alerts[1])]
    assert json.loads(bodies[0])["type"] == "alert"


async def receive(ws: Any) -> Message:
    return decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))


def test_webhook_queue_is_bounded_drop_oldest_and_gives_up_after_max_attempts() -> None:
    """A dead receiver: submit never waits, the queue drops its oldest, attempts are bounded."""

    async def scenario() -> WebhookSender:
        async with StandInWebhook([503, 503, 503, 503]) as hook:
            sender = WebhookSender(WebhookConfig(hook.url, queue_size=2, max_attempts=2,
                                                 backoff_initial_s=0.05, backoff_max_s=0.05))
            for i in range(5):  # queued before the task runs: 3 are dropped
                sender.submit(json.dumps({"n": i}))
            await sender.start()
            await sender.close(TIMEOUT_S)
            assert [json.loads(b)["n"] for b in hook.bodies] == [3, 3, 4, 4]
            return sender

    sender = run(scenario())
    assert (sender.sent, sender.failed, sender.dropped, sender.retries) == (0, 2, 3, 2)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--alert", "calm>=0.5"], "unknown label 'calm'; the model's labels are"),
        (["--alert", "angry>0.5"], "bad alert rule 'angry>0.5'"),
        (["--webhook", "ftp://example.org/x"], "webhook URL must be http(s)"),
    ],
)
def test_run_refuses_bad_alert_flags_with_one_line(flags: list[str], needle: str) -> None:
    """Bad --alert or --webhook: exit 2 and one line on stderr naming the problem."""
    result = subprocess.run(
        [sys.executable, "-m", "server", "run", "--source", "none", "--port", "0", "--no-store",
         *flags],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S * 2,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], result.stderr
