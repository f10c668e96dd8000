"""The Genesys Cloud AudioHook protocol (version 2) of one session: a pure state machine.

No sockets, clocks or engine here: :class:`AudioHookSession` takes the client's text and binary
WebSocket messages one at a time, checks them and says what they mean; the server messages it
builds are JSON strings for the caller to send. The connector (:mod:`server.connectors.audiohook`)
is the thin I/O shell around it. Any thread, one session per caller.

The client (Genesys Cloud) speaks first. Every text message is a JSON object with ``version``
``"2"``, the session ``id`` (a UUID, the same as the upgrade request's
``Audiohook-Session-Id``), ``type``, ``seq``, ``parameters``; client messages add ``serverseq``
(the last server ``seq`` the client has seen) and ``position`` (an ISO 8601 duration such as
``PT1.25S``: how far into the stream the client is), server messages add ``clientseq`` (the
last client ``seq`` the server has processed). Each side numbers its own messages 1, 2, 3 ...:
a client ``seq`` that is not the previous one plus one (out of order, repeated) is refused.

Session life: the client sends ``open`` (organisation, conversation, participant, the media
formats it offers); the server answers ``opened`` with the one format it takes (here: PCMU or
L16, 8000 Hz, both ``external`` and ``internal`` channels when offered) and only then does
audio come: binary messages of interleaved samples in the channel order of that format (PCMU:
one byte per sample; L16: 16-bit little-endian). ``ping`` is answered with ``pong``; the client
announces its own pauses with ``paused`` and their end with ``resumed`` (no audio in between);
``update``, ``discarded`` and ``error`` (the client reporting a problem with our messages) are
noted. ``close`` (reason ``end``, ``error``, ``disconnect`` or ``reconnect``) is answered with
``closed``; the client then closes the WebSocket. The server ends a session it will not go on
with by sending ``disconnect`` (reason ``completed``, ``unauthorized`` or ``error``, with an
``info`` text); the client then runs the same ``close`` / ``closed`` exchange. This server
never sends ``pause``, ``resume``, ``reconnect``, ``event`` or ``discardTo``: it only listens.

An ``open`` whose ``conversationId`` is the null UUID is a connection probe (Genesys Cloud
checks the integration this way): it is answered like any other, and no call is opened.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.audio import int16_to_float32, s16le_to_float32
from streamer.telephony import mulaw_decode

__all__ = [
    "AUDIOHOOK_FORMATS",
    "AUDIOHOOK_RATE_HZ",
    "AUDIOHOOK_VERSION",
    "MAX_TEXT_CHARS",
    "NULL_UUID",
    "AudioHookError",
    "AudioHookSession",
    "ClientMessage",
    "MediaFormat",
    "OpenRequest",
    "decode_frame",
    "parse_client_message",
    "select_media",
]

AUDIOHOOK_VERSION = "2"
#: the one sample rate AudioHook streams at
AUDIOHOOK_RATE_HZ = 8000
#: media formats this server takes, with their bytes per sample
AUDIOHOOK_FORMATS = {"PCMU": 1, "L16": 2}
#: longest text message read (longer: ``message_too_big``)
MAX_TEXT_CHARS = 65_536
NULL_UUID = "00000000-0000-0000-0000-000000000000"

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DURATION = re.compile(r"PT(\d*\.)?\d+S")
_CHANNELS = ("external", "internal")
_CLIENT_TYPES = ("open", "close", "discarded", "error", "ping", "update", "paused", "resumed")
_MAX_OFFERS = 16
_MAX_INFO_CHARS = 500


class AudioHookError(Exception):
    """A client message the server will not take.

    ``code`` names the case (a counter), ``info`` is what the ``disconnect`` says, ``reason``
    the disconnect reason (``error`` or ``unauthorized``), ``close_reason`` the streams'
    ``stream_close`` reason (``error``, ``idle_timeout``, ``max_length``).
    """

    def __init__(self, code: str, info: str, *, reason: str = "error",
                 close_reason: str = "error") -> None:
        super().__init__(info)
        self.code = code
        self.info = info
        self.reason = reason
        self.close_reason = close_reason


def _malformed(info: str) -> AudioHookError:
    return AudioHookError("bad_message", info)


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """One media format of an ``open`` offer: ``PCMU`` or ``L16`` at 8000 Hz, its channels."""

    format: str
    channels: tuple[str, ...]

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (every channel)."""
        return AUDIOHOOK_FORMATS[self.format] * len(self.channels)

    def as_json(self) -> dict[str, Any]:
        return {"type": "audio", "format": self.format, "channels": list(self.channels),
                "rate": AUDIOHOOK_RATE_HZ}


