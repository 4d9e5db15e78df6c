"""The C reader under AddressSanitizer and UndefinedBehaviorSanitizer: it reads untrusted bytes,
so mangled, cut and random messages must never make it touch memory outside its buffer, and it
must read or refuse each of them exactly as the generated Python does.

The extension is compiled again with the sanitizers into a temporary folder and handed to
``compile_reader`` through its ``scan`` seam, in a child process that preloads the sanitizers'
runtimes. Skipped where there is no gcc with them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SOURCE = ROOT / "consumer" / "router" / "_avro_scan.c"

_BUILD = """
import sys
from setuptools import Extension, setup
setup(
    name="sanitized",
    script_args=["build_ext", "--build-lib", sys.argv[1], "--build-temp", sys.argv[2]],
    ext_modules=[Extension("_avro_scan", [sys.argv[3]])],
)
"""

_FUZZ = """
import importlib.machinery, importlib.util, random, sys
loader = importlib.machinery.ExtensionFileLoader("consumer.router._avro_scan", sys.argv[1])
spec = importlib.util.spec_from_loader(loader.name, loader)
module = importlib.util.module_from_spec(spec)
loader.exec_module(module)
from consumer.router.avro_reader import compile_reader
from tests.unit.test_avro_reader import PLAIN, _outcome, _plain
c_reader = compile_reader(PLAIN, scan=module.scan)
py_reader = compile_reader(PLAIN, scan=None)
assert c_reader.native and not py_reader.native
rng = random.Random(int(sys.argv[2]))
messages = 0
for _ in range(300):
    raw = _plain(rng)
    for _ in range(30):
        mangled = bytearray(raw)
        for _ in range(rng.choice([1, 3, 8])):
            mangled[rng.randrange(5, len(mangled))] = rng.randrange(256)
        if rng.random() < 0.3:
            del mangled[rng.randrange(5, len(mangled) + 1):]
        junk = b"\\x00\\x00\\x00\\x00\\x02" + rng.randbytes(rng.randrange(0, 300))
        for message in (bytes(mangled), junk):
            a, b = _outcome(c_reader, message), _outcome(py_reader, message)
            assert repr(a) == repr(b), (message, a, b)
            messages += 1
print(messages)
"""


def _runtime(gcc: str, name: str) -> str | None:
    found = subprocess.run(
        [gcc, f"-print-file-name={name}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    path = Path(found)
    return found if path.is_absolute() and path.exists() else None


def test_mangled_cut_and_random_messages_touch_no_memory_outside_the_buffer(
    tmp_path: Path,
) -> None:
    gcc = shutil.which("gcc")
    runtimes = [_runtime(gcc, name) for name in ("libasan.so", "libubsan.so")] if gcc else []
    if not gcc or None in runtimes:
        pytest.skip("no gcc with AddressSanitizer and UndefinedBehaviorSanitizer runtimes")
    flags = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -O1 -g"
    env = {**os.environ, "CC": gcc, "CFLAGS": flags, "LDFLAGS": "-fsanitize=address,undefined"}
    subprocess.run(
        [sys.executable, "-c", _BUILD, str(tmp_path / "lib"), str(tmp_path / "tmp"), str(SOURCE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=True,
    )
    (built,) = (tmp_path / "lib").glob("_avro_scan*.so")
    fuzz = subprocess.run(
        [sys.executable, "-c", _FUZZ, str(built), "20261205"],
        cwd=ROOT,
        env={
            **os.environ,
            "LD_PRELOAD": " ".join(str(r) for r in runtimes),
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1",
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert fuzz.returncode == 0, fuzz.stderr[-4000:]
    assert int(fuzz.stdout.split()[-1]) == 300 * 30 * 2
