"""Alert rules: parsing, the pure evaluator on synthetic sequences, /ws + store + webhook."""

from __future__ import annotations

import asyncio
import json
import sqlite3
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
    DEFAULT_MAX_GAP_S,
    AlertEvaluator,
    AlertMonitor,
    AlertRule,
    AlertsConfig,
    bind_rules,
    close_reason,
    parse_rule,
)
from server.config import ServerConfig
from server.errors import ServerError
from server.monitor import Monitor
from server.store import read_events
from server.webhook import WebhookConfig, WebhookSender
from streamer.engine import EngineConfig
from streamer.events import SpeechEnd, SpeechStart, StreamClosed, WindowLabel
from streamer.models.loading import load_model
from streamer.protocol.messages import (
    AlertMessage,
    Hello,
    Message,
    SpeechStartMessage,
    StreamCloseMessage,
    WindowMessage,
    decode,
    encode,
)
from streamer.testing import FixedProbabilitiesModel, speech_like
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


def feed(ev: AlertEvaluator, windows: list[tuple[float, float]]) -> list[tuple[Any, ...]]:
    """Windows (end_s, Angry p) of one segment, hop 0.5 s, 2 s long: the changes they cause."""
    out = []
    for t, p in windows:
        for c in ev.update(max(0.0, t - 2.0), t, (p, 1 - p)):
            out.append((t, c.state, c.since_s, round(c.speech_s, 6), c.reason))
    return out


def test_evaluator_starts_after_the_duration_and_ends_below_the_threshold() -> None:
    """Start once the condition held for_s seconds of speech, end (cleared) below it."""
    ev = AlertEvaluator([AlertRule("Angry", 0.7, 1.0)], LABELS)
    seq = [(2.0, 0.8), (2.5, 0.75), (3.0, 0.9), (3.5, 0.95), (4.0, 0.5), (4.5, 0.8), (5.0, 0.8)]
    assert feed(ev, seq) == [(3.0, "start", 2.0, 1.0, ""), (4.0, "end", 2.0, 1.5, "cleared")]
    assert ev.active == ()
    assert ev.close() == []  # the new run (since 4.5) never held 1 s of speech


def test_evaluator_breaks_a_run_at_one_low_window_and_close_ends_an_active_alert() -> None:
    """A dip resets the duration; closing the stream ends the alert with the last probability."""
    ev = AlertEvaluator([AlertRule("Angry", 0.7, 1.0), AlertRule("Happy", 0.0, 0.0)], LABELS)
    states = []
    for t, p in [(2.0, 0.8), (2.5, 0.6), (3.0, 0.8), (3.5, 0.8), (4.0, 0.85)]:
        states += [(t, c.rule.label, c.state) for c in ev.update(t - 2.0, t, (p, 1 - p))]
    assert states == [(2.0, "Happy", "start"), (4.0, "Angry", "start")]
    ended = ev.close()
    assert [(c.rule.label, c.state, c.at_s, c.reason) for c in ended] == [
        ("Angry", "end", 4.0, "stream_closed"), ("Happy", "end", 4.0, "stream_closed")
    ]
    assert ended[0].probability == 0.85 and ended[0].speech_s == 1.0


def test_silence_between_segments_does_not_count_toward_the_duration() -> None:
    """The issue's case: Sad>=0.6 for 3s must not fire on the first window after 5 s of silence."""
    ev = AlertEvaluator([AlertRule("Angry", 0.6, 3.0)], LABELS)
    # segment 1: 0-2.3 s (one window); silence; segment 2 from 7.3 s: windows every 0.5 s
    changes = feed(ev, [(2.0, 0.9), (9.3, 0.9), (9.8, 0.9), (10.3, 0.9)])
    # 9.3: 7.3 s after since_s but only 2 s of speech; 10.3: 2 + 0.5 + 0.5 = 3 s of speech
    assert changes == [(10.3, "start", 2.0, 3.0, "")]


def test_a_pause_up_to_max_gap_keeps_the_speech_time_and_a_longer_one_resets() -> None:
    """Gaps up to max_gap_s pause the clock; a longer one ends the alert (silence) and resets."""
    ev = AlertEvaluator([AlertRule("Angry", 0.6, 1.0)], LABELS, max_gap_s=5.0)
    # 2.0 -> 3.0 is 1 s of speech: the alert starts; a 5 s gap (3.0 -> 8.0) keeps it
    assert feed(ev, [(2.0, 0.9), (2.5, 0.9), (3.0, 0.9), (10.0, 0.9)]) == [
        (3.0, "start", 2.0, 1.0, "")
    ]
    assert ev.active != ()
    # 10.0 -> 16.0 is more than 5 s without a window: the alert ends at the last speech heard
    ended = ev.update(16.0, 18.0, (0.9, 0.1))
    assert [(c.state, c.at_s, c.speech_s, c.reason) for c in ended] == [
        ("end", 10.0, 3.0, "silence")
    ]
    assert ev.active == () and ev.holding  # a new run started at 18.0 with no speech yet
    assert feed(ev, [(18.5, 0.9), (19.0, 0.9)]) == [(19.0, "start", 18.0, 1.0, "")]


def test_speech_time_is_window_audio_never_the_gaps_between() -> None:
    """Windows 3 s apart (one per segment) add their 2 s each, never the 3 s gaps between."""
    ev = AlertEvaluator([AlertRule("Angry", 0.5, 2.5)], LABELS)
    # one window a segment, each 2 s long, 3 s apart: 2 s of speech each after the first
    changes = []
    for end in (2.0, 7.0, 12.0):
        changes += ev.update(end - 2.0, end, (0.9, 0.1))
    assert [(c.at_s, c.speech_s) for c in changes] == [(12.0, 4.0)]


