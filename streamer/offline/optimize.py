"""``emotion-monitor optimize``: ONNX export, dynamic int8 quantisation, agreement and speed
checks (main thread; one process, CPU).

:func:`optimize_model` writes into ``out``:

- ``config.json`` and ``preprocessor_config.json`` (labels and input settings, as a checkpoint);
- ``model.onnx`` (fp32) and ``model.int8.onnx`` (ONNX Runtime ``quantize_dynamic``: int8
  per-channel weights and per-batch int8 activations for MatMul; none for the compact CNN,
  whose convolutions it would leave in fp32). For a wav2vec2 classifier
  ``model.onnx`` starts at the conv features (input ``extract_features``) and
  ``feature_encoder.onnx`` / ``feature_encoder.int8.onnx`` hold the conv encoder, so its frames
  can be cached (:mod:`streamer.models.encoder_cache`); the compact model's graph is its CNN
  exported from ``log_mel`` features with its log-mel front end fused ahead of it as ONNX
  nodes (:mod:`streamer.offline.onnx_frontend`: the STFT as a Conv, not the ``DFT`` that
  ``torch.stft`` exports to, which took about 6x torch's time per window), so it too is one
  graph from ``input_values``, as other models are. Folders written before that hold the CNN
  alone (``model_input`` ``log_mel``) and still load: the runtime computes those features in
  numpy (:class:`streamer.models.features.LogMelFeatures`);
- ``optimize.json``: the files, the source checkpoint, and for each backend/precision its
  top-1 agreement and relative logit difference against fp32 torch on the checked windows and
  its median time per window with one thread on this machine, and the graphs' ``model_input``
  (``input_values``; ``log_mel`` in older compact folders). ``auto`` reads it
  (:mod:`streamer.models.settings`).

``out`` may be the checkpoint folder itself (in place): the graphs and ``optimize.json`` go
beside the weights, the configs are left as they are and the manifest's source is ``"."``.
The bundled model is made so, by ``emotion-monitor optimize --out streamer/bundled``.

Export uses ``torch.onnx.export(dynamo=True)`` (needs onnxscript) at opset 20 (which has a
native ``Gelu`` that ONNX Runtime runs fused), with a dynamic batch and sample axis; the
TorchScript exporter cannot export the compact model's complex STFT.

The export keeps the arithmetic and changes its spelling where ONNX Runtime runs the
default spelling slowly (:func:`prepare_for_export`; figures in docs/performance.md):

- wav2vec2-family encoder convolutions (layers 1-6: no padding, one group) become tap slicing
  plus one MatMul (:class:`MatmulConv1d`): ORT's fp32 ``Conv`` runs them at a fraction of its
  GEMM speed, and a MatMul quantises to int8 (``ConvInteger`` is slower than fp32 here);
- a per-channel ``GroupNorm`` (wav2vec2-base) becomes one ``InstanceNormalization`` with its
  affine weights (:class:`InstanceNormAffine`);
- weight norm is baked into the positional convolution's weight;
- attention is transformers' "eager" path (no mask or NaN guard nodes).

The int8 graphs quantise every weight MatMul, the encoder's included, then
:mod:`streamer.offline.onnx_rewrite` rewrites the grouped positional convolution as int8 im2col plus
``MatMulInteger`` and moves the encoder's activation quantisation in front of its tap slicing.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ
from streamer.errors import ModelError
from streamer.models.features import LOG_MEL_INPUT, WAVEFORM_INPUT
from streamer.models.loading import BUNDLED_MODEL_DIR, BUNDLED_MODEL_NAME, load_model
from streamer.models.settings import (
    COMPACT_MODEL_TYPE,
    MANIFEST_NAME,
    MAX_REL_LOGIT_DIFF,
    MIN_TOP1_AGREEMENT,
    preferred_batch,
    read_manifest,
    within_bounds,
)
from streamer.models.torch_runner import splittable, wav2vec2_head
from streamer.offline.onnx_rewrite import quantize_before_taps, quantize_grouped_convs

__all__ = [
    "Agreement",
    "BATCH_SIZES",
    "InstanceNormAffine",
    "MatmulConv1d",
    "SETTINGS",
    "agreement",
    "agreement_windows",
    "fold_weight_norm",
    "matmul_convs",
    "optimize_model",
    "prepare_for_export",
]

logger = logging.getLogger(__name__)

BATCH_SIZES = (2, 4)  # also timed per setting, for the engine's batch on CPU
SETTINGS = ("torch/fp32", "torch/bf16", "torch/int8", "onnx/fp32", "onnx/int8")
_WINDOW = 2 * MODEL_RATE_HZ


@dataclass(frozen=True, slots=True)
class Agreement:
    """How one setting's logits compare with the reference (fp32 torch) on the same windows."""

    windows: int
    top1_agreement: float  # share of windows with the same arg-max class
    rel_logit_diff: float  # ||L - L_ref||_F / ||L_ref||_F over all windows


