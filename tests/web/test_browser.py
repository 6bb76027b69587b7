"""The pages in a real browser: Debian's Chromium driven by Selenium through Debian's
chromedriver (``/usr/bin/chromedriver``; Selenium Manager is never asked, nothing is
downloaded), against uvicorn serving the app on a free port.

Screenshots are kept in the test's directory and in ``.sitetwin/test-artifacts/``.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from sitetwin.services import free_port
from tests.support import ROOT, wait_for
from tests.web.conftest import NOW, PASSWORD, no_peaks
from web.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.parametrize("twin_url", ["sqlite"], indirect=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = ROOT / ".sitetwin" / "test-artifacts"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000")


@pytest.fixture
def server(world, settings) -> Iterator[str]:
    """uvicorn serving the app on the test's registry, on a free port."""
    app = create_app(settings, world.store, peaks=no_peaks, clock=lambda: NOW)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        lifespan="off"))
    thread = threading.Thread(target=srv.run, name="uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: srv.started or not thread.is_alive(), timeout=30, message="uvicorn started")
    assert thread.is_alive(), "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def open_browser(tmp_path, monkeypatch):
    """A factory of fresh headless Chromium sessions (each its own profile and language)."""
    from selenium.webdriver.common import selenium_manager

    def refuse(*_a, **_k):
        raise AssertionError("Selenium Manager must not run (it would download a driver)")
    monkeypatch.setattr(selenium_manager.SeleniumManager, "binary_paths", refuse)
    drivers = []

    def start(lang: str = "en-US") -> webdriver.Chrome:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tmp_path / f'profile-{len(drivers)}'}")
        options.add_argument(f"--lang={lang}")
        options.add_experimental_option("prefs", {"intl.accept_languages": lang})
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(60)
        drivers.append(driver)
        return driver

    yield start
    for d in drivers:
        d.quit()


def shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)
    return path


def settle(driver) -> WebDriverWait:
    """A wait that outlasts a navigation: while the old page goes, Chromium may answer a lookup
    with an error about a node of the previous document; that is retried, not a failure."""
    return WebDriverWait(driver, 30, ignored_exceptions=(WebDriverException,))


def log_in(driver, base: str, username: str) -> None:
    driver.get(base + "/login")
    driver.find_element(By.ID, "username").send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login-submit").click()
    settle(driver).until(lambda d: d.find_element(By.ID, "current-user"))


def test_regulator_confirms_a_flag_and_it_shows_in_audit_and_report(server, open_browser, world,
                                                                     tmp_path):
    browser = open_browser()
    log_in(browser, server, "regulator1")
    assert browser.current_url.endswith("/review")
    browser.find_element(By.CSS_SELECTOR, f'a.flag-link[data-flag="{world.bill_flag}"]').click()
    settle(browser).until(lambda d: d.find_element(By.ID, "review-form"))
    evidence = browser.find_element(By.ID, "evidence").text
    assert "1,000.0 kWh" in evidence and "998.2 kWh" in evidence and "582.00 CNY" in evidence
    assert "metered-energy-weighted catalogue price" in evidence
    # The note is required: the browser itself will not send the form without it.
    browser.find_element(By.ID, "confirm").click()
    assert browser.find_element(By.ID, "flag-status").text == "open"
    note = "Unit price 1.20 CNY/kWh against an allowed 0.618; the landlord's own meter agrees."
    browser.find_element(By.ID, "review-note").send_keys(note)
    shot(browser, tmp_path, "flag-before-confirm")
    browser.find_element(By.ID, "confirm").click()
    settle(browser).until(lambda d: d.find_element(By.ID, "flag-status").text == "confirmed")
    trail = browser.find_element(By.ID, "review-trail").text
    assert "regulator1" in trail and note in trail
    shot(browser, tmp_path, "flag-confirmed")

    browser.get(server + "/api/v1/reports/overcharging?period=2026-10&format=json")
    report = browser.find_element(By.TAG_NAME, "body").text
    assert '"reviewed_by":"regulator1"' in report.replace(" ", "") and '"B-1"' in report

    admin = open_browser()
    log_in(admin, server, "admin1")
    admin.get(server + "/audit?action=flag.review")
    rows = admin.find_elements(By.CSS_SELECTOR, "tr.audit-row")
    assert len(rows) == 1 and "regulator1" in rows[0].text and note in rows[0].text
    assert '"confirmed"' in rows[0].text and "127.0.0.1" in rows[0].text
    shot(admin, tmp_path, "audit-review")


def test_noc_is_refused_the_review_page(server, open_browser, tmp_path):
    browser = open_browser()
    log_in(browser, server, "noc1")
    assert browser.current_url.endswith("/alarms")
    assert "S002" in browser.find_element(By.ID, "alarms").text
    assert not browser.find_elements(By.ID, "nav-review")
    browser.get(server + "/review")
    assert browser.find_element(By.ID, "error-title").text.startswith("403")
    shot(browser, tmp_path, "noc-refused")


def test_chinese_pages(server, open_browser, world, tmp_path):
    browser = open_browser("zh-CN")
    browser.get(server + "/login")
    assert browser.find_element(By.ID, "login-submit").text == "登录"
    log_in(browser, server, "regulator1")
    assert browser.find_element(By.ID, "nav-review").text == "审核队列"
    assert "转供电加价" in browser.find_element(By.ID, "queue").text
    browser.get(server + f"/flags/{world.bill_flag}")
    assert browser.find_element(By.ID, "confirm").text == "确认"
    assert "政府定价上限" in browser.find_element(By.ID, "evidence").text
    shot(browser, tmp_path, "flag-zh-CN")
