"""Live calls on the dashboard in a real browser: pushed stereo calls, channels, utterances, alerts.

The real server runs with ``--source none`` (pushed calls only); ``emotion-monitor push`` sends
files to its ``WS /ingest`` in real time; Debian's Chromium shows the page; a Python client on
the same server records what was sent, so the test can say the page shows exactly that.
"""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, TIMEOUT_S

from streamer.testing import speech_like

from .browser import chromium_page
from .monitor import Monitor, Recorder, base_env
from .procs import OutputProcess, monitor_command

pytestmark = pytest.mark.slow

MS = 1000.0
RATE_HZ = 8000  # telephony audio, as calls arrive from gateways
# The bundled model's labels; the four probabilities sum to 1, so at every window at least one
# is >= 0.25 and one of these rules holds: a labelled channel always raises an alert.
LABELS = tuple(
    json.loads((REPO / "streamer" / "bundled" / "config.json").read_text())["id2label"].values()
)
ALERT_RULES = tuple(f"{label}>=0.25" for label in LABELS)

# What the page shows about calls, read from its stable ids, classes and data attributes.
CALLS_STATE = """() => {
  const data = (root, sel, key) => Array.from(root.querySelectorAll(sel)).map(n => n.dataset[key]);
  const view = document.getElementById('call-view');
  return {
    connection: document.getElementById('connection-state').dataset.state,
    session: window.emotionMonitor.state.hello ? window.emotionMonitor.state.hello.session : null,
    calls: Array.from(document.querySelectorAll('#call-list li[data-call]')).map(li => ({
      call: li.dataset.call, open: li.dataset.open, alert: li.dataset.alert,
      pressed: li.querySelector('button').getAttribute('aria-pressed'),
      chips: Array.from(li.querySelectorAll('.chip[data-stream]')).map(c => ({
        stream: c.dataset.stream, label: c.dataset.label,
        text: c.querySelector('.chip-label').textContent})),
    })),
    view: view.dataset.call,
    view_open: view.dataset.open,
    channels: Array.from(view.querySelectorAll('.channel[data-stream]')).map(ch => ({
      stream: ch.dataset.stream, open: ch.dataset.open,
      role: ch.querySelector('.channel-role').textContent,
      label: ch.querySelector('.channel-label').dataset.label,
      label_text: ch.querySelector('.channel-label').textContent,
      live: ch.querySelector('.channel-label').getAttribute('aria-live'),
      confidence: ch.querySelector('.channel-confidence').dataset.value,
      speaking: ch.querySelector('.channel-speech').dataset.speaking,
      points: Number(ch.querySelector('canvas.channel-chart').dataset.points),
      chart_stream: ch.querySelector('canvas.channel-chart').dataset.stream,
      utterances: Array.from(ch.querySelectorAll('.channel-utterances li')).map(li => ({
        label: li.dataset.label, start_s: Number(li.dataset.startS),
        end_s: Number(li.dataset.endS), confidence: Number(li.dataset.confidence)})),
    })),
    alerts: Array.from(document.querySelectorAll('#alerts li[data-alert-id]')).map(li => ({
      id: Number(li.dataset.alertId), stream: li.dataset.stream, label: li.dataset.label,
      rule: li.dataset.rule, state: li.dataset.state, value: Number(li.dataset.value),
      text: li.textContent})),
    selected: window.emotionMonitor.state.selected,
    utterance_count: view.querySelector('.channel-utterance-count') ?
      view.querySelector('.channel-utterance-count').dataset.total : null,
  };
}"""


async def wait_page(page: Any, expression: str, arg: Any = None, *, what: str) -> None:
    """Wait (Playwright polls, with a deadline) until a JavaScript predicate over the page holds."""
    try:
        await page.wait_for_function(expression, arg=arg, timeout=TIMEOUT_S * 2 * MS)
    except Exception as exc:  # Playwright's TimeoutError: say what was awaited, show the page
        state = await page.evaluate(CALLS_STATE)
        raise AssertionError(f"timed out waiting for {what}; page state {state}") from exc


