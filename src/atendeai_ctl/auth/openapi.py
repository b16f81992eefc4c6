"""The hand-kept OpenAPI 3 document served at /openapi.json.

Kept by hand (not generated) so it states the contract clients rely on, including every
error status; tests run schemathesis against it, so a drift from the code fails there.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed request body",
        401: "Not authenticated",
        413: "Request body too large",
        429: "Rate limited (see Retry-After and RateLimit-* headers)",
        503: "PostgreSQL or Redis unavailable",
    }
    return {str(s): _json(_ERROR, text[s]) for s in statuses}


_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_PAIR = {"$ref": "#/components/schemas/TokenPair"}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "AtendeAI auth service", "version": "1.0.0"},
    "paths": {
        "/auth/login": {
            "post": {
                "operationId": "login",
                "summary": "Exchange clinic, email and password for a token pair",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Login"}}
                    },
                },
                "responses": {
                    "200": _json(_PAIR, "Logged in"),
                    **_errors(400, 401, 413, 429, 503),
                },
            }
        },
        "/auth/refresh": {
            "post": {
                "operationId": "refresh",
                "summary": "Spend a refresh token for a new pair (rotation, reuse detection)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Refresh"}}
                    },
                },
                "responses": {
                    "200": _json(_PAIR, "New token pair"),
                    **_errors(400, 401, 413, 429, 503),
                },
            }
        },
        "/auth/logout": {
            "post": {
                "operationId": "logout",
                "summary": "Revoke this session, or all of the user's sessions",
                "security": _BEARER,
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Logout"}}
                    },
                },
                "responses": {
                    "204": {"description": "Logged out"},
                    **_errors(400, 401, 413, 429, 503),
                },
            }
        },
        "/auth/me": {
            "get": {
                "operationId": "me",
                "security": _BEARER,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Me"}, "The user and clinic"),
                    **_errors(401, 429, 503),
                },
            }
        },
        "/auth/verify": {
            "get": {
                "operationId": "verify",
                "security": _BEARER,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Claims"}, "Valid token"),
                    **_errors(401, 429, 503),
                },
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "operationId": "jwks",
                "responses": {"200": _json({"$ref": "#/components/schemas/Jwks"}, "Public keys")},
            }
        },
        "/health/live": {
            "get": {
                "operationId": "live",
                "responses": {"200": _json({"$ref": "#/components/schemas/Health"}, "Alive")},
            }
        },
        "/health/ready": {
            "get": {
                "operationId": "ready",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Health"}, "Ready"),
                    "503": _json({"$ref": "#/components/schemas/Health"}, "A dependency is down"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            },
            "Login": {
                "type": "object",
                "required": ["clinic", "email", "password"],
                "properties": {
                    "clinic": {"type": "string", "maxLength": 63},
                    "email": {"type": "string", "maxLength": 254},
                    "password": {"type": "string", "maxLength": 1024},
                },
            },
            "Refresh": {
                "type": "object",
                "required": ["refresh_token"],
                "properties": {"refresh_token": {"type": "string", "maxLength": 512}},
            },
            "Logout": {
                "type": "object",
                "properties": {"scope": {"type": "string", "enum": ["session", "global"]}},
            },
            "TokenPair": {
                "type": "object",
                "required": ["access_token", "refresh_token", "token_type", "expires_in"],
                "properties": {
                    "access_token": {"type": "string"},
                    "refresh_token": {"type": "string"},
                    "token_type": {"type": "string", "enum": ["Bearer"]},
                    "expires_in": {"type": "integer"},
                },
            },
            "Claims": {
                "type": "object",
                "required": ["sub", "clinic_id", "sid", "jti", "iat", "exp", "iss", "aud"],
                "properties": {
                    "sub": {"type": "string"},
                    "clinic_id": {"type": "string"},
                    "sid": {"type": "string"},
                    "jti": {"type": "string"},
                    "role": {"type": "string"},
                    "iat": {"type": "integer"},
                    "exp": {"type": "integer"},
                    "iss": {"type": "string"},
                    "aud": {"type": "string"},
                },
            },
            "Me": {
                "type": "object",
                "required": ["user", "clinic"],
                "properties": {
                    "user": {
                        "type": "object",
                        "required": ["id", "email", "role"],
                        "properties": {
                            "id": {"type": "string"},
                            "email": {"type": "string"},
                            "name": {"type": "string", "nullable": True},
                            "role": {"type": "string"},
                        },
                    },
                    "clinic": {
                        "type": "object",
                        "required": ["id", "slug", "name"],
                        "properties": {
                            "id": {"type": "string"},
                            "slug": {"type": "string"},
                            "name": {"type": "string"},
                        },
                    },
                },
            },
            "Jwks": {
                "type": "object",
                "required": ["keys"],
                "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
            },
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"type": "string"},
                    "down": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
