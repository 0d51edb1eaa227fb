"""Evidence from what the engine has done, read from its audit log: the chain verified and signed
(§164.312(b)), integrity of stored content (§164.312(c)), backups and restore tests, retention runs
and key escrow (the contingency plan, §164.308(a)(7); disposal, §164.310(d)(2)(i)).

The audit actions looked for: `store.backup` (engine.store.backup), `retention.purged`
(engine.store.retention), `keys.rotated`, and `store.restored` / `restore.*` and `keys.exported` when the
commands that do those audit them. Where the engine cannot see the act (a restore test into a scratch
install, a key held in escrow by the organisation), a dated attestation counts instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from engine.compliance.attestations import current, describe
from engine.compliance.evidence import Evidence, Item, Status, parse_ts
from engine.core.errors import IntegrityError
from engine.core.ids import new_id
from engine.security.vault import DataKey, Vault
from engine.store.tables import AuditCheckpoint, AuditRow, DataKeyRow

CHECKPOINT_MAX_AGE_H = 24
BACKUP_MAX_AGE_DAYS = 90
RESTORE_MAX_AGE_DAYS = 90
RETENTION_STALE_DAYS = 7  # `radbridge run` purges daily; a week without a run means nobody is running it
BACKUP_ACTIONS = ("store.backup", "backup.")
RESTORE_ACTIONS = ("store.restored", "restore.")
_checkpoints = AuditCheckpoint.__table__
_audit = AuditRow.__table__
_keys = DataKeyRow.__table__


def _ago(ev: Evidence, ts: str) -> str:
    days = ev.age_days(ts) or 0.0
    return f"{days * 24:.1f} h ago" if days < 2 else f"{days:.0f} days ago"


def audit_controls(ev: Evidence) -> Item:
    v = ev.verification
    with ev.ctx.db.connect() as conn:
        newest = conn.execute(select(_checkpoints.c.node, _checkpoints.c.ts, _checkpoints.c.key_id)
                              .order_by(_checkpoints.c.ts.desc()).limit(1)).first()  # fmt: skip
    cfg = ev.ctx.project.engine.audit
    details: dict[str, Any] = {
        "mechanism": "SHA-256 hash chain per node; checkpoints signed with Ed25519 (key held in the keyring)",
        "verified": v.ok,
        "entries": v.entries,
        "nodes": v.nodes,
        "signed_checkpoints": v.checkpoints,
        "last_checkpoint": v.last_checkpoint,
        "last_checkpoint_signer": newest.key_id if newest else None,
        "checkpoint_interval_s": cfg.checkpoint_interval_seconds,
        "forwarded_off_host": f"{cfg.forward.host}:{cfg.forward.port}" if cfg.forward else None,
    }
    status: Status = "pass"
    if not v.ok:
        status, why = "fail", f"audit chain verification failed: {v.problem}"
    elif v.last_checkpoint is None:
        status = "attention"
        why = (
            f"chain intact ({v.entries} entries) but never signed: a running engine writes a checkpoint every "
            f"{cfg.checkpoint_interval_seconds} s"
        )
    elif (ev.age_days(v.last_checkpoint) or 0) * 24 > CHECKPOINT_MAX_AGE_H:
        status = "attention"
        why = f"chain intact, but the last signed checkpoint is {_ago(ev, v.last_checkpoint)} (over 24 h)"
    else:
        signer = newest.key_id if newest else "?"
        why = (
            f"{v.entries} entries on {len(v.nodes)} node(s) verified; last checkpoint {_ago(ev, v.last_checkpoint)}"
            f", signed by key {signer}"
        )
    return Item("audit-chain", "audit", "§164.312(b)", "Audit log: hash chain and signed checkpoints", status, why,
                details)  # fmt: skip


def _raises(action: Any) -> bool:
    try:
        action()
    except IntegrityError:
        return True
    return False


def aead_self_test(vault: Vault) -> dict[str, bool]:
    """Seal a test value under a fresh data key (no patient data) and check the vault refuses alterations."""
    record, other = f"compliance-self-test-{new_id()}", f"compliance-self-test-{new_id()}"
    text = b"radbridge integrity self-test"
    key = vault.new_data_key(record)
    sealed = Vault.seal(key, "self-test", text)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    return {
        "round_trip": Vault.open(vault.unwrap(key.wrapped, record), "self-test", sealed) == text,
        "altered_ciphertext_refused": _raises(lambda: Vault.open(key, "self-test", tampered)),
        "ciphertext_moved_to_other_record_refused": _raises(
            lambda: Vault.open(DataKey(other, key.key, key.wrapped), "self-test", sealed)
        ),
        "data_key_moved_to_other_record_refused": _raises(lambda: vault.unwrap(key.wrapped, other)),
    }


def integrity(ev: Evidence) -> Item:
    v = ev.verification
    test = aead_self_test(ev.ctx.vault)
    with ev.ctx.db.connect() as conn:
        sealed_records = conn.execute(select(_keys.c.record_id).limit(1)).first() is not None
    details = {
        "stored_content": "sealed with AES-256-GCM (authenticated): an altered or moved ciphertext fails to open",
        "audit_details": "sealed with AES-256-GCM under the audit key; entries hash-chained",
        "audit_chain_verified": v.ok,
        "aead_self_test": test,
        "records_sealed": sealed_records,
    }
    if not v.ok:
        return Item("integrity", "integrity", "§164.312(c)(1), (c)(2)", "Integrity of stored data", "fail",
                    f"audit chain verification failed: {v.problem}", details)  # fmt: skip
    failed = [name for name, ok in test.items() if not ok]
    if failed:
        return Item("integrity", "integrity", "§164.312(c)(1), (c)(2)", "Integrity of stored data", "fail",
                    f"encryption self-test failed: {', '.join(failed)}", details)  # fmt: skip
    return Item("integrity", "integrity", "§164.312(c)(1), (c)(2)", "Integrity of stored data", "pass",
                "audit chain intact; authenticated encryption refuses altered or moved content (self-test)",
                details)  # fmt: skip


def _last_detail(ev: Evidence, actions: tuple[str, ...]) -> dict[str, Any] | None:
    exact = [a for a in actions if not a.endswith(".")]
    with ev.ctx.db.connect() as conn:
        row = conn.execute(select(_audit.c.id, _audit.c.detail)
                           .where(_audit.c.action.in_(exact), _audit.c.outcome == "success")
                           .order_by(_audit.c.ts.desc()).limit(1)).first()  # fmt: skip
    return ev.ctx.audit.open_detail(row.id, row.detail) if row is not None else None


def backups(ev: Evidence) -> Item:
    last = ev.audit.last(*BACKUP_ACTIONS)
    failed = ev.audit.last(*BACKUP_ACTIONS, outcome="failure")
    details: dict[str, Any] = {"last_backup": last, "backups_audited": ev.audit.count(*BACKUP_ACTIONS),
                               "last_failure": failed, "latest": _last_detail(ev, BACKUP_ACTIONS)}  # fmt: skip
    status: Status = "pass"
    if last is None:
        status, why = "attention", "no backup audited: run `radbridge backup DEST` on a schedule"
    elif (ev.age_days(last) or 0) > BACKUP_MAX_AGE_DAYS:
        status, why = "attention", f"last backup {_ago(ev, last)} (over {BACKUP_MAX_AGE_DAYS} days)"
    else:
        why = f"last backup {_ago(ev, last)} (database and blobs, SHA-256 manifest; keys kept apart)"
    return Item("backups", "integrity", "§164.308(a)(7)(ii)(A)", "Data backup", status, why, details)


def restore_test(ev: Evidence) -> Item:
    audited = ev.audit.last(*RESTORE_ACTIONS)
    attested = current(ev, "restore-test")
    times = [parse_ts(audited)] if audited else []
    if attested is not None:
        times.append(datetime.combine(attested.attested_on, datetime.min.time(), UTC))
    details = {"last_restore_audited": audited, "attestation": describe(ev.attestations.get("restore-test"))}
    newest = max(times, default=None)
    if newest is None or (ev.now - newest).total_seconds() > RESTORE_MAX_AGE_DAYS * 86400:
        why = (f"no restore test in the last {RESTORE_MAX_AGE_DAYS} days: restore a backup into a scratch install "
               "and record it (`radbridge compliance attest restore-test ...`)")  # fmt: skip
        return Item("restore-test", "integrity", "§164.308(a)(7)(ii)(D)", "Restore test", "attention", why, details)
    return Item("restore-test", "integrity", "§164.308(a)(7)(ii)(D)", "Restore test", "pass",
                f"last restore test {newest.date().isoformat()}", details)  # fmt: skip


def retention(ev: Evidence) -> Item:
    cfg = ev.ctx.project.engine.retention
    last = ev.audit.last("retention.purged")
    failed = ev.audit.last("retention.purged", outcome="failure")
    details = {
        "messages_days": cfg.messages_days,
        "channel_overrides": {c.config.name: c.config.retention_days for c in ev.ctx.project.channels
                              if c.config.retention_days is not None},
        "audit_days": cfg.audit_days,
        "disposal": "purged messages' data keys are deleted (crypto-shredding) and freed space scrubbed",
        "last_run": last,
        "last_failure": failed,
    }  # fmt: skip
    status: Status = "pass"
    if last is None:
        status = "attention"
        why = "retention never ran: `radbridge run` purges daily, or run `radbridge purge`"
    elif failed is not None and failed > last:
        status, why = "attention", f"the last retention run failed ({_ago(ev, failed)}); see the audit log"
    elif (ev.age_days(last) or 0) > RETENTION_STALE_DAYS:
        status, why = "attention", f"retention last ran {_ago(ev, last)}: is the engine running?"
    else:
        why = f"last retention run {_ago(ev, last)}; messages kept {cfg.messages_days} days unless a channel says"
    return Item("retention", "checklist", "§164.310(d)(2)(i), §164.316(b)(2)", "Retention and disposal", status,
                why, details)  # fmt: skip


def key_escrow(ev: Evidence) -> Item:
    exported = ev.audit.last("keys.exported")
    attested = current(ev, "key-escrow")
    rotated = ev.audit.last("keys.rotated")
    times = [parse_ts(exported)] if exported else []
    if attested is not None:
        times.append(datetime.combine(attested.attested_on, datetime.max.time(), UTC))
    newest = max(times, default=None)
    details = {"last_export_audited": exported, "attestation": describe(ev.attestations.get("key-escrow")),
               "last_rotation": rotated}  # fmt: skip
    title, cite = "Key escrow", "§164.308(a)(7)(ii)(B)"
    if newest is None:
        why = ("no keyring export or escrow on record: `radbridge keys export FILE` and keep it apart from backups, "
               "then `radbridge compliance attest key-escrow ...`")  # fmt: skip
        return Item("key-escrow", "checklist", cite, title, "attention", why, details)
    if rotated is not None and parse_ts(rotated) > newest:
        why = "the KEK was rotated after the last escrow: export the keyring again (the old copy lacks the new key)"
        return Item("key-escrow", "checklist", cite, title, "attention", why, details)
    return Item("key-escrow", "checklist", cite, title, "pass", f"keyring escrowed {newest.date().isoformat()}",
                details)  # fmt: skip
