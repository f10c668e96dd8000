"""The one loading entry for every emotion model (main thread, at start-up).

:func:`load_model` finds the checkpoint (the compact model bundled in ``streamer/bundled``, a
local folder, a hub id already in the local Hugging Face cache, or a folder written by
``emotion-monitor optimize``), decides the backend and precision
(:func:`streamer.models.settings.choose_setting`), and builds one runner:

- :class:`~streamer.models.torch_runner.TorchRunner`: any transformers audio classifier
  (``AutoFeatureExtractor`` + ``AutoModelForAudioClassification``, the compact network
  included) in fp32, bf16/fp16 or dynamic int8;
- :class:`~streamer.models.onnx_runner.OnnxRunner`: the ONNX Runtime graphs of an optimize
  folder (the bundled model is one) in fp32 or int8.

It reads the checkpoint's config here and hands the runner what it needs as plain values:
label names (``config.id2label`` in id order), the sample rate, the calibration temperature,
the ``"narrowband"`` flag, the frame cache (on exactly where it is exact) and the batch size.
The runners never call back into this module. A loaded runner is used by the engine's worker
threads, several at once (see :mod:`streamer.models.runner`).

The ONNX path imports neither torch nor transformers: it reads ``config.json`` and
``preprocessor_config.json`` with :mod:`json` and prepares the graph's input in numpy
(:mod:`streamer.models.features`: samples as they are or normalised per window; the log-mel
features of a compact folder written before its front end became part of the graph), and
``device="auto"`` asks torch about GPUs only where one can be there (:func:`resolve_device`).
So the bundled model and any optimize folder run on an install without torch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, overload

from streamer.audio import MODEL_RATE_HZ
from streamer.errors import ModelError
from streamer.extras import import_extra, require_extra
from streamer.models.calibration import config_temperature
from streamer.models.encoder_cache import FrameCache, cache_exact_reason, encoder_geometry
from streamer.models.features import (
    LOG_MEL_INPUT,
    WAVEFORM_INPUT,
    LogMelFeatures,
    WaveformFeatures,
)
from streamer.models.model_cache import first_use_folder
from streamer.models.onnx_runner import OnnxFiles, OnnxRunner
from streamer.models.settings import (
    CUDA_BATCH,
    MANIFEST_NAME,
    MAX_REL_LOGIT_DIFF,
    MIN_TOP1_AGREEMENT,
    Choice,
    check_choice,
    choose_setting,
    preferred_batch,
    read_manifest,
    within_bounds,
)
from streamer.models.torch_runner import TorchRunner, prepare_module, splittable

__all__ = [
    "BUNDLED_MODEL_DIR",
    "BUNDLED_MODEL_NAME",
    "load_model",
    "narrowband_ok",
    "quiet_progress",
    "resolve_device",
]

logger = logging.getLogger(__name__)

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "bundled"
#: the bundled model's name: what logs, ``hello`` and ``/healthz`` show, and what ``--model``
#: takes for it (a local folder of that name is ``./bundled``)
BUNDLED_MODEL_NAME = "bundled"
_HUB_HOST = ("huggingface.co", 443)
_HUB_PROBE_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# Where a GPU that torch.cuda could use shows itself without torch: the NVIDIA driver lists one
# entry per GPU under /proc/driver/nvidia/gpus; device nodes of NVIDIA's driver, of WSL's GPU
# bridge and of ROCm (whose torch build answers torch.cuda too). None of them: no CUDA device.
_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
_GPU_NODES = (Path("/dev/nvidiactl"), Path("/dev/dxg"), Path("/dev/kfd"))
# feature extractors whose arithmetic streamer.models.features repeats in numpy
_WAVEFORM_EXTRACTORS = ("Wav2Vec2FeatureExtractor",)


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; other values are checked and kept.

    'auto' imports torch only where a CUDA GPU can be there (:func:`_cuda_possible`), so a
    machine without one, or without torch, loads ONNX models without importing it."""
    if device == "auto":
        if not _cuda_possible():
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        torch = import_extra("torch", purpose=f"model device {device!r}")

        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} requested but torch sees no CUDA GPU")
        return device
    raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked as None in sys.modules
        return False


def _cuda_possible() -> bool:
    """False when torch could not see a CUDA GPU: torch is not installed,
    ``CUDA_VISIBLE_DEVICES`` hides every device, or (on Linux) no GPU driver shows one
    (:data:`_GPU_NODES`). Elsewhere (Windows) torch is asked."""
    if not _installed("torch"):
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if not sys.platform.startswith("linux"):
        return sys.platform == "win32"  # macOS builds of torch have no CUDA
    try:
        if any(_NVIDIA_GPUS.iterdir()):
            return True
    except OSError:
        pass
    return any(node.exists() for node in _GPU_NODES)


