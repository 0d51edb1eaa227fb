"""The hash chain: each entry's SHA-256 covers a canonical encoding of its fields and its predecessor's hash.

Pure functions, shared by the writer that appends and by `radbridge audit verify`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

GENESIS = "0" * 64
# The fields covered by the hash, in order. Changing this list is a format change.
HASHED_FIELDS = (
    "node",
    "seq",
    "id",
    "ts",
    "actor",
    "peer",
    "action",
    "outcome",
    "purpose",
    "record_ids",
    "indexes",
    "detail",
)


def canonical(row: Mapping[str, Any]) -> bytes:
    """A byte-exact encoding: JSON array in HASHED_FIELDS order, bytes as hex, ASCII only."""
    values = []
    for name in HASHED_FIELDS:
        value = row.get(name)
        values.append(value.hex() if isinstance(value, (bytes, bytearray, memoryview)) else value)
    return json.dumps(values, ensure_ascii=True, separators=(",", ":")).encode()


def entry_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(row)).hexdigest()


def link(node: str, head_seq: int, head_hash: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each row its place after (head_seq, head_hash): node, seq, prev_hash and hash."""
    seq, prev = head_seq, head_hash
    for row in rows:
        seq += 1
        row["node"], row["seq"], row["prev_hash"] = node, seq, prev
        prev = row["hash"] = entry_hash(prev, row)
    return rows


def checkpoint_payload(node: str, seq: int, hash_: str, ts: str) -> bytes:
    return json.dumps(["radbridge-audit-checkpoint/1", node, seq, hash_, ts], separators=(",", ":")).encode()
