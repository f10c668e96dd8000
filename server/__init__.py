"""The engine on the network: WebSocket endpoints, the dashboard, the timeline store, the CLI.

Names are exported lazily (PEP 562) so that importing the package loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (every public name of every module here)
_EXPORTS: dict[str, str] = {
    "DEFAULT_MAX_GAP_S": "server.alerts",
    "AlertChange": "server.alerts",
    "AlertEvaluator": "server.alerts",
    "AlertMonitor": "server.alerts",
    "AlertRule": "server.alerts",
    "AlertsConfig": "server.alerts",
    "bind_rules": "server.alerts",
    "close_reason": "server.alerts",
    "parse_rule": "server.alerts",
    "CONTENT_TYPES": "server.app",
    "EventServer": "server.app",
    "LOGIN_PATH": "server.app",
    "LOGOUT_PATH": "server.app",
    "MAX_BODY_BYTES": "server.app",
    "HTTP_REFUSALS": "server.app",
    "format_host": "server.app",
    "Credentials": "server.auth",
    "ENV_VARS": "server.auth",
    "MAX_TOKEN_CHARS": "server.auth",
    "MIN_TOKEN_CHARS": "server.auth",
    "OriginPolicy": "server.auth",
    "ROLES": "server.auth",
    "SESSION_COOKIE": "server.auth",
    "SecurityConfig": "server.auth",
    "SessionStore": "server.auth",
    "bearer_token": "server.auth",
    "cookie_value": "server.auth",
    "expired_cookie": "server.auth",
    "grants": "server.auth",
    "is_loopback": "server.auth",
    "is_wildcard": "server.auth",
    "load_credentials": "server.auth",
    "login_token": "server.auth",
    "normalize_host": "server.auth",
    "normalize_origin": "server.auth",
    "parse_token_file": "server.auth",
    "session_cookie": "server.auth",
    "ThreadBridge": "server.bridge",
    "Handler": "server.cli",
    "OneLineParser": "server.cli",
    "build_parser": "server.cli",
    "main": "server.cli",
    "register": "server.commands",
    "DEFAULT_STORE_PATH": "server.config",
    "STATIC_DIR": "server.config",
    "IngestConfig": "server.config",
    "ServerConfig": "server.config",
    "ServerError": "server.errors",
    "Backlog": "server.fanout",
    "BacklogRole": "server.fanout",
    "ClientQueue": "server.fanout",
    "FanOut": "server.fanout",
    "Frame": "server.fanout",
    "QueueClosed": "server.fanout",
    "prefix_keys": "server.fanout",
    "text_frame": "server.fanout",
    "AlertSink": "server.hub",
    "EventHub": "server.hub",
    "backlog_role": "server.hub",
    "RESERVED_METADATA": "server.ingest",
    "IngestEndpoint": "server.ingest",
    "IngestRejected": "server.ingest",
    "IngestSpec": "server.ingest",
    "check_start": "server.ingest",
    "decode_audio": "server.ingest",
    "LIMIT_REFUSALS": "server.limits",
    "AddressSlots": "server.limits",
    "ClientLog": "server.limits",
    "LimitsConfig": "server.limits",
    "ServerCounters": "server.limits",
    "TokenBucket": "server.limits",
    "address_of": "server.limits",
    "check_ranges": "server.limits",
    "AudioSource": "server.monitor",
    "Monitor": "server.monitor",
    "register_serve_ray": "server.ray_command",
    "StoreRecorder": "server.recorder",
    "ModelInfo": "server.session",
    "StreamRegistry": "server.session",
    "hello": "server.session",
    "SCHEMA_VERSION": "server.store",
    "SessionInfo": "server.store",
    "StoreRow": "server.store",
    "TimelineStore": "server.store",
    "export_timeline": "server.store",
    "read_events": "server.store",
    "read_sessions": "server.store",
    "store_row": "server.store",
    "StatsTicker": "server.ticker",
    "server_context": "server.tls",
    "SIGNATURE_HEADER": "server.webhook",
    "TOKEN_ENV": "server.webhook",
    "SECRET_ENV": "server.webhook",
    "WebhookConfig": "server.webhook",
    "WebhookSender": "server.webhook",
    "read_credential": "server.webhook",
    "redact_url": "server.webhook",
    "sign": "server.webhook",
    "verify_signature": "server.webhook",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