def agreement(reference: NDArray[np.floating], logits: NDArray[np.floating]) -> Agreement:
    """Compare (windows, classes) logits with the reference logits of the same windows."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(logits, dtype=np.float64)
    if ref.shape != got.shape or ref.ndim != 2 or ref.shape[0] == 0:
        raise ValueError(f"need two equal (windows, classes) arrays, got {ref.shape}, {got.shape}")
    top1 = float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))
    norm = float(np.linalg.norm(ref))
    diff = float(np.linalg.norm(got - ref))
    rel = diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))
    return Agreement(windows=ref.shape[0], top1_agreement=top1, rel_logit_diff=rel)


def agreement_windows(
    data: Path | None, *, max_windows: int = 160, seed: int = 0
) -> tuple[NDArray[np.float32], str]:
    """2 s windows to compare settings on: from a folder-per-label dataset's clips (every clip
    cut with a 1 s hop, then evenly thinned to ``max_windows``), else seeded synthetic voiced
    audio. Returns (windows, description)."""
    if data is not None:
        from streamer.audio import read_audio
        from streamer.offline.dataset import scan_dataset

        clips = scan_dataset(data)
        windows: list[NDArray[np.float32]] = []
        for clip in clips:
            audio = read_audio(clip.path)
            if audio.size < _WINDOW:
                audio = np.pad(audio, (0, _WINDOW - audio.size))
            for start in range(0, audio.size - _WINDOW + 1, MODEL_RATE_HZ):
                windows.append(audio[start:start + _WINDOW])
        if not windows:
            raise ModelError(f"{data}: no audio clips found to check agreement on")
        pick = np.linspace(0, len(windows) - 1, min(max_windows, len(windows))).round()
        chosen = np.stack([windows[int(i)] for i in np.unique(pick)])
        return chosen.astype(np.float32), f"{len(chosen)} windows of {len(clips)} clips in {data}"
    rng = np.random.default_rng(seed)
    t = np.arange(_WINDOW) / MODEL_RATE_HZ
    rows = []
    for _ in range(min(max_windows, 48)):
        f0 = rng.uniform(90, 260) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 5) * t))
        phase = 2 * np.pi * np.cumsum(f0) / MODEL_RATE_HZ
        voiced = sum(np.sin(k * phase) * rng.uniform(0.2, 1.0) / k for k in range(1, 12))
        env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t) ** 2
        x = voiced * env + rng.uniform(0.005, 0.1) * rng.standard_normal(_WINDOW)
        rows.append(x / np.max(np.abs(x)) * rng.uniform(0.05, 0.8))
    return np.stack(rows).astype(np.float32), f"{len(rows)} synthetic voiced windows (seed {seed})"


class MatmulConv1d(torch.nn.Module):
    """A ``Conv1d`` without padding or groups, as ``k`` strided tap slices and one MatMul.

    Input and output are (batch, channels, time) like the convolution it replaces; the weight
    is stored as (k * in_channels, out_channels) with row ``j * in_channels + c`` = tap ``j``
    of input channel ``c``, so the product needs no transpose of the weight.
    """

    def __init__(self, conv: torch.nn.Conv1d) -> None:
        super().__init__()
        (self.kernel,) = conv.kernel_size
        (self.stride,) = conv.stride
        weight = conv.weight.detach()  # (out, in, k)
        self.weight = torch.nn.Parameter(
            weight.permute(2, 1, 0).reshape(-1, weight.shape[0]).contiguous(),
            requires_grad=False,
        )
        self.bias = (None if conv.bias is None
                     else torch.nn.Parameter(conv.bias.detach().clone(), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = (x.shape[2] - self.kernel) // self.stride + 1
        xt = x.transpose(1, 2)  # (batch, time, channels)
        span = self.stride * (frames - 1) + 1
        taps = [xt[:, j:j + span:self.stride, :] for j in range(self.kernel)]
        y = torch.cat(taps, dim=2) @ self.weight  # (batch, frames, out)
        if self.bias is not None:
            y = y + self.bias
        return y.transpose(1, 2)


class InstanceNormAffine(torch.nn.Module):
    """A ``GroupNorm`` with one group per channel (wav2vec2-base's first encoder layer) as
    ``instance_norm`` with the same weights: the same arithmetic, exported as one
    ``InstanceNormalization`` where ``GroupNorm`` exports as ``InstanceNormalization`` + ``Mul``
    + ``Add`` over the whole (channels, frames) tensor."""

    def __init__(self, norm: torch.nn.GroupNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight = torch.nn.Parameter(norm.weight.detach().clone(), requires_grad=False)
        self.bias = torch.nn.Parameter(norm.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.instance_norm(x, weight=self.weight, bias=self.bias,
                                                 eps=self.eps)


def _rewritable(conv: torch.nn.Conv1d) -> bool:
    return (conv.groups == 1 and conv.in_channels > 1 and conv.padding in ((0,), 0)
            and conv.dilation == (1,) and conv.padding_mode == "zeros")


def matmul_convs(model: Any) -> int:
    """Replace, in place, the conv layers of every wav2vec2-family feature encoder in ``model``
    (modules with a ``conv_layers`` list whose items have a ``conv``) that
    :class:`MatmulConv1d` can express; returns how many were replaced. The first layer (one
    input channel, ten taps) is left alone: a 10-wide MatMul gains nothing. A per-channel
    ``GroupNorm`` becomes :class:`InstanceNormAffine`."""
    replaced = 0
    for module in model.modules():
        layers = getattr(module, "conv_layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            continue
        for layer in layers:
            conv = getattr(layer, "conv", None)
            if isinstance(conv, torch.nn.Conv1d) and _rewritable(conv):
                layer.conv = MatmulConv1d(conv)
                replaced += 1
            norm = getattr(layer, "layer_norm", None)
            if (isinstance(norm, torch.nn.GroupNorm) and norm.affine
                    and norm.num_groups == norm.num_channels):
                layer.layer_norm = InstanceNormAffine(norm)
    return replaced


def fold_weight_norm(model: Any) -> int:
    """Bake weight-norm (and other) weight parametrizations into plain weights, in place;
    returns how many modules changed. wav2vec2's positional convolution is weight-normed:
    baked, its weight is one constant in the exported graph (the same values), which ONNX
    Runtime does not recompute per call and :mod:`streamer.offline.onnx_rewrite` can quantise."""
    from torch.nn.utils import parametrize

    folded = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            folded += 1
        elif hasattr(module, "weight_g") and hasattr(module, "weight_v"):
            torch.nn.utils.remove_weight_norm(module)  # the older hook-based weight norm
            folded += 1
    return folded


def prepare_for_export(model: Any) -> None:
    """Make the loaded copy of a model export to a faster graph with the same arithmetic:
    encoder convolutions as MatMul and a per-channel GroupNorm as instance norm
    (:func:`matmul_convs`), weight norm baked in, and transformers' plain ("eager") attention,
    which exports as MatMul/Softmax/MatMul without the SDPA path's mask and NaN guards (no
    attention mask is ever passed)."""
    rewritten = matmul_convs(model)
    if rewritten:
        logger.info("exporting %d encoder convolutions as MatMul", rewritten)
    fold_weight_norm(model)
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except (ValueError, ImportError) as exc:  # a model without the eager path keeps its own
            logger.info("keeping %s attention for export: %s",
                        getattr(model.config, "_attn_implementation", "default"), exc)


class _Full(torch.nn.Module):
    """input_values -> logits (the graph exported for models that are not split)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model(input_values=input_values).logits


