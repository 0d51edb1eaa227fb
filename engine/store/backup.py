"""Online backup and restore of the store: the database plus the blob folder, never any keys.

A backup is a folder (mode 0700, files 0600) holding

* `radbridge.db` (SQLite, taken with the online backup API while writers run) or
  `radbridge.pgdump` (PostgreSQL, `pg_dump --format=custom` under an exported snapshot),
* `blobs/…`, the blob files the backed-up contents table references (blobs are immutable once
  written, so copying them after the snapshot is consistent with it),
* `manifest.json`: format, creation time, schema revision, store kind, counts, and the SHA-256
  of every file.

Everything in it is already encrypted at rest (sealed content, wrapped data keys, sealed audit
detail); the keyring is not part of it. Export the keyring separately with a passphrase
(engine.security.key_export) and keep the two apart.

* `manifest.sig`: an Ed25519 signature of `manifest.json` under the keyring's checkpoint key.

`restore` checks the signature (with the keyring of the project restored into: import it first)
and the manifest hashes, then restores into an empty target only. The hashes catch a damaged
backup; the signature catches someone who rewrites files and manifest together.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from engine.core.clock import iso
from engine.core.errors import IntegrityError, PermanentError
from engine.store import db
from engine.store.blobs import BlobFolder

FORMAT = "radbridge-backup/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SQLITE_FILE = "radbridge.db"
PG_FILE = "radbridge.pgdump"
BLOBS = "blobs"
ACTION = "store.backup"
_CHUNK = 1 << 20


class BackupError(PermanentError):
    """A backup or restore was refused or failed (no PHI, no key material in the message)."""


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    store: str  # sqlite | postgresql
    created_at: str
    schema_revision: str | None
    messages: int
    audit_entries: int
    blobs: int
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "created_at": self.created_at,
            "schema_revision": self.schema_revision,
            "store": self.store,
            "counts": {"messages": self.messages, "audit_entries": self.audit_entries, "blobs": self.blobs},
            "files": {name: {"sha256": digest} for name, digest in sorted(self.files.items())},
        }


# -- small file helpers ----------------------------------------------------------------------------


def _private_dirs(folder: Path) -> None:
    """Create folder and any missing parents, each with mode 0700 (mkdir's parents= would not)."""
    if not folder.exists():
        _private_dirs(folder.parent)
        folder.mkdir(mode=0o700, exist_ok=True)


def _create_private(path: Path) -> int:
    """A new file opened for writing with mode 0600 from the first byte."""
    _private_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_private(src: Path, dst: Path) -> str:
    """Copy src to a new 0600 file dst (fsynced); returns the SHA-256 of the bytes written."""
    digest = hashlib.sha256()
    fd = _create_private(dst)
    try:
        with src.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL for pg_dump/pg_restore (password passed in the environment, not on argv)."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} was not found on PATH; install the PostgreSQL client tools (same major version)")
    return found


def _store_kind(url_or_engine: str | Engine) -> str:
    if isinstance(url_or_engine, Engine):
        name = url_or_engine.dialect.name
    else:
        name = make_url(url_or_engine).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise BackupError(f"backup supports SQLite and PostgreSQL stores, not {name}")
    return name


# -- backup ----------------------------------------------------------------------------------------


def _make_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"backup folder {dest} already exists and is not empty")
    _private_dirs(dest)
    os.chmod(dest, 0o700)


_COUNTS = {
    "messages": "SELECT count(*) FROM messages",
    "audit_entries": "SELECT count(*) FROM audit_log",
}
_BLOB_NAMES = "SELECT blob FROM contents WHERE blob IS NOT NULL ORDER BY blob"


