"""The web console in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): login
is required and works, a job moves from queued to succeeded on screen, its log streams, a hostile job name
stays inert. Saves a screenshot of the job page to $CONSOLE_SCREENSHOT when that is set."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control.conftest import Control, operator_token, queued_payload
from tests.control.console_support import PlayedAgent, console, logs_url  # noqa: F401 (fixtures)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() or not Path(CHROMEDRIVER).exists(),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_job_goes_from_queued_to_succeeded_with_its_log_streaming(console: Control, browser) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    wait = WebDriverWait(d, 20)

    def text_of(css: str, text: str) -> None:
        wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))

    # Login is required, and works with an operator token.
    d.get(console.url + "/ui/jobs")
    assert "/ui/login" in d.current_url
    d.find_element(By.ID, "token").send_keys("not-a-token")
    d.find_element(By.ID, "login").click()
    text_of("#login-error", "invalid token")
    d.find_element(By.ID, "token").send_keys(operator_token())
    d.find_element(By.ID, "login").click()
    wait.until(ec.url_to_be(console.url + "/ui/jobs"))
    assert "No jobs." in d.find_element(By.ID, "job-rows").text

    # A webhook queues a job with a hostile name: the list shows it (polled), as text.
    payload = queued_payload(9501)
    payload["workflow_job"]["name"] = XSS
    assert console.deliver(payload).status_code == 202
    text_of("#job-9501", "queued")
    assert XSS in d.find_element(By.CSS_SELECTOR, "#job-9501 .name").text
    assert d.execute_script("return window.__xss === undefined")

    # An agent takes it: the list shows its host; the job page follows it to the end.
    agent = PlayedAgent(console, "host-browser")
    job = agent.lease()
    text_of("#job-9501", "host-browser")
    d.find_element(By.LINK_TEXT, "9501").click()
    text_of("#job-state", "assigned")
    agent.report(job, "running")
    text_of("#job-state", "running")
    agent.ship(job, ["Run actions/checkout@v4", "building ... <b>not bold</b>"])
    text_of("#log", "building ... <b>not bold</b>")
    agent.ship(job, ["tests passed", "exit 0"], first_seq=3, last=True)
    text_of("#log", "tests passed")
    text_of("#log-end", "end of log")
    agent.report(job, "succeeded", exit_code=0)
    text_of("#job-state", "succeeded")
    lines = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#log .line .text")]
    assert lines == ["Run actions/checkout@v4", "building ... <b>not bold</b>", "tests passed", "exit 0"]
    assert d.execute_script("return window.__xss === undefined")
    if shot := os.environ.get("CONSOLE_SCREENSHOT"):
        d.save_screenshot(shot)

    # Back on the list it is succeeded; the other pages load; logging out ends the session.
    d.find_element(By.LINK_TEXT, "Jobs").click()
    text_of("#job-9501", "succeeded")
    for page, marker in (("Hosts", "host-browser"), ("Queue", "smith-2vcpu"), ("Cache", "No cache usage")):
        d.find_element(By.LINK_TEXT, page).click()
        text_of("main", marker)
    d.find_element(By.CSS_SELECTOR, ".logout button").click()
    wait.until(ec.url_contains("/ui/login"))
    d.get(console.url + "/ui/jobs")
    assert "/ui/login" in d.current_url
