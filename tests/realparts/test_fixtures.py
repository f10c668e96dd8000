"""The fixtures themselves: processes they start are gone after a test that failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TIMEOUT_S

from .procs import require_binary

pytestmark = pytest.mark.slow

FAILING_TEST = '''
import os
from pathlib import Path


def test_fails_with_processes_running(private_pulse_server, start_monitor, tmp_path):
    """Starts a PulseAudio server and a monitor, records their PIDs, then fails."""
    monitor = start_monitor(["--source", "none", "--port", "0", "--no-store"],
                            env=private_pulse_server.env)
    Path(os.environ["PIDS_FILE"]).write_text(f"{private_pulse_server.pid} {monitor.pid}")
    assert False, "failing on purpose"
'''


def alive(pid: int) -> bool:
    """Whether a process with this PID exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_processes_are_stopped_when_a_test_fails(tmp_path: Path) -> None:
    """A failing test that started PulseAudio and a monitor leaves neither running."""
    require_binary("pulseaudio", "pulseaudio")
    (tmp_path / "test_failing.py").write_text(FAILING_TEST)
    pids_file = tmp_path / "pids"
    env = {
        **os.environ,
        "PIDS_FILE": str(pids_file),
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "realparts.conftest",
         "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "basetemp"),
         str(tmp_path / "test_failing.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S * 4,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failing on purpose" in result.stdout, result.stdout
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    assert [pid for pid in pids if alive(pid)] == [], "processes left running"
