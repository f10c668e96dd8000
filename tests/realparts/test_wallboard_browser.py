"""The wallboard in a real browser: a hundred live pushed calls, sorted by attention; a reload
selects a live call; an ended call's timeline opened from the store.

The real server runs in this process (``server.monitor.Monitor``) with the zero-cost
``FixedProbabilitiesModel`` (every window: Angry 0.7), a real timeline store and an alert rule;
real WebSocket senders push the calls to ``/ingest``; a Python client on ``/ws`` records what
was sent, so the test can say the page shows exactly that; Debian's Chromium shows the page.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import TIMEOUT_S
from websockets.asyncio.client import connect

from client.push import push_file
from server.alerts import AlertsConfig, parse_rule
from server.config import IngestConfig, ServerConfig
from server.monitor import Monitor
from streamer.audio import float32_to_int16
from streamer.engine import EngineConfig
from streamer.testing import DEFAULT_LABELS, FixedProbabilitiesModel, speech_like

from .browser import chromium_page
from .monitor import Recorder
from .test_calls_browser import settled, wait_page

pytestmark = pytest.mark.slow

RATE_HZ = 16000  # the model's rate: no narrowband warning per stream
NEGATIVE = {"angry", "anger", "sad", "sadness", "fear", "fearful", "disgust", "disgusted",
            "contempt", "frustrated", "frustration"}
# Live calls: some talk long enough for the alert rule ("for 2s"), some briefly (a negative
# label, no alert), the rest stay quiet.
ALERTING, BRIEF, QUIET = 8, 8, 84
ROWS = """() => Array.from(document.querySelectorAll('#wallboard-rows tr[data-call]')).map(tr => ({
  call: tr.dataset.call, rank: Number(tr.dataset.rank), alert: tr.dataset.alert,
  negative: Number(tr.dataset.negative), started: Number(tr.dataset.started),
  cells: Array.from(tr.children).map(td => td.textContent),
  parties: Array.from(tr.querySelectorAll('.party[data-stream]')).map(p => ({
    stream: p.dataset.stream, role: p.dataset.role, label: p.dataset.label,
    confidence: p.dataset.confidence})),
}))"""
STORED = """() => {
  const view = document.getElementById('stored-view');
  return {
    call: view.dataset.call, session: view.dataset.session, state: view.dataset.state,
    status: document.getElementById('stored-status').textContent,
    info: document.getElementById('stored-info').textContent,
    channels: Array.from(view.querySelectorAll('.channel[data-stream]')).map(ch => ({
      stream: ch.dataset.stream, role: ch.querySelector('.channel-role').textContent,
      label: ch.querySelector('.channel-label').dataset.label,
      points: Number(ch.querySelector('canvas.channel-chart').dataset.points),
      utterances: Array.from(ch.querySelectorAll('.channel-utterances li')).map(li => ({
        label: li.dataset.label, start_s: Number(li.dataset.startS),
        end_s: Number(li.dataset.endS)})),
    })),
    alerts: Array.from(document.querySelectorAll('#stored-alerts li[data-alert-id]')).map(li => ({
      id: Number(li.dataset.alertId), stream: li.dataset.stream, state: li.dataset.state,
      reason: li.dataset.endReason, text: li.textContent})),
  };
}"""


def pcm(left: np.ndarray, right: np.ndarray) -> bytes:
    """Two float32 channels as interleaved s16le."""
    return float32_to_int16(np.ascontiguousarray(np.stack([left, right], axis=1))).tobytes()


def call_audio(speech_s: float, seed: int) -> bytes:
    """Silence on the agent's channel; the customer speaks ``speech_s`` seconds, then pauses."""
    pause = np.zeros(int(1.2 * RATE_HZ), np.float32)
    if speech_s:
        customer = np.concatenate([np.zeros(RATE_HZ // 4, np.float32),
                                   speech_like(speech_s, rate_hz=RATE_HZ, seed=seed), pause])
    else:
        customer = pause
    return pcm(np.zeros_like(customer), customer)


@asynccontextmanager
async def held_call(url: str, name: str, audio: bytes) -> AsyncIterator[None]:
    """A pushed call that sends its audio at once (unpaced), stays live, ends on leaving."""
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "ingest_start", "v": 1, "stream": name,
                                  "sample_rate_hz": RATE_HZ, "channels": 2, "format": "s16le",
                                  "roles": ["agent", "customer"]}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        assert ack["type"] == "ingest_ack", ack
        frame = 2 * 2 * RATE_HZ // 10  # 100 ms of stereo s16le
        for i in range(0, len(audio), frame):
            await ws.send(audio[i:i + frame])
        yield
        await ws.send(json.dumps({"type": "ingest_end", "v": 1}))
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT_S)


