"""The wire schema: every JSON message on ``/ws`` (pure functions, any thread or loop).

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
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "PROTOCOL_VERSION",
    "ErrorMessage",
    "Hello",
    "Message",
    "MessageError",
    "SpeechEndMessage",
    "SpeechStartMessage",
    "StatsMessage",
    "StreamCloseMessage",
    "StreamInfo",
    "StreamOpenMessage",
    "Subscribe",
    "WindowMessage",
    "decode",
    "encode",
]

PROTOCOL_VERSION = 1


class MessageError(ValueError):
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


@dataclass(frozen=True, slots=True)
class StreamOpenMessage:
    """Server -> client: a stream started."""

    TYPE: ClassVar[str] = "stream_open"
    stream: str
    sample_rate_hz: int
    wall_time: float
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamCloseMessage:
    """Server -> client: a stream ended."""

    TYPE: ClassVar[str] = "stream_close"
    stream: str
    end_s: float
    wall_time: float
    reason: str = "end"


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
    smoothed_label: str  # a model label or "uncertain"
    smoothed_confidence: float


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


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """Server -> client: a client frame was rejected; the connection stays open unless closed."""

    TYPE: ClassVar[str] = "error"
    code: str  # short machine-readable reason, e.g. "bad_json", "unknown_type"
    message: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Client -> server: receive events of these streams only (empty tuple = all streams)."""

    TYPE: ClassVar[str] = "subscribe"
    streams: tuple[str, ...] = ()


Message = (
    Hello
    | StreamOpenMessage
    | StreamCloseMessage
    | SpeechStartMessage
    | SpeechEndMessage
    | WindowMessage
    | StatsMessage
    | ErrorMessage
    | Subscribe
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
        StatsMessage,
        ErrorMessage,
        Subscribe,
    )
}


def _plain(value: Any) -> Any:
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
    body.update(_plain(asdict(message)))
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def _check(name: str, value: Any, expected: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, expected):
        want = expected if isinstance(expected, type) else expected[0]
        raise MessageError(f"field {name!r} must be {want.__name__}, got {value!r}")


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
        return float(raw)
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
    if annotation == "Mapping[str, float]":
        _check(name, raw, dict)
        for value in raw.values():
            _check(name + "{}", value, (int, float))
        return {k: float(v) for k, v in raw.items()}
    if annotation == "tuple[StreamInfo, ...]":
        _check(name, raw, list)
        for item in raw:
            _check(name + "[]", item, dict)
        return tuple(_build(StreamInfo, item) for item in raw)
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
        body = json.loads(frame)
    except json.JSONDecodeError as exc:
        raise MessageError(
            f"not valid JSON: {exc.msg} at position {exc.pos}", "bad_json"
        ) from exc
    except RecursionError as exc:  # e.g. "[[[[...": the parser gives up before the end
        raise MessageError("not valid JSON: nested too deeply", "bad_json") from exc
    if not isinstance(body, dict):
        raise MessageError("a message must be a JSON object")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise MessageError("a message needs a string 'type'")
    version = body.get("v")
    if version != PROTOCOL_VERSION:
        raise MessageError(
            f"unsupported protocol version {version!r}; this side speaks {PROTOCOL_VERSION}",
            "bad_version",
        )
    cls = _TYPES.get(kind)
    if cls is None:
        raise MessageError(
            f"unknown message type {kind!r}; known: {', '.join(sorted(_TYPES))}", "unknown_type"
        )
    return _build(cls, body)
