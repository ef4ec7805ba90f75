"""One error shape for every failure: OpenAI's `{"error": {"message", "type", "param", "code"}}`.

Services raise typed failures (`server/failures.py`), the model layer its own (`experts.errors`); this
module is the one place that turns them into HTTP status codes and error types. `APIError` itself is
raised only where the HTTP shape is the point (authentication in `server/api/deps.py`).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from experts.errors import (
    AdapterRejected,
    AdapterUnavailable,
    ConstraintRejected,
    DocumentsRejected,
    EncoderRejected,
    EngineUnavailable,
    ExpertError,
    ExpertExists,
    ExpertGone,
    ExpertNotFound,
    ManifestError,
    MixtureRejected,
    PromptTooLong,
    RegistryMoved,
    RowFailed,
    SamplingRejected,
    TemplateRejected,
    UploadExists,
)
from server.failures import Conflict, InvalidRequest, NotFound, Overloaded, RequestFailure, TimedOut, Unavailable
from server.protocol import UNSUPPORTED_PARAMETER

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error raised by the HTTP layer itself, already carrying its status and OpenAI error fields."""

    def __init__(
        self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(error: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = error_body(error.message, error.type, error.code, error.param)
    return JSONResponse(body, status_code=error.status, headers=headers or error.headers)


_EXPERT_ERRORS: dict[type[ExpertError], tuple[int, str, str]] = {
    ExpertNotFound: (404, "not_found_error", "expert_not_found"),
    ExpertGone: (404, "not_found_error", "expert_not_found"),
    ExpertExists: (409, "conflict_error", "expert_exists"),
    AdapterRejected: (400, "invalid_request_error", "adapter_rejected"),
    DocumentsRejected: (400, "invalid_request_error", "invalid_documents"),
    EncoderRejected: (400, "invalid_request_error", "encoder_rejected"),
    PromptTooLong: (400, "invalid_request_error", "context_length_exceeded"),
    TemplateRejected: (400, "invalid_request_error", "invalid_messages"),
    SamplingRejected: (400, "invalid_request_error", "invalid_logit_bias"),
    ConstraintRejected: (400, "invalid_request_error", "invalid_response_format"),
    MixtureRejected: (400, "invalid_request_error", "invalid_mixture"),
    ManifestError: (503, "server_error", "storage_unavailable"),
    AdapterUnavailable: (503, "server_error", "expert_failed"),
    UploadExists: (409, "conflict_error", "upload_exists"),
    RegistryMoved: (409, "conflict_error", "registry_moved"),
    RowFailed: (500, "server_error", "generation_failed"),
    EngineUnavailable: (503, "server_error", "engine_unavailable"),
}


_FAILURES: dict[type[RequestFailure], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request_error"),
    NotFound: (404, "not_found_error"),
    Conflict: (409, "conflict_error"),
    Overloaded: (429, "rate_limit_error"),
    Unavailable: (503, "server_error"),
    TimedOut: (504, "server_error"),
}


def to_api_error(exc: Exception, unexpected: str = "internal server error") -> APIError:
    """Any exception as the error a client sees: typed failures with their status, anything unexpected
    logged and answered as a generic 500 (its text may hold internals)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestFailure):
        status, type_ = next(_FAILURES[cls] for cls in type(exc).__mro__ if cls in _FAILURES)
        return APIError(status, exc.message, type_, exc.code, exc.param, exc.headers)
    if isinstance(exc, ExpertError):
        for cls in type(exc).__mro__:
            if cls in _EXPERT_ERRORS:
                status, type_, code = _EXPERT_ERRORS[cls]
                return APIError(status, str(exc), type_, code)
        return APIError(500, str(exc), "server_error")
    log.error("unhandled error: %s", unexpected, exc_info=exc)
    return APIError(500, unexpected, "server_error", "internal_error")


def error_event(exc: Exception) -> str:
    """An SSE event in OpenAI's error shape, for a failure after a stream started (the official client
    raises it as an APIError)."""
    error = to_api_error(exc, unexpected="generation failed mid-stream")
    return f"data: {json.dumps(error_body(error.message, error.type, error.code, error.param))}\n\n"


def _describe_validation(errors: list) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    location = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(location) or None
    message = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in errors[:5]
    )
    return message or "invalid request body", param


def _validation_error(errors: list) -> APIError:
    """400 naming the first bad field; a parameter this server does not implement (or does not know) gets
    the code `unsupported_parameter`, so a client can tell "not here" from "malformed"."""
    message, param = _describe_validation(errors)
    kind = errors[0].get("type") if errors else None
    code = UNSUPPORTED_PARAMETER if kind in (UNSUPPORTED_PARAMETER, "extra_forbidden") else "invalid_request"
    return APIError(400, message, "invalid_request_error", code, param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestFailure)
    @app.exception_handler(ExpertError)
    async def _typed_failure(_: Request, exc: Exception) -> JSONResponse:
        return error_response(to_api_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(list(exc.errors())))

    @app.exception_handler(ValidationError)
    async def _model_invalid(_: Request, exc: ValidationError) -> JSONResponse:
        return error_response(_validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, str(exc.detail), type_), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(to_api_error(exc))