class _LogMelHead(torch.nn.Module):
    """The compact model after its front end: log-mel features -> logits."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.model.classify(log_mel)


class _Encoder(torch.nn.Module):
    """input_values -> wav2vec2 conv features (batch, channels, frames)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model.wav2vec2.feature_extractor(input_values)


class _Head(torch.nn.Module):
    """wav2vec2 conv features -> logits."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, extract_features: torch.Tensor) -> torch.Tensor:
        return wav2vec2_head(self.model, extract_features)


def _export(module: Any, example: Any, path: Path, input_name: str, axis_min: int) -> None:
    dims = {0: torch.export.Dim("batch", min=1, max=256),
            1 if input_name == WAVEFORM_INPUT else 2: torch.export.Dim("length", min=axis_min)}
    with warnings.catch_warnings():
        # torch.export's pytree code warns about its own deprecated LeafSpec check
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        try:
            torch.onnx.export(
                module, (example,), str(path), input_names=[input_name],
                output_names=["output"], dynamic_shapes=(dims,), dynamo=True,
                opset_version=20, verbose=False, external_data=False,
            )
        except Exception as exc:  # torch.onnx raises several private error types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise ModelError(f"ONNX export to {path.name} failed: {first}") from exc


def _quantize(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # per-channel weight scales: same speed, about 30 % less logit error on wav2vec2-base
    # reduce_range: 7-bit weights, as for the grouped convs (onnx_rewrite): u8 x s8 products
    # saturate 16-bit lanes on x86 without VNNI
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"],
                     weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    model = onnx.load(str(dst))
    if quantize_grouped_convs(model) + quantize_before_taps(model):
        onnx.save(model, str(dst))


def _median_ms(run: Any, window: NDArray[np.float32], repeats: int) -> float:
    run(window)  # warm-up (first call allocates)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(window)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000.0)


def optimize_model(
    model: str | Path | None,
    out: Path,
    *,
    data: Path | None = None,
    max_windows: int = 160,
    repeats: int = 5,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export, quantise, check and time; returns the manifest written to ``out``."""
    source, out = _checked_folders(model, out, overwrite=overwrite)
    in_place = out.resolve() == source.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base = load_model(source, device="cpu", backend="torch", precision="fp32",
                      encoder_cache=False)
    hf = base.model
    if not in_place:
        hf.config.save_pretrained(out)
        base.feature_extractor.save_pretrained(out)
    files = _export_graphs(hf, out)
    logger.info("exported %s to %s in %.0f s", source, out, time.monotonic() - started)
    manifest = _new_manifest(None if in_place else source, hf.config.model_type, files,
                             WAVEFORM_INPUT)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    windows, described = agreement_windows(data, max_windows=max_windows)
    manifest["checked_on"] = described
    manifest["checks"] = _check_settings(out, windows, repeats=repeats)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _checked_folders(model: str | Path | None, out: Path, *, overwrite: bool
                     ) -> tuple[Path, Path]:
    """The source checkpoint folder and ``out``, or a ModelError saying what is wrong. ``out``
    may be ``source`` itself (in place). A folder optimised in place (the bundled model) is
    still a checkpoint; other optimize outputs are not."""
    bundled = model is None or (isinstance(model, str) and model.strip() == BUNDLED_MODEL_NAME)
    source = BUNDLED_MODEL_DIR if bundled else Path(str(model)).expanduser()
    if not (source / "config.json").is_file():
        raise ModelError(f"{source}: not a local checkpoint folder (optimize needs one)")
    out = Path(out)
    in_place = out.resolve() == source.resolve()
    manifest = read_manifest(source)
    if manifest is not None and manifest.get("source") != ".":
        raise ModelError(f"{source} is already an optimize output; pass its source checkpoint")
    if not in_place and out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelError(f"--out {out}: exists and is not empty")
    return source, out


