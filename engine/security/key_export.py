"""Passphrase-protected keyring export, kept apart from data backups.

The keyring JSON is sealed with AES-256-GCM under a key derived from the passphrase by scrypt
(n=2**15, r=8, p=1, random 16-byte salt). The envelope is a small JSON document:

    {"format": "radbridge-keyring-export/1",
     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<b64>"},
     "cipher": "AES-256-GCM", "nonce": "<b64>", "ciphertext": "<b64>"}

The format, cipher and KDF parameters are bound to the ciphertext as associated data, so none of
them can be changed without the import failing. Errors never carry key material.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from engine.core.errors import KeyMaterialError
from engine.security.keyring import Keyring

FORMAT = "radbridge-keyring-export/1"
CIPHER = "AES-256-GCM"
MIN_PASSPHRASE = 12
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAX_N = 2**20  # refuse envelopes that would make the import burn gigabytes of memory


def _check_passphrase(passphrase: str) -> bytes:
    if not isinstance(passphrase, str) or len(passphrase) < MIN_PASSPHRASE:
        raise KeyMaterialError(f"keyring export passphrase must be at least {MIN_PASSPHRASE} characters")
    return passphrase.encode()


def _derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def _aad(kdf: dict[str, Any]) -> bytes:
    header = {"format": FORMAT, "cipher": CIPHER, "kdf": kdf}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def export_keyring(keyring: Keyring, passphrase: str) -> bytes:
    """The keyring sealed under the passphrase, as envelope bytes (safe to store; still guard them)."""
    secret = _check_passphrase(passphrase)
    salt, nonce = os.urandom(16), os.urandom(12)
    kdf = {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": base64.b64encode(salt).decode()}
    key = _derive(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    ciphertext = AESGCM(key).encrypt(nonce, keyring.to_json().encode(), _aad(kdf))
    envelope = {
        "format": FORMAT,
        "kdf": kdf,
        "cipher": CIPHER,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    return json.dumps(envelope, indent=2).encode()


def import_keyring(data: bytes | str, passphrase: str) -> Keyring:
    """Open an export; a wrong passphrase or any alteration raises KeyMaterialError."""
    secret = _check_passphrase(passphrase)
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise KeyMaterialError(f"not a {FORMAT} document")
        if doc.get("cipher") != CIPHER:
            raise KeyMaterialError(f"keyring export: unsupported cipher {str(doc.get('cipher'))[:40]!r}")
        kdf = doc["kdf"]
        if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
            raise KeyMaterialError("keyring export: unsupported key derivation")
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
            raise KeyMaterialError("keyring export: key derivation parameters out of range")
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(doc["nonce"], validate=True)
        ciphertext = base64.b64decode(doc["ciphertext"], validate=True)
        if len(salt) < 16 or len(nonce) != 12:
            raise KeyMaterialError("keyring export: salt or nonce has the wrong size")
    except KeyMaterialError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError):
        raise KeyMaterialError("keyring export is malformed (not the JSON envelope `keys export` writes)") from None
    try:
        plain = AESGCM(_derive(secret, salt, n, r, p)).decrypt(nonce, ciphertext, _aad(kdf))
    except InvalidTag:
        raise KeyMaterialError("keyring export: wrong passphrase, or the file was altered") from None
    try:
        return Keyring.from_json(plain.decode(), "export")
    except UnicodeDecodeError:
        raise KeyMaterialError("keyring export: the sealed keyring is not text") from None
