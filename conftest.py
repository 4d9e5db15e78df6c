"""What the tests of all three packages share: tests/ (reach-sync), sandbox/tests, devstack/tests.

The real local servers (broker, Postgres, Redis; ``state_root``, ``unique``, ``database``) are
fixtures of the local stack's pytest plugin, registered here, at the root, as pytest requires of
``pytest_plugins``; each tests/ folder's conftest.py keeps what is its own. The Reach sandbox's
test harness is a module of its package (reach_sandbox.testing), imported where it is used.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["reach_devstack.pytest_fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder so `-m "not integration"` and friends work without decorators."""
    for item in items:
        path = str(item.path)
        if f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
        elif f"{os.sep}e2e{os.sep}" in path:
            item.add_marker(pytest.mark.e2e)
