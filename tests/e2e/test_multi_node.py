"""Two engine processes on one PostgreSQL: a delivery queue is worked by one of them at a time, each
message is delivered once, and when the holder is killed the other takes its queue over."""

from __future__ import annotations

import asyncio
import shutil
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.connectors.mllp import send_messages
from tests.conftest import fresh_postgres_database
from tests.e2e.harness import free_port, make_project, orm, received, start_downstream, start_engine, stop, wait_for


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database("radbridge_nodes") as url:
        yield url


def _node(tmp: Path, name: str, url: str, port: int, downstream: int, keyring_from: Path | None) -> Path:
    channel = f"""\
        name: orders
        source: {{kind: mllp, host: 127.0.0.1, port: {port}}}
        destinations:
          - {{name: downstream, kind: mllp, host: 127.0.0.1, port: {downstream}, connect_timeout_s: 1,
              retry: {{max_attempts: 1000, backoff_s: 0.2, max_backoff_s: 0.5}}}}
        """
    root = make_project(tmp / name, {"orders.yaml": channel})
    (root / "config" / "engine.yaml").write_text(
        textwrap.dedent(f"""\
        node: {{id: {name}}}
        keys: {{source: file, file: keys/keyring.json}}
        store: {{url: '{url}', lease_ttl_s: 2}}
        listeners: [{{name: api, host: 127.0.0.1, port: {free_port()}}}]
        """)
    )
    if keyring_from is not None:  # every node of one store shares its keyring
        shutil.copy(keyring_from / "keys" / "keyring.json", root / "keys" / "keyring.json")
    return root


def _send(port: int, ids: list[str]) -> list[str]:
    results = asyncio.run(send_messages([orm(i, f"ACC{i}") for i in ids], "127.0.0.1", port, tls=None, timeout_s=10))
    return [r.code for r in results]


def test_two_nodes_deliver_each_message_once_and_take_over(tmp_path: Path, pg_url: str) -> None:
    downstream = free_port()
    log = tmp_path / "downstream.log"
    ports = free_port(), free_port()
    a_root = _node(tmp_path, "node-a", pg_url, ports[0], downstream, None)
    b_root = _node(tmp_path, "node-b", pg_url, ports[1], downstream, a_root)
    a = start_engine(a_root)
    b = start_engine(b_root)
    peer = start_downstream(downstream, log)
    try:
        ids = [f"N{i:03d}" for i in range(60)]
        assert set(_send(ports[0], ids[:30]) + _send(ports[1], ids[30:])) == {"AA"}
        wait_for(lambda: len(received(log)) >= 60)
        assert sorted(received(log)) == ids  # every message once, whichever node took it in

        stop(peer)  # downstream goes away; new messages queue up on whoever holds the lease
        more = [f"M{i:03d}" for i in range(20)]
        assert set(_send(ports[0], more[:10]) + _send(ports[1], more[10:])) == {"AA"}
        a.send_signal(signal.SIGKILL)  # one node dies (maybe the lease holder)
        a.wait(timeout=10)
        peer = start_downstream(downstream, log)
        wait_for(lambda: len(received(log)) >= 80, timeout=60)
        assert sorted(received(log)) == sorted(ids + more)  # the survivor delivered them, each once
    finally:
        for proc in (a, b, peer):
            stop(proc, signal.SIGKILL)
