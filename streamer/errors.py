"""Exceptions raised by the streamer package (any thread).

Every error the package raises on purpose derives from :class:`StreamerError`, so callers (the
CLI, the server) can turn it into a one-line message and exit code 2 without catching bugs.
"""

from __future__ import annotations

__all__ = ["AudioError", "DataError", "ModelError", "StreamerError"]


class StreamerError(Exception):
    """Base class for every error the streamer package raises on purpose."""


class AudioError(StreamerError):
    """Audio that cannot be read or does not fit: unreadable file, bad rate, shape or dtype."""


class ModelError(StreamerError):
    """A model that cannot be loaded or used: missing checkpoint, not an audio classifier."""


class DataError(StreamerError):
    """A dataset folder that cannot be used: missing, empty, unknown labels."""
