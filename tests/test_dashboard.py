"""The dashboard files as the real event server serves them (the browser test comes later)."""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser
from urllib.request import urlopen

from conftest import REPO, TIMEOUT_S
from test_client_api import real_server

from server.api import API_PATHS

STATIC = REPO / "server" / "static"
# ids a browser test reads; renaming one breaks it, so they are pinned here
PAGE_IDS = {
    "connection-state",
    "server-clock",
    "nav-calls",
    "nav-wallboard",
    "calls-page",
    "wallboard-page",
    "stored-page",
    "current-label",
    "current-confidence",
    "speech-state",
    "stream-state",
    "last-update",
    "probabilities",
    "stats",
    "server-info",
    "call-list",
    "call-view",
    "call-started",
    "call-duration",
    "channels",
    "alerts",
    "channel-template",
    "wallboard-rows",
    "past-list",
    "past-status",
    "past-more",
    "stored-view",
    "stored-channels",
    "stored-alerts",
}
# classes of one channel in the call view (the browser tests read them)
CHANNEL_CLASSES = {
    "channel", "channel-role", "channel-speech", "channel-label", "channel-confidence",
    "channel-time", "channel-chart", "channel-utterances", "channel-utterance-count",
}


class _Page(HTMLParser):
    """Collects ids, referenced resources and aria-live regions of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.resources: list[str] = []
        self.live: set[str] = set()
        self.classes: set[str] = set()
        self.tags: list[str] = []
        self._in_template = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self._in_template += tag == "template"
        self.tags.append(f"{tag}@template" if self._in_template else tag)
        if attributes.get("id"):
            self.ids.add(str(attributes["id"]))
        if attributes.get("aria-live"):
            self.live.add(str(attributes.get("id") or attributes.get("class")))
        self.classes.update(str(attributes.get("class") or "").split())
        for name in ("src", "href"):
            value = attributes.get(name)
            if value and not value.startswith(("data:", "#")):
                self.resources.append(value)

    def handle_endtag(self, tag: str) -> None:
        self._in_template -= tag == "template"


def fetch(url: str) -> tuple[int, str, str]:
    """GET a URL: status, Content-Type and body text."""
    with urlopen(url, timeout=TIMEOUT_S) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def test_server_serves_the_page_and_its_files() -> None:
    """GET / is the dashboard; the script and style it names are served with the right types."""

    async def main() -> dict[str, tuple[int, str, str]]:
        async with real_server("run1") as (_, srv):
            base = srv.url
            page = await asyncio.to_thread(fetch, base)
            parser = _Page()
            parser.feed(page[2])
            got = {"/": page}
            for resource in parser.resources:
                got[resource] = await asyncio.to_thread(fetch, base + resource)
            return got

    got = asyncio.run(main())
    status, content_type, html = got["/"]
    assert status == 200 and content_type.startswith("text/html")
    page = _Page()
    page.feed(html)
    assert set(page.resources) == {"style.css", "app.js"}  # relative, served by our server
    assert got["app.js"][:2] == (200, "text/javascript; charset=utf-8")
    assert got["style.css"][:2] == (200, "text/css; charset=utf-8")
    assert got["app.js"][2] == (STATIC / "app.js").read_text()
    assert PAGE_IDS <= page.ids
    assert CHANNEL_CLASSES <= page.classes
    # a screen reader hears label changes and new alerts
    assert {"current-label", "alerts", "channel-label"} <= page.live


def test_dashboard_needs_no_network() -> None:
    """No file of the dashboard refers to another host: it works offline."""
    for path in sorted(STATIC.glob("*.*")):
        if path.suffix not in (".html", ".js", ".css"):
            continue
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import", text), path.name


def test_script_uses_only_ids_the_page_has() -> None:
    """Every getElementById in app.js names an element of index.html."""
    page = _Page()
    page.feed((STATIC / "index.html").read_text())
    script = (STATIC / "app.js").read_text()
    used = set(re.findall(r"""\$\(["']([\w-]+)["']\)""", script))
    assert used and used <= page.ids, used - page.ids


def test_one_picker_and_one_chart_per_channel() -> None:
    """The call list is the one picker (no select, no stream list); charts live in channels."""
    page = _Page()
    page.feed((STATIC / "index.html").read_text())
    assert "select" not in page.tags
    # one canvas in the channel template (each channel: its one chart), none elsewhere
    assert [t for t in page.tags if t.startswith("canvas")] == ["canvas@template"]


def test_script_asks_only_for_api_endpoints_the_server_has() -> None:
    """Every store request in app.js names one of server.api's endpoints."""
    script = (STATIC / "app.js").read_text()
    used = set(re.findall(r"""\bapi\("(\w+)\?""", script))
    assert used == {"calls", "timeline"}
    assert {f"/api/{name}" for name in used} <= set(API_PATHS)
