"""The Reach sandbox: a local, faithful and fast stand-in for the Reach API.

It follows docs/reach-api.md, and its §7 sandbox defaults where the docs are silent: partner JWTs
and static keys, tenants, schema definitions, synchronous single writes, asynchronous batches with
status, upsert-merge, ``$ref`` dependencies with pending records, rate limits, and faults that tests
switch at run time. State lives in SQLite under a state directory; the admin API under ``/_admin``
lets tests read it (including every resource's version history) and reset it.

Run it with ``python -m reach_sandbox --config FILE --state-dir DIR``.
"""

from reach_sandbox.config import (
    ConfigError,
    SandboxConfig,
    dev_config,
    load_sandbox_config,
    write_sandbox_config,
)

__all__ = [
    "ConfigError",
    "SandboxConfig",
    "dev_config",
    "load_sandbox_config",
    "write_sandbox_config",
]
