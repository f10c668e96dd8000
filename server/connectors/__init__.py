"""Telephony connectors: platforms' call-audio streams into per-party engine streams.

Names are exported lazily (PEP 562) so that importing the package loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (every public name of every module here)
_EXPORTS: dict[str, str] = {
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
    "add_flags": "server.connectors.twilio",
    "config_from_args": "server.connectors.twilio",
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
