"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT_S

from .browser import chromium_page
from .monitor import Monitor, Recorder

pytestmark = pytest.mark.slow

MS = 1000.0
# the chart of the selected stream: the one canvas of its channel in the call view
CHART = "document.querySelector('#call-view .channel[data-stream] canvas.channel-chart')"


async def wait_js(page: Any, expression: str, arg: Any = None, *, what: str) -> Any:
    """Wait until a JavaScript predicate over the page is truthy; its value."""
    try:
        handle = await page.wait_for_function(expression, arg=arg, timeout=TIMEOUT_S * 2 * MS)
    except Exception as exc:  # Playwright's TimeoutError: say what was awaited, show the page
        state = await page.evaluate(
            f"""() => ({{conn: document.getElementById('connection-state')?.dataset.state,
                       label: document.getElementById('current-label')?.dataset.label,
                       points: {CHART}?.dataset.points,
                       calls: Array.from(document.querySelectorAll('#call-list li'))
                                  .map(li => li.dataset.call)}})"""
        )
        raise AssertionError(f"timed out waiting for {what}; page state {state}") from exc
    return await handle.json_value()


async def page_state(page: Any) -> dict[str, Any]:
    """What the page shows, read from its stable element ids and data attributes."""
    return await page.evaluate(
        """() => {
          const $ = id => document.getElementById(id);
          const chart = document.querySelector(
            '#call-view .channel[data-stream] canvas.channel-chart');
          return {
            connection: $('connection-state').dataset.state,
            label: $('current-label').dataset.label,
            label_text: $('current-label').textContent.trim(),
            confidence: $('current-confidence').dataset.value,
            window_info: $('window-info').textContent.trim(),
            points: chart ? Number(chart.dataset.points) : 0,
            chart_stream: chart ? chart.dataset.stream : '',
            charts: document.querySelectorAll('canvas').length,
            selected: window.emotionMonitor ? window.emotionMonitor.state.selected : null,
            call_started: $('call-started').dataset.wallTime,
            call_duration: $('call-duration').textContent,
            channel_time: document.querySelector('#call-view .channel-time')?.textContent,
            channel_confidence: document.querySelector('#call-view .channel-confidence')
                                  ?.textContent,
            bars: Array.from(document.querySelectorAll('#probabilities li'))
                    .map(li => li.dataset.label),
            session: window.emotionMonitor && window.emotionMonitor.state.hello
                       ? window.emotionMonitor.state.hello.session : null,
            labels: window.emotionMonitor ? window.emotionMonitor.state.labels : [],
            calls: Array.from(document.querySelectorAll('#call-list li[data-call]'))
                     .map(li => li.dataset.call),
            channels: Array.from(document.querySelectorAll('#call-view .channel[data-stream]'))
                        .map(ch => ({stream: ch.dataset.stream,
                                     label: ch.querySelector('.channel-label').dataset.label,
                                     points: Number(ch.querySelector('canvas').dataset.points)})),
          };
        }"""
    )


