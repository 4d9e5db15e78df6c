"""reach-sync's one error tree: every failure is classified once, at the boundary where it occurs.

Library errors (httpx, psycopg, redis, Kafka) are translated into these classes with
``raise ... from exc`` where they happen; the pipeline decides what to do by class alone:

- ``Retryable``: try again later (backoff, honour ``retry_after_s``); commit nothing meanwhile.
- ``BadRecord``: this record (or event) can never succeed as it is; dead-letter it and go on.
- ``ConfigurationError``: no record can succeed until a person fixes something (credentials,
  an unknown schema, a broken definition); stop that scope, alert, do not dead-letter.
  ``DefinitionError``, one of them, is a sync definition that does not validate: found when it
  is loaded, before any work starts, with every problem named by file and field.
"""

from __future__ import annotations

__all__ = ["BadRecord", "ConfigurationError", "DefinitionError", "Retryable", "SyncError"]


class SyncError(Exception):
    """Base of every classified reach-sync error."""


class Retryable(SyncError):
    """A transient failure: Reach 429/5xx/timeouts, a database or Redis outage.

    ``ambiguous``: the request reached Reach and its answer was lost (a 5xx, a timeout, a cut
    connection), so Reach may have applied it; the engine must not assume either outcome.
    """

    def __init__(
        self, message: str, retry_after_s: float | None = None, *, ambiguous: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.ambiguous = ambiguous


class BadRecord(SyncError):
    """One record or event that will never be accepted as it is; carries why, for the DLQ."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str | None = None,
        external_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.external_id = external_id


class ConfigurationError(SyncError):
    """Nothing will succeed until a person fixes the setup (401/403, unknown schema, ...)."""

    def __init__(
        self, message: str, *, status: int | None = None, scope: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.scope = scope


class DefinitionError(ConfigurationError):
    """The sync definition is invalid: raised when it is loaded, before any work starts.

    ``source`` is the file; ``problems`` lists its ``field.path: reason`` lines, all of them at
    once, and ``lines`` the line of the file each is about (None: not known). The message is one
    ``<file>:<line>: <field.path>: <reason>`` line per problem.
    """

    def __init__(
        self, source: str, problems: list[str], lines: list[int | None] | None = None
    ) -> None:
        self.source = source
        self.problems = problems
        self.lines = lines if lines is not None else [None] * len(problems)
        super().__init__(
            "\n".join(
                f"{source}:{line}: {problem}" if line else f"{source}: {problem}"
                for problem, line in zip(problems, self.lines, strict=True)
            )
        )
