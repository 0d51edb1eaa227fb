"""Server-rendered pages: one Jinja2 environment (autoescaped), one `render` that gives every
template who is signed in, what they may do (for the navigation), the CSRF token for forms and the
break-glass banner. Pages work without JavaScript; /static/app.js only adds live updates."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from engine import __version__
from engine.security.access import permissions

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

# The navigation: (path, label, permission that shows it). Pages check their own permission again.
NAV = [
    ("/worklist", "Worklist", "worklist.view"),
    ("/studies", "Studies", "studies.view"),
    ("/jobs", "Jobs", "jobs.view"),
    ("/channels", "Channels", "channels.view"),
    ("/messages", "Messages", "messages.view"),
    ("/dead-letters", "Dead letters", "dead_letters.manage"),
    ("/models", "Models", "models.view"),
    ("/audit", "Audit", "audit.view"),
    ("/keys", "Keys", "keys.view"),
    ("/users", "Users", "users.view"),
    ("/break-glass", "Break-glass", "break_glass.review"),
    ("/compliance", "Compliance", "compliance.view"),
]


def when(value: datetime | str | None) -> str:
    """UTC, to the minute; what every page shows for a time."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def ago(value: datetime | None, now: datetime) -> str:
    """'3 min', '2 h 5 min', '4 d': a waiting time."""
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    minutes = max(0, int((now - value).total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // 1440} d"


templates.env.filters["when"] = when


def render(request: Request, name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    site = request.app.state.site
    now = site.clock()
    who = getattr(request.state, "principal", None)
    perms = permissions(who, now) if who is not None else frozenset()
    context = {
        "request": request,
        "who": who,
        "perms": perms,
        "nav": [(path, label) for path, label, perm in NAV if perm in perms],
        "csrf_token": getattr(request.state, "csrf_token", None) or "",
        "elevated_until": who.break_glass_until if who is not None and who.elevated(now) else None,
        "now": now,
        "version": __version__,
        "ago": lambda value: ago(value, now),
        **values,
    }
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def wants_html(request: Request) -> bool:
    """A browser navigating (not the API, not a script asking for JSON)."""
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")
