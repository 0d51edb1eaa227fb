"""Evidence for §164.312(a)(2)(iv), encryption and decryption: the envelope encryption and its keys,
and the blind indexes that keep searchable identifiers out of the store in clear.

Only what `Keyring.describe()` and the KEK's version list give is shown: ids, versions, dates,
sources. Never key material.
"""

from __future__ import annotations

from engine.compliance.evidence import Evidence, Item, Status, parse_ts
from engine.security.blind_index import KINDS
from engine.store import rotation

MAX_KEK_AGE_DAYS = 365
ALGORITHM = (
    "AES-256-GCM envelope encryption: a fresh 256-bit data key per record, wrapped by the KEK; associated data "
    "binds each ciphertext to its record id and part"
)


def _kek_source(ev: Evidence) -> str:
    keys = ev.ctx.project.engine.keys
    if keys.kek == "vault-transit":
        return "kms (HashiCorp Vault transit)"
    return "env" if keys.source == "env" else "file"


def encryption_at_rest(ev: Evidence) -> Item:
    keyring, keys = ev.ctx.keyring, ev.ctx.project.engine.keys
    state = rotation.status(ev.ctx.db, ev.ctx.vault.kek)
    active = next((v for v in state["versions"] if v["active"]), None)
    age_days = None
    try:
        if active is not None and active["created_at"]:
            age_days = round((ev.now - parse_ts(active["created_at"])).total_seconds() / 86400, 1)
    except ValueError:  # a KMS that gives no readable creation time: the age stays unknown
        age_days = None
    rotations = ev.audit.count("keys.rotated")
    details = {
        "algorithm": ALGORITHM,
        "kek_source": _kek_source(ev),
        "keyring": keyring.source.split(":", 1)[0],  # file / env: the path stays out of the report
        "development_keyring": keyring.dev,
        "kek_id": state["kek_id"],
        "kek_active_version": state["active"],
        "kek_active_created": active["created_at"] if active else None,
        "kek_active_age_days": age_days,
        "kek_versions": len(state["versions"]),
        "rotations_audited": rotations,
        "last_rotation": ev.audit.last("keys.rotated"),
        "data_keys_wrapped": sum(v["records"] for v in state["versions"]),
        "data_keys_under_unknown_versions": sum(state["unknown_versions"].values()),
        "allow_dev_key": keys.allow_dev_key,
    }
    status: Status = "pass"
    if keyring.dev:
        status = "fail"
        why = ("a development keyring is in use (created on this disk by `radbridge run`): "
               "create a managed one with `radbridge keys init`, keys.source env or a KMS")  # fmt: skip
    elif state["unknown_versions"]:
        status = "attention"
        why = "some data keys are wrapped by KEK versions missing from the keyring: import the keyring they need"
    elif age_days is not None and age_days > MAX_KEK_AGE_DAYS:
        status = "attention"
        never = " and it was never rotated" if len(state["versions"]) == 1 else ""
        why = f"the active KEK version is {age_days:.0f} days old{never}: rotate it (`radbridge keys rotate`)"
    elif keys.allow_dev_key and keys.source == "file":
        status = "attention"
        why = ("keys.allow_dev_key is true: if the key file went missing, `radbridge run` would create a "
               "development keyring; set it false")  # fmt: skip
    else:
        why = (f"AES-256-GCM per record; KEK {state['kek_id']} v{state['active']} from {details['kek_source']}, "
               f"{age_days if age_days is not None else '?'} days old")  # fmt: skip
    return Item("encryption-at-rest", "access", "§164.312(a)(2)(iv)", "Encryption at rest", status, why, details)


def blind_indexes(ev: Evidence) -> Item:
    key = ev.ctx.keyring.index_key
    separate = key not in {v.key for v in ev.ctx.keyring.kek_versions.values()} and key != ev.ctx.keyring.audit_key
    details = {
        "algorithm": "HMAC-SHA256, the identifier kind bound into the MAC",
        "key_bits": len(key) * 8,
        "separate_from_encryption_keys": separate,
        "kinds": sorted(KINDS),
    }
    if len(key) < 32 or not separate:
        why = "the blind-index key is shorter than 256 bits or shared with an encryption key: make a new keyring"
        return Item("blind-indexes", "access", "§164.312(a)(2)(iv)", "Blind indexes", "fail", why, details)
    why = f"identifiers searched by HMAC-SHA256 under a {len(key) * 8}-bit key of their own, never stored in clear"
    return Item("blind-indexes", "access", "§164.312(a)(2)(iv)", "Blind indexes", "pass", why, details)
