"""Exceptions raised by the client package (any loop)."""

from __future__ import annotations

__all__ = ["ClientError"]


class ClientError(Exception):
    """Base class for every error the client package raises on purpose (bad URL, bad file)."""
