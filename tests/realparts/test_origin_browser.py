"""Cross-site WebSocket hijacking, tried in a real browser (Debian's Chromium via Playwright).

A second, tiny HTTP server on 127.0.0.1 (another port: another origin, the same site) serves a
page whose script tries what the attack in issue 12 did: read events from ``/ws``, push a
forged call to ``/ingest``, read ``/healthz``. With tokens the victim has logged in to the
dashboard first, so the browser holds a session cookie it sends along (SameSite does not help
between ports of one host): only the Origin check stands in the way. A host name that resolves
to the server (DNS rebinding, simulated with Chromium's resolver rules) gets 421.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import TIMEOUT_S

from .browser import chromium_page
from .monitor import Monitor
from .test_dashboard_browser import wait_js

pytestmark = pytest.mark.slow

VIEW = "view-token-browser-0123456789"
ADMIN = "admin-token-browser-0123456789"
INGEST = "ingest-token-browser-0123456789"

ATTACK = """async ({wsUrl, ingestUrl, healthUrl}) => {
  function attempt(url, onOpen) {
    return new Promise(resolve => {
      const out = {opened: false, messages: [], error: false, closed: null};
      const ws = new WebSocket(url);
      ws.binaryType = "arraybuffer";
      ws.onopen = () => { out.opened = true; if (onOpen) onOpen(ws); };
      ws.onmessage = e => out.messages.push(typeof e.data === "string" ? e.data : "binary");
      ws.onerror = () => { out.error = true; };
      ws.onclose = e => { out.closed = e.code; resolve(out); };
      setTimeout(() => { ws.close(); }, 3000);
    });
  }
  const events = await attempt(wsUrl);
  const ingest = await attempt(ingestUrl, ws => {
    ws.send(JSON.stringify({type: "ingest_start", v: 1, stream: "forged", sample_rate_hz: 8000,
                            channels: 1, format: "s16le"}));
    ws.send(new Int16Array(8000).buffer);
    ws.send(JSON.stringify({type: "ingest_end", v: 1}));
  });
  let health;
  try { health = "read: " + await (await fetch(healthUrl)).text(); }
  catch (e) { health = "blocked: " + e; }
  return {events, ingest, health};
}"""


class _AttackerPage(BaseHTTPRequestHandler):
    """Serves one empty page: the attack runs in its origin."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"<!doctype html><title>another site</title><p>nothing to see</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
        pass


@contextmanager
def attacker_server() -> Iterator[str]:
    """A second HTTP server on 127.0.0.1, another port; its page URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    thread = threading.Thread(target=server.serve_forever, name="attacker-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT_S)


def admin_health(monitor: Monitor, token: str | None) -> dict[str, Any]:
    """GET /healthz with the admin token (when tokens are configured)."""
    request = urllib.request.Request(monitor.url + "/healthz")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return dict(json.loads(response.read()))


@pytest.mark.parametrize("tokens", [False, True], ids=["no-tokens", "tokens"])
def test_another_origin_can_neither_read_events_nor_push_audio(
    chromium: str, start_monitor: Any, tmp_path: Path, tokens: bool
) -> None:
    """A page of another origin gets no event and pushes no call; the own dashboard works."""
    args = ["--source", "none", "--port", "0", "--no-store"]
    if tokens:
        token_file = tmp_path / "tokens"
        token_file.write_text(f"view:{VIEW}\nadmin:{ADMIN}\ningest:{INGEST}\n")
        token_file.chmod(0o600)
        args += ["--token-file", str(token_file)]
    monitor: Monitor = start_monitor(args)
    admin = ADMIN if tokens else None

    async def scenario() -> dict[str, Any]:
        rules = "--host-resolver-rules=MAP rebind.test 127.0.0.1"
        async with chromium_page(chromium, tmp_path, timeout_s=TIMEOUT_S,
                                 extra_args=(rules,)) as (page, console):
            # The victim opens the real dashboard (logging in first when tokens are on).
            await page.goto(monitor.url)
            if tokens:
                assert page.url.endswith("/login"), page.url
                await page.fill("#token", VIEW)
                await page.click("#login-submit")
                await page.wait_for_url(monitor.url + "/")
            await wait_js(page, "() => document.getElementById('connection-state')"
                                ".dataset.state === 'connected'", what="the own dashboard")
            cookies = await page.context.cookies()
            # Then a page of another origin (same host, another port) tries the attack.
            with attacker_server() as evil_url:
                await page.goto(evil_url)
                ws_url = monitor.url.replace("http://", "ws://") + "/ws"
                seen = await page.evaluate(ATTACK, {
                    "wsUrl": ws_url, "ingestUrl": ws_url.replace("/ws", "/ingest"),
                    "healthUrl": monitor.url + "/healthz"})
            # DNS rebinding: a foreign name that resolves to the server is not answered.
            rebound = await page.goto(f"http://rebind.test:{monitor.port}/healthz")
            assert rebound is not None
            seen["rebound"] = (rebound.status, await rebound.text())
            return {**seen, "cookies": cookies, "console": console}

    seen = asyncio.run(scenario())
    if tokens:  # the browser did hold the session cookie, HttpOnly and SameSite=Strict
        [cookie] = [c for c in seen["cookies"] if c["name"] == "em_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert VIEW not in cookie["value"]
    for attempt in ("events", "ingest"):
        result = seen[attempt]
        assert not result["opened"] and result["messages"] == [], (attempt, result)
        assert result["error"] and result["closed"] == 1006, (attempt, result)
    assert seen["health"].startswith("blocked"), seen["health"]
    assert seen["rebound"][0] == 421, seen["rebound"]
    health = admin_health(monitor, admin)
    assert health["streams"] == [], health  # no forged call was opened
    assert health["refused"]["origin"] == 2 and health["refused"]["host"] >= 1, health
    output = monitor.output()
    for token in (VIEW, ADMIN, INGEST):
        assert token not in output
