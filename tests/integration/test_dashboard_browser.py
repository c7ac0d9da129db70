"""The dashboard in a real headless Chromium (Debian's, driven through its own chromedriver).

A server from ``create_app`` listens on loopback with a job store in a temporary folder. The jobs are
written as the trainer leaves them: store records plus ``metrics.jsonl`` and ``rollouts.jsonl``; the
running one is RUNNING under this test's own process id, and the test appends to its metrics while
the page is open. Screenshots of each page go to the test's folder and to /tmp/dashboard-shots/.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="the dev extra (selenium) is not installed")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from openrft.config import build_config  # noqa: E402
from openrft.jobs.states import JobState  # noqa: E402
from openrft.jobs.store import JobStore  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = Path("/tmp/dashboard-shots")
LONG_ANSWER = "Let me add them step by step. " * 12 + "The END-OF-ANSWER marker: <answer>4</answer>"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs Debian's chromium and chromium-driver (`make browser` installs them as root)",
)


def metrics_line(step: int, reward: float) -> str:
    row = {
        "step": step, "train/round": float(step), "train/epoch": step / 10, "reward/mean": reward, "loss/policy": 0.3 / step,
        "kl/mean": 0.001 * step, "clip/low_frac": 0.01, "clip/high_frac": 0.02,
        "filter/zero_variance_frac": 0.25,
    }  # fmt: skip
    return json.dumps(row) + "\n"


def make_job(store: JobStore, job_id: str, final: JobState | None, rewards: list[float], **flags) -> None:
    cfg, _ = build_config({}, {"dataset": "arithmetic", "job_id": job_id, **flags})
    record = store.create(job_id, cfg)
    store.transition(job_id, JobState.VALIDATING)
    store.transition(job_id, JobState.RUNNING)
    with open(record.metrics_path, "w") as handle:
        handle.write(json.dumps({"step": 0, "eval/reward": rewards[0]}) + "\n")
        handle.writelines(metrics_line(i + 1, r) for i, r in enumerate(rewards))
    store.record_progress(job_id, len(rewards), rewards[-1])
    if final is not None:
        output = record.job_dir / "output"
        output.mkdir()
        (output / "adapter_config.json").write_text("{}")
        store.set_output(job_id, output)
        store.transition(job_id, final)


def write_rollouts(path: Path, step: int) -> None:
    rows = [
        {"prompt_id": "p1", "prompt": "What is 2 + 2?", "completion": LONG_ANSWER, "score": 1.0,
         "reason": "exact match", "finish_reason": "stop"},
        {"prompt_id": "p1", "prompt": "What is 2 + 2?", "completion": "five", "score": 0.0,
         "reason": "no <answer> tag", "finish_reason": "length"},
        {"prompt_id": "p2", "prompt": "Compute 6 * 7 with the calculator.", "completion": "", "score": 0.5,
         "reason": "right, but slow", "finish_reason": "stop", "prompt_messages": 1,
         "conversation": [
             {"role": "user", "content": "Compute 6 * 7 with the calculator."},
             {"role": "assistant", "content": "", "tool_calls": [
                 {"function": {"name": "multiply", "arguments": "{\"a\": 6, \"b\": 7}"}}]},
             {"role": "tool", "name": "multiply", "content": "42"},
             {"role": "assistant", "content": "<answer>42</answer>"},
         ]},
    ]  # fmt: skip
    with open(path, "w") as handle:
        handle.writelines(json.dumps({"step": step, **r}) + "\n" for r in rows)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``(base URL, job store)`` of a server on loopback, with three jobs in its store."""
    import uvicorn

    from openrft.server.app import create_app
    from openrft.server.settings import ServerSettings

    home = tmp_path_factory.mktemp("dashboard-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENRFT_HOME", str(home))
        store = JobStore(home)
        make_job(store, "live-run", None, [0.1, 0.2, 0.3])
        write_rollouts(store.get("live-run").rollouts_path, 3)
        make_job(store, "base-a", JobState.COMPLETED, [0.2, 0.4, 0.5, 0.6])
        make_job(store, "try-b", JobState.COMPLETED, [0.1, 0.3, 0.35], learning_rate=2e-4, lora_rank=16)
        app = create_app(ServerSettings(home=home, run_queue=False))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}", store
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shots")

    def take(driver, name: str, height: int = 1400) -> Path:
        full = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, max(height, min(int(full) + 150, 4000)))
        path = folder / f"{name}.png"
        driver.save_screenshot(str(path))
        SHOTS.mkdir(exist_ok=True)
        shutil.copy(path, SHOTS / path.name)
        driver.set_window_size(1280, 1400)
        return path

    return take


