"""The ``reach-sync`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from consumer import __version__
from consumer.commands import add_sync_commands
from consumer.dev.cli import add_dev_commands
from consumer.dev.process import ComponentError
from consumer.logs import configure_logging

__all__ = ["main"]


def _sandbox_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("sandbox", help="run the local Reach sandbox server")
    try:
        from consumer.reach.sandbox.cli import add_arguments, run
    except ImportError as exc:  # the sandbox needs the dev extra (starlette, uvicorn)
        reason = str(exc)

        def unavailable(args: argparse.Namespace) -> int:
            print(
                f"sandbox: unavailable ({reason}); run `pip install -e '.[dev]'`", file=sys.stderr
            )
            return 2

        parser.set_defaults(handler=unavailable)
        return
    add_arguments(parser)
    parser.set_defaults(handler=run)


def _demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("demo", help="the whole thing on the local stack, with a live view")
    from consumer.dev.demo import add_arguments, run

    add_arguments(parser)
    parser.set_defaults(handler=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reach-sync",
        description="Keep Reach equal to a partner database, driven by Debezium change events.",
    )
    parser.add_argument("--version", action="version", version=f"reach-sync {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_sync_commands(sub)
    add_dev_commands(sub)
    _sandbox_command(sub)
    _demo_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        code: int = args.handler(args)
    except ComponentError as exc:
        print(exc.details(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