def attention_order(recorder: Recorder, calls: list[str]) -> list[str]:
    """The live calls in the wallboard's documented order, from what the server sent."""
    started: dict[str, float] = {}
    for m in recorder.of("stream_open"):
        call = m["metadata"]["call"]
        started[call] = min(started.get(call, math.inf), m["wall_time"])
    alert_since: dict[str, float] = {}
    active: dict[int, dict[str, Any]] = {}
    for m in recorder.of("alert"):
        if m["state"] == "start":
            active[m["alert_id"]] = m
        else:
            active.pop(m["alert_id"], None)
    for m in active.values():
        call = m["stream"].split("/")[0]
        alert_since[call] = min(alert_since.get(call, math.inf), m["wall_time"])
    last: dict[str, dict[str, Any]] = {}
    for m in recorder.windows():
        last[m["stream"]] = m
    negative = dict.fromkeys(calls, 0.0)
    for stream, m in last.items():
        if m["smoothed_label"].lower() in NEGATIVE and stream.split("/")[0] in negative:
            call = stream.split("/")[0]
            negative[call] = max(negative[call], m["smoothed_confidence"])

    def key(call: str) -> tuple[Any, ...]:
        since = alert_since.get(call)
        band = math.floor(negative[call] * 10 + 1e-9) / 10
        return (since is None, since or 0.0, -band, started[call])

    return sorted(calls, key=key)


