"""Client credentials and TLS: the token to present, and the CA to trust (pure setup; any thread).

A token is read from a file (``--token-file``) or an environment variable, never taken from
the command line (it would show in ``ps``). The file holds either the token alone on one line,
or the server's ``role:token`` lines, from which the role the command needs is picked. It is
sent as ``Authorization: Bearer TOKEN`` in the WebSocket handshake and never logged: the
websockets logger handed to connections here drops its DEBUG lines, which print every header.

``wss://`` URLs verify the server's certificate against the system's CAs, or only against
``--ca-file`` when given (a self-signed certificate, a private CA).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from client.errors import ClientError

__all__ = [
    "ENV_VARS",
    "QuietHandshakeLogger",
    "auth_headers",
    "read_token",
    "ssl_context",
]

#: environment variable of each role's token (the same names the server reads)
ENV_VARS: Mapping[str, str] = {
    "ingest": "EMOTION_MONITOR_INGEST_TOKEN",
    "view": "EMOTION_MONITOR_VIEW_TOKEN",
    "admin": "EMOTION_MONITOR_ADMIN_TOKEN",
}
_MAX_FILE_BYTES = 64 * 1024


def read_token(
    token_file: str | Path | None, *, roles: Sequence[str], environ: Mapping[str, str]
) -> str | None:
    """The token for the first of ``roles`` found: from ``token_file`` if given, else from
    the roles' environment variables; None when there is none (no credential sent).

    ClientError (never quoting a token) for an unreadable file or one without such a token.
    """
    if token_file is not None:
        path = Path(token_file)
        try:
            with path.open("rb") as handle:
                data = handle.read(_MAX_FILE_BYTES + 1)
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ClientError(f"--token-file {path}: cannot read it ({reason})") from exc
        if len(data) > _MAX_FILE_BYTES:
            raise ClientError(f"--token-file {path}: larger than {_MAX_FILE_BYTES} bytes")
        lines = [line.strip() for line in text.splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        if len(lines) == 1 and ":" not in lines[0]:
            return lines[0]
        found: dict[str, str] = {}
        for line in lines:
            role, sep, token = line.partition(":")
            if sep and token.strip():
                found.setdefault(role.strip().lower(), token.strip())
        for role in roles:
            if role in found:
                return found[role]
        raise ClientError(
            f"--token-file {path}: no token for {' or '.join(roles)} (write the token alone, "
            "or ROLE:TOKEN lines)"
        )
    for role in roles:
        value = environ.get(ENV_VARS[role], "").strip()
        if value:
            return value
    return None


def auth_headers(token: str | None) -> list[tuple[str, str]]:
    """Handshake headers that carry ``token`` (none without one)."""
    if token is None:
        return []
    if not token or any(c.isspace() for c in token) or not token.isascii():
        raise ClientError("the token must be ASCII without spaces")
    return [("Authorization", f"Bearer {token}")]


def ssl_context(url: str, ca_file: str | Path | None) -> ssl.SSLContext | None:
    """The TLS context for a ``wss://`` URL (None for ``ws://``); ``ca_file`` replaces the
    system CAs. ClientError for a CA file with a ``ws://`` URL or one that cannot be loaded."""
    secure = url.lower().startswith("wss://")
    if not secure:
        if ca_file is not None:
            raise ClientError(f"--ca-file is for wss:// URLs, not {url}")
        return None
    if ca_file is None:
        return ssl.create_default_context()
    path = Path(ca_file)
    if not path.is_file():
        raise ClientError(f"--ca-file {path}: no such file")
    try:
        return ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ClientError(f"--ca-file {path}: cannot load it as PEM certificates ({exc})") from exc


class QuietHandshakeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A websockets logger without DEBUG lines (they print the Authorization header)."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return level > logging.DEBUG and self.logger.isEnabledFor(level)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        return None