def test_dashboard_shows_live_labels_and_reconnects(
    chromium: str, start_monitor: Any, speech_wav: Path, tmp_path: Path
) -> None:
    """Page connects, label and chart follow events, selector lists the stream, reconnects."""
    monitor: Monitor = start_monitor(["--source", str(speech_wav), "--port", "0", "--no-store"])

    async def scenario() -> dict[str, Any]:
        # A Python client on the same server: what the page shows must be what was sent.
        recorder = Recorder()
        client = asyncio.create_task(recorder.run(monitor.ws_url))
        async with chromium_page(chromium, tmp_path, timeout_s=TIMEOUT_S) as (page, console):
            await page.goto(monitor.url)
            await wait_js(page, "() => document.getElementById('connection-state')"
                                ".dataset.state === 'connected'", what="connected")
            await wait_js(page, f"() => Number({CHART}?.dataset.points) >= 1",
                          what="a first chart point")
            first = await page_state(page)
            # Later windows move the chart on: the page follows the live stream.
            await wait_js(page, f"n => Number({CHART}?.dataset.points) > n", first["points"],
                          what="more chart points")
            live = await page_state(page)
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            match = re.match(r"#(\d+) ", live["window_info"])
            assert match, live
            shown_seq = int(match.group(1))
            await recorder.wait_for(
                lambda r: any(w["seq"] == shown_seq for w in r.windows()),
                timeout_s=TIMEOUT_S, what=f"window {shown_seq} at the Python client",
            )
            shown = next(w for w in recorder.windows() if w["seq"] == shown_seq)
            client.cancel()
            await asyncio.gather(client, return_exceptions=True)

            # The one picker: the call list; choosing the call shows its stream, its URL says so.
            stream = live["chart_stream"]
            assert stream and stream in live["calls"], live
            await page.click(f'#call-list li[data-call="{stream}"] button')
            await wait_js(page, "s => location.hash === '#calls?call=' + encodeURIComponent(s)",
                          stream, what="the chosen call in the URL")
            name = await page.text_content("#stream-name")
            assert name is not None and stream in name

            # The server restarts on the same port: the page reconnects by itself.
            old_session = live["session"]
            assert monitor.stop() == 0, monitor.output()
            await wait_js(page, "() => document.getElementById('connection-state')"
                                ".dataset.state !== 'connected'", what="the page to notice")
            restarted = start_monitor(
                ["--source", str(speech_wav), "--port", str(monitor.port), "--no-store"]
            )
            assert restarted.port == monitor.port
            await wait_js(page, "s => window.emotionMonitor.state.hello && "
                                "window.emotionMonitor.state.hello.session !== s && "
                                "document.getElementById('connection-state').dataset.state "
                                "=== 'connected'", old_session, what="reconnected to the new run")
            await wait_js(page, f"() => Number({CHART}?.dataset.points) >= 1",
                          what="chart points of the new run")
            after = await page_state(page)
            await page.screenshot(path=str(tmp_path / "dashboard-after-restart.png"))
            return {"first": first, "live": live, "after": after, "console": console,
                    "shown": shown}

    seen = asyncio.run(scenario())
    first, live, after = seen["first"], seen["live"], seen["after"]
    labels = set(live["labels"])
    assert labels, live
    assert live["connection"] == "connected"
    assert live["label"] in labels | {"uncertain"}, live
    assert live["label_text"] == live["label"], live
    # The label and confidence on the page are those of the window it says it shows.
    assert live["label"] == seen["shown"]["smoothed_label"], (live, seen["shown"])
    assert float(live["confidence"]) == pytest.approx(seen["shown"]["smoothed_confidence"])
    assert live["bars"] == live["labels"], live
    assert live["points"] > first["points"], (first, live)
    # A stream without "/" (a file, the microphone) is a call of its own with one channel.
    assert live["calls"] == [live["chart_stream"]], live
    [channel] = live["channels"]
    assert channel["stream"] == live["chart_stream"] and channel["label"] == live["label"]
    assert channel["points"] == live["points"], live
    # one chart on the page (the selected call's one channel), no stream picker but the list
    assert live["charts"] == 1 and live["selected"] == live["chart_stream"], live
    # stream seconds come with the time of day, the call's start and its duration, labelled
    assert float(live["call_started"]) > 0 and ":" in live["call_duration"], live
    assert re.fullmatch(r"at stream time \d+\.\d s · \d\d:\d\d:\d\d", live["channel_time"])
    assert re.fullmatch(r"confidence \d\.\d\d", live["channel_confidence"]), live
    assert after["session"] != live["session"] and after["connection"] == "connected", after
    assert (tmp_path / "dashboard.png").stat().st_size > 0
    # Chromium logs each refused reconnect attempt as a console error; anything else is a bug.
    errors = [line for line in seen["console"] if line.startswith(("pageerror", "error"))
              and "WebSocket connection to" not in line]
    assert not errors, errors
