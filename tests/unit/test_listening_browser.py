"""The listening page in a real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium), served
from the output folder over HTTP on loopback as any static host would: it loads with no console errors, every
histogram and every player's audio loads (linked files and audio embedded from the Parquet alike) with the row's
duration, and the flag, speaker and language filters show exactly the matching rows. `.ci/run` installs the browser
and sets RAYTTS_REQUIRE_BROWSER=1, so there a missing browser fails this test instead of skipping it."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.cli import main
from pipeline.listening import gather

from .test_listening import write_output

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

WAIT_FOR_AUDIO = """
const done = arguments[arguments.length - 1];
const players = Array.from(document.querySelectorAll("audio"));
const settle = (audio) => new Promise((resolve) => {
  const report = () => resolve({id: audio.closest("tr").querySelector("code").textContent,
    ready: audio.readyState, error: audio.error ? audio.error.code : null, duration: audio.duration});
  if (audio.readyState >= 1 || audio.error) return report();
  audio.addEventListener("loadedmetadata", report, {once: true});
  audio.addEventListener("error", report, {once: true});
  audio.load();
});
Promise.all(players.map(settle)).then(done);
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator:
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("RAYTTS_REQUIRE_BROWSER") == "1":
            pytest.fail("RAYTTS_REQUIRE_BROWSER=1 but chromium/chromedriver are not installed (apt-get install "
                        "chromium chromium-driver)")  # fmt: skip
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An output folder with its page, served over HTTP on 127.0.0.1 (a static host: no server code of raytts)."""
    output = tmp_path / "out"
    write_output(output)
    assert main(["report", str(output)]) == 0
    handler = functools.partial(_QuietHandler, directory=str(output))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/report.html", output
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


def _visible_ids(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#rows tr")
    return [row.find_element(By.TAG_NAME, "code").text for row in rows if row.is_displayed()]


def test_page_loads_players_and_filters_in_chromium(browser, served) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, output = served
    browser.get(url)
    assert browser.title.startswith("raytts listening report")
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 7 and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)

    rows = {row["id"]: row for row in gather(str(output)).shown()}
    players = browser.execute_async_script(WAIT_FOR_AUDIO)
    assert {p["id"] for p in players} == set(rows)
    for player in players:
        assert player["error"] is None and player["ready"] >= 1, player
        assert abs(player["duration"] - rows[player["id"]]["qc"]["duration_s"]) < 0.05, player

    everything = _visible_ids(browser)
    assert sorted(everything) == sorted(rows)
    flag, speaker, lang = (Select(browser.find_element(By.ID, f"filter-{n}")) for n in ("flag", "speaker", "language"))
    flag.select_by_value("loop")
    assert sorted(_visible_ids(browser)) == sorted(i for i, r in rows.items() if "loop" in r["qc_flags"])
    assert browser.find_element(By.ID, "shown").text == str(len(_visible_ids(browser)))
    speaker.select_by_value("alice")
    assert _visible_ids(browser) == [
        i for i in everything if "loop" in rows[i]["qc_flags"] and rows[i]["speaker"] == "alice"
    ]
    flag.select_by_value("clean")
    speaker.select_by_value("")
    assert sorted(_visible_ids(browser)) == sorted(i for i, r in rows.items() if not r["qc_flags"])
    flag.select_by_value("")
    lang.select_by_value("zh")
    assert _visible_ids(browser) == ["clean-0"]
    lang.select_by_value("")
    assert sorted(_visible_ids(browser)) == sorted(rows)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []  # after every filter ran: a script error in a handler counts too
