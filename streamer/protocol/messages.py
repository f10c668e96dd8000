"""The wire schema: every JSON message on ``/ws`` and ``/ingest`` (pure; any thread or loop).

This module is the one place that knows the wire format; ``server`` encodes with it and
``client`` decodes with it. It imports only the standard library. Every message is a JSON
text frame with ``"type"`` and the protocol version ``"v"``; ``docs/protocol.md`` shows an
example of each. Unknown fields are ignored when decoding (forward compatible); a missing or
mistyped field raises :class:`MessageError` naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from streamer.protocol.errors import ProtocolError
from streamer.protocol.limits import UNCERTAIN

__all__ = [
    "ALERT_END_REASONS",
    "ALERT_STATES",
    "WIDEBAND_MODEL_ON_NARROWBAND_AUDIO",
    "PROTOCOL_VERSION",
    "AlertMessage",
    "ErrorMessage",
    "Hello",
    "IngestAck",
    "IngestEnd",
    "IngestStart",
    "Message",
    "MessageError",
    "SpeechEndMessage",
    "SpeechStartMessage",
    "StatsMessage",
    "StreamCloseMessage",
    "StreamInfo",
    "StreamOpenMessage",
    "Subscribe",
    "UtteranceMessage",
    "WindowMessage",
    "decode",
    "encode",
    "stream_wanted",
]

PROTOCOL_VERSION = 1
#: ``AlertMessage.state`` values
ALERT_STATES = ("start", "end")
#: ``AlertMessage.reason`` values of an ``end``: the condition stopped holding, no speech for
#: longer than the server's alert gap, the stream ended, the server is stopping
ALERT_END_REASONS = ("cleared", "silence", "stream_closed", "shutdown")
#: a ``stream_open`` warning: the stream's input rate is below 16 kHz (e.g. an 8 kHz call) and
#: the model is not marked fit for narrowband audio (the same code as ``streamer.events``)
WIDEBAND_MODEL_ON_NARROWBAND_AUDIO = "wideband_model_on_narrowband_audio"


class MessageError(ProtocolError, ValueError):
    """A frame that is not a valid message of this protocol.

    ``code`` is the short reason a server puts in its ``error`` reply: ``binary_frame``,
    ``bad_json``, ``bad_message`` (not an object, no type, missing or mistyped field),
    ``bad_version`` or ``unknown_type``.
    """

    def __init__(self, message: str, code: str = "bad_message") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A live stream as listed in ``hello``."""

    stream: str
    sample_rate_hz: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # as in its stream_open


@dataclass(frozen=True, slots=True)
class Hello:
    """Server -> client, first frame after connecting."""

    TYPE: ClassVar[str] = "hello"
    session: str  # random id of this server run; (session, stream, seq) names a window
    model: str
    labels: tuple[str, ...]
    window_s: float
    hop_s: float
    sample_rate_hz: int
    streams: tuple[StreamInfo, ...] = ()
    # the model is marked fit for narrowband (8 kHz phone) input; false: 16 kHz audio only
    model_narrowband: bool = False
    # the smoothed_label of a window when no class is clear (the dashboard greys it out)
    uncertain_label: str = UNCERTAIN


@dataclass(frozen=True, slots=True)
class StreamOpenMessage:
    """Server -> client: a stream started."""

    TYPE: ClassVar[str] = "stream_open"
    stream: str
    sample_rate_hz: int
    wall_time: float
    metadata: Mapping[str, str] = field(default_factory=dict)
    # codes, e.g. WIDEBAND_MODEL_ON_NARROWBAND_AUDIO: input below 16 kHz, model not narrowband
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamCloseMessage:
    """Server -> client: a stream ended; its labelled and dropped window totals."""

    TYPE: ClassVar[str] = "stream_close"
    stream: str
    end_s: float
    wall_time: float
    reason: str = "end"
    windows: int = 0
    windows_dropped: int = 0


@dataclass(frozen=True, slots=True)
class SpeechStartMessage:
    """Server -> client: the VAD gate opened on a stream."""

    TYPE: ClassVar[str] = "speech_start"
    stream: str
    start_s: float
    wall_time: float


@dataclass(frozen=True, slots=True)
class SpeechEndMessage:
    """Server -> client: the VAD gate closed on a stream."""

    TYPE: ClassVar[str] = "speech_end"
    stream: str
    start_s: float
    end_s: float
    wall_time: float


@dataclass(frozen=True, slots=True)
class WindowMessage:
    """Server -> client: one classified window with the rolling (smoothed) label."""

    TYPE: ClassVar[str] = "window"
    stream: str
    seq: int
    start_s: float
    end_s: float
    wall_time: float
    probabilities: Mapping[str, float]  # label -> probability, in model label order
    label: str
    confidence: float
    smoothed_label: str  # a model label or hello's uncertain_label
    smoothed_confidence: float


