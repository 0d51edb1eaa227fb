"""The keyring: key-encryption key versions, blind-index key, audit key and checkpoint signing key.

Held in a JSON file (mode 0600, outside the data folder) or an environment variable. The first
`radbridge run` on a machine without one creates a development keyring and says so loudly.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.core.clock import iso
from engine.core.errors import KeyMaterialError

FORMAT = "radbridge-keyring/1"
log = logging.getLogger("radbridge.keys")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str, what: str, size: int | None = 32) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(f"keyring: {what} is not valid base64") from exc
    if size is not None and len(raw) != size:
        raise KeyMaterialError(f"keyring: {what} must be {size} bytes, found {len(raw)}")
    return raw


@dataclass
class KekVersion:
    key: bytes
    created_at: str
    retired: bool = False


@dataclass
class Keyring:
    """All key material the engine holds. Never logged; `describe()` gives what is safe to show."""

    kek_id: str
    kek_active: int
    kek_versions: dict[int, KekVersion]
    index_key: bytes
    audit_key: bytes
    signing_key: Ed25519PrivateKey
    dev: bool = False
    created_at: str = field(default_factory=iso)
    source: str = "memory"

    @property
    def verify_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    @property
    def signing_key_id(self) -> str:
        """A short fingerprint of the checkpoint public key, stored beside each signature."""
        raw = self.verify_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return raw.hex()[:16]

    def derived_key(self, purpose: str) -> bytes:
        """A 256-bit key for one purpose (e.g. "deid:<project>" pseudonyms), derived from the index key
        with HKDF-SHA256: separate from the blind indexes, yet needing no new key material to escrow."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"radbridge {purpose}".encode())
        return hkdf.derive(self.index_key)

    def kek(self, version: int) -> bytes:
        entry = self.kek_versions.get(version)
        if entry is None:
            raise KeyMaterialError(f"KEK {self.kek_id} version {version} is not in the keyring")
        if entry.retired:
            raise KeyMaterialError(f"KEK {self.kek_id} version {version} is retired")
        return entry.key

    def describe(self) -> dict[str, object]:
        return {
            "source": self.source,
            "dev": self.dev,
            "kek_id": self.kek_id,
            "kek_active": self.kek_active,
            "kek_versions": {
                v: {"created_at": k.created_at, "retired": k.retired} for v, k in self.kek_versions.items()
            },
            "signing_key_id": self.signing_key_id,
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        private = self.signing_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return json.dumps(
            {
                "format": FORMAT,
                "dev": self.dev,
                "created_at": self.created_at,
                "kek": {
                    "id": self.kek_id,
                    "active": self.kek_active,
                    "versions": {
                        str(v): {"key": _b64(k.key), "created_at": k.created_at, "retired": k.retired}
                        for v, k in sorted(self.kek_versions.items())
                    },
                },
                "index_key": _b64(self.index_key),
                "audit_key": _b64(self.audit_key),
                "signing_key": _b64(private),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, source: str) -> Keyring:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise KeyMaterialError(f"keyring from {source} is not valid JSON") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise KeyMaterialError(f"keyring from {source} is not a {FORMAT} document")
        try:
            kek = doc["kek"]
            versions = {
                int(v): KekVersion(_unb64(e["key"], f"KEK version {v}"), e["created_at"], bool(e.get("retired")))
                for v, e in kek["versions"].items()
            }
            keyring = cls(
                kek_id=str(kek["id"]),
                kek_active=int(kek["active"]),
                kek_versions=versions,
                index_key=_unb64(doc["index_key"], "index_key"),
                audit_key=_unb64(doc["audit_key"], "audit_key"),
                signing_key=Ed25519PrivateKey.from_private_bytes(_unb64(doc["signing_key"], "signing_key")),
                dev=bool(doc.get("dev")),
                created_at=str(doc.get("created_at", "")),
                source=source,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeyMaterialError(f"keyring from {source} is incomplete or malformed") from exc
        if keyring.kek_active not in versions:
            raise KeyMaterialError(f"keyring from {source}: active KEK version {keyring.kek_active} is missing")
        return keyring


def generate(dev: bool, kek_id: str = "local") -> Keyring:
    return Keyring(
        kek_id=kek_id,
        kek_active=1,
        kek_versions={1: KekVersion(os.urandom(32), iso())},
        index_key=os.urandom(32),
        audit_key=os.urandom(32),
        signing_key=Ed25519PrivateKey.generate(),
        dev=dev,
    )


def write_file(keyring: Keyring, path: Path, *, replace: bool = False) -> None:
    """Write atomically with mode 0600 from the first byte (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, keyring.to_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if not replace and path.exists():
        tmp.unlink()
        raise KeyMaterialError(f"key file {path} already exists")
    os.replace(tmp, path)
    keyring.source = f"file:{path}"


def read_file(path: Path) -> Keyring:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise KeyMaterialError(f"key file {path} does not exist (run `radbridge keys init`)") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyMaterialError(
            f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0600 (chmod 600 {path})"
        )
    return Keyring.from_json(path.read_text(), f"file:{path}")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def load(
    source: str,
    file: str,
    env_name: str,
    *,
    data_dir: Path,
    create_dev: bool = False,
    environ: dict[str, str] | None = None,
) -> Keyring:
    """Load the keyring the engine config names; optionally create a dev keyring file if absent."""
    environ = dict(os.environ) if environ is None else environ
    if source == "env":
        text = environ.get(env_name)
        if not text:
            raise KeyMaterialError(f"environment variable {env_name} holding the keyring is not set")
        if not text.lstrip().startswith("{"):
            try:
                text = base64.b64decode(text, validate=True).decode()
            except (ValueError, UnicodeDecodeError) as exc:
                raise KeyMaterialError(f"{env_name} is neither keyring JSON nor base64 of it") from exc
        return Keyring.from_json(text, f"env:{env_name}")
    path = Path(file).expanduser()
    if _inside(path, data_dir):
        raise KeyMaterialError(f"key file {path} is inside the data folder {data_dir}; keep keys apart from data")
    if not path.exists() and create_dev:
        keyring = generate(dev=True)
        write_file(keyring, path)
        log.warning(
            "DEVELOPMENT KEYRING CREATED at %s: every record is encrypted with a key that sits on this disk. "
            "Use a managed key (keys.source: env, or a KMS) for patient data.",
            path,
        )
        return keyring
    keyring = read_file(path)
    if keyring.dev:
        log.warning("running with the DEVELOPMENT keyring at %s; not for patient data", path)
    return keyring
