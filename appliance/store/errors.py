"""The one error hierarchy. Each class maps to an envelope code and an HTTP status (see docs/api.md).

Raise these anywhere (services, importers, routes); the app's exception handlers turn them
into `{"status":"error","error":{"code":..., "message":...}}`.
"""

from __future__ import annotations


class AppError(Exception):
    code = "INTERNAL"
    status_code = 500

    def __init__(self, message: str, retry_after_s: int | None = None):
        # Messages quote user input (file names, JSON values): keep them valid UTF-8 for the envelope.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s  # sent as `Retry-After` (a busy or stopping server)


class NotFound(AppError):
    code = "NOT_FOUND"
    status_code = 404


class ValidationFailed(AppError):
    code = "VALIDATION_ERROR"
    status_code = 422


class InvalidDataset(AppError):
    code = "INVALID_DATASET"
    status_code = 400


class Conflict(AppError):
    code = "CONFLICT"
    status_code = 409


class PayloadTooLarge(AppError):
    code = "PAYLOAD_TOO_LARGE"
    status_code = 413


class ForbiddenPath(AppError):
    code = "FORBIDDEN_PATH"
    status_code = 403


class Unauthorized(AppError):
    code = "UNAUTHORIZED"
    status_code = 401


class Unavailable(AppError):
    code = "UNAVAILABLE"
    status_code = 503


class TooManyRequests(AppError):
    code = "TOO_MANY_REQUESTS"
    status_code = 429


class InsufficientStorage(AppError):
    code = "INSUFFICIENT_STORAGE"
    status_code = 507


class DatabaseTooNew(AppError):
    """The database's schema was written by a newer AI Studio: this one refuses to start on it."""

    code = "DATABASE_TOO_NEW"
    status_code = 503
