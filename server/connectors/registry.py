"""The telephony connectors ``emotion-monitor run`` knows, and their flags.

Each connector module defines ``add_flags(parser)`` (its own argument group, every flag
prefixed with the platform's name; secrets from a file or an environment variable, never the
command line) and ``config_from_args(args)`` (its config, or None when the platform's flags are
not given: a connector is off unless configured).
"""

from __future__ import annotations

import argparse
from types import ModuleType

import server.connectors.twilio as twilio
from server.connectors.base import ConnectorConfig

__all__ = ["CONNECTOR_MODULES", "add_connector_flags", "connector_configs"]

#: every connector module, in the order of ``run --help``
CONNECTOR_MODULES: tuple[ModuleType, ...] = (twilio,)


def add_connector_flags(parser: argparse.ArgumentParser) -> None:
    """Add every connector's argument group to ``parser``."""
    for module in CONNECTOR_MODULES:
        module.add_flags(parser)


def connector_configs(args: argparse.Namespace) -> tuple[ConnectorConfig, ...]:
    """The configs of the connectors the flags turn on (ServerError for bad values)."""
    configs = (module.config_from_args(args) for module in CONNECTOR_MODULES)
    return tuple(config for config in configs if config is not None)
