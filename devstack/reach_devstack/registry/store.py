"""What the schema registry double holds: schemas by global id, subjects' versions, compatibility.

Kept apart from HTTP so that the rules read plainly and are tested without a server. The rules
are Confluent Schema Registry's (its ``KafkaSchemaRegistry``), as far as a local double needs:

* **Ids are global and stable.** A schema gets one id the first time any subject registers it;
  the same schema under another subject gets the same id (and that subject's own version). Ids
  start at 1, only grow, and are never reused, even after a subject is deleted.
* **Same schema, same id.** Two texts are the same schema when their parsed forms are equal:
  whitespace, key order, ``{"type": "int"}`` for ``"int"`` and namespace-or-full-name spellings
  do not matter; a doc or a default does (Confluent compares the schemas' canonical text, which
  keeps both).
* **Deletes:** a soft delete hides a subject's versions (``deleted=true`` shows them again); a
  permanent delete, only after a soft one, removes them. The ids stay served by
  ``/schemas/ids/{id}``: data written with them must stay readable.
* **Compatibility** is stored and answered, not enforced: every new schema becomes a new version.

State is a JSON file when a path is given (written whole, atomically, after each change), so a
restarted registry serves the same ids, as a real one does from its ``_schemas`` topic.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro

__all__ = [
    "AVRO",
    "COMPATIBILITY_LEVELS",
    "DEFAULT_COMPATIBILITY",
    "RegistryError",
    "SchemaStore",
    "StoredSchema",
    "SubjectVersion",
    "check_subject",
    "compatibility_level",
    "parse_avro",
    "parse_version",
]

DEFAULT_COMPATIBILITY = "BACKWARD"
COMPATIBILITY_LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
AVRO = "AVRO"
# The state file's layout; a file of another version is refused rather than misread.
STATE_VERSION = 1

# Confluent's error codes (io.confluent.kafka.schemaregistry.rest.exceptions.Errors).
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
SUBJECT_SOFT_DELETED = 40404
SUBJECT_NOT_SOFT_DELETED = 40405
VERSION_SOFT_DELETED = 40406
VERSION_NOT_SOFT_DELETED = 40407
SUBJECT_COMPATIBILITY_NOT_CONFIGURED = 40408
INVALID_SCHEMA = 42201
INVALID_VERSION = 42202
INVALID_COMPATIBILITY = 42203
INVALID_SUBJECT = 42208

_PRIMITIVES = frozenset(("null", "boolean", "int", "long", "float", "double", "bytes", "string"))
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_VERSION = 2**31 - 1


class RegistryError(Exception):
    """An answer other than success, as Confluent gives it: HTTP status, error code, message."""

    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _not_found(code: int, message: str) -> RegistryError:
    return RegistryError(404, code, message)


def _invalid_schema(detail: str) -> RegistryError:
    return RegistryError(422, INVALID_SCHEMA, f"Invalid schema: {detail}")


# --- Avro: validation and the form two schemas are compared in ---------------------------------


def _check_name(name: Any, what: str, dotted: bool = True) -> None:
    """An Avro name; ``dotted``: a full name (type names), else a simple one (fields, symbols)."""
    parts = name.split(".") if isinstance(name, str) and dotted else [name]
    if not all(isinstance(part, str) and _NAME_RE.match(part) for part in parts):
        raise _invalid_schema(f"{what} {name!r} is not a valid Avro name")


def _branch_key(branch: Any, path: str) -> str:
    """What makes a union branch distinct: its type, or a named type's name."""
    if isinstance(branch, str):
        return branch
    if isinstance(branch, dict) and "type" in branch:
        name = branch.get("name")
        if isinstance(name, str):
            namespace = branch.get("namespace")
            return f"{namespace}.{name}" if namespace and "." not in name else name
        return str(branch["type"])
    raise _invalid_schema(f"{path}: not a schema: {branch!r}")


