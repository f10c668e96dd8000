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
    "add_audio_fork_flags": "server.connectors.audio_fork",
    "audio_fork_config_from_args": "server.connectors.audio_fork",
    "check_basic_auth": "server.connectors.audio_fork",
    "fork_spec": "server.connectors.audio_fork",
    "parse_fork_rate": "server.connectors.audio_fork",
    "API_KEY_ENV": "server.connectors.audiohook",
    "CLIENT_SECRET_ENV": "server.connectors.audiohook",
    "DEFAULT_AUDIOHOOK_PATH": "server.connectors.audiohook",
    "SIGNED_COMPONENTS": "server.connectors.audiohook",
    "AudioHookConfig": "server.connectors.audiohook",
    "AudioHookConnector": "server.connectors.audiohook",
    "add_audiohook_flags": "server.connectors.audiohook",
    "audiohook_config_from_args": "server.connectors.audiohook",
    "AUDIOHOOK_FORMATS": "server.connectors.audiohook_protocol",
    "AUDIOHOOK_RATE_HZ": "server.connectors.audiohook_protocol",
    "AUDIOHOOK_VERSION": "server.connectors.audiohook_protocol",
    "MAX_TEXT_CHARS": "server.connectors.audiohook_protocol",
    "NULL_UUID": "server.connectors.audiohook_protocol",
    "AudioHookError": "server.connectors.audiohook_protocol",
    "AudioHookSession": "server.connectors.audiohook_protocol",
    "ClientMessage": "server.connectors.audiohook_protocol",
    "MediaFormat": "server.connectors.audiohook_protocol",
    "OpenRequest": "server.connectors.audiohook_protocol",
    "decode_frame": "server.connectors.audiohook_protocol",
    "parse_client_message": "server.connectors.audiohook_protocol",
    "select_media": "server.connectors.audiohook_protocol",
    "AUDIOSOCKET_AUDIO_RATES_HZ": "server.connectors.audiosocket",
    "AUDIOSOCKET_DTMF": "server.connectors.audiosocket",
    "AUDIOSOCKET_ERROR": "server.connectors.audiosocket",
    "AUDIOSOCKET_HANGUP": "server.connectors.audiosocket",
    "AUDIOSOCKET_HANGUP_MESSAGE": "server.connectors.audiosocket",
    "AUDIOSOCKET_UUID": "server.connectors.audiosocket",
    "AudioSocketConfig": "server.connectors.audiosocket",
    "AudioSocketConnector": "server.connectors.audiosocket",
    "AudioSocketRefused": "server.connectors.audiosocket",
    "add_audiosocket_flags": "server.connectors.audiosocket",
    "audiosocket_config_from_args": "server.connectors.audiosocket",
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
    "HandlerTasks": "server.connectors.calls",
    "PlatformCall": "server.connectors.calls",
    "bounded_metadata": "server.connectors.calls",
    "call_id_ok": "server.connectors.calls",
    "CLOCK_SKEW_S": "server.connectors.httpsig",
    "NonceCache": "server.connectors.httpsig",
    "SignatureError": "server.connectors.httpsig",
    "verify_hmac_signature": "server.connectors.httpsig",
    "CONNECTORS": "server.connectors.registry",
    "add_connector_flags": "server.connectors.registry",
    "connector_configs": "server.connectors.registry",
    "TWILIO_AUTH_TOKEN_ENV": "server.connectors.twilio",
    "TWILIO_SIGNATURE_HEADER": "server.connectors.twilio",
    "TwilioConfig": "server.connectors.twilio",
    "TwilioConnected": "server.connectors.twilio",
    "TwilioConnector": "server.connectors.twilio",
    "TwilioDtmf": "server.connectors.twilio",
    "TwilioMark": "server.connectors.twilio",
    "TwilioMedia": "server.connectors.twilio",
    "TwilioMessage": "server.connectors.twilio",
    "TwilioRejected": "server.connectors.twilio",
    "TwilioStart": "server.connectors.twilio",
    "TwilioStop": "server.connectors.twilio",
    "TwilioUnknown": "server.connectors.twilio",
    "add_twilio_flags": "server.connectors.twilio",
    "twilio_config_from_args": "server.connectors.twilio",
    "parse_twilio_message": "server.connectors.twilio",
    "twilio_signature": "server.connectors.twilio",
    "twilio_signature_ok": "server.connectors.twilio",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
