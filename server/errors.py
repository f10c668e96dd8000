"""Exceptions raised by the server package (any thread or loop)."""

from __future__ import annotations

__all__ = ["ServerError"]


class ServerError(Exception):
    """Base class for every error the server raises on purpose (bad settings, port in use)."""
