"""Reuse of wav2vec2 conv feature-encoder frames between overlapping windows (inference threads).

When it is exact
----------------
The conv feature encoder of wav2vec2 maps raw audio to frames with a total stride ``S``
(320 samples) and a receptive field ``R`` (400 samples): frame ``j`` is computed from samples
``[S*j, S*j + R)`` of its window. That holds exactly only when

- every conv layer is followed by a per-time-step norm (``feat_extract_norm == "layer"``, the
  large / XLSR variant). The ``"group"`` variant (base) normalises its first layer's channels
  over *time*, so every frame depends on the whole window: no caching there;
- the feature extractor does not normalise each window by its own mean and variance
  (``do_normalize=False``): per-window normalisation changes every input sample whenever the
  window moves, so no frame of the next window equals one of the previous window;
- the model uses the last hidden state (``use_weighted_layer_sum=False``) and has no conv padding.

Then, for windows that overlap by a multiple of ``S`` samples (the engine's 0.5 s hop is 8000 =
25 x 320 samples), frames 0..73 of a 2 s window equal frames 25..98 of the previous one; only
the 25 frames that touch the newest 8320 samples need the encoder.

Design: content-addressed, not stream-addressed. A frame is looked up by the exact bytes of its
``R`` input samples (a dict compares the full key on a hash match, so a hit is never a
collision). That needs no stream ids, sample offsets or engine changes, is right across stream
restarts, reused names and several workers, and a window whose audio differs misses. A frame
computed from a shorter (tail) input may differ from a full-window computation only by float
reassociation inside the conv kernels (measured ~1e-7 relative; tests pin it).

Thread-safety: one lock around the LRU dict; encoder calls run outside it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_CACHE_FRAMES",
    "Encode",
    "EncoderGeometry",
    "FrameCache",
    "cache_exact_reason",
    "encoder_geometry",
]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_FRAMES = 20_000  # ~75 MB for 512-channel frames: ~270 streams' previous windows

Encode = Callable[[NDArray[np.float32]], NDArray[np.float32]]  # (1, T) -> (1, C, F)


@dataclass(frozen=True, slots=True)
class EncoderGeometry:
    """Receptive field and total stride of a conv feature encoder, in input samples."""

    receptive_field: int
    stride: int

    def frames(self, samples: int) -> int:
        """Frames the encoder produces for ``samples`` input samples."""
        if samples < self.receptive_field:
            return 0
        return (samples - self.receptive_field) // self.stride + 1


def encoder_geometry(config: Any) -> EncoderGeometry:
    """From a wav2vec2-style config's ``conv_kernel`` and ``conv_stride``."""
    field, jump = 1, 1
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        field += (int(kernel) - 1) * jump
        jump *= int(stride)
    return EncoderGeometry(receptive_field=field, stride=jump)


def cache_exact_reason(config: Any, feature_extractor: Any) -> str | None:
    """None when frame caching is exact for this model, else why not (one short phrase)."""
    if getattr(config, "model_type", None) != "wav2vec2":
        return f"model type {getattr(config, 'model_type', None)!r} is not wav2vec2"
    if getattr(config, "feat_extract_norm", None) != "layer":
        return (f"feat_extract_norm {config.feat_extract_norm!r}: group norm over time makes "
                "every frame depend on the whole window")
    if getattr(config, "use_weighted_layer_sum", False):
        return "use_weighted_layer_sum needs every layer's output"
    if getattr(feature_extractor, "do_normalize", False):
        return "the feature extractor normalises each window (do_normalize=True)"
    return None


class FrameCache:
    """LRU map from a frame's exact input samples to its encoder output (thread-safe).

    :meth:`features` returns what ``encode(windows)`` would, computing only the frames at and
    after the first frame not in the cache (one encoder call per window on that tail).
    """

    def __init__(self, geometry: EncoderGeometry, *, max_frames: int = DEFAULT_CACHE_FRAMES):
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.geometry = geometry
        self.max_frames = max_frames
        self._frames: OrderedDict[bytes, NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._frames)

    def features(self, windows: NDArray[np.float32], encode: Encode) -> NDArray[np.float32]:
        """(batch, samples) -> (batch, channels, frames), reusing cached frames."""
        out = [self._one(np.ascontiguousarray(row), encode) for row in windows]
        return np.stack(out)

    def _one(self, x: NDArray[np.float32], encode: Encode) -> NDArray[np.float32]:
        g = self.geometry
        n = g.frames(x.size)
        if n == 0:
            return encode(x[None, :])[0]
        keys = [x[g.stride * j: g.stride * j + g.receptive_field].tobytes() for j in range(n)]
        cached: list[NDArray[np.float32]] = []
        with self._lock:
            for key in keys:
                frame = self._frames.get(key)
                if frame is None:
                    break
                self._frames.move_to_end(key)
                cached.append(frame)
            first = len(cached)
            self.hits += first
            self.misses += n - first
        if first == n:
            return np.stack(cached, axis=1)
        tail = encode(x[None, g.stride * first:])[0]  # (channels, n - first)
        if tail.shape[1] != n - first:
            raise RuntimeError(f"encoder made {tail.shape[1]} frames, expected {n - first}")
        with self._lock:
            for j in range(first, n):
                self._frames[keys[j]] = np.ascontiguousarray(tail[:, j - first])
                self._frames.move_to_end(keys[j])
            while len(self._frames) > self.max_frames:
                self._frames.popitem(last=False)
        if first == 0:
            return tail
        return np.concatenate([np.stack(cached, axis=1), tail], axis=1)
