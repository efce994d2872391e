"""The dashboard in headless Chromium (Playwright, Debian's ``chromium``):
it renders, a job submitted through the API appears without a reload, its
cancel button cancels it, another user's job never appears, and the page
asks nothing of any host but the server. Screenshots go to a temp dir."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from server_proc import ANN, BOB, ServerProc, wait_for

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.timeout(180)


def _browser_or_fail() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"the browser tests need playwright (pip install '.[test]'): {e}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run installs it)")
    return sync_playwright


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = ServerProc(tmp_path_factory.mktemp("browser"), extra=["--cpu-cores", "4", "--simulated-gpus", "24576"]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shots() -> Path:
    d = Path(tempfile.mkdtemp(prefix="plugin-scheduling-screenshots-"))
    print(f"\nscreenshots: {d}")
    return d


def test_dashboard_live_updates_cancel_and_isolation(srv: ServerProc, shots: Path) -> None:
    sync_playwright = _browser_or_fail()
    from playwright.sync_api import expect

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            hosts: set[str] = set()
            page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
            navigations: list[str] = []
            page.on("framenavigated", lambda f: navigations.append(f.url) if f == page.main_frame else None)

            page.goto(srv.url + "/?token=" + ANN)
            assert page.url == srv.url + "/"  # the token left the address bar
            # Locator waits run in Playwright's own world: the page's CSP (no
            # 'unsafe-eval') stays as served, not weakened for the test.
            expect(page.locator("#who")).to_contain_text("ann", timeout=15000)
            expect(page.locator("#live")).to_have_text("live", timeout=15000)
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert cookies["plugin_scheduling_token"]["httpOnly"] is True
            # not readable by scripts (a function, not a string: no eval under the CSP)
            assert page.evaluate("() => document.cookie") == ""
            page.screenshot(path=str(shots / "1-empty.png"), full_page=True)
            loads = len(navigations)

            with srv.client(BOB) as bob:
                theirs = bob.post("/api/v1/jobs", json={"command": ["sleep", "30"], "name": "bobs-secret"}).json()
            with srv.client(ANN) as ann:
                mine = ann.post("/api/v1/jobs", json={"command": ["sleep", "30"], "name": "anns-job", "estimated_duration": 30}).json()
                row = page.locator(f"#job-{mine['id']}")
                row.wait_for(timeout=15000)  # appeared, from the event stream
                page.wait_for_selector(f"#job-{mine['id']}[data-state=RUNNING]", timeout=15000)
                assert len(navigations) == loads, navigations  # no reload
                assert page.locator(f"#job-{theirs['id']}").count() == 0
                assert "bobs-secret" not in page.content()
                page.screenshot(path=str(shots / "2-running.png"), full_page=True)

                row.locator("button[data-action=cancel]").click()
                wait_for(lambda: ann.get(f"/api/v1/jobs/{mine['id']}").json()["state"] == "CANCELLED", what="cancelled through the button")
                page.wait_for_selector(f"#finished #job-{mine['id']}[data-state=CANCELLED]", timeout=15000)
                assert len(navigations) == loads
                assert "bobs-secret" not in page.content()
                page.screenshot(path=str(shots / "3-cancelled.png"), full_page=True)
            gpu_rows = page.locator("#gpus tbody tr")
            assert gpu_rows.count() == 1 and "24576" in gpu_rows.first.inner_text()
            assert hosts == {f"127.0.0.1:{srv.port}"}, hosts  # no CDN, nothing beyond the server
        finally:
            browser.close()
    assert {"1-empty.png", "2-running.png", "3-cancelled.png"} <= {x.name for x in shots.iterdir()}


def test_sign_in_page_without_a_token(srv: ServerProc, shots: Path) -> None:
    sync_playwright = _browser_or_fail()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            r = page.goto(srv.url + "/")
            assert r is not None and r.status == 401
            assert page.locator("#signin-needed").is_visible()
            page.fill("input[name=token]", "not-a-valid-token-at-all")
            page.click("button[type=submit]")
            assert page.locator("#signin-needed").is_visible()
            assert page.context.cookies() == []
            page.screenshot(path=str(shots / "0-sign-in.png"))
        finally:
            browser.close()
