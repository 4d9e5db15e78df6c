"""Runs a test once per Avro reader of consumer/router/avro_reader.py: the C extension (skipped
where it was not built) and the generated Python that stands in for it."""

from __future__ import annotations

import pytest

from consumer.router.avro_reader import native_scan

__all__ = ["READERS"]

# A test taking ``scan`` gets the C reader, then None (the generated Python).
READERS = pytest.mark.parametrize(
    "scan",
    [
        pytest.param(
            native_scan,
            id="C",
            marks=pytest.mark.skipif(native_scan is None, reason="the C extension is not built"),
        ),
        pytest.param(None, id="Python"),
    ],
)
