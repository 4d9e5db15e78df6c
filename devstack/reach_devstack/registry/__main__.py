"""``python -m reach_devstack.registry [--host 127.0.0.1] [--port N] [--state-dir DIR]``."""

from __future__ import annotations

import sys

from reach_devstack.registry.server import main

if __name__ == "__main__":
    sys.exit(main())
