"""Fixtures for the real-parts tests: a private PulseAudio, test speech, the monitor, Chromium.

Every process a fixture starts is stopped by PID when the fixture ends (SIGTERM, then SIGKILL
after 5 s), also when the test failed. A missing system package skips locally and fails in CI
(see procs.require_or_fail).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import REPO, TIMEOUT_S

from .audio import SENTENCES, assemble, espeak
from .monitor import Monitor, base_env
from .procs import require_binary, require_module
from .pulse import PulseServer

CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def pulse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    """A private PulseAudio server (null sink ``virt``, default source ``virtmic``)."""
    with PulseServer(tmp_path_factory.mktemp("pulse"), timeout_s=TIMEOUT_S) as server:
        yield server


@pytest.fixture
def private_pulse_server(tmp_path: Path) -> Iterator[PulseServer]:
    """A PulseAudio server of this test alone (for tests that kill it)."""
    with PulseServer(tmp_path / "pulse", timeout_s=TIMEOUT_S) as server:
        yield server


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three espeak-ng sentences with pauses between them, one mono wav (about 15 s)."""
    folder = tmp_path_factory.mktemp("speech")
    parts = [
        espeak(text, folder / f"s{i}.wav", timeout_s=TIMEOUT_S, pitch=40 + 15 * i)
        for i, text in enumerate(SENTENCES)
    ]
    return assemble(parts, folder / "call.wav")


@pytest.fixture(scope="session")
def sentence_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One espeak-ng sentence with short silence around it."""
    folder = tmp_path_factory.mktemp("sentence")
    part = espeak(SENTENCES[0], folder / "s.wav", timeout_s=TIMEOUT_S)
    return assemble([part], folder / "sentence.wav", lead_s=0.3, tail_s=1.5)


@pytest.fixture
def start_monitor(tmp_path: Path) -> Iterator[Callable[..., Monitor]]:
    """Factory: ``start_monitor(args, env=...)`` runs ``emotion-monitor run`` and waits for its
    URL; every monitor it started is stopped at teardown."""
    with ExitStack() as stack:
        count = 0

        def start(args: Sequence[str], *, env: dict[str, str] | None = None) -> Monitor:
            nonlocal count
            count += 1
            home = tmp_path / "home"
            home.mkdir(exist_ok=True)
            monitor = Monitor(
                args, env=env if env is not None else base_env(home), cwd=REPO,
                log_path=tmp_path / f"monitor-{count}.log", timeout_s=TIMEOUT_S * 4,
            )
            stack.callback(monitor.stop)
            return monitor.wait_ready()

        yield start


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium binary (never a downloaded browser) and Playwright to drive it."""
    require_module("playwright", "playwright")
    return require_binary("chromium", "chromium", candidates=CHROMIUM_CANDIDATES)
