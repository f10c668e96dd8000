"""One loading path for every emotion model (loaded on the main thread, used by one inference
thread).

:func:`load_model` reads any Hugging Face audio-classification checkpoint (a local folder or a
hub id already in the local cache) with ``AutoFeatureExtractor`` +
``AutoModelForAudioClassification`` and wraps it as an :class:`EmotionModel`: label names from
``config.id2label`` in id order, the model sample rate, and :meth:`EmotionModel.predict_proba`
for batches of mono float32 windows. With no argument it loads the compact model bundled in
``streamer/bundled``.

An ``EmotionModel`` is not thread-safe: one inference thread owns it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ
from streamer.errors import AudioError, ModelError
from streamer.models.calibration import config_temperature

__all__ = ["BUNDLED_MODEL_DIR", "EmotionModel", "load_model", "narrowband_ok", "resolve_device"]

logger = logging.getLogger(__name__)

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "bundled"
_HUB_HOST = ("huggingface.co", 443)
_HUB_PROBE_TIMEOUT_S = 3.0


def check_windows(windows: object) -> None:
    """Raise AudioError unless ``windows`` is a non-empty (batch, samples) float32 array."""
    if not isinstance(windows, np.ndarray):
        raise AudioError(f"windows must be a numpy array, got {type(windows).__name__}")
    if windows.ndim != 2:
        raise AudioError(
            f"windows must have shape (batch, samples), got {windows.ndim}-D {windows.shape}"
        )
    if windows.dtype != np.float32:
        raise AudioError(f"windows must be float32, got {windows.dtype}")
    if windows.shape[0] == 0 or windows.shape[1] == 0:
        raise AudioError(f"windows must not be empty, got shape {windows.shape}")


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; other values are checked and kept."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" or device.startswith("cuda"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError(f"device {device!r} requested but torch sees no CUDA GPU")
        return device
    raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


@dataclass(eq=False)
class EmotionModel:
    """A loaded audio classifier: ``predict_proba`` maps 16 kHz windows to class probabilities."""

    name: str
    labels: tuple[str, ...]
    sample_rate_hz: int
    device: str
    model: Any = field(repr=False)
    feature_extractor: Any = field(repr=False)
    # calibration: logits are divided by this before the softmax (streamer.models.calibration)
    temperature: float = 1.0
    # config.json "narrowband": true = trained/measured on phone-line (8 kHz) audio too
    narrowband_ok: bool = False

    def predict_proba(self, windows: NDArray[np.float32]) -> NDArray[np.float32]:
        """(batch, samples) float32 mono audio at ``sample_rate_hz`` -> (batch, n_labels) rows."""
        import torch

        check_windows(windows)
        inputs = self.feature_extractor(
            windows, sampling_rate=self.sample_rate_hz, return_tensors="pt"
        )
        dtype = next(self.model.parameters()).dtype
        tensors = {
            key: (
                value.to(self.device, dtype) if value.is_floating_point() else value.to(self.device)
            )
            for key, value in inputs.items()
            if key in ("input_values", "input_features", "attention_mask")
        }
        with torch.inference_mode():
            logits = self.model(**tensors).logits
        probs = torch.softmax(logits.float() / self.temperature, dim=-1).cpu().numpy()
        return probs.astype(np.float32, copy=False)


def narrowband_ok(config: Any) -> bool:
    """True when a model config says ``"narrowband": true`` (fit for 8 kHz phone audio)."""
    value = getattr(config, "narrowband", False)
    if not isinstance(value, bool):
        raise ModelError(f"config field narrowband must be true or false, got {value!r}")
    return value


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _is_hub_id(text: str) -> bool:
    """'owner/name' or 'name' shaped, not a relative or absolute path."""
    return bool(_HUB_ID.match(text))


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(_HUB_HOST, timeout=_HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _audio_classifier_config_types() -> set[type]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING

    return set(MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING.keys())


def _wants_backend(
    name_or_path: str | Path | None, backend: str | None, precision: str | None
) -> bool:
    """Anything but the plain torch path: a backend/precision other than torch/fp32 was asked
    for, or the folder is an ``optimize`` output (it holds ONNX files, not torch weights)."""
    if backend not in (None, "torch") or precision not in (None, "fp32"):
        return True
    if name_or_path is None:
        return False
    return (Path(name_or_path).expanduser() / "optimize.json").is_file()


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


def _load_parts(source: str, *, local_only: bool) -> tuple[Any, Any]:
    """Config check, then feature extractor and model; transformers errors -> ModelError."""
    with quiet_progress():
        return _load_parts_noisy(source, local_only=local_only)


def _load_parts_noisy(source: str, *, local_only: bool) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{source}: cannot read a model config ({first})") from exc
    if type(config) not in _audio_classifier_config_types():
        raise ModelError(
            f"{source}: not an audio classifier (model_type {config.model_type!r} has no "
            "audio-classification head in transformers)"
        )
    try:
        extractor = AutoFeatureExtractor.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"{source}: no usable feature extractor (preprocessor_config.json missing or invalid)"
        ) from exc
    try:
        model = AutoModelForAudioClassification.from_pretrained(
            source, config=config, local_files_only=local_only
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{source}: cannot load the model weights ({first})") from exc
    return extractor, model


def load_model(
    name_or_path: str | Path | None = None,
    *,
    device: str = "auto",
    backend: str | None = None,
    precision: str | None = None,
) -> EmotionModel:
    """Load an audio-classification checkpoint (folder or hub id); ``None`` = the bundled model.

    A hub id is looked up in the local cache first; when it is not cached and the hub cannot be
    reached (no network, or ``HF_HUB_OFFLINE=1``) this fails at once with a ModelError that says
    to pass a local folder. On CUDA the weights run in bfloat16 (or float16 where bfloat16 is
    not supported); on CPU in float32.

    ``backend`` (auto, torch, onnx) and ``precision`` (auto, fp32, bf16, int8) pick another
    backend (:mod:`streamer.models.backends`); a folder written by ``emotion-monitor optimize``
    loads with ``auto`` unless told otherwise.
    """
    import torch

    if _wants_backend(name_or_path, backend, precision):
        from streamer.models.backends import load_backend

        return load_backend(name_or_path, backend=backend or "auto",
                            precision=precision or "auto", device=device)

    from streamer.models.compact import register_compact

    register_compact()
    is_hub = False
    if name_or_path is None:
        source, name = str(BUNDLED_MODEL_DIR), "bundled"
        if not (BUNDLED_MODEL_DIR / "config.json").is_file():
            raise ModelError(f"the bundled model is missing from {BUNDLED_MODEL_DIR}")
    else:
        text = str(name_or_path)
        path = Path(text).expanduser()
        if path.is_dir():
            source, name = str(path), text
            if not (path / "config.json").is_file():
                raise ModelError(f"{path}: not a model folder (no config.json)")
        elif isinstance(name_or_path, Path) or not _is_hub_id(text) or path.exists():
            raise ModelError(f"{text}: no such model folder")
        else:
            source, name, is_hub = text, text, True
    resolved = resolve_device(device)

    if is_hub:
        try:
            extractor, model = _load_parts(source, local_only=True)
        except ModelError as cached_exc:
            if not _hub_reachable():
                raise ModelError(
                    f"{source}: not in the local Hugging Face cache and the hub is unreachable "
                    "(offline); download it elsewhere and pass its local folder instead, e.g. "
                    "--model ./my-model"
                ) from cached_exc
            extractor, model = _load_parts(source, local_only=False)
    else:
        extractor, model = _load_parts(source, local_only=True)

    rate = int(getattr(extractor, "sampling_rate", MODEL_RATE_HZ) or MODEL_RATE_HZ)
    if rate != MODEL_RATE_HZ:
        raise ModelError(f"{source}: expects {rate} Hz audio; only {MODEL_RATE_HZ} Hz is supported")
    id2label = model.config.id2label
    labels = tuple(str(id2label[i]) for i in sorted(int(k) for k in id2label))

    model.eval()
    if resolved.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model.to(device=resolved, dtype=dtype)
    else:
        model.to(device=resolved, dtype=torch.float32)
    temperature = config_temperature(model.config)
    narrowband = narrowband_ok(model.config)
    logger.info("loaded model %s (%d labels) on %s; temperature %.3g, %s", name, len(labels),
                resolved, temperature, "narrowband ok" if narrowband else "wideband only")
    return EmotionModel(
        name=name,
        labels=labels,
        sample_rate_hz=rate,
        device=resolved,
        model=model,
        feature_extractor=extractor,
        temperature=temperature,
        narrowband_ok=narrowband,
    )
