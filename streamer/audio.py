"""Sample-format conversion and whole-file reading (pure functions, any thread).

Inside the app audio is ``NDArray[np.float32]``, mono, in [-1, 1], at the model rate. Sample
formats (int16 PCM, the little-endian bytes pushed to ``/ingest``, float32) are converted here,
once, explicitly and with scaling; the rest of the app calls these helpers instead of ``astype``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from numpy.typing import NDArray

from streamer.errors import AudioError

__all__ = [
    "MODEL_RATE_HZ",
    "downmix",
    "f32le_to_float32",
    "float32_to_int16",
    "int16_to_float32",
    "s16le_to_float32",
    "read_audio",
    "resample",
]

MODEL_RATE_HZ = 16_000
_INT16_SCALE = 32768.0
_INV_INT16_SCALE = np.float32(1.0 / _INT16_SCALE)


def int16_to_float32(samples: NDArray[np.int16]) -> NDArray[np.float32]:
    """Scale int16 PCM to float32 in [-1, 1)."""
    if samples.dtype != np.int16:
        raise AudioError(f"expected int16 samples, got {samples.dtype}")
    return samples.astype(np.float32) / np.float32(_INT16_SCALE)


def s16le_to_float32(data: bytes) -> NDArray[np.float32]:
    """Little-endian int16 PCM bytes -> float32 in [-1, 1) (any host byte order)."""
    if len(data) % 2:
        raise AudioError(f"s16le data of {len(data)} bytes is not a whole number of samples")
    # one ufunc: int16 -> float32 is exact and 1/32768 a power of two, so the same values as
    # astype(float32) / 32768
    return np.multiply(np.frombuffer(data, dtype="<i2"), _INV_INT16_SCALE, dtype=np.float32)


def f32le_to_float32(data: bytes) -> NDArray[np.float32]:
    """Little-endian float32 bytes -> a native, writable float32 array (values unchanged)."""
    if len(data) % 4:
        raise AudioError(f"f32le data of {len(data)} bytes is not a whole number of samples")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)  # a copy: the bytes are read-only


def float32_to_int16(samples: NDArray[np.float32]) -> NDArray[np.int16]:
    """Scale float32 in [-1, 1] to int16 PCM, clipping out-of-range values."""
    if samples.dtype != np.float32:
        raise AudioError(f"expected float32 samples, got {samples.dtype}")
    # in place, one ufunc each: the same values as np.round(np.clip(samples * 32768, ...))
    scaled = np.multiply(samples, np.float32(_INT16_SCALE))
    np.maximum(scaled, np.float32(-32768.0), out=scaled)
    np.minimum(scaled, np.float32(32767.0), out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int16)


def downmix(samples: NDArray[np.float32], *, channel: int | None = None) -> NDArray[np.float32]:
    """Frames x channels (or 1-D) -> mono: the mean of all channels, or one chosen channel."""
    if samples.ndim == 1:
        if channel not in (None, 0):
            raise AudioError(f"channel {channel} requested but the audio is mono")
        return samples
    if samples.ndim != 2:
        raise AudioError(f"expected 1-D or frames x channels audio, got shape {samples.shape}")
    n_channels = samples.shape[1]
    if channel is None:
        return samples.mean(axis=1, dtype=np.float32) if n_channels > 1 else samples[:, 0].copy()
    if not 0 <= channel < n_channels:
        raise AudioError(f"channel {channel} out of range: the audio has {n_channels} channel(s)")
    return np.ascontiguousarray(samples[:, channel])


def resample(samples: NDArray[np.float32], rate_hz: int, target_hz: int) -> NDArray[np.float32]:
    """Resample a whole mono signal with soxr (for streams use ``soxr.ResampleStream``)."""
    if rate_hz == target_hz:
        return samples
    return soxr.resample(samples, rate_hz, target_hz).astype(np.float32, copy=False)


def read_audio(
    path: str | Path,
    *,
    target_rate_hz: int = MODEL_RATE_HZ,
    channel: int | None = None,
) -> NDArray[np.float32]:
    """Read any file soundfile reads, as mono float32 at ``target_rate_hz``.

    Raises AudioError naming the file for unreadable, missing or zero-length audio.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        data, rate_hz = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    try:
        mono = downmix(data, channel=channel)
    except AudioError as exc:
        raise AudioError(f"{path}: {exc}") from exc
    return resample(mono, int(rate_hz), target_rate_hz)
