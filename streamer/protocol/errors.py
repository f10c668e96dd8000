"""The protocol package's base exception (any thread or loop; imports nothing)."""

from __future__ import annotations

__all__ = ["ProtocolError", "TimelineError"]


class ProtocolError(Exception):
    """Base class for every error the protocol package raises on purpose."""


class TimelineError(ProtocolError):
    """A timeline file that cannot be read, written or extended (bad suffix, labels, rows)."""
