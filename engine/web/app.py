"""The HTTP application. Deny by default: only liveness, readiness and model callbacks are open; a
callback is accepted only with the secret token its job's upload carried."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from engine import __version__

# A model server's late result: (job id, body, token) -> HTTP status (200 taken, 404 no such job
# awaits it or wrong token, 422 not a valid result).
Callback = Callable[[str, bytes, str], int]
MAX_CALLBACK_BYTES = 16 * 1024 * 1024


def create_app(ready: Callable[[], tuple[bool, dict[str, str]]], callback: Callback | None = None) -> FastAPI:
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

    @app.post("/inference/callbacks/{job_id}")
    async def model_callback(job_id: str, request: Request) -> Response:
        token = request.headers.get("x-radbridge-callback-token", "")
        if callback is None or not token:
            return JSONResponse({"error": "no such job awaits a result"}, status_code=404)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_CALLBACK_BYTES:
                return JSONResponse({"error": "result too large"}, status_code=413)
        status = callback(job_id, bytes(body), token)
        text = {200: "accepted", 404: "no such job awaits a result", 422: "not a valid result"}.get(status, "error")
        return JSONResponse({"status" if status == 200 else "error": text}, status_code=status)

    return app
