"""The machine-keys view of the web page (/keys) in a real headless Chromium
(Debian's), against a real control plane (target/local/warden serve --dev,
with a gateway secret and a published policy), once per database backend.

People sign in on the dev issuer's form as on any IdP's. A person issues a key
for themself: the page shows it once, in a marked box; the key shown is the
real credential (its SHA-256 is the one the gateway feed, GET
/v1/policy/active, serves for it); after "Done" it is nowhere in the page's
DOM or web storage, nor after a reload. A group the person's token does not
have is refused with the API's own words. Revoking asks first, then shows the
key revoked, and the feed stops serving its hash. Rotating asks for an
overlap and shows the new key once. An admin sees everyone's keys and may
name an owner; anyone else sees only their own.

Chromium is required: if it is missing the tests fail (bootstrap installs it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browser.chromium import sign_in_on_dev_form, watched_context  # noqa: E402
from harness.stack import WARDEN_BIN, Ports, default_filter_config, http, spawn, wait_until  # noqa: E402

from playwright.sync_api import expect  # noqa: E402

TIMEOUT_MS = 15_000
ADMINS = ["warden-admins"]
KEY = re.compile(r"^wdk_([0-9a-f]{16})_[0-9a-f]{64}$")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ControlPlane:
    """`warden serve --dev` on a free port, with a gateway secret (to read
    the feed as a gateway does) and, when given, a PostgreSQL database."""

    def __init__(self, tmp: Path, database_url: str | None):
        port = Ports.free().control_plane
        self.url = f"http://127.0.0.1:{port}"
        self.issuer = f"{self.url}/dev"
        self.gateway_secret = secrets.token_urlsafe(24)
        argv = [str(WARDEN_BIN), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp),
                "--public-url", self.url, "--dev"]
        if database_url:
            argv += ["--database-url", database_url]
        base = {k: v for k, v in os.environ.items() if not k.startswith("WARDEN_")}
        self.process = spawn("control plane", argv, tmp / "control-plane.log",
                             env={**base, "WARDEN_GATEWAY_SECRET": self.gateway_secret})
        wait_until("the control plane", lambda: http("GET", f"{self.url}/healthz", timeout=2)[0] == 200,
                   alive=self.process.check_alive)

    def token(self, sub: str, groups: list[str]) -> str:
        status, _, raw = http("POST", f"{self.url}/dev/token", {"sub": sub, "groups": groups})
        assert status == 200, raw
        return json.loads(raw)["token"]

    def publish_policy(self) -> None:
        """Keys reach gateways only with an active policy."""
        document = yaml.safe_dump(default_filter_config()["policy"])
        status, _, raw = http("POST", f"{self.url}/v1/policies",
                              {"document": document, "message": "machine keys page"},
                              headers={"authorization": f"Bearer {self.token('root', ADMINS)}"})
        assert status == 201, raw

    def served(self) -> dict[str, dict]:
        """The machine keys the gateway feed serves, by id."""
        status, _, raw = http("GET", f"{self.url}/v1/policy/active",
                              headers={"x-warden-gateway-key": self.gateway_secret})
        assert status == 200, raw
        return {k["id"]: k for k in json.loads(raw)["machine_keys"]}

    def keys(self, token: str) -> dict[str, dict]:
        """GET /v1/keys as the holder of `token`, by id."""
        status, _, raw = http("GET", f"{self.url}/v1/keys", headers={"authorization": f"Bearer {token}"})
        assert status == 200, raw
        return {k["id"]: k for k in json.loads(raw)["keys"]}

    def issue(self, token: str, **body) -> dict:
        status, _, raw = http("POST", f"{self.url}/v1/keys", body, headers={"authorization": f"Bearer {token}"})
        assert status == 201, raw
        return json.loads(raw)

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="module")
def cp(tmp_path_factory, database_url):
    control_plane = ControlPlane(tmp_path_factory.mktemp("keys-page"), database_url)
    try:
        control_plane.publish_policy()
        yield control_plane
    except BaseException:
        sys.stderr.write("\n===== control plane log =====\n" + control_plane.process.tail(80) + "\n")
        raise
    finally:
        control_plane.stop()


@pytest.fixture
def browser(playwright, tmp_path, cp, request):
    """A fresh Chromium profile per test; the control plane's log on failure. The
    API's refusals the page expects and shows (403, 404) are the only console
    errors allowed."""
    with watched_context(playwright, tmp_path / "profile", timeout_ms=TIMEOUT_MS, expected_statuses=(403, 404),
                         request=request,
                         logs=lambda: "===== control plane log =====\n" + cp.process.tail(80)) as context:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=cp.url)
        yield context


@pytest.fixture
def run() -> str:
    """A suffix for the subjects of one test: the control plane is shared by the module."""
    return secrets.token_hex(3)


def sign_in(context, cp: ControlPlane, sub: str, groups: list[str]):
    """Opens /keys and signs in on the dev issuer's form, as a person would."""
    page, _ = sign_in_on_dev_form(context, cp.url, "keys", sub, groups, email=f"{sub}@example.com")
    expect(page.locator("#nav-keys")).to_have_attribute("aria-current", "page")
    expect(page.locator("#keys-title")).to_be_visible()
    return page


