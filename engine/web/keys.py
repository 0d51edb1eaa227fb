"""Key status in the browser and the API: what `radbridge keys status` prints, never key material.

The KEK id, its versions with their ages and how many data keys each wraps, the last rotation (from
the audit log), whether the development keyring is in use, and the ages of the blind-index and
checkpoint signing keys (both made with the keyring, so as old as it is).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from engine.audit import query
from engine.compliance.at_rest import MAX_KEK_AGE_DAYS
from engine.compliance.evidence import parse_ts
from engine.security.access import Principal
from engine.store import rotation
from engine.web.auth import Need, site_of
from engine.web.pages import render

router = APIRouter()
VIEW = Need("keys.view")


def _age_days(ts: str | None, now: datetime) -> float | None:
    try:
        return round((now - parse_ts(ts)).total_seconds() / 86400, 1) if ts else None
    except ValueError:  # a KMS that gives no readable creation time
        return None


def key_status(request: Request) -> dict[str, Any]:
    site = site_of(request)
    ctx, now = site.ctx, site.clock()
    keyring, keys = ctx.keyring, ctx.project.engine.keys
    state = rotation.status(ctx.db, ctx.vault.kek)
    versions = [{**v, "age_days": _age_days(v["created_at"], now)} for v in state["versions"]]
    versions = [{k: v for k, v in version.items() if k != "age_seconds"} for version in versions]
    active = next((v for v in versions if v["active"]), None)
    rotated = query.last(ctx.db, "keys.rotated")
    keyring_age = _age_days(keyring.created_at, now)
    kek_source = "kms (HashiCorp Vault transit)" if keys.kek == "vault-transit" else keys.source
    warnings = []
    if keyring.dev:
        warnings.append("DEVELOPMENT KEYRING in use (created on this disk by `radbridge run`): not for patient "
                        "data; create a managed one with `radbridge keys init`, keys.source env or a KMS")  # fmt: skip
    elif keys.allow_dev_key and keys.source == "file":
        warnings.append("keys.allow_dev_key is true: a missing key file would become a development keyring")
    if state["unknown_versions"]:
        warnings.append("some data keys are wrapped by KEK versions missing from the keyring")
    if active and active["age_days"] is not None and active["age_days"] > MAX_KEK_AGE_DAYS:
        warnings.append(f"the active KEK version is {active['age_days']:.0f} days old: rotate it "
                        "(`radbridge keys rotate`)")  # fmt: skip
    return {
        "keyring": {"source": keyring.source.split(":", 1)[0], "development": keyring.dev,
                    "created_at": keyring.created_at, "age_days": keyring_age},
        "kek": {"id": state["kek_id"], "source": kek_source, "active_version": state["active"],
                "active_age_days": active["age_days"] if active else None, "versions": versions,
                "unknown_versions": state["unknown_versions"], "other_keks": state["other_keks"]},
        "last_rotation": {"at": rotated.ts, "by": rotated.actor} if rotated else None,
        "blind_index_key": {"bits": len(keyring.index_key) * 8, "created_at": keyring.created_at,
                            "age_days": keyring_age},
        "checkpoint_signing_key": {"id": keyring.signing_key_id, "algorithm": "Ed25519",
                                   "created_at": keyring.created_at, "age_days": keyring_age},
        "warnings": warnings,
    }  # fmt: skip


@router.get("/api/keys", tags=["keys"])
def keys_api(request: Request, who: Principal = Depends(VIEW)) -> dict[str, Any]:
    """KEK id and versions (age, active, retired, data keys wrapped), last rotation, development-key
    warning, blind-index and checkpoint signing key ages. Never key material."""
    return key_status(request)


@router.get("/keys", include_in_schema=False)
def keys_page(request: Request, who: Principal = Depends(VIEW)) -> Response:
    return render(request, "keys.html", keys=key_status(request))
