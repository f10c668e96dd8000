"""Engine events -> wire messages (pure functions, any thread).

The engine speaks :mod:`streamer.events` (probabilities as a tuple in model label order); the
wire speaks :mod:`streamer.protocol.messages` (probabilities as a label -> value mapping). This is
the one place that maps one onto the other, used by the live server (``server.hub``) and by
:mod:`streamer.analyze` alike, so both produce the same rows. A probability count that does not
match the labels is a :class:`~streamer.errors.StreamerError` (a bug upstream, never user input).
"""

from __future__ import annotations

from collections.abc import Sequence

from streamer.errors import StreamerError
from streamer.events import (
    EngineStats,
    Event,
    SpeechEnd,
    SpeechStart,
    StreamClosed,
    StreamOpened,
    Utterance,
    WindowLabel,
)
from streamer.protocol.messages import (
    Message,
    SpeechEndMessage,
    SpeechStartMessage,
    StatsMessage,
    StreamCloseMessage,
    StreamOpenMessage,
    UtteranceMessage,
    WindowMessage,
)

__all__ = ["event_message", "stats_message", "utterance_message", "window_message"]


def _by_label(
    probabilities: Sequence[float], labels: Sequence[str], what: str
) -> dict[str, float]:
    """Probabilities in model label order -> keyed by label; a length mismatch is a bug upstream."""
    if len(probabilities) != len(labels):
        raise StreamerError(
            f"{what} has {len(probabilities)} probabilities for {len(labels)} labels {list(labels)}"
        )
    return {label: float(p) for label, p in zip(labels, probabilities, strict=True)}


def window_message(event: WindowLabel, labels: Sequence[str]) -> WindowMessage:
    """A classified window -> its wire message (probabilities keyed by label)."""
    probabilities = _by_label(event.probabilities, labels, f"window {event.stream}#{event.seq}")
    return WindowMessage(
        stream=event.stream,
        seq=event.seq,
        start_s=float(event.start_s),
        end_s=float(event.end_s),
        wall_time=float(event.wall_time),
        probabilities=probabilities,
        label=event.label,
        confidence=float(event.confidence),
        smoothed_label=event.smoothed_label,
        smoothed_confidence=float(event.smoothed_confidence),
    )


def utterance_message(event: Utterance, labels: Sequence[str]) -> UtteranceMessage:
    """A labelled speech segment -> its wire message (probabilities keyed by label)."""
    probabilities = _by_label(
        event.probabilities, labels, f"utterance {event.stream}@{event.start_s:.2f}s"
    )
    return UtteranceMessage(
        stream=event.stream,
        start_s=float(event.start_s),
        end_s=float(event.end_s),
        wall_time=float(event.wall_time),
        probabilities=probabilities,
        label=event.label,
        confidence=float(event.confidence),
        windows=int(event.windows),
        windows_dropped=int(event.windows_dropped),
    )


def stats_message(
    stats: EngineStats, *, clients: int, client_messages_dropped: int
) -> StatsMessage:
    """Engine counters plus the fan-out's -> a stats message."""
    return StatsMessage(
        wall_time=float(stats.wall_time),
        lag_s=float(stats.lag_s),
        windows_done=int(stats.windows_done),
        windows_dropped=int(stats.windows_dropped),
        blocks_dropped=int(stats.blocks_dropped),
        input_overflows=int(stats.input_overflows),
        windows_failed=int(stats.windows_failed),
        clients=clients,
        client_messages_dropped=client_messages_dropped,
    )


def event_message(
    event: Event, labels: Sequence[str], *, clients: int = 0, client_messages_dropped: int = 0
) -> Message:
    """Any engine event -> its wire message (stats get the fan-out counters given)."""
    if isinstance(event, WindowLabel):
        return window_message(event, labels)
    if isinstance(event, Utterance):
        return utterance_message(event, labels)
    if isinstance(event, SpeechStart):
        return SpeechStartMessage(
            stream=event.stream, start_s=float(event.start_s), wall_time=float(event.wall_time)
        )
    if isinstance(event, SpeechEnd):
        return SpeechEndMessage(
            stream=event.stream,
            start_s=float(event.start_s),
            end_s=float(event.end_s),
            wall_time=float(event.wall_time),
        )
    if isinstance(event, StreamOpened):
        return StreamOpenMessage(
            stream=event.stream,
            sample_rate_hz=int(event.sample_rate_hz),
            wall_time=float(event.wall_time),
            metadata=dict(event.metadata),
            warnings=tuple(event.warnings),
        )
    if isinstance(event, StreamClosed):
        return StreamCloseMessage(
            stream=event.stream,
            end_s=float(event.end_s),
            wall_time=float(event.wall_time),
            reason=event.reason,
            windows=int(event.windows),
            windows_dropped=int(event.windows_dropped),
        )
    if isinstance(event, EngineStats):
        return stats_message(
            event, clients=clients, client_messages_dropped=client_messages_dropped
        )
    raise StreamerError(f"unknown engine event {type(event).__name__}")