@dataclass(frozen=True, slots=True)
class UtteranceMessage:
    """Server -> client: a closed speech segment labelled as a whole.

    ``probabilities`` is the mean of the segment's labelled window probabilities; ``windows``
    were averaged and ``windows_dropped`` of the segment were dropped under overload.
    """

    TYPE: ClassVar[str] = "utterance"
    stream: str
    start_s: float
    end_s: float
    wall_time: float
    probabilities: Mapping[str, float]  # label -> probability, in model label order
    label: str
    confidence: float
    windows: int
    windows_dropped: int = 0


@dataclass(frozen=True, slots=True)
class AlertMessage:
    """Server -> client: an alert rule started (``state`` "start") or stopped ("end") holding.

    ``alert_id`` counts alerts of one server run; the "start" and "end" of one alert share it.
    ``since_s`` is the stream time the condition began to hold, ``at_s`` the stream time of this
    message, ``probability`` the label's smoothed probability then. ``speech_s`` is the speech
    time the condition held (``for_s`` counts speech, not the silence between segments, so it
    can be less than ``at_s - since_s``). ``reason`` says why an alert ended (one of
    :data:`ALERT_END_REASONS`); it is empty on a "start" (and from servers before the field).
    """

    TYPE: ClassVar[str] = "alert"
    alert_id: int
    stream: str
    state: str  # "start" or "end"
    rule: str  # canonical text, e.g. "Angry>=0.7 for 5s"
    label: str
    threshold: float
    for_s: float
    since_s: float
    at_s: float
    probability: float
    wall_time: float
    reason: str = ""  # on "end": one of ALERT_END_REASONS
    speech_s: float = 0.0


