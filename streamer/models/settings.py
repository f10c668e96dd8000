"""Which backend and precision a model runs in: the allowed values, the ``optimize.json``
manifest, the agreement bounds and the ``auto`` choice (main thread, at load time).

Choosing (``auto``): on CUDA, torch in half precision (bfloat16 where supported), with the
engine batching windows across streams. On CPU, a folder written by ``emotion-monitor
optimize`` holds an ``optimize.json`` with, for each backend/precision, its agreement with fp32
torch and its measured time per window on the machine that optimised it; ``auto`` takes the
fastest ONNX setting within the documented bounds (:data:`MIN_TOP1_AGREEMENT`,
:data:`MAX_REL_LOGIT_DIFF`), and a torch one only when no ONNX setting is within them: ONNX
needs no torch in the process (an install without it runs every optimize folder, the bundled
model included) and starts in a fraction of the time. A plain checkpoint has no such numbers,
so ``auto`` keeps torch fp32 there. ``--backend torch`` alone is fp32 torch everywhere (the
reference). Explicit choices are honoured (the loader warns when a measured setting is
outside the bounds). The manifest also holds each setting's time per
window with 2 and 4 windows per call; :func:`preferred_batch` turns that into the model's
``preferred_batch`` on CPU.

Imports none of the runners and no loader, so all of them can import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.errors import ModelError

__all__ = [
    "BACKENDS",
    "COMPACT_MODEL_TYPE",
    "CUDA_BATCH",
    "MANIFEST_NAME",
    "MAX_REL_LOGIT_DIFF",
    "MIN_BATCH_GAIN",
    "MIN_TOP1_AGREEMENT",
    "ONNX_PRECISIONS",
    "PRECISIONS",
    "Choice",
    "check_choice",
    "choose_setting",
    "preferred_batch",
    "read_manifest",
    "within_bounds",
]

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
# config.model_type of the compact network (streamer.models.compact), here so that the
# runners and the loader can test for it without importing torch
COMPACT_MODEL_TYPE = "emotion-compact"
# On CUDA the engine batches up to this many windows of different streams per call.
CUDA_BATCH = 8


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
        return _cuda_setting(backend, precision, device)
    checks: dict[str, Any] = (manifest or {}).get("checks", {})
    if backend != "auto" and precision != "auto":
        return Choice(backend, precision, "as requested")
    if backend == "torch" and precision == "auto":
        # torch asked for by name is the reference, as for a plain checkpoint (training and
        # evaluation load through it); a faster torch precision only when named
        return Choice("torch", "fp32", "the reference")
    available = [
        key for key, check in checks.items()
        if within_bounds(check)
        and (backend == "auto" or key.startswith(backend + "/"))
        and (precision == "auto" or key.endswith("/" + precision))
        and check.get("ms_per_window") is not None
    ]
    if available:
        onnx = [key for key in available if key.startswith("onnx/")]
        best = min(onnx or available, key=lambda key: float(checks[key]["ms_per_window"]))
        b, p = best.split("/")
        c = checks[best]
        ref = checks.get("torch/fp32", {}).get("ms_per_window")
        return Choice(b, p, (
            f"fastest {'ONNX setting ' if onnx else ''}within bounds: "
            f"{c['ms_per_window']:.1f} ms/window "
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


def _cuda_setting(backend: str, precision: str, device: str) -> Choice:
    """On a GPU: torch, in half precision unless another one was asked for."""
    if backend == "onnx":
        raise ModelError("backend onnx runs on CPU only here; use --model-device cpu")
    if precision == "int8":
        raise ModelError("int8 runs on CPU only; use --model-device cpu")
    import torch

    half = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    chosen = half if precision == "auto" else precision
    return Choice("torch", chosen, f"{device}: torch in {chosen}, windows batched")
