"""The terminal view: state, line format, live renderer, and `watch` plain output."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import signal

import pytest
from conftest import TIMEOUT_S
from rich.console import Console
from test_client_api import StandInServer, hello, real_server, window
from test_log import start_command, wait_for_line

from client.api import Disconnected, EventClient
from client.errors import ClientError
from client.watch import (
    StatsThrottle,
    WatchConfig,
    WatchState,
    format_event,
    label_style,
    render,
    watch_live,
)
from streamer.protocol.messages import (
    AlertMessage,
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


def alert(alert_id: int, stream: str, state: str, reason: str = "") -> AlertMessage:
    return AlertMessage(alert_id=alert_id, stream=stream, state=state, rule="Sad>=0.6 for 3s",
                        label="Sad", threshold=0.6, for_s=3.0, since_s=2.0, at_s=13.7,
                        probability=0.62, wall_time=1.7e9, reason=reason, speech_s=4.5)


def test_alert_lines_say_the_speech_time_and_why_an_alert_ended() -> None:
    """A plain alert line carries speech=...; an end line its reason."""
    assert format_event(alert(3, "c/customer", "start")) == (
        "alert start #3 c/customer Sad>=0.6 for 3s since=2.00s at=13.70s p=0.62 speech=4.5s")
    assert format_event(alert(3, "c/customer", "end", "stream_closed")) == (
        "alert end #3 c/customer Sad>=0.6 for 3s since=2.00s at=13.70s p=0.62 speech=4.5s "
        "reason=stream_closed")


def close(stream: str, wall_time: float) -> StreamCloseMessage:
    return StreamCloseMessage(stream=stream, end_s=9.0, wall_time=wall_time)


def rendered(state: WatchState, now: float) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render(state, now=now))
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_live_streams_come_first_and_closed_ones_age_out() -> None:
    """Live streams by name, then closed ones latest first, gone keep_closed_s after closing."""
    state = WatchState(url="ws://x/ws", config=WatchConfig(keep_closed_s=60.0))
    state.apply(hello("s1", ("zeta", "alpha", "old", "recent")))
    state.apply(close("old", 1000.0))
    state.apply(close("recent", 1030.0))
    assert [v.name for v in state.visible(1050.0)] == ["alpha", "zeta", "recent", "old"]
    assert [v.name for v in state.visible(1061.0)] == ["alpha", "zeta", "recent"]
    text = rendered(state, 1061.0)
    assert text.index("alpha") < text.index("zeta") < text.index("recent (closed)")
    assert "old" not in text
    state.prune(1061.0)
    assert sorted(state.streams) == ["alpha", "recent", "zeta"]
    state.apply(StreamOpenMessage(stream="recent", sample_rate_hz=16000, wall_time=1062.0))
    assert [v.name for v in state.visible(2000.0)] == ["alpha", "recent", "zeta"]


def test_a_reconnect_closes_streams_that_ended_while_away() -> None:
    """Hello of the same run: a stream we had open that it does not list is closed, aged by
    its last event."""
    state = WatchState(url="ws://x/ws", config=WatchConfig(keep_closed_s=10.0))
    state.apply(hello("s1", ("mic", "call")))
    state.apply(window(1, stream="call"))  # wall time 1.7e9 + 0.5
    state.apply(alert(1, "call", "start"))
    state.apply(hello("s1", ("mic",)))
    view = state.streams["call"]
    assert not view.open and view.alerts == {} and view.closed_wall == 1.7e9
    assert [v.name for v in state.visible(1.7e9 + 11.0)] == ["mic"]


def test_active_alerts_show_on_their_stream_and_ended_ones_with_their_reason() -> None:
    """A start shows on its stream's row; an end moves it to the ended list with its reason."""
    state = WatchState(url="ws://x/ws")
    state.apply(hello("s1", ("c/agent", "c/customer")))
    state.apply(alert(1, "c/customer", "start"))
    state.apply(alert(2, "c/agent", "start"))
    assert list(state.streams["c/customer"].alerts) == [1]
    text = rendered(state, 1.7e9)
    assert text.count("▲ Sad>=0.6 for 3s since 2.0 s") == 2 and "ended alerts" not in text
    state.apply(alert(1, "c/customer", "end", "stream_closed"))
    state.apply(alert(2, "c/agent", "end", "silence"))
    state.apply(alert(2, "c/agent", "end", "silence"))  # a backlog replay: listed once
    assert state.streams["c/customer"].alerts == {} and [a.alert_id for a in
                                                          state.ended_alerts] == [2, 1]
    text = rendered(state, 1.7e9)
    assert "▲" not in text
    assert "#2 c/agent Sad>=0.6 for 3s: no speech for too long at 13.7 s" in text
    assert "#1 c/customer Sad>=0.6 for 3s: stream closed at 13.7 s (p 0.62, 4.5 s of speech)" \
        in text
    for i in range(3, 10):
        state.apply(alert(i, "c/agent", "end", "cleared"))
    assert [a.alert_id for a in state.ended_alerts] == [9, 8, 7, 6, 5]


def test_stats_throttle_prints_first_then_every_interval_or_on_trouble() -> None:
    """The plain stats line: the first, then after every_s, or at once when a drop changes."""
    throttle = StatsThrottle(30.0)
    at = [dataclasses.replace(STATS, wall_time=t) for t in (100.0, 110.0, 129.9, 130.0, 140.0)]
    dropped = dataclasses.replace(STATS, wall_time=141.0, windows_dropped=2)
    refused = dataclasses.replace(STATS, wall_time=142.0, windows_dropped=2,
                                  refused={"ws_clients": 1})
    busy = dataclasses.replace(STATS, wall_time=143.0, windows_dropped=2, windows_done=99,
                               lag_s=1.5, refused={"ws_clients": 1})
    assert [throttle.due(s) for s in (*at, dropped, refused, busy)] == [
        True, False, False, True, False, True, True, False
    ]
    every = StatsThrottle(0.0)
    assert all(every.due(s) for s in at)
    with pytest.raises(ClientError, match=r"\(--stats-every-s\) must be 0..86400 seconds, got -1"):
        WatchConfig(stats_every_s=-1)


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
                proc = await start_command("watch", srv.ws_url, "--no-reconnect",
                                           "--stats-every-s", "30")
                assert proc.stdout is not None
                await wait_for_line(proc.stdout, r"^window mic #2 ", seen)
                for wall, dropped in ((100.0, 1), (110.0, 1), (115.0, 2), (140.0, 2),
                                      (145.0, 2)):
                    hub.publish(dataclasses.replace(STATS, wall_time=wall,
                                                    windows_dropped=dropped))
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
    # stats at most every 30 s (server time) unless a drop counter changed: 100, 115, 145
    assert [line.split()[3] for line in lines if line.startswith("stats ")] == [
        "dropped=1", "dropped=2", "dropped=2"
    ]
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