def row(page, key_id: str):
    return page.locator(f'#keys-list tr[data-id="{key_id}"]')


def storage(page) -> str:
    """Everything in the tab's localStorage and sessionStorage, as one text."""
    return page.evaluate("() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])")


def shown_key(page) -> str:
    """The key in the marked box, checked to be one; after the box says it is shown once."""
    box = page.locator("#key-reveal")
    expect(box).to_be_visible()
    expect(box).to_contain_text("it will not be shown again")
    expect(page.locator("#kr-key")).to_have_text(KEY)
    return page.locator("#kr-key").inner_text().strip()


def done(page, key: str) -> None:
    """Presses Done: the key is then nowhere in the DOM or in web storage."""
    page.click("#kr-done")
    expect(page.locator("#key-reveal")).to_be_hidden()
    expect(page.locator("#keys-title")).to_be_focused()
    assert key not in page.content()
    assert key.rsplit("_", 1)[1] not in page.content()
    assert key not in storage(page)


def test_the_keys_view_is_the_page_under_its_headers(cp):
    status, headers, page = http("GET", f"{cp.url}/approvals")
    assert status == 200 and b'<script src="/approvals/app.js"' in page
    for path in ("/keys", "/keys/"):
        status, keys_headers, body = http("GET", f"{cp.url}{path}")
        assert status == 200 and body == page, path
        csp = keys_headers["content-security-policy"]
        assert csp == headers["content-security-policy"], path
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert keys_headers["cache-control"] == "no-store" and keys_headers["referrer-policy"] == "no-referrer"
    assert not re.search(rb"<script(?![^>]*\bsrc=)", page)
    assert not re.search(rb"\sstyle=", page)


