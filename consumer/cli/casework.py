"""``reach-sync test``: a definition held to its cases on throwaway servers (docs/testing.md).

Exit 0 when every case passes, 1 when one fails (its diff printed), 2 when the definition, the
suite or a case file is wrong (every problem at its file and line) or the schema does not load.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from consumer.cli.common import EXIT_CONFIG, add_definition, definition_path, failed
from consumer.errors import ConfigurationError, DefinitionError, SyncError

if TYPE_CHECKING:
    from consumer.config import SyncDefinition
    from consumer.definition_tests.cases import Case, Suite
    from consumer.definition_tests.junit import CaseResult

__all__ = ["add_test_command"]


def add_test_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "test",
        help="run the definition's test cases on throwaway servers (exit 1 on a failing case)",
        description=(
            "Each case of --cases DIR (default: <definition>.cases beside it) starts from the "
            "schema its suite.yaml names, changes rows and checks what Reach receives."
        ),
    )
    add_definition(parser)
    parser.add_argument("--cases", type=Path, metavar="DIR", help="the cases directory")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML here")
    parser.add_argument(
        "--e2e",
        action="store_true",
        help="through the whole pipeline (Debezium, Kafka, reach-sync run) instead of the sink",
    )
    parser.add_argument("-k", dest="only", metavar="TEXT", help="only cases whose name has TEXT")
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where the throwaway servers keep their data and logs (default: a temporary one)",
    )
    parser.set_defaults(handler=_test)


def _test(args: argparse.Namespace) -> int:
    from reach_devstack.process import ComponentError

    from consumer.definition_tests.cases import load_cases, load_suite
    from consumer.definition_tests.junit import write_junit
    from consumer.definition_tests.runner import default_cases_dir
    from consumer.definition_tests.target import load_for_test

    path = definition_path(args)
    directory: Path = args.cases or default_cases_dir(path)
    try:
        definition = load_for_test(path)
        if not directory.is_dir():
            raise ConfigurationError(f"no cases directory {directory} (give one with --cases)")
        suite = load_suite(directory)
        cases = load_cases(directory, args.only)
    except ConfigurationError as exc:  # DefinitionError too: every problem, file:line
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    if not cases:
        print(f"test: no cases in {directory}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        results = _run(path, definition, suite, cases, args.state_dir, args.e2e)
    except DefinitionError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except SyncError as exc:
        return failed("test", exc)
    except ComponentError as exc:
        print(f"test: the throwaway servers did not start: {exc}", file=sys.stderr)
        return 1
    if args.junit is not None:
        write_junit(args.junit, path.stem, results)
    passed = sum(r.passed for r in results)
    print(f"\n{passed} passed, {len(results) - passed} failed ({directory})")
    return 0 if passed == len(results) else 1


def _checked(path: Path, definition: SyncDefinition) -> None:
    """Raise DefinitionError with every problem both checks find; tell what does not stop a
    run (an empty schema has no rows to sample, so that is rare here)."""
    from consumer.config_file import located
    from consumer.reach_check import check_reach
    from consumer.source_check import check_source

    problems: list[str] = []
    try:
        notes = check_source(definition, path)
        if notes is not None:
            print(str(notes), file=sys.stderr)
    except DefinitionError as exc:
        problems += exc.problems
    try:
        check_reach(definition, path)
    except DefinitionError as exc:
        problems += exc.problems
    if problems:
        raise located(path, problems)


def _run(
    path: Path,
    definition: SyncDefinition,
    suite: Suite,
    cases: list[Case],
    state_dir: Path | None,
    e2e: bool,
) -> list[CaseResult]:
    from consumer.definition_tests.runner import CaseRunner
    from consumer.definition_tests.servers import throwaway_servers
    from consumer.definition_tests.target import aimed

    def report(result: CaseResult) -> None:
        mark = "PASS" if result.passed else ("ERROR" if result.error else "FAIL")
        print(f"{mark}  {result.name}  ({result.seconds:.1f} s)", flush=True)
        for line in result.failures:
            print(f"      {line}")
        if result.error:
            print(f"      {result.error}")

    with tempfile.TemporaryDirectory(prefix="reach-sync-test-") as scratch:
        # Run as root, Postgres runs as an unprivileged user, which must reach its data.
        Path(scratch).chmod(0o755)
        root = state_dir or Path(scratch)
        with throwaway_servers(suite, root, broker=e2e) as servers:
            # The definition against the partner's schema and Reach schemas first, as
            # `validate --source --reach` would: a misspelt column fails here, by its line.
            _checked(
                path,
                aimed(definition, servers.endpoints(servers.template_dsn, "reach-sync-test:check")),
            )
            runner = CaseRunner(
                definition,
                servers,
                fixed_tenants=suite.tenants is not None,
                e2e=e2e,
                state_dir=root,
            )
            return asyncio.run(runner.run_all(cases, report))
