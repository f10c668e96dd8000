"""Inference capacity: concurrent real-time streams per backend, against the naive pipeline loop.

One run, same synthetic voiced audio for every setup (every stream speaks all the time), 2 s
windows every 0.5 s. Models: the bundled compact model, and random-weight wav2vec2-base and
wav2vec2-large-xlsr-53 architectures built from configs (no downloads; speed does not depend
on weight values). For each model it first runs ``optimize`` (ONNX export, int8, agreement on
URDU windows for the bundled model when ``--data`` exists, synthetic windows otherwise).

Setups:

- ``naive``: what a user writes instead of the engine: ``transformers.pipeline(
  "audio-classification")`` called on each stream's newest 2 s every 0.5 s, in one loop, torch's
  default threads;
- ``engine <backend>/<precision> wN``: our engine (VAD, windows, queue, workers with one
  intra-op thread each, smoothing) with that backend and N workers.

Capacity: the throughput of the setup's model calls (windows/s over ``--probe-windows`` per
worker, timed after every worker's warm-up call) gives an estimate N = throughput / 2; then N
real-time streams run for ``--seconds``. A run is *sustained* when no window was dropped and
the p95 latency is under ``--max-p95-s``. From a sustained N the search steps up by 10 % (at
least one stream) until a step fails (at most ``--retries`` + 1 steps); from an unsustained N
it steps down by 20 % until one is sustained, then up again. Latency is measured from the moment the
window's last audio block was due (real-time schedule, 0.1 s blocks) to the engine's event
sink receiving its label (in process; ``bench/capacity_ingest.py --run-args`` measures the
same through the real server and a WebSocket client). For the naive loop it is the time from
the hop to the pipeline call's return.

Encoder cache: for the large model it also times consecutive hop-aligned windows of one
stream with and without the exact conv-frame cache (``streamer.models.encoder_cache``), with the
feature extractor's per-window normalisation off (required for exactness).

Bundled start-up (``--startup``, also part of every full run): fresh ``python -c`` processes
that import the loader and load the bundled model, alternating ``--backend torch`` (the
training checkpoint, the way it loaded before the ONNX graph shipped) with the default (ONNX
Runtime, no torch): wall time from the first import to a loaded model, peak resident memory
(``VmHWM``) and whether torch got imported; then, in this process, the bundled model's time
per 2 s window on torch fp32 against ONNX fp32 (one graph: the log-mel front end and the CNN;
in folders optimised before, numpy log-mel + the CNN graph), one thread each, the two
interleaved over the same windows.

    nice python bench/inference.py                       # everything, ~15-25 min on 2 cores
    nice python bench/inference.py --quick               # bundled + base, short runs
    nice python bench/inference.py --startup             # bundled load time, memory, ms/window
    nice python bench/inference.py --models large --seconds 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RATE = 16000
WINDOW = 2 * RATE
HOP = RATE // 2
BLOCK_S = 0.1


@dataclass
class Result:
    model: str
    setup: str
    ms_per_window: float  # median wall time of one window, one worker (probe)
    throughput: float  # windows/s over all workers (probe)
    streams: int  # largest sustained stream count found (0 = none)
    tried: list[int]
    windows: int = 0
    dropped: int = 0
    p50_s: float = math.nan
    p95_s: float = math.nan
    p99_s: float = math.nan
    max_lag_s: float = math.nan


def voiced(seconds: float, seed: int) -> np.ndarray:
    """Continuous voiced, syllable-modulated audio (webrtcvad calls it speech throughout)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = rng.uniform(100, 220) * (1 + 0.08 * np.sin(2 * np.pi * 3.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    sig = sum(np.sin(k * phase) / k for k in range(1, 12))
    sig = sig * (0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2) + 0.02 * rng.standard_normal(n)
    return (sig / np.max(np.abs(sig)) * 0.5).astype(np.float32)


def build_wav2vec2(kind: str, out: Path, *, normalize: bool = True) -> Path:
    """Random-weight wav2vec2-base or -large-xlsr-53 classifier with 4 labels, saved to out."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForSequenceClassification,
    )

    labels = ("Angry", "Happy", "Neutral", "Sad")
    common = dict(id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    if kind == "base":
        config = Wav2Vec2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                intermediate_size=3072, feat_extract_norm="group",
                                do_stable_layer_norm=False, conv_bias=False, **common)
    else:
        config = Wav2Vec2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                intermediate_size=4096, feat_extract_norm="layer",
                                do_stable_layer_norm=True, conv_bias=True, **common)
    torch.manual_seed(0)
    Wav2Vec2ForSequenceClassification(config).eval().save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0,
                             do_normalize=normalize, return_attention_mask=False
                             ).save_pretrained(out)
    return out


def probe(model: Any, workers: int, windows: int, audio: np.ndarray) -> tuple[float, float]:
    """(median ms per window in one worker, windows/s over ``workers`` threads); each call
    takes the model's ``preferred_batch`` windows, as the engine's workers do when busy."""
    batch = max(1, int(model.preferred_batch))
    times: list[float] = []
    lock = threading.Lock()
    ready = threading.Barrier(workers + 1)  # the clock starts once every worker is warm

    def work(seed: int) -> None:
        model.set_worker_threads(1)  # torch or ONNX Runtime intra-op threads of this thread
        model.predict_proba(audio[None, :WINDOW])  # warm-up
        ready.wait()
        for i in range(windows):
            starts = [(seed * 7919 + (i * batch + j) * HOP) % (audio.size - WINDOW)
                      for j in range(batch)]
            x = np.stack([audio[start:start + WINDOW] for start in starts])
            t0 = time.perf_counter()
            model.predict_proba(x)
            with lock:
                times.append((time.perf_counter() - t0) / batch)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return float(np.median(times) * 1000), len(times) * batch / elapsed


def realtime_engine(model: Any, streams: int, workers: int, seconds: float,
                    audio: np.ndarray) -> dict[str, Any]:
    """N streams fed in real time (0.1 s blocks) through the engine; latency and drops."""
    from streamer.engine import Engine, EngineConfig
    from streamer.events import WindowLabel

    block = int(BLOCK_S * RATE)
    latencies: list[float] = []
    lock = threading.Lock()
    t_start = 0.0

    def sink(event: Any) -> None:
        if isinstance(event, WindowLabel):
            due = t_start + math.ceil(round(event.end_s / BLOCK_S, 6)) * BLOCK_S
            with lock:
                latencies.append(time.monotonic() - due)

    config = EngineConfig(workers=workers, threads_per_worker=1, realtime=True)
    max_lag = 0.0
    with Engine(model, config, sink) as engine:
        feeds = [engine.open_stream(f"s{i}", sample_rate_hz=RATE) for i in range(streams)]
        offsets = [(i * 48_611) % (audio.size - RATE) for i in range(streams)]
        n_blocks = int(seconds / BLOCK_S)
        t_start = time.monotonic()
        for b in range(n_blocks):
            due = t_start + (b + 1) * BLOCK_S  # block b's last sample arrives at this time
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for i, feed in enumerate(feeds):
                start = (offsets[i] + b * block) % (audio.size - block)
                feed.feed(audio[start:start + block])
            if b % 5 == 0:
                max_lag = max(max_lag, engine.stats().lag_s)
        stats = engine.stats()
        for feed in feeds:
            feed.close()
        engine.drain(30.0)
        with lock:
            lat = np.array([x for x in latencies], dtype=np.float64)
    return {
        "windows": int(stats.windows_done), "dropped": int(stats.windows_dropped),
        "p50_s": float(np.percentile(lat, 50)) if lat.size else math.nan,
        "p95_s": float(np.percentile(lat, 95)) if lat.size else math.nan,
        "p99_s": float(np.percentile(lat, 99)) if lat.size else math.nan,
        "max_lag_s": max_lag,
    }


def realtime_naive(pipe: Any, streams: int, seconds: float, audio: np.ndarray) -> dict[str, Any]:
    """The naive loop: every 0.5 s, call the pipeline on each stream's newest 2 s."""
    latencies: list[float] = []
    behind = 0
    hops = int(seconds / 0.5)
    t0 = time.monotonic()
    for h in range(hops):
        due = t0 + (h + 1) * 0.5
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            behind += 1
        for i in range(streams):
            start = ((i * 48_611) + h * HOP) % (audio.size - WINDOW)
            pipe({"raw": audio[start:start + WINDOW], "sampling_rate": RATE}, top_k=None)
            latencies.append(time.monotonic() - due)
    lat = np.array(latencies)
    return {
        "windows": len(latencies), "dropped": behind,  # hops that started late
        "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
        "p99_s": float(np.percentile(lat, 99)), "max_lag_s": float(lat.max()),
    }


def capacity(run: Any, estimate: int, retries: int, max_p95_s: float) -> tuple[int, list[int],
                                                                                dict[str, Any]]:
    """The most streams sustained: try ``estimate``; if sustained, step up by 10 % (at least
    one stream) until a step fails (up to ``retries + 1`` steps up); if not, 20 % fewer each
    time until one is sustained (the model-throughput estimate overshoots when the Python side
    is the limit), then up again."""
    n, tried, last, best, best_found = max(1, estimate), [], {}, 0, {}
    for _ in range(2 * retries + 12):
        tried.append(n)
        found = run(n)
        last = found
        ok = found["dropped"] == 0 and found["p95_s"] <= max_p95_s
        logging.info("  %d streams: %d windows, %d dropped, p50 %.2f p95 %.2f s -> %s", n,
                     found["windows"], found["dropped"], found["p50_s"], found["p95_s"],
                     "sustained" if ok else "not sustained")
        if ok:
            best, best_found = n, found
            if len([t for t in tried if t > estimate]) > retries:
                break
            n += max(1, round(n * 0.1))
            continue
        if best or n == 1:
            break
        n = max(1, int(n * 0.8))
    return (best, tried, best_found) if best else (0, tried, last)


def naive_pipe(folder: Path | None) -> Any:
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

    from streamer.models.compact import register_compact
    from streamer.models.loading import BUNDLED_MODEL_DIR

    register_compact()
    src = str(folder or BUNDLED_MODEL_DIR)
    return pipeline("audio-classification",
                    model=AutoModelForAudioClassification.from_pretrained(src),
                    feature_extractor=AutoFeatureExtractor.from_pretrained(src), device="cpu")


def naive_results(name: str, checkpoint: Path | None, args: argparse.Namespace,
                  audio: np.ndarray) -> list[Result]:
    """The naive transformers pipeline loop: its time per window and the streams it sustains
    with torch's default thread count (as a user would run it) and with one thread."""
    import torch

    results: list[Result] = []
    pipe = naive_pipe(checkpoint)
    for threads in sorted({os.cpu_count() or 1, 1}, reverse=True):
        torch.set_num_threads(threads)
        pipe({"raw": audio[:WINDOW], "sampling_rate": RATE})
        times = []
        for i in range(args.probe_windows):
            t = time.perf_counter()
            pipe({"raw": audio[i * HOP:i * HOP + WINDOW], "sampling_rate": RATE}, top_k=None)
            times.append(time.perf_counter() - t)
        ms = float(np.median(times) * 1000)
        estimate = int(1000.0 / ms / 2)
        logging.info("%s naive, %d thread(s): %.1f ms/window -> estimate %d streams", name,
                     threads, ms, estimate)
        if estimate >= 1:
            n, tried, found = capacity(lambda k, p=pipe: realtime_naive(p, k, args.seconds, audio),
                                       estimate, args.retries, args.max_p95_s)
        else:
            n, tried, found = 0, [], {}
        results.append(Result(name, f"naive pipeline t{threads}", ms, 1000.0 / ms, n, tried,
                              **found))
    del pipe
    return results


def bench_model(name: str, checkpoint: Path | None, work: Path, args: argparse.Namespace,
                audio: np.ndarray) -> tuple[list[Result], dict[str, Any]]:
    """Optimise one model, then the naive loop and each engine setup of ``--setups``."""
    from streamer.models.loading import load_model
    from streamer.offline.optimize import optimize_model

    out = work / f"{name}-onnx"
    data = args.data if name == "bundled" and args.data and args.data.is_dir() else None
    t0 = time.monotonic()
    manifest = optimize_model(checkpoint, out, data=data,
                              max_windows=160 if name == "bundled" else args.check_windows,
                              repeats=3, overwrite=True)
    logging.info("%s: optimize took %.0f s (%s)", name, time.monotonic() - t0,
                 manifest["checked_on"])
    results = naive_results(name, checkpoint, args, audio)

    setups = [s for s in args.setups.split(",") if s]
    for setup in setups:
        key, _, w = setup.partition("@")
        workers = int(w or 1)
        check = manifest["checks"].get(key, {})
        if "unavailable" in check:
            logging.info("%s %s: unavailable (%s)", name, key, check["unavailable"])
            continue
        backend, precision = key.split("/")
        model = load_model(out, backend=backend, precision=precision, device="cpu")
        ms, throughput = probe(model, workers, args.probe_windows, audio)
        estimate = int(throughput / 2)
        logging.info("%s %s w%d: %.1f ms/window, %.1f windows/s -> estimate %d streams",
                     name, key, workers, ms, throughput, estimate)
        n, tried, found = capacity(
            lambda k, m=model, w=workers: realtime_engine(m, k, w, args.seconds, audio),
            estimate, args.retries, args.max_p95_s)
        batch = f" b{model.preferred_batch}" if model.preferred_batch > 1 else ""
        results.append(Result(name, f"engine {key} w{workers}{batch}", ms, throughput, n,
                              tried, **found))
        del model

    extra: dict[str, Any] = {"checks": manifest["checks"], "checked_on": manifest["checked_on"]}
    if name == "large" and args.cache:
        extra["cache"] = cache_speedup(out, audio, args.probe_windows)
    shutil.rmtree(out, ignore_errors=True)
    return results, extra


def cache_speedup(folder: Path, audio: np.ndarray, windows: int) -> dict[str, Any]:
    """ms/window on consecutive hop windows of one stream, frame cache off vs on (do_normalize
    off, which exactness needs)."""
    import torch
    from transformers import AutoConfig

    from streamer.models.encoder_cache import FrameCache, encoder_geometry
    from streamer.models.loading import load_model

    torch.set_num_threads(1)
    found: dict[str, Any] = {}
    geometry = encoder_geometry(AutoConfig.from_pretrained(folder, local_files_only=True))
    for key in ("onnx/int8", "onnx/fp32"):
        backend, precision = key.split("/")
        model = load_model(folder, backend=backend, precision=precision, device="cpu",
                           encoder_cache=False)
        model.set_worker_threads(1)
        model.feature_extractor.do_normalize = False
        row = {}
        for cached in (False, True):
            model.encoder_cache = FrameCache(geometry) if cached else None
            model.predict_proba(audio[None, :WINDOW])
            times = []
            for i in range(1, windows + 1):
                t = time.perf_counter()
                model.predict_proba(audio[None, i * HOP:i * HOP + WINDOW])
                times.append(time.perf_counter() - t)
            row["cached" if cached else "uncached"] = float(np.median(times) * 1000)
        row["speedup"] = row["uncached"] / row["cached"]
        found[key] = row
        logging.info("large %s: %.1f ms/window uncached, %.1f cached (x%.2f)", key,
                     row["uncached"], row["cached"], row["speedup"])
    return found


# peak RSS from VmHWM: ru_maxrss survives exec, so a child of this (torch-laden) process would
# report this process's peak
_LOAD_BUNDLED = """
import sys, time
started = time.perf_counter()
from streamer.models.loading import load_model
model = load_model(device="cpu", backend=sys.argv[1])
seconds = time.perf_counter() - started
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(model.backend, seconds, int(status.split()[0]) / 1024, "torch" in sys.modules)
"""


def bundled_startup(repeats: int) -> list[dict[str, Any]]:
    """Fresh processes loading the bundled model, torch and default (auto) alternating:
    median load time and peak RSS of each (module docstring)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    runs: dict[str, list[tuple[float, float, bool]]] = {"torch": [], "auto": []}
    for _ in range(repeats):
        for backend in runs:
            done = subprocess.run([sys.executable, "-c", _LOAD_BUNDLED, backend], env=env,
                                  capture_output=True, text=True, timeout=600, check=True)
            _, seconds, peak, torch_loaded = done.stdout.split()
            runs[backend].append((float(seconds), float(peak), torch_loaded == "True"))
    rows = []
    for backend, found in runs.items():
        rows.append({"backend": backend, "load_s": float(np.median([f[0] for f in found])),
                     "load_s_min": min(f[0] for f in found),
                     "peak_rss_mb": float(np.median([f[1] for f in found])),
                     "torch_imported": any(f[2] for f in found), "runs": len(found)})
        logging.info("bundled load, backend %s: median %.2f s, peak RSS %.0f MB", backend,
                     rows[-1]["load_s"], rows[-1]["peak_rss_mb"])
    return rows


def bundled_window_times(audio: np.ndarray, windows: int) -> dict[str, float]:
    """Median ms per 2 s window of the bundled model on torch fp32 and ONNX fp32 (one thread,
    interleaved window by window) and their ratio."""
    from streamer.models.loading import load_model

    models = {"torch/fp32": load_model(device="cpu", backend="torch", precision="fp32"),
              "onnx/fp32": load_model(device="cpu", backend="onnx", precision="fp32")}
    times: dict[str, list[float]] = {key: [] for key in models}
    for model in models.values():
        model.set_worker_threads(1)
        model.predict_proba(audio[None, :WINDOW])  # warm-up
    for i in range(windows):
        window = audio[None, (i * HOP) % (audio.size - WINDOW):][:, :WINDOW]
        for key, model in models.items():
            t = time.perf_counter()
            model.predict_proba(window)
            times[key].append(time.perf_counter() - t)
    found = {key: float(np.median(t) * 1000) for key, t in times.items()}
    found["torch_over_onnx"] = found["torch/fp32"] / found["onnx/fp32"]
    logging.info("bundled ms/window: torch fp32 %.2f, onnx fp32 %.2f (x%.2f)",
                 found["torch/fp32"], found["onnx/fp32"], found["torch_over_onnx"])
    return found


def report_startup(rows: list[dict[str, Any]], per_window: dict[str, float]) -> None:
    """The bundled start-up table and the per-window comparison."""
    print("\nbundled model, fresh process (python -c: import + load_model, median of "
          f"{rows[0]['runs']}):")
    print(f"  {'backend':<8} {'load s':>7} {'min s':>6} {'peak RSS MB':>11}  torch imported")
    for row in rows:
        print(f"  {row['backend']:<8} {row['load_s']:>7.2f} {row['load_s_min']:>6.2f} "
              f"{row['peak_rss_mb']:>11.0f}  {row['torch_imported']}")
    torch_row, auto_row = rows
    print(f"  auto vs torch: x{torch_row['load_s'] / auto_row['load_s']:.1f} faster, "
          f"x{torch_row['peak_rss_mb'] / auto_row['peak_rss_mb']:.1f} less memory")
    print(f"bundled ms/window (one thread, interleaved): torch fp32 "
          f"{per_window['torch/fp32']:.2f}, onnx fp32 {per_window['onnx/fp32']:.2f} "
          f"(onnx x{per_window['torch_over_onnx']:.2f} faster)")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import torch
    import transformers

    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__, "load_1_5_15": list(os.getloadavg())}


def parse_args() -> argparse.Namespace:
    """The command line (``--quick`` shortens every run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bundled,base,large")
    parser.add_argument("--setups", default="torch/fp32@1,torch/bf16@1,torch/int8@1,"
                        "onnx/fp32@1,onnx/int8@1,onnx/int8@2",
                        help="backend/precision@workers, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="real-time run length")
    parser.add_argument("--probe-windows", type=int, default=8)
    parser.add_argument("--check-windows", type=int, default=24,
                        help="windows for the agreement check of the wav2vec2 models")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--max-p95-s", type=float, default=1.0)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "urdu")
    parser.add_argument("--no-cache", dest="cache", action="store_false")
    parser.add_argument("--quick", action="store_true",
                        help="bundled and base only, 6 s runs, 4 probe windows, no retries")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--startup", action="store_true",
                        help="only the bundled model's load time, memory and ms/window")
    parser.add_argument("--startup-runs", type=int, default=5,
                        help="fresh processes per backend for the load time")
    args = parser.parse_args()
    if args.quick:
        args.models, args.seconds, args.probe_windows, args.retries = "bundled,base", 6.0, 4, 0
    return args


def report(info: dict[str, Any], args: argparse.Namespace, all_results: list[Result],
           extras: dict[str, Any]) -> None:
    """Print the tables (and write ``--json``)."""
    print(f"\nmachine: {info}")
    print(f"real-time runs: {args.seconds:g} s, 2 s windows, 0.5 s hop, all streams speaking; "
          f"sustained = 0 dropped and p95 latency <= {args.max_p95_s:g} s\n")
    print("est = probe throughput / 2 windows/s per stream; streams = sustained in real time; "
          "x naive = streams / the naive loop's est (its upper bound, torch default threads)")
    print(f"{'model':<8} {'setup':<24} {'ms/win':>7} {'win/s':>6} {'est':>6} {'streams':>7} "
          f"{'x naive':>7} {'p50':>5} {'p95':>5} {'p99':>5}  tried")
    for r in all_results:
        naive = next(x for x in all_results if x.model == r.model and x.setup.startswith("naive"))
        ratio = r.streams / (naive.throughput / 2)
        print(f"{r.model:<8} {r.setup:<24} {r.ms_per_window:>7.1f} {r.throughput:>6.1f} "
              f"{r.throughput / 2:>6.1f} {r.streams:>7d} {ratio:>7.1f} {r.p50_s:>5.2f} "
              f"{r.p95_s:>5.2f} {r.p99_s:>5.2f}  {r.tried}")
    for name, extra in extras.items():
        print(f"\n{name}: agreement vs torch fp32 on {extra['checked_on']}")
        for key, check in extra["checks"].items():
            if "unavailable" in check:
                print(f"  {key:<11} unavailable")
            else:
                print(f"  {key:<11} top-1 {check['top1_agreement']:.3f}  rel logit diff "
                      f"{check['rel_logit_diff']:.4f}  {check['ms_per_window']:.1f} ms/window")
        for key, row in extra.get("cache", {}).items():
            print(f"  cache {key}: {row['uncached']:.1f} -> {row['cached']:.1f} ms/window "
                  f"(x{row['speedup']:.2f})")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in
                                         vars(args).items()},
                                         "results": [asdict(r) for r in all_results],
                                         "extras": extras}, indent=2) + "\n")


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("streamer", "transformers", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")  # third-party deprecation chatter; not a test
    audio = voiced(60.0, seed=1)
    info = machine()
    logging.info("machine: %s", info)
    startup = bundled_startup(args.startup_runs)
    per_window = bundled_window_times(audio, 200)
    if args.startup:
        print(f"\nmachine: {info}")
        report_startup(startup, per_window)
        return 0
    all_results: list[Result] = []
    extras: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    try:
        for name in args.models.split(","):
            checkpoint = None if name == "bundled" else build_wav2vec2(name, work / name)
            results, extra = bench_model(name, checkpoint, work, args, audio)
            all_results += results
            extras[name] = extra
            if checkpoint is not None:
                shutil.rmtree(checkpoint, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["load_after"] = list(os.getloadavg())

    report(info, args, all_results, extras)
    report_startup(startup, per_window)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
