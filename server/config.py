"""Server settings: one frozen dataclass, validated when made (pure; any thread).

``emotion-monitor run`` flags map one to one onto these fields (``--store``/``--no-store`` onto
``store_path``). Defaults: listen on 127.0.0.1:8765, record to ``./emotion-monitor.sqlite3``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from server.alerts import AlertRule
from server.auth import Credentials, OriginPolicy, is_loopback, is_wildcard
from server.errors import ServerError
from server.webhook import WebhookConfig

__all__ = ["DEFAULT_STORE_PATH", "STATIC_DIR", "ServerConfig"]

#: the timeline store when ``--store`` is not given (relative to the working folder)
DEFAULT_STORE_PATH = Path("emotion-monitor.sqlite3")
#: the dashboard files served at ``GET /``
STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Network, fan-out, backlog and store settings of the event server.

    - ``client_queue_size``: frames queued per client; when full the oldest is dropped (counted).
    - ``backlog_per_stream``: recent events per stream replayed to a new client (0 = none).
    - ``max_message_bytes``: larger client frames close the connection with 1009.
    - ``max_client_errors``: bad frames one client may send before it is closed with 1008.
    - ``shutdown_timeout_s``: how long clients get to receive their queued frames at shutdown.
    - ``ingest_max_frame_bytes``: largest binary audio frame on ``/ingest`` (error + 1009).
    - ``ingest_idle_timeout_s``: an ``/ingest`` sender silent this long is closed (1008).
    - Limits (each refusal counted in ``stats.refused``, see docs/protocol.md "Limits"):
      ``max_ws_clients`` concurrent ``/ws`` clients (more: 1013); ``max_ingest_calls``
      concurrent pushed calls (more: ``too_many_calls``, 1013); ``max_connections_per_address``
      open connections (both endpoints) from one IP address (more: 1008; raise it behind a
      reverse proxy, where every client has the proxy's address); ``ingest_max_call_s`` audio
      seconds per pushed call (more: ``call_too_long``, 1008); ``max_subscribe_streams`` /
      ``max_subscribe_chars`` entries / characters of one ``subscribe`` (more:
      ``subscribe_too_large`` error); ``client_messages_per_s`` with a burst of
      ``client_message_burst``: frames of any kind a ``/ws`` client may send (a flood: 1008);
      ``client_log_lines_per_min``: log lines one client address may cause (the rest counted).
    - ``store_retry_events``: events kept in memory while the store cannot write (then the
      oldest are dropped, counted).
    - ``alerts``: alert rules (labels checked against the model's at start).
    - ``webhook_url``: POST every alert message here (None = no webhook); ``webhook_*``: its
      queue size (drop-oldest), attempts per alert and per-request timeout;
      ``webhook_token`` is sent as ``Authorization: Bearer``, ``webhook_secret`` signs each
      body (HMAC-SHA256, see :mod:`server.webhook`); neither is ever logged or shown.
    - ``credentials``: the role tokens (``--token-file`` and ``EMOTION_MONITOR_*_TOKEN``); none
      configured = loopback only, every local client trusted (see :mod:`server.auth`).
    - ``tls_cert``/``tls_key``: serve https:// and wss:// (both or neither).
    - ``allow_hosts``: more ``Host`` names to answer (``"*"`` = any); ``allow_origins``: more
      browser origins allowed to open WebSockets and log in.
    - ``tls_proxy``: TLS ends at a reverse proxy in front (cookies Secure, own origins https).
    - ``session_ttl_s``: how long a dashboard login lasts.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    store_path: Path | None = DEFAULT_STORE_PATH
    client_queue_size: int = 1024
    backlog_per_stream: int = 240
    stats_interval_s: float = 1.0
    max_message_bytes: int = 64 * 1024
    max_client_errors: int = 100
    shutdown_timeout_s: float = 5.0
    static_dir: Path = field(default=STATIC_DIR)
    ingest_max_frame_bytes: int = 128 * 1024
    ingest_idle_timeout_s: float = 10.0
    max_ws_clients: int = 1000
    max_ingest_calls: int = 100
    max_connections_per_address: int = 256
    ingest_max_call_s: float = 4 * 3600.0
    max_subscribe_streams: int = 256
    max_subscribe_chars: int = 16 * 1024
    client_messages_per_s: float = 10.0
    client_message_burst: int = 50
    client_log_lines_per_min: float = 30.0
    store_retry_events: int = 10_000
    alerts: tuple[AlertRule, ...] = ()
    webhook_url: str | None = None
    webhook_queue_size: int = 256
    webhook_max_attempts: int = 4
    webhook_timeout_s: float = 5.0
    webhook_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    credentials: Credentials = field(default_factory=Credentials)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_hosts: tuple[str, ...] = ()
    allow_origins: tuple[str, ...] = ()
    tls_proxy: bool = False
    session_ttl_s: float = 12 * 3600.0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ServerError(f"host must be a non-empty string, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
            0 <= self.port <= 65535
        ):
            raise ServerError(f"port must be 0-65535 (0 = any free port), got {self.port!r}")
        if self.store_path is not None and not isinstance(self.store_path, Path):
            object.__setattr__(self, "store_path", Path(self.store_path))
        if not 1 <= self.client_queue_size <= 1_000_000:
            raise ServerError(
                f"client_queue_size must be 1-1000000, got {self.client_queue_size!r}"
            )
        if not 0 <= self.backlog_per_stream <= 100_000:
            raise ServerError(
                f"backlog_per_stream must be 0-100000, got {self.backlog_per_stream!r}"
            )
        if not 0.05 <= self.stats_interval_s <= 3600:
            raise ServerError(
                f"stats_interval_s must be 0.05-3600 s, got {self.stats_interval_s!r}"
            )
        if not 256 <= self.max_message_bytes <= 64 * 1024 * 1024:
            raise ServerError(
                f"max_message_bytes must be 256 B-64 MiB, got {self.max_message_bytes!r}"
            )
        if not 1 <= self.max_client_errors <= 1_000_000:
            raise ServerError(
                f"max_client_errors must be 1-1000000, got {self.max_client_errors!r}"
            )
        if not 0 < self.shutdown_timeout_s <= 600:
            raise ServerError(
                f"shutdown_timeout_s must be in (0, 600] s, got {self.shutdown_timeout_s!r}"
            )
        if not 1024 <= self.ingest_max_frame_bytes <= 16 * 1024 * 1024:
            raise ServerError(
                f"ingest_max_frame_bytes must be 1 KiB-16 MiB, got {self.ingest_max_frame_bytes!r}"
            )
        if not 0 < self.ingest_idle_timeout_s <= 3600:
            raise ServerError(
                f"ingest_idle_timeout_s must be in (0, 3600] s, got {self.ingest_idle_timeout_s!r}"
            )
        self._check_limits()
        if not all(isinstance(rule, AlertRule) for rule in self.alerts):
            raise ServerError(f"alerts must be AlertRule objects, got {self.alerts!r}")
        object.__setattr__(self, "alerts", tuple(self.alerts))
        if self.webhook_url is not None:
            self.webhook()  # validates the URL and the webhook settings
        self._check_security()

    def _check_security(self) -> None:
        if not isinstance(self.credentials, Credentials):
            raise ServerError(f"credentials must be Credentials, got {type(self.credentials)}")
        if not self.credentials.configured and not is_loopback(self.host):
            raise ServerError(
                f"--host {self.host} is not a loopback address and no token is configured: "
                "give tokens (--token-file or EMOTION_MONITOR_VIEW_TOKEN/_INGEST_TOKEN/"
                "_ADMIN_TOKEN) before exposing the server"
            )
        object.__setattr__(self, "allow_hosts", tuple(self.allow_hosts))
        object.__setattr__(self, "allow_origins", tuple(self.allow_origins))
        if is_wildcard(self.host) and not self.allow_hosts:
            raise ServerError(
                f"--host {self.host} listens on every address: name the host names clients "
                "use with --allow-host NAME (repeatable; '*' accepts any)"
            )
        self.origin_policy(self.port or 1)  # validates allow_hosts and allow_origins
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

    def origin_policy(self, port: int) -> OriginPolicy:
        """The Host/Origin policy once the server is bound to ``port``."""
        return OriginPolicy.build(
            self.host, port, https=self.tls or self.tls_proxy,
            allow_hosts=self.allow_hosts, allow_origins=self.allow_origins,
        )

    def _check_limits(self) -> None:
        ranges: tuple[tuple[str, float, float], ...] = (
            ("max_ws_clients", 1, 1_000_000),
            ("max_ingest_calls", 1, 100_000),
            ("max_connections_per_address", 1, 1_000_000),
            ("ingest_max_call_s", 1, 7 * 24 * 3600),
            ("max_subscribe_streams", 1, 100_000),
            ("max_subscribe_chars", 16, 64 * 1024 * 1024),
            ("client_messages_per_s", 0.01, 1_000_000),
            ("client_message_burst", 1, 1_000_000),
            ("client_log_lines_per_min", 0.1, 1_000_000),
            ("store_retry_events", 0, 10_000_000),
        )
        for name, low, high in ranges:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                low <= value <= high
            ):
                raise ServerError(f"{name} must be {low:g}-{high:g}, got {value!r}")

    def webhook(self) -> WebhookConfig:
        """The webhook settings (ServerError when ``webhook_url`` is None or bad)."""
        if self.webhook_url is None:
            raise ServerError("no webhook_url configured")
        return WebhookConfig(
            self.webhook_url,
            queue_size=self.webhook_queue_size,
            max_attempts=self.webhook_max_attempts,
            timeout_s=self.webhook_timeout_s,
            token=self.webhook_token,
            secret=self.webhook_secret,
        )
