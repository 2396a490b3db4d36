"""Headless Chromium driven by Selenium, for the dashboard's end-to-end tests.

Uses Debian's ``chromium`` and ``chromium-driver`` packages (never a downloaded browser: the
paths are given, so Selenium Manager is not consulted). ``chromedriver`` runs in its own
process group, so :func:`stop_browser` can end it and every Chromium process it started with
:func:`tests.support.processes.stop_process`, even when the WebDriver session is wedged.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

from tests.support.processes import stop_process

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

T = TypeVar("T")

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver",)
WINDOW_SIZE = (1280, 900)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
)
PAGE_LOAD_TIMEOUT_SECONDS = 30.0


def _first_existing(candidates: tuple[str, ...], name: str) -> str | None:
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


def browser_paths() -> tuple[str, str]:
    """Return ``(chromium, chromedriver)`` or skip with the reason and the fix."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium, the test extra has it)")
    chromium = _first_existing(CHROMIUM_CANDIDATES, "chromium")
    driver = _first_existing(CHROMEDRIVER_CANDIDATES, "chromedriver")
    if chromium is None or driver is None:
        missing = [
            name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if not path
        ]
        pytest.skip(
            f"headless browser tests need {' and '.join(missing)} "
            "(apt-get install -y chromium chromium-driver)"
        )
    return chromium, driver


def start_browser(user_data_dir: Path, log_path: Path) -> WebDriver:
    """Start headless Chromium with a fresh profile in ``user_data_dir``; return the driver.

    Args:
        user_data_dir: Empty folder for the profile (cookies, localStorage).
        log_path: Where chromedriver writes its log.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}")
    service = Service(
        executable_path=driver_path,
        log_output=str(log_path),
        # Its own group: stop_process then reaches Chromium's processes too.
        popen_kw={"start_new_session": True},
    )
    os.environ.setdefault("SE_AVOID_STATS", "true")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_SECONDS)
    return driver


def stop_browser(driver: WebDriver) -> None:
    """End the WebDriver session, then stop chromedriver's process group (TERM, wait, KILL)."""
    from selenium.common.exceptions import WebDriverException

    process: subprocess.Popen[bytes] | None = getattr(driver.service, "process", None)
    try:
        driver.quit()
    except (WebDriverException, OSError):
        pass  # the process group is stopped below either way
    if process is None:
        return
    stop_process(process)
    try:
        # Anything of that group still alive (a Chromium helper that missed the quit).
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for(
    driver: WebDriver, condition: Callable[[WebDriver], T], *, timeout: float, message: str
) -> T:
    """Return ``condition(driver)`` once it is truthy; fail with ``message`` after ``timeout`` s."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException:
        pytest.fail(f"{message} (waited {timeout:g}s)")
