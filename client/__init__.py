"""Consumers of the wire protocol: the async event API, the terminal view, the timeline logger.

Imports only the protocol home (``streamer.protocol``) and websockets: never torch, sounddevice,
the engine or the server.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (every public name of every module here)
_EXPORTS: dict[str, str] = {
    "ClientEvent": "client.api",
    "Disconnected": "client.api",
    "EventClient": "client.api",
    "backoff_delays": "client.api",
    "events": "client.api",
    "normalize_url": "client.api",
    "open_connection": "client.api",
    "ENV_VARS": "client.auth",
    "QuietHandshakeLogger": "client.auth",
    "auth_headers": "client.auth",
    "read_token": "client.auth",
    "ssl_context": "client.auth",
    "register": "client.cli",
    "ClientError": "client.errors",
    "TimelineLogger": "client.log",
    "log_events": "client.log",
    "PushConfig": "client.push",
    "PushResult": "client.push",
    "ingest_url": "client.push",
    "pcm_frames": "client.push",
    "send_file": "client.push",
    "push_file": "client.push",
    "StatsThrottle": "client.watch",
    "StreamView": "client.watch",
    "WatchConfig": "client.watch",
    "WatchState": "client.watch",
    "format_event": "client.watch",
    "label_style": "client.watch",
    "render": "client.watch",
    "watch_live": "client.watch",
    "watch_plain": "client.watch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
