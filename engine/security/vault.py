"""Envelope encryption: AES-256-GCM under a fresh data key per record, the data key wrapped by a KEK.

Associated data binds every ciphertext to (format version, record id, part kind), and every wrapped
data key to (KEK id, KEK version, record id): a ciphertext or key moved to another record fails.
Rotation re-wraps data keys only; deleting a record's wrapped key crypto-shreds its content.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.core.errors import IntegrityError
from engine.security.keyring import Keyring
from engine.security.kms import Kek, LocalKek

FORMAT_VERSION = 1
_NONCE = 12


@dataclass(frozen=True)
class WrappedKey:
    kek_id: str
    kek_version: int
    wrapped: bytes  # nonce || AES-GCM(KEK, data key) || tag


@dataclass(frozen=True)
class DataKey:
    """A record's data key in clear (memory only) and its wrapped form (what is stored)."""

    record_id: str
    key: bytes
    wrapped: WrappedKey


def _content_aad(record_id: str, kind: str, version: int) -> bytes:
    return f"radbridge/content/v{version}|{record_id}|{kind}".encode()


def _key_aad(kek_id: str, kek_version: int, record_id: str) -> bytes:
    return f"radbridge/dek/v1|{kek_id}|{kek_version}|{record_id}".encode()


class Vault:
    """Envelope encryption over a KEK: the keyring's versions by default, or any `Kek` (a KMS)."""

    def __init__(self, keyring: Keyring, kek: Kek | None = None) -> None:
        self.keyring = keyring
        self.kek: Kek = kek if kek is not None else LocalKek(keyring)

    def new_data_key(self, record_id: str) -> DataKey:
        key = os.urandom(32)
        return DataKey(record_id, key, self.wrap(key, record_id))

    def wrap(self, key: bytes, record_id: str, kek_version: int | None = None) -> WrappedKey:
        kek_id = self.kek.kek_id
        version = self.kek.active if kek_version is None else kek_version
        version, blob = self.kek.wrap(key, _key_aad(kek_id, version, record_id), version)
        return WrappedKey(kek_id, version, blob)

    def unwrap(self, wrapped: WrappedKey, record_id: str) -> DataKey:
        if wrapped.kek_id != self.kek.kek_id:
            raise IntegrityError(f"record {record_id}: data key wrapped by unknown KEK {wrapped.kek_id}")
        aad = _key_aad(wrapped.kek_id, wrapped.kek_version, record_id)
        try:
            key = self.kek.unwrap(wrapped.wrapped, aad, wrapped.kek_version)  # KeyMaterialError when retired
        except IntegrityError:
            raise IntegrityError(f"record {record_id}: data key failed to unwrap (wrong KEK or tampered)") from None
        return DataKey(record_id, key, wrapped)

    def rewrap(self, wrapped: WrappedKey, record_id: str) -> WrappedKey:
        """Re-wrap under the active KEK version without touching the content."""
        return self.wrap(self.unwrap(wrapped, record_id).key, record_id)

    @staticmethod
    def seal(data_key: DataKey, kind: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        aad = _content_aad(data_key.record_id, kind, FORMAT_VERSION)
        return bytes([FORMAT_VERSION]) + nonce + AESGCM(data_key.key).encrypt(nonce, plaintext, aad)

    @staticmethod
    def open(data_key: DataKey, kind: str, sealed: bytes) -> bytes:
        if not sealed or sealed[0] != FORMAT_VERSION:
            raise IntegrityError(f"record {data_key.record_id} {kind}: unknown ciphertext format")
        aad = _content_aad(data_key.record_id, kind, sealed[0])
        try:
            return AESGCM(data_key.key).decrypt(sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], aad)
        except InvalidTag:
            raise IntegrityError(f"record {data_key.record_id} {kind}: ciphertext failed authentication") from None


class AuditSealer:
    """Seals audit details under the audit's own key, so purging a message never breaks its trail."""

    def __init__(self, keyring: Keyring) -> None:
        self._aead = AESGCM(keyring.audit_key)

    def seal(self, entry_id: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, f"radbridge/audit/v1|{entry_id}".encode())

    def open(self, entry_id: str, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], f"radbridge/audit/v1|{entry_id}".encode())
        except InvalidTag:
            raise IntegrityError(f"audit entry {entry_id}: detail failed authentication") from None


class StateRefused(Exception):
    """Sealed state that cannot be used; `reason` is "missing", "forged" or "expired"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def seal_state(key: bytes, payload: Mapping[str, Any], aad: bytes) -> str:
    """Short-lived state a browser carries for us (a cookie, a hidden form field): the payload as JSON
    under AES-GCM with `key` (one per purpose) and associated data naming what it is bound to, in
    URL-safe base64. Nobody can read, forge or move it elsewhere. The payload must hold `exp` (Unix time)."""
    nonce = os.urandom(_NONCE)
    sealed = nonce + AESGCM(key).encrypt(nonce, json.dumps(dict(payload)).encode(), aad)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def open_state(key: bytes, value: str | None, aad: bytes, now: float) -> dict[str, Any]:
    """The payload of `seal_state`, if `value` was sealed with this key and associated data and its
    `exp` has not passed at `now` (Unix time); else StateRefused."""
    if not value:
        raise StateRefused("missing")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        payload = json.loads(AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], aad))
    except (ValueError, InvalidTag):  # bad base64 or JSON (ValueError), or not ours
        raise StateRefused("forged") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int | float):
        raise StateRefused("forged")
    if now > payload["exp"]:
        raise StateRefused("expired")
    return payload
