"""report.html from a real run, opened in a real headless Chromium (Debian's package), driven
over the DevTools protocol with aiohttp's websocket client: the page renders with no console
error, holds the charts at a real size, and its screenshot shows them in the report's colours.

Skipped when /usr/bin/chromium is absent (.ci/run installs it). The screenshot is kept in the
test's tmp_path (report.png next to report.html).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from claimroute_tools.scenario import load_scenario, run_scenario
from claimroute_tools.scenario.cli import scenario_library
from claimroute_tools.scenario.render.svg_report import NONE_COLOR, STATUS_COLORS, UPSTREAM_COLORS

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)
LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
WIDTH = 1100  # CSS px: the page's 1000 px column and its margins

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)",
)


# -- a small DevTools protocol client -----------------------------------------------------------


class DevTools:
    """One page of a browser over CDP (flattened sessions on the browser's websocket)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.event_arrived = asyncio.Event()
        self.session: str | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)
                self.event_arrived.set()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the browser closed the DevTools socket"))

    async def send(self, method: str, timeout: float = 60.0, **params: Any) -> dict[str, Any]:
        """Send a command (to the attached page, once there is one) and return its result."""
        ident = next(self.ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        await self.ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def wait_for(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first event called `method` (already received or still to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} within {timeout}s")
            self.event_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event_arrived.wait(), remaining)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} ({params['entry'].get('url')})")
        return found


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[str]:
    """A headless Chromium on a port it picks; yields its browser websocket URL."""
    log = profile.parent / "chromium.stderr"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            found = LISTENING.search(log.read_text(errors="replace"))
            if found:
                yield found.group(1)
                return
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@contextlib.asynccontextmanager
async def page(browser_url: str) -> AsyncIterator[DevTools]:
    """A new page of the browser, attached, with Page, Runtime and Log events on."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            browser_url, max_msg_size=0, timeout=aiohttp.ClientWSTimeout(ws_close=10)
        ) as ws,
    ):
        tools = DevTools(ws)
        try:
            target = await tools.send("Target.createTarget", url="about:blank")
            attached = await tools.send(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            tools.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                await tools.send(f"{domain}.enable")
            await tools.send(
                "Emulation.setDeviceMetricsOverride",
                width=WIDTH,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield tools
        finally:
            tools.reader.cancel()


@dataclass
class Visit:
    """What a visit to a page saw."""

    errors: list[str]
    charts: list[dict[str, Any]]  # per <svg>: id, width, height, top, left (CSS px)
    title: str
    screenshot: Path
    headings: list[str] = field(default_factory=list)


async def visit(url: str, profile: Path, screenshot: Path) -> Visit:
    """Open `url`, wait for its load event, and take a full-page screenshot."""
    with chromium(profile) as browser_url:
        async with page(browser_url) as tools:
            await tools.send("Page.navigate", url=url)
            await tools.wait_for("Page.loadEventFired")
            height = await tools.evaluate("document.documentElement.scrollHeight")
            await tools.send(
                "Emulation.setDeviceMetricsOverride",
                width=WIDTH,
                height=int(height),
                deviceScaleFactor=1,
                mobile=False,
            )
            charts = await tools.evaluate(
                "[...document.querySelectorAll('body > figure > svg')].map(s => {"
                " const r = s.getBoundingClientRect();"
                " return {id: s.id, width: r.width, height: r.height, top: r.top + scrollY,"
                " left: r.left}; })"
            )
            headings = await tools.evaluate(
                "[...document.querySelectorAll('h2')].map(h => h.textContent)"
            )
            title = await tools.evaluate("document.title")
            shot = await tools.send("Page.captureScreenshot", format="png", timeout=120)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            await asyncio.sleep(0.2)  # late console events, if any
            return Visit(tools.errors(), charts, title, screenshot, headings)


# -- the report of a real run ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_visit(tmp_path_factory: pytest.TempPathFactory) -> Visit:
    """The flagship scenario, with less traffic, through a real mitmdump; then its page."""
    out = tmp_path_factory.mktemp("browser") / "report"
    path = scenario_library() / "employees-and-sticky-canary.yaml"
    scenario = load_scenario(path).with_overrides(requests=600, concurrency=None, seed=None)
    result = asyncio.run(run_scenario(scenario, out, progress=False))
    html = result.reports["html"]
    return asyncio.run(visit(html.as_uri(), out.parent / "profile", out / "report.png"))


def colour_pixels(image: Image.Image, hex_colour: str, tolerance: int = 12) -> int:
    """How many pixels of `image` are within `tolerance` of `hex_colour` on every channel."""
    wanted = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - wanted) <= tolerance).all(axis=2).sum())


@pytest.mark.e2e
def test_the_page_renders_without_console_errors(report_visit: Visit) -> None:
    assert report_visit.errors == []
    assert re.fullmatch(r"employees-and-sticky-canary: (PASS|FAIL)", report_visit.title)
    assert report_visit.headings[:3] == ["Expectations", "Charts", "Canary analysis"]


@pytest.mark.e2e
def test_the_page_holds_each_chart_at_a_real_size(report_visit: Visit) -> None:
    charts = {c["id"]: c for c in report_visit.charts}
    # The run's charts, and the canary analysis' two for the split route's default comparison.
    assert list(charts) == ["who-answered", "statuses", "over-the-run", "latency-1", "errors-1"]
    for chart in charts.values():
        # 720 pt is 960 CSS px; the column is 1000 px wide, so nothing is scaled down.
        assert chart["width"] == pytest.approx(960, abs=2), chart
        assert chart["height"] > 100, chart


@pytest.mark.e2e
def test_the_screenshot_shows_the_charts_in_the_reports_colours(report_visit: Visit) -> None:
    image = Image.open(report_visit.screenshot)
    assert image.width == WIDTH
    primary, canary = UPSTREAM_COLORS[:2]
    # Bars of a 960 px wide chart: the primary's 90% of customers alone is ~10,000 px; the
    # canary has the employees' full bar; refusals are grey; 200 and 401 fill the status bars.
    for colour in (primary, canary, NONE_COLOR, STATUS_COLORS["2"], STATUS_COLORS["401"]):
        assert colour_pixels(image, colour) > 2000, colour
    # And each chart's own area is drawn on, not blank.
    for chart in report_visit.charts:
        box = (
            int(chart["left"]),
            int(chart["top"]),
            int(chart["left"] + chart["width"]),
            int(chart["top"] + chart["height"]),
        )
        crop = image.crop(box).convert("L")
        inked = sum(crop.histogram()[:200])  # clearly darker than white
        assert inked > 0.02 * crop.width * crop.height, chart["id"]


@pytest.mark.e2e
def test_the_harness_sees_console_errors_when_there_are_some(tmp_path: Path) -> None:
    """The check above could pass by seeing nothing: a page that errs on purpose is caught."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!doctype html><title>broken</title><figure><svg id='x' width='10' height='10'>"
        "</svg></figure><script>console.error('on purpose'); undefinedFunction();</script>"
        "<img src='missing.png'>"
    )
    seen = asyncio.run(visit(broken.as_uri(), tmp_path / "profile", tmp_path / "broken.png"))
    assert any("on purpose" in e for e in seen.errors), seen.errors
    assert any("undefinedFunction" in e for e in seen.errors), seen.errors
    assert any("missing.png" in e for e in seen.errors), seen.errors