def _check(node: Any, path: str) -> None:
    """What Avro Java refuses and fastavro lets through: records without fields, repeated field
    names or union branches, unions in unions, bad names. fastavro checks the rest."""
    if isinstance(node, list):
        _check_union(node, path)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in ("record", "error"):
        _check_record(node, path)
    elif kind == "enum":
        _check_name(node.get("name"), f"{path}: enum name")
        for symbol in node.get("symbols") or []:
            _check_name(symbol, f"{path}: enum symbol", dotted=False)
    elif kind == "fixed":
        _check_name(node.get("name"), f"{path}: fixed name")
        if not isinstance(node.get("size"), int):
            raise _invalid_schema(f"{path}: fixed {node.get('name')!r} needs an integer size")
    elif kind == "array":
        _check(node.get("items"), f"{path}.items")
    elif kind == "map":
        _check(node.get("values"), f"{path}.values")
    elif isinstance(kind, dict | list):
        _check(kind, path)


def _check_union(branches: list[Any], path: str) -> None:
    seen: set[str] = set()
    for i, branch in enumerate(branches):
        if isinstance(branch, list):
            raise _invalid_schema(f"{path}[{i}]: a union may not contain a union")
        key = _branch_key(branch, f"{path}[{i}]")
        if key in seen:
            raise _invalid_schema(f"{path}: duplicate in union: {key}")
        seen.add(key)
        _check(branch, f"{path}[{i}]")


def _check_record(node: dict[str, Any], path: str) -> None:
    _check_name(node.get("name"), f"{path}: record name")
    fields = node.get("fields")
    if not isinstance(fields, list):
        raise _invalid_schema(f"{path}: record {node.get('name')!r} has no fields list")
    names: set[str] = set()
    for f in fields:
        if not isinstance(f, dict) or "type" not in f:
            raise _invalid_schema(f"{path}: every field needs a name and a type")
        _check_name(f.get("name"), f"{path}: field name", dotted=False)
        if f["name"] in names:
            raise _invalid_schema(f"{path}: duplicate field {f['name']!r}")
        names.add(f["name"])
        _check(f["type"], f"{path}.{f['name']}")


