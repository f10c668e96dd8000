"""The ``emotion-monitor`` command (main thread; asyncio where a subcommand needs it).

It sits at the top of the stack. Each package registers its own subcommands with a
``register(subparsers)`` function that imports nothing heavy; handlers import their package
lazily, so ``watch`` and ``log`` start without loading torch. Every handler takes the parsed
arguments and returns an exit code. Errors a user can fix (our packages' base exceptions) print
one line and exit 2; only the CLI configures logging.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = ["Handler", "OneLineParser", "build_parser", "main"]

logger = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="emotion-monitor",
        description="Real-time speech-emotion monitor: audio in, rolling emotion labels out.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level on stderr (default: INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    from client.cli import register as register_client
    from server.commands import register as register_server
    from streamer.capture_command import register as register_capture
    from streamer.offline.commands import register as register_offline

    register_server(sub)
    register_capture(sub)
    register_offline(sub)
    register_client(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Base exceptions of our packages that mean 'bad input', loaded only if already imported."""
    errors: list[type[BaseException]] = []
    for module, name in (
        ("streamer.errors", "StreamerError"),
        ("server.errors", "ServerError"),
        ("client.errors", "ClientError"),
        ("streamer.protocol.errors", "ProtocolError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"emotion-monitor {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
