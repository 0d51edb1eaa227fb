"""`radbridge run` as a person starts it: a real process, a real HTTP call, a real signal."""

import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from engine.audit.verify import verify
from engine.runtime.context import open_context
from engine.store.tables import AuditRow
from tests.conftest import write_project
from tests.tlscerts import make_certs, tls_1_1_client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(root: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line.strip())
        if line.startswith("ready"):
            return proc, lines
    proc.kill()
    raise AssertionError(f"engine did not become ready: {lines} {proc.stderr.read()}")  # type: ignore[union-attr]


def test_run_creates_dev_key_serves_health_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    root = write_project(
        tmp_path / "p",
        textwrap.dedent(f"""\
        node: {{id: run-node}}
        keys: {{source: file, file: keys/dev-keyring.json}}
        listeners: [{{name: api, kind: http, host: 127.0.0.1, port: {port}}}]
        """),
    )
    proc, lines = _start(root)
    try:
        assert f"listening on http://127.0.0.1:{port} (api)" in lines
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] == "ok"
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
        assert ready.status_code == 200 and ready.json()["checks"] == {"store": "ok", "writer": "ok"}
        # nothing else is open: the API and the pages want a session or a token (deny by default)
        assert httpx.get(f"http://127.0.0.1:{port}/api/messages", timeout=5).status_code == 401
        page = httpx.get(f"http://127.0.0.1:{port}/messages", headers={"Accept": "text/html"}, timeout=5)
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/messages"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert "DEVELOPMENT KEYRING CREATED" in err
    assert (root / "keys" / "dev-keyring.json").stat().st_mode & 0o777 == 0o600

    # Second start with the same config: config.loaded rather than config.changed.
    proc, _ = _start(root)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0

    ctx = open_context(root)
    try:
        audit = AuditRow.__table__
        with ctx.db.connect() as conn:
            actions = [r.action for r in conn.execute(select(audit.c.action).order_by(audit.c.seq))]
        result = verify(ctx.db, ctx.keyring.verify_key, ctx.keyring.signing_key_id)
    finally:
        ctx.close()
    assert actions == [
        "engine.started",
        "config.changed",
        "engine.stopped",
        "engine.started",
        "config.loaded",
        "engine.stopped",
    ]
    assert result.ok and result.checkpoints == 2  # one signed on each shutdown


def test_run_refuses_invalid_config(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", "listeners: [{name: api, port: seventy}]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", "--root", str(root)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "config/engine.yaml:1:31: 'port' must be an integer" in proc.stderr


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_https_listener_enforces_tls12_and_client_certificates(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "tls")
    port = _free_port()
    root = write_project(
        tmp_path / "p",
        textwrap.dedent(f"""\
        node: {{id: tls-node}}
        keys: {{source: file, file: keys/dev-keyring.json}}
        listeners:
          - name: api
            port: {port}
            tls: {{cert: {certs.server_cert}, key: {certs.server_key}, ca: {certs.ca}}}
        """),
    )
    proc, lines = _start(root)
    try:
        assert f"listening on https://127.0.0.1:{port} (api)" in lines
        good = ssl.create_default_context(cafile=str(certs.ca))
        good.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        assert httpx.get(f"https://127.0.0.1:{port}/health", verify=good, timeout=5).status_code == 200

        def refused(context: ssl.SSLContext) -> None:
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                httpx.get(f"https://127.0.0.1:{port}/health", verify=context, timeout=5)

        no_cert = ssl.create_default_context(cafile=str(certs.ca))
        refused(no_cert)
        stranger = ssl.create_default_context(cafile=str(certs.ca))
        stranger.load_cert_chain(str(certs.stranger_cert), str(certs.stranger_key))
        refused(stranger)
        refused(tls_1_1_client(certs))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
