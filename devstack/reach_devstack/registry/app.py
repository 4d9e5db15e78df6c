"""The registry double's HTTP side: Confluent Schema Registry's REST API, the part clients use.

Clients are the ones the project meets: Confluent's ``AvroConverter`` 7.0 (in Debezium) and
``confluent_kafka.schema_registry.SchemaRegistryClient`` (in reach-sync). The routes, status
codes and ``{"error_code", "message"}`` bodies are Confluent's, and so is the strictness a real
registry shows a careless client: request bodies must be JSON of a Schema Registry content type
(415 otherwise), an ``Accept`` it cannot meet is 406, an unknown field in a schema request is 400
unless the client sends ``Confluent-Accept-Unknown-Properties: true``, schemas must be Avro
(42201), unknown paths are 404 and wrong methods 405. Query parameters a real registry accepts
and this double has no use for (``format``, ``subject`` on ``/schemas/ids``, ``normalize``,
``referenceFormat``...) are accepted and ignored, as Confluent ignores those it does not know.

Besides the API: ``GET /_admin/health`` (readiness) and ``GET /_admin/requests`` (how many
requests each route served, for tests that count registrations or lookups).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reach_devstack.registry.store import (
    AVRO,
    RegistryError,
    SchemaStore,
    SubjectVersion,
    check_subject,
)

__all__ = ["CONTENT_TYPE", "build_app"]

_log = logging.getLogger("reach_devstack.registry")

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_DEFAULT_JSON = "application/vnd.schemaregistry+json"
_JSON = "application/json"
# What the registry reads (Confluent's @Consumes; octet-stream is Jersey's "no type given").
_CONSUMES = (CONTENT_TYPE, _DEFAULT_JSON, _JSON, "application/octet-stream")
# What it writes, in its order of preference (Confluent's @Produces weights).
_PRODUCES = (CONTENT_TYPE, _DEFAULT_JSON, _JSON)
# The fields of Confluent's RegisterSchemaRequest; another one is refused unless the client says
# it accepts unknown properties (the Python client does, the Java 7.0 client sends none).
_REQUEST_FIELDS = frozenset(
    ("schema", "schemaType", "references", "metadata", "ruleSet", "version", "id")
)
# The fields of its ConfigUpdateRequest; only the compatibility level is kept, the others are
# accepted and not stored.
_CONFIG_FIELDS = frozenset(
    (
        "compatibility",
        "compatibilityGroup",
        "normalize",
        "alias",
        "defaultMetadata",
        "overrideMetadata",
        "defaultRuleSet",
        "overrideRuleSet",
        "validateFields",
        "validateRules",
    )
)
# Schemas are small; a body past this is refused before it is parsed (Confluent: 42209).
MAX_BODY_BYTES = 8 * 1024 * 1024


class _Answer(Response):
    """A JSON body as Jackson writes it (compact), in the media type the client accepts."""

    def __init__(
        self, content: Any, status_code: int = 200, media_type: str = CONTENT_TYPE
    ) -> None:
        super().__init__(
            json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode(),
            status_code=status_code,
            media_type=media_type,
        )


def _error(status: int, error_code: int, message: str, media_type: str = CONTENT_TYPE) -> Response:
    return _Answer({"error_code": error_code, "message": message}, status, media_type)


def _accepted_type(request: Request) -> str:
    """The response media type for this ``Accept``; RegistryError 406 when none will do."""
    accept = request.headers.get("accept", "").strip()
    if not accept:
        return CONTENT_TYPE
    offered = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    if offered & {"*/*", "application/*"}:
        return CONTENT_TYPE
    for media_type in _PRODUCES:
        if media_type in offered:
            return media_type
    raise RegistryError(406, 406, "HTTP 406 Not Acceptable")


def _flag(request: Request, name: str) -> bool:
    """A boolean query parameter as JAX-RS reads it: "true" in any case; anything else false
    (the Python client writes ``normalize=False``, the Java one ``true``)."""
    return request.query_params.get(name, "").lower() == "true"


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        # JAX-RS cannot convert the parameter: the resource is not found.
        raise RegistryError(404, 404, "HTTP 404 Not Found") from None


def _page(items: list[Any], request: Request) -> list[Any]:
    """``offset`` and ``limit`` (negative: no limit), as the clients send them."""
    offset = max(0, _int_param(request, "offset", 0))
    limit = _int_param(request, "limit", -1)
    return items[offset:] if limit < 0 else items[offset : offset + limit]


async def _body(request: Request, fields: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object: 415 for another content type, 400 for what is not JSON, an
    object, or one with an unknown field (unless unknown properties are accepted)."""
    content_type = request.headers.get("content-type", "application/octet-stream")
    if content_type.split(";", 1)[0].strip().lower() not in _CONSUMES:
        raise RegistryError(415, 415, "HTTP 415 Unsupported Media Type")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise RegistryError(422, 42209, "Register operation failed because schema is too large")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(400, 400, str(exc)) from None
    if not isinstance(body, dict):
        raise RegistryError(400, 400, f"Cannot deserialize a request from {type(body).__name__}")
    accept_unknown = (
        request.headers.get("confluent-accept-unknown-properties", "").lower() == "true"
    )
    unknown = sorted(set(body) - fields)
    if unknown and not accept_unknown:
        raise RegistryError(400, 400, f'Unrecognized field "{unknown[0]}"')
    return body


