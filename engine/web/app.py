"""The HTTP application. Deny by default: only liveness and readiness are open."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from engine import __version__


def create_app(ready: Callable[[], tuple[bool, dict[str, str]]]) -> FastAPI:
    """`ready` reports whether the engine can accept work, with a reason per failed check."""
    app = FastAPI(title="radbridge", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/ready")
    def readiness() -> JSONResponse:
        ok, checks = ready()
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    return app
