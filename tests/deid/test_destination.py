"""A destination outside the hospital (`deidentify:` on the destination): the HL7 message goes out over
a real MLLP connection with the Safe Harbor identifiers removed, while the store keeps the original."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.core.component import Inbound
from engine.runtime.context import open_context
from engine.runtime.engine import Engine
from engine.security import keyring
from tests import phi
from tests.conftest import write_project
from tests.connectors.test_mllp_destination import ack_for, peer


async def test_hl7_leaves_deidentified_and_is_stored_intact(tmp_path: Path, store_url: str | None) -> None:
    async with peer(ack_for("AA")) as receiver:
        root = write_project(tmp_path / "p", store_url=store_url)
        keyring.write_file(keyring.generate(dev=False), root / "keys" / "keyring.json")
        (root / "channels" / "outside.yaml").write_text(
            "name: outside\nsource: {kind: topic, topic: test.hl7}\ndestinations:\n"
            f"  - {{name: registry, kind: mllp, host: 127.0.0.1, port: {receiver.port}, deidentify: basic,\n"
            "     retry: {backoff_s: 0.05}}\n"
        )
        ctx = open_context(root)
        engine = Engine(ctx)
        await engine.start()
        try:
            raw = phi.ORM.encode()
            [outcome] = await engine.topics.publish("test.hl7", Inbound(raw=raw, kind="hl7v2", peer="test"))
            for _ in range(200):
                if receiver.frames:
                    break
                await asyncio.sleep(0.02)
            stored = ctx.messages.read(outcome.message_id or "", "raw")
        finally:
            await engine.stop()
            ctx.close()
    [sent] = receiver.frames
    assert sent.startswith(b"MSH|") and b"ORM^O01" in sent
    for text in phi.STRINGS:
        for form in phi.variants(text):
            assert form not in sent, "a Safe Harbor identifier left the hospital"
    assert stored == raw  # the original stays, sealed
