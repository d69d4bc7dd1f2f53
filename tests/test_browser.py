"""The liveblog in a real browser: Debian's Chromium driven by Playwright.

Two tabs on ``wsgi-channels run examples.flask_app:app``: a post published in one
appears in the other without a reload; after the server is stopped and started again
on the same port, the page reconnects by itself, catches up on what was published
while it was away, and shows new posts live again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, wait_for_port
from test_deployments import APP, Processes, process_env, wait_until_ok, wsgi_channels_command

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="no /usr/bin/chromium (apt-get install chromium); browsers are never downloaded",
    ),
]


class Site:
    """``wsgi-channels run`` of the liveblog on a fixed port, which can be restarted."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: Any = None

    def start(self) -> None:
        self.process = self.processes.start(
            "run",
            [*wsgi_channels_command(), "run", APP, "--bind", f"127.0.0.1:{self.port}"],
            process_env(),
        )
        wait_for_port(self.port, timeout=20)
        wait_until_ok(self.url + "posts.json")

    def stop(self) -> None:
        assert self.process is not None
        self.processes.stop(self.process)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    workdir = tmp_path / "site"
    workdir.mkdir()
    processes = Processes(workdir)
    site = Site(processes)
    site.start()
    yield site
    processes.stop_all()
    print(processes.logs())


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


def wait_live(page: Any, timeout: float = 10_000) -> None:
    page.wait_for_selector('#status[data-state="live"]', timeout=timeout)


def publish(page: Any, text: str) -> None:
    page.fill("textarea[name=body]", text)
    page.fill("input[name=author]", "Browser")
    page.click("button[type=submit]")


def post_in(page: Any, text: str) -> Any:
    return page.locator("#posts li.post .body", has_text=text)


def test_two_tabs_and_a_server_restart(site: Site, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 900, "height": 700})
    writer, reader = context.new_page(), context.new_page()
    console_errors: list[str] = []
    for page in (writer, reader):
        page.on("pageerror", lambda exc: console_errors.append(str(exc)))
        page.goto(site.url)
        wait_live(page)

    # Live: published in one tab, in the other within a second, no reload.
    publish(writer, "First post, live")
    started = time.monotonic()
    post_in(reader, "First post, live").wait_for(timeout=1000)
    assert time.monotonic() - started < 1.0
    post_in(writer, "First post, live").wait_for(timeout=1000)

    # The server goes away: the pages notice and keep trying.
    site.stop()
    reader.wait_for_selector('#status[data-state="connecting"]', timeout=5000)

    # Published while the pages were disconnected (straight into the database): only
    # the catch-up after reconnecting can show it.
    with sqlite3.connect(site.processes.cwd / "liveblog.sqlite3") as db:
        db.execute(
            "INSERT INTO posts (author, body, created) VALUES (?, ?, ?)",
            ("Backstage", "Written while you were away", "2024-05-01T10:00:00+00:00"),
        )
    db.close()

    site.start()
    wait_live(reader, timeout=15_000)
    wait_live(writer, timeout=15_000)
    post_in(reader, "Written while you were away").wait_for(timeout=3000)

    publish(writer, "After the restart")
    post_in(reader, "After the restart").wait_for(timeout=1000)

    bodies = reader.locator("#posts li.post .body").all_inner_texts()
    assert bodies == ["After the restart", "Written while you were away", "First post, live"]
    assert reader.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
    assert console_errors == []

    ARTIFACTS.mkdir(exist_ok=True)
    reader.screenshot(path=str(ARTIFACTS / "liveblog.png"), full_page=True)
    context.close()
