"""TLS for the server: an ``ssl.SSLContext`` from a certificate and key file (pure setup).

``--tls-cert``/``--tls-key`` make the one port serve ``https://`` and ``wss://``. TLS 1.2 is the
oldest version accepted. A missing, unreadable or mismatched file is a one-line ServerError.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from server.errors import ServerError

__all__ = ["server_context"]


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context for ``cert`` (PEM chain) and ``key`` (PEM, unencrypted)."""
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise ServerError(f"{flag} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # a passphrase prompt would block the server: an encrypted key is an error instead
        context.load_cert_chain(str(cert), str(key), password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise ServerError(
            f"--tls-cert {cert} / --tls-key {key}: cannot load them ({reason}); give a PEM "
            "certificate chain and its unencrypted PEM private key"
        ) from exc
    return context
