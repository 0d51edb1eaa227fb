"""Key status over HTTP: what `radbridge keys status` shows (KEK versions and ages, records wrapped, last
rotation, development-key warning, blind-index and checkpoint key ages), never key material."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from engine.store import rotation
from tests.web.conftest import Web
from tests.web.test_compliance import dev_web


def _material(web: Web) -> list[str]:
    """Every key in the keyring, in the forms it could leak in (base64 as in the key file, hex)."""
    ring = web.ctx.keyring
    raw = [ring.index_key, ring.audit_key, *(v.key for v in ring.kek_versions.values()),
           ring.signing_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())]  # fmt: skip
    return [form for key in raw for form in (base64.b64encode(key).decode(), key.hex())]


def test_status_shows_versions_ages_and_no_key_material(web: Web) -> None:
    response = web.session("auditor").get("/api/keys")
    assert response.status_code == 200
    keys = response.json()
    ring = web.ctx.keyring
    assert keys["keyring"] == {"source": "file", "development": False, "created_at": ring.created_at,
                               "age_days": keys["keyring"]["age_days"]}  # fmt: skip
    assert 0 <= keys["keyring"]["age_days"] < 1
    [v1] = keys["kek"]["versions"]
    assert (keys["kek"]["id"], keys["kek"]["active_version"]) == (ring.kek_id, 1)
    assert v1["active"] and not v1["retired"] and v1["records"] >= 1  # the admin's TOTP secret has a data key
    assert keys["last_rotation"] is None
    assert keys["blind_index_key"]["bits"] == 256
    assert keys["checkpoint_signing_key"]["id"] == ring.signing_key_id
    assert keys["warnings"] == ["keys.allow_dev_key is true: a missing key file would become a development keyring"]
    page = web.session("auditor", accept_html=True).get("/keys")
    assert page.status_code == 200 and ring.kek_id in page.text and ring.signing_key_id in page.text
    for leak in _material(web):
        assert leak not in response.text and leak not in page.text


def test_rotation_shows_the_new_version_and_when(web: Web) -> None:
    ctx = web.ctx
    version = ctx.vault.kek.rotate()
    count = rotation.rotate(ctx.db, ctx.vault)
    ctx.audit.record("keys.rotated", actor="user:ops", detail={"kek": ctx.vault.kek.kek_id, "version": version,
                                                                "rewrapped": count})  # fmt: skip
    keys = web.session("admin").get("/api/keys").json()
    assert [(v["version"], v["active"]) for v in keys["kek"]["versions"]] == [(1, False), (2, True)]
    assert keys["kek"]["versions"][0]["records"] == 0 and keys["kek"]["versions"][1]["records"] == count
    assert keys["last_rotation"]["by"] == "user:ops" and keys["last_rotation"]["at"]


def test_development_keyring_is_warned_about(tmp_path: Path) -> None:
    with dev_web(tmp_path / "dev") as web:
        keys = web.session("auditor").get("/api/keys").json()
        page = web.session("admin", accept_html=True).get("/keys")
    assert keys["keyring"]["development"] is True
    assert keys["warnings"][0].startswith("DEVELOPMENT KEYRING in use")
    assert "development key: not for patient data" in page.text


def test_keys_need_keys_view(web: Web) -> None:
    assert web.session("radiologist").get("/api/keys").status_code == 403
    assert web.session("integration_analyst", accept_html=True).get("/keys").status_code == 403
