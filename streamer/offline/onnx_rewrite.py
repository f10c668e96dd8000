"""Rewrites of int8 ONNX graphs that ONNX Runtime's quantiser does not do by itself (run by
``emotion-monitor optimize`` after ``quantize_dynamic``).

:func:`quantize_before_taps` quantises the input of each MatMul-form encoder convolution before
its taps are sliced, so the tap copies move bytes instead of floats.

:func:`quantize_grouped_convs` turns each grouped 1-D ``Conv`` with a constant weight (in
wav2vec2-family models: the positional convolution, kernel 128, 16 groups) into int8 im2col
plus one batched ``MatMulInteger``:

- the input is quantised once (``DynamicQuantizeLinear``: uint8, one scale and zero point per
  call, like ``quantize_dynamic``'s MatMuls) *before* the taps are gathered, so the
  im2col tensor (frames x kernel x channels) is built in bytes, not floats;
- padding uses the input's zero point, so padded taps stand for exact zeros;
- weights are int8, symmetric, one scale per output channel.

ONNX Runtime's fp32 ``Conv`` runs this layer at about 50 GMAC/s on one core (16 ms of a
wav2vec2-large window); the int8 form takes about 3 ms (docs/performance.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["quantize_before_taps", "quantize_grouped_convs"]


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _eligible(node: Any, weights: dict[str, Any]) -> bool:
    if node.op_type != "Conv" or node.input[1] not in weights:
        return False
    if len(node.input) > 2 and node.input[2] and node.input[2] not in weights:
        return False
    weight = weights[node.input[1]]
    groups = _attr(node, "group", 1)
    if len(weight.dims) != 3 or groups < 2 or weight.dims[0] != groups * weight.dims[1]:
        return False
    kernel = weight.dims[2]
    pads = list(_attr(node, "pads", [0, 0]))
    return (
        _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        and list(_attr(node, "strides", [1])) == [1]
        and list(_attr(node, "dilations", [1])) == [1]
        and len(pads) == 2 and pads[0] == pads[1] and pads[0] < kernel
    )


#: int8 weight range of the rewritten convs: 7 bits (see _int8_group_weights)
_WEIGHT_MAX = 63


def quantize_grouped_convs(model: Any) -> int:
    """Rewrite, in place, every eligible grouped 1-D ``Conv`` of ``model`` (an
    ``onnx.ModelProto``); returns how many were rewritten. Eligible: constant weight and bias,
    stride 1, no dilation, equal padding on both sides."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    rewritten = 0
    nodes: list[Any] = []
    for node in graph.node:
        if _eligible(node, weights):
            nodes += _int8_im2col(node, weights, graph)
            rewritten += 1
        else:
            nodes.append(node)
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {name for node in graph.node for name in node.input}
        kept = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return rewritten


def _int8_group_weights(weight: NDArray[np.float32], groups: int
                        ) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """A grouped Conv weight (channels, per_group, kernel) as per-group im2col matrices
    (groups, kernel * per_group, per_group) in int8, with one scale per output channel."""
    channels, per_group, kernel = weight.shape
    # im2col row of one output frame: tap k of in-channel c at k * per_group + c
    # wg[g, k * per_group + c, o] = weight[g * per_group + o, c, k]
    wg = (weight.reshape(groups, per_group, per_group, kernel)
          .transpose(0, 3, 2, 1).reshape(groups, kernel * per_group, per_group))
    # 7-bit weights (ONNX Runtime's reduce_range): on x86 without VNNI the u8 x s8 kernel adds
    # pairs of products in saturating 16-bit lanes, and 255 * 127 * 2 overflows them (a 0.16
    # relative error on an AVX2-only machine); 255 * 63 * 2 does not.
    scale = np.abs(wg).max(axis=1, keepdims=True) / _WEIGHT_MAX
    scale[scale == 0] = 1.0
    return (np.clip(np.rint(wg / scale), -_WEIGHT_MAX, _WEIGHT_MAX).astype(np.int8),
            scale.astype(np.float32))


