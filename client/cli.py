"""The ``watch``, ``log`` and ``push`` subcommands (main thread; each runs one asyncio loop).

``register`` imports nothing beyond the standard library, the protocol limits and
:mod:`client.auth` (itself standard library only); the handlers import the client modules
(websockets, rich) when they run. Handlers return an exit code: 0 when stopped by
Ctrl-C or SIGTERM (the first signal stops cleanly, a second one forces). User errors are
raised as ClientError, which ``emotion-monitor`` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Iterator
from typing import Any

from client.auth import ENV_VARS, read_token
from client.errors import ClientError
from streamer.protocol.limits import (
    DEFAULT_EVENTS_URL,
    DEFAULT_INGEST_URL,
    INGEST_FORMATS,
    MAX_INGEST_CHANNELS,
    MAX_INGEST_RATE_HZ,
    MIN_INGEST_RATE_HZ,
)

__all__ = ["register"]

logger = logging.getLogger(__name__)

#: the roles whose token each kind of command presents, the first found wins (see read_token)
_VIEW_ROLES = ("view", "admin")
_INGEST_ROLES = ("ingest",)


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        nargs="?",
        default=DEFAULT_EVENTS_URL,
        help="events URL, ws:// or wss:// (http(s)://HOST:PORT works too; default "
        f"{DEFAULT_EVENTS_URL})",
    )
    parser.add_argument(
        "--stream",
        dest="streams",
        action="append",
        default=[],
        metavar="S",
        help="only this stream (repeat for several; default: all streams)",
    )
    parser.add_argument(
        "--no-reconnect",
        dest="reconnect",
        action="store_false",
        help="exit when the connection is lost instead of reconnecting",
    )
    parser.add_argument(
        "--backoff-initial-s",
        type=float,
        default=0.5,
        metavar="S",
        help="first reconnect delay in seconds, doubled per failure (default 0.5)",
    )
    parser.add_argument(
        "--backoff-max-s",
        type=float,
        default=10.0,
        metavar="S",
        help="longest reconnect delay in seconds (default 10)",
    )
    _add_credential_arguments(parser, _VIEW_ROLES)


def _add_credential_arguments(parser: argparse.ArgumentParser, roles: tuple[str, ...]) -> None:
    # the help names every role and variable that read_token(roles=...) tries, in its order
    parser.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help=f"file holding the {' or '.join(roles)} token (alone, or ROLE:TOKEN lines); "
        f"default: the {' or '.join(ENV_VARS[role] for role in roles)} environment variable, "
        "else no token. Never on the command line (ps shows it)",
    )
    parser.add_argument(
        "--ca-file",
        default=None,
        metavar="PEM",
        help="trust only these CA certificates for a wss:// URL (default: the system's CAs)",
    )


def register(subparsers: Any) -> None:
    """Add ``watch``, ``log`` and ``push`` to the ``emotion-monitor`` subcommands."""
    watch = subparsers.add_parser(
        "watch",
        help="live terminal view of a running monitor",
        description=(
            "Show the rolling emotion label of each stream of a running monitor. "
            "Prints one plain line per event when stdout is not a terminal."
        ),
    )
    _add_connection_arguments(watch)
    watch.add_argument("--plain", action="store_true", help="one line per event even on a terminal")
    watch.add_argument("--keep-closed-s", type=float, default=60.0, metavar="S",
                       help="seconds a closed stream stays listed under the live ones "
                       "(default 60)")
    watch.add_argument("--stats-every-s", type=float, default=30.0, metavar="S",
                       help="plain lines: print stats at most every S seconds, or sooner when "
                       "a drop, refusal or error counter changes (0: every stats message; "
                       "default 30)")
    watch.set_defaults(handler=_watch)

    log = subparsers.add_parser(
        "log",
        help="append every window of a running monitor to a CSV or JSONL timeline",
        description=(
            "Append one row per classified window to FILE (.csv or .jsonl), flushing every row. "
            "Reconnects with backoff and never writes a window twice, across reconnects and "
            "across runs on the same file."
        ),
    )
    _add_connection_arguments(log)
    log.add_argument(
        "--out", required=True, metavar="FILE", help="timeline file, .csv or .jsonl (appended)"
    )
    log.set_defaults(handler=_log)

    push = subparsers.add_parser(
        "push",
        help="send an audio file to a running monitor's /ingest as a live call",
        description=(
            f"Send FILE ({MIN_INGEST_RATE_HZ}-{MAX_INGEST_RATE_HZ} Hz, up to "
            f"{MAX_INGEST_CHANNELS} channels, any format soundfile reads) to a server's WS "
            "/ingest, paced in real time (or as fast as the server takes it with --fast). "
            "Each channel becomes its own stream, ID/ROLE (ID/ch0, ID/ch1 without --roles). "
            "Exits 2 with one line when the server rejects the stream."
        ),
    )
    push.add_argument("file", metavar="FILE", help="audio file to send")
    push.add_argument("url", nargs="?", default=DEFAULT_INGEST_URL,
                      help=f"ingest URL (default {DEFAULT_INGEST_URL})")
    push.add_argument("--stream", required=True, metavar="ID", help="call id, e.g. call-42")
    push.add_argument("--roles", default=None, metavar="R1,R2",
                      help="one role per channel, e.g. agent,customer (default: ch0, ch1)")
    push.add_argument("--fast", action="store_true",
                      help="send as fast as the server accepts instead of in real time")
    push.add_argument("--format", dest="fmt", default="s16le", choices=INGEST_FORMATS,
                      help="sample format on the wire (default s16le)")
    push.add_argument("--frame-ms", type=int, default=20,
                      help="audio per binary frame in ms (default 20)")
    push.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                      help="metadata for the server's stream_open (repeatable)")
    _add_credential_arguments(push, _INGEST_ROLES)
    push.set_defaults(handler=_push)


async def _until_signal(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` until it ends or SIGINT/SIGTERM arrives; the first signal cancels it cleanly.

    After the first signal the default handlers are back, so a second one forces the exit.
    """
    loop = asyncio.get_running_loop()
    work = asyncio.create_task(coro, name="client-command")
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: signal.Signals) -> None:
        logger.info("%s: stopping (again to force)", signum.name)
        for each in signals:
            loop.remove_signal_handler(each)
        stop.set()

    installed = []
    for each in signals:
        try:
            loop.add_signal_handler(each, on_signal, each)
            installed.append(each)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no support
            pass
    stopper = asyncio.create_task(stop.wait(), name="client-signal")
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, stopper):
            task.cancel()
        await asyncio.gather(work, stopper, return_exceptions=True)
        for each in installed:
            loop.remove_signal_handler(each)
    if work.done() and not work.cancelled() and work.exception() is not None:
        raise work.exception()  # type: ignore[misc]


