"""A live web application on a free loopback port, over a real store, with one user per role.

`web.session(role)` is an httpx client signed in as that role (a session made in the store, the way a
password sign-in makes one; the sign-in form itself is tested in test_login.py), sending its CSRF
token on every request; `web.token(role, scopes)` is a client with a bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from argon2 import PasswordHasher

from engine.runtime.context import Context, open_context
from engine.security import keyring
from engine.security.access import ROLES, Principal
from engine.security.passwords import Passwords
from engine.store.users import Users
from engine.web.app import create_app
from engine.web.auth import COOKIE_PLAIN
from engine.web.site import Site
from tests.conftest import write_project
from tests.inference.http.servers import serve

PASSWORD = "Correct-Horse-Battery-9"
SERVICE_SCOPES = ["channels.view", "messages.view", "studies.view", "worklist.view", "findings.feedback",
                  "jobs.view", "audit.export"]  # fmt: skip


@dataclass
class Web:
    ctx: Context
    site: Site
    url: str
    totp: dict[str, str] = field(default_factory=dict)  # username -> TOTP secret
    clients: list[httpx.Client] = field(default_factory=list)
    site_app: Any = None

    def user(self, role: str) -> str:
        return role.replace("_", "-")

    def client(self, **kwargs: object) -> httpx.Client:
        client = httpx.Client(base_url=self.url, timeout=10, follow_redirects=False, **kwargs)  # type: ignore[arg-type]
        self.clients.append(client)
        return client

    def session(self, role: str, *, accept_html: bool = False) -> httpx.Client:
        who = Principal(self.user(role), role, "password")
        new = self.site.sessions.start(who, peer="127.0.0.1:1")
        headers = {"X-CSRF-Token": new.csrf_token}
        if accept_html:
            headers["Accept"] = "text/html"
        client = self.client(headers=headers)
        client.cookies.set(COOKIE_PLAIN, new.session_id, domain="127.0.0.1", path="/")
        return client

    def token(self, role: str = "service", scopes: list[str] | None = None, days: int = 30) -> httpx.Client:
        issued = self.site.tokens.create(self.user(role), scopes or SERVICE_SCOPES, days, "test", "user:test")
        return self.client(headers={"Authorization": f"Bearer {issued.token}"})


def open_web_context(root: Path, store_url: str | None = None) -> Context:
    write_project(root, store_url=store_url)
    keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
    return open_context(root)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    ctx = open_web_context(tmp_path / "project")
    fast = Passwords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    users = Users(ctx.db, ctx.writer, ctx.vault, ctx.audit.event, ctx.project.engine.auth, hasher=fast)
    site = Site.open(ctx, lambda: (True, {"store": "ok"}), users=users)
    secrets = {}
    for role in ROLES:
        name = role.replace("_", "-")
        users.add(name, f"Test {role}", role, None if role == "service" else PASSWORD, "user:test")
        if role == "admin":
            secrets[name] = users.enroll_totp(name, "user:test")[0]
    app = create_app(site)
    with serve(app) as url:
        world = Web(ctx, site, url, secrets, site_app=app)
        try:
            yield world
        finally:
            for client in world.clients:
                client.close()
    ctx.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Any]:
    """A running engine and its web app in one loop (tests/web/ops_world.py), for the operations pages."""
    from tests.web.ops_world import ops_world  # it builds on this module

    with ops_world(tmp_path / "project") as w:
        yield w


def totp_now(secret: str) -> str:
    return pyotp.TOTP(secret).now()
