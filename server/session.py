"""What a server run tells its clients: session id, model facts, open streams (event loop; pure).

:class:`ModelInfo` is what the engine's settings say about the model and windowing;
:class:`StreamRegistry` keeps the streams open now, from the ``stream_open`` and
``stream_close`` messages the hub publishes, in opening order. Together with the session id
they make the ``hello`` a new client gets first (:func:`hello`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamer.protocol.messages import (
    WIDEBAND_MODEL_ON_NARROWBAND_AUDIO,
    Hello,
    Message,
    StreamCloseMessage,
    StreamInfo,
    StreamOpenMessage,
)

__all__ = ["ModelInfo", "StreamRegistry", "hello"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    """What clients are told about the model and windowing (from the engine's settings)."""

    name: str
    labels: Sequence[str]
    window_s: float
    hop_s: float
    sample_rate_hz: int
    narrowband: bool = False  # the model is fit for 8 kHz (phone) input

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "window_s", float(self.window_s))
        object.__setattr__(self, "hop_s", float(self.hop_s))
        object.__setattr__(self, "sample_rate_hz", int(self.sample_rate_hz))
        object.__setattr__(self, "narrowband", bool(self.narrowband))


class StreamRegistry:
    """The streams open now, in opening order, and how many opened since start (event loop
    only)."""

    def __init__(self) -> None:
        self._streams: dict[str, StreamInfo] = {}
        self.opened = 0

    def note(self, message: Message) -> None:
        """Follow one published message: a ``stream_open`` adds, a ``stream_close`` removes."""
        if isinstance(message, StreamOpenMessage):
            self.opened += 1
            self._streams[message.stream] = StreamInfo(
                message.stream, message.sample_rate_hz, dict(message.metadata),
                tuple(message.warnings),
            )
        elif isinstance(message, StreamCloseMessage):
            self._streams.pop(message.stream, None)

    @property
    def streams(self) -> tuple[StreamInfo, ...]:
        """Streams open now, in opening order."""
        return tuple(self._streams.values())

    @property
    def narrowband_mismatches(self) -> int:
        """Open streams below 16 kHz on a model not marked narrowband (see ``stream_open``)."""
        return sum(WIDEBAND_MODEL_ON_NARROWBAND_AUDIO in s.warnings
                   for s in self._streams.values())


def hello(session: str, info: ModelInfo, streams: Sequence[StreamInfo]) -> Hello:
    """The first message for a new client."""
    return Hello(
        session=session,
        model=info.name,
        labels=tuple(info.labels),
        window_s=info.window_s,
        hop_s=info.hop_s,
        sample_rate_hz=info.sample_rate_hz,
        streams=tuple(streams),
        model_narrowband=info.narrowband,
    )
