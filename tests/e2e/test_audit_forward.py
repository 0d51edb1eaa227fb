"""`radbridge run` with audit.forward: entries leave the host as they are written, over TLS."""

from __future__ import annotations

import asyncio
import ssl
import textwrap
from pathlib import Path

from tests.audit.syslog_collector import Collector, parse
from tests.e2e.harness import free_port, make_project, start_engine, stop
from tests.tlscerts import make_certs


def test_engine_forwards_its_audit_trail_to_a_tls_syslog_collector(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "tls")
    root = make_project(tmp_path / "p", {})
    port = free_port()
    (root / "config" / "engine.yaml").write_text(
        textwrap.dedent(f"""\
        node: {{id: fwd-node}}
        keys: {{source: file, file: keys/keyring.json}}
        listeners: [{{name: api, host: 127.0.0.1, port: {free_port()}}}]
        audit:
          forward: {{host: 127.0.0.1, port: {port}, ca: {certs.ca}, cert: {certs.client_cert}, key: {certs.client_key}}}
        """)
    )
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(str(certs.server_cert), str(certs.server_key))

    async def scenario() -> list[str]:
        collector = await Collector(tls=server_tls, port=port).start()
        engine = await asyncio.to_thread(start_engine, root)
        await collector.wait_for(lambda c: len(c.frames) >= 2, timeout=20)
        await asyncio.to_thread(stop, engine)
        await collector.wait_for(lambda c: any(parse(f).msgid == "audit.checkpoint" for f in c.frames), timeout=20)
        await collector.stop()
        return [parse(f).msgid for f in collector.frames]

    ids = asyncio.run(scenario())
    assert ids[:2] == ["engine.started", "config.changed"]
    assert "engine.stopped" in ids and "audit.checkpoint" in ids  # the shutdown checkpoint left the host too