@dataclass(frozen=True, slots=True)
class StatsMessage:
    """Server -> client, periodically: engine and fan-out counters (totals since start)."""

    TYPE: ClassVar[str] = "stats"
    wall_time: float
    lag_s: float
    windows_done: int
    windows_dropped: int
    blocks_dropped: int
    input_overflows: int
    clients: int
    client_messages_dropped: int
    #: server refusals by limit name (see docs/protocol.md, "Limits"); absent from old servers
    refused: Mapping[str, int] = field(default_factory=dict)
    log_lines_suppressed: int = 0
    store_errors: int = 0  # failed timeline store writes (events kept for retry, bounded)
    store_events_dropped: int = 0  # events the store never got (retry buffer full)
    windows_failed: int = 0  # of windows_dropped: the model call failed (e.g. remote tier down)
    #: the node whose counters these are, in a cluster (``run --bus``); "" for a single node
    node: str = ""


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """Server -> client: a client frame was rejected; the connection stays open unless closed."""

    TYPE: ClassVar[str] = "error"
    code: str  # short machine-readable reason, e.g. "bad_json", "unknown_type"
    message: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Client -> server: receive events of these streams only (empty tuple = all streams).

    An entry ending in ``/`` is a prefix: ``"call-42/"`` covers ``call-42/agent`` and
    ``call-42/customer`` (see :func:`stream_wanted`).
    """

    TYPE: ClassVar[str] = "subscribe"
    streams: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IngestStart:
    """Sender -> server on ``/ingest``: open a pushed stream (first frame of the connection).

    ``stream`` is the call id; each channel becomes the engine stream ``<stream>/<role>``
    (``roles``, one per channel) or ``<stream>/ch<N>`` without roles. Binary frames of
    interleaved ``format`` samples follow the server's :class:`IngestAck`.
    """

    TYPE: ClassVar[str] = "ingest_start"
    stream: str
    sample_rate_hz: int
    channels: int
    format: str  # one of streamer.protocol.limits.INGEST_FORMATS
    roles: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IngestAck:
    """Server -> sender: the stream is open; ``streams`` are its per-channel stream ids."""

    TYPE: ClassVar[str] = "ingest_ack"
    stream: str
    streams: tuple[str, ...]
    max_frame_bytes: int
    idle_timeout_s: float


@dataclass(frozen=True, slots=True)
class IngestEnd:
    """Sender -> server: no more audio; the server flushes the streams and closes with 1000."""

    TYPE: ClassVar[str] = "ingest_end"


def stream_wanted(stream: str | None, streams: tuple[str, ...] | frozenset[str]) -> bool:
    """Whether a subscription (``streams``; empty = all) covers ``stream`` (None = always).

    Entries match a stream id exactly, or, when they end in ``/``, as a prefix.
    """
    if stream is None or not streams or stream in streams:
        return True
    return any(entry.endswith("/") and stream.startswith(entry) for entry in streams)


Message = (
    Hello
    | StreamOpenMessage
    | StreamCloseMessage
    | SpeechStartMessage
    | SpeechEndMessage
    | WindowMessage
    | UtteranceMessage
    | AlertMessage
    | StatsMessage
    | ErrorMessage
    | Subscribe
    | IngestStart
    | IngestAck
    | IngestEnd
)

_TYPES: dict[str, type[Any]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        StreamOpenMessage,
        StreamCloseMessage,
        SpeechStartMessage,
        SpeechEndMessage,
        WindowMessage,
        UtteranceMessage,
        AlertMessage,
        StatsMessage,
        ErrorMessage,
        Subscribe,
        IngestStart,
        IngestAck,
        IngestEnd,
    )
}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _plain(value: Any) -> Any:
    """JSON-ready copy: dataclasses as objects, tuples as arrays, non-finite floats refused.

    A direct walk over each dataclass's (cached) field names: ``dataclasses.asdict`` deep-copies
    every value first, which was about a tenth of a busy server's time in encoding.
    """
    if hasattr(type(value), "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise MessageError(f"cannot encode non-finite number {value!r}")
    return value


def encode(message: Message) -> str:
    """Message -> JSON text frame."""
    body = {"type": message.TYPE, "v": PROTOCOL_VERSION}
    body.update(_plain(message))
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def _shown(value: Any) -> str:
    """A short repr for error messages (a huge int has none: int max str digits)."""
    try:
        text = repr(value)
    except ValueError:
        return f"<a {type(value).__name__} too long to show>"
    return text if len(text) <= 80 else text[:77] + "..."


def _check(name: str, value: Any, expected: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, expected):
        want = expected if isinstance(expected, type) else expected[0]
        raise MessageError(f"field {name!r} must be {want.__name__}, got {_shown(value)}")


def _finite(name: str, value: int | float) -> float:
    """A JSON number as a finite float (an int too big for a float, or 1e999, is refused)."""
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise MessageError(f"field {name!r} must be a finite number, got {_shown(value)}")
    return number


def _no_constants(name: str) -> Any:
    # json.loads calls this for NaN, Infinity and -Infinity, which are not JSON
    raise MessageError(f"not valid JSON: {name} is not a JSON number", "bad_json")


def _field_value(cls: type[Any], name: str, raw: Any) -> Any:
    annotation = str(cls.__dataclass_fields__[name].type)
    if annotation == "str":
        _check(name, raw, str)
        return raw
    if annotation == "int":
        _check(name, raw, int)
        return raw
    if annotation == "float":
        _check(name, raw, (int, float))
        return _finite(name, raw)
    if annotation == "tuple[str, ...]":
        _check(name, raw, list)
        for item in raw:
            _check(name + "[]", item, str)
        return tuple(raw)
    if annotation == "Mapping[str, str]":
        _check(name, raw, dict)
        for value in raw.values():
            _check(name + "{}", value, str)
        return dict(raw)
    if annotation == "Mapping[str, int]":
        _check(name, raw, dict)
        for value in raw.values():
            _check(name + "{}", value, int)
        return dict(raw)
    if annotation == "Mapping[str, float]":
        _check(name, raw, dict)
        for value in raw.values():
            _check(name + "{}", value, (int, float))
        return {k: _finite(name + "{}", v) for k, v in raw.items()}
    if annotation == "tuple[StreamInfo, ...]":
        _check(name, raw, list)
        for item in raw:
            _check(name + "[]", item, dict)
        return tuple(_build(StreamInfo, item) for item in raw)
    if annotation == "bool":
        if not isinstance(raw, bool):
            raise MessageError(f"field {name!r} must be true or false, got {raw!r}")
        return raw
    raise AssertionError(f"no decoder for {cls.__name__}.{name}: {annotation}")


def _build(cls: type[Any], body: Mapping[str, Any]) -> Any:
    kwargs = {}
    for f in fields(cls):
        if f.name in body:
            kwargs[f.name] = _field_value(cls, f.name, body[f.name])
        elif f.default is MISSING and f.default_factory is MISSING:
            raise MessageError(f"{getattr(cls, 'TYPE', cls.__name__)} message lacks {f.name!r}")
    return cls(**kwargs)


def decode(frame: str | bytes) -> Message:
    """JSON text frame -> Message. Raises MessageError saying what is wrong."""
    if isinstance(frame, bytes):
        raise MessageError("expected a JSON text frame, got a binary frame", "binary_frame")
    try:
        body = json.loads(frame, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise MessageError(
            f"not valid JSON: {exc.msg} at position {exc.pos}", "bad_json"
        ) from exc
    except RecursionError as exc:  # e.g. "[[[[...": the parser gives up before the end
        raise MessageError("not valid JSON: nested too deeply", "bad_json") from exc
    except MessageError:  # NaN, Infinity
        raise
    except ValueError as exc:  # an integer over sys.get_int_max_str_digits() digits
        raise MessageError(f"not valid JSON: {exc}", "bad_json") from exc
    if not isinstance(body, dict):
        raise MessageError("a message must be a JSON object")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise MessageError("a message needs a string 'type'")
    version = body.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # true == 1 == 1.0 in Python
        raise MessageError(
            f"unsupported protocol version {_shown(version)}; this side speaks {PROTOCOL_VERSION}",
            "bad_version",
        )
    cls = _TYPES.get(kind)
    if cls is None:
        raise MessageError(
            f"unknown message type {_shown(kind)}; known: {', '.join(sorted(_TYPES))}",
            "unknown_type",
        )
    return _build(cls, body)
