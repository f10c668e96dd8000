"""The terminal view behind ``emotion-monitor watch`` (the CLI's event loop).

A pure core and a thin shell: :class:`WatchState` folds events into what the view shows,
:func:`format_event` turns one event into one plain line, :class:`StatsThrottle` decides which
stats get a plain line, :func:`render` turns the state into a rich renderable.
:func:`watch_plain` and :func:`watch_live` are the loops that feed them from an
:class:`~client.api.EventClient`; the caller (the CLI) owns the console or the line writer.

What the live view shows (:class:`WatchConfig`): live streams first (by name), then closed
ones, most recently closed first, until ``keep_closed_s`` after their ``stream_close`` (server
time); each stream's active alerts; the latest ended alerts with why they ended. The plain
view prints a ``stats`` line for the first stats message, then at most every
``stats_every_s`` (server time), or sooner when a counter that signals trouble changed.

Imports only the protocol home (:mod:`streamer.protocol`), the client API and rich.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from client.api import ClientEvent, Disconnected, EventClient
from client.errors import ClientError
from streamer.protocol.limits import UNCERTAIN
from streamer.protocol.messages import (
    AlertMessage,
    ErrorMessage,
    Hello,
    IngestAck,
    IngestEnd,
    IngestStart,
    SpeechEndMessage,
    SpeechStartMessage,
    StatsMessage,
    StreamCloseMessage,
    StreamOpenMessage,
    Subscribe,
    UtteranceMessage,
    WindowMessage,
)

__all__ = [
    "StatsThrottle",
    "StreamView",
    "WatchConfig",
    "WatchState",
    "format_event",
    "label_style",
    "render",
    "watch_live",
    "watch_plain",
]

# One colour per label, the same in the dashboard (server/static/app.js); grey for "uncertain".
_LABEL_STYLES: Mapping[str, str] = {
    "angry": "red",
    "happy": "yellow",
    "neutral": "cyan",
    "sad": "blue",
    "fear": "magenta",
    "surprise": "green",
    "disgust": "dark_orange",
    "calm": "bright_cyan",
}
_PALETTE = ("green", "magenta", "dark_orange", "bright_blue", "orchid", "spring_green3")
_BAR_WIDTH = 12
_MAX_RECENT_ALERTS = 5  # ended alerts listed under the table
#: what an alert end's ``reason`` means, in words (unknown codes are shown as they are)
_END_REASONS: Mapping[str, str] = {
    "cleared": "cleared",
    "silence": "no speech for too long",
    "stream_closed": "stream closed",
    "shutdown": "server stopped",
}


def label_style(label: str, labels: tuple[str, ...] = ()) -> str:
    """The rich colour of a label: fixed for common emotions, grey for uncertain, else by index."""
    if label == UNCERTAIN:
        return "grey50"
    known = _LABEL_STYLES.get(label.lower())
    if known is not None:
        return known
    index = labels.index(label) if label in labels else sum(label.encode())
    return _PALETTE[index % len(_PALETTE)]


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """What ``watch`` shows: ``keep_closed_s`` (``--keep-closed-s``), how long a closed stream
    stays listed; ``stats_every_s`` (``--stats-every-s``), the plain view's stats interval
    (0: every stats message)."""

    keep_closed_s: float = 60.0
    stats_every_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("keep_closed_s", "stats_every_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= value <= 86400.0:
                flag = "--" + name.replace("_", "-")
                raise ClientError(f"{name} ({flag}) must be 0..86400 seconds, got {value!r}")


@dataclass
class StreamView:
    """What the view knows about one stream; ``alerts``: its active alerts by ``alert_id``."""

    name: str
    open: bool = True
    speaking: bool = False
    window: WindowMessage | None = None
    updated_wall: float | None = None  # wall-clock time of the last event on this stream
    closed_wall: float | None = None  # wall-clock time of its stream_close (server time)
    alerts: dict[int, AlertMessage] = field(default_factory=dict)


@dataclass
class WatchState:
    """Everything the terminal view shows, folded from events (pure: no I/O, no clock).

    ``ended_alerts`` holds the latest ended alerts, newest first (at most five).
    """

    url: str
    connection: str = "connecting"
    hello: Hello | None = None
    streams: dict[str, StreamView] = field(default_factory=dict)
    stats: StatsMessage | None = None
    last_error: str | None = None
    ended_alerts: list[AlertMessage] = field(default_factory=list)
    config: WatchConfig = field(default_factory=WatchConfig)

    def _stream(self, name: str) -> StreamView:
        view = self.streams.get(name)
        if view is None:
            view = self.streams[name] = StreamView(name)
        return view

    def apply(self, event: ClientEvent) -> None:
        """Fold one event into the state."""
        if isinstance(event, Disconnected):
            if event.retry_in_s is None:
                self.connection = f"disconnected ({event.reason})"
            else:
                self.connection = f"reconnecting in {event.retry_in_s:.1f} s ({event.reason})"
            return
        if isinstance(event, Hello):
            self._hello(event)
            return
        if isinstance(event, StatsMessage):
            self.stats = event
            return
        if isinstance(event, ErrorMessage):
            self.last_error = f"{event.code}: {event.message}"
            return
        if isinstance(event, (Subscribe, IngestStart, IngestAck, IngestEnd)):
            return  # not sent on /ws
        view = self._stream(event.stream)
        view.updated_wall = event.wall_time
        if isinstance(event, StreamOpenMessage):
            view.open, view.closed_wall = True, None
        elif isinstance(event, StreamCloseMessage):
            view.open, view.speaking, view.closed_wall = False, False, event.wall_time
        elif isinstance(event, SpeechStartMessage):
            view.speaking = True
        elif isinstance(event, SpeechEndMessage):
            view.speaking = False
        elif isinstance(event, WindowMessage):
            view.window = event
        elif isinstance(event, AlertMessage):
            self._alert(view, event)

    def _hello(self, event: Hello) -> None:
        """A new server run starts over; the same run after a reconnect keeps what we know,
        and what was open then but is not now ended while we were away."""
        if self.hello is None or self.hello.session != event.session:
            self.streams.clear()  # a new server run: old windows no longer apply
            self.stats = None
            self.ended_alerts.clear()
        self.hello = event
        self.connection = "connected"
        live = {info.stream for info in event.streams}
        for view in self.streams.values():
            if view.open and view.name not in live:
                view.open, view.speaking, view.closed_wall = False, False, view.updated_wall
                view.alerts.clear()
        for name in live:
            self._stream(name).open = True

    def _alert(self, view: StreamView, alert: AlertMessage) -> None:
        if alert.state != "end":
            view.alerts[alert.alert_id] = alert
            return
        view.alerts.pop(alert.alert_id, None)
        if any(a.alert_id == alert.alert_id for a in self.ended_alerts):
            return  # the backlog replayed after a reconnect
        self.ended_alerts.insert(0, alert)
        del self.ended_alerts[_MAX_RECENT_ALERTS:]

    def visible(self, now: float) -> list[StreamView]:
        """Streams to list at ``now``: live ones by name, then closed ones, latest closed first,
        while closed for at most ``keep_closed_s``."""
        live = sorted((v for v in self.streams.values() if v.open), key=lambda v: v.name)
        closed = [v for v in self.streams.values() if not v.open and not self._aged(v, now)]
        closed.sort(key=lambda v: (-(v.closed_wall or 0.0), v.name))
        return live + closed

    def prune(self, now: float) -> None:
        """Forget closed streams aged out at ``now`` (keeps memory bounded on a long watch)."""
        for name in [n for n, v in self.streams.items() if not v.open and self._aged(v, now)]:
            del self.streams[name]

    def _aged(self, view: StreamView, now: float) -> bool:
        closed = view.closed_wall
        return closed is not None and now - closed > self.config.keep_closed_s


_TROUBLE_FIELDS = ("windows_dropped", "blocks_dropped", "input_overflows", "clients",
                   "client_messages_dropped", "log_lines_suppressed", "store_errors",
                   "store_events_dropped")


class StatsThrottle:
    """Which stats messages the plain view prints (pure; times are the messages' wall_time).

    The first one; then one once ``every_s`` passed since the last printed; and any whose
    counters that signal trouble (drops, overflows, refusals, store errors, client count)
    differ from the last printed. ``every_s`` 0 prints all of them.
    """

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last_wall: float | None = None
        self._last_key: tuple[object, ...] | None = None

    def due(self, stats: StatsMessage) -> bool:
        """Whether to print ``stats``; a True answer counts as printed."""
        key = (tuple(getattr(stats, name) for name in _TROUBLE_FIELDS),
               tuple(sorted(stats.refused.items())))
        last = self._last_wall
        if (last is not None and key == self._last_key
                and last <= stats.wall_time < last + self.every_s):
            return False
        self._last_wall, self._last_key = stats.wall_time, key
        return True


def _probabilities(probabilities: Mapping[str, float]) -> str:
    return " ".join(f"{label}={p:.2f}" for label, p in probabilities.items())


def format_event(event: ClientEvent) -> str | None:
    """One plain line for an event (for pipes and files); None for events not worth a line."""
    if isinstance(event, Disconnected):
        retry = "" if event.retry_in_s is None else f"; retrying in {event.retry_in_s:.1f} s"
        return f"disconnected: {event.reason}{retry}"
    if isinstance(event, Hello):
        streams = ",".join(info.stream for info in event.streams) or "-"
        return (
            f"hello session={event.session} model={event.model} labels={','.join(event.labels)} "
            f"window={event.window_s:g}s hop={event.hop_s:g}s streams={streams}"
        )
    if isinstance(event, WindowMessage):
        return (
            f"window {event.stream} #{event.seq} {event.start_s:.2f}-{event.end_s:.2f}s "
            f"smoothed={event.smoothed_label} {event.smoothed_confidence:.2f} "
            f"raw={event.label} {event.confidence:.2f} {_probabilities(event.probabilities)}"
        )
    if isinstance(event, SpeechStartMessage):
        return f"speech_start {event.stream} {event.start_s:.2f}s"
    if isinstance(event, SpeechEndMessage):
        return f"speech_end {event.stream} {event.start_s:.2f}-{event.end_s:.2f}s"
    if isinstance(event, StreamOpenMessage):
        return f"stream_open {event.stream} {event.sample_rate_hz} Hz"
    if isinstance(event, StreamCloseMessage):
        return f"stream_close {event.stream} {event.end_s:.2f}s {event.reason}"
    if isinstance(event, StatsMessage):
        return f"stats {_stats_text(event)}"
    if isinstance(event, ErrorMessage):
        return f"error {event.code}: {event.message}"
    if isinstance(event, UtteranceMessage):
        return (
            f"utterance {event.stream} {event.start_s:.2f}-{event.end_s:.2f}s {event.label} "
            f"{event.confidence:.2f} windows={event.windows}"
        )
    if isinstance(event, AlertMessage):
        line = (
            f"alert {event.state} #{event.alert_id} {event.stream} {event.rule} "
            f"since={event.since_s:.2f}s at={event.at_s:.2f}s p={event.probability:.2f} "
            f"speech={event.speech_s:.1f}s"
        )
        return f"{line} reason={event.reason or '-'}" if event.state == "end" else line
    return None


def _stats_text(stats: StatsMessage) -> str:
    return (
        f"lag={stats.lag_s:.2f}s windows={stats.windows_done} dropped={stats.windows_dropped} "
        f"blocks_dropped={stats.blocks_dropped} overflows={stats.input_overflows} "
        f"clients={stats.clients} client_drops={stats.client_messages_dropped}"
    )


def _bar(probability: float) -> str:
    eighths = round(max(0.0, min(1.0, probability)) * _BAR_WIDTH * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part else ""
    return ("█" * full + partial).ljust(_BAR_WIDTH)


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    return f"{max(0.0, now - then):.1f} s ago"


def render(state: WatchState, now: float) -> RenderableType:
    """The live view of ``state`` at wall-clock time ``now`` (pure)."""
    streams = state.visible(now)
    parts: list[RenderableType] = [_header(state), _stream_table(state, streams, now)]
    if state.ended_alerts:
        parts.append(_ended_alerts(state.ended_alerts))
    if state.stats is not None:
        parts.append(Text(f"stats {_stats_text(state.stats)}", style="dim"))
    if state.last_error is not None:
        parts.append(Text(f"server error {state.last_error}", style="red"))
    if not streams:
        parts.append(Text("no streams yet", style="dim"))
    return Group(*parts)


def _header(state: WatchState) -> Text:
    conn_style = "green" if state.connection == "connected" else "yellow"
    header = Text.assemble(
        ("emotion-monitor ", "bold"),
        (state.url, "dim"),
        "  ",
        (state.connection, conn_style),
    )
    if state.hello is not None:
        header.append(f"  model {state.hello.model}  session {state.hello.session}", style="dim")
    return header


def _stream_table(state: WatchState, streams: list[StreamView], now: float) -> Table:
    """One row per listed stream: speech, smoothed label, bars, window, alerts, age."""
    labels = state.hello.labels if state.hello is not None else ()
    table = Table(expand=False, show_lines=False, header_style="bold")
    table.add_column("stream")
    table.add_column("speech")
    table.add_column("label")
    table.add_column("conf", justify="right")
    table.add_column("classes")
    table.add_column("window", justify="right")
    table.add_column("alerts")
    table.add_column("updated", justify="right")
    for view in streams:
        stream_text = Text(view.name) if view.open else Text(f"{view.name} (closed)", "dim")
        speech = Text("● speech", style="green") if view.speaking else Text("○ quiet", style="dim")
        alerts = _active_alerts(view)
        window = view.window
        if window is None:
            table.add_row(stream_text, speech, Text("-", style="dim"), "", "", "", alerts,
                          _age(now, view.updated_wall))
            continue
        label = Text(
            window.smoothed_label.upper(),
            style=f"bold {label_style(window.smoothed_label, labels)}",
        )
        bars = Text()
        for i, (cls, p) in enumerate(window.probabilities.items()):
            if i:
                bars.append("\n")
            bars.append(f"{cls[:10]:<10} ")
            bars.append(_bar(p), style=label_style(cls, labels))
            bars.append(f" {p:.2f}")
        table.add_row(
            stream_text,
            speech,
            label,
            f"{window.smoothed_confidence:.2f}",
            bars,
            f"#{window.seq} {window.start_s:.1f}-{window.end_s:.1f}s",
            alerts,
            _age(now, view.updated_wall),
        )
    return table


def _active_alerts(view: StreamView) -> Text:
    """The stream's alerts on now, one a line (``-`` when none)."""
    if not view.alerts:
        return Text("-", style="dim")
    text = Text()
    for i, alert in enumerate(sorted(view.alerts.values(), key=lambda a: a.alert_id)):
        if i:
            text.append("\n")
        text.append(f"▲ {alert.rule}", style="bold red")
        text.append(f" since {alert.since_s:.1f} s")
    return text


def _ended_alerts(alerts: list[AlertMessage]) -> Text:
    """The latest ended alerts, newest first, each with why it ended."""
    text = Text("ended alerts", style="bold")
    for alert in alerts:
        reason = _END_REASONS.get(alert.reason, alert.reason or "reason not given")
        text.append(f"\n#{alert.alert_id} {alert.stream} {alert.rule}: ")
        text.append(reason, style="yellow")
        text.append(f" at {alert.at_s:.1f} s (p {alert.probability:.2f}, "
                    f"{alert.speech_s:.1f} s of speech)", style="dim")
    return text


async def watch_plain(
    client: EventClient, write: Callable[[str], None], *, config: WatchConfig | None = None,
) -> None:
    """Write one line per event until the client ends (the caller owns ``write``).

    Stats lines follow :class:`StatsThrottle` (``config.stats_every_s``).
    """
    throttle = StatsThrottle((config or WatchConfig()).stats_every_s)
    async for event in client.events():
        if isinstance(event, StatsMessage) and not throttle.due(event):
            continue
        line = format_event(event)
        if line is not None:
            write(line)


async def watch_live(
    client: EventClient, console: Console, *, refresh_s: float = 0.5,
    config: WatchConfig | None = None,
) -> None:
    """Keep a rich live view on ``console`` up to date until the client ends.

    Redraws on every event and every ``refresh_s`` (so "updated ... ago" keeps counting and
    closed streams age out) from an owned task; rich's own refresh thread is not used.
    """
    state = WatchState(url=client.url, config=config or WatchConfig())

    def draw() -> RenderableType:
        now = time.time()
        state.prune(now)
        return render(state, now)

    with Live(draw(), console=console, auto_refresh=False) as live:

        async def tick() -> None:
            while True:
                await asyncio.sleep(refresh_s)
                live.update(draw(), refresh=True)

        ticker = asyncio.create_task(tick(), name="watch-refresh")
        try:
            async for event in client.events():
                state.apply(event)
                live.update(draw(), refresh=True)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