def wait(driver, condition, seconds: float = 15):
    """Until ``condition(driver)`` is truthy (an element replaced by htmx meanwhile is looked up again)."""
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, seconds, poll_frequency=0.2, ignored_exceptions=ignored).until(condition)


def test_job_list_shows_the_running_job_and_filters_by_state(site, browser, shots):
    url, store = site
    browser.get(url + "/")
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-job='live-run']")
    assert "RUNNING" in row.text and "0.300" in row.text and "30%" in row.text
    assert {r.get_attribute("data-job") for r in browser.find_elements(By.CSS_SELECTOR, "tr.job")} == {
        "live-run", "base-a", "try-b",
    }  # fmt: skip
    assert not browser.find_elements(By.ID, "no-vendor"), "the vendored libraries are missing: make vendor"
    shots(browser, "jobs")
    store.record_progress("live-run", 3, 0.333)  # the table refreshes itself (htmx, every 3 s)
    wait(browser, lambda d: "0.333" in d.find_element(By.CSS_SELECTOR, "tr[data-job='live-run']").text)
    browser.find_element(By.CSS_SELECTOR, "#state-filter a[data-state='COMPLETED']").click()
    wait(browser, lambda d: "state=COMPLETED" in d.current_url)
    shown = {r.get_attribute("data-job") for r in browser.find_elements(By.CSS_SELECTOR, "tr.job")}
    assert shown == {"base-a", "try-b"}
    make_job(store, "late-done", JobState.COMPLETED, [0.5])  # the refresh brings it in, and the count follows
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-job='late-done']"))
    count = "#state-filter a[data-state='COMPLETED'] .count"
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, count).text == "3")


def test_a_buttons_outcome_is_said_once(site, browser):
    url, _ = site
    browser.get(url + "/jobs/base-a?done=cancel-requested")
    assert "Cancel requested" in browser.find_element(By.TAG_NAME, "main").text
    wait(browser, lambda d: "done=" not in d.current_url)  # the address no longer carries it ...
    browser.refresh()
    assert "Cancel requested" not in browser.find_element(By.TAG_NAME, "main").text  # ... nor does a refresh


def test_a_stopped_jobs_page_shows_a_resume_made_elsewhere(site, browser):
    url, store = site
    make_job(store, "stopped", JobState.CANCELLED, [0.1])
    browser.get(url + "/jobs/stopped")
    assert browser.find_element(By.ID, "resume")  # its buttons are those of a cancelled job ...
    store.transition("stopped", JobState.PENDING, "resumed from CANCELLED")  # ... until the CLI resumes it
    wait(browser, lambda d: not d.find_elements(By.ID, "resume"), seconds=30)  # the page reloaded
    assert browser.find_element(By.ID, "job-state").text == "PENDING"
    assert browser.find_element(By.ID, "cancel")


