"""The terminal view: state, line format, live renderer, and `watch` plain output."""

from __future__ import annotations

import asyncio
import io
import signal

from conftest import TIMEOUT_S
from rich.console import Console
from test_client_api import StandInServer, hello, real_server, window
from test_log import start_command, wait_for_line

from client.api import Disconnected, EventClient
from client.watch import WatchState, format_event, label_style, render, watch_live
from streamer.protocol.messages import (
    SpeechEndMessage,
    SpeechStartMessage,
    StatsMessage,
    StreamCloseMessage,
    StreamOpenMessage,
)

STATS = StatsMessage(
    wall_time=1.7e9,
    lag_s=0.25,
    windows_done=12,
    windows_dropped=1,
    blocks_dropped=0,
    input_overflows=2,
    clients=3,
    client_messages_dropped=4,
)


def test_every_event_has_a_plain_line() -> None:
    """Each message type and the disconnect marker format to one readable line."""
    lines = [
        format_event(hello("s1")),
        format_event(window(4)),
        format_event(SpeechStartMessage(stream="mic", start_s=1.25, wall_time=1.0)),
        format_event(SpeechEndMessage(stream="mic", start_s=1.25, end_s=3.5, wall_time=1.0)),
        format_event(StreamOpenMessage(stream="mic", sample_rate_hz=48000, wall_time=1.0)),
        format_event(StreamCloseMessage(stream="mic", end_s=9.0, wall_time=1.0)),
        format_event(STATS),
        format_event(Disconnected(reason="connection lost", retry_in_s=0.5, attempt=1)),
    ]
    assert lines == [
        "hello session=s1 model=tiny labels=Angry,Happy,Neutral,Sad window=2s hop=0.5s streams=mic",
        "window mic #4 2.00-4.00s smoothed=Happy 0.60 raw=Happy 0.70 "
        "Angry=0.10 Happy=0.70 Neutral=0.10 Sad=0.10",
        "speech_start mic 1.25s",
        "speech_end mic 1.25-3.50s",
        "stream_open mic 48000 Hz",
        "stream_close mic 9.00s end",
        "stats lag=0.25s windows=12 dropped=1 blocks_dropped=0 overflows=2 clients=3 "
        "client_drops=4",
        "disconnected: connection lost; retrying in 0.5 s",
    ]


def test_state_follows_speech_windows_and_a_new_session() -> None:
    """Speech and windows update their stream; a Hello of another session clears old streams."""
    state = WatchState(url="ws://x/ws")
    state.apply(hello("s1", ("mic", "call")))
    state.apply(SpeechStartMessage(stream="mic", start_s=0.0, wall_time=5.0))
    state.apply(window(1))
    assert state.connection == "connected"
    assert state.streams["mic"].speaking and state.streams["mic"].window == window(1)
    state.apply(Disconnected(reason="connection lost", retry_in_s=1.0, attempt=1))
    assert state.connection.startswith("reconnecting in 1.0 s")
    state.apply(hello("s1", ("mic", "call")))  # the same run: keep what we know
    assert state.streams["mic"].window == window(1)
    state.apply(hello("s2", ("other",)))  # a restart: start over
    assert sorted(state.streams) == ["other"] and state.streams["other"].window is None


def test_live_view_shows_label_confidence_bars_and_stats() -> None:
    """The rich view names each stream with its smoothed label, confidence, bars and stats."""
    state = WatchState(url="ws://127.0.0.1:1/ws")
    state.apply(hello("s1", ("mic", "call")))
    state.apply(window(2))
    state.apply(SpeechStartMessage(stream="mic", start_s=0.0, wall_time=1.7e9))
    state.apply(STATS)
    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(render(state, now=1.7e9 + 3.0))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "connected" in text and "HAPPY" in text and "0.60" in text
    assert "● speech" in text and "call" in text and "█" in text
    assert "lag=0.25s" in text and "dropped=1" in text
    assert label_style("uncertain") == "grey50" and label_style("Angry") == "red"


def test_watch_command_prints_plain_lines_when_not_a_terminal() -> None:
    """`watch` on a pipe prints hello and windows as lines, then exits 0 when the server goes."""

    async def main() -> tuple[int | None, list[str]]:
        seen: list[str] = []
        proc = None
        try:
            async with real_server("run1", windows=[window(i) for i in range(3)]) as (hub, srv):
                proc = await start_command("watch", srv.ws_url, "--no-reconnect")
                assert proc.stdout is not None
                await wait_for_line(proc.stdout, r"^window mic #2 ", seen)
                hub.publish(SpeechStartMessage(stream="mic", start_s=7.0, wall_time=1.7e9))
                await wait_for_line(proc.stdout, r"^speech_start mic 7.00s", seen)
            async with asyncio.timeout(TIMEOUT_S):
                out, _ = await proc.communicate()
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        return proc.returncode, seen + out.decode().splitlines(keepends=True)

    code, lines = asyncio.run(main())
    assert code == 0
    assert lines[0].startswith("hello session=run1 model=tiny ")
    assert [line.split()[2] for line in lines if line.startswith("window ")] == ["#0", "#1", "#2"]
    assert lines[-1].startswith("disconnected: server closed the connection (1001")


def test_live_view_draws_events_and_reconnects() -> None:
    """watch_live draws a server's windows on a terminal and shows a lost connection."""

    async def main() -> str:
        console = Console(file=io.StringIO(), force_terminal=True, width=120)
        script = [hello("run1"), window(0), window(1), window(2), STATS]
        async with StandInServer([script]) as server:
            client = EventClient(server.url, backoff_initial_s=0.01, backoff_max_s=0.05)
            async with asyncio.timeout(TIMEOUT_S), asyncio.TaskGroup() as group:
                group.create_task(watch_live(client, console, refresh_s=0.05))
                await server.exhausted.wait()  # the client is back: it drew the first run
                await client.close()
        return console.file.getvalue()  # type: ignore[attr-defined]

    text = asyncio.run(main())
    assert "HAPPY" in text and "#2 1.0-3.0s" in text and "lag=0.25s" in text
    assert "reconnecting in" in text


def test_watch_exits_0_on_ctrl_c_while_reconnecting() -> None:
    """Ctrl-C (SIGINT) stops `watch` cleanly with exit code 0, even between reconnect attempts."""

    async def main() -> tuple[int | None, str]:
        async with StandInServer([]) as server:
            url = server.url  # nothing listens here once the server is gone
        proc = await start_command("watch", url, "--backoff-initial-s", "5")
        try:
            assert proc.stdout is not None
            line = await wait_for_line(proc.stdout, r"^disconnected: cannot connect", [])
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(TIMEOUT_S):
                await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return proc.returncode, line

    code, line = asyncio.run(main())
    assert code == 0
    assert "retrying in" in line
