"""Users, roles and tokens over HTTP: an admin adds, changes, disables, unlocks and issues tokens; others
are refused; a token is shown once and then works as a bearer until revoked; a refused password
comes back as the policy's problems, never as the password."""

from __future__ import annotations

import re

from tests.web.conftest import PASSWORD, Web

WEAK = "Password123!"


def _audited(web: Web, action: str) -> list[dict]:  # type: ignore[type-arg]
    return web.session("auditor").get("/api/audit", params={"action": action}).json()["entries"]  # type: ignore[no-any-return]


def test_admin_adds_changes_disables_and_enables_a_user(web: Web) -> None:
    admin = web.session("admin")
    created = admin.post("/api/users", json={"username": "dana", "display_name": "Dana Reader",
                                             "role": "radiologist", "password": PASSWORD})  # fmt: skip
    assert created.status_code == 201, created.text
    assert created.json()["role"] == "radiologist" and created.json()["totp_enrolled"] is False
    listed = {u["username"]: u for u in admin.get("/api/users").json()["users"]}
    assert listed["dana"]["display_name"] == "Dana Reader" and listed["dana"]["disabled"] is False
    assert listed["admin"]["totp_enrolled"] is True and listed["auditor"]["sessions_active"] == 0
    assert "password_hash" not in created.text and PASSWORD not in created.text
    changed = admin.post("/api/users/dana/role", json={"role": "technologist", "reason": "moved to CT"})
    assert changed.status_code == 200 and changed.json()["role"] == "technologist"
    [entry] = _audited(web, "user.role_changed")
    assert entry["actor"] == "user:admin" and entry["record_ids"] == ["user:dana"]
    assert entry["detail"]["from"] == "radiologist" and entry["detail"]["to"] == "technologist"
    assert admin.post("/api/users/dana/disable", json={"reason": "left"}).json()["disabled"] is True
    assert admin.post("/api/users/dana/enable", json={"reason": "back"}).json()["disabled"] is False
    assert [e["action"] for e in _audited(web, "user.")][:2] == ["user.enabled", "user.disabled"]
    service = admin.post("/api/users", json={"username": "pacs-bridge", "role": "service"})
    assert service.status_code == 201 and service.json()["has_password"] is False


def test_refusals_say_why_and_never_echo_the_password(web: Web) -> None:
    admin = web.session("admin")
    weak = admin.post("/api/users", json={"username": "erin", "role": "auditor", "password": WEAK})
    assert weak.status_code == 422 and "password rejected" in weak.json()["error"]
    assert "commonly used" in weak.json()["error"] and WEAK not in weak.text
    assert admin.post("/api/users", json={"username": "erin", "role": "auditor"}).status_code == 422
    taken = admin.post("/api/users", json={"username": "auditor", "role": "auditor", "password": PASSWORD})
    assert taken.status_code == 409 and PASSWORD not in taken.text
    assert (
        admin.post("/api/users", json={"username": "Bad Name", "role": "auditor", "password": PASSWORD}).status_code
        == 422
    )
    assert admin.post("/api/users", json={"username": "x1", "role": "wizard", "password": PASSWORD}).status_code == 422
    svc = admin.post("/api/users", json={"username": "svc2", "role": "service", "password": PASSWORD})
    assert svc.status_code == 422 and PASSWORD not in svc.text
    assert admin.post("/api/users/nobody/disable", json={"reason": "x"}).status_code == 404
    assert admin.post("/api/users/admin/disable", json={"reason": "oops"}).status_code == 422  # not yourself
    assert admin.post("/api/users/admin/role", json={"role": "auditor", "reason": "x"}).status_code == 422
    assert admin.post("/api/users/auditor/role", json={"role": "service", "reason": "x"}).status_code == 422
    assert admin.post("/api/users/auditor/disable", json={}).status_code == 422  # a reason is required


def test_lockout_shown_and_ended_by_unlock(web: Web) -> None:
    for _ in range(5):
        web.site.users.authenticate("technologist", "wrong password", None)
    admin = web.session("admin")
    locked = admin.get("/api/users/technologist").json()
    assert locked["locked"] is True and locked["locked_until"]
    unlocked = admin.post("/api/users/technologist/unlock")
    assert unlocked.status_code == 200 and unlocked.json()["locked"] is False
    assert _audited(web, "user.unlocked")[0]["record_ids"] == ["user:technologist"]


def test_others_may_look_or_not_but_not_change(web: Web) -> None:
    body = {"username": "mallory", "role": "admin", "password": PASSWORD}
    analyst = web.session("integration_analyst")
    assert analyst.get("/api/users").status_code == 403
    assert analyst.post("/api/users", json=body).status_code == 403
    assert analyst.post("/api/users/integration-analyst/role", json={"role": "admin", "reason": "x"}).status_code == 403
    auditor = web.session("auditor")
    assert auditor.get("/api/users").status_code == 200 and auditor.get("/api/users/admin").status_code == 200
    assert auditor.post("/api/users", json=body).status_code == 403
    assert auditor.post("/api/users/auditor/tokens", json={"scopes": ["audit.view"]}).status_code == 403
    assert web.site.users.get("mallory") is None