def _export_graphs(hf: Any, out: Path) -> dict[str, Any]:
    """Write the fp32 and int8 graphs of the loaded model ``hf``, each from ``input_values``;
    returns the manifest's ``files`` entry."""
    example = torch.zeros(1, _WINDOW)
    files: dict[str, Any] = {"fp32": "model.onnx", "int8": "model.int8.onnx", "encoder": None}
    prepare_for_export(hf)  # the loaded copy only; the checkpoint is untouched
    if hf.config.model_type == COMPACT_MODEL_TYPE:
        _export_compact(hf, example, out / "model.onnx")
        # no int8 graph: dynamic quantisation turns MatMuls into int8 and the CNN is
        # convolutions, so only its last layer changed; as large and no faster (measured)
        files["int8"] = None
        return files
    if splittable(hf):
        with torch.no_grad():  # not inference_mode: export must not see inference tensors
            feats = hf.wav2vec2.feature_extractor(example)
        _export(_Encoder(hf).eval(), example, out / "feature_encoder.onnx", WAVEFORM_INPUT, 800)
        _export(_Head(hf).eval(), feats, out / "model.onnx", "extract_features", 2)
        _quantize(out / "feature_encoder.onnx", out / "feature_encoder.int8.onnx")
        files["encoder"] = "feature_encoder.onnx"
        files["encoder_int8"] = "feature_encoder.int8.onnx"
    else:
        _export(_Full(hf).eval(), example, out / "model.onnx", WAVEFORM_INPUT, 800)
    _quantize(out / "model.onnx", out / "model.int8.onnx")
    return files


