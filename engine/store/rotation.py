"""KEK rotation on the store side: re-wrap data keys, report per-version use, retire safely.

Re-wrapping touches data_keys only (never content). It runs in bounded batches: each batch is read,
re-wrapped outside any transaction (a KMS call may be slow), then written in one transaction whose
UPDATE carries `WHERE kek_version = <old>`, so a row a concurrent writer or purge changed or deleted
meanwhile is left alone and nothing is lost or resurrected.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, func, select, update

from engine.core.clock import utcnow
from engine.core.errors import KeyMaterialError
from engine.security.kms import Kek
from engine.security.vault import Vault, WrappedKey
from engine.store.tables import DataKeyRow

log = logging.getLogger("radbridge.keys")
_keys = DataKeyRow.__table__

_REWRAP = (
    update(_keys)
    .where(
        _keys.c.record_id == bindparam("r_id"),
        _keys.c.kek_id == bindparam("r_kek"),
        _keys.c.kek_version == bindparam("r_old"),
    )
    .values(kek_version=bindparam("r_new"), wrapped=bindparam("r_wrapped"))
)


def rotate(db: Engine, vault: Vault, *, batch_size: int = 500) -> int:
    """Re-wrap every data key of the vault's KEK not under its active version; returns how many.

    Keys wrapped by another KEK id are not this KEK's to re-wrap and are left alone (see status()).
    Rows written under an old version after this pass went by are picked up by the next run."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    kek_id = vault.kek.kek_id
    active = vault.kek.active
    pending = (_keys.c.kek_id == kek_id) & (_keys.c.kek_version != active)
    with db.connect() as conn:  # a bounded pass: rows that appear after this are the next run's
        upto = conn.execute(select(func.max(_keys.c.record_id)).where(pending)).scalar()
    done = 0
    after = ""
    while upto is not None:
        query = (
            select(_keys.c.record_id, _keys.c.kek_version, _keys.c.wrapped)
            .where(pending, _keys.c.record_id > after, _keys.c.record_id <= upto)
            .order_by(_keys.c.record_id)
            .limit(batch_size)
        )
        with db.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            break
        after = rows[-1].record_id
        params = []
        for row in rows:
            fresh = vault.wrap(
                vault.unwrap(WrappedKey(kek_id, row.kek_version, bytes(row.wrapped)), row.record_id).key,
                row.record_id,
                active,
            )
            params.append(
                {
                    "r_id": row.record_id,
                    "r_kek": kek_id,
                    "r_old": row.kek_version,
                    "r_new": fresh.kek_version,
                    "r_wrapped": fresh.wrapped,
                }
            )
        changed = 0
        with db.begin() as conn:
            for p in params:
                changed += conn.execute(_REWRAP, p).rowcount
        done += changed
        log.info("re-wrapped %d data keys under KEK %s version %d (%d so far)", changed, kek_id, active, done)
        if len(rows) < batch_size:
            break
    return done


def counts(db: Engine) -> dict[tuple[str, int], int]:
    """(kek_id, kek_version) -> number of data keys it wraps."""
    query = select(_keys.c.kek_id, _keys.c.kek_version, func.count()).group_by(_keys.c.kek_id, _keys.c.kek_version)
    with db.connect() as conn:
        return {(r[0], int(r[1])): int(r[2]) for r in conn.execute(query)}


def _age_seconds(created_at: str, now: datetime) -> int | None:
    try:
        return int((now - datetime.fromisoformat(created_at)).total_seconds())
    except (TypeError, ValueError):
        return None


def status(db: Engine, kek: Kek) -> dict[str, Any]:
    """Per KEK version: created_at, age_seconds, active, retired and records (data keys it wraps).
    `other_keks` counts data keys wrapped by KEK ids other than this one (e.g. before a KMS move)."""
    used = counts(db)
    now = utcnow()
    versions = []
    for version, info in sorted(kek.versions().items()):
        versions.append(
            {
                "version": version,
                "created_at": info.get("created_at", ""),
                "age_seconds": _age_seconds(info.get("created_at", ""), now),
                "active": bool(info.get("active")),
                "retired": bool(info.get("retired")),
                "records": used.get((kek.kek_id, version), 0),
            }
        )
    known = {v["version"] for v in versions}
    unknown = {str(v): n for (k, v), n in used.items() if k == kek.kek_id and v not in known}
    other: dict[str, int] = {}
    for (k, _), n in used.items():
        if k != kek.kek_id:
            other[k] = other.get(k, 0) + n
    return {
        "kek_id": kek.kek_id,
        "active": kek.active,
        "versions": versions,
        "unknown_versions": unknown,
        "other_keks": other,
    }


def retire(db: Engine, kek: Kek, version: int) -> None:
    """Retire a KEK version, refused while any data key is still wrapped under it."""
    if version == kek.active:
        raise KeyMaterialError(f"KEK {kek.kek_id} version {version} is active; rotate before retiring it")
    remaining = counts(db).get((kek.kek_id, version), 0)
    if remaining:
        raise KeyMaterialError(
            f"KEK {kek.kek_id} version {version} still wraps {remaining} data keys; "
            "re-wrap them first (radbridge keys rotate)"
        )
    kek.retire(version)
    log.warning("KEK %s version %d retired", kek.kek_id, version)
