"""The server's subcommands: ``run``, ``analyze``, ``export`` (main thread; asyncio for ``run``),
and ``serve-ray`` (:mod:`server.ray_command`).

``register`` adds them to the top-level parser and imports nothing heavy; each handler imports
what it needs when it runs. Handlers print results to stdout (the dashboard URL first, so a
script can read the port back with ``--port 0``), return an exit code, and raise our packages'
errors for anything a user can fix (the CLI turns those into one line and exit 2).

The window, VAD and smoothing flags of ``run`` and ``analyze`` map one to one onto
:class:`~streamer.engine.EngineConfig` (and its ``VadConfig``/``SmoothingConfig``) fields; the
server flags of ``run`` onto :class:`~server.config.ServerConfig` and its parts (e.g.
``--max-ws-clients`` onto ``limits.max_ws_clients``, ``--store``/``--no-store`` onto
``store_path``, or ``--store postgresql://...`` onto ``postgres_store``; see
:data:`_INGEST_FLAGS`). Secrets never come from flags: ``--token-file``,
``--webhook-token-file``, ``--webhook-secret-file``, ``--store-password-file`` and
``--bus-password-file`` name files whose contents fill ``security.credentials``,
``webhook.token``, ``webhook.secret``, ``postgres_store.password`` and ``bus.password`` (a store
URL holding a password is refused); the ``--bus`` flags map onto
:class:`~server.cluster.BusConfig` (:data:`_BUS_FLAGS`). ``--source``, ``--device``,
``--channel``, ``--realtime`` and ``--exit-when-done`` choose the audio source and how the
run ends. ``--inference`` picks where the model runs: ``local`` (the engine's own worker
threads, the default) or the shared Ray Serve tier (``ray:auto``, ``ray:HOST:PORT``,
``ray://HOST:PORT``; :class:`~streamer.models.ray_model.RayInferenceConfig` from ``--ray-app``,
``--ray-timeout-s``, ``--ray-retries``; ``--workers`` is then the requests in flight).
``devices`` is capture's own command (:mod:`streamer.capture_command`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from server.alerts import DEFAULT_MAX_GAP_S, AlertsConfig
from server.auth import SecurityConfig, load_credentials
from server.cluster import BUS_PASSWORD_ENV, BusConfig
from server.config import DEFAULT_STORE_PATH, IngestConfig, ServerConfig
from server.connectors.registry import add_connector_flags, connector_configs
from server.errors import ServerError
from server.limits import LimitsConfig
from server.ray_command import register_serve_ray
from server.store_pg import PostgresStoreConfig, is_postgres_url
from server.webhook import WebhookConfig

__all__ = ["register"]

logger = logging.getLogger(__name__)

_DEFAULTS = ServerConfig()
#: WebhookConfig's defaults (it has no default URL, so no default instance)
_WEBHOOK_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(WebhookConfig) if f.name != "url"
}
#: ingest flag dest -> IngestConfig field (the flags keep their ingest-named spelling)
_INGEST_FLAGS = {
    "ingest_max_frame_bytes": "max_frame_bytes",
    "ingest_idle_timeout_s": "idle_timeout_s",
    "max_ingest_calls": "max_calls",
    "ingest_max_call_s": "max_call_s",
}
#: bus flag dest -> BusConfig field (the flags other than --bus need --bus)
_BUS_FLAGS = {
    "node_id": "node_id",
    "bus_node_ttl_s": "node_ttl_s",
    "bus_max_entries": "max_entries",
    "bus_replay_entries": "replay_entries",
    "bus_outbox_size": "outbox_size",
    "bus_timeout_s": "timeout_s",
    "bus_key_prefix": "key_prefix",
}


def register(subparsers: Any) -> None:
    """Add ``run``, ``analyze``, ``export`` and ``serve-ray`` to the top-level parser."""
    _register_run(subparsers)
    _register_analyze(subparsers)
    _register_export(subparsers)
    register_serve_ray(subparsers)


def _register_run(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run",
        help="capture audio, classify it live, serve the dashboard and events",
        description=(
            "Capture from the microphone (default) or stream a file, classify sliding windows "
            "of speech, and serve the dashboard (GET /), health (GET /healthz), Prometheus "
            "metrics (GET /metrics) and events (WS /ws) on one port. Prints the dashboard URL. "
            "Every event is recorded in a timeline store (a SQLite file, or PostgreSQL with "
            "--store postgresql://...). A file source is paced in real time; when it ends the "
            "server keeps serving until Ctrl-C (or exits with --exit-when-done). Ctrl-C or "
            "SIGTERM once stops cleanly; twice forces."
        ),
    )
    run.add_argument(
        "--source", default="mic",
        help="'mic' (default), an audio FILE, or 'none' (no local audio: serve pushed calls on "
        "WS /ingest only)",
    )
    run.add_argument(
        "--device", default=None,
        help="input device for --source mic: index or part of its name (default: system default)",
    )
    run.add_argument(
        "--channel", type=int, default=None,
        help="use only this channel of a multi-channel file (default: mix all channels)",
    )
    run.add_argument(
        "--realtime", action=argparse.BooleanOptionalAction, default=True,
        help="pace a file source in real time (default); --no-realtime feeds it as fast as "
        "the model allows, without dropping windows",
    )
    run.add_argument(
        "--exit-when-done", action="store_true",
        help="exit once a file source has ended and its events are delivered",
    )
    _add_model_flags(run)
    _add_inference_flags(run)
    _add_engine_flags(run)
    _add_server_flags(run)
    _add_ingest_flags(run)
    _add_limit_flags(run)
    _add_alert_flags(run)
    _add_security_flags(run)
    _add_bus_flags(run)
    add_connector_flags(run)
    run.set_defaults(handler=_run)


def _register_analyze(subparsers: Any) -> None:
    analyze = subparsers.add_parser(
        "analyze",
        help="classify audio files as fast as possible and write a timeline",
        description=(
            "Run FILE... through the same pipeline as 'run --source FILE' (VAD, windows, model, "
            "smoothing) as fast as the model allows, without dropping windows, and write one "
            "row per window to --out (.csv or .jsonl), one row per utterance (a speech segment "
            "labelled as a whole) to OUT.utterances.csv (or .jsonl) and, with --alert, one row "
            "per alert start and end to OUT.alerts.csv. The stream name of a file is its stem. "
            "Each run is a new session id. An existing timeline file is refused unless "
            "--append."
        ),
    )
    analyze.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio files")
    analyze.add_argument(
        "--out", required=True, type=Path,
        help="window timeline to write (.csv or .jsonl); the utterance and alert files go "
        "beside it",
    )
    _add_append_flag(analyze)
    analyze.add_argument(
        "--channel", type=int, default=None,
        help="use only this channel of multi-channel files (default: mix all channels)",
    )
    analyze.add_argument("--alert", dest="alerts", action="append", default=[], type=_alert_rule,
                         metavar="RULE",
                         help="alert rule as for 'run', e.g. 'angry>=0.7 for 5s' (repeatable); "
                         "its starts and ends go to OUT.alerts.csv")
    _add_model_flags(analyze)
    _add_engine_flags(analyze)
    analyze.set_defaults(handler=_analyze)


def _register_export(subparsers: Any) -> None:
    export = subparsers.add_parser(
        "export",
        help="write the windows, utterances and alerts of a timeline store as CSV or JSONL",
        description=(
            "Write one row per recorded window to --out, one per utterance to "
            "OUT.utterances.csv (or .jsonl) and one per alert start and end to OUT.alerts.csv, "
            "for the sessions chosen with exactly one of --session, --latest or --all (without "
            "one, the error lists the store's sessions). An existing timeline file is refused "
            "unless --append."
        ),
    )
    export.add_argument(
        "--store", type=_store_target, default=DEFAULT_STORE_PATH,
        help="timeline store to read: a SQLite file or a postgresql:// URL "
        f"(default: ./{DEFAULT_STORE_PATH})",
    )
    _add_store_password_flag(export)
    export.add_argument(
        "--out", required=True, type=Path,
        help="window timeline to write (.csv or .jsonl); the utterance and alert files go "
        "beside it",
    )
    _add_append_flag(export)
    export.add_argument("--stream", default=None, help="only this stream (default: all)")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--session", default=None, metavar="ID", help="only this session")
    which.add_argument("--latest", action="store_true",
                       help="only the newest session (the last server run)")
    which.add_argument("--all", dest="all_sessions", action="store_true",
                       help="every session in the store (they must share the model's labels)")
    export.set_defaults(handler=_export)


def _add_append_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--append", action="store_true",
        help="add to existing timeline files instead of refusing them; rows already in a file "
        "(same session, stream, window seq / utterance start / alert id and state, and wall "
        "time) are not written again",
    )


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None,
        help="'bundled' (the model shipped in the package), a model folder (./bundled for a "
        "folder of that name) or a Hugging Face hub id (default: bundled)",
    )
    parser.add_argument(
        "--model-device", default="auto",
        help="where the model runs: auto, cpu, cuda or cuda:N (default: auto)",
    )
    parser.add_argument(
        "--backend", choices=["auto", "torch", "onnx"], default="auto",
        help="inference backend; auto = the fastest within the agreement bounds measured by "
        "'emotion-monitor optimize', which a plain checkpoint gets on first use (cached, see "
        "--cache-dir); torch = as it is, no export (default: auto)",
    )
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "int8"], default="auto",
        help="weights/arithmetic precision; auto as for --backend (default: auto)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, metavar="DIR",
        help="where --backend auto keeps the optimised (ONNX, int8) copies of plain "
        "checkpoints, made on first use (default: $XDG_CACHE_HOME/emotion-monitor, else "
        "~/.cache/emotion-monitor)",
    )


def _add_inference_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "inference tier (Ray Serve, emotion-monitor[ray]; see 'serve-ray')",
        "With --inference ray:..., windows of every stream go to the shared tier, which "
        "batches them across streams and ingest nodes; the model is the tier's (serve-ray "
        "--model), so the model flags above do not apply. --workers is the requests kept in "
        "flight (default 8) and --max-batch the windows per request (default 8). A request "
        "that fails is sent once more; one with no answer by --ray-timeout-s is dropped, "
        "counted in stats.windows_dropped and stats.windows_failed.",
    )
    group.add_argument("--inference", default="local", metavar="WHERE",
                       help="local (default: this process), ray:auto (the Ray cluster this "
                       "machine belongs to), ray:HOST:PORT (its GCS) or ray://HOST:PORT "
                       "(Ray Client)")
    group.add_argument("--ray-app", default=None, metavar="NAME",
                       help="the tier's Serve application (default: emotion-monitor)")
    group.add_argument("--ray-timeout-s", type=float, default=None,
                       help="most time one request may take, retry included (default: "
                       "--max-lag-s)")
    group.add_argument("--ray-retries", type=int, default=None,
                       help="sends more of a request that failed (default: 1)")


def _inference_model(args: argparse.Namespace, engine_config: Any) -> Any:
    """The engine's model: loaded here (``--inference local``), or the Ray Serve tier."""
    from streamer.models.ray_model import RayInferenceConfig, connect_ray_model, ray_address

    try:
        address = ray_address(args.inference)
    except ValueError as exc:
        raise ServerError(str(exc)) from exc
    if address is None:
        from streamer.models.loading import load_model

        return load_model(
            args.model, device=args.model_device, backend=args.backend,
            precision=args.precision, cache_dir=_cache_dir(args),
        )
    local_only = [flag for flag, given in (
        ("--model", args.model is not None), ("--model-device", args.model_device != "auto"),
        ("--backend", args.backend != "auto"), ("--precision", args.precision != "auto"),
        ("--cache-dir", args.cache_dir is not None)) if given]
    if local_only:
        raise ServerError(f"{', '.join(local_only)}: the tier chooses the model with --inference "
                          "ray:... (set it with 'serve-ray --model')")
    fields = {"address": address, "timeout_s": engine_config.max_lag_s, **_given(args, {
        "ray_app": "app_name", "ray_timeout_s": "timeout_s", "ray_retries": "retries"})}
    try:
        config = RayInferenceConfig(**fields)
    except ValueError as exc:
        raise ServerError(str(exc)) from exc
    return connect_ray_model(config)


