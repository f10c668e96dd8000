"""Voice-activity gate: webrtcvad frames plus an onset/hangover state machine (pure, one stream).

Runs on whichever thread feeds the stream (the engine's ``StreamFeed.feed``); it holds no threads,
clocks or queues. Input is 16 kHz mono float32 in stream order; output is an ordered list of
:class:`GateOpened`, :class:`GatedAudio` and :class:`GateClosed` items whose times are stream
seconds (samples since the stream opened / 16000).

How the gate decides, frame by frame (``frame_ms``, aligned to the start of the stream):

- A frame is *voiced* when webrtcvad says so **and** its level is at least ``energy_floor_dbfs``
  (webrtcvad happily calls steady tones and some noise speech; the floor makes digital silence
  and near-silence never count, whatever the aggressiveness).
- Closed gate: it opens once ``trigger_ms`` of consecutive voiced frames have been seen (a lone
  click does not open it). The segment then starts ``onset_ms`` before the first voiced frame
  (pre-roll, so word onsets are not clipped), but never before the end of the previous segment
  nor before the stream start.
- Open gate: every frame passes. After ``hangover_ms`` of consecutive unvoiced frames it closes;
  the segment ends ``hangover_ms`` after the last voiced frame (both rounded up to whole frames).
  Pauses shorter than the hangover therefore stay inside one segment, as real audio.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ, float32_to_int16
from streamer.errors import AudioError

__all__ = ["GateClosed", "GatedAudio", "GateItem", "GateOpened", "VadConfig", "VadGate"]

_FRAME_MS_ALLOWED = (10, 20, 30)


@dataclass(frozen=True, slots=True)
class VadConfig:
    """Settings of the VAD gate; times in milliseconds.

    Defaults: aggressiveness 2 (3 drops quiet speech onsets more often; webrtcvad calls steady
    tones speech at every level), 30 ms frames, speech must last 60 ms to open the gate, 300 ms
    pre-roll and 300 ms hangover, and frames below -50 dBFS RMS are never speech.
    """

    aggressiveness: int = 2
    frame_ms: int = 30
    trigger_ms: int = 60
    onset_ms: int = 300
    hangover_ms: int = 300
    energy_floor_dbfs: float | None = -50.0

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {self.aggressiveness!r}")
        if self.frame_ms not in _FRAME_MS_ALLOWED:
            raise ValueError(f"frame_ms must be one of {_FRAME_MS_ALLOWED}, got {self.frame_ms!r}")
        for name in ("trigger_ms", "onset_ms", "hangover_ms"):
            value = getattr(self, name)
            if not 0 <= value <= 5000:
                raise ValueError(f"{name} must be between 0 and 5000 ms, got {value!r}")
        floor = self.energy_floor_dbfs
        if floor is not None and not -120.0 <= floor <= 0.0:
            raise ValueError(f"energy_floor_dbfs must be None or in [-120, 0] dBFS, got {floor!r}")


@dataclass(frozen=True, slots=True)
class GateOpened:
    """Speech started at ``start_s`` (onset padding included)."""

    start_s: float


@dataclass(frozen=True, slots=True)
class GatedAudio:
    """Contiguous speech-segment audio starting at stream time ``start_s``."""

    start_s: float
    samples: NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class GateClosed:
    """The segment that began at ``start_s`` ended at ``end_s`` (hangover included)."""

    start_s: float
    end_s: float


GateItem = GateOpened | GatedAudio | GateClosed


class VadGate:
    """Gates one 16 kHz stream into speech segments; see the module docstring for the rules."""

    def __init__(self, config: VadConfig | None = None) -> None:
        self.config = config or VadConfig()
        cfg = self.config
        self._vad = webrtcvad.Vad(cfg.aggressiveness)
        self._frame = MODEL_RATE_HZ * cfg.frame_ms // 1000
        self._trigger_frames = max(1, math.ceil(cfg.trigger_ms / cfg.frame_ms))
        self._onset_frames = math.ceil(cfg.onset_ms / cfg.frame_ms)
        self._hangover_frames = math.ceil(cfg.hangover_ms / cfg.frame_ms)
        if cfg.energy_floor_dbfs is None:
            self._floor_power: float = -1.0
        else:
            self._floor_power = 10.0 ** (cfg.energy_floor_dbfs / 10.0)  # mean square at the floor
        self._pending = np.zeros(0, dtype=np.float32)  # < one frame, not yet classified
        self._frames_seen = 0  # whole frames classified so far (frame index of the next one)
        # Closed gate: recent frames (pre-roll + trigger candidates), oldest first.
        self._history: deque[NDArray[np.float32]] = deque(
            maxlen=self._onset_frames + self._trigger_frames
        )
        self._voiced_run = 0
        self._open = False
        self._segment_start_frame = 0
        self._unvoiced_run = 0
        self._last_end_frame = 0  # end of the previous segment (frames)

    def push(self, samples: NDArray[np.float32]) -> list[GateItem]:
        """Classify the whole frames now available and return what the gate lets through."""
        if samples.dtype != np.float32 or samples.ndim != 1:
            raise AudioError(
                f"VAD expects 1-D float32 samples, got {samples.dtype} shape {samples.shape}"
            )
        frame = self._frame
        pending = self._pending
        if pending.size + samples.size < frame:  # no whole frame yet: keep it for later
            self._pending = np.concatenate([pending, samples]) if pending.size else samples.copy()
            return []
        data = np.concatenate([pending, samples]) if pending.size else samples
        n_frames = data.size // frame
        whole = data[: n_frames * frame]
        voiced = self._classify(whole.reshape(n_frames, frame))
        self._pending = data[n_frames * frame :].copy()
        if self._open and all(voiced):  # speech goes on: the whole block passes, as one
            start_s = self._frames_seen * frame / MODEL_RATE_HZ
            self._frames_seen += n_frames
            self._unvoiced_run = 0
            return [GatedAudio(start_s, whole.copy())]
        if not self._open and not any(voiced):  # silence goes on: keep the pre-roll only
            keep = self._history.maxlen or 0
            self._history.extend(whole[i * frame : (i + 1) * frame]
                                 for i in range(max(0, n_frames - keep), n_frames))
            self._frames_seen += n_frames
            self._voiced_run = 0
            return []
        items: list[GateItem] = []
        for i, is_voiced in enumerate(voiced):
            self._step(whole[i * frame : (i + 1) * frame], is_voiced, items)
        return _merge_audio(items)

    def flush(self) -> list[GateItem]:
        """End of stream: pass the trailing partial frame and close an open segment there."""
        items: list[GateItem] = []
        if not self._open:
            self._pending = np.zeros(0, dtype=np.float32)
            return items
        end_sample = self._frames_seen * self._frame
        if self._pending.size:
            items.append(GatedAudio(end_sample / MODEL_RATE_HZ, self._pending))
            end_sample += self._pending.size
            self._pending = np.zeros(0, dtype=np.float32)
        start_s = self._segment_start_frame * self._frame / MODEL_RATE_HZ
        items.append(GateClosed(start_s, end_sample / MODEL_RATE_HZ))
        self._open = False
        return items

    def _classify(self, frames: NDArray[np.float32]) -> list[bool]:
        """Voiced or not, per row of ``frames`` (n x frame): the floor first, then webrtcvad.

        One conversion and one level measurement for all the rows (the same values, row by
        row, as one frame at a time); webrtcvad runs only on the frames above the floor.
        """
        n = frames.shape[0]
        if self._floor_power >= 0.0:
            # add.reduce / n is what np.mean computes, without its Python wrapper
            squares = np.add.reduce(np.square(frames, dtype=np.float64), axis=1)
            loud = squares / frames.shape[1] >= self._floor_power
            if not loud.any():
                return [False] * n
            rows = loud.tolist()
        else:
            rows = [True] * n
        pcm = float32_to_int16(frames.reshape(-1)).tobytes()
        step = 2 * self._frame
        is_speech = self._vad.is_speech
        return [bool(row) and bool(is_speech(pcm[i * step : (i + 1) * step], MODEL_RATE_HZ))
                for i, row in enumerate(rows)]

    def _step(self, frame: NDArray[np.float32], voiced: bool, items: list[GateItem]) -> None:
        index = self._frames_seen
        self._frames_seen += 1
        if self._open:
            if voiced or self._hangover_frames > 0:
                items.append(GatedAudio(index * self._frame / MODEL_RATE_HZ, frame))
                if voiced:
                    self._unvoiced_run = 0
                    return
                self._unvoiced_run += 1
                if self._unvoiced_run >= self._hangover_frames:
                    self._close(index + 1, items)
                return
            self._close(index, items)  # no hangover: this unvoiced frame is already outside
        self._history.append(frame)
        self._voiced_run = self._voiced_run + 1 if voiced else 0
        if self._voiced_run < self._trigger_frames:
            return
        first_voiced = index + 1 - self._trigger_frames
        start = max(first_voiced - self._onset_frames, self._last_end_frame, 0)
        start = max(start, index + 1 - len(self._history))
        self._open = True
        self._segment_start_frame = start
        self._unvoiced_run = 0
        items.append(GateOpened(start * self._frame / MODEL_RATE_HZ))
        kept = list(self._history)[len(self._history) - (index + 1 - start) :]
        for offset, past in enumerate(kept):
            items.append(GatedAudio((start + offset) * self._frame / MODEL_RATE_HZ, past))
        self._history.clear()
        self._voiced_run = 0

    def _close(self, end_frame: int, items: list[GateItem]) -> None:
        start_s = self._segment_start_frame * self._frame / MODEL_RATE_HZ
        items.append(GateClosed(start_s, end_frame * self._frame / MODEL_RATE_HZ))
        self._open = False
        self._last_end_frame = end_frame
        self._unvoiced_run = 0
        self._voiced_run = 0


def _merge_audio(items: list[GateItem]) -> list[GateItem]:
    """Join runs of adjacent GatedAudio frames into one array each (fewer, larger items)."""
    merged: list[GateItem] = []
    run: list[GatedAudio] = []

    def close_run() -> None:
        if run:
            samples = np.concatenate([a.samples for a in run]) if len(run) > 1 else run[0].samples
            merged.append(GatedAudio(run[0].start_s, samples.copy()))
            run.clear()

    for item in items:
        if isinstance(item, GatedAudio):
            run.append(item)
        else:
            close_run()
            merged.append(item)
    close_run()
    return merged
