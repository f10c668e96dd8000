"""Consumers of the wire protocol: the async event API, the terminal view, the timeline logger.

Imports only the wire schema and websockets: never torch, sounddevice or the server.
"""

from __future__ import annotations

from client.api import Disconnected, EventClient, events, normalize_url
from client.errors import ClientError
from streamer.protocol.messages import (
    PROTOCOL_VERSION,
    ErrorMessage,
    Hello,
    Message,
    MessageError,
    SpeechEndMessage,
    SpeechStartMessage,
    StatsMessage,
    StreamCloseMessage,
    StreamInfo,
    StreamOpenMessage,
    Subscribe,
    WindowMessage,
    decode,
    encode,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ClientError",
    "Disconnected",
    "ErrorMessage",
    "EventClient",
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
    "events",
    "normalize_url",
]