def _cache_dir(args: argparse.Namespace) -> Path:
    """--cache-dir, or the user's cache folder (XDG)."""
    from streamer.models.model_cache import default_cache_dir

    return args.cache_dir if args.cache_dir is not None else default_cache_dir()


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    # Defaults stay in EngineConfig/VadConfig (flags left out keep them); importing those here
    # would load numpy and webrtcvad for every command, so the help states them instead.
    group = parser.add_argument_group("windows and inference")
    group.add_argument("--window-s", type=float, help="window length in seconds (default: 2.0)")
    group.add_argument("--hop-s", type=float,
                       help="new speech between windows, seconds (default: 0.5)")
    group.add_argument("--min-window-s", type=float,
                       help="shortest utterance still classified when it ends, seconds "
                       "(default: 0.5)")
    group.add_argument("--vad-aggressiveness", type=int,
                       help="webrtcvad aggressiveness 0-3 (default: 2)")
    group.add_argument("--onset-ms", type=int,
                       help="audio kept before speech starts, ms (default: 300)")
    group.add_argument("--hangover-ms", type=int,
                       help="audio kept after speech ends, ms (default: 300)")
    group.add_argument("--max-lag-s", type=float,
                       help="live mode: drop windows older than this instead of falling "
                       "behind (default: 2.0)")
    group.add_argument("--workers", type=int,
                       help="inference worker threads (default: one per CPU core, at most 8, "
                       "for transformer models; 1 for the compact model and on CUDA)")
    group.add_argument("--threads-per-worker", type=int,
                       help="intra-op threads of each worker on CPU (default: 1)")
    group.add_argument("--max-batch", type=int,
                       help="most windows of different streams per model call (default: 8 on "
                       "CUDA; on CPU what emotion-monitor optimize measured to pay, else 1)")
    smooth = parser.add_argument_group("smoothing (the rolling label)")
    smooth.add_argument("--alpha", type=float,
                        help="EMA weight of the newest window; 1 = no smoothing (default: 0.4)")
    smooth.add_argument("--switch-margin", type=float,
                        help="lead another class needs to take over the label (default: 0.1)")
    smooth.add_argument("--uncertain-below", type=float,
                        help='say "uncertain" when no smoothed probability reaches this '
                        "(default: 0.4)")
    smooth.add_argument("--gap-reset-s", type=_seconds_or_off, metavar="SECONDS|off",
                        help="silence between speech segments (after VAD padding) from which "
                        "the label starts afresh (default: 0.25)")
    smooth.add_argument("--gap-decay-s", type=_seconds_or_off, metavar="SECONDS|off",
                        help="time constant of the decay toward uniform over shorter silences "
                        "(default: off)")
    smooth.add_argument("--smoothing-warmup", action=argparse.BooleanOptionalAction,
                        help="average the first windows of a speech segment evenly until their "
                        "weight falls to --alpha (default: on)")


