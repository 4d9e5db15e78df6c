"""What every command shares: how it takes the definition (``FILE`` or ``--config FILE``), loads
it (a bad one: one line per problem, exit 2), and reports a failure; argument types."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import ConfigurationError, DefinitionError, SyncError
from consumer.observe.logs import configure_logging, definition_secrets
from consumer.records.dlq_read import (
    parse_time,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_NO_MATCH",
    "add_definition",
    "count",
    "definition_path",
    "failed",
    "load",
    "positive",
    "seconds",
    "time_arg",
]

EXIT_CONFIG = 2
# dlq, audit: the filter matched nothing. Told apart from a failure so that a script can tell
# "nothing to do here" (a mistyped --id, say) from "could not do it".
EXIT_NO_MATCH = 3


def add_definition(parser: argparse.ArgumentParser) -> None:
    """The definition, as every command takes it: ``FILE`` first, or ``--config FILE``."""
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        metavar="FILE",
        help="the sync definition (YAML); or give it with --config",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the sync definition (YAML), as FILE"
    )
    parser.set_defaults(definition_parser=parser)


def definition_path(args: argparse.Namespace) -> Path:
    """The definition's file, from ``FILE`` or ``--config``; a usage error (exit 2) when there
    is none, or two different ones."""
    parser: argparse.ArgumentParser = args.definition_parser
    positional: Path | None = args.file
    option: Path | None = args.config
    if positional is None:
        if option is None:
            parser.error("which sync definition? give its file: FILE or --config FILE")
        return option
    if option is not None and positional.resolve() != option.resolve():
        parser.error(
            f"two sync definitions given, {positional} and --config {option}: give one "
            "(FILE or --config FILE)"
        )
    return positional


def failed(command: str, error: SyncError) -> int:
    """Say why ``command`` could not be done; its exit code: EXIT_CONFIG for a configuration
    error (a person must fix something), 1 for anything else (try again)."""
    print(f"{command}: {error}", file=sys.stderr)
    return EXIT_CONFIG if isinstance(error, ConfigurationError) else 1


def load(path: Path, level: int | None = None) -> SyncDefinition | None:
    """Load the definition; from then on, logs never show any of its secrets. ``level``: the
    log level from then on (default: as it is)."""
    try:
        definition = load_definition(path)
    except DefinitionError as exc:
        print(str(exc), file=sys.stderr)
        return None
    level = logging.getLogger().level if level is None else level
    configure_logging(level, definition_secrets(definition))
    return definition


def time_arg(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0.1 to 3600")
    return value
