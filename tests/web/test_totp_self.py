"""People set up and replace their own TOTP authenticator on /me, over real HTTP: re-authentication at
the start (a wrong password or code counts toward the lockout), a new secret shown to them only and
carried sealed to the confirm step (bound to the user, the session and 10 minutes), a code from the new
authenticator to confirm it, the code not usable again to sign in, tokens refused, and the secret
never in the audit trail, the logs or the store in clear."""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from engine.core.clock import utcnow
from engine.security.totp import code_at, counter
from engine.store.tables import AuditRow, DataKeyRow, User
from tests import phi
from tests.web.conftest import PASSWORD, Web

SECRET = re.compile(r'<code class="totp-secret">([A-Z2-7]{32})</code>')
URI = re.compile(r'<code class="totp-uri">(otpauth://totp/[^<]+)</code>')
PENDING = re.compile(r'name="pending" value="([^"]+)"')
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
NOT_VALID = "That setup is no longer valid"


def _now_code(secret: str, steps: int = 0, at: datetime | None = None) -> str:
    """The code for the current step (of the site's clock when `at` is given) plus `steps`."""
    return code_at(secret, counter(at or utcnow()) + steps)


def _wrong(code: str) -> str:
    return f"{(int(code) + 500_000) % 1_000_000:06d}"


def _start(client: httpx.Client, current: str = PASSWORD, code: str = "") -> httpx.Response:
    return client.post("/me/totp/start", data={"current": current, "code": code})


def _shown(response: httpx.Response) -> tuple[str, str]:
    """(secret, sealed pending field) from a page showing a new secret."""
    secret, pending = SECRET.search(response.text), PENDING.search(response.text)
    assert secret and pending, response.text
    return secret.group(1), pending.group(1)


def _confirm(client: httpx.Client, pending: str, code: str) -> httpx.Response:
    return client.post("/me/totp/confirm", data={"pending": pending, "code": code})


def _sign_in(username: str, web: Web, totp: str = "") -> httpx.Response:
    return web.client().post("/login", data={"username": username, "password": PASSWORD, "totp": totp, "next": "/"})


def _audit(web: Web, action: str) -> list[tuple[str, str, dict]]:
    """(actor, outcome, detail) of the entries for `action`, but the fixture's own (actor user:test)."""
    with web.ctx.db.connect() as conn:
        rows = conn.execute(AuditRow.__table__.select().where(AuditRow.action == action)).all()
    return [(r.actor, r.outcome, web.ctx.audit.open_detail(r.id, r.detail) or {}) for r in rows
            if r.actor != "user:test"]  # fmt: skip


def _all_audit_text(web: Web) -> str:
    with web.ctx.db.connect() as conn:
        rows = conn.execute(AuditRow.__table__.select()).all()
    return "\n".join(json.dumps(web.ctx.audit.open_detail(r.id, r.detail)) for r in rows)


def _row(web: Web, username: str) -> Any:
    with web.ctx.db.connect() as conn:
        return conn.execute(User.__table__.select().where(User.username == username)).first()


def _data_key_exists(web: Web, record_id: str) -> bool:
    with web.ctx.db.connect() as conn:
        table = DataKeyRow.__table__
        return conn.execute(table.select().where(table.c.record_id == record_id)).first() is not None


def _enrol(web: Web, client: httpx.Client, current_code: str = "") -> str:
    """Start and confirm through the pages; the new secret."""
    started = _start(client, code=current_code)
    assert started.status_code == 200, started.text
    secret, pending = _shown(started)
    done = _confirm(client, pending, _now_code(secret))
    assert done.status_code == 200 and "Your authenticator app is set up" in done.text, done.text
    return secret


