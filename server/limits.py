"""Limits on what clients may cost: counters, token buckets, per-address slots (event loop).

Pure parts with the clock passed in (:class:`TokenBucket`) and small loop-bound adapters
(:class:`AddressSlots`, :class:`ClientLog`). Every refusal is counted by name in
:class:`ServerCounters` (published in ``stats.refused``) so nothing is dropped silently:

- ``ws_clients``: a ``/ws`` connection over ``max_ws_clients`` (closed 1013);
- ``ingest_calls``: an ``/ingest`` call over ``ingest.max_calls`` (``too_many_calls``, 1013);
- ``per_address``: a connection over ``max_connections_per_address`` from one address (1008);
- ``call_length``: a pushed call longer than ``ingest.max_call_s`` (``call_too_long``, 1008);
- ``subscribe_size``: a ``subscribe`` over ``max_subscribe_streams`` entries or
  ``max_subscribe_chars`` characters (``subscribe_too_large`` error, connection stays);
- ``message_rate``: a ``/ws`` client sending faster than ``client_messages_per_s`` for longer
  than its burst (closed 1008).

Log lines a client can cause go through :class:`ClientLog`: a small bucket per address, so one
client cannot flood the log; what it suppresses is counted (``stats.log_lines_suppressed``) and
the next line that gets through says how many were skipped.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.errors import ServerError

__all__ = [
    "LIMIT_REFUSALS",
    "AddressSlots",
    "ClientLog",
    "LimitsConfig",
    "ServerCounters",
    "TokenBucket",
    "address_of",
    "check_ranges",
]

#: the names refusals are counted under (``stats.refused`` keys)
LIMIT_REFUSALS = (
    "ws_clients", "ingest_calls", "per_address", "call_length", "subscribe_size",
    "message_rate",
)


def address_of(peer: Any) -> str:
    """The host part of a socket peer address (``("127.0.0.1", 5555)`` -> ``127.0.0.1``)."""
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return str(peer)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """What one client may cost (``run`` limit flags; each refusal counted, see module doc).

    - ``max_ws_clients``: concurrent ``/ws`` clients (more: 1013).
    - ``max_connections_per_address``: open connections (both endpoints) from one IP address
      (more: 1008; raise it behind a reverse proxy, where every client has the proxy's address).
    - ``max_subscribe_streams`` / ``max_subscribe_chars``: entries / characters of one
      ``subscribe`` (more: ``subscribe_too_large`` error, the connection stays).
    - ``client_messages_per_s`` with a burst of ``client_message_burst``: frames of any kind a
      ``/ws`` client may send (a flood: 1008).
    - ``client_log_lines_per_min``: log lines one client address may cause (the rest counted).
    - ``max_message_bytes``: larger client frames close the connection with 1009.
    - ``max_client_errors``: bad frames one client may send before it is closed with 1008.
    """

    max_ws_clients: int = 1000
    max_connections_per_address: int = 256
    max_subscribe_streams: int = 256
    max_subscribe_chars: int = 16 * 1024
    client_messages_per_s: float = 10.0
    client_message_burst: int = 50
    client_log_lines_per_min: float = 30.0
    max_message_bytes: int = 64 * 1024
    max_client_errors: int = 100

    def __post_init__(self) -> None:
        check_ranges(self, (
            ("max_ws_clients", 1, 1_000_000),
            ("max_connections_per_address", 1, 1_000_000),
            ("max_subscribe_streams", 1, 100_000),
            ("max_subscribe_chars", 16, 64 * 1024 * 1024),
            ("client_messages_per_s", 0.01, 1_000_000),
            ("client_message_burst", 1, 1_000_000),
            ("client_log_lines_per_min", 0.1, 1_000_000),
            ("max_message_bytes", 256, 64 * 1024 * 1024),
            ("max_client_errors", 1, 1_000_000),
        ))


def check_ranges(config: object, ranges: tuple[tuple[str, float, float], ...]) -> None:
    """ServerError naming the first field of ``config`` outside its ``(low, high)`` range."""
    for name, low, high in ranges:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low <= value <= high
        ):
            raise ServerError(f"{name} must be {low:g}-{high:g}, got {value!r}")


@dataclass(slots=True)
class ServerCounters:
    """Totals since start of what the server refused or suppressed (event loop only)."""

    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LIMIT_REFUSALS, 0))
    log_lines_suppressed: int = 0

    def refuse(self, name: str) -> None:
        """Count one refusal under ``name`` (one of :data:`LIMIT_REFUSALS`)."""
        self.refused[name] = self.refused.get(name, 0) + 1


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved; pure: the caller passes the time."""

    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: float, burst: float, *, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        """Spend one token; False when none is left (the caller refuses or suppresses)."""
        tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class AddressSlots:
    """Open connections per client address, at most ``limit`` each (event loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        """Take a slot for ``address``; False (nothing taken) when it has ``limit`` open."""
        n = self._open.get(address, 0)
        if n >= self.limit:
            return False
        self._open[address] = n + 1
        return True

    def release(self, address: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        n = self._open.get(address, 0) - 1
        if n > 0:
            self._open[address] = n
        else:
            self._open.pop(address, None)

    def count(self, address: str) -> int:
        return self._open.get(address, 0)


class ClientLog:
    """Warnings caused by clients, at most ``burst`` at once and ``per_minute`` per address.

    Addresses are remembered in an LRU of ``max_addresses`` (bounded memory); a suppressed line
    is counted in ``counters.log_lines_suppressed``, and the next line let through for that
    address ends with how many were skipped.
    """

    def __init__(
        self,
        logger: logging.Logger,
        counters: ServerCounters,
        *,
        per_minute: float = 30.0,
        burst: int = 10,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.counters = counters
        self.per_minute = per_minute
        self.burst = burst
        self.max_addresses = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[TokenBucket, int]] = OrderedDict()

    def log(self, level: int, address: str, msg: str, *args: object) -> None:
        """Log ``msg % args`` at ``level`` unless ``address`` used up its budget."""
        if not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        entry = self._buckets.pop(address, None)
        if entry is None:
            entry = (TokenBucket(self.per_minute / 60.0, self.burst, now=now), 0)
        bucket, skipped = entry
        if bucket.take(now):
            if skipped:
                msg += " (%d earlier line(s) from this address suppressed)"
                args = (*args, skipped)
            self.logger.log(level, msg, *args)
            skipped = 0
        else:
            skipped += 1
            self.counters.log_lines_suppressed += 1
        self._buckets[address] = (bucket, skipped)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)

    def info(self, address: str, msg: str, *args: object) -> None:
        """Lifecycle lines (one per connection or call): not limited, so they never use up
        the budget that keeps a client's warnings visible."""
        self.logger.info(msg, *args)

    def warning(self, address: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, address, msg, *args)
