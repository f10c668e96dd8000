"""The light install: core dependencies only, no torch extra.

A fresh virtual environment (no system site packages) gets ``pip install`` of a copy of the
project, without extras; the quick start's ``emotion-monitor run`` on the demo file then labels
it with torch absent and never imported (``PYTHONPROFILEIMPORTTIME`` lists every module the
process imported), and commands that need the extra exit 2 naming it. pip fetches the core
dependencies from the package index (or its cache). The helpers of ``streamer.extras`` are
tested here too, in this process.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TIMEOUT_S

from streamer.errors import StreamerError
from streamer.extras import MissingExtraError, import_extra, require_extra

#: what the torch extra brings; none of it may be installed in the light venv
EXTRA_MODULES = ("torch", "transformers", "accelerate", "onnx", "onnxscript", "matplotlib")
#: the monitor process may import neither (nor anything under them)
NEVER_IMPORTED = ("torch", "transformers")
#: what setuptools needs to build the project; nothing else of the checkout is copied
PROJECT_PARTS = ("pyproject.toml", "README.md", "streamer", "server", "client")
#: a guard against a core dependency pulling in something huge (about 210 MB today, with CPU
#: torch about 1.4 GB); the figure itself is printed
MAX_VENV_MB = 500


def _clean_env() -> dict[str, str]:
    """This environment without what would let the venv see our checkout or another venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONPROFILEIMPORTTIME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(args: list[str | Path], *, cwd: Path, timeout_s: float,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env or _clean_env(), capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )


def _size_mb(folder: Path) -> float:
    total = sum(
        (Path(root) / name).lstat().st_size
        for root, _, files in os.walk(folder) for name in files
    )
    return total / 1e6


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project installed from a copy, without extras; its folder."""
    root = tmp_path_factory.mktemp("light-install")
    src = root / "src"
    src.mkdir()
    for part in PROJECT_PARTS:
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, src / part,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / part, src / part)
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", venv], cwd=root, timeout_s=TIMEOUT_S * 4)
    assert made.returncode == 0, made.stdout + made.stderr
    started = time.monotonic()
    installed = _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", src],
                     cwd=root, timeout_s=TIMEOUT_S * 20)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    print(f"\nlight install: pip install took {time.monotonic() - started:.0f} s, "
          f"venv {_size_mb(venv):.0f} MB")
    return venv


@pytest.mark.slow
def test_light_venv_has_no_torch(light_venv: Path) -> None:
    """The core install brings none of the torch extra's packages and stays a modest size."""
    code = (
        "import importlib.util, json\n"
        f"print(json.dumps([m for m in {EXTRA_MODULES!r} if importlib.util.find_spec(m)]))\n"
    )
    found = _run([light_venv / "bin" / "python", "-c", code], cwd=light_venv,
                 timeout_s=TIMEOUT_S)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"
    size = _size_mb(light_venv)
    print(f"\nlight venv: {size:.0f} MB (files' sizes added up)")
    assert size < MAX_VENV_MB


@pytest.mark.slow
def test_quick_start_run_labels_the_demo_without_torch(light_venv: Path, tmp_path: Path) -> None:
    """The quick start's run labels docs/demo.flac in the light venv, never importing torch."""
    store = tmp_path / "timeline.sqlite3"
    env = _clean_env() | {"PYTHONPROFILEIMPORTTIME": "1"}
    started = time.time()
    ran = _run(
        [light_venv / "bin" / "emotion-monitor", "run", "--source", REPO / "docs" / "demo.flac",
         "--exit-when-done", "--port", "0", "--store", store],
        cwd=tmp_path, timeout_s=TIMEOUT_S * 10, env=env,
    )
    took = time.time() - started
    lines = ran.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines
                if line.startswith("import time:") and "|" in line}
    log = "\n".join(line for line in lines if not line.startswith("import time:"))
    assert ran.returncode == 0, log[-3000:]
    assert "numpy" in imported, "PYTHONPROFILEIMPORTTIME listed no imports"
    heavy = sorted(m for m in imported if m.split(".")[0] in NEVER_IMPORTED)
    assert heavy == [], f"the monitor imported {', '.join(heavy[:8])}"

    csv_path = tmp_path / "timeline.csv"
    exported = _run([light_venv / "bin" / "emotion-monitor", "export", "--store", store,
                     "--latest", "--out", csv_path], cwd=tmp_path, timeout_s=TIMEOUT_S)
    assert exported.returncode == 0, exported.stderr
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, "no window was labelled"
    labels = {name[2:] for name in rows[0] if name.startswith("p_")}
    assert labels and all(row["label"] in labels for row in rows)
    first = min(float(row["wall_time"]) for row in rows)
    print(f"\nlight run: {len(rows)} windows labelled; first label {first - started:.2f} s after "
          f"the command started, {took:.1f} s in all (demo paced in real time)")


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["train", "--data", ".", "--out", "model"],
    ["crossval", "--data", "."],
    ["optimize", "--out", "onnx"],
])
def test_commands_that_need_the_extra_say_so(
    light_venv: Path, tmp_path: Path, command: list[str]
) -> None:
    """Without the extra, train, crossval and optimize exit 2 with one line naming it."""
    ran = _run([light_venv / "bin" / "emotion-monitor", *command], cwd=tmp_path,
               timeout_s=TIMEOUT_S)
    assert ran.returncode == 2, ran.stderr
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 1, ran.stderr
    assert "needs torch, which is not installed" in lines[0]
    assert "pip install 'emotion-monitor[torch]'" in lines[0]
    assert list(tmp_path.iterdir()) == []


# -- streamer.extras in this process ----------------------------------------------------------


def _package(where: Path, name: str, body: str) -> None:
    (where / name).mkdir()
    (where / name / "__init__.py").write_text(body)


def test_import_extra_returns_an_installed_module() -> None:
    """import_extra gives the module itself when it is installed."""
    import json

    assert import_extra("json", purpose="reading") is json


def test_missing_extra_names_the_module_and_the_extra() -> None:
    """An absent module (or an absent package above it) is a MissingExtraError naming both."""
    with pytest.raises(MissingExtraError) as caught:
        import_extra("no_such_extra_module.sub", purpose="the frobnicator")
    assert isinstance(caught.value, StreamerError)
    assert str(caught.value) == (
        "the frobnicator needs no_such_extra_module, which is not installed: "
        "pip install 'emotion-monitor[torch]' (CPU-only: see README)"
    )
    assert caught.value.module == "no_such_extra_module"


def test_broken_install_is_not_a_missing_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed module failing on a dependency of its own keeps its ModuleNotFoundError."""
    _package(tmp_path, "half_installed_pkg", "import no_such_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as caught:
        import_extra("half_installed_pkg", purpose="x")
    assert not isinstance(caught.value, MissingExtraError)
    assert caught.value.name == "no_such_dependency_of_it"


def test_require_extra_checks_without_importing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """require_extra finds installed modules without importing them, and names an absent one."""
    _package(tmp_path, "importing_me_fails_pkg", "raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    require_extra("importing_me_fails_pkg", "json", purpose="x")
    assert "importing_me_fails_pkg" not in sys.modules
    with pytest.raises(MissingExtraError, match="^ONNX export needs no_such_extra_module,"):
        require_extra("json", "no_such_extra_module", purpose="ONNX export")
    with pytest.raises(ValueError, match="top-level"):
        require_extra("a.b", purpose="x")
