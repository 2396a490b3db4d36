"""The web dashboard end to end: real daemon, real model, real registry, headless Chromium.

One daemon (the seeded store) serves the list, chat, running and logs tests in file order: the
chat loads the model that the running view then unloads. The pull test gets its own daemon
with an empty store, so the pull really transfers every byte. Screenshots go to the module's
temporary folder (their paths are printed); with ``DMR_UPDATE_SCREENSHOT=1`` the chat view
is also copied to ``docs/dashboard.png`` for the README.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from orchestrator.api.health import RUNNING_TEXT
from tests.support.browser import browser_paths, start_browser, stop_browser, wait_for
from tests.support.daemon_fixtures import REPO_ROOT, Daemon
from tests.support.registry_fixtures import RegistryServer

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

pytestmark = pytest.mark.llama_server

DOCS_SCREENSHOT = REPO_ROOT / "docs" / "dashboard.png"
CHAT_TIMEOUT_SECONDS = 40.0
# Past this the test presses Stop: a tiny model may ramble, and Stop is worth testing too.
CHAT_ANSWER_SECONDS = 15.0


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the folder that collects this module's screenshots."""
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Yield a headless Chromium WebDriver (skips when chromium/chromedriver are absent)."""
    browser_paths()
    base = tmp_path_factory.mktemp("chromium")
    driver = start_browser(base / "profile", base / "chromedriver.log")
    try:
        yield driver
    finally:
        stop_browser(driver)


def shoot(driver: WebDriver, folder: Path, name: str) -> Path:
    """Save a screenshot of the page as ``<folder>/<name>.png`` and return its path."""
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"screenshot {name!r} was not written"
    print(f"screenshot: {path}")
    return path


def by_css(driver: WebDriver, selector: str) -> list[WebElement]:
    """Return the elements matching ``selector`` (empty list when none)."""
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def one(driver: WebDriver, selector: str) -> WebElement:
    """Return the one element matching ``selector``."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def text_of(driver: WebDriver, selector: str) -> str:
    """Return the text content of the first match of ``selector`` ("" when none)."""
    found = by_css(driver, selector)
    return str(found[0].get_attribute("textContent") or "") if found else ""


def open_tab(driver: WebDriver, name: str) -> None:
    """Click the ``name`` tab and wait until its view shows."""
    one(driver, f"#tab-{name}").click()
    wait_for(
        driver,
        lambda d: one(d, f"#view-{name}").is_displayed(),
        timeout=5,
        message=f"{name} view not shown",
    )


def row_cells(row: WebElement) -> list[str]:
    """Return the texts of a table row's cells."""
    from selenium.webdriver.common.by import By

    return [
        str(cell.get_attribute("textContent")).strip()
        for cell in row.find_elements(By.TAG_NAME, "td")
    ]


def test_root_and_assets_over_plain_http(daemon: Daemon) -> None:
    """Curl gets DMR's text at /, a browser goes to /ui/, and assets carry types and ETags."""
    plain = daemon.get("/", headers={"Accept": "*/*"}, allow_redirects=False)
    assert plain.status_code == 200 and plain.text == RUNNING_TEXT
    browser_root = daemon.get(
        "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, allow_redirects=False
    )
    assert browser_root.status_code == 302 and browser_root.headers["Location"] == "/ui/"
    bare = daemon.get("/ui", allow_redirects=False)
    assert bare.status_code == 302 and bare.headers["Location"] == "/ui/"
    expected = {"/ui/": "text/html", "/ui/app.css": "text/css", "/ui/app.js": "text/javascript"}
    for path, content_type in expected.items():
        answer = daemon.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["Content-Type"].startswith(content_type), path
        assert answer.headers["Cache-Control"] == "no-cache", path
        again = daemon.get(path, headers={"If-None-Match": answer.headers["ETag"]})
        assert again.status_code == 304 and again.content == b"", path
    page = daemon.get("/ui/")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert '<script src="app.js"' in page.text
    missing = daemon.get("/ui/../../etc/passwd")
    assert missing.status_code == 404
    unknown = daemon.get("/ui/secret.py")
    assert unknown.status_code == 404 and "dashboard" in unknown.json()["error"]["message"]