def _seconds_or_off(text: str) -> float | str:
    """A smoothing gap flag: seconds, or "off" (the setting None)."""
    if text.strip().lower() in ("off", "none"):
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'off', got {text!r}") from None


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    group = parser.add_argument_group("server")
    group.add_argument("--host", default=d.host, help=f"address to listen on (default: {d.host})")
    group.add_argument("--port", type=int, default=d.port,
                       help=f"port to listen on, 0 = any free port (default: {d.port})")
    store = group.add_mutually_exclusive_group()
    store.add_argument("--store", type=_store_target, default=DEFAULT_STORE_PATH,
                       dest="store_path",
                       help="timeline store: a SQLite file, or a shared PostgreSQL database "
                       "as postgresql://[USER@]HOST[:PORT]/DB (password from "
                       f"--store-password-file, PGPASSWORD or ~/.pgpass) (default: "
                       f"./{DEFAULT_STORE_PATH})")
    store.add_argument("--no-store", action="store_const", const=None, dest="store_path",
                       help="do not record events")
    _add_store_password_flag(group)
    group.add_argument("--client-queue-size", type=int, default=d.client_queue_size,
                       help="events queued per client before its oldest are dropped "
                       f"(default: {d.client_queue_size})")
    group.add_argument("--backlog-per-stream", type=int, default=d.backlog_per_stream,
                       help="recent events per stream sent to a new client "
                       f"(default: {d.backlog_per_stream})")
    group.add_argument("--stats-interval-s", type=float, default=d.stats_interval_s,
                       help=f"seconds between stats messages (default: {d.stats_interval_s})")
    group.add_argument("--static-dir", type=Path, default=d.static_dir,
                       help="folder whose files are served at GET / (default: the bundled "
                       "dashboard)")
    group.add_argument("--shutdown-timeout-s", type=float, default=d.shutdown_timeout_s,
                       help="time clients get to receive queued events at shutdown "
                       f"(default: {d.shutdown_timeout_s})")
    group.add_argument("--store-retry-events", type=int, default=d.store_retry_events,
                       help="events kept in memory while the store cannot write (disk full, "
                       f"locked), oldest dropped past that (default: {d.store_retry_events})")


