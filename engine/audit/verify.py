"""`radbridge audit verify`: walk every node's chain and check it against the signed checkpoints.

Detects an edited entry (hash mismatch), a deleted or inserted one (sequence gap or broken link), a
reordering (broken link), a rewritten tail (checkpoint mismatch) and truncation (a checkpoint
beyond the last entry, or fewer entries than the last checkpoint counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, select

from engine.audit.chain import GENESIS, checkpoint_payload, entry_hash
from engine.store.tables import AuditCheckpoint, AuditRow

_audit = AuditRow.__table__
_checkpoints = AuditCheckpoint.__table__


@dataclass
class Verification:
    ok: bool = True
    entries: int = 0
    nodes: list[str] = field(default_factory=list)
    checkpoints: int = 0
    last_checkpoint: str | None = None  # ts of the newest checkpoint
    problem: str | None = None  # the first broken entry, when not ok

    def fail(self, problem: str) -> Verification:
        self.ok, self.problem = False, problem
        return self


def verify(engine: Engine, verify_key: Ed25519PublicKey, key_id: str) -> Verification:
    result = Verification()
    with engine.connect() as conn:
        nodes = [r[0] for r in conn.execute(select(_audit.c.node).distinct().order_by(_audit.c.node))]
        cp_nodes = [r[0] for r in conn.execute(select(_checkpoints.c.node).distinct())]
        result.nodes = sorted(set(nodes) | set(cp_nodes))
        for node in result.nodes:
            checkpoints = {
                cp.seq: cp
                for cp in conn.execute(
                    select(_checkpoints).where(_checkpoints.c.node == node).order_by(_checkpoints.c.seq)
                )
            }
            for cp in checkpoints.values():
                if cp.key_id != key_id:
                    return result.fail(f"node {node}: checkpoint at seq {cp.seq} was signed by unknown key {cp.key_id}")
                try:
                    verify_key.verify(bytes.fromhex(cp.signature), checkpoint_payload(node, cp.seq, cp.hash, cp.ts))
                except (InvalidSignature, ValueError):
                    return result.fail(f"node {node}: checkpoint at seq {cp.seq} has an invalid signature")
                result.checkpoints += 1
                result.last_checkpoint = max(result.last_checkpoint or "", cp.ts)
            expected, prev = 1, GENESIS
            query = select(_audit).where(_audit.c.node == node).order_by(_audit.c.seq).execution_options(yield_per=1000)
            for row in conn.execute(query).mappings():
                seq = row["seq"]
                if seq != expected:
                    kind = "missing (deleted?)" if seq > expected else "duplicated"
                    return result.fail(f"node {node}: entry seq {expected} is {kind}; found seq {seq} next")
                if row["prev_hash"] != prev:
                    return result.fail(
                        f"node {node}: entry seq {seq} does not follow seq {seq - 1} (inserted, deleted or reordered)"
                    )
                if entry_hash(prev, row) != row["hash"]:
                    return result.fail(f"node {node}: entry seq {seq} was altered (hash mismatch)")
                cp = checkpoints.get(seq)
                if cp is not None and cp.hash != row["hash"]:
                    return result.fail(
                        f"node {node}: entry seq {seq} differs from its signed checkpoint (history rewritten)"
                    )
                prev, expected = row["hash"], seq + 1
                result.entries += 1
            last = expected - 1
            beyond = [s for s in checkpoints if s > last]
            if beyond:
                return result.fail(
                    f"node {node}: log ends at seq {last} but a checkpoint covers seq {max(beyond)} (truncated)"
                )
    return result