def test_page_lists_default_model(daemon: Daemon, browser: WebDriver, screenshots: Path) -> None:
    """Opening / in a browser lands on the dashboard, listing the seeded model and its details."""
    browser.get(daemon.url("/"))
    wait_for(
        browser,
        lambda d: d.current_url.endswith("/ui/#models"),
        timeout=10,
        message="no redirect to /ui/",
    )
    rows = wait_for(
        browser,
        lambda d: by_css(d, '#models-table tbody tr[data-model*="ai/smollm2"]'),
        timeout=10,
        message="the default model is not listed",
    )
    cells = row_cells(rows[0])
    assert cells[0].startswith("ai/smollm2:")
    assert cells[1] and cells[2] and cells[3] == "llama", cells
    assert cells[4] and cells[6], cells
    wait_for(
        browser,
        lambda d: "llama.cpp" in text_of(d, "#engine-status"),
        timeout=10,
        message="no engine status",
    )
    shoot(browser, screenshots, "models")


def test_chat_streams_an_answer(daemon: Daemon, browser: WebDriver, screenshots: Path) -> None:
    """A chat message gets a streamed Markdown answer with tokens/s, kept across a reload."""
    browser.get(daemon.url("/ui/#chat"))
    wait_for(
        browser,
        lambda d: by_css(d, "#chat-model option"),
        timeout=10,
        message="no model to chat with",
    )
    one(browser, "#chat-system-box summary").click()
    one(browser, "#chat-system").send_keys("You are a concise assistant.")
    # Count DOM updates of the answer while it streams: a streamed answer changes many times.
    browser.execute_script(
        "window.__answerUpdates = 0;"
        "new MutationObserver((records) => {"
        "  for (const r of records)"
        "    if (r.target.closest && r.target.closest('.msg.streaming')) window.__answerUpdates++;"
        "}).observe(document.getElementById('chat-log'),"
        "  {subtree: true, childList: true, characterData: true});"
    )
    one(browser, "#chat-input").send_keys("What is the capital of France? Answer in one sentence.")
    one(browser, "#chat-send").click()
    wait_for(
        browser,
        lambda d: text_of(d, ".msg.assistant .body").strip(),
        timeout=CHAT_TIMEOUT_SECONDS,
        message="no answer text arrived",
    )
    deadline = time.monotonic() + CHAT_ANSWER_SECONDS
    while by_css(browser, ".msg.streaming") and time.monotonic() < deadline:
        time.sleep(0.2)
    if by_css(browser, ".msg.streaming"):
        one(browser, "#chat-stop").click()
    stats = wait_for(
        browser,
        lambda d: text_of(d, ".msg.assistant .stats"),
        timeout=10,
        message="no tokens/s after the answer",
    )
    assert "tokens/s" in stats
    assert browser.execute_script("return window.__answerUpdates") >= 2
    answer = text_of(browser, ".msg.assistant .body")
    assert answer.strip() and "error" not in one(browser, ".msg.assistant").get_attribute("class")
    # No focus ring on the input in the picture.
    browser.execute_script("document.activeElement.blur()")
    path = shoot(browser, screenshots, "chat")
    if os.environ.get("DMR_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOT)
    browser.refresh()
    kept = wait_for(
        browser, lambda d: by_css(d, ".msg.user"), timeout=10, message="conversation lost on reload"
    )
    assert "capital of France" in str(kept[0].get_attribute("textContent"))
    assert text_of(browser, ".msg.assistant .body").strip() == answer.strip()
    assert one(browser, "#chat-system").get_attribute("value") == "You are a concise assistant."


def test_running_view_unloads(daemon: Daemon, browser: WebDriver, screenshots: Path) -> None:
    """The Running view shows the runner the chat loaded, with memory and expiry, and unloads it."""
    browser.get(daemon.url("/ui/#running"))
    rows = wait_for(
        browser,
        lambda d: [r for r in by_css(d, "#running-table tbody tr") if row_cells(r)[2] == "idle"],
        timeout=15,
        message="the loaded model is not shown idle in the Running view",
    )
    cells = row_cells(rows[0])
    assert "smollm2" in cells[0] and cells[1] == "completion", cells
    assert "/" in cells[4] and "(in " in cells[5], cells
    assert "(estimate)" in cells[4] or "(learned)" in cells[4], cells  # which figure admission used
    shoot(browser, screenshots, "running")
    rows[0].find_element("css selector", "button").click()
    wait_for(
        browser,
        lambda d: not by_css(d, "#running-table tbody tr"),
        timeout=15,
        message="the row stayed",
    )
    assert daemon.get("/engines/ps").json() == []


def test_logs_follow_and_filter(daemon: Daemon, browser: WebDriver, screenshots: Path) -> None:
    """The Logs view shows the existing log, new lines as they are written, and filters them."""
    browser.get(daemon.url("/ui/#logs"))
    wait_for(
        browser,
        lambda d: text_of(d, "#logs-output").count("\n") > 3,
        timeout=10,
        message="no log lines",
    )
    marker = f"dashboard-marker-{uuid.uuid4().hex[:8]}"
    # A 404 writes an access-log line holding the path: a line that did not exist before.
    assert daemon.get(f"/models/{marker}").status_code == 404
    wait_for(
        browser,
        lambda d: marker in text_of(d, "#logs-output"),
        timeout=10,
        message="the new line did not arrive",
    )
    one(browser, "#logs-filter").send_keys(marker)
    lines = [line for line in text_of(browser, "#logs-output").splitlines() if line]
    assert lines and all(marker in line for line in lines), lines
    shoot(browser, screenshots, "logs")


@pytest.mark.registry
def test_pull_tag_and_delete(
    daemon_factory: Callable[..., Daemon],
    seeded_store_template: Path,
    registry: RegistryServer,
    browser: WebDriver,
    screenshots: Path,
    tmp_path: Path,
) -> None:
    """A pull from the loopback registry shows layer progress up to 100 %; tag and delete work."""
    from orchestrator.registry.client import RegistryClient
    from orchestrator.store.store import Store

    source = Store(seeded_store_template)
    target = registry.ref("dashboard/smollm2:v1")
    with RegistryClient() as client:
        client.push(source.resolve("ai/smollm2:latest"), target, source)
    empty = daemon_factory(models_path=tmp_path / "empty-store")
    browser.get(empty.url("/ui/"))
    wait_for(
        browser,
        lambda d: one(d, "#models-empty").is_displayed(),
        timeout=10,
        message="store not empty",
    )
    one(browser, "#pull-ref").send_keys(target.tag_string)
    one(browser, "#pull-start").click()
    wait_for(
        browser,
        lambda d: "ok" in (one(d, "#pull-status").get_attribute("class") or ""),
        timeout=60,
        message=f"the pull did not succeed: {text_of(browser, '#pull-status')!r}",
    )
    total = text_of(browser, '#pull-layers [data-layer="total"] span')
    assert total.startswith("100 %"), total
    layers = by_css(browser, "#pull-layers .layer:not(.total) progress")
    assert layers and all(float(bar.get_attribute("value")) == 1.0 for bar in layers)
    rows = wait_for(
        browser,
        lambda d: by_css(d, '#models-table tbody tr[data-model*="dashboard/smollm2"]'),
        timeout=10,
        message="pulled model not listed",
    )
    shoot(browser, screenshots, "pull")
    assert [model["tags"] for model in empty.get("/models").json()] == [[target.tag_string]]

    rows[0].find_element("css selector", 'button[aria-label^="Tag"]').click()
    field = one(browser, "#dialog-input")
    field.clear()
    field.send_keys("dashboard/renamed:v2")
    one(browser, "#dialog-ok").click()
    wait_for(
        browser,
        lambda d: "dashboard/renamed:v2" in text_of(d, "#models-table tbody"),
        timeout=10,
        message="tag not shown",
    )

    row = by_css(browser, "#models-table tbody tr")[0]
    row.find_element("css selector", 'button[aria-label^="Delete"]').click()
    wait_for(
        browser, lambda d: one(d, "#dialog").is_displayed(), timeout=5, message="no confirmation"
    )
    one(browser, "#dialog-cancel").click()
    assert len(empty.get("/models").json()) == 1, "cancel must keep the model"
    by_css(browser, "#models-table tbody tr")[0].find_element(
        "css selector", 'button[aria-label^="Delete"]'
    ).click()
    one(browser, "#dialog-ok").click()
    wait_for(
        browser,
        lambda d: one(d, "#models-empty").is_displayed(),
        timeout=10,
        message="model still listed",
    )
    assert empty.get("/models").json() == []
    assert requests.get(empty.url("/"), timeout=5).text == RUNNING_TEXT