def _canonical(node: Any) -> Any:
    """fastavro's parsed form (full names, no namespace keys) without its bookkeeping keys, with
    ``{"type": "int"}`` written ``"int"``: equal for texts Confluent would call one schema."""
    if isinstance(node, list):
        return [_canonical(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _canonical(v) for k, v in node.items() if not k.startswith("__fastavro")}
    if set(out) == {"type"} and out["type"] in _PRIMITIVES:
        return out["type"]
    return out


def parse_avro(text: str) -> tuple[str, str]:
    """(the schema as stored and served: compact JSON; the key two equal schemas share).

    Raises RegistryError 42201 when the text is not an Avro schema.
    """
    try:
        parsed_json = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _invalid_schema(f"not JSON: {exc}") from None
    _check(parsed_json, "schema")
    try:
        parsed = fastavro.parse_schema(parsed_json)
    except Exception as exc:  # fastavro raises several kinds, KeyError among them
        raise _invalid_schema(f"{type(exc).__name__}: {exc}") from None
    stored = json.dumps(parsed_json, separators=(",", ":"), ensure_ascii=False)
    key = json.dumps(_canonical(parsed), separators=(",", ":"), sort_keys=True)
    return stored, key


# --- the store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSchema:
    id: int
    schema: str
    key: str
    schema_type: str = AVRO


@dataclass
class SubjectVersion:
    version: int
    schema_id: int
    deleted: bool = False


@dataclass
class _State:
    schemas: dict[int, StoredSchema] = field(default_factory=dict)
    subjects: dict[str, list[SubjectVersion]] = field(default_factory=dict)
    compatibility: str = DEFAULT_COMPATIBILITY
    subject_compatibility: dict[str, str] = field(default_factory=dict)
    next_id: int = 1


def check_subject(subject: str) -> None:
    if not subject or _CONTROL_RE.search(subject):
        raise RegistryError(422, INVALID_SUBJECT, f"The specified subject '{subject}' is invalid")


def parse_version(text: str) -> int | None:
    """A version id as Confluent reads it: None for "latest", else an int in [1, 2^31-1]."""
    if text.strip().lower() == "latest":
        return None
    try:
        version = int(text.strip())
    except ValueError:
        version = 0
    if not 1 <= version <= _MAX_VERSION and version != -1:
        raise RegistryError(
            422,
            INVALID_VERSION,
            f"The specified version '{text}' is not a valid version id. "
            'Allowed values are between [1, 2^31-1] and the string "latest"',
        )
    return None if version == -1 else version


def compatibility_level(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in COMPATIBILITY_LEVELS:
        raise RegistryError(
            422,
            INVALID_COMPATIBILITY,
            "Invalid compatibility level. Valid values are none, backward, forward, full, "
            "backward_transitive, forward_transitive, and full_transitive",
        )
    return value.upper()


class SchemaStore:
    """The registry's state; each method is one REST operation's rule, raising RegistryError."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._state = _State()
        if path is not None and path.exists():
            self._state = _load(path)
        self._by_key = {s.key: s.id for s in self._state.schemas.values()}

    # -- registering and finding schemas

    def register(self, subject: str, text: str) -> int:
        """The schema's id under ``subject``: its existing one, or a new version (and id)."""
        check_subject(subject)
        stored, key = parse_avro(text)
        versions = self._state.subjects.setdefault(subject, [])
        for v in versions:
            if not v.deleted and self._state.schemas[v.schema_id].key == key:
                return v.schema_id
        schema_id = self._by_key.get(key)
        if schema_id is None:
            schema_id = self._state.next_id
            self._state.next_id += 1
            self._state.schemas[schema_id] = StoredSchema(schema_id, stored, key)
            self._by_key[key] = schema_id
        next_version = max((v.version for v in versions), default=0) + 1
        versions.append(SubjectVersion(next_version, schema_id))
        self._save()
        return schema_id

    def lookup(self, subject: str, text: str, deleted: bool) -> SubjectVersion:
        """The version of ``subject`` holding this schema (the newest, if several)."""
        versions = self._versions(subject, deleted)
        _, key = parse_avro(text)
        for v in reversed(versions):
            if self._state.schemas[v.schema_id].key == key:
                return v
        raise _not_found(SCHEMA_NOT_FOUND, "Schema not found")

    def schema(self, schema_id: int) -> StoredSchema:
        try:
            return self._state.schemas[schema_id]
        except KeyError:
            raise _not_found(SCHEMA_NOT_FOUND, f"Schema {schema_id} not found") from None

    def max_id(self) -> int:
        return self._state.next_id - 1

    def usages(self, schema_id: int, deleted: bool) -> list[tuple[str, int]]:
        """(subject, version) pairs that hold this id; 40403 for an id never issued."""
        self.schema(schema_id)
        return [
            (subject, v.version)
            for subject, versions in sorted(self._state.subjects.items())
            for v in versions
            if v.schema_id == schema_id and (deleted or not v.deleted)
        ]

    # -- subjects and versions

    def subjects(self, deleted: bool, deleted_only: bool, prefix: str) -> list[str]:
        def shown(versions: list[SubjectVersion]) -> bool:
            if deleted_only:
                return any(v.deleted for v in versions)
            return any(deleted or not v.deleted for v in versions)

        return [
            s
            for s, versions in sorted(self._state.subjects.items())
            if s.startswith(prefix) and shown(versions)
        ]

    def versions(self, subject: str, deleted: bool, deleted_only: bool) -> list[int]:
        versions = self._versions(subject, deleted or deleted_only)
        return [v.version for v in versions if not deleted_only or v.deleted]

    def version(self, subject: str, version_text: str, deleted: bool) -> SubjectVersion:
        wanted = parse_version(version_text)
        versions = self._versions(subject, deleted)
        if wanted is None:
            return versions[-1]
        for v in versions:
            if v.version == wanted:
                return v
        raise _not_found(VERSION_NOT_FOUND, f"Version {wanted} not found.")

    def delete_subject(self, subject: str, permanent: bool) -> list[int]:
        """Soft: hide every live version; permanent (after a soft one): forget them."""
        versions = self._versions(subject, deleted=True)
        live = [v for v in versions if not v.deleted]
        if permanent:
            if live:
                raise _not_found(
                    SUBJECT_NOT_SOFT_DELETED,
                    f"Subject '{subject}' was not deleted first before being permanently deleted",
                )
            del self._state.subjects[subject]
            self._state.subject_compatibility.pop(subject, None)
            self._save()
            return [v.version for v in versions]
        if not live:
            raise _not_found(
                SUBJECT_SOFT_DELETED,
                f"Subject '{subject}' was soft deleted.Set permanent=true to delete permanently",
            )
        for v in live:
            v.deleted = True
        self._save()
        return [v.version for v in live]

    def delete_version(self, subject: str, version_text: str, permanent: bool) -> int:
        wanted = parse_version(version_text)
        versions = self._versions(subject, deleted=True)
        if wanted is None:
            live = [v for v in versions if not v.deleted]
            if not live:
                raise _not_found(VERSION_NOT_FOUND, "Version -1 not found.")
            wanted = live[-1].version
        target = next((v for v in versions if v.version == wanted), None)
        if target is None:
            raise _not_found(VERSION_NOT_FOUND, f"Version {wanted} not found.")
        if permanent and not target.deleted:
            raise _not_found(
                VERSION_NOT_SOFT_DELETED,
                f"Subject '{subject}' Version {wanted} was not deleted first before being "
                "permanently deleted",
            )
        if not permanent and target.deleted:
            raise _not_found(
                VERSION_SOFT_DELETED,
                f"Subject '{subject}' Version {wanted} was soft deleted.Set permanent=true to "
                "delete permanently",
            )
        if permanent:
            kept = [v for v in self._state.subjects[subject] if v is not target]
            if kept:
                self._state.subjects[subject] = kept
            else:
                del self._state.subjects[subject]
        else:
            target.deleted = True
        self._save()
        return wanted

    def _versions(self, subject: str, deleted: bool) -> list[SubjectVersion]:
        """The subject's versions, oldest first; 40401 when it has none to show."""
        shown = [v for v in self._state.subjects.get(subject, []) if deleted or not v.deleted]
        if not shown:
            raise _not_found(SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
        return shown

    # -- compatibility configuration (answered, not enforced)

    def compatibility(self, subject: str | None = None, default_to_global: bool = False) -> str:
        if subject is None:
            return self._state.compatibility
        level = self._state.subject_compatibility.get(subject)
        if level is None:
            if default_to_global:
                return self._state.compatibility
            raise _not_found(
                SUBJECT_COMPATIBILITY_NOT_CONFIGURED,
                f"Subject '{subject}' does not have subject-level compatibility configured",
            )
        return level

    def set_compatibility(self, level: Any, subject: str | None = None) -> str:
        checked = compatibility_level(level)
        if subject is None:
            self._state.compatibility = checked
        else:
            check_subject(subject)
            self._state.subject_compatibility[subject] = checked
        self._save()
        return checked

    def delete_compatibility(self, subject: str | None = None) -> str:
        """Back to the default (global) or to the global level (subject); returns the old one."""
        if subject is None:
            old = self._state.compatibility
            self._state.compatibility = DEFAULT_COMPATIBILITY
        else:
            if subject not in self._state.subject_compatibility:
                raise _not_found(SUBJECT_NOT_FOUND, f"Subject '{subject}' not found.")
            old = self._state.subject_compatibility.pop(subject)
        self._save()
        return old

    # -- persistence

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        tmp.write_text(json.dumps(_dump(self._state), indent=1))
        tmp.replace(self._path)


def _dump(state: _State) -> dict[str, Any]:
    return {
        "format_version": STATE_VERSION,
        "next_id": state.next_id,
        "schemas": [
            {"id": s.id, "schema": s.schema, "schemaType": s.schema_type}
            for s in state.schemas.values()
        ],
        "subjects": {
            name: [{"version": v.version, "id": v.schema_id, "deleted": v.deleted} for v in vs]
            for name, vs in state.subjects.items()
        },
        "compatibility": state.compatibility,
        "subject_compatibility": state.subject_compatibility,
    }


def _load(path: Path) -> _State:
    """The state ``_dump`` wrote; ValueError naming the file when it is not that."""
    try:
        data = json.loads(path.read_text())
        if data.get("format_version") != STATE_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r}")
        schemas = {}
        for entry in data["schemas"]:
            stored, key = parse_avro(entry["schema"])
            schemas[int(entry["id"])] = StoredSchema(int(entry["id"]), stored, key)
        subjects = {
            str(name): [
                SubjectVersion(int(v["version"]), int(v["id"]), bool(v["deleted"])) for v in vs
            ]
            for name, vs in data["subjects"].items()
        }
        return _State(
            schemas=schemas,
            subjects=subjects,
            compatibility=str(data["compatibility"]),
            subject_compatibility={
                str(k): str(v) for k, v in data["subject_compatibility"].items()
            },
            next_id=int(data["next_id"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RegistryError) as exc:
        raise ValueError(f"{path}: not a schema registry state file: {exc}") from exc