def _int8_im2col(node: Any, weights: dict[str, Any], graph: Any) -> list[Any]:
    """The nodes replacing one grouped ``Conv``; its constants are added to ``graph``."""
    from onnx import TensorProto, helper, numpy_helper

    prefix = f"{node.name or node.output[0]}_int8"
    weight = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
    channels, per_group, kernel = weight.shape
    groups = int(_attr(node, "group", 1))
    pad = int(_attr(node, "pads", [0, 0])[0])
    bias = (numpy_helper.to_array(weights[node.input[2]]).astype(np.float32)
            if len(node.input) > 2 and node.input[2] else np.zeros(channels, np.float32))
    wq, scale = _int8_group_weights(weight, groups)

    def name(suffix: str) -> str:
        return f"{prefix}_{suffix}"

    constants: dict[str, NDArray[Any]] = {
        "shape4": np.array([0, groups, per_group, -1], np.int64),
        "pads": np.array([0, 0, pad, 0, 0, 0, pad, 0], np.int64),
        "frames_delta": np.array([2 * pad - kernel + 1], np.int64),
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
        "axis1": np.array([1], np.int64),
        "taps": np.arange(kernel, dtype=np.int64)[None, :],
        "cols_shape": np.array([0, groups, -1, kernel * per_group], np.int64),
        "weight": wq,
        "weight_scale": scale.astype(np.float32),  # (groups, 1, per_group)
        "bias": bias.reshape(groups, 1, per_group),
        "out_shape": np.array([0, channels, -1], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(value, name(key))
                             for key, value in constants.items())
    x, y = node.input[0], node.output[0]
    return [
        helper.make_node("DynamicQuantizeLinear", [x], [name("xq"), name("sx"), name("zx")]),
        helper.make_node("Shape", [x], [name("frames_in")], start=2, end=3),
        helper.make_node("Reshape", [name("xq"), name("shape4")], [name("x4")]),
        helper.make_node("Transpose", [name("x4")], [name("xt")], perm=[0, 1, 3, 2]),
        helper.make_node("Pad", [name("xt"), name("pads"), name("zx")], [name("xp")]),
        helper.make_node("Add", [name("frames_in"), name("frames_delta")], [name("frames_out")]),
        helper.make_node("Squeeze", [name("frames_out")], [name("frames")]),
        helper.make_node("Range", [name("zero"), name("frames"), name("one")], [name("starts")]),
        helper.make_node("Unsqueeze", [name("starts"), name("axis1")], [name("starts2")]),
        helper.make_node("Add", [name("starts2"), name("taps")], [name("index")]),
        # (batch, groups, frames, kernel, per_group) uint8
        helper.make_node("Gather", [name("xp"), name("index")], [name("cols5")], axis=2),
        helper.make_node("Reshape", [name("cols5"), name("cols_shape")], [name("cols")]),
        helper.make_node("MatMulInteger", [name("cols"), name("weight"), name("zx")],
                         [name("acc")]),
        helper.make_node("Cast", [name("acc")], [name("accf")], to=TensorProto.FLOAT),
        helper.make_node("Mul", [name("sx"), name("weight_scale")], [name("scale")]),
        helper.make_node("Mul", [name("accf"), name("scale")], [name("scaled")]),
        helper.make_node("Add", [name("scaled"), name("bias")], [name("biased")]),
        helper.make_node("Transpose", [name("biased")], [name("yt")], perm=[0, 1, 3, 2]),
        helper.make_node("Reshape", [name("yt"), name("out_shape")], [y]),
    ]


def quantize_before_taps(model: Any) -> int:
    """Move, in place, each ``DynamicQuantizeLinear`` that reads a ``Concat`` of ``Slice``\\ s of
    one tensor (the tap slicing of :class:`~streamer.offline.optimize.MatmulConv1d`) in front of the
    slices, so the taps are sliced and concatenated in uint8 instead of float32 (a quarter of
    the bytes; the encoder's tap copies were 12 ms of a wav2vec2-base window). Returns how many
    were moved. The scale then comes from the whole input instead of the taps, which cover
    all but its last frame or two."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    moved = 0
    retyped: set[str] = set()  # float tensors that become uint8: drop their recorded types
    for quantize in [node for node in graph.node if node.op_type == "DynamicQuantizeLinear"]:
        concat = producer.get(quantize.input[0])
        if concat is None or concat.op_type != "Concat" or len(consumers[concat.output[0]]) != 1:
            continue
        slices = [producer.get(name) for name in concat.input]
        if not all(s is not None and s.op_type == "Slice" and len(consumers[s.output[0]]) == 1
                   for s in slices):
            continue
        sources = {s.input[0] for s in slices if s is not None}
        if len(sources) != 1:
            continue
        (source,) = sources
        quantized = f"{quantize.output[0]}_before_taps"
        for s in slices:
            assert s is not None
            s.input[0] = quantized
            retyped.add(s.output[0])
        concat.output[0] = quantize.output[0]
        quantize.input[0] = source
        quantize.output[0] = quantized
        moved += 1
    if moved:
        kept = [info for info in graph.value_info if info.name not in retyped]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        _topological_sort(graph)
    return moved


def _topological_sort(graph: Any) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[Any] = []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ValueError("graph has a cycle or an input nobody produces")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
