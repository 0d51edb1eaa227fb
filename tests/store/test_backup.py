"""Online backup while writers run, restore into a new empty project, keyring export apart from it."""

from __future__ import annotations

import json
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.audit.verify import verify
from engine.config import load_project
from engine.core.errors import IntegrityError, KeyMaterialError
from engine.runtime.context import Context, open_context
from engine.runtime.context import store_url as project_store_url
from engine.security import keyring as keyring_mod
from engine.security.key_export import export_keyring, import_keyring
from engine.store.backup import BLOBS, MANIFEST, BackupError, backup, restore
from engine.store.tables import AuditRow, Message
from tests import phi
from tests.conftest import fresh_postgres_database, write_project

PASSPHRASE = "correct horse battery staple"


def _store(ctx: Context, raw: bytes) -> str:
    message_id, item = ctx.messages.receive("ris-orders", "hl7v2 ORM^O01", raw)
    ctx.writer.write(item)
    return message_id


def _payload(i: int, big: bool) -> bytes:
    body = phi.ORM.replace("CTRL0001", f"CTRL{i:04d}").encode()
    return body + (b"OBX|1|ED|IMG||" + bytes(range(256)) * 400 if big else b"")


@pytest.fixture
def target_url(ctx: Context) -> Iterator[str | None]:
    """A fresh store of the same kind as ctx's, for the restored project."""
    if ctx.db.dialect.name != "postgresql":
        yield None
        return
    with fresh_postgres_database("radbridge_restore") as url:
        yield url


@pytest.fixture
def needs_pg_tools(ctx: Context) -> None:
    if ctx.db.dialect.name == "postgresql" and (shutil.which("pg_dump") is None or shutil.which("pg_restore") is None):
        pytest.skip("PostgreSQL backup needs pg_dump and pg_restore on PATH")


def _new_project(root: Path, url: str | None) -> tuple[Path, str]:
    write_project(root, store_url=url)
    return root, project_store_url(load_project(root))


def _backup_during_writes(ctx: Context, dest: Path) -> tuple[dict[str, bytes], object]:
    """Commit some messages, then take a backup while a thread keeps writing."""
    originals = {_store(ctx, _payload(i, big=i % 3 == 0)): _payload(i, big=i % 3 == 0) for i in range(12)}
    ctx.audit.record("message.viewed", actor="tester", record_ids=list(originals)[:2])
    ctx.checkpoint()
    stop, errors = threading.Event(), []

    def keep_writing() -> None:
        i = 100
        try:
            while not stop.is_set():
                _store(ctx, _payload(i, big=i % 2 == 0))
                ctx.audit.record("message.viewed", actor="writer-thread")
                i += 1
        except Exception as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=keep_writing)
    thread.start()
    try:
        info = backup(ctx, dest, actor="tester")
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    return originals, info


@pytest.mark.usefixtures("needs_pg_tools")
def test_backup_restore_round_trip(ctx: Context, tmp_path: Path, target_url: str | None) -> None:
    dest = tmp_path / "backups" / "b1"
    originals, info = _backup_during_writes(ctx, dest)
    assert info.messages >= len(originals) and info.blobs >= 4  # type: ignore[attr-defined]

    # The backup: private, complete, no PHI in clear and no key material.
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    for path in dest.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["store"] == ctx.db.dialect.name and manifest["schema_revision"]
    assert any(name.startswith(f"{BLOBS}/") for name in manifest["files"])
    assert phi.leaks_in_tree(dest) == {}
    keys = ctx.keyring
    secrets = [k.key for k in keys.kek_versions.values()] + [keys.index_key, keys.audit_key]
    secrets.append(json.loads(keys.to_json())["signing_key"].encode())
    for path in dest.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s in data for s in secrets), path
            assert b"radbridge-keyring" not in data
    with ctx.db.connect() as conn:  # the backup was audited
        actions = [r.action for r in conn.execute(select(AuditRow.__table__.c.action))]
    assert "store.backup" in actions

    # The keyring travels apart, under a passphrase.
    export = export_keyring(ctx.keyring, PASSPHRASE)
    assert b"radbridge-keyring/1" not in export and not any(s in export for s in secrets)

    # Restore into a new, empty project and open it with the imported keyring.
    root, url = _new_project(tmp_path / "restored", target_url)
    restore(dest, root, url, verify_key=ctx.keyring.verify_key)
    keyring_mod.write_file(import_keyring(export, PASSPHRASE), root / "keys" / "keyring.json")
    restored = open_context(root)
    try:
        result = verify(restored.db, restored.keyring.verify_key, restored.keyring.signing_key_id)
        assert result.ok, result.problem
        assert result.entries == info.audit_entries  # type: ignore[attr-defined]
        with restored.db.connect() as conn:
            ids = [r[0] for r in conn.execute(select(Message.__table__.c.id))]
        assert len(ids) == info.messages  # type: ignore[attr-defined]
        assert set(originals) <= set(ids)
        for message_id in ids:
            data = restored.messages.read(message_id)  # every restored message decrypts
            if message_id in originals:
                assert data == originals[message_id]
    finally:
        restored.close()

    # A second restore onto the now non-empty target is refused.
    with pytest.raises(BackupError, match="not empty|already"):
        restore(dest, root, url)


