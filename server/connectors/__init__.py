"""Telephony connectors: platforms' call-audio streams into per-party engine streams.

Names are exported lazily (PEP 562) so that importing the package loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (every public name of every module here)
_EXPORTS: dict[str, str] = {
    "AUDIO_FORK_CALL_ID_KEYS": "server.connectors.audio_fork",
    "AUDIO_FORK_CREDENTIALS_ENV": "server.connectors.audio_fork",
    "AUDIO_FORK_MIX_TYPES": "server.connectors.audio_fork",
    "AUDIO_FORK_RATES_HZ": "server.connectors.audio_fork",
    "MAX_AUDIO_FORK_TEXT_BYTES": "server.connectors.audio_fork",
    "AudioForkConfig": "server.connectors.audio_fork",
    "AudioForkConnector": "server.connectors.audio_fork",
    "AudioForkRefused": "server.connectors.audio_fork",
    "ForkSpec": "server.connectors.audio_fork",
    "check_basic_auth": "server.connectors.audio_fork",
    "fork_spec": "server.connectors.audio_fork",
    "parse_fork_rate": "server.connectors.audio_fork",
    "AUDIOSOCKET_AUDIO_RATES_HZ": "server.connectors.audiosocket",
    "AUDIOSOCKET_DTMF": "server.connectors.audiosocket",
    "AUDIOSOCKET_ERROR": "server.connectors.audiosocket",
    "AUDIOSOCKET_HANGUP": "server.connectors.audiosocket",
    "AUDIOSOCKET_HANGUP_MESSAGE": "server.connectors.audiosocket",
    "AUDIOSOCKET_UUID": "server.connectors.audiosocket",
    "AudioSocketConfig": "server.connectors.audiosocket",
    "AudioSocketConnector": "server.connectors.audiosocket",
    "AudioSocketRefused": "server.connectors.audiosocket",
    "parse_audiosocket_header": "server.connectors.audiosocket",
    "uuid_from_payload": "server.connectors.audiosocket",
    "MAX_MAP_ENTRIES": "server.connectors.audiosocket_map",
    "MAX_MAP_LINE_CHARS": "server.connectors.audiosocket_map",
    "MAX_MAP_READ_BYTES": "server.connectors.audiosocket_map",
    "AudioSocketMap": "server.connectors.audiosocket_map",
    "LegEntry": "server.connectors.audiosocket_map",
    "parse_map_line": "server.connectors.audiosocket_map",
    "ConnectorConfig": "server.connectors.base",
    "ConnectorContext": "server.connectors.base",
    "ConnectorStats": "server.connectors.base",
    "Refusal": "server.connectors.base",
    "TcpConnector": "server.connectors.base",
    "WebSocketConnector": "server.connectors.base",
    "MAX_METADATA_CHARS": "server.connectors.calls",
    "MAX_METADATA_KEYS": "server.connectors.calls",
    "CallDesk": "server.connectors.calls",
    "CallRefused": "server.connectors.calls",
    "PlatformCall": "server.connectors.calls",
    "bounded_metadata": "server.connectors.calls",
    "call_id_ok": "server.connectors.calls",
    "CONNECTOR_MODULES": "server.connectors.registry",
    "ConnectorFlags": "server.connectors.registry",
    "add_connector_flags": "server.connectors.registry",
    "connector_configs": "server.connectors.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
