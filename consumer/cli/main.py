"""The ``reach-sync`` command: one entry point, one subcommand per job.

``dev``, ``demo`` and ``sandbox`` belong to packages of their own (the local stack and the Reach
sandbox, which a contributor installs with scripts/dev): they are added when those packages are
installed, and otherwise answer with what to install, so the product never needs them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from consumer import __version__
from consumer.cli.access import add_access_commands
from consumer.cli.commands import add_sync_commands
from consumer.cli.export import add_export_commands
from consumer.cli.history import add_history_commands
from consumer.observe.logs import configure_logging

__all__ = ["build_parser", "main"]

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _unavailable(sub: Subparsers, name: str, what: str, package: str, reason: str) -> None:
    parser = sub.add_parser(name, help=f"{what} (needs the {package} package)")

    def handler(args: argparse.Namespace) -> int:
        print(
            f"reach-sync {name}: needs the {package} package, which is not installed ({reason});"
            " scripts/dev installs it",
            file=sys.stderr,
        )
        return 2

    # Whatever options follow are that package's: not an error of this command line.
    parser.set_defaults(handler=handler, takes_any=True)


def _optional(sub: Subparsers, name: str, what: str, package: str, add: Callable[[], None]) -> None:
    try:
        add()
    except ImportError as exc:
        _unavailable(sub, name, what, package, str(exc))


def _dev(sub: Subparsers) -> None:
    from reach_devstack.cli import add_dev_commands

    add_dev_commands(sub)


def _demo(sub: Subparsers) -> None:
    from reach_devstack.cli import add_demo_command

    add_demo_command(sub)


def _test(sub: Subparsers) -> None:
    import reach_devstack  # noqa: F401  # the throwaway servers come from the local stack

    from consumer.cli.casework import add_test_command

    add_test_command(sub)


def _sandbox(sub: Subparsers) -> None:
    from reach_sandbox.cli import add_arguments, run

    parser = sub.add_parser("sandbox", help="run the local Reach sandbox server")
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
    add_history_commands(sub)
    add_export_commands(sub)
    add_access_commands(sub)
    local_stack = "the local stack"
    _optional(sub, "dev", local_stack, "reach-devstack", lambda: _dev(sub))
    _optional(sub, "sandbox", "the local Reach sandbox", "reach-sandbox", lambda: _sandbox(sub))
    _optional(sub, "demo", "the demo on the local stack", "reach-devstack", lambda: _demo(sub))
    _optional(sub, "test", "the definition's test cases", "reach-devstack", lambda: _test(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_any", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    configure_logging(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # a reader that went away (`| head`) shows here, not at exit
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    return code


def _reader_gone() -> int:
    """Whoever read stdout closed it (``reach-sync status | head``): end quietly, exit code 1.

    As the Python docs advise (signal module, "Note on SIGPIPE"): stdout now points at
    /dev/null, so that the flush at interpreter exit cannot fail and print a second error.
    """
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (a test's capture): nothing to redirect
        return 1
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return 1


if __name__ == "__main__":
    sys.exit(main())
