"""Telephony connectors: platforms' call-audio streams into per-party engine streams.

Names are exported lazily (PEP 562) so that importing the package loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (every public name of every module here)
_EXPORTS: dict[str, str] = {
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