async def settled(page: Any, what: str) -> None:
    """Wait for a new connection's hello, a stats frame after its backlog, then a render.

    The server sends hello, the backlog, then live frames (stats every second): once a stats
    frame of this connection arrived and the page rendered after it, the page shows the backlog.
    """
    await wait_page(page, """() => window.emotionMonitor.state.hello &&
        window.emotionMonitor.state.hello !== window.__lastHello &&
        document.getElementById('connection-state').dataset.state === 'connected'""",
                    what=f"{what}: a new hello")
    await page.evaluate("""() => { window.__lastHello = window.emotionMonitor.state.hello;
                                   window.__stats = window.emotionMonitor.state.stats; }""")
    await wait_page(page, "() => window.emotionMonitor.state.stats !== window.__stats",
                    what=f"{what}: stats after the backlog")
    await page.evaluate("() => { window.__renders = window.emotionMonitor.renders; }")
    await wait_page(page, "() => window.emotionMonitor.renders > window.__renders",
                    what=f"{what}: a render")


def stereo_call(path: Path, *, seed: int) -> Path:
    """Speech-like audio on the left (agent) channel, digital silence on the right (customer)."""
    lead = np.zeros(RATE_HZ // 2, dtype=np.float32)
    tail = np.zeros(2 * RATE_HZ, dtype=np.float32)
    left = np.concatenate([lead, speech_like(6.0, rate_hz=RATE_HZ, seed=seed), tail])
    sf.write(str(path), np.stack([left, np.zeros_like(left)], axis=1), RATE_HZ,
             subtype="PCM_16")
    return path


def mono_call(path: Path, *, seed: int) -> Path:
    """A one-channel call: speech-like audio between short silences."""
    lead = np.zeros(RATE_HZ // 2, dtype=np.float32)
    audio = np.concatenate([lead, speech_like(5.0, rate_hz=RATE_HZ, seed=seed, pitch_hz=210.0),
                            lead])
    sf.write(str(path), audio, RATE_HZ, subtype="PCM_16")
    return path


def final_alerts(recorder: Recorder) -> dict[int, dict[str, Any]]:
    """alert_id -> the alert's start message, with ``state`` the latest state received."""
    alerts: dict[int, dict[str, Any]] = {}
    for m in recorder.of("alert"):
        if m["alert_id"] not in alerts:
            alerts[m["alert_id"]] = dict(m)
        alerts[m["alert_id"]]["state"] = m["state"]
    return alerts


def test_dashboard_shows_pushed_calls_channels_utterances_and_alerts(
    chromium: str, start_monitor: Any, tmp_path: Path
) -> None:
    """Two pushed calls: listed apart, per-channel labels/charts where speech is, alerts shown."""
    rules = [arg for rule in ALERT_RULES for arg in ("--alert", rule)]
    monitor: Monitor = start_monitor(["--source", "none", "--port", "0", "--no-store", *rules])
    ingest = monitor.url.replace("http", "ws", 1) + "/ingest"
    call_1 = stereo_call(tmp_path / "call-1.wav", seed=1)
    call_2 = mono_call(tmp_path / "call-2.wav", seed=2)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)

    async def scenario(pushes: ExitStack) -> dict[str, Any]:
        recorder = Recorder()
        client = asyncio.create_task(recorder.run(monitor.ws_url))
        async with chromium_page(chromium, tmp_path, timeout_s=TIMEOUT_S) as (page, console):
            # The page's /ws goes through to the real server; the test can drop the connection.
            sockets: list[tuple[Any, Any]] = []

            def route(ws: Any) -> None:
                sockets.append((ws, ws.connect_to_server()))

            await page.route_web_socket(re.compile(r"/ws$"), route)
            await page.goto(monitor.url)
            await wait_page(page, "() => document.getElementById('connection-state')"
                                  ".dataset.state === 'connected'", what="connected")
            await recorder.wait_for(lambda r: bool(r.of("hello")), timeout_s=TIMEOUT_S,
                                    what="hello at the Python client")
            empty = await page.evaluate(CALLS_STATE)

            # Two calls pushed at the same time, in real time, as live calls arrive.
            senders = [
                pushes.enter_context(OutputProcess(
                    monitor_command("push", str(path), ingest, "--stream", stream, *roles),
                    env=base_env(home), cwd=REPO, log_path=tmp_path / f"push-{stream}.log",
                ))
                for path, stream, roles in (
                    (call_1, "call-1", ("--roles", "agent,customer")),
                    (call_2, "call-2", ()),
                )
            ]
            await wait_page(page, """() => {
                const one = document.querySelectorAll(
                  '#call-list li[data-call="call-1"] .chip[data-stream]');
                const two = document.querySelector('#call-list li[data-call="call-2"]');
                return one.length === 2 && two !== null;
              }""", what="both calls and call-1's two channels in the call list")
            await page.click('#call-list li[data-call="call-1"] button')
            await wait_page(page, """() => {
                const ch = document.querySelector(
                  '#call-view[data-call="call-1"] .channel[data-stream="call-1/agent"]');
                return ch && ch.querySelector('.channel-label').dataset.label !== '' &&
                  Number(ch.querySelector('canvas.channel-chart').dataset.points) >= 1;
              }""", what="a label and chart points on call-1's agent channel")
            live = await page.evaluate(CALLS_STATE)
            await page.screenshot(path=str(tmp_path / "calls-live.png"), full_page=True)

            for sender in senders:
                code = await asyncio.to_thread(sender.wait_exit, timeout_s=TIMEOUT_S * 2)
                assert code == 0, sender.output()
            # Both calls end: each stays listed, marked ended, with what it showed.
            await recorder.wait_for(
                lambda r: len(r.of("stream_close")) == 3, timeout_s=TIMEOUT_S,
                what="the three channels' stream_close at the Python client",
            )
            await wait_page(page, """() => ['call-1', 'call-2'].every(c => {
                const li = document.querySelector(`#call-list li[data-call="${c}"]`);
                return li && li.dataset.open === 'false';
              })""", what="both calls marked ended")
            agent = [w for w in recorder.windows() if w["stream"] == "call-1/agent"]
            utterances = [u for u in recorder.of("utterance") if u["stream"] == "call-1/agent"]
            alerts = final_alerts(recorder)
            # The page has caught up with everything the server sent.
            await wait_page(page, """([points, utterances, alerts]) => {
                const ch = document.querySelector('.channel[data-stream="call-1/agent"]');
                const ended = document.querySelectorAll('#alerts li[data-state="end"]').length;
                return Number(ch.querySelector('canvas.channel-chart').dataset.points) === points &&
                  ch.querySelectorAll('.channel-utterances li').length === utterances &&
                  ended === alerts;
              }""", [len(agent), len(utterances), len(alerts)],
                what="every window, utterance and ended alert of the run on the page")
            ended = await page.evaluate(CALLS_STATE)
            await page.screenshot(path=str(tmp_path / "calls-ended.png"), full_page=True)

            # The one-channel call on its own: one channel, one chart.
            await page.click('#call-list li[data-call="call-2"] button')
            await wait_page(page, "() => document.getElementById('call-view')"
                                  ".dataset.call === 'call-2'", what="call-2 in the call view")
            await wait_page(page, """() => document.querySelector(
                '#call-view .channel[data-stream="call-2/ch0"] .channel-label').dataset.label""",
                what="call-2's label in the call view")
            single = await page.evaluate(CALLS_STATE)
            await page.screenshot(path=str(tmp_path / "calls-single.png"), full_page=True)

            # The connection drops: the page reconnects to the same run, whose backlog resends
            # the calls' events; nothing shows twice.
            await page.evaluate("() => { window.__lastHello = window.emotionMonitor.state.hello; }")
            page_side, server_side = sockets[-1]
            await page_side.close(code=4000, reason="network drop (test)")
            await server_side.close()
            await settled(page, "reconnect")
            # A frame of a type this page does not know (a newer server) changes nothing.
            page_side, _ = sockets[-1]
            page_side.send(json.dumps(
                {"type": "call_summary", "v": 1, "stream": "call-1/agent", "label": "Angry"}))
            await page.evaluate("() => { window.__renders = window.emotionMonitor.renders; }")
            await wait_page(page, "() => window.emotionMonitor.renders > window.__renders",
                            what="a render after the unknown frame")
            reconnected = await page.evaluate(CALLS_STATE)
            # A new page (reload) shows the ended calls from the backlog alone.
            await page.reload()
            await settled(page, "reload")
            reloaded = await page.evaluate(CALLS_STATE)
            await page.screenshot(path=str(tmp_path / "calls-reloaded.png"), full_page=True)
            # A newer server says why an alert ended (reason, speech_s): the page shows it.
            page_side, _ = sockets[-1]
            alert = {"type": "alert", "v": 1, "alert_id": 999, "stream": "call-2/ch0",
                     "state": "start", "rule": "Angry>=0.9 for 1s", "label": "Angry",
                     "threshold": 0.9, "for_s": 1.0, "since_s": 1.0, "at_s": 2.0,
                     "probability": 0.95, "wall_time": 2e9}
            page_side.send(json.dumps(alert))
            page_side.send(json.dumps({**alert, "state": "end", "at_s": 3.0, "wall_time": 2e9 + 1,
                                       "reason": "stream_closed", "speech_s": 4.5}))
            await wait_page(page, """() => {
                const li = document.querySelector('#alerts li[data-alert-id="999"]');
                return li && li.dataset.state === 'end' && li.dataset.endReason !== '';
              }""", what="the injected alert ended with its reason")
            reason = await page.evaluate("""() => {
                const li = document.querySelector('#alerts li[data-alert-id="999"]');
                return {reason: li.dataset.endReason, text: li.textContent}; }""")
            client.cancel()
            await asyncio.gather(client, return_exceptions=True)
            return {"empty": empty, "live": live, "ended": ended, "single": single,
                    "reconnected": reconnected, "reloaded": reloaded, "sockets": len(sockets),
                    "reason": reason,
                    "recorder": recorder, "console": list(console)}

    with ExitStack() as pushes:
        seen = asyncio.run(scenario(pushes))
    recorder: Recorder = seen["recorder"]
    empty, live, ended, single = seen["empty"], seen["live"], seen["ended"], seen["single"]
    labels = set(recorder.of("hello")[0]["labels"])
    assert empty["calls"] == [] and empty["alerts"] == [], empty

    # The call list: two entries, call-1 with its two channels, call-2 with one (no roles).
    calls = {c["call"]: c for c in ended["calls"]}
    assert set(calls) == {"call-1", "call-2"}, ended["calls"]
    assert [c["stream"] for c in calls["call-1"]["chips"]] == ["call-1/agent", "call-1/customer"]
    assert [c["stream"] for c in calls["call-2"]["chips"]] == ["call-2/ch0"]
    assert calls["call-1"]["pressed"] == "true" and calls["call-2"]["pressed"] == "false"

    # The agent channel shows the labels of its windows; the silent customer channel none.
    windows = recorder.windows()
    assert {w["stream"] for w in windows} == {"call-1/agent", "call-2/ch0"}, "speech only"
    agent_windows = [w for w in windows if w["stream"] == "call-1/agent"]
    channels = {ch["stream"]: ch for ch in ended["channels"]}
    assert list(channels) == ["call-1/agent", "call-1/customer"], ended["channels"]
    agent, customer = channels["call-1/agent"], channels["call-1/customer"]
    assert agent["role"] == "agent" and customer["role"] == "customer"
    assert agent["label"] == agent_windows[-1]["smoothed_label"], (agent, agent_windows[-1])
    assert float(agent["confidence"]) == pytest.approx(agent_windows[-1]["smoothed_confidence"])
    assert agent["label"] in labels | {"uncertain"} and agent["label"] in agent["label_text"]
    assert agent["points"] == len(agent_windows) and agent["chart_stream"] == "call-1/agent"
    assert agent["live"] == "polite"
    assert customer["label"] == "" and customer["points"] == 0 and customer["utterances"] == []
    assert agent["open"] == customer["open"] == "false" and ended["view_open"] == "false"
    assert {c["stream"]: c["label"] for c in calls["call-1"]["chips"]} == {
        "call-1/agent": agent["label"], "call-1/customer": ""}
    # while the call was live, the page showed it live with the agent labelled
    live_calls = {c["call"]: c for c in live["calls"]}
    assert live_calls["call-1"]["open"] == "true" and live["view"] == "call-1", live
    assert live["selected"] == "call-1/agent", live

    # Utterances: all of the agent's closed speech segments (up to the page's cap of 200),
    # newest first, as the server labelled them.
    sent = [u for u in recorder.of("utterance") if u["stream"] == "call-1/agent"]
    assert sent, "speech-like audio closes at least one speech segment"
    shown = agent["utterances"]
    assert [(u["label"], u["start_s"], u["end_s"]) for u in shown] == [
        (u["label"], u["start_s"], u["end_s"]) for u in reversed(sent)]
    assert ended["utterance_count"] == str(len(sent))
    assert not [u for u in recorder.of("utterance") if u["stream"] == "call-1/customer"]

    # Alerts: exactly the alerts the server raised, newest on top, each ended with its stream.
    alerts = final_alerts(recorder)
    assert alerts, "one of the rules holds at every labelled window"
    assert {a["stream"] for a in alerts.values()} <= {"call-1/agent", "call-2/ch0"}
    page_alerts = ended["alerts"]
    assert [a["id"] for a in page_alerts] == sorted(alerts, reverse=True), page_alerts
    for shown_alert in page_alerts:
        sent_alert = alerts[shown_alert["id"]]
        assert shown_alert["stream"] == sent_alert["stream"]
        assert shown_alert["label"] == sent_alert["label"]
        assert shown_alert["rule"] == sent_alert["rule"]
        assert shown_alert["state"] == "end" == sent_alert["state"]
        assert shown_alert["value"] == pytest.approx(sent_alert["probability"])
        assert sent_alert["stream"] in shown_alert["text"]
        assert sent_alert["rule"] in shown_alert["text"]

    # The one-channel call: its own view with one channel and its chart.
    assert single["view"] == "call-2" and single["selected"] == "call-2/ch0", single
    [channel] = single["channels"]
    ch0_windows = [w for w in windows if w["stream"] == "call-2/ch0"]
    assert channel["stream"] == "call-2/ch0" and channel["points"] == len(ch0_windows) >= 1
    assert channel["label"] == ch0_windows[-1]["smoothed_label"]

    # After a reconnect (and an unknown frame) and after a reload (no call is live, so the
    # call the URL names) the page shows the same.
    assert seen["sockets"] == 3
    assert seen["reconnected"] == single
    assert seen["reloaded"] == single
    assert seen["reason"]["reason"] == "stream_closed", seen["reason"]
    assert "ended: call closed" in seen["reason"]["text"]
    assert "after 4.5 s of speech" in seen["reason"]["text"]

    assert (tmp_path / "calls-ended.png").stat().st_size > 0
    errors = [line for line in seen["console"] if line.startswith(("pageerror", "error"))]
    assert not errors, errors


def test_dashboard_keeps_up_with_fifty_concurrent_calls(
    chromium: str, start_monitor: Any, tmp_path: Path
) -> None:
    """Fifty stereo calls pushed at once: all listed with their labels, one call drawn at a time."""
    from client.push import push_file

    n = 50
    monitor: Monitor = start_monitor(["--source", "none", "--port", "0", "--no-store"])
    ingest = monitor.url.replace("http", "ws", 1) + "/ingest"
    audio = stereo_call(tmp_path / "call.wav", seed=3)
    names = [f"call-{i}" for i in range(1, n + 1)]

    async def scenario() -> dict[str, Any]:
        recorder = Recorder()
        client = asyncio.create_task(recorder.run(monitor.ws_url))
        async with chromium_page(chromium, tmp_path, timeout_s=TIMEOUT_S) as (page, console):
            await page.goto(monitor.url)
            await wait_page(page, "() => document.getElementById('connection-state')"
                                  ".dataset.state === 'connected'", what="connected")
            await recorder.wait_for(lambda r: bool(r.of("hello")), timeout_s=TIMEOUT_S,
                                    what="hello at the Python client")
            # The real push client, fifty calls from one process, paced in real time.
            pushes = asyncio.gather(*(
                push_file(audio, ingest, stream=name, roles=("agent", "customer"))
                for name in names
            ))
            try:
                await wait_page(page, "n => document.querySelectorAll("
                                      "'#call-list li[data-call]').length === n", n,
                                what=f"{n} calls in the call list")
                # The page answers while every call is live: choosing a call shows it.
                await page.click('#call-list li[data-call="call-37"] button')
                await wait_page(page, """() => document.getElementById('call-view')
                    .dataset.call === 'call-37' &&
                    document.querySelectorAll('#call-view .channel').length === 2""",
                    what="call-37 in the call view")
                results = await asyncio.wait_for(pushes, TIMEOUT_S * 4)
            finally:
                pushes.cancel()
                await asyncio.gather(pushes, return_exceptions=True)
            await recorder.wait_for(
                lambda r: len(r.of("stream_close")) == 2 * n, timeout_s=TIMEOUT_S * 2,
                what="every channel's stream_close at the Python client",
            )
            expected: dict[str, str] = {}
            for w in recorder.windows():
                expected[w["stream"]] = w["smoothed_label"]
            await wait_page(page, """expected => {
                const chips = document.querySelectorAll('#call-list .chip[data-stream]');
                const label = c => expected[c.dataset.stream] || '';
                return chips.length === 2 * Object.keys(expected).length &&
                  Array.from(chips).every(c => c.dataset.label === label(c)) &&
                  document.querySelectorAll('#call-list li[data-open="true"]').length === 0;
              }""", expected, what="every call ended, each channel with its last label")
            final = await page.evaluate(CALLS_STATE)
            counts = await page.evaluate("""() => ({
                live: document.getElementById('call-count').dataset.live,
                ended: document.getElementById('call-count').dataset.ended,
                charts: document.querySelectorAll('canvas.channel-chart').length})""")
            await page.screenshot(path=str(tmp_path / "fifty-calls.png"), full_page=True)
            client.cancel()
            await asyncio.gather(client, return_exceptions=True)
            return {"final": final, "counts": counts, "expected": expected, "results": results,
                    "console": list(console)}

    seen = asyncio.run(scenario())
    assert [r.streams for r in seen["results"]] == [
        (f"{name}/agent", f"{name}/customer") for name in names]
    # Speech on every agent channel, none on the customers'; all of it on the page.
    assert set(seen["expected"]) == {f"{name}/agent" for name in names}
    final = seen["final"]
    assert sorted(c["call"] for c in final["calls"]) == sorted(names)
    assert [c["call"] for c in final["calls"]] == names, "natural order: call-2 before call-10"
    assert seen["counts"] == {"live": "0", "ended": str(n), "charts": 2}, seen["counts"]
    assert final["view"] == "call-37" and [ch["stream"] for ch in final["channels"]] == [
        "call-37/agent", "call-37/customer"]
    errors = [line for line in seen["console"] if line.startswith(("pageerror", "error"))]
    assert not errors, errors