@pytest.mark.usefixtures("needs_pg_tools")
def test_restore_refuses_non_empty_target(ctx: Context, tmp_path: Path, target_url: str | None) -> None:
    _store(ctx, _payload(1, big=False))
    info = backup(ctx, tmp_path / "b", actor="tester")
    assert info.messages == 1
    # ctx's own project is a non-empty target.
    with pytest.raises(BackupError, match="already"):
        restore(tmp_path / "b", ctx.project.root, project_store_url(ctx.project), blob_dir=tmp_path / "no-blobs")
    # An empty database but a blob folder with files in it is refused too.
    root, url = _new_project(tmp_path / "other", target_url)
    (root / "data" / "blobs" / "ab").mkdir(parents=True)
    (root / "data" / "blobs" / "ab" / "stray").write_bytes(b"x")
    with pytest.raises(BackupError, match="blob folder .* not empty"):
        restore(tmp_path / "b", root, url)


@pytest.mark.usefixtures("needs_pg_tools")
def test_tampered_backup_is_refused(ctx: Context, tmp_path: Path, target_url: str | None) -> None:
    _store(ctx, _payload(1, big=True))
    _store(ctx, _payload(2, big=False))
    dest = tmp_path / "b"
    backup(ctx, dest, actor="tester")
    root, url = _new_project(tmp_path / "restored", target_url)

    blob = next(p for p in (dest / BLOBS).rglob("*") if p.is_file())
    original = blob.read_bytes()
    blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(IntegrityError, match="does not match its SHA-256"):
        restore(dest, root, url)
    blob.write_bytes(original)

    database = next(p for p in dest.iterdir() if p.name.startswith("radbridge."))
    with database.open("r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match="does not match its SHA-256"):
        restore(dest, root, url)
    # Nothing was written into the target.
    assert not any(p.is_file() for p in (root / "data").rglob("*")) if (root / "data").exists() else True


def test_keyring_export_round_trip_and_refusals(ctx: Context) -> None:
    export = export_keyring(ctx.keyring, PASSPHRASE)
    doc = json.loads(export)
    assert doc["format"] == "radbridge-keyring-export/1"
    assert (doc["kdf"]["n"], doc["kdf"]["r"], doc["kdf"]["p"]) == (2**15, 8, 1)
    back = import_keyring(export, PASSPHRASE)
    assert back.to_json() == ctx.keyring.to_json()

    with pytest.raises(KeyMaterialError, match="wrong passphrase") as wrong:
        import_keyring(export, PASSPHRASE + "!")
    assert "\n" not in str(wrong.value) and doc["ciphertext"][:16] not in str(wrong.value)
    tampered = dict(
        doc, ciphertext=doc["ciphertext"][:-8] + ("A" * 8 if doc["ciphertext"][-8:] != "A" * 8 else "B" * 8)
    )
    with pytest.raises(KeyMaterialError, match="wrong passphrase|altered|malformed"):
        import_keyring(json.dumps(tampered), PASSPHRASE)
    weakened = dict(doc, kdf=dict(doc["kdf"], n=2**14))
    with pytest.raises(KeyMaterialError, match="wrong passphrase|altered"):
        import_keyring(json.dumps(weakened), PASSPHRASE)
    with pytest.raises(KeyMaterialError, match="at least 12"):
        export_keyring(ctx.keyring, "short")
    with pytest.raises(KeyMaterialError, match="malformed"):
        import_keyring(b"{not json", PASSPHRASE)



def test_manifest_signature_catches_a_rewritten_manifest_and_another_keyring(ctx: Context, tmp_path: Path) -> None:
    """The file hashes catch damage; the Ed25519 signature catches files and manifest rewritten together."""
    from engine.store.backup import SIGNATURE, read_manifest

    _store(ctx, _payload(2, big=False))
    dest = tmp_path / "b"
    backup(ctx, dest, actor="tester")
    stored = read_manifest(dest, ctx.keyring.verify_key).messages
    assert stored >= 1
    manifest = json.loads((dest / MANIFEST).read_text())
    manifest["counts"]["messages"] = stored + 1  # consistent with every file hash, yet not what was signed
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    with pytest.raises(IntegrityError, match="signature does not verify"):
        read_manifest(dest, ctx.keyring.verify_key)
    backup_2 = tmp_path / "b2"
    backup(ctx, backup_2, actor="tester")
    with pytest.raises(IntegrityError, match="another keyring"):
        read_manifest(backup_2, keyring_mod.generate(dev=False).verify_key)
    (backup_2 / SIGNATURE).unlink()
    with pytest.raises(IntegrityError, match="unsigned backup"):
        read_manifest(backup_2, ctx.keyring.verify_key)
