"""Events the engine emits (plain frozen dataclasses; created on the inference or source thread).

These are the engine's output, independent of the wire format: ``server`` turns them into wire
messages (``streamer.protocol.messages``) and timeline rows. Times are stream seconds (samples at
the model rate since the stream opened) unless named ``wall_time`` (Unix seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "WIDEBAND_MODEL_ON_NARROWBAND_AUDIO",
    "EngineStats",
    "Event",
    "SpeechEnd",
    "SpeechStart",
    "StreamClosed",
    "StreamOpened",
    "Utterance",
    "WindowLabel",
]


#: ``StreamOpened.warnings`` code: the stream's input rate is below the model rate (e.g. an
#: 8 kHz phone call) and the model is not marked ``"narrowband": true`` in its config
WIDEBAND_MODEL_ON_NARROWBAND_AUDIO = "wideband_model_on_narrowband_audio"


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """A stream started producing audio; ``warnings`` are codes such as
    :data:`WIDEBAND_MODEL_ON_NARROWBAND_AUDIO`."""

    stream: str
    sample_rate_hz: int
    wall_time: float
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """A stream ended (source exhausted, sender gone, or shutdown).

    ``windows`` / ``windows_dropped``: the stream's labelled and dropped windows in total (filled
    in by the engine when the event is delivered, after the stream's last window).
    """

    stream: str
    end_s: float
    wall_time: float
    reason: str = "end"
    windows: int = 0
    windows_dropped: int = 0


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """The VAD gate opened (time includes the onset padding)."""

    stream: str
    start_s: float
    wall_time: float


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """The VAD gate closed (time includes the hangover padding)."""

    stream: str
    start_s: float
    end_s: float
    wall_time: float


@dataclass(frozen=True, slots=True)
class WindowLabel:
    """One classified window and the smoothed label after it."""

    stream: str
    seq: int
    start_s: float
    end_s: float
    wall_time: float
    probabilities: tuple[float, ...]  # in the order of the model's labels
    label: str  # raw arg-max of this window
    confidence: float  # raw probability of ``label``
    smoothed_label: str  # may be "uncertain"
    smoothed_confidence: float
    smoothed_probabilities: tuple[float, ...] = ()  # the rolling (EMA) probabilities, label order


@dataclass(frozen=True, slots=True)
class Utterance:
    """One closed speech segment, labelled as a whole.

    ``probabilities`` is the mean of the segment's labelled window probabilities (label order):
    no second model pass, so it costs nothing under load and agrees with the rolling labels.
    ``windows`` were averaged; ``windows_dropped`` of the segment were dropped under overload.
    Emitted right after the segment's SpeechEnd, only when at least one window was labelled.
    """

    stream: str
    start_s: float
    end_s: float
    wall_time: float
    probabilities: tuple[float, ...]
    label: str  # arg-max of ``probabilities``
    confidence: float  # its probability
    windows: int
    windows_dropped: int = 0


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Periodic counters; totals since the engine started."""

    wall_time: float
    lag_s: float  # age of the oldest window waiting for inference
    windows_done: int
    windows_dropped: int
    blocks_dropped: int  # capture hand-off queue overflows (drop-oldest)
    input_overflows: int  # driver-reported overflows
    #: windows dropped because the model call failed (raised, timed out, or returned no valid
    #: probabilities); they are in ``windows_dropped`` too
    windows_failed: int = 0


Event = (
    StreamOpened | StreamClosed | SpeechStart | SpeechEnd | WindowLabel | Utterance | EngineStats
)