def _store_target(text: str) -> Path | str:
    """A ``--store`` value: a postgresql:// (postgres://) URL as it is, else a file path."""
    return text.strip() if is_postgres_url(text) else Path(text)


def _add_store_password_flag(parser: Any) -> None:
    parser.add_argument("--store-password-file", type=Path, default=None, metavar="FILE",
                        help="file whose first line is the PostgreSQL store's password "
                        "(default: libpq's PGPASSWORD, ~/.pgpass or service file)")


def _postgres_store(target: Path | str | None, password_file: Path | None
                    ) -> PostgresStoreConfig | None:
    """The PostgreSQL store of ``--store URL`` (None for a file); its password from the file."""
    if not isinstance(target, str):
        if password_file is not None:
            raise ServerError("--store-password-file needs --store postgresql://...")
        return None
    config = PostgresStoreConfig(target)
    if config.url_has_password:
        raise ServerError(
            f"--store {config.redacted}: the URL holds a password; give it with "
            "--store-password-file FILE, PGPASSWORD or ~/.pgpass instead (command lines are "
            "visible to other users)"
        )
    if password_file is None:
        return config
    from server.webhook import read_credential

    password = read_credential(password_file, "PGPASSWORD", "store password")
    return dataclasses.replace(config, password=password)


def _add_ingest_flags(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS.ingest
    ingest = parser.add_argument_group("pushed calls (WS /ingest)")
    ingest.add_argument("--ingest-max-frame-bytes", type=int, default=d.max_frame_bytes,
                        help="largest binary audio frame; bigger ones get an error and 1009 "
                        f"(default: {d.max_frame_bytes})")
    ingest.add_argument("--ingest-idle-timeout-s", type=float, default=d.idle_timeout_s,
                        help="close a sender that sends nothing for this long "
                        f"(default: {d.idle_timeout_s})")
    ingest.add_argument("--max-ingest-calls", type=int, default=d.max_calls,
                        help="concurrent pushed calls; more get too_many_calls and 1013 "
                        f"(default: {d.max_calls})")
    ingest.add_argument("--ingest-max-call-s", type=float, default=d.max_call_s,
                        help="longest pushed call, seconds of audio; then call_too_long and "
                        f"1008 (default: {d.max_call_s:g})")


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS.limits
    limits = parser.add_argument_group(
        "limits (each refusal is counted in stats.refused; see docs/protocol.md)")
    limits.add_argument("--max-ws-clients", type=int, default=d.max_ws_clients,
                        help="concurrent /ws clients; more are closed with 1013 "
                        f"(default: {d.max_ws_clients})")
    limits.add_argument("--max-connections-per-address", type=int,
                        default=d.max_connections_per_address,
                        help="open connections from one IP address (raise it behind a reverse "
                        f"proxy); more are closed with 1008 (default: "
                        f"{d.max_connections_per_address})")
    limits.add_argument("--max-subscribe-streams", type=int, default=d.max_subscribe_streams,
                        help="entries (names and prefixes) in one subscribe "
                        f"(default: {d.max_subscribe_streams})")
    limits.add_argument("--max-subscribe-chars", type=int, default=d.max_subscribe_chars,
                        help="total characters of one subscribe's entries "
                        f"(default: {d.max_subscribe_chars})")
    limits.add_argument("--client-messages-per-s", type=float, default=d.client_messages_per_s,
                        help="frames per second a /ws client may send on average; a flood "
                        "past the burst is closed with 1008 "
                        f"(default: {d.client_messages_per_s:g})")
    limits.add_argument("--client-message-burst", type=int, default=d.client_message_burst,
                        help="frames a /ws client may send at once above that rate "
                        f"(default: {d.client_message_burst})")
    limits.add_argument("--client-log-lines-per-min", type=float,
                        default=d.client_log_lines_per_min,
                        help="log lines one client address may cause per minute (burst 10); "
                        "the rest are counted, not logged "
                        f"(default: {d.client_log_lines_per_min:g})")
    limits.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes,
                        help="largest client frame; bigger ones close with 1009 "
                        f"(default: {d.max_message_bytes})")
    limits.add_argument("--max-client-errors", type=int, default=d.max_client_errors,
                        help="rejected frames one client may send before it is closed with 1008 "
                        f"(default: {d.max_client_errors})")


