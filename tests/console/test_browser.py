"""The staff console in headless Chromium, against `assent serve` with seeded data.

Run by scripts/test-console: ASSENT_BIN is the server, ASSENT_AXE_JS axe-core's axe.min.js,
ASSENT_CONSOLE_SCREENSHOTS where the screenshots go. The authenticating proxy in front of a
console is played by the browser itself: it adds the signed-in person's bearer token to every
request (DevTools' Network.setExtraHTTPHeaders).
"""

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By

SECRET = "a-development-secret-of-at-least-32-bytes"
ISSUER = "https://auth.test"
AUDIENCE = "assent"
# Each page at a desktop and a phone width.
SIZES = [(1280, 800), (390, 844)]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(subject: str, scopes: str) -> str:
    """An HS256 JWT the server accepts, for ten minutes."""
    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(
        json.dumps(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": subject,
                "scope": scopes,
                "iat": now,
                "exp": now + 600,
            }
        ).encode()
    )
    signed = f"{header}.{claims}".encode()
    signature = hmac.new(SECRET.encode(), signed, hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


ADMIN = token("seeder", "admin")
OFFICER = token(
    "dpo@example.com",
    "rights:read rights:write audit:read subjects:read decisions:check policies:read",
)
READER = token("auditor@example.com", "rights:read audit:read subjects:read policies:read")


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


class Server:
    def __init__(self, directory: str):
        self.grpc = f"127.0.0.1:{free_port()}"
        self.console = f"127.0.0.1:{free_port()}"
        environment = dict(
            os.environ,
            ASSENT_LISTEN=self.grpc,
            ASSENT_DATA_DIR=directory,
            ASSENT_ADMIN_LISTEN="off",
            ASSENT_CONSOLE_LISTEN=self.console,
            ASSENT_JWT_HS256_SECRET=SECRET,
            ASSENT_JWT_ISSUER=ISSUER,
            ASSENT_JWT_AUDIENCE=AUDIENCE,
            ASSENT_LOG_FORMAT="json",
        )
        self.process = subprocess.Popen(
            [os.environ["ASSENT_BIN"], "serve"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(tuple(self.console.rsplit(":", 1)), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the console did not start")

    def cli(self, *arguments: str) -> dict:
        output = subprocess.run(
            [os.environ["ASSENT_BIN"], *arguments, "--server", f"http://{self.grpc}", "--json"],
            env=dict(os.environ, ASSENT_TOKEN=ADMIN),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(output)

    def url(self, path: str) -> str:
        return f"http://{self.console}{path}"

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    with tempfile.TemporaryDirectory() as directory:
        running = Server(directory)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def seeded(server):
    """A subject that granted, then refused, model training (a second apart); a rights request."""
    server.cli("subject", "upsert", "u-alice", "--plan", "free", "--jurisdiction", "FR")
    server.cli(
        "subject", "choice", "u-alice", "--purpose", "model-training", "--choice", "granted",
        "--method", "settings-page",
    )
    time.sleep(1.2)
    before_opt_out = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 0.6))
    time.sleep(0.6)
    server.cli(
        "subject", "choice", "u-alice", "--purpose", "model-training", "--choice", "refused",
        "--method", "settings-page", "--reason", "user opted out in settings",
    )
    filed = server.cli("rights", "file", "--subject", "u-alice", "--kind", "access")
    request = filed.get("request", filed)
    return {"before_opt_out": before_opt_out, "request_id": request["requestId"]}


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]:
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService("/usr/bin/chromedriver"))
    driver.execute_cdp_cmd("Network.enable", {})
    yield driver
    driver.quit()


def sign_in(driver, bearer: str):
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {bearer}"}}
    )


def at_size(driver, width: int, height: int):
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def screenshots(driver, name: str):
    """Saves the page at each size, and checks it with axe-core at each."""
    folder = Path(os.environ["ASSENT_CONSOLE_SCREENSHOTS"])
    folder.mkdir(parents=True, exist_ok=True)
    for width, height in SIZES:
        at_size(driver, width, height)
        driver.refresh()
        driver.execute_script("window.scrollTo(0, 0);")
        assert_accessible(driver, f"{name} at {width}px")
        driver.save_screenshot(str(folder / f"{name}-{width}x{height}.png"))
    at_size(driver, *SIZES[0])


def assert_accessible(driver, where: str):
    axe = Path(os.environ["ASSENT_AXE_JS"]).read_text()
    driver.execute_script(axe)
    results = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(done);"
    )
    serious = [
        f"{violation['id']} ({violation['impact']}): {violation['help']} — "
        + ", ".join(node["target"][0] for node in violation["nodes"][:3])
        for violation in results["violations"]
        if violation["impact"] in ("serious", "critical")
    ]
    assert not serious, f"{where}: {serious}"


def wait_for(condition, what: str, seconds: float = 10):
    """Waits until `condition()` holds (a click's navigation completes after `click` returns)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def body(driver) -> str:
    """The page's text; empty while a navigation replaces the page."""
    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except (StaleElementReferenceException, NoSuchElementException):
        return ""