def test_alert_monitor_ends_quiet_streams_by_the_clock_and_names_close_reasons() -> None:
    """expire() ends alerts of streams quiet past max_gap_s; a shutdown close says shutdown."""
    monitor = AlertMonitor([parse_rule("angry>=0.5")], LABELS, max_gap_s=10.0)

    def window(stream: str, t: float) -> WindowLabel:
        return WindowLabel(stream, 0, t - 2, t, 0.0, (0.9, 0.1), "Angry", 0.9, "Angry", 0.9,
                           (0.9, 0.1))

    out: list[AlertMessage] = []
    for stream in ("a", "b"):
        out += monitor.on_event(SpeechStart(stream, 0.0, 100.0), wall_time=100.0)
        out += monitor.on_event(window(stream, 2.0), wall_time=100.0)
    out += monitor.on_event(SpeechEnd("a", 0.0, 2.3, 101.0), wall_time=101.0)
    assert monitor.expire(111.0) == []  # 10 s of quiet: not more than max_gap_s yet
    expired = monitor.expire(111.5)
    out += expired
    out += monitor.on_event(StreamClosed("b", 3.0, 112.0, reason="shutdown"), wall_time=112.0)
    assert [(m.stream, m.state, m.reason, m.at_s) for m in out] == [
        ("a", "start", "", 2.0), ("b", "start", "", 2.0),
        ("a", "end", "silence", 2.0), ("b", "end", "shutdown", 2.0),
    ]
    assert expired[0].wall_time == 111.5 and monitor.expire(200.0) == []
    assert close_reason("idle_timeout") == close_reason("end") == "stream_closed"


def test_alerts_config_checks_the_gap() -> None:
    """max_gap_s must be 0..3600 s; the error names the value."""
    assert AlertsConfig().max_gap_s == DEFAULT_MAX_GAP_S
    with pytest.raises(ServerError, match="max gap must be 0..3600 s, got -1"):
        AlertsConfig(max_gap_s=-1)


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
    assert alerts[0].at_s - alerts[0].since_s >= 1.0 and alerts[0].speech_s >= 1.0
    assert (alerts[0].reason, alerts[1].reason) == ("", "stream_closed")
    assert got.index(alerts[1]) == len(got) - 2  # the end precedes the stream_close
    stored = [m for _, m in read_events(store, types=("alert",))]
    assert stored == alerts
    # the first POST got 500 and was retried; every body is the /ws frame
    assert bodies == [encode(alerts[0]), encode(alerts[0]), encode(alerts[1])]
    assert json.loads(bodies[0])["type"] == "alert"


def test_silence_is_not_counted_and_a_closed_call_says_so_everywhere(tmp_path: Path) -> None:
    """Speech, 5 s of silence, speech: the alert waits for 3 s of speech; the call's end is the
    end reason in the /ws message, the store's alerts view and the webhook body."""
    wav = tmp_path / "call.wav"
    silence = np.zeros(5 * 16000, np.float32)
    sf.write(wav, np.concatenate([speech_like(2.0), silence, speech_like(3.0, seed=1)]), 16000)
    store = tmp_path / "store.sqlite3"
    model = FixedProbabilitiesModel()  # Neutral 0.7 at every window

    async def scenario() -> tuple[list[Message], list[str]]:
        async with StandInWebhook([]) as hook:
            config = ServerConfig(
                port=0, store_path=store, shutdown_timeout_s=TIMEOUT_S,
                alerts=AlertsConfig(rules=(parse_rule("neutral>=0.6 for 3s"),)),
                webhook=WebhookConfig(hook.url),
            )
            async with Monitor(model, engine_config=EngineConfig(), server_config=config) as mon, \
                    connect(mon.ws_url) as ws:
                assert isinstance(await receive(ws), Hello)
                await push_file(wav, mon.ingest_url, stream="c", fast=True)
                got: list[Message] = []
                while not got or not isinstance(got[-1], StreamCloseMessage):
                    got.append(await receive(ws))
            return got, hook.bodies

    got, bodies = run(scenario())
    second = [i for i, m in enumerate(got) if isinstance(m, SpeechStartMessage)][1]
    after_silence = [m for m in got[second:] if isinstance(m, WindowMessage)]
    start, end = [m for m in got if isinstance(m, AlertMessage)]
    # the first window after the silence is far past since_s + 3 s, but not 3 s of speech
    assert after_silence[0].end_s - start.since_s > 3.0
    assert start.at_s > after_silence[0].end_s and start.speech_s >= 3.0
    assert start.at_s - start.since_s >= start.speech_s + 4.0  # the silence is not in speech_s
    assert (end.state, end.reason, end.alert_id) == ("end", "stream_closed", start.alert_id)
    assert end.speech_s >= start.speech_s and got.index(end) == len(got) - 2
    db = sqlite3.connect(store)
    try:
        rows = db.execute("SELECT state, reason, speech_s FROM alerts ORDER BY id").fetchall()
    finally:
        db.close()
    assert rows == [("start", None, start.speech_s), ("end", "stream_closed", end.speech_s)]
    assert bodies == [encode(start), encode(end)]
    assert json.loads(bodies[1])["reason"] == "stream_closed"


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
        (["--alert", "angry>=0.5", "--alert-max-gap-s", "-1"], "alert max gap must be 0..3600 s"),
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
