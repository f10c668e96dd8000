"""External processes for the real-parts tests (pytest's thread plus one reader thread per pipe).

Every process is started by PID and stopped by PID: SIGTERM, then SIGKILL after a grace period.
Output is read by small threads into a list guarded by a condition, so a test waits for a line
on the condition (with a deadline), never by sleeping, and a full pipe never blocks the child.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

__all__ = [
    "GRACE_S",
    "OutputProcess",
    "monitor_command",
    "require_binary",
    "require_file",
    "require_library",
    "require_module",
    "require_or_fail",
    "stop_process",
    "wait_until",
]

# SIGTERM first; SIGKILL if the process is still there after this long.
GRACE_S = 5.0


def require_or_fail(message: str) -> None:
    """A missing system part skips the test locally and fails it in CI (env CI set)."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must install it: see .ci/install)")
    pytest.skip(message)


def require_binary(name: str, package: str, *, candidates: Sequence[str] = ()) -> str:
    """Path of an executable, or skip/fail naming the Debian package that provides it."""
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        require_or_fail(f"{name} not found: install the Debian package '{package}'")
    assert found is not None
    return found


def require_library(name: str, package: str) -> None:
    """Skip/fail naming the Debian package when a shared library (``libNAME.so``) is missing."""
    import ctypes.util

    if ctypes.util.find_library(name) is None:
        require_or_fail(f"library lib{name} not found: install the Debian package '{package}'")


def require_file(pattern: str, package: str) -> None:
    """Skip/fail naming the Debian package when no file matches the glob ``pattern``."""
    import glob

    if not glob.glob(pattern):
        require_or_fail(f"{pattern} not found: install the Debian package '{package}'")


def require_module(module: str, package: str) -> None:
    """Skip/fail naming the package when a Python module cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        require_or_fail(f"Python module {module!r} not found: pip install {package}")


def stop_process(proc: subprocess.Popen[bytes], *, grace_s: float = GRACE_S) -> int:
    """SIGTERM the process, SIGKILL it if it is still running after ``grace_s``; its exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)
    return proc.returncode


def wait_until(condition, *, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``condition()`` (for state held by another process) until truthy or the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def monitor_command(*args: str) -> list[str]:
    """The ``emotion-monitor`` command line, run with this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "server", *args]


class OutputProcess:
    """A child process whose stdout and stderr lines are collected while it runs.

    Use as a context manager: leaving it stops the process (SIGTERM, then SIGKILL), also when
    the test failed. ``wait_for(pattern)`` blocks on a condition until a line matches.
    ``new_session``: the child leads a session (and process group) of its own, so that what
    it spawned can be stopped with it (``os.killpg(pid, ...)``).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.argv = list(argv)
        self._cond = threading.Condition()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._log = log_path.open("a", encoding="utf-8") if log_path else None
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=new_session,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, pipe, sink: list[str]) -> None:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                sink.append(line)
                if self._log is not None:
                    self._log.write(line + "\n")
                    self._log.flush()
                self._cond.notify_all()
        pipe.close()
        with self._cond:
            self._cond.notify_all()

    def _closed(self) -> bool:
        return not any(reader.is_alive() for reader in self._readers)

    def wait_for(
        self, pattern: str, *, timeout_s: float, stream: str = "any"
    ) -> re.Match[str]:
        """The first output line matching ``pattern``; fails on timeout or when output ends."""
        regex = re.compile(pattern)

        def find() -> re.Match[str] | None:
            sources = {"stdout": [self.stdout], "stderr": [self.stderr]}.get(
                stream, [self.stdout, self.stderr]
            )
            for lines in sources:
                for line in lines:
                    match = regex.search(line)
                    if match:
                        return match
            return None

        with self._cond:
            found = self._cond.wait_for(
                lambda: find() or self._closed(), timeout=timeout_s
            )
            match = find()
        if match is None:
            state = "exited" if self._closed() else f"no match after {timeout_s:.0f} s"
            raise AssertionError(
                f"{state} waiting for /{pattern}/ from {' '.join(self.argv)}\n{self.output()}"
            )
        del found
        return match

    def wait_exit(self, *, timeout_s: float) -> int:
        """The exit code; fails if the process is still running after ``timeout_s``."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{' '.join(self.argv)} still running after {timeout_s:.0f} s\n{self.output()}"
            ) from None
        for reader in self._readers:
            reader.join(timeout=timeout_s)
        return code

    def output(self) -> str:
        with self._cond:
            return (
                "--- stdout ---\n" + "\n".join(self.stdout[-80:])
                + "\n--- stderr ---\n" + "\n".join(self.stderr[-80:])
            )

    def stop(self, *, grace_s: float = GRACE_S) -> int:
        """Stop the process (safe to call twice) and close the log."""
        code = stop_process(self.proc, grace_s=grace_s)
        for reader in self._readers:
            reader.join(timeout=grace_s)
        with self._cond:
            if self._log is not None:
                self._log.close()
                self._log = None
        return code

    def kill(self) -> int:
        """SIGKILL now, and reap (output keeps being collected until the pipes close)."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(timeout=GRACE_S)

    def __enter__(self) -> OutputProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