def _add_alert_flags(parser: argparse.ArgumentParser) -> None:
    d = _WEBHOOK_DEFAULTS
    alerts = parser.add_argument_group("alerts")
    alerts.add_argument("--alert", dest="alerts", action="append", default=[], type=_alert_rule,
                        metavar="RULE",
                        help="raise an alert when a label's smoothed probability stays at or "
                        "above a threshold, e.g. 'angry>=0.7 for 5s' (label case-insensitive; "
                        "repeat for several rules); the duration counts speech only")
    alerts.add_argument("--alert-max-gap-s", type=float, default=DEFAULT_MAX_GAP_S,
                        metavar="SECONDS",
                        help="a pause without speech up to this long keeps an alert's speech "
                        "time; a longer one resets it and ends the alert (reason 'silence') "
                        f"(default: {DEFAULT_MAX_GAP_S:g})")
    alerts.add_argument("--webhook", dest="webhook_url", default=None, metavar="URL",
                        help="POST every alert message (JSON) to this http(s) URL")
    alerts.add_argument("--webhook-queue-size", type=int, default=d["queue_size"],
                        help="alerts waiting for the webhook before the oldest is dropped "
                        f"(default: {d['queue_size']})")
    alerts.add_argument("--webhook-max-attempts", type=int, default=d["max_attempts"],
                        help="tries per alert, with doubling backoff from "
                        f"{d['backoff_initial_s']:g} s (default: {d['max_attempts']})")
    alerts.add_argument("--webhook-timeout-s", type=float, default=d["timeout_s"],
                        help=f"timeout of one POST (default: {d['timeout_s']})")
    alerts.add_argument("--webhook-token-file", type=Path, default=None, metavar="FILE",
                        help="send 'Authorization: Bearer <first line of FILE>' with every POST "
                        "(default: $EMOTION_MONITOR_WEBHOOK_TOKEN if set)")
    alerts.add_argument("--webhook-secret-file", type=Path, default=None, metavar="FILE",
                        help="sign every POST with this secret (X-Emotion-Monitor-Signature: "
                        "t=<unix>,v1=<HMAC-SHA256 hex>) (default: "
                        "$EMOTION_MONITOR_WEBHOOK_SECRET if set)")


def _add_bus_flags(parser: argparse.ArgumentParser) -> None:
    d = BusConfig(url="redis://localhost")
    bus = parser.add_argument_group(
        "cluster event bus (see docs/scaling.md)",
        "Several nodes that share a Redis server show every node's calls to every node's "
        "clients. Needs the redis extra: pip install 'emotion-monitor[redis]'.",
    )
    bus.add_argument("--bus", dest="bus_url", default=None, metavar="URL",
                     help="join the cluster on this Redis: redis://HOST[:PORT][/DB] or "
                     "rediss://... (TLS); no password in the URL")
    bus.add_argument("--bus-password-file", type=Path, default=None, metavar="FILE",
                     help="the Redis password: first line of FILE (default: "
                     f"${BUS_PASSWORD_ENV} if set)")
    bus.add_argument("--node-id", default=None, metavar="NAME",
                     help="this node's name in the cluster, unique among running nodes "
                     "(default: the session id, random per run)")
    bus.add_argument("--bus-node-ttl-s", type=float, default=None, metavar="SECONDS",
                     help="a node silent this long is lost: the others close its calls with "
                     f"reason node_lost (default: {d.node_ttl_s:g})")
    bus.add_argument("--bus-max-entries", type=int, default=None,
                     help=f"the shared Redis stream is trimmed to about this many frames "
                     f"(default: {d.max_entries})")
    bus.add_argument("--bus-replay-entries", type=int, default=None,
                     help="recent frames a starting node reads for its backlog "
                     f"(default: {d.replay_entries})")
    bus.add_argument("--bus-outbox-size", type=int, default=None,
                     help="own frames kept while Redis is slow or down, oldest dropped past "
                     f"that (default: {d.outbox_size})")
    bus.add_argument("--bus-timeout-s", type=float, default=None, metavar="SECONDS",
                     help=f"timeout of one Redis call (default: {d.timeout_s:g})")
    bus.add_argument("--bus-key-prefix", default=None, metavar="NAME",
                     help=f"the cluster's name: its Redis keys start with {{NAME}} "
                     f"(default: {d.key_prefix})")


