"""Test audio made at test time (pytest's thread): espeak-ng sentences, silence, URDU clips."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from .procs import require_binary

__all__ = ["SENTENCES", "assemble", "espeak", "read_mono", "silence_wav"]

SENTENCES = (
    "I have been waiting on hold for forty minutes and nobody has helped me at all.",
    "Thank you so much, that is wonderful news, I am really happy with the result.",
    "Please read me the account number again, slowly, one digit at a time.",
)


def espeak(
    text: str, out: Path, *, timeout_s: float, pitch: int = 50, speed_wpm: int = 160
) -> Path:
    """Speak ``text`` into a wav file with espeak-ng (22.05 kHz mono int16)."""
    binary = require_binary("espeak-ng", "espeak-ng")
    subprocess.run(
        [binary, "-w", str(out), "-p", str(pitch), "-s", str(speed_wpm), text],
        check=True, capture_output=True, timeout=timeout_s,
    )
    return out


def read_mono(path: Path, rate_hz: int) -> NDArray[np.float32]:
    """A sound file as float32 mono at ``rate_hz`` (channels averaged; soxr resampling)."""
    import soxr

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1).astype(np.float32)
    if rate != rate_hz:
        mono = soxr.resample(mono, rate, rate_hz).astype(np.float32)
    return mono


def assemble(
    parts: Sequence[Path], out: Path, *, rate_hz: int = 22050, lead_s: float = 0.5,
    gap_s: float = 1.5, tail_s: float = 2.0,
) -> Path:
    """Join sound files with silent gaps into one mono int16 wav (a little "call")."""
    def silence(seconds: float) -> NDArray[np.float32]:
        return np.zeros(int(seconds * rate_hz), dtype=np.float32)

    pieces = [silence(lead_s)]
    for i, part in enumerate(parts):
        if i:
            pieces.append(silence(gap_s))
        pieces.append(read_mono(part, rate_hz))
    pieces.append(silence(tail_s))
    sf.write(str(out), np.concatenate(pieces), rate_hz, subtype="PCM_16")
    return out


def silence_wav(out: Path, seconds: float, *, rate_hz: int = 48000) -> Path:
    """Digital silence as a mono int16 wav."""
    sf.write(str(out), np.zeros(int(seconds * rate_hz), dtype=np.int16), rate_hz, subtype="PCM_16")
    return out
