"""The server's errors and limits: OpenAI-shaped error bodies, `{"error": {"message", "type", "param",
"code"}}`, whose messages are written here (exception text never reaches a client; it is logged), and
the middleware that refuses request bodies over the limit while reading them."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lwm import media
from lwm.api import ContextLengthError
from lwm.tokenizers import InvalidTextError, SequenceTooLongError

logger = logging.getLogger("lwm.serve")


class APIError(Exception):
    """An error for the client: its message is shown as is, so it never holds exception text."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def client_error(error: Exception) -> APIError:
    """What the client is told of an error a job raised: its own message only for what it can fix."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, ContextLengthError):
        return APIError(400, str(error), code="context_length_exceeded", param="messages")
    if isinstance(error, InvalidTextError):
        return APIError(400, "the text is not valid Unicode: it holds a lone surrogate (such as \\ud800); send UTF-8 "
                             "text", code="invalid_text")
    if isinstance(error, SequenceTooLongError):
        return APIError(400, "the request does not fit in the model's context", code="context_length_exceeded",
                        param="messages")
    if isinstance(error, (ValueError, media.MediaError)):
        logger.info("refused a request: %s", error)
        return APIError(400, "the request could not be processed: invalid input", code="invalid_request")
    logger.error("a request failed", exc_info=error)
    return APIError(500, "internal server error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI-shaped bodies for every error a request can meet, exception text never included."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return JSONResponse(error_body(error.status, error.message, error.code, error.param), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        problems = error.errors()
        if any(problem.get("type") == "json_invalid" for problem in problems):
            return JSONResponse(error_body(400, "the request body is not valid JSON", "invalid_json"), status_code=400)
        first = problems[0] if problems else {}
        location = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        message = f"invalid request: {location}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(400, message, "invalid_request", location), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        messages = {404: "no such route", 405: "method not allowed for this route"}
        message = messages.get(error.status_code, "the request could not be served")
        return JSONResponse(error_body(error.status_code, message), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        logger.error("unhandled error", exc_info=error)
        return JSONResponse(error_body(500, "internal server error", "internal_error"), status_code=500)


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413, counting while reading (Content-Length or not)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        message = f"the request body is larger than this server's limit of {self.max_bytes} bytes"
        response = JSONResponse(error_body(413, message, "body_too_large"), status_code=413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive():
    return {"type": "http.disconnect"}
