"""The README's Python API example, run as the script it is against a real server."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from server.config import ServerConfig
from server.monitor import Monitor
from streamer.engine import EngineConfig
from streamer.protocol.limits import DEFAULT_EVENTS_URL
from streamer.sources import FileSource
from streamer.testing import FixedProbabilitiesModel, speech_like
from tests.conftest import REPO, TIMEOUT_S


def readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text[text.index(f"\n{heading}\n"):]
    match = re.search(r"```python\n(.*?)```", after, re.DOTALL)
    assert match is not None, f"no python block after {heading!r}"
    return match.group(1)


def test_python_api_example_runs_as_a_script(tmp_path: Path) -> None:
    """The example prints the windows of a real server's stream (its URL swapped for ours)."""
    code = readme_block("### Python API")
    assert "asyncio.run(main())" in code and DEFAULT_EVENTS_URL in code
    wav = tmp_path / "call.wav"
    sf.write(wav, np.concatenate([speech_like(3.0), np.zeros(16000, np.float32)]), 16000)
    model = FixedProbabilitiesModel()

    async def scenario() -> tuple[bytes, bytes]:
        config = ServerConfig(port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S)
        async with Monitor(model, engine_config=EngineConfig(realtime=False),
                           server_config=config,
                           sources=[FileSource(wav, realtime=False)]) as m:
            await m.sources_done.wait()  # its windows wait in the backlog new clients get
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", code.replace(DEFAULT_EVENTS_URL, m.ws_url),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            )
            assert proc.stdout is not None and proc.stderr is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
            finally:
                if proc.returncode is None:
                    proc.terminate()
                _, err = await proc.communicate()
            return line, err

    line, err = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT_S * 4))
    assert line, err.decode(errors="replace")[-2000:]
    stream, label, confidence = line.decode().split()
    assert stream == "call" and label == "Neutral" and 0 < float(confidence) <= 1
