"""The bundled model's fused ONNX graph (log-mel front end + CNN, what the runtime runs)
against the numpy front end + the CNN graph alone (what folders optimised before ran).

Both halves come out of the bundled ``model.onnx`` itself (``onnx.utils.Extractor`` at its
``log_mel`` tensor), so the CNN is the same nodes and weights either way. In the same run:

- agreement: largest feature difference (ONNX front end vs numpy) and largest probability
  difference (fused graph vs numpy front end + CNN graph) on speech-like windows and, where
  present, the first 2 s of URDU clips;
- speed on one thread, per window, at a few batch sizes: each front end alone, then the whole
  window both ways, and the ratio;
- the GIL: windows per second of a worker thread running windows back to back, either way,
  with the main thread idle and with it busy in pure Python (the engine's event loop at
  capacity), at batch 1 and 8.

    nice python bench/onnx_frontend.py [--batches 1,4,8] [--seconds 1.5] [--urdu DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamer.audio import read_audio  # noqa: E402
from streamer.models.calibration import softmax  # noqa: E402
from streamer.models.features import LOG_MEL_INPUT, WAVEFORM_INPUT, LogMelFeatures  # noqa: E402
from streamer.testing import speech_like  # noqa: E402

BUNDLED = REPO / "streamer" / "bundled"
WINDOW = 32000


def sessions() -> dict[str, Any]:
    """One-thread sessions of the fused graph and of its two halves."""
    import onnx
    import onnxruntime as ort
    from onnx.utils import Extractor

    from streamer.models.onnx_runner import DISABLED_OPTIMIZERS

    fused = onnx.load(str(BUNDLED / "model.onnx"))
    inputs = [i.name for i in fused.graph.input]
    if inputs != [WAVEFORM_INPUT]:
        raise SystemExit(f"{BUNDLED / 'model.onnx'} takes {inputs}, not the fused graph's "
                         f"{WAVEFORM_INPUT} (re-run emotion-monitor optimize --out {BUNDLED})")
    output = fused.graph.output[0].name
    extractor = Extractor(fused)
    graphs = {"fused": fused,
              "front end": extractor.extract_model([WAVEFORM_INPUT], [LOG_MEL_INPUT]),
              "cnn": extractor.extract_model([LOG_MEL_INPUT], [output])}
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return {name: ort.InferenceSession(graph.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(DISABLED_OPTIMIZERS))
            for name, graph in graphs.items()}


def per_window_ms(run: Callable[[], object], batch: int, seconds: float) -> float:
    """Best of three: milliseconds per window of ``run`` (one call = ``batch`` windows)."""
    run()
    best = float("inf")
    for _ in range(3):
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 3:
            run()
            calls += 1
        best = min(best, (time.perf_counter() - start) / calls / batch * 1000.0)
    return best


def worker_rate(run: Callable[[], object], batch: int, seconds: float, *, busy: bool) -> float:
    """Windows per second of ``run`` (``batch`` windows a call) called back to back on a worker
    thread, while the main thread sleeps or, ``busy``, runs a pure-Python loop (as the event
    loop does when the server is at capacity)."""
    stop = threading.Event()
    calls = [0]

    def loop() -> None:
        while not stop.is_set():
            run()
            calls[0] += 1

    run()
    thread = threading.Thread(target=loop, daemon=True)
    start = time.perf_counter()
    thread.start()
    if busy:
        count = 0
        while time.perf_counter() - start < seconds:
            count += 1
    else:
        time.sleep(seconds)
    stop.set()
    thread.join()
    return calls[0] * batch / (time.perf_counter() - start)


def urdu_windows(folder: Path, per_label: int = 10) -> np.ndarray | None:
    if not (folder / "Angry").is_dir():
        return None
    rows = []
    for label in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        for clip in sorted((folder / label).glob("*.wav"))[:per_label]:
            audio = read_audio(clip)[:WINDOW]
            rows.append(np.pad(audio, (0, WINDOW - audio.size)))
    return np.stack(rows).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--urdu", type=Path, default=REPO.parent / "shared" / "data" / "urdu")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU(s), load average at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    config = json.loads((BUNDLED / "config.json").read_text())
    temperature = float(config.get("logit_temperature", 1.0))
    numpy_fe = LogMelFeatures.from_config(config)
    s = sessions()

    def fused(w: np.ndarray) -> np.ndarray:
        return np.asarray(s["fused"].run(None, {WAVEFORM_INPUT: w})[0])

    def numpy_path(w: np.ndarray) -> np.ndarray:
        return np.asarray(s["cnn"].run(None, {LOG_MEL_INPUT: numpy_fe(w)[LOG_MEL_INPUT]})[0])

    sets = {"speech-like": np.stack([speech_like(2.0, seed=i, pitch_hz=100.0 + 9 * i)
                                     for i in range(32)]).astype(np.float32)}
    urdu = urdu_windows(args.urdu)
    if urdu is not None:
        sets[f"URDU ({len(urdu)} clips, first 2 s)"] = urdu
    print("agreement (fused graph vs numpy front end + CNN graph):")
    for name, windows in sets.items():
        feats = s["front end"].run(None, {WAVEFORM_INPUT: windows})[0]
        reference = numpy_fe(windows)[LOG_MEL_INPUT]
        probs = softmax(fused(windows), temperature)
        old = softmax(numpy_path(windows), temperature)
        print(f"  {name}: features {np.abs(feats - reference).max():.1e} (up to "
              f"{np.abs(reference).max():.1f}), probabilities {np.abs(probs - old).max():.1e}, "
              f"same top-1 {np.mean(probs.argmax(1) == old.argmax(1)):.0%}")
    audio = sets["speech-like"]
    print("ms per window, one thread:")
    print(f"  {'batch':>5} {'numpy fe':>9} {'onnx fe':>8} {'cnn':>6} {'numpy+cnn':>10} "
          f"{'fused':>6} {'fused / numpy+cnn':>18}")
    for batch in (int(b) for b in args.batches.split(",")):
        w = np.ascontiguousarray(audio[:batch])
        feats = numpy_fe(w)[LOG_MEL_INPUT]
        runs: dict[str, Callable[[], object]] = {
            "numpy fe": partial(numpy_fe, w),
            "onnx fe": partial(s["front end"].run, None, {WAVEFORM_INPUT: w}),
            "cnn": partial(s["cnn"].run, None, {LOG_MEL_INPUT: feats}),
            "numpy+cnn": partial(numpy_path, w),
            "fused": partial(fused, w),
        }
        ms = {name: per_window_ms(run, batch, args.seconds) for name, run in runs.items()}
        print(f"  {batch:>5} {ms['numpy fe']:>9.2f} {ms['onnx fe']:>8.2f} {ms['cnn']:>6.2f} "
              f"{ms['numpy+cnn']:>10.2f} {ms['fused']:>6.2f} "
              f"{ms['fused'] / ms['numpy+cnn']:>18.2f}")
    print("windows/s of a worker thread calling back to back, main thread idle -> busy in "
          "Python (the GIL: each call needs it back when it returns, and a busy main thread "
          f"gives it up every {sys.getswitchinterval() * 1000:g} ms, the switch interval):")
    for batch in (1, 8):
        w = np.ascontiguousarray(audio[:batch])
        for name, run in (("numpy+cnn", partial(numpy_path, w)), ("fused", partial(fused, w))):
            rates = {busy: float(np.median([worker_rate(run, batch, args.seconds / 3, busy=busy)
                                            for _ in range(3)])) for busy in (False, True)}
            print(f"  batch {batch} {name:<10} {rates[False]:>5.0f} -> {rates[True]:>5.0f} "
                  f"({rates[True] / rates[False]:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
