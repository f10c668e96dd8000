"""The terminal view behind ``emotion-monitor watch`` (the CLI's event loop).

A pure core and a thin shell: :class:`WatchState` folds events into what the view shows,
:func:`format_event` turns one event into one plain line, :func:`render` turns the state into a
rich renderable. :func:`watch_plain` and :func:`watch_live` are the loops that feed them from an
:class:`~client.api.EventClient`; the caller (the CLI) owns the console or the line writer.

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
    "StreamView",
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


def label_style(label: str, labels: tuple[str, ...] = ()) -> str:
    """The rich colour of a label: fixed for common emotions, grey for uncertain, else by index."""
    if label == UNCERTAIN:
        return "grey50"
    known = _LABEL_STYLES.get(label.lower())
    if known is not None:
        return known
    index = labels.index(label) if label in labels else sum(label.encode())
    return _PALETTE[index % len(_PALETTE)]


@dataclass
class StreamView:
    """What the view knows about one stream."""

    name: str
    open: bool = True
    speaking: bool = False
    window: WindowMessage | None = None
    updated_wall: float | None = None  # wall-clock time of the last event on this stream


@dataclass
class WatchState:
    """Everything the terminal view shows, folded from events (pure: no I/O, no clock)."""

    url: str
    connection: str = "connecting"
    hello: Hello | None = None
    streams: dict[str, StreamView] = field(default_factory=dict)
    stats: StatsMessage | None = None
    last_error: str | None = None

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
            if self.hello is None or self.hello.session != event.session:
                self.streams.clear()  # a new server run: old windows no longer apply
                self.stats = None
            self.hello = event
            self.connection = "connected"
            for info in event.streams:
                self._stream(info.stream).open = True
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
            view.open = True
        elif isinstance(event, StreamCloseMessage):
            view.open = False
            view.speaking = False
        elif isinstance(event, SpeechStartMessage):
            view.speaking = True
        elif isinstance(event, SpeechEndMessage):
            view.speaking = False
        elif isinstance(event, WindowMessage):
            view.window = event


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
        return (
            f"alert {event.state} #{event.alert_id} {event.stream} {event.rule} "
            f"since={event.since_s:.2f}s at={event.at_s:.2f}s p={event.probability:.2f}"
        )
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
    labels = state.hello.labels if state.hello is not None else ()
    conn_style = "green" if state.connection == "connected" else "yellow"
    header = Text.assemble(
        ("emotion-monitor ", "bold"),
        (state.url, "dim"),
        "  ",
        (state.connection, conn_style),
    )
    if state.hello is not None:
        header.append(f"  model {state.hello.model}  session {state.hello.session}", style="dim")
    table = Table(expand=False, show_lines=False, header_style="bold")
    table.add_column("stream")
    table.add_column("speech")
    table.add_column("label")
    table.add_column("conf", justify="right")
    table.add_column("classes")
    table.add_column("window", justify="right")
    table.add_column("updated", justify="right")
    for name in sorted(state.streams):
        view = state.streams[name]
        stream_text = Text(name if view.open else f"{name} (closed)")
        speech = Text("● speech", style="green") if view.speaking else Text("○ quiet", style="dim")
        window = view.window
        if window is None:
            table.add_row(stream_text, speech, Text("-", style="dim"), "", "", "", "-")
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
            _age(now, view.updated_wall),
        )
    parts: list[RenderableType] = [header, table]
    if state.stats is not None:
        parts.append(Text(f"stats {_stats_text(state.stats)}", style="dim"))
    if state.last_error is not None:
        parts.append(Text(f"server error {state.last_error}", style="red"))
    if not state.streams:
        parts.append(Text("no streams yet", style="dim"))
    return Group(*parts)


async def watch_plain(client: EventClient, write: Callable[[str], None]) -> None:
    """Write one line per event until the client ends (the caller owns ``write``)."""
    async for event in client.events():
        line = format_event(event)
        if line is not None:
            write(line)


async def watch_live(client: EventClient, console: Console, *, refresh_s: float = 0.5) -> None:
    """Keep a rich live view on ``console`` up to date until the client ends.

    Redraws on every event and every ``refresh_s`` (so "updated ... ago" keeps counting) from
    an owned task; rich's own refresh thread is not used.
    """
    state = WatchState(url=client.url)
    with Live(render(state, time.time()), console=console, auto_refresh=False) as live:

        async def tick() -> None:
            while True:
                await asyncio.sleep(refresh_s)
                live.update(render(state, time.time()), refresh=True)

        ticker = asyncio.create_task(tick(), name="watch-refresh")
        try:
            async for event in client.events():
                state.apply(event)
                live.update(render(state, time.time()), refresh=True)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
