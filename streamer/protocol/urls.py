"""Checking and completing the URL of a server endpoint (pure; any thread or loop).

A client may be given the dashboard's address (``http://host:8765``), a bare ``ws://`` address
or a full endpoint URL; each becomes the ``ws://`` or ``wss://`` URL of the endpoint it means.
Bad values raise :class:`UrlError` naming the value and what is allowed; ``client`` turns it
into its ClientError. Imports only the standard library and the protocol limits.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from streamer.protocol.errors import ProtocolError
from streamer.protocol.limits import DEFAULT_HOST, DEFAULT_PORT, EVENTS_PATH, INGEST_PATH

__all__ = ["UrlError", "endpoint_url", "events_url", "ingest_url"]

#: URL scheme -> WebSocket scheme (the dashboard's http(s) address names the same server)
_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


class UrlError(ProtocolError, ValueError):
    """A URL that cannot name a WebSocket endpoint of the server."""


def endpoint_url(url: str, *, default_path: str) -> str:
    """Check a server URL: ``ws://`` or ``wss://``; ``http(s)://`` becomes ``ws(s)://``.

    A URL without a path (or just ``/``, like the dashboard URL) gets ``default_path``; the
    query is kept and a fragment dropped (a handshake sends none). Anything else is a
    :class:`UrlError` naming the bad value and what is allowed.
    """
    example = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}{default_path}"
    if not isinstance(url, str) or not url.strip():
        raise UrlError(f"empty URL; expected e.g. {example}")
    parts = urlsplit(url.strip())
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise UrlError(
            f"bad URL {url!r}: scheme must be ws://, wss://, http:// or https:// "
            f"(e.g. {example})"
        )
    try:
        host = parts.hostname
        parts.port  # noqa: B018 (reading it checks it: a port that is not a number or too big)
    except ValueError as exc:
        raise UrlError(f"bad URL {url!r}: {exc}") from exc
    if not host:
        raise UrlError(f"bad URL {url!r}: no host (e.g. {example})")
    path = parts.path if parts.path not in ("", "/") else default_path
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def events_url(url: str) -> str:
    """:func:`endpoint_url` for the event stream: no path means ``/ws``."""
    return endpoint_url(url, default_path=EVENTS_PATH)


def ingest_url(url: str) -> str:
    """:func:`endpoint_url` for pushed audio: no path means ``/ingest``."""
    return endpoint_url(url, default_path=INGEST_PATH)