def test_wallboard_sorts_a_hundred_live_calls_and_opens_ended_calls_from_the_store(
    chromium: str, tmp_path: Path
) -> None:
    """100 live calls: one row each in attention order; reloads pick a live call; an ended
    call's chart, utterances and alerts come back from the store."""
    model = FixedProbabilitiesModel(DEFAULT_LABELS, [0.7, 0.1, 0.1, 0.1])
    config = ServerConfig(
        port=0, store_path=tmp_path / "store.sqlite3", shutdown_timeout_s=TIMEOUT_S,
        alerts=AlertsConfig(rules=(parse_rule("angry>=0.5 for 2s"),)),
        ingest=IngestConfig(idle_timeout_s=600.0),  # the live calls stay quiet a while
        client_queue_size=4096,  # room for every live call's events in a reload's backlog
    )
    ended_wav = tmp_path / "ended.wav"
    speech = np.concatenate([speech_like(4.0, rate_hz=RATE_HZ, seed=9),
                             np.zeros(RATE_HZ, np.float32)])
    sf.write(str(ended_wav), np.stack([speech, np.zeros_like(speech)], axis=1), RATE_HZ,
             subtype="PCM_16")
    ended = ["done-1", "done-2", "done-3"]
    groups = ([("alert", 4.0)] * ALERTING + [("brief", 1.0)] * BRIEF + [("quiet", 0.0)] * QUIET)
    live = [f"live-{i:03d}" for i in range(len(groups))]

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with Monitor(model, engine_config=EngineConfig(), server_config=config) as running:
            recorder = Recorder()
            client = asyncio.create_task(recorder.run(running.ws_url))
            await recorder.wait_for(lambda r: bool(r.of("hello")), timeout_s=TIMEOUT_S,
                                    what="hello")
            for name in ended:  # calls that ended before the page was opened
                await push_file(ended_wav, running.ingest_url, stream=name,
                                roles=("agent", "customer"), fast=True)
            await recorder.wait_for(lambda r: len(r.of("stream_close")) == 2 * len(ended),
                                    timeout_s=TIMEOUT_S, what="the ended calls' closes")
            async with chromium_page(chromium, tmp_path, timeout_s=TIMEOUT_S) as (page, console):
                await page.goto(running.url + "#wallboard")
                await wait_page(page, """n => document.querySelectorAll(
                    '#past-list li[data-state="ended"]').length === n""", len(ended),
                    what="the ended calls listed from the store")
                seen["past"] = await page.evaluate("""() => Array.from(
                    document.querySelectorAll('#past-list li')).map(li => ({
                      call: li.dataset.call, session: li.dataset.session,
                      state: li.dataset.state, text: li.textContent}))""")
                async with _live_calls(running.ingest_url, live, groups):
                    await recorder.wait_for(
                        lambda r: _all_in(r, live, groups), timeout_s=TIMEOUT_S * 4,
                        what="every live call opened, alerts started, brief utterances")
                    expected = attention_order(recorder, live)
                    await wait_page(page, """order => {
                        const rows = document.querySelectorAll('#wallboard-rows tr[data-call]');
                        return rows.length === order.length &&
                          Array.from(rows).every((tr, i) => tr.dataset.call === order[i]);
                      }""", expected, what="100 rows in attention order")
                    seen["rows"] = await page.evaluate(ROWS)
                    seen["count"] = await page.evaluate(
                        "() => document.getElementById('wallboard-count').dataset")
                    await page.screenshot(path=str(tmp_path / "wallboard.png"), full_page=True)
                    seen.update(await _open_and_reload(page, running.url, expected))
                    seen["expected"] = expected
                    seen["stored"] = await _open_stored(page, "done-2", tmp_path / "stored.png")
                seen["recorder"] = recorder
                seen["console"] = list(console)
            client.cancel()
            await asyncio.gather(client, return_exceptions=True)
        return seen

    seen = asyncio.run(scenario())
    recorder: Recorder = seen["recorder"]
    expected: list[str] = seen["expected"]
    rows = seen["rows"]

    # One row per live call, none for the ended ones, in the documented order.
    assert [r["call"] for r in rows] == expected and len(rows) == len(live)
    assert [r["rank"] for r in rows] == list(range(len(live)))
    alerting = {name for name, (kind, _) in zip(live, groups, strict=True) if kind == "alert"}
    brief = {name for name, (kind, _) in zip(live, groups, strict=True) if kind == "brief"}
    assert {r["call"] for r in rows[:ALERTING]} == alerting
    assert {r["call"] for r in rows[ALERTING:ALERTING + BRIEF]} == brief
    assert all(r["alert"] == "true" for r in rows[:ALERTING])
    assert all(r["alert"] == "false" for r in rows[ALERTING:])
    assert all(r["negative"] == pytest.approx(0.7) for r in rows[:ALERTING + BRIEF])
    assert all(r["negative"] == 0 for r in rows[ALERTING + BRIEF:])
    quiet_rows = rows[ALERTING + BRIEF:]
    assert [r["started"] for r in quiet_rows] == sorted(r["started"] for r in quiet_rows)
    assert seen["count"]["live"] == str(len(live)) and seen["count"]["alerts"] == str(ALERTING)
    # Each party's current label and confidence: those of its latest window.
    last = {m["stream"]: m for m in recorder.windows()}
    for row in rows:
        assert [p["role"] for p in row["parties"]] == ["agent", "customer"]
        for party in row["parties"]:
            window = last.get(party["stream"])
            assert party["label"] == (window["smoothed_label"] if window else "")
            if window:
                assert float(party["confidence"]) == pytest.approx(
                    window["smoothed_confidence"])
        assert row["cells"][1].count(":") == 2  # the start's time of day
        assert ":" in row["cells"][2]  # the duration, m:ss
    assert "Angry>=0.5 for 2s" in rows[0]["cells"][3] and "customer" in rows[0]["cells"][3]

    # A row opens its call's live view; a reload comes back to it; a fresh page picks the
    # live call that needs attention most, never an ended call.
    assert seen["clicked"] == {"view": expected[4], "hash": f"#calls?call={expected[4]}",
                               "calls_shown": True}, seen["clicked"]
    assert seen["reloaded"] == expected[4]
    assert seen["fresh"] == expected[0]

    # The ended calls, listed from the store, newest first; one opened from there.
    session = recorder.session()
    assert [(p["call"], p["session"], p["state"]) for p in seen["past"]] == [
        (name, session, "ended") for name in reversed(ended)]
    stored = seen["stored"]
    assert stored["state"] == "loaded" and stored["call"] == "done-2", stored
    assert stored["session"] == session and "lasted" in stored["info"]
    channels = {ch["stream"]: ch for ch in stored["channels"]}
    assert list(channels) == ["done-2/agent", "done-2/customer"]
    agent_windows = [w for w in recorder.windows() if w["stream"] == "done-2/agent"]
    assert channels["done-2/agent"]["points"] == len(agent_windows) > 0
    assert channels["done-2/agent"]["label"] == agent_windows[-1]["smoothed_label"]
    assert channels["done-2/customer"]["points"] == 0
    sent = [u for u in recorder.of("utterance") if u["stream"] == "done-2/agent"]
    assert sent and [(u["label"], u["start_s"], u["end_s"]) for u in
                     channels["done-2/agent"]["utterances"]] == [
        (u["label"], u["start_s"], u["end_s"]) for u in reversed(sent)]
    alert_ends = {m["alert_id"]: m for m in recorder.of("alert")
                  if m["stream"] == "done-2/agent" and m["state"] == "end"}
    assert alert_ends and [a["id"] for a in stored["alerts"]] == sorted(alert_ends, reverse=True)
    for shown in stored["alerts"]:
        end = alert_ends[shown["id"]]
        assert shown["state"] == "end" and shown["reason"] == end.get("reason", "")
        assert end["rule"] in shown["text"]
    errors = [line for line in seen["console"] if line.startswith(("pageerror", "error"))]
    assert not errors, errors


