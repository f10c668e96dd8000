"""A phone line in software: 8 kHz band limit and G.711 companding (pure functions, any thread).

:func:`phone_line` is the one transform the project uses wherever call audio matters: the test
side of ``evaluate``/``crossval --phone``, training augmentation (``--phone-prob``) and the
benchmarks. It takes 16 kHz mono float32 audio, resamples it to 8 kHz with soxr (whose
anti-aliasing filter is the band limit), encodes each sample with G.711 mu-law or A-law (8 bits,
as a carrier would), decodes it, and resamples back to 16 kHz, keeping the input length.

The G.711 codecs follow ITU-T G.711 on 16-bit linear PCM: mu-law on the 14-bit magnitude
(bias 0x84, clip 32635), A-law on the 13-bit magnitude; both segment-companded to 8 bits and
inverted the way the recommendation transmits them (mu-law bits inverted, A-law even bits
inverted). They are bit-exact with CPython's former ``audioop`` codecs (a test checks all inputs).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import soxr
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ, float32_to_int16, int16_to_float32
from streamer.errors import AudioError

__all__ = [
    "G711_LAWS",
    "Law",
    "PHONE_RATE_HZ",
    "alaw_decode",
    "alaw_encode",
    "mulaw_decode",
    "mulaw_encode",
    "phone_line",
]

PHONE_RATE_HZ = 8_000
G711_LAWS = ("mulaw", "alaw")
Law = Literal["mulaw", "alaw"]

_MU_BIAS = 0x84
_MU_CLIP14 = 8159  # 32635 >> 2
# Upper end of each mu-law segment on the biased 14-bit magnitude.
_MU_SEGMENT_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def mulaw_encode(pcm: NDArray[np.int16]) -> NDArray[np.uint8]:
    """16-bit linear PCM -> G.711 mu-law bytes (on the 14-bit magnitude, as G.711 specifies)."""
    x = np.asarray(pcm, dtype=np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.where(x < 0, -x, x), _MU_CLIP14) + (_MU_BIAS >> 2)
    segment = np.searchsorted(_MU_SEGMENT_END, mag)  # 0 .. 8 (8: at the clip level)
    value = (np.minimum(segment, 7) << 4) | ((mag >> (segment + 1)) & 0x0F)
    value = np.where(segment >= 8, 0x7F, value)
    return ((value ^ mask) & 0xFF).astype(np.uint8)


def mulaw_decode(code: NDArray[np.uint8]) -> NDArray[np.int16]:
    """G.711 mu-law bytes -> 16-bit linear PCM."""
    u = ~np.asarray(code, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + _MU_BIAS) << exponent) - _MU_BIAS
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


# Upper end of each A-law segment on the 13-bit magnitude.
_ALAW_SEGMENT_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def alaw_encode(pcm: NDArray[np.int16]) -> NDArray[np.uint8]:
    """16-bit linear PCM -> G.711 A-law bytes."""
    x = np.asarray(pcm, dtype=np.int32) >> 3  # 13-bit
    positive = x >= 0
    mask = np.where(positive, 0xD5, 0x55)
    mag = np.where(positive, x, -x - 1)
    segment = np.searchsorted(_ALAW_SEGMENT_END, mag)  # 0 .. 8
    shift = np.where(segment < 2, 1, segment)
    value = (np.minimum(segment, 7) << 4) | ((mag >> shift) & 0x0F)
    value = np.where(segment >= 8, 0x7F, value)
    return ((value ^ mask) & 0xFF).astype(np.uint8)


def alaw_decode(code: NDArray[np.uint8]) -> NDArray[np.int16]:
    """G.711 A-law bytes -> 16-bit linear PCM."""
    a = np.asarray(code, dtype=np.int32) ^ 0x55
    segment = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(segment == 0, t + 8, t + 0x108)
    t = np.where(segment > 1, t << np.maximum(segment - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


def phone_line(
    audio: NDArray[np.float32], *, law: str = "mulaw", rate_hz: int = MODEL_RATE_HZ
) -> NDArray[np.float32]:
    """``audio`` (mono float32 at ``rate_hz``) as heard through an 8 kHz G.711 line, same
    length and rate."""
    if law not in G711_LAWS:
        raise AudioError(f"unknown G.711 law {law!r}; use one of {', '.join(G711_LAWS)}")
    samples = np.asarray(audio)
    if samples.dtype != np.float32 or samples.ndim != 1:
        raise AudioError(
            f"phone_line takes mono float32 audio, got {samples.dtype} shape {samples.shape}"
        )
    if rate_hz < PHONE_RATE_HZ:
        raise AudioError(f"phone_line needs audio at >= {PHONE_RATE_HZ} Hz, got {rate_hz} Hz")
    if samples.size == 0:
        return samples.copy()
    narrow = soxr.resample(samples, rate_hz, PHONE_RATE_HZ).astype(np.float32, copy=False)
    pcm = float32_to_int16(np.ascontiguousarray(narrow))
    if law == "mulaw":
        pcm = mulaw_decode(mulaw_encode(pcm))
    else:
        pcm = alaw_decode(alaw_encode(pcm))
    line = int16_to_float32(pcm)
    back = soxr.resample(line, PHONE_RATE_HZ, rate_hz).astype(np.float32, copy=False)
    out = np.zeros(samples.shape[0], dtype=np.float32)
    n = min(out.shape[0], back.shape[0])
    out[:n] = back[:n]
    return out
