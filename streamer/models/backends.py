"""Inference backends: torch (fp32, bf16, int8) and ONNX Runtime (fp32, int8), and ``auto``.

Loaded on the main thread, then used by the engine's inference worker(s). Every model here has
the interface the engine needs (``name``, ``labels``, ``sample_rate_hz``, ``device``,
``predict_proba``) plus ``backend``, ``precision`` and ``encoder_cache`` (a
:class:`~streamer.models.encoder_cache.FrameCache` or None), and ``set_worker_threads(n)``, which
each engine worker calls once at start (ONNX Runtime sessions are built with
``intra_op_num_threads = n``; torch threads are set by the engine itself).

Choosing (``auto``): on CUDA, torch in half precision (bfloat16 where supported), with the
engine batching windows across streams. On CPU, a folder written by ``emotion-monitor
optimize`` holds an ``optimize.json`` with, for each backend/precision, its agreement with fp32
torch and its measured time per window on the machine that optimised it; ``auto`` takes the
fastest setting within the documented bounds (:data:`MIN_TOP1_AGREEMENT`,
:data:`MAX_REL_LOGIT_DIFF`). A plain checkpoint has no such numbers, so ``auto`` keeps torch
fp32 there. Explicit choices are honoured, with a warning when a measured setting is outside
the bounds. The choice is logged at INFO. The manifest also holds each setting's time per
window with 2 and 4 windows per call; :func:`preferred_batch` turns that into the model's
``preferred_batch``, the engine's batch size on CPU.

Thread-safety: ``predict_proba`` may be called from several workers at once (torch modules in
inference mode and ONNX Runtime sessions allow that; the frame cache has its own lock).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ
from streamer.errors import ModelError
from streamer.models.calibration import config_temperature
from streamer.models.encoder_cache import FrameCache, cache_exact_reason, encoder_geometry
from streamer.models.loading import EmotionModel, check_windows, narrowband_ok

__all__ = [
    "BACKENDS",
    "MANIFEST_NAME",
    "MAX_REL_LOGIT_DIFF",
    "MIN_TOP1_AGREEMENT",
    "PRECISIONS",
    "BackendModel",
    "Choice",
    "check_choice",
    "choose_setting",
    "load_backend",
    "preferred_batch",
    "within_bounds",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16", "int8")
ONNX_PRECISIONS = ("fp32", "int8")
MANIFEST_NAME = "optimize.json"
# A setting is "correct" for auto when, on the windows checked at optimize time, it agrees with
# fp32 torch on the top-1 label of at least 98% of them AND its logits differ from fp32 torch's
# by at most 10% in relative Frobenius norm (the second bound matters for untrained models,
# whose near-tied logits make top-1 agreement noisy).
MIN_TOP1_AGREEMENT = 0.98
MAX_REL_LOGIT_DIFF = 0.10
# Batching windows on CPU is used only where optimize measured it at least 5 % cheaper per
# window than one window per call (session 3: wav2vec2-large and the compact model clearly,
# wav2vec2-base int8 at the edge; docs/performance.md).
MIN_BATCH_GAIN = 0.05


@dataclass(frozen=True, slots=True)
class Choice:
    """A backend/precision pair and why it was chosen."""

    backend: str
    precision: str
    reason: str = ""

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.precision}"


def check_choice(backend: str, precision: str) -> None:
    """ModelError naming the bad value and the allowed ones."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if backend == "onnx" and precision not in ONNX_PRECISIONS + ("auto",):
        raise ModelError(f"backend onnx runs {' or '.join(ONNX_PRECISIONS)}, not {precision!r}")


def preferred_batch(check: dict[str, Any]) -> int:
    """Windows per call for one optimize check on CPU: the batch size with the least measured
    time per window, when it beats one window per call by :data:`MIN_BATCH_GAIN`; else 1."""
    measured = {int(size): float(ms) for size, ms in
                (check.get("ms_per_window_by_batch") or {}).items()}
    single = measured.get(1)
    if not single or len(measured) < 2:
        return 1
    best = min(measured, key=lambda size: (measured[size], size))
    return best if measured[best] <= (1.0 - MIN_BATCH_GAIN) * single else 1


def within_bounds(check: dict[str, Any]) -> bool:
    """True when a manifest check entry meets both agreement bounds."""
    return (
        float(check.get("top1_agreement", 0.0)) >= MIN_TOP1_AGREEMENT
        and float(check.get("rel_logit_diff", float("inf"))) <= MAX_REL_LOGIT_DIFF
    )


# -- the model wrapper ------------------------------------------------------------------------

Logits = Callable[[NDArray[np.float32]], NDArray[np.float32]]