def _bus_config(args: argparse.Namespace) -> BusConfig | None:
    """The bus settings (None without ``--bus``); the password from a file or env."""
    from server.webhook import read_credential

    given = _given(args, _BUS_FLAGS)
    if args.bus_url is None:
        extra = [f"--{dest.replace('_', '-')}" for dest in (*_BUS_FLAGS, "bus_password_file")
                 if getattr(args, dest) is not None]
        if extra:
            raise ServerError(f"{', '.join(extra)} need(s) --bus URL")
        return None
    password = read_credential(args.bus_password_file, BUS_PASSWORD_ENV, "bus password")
    return BusConfig(url=args.bus_url, password=password, **given)


def _alert_rule(text: str) -> Any:
    """argparse type for --alert: a parsed rule, or a one-line usage error."""
    from server.alerts import parse_rule

    try:
        return parse_rule(text)
    except ServerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _given(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    """Config fields from the flags the user gave (flag dest -> field name)."""
    return {field: getattr(args, dest) for dest, field in names.items()
            if getattr(args, dest) is not None}


def _engine_config(args: argparse.Namespace, *, realtime: bool) -> Any:
    from streamer.engine import EngineConfig
    from streamer.smoothing import SmoothingConfig
    from streamer.vad import VadConfig

    try:
        vad = VadConfig(**_given(args, {
            "vad_aggressiveness": "aggressiveness", "onset_ms": "onset_ms",
            "hangover_ms": "hangover_ms",
        }))
        smoothing_fields: dict[str, Any] = {
            field: None if value == "off" else value
            for field, value in _given(args, {
                "alpha": "alpha", "switch_margin": "switch_margin",
                "uncertain_below": "uncertain_below", "gap_reset_s": "gap_reset_s",
                "gap_decay_s": "gap_decay_s", "smoothing_warmup": "warmup",
            }).items()
        }
        smoothing = SmoothingConfig(**smoothing_fields)
        return EngineConfig(
            vad=vad,
            smoothing=smoothing,
            realtime=realtime,
            **_given(args, {
                "window_s": "window_s", "hop_s": "hop_s", "min_window_s": "min_window_s",
                "max_lag_s": "max_lag_s", "workers": "workers",
                "threads_per_worker": "threads_per_worker", "max_batch": "max_batch",
            }),
        )
    except ValueError as exc:
        raise ServerError(str(exc)) from exc


def _server_config(args: argparse.Namespace) -> ServerConfig:
    limit_fields = [f.name for f in dataclasses.fields(LimitsConfig)]  # flag dest = field name
    return ServerConfig(
        host=args.host,
        port=args.port,
        store_path=args.store_path if isinstance(args.store_path, Path) else None,
        postgres_store=_postgres_store(args.store_path, args.store_password_file),
        store_retry_events=args.store_retry_events,
        client_queue_size=args.client_queue_size,
        backlog_per_stream=args.backlog_per_stream,
        stats_interval_s=args.stats_interval_s,
        shutdown_timeout_s=args.shutdown_timeout_s,
        static_dir=args.static_dir,
        ingest=IngestConfig(**{field: getattr(args, dest)
                               for dest, field in _INGEST_FLAGS.items()}),
        limits=LimitsConfig(**{name: getattr(args, name) for name in limit_fields}),
        alerts=AlertsConfig(rules=tuple(args.alerts), max_gap_s=args.alert_max_gap_s),
        webhook=_webhook_config(args),
        security=SecurityConfig(
            credentials=load_credentials(args.token_file, os.environ),
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            allow_hosts=tuple(args.allow_hosts),
            allow_origins=tuple(args.allow_origins),
            tls_proxy=args.tls_proxy,
            session_ttl_s=args.session_ttl_s,
        ),
        connectors=connector_configs(args),
        bus=_bus_config(args),
    )


def _webhook_config(args: argparse.Namespace) -> WebhookConfig | None:
    """The webhook settings (None without ``--webhook``); credentials from files or env."""
    if args.webhook_url is None:
        return None
    return WebhookConfig(
        args.webhook_url,
        queue_size=args.webhook_queue_size,
        max_attempts=args.webhook_max_attempts,
        timeout_s=args.webhook_timeout_s,
        token=_webhook_credential(args.webhook_token_file, "TOKEN", "webhook token"),
        secret=_webhook_credential(args.webhook_secret_file, "SECRET", "webhook secret"),
    )


def _add_security_flags(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS.security
    group = parser.add_argument_group(
        "security (see docs/security.md)",
        "Tokens are read from --token-file (ROLE:TOKEN lines, roles ingest, view, admin) and "
        "from EMOTION_MONITOR_INGEST_TOKEN, EMOTION_MONITOR_VIEW_TOKEN and "
        "EMOTION_MONITOR_ADMIN_TOKEN, never from the command line. Without any token only a "
        "loopback --host is allowed.",
    )
    group.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                       help="file of ROLE:TOKEN lines (chmod 600; several tokens per role allowed)")
    group.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                       help="serve https:// and wss:// with this certificate chain (with "
                       "--tls-key)")
    group.add_argument("--tls-key", type=Path, default=None, metavar="PEM",
                       help="the certificate's unencrypted private key")
    group.add_argument("--allow-host", dest="allow_hosts", action="append", default=[],
                       metavar="NAME",
                       help="also answer requests for this Host name (repeatable; '*' = any; "
                       "default: the --host address, plus localhost on loopback); other names "
                       "get 421")
    group.add_argument("--allow-origin", dest="allow_origins", action="append", default=[],
                       metavar="ORIGIN",
                       help="also accept browser WebSockets and logins from this origin, e.g. "
                       "https://monitor.example.com (repeatable; default: the server's own)")
    group.add_argument("--tls-proxy", action="store_true",
                       help="TLS ends at a reverse proxy in front of this server: mark cookies "
                       "Secure and take https:// as the server's own origin scheme")
    group.add_argument("--session-ttl-s", type=float, default=d.session_ttl_s,
                       help="how long a dashboard login lasts, seconds "
                       f"(default: {d.session_ttl_s:g})")