def _schema_text(body: dict[str, Any]) -> str:
    """The Avro schema text of a register or lookup request; 42201 for anything else."""
    schema_type = body.get("schemaType") or AVRO
    if schema_type != AVRO:
        raise RegistryError(
            422, 42201, f"Invalid schema type {schema_type}: this registry double reads AVRO only"
        )
    if body.get("references"):
        raise RegistryError(
            422, 42201, "Invalid schema: references are not supported by this registry double"
        )
    for name in ("metadata", "ruleSet"):
        if body.get(name) is not None:
            raise RegistryError(
                422, 42201, f"Invalid schema: {name} is not supported by this registry double"
            )
    if body.get("id") is not None or body.get("version") is not None:
        raise RegistryError(
            422,
            42205,
            "Overriding the schema id or version needs IMPORT mode, which this double lacks",
        )
    schema = body.get("schema")
    if not isinstance(schema, str) or not schema.strip():
        raise RegistryError(422, 42201, "Empty schema")
    return schema


class _Api:
    """The routes' handlers over one store; each answers a value (rendered as JSON) or raises
    RegistryError (rendered as Confluent's error body)."""

    def __init__(self, store: SchemaStore) -> None:
        self.store = store
        self.counts: Counter[str] = Counter()

    def route(self, path: str, method: str, handler: Callable[[Request], Awaitable[Any]]) -> Route:
        """Count the request, negotiate the media type, render the answer or the error."""
        label = f"{method} {path.replace(':int', '')}"

        async def endpoint(request: Request) -> Response:
            self.counts[label] += 1
            media_type = CONTENT_TYPE
            try:
                media_type = _accepted_type(request)
                result = await handler(request)
            except RegistryError as exc:
                return _error(exc.status, exc.error_code, exc.message, media_type)
            return _Answer(result, 200, media_type)

        return Route(path, endpoint, methods=[method])

    def described(self, subject: str, v: SubjectVersion) -> dict[str, Any]:
        """A subject's version as Confluent's Schema entity (no schemaType for AVRO)."""
        return {
            "subject": subject,
            "version": v.version,
            "id": v.schema_id,
            "schema": self.store.schema(v.schema_id).schema,
        }

    # -- schemas by id

    async def get_schema(self, request: Request) -> Any:
        stored = self.store.schema(request.path_params["id"])
        answer: dict[str, Any] = {"schema": stored.schema}
        if stored.schema_type != AVRO:
            answer["schemaType"] = stored.schema_type
        if _flag(request, "fetchMaxId"):
            answer["maxId"] = self.store.max_id()
        return answer

    async def get_schema_text(self, request: Request) -> Any:
        return json.loads(self.store.schema(request.path_params["id"]).schema)

    async def get_schema_versions(self, request: Request) -> Any:
        usages = self.store.usages(request.path_params["id"], _flag(request, "deleted"))
        return _page([{"subject": s, "version": v} for s, v in usages], request)

    async def get_schema_subjects(self, request: Request) -> Any:
        usages = self.store.usages(request.path_params["id"], _flag(request, "deleted"))
        return _page(sorted({subject for subject, _ in usages}), request)

    async def get_schema_types(self, _request: Request) -> Any:
        return [AVRO]

    # -- subjects and their versions

    async def list_subjects(self, request: Request) -> Any:
        prefix = request.query_params.get("subjectPrefix", "")
        subjects = self.store.subjects(
            deleted=_flag(request, "deleted"),
            deleted_only=_flag(request, "deleted_only") or _flag(request, "deletedOnly"),
            prefix="" if prefix == ":*:" else prefix,
        )
        return _page(subjects, request)

    async def list_versions(self, request: Request) -> Any:
        versions = self.store.versions(
            request.path_params["subject"],
            deleted=_flag(request, "deleted"),
            deleted_only=_flag(request, "deleted_only") or _flag(request, "deletedOnly"),
        )
        return _page(versions, request)

    async def register(self, request: Request) -> Any:
        body = await _body(request, _REQUEST_FIELDS)
        subject = request.path_params["subject"]
        schema_id = self.store.register(subject, _schema_text(body))
        _log.info("subject %s: schema id %d", subject, schema_id)
        return {"id": schema_id}

    async def lookup(self, request: Request) -> Any:
        body = await _body(request, _REQUEST_FIELDS)
        subject = request.path_params["subject"]
        found = self.store.lookup(subject, _schema_text(body), _flag(request, "deleted"))
        return self.described(subject, found)

    async def get_version(self, request: Request) -> Any:
        subject, version = request.path_params["subject"], request.path_params["version"]
        return self.described(
            subject, self.store.version(subject, version, _flag(request, "deleted"))
        )

    async def get_version_text(self, request: Request) -> Any:
        subject, version = request.path_params["subject"], request.path_params["version"]
        found = self.store.version(subject, version, _flag(request, "deleted"))
        return json.loads(self.store.schema(found.schema_id).schema)

    async def delete_subject(self, request: Request) -> Any:
        return self.store.delete_subject(
            request.path_params["subject"], _flag(request, "permanent")
        )

    async def delete_version(self, request: Request) -> Any:
        return self.store.delete_version(
            request.path_params["subject"],
            request.path_params["version"],
            _flag(request, "permanent"),
        )

    # -- compatibility configuration

    async def get_config(self, _request: Request) -> Any:
        return {"compatibilityLevel": self.store.compatibility()}

    async def put_config(self, request: Request) -> Any:
        body = await _body(request, _CONFIG_FIELDS)
        return {"compatibility": self.store.set_compatibility(body.get("compatibility"))}

    async def delete_config(self, _request: Request) -> Any:
        return {"compatibilityLevel": self.store.delete_compatibility()}

    async def get_subject_config(self, request: Request) -> Any:
        level = self.store.compatibility(
            request.path_params["subject"], default_to_global=_flag(request, "defaultToGlobal")
        )
        return {"compatibilityLevel": level}

    async def put_subject_config(self, request: Request) -> Any:
        body = await _body(request, _CONFIG_FIELDS)
        subject = request.path_params["subject"]
        check_subject(subject)
        return {"compatibility": self.store.set_compatibility(body.get("compatibility"), subject)}

    async def delete_subject_config(self, request: Request) -> Any:
        level = self.store.delete_compatibility(request.path_params["subject"])
        return {"compatibilityLevel": level}

    # -- the root and the admin seam (not Confluent's)

    async def root(self, _request: Request) -> Any:
        return {}

    async def health(self, _request: Request) -> Response:
        return _Answer({"status": "ok"}, media_type=_JSON)

    async def requests(self, _request: Request) -> Response:
        counts = {"total": sum(self.counts.values()), "by_route": dict(self.counts)}
        return _Answer(counts, media_type=_JSON)

    def routes(self) -> list[Route]:
        r = self.route
        return [
            r("/", "GET", self.root),
            r("/schemas/types", "GET", self.get_schema_types),
            r("/schemas/ids/{id:int}", "GET", self.get_schema),
            r("/schemas/ids/{id:int}/schema", "GET", self.get_schema_text),
            r("/schemas/ids/{id:int}/versions", "GET", self.get_schema_versions),
            r("/schemas/ids/{id:int}/subjects", "GET", self.get_schema_subjects),
            r("/subjects", "GET", self.list_subjects),
            r("/subjects/{subject}", "POST", self.lookup),
            r("/subjects/{subject}", "DELETE", self.delete_subject),
            r("/subjects/{subject}/versions", "GET", self.list_versions),
            r("/subjects/{subject}/versions", "POST", self.register),
            r("/subjects/{subject}/versions/{version}", "GET", self.get_version),
            r("/subjects/{subject}/versions/{version}", "DELETE", self.delete_version),
            r("/subjects/{subject}/versions/{version}/schema", "GET", self.get_version_text),
            r("/config", "GET", self.get_config),
            r("/config", "PUT", self.put_config),
            r("/config", "DELETE", self.delete_config),
            r("/config/{subject}", "GET", self.get_subject_config),
            r("/config/{subject}", "PUT", self.put_subject_config),
            r("/config/{subject}", "DELETE", self.delete_subject_config),
            Route("/_admin/health", self.health, methods=["GET"]),
            Route("/_admin/requests", self.requests, methods=["GET"]),
        ]


def build_app(state_file: Path | None = None) -> Starlette:
    """The registry app; with ``state_file`` its schemas survive a restart."""
    api = _Api(SchemaStore(state_file))
    return Starlette(
        routes=api.routes(),
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 in Confluent's shape (Jersey's "HTTP 404 Not Found")."""
    if not isinstance(exc, HTTPException):
        raise exc
    phrase = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, str(exc.detail))
    return _error(exc.status_code, exc.status_code, f"HTTP {exc.status_code} {phrase}")


async def _server_error(request: Request, exc: Exception) -> Response:
    _log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, 50001, "Error in the backend data store")
