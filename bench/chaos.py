"""The chaos run: reach-sync under a seeded schedule of faults, judged by independent checks.

What it does, step by step, and what each check reads: devstack/reach_devstack/chaos/run.py;
the figures of the last full run and how to read them: docs/reliability.md. Prints the fault
log as it goes, then a report and, on the last line, one JSON object; exits 0 only if every
check passed.

    .venv/bin/python bench/chaos.py --seed 7 --changes 100000     # the full run
    scripts/dev chaos --seed 7 --changes 10000                    # the same, after setup
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from reach_devstack.chaos.plan import ChaosPlan
from reach_devstack.chaos.run import describe_kinds, report, run_chaos


def main(argv: list[str] | None = None) -> int:
    defaults = ChaosPlan()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="fault kinds:\n" + describe_kinds(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--changes", type=int, default=defaults.changes, help="source row changes to make"
    )
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help="load operations per second"
    )
    parser.add_argument("--routers", type=int, default=defaults.routers)
    parser.add_argument("--syncers", type=int, default=defaults.syncers)
    parser.add_argument(
        "--durable-broker",
        action="store_true",
        help="the broker on S3 storage (SeaweedFS), with broker restarts in the schedule; "
        "see docs/reliability.md",
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=defaults.settle_timeout_s,
        help="seconds the sandbox may take to equal the database after the last fault",
    )
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="where the stack and the logs go"
    )
    args = parser.parse_args(argv)
    plan = ChaosPlan(
        seed=args.seed,
        changes=args.changes,
        rate=args.rate,
        routers=args.routers,
        syncers=args.syncers,
        durable_broker=args.durable_broker,
        settle_timeout_s=args.settle_timeout,
    )
    state_dir = args.state_dir
    if state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix="reach-sync-chaos-"))
        state_dir.chmod(0o755)  # Postgres runs unprivileged when this is root: it must enter
    result = run_chaos(plan, state_dir.resolve())
    print("\n".join(report(result)))
    print(result.to_json(), flush=True)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