def test_the_curve_gains_a_point_without_a_reload(site, browser, shots):
    url, store = site
    browser.get(url + "/jobs/live-run")
    reward_chart = "figure.chart[data-panel='0']"
    points = lambda d: d.find_element(By.CSS_SELECTOR, reward_chart).get_attribute("data-points")  # noqa: E731
    wait(browser, lambda d: points(d) == "4")  # steps 0 (eval only) to 3
    browser.execute_script("window.stillTheSamePage = true")
    with open(store.get("live-run").metrics_path, "a") as handle:
        handle.write(metrics_line(4, 0.45))
    wait(browser, lambda d: points(d) == "5")
    assert browser.execute_script("return window.stillTheSamePage") is True
    store.record_progress("live-run", 4, 0.45)  # the facts above the curves follow them
    wait(browser, lambda d: d.find_element(By.ID, "job-reward").text == "0.450")
    assert browser.find_element(By.ID, "job-progress").text == "40%"
    steps, rewards = browser.execute_script(
        "var p = window.openrftCharts[0].plot; return [p.data[0], p.data[1]]"
    )
    assert steps == [0, 1, 2, 3, 4] and rewards[-1] == pytest.approx(0.45)
    with open(store.get("live-run").metrics_path, "a") as handle:  # a skipped round's own line, same step
        handle.write(json.dumps({"step": 4, "reward/mean": 0.2, "filter/round_skipped": 1.0}) + "\n")
    wait(browser, lambda d: points(d) == "6")
    steps, rewards = browser.execute_script(
        "var p = window.openrftCharts[0].plot; return [p.data[0], p.data[1]]"
    )
    assert steps == [0, 1, 2, 3, 4, 4] and rewards[-2:] == pytest.approx([0.45, 0.2])  # both kept, in order
    for section in ("Parameters", "State history", "Adapter", "Rollouts"):
        assert browser.find_element(By.XPATH, f"//h2[normalize-space()='{section}']")
    assert browser.find_element(By.ID, "cancel").is_displayed()
    shots(browser, "job")


def test_the_rollouts_browser_opens_a_rollout(site, browser, shots):
    url, _ = site
    browser.get(url + "/jobs/live-run#rollouts")
    first = browser.find_elements(By.CSS_SELECTOR, "details.rollout")[0]
    assert first.find_element(By.CSS_SELECTOR, ".score").text == "1.000"  # best first
    completion = first.find_element(By.CSS_SELECTOR, "pre.completion")
    assert not completion.is_displayed()
    first.find_element(By.TAG_NAME, "summary").click()
    wait(browser, lambda d: completion.is_displayed())
    assert "The END-OF-ANSWER marker: <answer>4</answer>" in completion.text  # the whole text
    assert "exact match" in first.text and "stop" in first.text
    Select(browser.find_element(By.ID, "rollout-order")).select_by_value("worst")  # htmx swaps the list
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "details.rollout .score").text == "0.000")
    agent = browser.find_elements(By.CSS_SELECTOR, "details.rollout")[1]
    agent.find_element(By.TAG_NAME, "summary").click()
    wait(browser, lambda d: "tool multiply" in agent.text.lower())  # roles are shown in capitals
    assert "[calls multiply(" in agent.text and "<answer>42</answer>" in agent.text
    browser.execute_script("document.getElementById('rollouts').scrollIntoView()")
    shots(browser, "rollouts", height=1400)


def test_the_rollouts_browser_searches_and_its_choices_can_be_linked_and_gone_back_through(site, browser):
    url, _ = site
    browser.get(url + "/jobs/live-run#rollouts")
    Select(browser.find_element(By.ID, "rollout-order")).select_by_value("worst")
    wait(browser, lambda d: "order=worst" in d.current_url)  # the address follows the choice
    search = browser.find_element(By.ID, "rollout-search")
    search.send_keys("calculator")
    search.submit()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "details.rollout")) == 1)
    assert "q=calculator" in browser.current_url and "1 of 3 rollouts" in browser.page_source
    browser.back()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "details.rollout")) == 3)
    assert "order=worst" in browser.current_url and "q=" not in browser.current_url
    browser.get(url + "/jobs/live-run?order=worst&q=calculator#rollouts")  # a link shows the same
    assert len(browser.find_elements(By.CSS_SELECTOR, "details.rollout")) == 1