def _webhook_credential(path: Path | None, kind: str, what: str) -> str | None:
    """A webhook credential from its file or environment variable (never from the command line)."""
    from server.webhook import SECRET_ENV, TOKEN_ENV, read_credential

    return read_credential(path, TOKEN_ENV if kind == "TOKEN" else SECRET_ENV, what)


def _quiet_websockets() -> None:
    # websockets logs every HTTP GET and connection at INFO; ours already says what matters
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("server.websockets").setLevel(logging.WARNING)


# -- run --------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    server_config = _server_config(args)
    engine_config = _engine_config(args, realtime=args.realtime)
    if server_config.bus is not None:
        from streamer.extras import REDIS_EXTRA, require_extra

        require_extra("redis", purpose="--bus (the cluster event bus)", extra=REDIS_EXTRA)
    security = server_config.security
    if security.tls_cert is not None and security.tls_key is not None:
        from server.tls import server_context

        server_context(security.tls_cert, security.tls_key)  # fail before the model
    if server_config.store_path is not None and not server_config.store_path.parent.is_dir():
        raise ServerError(f"--store {server_config.store_path}: the folder does not exist")
    if server_config.postgres_store is not None:
        from server.store_pg import require_driver

        require_driver()  # before the model loads
    sources: list[Any] = []
    if args.source == "mic":
        from streamer.capture import CaptureConfig, MicrophoneSource

        sources.append(MicrophoneSource(CaptureConfig(device=args.device)))
    elif args.source != "none":
        from streamer.sources import FileSource

        sources.append(FileSource(args.source, channel=args.channel, realtime=args.realtime))
    model = None
    try:
        model = _inference_model(args, engine_config)
        _quiet_websockets()
        return asyncio.run(_serve(model, engine_config, server_config, sources, args))
    finally:
        for source in sources:
            source.close()
        close = getattr(model, "close", None)  # the tier's client leaves the cluster
        if close is not None:
            close()


async def _serve(
    model: Any,
    engine_config: Any,
    server_config: ServerConfig,
    sources: list[Any],
    args: argparse.Namespace,
) -> int:
    from server.monitor import Monitor

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            logger.info("%s: shutting down (send it again to force)",
                        signal.Signals(signum).name)
            stop.set()
        else:
            print("forced exit", file=sys.stderr, flush=True)
            os._exit(130)  # the store commits every event, so nothing recorded is lost

    handled = (signal.SIGINT, signal.SIGTERM)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with Monitor(
            model, engine_config=engine_config, server_config=server_config, sources=sources
        ) as monitor:
            print(f"dashboard: {monitor.url}", flush=True)
            print(f"events:    {monitor.ws_url}", flush=True)
            print(f"ingest:    {monitor.ingest_url}", flush=True)
            store, shared = server_config.store_path, server_config.postgres_store
            shown = shared.redacted if shared else store.resolve() if store else "off (--no-store)"
            print(f"store:     {shown}", flush=True)
            print(f"session:   {monitor.session}", flush=True)
            await _wait_until_done(monitor, stop, exit_when_done=args.exit_when_done)
            print("stopping", file=sys.stderr, flush=True)
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    if monitor.errors:
        raise monitor.errors[0]
    return 0


