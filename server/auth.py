"""Credentials, roles, dashboard sessions and the Origin/Host policy (pure; the server's loop).

Three roles, each a bearer token (see ``docs/security.md``):

- ``ingest``: push call audio to ``WS /ingest``;
- ``view``: read events on ``WS /ws`` and open the dashboard;
- ``admin``: health details (``GET /healthz`` in full); implies ``view``, not ``ingest``.

Tokens come from a token file (``role:token`` lines) and/or the environment
(``EMOTION_MONITOR_INGEST_TOKEN``, ``..._VIEW_TOKEN``, ``..._ADMIN_TOKEN``), never from the
command line alone (it shows in ``ps``). Only SHA-256 digests of them are kept, compared with
:func:`hmac.compare_digest`, and no repr or message here ever contains one.

Browsers cannot set an ``Authorization`` header on a WebSocket, so the dashboard logs in once
(``POST /login``) and gets a cookie holding a random server-side session id
(:class:`SessionStore`), never the token.

Nothing here does I/O except :func:`load_credentials`, which reads the token file it is given;
times are passed in (``now``), so the module is pure and tested without a clock.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import stat
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from server.errors import ServerError

__all__ = [
    "Credentials",
    "ENV_VARS",
    "MAX_TOKEN_CHARS",
    "MIN_TOKEN_CHARS",
    "OriginPolicy",
    "ROLES",
    "SESSION_COOKIE",
    "SecurityConfig",
    "SessionStore",
    "bearer_token",
    "cookie_value",
    "expired_cookie",
    "grants",
    "is_loopback",
    "is_wildcard",
    "load_credentials",
    "login_token",
    "normalize_host",
    "normalize_origin",
    "parse_token_file",
    "session_cookie",
]

logger = logging.getLogger(__name__)

ROLES = ("ingest", "view", "admin")
#: environment variable of each role's token
ENV_VARS: Mapping[str, str] = {
    "ingest": "EMOTION_MONITOR_INGEST_TOKEN",
    "view": "EMOTION_MONITOR_VIEW_TOKEN",
    "admin": "EMOTION_MONITOR_ADMIN_TOKEN",
}
#: shortest token accepted: 16 characters of the b64token alphabet is ~96 bits at best
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 512
SESSION_COOKIE = "em_session"
# RFC 6750 b64token: what may follow "Bearer " in a header (no spaces, no ':' or ';')
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]*[a-z0-9])?)*")


def grants(role: str | None, needed: str) -> bool:
    """Whether a credential of ``role`` may do what ``needed`` allows (admin implies view)."""
    return role is not None and (role == needed or (role == "admin" and needed == "view"))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _check_token(token: str, where: str) -> None:
    """A one-line ServerError (never quoting the token) if ``token`` is not acceptable."""
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise ServerError(
            f"{where}: a token must be {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} characters, this one "
            f"has {len(token)} (make one with: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    if not _TOKEN.fullmatch(token):
        raise ServerError(
            f"{where}: a token may hold only letters, digits and . _ ~ + / - (then '=' padding)"
        )


@dataclass(frozen=True, slots=True)
class Credentials:
    """The tokens of each role, kept as SHA-256 digests (the repr shows roles and counts only).

    ``Credentials()`` is "no tokens configured": the server then runs in loopback-only mode and
    trusts every local client with every role.
    """

    digests: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    @classmethod
    def from_tokens(cls, pairs: Iterable[tuple[str, str]]) -> Credentials:
        """(role, token) pairs -> Credentials; ServerError for a bad role or token or reuse."""
        digests: list[tuple[str, bytes]] = []
        seen: dict[bytes, str] = {}
        for role, token in pairs:
            if role not in ROLES:
                raise ServerError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
            _check_token(token, f"{role} token")
            digest = _digest(token)
            other = seen.get(digest)
            if other is not None and other != role:
                raise ServerError(
                    f"the same token is given for {other!r} and {role!r}: give each role its own"
                )
            if other is None:
                seen[digest] = role
                digests.append((role, digest))
        return cls(tuple(digests))

    @property
    def configured(self) -> bool:
        """Whether any token is configured."""
        return bool(self.digests)

    @property
    def roles(self) -> tuple[str, ...]:
        """Roles that have at least one token, in ROLES order."""
        have = {role for role, _ in self.digests}
        return tuple(role for role in ROLES if role in have)

    def role_of(self, token: str | None) -> str | None:
        """The role a presented token carries, or None; compares against every token."""
        if token is None or not self.digests:
            return None
        candidate = _digest(token)
        found: str | None = None
        for role, digest in self.digests:
            # no early exit: the time does not depend on which token matched
            if hmac.compare_digest(candidate, digest) and found is None:
                found = role
        return found

    def __repr__(self) -> str:
        roles = [role for role, _ in self.digests]
        return "Credentials(" + ", ".join(f"{r}={roles.count(r)}" for r in self.roles) + ")"


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may use the server and how it is reached (``run`` security flags).

    - ``credentials``: the role tokens (``--token-file`` and ``EMOTION_MONITOR_*_TOKEN``); none
      configured = loopback only, every local client trusted.
    - ``tls_cert``/``tls_key``: serve https:// and wss:// (both or neither).
    - ``allow_hosts``: more ``Host`` names to answer (``"*"`` = any); ``allow_origins``: more
      browser origins allowed to open WebSockets and log in.
    - ``tls_proxy``: TLS ends at a reverse proxy in front (cookies Secure, own origins https).
    - ``session_ttl_s``: how long a dashboard login lasts.

    What depends on the listening host (a token is required off loopback, a wildcard host
    needs ``allow_hosts``) is checked by ``ServerConfig``, which knows the host.
    """

    credentials: Credentials = field(default_factory=Credentials)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_hosts: tuple[str, ...] = ()
    allow_origins: tuple[str, ...] = ()
    tls_proxy: bool = False
    session_ttl_s: float = 12 * 3600.0

    def __post_init__(self) -> None:
        if not isinstance(self.credentials, Credentials):
            raise ServerError(f"credentials must be Credentials, got {type(self.credentials)}")
        object.__setattr__(self, "allow_hosts", tuple(self.allow_hosts))
        object.__setattr__(self, "allow_origins", tuple(self.allow_origins))
        for name in ("tls_cert", "tls_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServerError("--tls-cert and --tls-key go together: give both or neither")
        if not 60 <= self.session_ttl_s <= 30 * 86400:
            raise ServerError(
                f"session_ttl_s must be 60 s-30 days, got {self.session_ttl_s!r}"
            )

    @property
    def tls(self) -> bool:
        """Whether the server itself serves TLS."""
        return self.tls_cert is not None

    @property
    def https(self) -> bool:
        """Whether clients reach the server over TLS (its own or a proxy's)."""
        return self.tls or self.tls_proxy


def parse_token_file(text: str, source: str = "token file") -> list[tuple[str, str]]:
    """``role:token`` lines -> (role, token) pairs (pure). Blank lines and ``#`` comments skip.

    A role may have several tokens (one per line: rotation, one per sender). Errors name the
    line number, never the token.
    """
    pairs: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        role, sep, token = line.partition(":")
        role, token = role.strip().lower(), token.strip()
        where = f"{source} line {number}"
        if not sep:
            raise ServerError(f"{where}: expected ROLE:TOKEN with a role of {', '.join(ROLES)}")
        if role not in ROLES:
            raise ServerError(f"{where}: unknown role {role[:20]!r}; roles are {', '.join(ROLES)}")
        _check_token(token, where)
        pairs.append((role, token))
    return pairs


def load_credentials(token_file: Path | None, environ: Mapping[str, str]) -> Credentials:
    """Tokens from ``token_file`` (if given) plus the ``EMOTION_MONITOR_*_TOKEN`` variables."""
    pairs: list[tuple[str, str]] = []
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
            mode = token_file.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ServerError(f"--token-file {token_file}: cannot read it ({reason})") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("token file %s is readable by other users (chmod 600 it)", token_file)
        pairs.extend(parse_token_file(text, f"--token-file {token_file}"))
        if not pairs:
            raise ServerError(f"--token-file {token_file}: holds no ROLE:TOKEN line")
    for role, name in ENV_VARS.items():
        value = environ.get(name)
        if value:
            _check_token(value.strip(), name)
            pairs.append((role, value.strip()))
    return Credentials.from_tokens(pairs)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def cookie_value(cookie_headers: Iterable[str], name: str = SESSION_COOKIE) -> str | None:
    """The value of cookie ``name`` in ``Cookie`` header values (the first one), else None."""
    for header in cookie_headers:
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value.strip().strip('"') or None
    return None


def session_cookie(value: str, *, max_age_s: int, secure: bool) -> str:
    """A ``Set-Cookie`` value for a new dashboard session."""
    attributes = f"; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Strict"
    return f"{SESSION_COOKIE}={value}{attributes}{'; Secure' if secure else ''}"


def expired_cookie(*, secure: bool) -> str:
    """A ``Set-Cookie`` value that removes the session cookie (logout)."""
    return session_cookie("", max_age_s=0, secure=secure)


def login_token(body: bytes) -> str | None:
    """The ``token`` field of an ``application/x-www-form-urlencoded`` login body, else None."""
    try:
        text = body.decode("ascii")
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=8)
    except ValueError:  # not ASCII, or too many fields
        return None
    values = fields.get("token", [])
    if len(values) != 1:
        return None
    return values[0].strip() or None


