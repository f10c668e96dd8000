"""The wire protocol both ends share: messages, timeline files, limits and defaults.

It imports only the standard library, so ``client`` and the dashboard's server side agree on one
schema without loading numpy, torch or sounddevice. Names are exported lazily (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (every public name of every module here)
_EXPORTS: dict[str, str] = {
    "ProtocolError": "streamer.protocol.errors",
    "TimelineError": "streamer.protocol.errors",
    "DEFAULT_EVENTS_URL": "streamer.protocol.limits",
    "DEFAULT_HOST": "streamer.protocol.limits",
    "DEFAULT_INGEST_URL": "streamer.protocol.limits",
    "DEFAULT_PORT": "streamer.protocol.limits",
    "EVENTS_PATH": "streamer.protocol.limits",
    "INGEST_BYTES_PER_SAMPLE": "streamer.protocol.limits",
    "INGEST_FORMATS": "streamer.protocol.limits",
    "INGEST_PATH": "streamer.protocol.limits",
    "MAX_INGEST_CHANNELS": "streamer.protocol.limits",
    "MAX_INGEST_RATE_HZ": "streamer.protocol.limits",
    "MAX_INPUT_RATE_HZ": "streamer.protocol.limits",
    "MIN_INGEST_RATE_HZ": "streamer.protocol.limits",
    "MIN_INPUT_RATE_HZ": "streamer.protocol.limits",
    "UNCERTAIN": "streamer.protocol.limits",
    "ALERT_END_REASONS": "streamer.protocol.messages",
    "ALERT_STATES": "streamer.protocol.messages",
    "WIDEBAND_MODEL_ON_NARROWBAND_AUDIO": "streamer.protocol.messages",
    "PROTOCOL_VERSION": "streamer.protocol.messages",
    "AlertMessage": "streamer.protocol.messages",
    "ErrorMessage": "streamer.protocol.messages",
    "Hello": "streamer.protocol.messages",
    "IngestAck": "streamer.protocol.messages",
    "IngestEnd": "streamer.protocol.messages",
    "IngestStart": "streamer.protocol.messages",
    "Message": "streamer.protocol.messages",
    "MessageError": "streamer.protocol.messages",
    "SpeechEndMessage": "streamer.protocol.messages",
    "SpeechStartMessage": "streamer.protocol.messages",
    "StatsMessage": "streamer.protocol.messages",
    "StreamCloseMessage": "streamer.protocol.messages",
    "StreamInfo": "streamer.protocol.messages",
    "StreamOpenMessage": "streamer.protocol.messages",
    "Subscribe": "streamer.protocol.messages",
    "UtteranceMessage": "streamer.protocol.messages",
    "WindowMessage": "streamer.protocol.messages",
    "decode": "streamer.protocol.messages",
    "encode": "streamer.protocol.messages",
    "stream_wanted": "streamer.protocol.messages",
    "BASE_COLUMNS": "streamer.protocol.timeline",
    "FORMATS": "streamer.protocol.timeline",
    "TIMELINE_KINDS": "streamer.protocol.timeline",
    "TimelineFiles": "streamer.protocol.timeline",
    "TimelineFormat": "streamer.protocol.timeline",
    "TimelineKind": "streamer.protocol.timeline",
    "TimelineWriter": "streamer.protocol.timeline",
    "alert_row": "streamer.protocol.timeline",
    "check_new_timeline": "streamer.protocol.timeline",
    "columns": "streamer.protocol.timeline",
    "iter_timeline": "streamer.protocol.timeline",
    "kind_columns": "streamer.protocol.timeline",
    "kind_path": "streamer.protocol.timeline",
    "probability_column": "streamer.protocol.timeline",
    "read_timeline": "streamer.protocol.timeline",
    "new_session_id": "streamer.protocol.timeline",
    "row_identity": "streamer.protocol.timeline",
    "row_key": "streamer.protocol.timeline",
    "timeline_format": "streamer.protocol.timeline",
    "utterance_row": "streamer.protocol.timeline",
    "window_row": "streamer.protocol.timeline",
    "UrlError": "streamer.protocol.urls",
    "endpoint_url": "streamer.protocol.urls",
    "events_url": "streamer.protocol.urls",
    "ingest_url": "streamer.protocol.urls",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
