"""Sliding windows over gated speech (pure; one stream, the feeding thread).

Timing rules (the engine's documented behaviour):

- Windows never span a speech-segment boundary: a segment end (``end_segment``) resets the
  buffer. Inside a segment the audio is contiguous stream audio (pauses shorter than the VAD
  hangover are part of it), so a window's ``start_s``/``end_s`` are exact stream seconds and
  ``end_s - start_s`` equals its length.
- The first window of a segment is ready when ``window_s`` of segment audio has arrived; after
  that, one every ``hop_s`` of new audio, each holding the newest ``window_s``.
- When a segment ends, a last window of the newest ``min(segment, window_s)`` seconds is made if
  at least ``min_window_s`` of audio arrived since the previous window's end (or since the
  segment start when none was made): short utterances are classified, tails are not lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ
from streamer.errors import AudioError
from streamer.ring import SampleRing

__all__ = ["SpeechWindow", "Windower"]


@dataclass(frozen=True, slots=True)
class SpeechWindow:
    """One window of speech, ready for the model; times are stream seconds."""

    start_s: float
    end_s: float
    samples: NDArray[np.float32]
    final: bool = False  # made by a segment end (may be shorter than window_s)


class Windower:
    """Cuts one stream's gated speech into windows; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        window_s: float,
        hop_s: float,
        min_window_s: float,
        sample_rate_hz: int = MODEL_RATE_HZ,
    ) -> None:
        if not 0 < hop_s <= window_s:
            raise ValueError(f"need 0 < hop_s <= window_s, got hop_s={hop_s} window_s={window_s}")
        if not 0 < min_window_s <= window_s:
            raise ValueError(
                f"need 0 < min_window_s <= window_s, got {min_window_s} and {window_s}"
            )
        self.rate = sample_rate_hz
        self.window = round(window_s * sample_rate_hz)
        self.hop = round(hop_s * sample_rate_hz)
        self.min_window = math.ceil(min_window_s * sample_rate_hz)
        self._ring = SampleRing(self.window)
        self._segment_start = 0  # stream sample index of the segment's first sample
        self._next_due = self.window  # segment length at which the next window is ready
        self._last_end = 0  # segment length at the end of the last window made

    def push(self, start_s: float, samples: NDArray[np.float32]) -> list[SpeechWindow]:
        """Add segment audio that starts at stream time ``start_s``; return windows now ready."""
        if samples.dtype != np.float32 or samples.ndim != 1:
            raise AudioError(f"expected 1-D float32, got {samples.dtype} shape {samples.shape}")
        start = round(start_s * self.rate)
        if self._ring.total_written == 0:
            self._segment_start = start
        elif start != self._segment_start + self._ring.total_written:
            raise AudioError(
                f"segment audio is not contiguous: expected sample "
                f"{self._segment_start + self._ring.total_written}, got {start}"
            )
        windows: list[SpeechWindow] = []
        offset = 0
        while offset < samples.size:
            room = self._next_due - self._ring.total_written
            take = min(room, samples.size - offset)
            self._ring.append(samples[offset : offset + take])
            offset += take
            if self._ring.total_written == self._next_due:
                windows.append(self._make(self.window, final=False))
                self._next_due += self.hop
        return windows

    def end_segment(self) -> list[SpeechWindow]:
        """The segment ended: return the flush window (if long enough) and reset."""
        windows: list[SpeechWindow] = []
        length = self._ring.total_written
        if length - self._last_end >= self.min_window:
            windows.append(self._make(min(length, self.window), final=True))
        self._ring.clear()
        self._next_due = self.window
        self._last_end = 0
        return windows

    def _make(self, n: int, *, final: bool) -> SpeechWindow:
        end = self._ring.total_written
        self._last_end = end
        end_sample = self._segment_start + end
        return SpeechWindow(
            start_s=(end_sample - n) / self.rate,
            end_s=end_sample / self.rate,
            samples=self._ring.latest(n),
            final=final,
        )