def _client(args: argparse.Namespace) -> Any:
    from client.api import EventClient

    return EventClient(
        args.url,
        streams=tuple(args.streams),
        reconnect=args.reconnect,
        backoff_initial_s=args.backoff_initial_s,
        backoff_max_s=args.backoff_max_s,
        token=read_token(args.token_file, roles=_VIEW_ROLES, environ=os.environ),
        ca_file=args.ca_file,
    )


@contextlib.contextmanager
def _logging_to(console: Any) -> Iterator[None]:
    """Route log records through the rich console, above the live view, while it runs."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    saved = root.handlers[:]
    handler = RichHandler(console=console, show_path=False)
    if saved:
        handler.setLevel(min(h.level for h in saved))
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = saved


def _print_line(line: str) -> None:
    print(line, flush=True)


def _watch(args: argparse.Namespace) -> int:
    from client.watch import WatchConfig, watch_live, watch_plain

    config = WatchConfig(keep_closed_s=args.keep_closed_s, stats_every_s=args.stats_every_s)
    client = _client(args)
    plain = args.plain or not sys.stdout.isatty()

    async def main() -> None:
        async with client:
            if plain:
                await watch_plain(client, _print_line, config=config)
            else:
                from rich.console import Console

                console = Console()
                with _logging_to(console):
                    await watch_live(client, console, config=config)

    try:
        asyncio.run(_until_signal(main()))
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, without a second error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _log(args: argparse.Namespace) -> int:
    from client.log import TimelineLogger, log_events

    timeline = TimelineLogger(args.out)  # checks the suffix before connecting
    client = _client(args)

    async def main() -> None:
        async with client:
            await log_events(client, timeline)

    with timeline:
        print(f"logging {client.url} to {timeline.path} (Ctrl-C to stop)", file=sys.stderr)
        asyncio.run(_until_signal(main()))
    print(
        f"{timeline.path}: {timeline.rows_written} rows written, "
        f"{timeline.duplicates_skipped} duplicates skipped",
        file=sys.stderr,
    )
    return 0


def _push(args: argparse.Namespace) -> int:
    from client.push import PushConfig, send_file

    metadata = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--meta {item!r}: write KEY=VALUE")
        metadata[key] = value
    config = PushConfig(
        stream=args.stream,
        url=args.url,
        roles=tuple(r.strip() for r in args.roles.split(",")) if args.roles else (),
        fast=args.fast,
        format=args.fmt,
        frame_ms=args.frame_ms,
        metadata=metadata,
        token=read_token(args.token_file, roles=_INGEST_ROLES, environ=os.environ),
        ca_file=args.ca_file,
    )
    result = asyncio.run(send_file(args.file, config))
    print(f"pushed {result.seconds:.1f} s of {args.file} as {', '.join(result.streams)} "
          f"in {result.wall_s:.1f} s", flush=True)
    return 0
