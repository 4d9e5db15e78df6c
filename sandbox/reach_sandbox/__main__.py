"""``python -m reach_sandbox --config FILE --state-dir DIR [--host H] [--port N]``."""

from __future__ import annotations

import argparse
import sys

from reach_sandbox.cli import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reach_sandbox",
        description="A local server that behaves like the Reach API (see docs/reach-api.md).",
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