def narrowband_ok(config: Any) -> bool:
    """True when a model config (transformers' or one read from config.json) says
    ``"narrowband": true`` (fit for 8 kHz phone audio)."""
    value = getattr(config, "narrowband", False)
    if not isinstance(value, bool):
        raise ModelError(f"config field narrowband must be true or false, got {value!r}")
    return value


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' per-file progress bars (loading/saving weights) inside the block."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# -- the entry --------------------------------------------------------------------------------


@overload
def load_model(
    name_or_path: str | Path | None = None,
    *,
    device: str = "auto",
    backend: Literal["torch"],
    precision: str | None = None,
    encoder_cache: bool | None = None,
    cache_dir: Path | None = None,
) -> TorchRunner: ...


@overload
def load_model(
    name_or_path: str | Path | None = None,
    *,
    device: str = "auto",
    backend: str | None = None,
    precision: str | None = None,
    encoder_cache: bool | None = None,
    cache_dir: Path | None = None,
) -> TorchRunner | OnnxRunner: ...


def load_model(
    name_or_path: str | Path | None = None,
    *,
    device: str = "auto",
    backend: str | None = None,
    precision: str | None = None,
    encoder_cache: bool | None = None,
    cache_dir: Path | None = None,
) -> TorchRunner | OnnxRunner:
    """Load a model (folder, optimize folder or hub id; ``None`` or ``"bundled"`` = the bundled
    model).

    A hub id is looked up in the local cache first; when it is not cached and the hub cannot be
    reached (no network, or ``HF_HUB_OFFLINE=1``) this fails at once with a ModelError that says
    to pass a local folder.

    ``backend`` (auto, torch, onnx; None = auto) and ``precision`` (auto, fp32, bf16, int8;
    None = auto) pick the runner (:mod:`streamer.models.settings`): on CUDA torch in bfloat16
    (float16 where bfloat16 is not supported), on CPU fp32 torch for a plain checkpoint and
    the fastest setting within the agreement bounds for an optimize folder (ONNX first; the
    bundled model is such a folder, so it loads without torch).
    ``encoder_cache`` None = the frame cache on exactly where it is exact; True forces it (a
    ModelError where it is not exact), False leaves it off.
    ``cache_dir`` (None = off): with backend auto on CPU, a plain checkpoint is optimised on
    first use into this cache folder and loaded from there (:mod:`streamer.models.model_cache`).
    """
    backend, precision = backend or "auto", precision or "auto"
    check_choice(backend, precision)
    where = _locate(name_or_path)
    resolved = resolve_device(device)
    manifest = read_manifest(where.folder) if where.folder is not None else None
    if cache_dir is not None and manifest is None and where.folder != BUNDLED_MODEL_DIR:
        optimized = first_use_folder(where.source, where.folder, cache_dir=cache_dir,
                                     backend=backend, precision=precision, device=resolved)
        if optimized is not None:
            where = _Where(str(optimized), where.name, optimized)
            manifest = read_manifest(optimized)
    choice = choose_setting(backend, precision, resolved, manifest)
    check: dict[str, Any] | None = (manifest or {}).get("checks", {}).get(choice.key)
    if check is not None and "top1_agreement" in check and not within_bounds(check):
        logger.warning(
            "%s is outside the agreement bounds for %s (top-1 agreement %.3f < %.2f or "
            "rel logit diff %.4f > %.2f)", choice.key, where.name, check["top1_agreement"],
            MIN_TOP1_AGREEMENT, check["rel_logit_diff"], MAX_REL_LOGIT_DIFF,
        )
    batch = CUDA_BATCH if resolved != "cpu" else preferred_batch(check or {})
    model: TorchRunner | OnnxRunner
    if choice.backend == "onnx":
        model = _onnx_runner(where, manifest, choice.precision, batch=batch, cache=encoder_cache)
    else:
        require_extra("torch", "transformers", purpose=f"running {where.name} with torch")
        source = where if manifest is None else _source_of(where, manifest)
        model = _torch_runner(source, where.name, resolved, choice.precision, batch=batch,
                              cache=encoder_cache)
    _log_loaded(model, choice)
    return model


def _log_loaded(model: TorchRunner | OnnxRunner, choice: Choice) -> None:
    logger.info(
        "loaded model %s (%d labels) on %s: backend %s, precision %s (%s); temperature %.3g, "
        "%s; encoder cache %s%s", model.name, len(model.labels), model.device, model.backend,
        model.precision, choice.reason, model.temperature,
        "narrowband ok" if model.narrowband_ok else "wideband only",
        "on" if model.encoder_cache is not None else "off",
        f"; up to {model.preferred_batch} window(s) per call" if model.device == "cpu" else "",
    )


