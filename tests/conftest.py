"""reach-sync's own test hooks. The real local servers (``broker``, ``postgres``, ``redis_url``,
``database``, ``state_root``, ``unique``) are fixtures of reach_devstack.pytest_fixtures, which the
repository's root conftest.py registers for the tests of all three packages; the Reach sandbox's
harness is reach_sandbox.testing.
"""

from __future__ import annotations

import os
import sys

import pytest

from consumer.kafka import abandoned_consumers

_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process at once if tests left consumers without a LeaveGroup.

    The pipeline releases consumers that way on the local broker (consumer/kafka.py,
    release_consumer) and `reach-sync run` ends with os._exit; a test process must too: once the
    servers are gone, such a consumer's librdkafka threads spin and the interpreter never exits.
    """
    if abandoned_consumers() and _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
