"""Debian's Chromium, headless, driven by Playwright's async API (an asyncio loop in the test).

Never a downloaded browser: the executable is Debian's, launched with the flags that work on
a headless, GPU-less, network-less machine (../shared/TESTING.md), a temporary HOME and its
own profile folder. Playwright stops the browser process when the context manager exits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM_ARGS", "chromium_page"]

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@asynccontextmanager
async def chromium_page(
    executable: str, workdir: Path, *, timeout_s: float, extra_args: tuple[str, ...] = ()
) -> AsyncIterator[tuple[Any, list[str]]]:
    """A fresh page in headless Chromium, and the list its console messages are added to.

    ``extra_args`` are more Chromium switches (e.g. ``--host-resolver-rules``)."""
    from playwright.async_api import async_playwright

    home = workdir / "browser-home"
    home.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(workdir / "browser-profile"),
            executable_path=executable,
            headless=True,
            args=[*CHROMIUM_ARGS, *extra_args],
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
            timeout=timeout_s * 1000,
            viewport={"width": 1280, "height": 800},
        )
        try:
            context.set_default_timeout(timeout_s * 1000)
            page = context.pages[0] if context.pages else await context.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            yield page, console
        finally:
            await context.close()