def _acceptable(offer: object) -> MediaFormat | None:
    """An offered format this server takes, or None."""
    if not isinstance(offer, dict) or offer.get("type") != "audio":
        return None
    rate, channels = offer.get("rate"), offer.get("channels")
    if offer.get("format") not in AUDIOHOOK_FORMATS or rate != AUDIOHOOK_RATE_HZ or (
        isinstance(rate, bool)
    ):
        return None
    if not isinstance(channels, list) or not 1 <= len(channels) <= 2 or len(set(
        map(str, channels))) != len(channels) or not all(c in _CHANNELS for c in channels):
        return None
    return MediaFormat(str(offer["format"]), tuple(channels))


def _describe(offer: object) -> str:
    if not isinstance(offer, dict):
        return "(not an object)"
    channels = offer.get("channels")
    names = "+".join(str(c)[:16] for c in channels[:4]) if isinstance(channels, list) else "?"
    return f"{str(offer.get('format'))[:16]}/{str(offer.get('rate'))[:8]}/{names}"


def select_media(offered: object) -> MediaFormat:
    """The offered format to take: the most channels, then the client's order of preference.

    AudioHookError ``unsupported_media`` when none is PCMU or L16 at 8000 Hz on the
    ``external``/``internal`` channels (``bad_message`` when ``media`` is not a list of offers).
    """
    if not isinstance(offered, list) or not 1 <= len(offered) <= _MAX_OFFERS:
        raise _malformed(f"open: media must be a list of 1-{_MAX_OFFERS} offered formats")
    choices = [m for m in map(_acceptable, offered) if m is not None]
    if not choices:
        shown = ", ".join(_describe(o) for o in offered[:5])
        raise AudioHookError(
            "unsupported_media", f"none of the offered media ({shown}) is taken: this server "
            "takes audio PCMU or L16 at 8000 Hz on the external and internal channels")
    return max(choices, key=lambda media: len(media.channels))  # first of the longest


def decode_frame(media: MediaFormat, data: bytes) -> NDArray[np.float32]:
    """One binary audio message -> float32 (frames, channels) in [-1, 1).

    AudioHookError ``partial_frame`` when it is not a whole number of sample frames.
    """
    frames, rest = divmod(len(data), media.frame_bytes)
    if rest:
        raise AudioHookError(
            "partial_frame", f"a binary message of {len(data)} bytes is not a whole number of "
            f"{media.frame_bytes}-byte sample frames ({media.format} x {len(media.channels)} "
            "channel(s))")
    if media.format == "PCMU":
        samples = int16_to_float32(mulaw_decode(np.frombuffer(data, dtype=np.uint8)))
    else:  # L16: 16-bit signed, little-endian
        samples = s16le_to_float32(data)
    return samples.reshape(frames, len(media.channels))


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A well-formed client text message (its parameters not yet checked for its type)."""

    type: str
    id: str
    seq: int
    serverseq: int
    position_s: float
    parameters: Mapping[str, Any] = field(default_factory=dict)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_client_message(text: str) -> ClientMessage:
    """Parse one text message; AudioHookError ``message_too_big``, ``bad_json``, ``bad_message``."""
    if len(text) > MAX_TEXT_CHARS:
        raise AudioHookError("message_too_big", f"a text message of {len(text)} characters is "
                             f"over the {MAX_TEXT_CHARS}-character limit")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise AudioHookError("bad_json", "a text message is not valid JSON") from None
    if not isinstance(data, dict):
        raise _malformed("a text message must be a JSON object")
    if data.get("version") != AUDIOHOOK_VERSION:
        raise AudioHookError("bad_version", f"protocol version must be \"{AUDIOHOOK_VERSION}\"")
    kind, session, position = data.get("type"), data.get("id"), data.get("position")
    if not isinstance(kind, str) or not isinstance(session, str) or not _UUID.fullmatch(session):
        raise _malformed("a message needs a string type and a UUID id")
    if not (_count(data.get("seq")) and _count(data.get("serverseq"))):
        raise _malformed("seq and serverseq must be non-negative integers")
    if not isinstance(position, str) or not _DURATION.fullmatch(position):
        raise _malformed("position must be a duration such as PT1.5S")
    parameters = data.get("parameters")
    if not isinstance(parameters, dict):
        raise _malformed("parameters must be an object")
    return ClientMessage(kind, session.lower(), data["seq"], data["serverseq"],
                         float(position[2:-1]), parameters)


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """A checked ``open``: the call it names and the media format the server takes."""

    organization_id: str
    conversation_id: str
    participant_id: str
    media: MediaFormat
    language: str | None = None
    custom_config: Mapping[str, Any] = field(default_factory=dict)
    supported_languages: bool = False

    @property
    def probe(self) -> bool:
        """A connection probe (null conversation id): answered, but no call is opened."""
        return self.conversation_id == NULL_UUID


def _uuid(parameters: Mapping[str, Any], name: str) -> str:
    value = parameters.get(name)
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise _malformed(f"open: {name} must be a UUID")
    return value.lower()


def _open_request(parameters: Mapping[str, Any]) -> OpenRequest:
    """Check an ``open``'s parameters and pick its media (AudioHookError if they will not do)."""
    organization = _uuid(parameters, "organizationId")
    conversation = _uuid(parameters, "conversationId")
    participant = parameters.get("participant")
    if not isinstance(participant, dict):
        raise _malformed("open: participant must be an object")
    media = select_media(parameters.get("media"))
    language, custom = parameters.get("language"), parameters.get("customConfig", {})
    if language is not None and not isinstance(language, str):
        raise _malformed("open: language must be a string")
    if not isinstance(custom, dict):
        raise _malformed("open: customConfig must be an object")
    return OpenRequest(
        organization_id=organization,
        conversation_id=conversation,
        participant_id=_uuid(participant, "id"),
        media=media,
        language=language,
        custom_config=custom,
        supported_languages=parameters.get("supportedLanguages") is True,
    )


