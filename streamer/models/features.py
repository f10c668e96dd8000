"""Feature extraction in numpy, for models run without torch or transformers (inference worker
threads; pure, no I/O).

Two front ends, each called like a transformers feature extractor
(``extractor(windows, sampling_rate=..., return_tensors="np")`` -> a dict of arrays), so that
:class:`streamer.models.runner.Runner` drives either kind the same way:

- :class:`WaveformFeatures`: the wav2vec2 family's ``Wav2Vec2FeatureExtractor`` on equal-length
  windows: ``input_values`` are the samples, each window scaled to zero mean and unit variance
  when the checkpoint's ``do_normalize`` is true. The arithmetic is transformers' own
  (``zero_mean_unit_var_norm`` without padding: float32 mean and variance of the whole row,
  ``(x - mean) / sqrt(var + 1e-7)``), so ONNX graphs get the inputs they were exported with;
- :class:`LogMelFeatures`: the compact network's log-mel front end
  (:mod:`streamer.models.compact` computes it in torch inside the model): a centred STFT with a
  periodic Hann window and reflect padding, power spectrum, a slaney-normalised triangular
  HTK-mel filterbank, ``log(mel + 1e-6)`` and the configured feature norm. It gives ``log_mel``
  (batch, n_mels, frames), the input of the compact model's ONNX graph in folders optimised
  before the front end became part of that graph (:mod:`streamer.offline.onnx_frontend`; it
  held the GIL for about as long as the CNN ran). Agrees with torch to about 1e-5, and is the
  reference the fused graph is checked against.

Thread-safety: both hold read-only arrays and keep no per-call state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.errors import AudioError, ModelError

__all__ = [
    "FEATURE_NORMS",
    "LOG_MEL_INPUT",
    "LogMelFeatures",
    "SparseFilterbank",
    "WAVEFORM_INPUT",
    "WaveformFeatures",
    "hann_window",
    "log_mel",
    "mel_filterbank",
]

WAVEFORM_INPUT = "input_values"
LOG_MEL_INPUT = "log_mel"
FEATURE_NORMS = ("band", "global", "none")
# transformers' Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm adds this to the variance
_NORMALIZE_EPS = 1e-7
_LOG_FLOOR = 1e-6  # compact.py: log(mel + 1e-6)
_NORM_EPS = 1e-5  # compact.py: (logmel - mean) / (std + 1e-5)


def mel_filterbank(
    *, sample_rate_hz: int, n_fft: int, n_mels: int, f_min_hz: float, f_max_hz: float
) -> NDArray[np.float32]:
    """Triangular HTK-mel filterbank, shape (n_fft // 2 + 1, n_mels), area-normalised (slaney)."""

    def hz_to_mel(f: NDArray[np.float64] | float) -> NDArray[np.float64]:
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    def mel_to_hz(m: NDArray[np.float64]) -> NDArray[np.float64]:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0.0, sample_rate_hz / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min_hz), hz_to_mel(f_max_hz), n_mels + 2))
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lower[None, :]) / (center - lower)[None, :]
    down = (upper[None, :] - freqs[:, None]) / (upper - center)[None, :]
    fb = np.maximum(0.0, np.minimum(up, down))
    fb *= (2.0 / (upper - lower))[None, :]
    return fb.astype(np.float32)


def hann_window(win_length: int, n_fft: int) -> NDArray[np.float64]:
    """torch.hann_window(win_length, periodic=True), zero-padded to ``n_fft`` in the middle as
    torch.stft pads a shorter window."""
    if not 0 < win_length <= n_fft:
        raise ModelError(f"win_length must be 1..n_fft ({n_fft}), got {win_length}")
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(window, (left, n_fft - win_length - left))


