"""Validating one schema's records: the top-level rules of docs/reach-api.md §3 over compiled
checks.

A ``null`` deletes a field, so it is valid unless the field is required; fields the schema does
not define are rejected unless the request says ``ignoreUnknownFields``, in which case they are
dropped (§3.1). Values are checked by closures compiled once per schema (``schema_compiler``),
because a batch validates up to 1000 records before its 202.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reach_sandbox.schema_compiler import (
    REF_PREFIX,
    Checker,
    SchemaError,
    accept,
    check_keywords,
    compile_node,
    ref_target,
    scalar,
)

__all__ = ["REF_PREFIX", "FieldError", "RecordValidator", "SchemaError"]

_MISSING = object()


@dataclass(frozen=True, slots=True)
class FieldError:
    """Why one record is invalid; ``index`` is its position in the request."""

    index: int
    external_id: str | None
    field: str | None
    message: str
    code: str = "VALIDATION_ERROR"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"index": self.index, "code": self.code, "message": self.message}
        if self.external_id is not None:
            body["externalId"] = self.external_id
        if self.field is not None:
            body["field"] = self.field
        return body


class RecordValidator:
    """Validates the top level of one schema's records; nested values go through closures."""

    def __init__(
        self, json_schema: Mapping[str, Any], external_id_field: str, assert_formats: bool
    ) -> None:
        if json_schema.get("type", "object") != "object":
            raise SchemaError("schema: the top level must be of type object")
        top = {k: v for k, v in json_schema.items() if k not in ("properties", "required")}
        check_keywords(top, "schema")
        properties = json_schema.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaError("schema.properties: must be an object")
        required = json_schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError("schema.required: must be a list of field names")
        if external_id_field not in properties:
            raise SchemaError(f"external_id_field {external_id_field!r} is not a property")
        self.external_id_field = external_id_field
        self.required: frozenset[str] = frozenset(required)
        self._required_order: tuple[str, ...] = tuple(required)
        self.ref_targets: dict[str, str] = {}
        # (name, admitted types or None, wrong-type message, check after the type or None)
        self._fields: list[tuple[str, tuple[type, ...] | None, str, Checker | None]] = []
        for name, node in properties.items():
            path = f"schema.properties.{name}"
            target = ref_target(node, path)
            if target is not None:
                self.ref_targets[name] = target
            check = compile_node(node, path, assert_formats)
            plain = scalar(node, path, assert_formats)
            if plain is None:
                self._fields.append((name, None, "", check))
            else:
                self._fields.append((name, plain.types, plain.type_message, plain.rest))
        self._names = frozenset(properties)
        extra = json_schema.get("additionalProperties", False)
        self._extra: Checker | None = None
        if extra is True:
            self._extra = accept
        elif isinstance(extra, dict):
            self._extra = compile_node(extra, "schema.additionalProperties", assert_formats)

    def validate(
        self, record: Any, index: int, ignore_unknown: bool
    ) -> tuple[dict[str, Any] | None, list[FieldError]]:
        """The record as it should be stored (unknown fields dropped if asked), or its errors."""
        if type(record) is not dict:
            return None, [FieldError(index, None, None, "a record must be a JSON object")]
        ext = record.get(self.external_id_field)
        ext_id = ext if type(ext) is str and ext else None
        errors: list[FieldError] = []
        if ext_id is None:
            errors.append(
                FieldError(
                    index,
                    None,
                    self.external_id_field,
                    "must be a non-empty string (the record's external id)",
                )
            )
        present = self._check_fields(record, index, ext_id, errors)
        unknown: list[str] = []
        if present != len(record):
            unknown = [key for key in record if key not in self._names]
            errors.extend(self._unknown(record, unknown, index, ext_id, ignore_unknown))
        if errors:
            return None, errors
        if unknown and self._extra is None:
            return {k: v for k, v in record.items() if k not in unknown}, []
        return record, []

    def _check_fields(
        self, record: dict[str, Any], index: int, ext_id: str | None, errors: list[FieldError]
    ) -> int:
        """Check the fields the schema names; returns how many of them the record has.

        Known fields are looked up rather than the record iterated: most properties are plain
        scalars checked here inline, without a call per value.
        """
        present = 0
        required = self.required
        for name, types, type_message, check in self._fields:
            value = record.get(name, _MISSING)
            if value is _MISSING:
                continue
            present += 1
            if value is None:
                if name in required:
                    errors.append(
                        FieldError(index, ext_id, name, "is required and cannot be null or deleted")
                    )
                continue
            if types is not None and type(value) not in types:
                errors.append(FieldError(index, ext_id, name, type_message))
                continue
            message = None if check is None else check(value)
            if message is not None:
                errors.append(FieldError(index, ext_id, name, message))
        return present

    def _unknown(
        self,
        record: dict[str, Any],
        unknown: list[str],
        index: int,
        ext_id: str | None,
        ignore_unknown: bool,
    ) -> list[FieldError]:
        """Fields the schema does not name: checked by ``additionalProperties`` if it allows
        them, else errors, or nothing when they are to be dropped."""
        extra = self._extra
        if extra is not None:
            found = ((key, extra(record[key])) for key in unknown if record[key] is not None)
            return [FieldError(index, ext_id, key, message) for key, message in found if message]
        if ignore_unknown:
            return []
        return [
            FieldError(index, ext_id, key, "field is not defined by the schema") for key in unknown
        ]

    def missing_required(self, state: Mapping[str, Any]) -> str | None:
        """The first required field a merged state lacks (a create that omitted it)."""
        for name in self._required_order:
            if name not in state:
                return name
        return None