class AudioHookSession:
    """One AudioHook session's protocol state (pure; see the module doc).

    States: ``new`` (until ``open``), ``opening`` (``open`` taken, ``opened`` or ``disconnect``
    not sent yet), ``active``, ``paused``, ``disconnecting`` (``disconnect`` sent: only
    ``close`` and ``ping`` are answered, anything else is dropped and counted), ``closing``
    (``close`` received, ``closed`` not sent yet), ``closed`` (``closed`` sent: everything is
    dropped). ``session_id`` and ``organization_id`` come from
    the upgrade request's headers when it had them; messages must then carry the same.
    """

    def __init__(
        self,
        *,
        session_id: str | None = None,
        organization_id: str | None = None,
        max_frame_bytes: int,
    ) -> None:
        self.session_id = session_id.lower() if session_id else None
        self.organization_id = organization_id.lower() if organization_id else None
        self.max_frame_bytes = max_frame_bytes
        self.state = "new"
        self.seq = 0  # the last server message's seq
        self.clientseq = 0  # the last client message's seq
        self.open_request: OpenRequest | None = None
        self.frames = 0  # sample frames received (per channel)
        self.dropped = 0  # messages dropped after disconnect or close

    @property
    def position_s(self) -> float:
        """Seconds of audio received so far."""
        return self.frames / AUDIOHOOK_RATE_HZ

    # -- what the client sends ------------------------------------------------------------

    def receive_text(self, text: str) -> ClientMessage | None:
        """Check one text message; None when it is dropped (after ``disconnect``/``closed``).

        AudioHookError for a malformed message, a wrong ``seq``/``serverseq``/``id``, a type
        not allowed now, or an ``open`` that cannot be taken.
        """
        if self.state in ("disconnecting", "closing", "closed"):
            return self._after_end(text)
        message = parse_client_message(text)
        self._check_order(message)
        self._apply(message)
        return message

    def _after_end(self, text: str) -> ClientMessage | None:
        """After ``disconnect`` only ``close`` and ``ping`` count; after ``closed`` nothing."""
        try:
            message = parse_client_message(text)
        except AudioHookError:
            message = None
        if self.state != "disconnecting" or message is None or message.type not in (
            "close", "ping"
        ):
            self.dropped += 1
            return None
        self.clientseq = max(self.clientseq, message.seq)
        if message.type == "close":
            self.state = "closing"
        return message

    def _check_order(self, message: ClientMessage) -> None:
        if message.seq != self.clientseq + 1:
            raise AudioHookError("bad_seq", f"seq {message.seq} out of order: expected "
                                 f"{self.clientseq + 1} (one more than the last)")
        self.clientseq = message.seq
        if message.serverseq > self.seq:
            raise AudioHookError("bad_serverseq", f"serverseq {message.serverseq} is past the "
                                 f"last server message ({self.seq})")
        if self.session_id is None:
            self.session_id = message.id
        elif message.id != self.session_id:
            raise AudioHookError("bad_session_id",
                                 "the message id is not this session's id")

    def _apply(self, message: ClientMessage) -> None:
        """The message's effect on the state; AudioHookError when it is not allowed now."""
        kind, state = message.type, self.state
        if kind not in _CLIENT_TYPES:
            raise AudioHookError("unknown_type", f"{kind[:32]!r} is not an AudioHook client "
                                 "message")
        if kind == "open":
            if state != "new":
                raise AudioHookError("unexpected_message", "a second open")
            self.open_request = request = _open_request(message.parameters)
            if self.organization_id is not None and request.organization_id != (
                self.organization_id
            ):
                raise AudioHookError(
                    "organization_mismatch", "the organizationId is not the one of the "
                    "Audiohook-Organization-Id header", reason="unauthorized")
            self.state = "opening"
        elif kind == "close":
            self.state = "closing"
        elif kind in ("paused", "resumed", "update", "discarded") and state not in (
            "active", "paused"
        ):
            raise AudioHookError("unexpected_message", f"{kind} before the session is open")
        elif kind == "paused":
            self.state = "paused"
        elif kind == "resumed":
            self.state = "active"
        elif kind == "error" and not _count(message.parameters.get("code")):
            raise _malformed("error: code must be a non-negative integer")

    def receive_audio(self, data: bytes) -> NDArray[np.float32] | None:
        """Decode one binary message to (frames, channels); None when it is dropped.

        AudioHookError ``audio_before_open``, ``audio_while_paused``, ``frame_too_big``,
        ``partial_frame``.
        """
        if self.state in ("disconnecting", "closing", "closed"):
            self.dropped += 1
            return None
        if self.state in ("new", "opening"):
            raise AudioHookError("audio_before_open", "audio before opened: send open and "
                                 "wait for opened")
        if self.state == "paused":
            raise AudioHookError("audio_while_paused", "audio after paused (before resumed)")
        if len(data) > self.max_frame_bytes:
            raise AudioHookError("frame_too_big", f"a binary message of {len(data)} bytes is "
                                 f"over the {self.max_frame_bytes}-byte limit")
        assert self.open_request is not None
        audio = decode_frame(self.open_request.media, data)
        self.frames += audio.shape[0]
        return audio

    # -- what the server sends -------------------------------------------------------------

    def _message(self, kind: str, parameters: Mapping[str, Any]) -> str:
        self.seq += 1
        return json.dumps({
            "version": AUDIOHOOK_VERSION, "type": kind, "seq": self.seq,
            "clientseq": self.clientseq, "id": self.session_id or NULL_UUID,
            "parameters": dict(parameters),
        }, separators=(",", ":"))

    def opened(self) -> str:
        """The ``opened`` answer to the ``open`` taken (state ``active``)."""
        assert self.state == "opening" and self.open_request is not None
        self.state = "active"
        parameters: dict[str, Any] = {"media": [self.open_request.media.as_json()],
                                      "startPaused": False}
        if self.open_request.supported_languages:
            parameters["supportedLanguages"] = []  # emotion needs no language setting
        return self._message("opened", parameters)

    def pong(self) -> str:
        """The answer to a ``ping`` (its ``clientseq`` is the ping's ``seq``)."""
        return self._message("pong", {})

    def closed(self) -> str:
        """The answer to a ``close`` (state ``closed``)."""
        self.state = "closed"
        return self._message("closed", {})

    def disconnect(self, reason: str, info: str) -> str | None:
        """A ``disconnect`` (state ``disconnecting``); None once ended (nothing to send)."""
        if self.state in ("disconnecting", "closing", "closed"):
            return None
        self.state = "disconnecting"
        return self._message("disconnect", {"reason": reason, "info": info[:_MAX_INFO_CHARS]})
