"""Errors a request can be refused with, in the reference API's shape.

Raised by model functions shared by the API and the CLI; each carries the HTTP status, the
type and the message the reference uses, and `body()` renders the API's error object.
"""

from __future__ import annotations

from typing import Any

NOT_FOUND = "Sorry, we couldn’t find the resource you’re looking for."


class ApiError(Exception):
    status = 400
    type = "InvalidRequest"

    def __init__(self, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "type": self.type, "message": self.message,
                          "details": self.details}}


class BadRequest(ApiError):
    """The request does not match the API's description (400)."""

    type = "BadRequest"


class InvalidRequest(ApiError):
    """The request cannot be carried out as asked (400); the message says why."""


class ValidationFailed(ApiError):
    """Named fields are invalid (400); `details` maps each field to what is wrong with it."""

    def __init__(self, details: dict[str, str]) -> None:
        super().__init__(f"Validation failed for following fields: {', '.join(details)}",
                         details)


class ResourceNotFound(ApiError):
    status = 404
    type = "ResourceNotFound"

    def __init__(self, message: str = NOT_FOUND) -> None:
        super().__init__(message)


class InvalidLocation(ApiError):
    status = 404
    type = "InvalidLocation"

    def __init__(self, available: list[str]) -> None:
        super().__init__(
            "Validation failed for following path components: location",
            {"location": "Given location is not a valid location. Available locations: "
                         + ", ".join(available)})


class MissingCredentials(ApiError):
    status = 401
    type = "MissingCredentials"

    def __init__(self) -> None:
        super().__init__("must include personal access token in Authorization header")


class InvalidCredentials(ApiError):
    """Unknown, revoked or mismatched token; the body says no more than that."""

    status = 401
    type = "InvalidCredentials"

    def __init__(self) -> None:
        super().__init__("invalid personal access token provided in Authorization header")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": 401, "type": self.type, "message": self.message}}
