"""POST alert JSON to a webhook URL (event loop; each POST runs in a worker thread).

:class:`WebhookSender` owns one task and one bounded queue. ``submit`` never waits: when the
queue is full the **oldest** body is dropped and counted (``dropped``), so a dead or slow
receiver never blocks the engine or the loop, and memory stays bounded. The task POSTs one body
at a time with ``urllib`` in a worker thread (``asyncio.to_thread``, timeout ``timeout_s``), and
retries a failure (connection error, timeout, HTTP 5xx or 429) up to ``max_attempts`` in all,
waiting ``backoff_initial_s`` doubled per retry (at most ``backoff_max_s``); other 4xx answers
are not retried. Bodies given up on count in ``failed``.

Nothing secret leaks: a credential goes in a header (``Authorization: Bearer <token>``, the
token read from a file or ``EMOTION_MONITOR_WEBHOOK_TOKEN``), never in the URL: a URL with
``user:password@`` is refused when the settings are made, and every log line shows the URL
redacted (:func:`redact_url`: no userinfo, no query string, no fragment). Redirects are not
followed: a 3xx answer is a failure (counted in ``failed`` and ``redirects``), never "sent".

With a signing secret (file or ``EMOTION_MONITOR_WEBHOOK_SECRET``) each POST carries
``X-Emotion-Monitor-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``, signed
afresh for every attempt, so a receiver can check the body came from this server and refuse
old (replayed) deliveries: :func:`verify_signature` does both.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from server.errors import ServerError

__all__ = [
    "SIGNATURE_HEADER",
    "TOKEN_ENV",
    "SECRET_ENV",
    "WebhookConfig",
    "WebhookSender",
    "read_credential",
    "redact_url",
    "sign",
    "verify_signature",
]

#: the signature header (``t=<unix>,v1=<hex>``)
SIGNATURE_HEADER = "X-Emotion-Monitor-Signature"
#: environment variables read when no file is given
TOKEN_ENV = "EMOTION_MONITOR_WEBHOOK_TOKEN"
SECRET_ENV = "EMOTION_MONITOR_WEBHOOK_SECRET"
_MAX_CREDENTIAL = 4096


def redact_url(url: str) -> str:
    """``url`` for logs: scheme, host, port and path only (no userinfo, query or fragment)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable URL)"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def read_credential(path: Path | None, env: str, what: str) -> str | None:
    """A secret from a file (first line, stripped) or, without a file, the variable ``env``."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ServerError(f"cannot read the {what} file {path}: {exc}") from exc
        lines = text.strip().splitlines()
        value = lines[0].strip() if lines else ""
        if not value:
            raise ServerError(f"the {what} file {path} is empty")
    else:
        value = os.environ.get(env, "").strip()
        if not value:
            return None
    if len(value) > _MAX_CREDENTIAL or any(c in value for c in "\r\n\0"):
        raise ServerError(f"the {what} must be one line of at most {_MAX_CREDENTIAL} characters")
    return value


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for ``body`` at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """For receivers: whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s``.

    Constant-time comparison; a timestamp older (or newer) than ``tolerance_s`` fails, so a
    captured delivery cannot be replayed later. Receivers that must also refuse a replay
    inside the window keep the signatures they have seen for ``tolerance_s``.
    """
    fields_ = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields_.get("t", ""))
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields_.get("v1", ""))

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Where and how alerts are POSTed."""

    url: str
    queue_size: int = 256
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    timeout_s: float = 5.0
    token: str | None = field(default=None, repr=False)  # Authorization: Bearer <token>
    secret: str | None = field(default=None, repr=False)  # HMAC-SHA256 signing secret

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.url) if isinstance(self.url, str) else None
            ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
            if parts is not None:
                parts.port  # noqa: B018 -- raises ValueError for a bad port
        except ValueError:
            ok = False
        if not ok or parts is None:
            shown = redact_url(self.url) if isinstance(self.url, str) else repr(self.url)
            raise ServerError(f"webhook URL must be http(s)://HOST[:PORT]/PATH, got {shown}")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ServerError(
                f"webhook URL {redact_url(self.url)} holds a user:password@ part; credentials "
                f"do not go in URLs: use --webhook-token-file (or {TOKEN_ENV}) for an "
                "Authorization: Bearer header"
            )
        for name, value in (("token", self.token), ("secret", self.secret)):
            if value is not None and (not isinstance(value, str) or not value or any(
                    c in value for c in "\r\n\0")):
                raise ServerError(f"webhook {name} must be a non-empty line of text")
        if not 1 <= self.queue_size <= 100_000:
            raise ServerError(f"webhook queue_size must be 1-100000, got {self.queue_size!r}")
        if not 1 <= self.max_attempts <= 20:
            raise ServerError(f"webhook max_attempts must be 1-20, got {self.max_attempts!r}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s <= 600:
            raise ServerError(
                "webhook backoff must satisfy 0 < initial <= max <= 600 s, got "
                f"{self.backoff_initial_s!r} and {self.backoff_max_s!r}"
            )
        if not 0 < self.timeout_s <= 120:
            raise ServerError(f"webhook timeout_s must be in (0, 120], got {self.timeout_s!r}")


class _Permanent(Exception):
    """A failure retrying cannot fix (HTTP 4xx other than 429, or a redirect)."""

    def __init__(self, message: str, *, redirect: bool = False) -> None:
        super().__init__(message)
        self.redirect = redirect


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the 3xx comes back as an HTTPError (then a failure)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def _post(config: WebhookConfig, body: bytes) -> int:
    """One POST (worker thread); returns the status, raises on failure."""
    headers = {"Content-Type": "application/json", "User-Agent": "emotion-monitor"}
    if config.token is not None:
        headers["Authorization"] = f"Bearer {config.token}"
    if config.secret is not None:
        headers[SIGNATURE_HEADER] = sign(config.secret, body, int(time.time()))
    request = urllib.request.Request(config.url, data=body, method="POST", headers=headers)
    try:
        with _OPENER.open(request, timeout=config.timeout_s) as response:
            response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        if 300 <= exc.code < 400:
            raise _Permanent(f"HTTP {exc.code} redirect (not followed)", redirect=True) from None
        if 400 <= exc.code < 500 and exc.code != 429:
            raise _Permanent(f"HTTP {exc.code}") from None
        raise OSError(f"HTTP {exc.code}") from None  # no URL in the message
    if not 200 <= status < 300:
        raise _Permanent(f"HTTP {status} (not a success)", redirect=300 <= status < 400)
    return status


class WebhookSender:
    """Queue + sender task for one webhook URL. An async context manager; ``close()`` twice ok."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.retries = 0
        self.redirects = 0
        self.shown_url = redact_url(config.url)  # the only form of the URL that is logged
        self._queue: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> WebhookSender:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-sender")
        return self

    async def __aenter__(self) -> WebhookSender:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def submit(self, body: str) -> None:
        """Queue one JSON body; never waits (full queue: drop the oldest, counted)."""
        if self._closing:
            self.dropped += 1
            return
        if len(self._queue) >= self.config.queue_size:
            self._queue.popleft()
            self.dropped += 1
            logger.warning("webhook queue full: dropped the oldest alert (%d dropped so far)",
                           self.dropped)
        self._queue.append(body.encode())
        self._ready.set()

    async def close(self, timeout_s: float | None = None) -> None:
        """Send what is queued (up to ``timeout_s``), then stop; what is left is dropped."""
        self._closing = True
        task, self._task = self._task, None
        if task is None:
            return
        self._ready.set()
        limit = self.config.timeout_s * 2 if timeout_s is None else timeout_s
        _, pending = await asyncio.wait([task], timeout=limit)
        if pending:
            task.cancel()
            await asyncio.wait([task])
        if self._queue:
            self.dropped += len(self._queue)
            logger.warning("webhook: %d alert(s) not sent at shutdown", len(self._queue))
            self._queue.clear()
        logger.info("webhook %s: %d sent, %d failed, %d dropped", self.shown_url, self.sent,
                    self.failed, self.dropped)

    async def _run(self) -> None:
        try:
            while True:
                while not self._queue:
                    if self._closing:
                        return
                    self._ready.clear()
                    await self._ready.wait()
                await self._deliver(self._queue.popleft())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("webhook sender failed; no more alerts will be POSTed")

    async def _deliver(self, body: bytes) -> None:
        cfg = self.config
        delay = cfg.backoff_initial_s
        for attempt in range(1, cfg.max_attempts + 1):
            try:
                await asyncio.to_thread(_post, cfg, body)
            except _Permanent as exc:
                self.failed += 1
                self.redirects += exc.redirect
                logger.warning("webhook %s refused an alert (%s); not retrying",
                               self.shown_url, exc)
                return
            except (OSError, http.client.HTTPException, ValueError) as exc:
                reason = _reason(exc)
                if attempt == cfg.max_attempts or self._closing and attempt > 1:
                    self.failed += 1
                    logger.warning("webhook %s failed %d time(s) (%s); giving up on an alert",
                                   self.shown_url, attempt, reason)
                    return
                self.retries += 1
                logger.info("webhook %s failed (%s); retry %d in %.1f s", self.shown_url,
                            reason, attempt, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, cfg.backoff_max_s)
            else:
                self.sent += 1
                return


def _reason(exc: BaseException) -> str:
    """Why a POST failed, without the URL (urllib puts it in some messages)."""
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else OSError(str(exc.reason))
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
