"""POST alert JSON to a webhook URL (event loop; each POST runs in a worker thread).

:class:`WebhookSender` owns one task and one bounded queue. ``submit`` never waits: when the
queue is full the **oldest** body is dropped and counted (``dropped``), so a dead or slow
receiver never blocks the engine or the loop, and memory stays bounded. The task POSTs one body
at a time with ``urllib`` in a worker thread (``asyncio.to_thread``, timeout ``timeout_s``), and
retries a failure (connection error, timeout, HTTP 5xx or 429) up to ``max_attempts`` in all,
waiting ``backoff_initial_s`` doubled per retry (at most ``backoff_max_s``); other 4xx answers
are not retried. Bodies given up on count in ``failed``.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ServerError

__all__ = ["WebhookConfig", "WebhookSender"]

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

    def __post_init__(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"webhook URL must be http(s)://HOST[:PORT]/PATH, got {self.url!r}")
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
    """A failure retrying cannot fix (HTTP 4xx other than 429)."""


def _post(url: str, body: bytes, timeout_s: float) -> int:
    """One POST (worker thread); returns the status, raises on failure."""
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "emotion-monitor"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500 and exc.code != 429:
            raise _Permanent(f"HTTP {exc.code}") from exc
        raise


class WebhookSender:
    """Queue + sender task for one webhook URL. An async context manager; ``close()`` twice ok."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.retries = 0
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
        logger.info("webhook %s: %d sent, %d failed, %d dropped", self.config.url, self.sent,
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
                await asyncio.to_thread(_post, cfg.url, body, cfg.timeout_s)
            except _Permanent as exc:
                self.failed += 1
                logger.warning("webhook %s refused an alert (%s); not retrying", cfg.url, exc)
                return
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if attempt == cfg.max_attempts or self._closing and attempt > 1:
                    self.failed += 1
                    logger.warning("webhook %s failed %d time(s) (%s); giving up on an alert",
                                   cfg.url, attempt, exc)
                    return
                self.retries += 1
                logger.info("webhook %s failed (%s); retry %d in %.1f s", cfg.url, exc,
                            attempt, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, cfg.backoff_max_s)
            else:
                self.sent += 1
                return