def test_token_shown_once_then_works_until_revoked(web: Web) -> None:
    admin = web.session("admin")
    issued = admin.post("/api/users/auditor/tokens", json={"scopes": ["audit.view"], "expires_days": 7,
                                                           "label": "siem"})  # fmt: skip
    assert issued.status_code == 201
    token, token_id = issued.json()["token"], issued.json()["token_id"]
    assert re.fullmatch(rf"rb_{token_id}_\S+", token)
    shown = admin.get("/api/users/auditor")
    [row] = shown.json()["token_list"]
    assert (row["id"], row["label"], row["scopes"], row["state"]) == (token_id, "siem", ["audit.view"], "active")
    assert token not in shown.text and token.split("_")[-1] not in shown.text
    bearer = web.client(headers={"Authorization": f"Bearer {token}"})
    assert bearer.get("/api/audit", params={"limit": 1}).status_code == 200
    assert bearer.get("/api/users").status_code == 403  # only its scope, not the whole role
    wrong_scope = admin.post("/api/users/auditor/tokens", json={"scopes": ["users.manage"]})
    assert wrong_scope.status_code == 422 and "not allowed for role auditor" in wrong_scope.json()["error"]
    revoked = admin.post(f"/api/tokens/{token_id}/revoke", json={"reason": "rotated"})
    assert revoked.status_code == 200 and revoked.json()["username"] == "auditor"
    assert bearer.get("/api/audit", params={"limit": 1}).status_code == 401
    assert admin.post(f"/api/tokens/{token_id}/revoke", json={"reason": "again"}).status_code == 422
    assert admin.post("/api/tokens/0123456789abcdef/revoke", json={"reason": "x"}).status_code == 404
    assert admin.get("/api/users/auditor").json()["token_list"][0]["state"] == "revoked"


def test_pages_list_users_per_role_and_forms_change_them(web: Web) -> None:
    admin = web.session("admin", accept_html=True)
    page = admin.get("/users")
    assert page.status_code == 200
    for role in ("admin", "integration_analyst", "radiologist", "technologist", "auditor", "service"):
        assert f'id="role-{role}"' in page.text
    assert 'action="/users"' in page.text  # the add form, for admins
    assert 'action="/users"' not in web.session("auditor", accept_html=True).get("/users").text
    weak = admin.post("/users", data={"username": "frank", "role": "auditor", "password": WEAK})
    assert weak.status_code == 422 and "password rejected" in weak.text and WEAK not in weak.text
    assert 'value="frank"' in weak.text  # the form comes back filled in, except the password
    added = admin.post("/users", data={"username": "frank", "role": "auditor", "display_name": "Frank",
                                       "password": PASSWORD})  # fmt: skip
    assert added.status_code == 303 and added.headers["location"] == "/users/frank"
    assert admin.post("/users/frank/disable", data={"reason": "left"}).status_code == 303
    assert "disabled" in admin.get("/users/frank").text
    assert admin.post("/users/frank/enable", data={"reason": "back"}).status_code == 303
    made = admin.post("/users/frank/tokens", data={"scopes": ["audit.view", "keys.view"], "expires_days": "30"})
    assert made.status_code == 201
    [token] = re.findall(r"rb_[0-9a-f]{16}_[^<\s]+", made.text)
    assert token not in admin.get("/users/frank").text  # shown once
    token_id = token.split("_")[1]
    assert admin.post(f"/tokens/{token_id}/revoke", data={"reason": "test"}).status_code == 303
    assert admin.get("/users/nobody").status_code == 404


def test_admin_resets_a_password_and_the_user_signs_in_with_it(web: Web) -> None:
    admin = web.session("admin")
    weak = admin.post("/api/users/technologist/password", json={"password": "password123"})
    assert weak.status_code == 422 and "commonly used" in weak.json()["error"] and "password123" not in weak.text
    new = "Fresh-Orbit-Lantern-42"
    assert admin.post("/api/users/technologist/password", json={"password": new}).status_code == 200
    assert admin.post("/api/users/service/password", json={"password": new}).status_code == 422  # tokens only
    assert web.session("integration_analyst").post(
        "/api/users/technologist/password", json={"password": new}
    ).status_code == 403
    client = web.client()
    old = client.post("/login", data={"username": "technologist", "password": PASSWORD})
    assert old.status_code == 401
    assert client.post("/login", data={"username": "technologist", "password": new}).status_code == 303


def test_admin_enrols_totp_shown_once_and_the_user_then_needs_its_code(web: Web) -> None:
    import pyotp

    admin = web.session("admin")
    enrolled = admin.post("/api/users/radiologist/totp")
    assert enrolled.status_code == 201
    secret = enrolled.json()["secret"]
    assert enrolled.json()["otpauth_uri"].startswith("otpauth://totp/")
    shown = admin.get("/api/users/radiologist").text
    assert secret not in shown and '"totp_enrolled":true' in shown.replace(" ", "")
    client = web.client()
    asked = client.post("/login", data={"username": "radiologist", "password": PASSWORD})
    assert asked.status_code == 401 and "authenticator app" in asked.text
    code = pyotp.TOTP(secret).now()
    signed_in = client.post("/login", data={"username": "radiologist", "password": PASSWORD, "totp": code})
    assert signed_in.status_code == 303
    page = web.session("admin", accept_html=True).post("/users/technologist/totp")
    assert page.status_code == 201 and "shown once" in page.text and "otpauth://totp/" in page.text
