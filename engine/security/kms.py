"""Key-encryption keys (KEKs) behind one interface, so the envelope code is the same for every KMS.

A KEK wraps and unwraps 32-byte data keys with associated data (which the vault builds from the
KEK id, KEK version and record id) under a numbered version. Versions are rotated (a new version
becomes active) and retired (unwrapping with it is refused from then on).

- `LocalKek`: the versions held in the keyring (file or environment variable). Rotating adds a
  random 256-bit version and saves the keyring file atomically (0600).
- `VaultTransitKek`: a named key in HashiCorp Vault's transit engine, over its HTTP API. The key
  material never leaves Vault; a wrapped data key is Vault's `vault:v<N>:...` ciphertext. Retiring
  raises the key's `min_decryption_version`, so Vault itself refuses older versions.

Errors are one line with the KEK id, version and HTTP status; never key material, tokens or
ciphertexts.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.core.clock import iso
from engine.core.errors import IntegrityError, KeyMaterialError
from engine.security.keyring import KekVersion, Keyring, write_file

_NONCE = 12


@runtime_checkable
class Kek(Protocol):
    """A versioned key-encryption key. `kek_id` is stored beside every wrapped key."""

    @property
    def kek_id(self) -> str: ...

    @property
    def active(self) -> int:
        """The version new data keys are wrapped under."""
        ...

    def wrap(self, key: bytes, aad: bytes, version: int | None = None) -> tuple[int, bytes]:
        """Wrap `key` under `version` (the active one when None); returns (version, blob)."""
        ...

    def unwrap(self, blob: bytes, aad: bytes, version: int) -> bytes:
        """KeyMaterialError for a missing or retired version, IntegrityError for a wrong key or tampering."""
        ...

    def versions(self) -> dict[int, dict[str, Any]]:
        """version -> {"created_at": RFC 3339 str, "retired": bool, "active": bool}."""
        ...

    def rotate(self) -> int:
        """Create a new version and make it active; returns it."""
        ...

    def retire(self, version: int) -> None:
        """Refuse unwrapping under `version` from now on. Callers check that no record still needs it
        (engine.store.rotation.retire does)."""
        ...


# -- local (keyring) ---------------------------------------------------------------------------


class LocalKek:
    """The KEK versions of the keyring. Reads the keyring live, so changes to it take effect at once."""

    def __init__(self, keyring: Keyring, path: Path | None = None) -> None:
        self.keyring = keyring
        if path is None and keyring.source.startswith("file:"):
            path = Path(keyring.source.removeprefix("file:"))
        self.path = path
        self._aead: dict[int, tuple[bytes, AESGCM]] = {}

    def __repr__(self) -> str:
        return f"LocalKek(kek_id={self.kek_id!r}, active={self.active}, source={self.keyring.source!r})"

    @property
    def kek_id(self) -> str:
        return self.keyring.kek_id

    @property
    def active(self) -> int:
        return self.keyring.kek_active

    def _cipher(self, version: int) -> AESGCM:
        key = self.keyring.kek(version)  # raises for a missing or retired version, every time
        cached = self._aead.get(version)
        if cached is None or cached[0] != key:
            cached = self._aead[version] = (key, AESGCM(key))
        return cached[1]

    def wrap(self, key: bytes, aad: bytes, version: int | None = None) -> tuple[int, bytes]:
        version = self.active if version is None else version
        nonce = os.urandom(_NONCE)
        return version, nonce + self._cipher(version).encrypt(nonce, key, aad)

    def unwrap(self, blob: bytes, aad: bytes, version: int) -> bytes:
        cipher = self._cipher(version)
        try:
            return cipher.decrypt(blob[:_NONCE], blob[_NONCE:], aad)
        except InvalidTag:
            raise IntegrityError(f"KEK {self.kek_id} version {version}: data key failed to unwrap") from None

    def versions(self) -> dict[int, dict[str, Any]]:
        return {
            v: {"created_at": k.created_at, "retired": k.retired, "active": v == self.active}
            for v, k in sorted(self.keyring.kek_versions.items())
        }

    def _save(self, what: str) -> None:
        if self.path is None:
            raise KeyMaterialError(
                f"cannot {what} KEK {self.kek_id}: the keyring comes from {self.keyring.source}, not a file; "
                "change it where it is kept"
            )
        write_file(self.keyring, self.path, replace=True)

    def rotate(self) -> int:
        if self.path is None:
            self._save("rotate")  # raises before anything changes
        version = max(self.keyring.kek_versions) + 1
        previous = self.keyring.kek_active
        self.keyring.kek_versions[version] = KekVersion(os.urandom(32), iso())
        self.keyring.kek_active = version
        try:
            self._save("rotate")
        except BaseException:
            del self.keyring.kek_versions[version]
            self.keyring.kek_active = previous
            raise
        return version

    def retire(self, version: int) -> None:
        entry = self.keyring.kek_versions.get(version)
        if entry is None:
            raise KeyMaterialError(f"KEK {self.kek_id} version {version} is not in the keyring")
        if version == self.active:
            raise KeyMaterialError(f"KEK {self.kek_id} version {version} is active; rotate before retiring it")
        if entry.retired:
            return
        if self.path is None:
            self._save("retire a version of")
        entry.retired = True
        try:
            self._save("retire a version of")
        except BaseException:
            entry.retired = False
            raise
        self._aead.pop(version, None)


# -- HashiCorp Vault transit ------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class VaultTransitKek:
    """A named transit key in HashiCorp Vault (aes256-gcm96; Vault 1.13+ for associated data)."""

    def __init__(
        self,
        addr: str,
        key: str,
        token: str,
        *,
        mount: str = "transit",
        kek_id: str | None = None,
        namespace: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
        cache_seconds: float = 60.0,
    ) -> None:
        if not token:
            raise KeyMaterialError(f"Vault transit key {key}: no token given")
        self.addr = addr.rstrip("/")
        self.key = key
        self.mount = mount.strip("/")
        self._kek_id = kek_id or f"vault-transit:{self.mount}/{key}"[:64]
        headers = {"X-Vault-Token": token}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        self._client = httpx.Client(
            base_url=self.addr, headers=headers, timeout=timeout, verify=verify, transport=transport
        )
        self._cache_seconds = cache_seconds
        self._info: dict[str, Any] | None = None
        self._info_at = 0.0

    def __repr__(self) -> str:  # never the token
        return f"VaultTransitKek(addr={self.addr!r}, mount={self.mount!r}, key={self.key!r})"

    def close(self) -> None:
        self._client.close()

    @property
    def kek_id(self) -> str:
        return self._kek_id

    # -- HTTP --------------------------------------------------------------------------------

    def _call(self, op: str, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        where = f"Vault transit key {self.mount}/{self.key}: {op}"
        try:
            response = self._client.request(method, f"/v1/{self.mount}/{path}", json=body)
        except httpx.TimeoutException:
            raise KeyMaterialError(f"{where} timed out reaching {self.addr}") from None
        except httpx.HTTPError as exc:
            raise KeyMaterialError(f"{where} failed: cannot reach {self.addr} ({type(exc).__name__})") from None
        status = response.status_code
        if status == 204:
            return {}
        try:
            doc = response.json()
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if status < 300:
            return doc
        errors = doc.get("errors")
        detail = _one_line("; ".join(str(e) for e in errors)) if isinstance(errors, list) and errors else ""
        if status == 403:
            raise KeyMaterialError(f"{where} refused: permission denied (HTTP 403; check the token and its policy)")
        if status == 404:
            raise KeyMaterialError(f"{where} failed: not found (HTTP 404; is transit mounted and the key created?)")
        if status == 400 and "disallowed by policy" in detail:
            raise _Retired(f"{where} refused: that key version is retired (min_decryption_version)")
        if status == 400 and op == "decrypt":
            raise IntegrityError(f"{where} failed: data key failed to unwrap (wrong key or tampered)")
        if status >= 500:
            suffix = f": {detail}" if detail else ""
            raise KeyMaterialError(f"{where} failed: Vault returned HTTP {status}{suffix}")
        suffix = f": {detail}" if detail else ""
        raise KeyMaterialError(f"{where} failed: HTTP {status}{suffix}")

    def _read(self, *, fresh: bool = False) -> dict[str, Any]:
        if fresh or self._info is None or time.monotonic() - self._info_at > self._cache_seconds:
            data = self._call("read key", "GET", f"keys/{self.key}").get("data")
            if not isinstance(data, dict) or not isinstance(data.get("keys"), dict):
                raise KeyMaterialError(f"Vault transit key {self.mount}/{self.key}: read key gave no versions")
            self._info, self._info_at = data, time.monotonic()
        return self._info

    # -- Kek ---------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return int(self._read()["latest_version"])

    def wrap(self, key: bytes, aad: bytes, version: int | None = None) -> tuple[int, bytes]:
        version = self.active if version is None else version
        body = {"plaintext": _b64(key), "associated_data": _b64(aad), "key_version": version}
        data = self._call("encrypt", "POST", f"encrypt/{self.key}", body).get("data") or {}
        ciphertext = data.get("ciphertext") if isinstance(data, dict) else None
        if not isinstance(ciphertext, str) or _version_of(ciphertext) != version:
            raise KeyMaterialError(
                f"Vault transit key {self.mount}/{self.key}: encrypt did not return a version {version} ciphertext"
            )
        return version, ciphertext.encode()

    def unwrap(self, blob: bytes, aad: bytes, version: int) -> bytes:
        try:
            ciphertext = blob.decode("ascii")
        except UnicodeDecodeError:
            raise IntegrityError(f"KEK {self.kek_id}: wrapped data key is not a Vault ciphertext") from None
        if _version_of(ciphertext) != version:
            raise IntegrityError(f"KEK {self.kek_id}: wrapped data key does not carry version {version}")
        body = {"ciphertext": ciphertext, "associated_data": _b64(aad)}
        try:
            data = self._call("decrypt", "POST", f"decrypt/{self.key}", body).get("data") or {}
        except _Retired:
            raise KeyMaterialError(f"KEK {self.kek_id} version {version} is retired") from None
        try:
            return base64.b64decode(data["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error, ValueError):
            raise KeyMaterialError(f"Vault transit key {self.mount}/{self.key}: decrypt gave no plaintext") from None

    def versions(self) -> dict[int, dict[str, Any]]:
        info = self._read(fresh=True)
        latest = int(info["latest_version"])
        min_dec = int(info.get("min_decryption_version") or 1)
        return {
            int(v): {"created_at": _created(created), "retired": int(v) < min_dec, "active": int(v) == latest}
            for v, created in sorted(info["keys"].items(), key=lambda kv: int(kv[0]))
        }

    def rotate(self) -> int:
        self._call("rotate", "POST", f"keys/{self.key}/rotate", {})
        return int(self._read(fresh=True)["latest_version"])

    def retire(self, version: int) -> None:
        """Raise min_decryption_version past `version`. Vault retires versions oldest first only."""
        info = self._read(fresh=True)
        latest = int(info["latest_version"])
        min_dec = int(info.get("min_decryption_version") or 1)
        if version < min_dec:
            return
        if str(version) not in {str(k) for k in info["keys"]} or version > latest:
            raise KeyMaterialError(f"KEK {self.kek_id} version {version} does not exist")
        if version == latest:
            raise KeyMaterialError(f"KEK {self.kek_id} version {version} is active; rotate before retiring it")
        if version != min_dec:
            raise KeyMaterialError(
                f"KEK {self.kek_id}: Vault retires versions oldest first; retire version {min_dec} before {version}"
            )
        self._call("retire", "POST", f"keys/{self.key}/config", {"min_decryption_version": version + 1})
        self._read(fresh=True)


class _Retired(KeyMaterialError):
    pass


def _version_of(ciphertext: str) -> int | None:
    parts = ciphertext.split(":", 2)
    if len(parts) != 3 or parts[0] != "vault" or not parts[1].startswith("v"):
        return None
    try:
        return int(parts[1][1:])
    except ValueError:
        return None


def _created(value: Any) -> str:
    """Transit gives key creation times as Unix seconds (symmetric keys) or RFC 3339 strings."""
    if isinstance(value, int | float):
        return iso(datetime.fromtimestamp(value, UTC))
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "creation_time" in value:
        return _created(value["creation_time"])
    return ""


# -- from configuration -----------------------------------------------------------------------


def open_kek(
    keyring: Keyring,
    source: str = "keyring",
    settings: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Kek:
    """The KEK the configuration names: "keyring" (LocalKek; keys.source file or env) or "vault-transit".

    vault-transit settings: addr, key, mount ("transit"), token_env ("VAULT_TOKEN"), namespace,
    kek_id, timeout (10 s), ca (CA bundle path). The token is read from the environment variable.
    """
    if source in ("keyring", "file", "env"):
        return LocalKek(keyring)
    if source != "vault-transit":
        raise KeyMaterialError(f"unknown KEK source {source!r} (keyring, vault-transit)")
    settings = dict(settings or {})
    environ = os.environ if environ is None else environ
    for name in ("addr", "key"):
        if not settings.get(name):
            raise KeyMaterialError(f"vault-transit KEK needs '{name}'")
    token_env = str(settings.get("token_env") or "VAULT_TOKEN")
    token = environ.get(token_env)
    if not token:
        raise KeyMaterialError(f"environment variable {token_env} holding the Vault token is not set")
    return VaultTransitKek(
        str(settings["addr"]),
        str(settings["key"]),
        token,
        mount=str(settings.get("mount") or "transit"),
        kek_id=settings.get("kek_id"),
        namespace=settings.get("namespace"),
        timeout=float(settings.get("timeout") or 10.0),
        verify=settings.get("ca") or True,
        transport=transport,
    )