async def _wait_until_done(monitor: Any, stop: asyncio.Event, *, exit_when_done: bool) -> None:
    stop_task = asyncio.create_task(stop.wait(), name="wait-stop")
    done_task = asyncio.create_task(monitor.sources_done.wait(), name="wait-sources")
    try:
        await asyncio.wait({stop_task, done_task}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set() or not monitor.sources:
            if not stop.is_set():
                await stop_task
            return
        if monitor.errors or exit_when_done:
            return
        print("source finished; still serving the dashboard (Ctrl-C to stop)", flush=True)
        await stop_task
    finally:
        for task in (stop_task, done_task):
            task.cancel()
        await asyncio.wait({stop_task, done_task})


# -- analyze, export -------------------------------------------------------------------------


def _analyze(args: argparse.Namespace) -> int:
    from streamer.analyze import analyze_files, analyze_kinds
    from streamer.models.loading import load_model
    from streamer.protocol.timeline import check_new_timeline, timeline_format

    timeline_format(args.out)
    engine_config = _engine_config(args, realtime=False)
    if args.out.parent and not args.out.parent.is_dir():
        raise ServerError(f"--out {args.out}: the folder does not exist")
    kinds = analyze_kinds(alerts=bool(args.alerts))
    check_new_timeline(args.out, kinds, append=args.append)  # before loading the model
    model = load_model(
        args.model, device=args.model_device, backend=args.backend, precision=args.precision,
        cache_dir=_cache_dir(args),
    )
    results = analyze_files(
        model, args.files, args.out, engine_config=engine_config, channel=args.channel,
        alerts=_alert_rules(args.alerts, model.labels), append=args.append,
    )
    for result in results:
        print(f"{result.path}: stream {result.stream}, {result.duration_s:.1f} s, "
              f"{result.speech_segments} speech segment(s), {result.windows} window(s), "
              f"{result.utterances} utterance(s)"
              + (f", {result.alerts} alert start(s)/end(s)" if args.alerts else ""))
    # a new session id per run: nothing analyze writes can be in the timeline already
    written = {"window": sum(r.windows for r in results),
               "utterance": sum(r.utterances for r in results),
               "alert": sum(r.alerts for r in results)}
    _print_written(args.out, kinds, written)
    return 0


def _alert_rules(rules: list[Any], labels: tuple[str, ...]) -> Any:
    """analyze's alert rules (None without any): labels checked against the model's now."""
    if not rules:
        return None
    from server.alerts import AlertMonitor

    monitor = AlertMonitor(rules, labels)
    return lambda event: monitor.on_event(event, wall_time=event.wall_time)


def _print_written(
    out: Path, kinds: tuple[Any, ...], written: dict[Any, int], skipped: int = 0
) -> None:
    """One line per timeline file: the rows written to it (and those it had already)."""
    from streamer.protocol.timeline import kind_path

    for kind in kinds:
        print(f"wrote {written[kind]} {kind} row(s) to {kind_path(out, kind)}")
    if skipped:
        print(f"left out {skipped} row(s) the timeline had already (--append)")


def _export(args: argparse.Namespace) -> int:
    from server.store import StoreSource, choose_sessions, export_events, read_sessions
    from server.store_pg import PostgresTimelineReader, redact_store_url
    from streamer.protocol.errors import TimelineError
    from streamer.protocol.timeline import TIMELINE_KINDS, TimelineFiles

    shared = _postgres_store(args.store, args.store_password_file)
    store: StoreSource = args.store if shared is None else PostgresTimelineReader(shared)
    shown = args.store if shared is None else redact_store_url(str(args.store))
    if args.session is None and not args.latest and not args.all_sessions:
        raise ServerError(_session_choice(read_sessions(store), shown))
    chosen = choose_sessions(store, session=args.session, latest=args.latest)
    try:
        with TimelineFiles(args.out, chosen[0].labels, append=args.append) as files:
            export_events(store, files, chosen, stream=args.stream)
    except TimelineError as exc:
        raise ServerError(str(exc)) from exc
    _print_written(args.out, TIMELINE_KINDS, files.written, sum(files.skipped.values()))
    return 0


def _session_choice(sessions: list[Any], store: Path | str) -> str:
    """The one-line error for an export without --session, --latest or --all."""
    import time

    if not sessions:
        return f"{store}: the store holds no sessions"
    shown = [f"{s.session} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(s.started_at))}, "
             f"{s.model})" for s in sessions[-10:]]
    older = f" and {len(sessions) - 10} older" if len(sessions) > 10 else ""
    return (f"choose what to export: --session ID, --latest or --all; {store} holds "
            f"{len(sessions)} session(s), oldest first: {', '.join(shown)}{older}")
