"""``safe-denoiser serve`` in a real browser: the page is served in this process on a free port and driven with
headless Chromium (Selenium and the system chromedriver). Skipped, with the reason, where they are missing."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web page needs the 'web' extra (gradio)")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium (the 'web' extra)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from test_web import shared_engine  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="chromium / chromedriver not installed (Debian: apt-get install chromium chromium-driver)"),
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),  # pandas deprecations inside gradio's queue
]
SCREENSHOT_ENV = "SAFEDENOISER_SCREENSHOT"  # set to docs/web-screenshot.png to refresh the README's screenshot


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    from safedenoiser.web.app import build_app, launch

    engine = shared_engine()
    app = build_app(engine)
    port = _free_port()
    launch(app, "127.0.0.1", port, block=False, max_file_size=engine.limits.max_upload_bytes)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1250"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser, url):
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "generate"))


def _set_number(browser, css, value):
    box = browser.find_element(By.CSS_SELECTOR, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def _status(browser) -> str:
    return browser.find_element(By.ID, "status").text


def test_generation_shows_both_grids_and_the_diagnostics(server, browser, tmp_path):
    """Default page (text-to-image, evasive prompt, conditional mode, 8 images, 10 steps) from seed 10 typed in: both
    grids, the plot, the downloads and the summary appear; the screenshot goes to $SAFEDENOISER_SCREENSHOT (the
    README's docs/web-screenshot.png) or, by default, to the test's temporary folder, so a test run never edits the
    checkout."""
    _open(browser, server)
    _set_number(browser, "#seed input", 10)
    _set_number(browser, "#count input[type=number]", 8)
    _set_number(browser, "#steps input[type=number]", 10)
    start = time.time()
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 80, poll_frequency=0.3).until(lambda d: "judged" in _status(d) or "Not generated" in _status(d))
    assert "judged 'trouser'" in _status(browser), _status(browser)
    assert "8 images, seeds 10-17" in _status(browser)
    for grid in ("grid-plain", "grid-safe"):
        image = browser.find_element(By.CSS_SELECTOR, f"#{grid} img")
        assert image.get_attribute("naturalWidth") not in (None, "0")
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#diagnostics img"))
    downloads = browser.find_element(By.ID, "downloads").text
    assert "images.zip" in downloads.replace("\n", "") and "settings.json" in downloads.replace("\n", "")
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "web-screenshot.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    assert time.time() - start < 80


def test_a_text_file_named_png_gets_a_message_not_a_traceback(server, browser, tmp_path):
    _open(browser, server)
    bad = tmp_path / "not-an-image.png"
    bad.write_text("this is a text file with a .png name")
    browser.find_element(By.CSS_SELECTOR, "#uploads input[type=file]").send_keys(str(bad))
    WebDriverWait(browser, 30).until(lambda d: "not-an-image" in d.find_element(By.ID, "uploads").text)
    mine = "//*[@id='negation']//label[contains(., 'my images')]//input"
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.XPATH, mine).is_selected())  # uploading selects it
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 30, poll_frequency=0.3).until(lambda d: "Not generated" in _status(d))
    status = _status(browser)
    assert "cannot read image not-an-image.png" in status, status
    assert "Traceback" not in browser.page_source


def test_the_default_page_shows_the_concept_options_and_hides_the_estimator(server, browser):
    """The default method (conditional, text-to-image) shows the concept box and steer; the bank methods' estimator
    is hidden (test_web_options.py checks when each option is shown and sent)."""
    _open(browser, server)
    for element in ("concept", "steer"):
        assert browser.find_element(By.ID, element).is_displayed(), element
    assert not any(e.is_displayed() for e in browser.find_elements(By.ID, "estimator"))
