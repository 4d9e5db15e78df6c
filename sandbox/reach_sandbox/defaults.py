"""Reach's default schema definitions (docs/reach-api.md §4.1-§4.3), as the sandbox seeds them.

Field names and types are the documented ones. What the docs leave open is filled in as §7 Q15
says and marked here: the required lists, the formats, and ``customerId``/``locationId`` of a
transaction being ``$ref`` links (§4.2 [INF]). Order matters: a schema's ``$ref`` targets are
seeded before it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_SCHEMAS", "DefaultSchema"]

DefaultSchema = dict[str, Any]

_DRAFT_07 = "http://json-schema.org/draft-07/schema#"

_CUSTOMERS: DefaultSchema = {
    "name": "customers",
    "plural_name": "customers",
    "description": "Default contacts schema: the partner's customers",
    "category": "contacts_schema",
    "external_id_field": "customerId",
    "schema": {
        "$schema": _DRAFT_07,
        "type": "object",
        # The custom-schema example in the docs requires only the external id field.
        "required": ["customerId"],
        "properties": {
            "customerId": {"type": "string", "minLength": 1, "x-pii-type": "EXTERNAL_ID"},
            "email": {"type": "string", "format": "email", "x-pii-type": "EMAIL"},
            "phone": {"type": "string", "x-pii-type": "PHONE"},
            "firstName": {"type": "string", "x-pii-type": "FIRST_NAME"},
            "lastName": {"type": "string", "x-pii-type": "LAST_NAME"},
            "customerDetailUrl": {"type": "string", "format": "uri"},
            "emailOptOut": {"type": "boolean"},
            "smsOptOut": {"type": "boolean"},
            "createdAt": {"type": "string", "format": "date-time"},
        },
    },
}

_LOCATIONS: DefaultSchema = {
    "name": "locations",
    "plural_name": "locations",
    "description": "Default locations schema: the business's places of trade",
    "category": "locations_schema",
    "external_id_field": "locationId",
    "schema": {
        "$schema": _DRAFT_07,
        "type": "object",
        # Fields not retrieved from the docs; these follow the location mapping slots (§3.9).
        "required": ["locationId", "name"],
        "properties": {
            "locationId": {"type": "string", "minLength": 1, "x-pii-type": "EXTERNAL_ID"},
            "name": {"type": "string", "minLength": 1},
            "addressLine1": {"type": "string"},
            "addressLine2": {"type": "string"},
            "addressLine3": {"type": "string"},
            "locality": {"type": "string"},
            "district": {"type": "string"},
            "postalCode": {"type": "string"},
            "countryCode": {"type": "string", "pattern": "^[A-Z]{2}$"},
            "phone": {"type": "string"},
            "email": {"type": "string", "format": "email"},
            "website": {"type": "string", "format": "uri"},
        },
    },
}

_TRANSACTIONS: DefaultSchema = {
    "name": "transactions",
    "plural_name": "transactions",
    "description": "Default transactions schema: purchases attributed to customers",
    "category": "transactions_schema",
    "external_id_field": "transactionId",
    "schema": {
        "$schema": _DRAFT_07,
        "type": "object",
        # Attribution needs the amount and the date (§6 Phase 3), so the sandbox requires them.
        "required": ["transactionId", "transactionDate", "transactionTotal"],
        "properties": {
            "transactionId": {"type": "string", "minLength": 1, "x-pii-type": "EXTERNAL_ID"},
            "customerId": {"$ref": "reach:schemas/customers"},
            "locationId": {"$ref": "reach:schemas/locations"},
            "transactionDetailUrl": {"type": "string", "format": "uri"},
            "transactionDate": {"type": "string", "format": "date-time"},
            "transactionTotal": {"type": "number"},
        },
    },
}

DEFAULT_SCHEMAS: tuple[DefaultSchema, ...] = (_CUSTOMERS, _LOCATIONS, _TRANSACTIONS)
