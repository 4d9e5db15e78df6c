"""Test cases of a sync definition, as the partner writes them in YAML beside it.

A cases directory holds ``suite.yaml`` (the partner's schema, the Reach schemas, the tenants) and
one case per other ``*.yaml`` file. A case is a list of steps; each step changes the source
database (SQL, or rows to insert) and says what Reach must see from it, per resource and entity
id. Every file is validated before anything starts, each problem at its ``file:line: path``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from consumer.config_file import located
from consumer.errors import ConfigurationError, DefinitionError

__all__ = ["Case", "Expectation", "Step", "Suite", "load_cases", "load_suite"]

SUITE_FILE = "suite.yaml"
Outcome = Literal["sent", "skipped", "deleted", "dead_letter", "held", "parked"]
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Expectation(_Strict):
    """What one entity comes to in one step. ``record`` is the whole record Reach receives;
    ``fields`` only the fields named; ``groups`` the group memberships; ``tenant`` the tenant
    it is sent to or deleted from; ``reason`` words of a dead letter's reason."""

    outcome: Outcome = "sent"
    tenant: str | None = None
    record: dict[str, Any] | None = None
    fields: dict[str, Any] | None = None
    groups: list[str] | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        carries = self.record is not None or self.fields is not None or self.groups is not None
        if carries and self.outcome != "sent":
            raise ValueError(f"record, fields and groups describe a send, not {self.outcome}")
        if self.record is not None and self.fields is not None:
            raise ValueError("give record (all of it) or fields (some), not both")
        if self.reason is not None and self.outcome != "dead_letter":
            raise ValueError("reason describes a dead letter: set outcome: dead_letter")
        return self


class Step(_Strict):
    """One change to the source database and what Reach must see of it. Rows are inserted
    after the SQL runs, table by table in the order given."""

    sql: str | None = None
    rows: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    # resource -> entity id -> expectation. A resource named here is held to it exactly: any
    # entity of it sent, deleted or dead-lettered without being expected fails the step.
    expect: dict[str, dict[str, Expectation]] = Field(default_factory=dict)

    @field_validator("expect", mode="before")
    @classmethod
    def _ids_as_text(cls, expect: Any) -> Any:
        """``1:`` in YAML is a number; entity ids are text everywhere else."""
        if not isinstance(expect, dict):
            return expect
        return {
            name: {str(k): v for k, v in ids.items()} if isinstance(ids, dict) else ids
            for name, ids in expect.items()
        }

    @model_validator(mode="after")
    def _changes_something(self) -> Self:
        if self.sql is None and not self.rows:
            raise ValueError("a step needs sql or rows (or both)")
        bad = [table for table in self.rows if not _TABLE.match(table)]
        if bad:
            raise ValueError(f"rows: not a table name: {', '.join(bad)}")
        return self


class Case(_Strict):
    """A named list of steps; a single step may be written at the top level."""

    name: str = ""
    path: str = ""
    steps: tuple[Step, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _one_step(cls, data: Any) -> Any:
        if isinstance(data, dict) and "steps" not in data and set(data) & {"sql", "rows"}:
            step = {k: data.pop(k) for k in ("sql", "rows", "expect") if k in data}
            return {**data, "steps": [step]}
        return data


class Suite(_Strict):
    """What every case of a directory starts from."""

    directory: Path
    # SQL files run in order into an empty database: the partner's schema (a migration dump).
    schema_files: tuple[Path, ...] = Field(alias="schema", min_length=1)
    # The Reach schema definitions the sandbox holds, as Reach's schema-definition API gives
    # them; none: Reach's default schemas only.
    reach_schemas: Path | None = None
    # Tenants Reach knows (external ids). None: each tenant a recomputed row names is created
    # when first seen, so a case only lists tenants to test one Reach does not know.
    tenants: tuple[str, ...] | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class _ExactLoader(yaml.SafeLoader):
    """YAML as usual, but a number with a fraction is the exact Decimal written, so a case can
    expect 0.30 or 3.14159265358979323846 as sent."""


def _exact_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal | float:
    text = str(loader.construct_scalar(node)).replace("_", "")
    try:
        return Decimal(text)
    except ArithmeticError:  # .inf, .nan: YAML's own spellings
        return float(loader.construct_yaml_float(node))


_ExactLoader.add_constructor("tag:yaml.org,2002:float", _exact_float)


def _parsed(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=_ExactLoader)  # noqa: S506  # a SafeLoader
    except OSError as exc:
        raise DefinitionError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise DefinitionError(str(path), [f"not valid YAML: {exc}"]) from exc


def _problems(exc: ValidationError, one_step: bool = False) -> list[str]:
    """Pydantic's errors as ``path: reason`` lines, paths as written in the file (a case of
    one step has no ``steps``)."""
    found = []
    for error in exc.errors():
        where = ""
        for part in error["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
        if one_step:
            where = where.removeprefix("steps[0]").lstrip(".")
        found.append(f"{where or '(top level)'}: {error['msg'].removeprefix('Value error, ')}")
    return found


def load_suite(directory: Path) -> Suite:
    path = directory / SUITE_FILE
    data = _parsed(path)
    if not isinstance(data, dict):
        raise DefinitionError(str(path), ["(top level): must be a mapping"])
    problems: list[str] = []
    files = data.get("schema")
    if isinstance(files, str):
        data["schema"] = files = [files]
    for i, name in enumerate(files or []):
        if isinstance(name, str) and not (directory / name).is_file():
            problems.append(f"schema[{i}]: no file {directory / name}")
    reach = data.get("reach_schemas")
    if isinstance(reach, str) and not (directory / reach).is_file():
        problems.append(f"reach_schemas: no file {directory / reach}")
    if problems:
        raise located(path, problems)
    try:
        suite = Suite.model_validate({**data, "directory": directory})
    except ValidationError as exc:
        raise located(path, _problems(exc)) from exc
    return suite.model_copy(
        update={
            "schema_files": tuple(directory / f for f in suite.schema_files),
            "reach_schemas": None
            if suite.reach_schemas is None
            else directory / suite.reach_schemas,
        }
    )


def load_cases(directory: Path, only: str | None = None) -> list[Case]:
    """Every case of ``directory`` (sorted by file name), all validated before any runs;
    ``only``: the cases whose name or file contains it."""
    cases, errors = [], []
    for path in sorted(directory.glob("*.yaml")):
        if path.name == SUITE_FILE:
            continue
        data = _parsed(path)
        if not isinstance(data, dict):
            errors.append(DefinitionError(str(path), ["(top level): must be a mapping"]))
            continue
        try:
            case = Case.model_validate({"name": path.stem, **data, "path": str(path)})
        except ValidationError as exc:
            errors.append(located(path, _problems(exc, one_step="steps" not in data)))
            continue
        if only is None or only in case.name or only in path.name:
            cases.append(case)
    if errors:
        # Each already names its file and lines: one message, every problem of every file.
        raise ConfigurationError("\n".join(str(e) for e in errors))
    return cases