@dataclass(eq=False)
class BackendModel(EmotionModel):
    """An emotion classifier on one backend/precision (see the module docstring); ``model`` is
    the torch module on the torch backend and None on ONNX Runtime."""

    backend: str = "torch"
    precision: str = "fp32"
    runner: Any = field(default=None, repr=False)  # _TorchRunner or _OnnxRunner
    encoder_cache: FrameCache | None = field(default=None, repr=False)
    preferred_batch: int = 1  # windows per call the engine uses on CPU (optimize measured)

    def set_worker_threads(self, threads: int) -> None:
        """Called by each engine worker at start: intra-op threads for this backend."""
        self.runner.set_threads(threads)

    def logits(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        """(batch, samples) float32 mono at 16 kHz -> (batch, n_labels) float32 logits."""
        check_windows(windows)
        inputs = self.feature_extractor(
            windows, sampling_rate=self.sample_rate_hz, return_tensors="np"
        )
        values = np.ascontiguousarray(inputs["input_values"], dtype=np.float32)
        if self.encoder_cache is not None and self.runner.split:
            feats = self.encoder_cache.features(values, self.runner.encode)
            return self.runner.head(feats)
        return self.runner.full(values)

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        """(batch, samples) float32 mono at 16 kHz -> (batch, n_labels) probabilities."""
        logits = self.logits(windows).astype(np.float64) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def splittable(model: Any) -> bool:
    """A wav2vec2 classifier whose conv encoder and the rest can run as two parts."""
    config = model.config
    return (
        getattr(config, "model_type", None) == "wav2vec2"
        and hasattr(model, "wav2vec2")
        and hasattr(model, "projector")
        and not getattr(config, "use_weighted_layer_sum", False)
    )


def wav2vec2_head(model: Any, extract_features: Any) -> Any:
    """Logits from conv features (batch, channels, frames): Wav2Vec2Model.forward after the
    conv encoder, then the sequence-classification head (mean pooling, no attention mask)."""
    w2v = model.wav2vec2
    hidden, _ = w2v.feature_projection(extract_features.transpose(1, 2))
    hidden = w2v.encoder(hidden).last_hidden_state
    if w2v.adapter is not None:
        hidden = w2v.adapter(hidden)
    return model.classifier(model.projector(hidden).mean(dim=1))


class _TorchRunner:
    """A torch module on CPU or CUDA in one dtype; int8 = dynamic int8 Linear layers."""

    def __init__(self, model: Any, device: str, precision: str) -> None:
        import torch

        self.device = device
        self.split = splittable(model)
        if precision == "int8":
            if device != "cpu":
                raise ModelError("torch int8 runs on CPU only; use --model-device cpu")
            if getattr(model.config, "model_type", None) == "emotion-compact":
                raise ModelError("torch int8 quantises Linear layers; the compact model is a CNN "
                                 "(use onnx int8 or fp32)")
            import warnings

            with warnings.catch_warnings():
                # torch.ao.quantization announces its future move to torchao; still works
                warnings.filterwarnings("ignore", category=DeprecationWarning,
                                        message=r"torch\.ao\.quantization is deprecated")
                warnings.filterwarnings("ignore", category=UserWarning,
                                        message=r"torch\.quantize_per_tensor")
                model = torch.ao.quantization.quantize_dynamic(
                    model, {torch.nn.Linear}, dtype=torch.qint8
                )
            self.dtype = torch.float32
        elif precision == "bf16":
            self.dtype = torch.bfloat16
        elif precision == "fp16":
            self.dtype = torch.float16
        else:
            self.dtype = torch.float32
        if precision != "int8":
            model = model.to(device=device, dtype=self.dtype)
        self.model = model.eval()

    def set_threads(self, threads: int) -> None:
        pass  # the engine sets torch's intra-op threads in each worker

    def _tensor(self, values: NDArray[np.float32]) -> Any:
        import torch

        return torch.from_numpy(values).to(self.device, self.dtype)

    def full(self, values: NDArray[np.float32]) -> NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            logits = self.model(input_values=self._tensor(values)).logits
        return logits.float().cpu().numpy()

    def encode(self, values: NDArray[np.float32]) -> NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            feats = self.model.wav2vec2.feature_extractor(self._tensor(values))
        return feats.float().cpu().numpy()

    def head(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            logits = wav2vec2_head(self.model, self._tensor(feats))
        return logits.float().cpu().numpy()


# ONNX Runtime graph optimisations left off: its fused SkipLayerNormalization kernel took 8.9 of
# a wav2vec2-base window's 88 ms on one thread (25 calls), the unfused Add + LayerNormalization
# about a quarter of that (docs/performance.md, session 3). Same arithmetic either way.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def onnx_session(path: Path, options: Any) -> Any:
    """An ONNX Runtime CPU session for ``path`` as the engine runs it."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


class _OnnxRunner:
    """ONNX Runtime sessions (CPU): one full graph, or conv encoder + head for wav2vec2."""

    def __init__(self, folder: Path, manifest: dict[str, Any], precision: str) -> None:
        files = manifest["files"]
        self.model_path = folder / files[precision]
        self.encoder_path = folder / files["encoder"] if files.get("encoder") else None
        # the conv encoder for whole windows in this precision (older manifests: fp32 only);
        # frames for the cache always come from the fp32 encoder, whose output for a frame does
        # not depend on the other frames (int8 activation scales are per call)
        own = files.get(f"encoder_{precision}") if precision != "fp32" else None
        self.full_encoder_path = folder / own if own else self.encoder_path
        self.split = self.encoder_path is not None
        for path in (self.model_path, self.encoder_path, self.full_encoder_path):
            if path is not None and not path.is_file():
                raise ModelError(f"{path}: missing (re-run emotion-monitor optimize)")
        self._lock = threading.Lock()
        self.threads = 0
        self.session: Any = None
        self.encoder_session: Any = None
        self.full_encoder_session: Any = None
        self.set_threads(1)

    def set_threads(self, threads: int) -> None:
        import onnxruntime as ort

        with self._lock:
            if threads == self.threads:
                return
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            try:
                self.session = onnx_session(self.model_path, options)
                if self.encoder_path is not None:
                    self.encoder_session = onnx_session(self.encoder_path, options)
                self.full_encoder_session = self.encoder_session
                if self.full_encoder_path not in (None, self.encoder_path):
                    self.full_encoder_session = onnx_session(self.full_encoder_path, options)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise ModelError(f"{self.model_path}: cannot load ({first})") from exc
            self.threads = threads
            self.session_options = options

    def full(self, values: NDArray[np.float32]) -> NDArray[np.float32]:
        if self.split:
            feats = self.full_encoder_session.run(None, {"input_values": values})[0]
            return self.head(np.asarray(feats, np.float32))
        return np.asarray(self.session.run(None, {"input_values": values})[0], np.float32)

    def encode(self, values: NDArray[np.float32]) -> NDArray[np.float32]:
        out = self.encoder_session.run(None, {"input_values": values})[0]
        return np.asarray(out, np.float32)

    def head(self, feats: NDArray[np.float32]) -> NDArray[np.float32]:
        out = self.session.run(None, {"extract_features": np.ascontiguousarray(feats)})[0]
        return np.asarray(out, np.float32)


# -- loading ----------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The optimize manifest of a folder, or None when it has none."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or "files" not in manifest:
            raise ValueError("no 'files' entry")
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable optimize manifest ({exc})") from exc
    return manifest


def choose_setting(
    backend: str, precision: str, device: str, manifest: dict[str, Any] | None
) -> Choice:
    """Resolve the ``auto`` parts from the device and an optimize manifest (module docstring)."""
    if device != "cpu":
        if backend == "onnx":
            raise ModelError("backend onnx runs on CPU only here; use --model-device cpu")
        if precision == "int8":
            raise ModelError("int8 runs on CPU only; use --model-device cpu")
        import torch

        half = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        chosen = half if precision == "auto" else precision
        return Choice("torch", chosen, f"{device}: torch in {chosen}, windows batched")
    checks: dict[str, Any] = (manifest or {}).get("checks", {})
    if backend != "auto" and precision != "auto":
        return Choice(backend, precision, "as requested")
    available = [
        key for key, check in checks.items()
        if within_bounds(check)
        and (backend == "auto" or key.startswith(backend + "/"))
        and (precision == "auto" or key.endswith("/" + precision))
        and check.get("ms_per_window") is not None
    ]
    if available:
        best = min(available, key=lambda key: float(checks[key]["ms_per_window"]))
        b, p = best.split("/")
        c = checks[best]
        ref = checks.get("torch/fp32", {}).get("ms_per_window")
        return Choice(b, p, (
            f"fastest within bounds: {c['ms_per_window']:.1f} ms/window "
            f"(torch fp32 {ref if ref is None else round(float(ref), 1)}), top-1 agreement "
            f"{c['top1_agreement']:.3f}, rel logit diff {c['rel_logit_diff']:.4f}"
        ))
    b = backend if backend != "auto" else ("onnx" if manifest is not None else "torch")
    if b == "torch" and precision == "auto" and manifest is not None:
        return Choice("torch", "fp32", "the reference")
    p = precision if precision != "auto" else "fp32"
    why = "no measured setting within bounds" if manifest else (
        "no optimize.json here (run emotion-monitor optimize for ONNX / int8 choices)")
    return Choice(b, p, why)


def load_backend(
    name_or_path: str | Path | None = None,
    *,
    backend: str = "auto",
    precision: str = "auto",
    device: str = "auto",
    encoder_cache: bool | None = None,
) -> BackendModel:
    """Load a model on a backend/precision; ``encoder_cache`` None = on exactly where exact."""
    from streamer.models.loading import BUNDLED_MODEL_DIR, load_model, resolve_device

    check_choice(backend, precision)
    resolved = resolve_device(device)
    folder = BUNDLED_MODEL_DIR if name_or_path is None else Path(name_or_path).expanduser()
    manifest = read_manifest(folder) if folder.is_dir() else None
    choice = choose_setting(backend, precision, resolved, manifest)
    if manifest is not None and choice.key in manifest.get("checks", {}):
        check = manifest["checks"][choice.key]
        if "top1_agreement" in check and not within_bounds(check):
            logger.warning(
                "%s is outside the agreement bounds for %s (top-1 agreement %.3f < %.2f or "
                "rel logit diff %.4f > %.2f)", choice.key, folder, check["top1_agreement"],
                MIN_TOP1_AGREEMENT, check["rel_logit_diff"], MAX_REL_LOGIT_DIFF,
            )
    name = "bundled" if name_or_path is None else str(name_or_path)
    if choice.backend == "onnx":
        model = _load_onnx(folder, manifest, choice, name)
    else:
        source: str | Path | None = name_or_path
        if manifest is not None:
            source = manifest.get("source")
            if not source or not (Path(source) / "config.json").is_file():
                raise ModelError(
                    f"{folder} holds ONNX models only and its source checkpoint {source!r} is "
                    "gone: use --backend onnx, or --model the source checkpoint"
                )
        base = load_model(source, device=resolved, backend="torch", precision="fp32")
        runner = _TorchRunner(base.model, resolved, choice.precision)
        model = BackendModel(
            name=name, labels=base.labels, sample_rate_hz=base.sample_rate_hz,
            device=resolved, model=runner.model, feature_extractor=base.feature_extractor,
            backend="torch", precision=choice.precision, runner=runner,
            temperature=base.temperature, narrowband_ok=base.narrowband_ok,
        )
    _attach_cache(model, encoder_cache)
    if resolved == "cpu" and manifest is not None and choice.key in manifest.get("checks", {}):
        model.preferred_batch = preferred_batch(manifest["checks"][choice.key])
    logger.info(
        "model %s: backend %s, precision %s (%s); encoder cache %s%s",
        name, model.backend, model.precision, choice.reason,
        "on" if model.encoder_cache is not None else "off",
        f"; up to {model.preferred_batch} window(s) per call" if resolved == "cpu" else "",
    )
    return model


def _load_onnx(
    folder: Path, manifest: dict[str, Any] | None, choice: Choice, name: str
) -> BackendModel:
    if manifest is None:
        raise ModelError(
            f"{folder}: no ONNX model here; write one with "
            f"'emotion-monitor optimize --model {folder} --out DIR' and use --model DIR"
        )
    if choice.precision not in manifest["files"]:
        raise ModelError(f"{folder}: no ONNX {choice.precision} model in {MANIFEST_NAME}")
    from transformers import AutoConfig, AutoFeatureExtractor

    from streamer.models.compact import register_compact

    register_compact()
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        extractor = AutoFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{folder}: cannot read config/preprocessor ({exc})") from exc
    rate = int(getattr(extractor, "sampling_rate", MODEL_RATE_HZ) or MODEL_RATE_HZ)
    if rate != MODEL_RATE_HZ:
        raise ModelError(f"{folder}: expects {rate} Hz audio; only {MODEL_RATE_HZ} Hz is supported")
    labels = tuple(str(config.id2label[i]) for i in sorted(int(k) for k in config.id2label))
    runner = _OnnxRunner(folder, manifest, choice.precision)
    model = BackendModel(
        name=name, labels=labels, sample_rate_hz=rate, device="cpu", model=None,
        feature_extractor=extractor, backend="onnx", precision=choice.precision, runner=runner,
        temperature=config_temperature(config), narrowband_ok=narrowband_ok(config),
    )
    model.config = config  # type: ignore[attr-defined]
    return model


def _attach_cache(model: BackendModel, wanted: bool | None) -> None:
    """Frame cache on where exact (``wanted`` None), or as forced; ModelError when impossible."""
    config = getattr(model, "config", None)
    if config is None and isinstance(model.runner, _TorchRunner):
        config = model.runner.model.config
    reason = cache_exact_reason(config, model.feature_extractor)
    if reason is None and not model.runner.split:
        reason = "the model is not split into conv encoder + head"
    if wanted is False:
        return
    if reason is not None:
        if wanted:
            raise ModelError(f"encoder cache not exact for {model.name}: {reason}")
        logger.debug("encoder cache off for %s: %s", model.name, reason)
        return
    model.encoder_cache = FrameCache(encoder_geometry(config))