class SessionStore:
    """Logged-in dashboard sessions: random ids, held server-side, bounded, expiring.

    The cookie carries a 256-bit random id; the store keeps only its SHA-256 (a dict lookup of
    a digest leaks nothing usable about other ids). At most ``max_sessions`` live at once: a
    new one evicts the oldest. Logging out revokes the id at once; a restart forgets them all.
    """

    def __init__(self, *, ttl_s: float, max_sessions: int = 1024) -> None:
        if ttl_s <= 0 or max_sessions < 1:
            raise ServerError(f"bad session settings: ttl_s={ttl_s}, max_sessions={max_sessions}")
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        #: sessions evicted because the store was full
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, role: str, now: float) -> str:
        """A new session of ``role``; its cookie value."""
        self._purge(now)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
            self.evicted += 1
        value = secrets.token_urlsafe(32)
        self._sessions[_digest(value)] = (role, now + self.ttl_s)
        return value

    def role_of(self, value: str | None, now: float) -> str | None:
        """The role of a live session cookie value, else None."""
        if not value:
            return None
        key = _digest(value)
        entry = self._sessions.get(key)
        if entry is None:
            return None
        role, expires = entry
        if now >= expires:
            del self._sessions[key]
            return None
        return role

    def revoke(self, value: str | None) -> bool:
        """End a session (logout); True if it existed."""
        if not value:
            return False
        return self._sessions.pop(_digest(value), None) is not None

    def _purge(self, now: float) -> None:
        expired = [key for key, (_, expires) in self._sessions.items() if now >= expires]
        for key in expired:
            del self._sessions[key]


