"""The HTTP API (FastAPI): `create_app()` builds it; bin/api serves it with uvicorn.

Errors always have the reference's shape `{"error": {"code", "type", "message", "details"}}`:
model refusals (lib/errors.py) as raised, unknown routes as 404, database serialization
failures and anything unexpected as 500, never a framework's own format.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException

from lib import config, db, log
from lib.api import images, openapi
from lib.errors import ApiError, BadRequest, ResourceNotFound

logger = log.get_logger(__name__)
TEMPORARY = "There was a temporary error attempting to make this change, please try again."
RETRYABLE = ("40001", "40P01")
UNEXPECTED = "Sorry, we couldn’t process your request because of an unexpected error."


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "type": kind, "message": message,
                                   "details": None}}, status_code=status)


def _methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this path (the router names only the first route's)."""
    methods: set[str] = set()
    for route in (*images.router.routes, *app.router.routes):  # FastAPI wraps included ones
        if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
            methods |= route.methods or set()
    return sorted(methods)


PARENT_ENV = "IMAGECP_API_PARENT"


def create_worker_app() -> FastAPI:
    """The app in one of bin/api's worker processes, which must not outlive the supervisor.

    uvicorn's supervisor stops its workers when it is told to, but a supervisor killed
    outright would leave them serving (and holding database connections) with no parent.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if str(os.getppid()) != os.environ.get(PARENT_ENV):  # it died before prctl took effect
        os._exit(1)
    return create_app()


def create_app(engine: AsyncEngine | None = None, pool_size: int = 10) -> FastAPI:
    """The app; it opens its own engine from DATABASE_URL unless one is given (tests)."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is not None:
            yield
            return
        app.state.engine = db.create_engine(config.load().database_url, pool_size=pool_size,
                                            application_name="api")
        yield
        await app.state.engine.dispose()

    app = FastAPI(title="imagecp", lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.state.engine = engine
    app.include_router(images.router)

    described = json.dumps(openapi.DOCUMENT).encode()

    @app.get("/openapi.json", include_in_schema=False)
    async def document() -> Response:
        return Response(described, media_type="application/json")

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 405:  # a known path: say which methods it has
            refusal = ApiError(f"{request.method} is not allowed here")
            refusal.status, refusal.type = 405, "MethodNotAllowed"
            return JSONResponse(refusal.body(), status_code=405,
                                headers={"Allow": ", ".join(_methods(app, request))})
        # The reference's generic 404 has no `details` (errors raised by handlers do).
        body = ResourceNotFound().body()
        del body["error"]["details"]
        return JSONResponse(body, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError) -> JSONResponse:
        refusal = BadRequest("Validation failed for following fields: request")
        return JSONResponse(refusal.body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Serialization failures and deadlocks: the client may simply try again.
        if isinstance(error, DBAPIError) and getattr(error.orig, "pgcode", None) in RETRYABLE:
            return _error(500, "InternalServerError", TEMPORARY)
        logger.error("api request failed", path=request.url.path, method=request.method,
                     exc_info=error)
        return _error(500, "UnexpectedError", UNEXPECTED)

    return app


__all__ = ["create_app"]
