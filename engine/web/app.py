"""The HTTP application: REST API under /api, server-rendered pages, /health, /ready, /metrics.

Deny by default: every route declares the permission it needs (`Need`, engine/web/auth.py); only
the routes in OPEN do without — liveness, readiness, the sign-in pages, static files, the published
OpenAPI description, and model callbacks (accepted only with the secret token their job's upload
carried). tests/web/test_access_matrix.py calls every route as every role."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from engine import __version__
from engine.runtime.context import Context
from engine.runtime.engine import Engine
from engine.runtime.serve import model_callback, ready
from engine.web import (
    account,
    audit,
    breakglass,
    channels,
    compliance,
    deadletters,
    keys,
    login,
    messages,
    metrics,
    models,
    oidc,
    studies,
    users,
    worklist,
)
from engine.web.auth import Forbidden, NotSignedIn
from engine.web.headers import SecurityHeaders
from engine.web.pages import HERE, render, wants_html
from engine.web.site import Site

MAX_CALLBACK_BYTES = 16 * 1024 * 1024
# (method, path) served without a Need; everything else must declare one (a test enforces it).
OPEN = {
    ("GET", "/health"), ("GET", "/ready"), ("GET", "/login"), ("POST", "/login"), ("GET", "/login/oidc"),
    ("GET", "/login/oidc/callback"), ("GET", "/api/openapi.json"), ("POST", "/inference/callbacks/{job_id}"),
}  # fmt: skip
ROUTERS = [login.router, account.router]
ROUTERS += [oidc.router, metrics.router]
ROUTERS += [channels.router, messages.router, deadletters.router]
ROUTERS += [audit.router, keys.router, users.router, breakglass.router, compliance.router]
ROUTERS += [worklist.router, studies.router, models.router]


def create_app(site: Site) -> FastAPI:
    app = FastAPI(
        title="radbridge", version=__version__, docs_url=None, redoc_url=None, openapi_url="/api/openapi.json",
        description="The radbridge engine's REST API. Every endpoint needs a bearer token or a session; "
        "see docs/access.md for which role may call which.",
    )  # fmt: skip
    app.state.site = site
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for router in ROUTERS:
        app.include_router(router)

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        if wants_html(request) and request.method == "GET":
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return JSONResponse({"error": "sign in or send a bearer token", "reason": exc.reason}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="radbridge"'})  # fmt: skip

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        if wants_html(request):
            return render(request, "denied.html", status_code=403, message=str(exc))
        return JSONResponse({"error": str(exc)}, status_code=403)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # Say which field and why, never echo the value (it may be an identifier).
        problems = [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "problems": problems}, status_code=422)

    @app.get("/health", tags=["operations"])
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/ready", tags=["operations"])
    def readiness() -> JSONResponse:
        ok, checks = site.ready()
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    @app.post("/inference/callbacks/{job_id}", include_in_schema=False)
    async def model_callback(job_id: str, request: Request) -> Response:
        token = request.headers.get("x-radbridge-callback-token", "")
        if site.callback is None or not token:
            return JSONResponse({"error": "no such job awaits a result"}, status_code=404)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_CALLBACK_BYTES:
                return JSONResponse({"error": "result too large"}, status_code=413)
        status = site.callback(job_id, bytes(body), token)
        text = {200: "accepted", 404: "no such job awaits a result", 422: "not a valid result"}.get(status, "error")
        return JSONResponse({"status" if status == 200 else "error": text}, status_code=status)

    return app


def for_engine(ctx: Context, engine: Engine) -> FastAPI:
    """The application `radbridge run` serves on its listeners."""
    return create_app(Site.open(ctx, lambda: ready(ctx), engine=engine, callback=model_callback))