# -- finding the checkpoint -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Where:
    """A checkpoint to load: what transformers reads, its name for logs and ``hello``, and the
    local folder (None for a hub id)."""

    source: str
    name: str
    folder: Path | None


def _locate(name_or_path: str | Path | None) -> _Where:
    """The bundled model (None or the string ``"bundled"``), a local folder with a config.json,
    or a hub-id-shaped string."""
    if name_or_path is None or (
        isinstance(name_or_path, str) and name_or_path.strip() == BUNDLED_MODEL_NAME
    ):
        if not (BUNDLED_MODEL_DIR / "config.json").is_file():
            raise ModelError(f"the bundled model is missing from {BUNDLED_MODEL_DIR}")
        return _Where(str(BUNDLED_MODEL_DIR), BUNDLED_MODEL_NAME, BUNDLED_MODEL_DIR)
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a model folder (no config.json)")
        return _Where(str(path), text, path)
    # 'owner/name' or 'name' shaped, not a relative or absolute path
    if isinstance(name_or_path, Path) or not _HUB_ID.match(text) or path.exists():
        raise ModelError(f"{text}: no such model folder")
    return _Where(text, text, None)


def _source_of(where: _Where, manifest: dict[str, Any]) -> _Where:
    """The torch checkpoint an optimize folder was made from (its graphs are ONNX only). A
    relative source is relative to the folder: ``"."`` (the bundled model) is the folder
    itself, optimised in place."""
    source = manifest.get("source")
    folder = where.folder
    path = None if not source or folder is None else folder / str(source)
    if path is None or folder is None or not (path / "config.json").is_file():
        raise ModelError(
            f"{where.source} holds ONNX models only and its source checkpoint {source!r} is "
            "gone: use --backend onnx, or --model the source checkpoint"
        )
    if path.resolve() == folder.resolve():
        return where
    return _Where(str(path), where.name, path)


# -- building a runner ------------------------------------------------------------------------


def _torch_runner(
    where: _Where, name: str, device: str, precision: str, *, batch: int, cache: bool | None
) -> TorchRunner:
    """Read a transformers checkpoint and put it on ``device`` in ``precision``."""
    from streamer.models.compact import register_compact

    register_compact()
    extractor, module = _read_checkpoint(where)
    rate = _checked_rate(extractor, where.source)
    module = prepare_module(module.eval(), device=device, precision=precision)
    config = module.config
    return TorchRunner(
        name=name, labels=_labels(config), sample_rate_hz=rate, device=device, model=module,
        feature_extractor=extractor, precision=precision,
        temperature=config_temperature(config), narrowband_ok=narrowband_ok(config),
        encoder_cache=_frame_cache(config, extractor, splittable(module), cache, name),
        preferred_batch=batch,
    )


def _onnx_runner(
    where: _Where, manifest: dict[str, Any] | None, precision: str, *, batch: int,
    cache: bool | None,
) -> OnnxRunner:
    """Open the ONNX graphs of an optimize folder; its config.json gives labels and flags,
    read without transformers (:func:`_read_configs`), and the manifest's ``model_input`` the
    numpy front end (:func:`_features`)."""
    folder = where.folder
    if manifest is None or folder is None:
        raise ModelError(
            f"{where.source}: no ONNX model here; write one with "
            f"'emotion-monitor optimize --model {where.source} --out DIR' and use --model DIR"
        )
    if not manifest["files"].get(precision):
        raise ModelError(f"{folder}: no ONNX {precision} model in {MANIFEST_NAME} (it lists "
                         f"{', '.join(k for k in ('fp32', 'int8') if manifest['files'].get(k))})")
    config, preprocessor = _read_configs(folder)
    extractor = _features(manifest, config, preprocessor, folder)
    settings = SimpleNamespace(**config)  # what the config helpers read, as attributes
    files = OnnxFiles.from_manifest(folder, manifest, precision)
    return OnnxRunner(
        files, name=where.name, labels=_labels(settings),
        sample_rate_hz=_checked_rate(extractor, str(folder)), feature_extractor=extractor,
        precision=precision, model_type=config.get("model_type"),
        temperature=config_temperature(settings), narrowband_ok=narrowband_ok(settings),
        encoder_cache=_frame_cache(settings, extractor, files.encoder is not None, cache,
                                   where.name),
        preferred_batch=batch,
    )


