"""The web in a real browser (Debian's chromium through Playwright) against `radbridge run` serving
HTTPS, with the real pipeline behind it: orders over MLLP (python-hl7), head CTs over DICOM (dcmtk's
storescu), the built-in reference model, the outputs stage.

- a radiologist signs in, sees a study raised to stat by a critical AI finding at the top of the
  worklist within a few seconds of its result (no reload: server-sent events), and disagrees with it;
- an integration analyst reprocesses a dead-lettered message (the ORU whose RIS is down);
- an auditor sees the audit trail of both and no unmasked patient data anywhere;
- a technologist cannot open the admin pages.
No fake patient data ever appears in a URL the browser requested, nor in the engine's output.
Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from engine.cli import app as cli
from engine.runtime.context import open_context
from engine.store.tables import PriorityRaise
from tests import phi
from tests.e2e.harness import REPO, free_port, make_project, orm, start_engine, stop, wait_for
from tests.e2e.test_imaging import storescu
from tests.e2e.test_inference import _channels as inference_channels
from tests.e2e.test_outputs import _send, _with_accession
from tests.inference.volumes import BLEED_5ML, head_ct
from tests.tlscerts import make_certs
from tests.web.conftest import PASSWORD

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "test-artifacts" / "screenshots"
NORMAL_ACCESSION = "ACCFAKE00417"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and shutil.which("storescu")),
    reason="browser tests need Debian's chromium and dcmtk (make peers installs both)",
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("browser")
    mllp, dicom, api, ris = free_port(), free_port(), free_port(), free_port()  # nothing listens on `ris`
    channels = {
        **inference_channels(mllp, dicom),
        "outputs.yaml": "name: outputs\nsource: {kind: outputs}\ndestinations: [{name: events, kind: topic}]\n",
        "results-ris.yaml": f"name: results-ris\nsource: {{kind: topic, topic: 'result.*'}}\n"
        f"mapping: mappings/result-to-oru.yaml\n"
        f"destinations: [{{name: ris, kind: mllp, host: 127.0.0.1, port: {ris}, retry: {{max_attempts: 1}}}}]\n",
    }
    root = make_project(tmp / "p", channels, api_port=api)
    make_certs(root / "tls")
    engine_yaml = root / "config" / "engine.yaml"
    engine_yaml.write_text(engine_yaml.read_text().replace(
        f"port: {api}}}", f"port: {api}, tls: {{cert: tls/server.crt, key: tls/server.key}}}}"
    ))  # fmt: skip
    assert "tls:" in engine_yaml.read_text()
    os.environ["RADBRIDGE_TEST_PASSWORD"] = PASSWORD
    for name, role in (("dana", "radiologist"), ("ines", "integration_analyst"), ("audrey", "auditor"),
                       ("theo", "technologist")):  # fmt: skip
        done = CliRunner().invoke(cli, ["users", "add", name, "--role", role, "--password-env",
                                        "RADBRIDGE_TEST_PASSWORD", "--root", str(root)])  # fmt: skip
        assert done.exit_code == 0, done.output
    proc = start_engine(root)
    try:
        yield {"root": root, "url": f"https://127.0.0.1:{api}", "mllp": mllp, "dicom": dicom, "tmp": tmp, "proc": proc}
    finally:
        # The browsers (set up before this fixture, so closed after it) still hold the worklist's event
        # stream open: a stop must not wait for it.
        started = time.monotonic()
        err = stop(proc)
        assert time.monotonic() - started < 15, "the engine waited for an open event stream to stop"
        assert phi.leaks_in_bytes(err.encode()) == [], "fake PHI in the engine's output"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


class Person:
    """One signed-in browser context; every URL it requests is kept (none may carry PHI)."""

    urls: list[str] = []

    def __init__(self, browser: object, engine: dict, username: str) -> None:
        self.context = browser.new_context(ignore_https_errors=True, base_url=engine["url"])  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.page.on("request", lambda request: Person.urls.append(request.url))
        self.page.on("dialog", lambda dialog: dialog.accept())  # the "are you sure?" of data-confirm forms
        self.page.goto("/login")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_load_state()
        assert "/login" not in self.page.url, f"{username} could not sign in: {self.page.inner_text('main')[:300]}"

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def text(self) -> str:
        return self.page.content()


def _raised(root: Path) -> bool:
    ctx = open_context(root)
    try:
        with ctx.db.connect() as conn:
            return conn.execute(select(PriorityRaise.__table__)).first() is not None
    finally:
        ctx.close()


def test_radiologist_sees_the_raised_study_at_the_top_and_disagrees(browser: object, engine: dict) -> None:
    from playwright.sync_api import expect

    tmp = engine["tmp"]
    # a routine study without finding, already waiting
    _send(engine["mllp"], orm("BRW-ORDER-1", NORMAL_ACCESSION, placer="PLCB1"))
    normal = head_ct(slices=6, size=64, pixel_mm=2.0, seed=11)
    storescu(engine["dicom"], [_with_accession(raw, NORMAL_ACCESSION) for raw in normal.instances], tmp / "normal")
    dana = Person(browser, engine, "dana")
    assert dana.page.url.endswith("/worklist")
    rows = dana.page.locator("#worklist-rows tr")
    expect(rows.first).to_contain_text("no finding", timeout=60_000)  # live: the page was not reloaded
    # the critical one: ordered routine, raised to stat by the model
    _send(engine["mllp"], orm("BRW-ORDER-2", phi.ACCESSION, placer="PLCB2"))
    storescu(engine["dicom"], head_ct(shapes=(BLEED_5ML,), seed=3).instances, tmp / "bleed")
    wait_for(lambda: _raised(engine["root"]), timeout=90)
    raised_at = time.monotonic()
    expect(rows.first.locator(".priority-stat").first).to_have_text("stat", timeout=5_000)
    seconds = time.monotonic() - raised_at
    expect(rows.first).to_contain_text("Intracranial")
    expect(rows.nth(1)).to_contain_text("routine")
    assert seconds < 5, f"the raised study reached the top {seconds:.1f} s after its result"
    dana.shot("radiologist-worklist-raised")
    assert not any(s in dana.text() for s in phi.STRINGS), "identity must be masked until revealed"
    rows.first.get_by_role("button", name="Disagree").click()
    dana.page.wait_for_load_state()
    expect(dana.page.locator("#worklist-rows tr").first.get_by_role("button", name="Disagree")).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(dana.page.locator("#worklist-rows tr").first).to_contain_text("you: disagree")
    dana.shot("radiologist-disagreed")


def test_analyst_reprocesses_a_dead_lettered_message(browser: object, engine: dict) -> None:
    from playwright.sync_api import expect

    ines = Person(browser, engine, "ines")
    ines.page.goto("/dead-letters")
    dead = ines.page.locator("table.ops-dead tbody tr")
    for _ in range(30):  # the ORU to the RIS that is down dies after its one attempt
        if "results-ris" in dead.first.inner_text():
            break
        time.sleep(1)
        ines.page.reload()
    expect(dead.first).to_contain_text("results-ris → ris")
    ines.shot("analyst-dead-letters")
    dead.first.get_by_role("button", name="Reprocess").click()
    ines.page.wait_for_load_state()
    assert "reprocessed_from=" in ines.page.url
    expect(ines.page.locator("main")).to_contain_text("this is the new message")
    ines.shot("analyst-reprocessed")
    assert not any(s in ines.text() for s in phi.STRINGS), "the message page shows content masked"


def test_auditor_sees_both_in_the_trail_and_no_patient_data(browser: object, engine: dict) -> None:
    from playwright.sync_api import expect

    audrey = Person(browser, engine, "audrey")
    audrey.page.goto("/audit?action=finding.feedback")
    trail = audrey.page.locator("table.gov-audit tbody tr")
    expect(trail.first).to_contain_text("user:dana")
    expect(trail.first).to_contain_text("finding.feedback")
    audrey.shot("auditor-feedback-trail")
    assert not any(s in audrey.text() for s in phi.STRINGS)
    audrey.page.goto("/audit?action=message.reprocessed")
    expect(trail.first).to_contain_text("user:ines")
    audrey.shot("auditor-reprocess-trail")
    assert not any(s in audrey.text() for s in phi.STRINGS)
    audrey.page.goto("/messages")
    first = audrey.page.locator("main table tbody tr a").first
    first.click()
    audrey.page.wait_for_load_state()
    assert audrey.page.get_by_role("button", name="Reveal").count() == 0
    assert not any(s in audrey.text() for s in phi.STRINGS)
    response = audrey.page.goto("/worklist")
    assert response is not None and response.status == 403


def test_technologist_cannot_open_admin_pages(browser: object, engine: dict) -> None:
    theo = Person(browser, engine, "theo")
    for path in ("/channels", "/messages", "/dead-letters", "/audit", "/users", "/keys", "/compliance"):
        response = theo.page.goto(path)
        assert response is not None and response.status == 403, path
        assert "Not permitted" in theo.text()
    theo.shot("technologist-not-permitted")
    nav = theo.page.locator("header nav").inner_text()
    assert "Worklist" in nav and "Users" not in nav and "Audit" not in nav


def test_no_url_the_browsers_requested_carries_patient_data(engine: dict) -> None:
    assert Person.urls, "the browser tests above ran first"
    leaked = [url for url in Person.urls if any(s.lower() in url.lower() for s in phi.STRINGS)]
    assert leaked == []