def _export_compact(hf: Any, example: Any, path: Path) -> None:
    """The compact model as one graph from ``input_values``: its CNN exported from ``log_mel``
    features, with the front end (:mod:`streamer.offline.onnx_frontend`, built from the
    checkpoint's own window and filterbank buffers) fused ahead of it."""
    import onnx

    from streamer.offline.onnx_frontend import fuse_front_end

    config = hf.config
    with torch.no_grad():
        feats = hf.log_mel(example)
    cnn_path = path.with_name(path.stem + ".cnn.onnx")
    try:
        _export(_LogMelHead(hf).eval(), feats, cnn_path, LOG_MEL_INPUT, 2)
        cnn = onnx.load(str(cnn_path))
    finally:
        cnn_path.unlink(missing_ok=True)
    taps = hf.window.detach().double().numpy()
    left = (config.n_fft - taps.size) // 2  # torch.stft pads a short window in the middle
    window = np.pad(taps, (left, config.n_fft - taps.size - left))
    fused = fuse_front_end(cnn, window=window, filterbank=hf.mel_fb.detach().double().numpy(),
                           hop_length=config.hop_length, feature_norm=config.feature_norm)
    for node in fused.graph.node:
        # the exporter's per-node stack traces name this checkout's paths and line numbers:
        # without them the same checkpoint gives the same bytes
        del node.metadata_props[:]
    onnx.save(fused, str(path))


def _new_manifest(source: Path | None, model_type: str, files: dict[str, Any],
                  model_input: str) -> dict[str, Any]:
    """The manifest before any check: files, source (None: in place, written ``"."``), the
    graphs' input, bounds and this machine."""
    return {
        "format": 1,
        "source": "." if source is None else str(source.resolve()),
        "model_type": model_type,
        "model_input": model_input,
        "files": files,
        "bounds": {"min_top1_agreement": MIN_TOP1_AGREEMENT,
                   "max_rel_logit_diff": MAX_REL_LOGIT_DIFF},
        "checked_on": "",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": 1,
            "load_1min": os.getloadavg()[0],
        },
        "checks": {},
    }


def _check_settings(out: Path, windows: NDArray[np.float32], *, repeats: int
                    ) -> dict[str, dict[str, Any]]:
    """Each setting of :data:`SETTINGS` loaded from ``out`` on one thread: its agreement with
    the first (fp32 torch) and its time per window, or why it is unavailable."""
    checks: dict[str, dict[str, Any]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference: NDArray[np.float32] | None = None
        # first-use optimisation (streamer.models.model_cache) sizes its progress bar from this
        logger.info("checking %d settings: %s", len(SETTINGS), ", ".join(SETTINGS))
        for key in SETTINGS:
            backend, precision = key.split("/")
            try:
                candidate = load_model(out, backend=backend, precision=precision,
                                       device="cpu", encoder_cache=False)
            except ModelError as exc:
                logger.info("%s: not available (%s)", key, exc)
                checks[key] = {"unavailable": str(exc)}
                continue
            candidate.set_worker_threads(1)
            logits = np.concatenate([candidate.logits(windows[i:i + 8])
                                     for i in range(0, len(windows), 8)])
            if reference is None:
                reference = logits
            checks[key] = _timed_check(candidate.logits, windows, agreement(reference, logits),
                                       repeats=repeats)
            logger.info("%s: top-1 agreement %.3f, rel logit diff %.4f, %.1f ms/window, "
                        "batch %d best%s", key, checks[key]["top1_agreement"],
                        checks[key]["rel_logit_diff"], checks[key]["ms_per_window"],
                        preferred_batch(checks[key]),
                        "" if within_bounds(checks[key]) else " (outside bounds)")
            del candidate
    finally:
        torch.set_num_threads(threads)
    return checks


def _timed_check(run: Any, windows: NDArray[np.float32], found: Agreement, *, repeats: int
                 ) -> dict[str, Any]:
    """One manifest check: ``found`` and the median time per window of ``run`` with 1 window
    per call and with each of :data:`BATCH_SIZES`."""
    ms = _median_ms(run, windows[:1], repeats)
    by_batch = {"1": ms}
    for size in BATCH_SIZES:  # per window, when `size` windows share one call
        if size <= len(windows):
            by_batch[str(size)] = _median_ms(run, windows[:size], max(2, repeats // 2)) / size
    return {
        "top1_agreement": found.top1_agreement,
        "rel_logit_diff": found.rel_logit_diff,
        "windows": found.windows,
        "ms_per_window": ms,
        "ms_per_window_by_batch": by_batch,
    }
