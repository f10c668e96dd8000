"""Project-wide promises: lint and types clean, light imports, exported names, no dataset audio."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, TIMEOUT_S


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S * 10, check=False
    )


@pytest.mark.slow
def test_ruff_clean() -> None:
    """ruff finds nothing in the project."""
    if shutil.which("ruff") is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_clean() -> None:
    """mypy finds no type errors in the three packages."""
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("command", ["watch", "log", "export", "devices"])
def test_light_commands_do_not_load_torch(command: str) -> None:
    """Parsing and --help for commands that need no model load neither torch nor sounddevice."""
    code = (
        "import sys, contextlib, io\n"
        "from server.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main([{command!r}, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "import json; print(json.dumps(sorted(m for m in ('torch', 'sounddevice', 'transformers')"
        " if m in sys.modules)))\n"
    )
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_importing_packages_loads_nothing_heavy() -> None:
    """import streamer, server, client touches neither torch, transformers nor sounddevice."""
    code = (
        "import sys, json, streamer, server, client\n"
        "print(json.dumps(sorted(m for m in ('torch', 'sounddevice', 'transformers')"
        " if m in sys.modules)))\n"
    )
    result = _run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("package", ["streamer", "server", "client"])
def test_all_names_resolve(package: str) -> None:
    """Every name a package lists in __all__ exists, and __all__ has no duplicates."""
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(module, name) is not None, f"{package}.{name}"


def test_no_audio_from_the_dataset_is_tracked() -> None:
    """The project tracks no audio other than its own synthetic demo recording."""
    tracked = _run("git", "ls-files", "*.wav", "*.flac", "*.mp3", "*.ogg").stdout.split()
    assert tracked in ([], ["docs/demo.flac"]), tracked


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_core_dependencies_leave_torch_to_the_extra() -> None:
    """The runtime installs without torch; the torch extra has it, and the tests get the extra."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    core = _requirement_names(project["project"]["dependencies"])
    extras = project["project"]["optional-dependencies"]
    torch_only = {"torch", "transformers", "accelerate", "safetensors", "onnx", "onnxscript",
                  "matplotlib"}
    assert core & torch_only == set()
    assert {"onnxruntime", "numpy", "soxr", "webrtcvad-wheels", "websockets", "sounddevice",
            "soundfile", "rich"} <= core
    assert torch_only <= _requirement_names(extras["torch"])
    assert "emotion-monitor[torch]" in extras["test"]
    bundled = project["tool"]["setuptools"]["package-data"]["streamer.bundled"]
    assert "*.onnx" in bundled
