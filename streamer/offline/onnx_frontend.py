"""The compact model's log-mel front end as ONNX nodes, fused ahead of its exported CNN graph
(run by ``emotion-monitor optimize``; main thread, no I/O).

:func:`log_mel_graph` builds ``input_values`` (batch, samples) -> ``log_mel`` (batch, n_mels,
frames) with the arithmetic of ``CompactEmotionForAudioClassification.log_mel``
(:mod:`streamer.models.compact`) and of its numpy copy
(:class:`streamer.models.features.LogMelFeatures`):

- windows shorter than ``n_fft`` are zero-padded to it, then reflect-padded by ``n_fft // 2``
  on each side (``torch.stft(center=True)``);
- the STFT is one ``Conv`` (stride ``hop_length``) whose kernels are the cosine and sine rows of
  the DFT times the Hann window, for the frequency bins the filterbank uses (a bin without a
  weight in any band adds nothing, so it is left out);
- power and the mel filterbank are one ``MatMul``: ``[fb | fb]^T @ [re^2 ; im^2]`` is
  ``fb^T @ (re^2 + im^2)``, so no Split or Add, and the product comes out in the CNN's
  (batch, n_mels, frames) layout, with no Transpose;
- ``log(mel + 1e-6)``, then the configured norm: per band or global mean and unbiased standard
  deviation (1 when there is a single frame, as torch's code has it), or the fixed
  ``(x + 5) / 5``.

ONNX Runtime's ``DFT``/``STFT`` kernels (what ``torch.stft`` exports to) took about 6x torch's
time per window on this machine; the Conv form is a GEMM (docs/performance.md).

:func:`fuse_front_end` joins that graph to the CNN exported from ``log_mel``
(``onnx.compose.merge_models``), giving one graph from ``input_values`` to the logits: the
inference worker then runs the whole window inside ``InferenceSession.run``, which releases the
GIL, instead of spending about half of it in numpy. The intermediate tensor keeps the name
``log_mel``, so the two halves can be cut out again (``onnx.utils.Extractor``; bench/
onnx_frontend.py does so to compare them with the numpy front end).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.errors import ModelError
from streamer.models.features import FEATURE_NORMS, LOG_MEL_INPUT, WAVEFORM_INPUT

__all__ = ["FRONT_END_PREFIX", "dft_kernels", "fuse_front_end", "log_mel_graph"]

# every tensor of the front end is named under this prefix (no clash with the CNN's names)
FRONT_END_PREFIX = "front_end/"
_LOG_FLOOR = 1e-6  # compact.py: log(mel + 1e-6)
_NORM_EPS = 1e-5  # compact.py: (logmel - mean) / (std + 1e-5)


def dft_kernels(window: NDArray[np.floating], bins: NDArray[np.intp]) -> NDArray[np.float32]:
    """(2 * len(bins), 1, n_fft) Conv weights: the real and imaginary DFT rows of ``bins``
    times ``window`` (``n_fft`` taps), computed in float64."""
    n_fft = window.size
    angle = 2.0 * np.pi * np.outer(bins, np.arange(n_fft)) / n_fft
    w = np.asarray(window, np.float64)[None, :]
    return np.concatenate([np.cos(angle) * w, -np.sin(angle) * w])[:, None, :].astype(np.float32)


def log_mel_graph(
    *, window: NDArray[np.floating], filterbank: NDArray[np.floating], hop_length: int,
    feature_norm: str, opset: int = 20, ir_version: int = 10,
) -> Any:
    """The front end as an ``onnx.ModelProto`` (module docstring). ``window`` has ``n_fft``
    taps (a shorter Hann window zero-padded in the middle, as torch.stft pads it);
    ``filterbank`` is (n_fft // 2 + 1, n_mels)."""
    from onnx import TensorProto, helper, numpy_helper

    window = np.asarray(window, np.float64)
    filterbank = np.asarray(filterbank, np.float64)
    n_fft = window.size
    if feature_norm not in FEATURE_NORMS:
        raise ModelError(f"feature_norm must be one of {', '.join(FEATURE_NORMS)}, "
                         f"got {feature_norm!r}")
    if n_fft < 2 or hop_length < 1 or filterbank.ndim != 2 or filterbank.shape[0] != n_fft // 2 + 1:
        raise ModelError(f"bad log-mel settings: n_fft {n_fft}, hop_length {hop_length}, "
                         f"filterbank {filterbank.shape}")
    (bins,) = np.nonzero(np.any(filterbank != 0.0, axis=1))
    if bins.size == 0:
        raise ModelError("the mel filterbank has no non-zero weight")
    n_mels = filterbank.shape[1]
    half = n_fft // 2
    used = filterbank[bins].T  # (n_mels, bins used)
    constants: dict[str, NDArray[Any]] = {
        "kernels": dft_kernels(window, bins),
        "filterbank2": np.concatenate([used, used], axis=1).astype(np.float32),
        "n_fft": np.array([n_fft], np.int64),
        "zero": np.array([0], np.int64),
        "zeros3": np.array([0, 0, 0], np.int64),
        "axis1": np.array([1], np.int64),
        "reflect_pads": np.array([0, 0, half, 0, 0, half], np.int64),
        "floor": np.array(_LOG_FLOOR, np.float32),
    }
    p = FRONT_END_PREFIX

    def node(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
        named = [i if i in (WAVEFORM_INPUT, LOG_MEL_INPUT) else p + i for i in inputs]
        return helper.make_node(op, named, [o if o == LOG_MEL_INPUT else p + o for o in outputs],
                                name=p + outputs[0], **attrs)

    nodes = [
        # short windows: zero-pad to n_fft at the end (compact.py's F.pad); pads are
        # [0, 0, 0, max(0, n_fft - samples)] for (batch, samples)
        node("Shape", [WAVEFORM_INPUT], ["shape_in"]),
        node("Gather", ["shape_in", "axis1"], ["samples"], axis=0),
        node("Sub", ["n_fft", "samples"], ["short_by"]),
        node("Max", ["short_by", "zero"], ["tail"]),
        node("Concat", ["zeros3", "tail"], ["tail_pads"], axis=0),
        node("Pad", [WAVEFORM_INPUT, "tail_pads"], ["long_enough"], mode="constant"),
        node("Unsqueeze", ["long_enough", "axis1"], ["channel"]),  # (batch, 1, samples)
        node("Pad", ["channel", "reflect_pads"], ["centred"], mode="reflect"),
        node("Conv", ["centred", "kernels"], ["spec"], strides=[hop_length]),
        node("Mul", ["spec", "spec"], ["squares"]),  # (batch, 2 * bins, frames)
        node("MatMul", ["filterbank2", "squares"], ["mel"]),  # (batch, n_mels, frames)
        node("Add", ["mel", "floor"], ["mel_floor"]),
        node("Log", ["mel_floor"], ["logmel"]),
    ]
    if feature_norm == "none":
        constants["five"] = np.array(5.0, np.float32)
        nodes += [node("Add", ["logmel", "five"], ["shifted"]),
                  node("Div", ["shifted", "five"], [LOG_MEL_INPUT])]
    else:
        axes = np.array([2] if feature_norm == "band" else [1, 2], np.int64)
        constants.update(
            norm_axes=axes, starts=np.zeros(axes.size, np.int64),
            ends=np.ones(axes.size, np.int64), one=np.array(1, np.int64),
            two=np.array(2, np.int64), one_f=np.array(1.0, np.float32),
            eps=np.array(_NORM_EPS, np.float32))
        nodes += [
            node("Shape", ["logmel"], ["shape_mel"]),
            node("Gather", ["shape_mel", "norm_axes"], ["norm_dims"], axis=0),
            node("ReduceProd", ["norm_dims"], ["count"], keepdims=0),
            node("Cast", ["count"], ["count_f"], to=TensorProto.FLOAT),
            node("Sub", ["count_f", "one_f"], ["dof"]),  # torch.std is unbiased
            # shifted by the first frame's value first: a constant band (digital silence, a
            # band without filterbank weights) centres to exact zeros, as numpy's float64 mean
            # does, where a float32 mean leaves rounding noise that the division by
            # std + 1e-5 blows up (torch's features there)
            node("Slice", ["logmel", "starts", "ends", "norm_axes"], ["first"]),
            node("Sub", ["logmel", "first"], ["shifted"]),
            node("ReduceMean", ["shifted", "norm_axes"], ["mean"], keepdims=1),
            node("Sub", ["shifted", "mean"], ["centred_mel"]),
            node("Mul", ["centred_mel", "centred_mel"], ["centred2"]),
            node("ReduceSum", ["centred2", "norm_axes"], ["sum2"], keepdims=1),
            node("Div", ["sum2", "dof"], ["variance"]),
            node("Sqrt", ["variance"], ["std_frames"]),
            # one frame: compact.py divides by ones instead (its std would be 0/0)
            node("Gather", ["shape_mel", "two"], ["frames"], axis=0),
            node("Greater", ["frames", "one"], ["several"]),
            node("Where", ["several", "std_frames", "one_f"], ["std"]),
            node("Add", ["std", "eps"], ["scale"]),
            node("Div", ["centred_mel", "scale"], [LOG_MEL_INPUT]),
        ]
    graph = helper.make_graph(
        nodes, "log_mel_front_end",
        [helper.make_tensor_value_info(WAVEFORM_INPUT, TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info(LOG_MEL_INPUT, TensorProto.FLOAT,
                                       ["batch", n_mels, "frames"])],
        [numpy_helper.from_array(value, p + name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def fuse_front_end(cnn: Any, *, window: NDArray[np.floating], filterbank: NDArray[np.floating],
                   hop_length: int, feature_norm: str) -> Any:
    """One ``onnx.ModelProto`` from ``input_values`` to the logits: :func:`log_mel_graph`
    ahead of ``cnn`` (a graph whose one input is ``log_mel``), at ``cnn``'s opset and IR
    version. The CNN's nodes, weights and output are kept as they are."""
    import onnx
    from onnx import compose

    inputs = [i.name for i in cnn.graph.input]
    if inputs != [LOG_MEL_INPUT]:
        raise ModelError(f"the CNN graph must take {LOG_MEL_INPUT} only, it takes {inputs}")
    opsets = {o.domain: o.version for o in cnn.opset_import}
    front = log_mel_graph(window=window, filterbank=filterbank, hop_length=hop_length,
                          feature_norm=feature_norm, opset=opsets.get("", 20),
                          ir_version=cnn.ir_version)
    for domain, version in opsets.items():  # merge_models wants the same opset imports
        if domain:
            front.opset_import.append(onnx.helper.make_opsetid(domain, version))
    fused = compose.merge_models(front, cnn, io_map=[(LOG_MEL_INPUT, LOG_MEL_INPUT)],
                                 name="compact_emotion_from_input_values")
    onnx.checker.check_model(fused)
    return fused
