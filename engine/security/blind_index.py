"""Blind indexes: HMAC-SHA256 under a key of their own, so identifiers are searchable, never stored in clear."""

from __future__ import annotations

import hmac

# The identifier kinds the engine indexes; the kind is part of the MAC so equal values of
# different kinds (an MRN that equals an accession) do not collide.
KINDS = frozenset(
    {"accession", "mrn", "study_uid", "control_id", "patient", "series_uid", "sop_uid", "placer", "filler", "mpps_uid"}
)


class BlindIndex:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("blind-index key must be at least 32 bytes")
        self._key = key

    def content(self, data: bytes) -> str:
        """A keyed hash of a whole payload, to recognise a repeat without keeping a plain hash of PHI."""
        return hmac.digest(self._key, b"content\x00" + data, "sha256").hex()

    def __call__(self, kind: str, value: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown blind-index kind {kind!r}")
        return hmac.digest(self._key, f"{kind}\x00{value.strip()}".encode(), "sha256").hex()
