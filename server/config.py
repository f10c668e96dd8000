"""Server settings: a frozen dataclass of frozen parts, each validated when made (pure; any thread).

:class:`ServerConfig` holds what the whole server needs (address, store, fan-out, shutdown) and
one part per component: :class:`IngestConfig` (``WS /ingest``),
:class:`~server.limits.LimitsConfig` (what one client may cost),
:class:`~server.alerts.AlertsConfig` (the rules), :class:`~server.webhook.WebhookConfig`
(where alerts are POSTed; None = no webhook), :class:`~server.auth.SecurityConfig` (tokens,
TLS, allowed hosts and origins), :class:`~server.cluster.BusConfig` (the cluster event bus;
None = a single node) and ``connectors`` (telephony platforms, :mod:`server.connectors`).
``emotion-monitor run`` flags map one to one onto these fields (``--store``/``--no-store``
onto ``store_path``, ``--max-ws-clients`` onto ``limits.max_ws_clients``, ...; ``--store
postgresql://...`` onto ``postgres_store``). Defaults: listen on 127.0.0.1:8765, record to
``./emotion-monitor.sqlite3``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.alerts import AlertsConfig
from server.auth import OriginPolicy, SecurityConfig, is_loopback, is_wildcard
from server.cluster import BusConfig
from server.errors import ServerError
from server.limits import LimitsConfig, check_ranges
from server.store_pg import PostgresStoreConfig
from server.webhook import WebhookConfig
from streamer.protocol.limits import DEFAULT_HOST, DEFAULT_PORT

__all__ = ["DEFAULT_STORE_PATH", "STATIC_DIR", "IngestConfig", "ServerConfig"]

#: the timeline store when ``--store`` is not given (relative to the working folder)
DEFAULT_STORE_PATH = Path("emotion-monitor.sqlite3")
#: the dashboard files served at ``GET /``
STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """Pushed calls on ``WS /ingest`` (each refusal counted in ``stats.refused``).

    - ``max_frame_bytes``: largest binary audio frame (bigger: ``error`` + 1009).
    - ``idle_timeout_s``: a sender silent this long is closed (1008).
    - ``max_calls``: concurrent pushed calls (more: ``too_many_calls``, 1013).
    - ``max_call_s``: audio seconds per pushed call (more: ``call_too_long``, 1008).
    """

    max_frame_bytes: int = 128 * 1024
    idle_timeout_s: float = 10.0
    max_calls: int = 100
    max_call_s: float = 4 * 3600.0

    def __post_init__(self) -> None:
        if not 1024 <= self.max_frame_bytes <= 16 * 1024 * 1024:
            raise ServerError(
                f"ingest max_frame_bytes must be 1 KiB-16 MiB, got {self.max_frame_bytes!r}"
            )
        if not 0 < self.idle_timeout_s <= 3600:
            raise ServerError(
                f"ingest idle_timeout_s must be in (0, 3600] s, got {self.idle_timeout_s!r}"
            )
        check_ranges(self, (("max_calls", 1, 100_000), ("max_call_s", 1, 7 * 24 * 3600)))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Network, fan-out, backlog and store settings of the event server, and its parts.

    - ``client_queue_size``: frames queued per client; when full the oldest is dropped (counted).
    - ``backlog_per_stream``: recent events per stream replayed to a new client (0 = none).
    - ``shutdown_timeout_s``: how long clients get to receive their queued frames at shutdown.
    - ``store_path``: the SQLite timeline store (None: none, or ``postgres_store``).
    - ``postgres_store``: a shared PostgreSQL timeline store instead (:mod:`server.store_pg`);
      when given, ``store_path`` becomes None.
    - ``store_retry_events``: events kept in memory while the store cannot write (then the
      oldest are dropped, counted).
    - ``ingest``, ``limits``, ``alerts``, ``webhook``, ``security``, ``bus``: see the module
      doc.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    store_path: Path | None = DEFAULT_STORE_PATH
    store_retry_events: int = 10_000
    client_queue_size: int = 1024
    backlog_per_stream: int = 240
    stats_interval_s: float = 1.0
    shutdown_timeout_s: float = 5.0
    static_dir: Path = field(default=STATIC_DIR)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    webhook: WebhookConfig | None = None
    security: SecurityConfig = field(default_factory=SecurityConfig)
    #: the cluster event bus (``run --bus``); None: a single node, nothing shared
    bus: BusConfig | None = None
    #: telephony connectors turned on (configs of :mod:`server.connectors`; none by default)
    connectors: tuple[Any, ...] = ()
    #: a shared PostgreSQL timeline store instead of the file (see ``store_path``)
    postgres_store: PostgresStoreConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ServerError(f"host must be a non-empty string, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
            0 <= self.port <= 65535
        ):
            raise ServerError(f"port must be 0-65535 (0 = any free port), got {self.port!r}")
        if self.postgres_store is not None:
            if not isinstance(self.postgres_store, PostgresStoreConfig):
                raise ServerError("postgres_store must be PostgresStoreConfig or None, got "
                                  f"{type(self.postgres_store).__name__}")
            object.__setattr__(self, "store_path", None)  # one store: the shared one
        if self.store_path is not None and not isinstance(self.store_path, Path):
            object.__setattr__(self, "store_path", Path(self.store_path))
        check_ranges(self, (
            ("client_queue_size", 1, 1_000_000),
            ("backlog_per_stream", 0, 100_000),
            ("stats_interval_s", 0.05, 3600),
            ("store_retry_events", 0, 10_000_000),
        ))
        if not 0 < self.shutdown_timeout_s <= 600:
            raise ServerError(
                f"shutdown_timeout_s must be in (0, 600] s, got {self.shutdown_timeout_s!r}"
            )
        for name, kind in (("ingest", IngestConfig), ("limits", LimitsConfig),
                           ("alerts", AlertsConfig), ("security", SecurityConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ServerError(f"{name} must be {kind.__name__}, got {getattr(self, name)!r}")
        names = [getattr(c, "name", None) for c in self.connectors]
        if not all(isinstance(n, str) and callable(getattr(c, "build", None))
                   for n, c in zip(names, self.connectors, strict=True)):
            raise ServerError(f"connectors must be connector configs, got {self.connectors!r}")
        if len(set(names)) != len(names):
            raise ServerError(f"each connector may be configured once, got {names}")
        if self.webhook is not None and not isinstance(self.webhook, WebhookConfig):
            raise ServerError(f"webhook must be WebhookConfig or None, got {self.webhook!r}")
        if self.bus is not None and not isinstance(self.bus, BusConfig):
            raise ServerError(f"bus must be BusConfig or None, got {self.bus!r}")
        self._check_exposure()

    def _check_exposure(self) -> None:
        """What the security settings must give for this host (tokens, host names)."""
        security = self.security
        if not security.credentials.configured and not is_loopback(self.host):
            raise ServerError(
                f"--host {self.host} is not a loopback address and no token is configured: "
                "give tokens (--token-file or EMOTION_MONITOR_VIEW_TOKEN/_INGEST_TOKEN/"
                "_ADMIN_TOKEN) before exposing the server"
            )
        if is_wildcard(self.host) and not security.allow_hosts:
            raise ServerError(
                f"--host {self.host} listens on every address: name the host names clients "
                "use with --allow-host NAME (repeatable; '*' accepts any)"
            )
        self.origin_policy(self.port or 1)  # validates allow_hosts and allow_origins

    @property
    def tls(self) -> bool:
        """Whether the server itself serves TLS."""
        return self.security.tls

    def origin_policy(self, port: int) -> OriginPolicy:
        """The Host/Origin policy once the server is bound to ``port``."""
        security = self.security
        return OriginPolicy.build(
            self.host, port, https=security.https,
            allow_hosts=security.allow_hosts, allow_origins=security.allow_origins,
        )
