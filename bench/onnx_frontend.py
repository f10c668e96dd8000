"""The bundled model's log-mel front end as an ONNX graph against the numpy one (a prototype).

The runtime computes the compact model's features in numpy (``streamer.models.features``),
holding the GIL for part of every window. This builds the same front end as a small ONNX graph
(reflect padding, the STFT as a Conv1d with cosine and sine kernels, power, the mel filterbank
as a MatMul, log, per-band normalisation) and compares it with the numpy front end in the same
run: largest difference, then windows/s at a few batch sizes on one thread, and the ratio. Not
used by the runtime (see docs/model-card.md, the capacity row).

    python bench/onnx_frontend.py [--batches 1,8] [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamer.models.features import LogMelFeatures, hann_window, mel_filterbank  # noqa: E402

BUNDLED = REPO / "streamer" / "bundled" / "config.json"
LOG_FLOOR = 1e-6  # as compact.py: log(mel + 1e-6)
NORM_EPS = 1e-5  # as compact.py: (logmel - mean) / (std + 1e-5)


def frontend_graph(fe: LogMelFeatures) -> Any:
    """The ONNX model: ``input_values`` (batch, samples) -> ``log_mel`` (batch, mels, frames)."""
    from onnx import TensorProto, helper, numpy_helper

    n_fft, half, bins = fe.n_fft, fe.n_fft // 2, fe.n_fft // 2 + 1
    angle = 2 * np.pi * np.arange(bins)[:, None] * np.arange(n_fft)[None, :] / n_fft
    window = hann_window(fe.win_length, n_fft)
    kernels = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])[:, None, :]
    filterbank = mel_filterbank(sample_rate_hz=fe.sampling_rate, n_fft=n_fft, n_mels=fe.n_mels,
                                f_min_hz=fe.f_min_hz, f_max_hz=fe.f_max_hz)
    node = helper.make_node
    nodes = [
        node("Unsqueeze", ["input_values", "axis1"], ["x"]),
        node("Pad", ["x", "pads"], ["padded"], mode="reflect"),  # torch.stft(center=True)
        node("Conv", ["padded", "kernels"], ["spec"], strides=[fe.hop_length]),
        node("Mul", ["spec", "spec"], ["squares"]),
        node("Split", ["squares", "halves"], ["real2", "imag2"], axis=1),
        node("Add", ["real2", "imag2"], ["power"]),  # (batch, bins, frames)
        node("Transpose", ["power"], ["power_t"], perm=[0, 2, 1]),
        node("MatMul", ["power_t", "filterbank"], ["mel"]),  # (batch, frames, mels)
        node("Add", ["mel", "floor"], ["mel_floor"]),
        node("Log", ["mel_floor"], ["logmel"]),
        node("Shape", ["logmel"], ["shape"]),
        node("Gather", ["shape", "one"], ["frames"], axis=0),
        node("Cast", ["frames"], ["frames_f"], to=TensorProto.FLOAT),
        node("Sub", ["frames_f", "one_f"], ["ddof1"]),  # torch.std is unbiased
        node("ReduceMean", ["logmel", "axis1"], ["mean"], keepdims=1),
        node("Sub", ["logmel", "mean"], ["centred"]),
        node("Mul", ["centred", "centred"], ["centred2"]),
        node("ReduceSum", ["centred2", "axis1"], ["sum2"], keepdims=1),
        node("Div", ["sum2", "ddof1"], ["variance"]),
        node("Sqrt", ["variance"], ["std"]),
        node("Add", ["std", "eps"], ["scale"]),
        node("Div", ["centred", "scale"], ["normed"]),
        node("Transpose", ["normed"], ["log_mel"], perm=[0, 2, 1]),
    ]
    constants = {
        "axis1": np.array([1], np.int64), "pads": np.array([0, 0, half, 0, 0, half], np.int64),
        "kernels": kernels.astype(np.float32), "halves": np.array([bins, bins], np.int64),
        "filterbank": np.asarray(filterbank, np.float32),
        "floor": np.array(LOG_FLOOR, np.float32), "eps": np.array(NORM_EPS, np.float32),
        "one": np.array(1, np.int64), "one_f": np.array(1.0, np.float32),
    }
    graph = helper.make_graph(
        nodes, "log_mel_frontend",
        [helper.make_tensor_value_info("input_values", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("log_mel", TensorProto.FLOAT,
                                       ["batch", fe.n_mels, "frames"])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def rate(run: Callable[[], object], batch: int, seconds: float) -> float:
    """Windows per second of ``run`` (one call = ``batch`` windows), after one warm-up call."""
    run()
    start, windows = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        run()
        windows += batch
    return windows / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    import onnx
    import onnxruntime as ort

    fe = LogMelFeatures.from_config(json.loads(BUNDLED.read_text()))
    if fe.feature_norm != "band":
        print(f"the bundled model uses feature_norm {fe.feature_norm!r}; this prototype does band")
        return 2
    model = frontend_graph(fe)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    audio = (np.random.default_rng(0).standard_normal((8, 32000)) * 0.1).astype(np.float32)
    ours = session.run(None, {"input_values": audio})[0]
    reference = fe(audio)["log_mel"]
    print(f"largest difference from the numpy front end: {np.abs(ours - reference).max():.2e} "
          f"(features up to {np.abs(reference).max():.2f})")
    print("batch  numpy win/s  onnx win/s  onnx / numpy   (one thread)")
    for batch in (int(b) for b in args.batches.split(",")):
        windows = np.repeat(audio[:1], batch, axis=0)
        numpy_rate = rate(lambda w=windows: fe(w), batch, args.seconds)
        onnx_rate = rate(lambda w=windows: session.run(None, {"input_values": w}), batch,
                         args.seconds)
        print(f"{batch:>5} {numpy_rate:>12.0f} {onnx_rate:>11.0f} {onnx_rate / numpy_rate:>12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
