"""The API's one error type and its JSON body `{"error": ..., "code": ...}`."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An error the client should see: HTTP status, machine code and a human text."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.headers)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def validation_error(message: str) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", message)


DATABASE_ERROR_TEXT = "A database error occurred; please retry later"


def database_error() -> ApiError:
    # Deliberately generic: SQL text and connection details must never reach the client.
    return ApiError(500, "DATABASE_ERROR", DATABASE_ERROR_TEXT)