@dataclass(frozen=True, slots=True)
class SparseFilterbank:
    """A filterbank's non-zero weights, applied by gather and segment sums.

    Each triangular band covers a few neighbouring bins, so this is a few hundred
    multiply-adds per frame, and it never calls BLAS: a (frames x bins) @ (bins x mels) product
    made OpenBLAS wake its thread pool on every window, which on two busy cores cost ten times
    the arithmetic (docs/performance.md).
    """

    bins: NDArray[np.intp]  # (nnz,) bin of each weight, band by band
    weights: NDArray[np.float64]  # (nnz,)
    starts: NDArray[np.intp]  # offset of each non-empty band's first weight (increasing)
    bands: NDArray[np.intp]  # the non-empty bands, in order
    n_mels: int

    @classmethod
    def from_dense(cls, filterbank: NDArray[np.floating]) -> SparseFilterbank:
        """From a dense (bins, n_mels) filterbank."""
        fb = np.asarray(filterbank, dtype=np.float64)
        bins, weights, starts, bands = [], [], [], []
        total = 0
        for band, column in enumerate(fb.T):
            (nonzero,) = np.nonzero(column)
            if nonzero.size == 0:
                continue
            bins.append(nonzero)
            weights.append(column[nonzero])
            starts.append(total)
            bands.append(band)
            total += nonzero.size
        if not bands:
            raise ModelError("the mel filterbank has no non-zero weight")
        return cls(bins=np.concatenate(bins).astype(np.intp), weights=np.concatenate(weights),
                   starts=np.asarray(starts, np.intp), bands=np.asarray(bands, np.intp),
                   n_mels=fb.shape[1])

    def apply(self, power: NDArray[np.float64]) -> NDArray[np.float64]:
        """(..., bins) power -> (..., n_mels) band energies (0 in a band without weights)."""
        sums = np.add.reduceat(power[..., self.bins] * self.weights, self.starts, axis=-1)
        if self.bands.size == self.n_mels:
            return sums
        mel = np.zeros(power.shape[:-1] + (self.n_mels,), dtype=sums.dtype)
        mel[..., self.bands] = sums
        return mel


def log_mel(
    audio: NDArray[np.floating], *, window: NDArray[np.float64], filterbank: SparseFilterbank,
    hop_length: int, feature_norm: str,
) -> NDArray[np.float32]:
    """(batch, samples) audio -> (batch, n_mels, frames) float32, as the compact model's
    ``log_mel`` computes it in torch (module docstring), in float64. ``window`` has ``n_fft``
    taps."""
    n_fft = window.size
    x = np.asarray(audio, dtype=np.float64)
    if x.shape[-1] < n_fft:
        x = np.pad(x, ((0, 0), (0, n_fft - x.shape[-1])))
    half = n_fft // 2
    # torch.stft(center=True): reflect padding (the edge sample is not repeated); sliced by
    # hand, np.pad(mode="reflect") took longer than the FFT
    x = np.concatenate([x[:, half:0:-1], x, x[:, -2:-half - 2:-1]], axis=-1)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=-1)[:, ::hop_length]
    spec = np.fft.rfft(frames * window, axis=-1)  # (batch, frames, bins)
    power = spec.real**2 + spec.imag**2
    logmel = np.log(filterbank.apply(power) + _LOG_FLOOR)  # (batch, frames, mels)
    if feature_norm == "none":
        feats = (logmel + 5.0) / 5.0
    else:
        axes = (1,) if feature_norm == "band" else (1, 2)
        mean = logmel.mean(axis=axes, keepdims=True)
        if logmel.shape[1] > 1:
            std = logmel.std(axis=axes, keepdims=True, ddof=1)  # torch.std: unbiased
        else:
            std = np.ones_like(mean)
        feats = (logmel - mean) / (std + _NORM_EPS)
    return np.ascontiguousarray(feats.transpose(0, 2, 1), dtype=np.float32)


def _checked_windows(windows: Any, sampling_rate: int | None, rate_hz: int) -> NDArray[Any]:
    if sampling_rate is not None and sampling_rate != rate_hz:
        raise AudioError(f"features for {rate_hz} Hz audio, got {sampling_rate} Hz")
    values = np.asarray(windows)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2:
        raise AudioError(f"windows must have shape (batch, samples), got {values.shape}")
    return values


