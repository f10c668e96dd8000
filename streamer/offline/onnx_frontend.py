"""The compact model's log-mel front end as ONNX nodes, fused ahead of its exported CNN graph
(run by ``emotion-monitor optimize``; main thread, no I/O).

:func:`log_mel_graph` builds ``input_values`` (batch, samples) -> ``log_mel`` (batch, n_mels,
frames) with the arithmetic of ``CompactEmotionForAudioClassification.log_mel``
(:mod:`streamer.models.compact`) and of its numpy copy
(:class:`streamer.models.features.LogMelFeatures`):

- windows shorter than ``n_fft`` are zero-padded to it, then reflect-padded by ``n_fft // 2``
  on each side (``torch.stft(center=True)``);
- framing is a ``Gather`` of whole blocks of ``gcd(n_fft, hop_length)`` samples (a frame is
  ``n_fft / block`` consecutive blocks, frames start ``hop_length / block`` blocks apart): a
  per-sample Gather took about 1 ms per window;
- the DFT of each windowed frame is two batched ``MatMul`` stages (Cooley-Tukey with
  ``n_fft = n1 * n2``, :func:`dft_factors`; 20 x 20 for 400): a DFT of size ``n2`` for each
  of the ``n1`` decimated sub-frames with the window folded into its weights, then for each
  ``k2`` a sum over ``n1`` whose weights hold the twiddle factors, only as far as the highest
  bin the filterbank uses. About 6.4 M multiply-adds per 2 s window where one DFT matrix (a
  ``Conv``) needs 32 M; a prime ``n_fft`` gets the one matrix;
- power and the mel filterbank are one ``MatMul`` whose rows weigh the squared real and
  imaginary parts of each bin alike (so no Split or Add), zero for mirror images and unused
  bins;
- ``log(mel + 1e-6)``, then the configured norm: per band or global mean and unbiased standard
  deviation (1 when there is a single frame, as torch's code has it), or the fixed
  ``(x + 5) / 5``; a Transpose gives the CNN's (batch, n_mels, frames).

ONNX Runtime's ``DFT``/``STFT`` kernels (what ``torch.stft`` exports to) took about 6x torch's
time per window on this machine, and the one-matrix ``Conv`` form about as long as numpy's
FFT; the two-stage form about half of that (docs/performance.md, bench/onnx_frontend.py).

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

__all__ = ["FRONT_END_PREFIX", "dft_factors", "fuse_front_end", "log_mel_graph", "stft_weights"]

# every tensor of the front end is named under this prefix (no clash with the CNN's names)
FRONT_END_PREFIX = "front_end/"
_LOG_FLOOR = 1e-6  # compact.py: log(mel + 1e-6)
_NORM_EPS = 1e-5  # compact.py: (logmel - mean) / (std + 1e-5)


def dft_factors(n_fft: int) -> tuple[int, int]:
    """``(n1, n2)`` with ``n1 * n2 == n_fft`` and ``n1`` the largest divisor not above
    ``sqrt(n_fft)`` (``(1, n_fft)`` for a prime: one DFT matrix)."""
    n1 = max(d for d in range(1, int(np.sqrt(n_fft)) + 1) if n_fft % d == 0)
    return n1, n_fft // n1


def stft_weights(window: NDArray[np.floating], bins: NDArray[np.intp]
                 ) -> tuple[NDArray[np.float32], NDArray[np.float32] | None, NDArray[np.intp]]:
    """The two-stage DFT of :func:`log_mel_graph` (module docstring) as MatMul weights,
    computed in float64: ``first`` (n1, n2, 2 * n2), ``second`` (n2, 2 * n1, 2 * k1) or None
    when ``n1`` is 1 (then ``first`` is (1, n_fft, 2 * len(bins)), the DFT of ``bins``), and
    for each power column of the result, its frequency bin (n2 * k1 columns, bin ``k2 + n2 *
    k1`` at ``k2 * k1_count + k1``; len(bins) columns when ``n1`` is 1)."""
    window = np.asarray(window, np.float64)
    n_fft = window.size
    n1, n2 = dft_factors(n_fft)
    taps = np.arange(n1)[:, None] + n1 * np.arange(n2)[None, :]  # (n1, n2): n = n1 + N1 * n2
    if n1 == 1:
        angle = 2.0 * np.pi * np.outer(np.arange(n_fft), bins) / n_fft
        first = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1) * window[:, None]
        return first[None].astype(np.float32), None, np.asarray(bins, np.intp)
    # first stage: for each n1, a DFT of size n2 over taps n1 + N1 * n2, windowed; columns
    # (k2, real or imaginary), so that moving n1 last then k2 first are single-axis moves
    angle = 2.0 * np.pi * np.outer(np.arange(n2), np.arange(n2)) / n2
    first = np.stack([np.cos(angle), -np.sin(angle)], axis=2).reshape(n2, 2 * n2)
    first = first[None] * window[taps][:, :, None]  # (n1, n2, 2 * n2)
    # second stage: for each k2, sum over n1 with the phase of bin k = k2 + N2 * k1 (the
    # twiddle factor included), k1 only as far as the highest bin used
    k1_count = int(np.max(bins)) // n2 + 1
    k = np.arange(n2)[:, None, None] + n2 * np.arange(k1_count)[None, None, :]  # (n2, 1, k1)
    phase = 2.0 * np.pi * np.arange(n1)[None, :, None] * k / n_fft  # (n2, n1, k1)
    cos, sin = np.cos(phase), np.sin(phase)
    # rows: real parts of the first stage, then imaginary; columns: real parts, then imaginary
    second = np.concatenate([np.concatenate([cos, -sin], axis=2),
                             np.concatenate([sin, cos], axis=2)], axis=1)
    return (first.astype(np.float32), second.astype(np.float32),
            k[:, 0, :].reshape(-1).astype(np.intp))


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
    n1, n2 = dft_factors(n_fft)
    first, second, column_bins = stft_weights(window, bins)
    # the mel weights of each power column: real and imaginary squares, bins past n_fft // 2
    # (mirror images) and unused ones weigh nothing
    mel_rows = np.zeros((column_bins.size, n_mels))
    kept = column_bins <= half
    mel_rows[kept] = filterbank[column_bins[kept]]
    if second is None:
        mel_rows = np.concatenate([mel_rows, mel_rows])  # (2 * bins, n_mels): [re | im]
    else:
        k1_count = second.shape[2] // 2
        per_k2 = mel_rows.reshape(n2, 1, k1_count, n_mels)
        mel_rows = np.concatenate([per_k2, per_k2], axis=1).reshape(-1, n_mels)
    block = int(np.gcd(n_fft, hop_length))  # frames are whole blocks of this many samples
    constants: dict[str, NDArray[Any]] = {
        "first": first, "mel_rows": mel_rows.astype(np.float32),
        "n_fft": np.array([n_fft], np.int64),
        "zero": np.array([0], np.int64),
        "zeros3": np.array([0, 0, 0], np.int64),
        "axis1": np.array([1], np.int64),
        "reflect_pads": np.array([0, 0, half, 0, 0, half], np.int64),
        "hop": np.array([hop_length], np.int64),
        "step": np.array(hop_length // block, np.int64),
        "one_s": np.array(1, np.int64),
        "zero_s": np.array(0, np.int64),
        "block_taps": np.arange(n_fft // block, dtype=np.int64)[None, :],
        "block_shape": np.array([0, -1, block], np.int64),
        "frame_shape": np.array([0, 0, n2, n1], np.int64),
        "stage_shape": np.array([n1, -1, n2], np.int64),
        "minus_one": np.array([-1], np.int64),
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
        node("Pad", ["channel", "reflect_pads"], ["reflected"], mode="reflect"),
        node("Squeeze", ["reflected", "axis1"], ["centred"]),
        # frames: (padded - n_fft) // hop + 1 of them, each n_fft // block whole blocks, so
        # framing is a Gather of blocks (of the samples up to the end of the last frame)
        node("Shape", ["centred"], ["shape_centred"]),
        node("Gather", ["shape_centred", "axis1"], ["padded"], axis=0),
        node("Sub", ["padded", "n_fft"], ["room"]),
        node("Div", ["room", "hop"], ["last"]),
        node("Mul", ["last", "hop"], ["last_start"]),
        node("Add", ["last_start", "n_fft"], ["used"]),
        node("Slice", ["centred", "zero", "used", "axis1"], ["trimmed"]),
        node("Reshape", ["trimmed", "block_shape"], ["blocks"]),  # (batch, blocks, block)
        node("Squeeze", ["last", "zero"], ["last_s"]),
        node("Add", ["last_s", "one_s"], ["frames"]),
        node("Range", ["zero_s", "frames", "one_s"], ["frame_ids"]),
        node("Mul", ["frame_ids", "step"], ["first_blocks"]),
        node("Unsqueeze", ["first_blocks", "axis1"], ["first_blocks_col"]),
        node("Add", ["first_blocks_col", "block_taps"], ["block_ids"]),  # (frames, blocks)
        node("Gather", ["blocks", "block_ids"], ["framed"], axis=1),
        # (batch, frames, n2, n1): tap n = n1 + N1 * n2; first stage batched over n1
        node("Reshape", ["framed", "frame_shape"], ["frames4"]),
        node("Transpose", ["frames4"], ["by_n1"], perm=[3, 0, 1, 2]),
        node("Reshape", ["by_n1", "stage_shape"], ["stage_in"]),  # (n1, batch * frames, n2)
        node("MatMul", ["stage_in", "first"], ["stage1"]),
    ]
    if second is None:
        # one stage: (1, batch * frames, 2 * bins) are the spectra
        nodes.append(node("Mul", ["stage1", "stage1"], ["squares"]))
        squares = "squares"
    else:
        constants.update(
            second=second, split_shape=np.array([0, 0, n2, 2], np.int64),
            pair_shape=np.array([0, n2, 2 * n1], np.int64))
        nodes += [
            # (n2, batch * frames, 2 * n1): real then imaginary parts of each k2, the second
            # stage batched over k2; two transposes that each move one axis (ONNX Runtime's
            # general Transpose took about 2 ms per window for the one permutation between)
            node("Reshape", ["stage1", "split_shape"], ["stage1_parts"]),  # (n1, bf, k2, 2)
            node("Transpose", ["stage1_parts"], ["n1_last"], perm=[1, 2, 3, 0]),
            node("Reshape", ["n1_last", "pair_shape"], ["by_frame"]),  # (bf, k2, 2 * n1)
            node("Transpose", ["by_frame"], ["stage2_in"], perm=[1, 0, 2]),
            node("MatMul", ["stage2_in", "second"], ["spectra"]),  # (n2, batch * frames, 2k1)
            node("Mul", ["spectra", "spectra"], ["squares_by_k2"]),
            node("Transpose", ["squares_by_k2"], ["squares"], perm=[1, 0, 2]),
        ]
        squares = "squares"
    nodes += [
        # (batch, frames, power columns) -> mel filterbank -> (batch, frames, n_mels)
        node("Gather", ["shape_in", "zero"], ["batch"], axis=0),
        node("Concat", ["batch", "minus_one", "columns"], ["power_shape"], axis=0),
        node("Reshape", [squares, "power_shape"], ["power"]),
        node("MatMul", ["power", "mel_rows"], ["mel"]),
        node("Add", ["mel", "floor"], ["mel_floor"]),
        node("Log", ["mel_floor"], ["logmel"]),
    ]
    constants["columns"] = np.array([mel_rows.shape[0]], np.int64)
    if feature_norm == "none":
        constants["five"] = np.array(5.0, np.float32)
        nodes += [node("Add", ["logmel", "five"], ["shifted"]),
                  node("Div", ["shifted", "five"], ["normed"])]
    else:
        axes = np.array([1] if feature_norm == "band" else [1, 2], np.int64)
        constants.update(
            norm_axes=axes, starts=np.zeros(axes.size, np.int64),
            ends=np.ones(axes.size, np.int64), one=np.array(1, np.int64),
            one_f=np.array(1.0, np.float32), eps=np.array(_NORM_EPS, np.float32))
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
            node("Slice", ["logmel", "starts", "ends", "norm_axes"], ["first_frame"]),
            node("Sub", ["logmel", "first_frame"], ["shifted"]),
            node("ReduceMean", ["shifted", "norm_axes"], ["mean"], keepdims=1),
            node("Sub", ["shifted", "mean"], ["centred_mel"]),
            node("Mul", ["centred_mel", "centred_mel"], ["centred2"]),
            node("ReduceSum", ["centred2", "norm_axes"], ["sum2"], keepdims=1),
            node("Div", ["sum2", "dof"], ["variance"]),
            node("Sqrt", ["variance"], ["std_frames"]),
            # one frame: compact.py divides by ones instead (its std would be 0/0)
            node("Greater", ["frames", "one"], ["several"]),
            node("Where", ["several", "std_frames", "one_f"], ["std"]),
            node("Add", ["std", "eps"], ["scale"]),
            node("Div", ["centred_mel", "scale"], ["normed"]),
        ]
    nodes.append(node("Transpose", ["normed"], [LOG_MEL_INPUT], perm=[0, 2, 1]))
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
