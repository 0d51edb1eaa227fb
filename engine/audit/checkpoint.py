"""Signed checkpoints: the chain head of a node, signed with the Ed25519 key held in the keyring (not the database)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from engine.audit.chain import checkpoint_payload
from engine.core.clock import iso
from engine.security.keyring import Keyring
from engine.store.tables import AuditCheckpoint, AuditRow

_audit = AuditRow.__table__
_checkpoints = AuditCheckpoint.__table__


def write_checkpoint(engine: Engine, keyring: Keyring, node: str) -> int | None:
    """Sign the node's current head; returns its seq, or None when there is nothing new to sign."""
    with engine.begin() as conn:
        head = conn.execute(
            select(_audit.c.seq, _audit.c.hash).where(_audit.c.node == node).order_by(_audit.c.seq.desc()).limit(1)
        ).first()
        if head is None:
            return None
        last = conn.execute(
            select(_checkpoints.c.seq).where(_checkpoints.c.node == node).order_by(_checkpoints.c.seq.desc()).limit(1)
        ).scalar()
        if last == head.seq:
            return None
        ts = iso()
        signature = keyring.signing_key.sign(checkpoint_payload(node, head.seq, head.hash, ts)).hex()
        conn.execute(
            _checkpoints.insert().values(
                node=node,
                seq=head.seq,
                hash=head.hash,
                ts=ts,
                key_id=keyring.signing_key_id,
                signature=signature,
            )
        )
        return head.seq