def _backup_sqlite(engine: Engine, target: Path) -> tuple[list[str], dict[str, int]]:
    os.close(_create_private(target))  # an empty file is an empty database; sqlite keeps its mode
    raw = engine.raw_connection()
    try:
        source = raw.driver_connection
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)  # one step: a consistent snapshot, writers keep going (WAL)
            copy.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
            names = [r[0] for r in copy.execute(_BLOB_NAMES)]
            counts = {k: int(copy.execute(q).fetchone()[0]) for k, q in _COUNTS.items()}
            check = copy.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            copy.close()
    finally:
        raw.close()
    if check != "ok":
        raise BackupError(f"the SQLite backup copy failed its integrity check: {check}")
    for leftover in (target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return names, counts


def _backup_postgres(engine: Engine, target: Path) -> tuple[list[str], dict[str, int]]:
    pg_dump = _tool("pg_dump")
    url, env = _libpq(engine.url.render_as_string(hide_password=False))
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        # The dump and the blob list see the same snapshot, held open until pg_dump has imported it.
        snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
        names = [r[0] for r in conn.execute(text(_BLOB_NAMES))]
        counts = {k: int(conn.execute(text(q)).scalar_one()) for k, q in _COUNTS.items()}
        fd = _create_private(target)
        try:
            done = subprocess.run(
                [pg_dump, "--format=custom", f"--snapshot={snapshot}", "--dbname", url],
                stdout=fd,
                stderr=subprocess.PIPE,
                env=env,
                check=False,
            )
            os.fsync(fd)
        finally:
            os.close(fd)
    if done.returncode != 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise BackupError(f"pg_dump failed (exit {done.returncode}): {last[0]}")
    return names, counts


def backup(ctx: Any, dest: Path, *, actor: str = "radbridge backup") -> BackupInfo:
    """Write a consistent backup of ctx's store into the new folder `dest`, and audit it.

    `ctx` is an engine.runtime.context.Context (typed loosely: the store layer does not import the
    runtime). Safe while the engine is writing."""
    dest = Path(dest)
    engine: Engine = ctx.db
    blobs: BlobFolder = ctx.messages.blobs
    kind = _store_kind(engine)
    _make_dest(dest)
    created_at = iso()
    revision = db.current_revision(engine)
    primary = SQLITE_FILE if kind == "sqlite" else PG_FILE
    if kind == "sqlite":
        names, counts = _backup_sqlite(engine, dest / primary)
    else:
        names, counts = _backup_postgres(engine, dest / primary)
    files = {primary: _sha256(dest / primary)}
    for name in names:
        source = blobs.path(name)  # validates the name: nothing outside the blob folder
        if not source.is_file():
            raise BackupError(f"blob {name} referenced by the store is missing from {blobs.root}")
        files[f"{BLOBS}/{name}"] = _copy_private(source, dest / BLOBS / name)
    for folder in sorted({(dest / BLOBS / n).parent for n in names} | ({dest / BLOBS} if names else set())):
        _fsync_dir(folder)
    info = BackupInfo(
        path=dest,
        store=kind,
        created_at=created_at,
        schema_revision=revision,
        messages=counts["messages"],
        audit_entries=counts["audit_entries"],
        blobs=len(names),
        files=files,
    )
    manifest = json.dumps(info.manifest(), indent=2).encode()
    signature = {"key_id": ctx.keyring.signing_key_id,
                 "ed25519": base64.b64encode(ctx.keyring.signing_key.sign(manifest)).decode()}  # fmt: skip
    for name, data in ((MANIFEST, manifest), (SIGNATURE, json.dumps(signature).encode())):
        fd = _create_private(dest / name)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_dir(dest)
    ctx.audit.record(
        ACTION,
        actor=actor,
        detail={
            "store": kind,
            "schema_revision": revision,
            "messages": info.messages,
            "audit_entries": info.audit_entries,
            "blobs": info.blobs,
        },
    )
    return info


# -- restore ---------------------------------------------------------------------------------------


def _check_signature(src: Path, manifest: bytes, verify_key: Ed25519PublicKey) -> None:
    try:
        signature = base64.b64decode(json.loads((src / SIGNATURE).read_text())["ed25519"])
    except FileNotFoundError:
        raise IntegrityError(f"{src} has no {SIGNATURE}: an unsigned backup is not restored") from None
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{src / SIGNATURE} is malformed (damaged or altered backup)") from None
    try:
        verify_key.verify(signature, manifest)
    except InvalidSignature:
        raise IntegrityError(
            "backup manifest signature does not verify: altered, or made under another keyring (import its keys first)"
        ) from None


def read_manifest(src: Path, verify_key: Ed25519PublicKey | None = None) -> BackupInfo:
    """Parse the manifest — its signature checked when `verify_key` is given — and check every
    file's SHA-256; any difference refuses the backup."""
    src = Path(src)
    try:
        raw = (src / MANIFEST).read_bytes()
        if verify_key is not None:
            _check_signature(src, raw, verify_key)
        doc = json.loads(raw)
    except FileNotFoundError:
        raise BackupError(f"{src} has no {MANIFEST}; not a radbridge backup") from None
    except ValueError:
        raise IntegrityError(f"{src / MANIFEST} is not valid JSON (damaged or altered backup)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BackupError(f"{src / MANIFEST} is not a {FORMAT} manifest")
    try:
        files = {str(name): str(entry["sha256"]) for name, entry in doc["files"].items()}
        counts = doc["counts"]
        info = BackupInfo(
            path=src,
            store=str(doc["store"]),
            created_at=str(doc["created_at"]),
            schema_revision=doc.get("schema_revision"),
            messages=int(counts["messages"]),
            audit_entries=int(counts["audit_entries"]),
            blobs=int(counts["blobs"]),
            files=files,
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise IntegrityError(f"{src / MANIFEST} is incomplete or malformed (damaged or altered backup)") from None
    primary = SQLITE_FILE if info.store == "sqlite" else PG_FILE
    if info.store not in ("sqlite", "postgresql") or primary not in files:
        raise IntegrityError(f"{src / MANIFEST} does not name a database file for store {info.store!r}")
    root = src.resolve()
    for name, digest in files.items():
        path = (src / name).resolve()
        if not path.is_relative_to(root) or (name != primary and not name.startswith(f"{BLOBS}/")):
            raise IntegrityError(f"backup manifest lists an unexpected path {name!r}")
        if not path.is_file():
            raise IntegrityError(f"backup file {name} is missing")
        if _sha256(path) != digest:
            raise IntegrityError(f"backup file {name} does not match its SHA-256 in the manifest (damaged or altered)")
    present = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()} - {MANIFEST, SIGNATURE}
    extra = sorted(present - set(files))
    if extra:
        raise IntegrityError(f"backup holds {len(extra)} file(s) not in the manifest, e.g. {extra[0]}")
    if info.blobs != sum(1 for n in files if n.startswith(f"{BLOBS}/")):
        raise IntegrityError("backup manifest blob count does not match its file list")
    return info


def _sqlite_has_data(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return any(
            conn.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone() is not None
            for t in tables
            if t != "alembic_version" and not t.startswith("sqlite_")
        )
    finally:
        conn.close()


def _postgres_tables(url: str) -> int:
    engine = db.create(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _blob_dir(root: Path, blob_dir: Path | None) -> Path:
    if blob_dir is None:
        from engine.config import load_project  # only when the caller did not say where blobs go

        blob_dir = Path(load_project(root).engine.store.blob_dir)
    blob_dir = Path(blob_dir).expanduser()
    return blob_dir if blob_dir.is_absolute() else root / blob_dir


def restore(src: Path, root: Path, store_url: str, *, blob_dir: Path | None = None,
            verify_key: Ed25519PublicKey | None = None) -> BackupInfo:  # fmt: skip
    """Restore the backup folder `src` into the empty store at `store_url` and the project at `root`
    (its blob folder: `blob_dir`, or the project's store.blob_dir). Refuses a damaged or altered
    backup, a store of the other kind and a target that already holds data. The keyring is not
    restored: import it from its export (engine.security.key_export)."""
    src, root = Path(src), Path(root)
    info = read_manifest(src, verify_key)
    kind = _store_kind(store_url)
    if kind != info.store:
        raise BackupError(f"backup is of a {info.store} store; the target store is {kind}")
    blobs_target = _blob_dir(root, blob_dir)
    if blobs_target.exists() and any(p.is_file() for p in blobs_target.rglob("*")):
        raise BackupError(f"target blob folder {blobs_target} is not empty; restore needs an empty target")
    if kind == "sqlite":
        path = db.sqlite_path(store_url)
        if path is None:
            raise BackupError("cannot restore into an in-memory SQLite database")
        path = path if path.is_absolute() else root / path
        if _sqlite_has_data(path):
            raise BackupError(f"target database {path} already holds data; restore needs an empty target")
    elif _postgres_tables(store_url):
        raise BackupError("target PostgreSQL database already has tables; restore needs a new, empty database")

    BlobFolder(blobs_target)  # creates it with mode 0700
    for name, digest in info.files.items():
        if name.startswith(f"{BLOBS}/"):
            if _copy_private(src / name, blobs_target / name.removeprefix(f"{BLOBS}/")) != digest:
                raise IntegrityError(f"backup file {name} changed while being restored")

    if kind == "sqlite":
        tmp = path.with_name(path.name + ".restore")
        tmp.unlink(missing_ok=True)
        if _copy_private(src / SQLITE_FILE, tmp) != info.files[SQLITE_FILE]:
            tmp.unlink()
            raise IntegrityError(f"backup file {SQLITE_FILE} changed while being restored")
        for stale in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            stale.unlink(missing_ok=True)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    else:
        url, env = _libpq(store_url)
        done = subprocess.run(
            [_tool("pg_restore"), "--no-owner", "--no-acl", "--exit-on-error", "--single-transaction",
             "--dbname", url, str(src / PG_FILE)],
            capture_output=True,
            env=env,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise BackupError(f"pg_restore failed (exit {done.returncode}): {last[0]}")
    return info
