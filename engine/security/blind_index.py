"""Blind indexes: HMAC-SHA256 under a key of their own, so identifiers are searchable, never stored in clear."""

from __future__ import annotations

import hashlib
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
        # The keyed state, computed once: each index copies it (HMAC_CTX_copy) rather than setting up
        # the key and looking up SHA-256 again, which costs more than the hash of a short identifier.
        self._mac = hmac.new(key, digestmod="sha256")

    def content(self, data: bytes, sha256: str | None = None) -> str:
        """A keyed hash of a whole payload, to recognise a repeat without keeping a plain hash of PHI.
        Keyed over the payload's SHA-256, so a source that already hashed it (a DICOM instance's
        integrity hash) passes that in and a large payload is read once, not twice."""
        digest = bytes.fromhex(sha256) if sha256 else hashlib.sha256(data).digest()
        return self._hex(b"content-sha256\x00" + digest)

    def __call__(self, kind: str, value: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown blind-index kind {kind!r}")
        return self._hex(f"{kind}\x00{value.strip()}".encode())

    def _hex(self, data: bytes) -> str:
        mac = self._mac.copy()
        mac.update(data)
        return mac.hexdigest()
