"""The ``devices`` subcommand: list audio input devices (main thread).

Capture's own command, next to :mod:`streamer.capture`; the command root (``server/cli.py``)
registers it. ``register`` imports nothing heavy: the handler loads PortAudio when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``devices`` to the top-level parser."""
    devices = subparsers.add_parser(
        "devices",
        help="list audio input devices",
        description="List the input devices PortAudio sees (index, name, channels, rate).",
    )
    devices.set_defaults(handler=_devices)


def _devices(args: argparse.Namespace) -> int:
    from streamer.capture import list_input_devices

    devices = list_input_devices()
    if not devices:
        print("no input devices found (use 'run --source FILE' to analyse a file)")
        return 0
    rows = [("index", "name", "channels", "rate_hz", "host_api", "default")]
    for d in devices:
        rows.append((str(d.index), d.name, str(d.channels), str(d.default_rate_hz), d.hostapi,
                     "*" if d.is_default else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0