# -- Origin and Host -------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether a bind address only takes connections from this machine."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Whether a bind address listens on every interface (0.0.0.0, ::)."""
    name = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(name).is_unspecified
    except ValueError:
        return False


def _name(host: str) -> str | None:
    """A host name or IP literal, canonical (lowercase, no trailing dot, IPv6 bare), else None."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            return None
    name = name.rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    return name if len(name) <= 253 and _HOST_NAME.fullmatch(name) else None


def normalize_host(value: str | None) -> str | None:
    """The host name of a ``Host`` header value (``name[:port]``, ``[v6][:port]``), else None."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        rest = value[end + 1:]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return _name(value[: end + 1])
    name, sep, port = value.rpartition(":")
    if sep and ":" not in name:
        if not port.isdigit():
            return None
        value = name
    return _name(value)


def _url_host(name: str) -> str:
    return f"[{name}]" if ":" in name else name


def normalize_origin(value: str) -> str | None:
    """``scheme://host:port`` (explicit port, canonical host) of an origin, else None."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query:
        return None
    if parts.username is not None or parts.password is not None or not parts.hostname:
        return None
    name = _name(f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname)
    if name is None:
        return None
    if port is None:
        port = 443 if scheme == "https" else 80
    return f"{scheme}://{_url_host(name)}:{port}"


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Which ``Host`` names and browser ``Origin`` values the server answers.

    ``hosts`` holds canonical names (``"*"``: any); ``origins`` canonical origins. A request
    without ``Origin`` (not from a browser page) passes the origin check; a request without a
    usable ``Host`` fails the host check.
    """

    hosts: frozenset[str]
    origins: frozenset[str]

    @classmethod
    def build(
        cls,
        bind_host: str,
        port: int,
        *,
        https: bool,
        allow_hosts: Iterable[str] = (),
        allow_origins: Iterable[str] = (),
    ) -> OriginPolicy:
        """The default policy of a server bound to ``bind_host:port``, plus the extra names.

        Hosts: the bind address unless it is a wildcard, ``localhost`` on a loopback bind, and
        ``allow_hosts``. Origins: the server's own (``scheme://H:port`` for each allowed name)
        plus ``allow_origins``. ServerError for a bad entry.
        """
        hosts: set[str] = set()
        bind = _name(f"[{bind_host}]" if ":" in bind_host.strip("[]") else bind_host)
        if bind is not None and not is_wildcard(bind_host):
            hosts.add(bind)
        if is_loopback(bind_host):
            hosts.add("localhost")
            if bind == "localhost":
                hosts.update({"127.0.0.1", "::1"})
        for entry in allow_hosts:
            if entry == "*":
                hosts.add("*")
                continue
            name = normalize_host(entry)
            if name is None:
                raise ServerError(f"--allow-host {entry!r}: not a host name or IP address")
            hosts.add(name)
        scheme = "https" if https else "http"
        origins = {f"{scheme}://{_url_host(h)}:{port}" for h in hosts if h != "*"}
        for entry in allow_origins:
            canonical = normalize_origin(entry)
            if canonical is None:
                raise ServerError(
                    f"--allow-origin {entry!r}: expected scheme://host[:port], e.g. "
                    "https://monitor.example.com"
                )
            origins.add(canonical)
        return cls(frozenset(hosts), frozenset(origins))

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a request's ``Host`` header names this server."""
        name = normalize_host(host_header)
        if name is None:
            return False
        return "*" in self.hosts or name in self.hosts

    def origin_allowed(self, origin: str | None) -> bool:
        """Whether a request's ``Origin`` (None: not a browser page) may use the server."""
        if origin is None:
            return True
        canonical = normalize_origin(origin)  # "null" and other opaque origins give None
        return canonical is not None and canonical in self.origins
