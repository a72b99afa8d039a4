"""The one error hierarchy every layer raises.

Services raise these; ``firebox.http.errors`` renders them, in one place, as
``{"error": {"message", "type", "code", "param", "status"}}`` — the shape
OpenAI clients parse — on every route. Nothing else builds error JSON.
"""

from __future__ import annotations


class FireboxError(Exception):
    """Base of all errors a user can see. Subclasses fix the HTTP status."""

    http_status: int = 500
    status: str = "INTERNAL"  # Google canonical code, as Fireworks reports it
    error_type: str = "internal_error"
    default_code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.headers = headers or {}


class InvalidArgument(FireboxError):
    """The request is malformed or names an impossible value."""

    http_status = 400
    status = "INVALID_ARGUMENT"
    error_type = "invalid_request_error"
    default_code = "invalid_argument"


class FailedPrecondition(FireboxError):
    """The request is well formed but the resource's state forbids it."""

    http_status = 400
    status = "FAILED_PRECONDITION"
    error_type = "invalid_request_error"
    default_code = "failed_precondition"


class Unauthenticated(FireboxError):
    """No valid API key was presented."""

    http_status = 401
    status = "UNAUTHENTICATED"
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PaymentRequired(FireboxError):
    """The account may not spend (suspended, limit reached)."""

    http_status = 402
    status = "FAILED_PRECONDITION"
    error_type = "billing_error"
    default_code = "payment_required"


class PermissionDenied(FireboxError):
    """The caller is known but its role or plan does not allow the action."""

    http_status = 403
    status = "PERMISSION_DENIED"
    error_type = "permission_error"
    default_code = "permission_denied"


class NotFound(FireboxError):
    """The resource does not exist, or the caller may not know that it does."""

    http_status = 404
    status = "NOT_FOUND"
    error_type = "not_found_error"
    default_code = "not_found"


class AlreadyExists(FireboxError):
    """A resource with this name exists already."""

    http_status = 409
    status = "ALREADY_EXISTS"
    error_type = "conflict_error"
    default_code = "already_exists"


class Aborted(FireboxError):
    """A concurrent request changed or deleted the resource first; read it again and retry."""

    http_status = 409
    status = "ABORTED"
    error_type = "conflict_error"
    default_code = "concurrent_modification"


class PayloadTooLarge(FireboxError):
    """The request body is larger than the configured cap."""

    http_status = 413
    status = "INVALID_ARGUMENT"
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimited(FireboxError):
    """Too many requests; ``Retry-After`` says when to come back."""

    http_status = 429
    status = "RESOURCE_EXHAUSTED"
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServiceUnavailable(FireboxError):
    """A dependency (database, engine) is not reachable right now."""

    http_status = 503
    status = "UNAVAILABLE"
    error_type = "service_unavailable"
    default_code = "service_unavailable"