def test_enrol_from_scratch_with_the_forms_then_sign_in_needs_the_new_code_once(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = web.session("radiologist", accept_html=True)
    client.headers.pop("X-CSRF-Token")  # the page's forms carry the token, as a browser sends it
    page = client.get("/me")
    assert page.status_code == 200 and "Two-factor authentication" in page.text
    assert "No authenticator app (TOTP) is set up" in page.text and 'action="/me/totp/start"' in page.text
    [csrf] = set(CSRF.findall(page.text))
    assert client.post("/me/totp/start", data={"current": PASSWORD}).status_code == 403  # no CSRF token
    assert _sign_in("radiologist", web).status_code == 303  # no second factor yet

    started = client.post("/me/totp/start", data={"current": PASSWORD, "csrf_token": csrf})
    assert started.status_code == 200 and started.headers["cache-control"] == "no-store"
    secret, pending = _shown(started)
    [uri] = URI.findall(started.text)
    assert f"secret={secret}" in uri and "radiologist" in uri and f'<a href="{uri}">' in started.text
    assert 'action="/me/totp/confirm"' in started.text and secret not in pending
    assert _row(web, "radiologist").totp_sealed is None  # not active, not stored
    assert _sign_in("radiologist", web).status_code == 303  # still none needed before the confirm

    code = _now_code(secret)
    done = client.post("/me/totp/confirm", data={"pending": pending, "code": code, "csrf_token": csrf})
    assert done.status_code == 200 and "Your authenticator app is set up" in done.text
    assert secret not in done.text  # shown once, at the start
    assert "An authenticator app (TOTP) is set up" in client.get("/me").text

    asked = _sign_in("radiologist", web)
    assert asked.status_code == 401 and "authenticator app" in asked.text
    replayed = _sign_in("radiologist", web, code)  # the code that confirmed cannot sign in
    assert replayed.status_code == 401 and "already used" in replayed.text
    assert _sign_in("radiologist", web, _now_code(secret, 1)).status_code == 303

    [(actor, outcome, detail)] = _audit(web, "user.totp_enrolled")
    assert (actor, outcome, detail) == ("user:radiologist", "success", {"replaced": False, "self": True})
    assert ("user:radiologist", "success", {"step": "start", "enrolled": False}) in _audit(web, "auth.totp_enrol")
    # the secret and the codes: in no audit detail, no log line, nowhere in the store's files in clear
    audit = _all_audit_text(web)
    assert secret not in audit and code not in audit
    assert secret not in caplog.text and code not in caplog.text and pending not in caplog.text
    assert phi.leaks_in_tree(web.ctx.project.root, (secret,)) == {}


def test_rotation_needs_the_current_code_and_retires_the_old_secret(web: Web) -> None:
    client = web.session("technologist", accept_html=True)
    old = _enrol(web, client)
    old_record = _row(web, "technologist").totp_record
    page = client.get("/me")
    assert "Replace your authenticator" in page.text and "Code from your current authenticator" in page.text

    missing = _start(client)  # the current code is asked for: not a guess, not counted
    assert missing.status_code == 403 and "Enter the code your current authenticator" in missing.text
    assert _row(web, "technologist").failed_logins == 0
    wrong = _start(client, code=_wrong(_now_code(old)))
    assert wrong.status_code == 403 and "wrong or expired code" in wrong.text and not SECRET.search(wrong.text)
    assert _row(web, "technologist").failed_logins == 1

    replayed = _start(client, code=_now_code(old))  # the step the enrolment used: refused, and counted
    assert replayed.status_code == 403 and "already used" in replayed.text
    assert _row(web, "technologist").failed_logins == 2
    new = _enrol(web, client, current_code=_now_code(old, 1))
    assert new != old
    stale = _sign_in("technologist", web, _now_code(old, 1))  # the old secret is gone: a wrong code now
    assert stale.status_code == 401 and "Wrong or expired code" in stale.text
    assert _sign_in("technologist", web, _now_code(new, 1)).status_code == 303
    assert not _data_key_exists(web, old_record)  # the old secret is crypto-shredded
    assert _data_key_exists(web, _row(web, "technologist").totp_record)
    details = [d for _, _, d in _audit(web, "user.totp_enrolled")]
    assert details == [{"replaced": False, "self": True}, {"replaced": True, "self": True}]
    assert old not in _all_audit_text(web) and new not in _all_audit_text(web)


def test_a_wrong_password_at_the_start_is_refused_and_counts_toward_the_lockout(web: Web) -> None:
    client = web.session("radiologist", accept_html=True)
    for failures in range(1, 5):
        refused = _start(client, current="Not-The-Password-1")
        assert refused.status_code == 403 and "current password is wrong" in refused.text
        assert not SECRET.search(refused.text)
        assert _row(web, "radiologist").failed_logins == failures
    assert _start(client, current="Not-The-Password-1").status_code == 403  # the fifth: locked out
    assert _row(web, "radiologist").locked_until is not None
    assert _start(client).status_code in (303, 401)  # the session ended with the lockout
    assert _sign_in("radiologist", web).status_code == 401
    reasons = [(o, d) for a, o, d in _audit(web, "auth.totp_enrol") if a == "user:radiologist"]
    assert reasons == [("denied", {"reason": "bad_password", "step": "start"})] * 5
    assert [a for a, _, _ in _audit(web, "auth.lockout")] == ["user:radiologist"]
    assert _audit(web, "user.totp_enrolled") == []


def test_a_wrong_code_at_the_confirm_changes_nothing_and_shows_the_same_secret_again(web: Web) -> None:
    client = web.session("radiologist", accept_html=True)
    secret, pending = _shown(_start(client))
    wrong = _confirm(client, pending, _wrong(_now_code(secret)))
    assert wrong.status_code == 422 and "wrong code" in wrong.text
    assert _shown(wrong) == (secret, pending) and wrong.headers["cache-control"] == "no-store"
    empty = _confirm(client, pending, "")
    assert empty.status_code == 422 and _shown(empty) == (secret, pending)
    row = _row(web, "radiologist")
    assert row.totp_sealed is None and row.failed_logins == 0
    assert _sign_in("radiologist", web).status_code == 303  # still no code needed
    assert _audit(web, "user.totp_enrolled") == []
    refusals = [(o, d) for _, o, d in _audit(web, "auth.totp_enrol") if o != "success"]
    assert refusals == [("denied", {"reason": "bad_totp", "step": "confirm"})] * 2
    assert _confirm(client, pending, _now_code(secret)).status_code == 200  # the same pending secret works
    assert _row(web, "radiologist").totp_sealed is not None


def test_a_pending_secret_from_another_user_or_session_or_tampered_is_refused(web: Web) -> None:
    mine = web.session("radiologist", accept_html=True)
    secret, pending = _shown(_start(mine))
    other_user = web.session("technologist", accept_html=True)
    other_session = web.session("radiologist", accept_html=True)
    tampered = pending[:-4] + ("AAAA" if not pending.endswith("AAAA") else "BBBB")
    for client, value in ((other_user, pending), (other_session, pending), (mine, tampered), (mine, "x")):
        refused = _confirm(client, value, _now_code(secret))
        assert refused.status_code == 400 and NOT_VALID in refused.text and not SECRET.search(refused.text)
    assert _row(web, "technologist").totp_sealed is None
    assert _row(web, "radiologist").totp_sealed is None
    reasons = [(a, d["reason"]) for a, o, d in _audit(web, "auth.totp_enrol") if o == "denied"]
    assert reasons == [("user:technologist", "pending_forged"), ("user:radiologist", "pending_forged"),
                       ("user:radiologist", "pending_forged"), ("user:radiologist", "pending_forged")]  # fmt: skip
    assert _confirm(mine, pending, _now_code(secret, 1)).status_code == 200  # in its own session it works
    again = _confirm(mine, pending, _now_code(secret, 1))  # and only once: the account changed since
    assert again.status_code == 409 and NOT_VALID in again.text
    assert [d for _, _, d in _audit(web, "user.totp_enrolled")] == [{"replaced": False, "self": True}]


def test_a_pending_secret_expires_after_ten_minutes(web: Web) -> None:
    client = web.session("radiologist", accept_html=True)
    start = utcnow()
    web.site.clock = lambda: start
    secret, pending = _shown(_start(client))
    later = start + timedelta(minutes=11)
    web.site.clock = lambda: later
    expired = _confirm(client, pending, _now_code(secret, at=later))  # a right code, too late
    assert expired.status_code == 400 and NOT_VALID in expired.text
    assert _row(web, "radiologist").totp_sealed is None
    assert [d["reason"] for _, o, d in _audit(web, "auth.totp_enrol") if o == "denied"] == ["pending_expired"]
    secret, pending = _shown(_start(client))  # started again: within 10 minutes it works
    still = later + timedelta(minutes=9)
    web.site.clock = lambda: still
    assert _confirm(client, pending, _now_code(secret, at=still)).status_code == 200
    assert _row(web, "radiologist").totp_sealed is not None


def test_tokens_get_403_and_enrol_nothing(web: Web) -> None:
    for client in (web.token(), web.token("radiologist", ["worklist.view"])):
        started = _start(client)
        assert started.status_code == 403 and "Tokens have no second factor" in started.text
        assert not SECRET.search(started.text)
        assert _confirm(client, "x", "123456").status_code == 403
    assert _row(web, "radiologist").totp_sealed is None
    assert _audit(web, "auth.totp_enrol") == [] and _audit(web, "user.totp_enrolled") == []


def test_the_admin_path_still_enrols_for_someone_else_without_the_self_flag(web: Web) -> None:
    enrolled = web.session("admin").post("/api/users/radiologist/totp")
    assert enrolled.status_code == 201
    secret = enrolled.json()["secret"]
    assert _sign_in("radiologist", web, _now_code(secret)).status_code == 303  # no step used by the enrolment
    assert _audit(web, "user.totp_enrolled")[-1] == ("user:admin", "success", {"replaced": False})