def test_a_person_issues_a_key_sees_it_once_and_revokes_it(browser, cp, run):
    sub = f"kate-{run}"
    groups = ["engineering", "ml"]
    mine = cp.token(sub, groups)
    page = sign_in(browser, cp, sub, groups)
    # A person names no owner; the page tells them which groups they may give a key.
    expect(page.locator("#k-owner-field")).to_be_hidden()
    expect(page.get_by_label("Groups")).to_be_visible()
    expect(page.locator("#k-groups-mine")).to_have_text("; yours: engineering, ml")
    expect(page.locator("#keys-empty")).to_have_text("You hold no key yet.")

    # Issued: shown once, in the marked box, with the focus on it.
    page.get_by_label("Name").fill("nightly-report")
    page.get_by_label("Groups").fill("engineering,  ml")
    page.get_by_label("Models").fill("gpt-4o-mini")
    page.get_by_label("Days").fill("7")
    page.get_by_role("button", name="Issue key").click()
    key = shown_key(page)
    key_id = KEY.match(key).group(1)
    expect(page.locator("#kr-title")).to_be_focused()
    expect(page.locator("#kr-title")).to_contain_text("nightly-report")
    assert key not in page.url and key not in storage(page)

    # It is the real credential: the feed gateways read serves its hash, for this owner.
    served = cp.served()
    assert key_id in served, served
    assert served[key_id]["sha256"] == sha256(key)
    assert (served[key_id].get("owner"), served[key_id]["groups"], served[key_id]["models"]) == \
        (sub, groups, ["gpt-4o-mini"])
    assert key not in json.dumps(served)

    # Copy puts it on the clipboard.
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#kr-copied")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("() => navigator.clipboard.readText()") == key

    # Listed live, newest first, as the API lists it; the list never holds the key.
    listed = cp.keys(mine)
    assert listed[key_id]["status"] == "live" and listed[key_id]["name"] == "nightly-report"
    line = row(page, key_id)
    expect(line.locator(".k-status")).to_have_text("live")
    expect(line.locator(".k-name")).to_have_text("nightly-report")
    expect(line.locator(".k-owner")).to_have_text(sub)
    expect(line.locator(".k-groups")).to_have_text("engineering, ml")
    expect(line.locator(".k-models")).to_have_text("gpt-4o-mini")
    expect(line.locator(".k-created-by")).to_have_text(sub)
    expect(line.locator(".k-expires time")).to_have_attribute(
        "datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))

    # While it is shown, nothing may put another key in its place.
    page.get_by_label("Name").fill("second")
    page.get_by_label("Groups").fill("engineering")
    page.get_by_role("button", name="Issue key").click()
    expect(page.locator("#alert")).to_contain_text("press Done first")
    expect(page.locator("#kr-done")).to_be_focused()
    expect(page.locator("#kr-key")).to_have_text(key)
    assert len(cp.keys(mine)) == 1

    # Done: gone from the page, and not shown again after a reload.
    done(page, key)
    page.reload()
    expect(row(page, key_id).locator(".k-status")).to_have_text("live")
    expect(page.locator("#key-reveal")).to_be_hidden()
    assert key not in page.content() and key not in storage(page)

    # A group the person's token does not have: the API's refusal, in its words.
    page.get_by_label("Name").fill("too-much")
    page.get_by_label("Groups").fill("engineering warden-admins")
    page.get_by_role("button", name="Issue key").click()
    expect(page.locator("#alert")).to_contain_text("your token is not in the group 'warden-admins'")
    expect(page.locator("#key-reveal")).to_be_hidden()
    # Longer than a person's own keys may live: refused too.
    page.get_by_label("Groups").fill("engineering")
    page.get_by_label("Days").fill("120")
    page.get_by_role("button", name="Issue key").click()
    expect(page.locator("#alert")).to_contain_text("at most 90 days")
    assert list(cp.keys(mine)) == [key_id]

    # Revoke asks first; cancelling changes nothing and gives the focus back.
    revoke = row(page, key_id).get_by_role("button", name="Revoke")
    revoke.click()
    panel = page.locator("#key-act")
    expect(panel).to_be_visible()
    expect(page.locator("#ka-title")).to_have_text("Revoke nightly-report?")
    expect(page.locator("#ka-title")).to_be_focused()
    expect(page.locator("#ka-overlap-field")).to_be_hidden()
    assert cp.keys(mine)[key_id]["status"] == "live" and key_id in cp.served()
    page.get_by_role("button", name="Cancel").click()
    expect(panel).to_be_hidden()
    expect(revoke).to_be_focused()
    assert cp.keys(mine)[key_id]["status"] == "live"

    revoke.click()
    page.get_by_role("button", name="Revoke the key").click()
    expect(row(page, key_id).locator(".k-status")).to_have_text("revoked")
    expect(row(page, key_id).locator(".k-revoked")).to_contain_text(f"by {sub}")
    expect(row(page, key_id).get_by_role("button")).to_have_count(0)
    expect(panel).to_be_hidden()
    expect(page.locator("#status")).to_contain_text(f"Revoked nightly-report ({key_id})")
    assert cp.keys(mine)[key_id]["status"] == "revoked"
    assert key_id not in cp.served()
    assert sha256(key) not in json.dumps(cp.served())


def test_rotating_asks_for_an_overlap_and_shows_the_new_key_once(browser, cp, run):
    sub = f"rob-{run}"
    mine = cp.token(sub, ["engineering"])
    old = cp.issue(mine, name="deploy-bot", groups=["engineering"], expires_in_days=10)
    page = sign_in(browser, cp, sub, ["engineering"])
    page.locator(f'#keys-list tr[data-id="{old["id"]}"]').get_by_role("button", name="Rotate").click()
    expect(page.locator("#ka-title")).to_have_text("Rotate deploy-bot?")
    overlap = page.get_by_label("Overlap in seconds")
    expect(overlap).to_be_focused()
    expect(overlap).to_have_value("0")
    overlap.fill("600")
    page.get_by_role("button", name="Rotate the key").click()

    new_key = shown_key(page)
    new_id = KEY.match(new_key).group(1)
    assert new_id != old["id"] and new_key != old["key"]
    served = cp.served()
    assert served[new_id]["sha256"] == sha256(new_key)
    # The old one lives on for the overlap, then stops.
    assert served[old["id"]]["sha256"] == sha256(old["key"])
    assert abs(served[old["id"]]["expires_at"] - (time.time() + 600)) < 120, served[old["id"]]
    expect(row(page, new_id).locator(".k-replaces")).to_contain_text(old["id"])
    expect(row(page, new_id).locator(".k-status")).to_have_text("live")
    expect(page.locator("#keys-list tr").first).to_have_attribute("data-id", new_id)
    done(page, new_key)
    assert old["key"] not in page.content()

    # The default overlap, 0: the old key stops at once.
    page.locator(f'#keys-list tr[data-id="{new_id}"]').get_by_role("button", name="Rotate").click()
    expect(page.get_by_label("Overlap in seconds")).to_have_value("0")
    page.get_by_role("button", name="Rotate the key").click()
    third = shown_key(page)
    third_id = KEY.match(third).group(1)
    served = cp.served()
    assert new_id not in served and served[third_id]["sha256"] == sha256(third)
    expect(row(page, new_id).locator(".k-status")).to_have_text("expired")
    done(page, third)


def test_an_admin_sees_every_key_and_names_the_owner(browser, cp, run):
    alice = cp.issue(cp.token(f"alice-{run}", ["engineering"]), name="alice-notebook", groups=["engineering"])
    page = sign_in(browser, cp, f"root-{run}", ADMINS)
    expect(row(page, alice["id"]).locator(".k-owner")).to_have_text(f"alice-{run}")
    expect(page.locator("#k-owner-field")).to_be_visible()
    expect(page.get_by_label("Days")).to_have_attribute("max", "366")

    # A key for a service, with a group the admin's own token does not have.
    page.get_by_label("Name").fill("billing-export")
    page.get_by_label("Owner").fill(f"svc-billing-{run}")
    page.get_by_label("Groups").fill("billing")
    page.get_by_label("Days").fill("200")
    page.get_by_role("button", name="Issue key").click()
    key = shown_key(page)
    key_id = KEY.match(key).group(1)
    expect(page.locator("#kr-owner")).to_have_text(f"svc-billing-{run}")
    served = cp.served()[key_id]
    assert (served["sha256"], served["owner"], served["groups"]) == (sha256(key), f"svc-billing-{run}", ["billing"])
    line = row(page, key_id)
    expect(line.locator(".k-owner")).to_have_text(f"svc-billing-{run}")
    expect(line.locator(".k-created-by")).to_have_text(f"root-{run}")
    expect(line.locator(".k-models")).to_have_text("any its groups allow")
    done(page, key)
    # Another person's key can be revoked by an admin, after the same confirmation.
    row(page, alice["id"]).get_by_role("button", name="Revoke").click()
    page.get_by_role("button", name="Revoke the key").click()
    expect(row(page, alice["id"]).locator(".k-status")).to_have_text("revoked")
    assert alice["id"] not in cp.served()


def test_a_person_sees_only_their_own_keys(browser, cp, run):
    bob = cp.issue(cp.token(f"bob-{run}", ["engineering"]), name="bob-script", groups=["engineering"])
    carol = cp.issue(cp.token(f"carol-{run}", ["engineering"]), name="carol-script", groups=["engineering"])
    # Both exist, and an admin's page lists both.
    everyone = cp.keys(cp.token("root", ADMINS))
    assert bob["id"] in everyone and carol["id"] in everyone
    page = sign_in(browser, cp, f"carol-{run}", ["engineering"])
    expect(row(page, carol["id"]).locator(".k-status")).to_have_text("live")
    expect(page.locator("#keys-list tr")).to_have_count(1)
    expect(row(page, bob["id"])).to_have_count(0)
    assert f"bob-{run}" not in page.content()
    expect(page.locator("#k-owner-field")).to_be_hidden()
    expect(page.get_by_label("Days")).to_have_attribute("max", "90")
