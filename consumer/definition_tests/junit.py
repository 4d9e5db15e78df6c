"""The run's verdicts as JUnit XML, which CI systems show as test results."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CaseResult", "write_junit"]


@dataclass(frozen=True, slots=True)
class CaseResult:
    """``failures``: the diff lines of a failed case; ``error``: why it could not run."""

    name: str
    path: str
    seconds: float
    failures: Sequence[str] = field(default_factory=tuple)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None


def write_junit(path: Path, suite: str, results: Sequence[CaseResult]) -> None:
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(sum(bool(r.failures) for r in results)),
        errors=str(sum(r.error is not None for r in results)),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for result in results:
        case = ET.SubElement(
            root,
            "testcase",
            name=result.name,
            classname=suite,
            file=result.path,
            time=f"{result.seconds:.3f}",
        )
        if result.error is not None:
            ET.SubElement(case, "error", message=result.error.splitlines()[0]).text = result.error
        elif result.failures:
            first = result.failures[0].strip()
            ET.SubElement(case, "failure", message=first).text = "\n".join(result.failures)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
