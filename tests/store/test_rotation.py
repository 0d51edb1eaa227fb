import threading

import pytest
from sqlalchemy import delete, select

from engine.core.errors import KeyMaterialError
from engine.runtime.context import Context
from engine.security import keyring
from engine.security.kms import LocalKek, VaultTransitKek
from engine.security.vault import Vault
from engine.store import rotation
from engine.store.messages import Messages
from engine.store.tables import Content, DataKeyRow
from tests.security.transit_stub import TOKEN, TransitStub

_keys = DataKeyRow.__table__


def _store(ctx: Context, messages: Messages, raw: bytes) -> str:
    message_id, item = messages.receive("ris-orders", "hl7v2 ORM^O01", raw)
    ctx.writer.write(item)
    return message_id


def _versions(ctx: Context) -> dict[int, int]:
    return {v: n for (_, v), n in rotation.counts(ctx.db).items()}


def test_rotation_under_concurrent_writes_and_purges_loses_nothing(ctx: Context) -> None:
    kek = ctx.vault.kek
    assert isinstance(kek, LocalKek)
    written = {_store(ctx, ctx.messages, f"MSH|before-{i}".encode()): f"MSH|before-{i}".encode() for i in range(120)}
    assert kek.rotate() == 2
    # Another process that has not reloaded its keyring keeps wrapping under version 1.
    stale_ring = keyring.Keyring.from_json(ctx.keyring.to_json(), "memory")
    stale_ring.kek_active = 1
    stale = Messages(ctx.db, Vault(stale_ring), ctx.messages.blobs, ctx.project.hash, 4096)
    purged: set[str] = set()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set() or i < 30:
                source = stale if i % 2 else ctx.messages
                raw = f"MSH|during-{i}".encode()
                written[_store(ctx, source, raw)] = raw
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def purger() -> None:  # crypto-shred some old records while rotation runs
        try:
            for message_id in list(written)[:120:10]:
                with ctx.db.begin() as conn:
                    conn.execute(delete(_keys).where(_keys.c.record_id == message_id))
                purged.add(message_id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=purger)]
    for t in threads:
        t.start()
    moved = rotation.rotate(ctx.db, ctx.vault, batch_size=7)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors and moved > 0
    # The stale writer has stopped; a second pass picks up what it wrote after the first went by.
    rotation.rotate(ctx.db, ctx.vault, batch_size=7)
    assert set(_versions(ctx)) == {2}
    with pytest.raises(KeyMaterialError, match="version 2 is active"):
        rotation.retire(ctx.db, kek, 2)
    rotation.retire(ctx.db, kek, 1)
    assert ctx.keyring.kek_versions[1].retired
    with ctx.db.connect() as conn:
        keyed = {r.record_id for r in conn.execute(select(_keys.c.record_id))}
        stored = {r.message_id for r in conn.execute(select(Content.__table__.c.message_id))}
    assert keyed == set(written) - purged and stored == set(written)  # nothing lost, nothing resurrected
    for message_id in keyed:
        assert ctx.messages.read(message_id) == written[message_id]
    for message_id in purged:
        with pytest.raises(LookupError):
            ctx.messages.read(message_id)


def test_retire_refused_while_records_remain(ctx: Context) -> None:
    kek = ctx.vault.kek
    message_id = _store(ctx, ctx.messages, b"MSH|old")
    kek.rotate()
    with pytest.raises(KeyMaterialError, match="version 1 still wraps 1 data keys"):
        rotation.retire(ctx.db, kek, 1)
    assert not ctx.keyring.kek_versions[1].retired
    report = rotation.status(ctx.db, kek)
    assert report["active"] == 2 and report["other_keks"] == {}
    v1, v2 = report["versions"]
    assert (v1["version"], v1["records"], v1["retired"], v1["active"]) == (1, 1, False, False)
    assert (v2["version"], v2["records"], v2["active"]) == (2, 0, True)
    assert v1["age_seconds"] >= 0 and v1["created_at"]
    assert rotation.rotate(ctx.db, ctx.vault) == 1
    assert rotation.rotate(ctx.db, ctx.vault) == 0  # idempotent
    rotation.retire(ctx.db, kek, 1)
    assert rotation.status(ctx.db, kek)["versions"][0]["retired"] is True
    assert ctx.messages.read(message_id) == b"MSH|old"
    with pytest.raises(KeyMaterialError, match="version 1 is retired"):
        ctx.vault.wrap(b"\0" * 32, message_id, kek_version=1)


def test_rotation_with_vault_transit(ctx: Context) -> None:
    stub = TransitStub()
    kek = VaultTransitKek("http://vault.test:8200", "radbridge", TOKEN, transport=stub.transport)
    vault = Vault(ctx.keyring, kek)
    messages = Messages(ctx.db, vault, ctx.messages.blobs, ctx.project.hash, 4096)
    ids = {_store(ctx, messages, f"MSH|{i}".encode()): f"MSH|{i}".encode() for i in range(12)}
    _store(ctx, ctx.messages, b"MSH|local")  # another KEK's record is left alone
    kek.rotate()
    assert rotation.rotate(ctx.db, vault, batch_size=5) == 12
    rotation.retire(ctx.db, kek, 1)
    assert stub.min_decryption_version == 2
    report = rotation.status(ctx.db, kek)
    assert [(v["version"], v["records"], v["retired"]) for v in report["versions"]] == [(1, 0, True), (2, 12, False)]
    assert report["other_keks"] == {"local": 1}
    for message_id, raw in ids.items():
        assert messages.read(message_id) == raw
