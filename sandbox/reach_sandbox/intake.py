"""From a batch request body to the operations the worker applies.

Shared by the batch routes and by start-up recovery (which re-reads the stored bodies of batches a
previous run accepted but never finished), so both turn a body into the same records. In ``sync``
validation mode every record is checked here and any invalid one fails the whole request
(docs/reach-api.md §7 Q6); in ``async`` mode only the shape needed to name a record (an object with
its external id) is checked here, and the rest is reported per record in the batch status.
"""

from __future__ import annotations

from typing import Any

from reach_sandbox.engine import Op, OpKind
from reach_sandbox.http import ApiError
from reach_sandbox.registry import SchemaDef
from reach_sandbox.validation import FieldError

__all__ = ["batch_records", "delete_body", "records_to_ops"]


def batch_records(body: Any, limit: int) -> list[Any]:
    """The ``resources`` array of an upload or patch body, within the per-request limit."""
    if not isinstance(body, dict) or "resources" not in body:
        raise ApiError(400, 'body must be an object with a "resources" array')
    extra = sorted(set(body) - {"resources"})
    if extra:
        raise ApiError(400, f"unknown body fields: {', '.join(extra)}")
    records = body["resources"]
    if not isinstance(records, list):
        raise ApiError(400, '"resources" must be an array')
    if len(records) > limit:
        raise ApiError(400, f"too many resources: {len(records)} (at most {limit} per request)")
    return records


def records_to_ops(
    records: list[Any], schema: SchemaDef, kind: OpKind, ignore_unknown: bool, validate: bool
) -> tuple[list[Op], list[FieldError]]:
    """Ops for valid records; with any errors the caller refuses the request as a whole."""
    ops: list[Op] = []
    errors: list[FieldError] = []
    validator = schema.validator
    id_field = validator.external_id_field
    for index, record in enumerate(records):
        if validate:
            cleaned, found = validator.validate(record, index, ignore_unknown)
            if cleaned is None:
                errors.extend(found)
                continue
            ops.append(Op(index, cleaned[id_field], kind, cleaned))
            continue
        ext = record.get(id_field) if isinstance(record, dict) else None
        if type(ext) is not str or not ext:
            errors.append(
                FieldError(
                    index,
                    None,
                    id_field,
                    "a record must be an object with its external id as a non-empty string",
                )
            )
            continue
        ops.append(Op(index, ext, kind, record))
    return ops, errors


def delete_body(body: Any, limit: int) -> tuple[list[str] | None, bool, bool]:
    """(external ids or None for deleteAll, cascade, dryRun) from a batch delete body."""
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    extra = sorted(set(body) - {"externalIds", "cascade", "deleteAll", "dryRun"})
    if extra:
        raise ApiError(400, f"unknown body fields: {', '.join(extra)}")
    ids = body.get("externalIds", [])
    flags = {name: body.get(name, False) for name in ("cascade", "deleteAll", "dryRun")}
    for name, value in flags.items():
        if type(value) is not bool:
            raise ApiError(400, f"{name} must be a boolean")
    if not isinstance(ids, list) or not all(type(i) is str and i for i in ids):
        raise ApiError(400, "externalIds must be an array of non-empty strings")
    if len(ids) > limit:
        raise ApiError(400, f"too many externalIds: {len(ids)} (at most {limit} per request)")
    if flags["deleteAll"]:
        if ids:
            raise ApiError(400, "externalIds must be empty when deleteAll is true")
        return None, flags["cascade"], flags["dryRun"]
    if not ids:
        raise ApiError(400, "externalIds must not be empty unless deleteAll is true")
    return ids, flags["cascade"], flags["dryRun"]
