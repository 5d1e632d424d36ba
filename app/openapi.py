"""The OpenAPI schema, made to say what the API does: which errors each operation can answer,
what each event of the event streams carries, and, only when API_KEY is set, that every
operation but /health needs the key."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from app.auth import API_KEY_HEADER, OPEN_PATHS
from app.routes.common import error_responses
from app.schemas.events import EVENT_DATA_MODELS

SECURITY_SCHEME = "APIKeyHeader"
ERROR_REF = {"$ref": "#/components/schemas/ErrorRead"}


def build_schema(app: FastAPI, *, api_key_required: bool) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    _drop_unreachable_validation_errors(schema)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation["responses"]
            if "requestBody" in operation:
                # JsonBodyGuard's answers, before FastAPI reads the body.
                _add_error_responses(responses, 400, 415)
            if api_key_required and path not in OPEN_PATHS:
                operation["security"] = [{SECURITY_SCHEME: []}]
                _add_error_responses(responses, 401)
            else:
                operation.pop("security", None)
                responses.pop("401", None)
    components = schema.setdefault("components", {})
    _add_event_data_schemas(components.setdefault("schemas", {}))
    if api_key_required:
        components["securitySchemes"] = {
            SECURITY_SCHEME: {
                "type": "apiKey",
                "in": "header",
                "name": API_KEY_HEADER,
                "description": "Needed on every route but /health (this server has API_KEY "
                "set): the key, or a user's token (cj_...), which may also be sent as "
                "`Authorization: Bearer <token>`.",
            }
        }
    else:
        components.pop("securitySchemes", None)
    return schema


def _add_error_responses(responses: dict[str, Any], *codes: int) -> None:
    for code, entry in error_responses(*codes).items():
        if str(code) not in responses:
            responses[str(code)] = {
                "description": entry["description"],
                "content": {"application/json": {"schema": ERROR_REF}},
            }


def _drop_unreachable_validation_errors(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 HTTPValidationError on each route that has parameters and does not
    declare its own 422. This API never sends that body: its 422 is ErrorRead (declared where it
    can happen), and a bad path parameter is a 404. Remove those entries from the schema."""
    default_ref = "#/components/schemas/HTTPValidationError"
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422", {})
            content = response.get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") == default_ref:
                del operation["responses"]["422"]
    if default_ref not in repr(schema.get("paths", {})):
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)


def _add_event_data_schemas(schemas: dict[str, Any]) -> None:
    """The event streams' data models, which their `itemSchema`s name: FastAPI adds only the
    models of JSON bodies to the components."""
    _, definitions = models_json_schema(
        [(model, "serialization") for model in EVENT_DATA_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    for name, definition in definitions.get("$defs", {}).items():
        schemas.setdefault(name, definition)
