"""The sandbox's JSON Schema subset: what it accepts, what it refuses, and the messages."""

from __future__ import annotations

from typing import Any

import pytest
from reach_sandbox.defaults import DEFAULT_SCHEMAS
from reach_sandbox.validation import RecordValidator, SchemaError


def _validator(
    properties: dict[str, Any], required: list[str] | None = None, **top: Any
) -> RecordValidator:
    schema = {
        "type": "object",
        "properties": {"id": {"type": "string"}, **properties},
        "required": ["id", *(required or [])],
        **top,
    }
    return RecordValidator(schema, "id", assert_formats=True)


def _errors(
    validator: RecordValidator, record: Any, ignore_unknown: bool = False
) -> dict[Any, str]:
    cleaned, errors = validator.validate(record, 7, ignore_unknown)
    assert (cleaned is None) == bool(errors)
    assert all(e.index == 7 for e in errors)
    return {e.field: e.message for e in errors}


@pytest.mark.parametrize(
    ("spec", "good", "bad", "message"),
    [
        ({"type": "string"}, "x", 1, "must be a string"),
        ({"type": "number"}, 1.5, True, "must be a number"),
        ({"type": "number"}, 3, "3", "must be a number"),
        ({"type": "integer"}, 3.0, 3.5, "must be an integer"),
        ({"type": "boolean"}, False, 0, "must be a boolean"),
        ({"type": ["string", "integer"]}, 4, 4.5, "must be a string or an integer"),
        ({"type": "string", "minLength": 2}, "ab", "a", "must be at least 2 characters"),
        ({"type": "string", "maxLength": 2}, "ab", "abc", "must be at most 2 characters"),
        (
            {"type": "string", "pattern": "^[A-Z]{2}$"},
            "GB",
            "gb",
            "must match pattern '^[A-Z]{2}$'",
        ),
        (
            {"type": "string", "format": "date-time"},
            "2024-01-31T23:59:59.5+02:00",
            "2024-01-31 noon",
            "must be a valid date-time",
        ),
        (
            {"type": "string", "format": "date-time"},
            "2024-01-31T23:59:59Z",
            "2024-01-31T23:59:59",
            "must be a valid date-time",
        ),
        (  # reach-sync's datetime with microseconds (RFC 3339 allows any number of digits)
            {"type": "string", "format": "date-time"},
            "2024-01-31T23:59:59.123456Z",
            "2024-01-31T23:59:59.Z",
            "must be a valid date-time",
        ),
        ({"type": "string", "format": "date"}, "2024-02-29", "2024-13-01", "must be a valid date"),
        ({"type": "string", "format": "email"}, "a@b.co", "a@b", "must be a valid email"),
        ({"type": "string", "format": "uri"}, "https://x.io/a", "x.io", "must be a valid uri"),
        ({"type": "number", "minimum": 0}, 0, -0.1, "must be at least 0"),
        ({"type": "number", "exclusiveMaximum": 10}, 9.9, 10, "must be less than 10"),
        ({"enum": ["a", 1]}, 1.0, True, "must be one of ['a', 1]"),
        ({"const": "x"}, "x", "y", "must be one of ['x']"),
        (
            {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            ["a"],
            ["a", 2],
            "item 1: must be a string",
        ),
        ({"type": "array", "uniqueItems": True}, [1, "1"], [1, 1.0], "items must be unique"),
        (
            {
                "type": "object",
                "required": ["a"],
                "properties": {"a": {"type": "integer"}},
                "additionalProperties": False,
            },
            {"a": 1},
            {"a": 1, "b": 2},
            "property 'b' is not allowed",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {"a": 1, "z": None},
            {"a": "1"},
            "a: must be an integer",
        ),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "x", 1.5, "does not satisfy anyOf"),
        ({"oneOf": [{"type": "number"}, {"type": "integer"}]}, 1.5, 2, "does not satisfy oneOf"),
        ({"$ref": "reach:schemas/customers"}, "c1", "", "must not be empty (an external id)"),
    ],
)
def test_keywords(spec: dict[str, Any], good: Any, bad: Any, message: str) -> None:
    validator = _validator({"v": spec})
    assert _errors(validator, {"id": "r", "v": good}) == {}
    assert _errors(validator, {"id": "r", "v": bad}) == {"v": message}


def test_null_deletes_optional_fields_but_not_required_ones() -> None:
    validator = _validator({"a": {"type": "string"}, "b": {"type": "string"}}, required=["b"])
    assert _errors(validator, {"id": "r", "a": None}) == {}
    assert _errors(validator, {"id": "r", "b": None}) == {
        "b": "is required and cannot be null or deleted"
    }
    assert validator.missing_required({"id": "r"}) == "b"
    assert validator.missing_required({"id": "r", "b": "x"}) is None


def test_unknown_fields_are_errors_or_dropped() -> None:
    validator = _validator({"a": {"type": "string"}})
    record = {"id": "r", "a": "x", "zz": 1}
    assert _errors(validator, record) == {"zz": "field is not defined by the schema"}
    cleaned, errors = validator.validate(record, 0, ignore_unknown=True)
    assert errors == [] and cleaned == {"id": "r", "a": "x"}
    assert record == {"id": "r", "a": "x", "zz": 1}  # the request's own dict is left alone


def test_additional_properties_at_the_top_level_are_checked_and_kept() -> None:
    validator = _validator({}, additionalProperties={"type": "integer"})
    assert validator.validate({"id": "r", "n": 1}, 0, False) == ({"id": "r", "n": 1}, [])
    assert _errors(validator, {"id": "r", "n": "1"}) == {"n": "must be an integer"}


def test_the_external_id_must_be_a_non_empty_string() -> None:
    validator = _validator({})
    assert _errors(validator, {"id": ""}) == {
        "id": "must be a non-empty string (the record's external id)"
    }
    assert _errors(validator, ["not", "an", "object"]) == {None: "a record must be a JSON object"}


@pytest.mark.parametrize(
    ("schema", "complaint"),
    [
        ({"type": "array"}, "top level must be of type object"),
        ({"properties": {"id": {"type": "string", "if": {}}}}, "keyword 'if' is not supported"),
        ({"properties": {"id": {"type": "strin"}}}, "is not a JSON Schema type"),
        ({"properties": {"id": {"$ref": "#/definitions/x"}}}, "only reach:schemas/"),
        ({"properties": {"id": {"pattern": "("}}}, "not a valid regular expression"),
        ({"properties": {"other": {"type": "string"}}}, "is not a property"),
    ],
)
def test_schemas_it_cannot_enforce_are_refused(schema: dict[str, Any], complaint: str) -> None:
    with pytest.raises(SchemaError, match=complaint):
        RecordValidator(schema, "id", assert_formats=True)


def test_formats_are_annotations_when_not_asserted() -> None:
    schema = {"properties": {"id": {"type": "string"}, "e": {"type": "string", "format": "email"}}}
    validator = RecordValidator(schema, "id", assert_formats=False)
    assert validator.validate({"id": "r", "e": "nope"}, 0, False)[1] == []


def test_the_seeded_schemas_compile_and_name_their_references() -> None:
    compiled = {
        d["name"]: RecordValidator(d["schema"], d["external_id_field"], True)
        for d in DEFAULT_SCHEMAS
    }
    assert compiled["transactions"].ref_targets == {
        "customerId": "customers",
        "locationId": "locations",
    }
    assert compiled["customers"].required == frozenset({"customerId"})
