"""The Serve replica's FastAPI app and how it answers what goes wrong: every refusal is an OpenAI-shaped JSON error
(`api.ApiError`) with a 4xx status (503 + Retry-After when busy), including unknown routes and bodies FastAPI
itself rejects."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import ApiError

api = FastAPI(title="raytts", description="ChatTTS-compatible speech synthesis on Ray Serve")


@api.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    message = f"{request.method} {request.url.path}: {err.detail}"
    if err.status_code == 404:
        message += "; routes are POST /v1/audio/speech, POST /v1/tts, GET /v1/models, GET /v1/voices, GET /healthz"
    return JSONResponse(ApiError(err.status_code, message).body(), status_code=err.status_code)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    return JSONResponse(ApiError(400, f"{request.url.path}: {err.errors()[:1]}").body(), status_code=400)