def _all_in(recorder: Recorder, live: list[str], groups: list[tuple[str, float]]) -> bool:
    """Every live call's streams opened, alerts started and brief utterances labelled."""
    opened = {m["stream"] for m in recorder.of("stream_open")}
    alerted = {m["stream"] for m in recorder.of("alert") if m["state"] == "start"}
    spoke = {m["stream"] for m in recorder.of("utterance")}
    for name, (kind, _) in zip(live, groups, strict=True):
        if {f"{name}/agent", f"{name}/customer"} - opened:
            return False
        if kind == "alert" and f"{name}/customer" not in alerted:
            return False
        if kind in ("alert", "brief") and f"{name}/customer" not in spoke:
            return False
    return True


@asynccontextmanager
async def _live_calls(url: str, live: list[str], groups: list[tuple[str, float]]
                      ) -> AsyncIterator[None]:
    """The live calls, opened one after another (distinct start times), held until the end."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        for i, (name, (_, speech_s)) in enumerate(zip(live, groups, strict=True)):
            await stack.enter_async_context(held_call(url, name, call_audio(speech_s, seed=i)))
        yield


async def _open_and_reload(page: Any, url: str, expected: list[str]) -> dict[str, Any]:
    """Click a wallboard row; reload; then open the page afresh (no hash): what is selected."""
    chosen = expected[4]
    await page.click(f'#wallboard-rows tr[data-call="{chosen}"] td.wb-duration')
    await wait_page(page, """c => document.getElementById('call-view').dataset.call === c &&
        !document.getElementById('calls-page').hidden""", chosen, what="the chosen call's view")
    clicked = await page.evaluate("""() => ({
        view: document.getElementById('call-view').dataset.call, hash: location.hash,
        calls_shown: !document.getElementById('calls-page').hidden})""")
    await page.reload()
    await settled(page, "reload")
    await wait_page(page, "() => document.getElementById('call-view').dataset.call !== ''",
                    what="a call shown after the reload")
    reloaded = await page.evaluate("() => document.getElementById('call-view').dataset.call")
    await page.goto("about:blank")
    await page.goto(url)
    await settled(page, "a fresh page")
    await wait_page(page, "() => document.getElementById('call-view').dataset.call !== ''",
                    what="a call shown on a fresh page")
    fresh = await page.evaluate("() => document.getElementById('call-view').dataset.call")
    return {"clicked": clicked, "reloaded": reloaded, "fresh": fresh}


async def _open_stored(page: Any, call: str, shot: Path) -> dict[str, Any]:
    """From the wallboard's list of ended calls, open one; what the stored view shows."""
    await page.evaluate("() => { location.hash = '#wallboard'; }")
    link = f'#past-list li[data-call="{call}"] a'
    await page.wait_for_selector(link)
    await page.click(link)
    await wait_page(page, """() => ['loaded', 'error'].includes(
        document.getElementById('stored-view').dataset.state)""", what="the stored call")
    await page.screenshot(path=str(shot), full_page=True)
    return dict(await page.evaluate(STORED))
