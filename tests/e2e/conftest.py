"""Browser tests: Playwright drives Debian's Chromium (never a downloaded browser) against a live server.

Every step saves a screenshot under test-output/e2e/<test>/; the folder is kept only when the test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "e2e"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[FAILED] = report.failed


FAILED = pytest.StashKey[bool]()


@pytest.fixture
async def page(request: pytest.FixtureRequest):
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 1000})
        page = await context.new_page()
        yield page
        await browser.close()


@pytest.fixture
def shot(request: pytest.FixtureRequest, page) -> Iterator[Callable[[str], Coroutine[Any, Any, None]]]:
    """`await shot("step")` saves a numbered screenshot; kept only if the test fails."""
    folder = OUTPUT / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    counter = iter(range(1, 1000))

    async def take(name: str, target=None) -> None:
        await (target or page).screenshot(path=str(folder / f"{next(counter):02d}-{name}.png"), full_page=True)

    yield take
    if not request.node.stash.get(FAILED, True):
        shutil.rmtree(folder, ignore_errors=True)


def npm_install(tmp_path_factory: pytest.TempPathFactory, name: str, *packages: str) -> Path:
    """A fresh folder with `packages` (exact versions) installed from npm: the software nobody here wrote
    that an end-to-end test drives. Fails the test, with the reason, when npm is missing."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"npm is missing: this test installs {' '.join(packages)} from npm")
    folder = tmp_path_factory.mktemp(name)
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(folder), *packages],
        check=True,
        timeout=300,
    )
    return folder


NODE = shutil.which("node") or "/usr/bin/node"


async def node_json(folder: Path, script: str, job: dict[str, Any]) -> dict[str, Any]:
    """Run `script` of `folder` with `job` as its JSON argument, while this test's event loop keeps
    serving the live server; what it printed, as JSON (it must exit 0)."""
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(folder / script),
        json.dumps(job),
        cwd=folder,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, (stdout.decode(), stderr.decode())
    result: dict[str, Any] = json.loads(stdout)
    return result