def decision_of(driver, purpose: str) -> str:
    row = driver.find_element(By.XPATH, f"//tbody/tr[th[normalize-space()='{purpose}']]")
    return row.text


def test_search_a_subject_read_a_deny_and_see_it_allowed_before_the_opt_out(server, seeded, browser):
    sign_in(browser, OFFICER)
    browser.get(server.url("/"))
    assert browser.current_url.endswith("/subjects")
    screenshots(browser, "search")
    field = browser.find_element(By.ID, "id")
    field.send_keys("u-alice")
    browser.find_element(By.CSS_SELECTOR, "form.search button").click()
    wait_for(lambda: "Subject u-alice" in browser.title, "the subject's page")
    training = decision_of(browser, "model training")
    assert "DENY" in training, training
    # The DENY's reason, and the why panel's cited sentence and inputs.
    assert "consent refused" in training or "opted out" in training or "refused" in training, training
    why = browser.find_element(By.XPATH, "//details[summary[starts-with(normalize-space(), 'model training')]]")
    why.find_element(By.TAG_NAME, "summary").click()
    assert "Choice for this purpose" in why.text and "REFUSED" in why.text, why.text
    history = browser.find_element(By.ID, "history").find_element(By.XPATH, "..").text
    assert "granted → refused" in history and "user opted out in settings" in history, history
    screenshots(browser, "subject")

    # The as-of instant moved to before the opt-out: ALLOW.
    as_of = browser.find_element(By.ID, "as_of")
    browser.execute_script("arguments[0].value = arguments[1];", as_of, seeded["before_opt_out"])
    browser.find_element(By.CSS_SELECTOR, "form.search button").click()
    wait_for(lambda: "Decisions as of" in body(browser), "the decisions as of the instant")
    training_then = decision_of(browser, "model training")
    assert "ALLOW" in training_then, training_then


def test_advance_a_rights_request_and_see_its_audit_event(server, seeded, browser):
    sign_in(browser, OFFICER)
    request_id = seeded["request_id"]
    browser.get(server.url("/rights"))
    assert request_id in body(browser)
    screenshots(browser, "rights")
    browser.find_element(By.LINK_TEXT, request_id).click()
    wait_for(lambda: f"Rights request {request_id}" in browser.title, "the request's page")
    screenshots(browser, "rights-request")
    select = browser.find_element(By.ID, "state")
    select.find_element(By.CSS_SELECTOR, "option[value='REQUEST_STATE_VERIFYING']").click()
    browser.find_element(By.ID, "advance-reason").send_keys("asked the requester for ID")
    browser.find_element(By.XPATH, "//button[normalize-space()='Advance']").click()
    wait_for(lambda: "Request advanced" in body(browser), "the page after the advance")
    page = body(browser)
    assert "Request advanced" in page, page
    steps = browser.find_element(By.ID, "steps").find_element(By.XPATH, "..").text
    assert "rights request advanced" in steps, steps
    assert "dpo@example.com: asked the requester for ID" in steps, steps


def test_a_read_only_token_sees_no_action_and_a_forged_post_is_refused(server, seeded, browser):
    request_id = seeded["request_id"]
    sign_in(browser, READER)
    browser.get(server.url(f"/rights/{request_id}"))
    assert "Signed in as auditor@example.com" in body(browser)
    assert not browser.find_elements(By.TAG_NAME, "button") or all(
        button.text not in ("Advance", "Extend the deadline")
        for button in browser.find_elements(By.TAG_NAME, "button")
    )
    assert not browser.find_elements(By.CSS_SELECTOR, "form[method='post']")

    # A page of another site posting to the console, as the privacy officer: refused, nothing
    # written.
    sign_in(browser, OFFICER)
    browser.get(server.url(f"/rights/{request_id}"))
    state_before = browser.find_element(By.XPATH, "//dt[.='State']/following-sibling::dd[1]").text
    action = server.url(f"/rights/{urllib.parse.quote(request_id)}/advance")
    forged = (
        "<html><body><form id='f' method='post' action='" + action + "'>"
        "<input name='csrf' value='" + "0" * 64 + "'>"
        "<input name='state' value='REQUEST_STATE_REFUSED'>"
        "<input name='reason' value='forged'></form>"
        "<script>document.getElementById('f').submit()</script></body></html>"
    )
    browser.get("data:text/html;charset=utf-8," + urllib.parse.quote(forged))
    wait_for(lambda: "csrf:" in body(browser), "the forged form refused")
    browser.get(server.url(f"/rights/{request_id}"))
    state_after = browser.find_element(By.XPATH, "//dt[.='State']/following-sibling::dd[1]").text
    assert state_after == state_before == "verifying", (state_before, state_after)


def test_the_audit_and_policy_pages(server, seeded, browser):
    sign_in(browser, OFFICER)
    browser.get(server.url("/audit"))
    browser.find_element(By.LINK_TEXT, "Verify the chain now").click()
    wait_for(lambda: "Verified:" in body(browser), "the chain verified")
    screenshots(browser, "audit")
    browser.get(server.url("/policies"))
    assert "in force" in body(browser)
    screenshots(browser, "policies")
