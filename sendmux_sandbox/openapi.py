"""The small OpenAPI 3.1 document the sandbox serves at GET /sending/api/v1/openapi.json."""

from __future__ import annotations

from typing import Any

from sendmux_dispatch.models.api_limits import MAX_BATCH_MESSAGES, MAX_SUBJECT_CHARS

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: _json(_ref("ErrorResponse"), "Error") for status in statuses}


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["ok", "data", "meta"],
        "properties": {"ok": {"const": True}, "data": data, "meta": _ref("Meta")},
    }


def openapi_document(server_url: str) -> dict[str, Any]:
    address = {
        "type": "object",
        "required": ["email"],
        "additionalProperties": False,
        "properties": {
            "email": {"type": "string", "format": "email", "maxLength": 254},
            "name": {"type": "string", "maxLength": 100},
        },
    }
    message = {
        "type": "object",
        "required": ["from", "to", "subject", "html_body"],
        "properties": {
            "from": _ref("Address"),
            "to": _ref("Address"),
            "subject": {"type": "string", "minLength": 1, "maxLength": MAX_SUBJECT_CHARS},
            "html_body": {"type": "string", "minLength": 1},
            "text_body": {"type": "string"},
            "reply_to": _ref("Address"),
            "return_path": {"type": "string", "format": "email"},
            "cc": {"type": "array", "items": _ref("Address"), "maxItems": 49},
            "bcc": {"type": "array", "items": _ref("Address"), "maxItems": 49},
            "custom_headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "attachments": {"type": "array", "maxItems": 10, "items": {"type": "object"}},
            "delivery_group": {"oneOf": [{"type": "string"}, {"type": "array"}]},
            "idempotency_key": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,255}$"},
        },
    }
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 255},
    }
    send_errors = _errors("400", "401", "403", "409", "413", "422", "429", "500", "503")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sendmux Sending API (sandbox)",
            "version": "1.0.0",
            "description": "A local imitation of the Sendmux Sending API for tests and demos.",
        },
        "servers": [{"url": server_url}],
        "security": [{"BearerAuth": []}],
        "paths": {
            "/emails/send": {
                "post": {
                    "operationId": "sendingSendEmail",
                    "summary": "Send a single email",
                    "parameters": [idempotency],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("EmailSendRequest")}},
                    },
                    "responses": {
                        "200": _json(
                            _envelope(
                                {
                                    "type": "object",
                                    "properties": {
                                        "message_id": {"type": "string"},
                                        "status": {"const": "queued"},
                                    },
                                }
                            ),
                            "Email queued",
                        ),
                        **send_errors,
                    },
                }
            },
            "/emails/send/batch": {
                "post": {
                    "operationId": "sendingSendEmailBatch",
                    "summary": "Send a batch of emails",
                    "parameters": [idempotency],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["messages"],
                                    "properties": {
                                        "messages": {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": MAX_BATCH_MESSAGES,
                                            "items": _ref("EmailSendRequest"),
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_envelope({"type": "object"}), "Batch processed"),
                        **send_errors,
                    },
                }
            },
            "/me": {
                "get": {
                    "operationId": "sendingGetConnection",
                    "summary": "Get Sending connection",
                    "responses": {
                        "200": _json(_envelope({"type": "object"}), "Connection information"),
                        "304": {"description": "Not modified"},
                        **_errors("401", "403", "429"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "sendingGetOpenApiSpec",
                    "summary": "OpenAPI 3.1 specification",
                    "security": [],
                    "responses": {
                        "200": _json({"type": "object"}, "OpenAPI 3.1 document"),
                        "304": {"description": "Not modified"},
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"BearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Address": address,
                "EmailSendRequest": message,
                "Meta": {
                    "type": "object",
                    "required": ["request_id"],
                    "properties": {"request_id": {"type": "string"}},
                },
                "ErrorResponse": {
                    "type": "object",
                    "required": ["ok", "error", "meta"],
                    "properties": {
                        "ok": {"const": False},
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "retryable"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "param": {"type": "string"},
                                "doc_url": {"type": "string"},
                                "retryable": {"type": "boolean"},
                                "errors": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                        "meta": _ref("Meta"),
                    },
                },
            },
        },
    }
