"""The telephony connectors ``emotion-monitor run`` knows, and their flags.

Each connector module defines ``add_<name>_flags(parser)`` (its own argument group, every flag
prefixed with the platform's name; secrets from a file or an environment variable, never the
command line) and ``<name>_config_from_args(args)`` (its config, or None when the platform's
flags are not given: a connector is off unless configured). :data:`CONNECTORS` lists the pairs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import server.connectors.audio_fork as audio_fork
import server.connectors.audiohook as audiohook
import server.connectors.audiosocket as audiosocket
import server.connectors.twilio as twilio
from server.connectors.base import ConnectorConfig

__all__ = ["CONNECTORS", "add_connector_flags", "connector_configs"]

#: (add its flags, its config from the parsed flags) per connector, in ``run --help`` order
CONNECTORS: tuple[tuple[Callable[[argparse.ArgumentParser], None],
                        Callable[[argparse.Namespace], ConnectorConfig | None]], ...] = (
    (twilio.add_twilio_flags, twilio.twilio_config_from_args),
    (audiohook.add_audiohook_flags, audiohook.audiohook_config_from_args),
    (audio_fork.add_audio_fork_flags, audio_fork.audio_fork_config_from_args),
    (audiosocket.add_audiosocket_flags, audiosocket.audiosocket_config_from_args),
)


def add_connector_flags(parser: argparse.ArgumentParser) -> None:
    """Add every connector's argument group to ``parser``."""
    for add_flags, _ in CONNECTORS:
        add_flags(parser)


def connector_configs(args: argparse.Namespace) -> tuple[ConnectorConfig, ...]:
    """The configs of the connectors the flags turn on (ServerError for bad values)."""
    configs = (config_from_args(args) for _, config_from_args in CONNECTORS)
    return tuple(config for config in configs if config is not None)
