"""The telephony connectors ``emotion-monitor run`` knows, and their flags.

Each entry of :data:`CONNECTOR_MODULES` gives ``add_flags(parser)`` (its own argument group,
every flag prefixed with the platform's name; secrets from a file or an environment variable,
never the command line) and ``config_from_args(args)`` (its config, or None when the
platform's flags are not given: a connector is off unless configured). An entry is the
connector's config class, which holds both as a static and a class method: two connector
modules with module-level functions of the same names would export the same public names.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from server.connectors.audio_fork import AudioForkConfig
from server.connectors.audiosocket import AudioSocketConfig
from server.connectors.base import ConnectorConfig

__all__ = ["CONNECTOR_MODULES", "ConnectorFlags", "add_connector_flags", "connector_configs"]


class ConnectorFlags(Protocol):
    """What the registry asks of a connector: its flags, and its config from them."""

    def add_flags(self, parser: argparse.ArgumentParser, /) -> None:
        ...

    def config_from_args(self, args: argparse.Namespace, /) -> ConnectorConfig | None:
        ...


#: every connector, in the order of ``run --help``
CONNECTOR_MODULES: tuple[ConnectorFlags, ...] = (AudioForkConfig, AudioSocketConfig)


def add_connector_flags(parser: argparse.ArgumentParser) -> None:
    """Add every connector's argument group to ``parser``."""
    for module in CONNECTOR_MODULES:
        module.add_flags(parser)


def connector_configs(args: argparse.Namespace) -> tuple[ConnectorConfig, ...]:
    """The configs of the connectors the flags turn on (ServerError for bad values)."""
    configs = (module.config_from_args(args) for module in CONNECTOR_MODULES)
    return tuple(config for config in configs if config is not None)
