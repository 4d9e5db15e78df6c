"""Bodies of accepted batches, kept as files until their batch is applied.

A batch answered 202 must survive a restart of the sandbox, so its body is kept until the
batch's transaction commits. Files rather than a SQLite column: writing a few hundred KiB into
the database and freeing it again costs more than the rest of accepting the batch.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

__all__ = ["PayloadStore"]


class PayloadStore:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, batch_id: str) -> Path:
        return self._dir / f"{batch_id}.json"

    def save(self, batch_id: str, payload: bytes) -> None:
        self._path(batch_id).write_bytes(payload)

    def load(self, batch_id: str) -> bytes | None:
        try:
            return self._path(batch_id).read_bytes()
        except FileNotFoundError:
            return None

    def drop(self, batch_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(batch_id).unlink()

    def keep_only(self, batch_ids: set[str]) -> None:
        """Delete the bodies of batches that are finished (or gone after a reset)."""
        for path in self._dir.glob("*.json"):
            if path.stem not in batch_ids:
                path.unlink(missing_ok=True)
