"""Server settings: one frozen dataclass, validated when made (pure; any thread).

``emotion-monitor run`` flags map one to one onto these fields (``--store``/``--no-store`` onto
``store_path``). Defaults: listen on 127.0.0.1:8765, record to ``./emotion-monitor.sqlite3``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .alerts import AlertRule
from .errors import ServerError
from .webhook import WebhookConfig

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
    - ``alerts``: alert rules (labels checked against the model's at start).
    - ``webhook_url``: POST every alert message here (None = no webhook); ``webhook_*``: its
      queue size (drop-oldest), attempts per alert and per-request timeout.
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
    alerts: tuple[AlertRule, ...] = ()
    webhook_url: str | None = None
    webhook_queue_size: int = 256
    webhook_max_attempts: int = 4
    webhook_timeout_s: float = 5.0

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
        if not all(isinstance(rule, AlertRule) for rule in self.alerts):
            raise ServerError(f"alerts must be AlertRule objects, got {self.alerts!r}")
        object.__setattr__(self, "alerts", tuple(self.alerts))
        if self.webhook_url is not None:
            self.webhook()  # validates the URL and the webhook settings

    def webhook(self) -> WebhookConfig:
        """The webhook settings (ServerError when ``webhook_url`` is None or bad)."""
        if self.webhook_url is None:
            raise ServerError("no webhook_url configured")
        return WebhookConfig(
            self.webhook_url,
            queue_size=self.webhook_queue_size,
            max_attempts=self.webhook_max_attempts,
            timeout_s=self.webhook_timeout_s,
        )