@dataclass(frozen=True, slots=True)
class WaveformFeatures:
    """Raw samples as ``input_values``, each window normalised when ``do_normalize``
    (transformers' Wav2Vec2FeatureExtractor on equal-length windows; module docstring)."""

    do_normalize: bool
    sampling_rate: int = 16_000

    @classmethod
    def from_preprocessor(cls, preprocessor: dict[str, Any]) -> WaveformFeatures:
        """From a ``preprocessor_config.json`` already read as a dict."""
        normalize = preprocessor.get("do_normalize", True)  # transformers' default
        if not isinstance(normalize, bool):
            raise ModelError(f"do_normalize must be true or false, got {normalize!r}")
        return cls(do_normalize=normalize,
                   sampling_rate=int(preprocessor.get("sampling_rate", 16_000)))

    def __call__(self, windows: Any, *, sampling_rate: int | None = None,
                 return_tensors: str = "np") -> dict[str, NDArray[np.float32]]:
        values = _checked_windows(windows, sampling_rate, self.sampling_rate).astype(
            np.float32, copy=False)
        if self.do_normalize:
            # row by row as transformers does, so the float32 reductions are the same ones
            values = np.stack([(x - x.mean()) / np.sqrt(x.var() + _NORMALIZE_EPS)
                               for x in values])
        return {WAVEFORM_INPUT: np.ascontiguousarray(values, dtype=np.float32)}


@dataclass(frozen=True, slots=True)
class LogMelFeatures:
    """The compact model's log-mel front end as ``log_mel`` (module docstring)."""

    sampling_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    f_min_hz: float
    f_max_hz: float
    feature_norm: str
    window: NDArray[np.float64] = field(init=False, repr=False, compare=False)
    filterbank: SparseFilterbank = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.feature_norm not in FEATURE_NORMS:
            raise ModelError(f"feature_norm must be one of {', '.join(FEATURE_NORMS)}, "
                             f"got {self.feature_norm!r}")
        if self.hop_length < 1 or self.n_fft < 2 or self.n_mels < 1:
            raise ModelError(f"bad log-mel settings: n_fft {self.n_fft}, hop_length "
                             f"{self.hop_length}, n_mels {self.n_mels}")
        object.__setattr__(self, "window", hann_window(self.win_length, self.n_fft))
        object.__setattr__(self, "filterbank", SparseFilterbank.from_dense(mel_filterbank(
            sample_rate_hz=self.sampling_rate, n_fft=self.n_fft, n_mels=self.n_mels,
            f_min_hz=self.f_min_hz, f_max_hz=self.f_max_hz)))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LogMelFeatures:
        """From a compact model's ``config.json`` already read as a dict (compact.py's
        defaults for absent fields)."""
        try:
            return cls(
                sampling_rate=int(config.get("sampling_rate", 16_000)),
                n_fft=int(config.get("n_fft", 400)),
                win_length=int(config.get("win_length", 400)),
                hop_length=int(config.get("hop_length", 160)),
                n_mels=int(config.get("n_mels", 64)),
                f_min_hz=float(config.get("f_min_hz", 0.0)),
                f_max_hz=float(config.get("f_max_hz", 8000.0)),
                feature_norm=str(config.get("feature_norm", "none")),
            )
        except (TypeError, ValueError) as exc:
            raise ModelError(f"bad log-mel settings in the model config ({exc})") from exc

    def __call__(self, windows: Any, *, sampling_rate: int | None = None,
                 return_tensors: str = "np") -> dict[str, NDArray[np.float32]]:
        values = _checked_windows(windows, sampling_rate, self.sampling_rate)
        return {LOG_MEL_INPUT: log_mel(values, window=self.window, filterbank=self.filterbank,
                                       hop_length=self.hop_length,
                                       feature_norm=self.feature_norm)}
