"""A running engine and its web application in one event loop (as `radbridge run` serves them), on a
background thread, for the operations pages' tests (channels, messages, dead letters).

Channels: `ris-orders` (MLLP on loopback, plaintext, mapping orm-to-order, one MLLP destination
`downstream` with max_attempts 1, so a message sent while the downstream port is closed is dead at
once), `secure-in` (MLLP with mutual TLS, no destinations) and `spare` (disabled). `world.downstream()`
starts an HL7 peer that ACKs AA on the downstream port, in the engine's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from argon2 import PasswordHasher
from hl7.mllp import start_hl7_server
from sqlalchemy import select

from engine.connectors.http.asgi import Config, Server
from engine.connectors.mllp import send_messages
from engine.runtime.context import Context, open_context
from engine.runtime.engine import Engine
from engine.security import keyring
from engine.security.access import ROLES
from engine.security.passwords import Passwords
from engine.store.tables import AuditRow
from engine.store.users import Users
from engine.web.app import create_app
from engine.web.site import Site
from tests import phi
from tests.conftest import write_project
from tests.e2e.harness import REPO, free_port
from tests.tlscerts import make_certs
from tests.web.conftest import PASSWORD, Web

T = TypeVar("T")
WAIT = 15.0


def _channels(mllp: int, downstream: int, secure: int, spare: int) -> dict[str, str]:
    return {
        "ris-orders.yaml": f"""\
            name: ris-orders
            description: RIS orders over MLLP
            source: {{kind: mllp, host: 127.0.0.1, port: {mllp}, accept_types: [ORM^O01]}}
            mapping: mappings/orm-to-order.yaml
            destinations:
              - name: downstream
                kind: mllp
                body: raw
                host: 127.0.0.1
                port: {downstream}
                connect_timeout_s: 1
                ack_timeout_s: 3
                retry: {{max_attempts: 1, backoff_s: 0.05, max_backoff_s: 0.1}}
            """,
        "secure-in.yaml": f"""\
            name: secure-in
            source:
              kind: mllp
              host: 127.0.0.1
              port: {secure}
              tls: {{cert: tls/server.crt, key: tls/server.key, ca: tls/ca.crt}}
            """,
        "spare.yaml": f"""\
            name: spare
            enabled: false
            source: {{kind: mllp, host: 127.0.0.1, port: {spare}}}
            """,
    }


class OpsWorld:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.mllp_port, self.downstream_port = free_port(), free_port()
        write_project(root)
        keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
        shutil.copytree(REPO / "mappings", root / "mappings", dirs_exist_ok=True)
        make_certs(root / "tls")  # tls/ca.crt, tls/server.crt, tls/server.key
        for name, text in _channels(self.mllp_port, self.downstream_port, free_port(), free_port()).items():
            (root / "channels" / name).write_text(textwrap.dedent(text))
        self.ctx: Context = open_context(root)
        fast = Passwords(PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
        self.users = Users(self.ctx.db, self.ctx.writer, self.ctx.vault, self.ctx.audit.event,
                           self.ctx.project.engine.auth, hasher=fast)  # fmt: skip
        for role in ROLES:
            name = role.replace("_", "-")
            self.users.add(name, f"Test {role}", role, None if role == "service" else PASSWORD, "user:test")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ops-world", daemon=True)
        self.thread.start()
        self.engine = Engine(self.ctx)
        self.run(self.engine.start())
        self.site = Site.open(self.ctx, lambda: (True, {"store": "ok"}), users=self.users, engine=self.engine)
        self.app = create_app(self.site)
        self._servers: list[tuple[Server, Any, socket.socket]] = []
        self.web = Web(self.ctx, self.site, self._serve(self.app), site_app=self.app)
        self._peer: Any = None
        self.received: list[str] = []  # MSH-10 of each message the downstream peer ACKed

    # -- the loop -------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _serve(self, app: Any) -> str:
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = Config(app, None, host="127.0.0.1", port=port, http="h11", ws="none", lifespan="off",
                        log_config=None, access_log=False, timeout_graceful_shutdown=1)  # fmt: skip
        server = Server(config)
        task = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), self.loop)
        self._servers.append((server, task, sock))
        deadline = time.monotonic() + WAIT
        while not server.started:
            assert time.monotonic() < deadline and not task.done(), "web server did not start"
            time.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    def detached(self) -> Web:
        """The same store served by a web app that runs no channels (Site.engine is None)."""
        site = Site.open(self.ctx, lambda: (True, {"store": "ok"}), users=self.users)
        app = create_app(site)
        return Web(self.ctx, site, self._serve(app), site_app=app)

    async def _cancel_rest(self) -> None:
        """Tasks still pending (the peer's connection handlers): ended before the loop closes."""
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def close(self) -> None:
        for client in self.web.clients:
            client.close()
        if self._peer is not None:
            self._peer.close()
        for server, task, sock in self._servers:
            server.should_exit = True
            with contextlib.suppress(Exception):
                task.result(WAIT)
            sock.close()
        self.run(self.engine.stop())
        self.run(self._cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()
        self.ctx.close()

    # -- peers ----------------------------------------------------------------------------------

    def send(self, raw: bytes, port: int | None = None) -> str | None:
        """Send one message to ris-orders over MLLP; its ACK code (AA, AE, AR), None without one."""

        async def go() -> str | None:
            results = await send_messages([raw], "127.0.0.1", port or self.mllp_port, tls=None, timeout_s=5)
            return results[0].code if results else None

        return asyncio.run(go())

    def downstream(self) -> None:
        """An HL7 system on the downstream port (python-hl7's MLLP server, not ours), ACKing AA."""

        async def handle(reader: Any, writer: Any) -> None:
            try:
                while not writer.is_closing():
                    message = await reader.readmessage()
                    self.received.append(str(message.segment("MSH")[10]))
                    writer.writemessage(message.create_ack())
                    await writer.drain()
            except asyncio.IncompleteReadError:
                pass
            finally:
                writer.close()

        async def start() -> Any:
            return await start_hl7_server(handle, "127.0.0.1", self.downstream_port)

        self._peer = self.run(start())

    # -- looking ----------------------------------------------------------------------------------

    def until(self, check: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "condition not reached in time"
            time.sleep(0.05)

    def status(self, message_id: str) -> str | None:
        view = self.ctx.messages.get(message_id)
        return view.status if view else None

    def audit(self, action: str) -> list[Any]:
        audit = AuditRow.__table__
        with self.ctx.db.connect() as conn:
            return list(conn.execute(select(audit).where(audit.c.action == action).order_by(audit.c.seq)))

    def dead_message(self, raw: bytes) -> str:
        """Send `raw` while the downstream port is closed: stored, then dead after its one attempt."""
        before = {m.id for m in self.ctx.messages.list(channel="ris-orders", limit=500)}
        assert self.send(raw) == "AA"
        new = [m.id for m in self.ctx.messages.list(channel="ris-orders", limit=500) if m.id not in before]
        assert len(new) == 1
        self.until(lambda: self.status(new[0]) == "dead")
        return new[0]


def url_recorder(client: httpx.Client) -> list[str]:
    """Every URL `client` requests, to check no identifier ever travels in one."""
    urls: list[str] = []
    client.event_hooks = {"request": [lambda request: urls.append(str(request.url))], "response": []}
    return urls


@contextlib.contextmanager
def ops_world(root: Path) -> Iterator[OpsWorld]:
    world = OpsWorld(root)
    try:
        yield world
    finally:
        world.close()
        logging.getLogger("radbridge").debug("ops world closed")


def leaks(text: str) -> list[str]:
    """The fake patient's identifiers found in `text` (any case)."""
    return [s for s in phi.STRINGS if s.lower() in text.lower()]
