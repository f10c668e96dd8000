"""The engine on the network: WebSocket endpoints, the dashboard, the timeline store, the CLI.

Names are exported lazily (PEP 562) so that importing the package loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ServerError": "server.errors",
    "main": "server.cli",
    "ServerConfig": "server.config",
    "DEFAULT_STORE_PATH": "server.config",
    "EventServer": "server.app",
    "EventHub": "server.hub",
    "ModelInfo": "server.hub",
    "FanOut": "server.fanout",
    "Backlog": "server.fanout",
    "ClientQueue": "server.fanout",
    "TimelineStore": "server.store",
    "export_timeline": "server.store",
    "read_events": "server.store",
    "read_sessions": "server.store",
    "Monitor": "server.monitor",
    "analyze_files": "server.monitor",
    "event_message": "server.convert",
    "AlertMonitor": "server.alerts",
    "AlertRule": "server.alerts",
    "parse_rule": "server.alerts",
    "IngestEndpoint": "server.ingest",
    "WebhookConfig": "server.webhook",
    "WebhookSender": "server.webhook",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
