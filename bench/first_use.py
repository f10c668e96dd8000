"""Optimised on first use: `emotion-monitor analyze` on a plain checkpoint, first run (export
into an empty cache) and second run (cache hit), against the naive pipeline loop in the same run.

One run, one random-weight checkpoint of the wav2vec2-base architecture (or -large with
``--kind large``; no downloads, speed does not depend on weight values), one file of synthetic
voiced audio (speech throughout). Figures:

- wall time of the first and the second ``emotion-monitor analyze FILE --model CKPT
  --cache-dir EMPTY`` (subprocesses; the first includes the export, int8 quantisation and
  agreement checks);
- in this process: the cached load (``load_model(..., cache_dir=...)``) and ``analyze_files``
  windows/s with default flags (second run onwards), the same with ``--backend torch`` (what
  the default was before), and the naive loop: ``transformers.pipeline("audio-classification")``
  on the same 2 s windows every 0.5 s, torch's default threads.

    nice python bench/first_use.py                 # wav2vec2-base, 30 s of audio
    nice python bench/first_use.py --kind large --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inference import HOP, RATE, WINDOW, build_wav2vec2, voiced  # noqa: E402


def cli_analyze(wav: Path, out: Path, model: Path, cache_dir: Path) -> tuple[float, int, str]:
    """Wall time, rows written and stderr of one `emotion-monitor analyze` subprocess."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "--log-level", "INFO", "analyze", str(wav),
         "--out", str(out), "--model", str(model), "--cache-dir", str(cache_dir)],
        capture_output=True, text=True, check=False, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"analyze failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = int(re.search(r"wrote (\d+) window row", done.stdout).group(1))  # type: ignore[union-attr]
    return seconds, rows, done.stderr


def engine_rate(model: Any, wav: Path, out: Path) -> tuple[float, int]:
    """windows/s of analyze_files with default engine settings, and the windows."""
    from streamer.analyze import analyze_files
    from streamer.engine import EngineConfig

    started = time.perf_counter()
    results = analyze_files(model, [wav], out, engine_config=EngineConfig(realtime=False))
    seconds = time.perf_counter() - started
    windows = sum(r.windows for r in results)
    return windows / seconds, windows


def naive_rate(checkpoint: Path, audio: np.ndarray) -> tuple[float, int]:
    """windows/s of the naive pipeline loop over the same 2 s windows every 0.5 s."""
    from transformers import pipeline

    pipe = pipeline("audio-classification", model=str(checkpoint), device="cpu")
    starts = range(0, len(audio) - WINDOW + 1, HOP)
    pipe({"raw": audio[:WINDOW], "sampling_rate": RATE})  # warm-up
    started = time.perf_counter()
    for start in starts:
        pipe({"raw": audio[start:start + WINDOW], "sampling_rate": RATE}, top_k=None)
    return len(starts) / (time.perf_counter() - started), len(starts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["base", "large"], default="base")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio length (default 30)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    import soundfile as sf

    from streamer.models.loading import load_model

    with tempfile.TemporaryDirectory(prefix="first-use-bench-") as tmp:
        work = Path(tmp)
        checkpoint = build_wav2vec2(args.kind, work / "checkpoint")
        audio = voiced(args.seconds, seed=1)
        wav = work / "speech.wav"
        sf.write(wav, audio, RATE)
        cache = work / "cache"
        first_s, rows, first_err = cli_analyze(wav, work / "first.csv", checkpoint, cache)
        second_s, _, second_err = cli_analyze(wav, work / "second.csv", checkpoint, cache)
        chosen = re.search(r"backend (\w+), precision (\w+)", second_err)
        started = time.perf_counter()
        cached = load_model(checkpoint, device="cpu", cache_dir=cache)
        load_s = time.perf_counter() - started
        engine, windows = engine_rate(cached, wav, work / "engine.csv")
        started = time.perf_counter()
        plain = load_model(checkpoint, device="cpu", backend="torch")
        torch_load_s = time.perf_counter() - started
        torch_engine, _ = engine_rate(plain, wav, work / "torch.csv")
        naive, naive_windows = naive_rate(checkpoint, audio)
        built = re.search(r"optimised \S+ in (\d+) s", first_err)
    figures = {
        "model": f"random wav2vec2-{args.kind}, 4 labels",
        "audio_s": args.seconds,
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "load_1min": os.getloadavg()[0]},
        "first_analyze_wall_s": round(first_s, 1),
        "first_build_s": int(built.group(1)) if built else None,
        "second_analyze_wall_s": round(second_s, 1),
        "second_setting": f"{chosen.group(1)}/{chosen.group(2)}" if chosen else None,
        "rows": rows,
        "cached_load_s": round(load_s, 2),
        "torch_load_s": round(torch_load_s, 2),
        "windows": windows,
        "engine_auto_windows_per_s": round(engine, 2),
        "engine_torch_windows_per_s": round(torch_engine, 2),
        "naive_windows": naive_windows,
        "naive_windows_per_s": round(naive, 2),
        "x_naive_auto": round(engine / naive, 2),
        "x_naive_torch": round(torch_engine / naive, 2),
    }
    print(json.dumps(figures, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
