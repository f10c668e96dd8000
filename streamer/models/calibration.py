"""Confidence calibration: expected calibration error, reliability table, temperature scaling.

Pure numpy (any thread), except :func:`set_temperature`, which rewrites one field of a
checkpoint's ``config.json``.

Temperature scaling divides a model's logits by one number ``T`` before the softmax: ``T > 1``
softens over-confident probabilities, ``T < 1`` sharpens them, and the arg-max (the label) never
changes. The fitted ``T`` lives in the checkpoint's ``config.json`` under
:data:`TEMPERATURE_KEY` and every loaded model applies it in ``predict_proba``
(:mod:`streamer.models.loading` reads it, :class:`streamer.models.runner.Runner` applies it); a
checkpoint without the field has ``T = 1``.

The field is not called ``temperature``: transformers 5 treats that name as a text-generation
parameter and silently drops it from every model config on load and on ``save_pretrained``, and
configs saved by transformers 4 carry ``"temperature": 1.0`` for generation. The key used here
survives ``save_pretrained`` (so ``emotion-monitor optimize`` copies it into ONNX folders).

Log-probabilities work as logits everywhere here: the softmax ignores a constant per row, so
``fit_temperature(np.log(probs), y)`` calibrates predictions saved as probabilities at ``T = 1``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from streamer.errors import ModelError

__all__ = [
    "ECE_BINS",
    "TEMPERATURE_KEY",
    "ReliabilityBin",
    "config_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "nll",
    "reliability_table",
    "set_temperature",
    "softmax",
]

TEMPERATURE_KEY = "logit_temperature"
ECE_BINS = 15
# fit_temperature searches T in [MIN_T, MAX_T]: wider than any useful calibration
_MIN_T = 0.05
_MAX_T = 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """One equal-width confidence bin ``(lower, upper]``; the means are None when it is empty."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


def _probs_and_labels(probs: ArrayLike, y_true: ArrayLike) -> tuple[NDArray[np.float64],
                                                                    NDArray[np.int64]]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"expected (n, classes) probabilities with n >= 1, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities must be finite")
    return p, _labels(y, p.shape)


def _labels(y: NDArray[Any], shape: tuple[int, ...]) -> NDArray[np.int64]:
    if y.shape != (shape[0],):
        raise ValueError(f"expected {shape[0]} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be class ids (integers), got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= shape[1]):
        raise ValueError(f"labels must be class ids in 0..{shape[1] - 1}")
    return y.astype(np.int64)


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a whole number >= 1, got {bins!r}")
    return int(bins)


def _bin_index(confidence: NDArray[np.float64], bins: int) -> NDArray[np.int64]:
    """Bin of each confidence, bins ``(k/bins, (k+1)/bins]`` (a confidence of 0 goes in bin 0)."""
    # the tolerance keeps a confidence on an edge (0.6 * 15 = 9.000000000000002) in the lower bin
    return np.clip(np.ceil(confidence * bins - 1e-9).astype(np.int64) - 1, 0, bins - 1)


def reliability_table(probs: ArrayLike, y_true: ArrayLike, bins: int = ECE_BINS
                      ) -> list[ReliabilityBin]:
    """Per equal-width bin of the top-1 probability: count, mean confidence and accuracy.

    Reads as "of the predictions made with a confidence in this bin, this share was right".
    Every bin is listed, empty ones with ``count`` 0.
    """
    p, y = _probs_and_labels(probs, y_true)
    bins = _check_bins(bins)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    index = _bin_index(confidence, bins)
    table = []
    for k in range(bins):
        inside = index == k
        n = int(inside.sum())
        table.append(ReliabilityBin(
            lower=k / bins,
            upper=(k + 1) / bins,
            count=n,
            mean_confidence=float(confidence[inside].mean()) if n else None,
            accuracy=float(correct[inside].mean()) if n else None,
        ))
    return table


def expected_calibration_error(probs: ArrayLike, y_true: ArrayLike, bins: int = ECE_BINS
                               ) -> float:
    """ECE: over equal-width bins of the top-1 probability, the count-weighted mean of
    ``|accuracy - mean confidence|`` (Guo et al. 2017; 15 bins by default)."""
    table = reliability_table(probs, y_true, bins)
    total = sum(b.count for b in table)
    return float(sum(
        b.count / total * abs(b.accuracy - b.mean_confidence)
        for b in table
        if b.count and b.accuracy is not None and b.mean_confidence is not None
    ))


def _logits(logits: ArrayLike) -> NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"expected (n, classes) logits with n >= 1, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite (clip log-probabilities of 0 first)")
    return z


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def softmax(logits: ArrayLike, temperature: float = 1.0) -> NDArray[np.float64]:
    """Rows of ``softmax(logits / temperature)``."""
    z = _logits(logits) / _check_temperature(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def _nll(z: NDArray[np.float64], y: NDArray[np.int64], temperature: float) -> float:
    s = z / temperature
    s = s - s.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(s).sum(axis=1))
    return float(np.mean(log_norm - s[np.arange(len(y)), y]))


def nll(logits: ArrayLike, y_true: ArrayLike, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of the true classes under softmax(logits / T)."""
    z = _logits(logits)
    return _nll(z, _labels(np.asarray(y_true), z.shape), _check_temperature(temperature))


def fit_temperature(logits: ArrayLike, y_true: ArrayLike, *, tol: float = 1e-4) -> float:
    """The ``T`` in [0.05, 20] that minimises :func:`nll` (golden-section search on log T).

    The NLL is convex in 1/T (log-sum-exp of a scaled row is convex in the scale), hence
    unimodal in log T, so the bounded 1-D search finds the optimum to ``tol`` in log T.
    """
    z = _logits(logits)
    y = _labels(np.asarray(y_true), z.shape)
    lo, hi = math.log(_MIN_T), math.log(_MAX_T)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = _nll(z, y, math.exp(a)), _nll(z, y, math.exp(b))
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = _nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = _nll(z, y, math.exp(b))
    return math.exp((lo + hi) / 2.0)


def config_temperature(config: Any) -> float:
    """The calibration temperature of a loaded transformers config (1.0 when it has none)."""
    value = getattr(config, TEMPERATURE_KEY, None)
    if value is None:
        return 1.0
    try:
        return _check_temperature(value)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"config field {TEMPERATURE_KEY} must be a number > 0, got {value!r}"
                         ) from exc


def set_temperature(checkpoint_dir: str | Path, temperature: float) -> None:
    """Write ``temperature`` into ``checkpoint_dir/config.json`` (other fields are kept)."""
    t = _check_temperature(temperature)
    path = Path(checkpoint_dir).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the model config ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{path}: not a model config (a JSON object)")
    config[TEMPERATURE_KEY] = t
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