def _read_configs(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config.json`` and ``preprocessor_config.json`` of ``folder`` as dicts."""
    found = []
    for name in ("config.json", "preprocessor_config.json"):
        path = folder / name
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: cannot read it ({_first_line(exc)})") from exc
        if not isinstance(value, dict):
            raise ModelError(f"{path}: not a JSON object")
        found.append(value)
    return found[0], found[1]


def _features(manifest: dict[str, Any], config: dict[str, Any], preprocessor: dict[str, Any],
              folder: Path) -> LogMelFeatures | WaveformFeatures:
    """The numpy front end for the graph's input: ``input_values`` (raw samples, normalised
    per window where ``do_normalize``; the compact model's graph computes its log-mel itself)
    or ``log_mel`` (the CNN alone, in compact folders written before that)."""
    model_input = manifest.get("model_input", WAVEFORM_INPUT)
    if model_input == LOG_MEL_INPUT:
        return LogMelFeatures.from_config(config)
    if model_input != WAVEFORM_INPUT:
        raise ModelError(f"{folder}: unknown model_input {model_input!r} in {MANIFEST_NAME} "
                         f"(expected {WAVEFORM_INPUT} or {LOG_MEL_INPUT})")
    kind = preprocessor.get("feature_extractor_type", _WAVEFORM_EXTRACTORS[0])
    if kind not in _WAVEFORM_EXTRACTORS:
        raise ModelError(f"{folder}: feature extractor {kind!r} is not supported without "
                         f"torch (supported: {', '.join(_WAVEFORM_EXTRACTORS)})")
    return WaveformFeatures.from_preprocessor(preprocessor)


def _labels(config: Any) -> tuple[str, ...]:
    """Label names in id order, from a transformers config or one read from config.json
    (whose ``id2label`` keys are strings)."""
    id2label = getattr(config, "id2label", None)
    if not isinstance(id2label, dict) or not id2label:
        raise ModelError("the model config has no id2label")
    try:
        ordered = sorted((int(k), str(v)) for k, v in id2label.items())
    except ValueError as exc:
        raise ModelError(f"id2label keys must be class ids, got {list(id2label)}") from exc
    return tuple(label for _, label in ordered)


def _checked_rate(extractor: Any, source: str) -> int:
    rate = int(getattr(extractor, "sampling_rate", MODEL_RATE_HZ) or MODEL_RATE_HZ)
    if rate != MODEL_RATE_HZ:
        raise ModelError(f"{source}: expects {rate} Hz audio; only {MODEL_RATE_HZ} Hz is supported")
    return rate


def _frame_cache(
    config: Any, extractor: Any, split: bool, wanted: bool | None, name: str
) -> FrameCache | None:
    """Frame cache on where exact (``wanted`` None), or as forced; ModelError when impossible."""
    if wanted is False:
        return None
    reason = cache_exact_reason(config, extractor)
    if reason is None and not split:
        reason = "the model is not split into conv encoder + head"
    if reason is not None:
        if wanted:
            raise ModelError(f"encoder cache not exact for {name}: {reason}")
        logger.debug("encoder cache off for %s: %s", name, reason)
        return None
    return FrameCache(encoder_geometry(config))


# -- reading a transformers checkpoint --------------------------------------------------------


def _read_checkpoint(where: _Where) -> tuple[Any, Any]:
    """Feature extractor and model of a local folder, or of a hub id (cache first, then the
    hub when it can be reached)."""
    if where.folder is not None:
        return _load_parts(where.source, local_only=True)
    try:
        return _load_parts(where.source, local_only=True)
    except ModelError as cached_exc:
        if not _hub_reachable():
            raise ModelError(
                f"{where.source}: not in the local Hugging Face cache and the hub is "
                "unreachable (offline); download it elsewhere and pass its local folder "
                "instead, e.g. --model ./my-model"
            ) from cached_exc
        return _load_parts(where.source, local_only=False)


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(_HUB_HOST, timeout=_HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _load_parts(source: str, *, local_only: bool) -> tuple[Any, Any]:
    """Config check, then feature extractor and model; transformers errors -> ModelError."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING

    with quiet_progress():
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{source}: cannot read a model config ({_first_line(exc)})"
                             ) from exc
        if type(config) not in set(MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING.keys()):
            raise ModelError(
                f"{source}: not an audio classifier (model_type {config.model_type!r} has no "
                "audio-classification head in transformers)"
            )
        try:
            extractor = AutoFeatureExtractor.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{source}: no usable feature extractor (preprocessor_config.json "
                             "missing or invalid)") from exc
        try:
            model = AutoModelForAudioClassification.from_pretrained(
                source, config=config, local_files_only=local_only
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(f"{source}: cannot load the model weights ({_first_line(exc)})"
                             ) from exc
    return extractor, model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
