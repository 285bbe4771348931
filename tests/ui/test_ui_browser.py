"""The UI in a real headless Chromium: start a run of the tiny model, watch it, stop it, resume it, open its report
and chat with it. Screenshots go to test-artifacts/ui/ (and to docs/ui.png with TUNESMITH_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import os
import shutil
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None or selenium is None,
    reason="needs chromium, chromedriver (Debian: apt-get install chromium chromium-driver) and selenium "
           "(pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
STEPS = 16

SLOW_STEPS = textwrap.dedent("""
    # Loaded by the training processes of the browser test only (PYTHONPATH): the tiny model trains in
    # milliseconds on a quiet machine, so each step takes at least 0.3 s, leaving time to watch it and stop it.
    import time
    from tunesmith.train import loop

    _step = loop.train_step

    def train_step(*args):
        time.sleep(0.3)
        return _step(*args)

    loop.train_step = train_step
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui_url(work, tmp_path, monkeypatch):
    """The UI over `work`, served by uvicorn in a thread; training processes it starts take >= 0.3 s a step."""
    import uvicorn

    from tunesmith.ui.app import create_app

    slow = tmp_path / "slow-steps"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_STEPS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(slow), os.environ.get("PYTHONPATH", "")]))
    app = create_app(work / "runs", work)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    for process in app.state.ui.launcher.processes.values():
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 120, what: str = ""):
    """Poll `condition` until it holds. An element replaced while it was read (a page still rendering: a suite
    run once read the report's body as it was swapped) is read again at the next poll, not a failure."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: condition(d),
                                                                                      message=what)


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def chart_points(driver) -> int:
    return int(driver.find_element("id", "loss-chart").get_attribute("data-points") or 0)


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def fill(driver, element_id: str, value: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(value)


def start_run(driver, url: str, model: Path) -> None:
    """New run: the data file, its inspect summary, the tiny model, a few steps; then Start."""
    driver.get(url)
    driver.find_element("id", "tab-new").click()
    wait_for(driver, lambda d: "data/qa.jsonl" in text(d, "new-data"), 30, "data file listed")
    fill(driver, "new-model", str(model))
    driver.find_element("id", "inspect-btn").click()
    wait_for(driver, lambda d: "records" in text(d, "inspect-out"), 120, "inspect summary")
    assert "16 records" in text(driver, "inspect-out") and "invalid records: 0" in text(driver, "inspect-out")
    screenshot(driver, "1-new-run")
    fill(driver, "new-max-steps", str(STEPS))
    fill(driver, "new-name", "browser")
    fill(driver, "new-settings", "training.precision=fp32\nsplit.test_size=2\ntraining.batch_size=2\n"
                                 "training.eval_every_steps=4")
    driver.find_element("id", "start-btn").click()
    wait_for(driver, lambda d: text(d, "run-name") == "browser", 30, "run opened")


def watch_and_stop(driver, work: Path) -> int:
    """The step counter and the chart advance; Stop writes a checkpoint; returns the step it stopped at."""
    wait_for(driver, lambda d: int(text(d, "run-step")) >= 1 and chart_points(d) >= 1, 240, "first step")
    first_step, first_points = int(text(driver, "run-step")), chart_points(driver)
    wait_for(driver, lambda d: int(text(d, "run-step")) > first_step and chart_points(d) > first_points, 60,
             "progress")
    assert text(driver, "run-state").lower() == "running" and text(driver, "run-total") == str(STEPS)
    screenshot(driver, "2-running")
    driver.find_element("id", "stop-btn").click()
    wait_for(driver, lambda d: text(d, "run-state").lower() == "stopped", 120, "stopped")
    stopped_at = int(text(driver, "run-step"))
    assert 2 <= stopped_at < STEPS
    checkpoints = work / "runs" / "browser" / "checkpoints"
    assert (checkpoints / "latest").read_text() == f"step-{stopped_at}"
    screenshot(driver, "3-stopped")
    return stopped_at


def resume_to_the_end(driver) -> None:
    driver.find_element("id", "resume-btn").click()
    wait_for(driver, lambda d: text(d, "run-state").lower() == "finished", 300, "finished")
    assert text(driver, "run-step") == str(STEPS) and chart_points(driver) >= STEPS
    assert text(driver, "run-best") != "–"
    path = screenshot(driver, "4-finished")
    if os.environ.get("TUNESMITH_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, ROOT / "docs" / "ui.png")


def open_report(driver) -> None:
    main = driver.current_window_handle
    driver.find_element("id", "report-btn").click()
    wait_for(driver, lambda d: len(d.window_handles) == 2, 120, "report window")
    driver.switch_to.window([h for h in driver.window_handles if h != main][0])
    wait_for(driver, lambda d: "browser" in d.find_element("tag name", "body").text, 30, "report content")
    assert driver.current_url.endswith("/runs/browser/report.html")
    screenshot(driver, "5-report")
    driver.close()
    driver.switch_to.window(main)


def chat(driver) -> None:
    driver.find_element("id", "chat-btn").click()
    wait_for(driver, lambda d: "browser" in text(d, "chat-run"), 30, "run to chat with")
    fill(driver, "chat-text", "What colour is the Wren kettle?")
    driver.find_element("id", "chat-send").click()
    answers = "#chat-{} .bubble.assistant[data-done='1']"
    for which in ("finetuned", "base"):
        wait_for(driver, lambda d: d.find_elements("css selector", answers.format(which)), 180, f"{which} answer")
        answer = driver.find_element("css selector", answers.format(which))
        assert int(answer.get_attribute("data-pieces")) >= 1
    screenshot(driver, "6-chat")


def compare(driver) -> None:
    driver.find_element("id", "tab-compare").click()
    wait_for(driver, lambda d: "browser" in text(d, "compare-choices"), 30, "runs to compare")
    driver.find_element("id", "compare-btn").click()
    wait_for(driver, lambda d: "browser" in text(d, "compare-table"), 30, "compare table")
    assert int(driver.find_element("id", "compare-chart").get_attribute("data-points")) == STEPS


def test_start_watch_stop_resume_report_chat(browser, ui_url, work, tiny_model_dir):
    start_run(browser, ui_url, tiny_model_dir)
    watch_and_stop(browser, work)
    resume_to_the_end(browser)
    open_report(browser)
    chat(browser)
    compare(browser)
    logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
    assert not [entry for entry in logs if entry.get("level") == "SEVERE"], logs