def test_the_create_form_shows_the_error_next_to_the_field(site, browser, shots):
    url, store = site
    jobs = len(store.list())
    browser.get(url + "/create")
    browser.find_element(By.ID, "input-dataset").send_keys("arithmetic")
    browser.find_element(By.ID, "input-lora-rank").send_keys("12")
    browser.find_element(By.ID, "submit").click()
    error = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#field-lora-rank .field-error"))
    assert error.text == "--lora-rank: 12 is not valid; expected one of 4, 8, 16, 32"
    assert browser.find_element(By.ID, "input-lora-rank").get_attribute("value") == "12"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".field-error")) == 1
    assert len(store.list()) == jobs  # nothing was submitted
    shots(browser, "create")


def test_the_compare_page_warns_when_more_than_one_parameter_differs(site, browser, shots):
    url, _ = site
    browser.get(url + "/compare?ids=base-a&ids=try-b")
    warning = browser.find_element(By.ID, "compare-warning").text
    assert "2 parameters differ" in warning and "--learning-rate" in warning and "--lora-rank" in warning
    wait(
        browser, lambda d: d.find_element(By.CSS_SELECTOR, "figure.chart").get_attribute("data-points") == "5"
    )
    labels = browser.execute_script("return window.openrftCharts[0].series.map(s => s.label)")
    assert labels == ["base-a train", "base-a eval", "try-b train", "try-b eval"]
    shots(browser, "compare")
    browser.get(url + "/jobs/base-a")
    folder = browser.find_element(By.ID, "adapter-folder").text
    assert folder.endswith("/jobs/base-a/output") and f"--lora-modules base-a={folder}" in browser.page_source
    assert not browser.find_elements(By.ID, "cancel")  # a finished job has nothing to cancel
    shots(browser, "job-completed")


def test_a_job_page_open_when_the_job_ends_shows_it_ended(site, browser, shots):
    url, store = site
    make_job(store, "ending", None, [0.1, 0.2])
    browser.get(url + "/jobs/ending")
    assert browser.find_element(By.ID, "cancel").is_displayed()
    browser.execute_script("window.stillTheSamePage = true")
    store.transition("ending", JobState.COMPLETED)
    wait(browser, lambda d: not d.find_elements(By.ID, "cancel"))  # reloaded: no Cancel for a finished job
    assert browser.execute_script("return window.stillTheSamePage") is None
    assert "COMPLETED" in browser.find_element(By.ID, "job-state").text


@pytest.mark.parametrize("page", ["/jobs/long-story", "/compare?ids=base-a&ids=long-story", "/"])
def test_a_phone_wide_window_never_scrolls_the_page_sideways(site, browser, page):
    url, store = site
    if "long-story" not in {record.id for record in store.list()}:
        model = "/srv/models/" + "a_rather_long_folder_name/" * 4 + "SmolLM2-135M-Instruct"  # in the facts
        make_job(store, "long-story", None, [0.1, 0.2], stop=["</answer>", "</tool_call>"], base_model=model)
        long_message = (
            "evaluator failed: " + "/a/rather/long/path/to/the/evaluator/file/" * 4 + "evaluate.py::evaluate"
        )
        store.transition("long-story", JobState.FAILED, long_message)
        word = {"step": 2, "prompt_id": "p9", "prompt": "Spell it.", "completion": "x" * 300, "score": 0.0}
        store.get("long-story").rollouts_path.write_text(json.dumps(word) + "\n")  # one unbroken word
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 375, "height": 812, "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        browser.get(url + page)
        wide = browser.execute_script("return document.documentElement.scrollWidth")
        assert wide <= browser.execute_script("return window.innerWidth"), f"{page} is {wide}px wide"
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
