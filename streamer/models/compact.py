"""The compact emotion network: a transformers config + model pair (any thread; no I/O).

``CompactEmotionForAudioClassification`` takes raw mono 16 kHz audio (``input_values``, shape
batch x samples, like wav2vec2) and computes a 64-band log-mel spectrogram inside the model
(25 ms Hann window, 10 ms hop, torch.stft and the slaney-style triangular filterbank of
:mod:`streamer.models.features`; ``emotion-monitor optimize`` writes the same front end as
ONNX nodes ahead of the exported CNN, :mod:`streamer.offline.onnx_frontend`).
By default the log-mel is only shifted and scaled by constants, so loudness and spectral tilt
stay visible (per-utterance normalisation, per band or global, is a config option). A small
1-D CNN (batch norm, dilated residual blocks, mean + standard-deviation pooling over time)
classifies it; ``num_members`` > 1 makes an ensemble that averages the members' probabilities.
SpecAugment (time and frequency masks) is applied inside ``forward`` in training mode only.

Importing this module registers nothing: call :func:`register_compact` (idempotent) before
loading a checkpoint through the transformers Auto classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from streamer.models.features import mel_filterbank
from streamer.models.settings import COMPACT_MODEL_TYPE

__all__ = [
    "CompactEmotionConfig",
    "CompactEmotionForAudioClassification",
    "CompactEmotionPreTrainedModel",
    "register_compact",
]


class CompactEmotionConfig(PretrainedConfig):
    """Hyper-parameters of the compact network; front-end settings are in samples at 16 kHz."""

    model_type = COMPACT_MODEL_TYPE

    def __init__(
        self,
        sampling_rate: int = 16000,
        n_fft: int = 400,
        win_length: int = 400,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min_hz: float = 0.0,
        f_max_hz: float = 8000.0,
        hidden_size: int = 128,
        num_blocks: int = 3,
        kernel_size: int = 5,
        dropout: float = 0.3,
        freq_mask_bands: int = 8,
        time_mask_frames: int = 20,
        num_masks: int = 2,
        label_smoothing: float = 0.1,
        initializer_range: float = 0.02,
        feature_norm: str = "none",
        num_members: int = 1,
        **kwargs: Any,
    ) -> None:
        if num_members < 1:
            raise ValueError(f"num_members must be >= 1, got {num_members}")
        self.num_members = num_members
        if feature_norm not in ("band", "global", "none"):
            raise ValueError(f"feature_norm must be band, global or none, got {feature_norm!r}")
        self.feature_norm = feature_norm
        self.sampling_rate = sampling_rate
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.f_min_hz = f_min_hz
        self.f_max_hz = f_max_hz
        self.hidden_size = hidden_size
        self.num_blocks = num_blocks
        self.kernel_size = kernel_size
        self.dropout = dropout
        self.freq_mask_bands = freq_mask_bands
        self.time_mask_frames = time_mask_frames
        self.num_masks = num_masks
        self.label_smoothing = label_smoothing
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


class _Block(nn.Module):
    """Residual dilated conv block: conv -> BN -> ReLU -> dropout, plus the input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=pad, dilation=dilation)
        self.norm = nn.BatchNorm1d(channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(F.relu(self.norm(self.conv(x))))


class _Member(nn.Module):
    """One CNN classifier over log-mel: stem, dilated residual blocks, mean+std pooling, linear."""

    def __init__(self, config: CompactEmotionConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.stem = nn.Sequential(
            nn.Conv1d(config.n_mels, h, config.kernel_size, padding=config.kernel_size // 2),
            nn.BatchNorm1d(h),
            nn.ReLU(),
        )
        self.blocks = nn.ModuleList(
            _Block(h, config.kernel_size, 2**i, config.dropout) for i in range(config.num_blocks)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(2 * h, config.num_labels or 2)

    def forward(self, feats: torch.Tensor, fmask: torch.Tensor | None) -> torch.Tensor:
        x = self.stem(feats.to(self.classifier.weight.dtype))
        for block in self.blocks:
            x = block(x)
        if fmask is None:
            mean = x.mean(-1)
            var = x.var(-1, unbiased=False)
        else:
            m = fmask.to(x.dtype)
            count = m.sum(-1, keepdim=True).clamp(min=1)
            mean = (x * m[:, None, :]).sum(-1) / count
            var = ((x - mean[:, :, None]).square() * m[:, None, :]).sum(-1) / count
        pooled = torch.cat([mean, torch.sqrt(var + 1e-5)], dim=-1)
        return self.classifier(self.dropout(pooled))


class CompactEmotionPreTrainedModel(PreTrainedModel):
    """Weight initialisation and config binding for the compact network."""

    config_class = CompactEmotionConfig
    base_model_prefix = "compact"
    main_input_name = "input_values"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            if module.running_mean is not None and module.running_var is not None:
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        elif isinstance(module, CompactEmotionForAudioClassification):
            module.reset_frontend()


class CompactEmotionForAudioClassification(CompactEmotionPreTrainedModel):
    """Log-mel front end + 1-D CNN(s) + mean/std pooling + linear classifier (an ensemble of
    ``num_members`` such CNNs averages their probabilities)."""

    window: torch.Tensor
    mel_fb: torch.Tensor

    def __init__(self, config: CompactEmotionConfig) -> None:
        super().__init__(config)
        self.register_buffer("window", torch.zeros(config.win_length), persistent=True)
        self.register_buffer(
            "mel_fb", torch.zeros(config.n_fft // 2 + 1, config.n_mels), persistent=True
        )
        self.reset_frontend()
        self.members = nn.ModuleList(_Member(config) for _ in range(config.num_members))
        self.post_init()

    @torch.no_grad()
    def reset_frontend(self) -> None:
        """Fill the fixed (non-learned) STFT window and mel filterbank."""
        c = self.config
        self.window.copy_(torch.hann_window(c.win_length, periodic=True))
        fb = mel_filterbank(
            sample_rate_hz=c.sampling_rate,
            n_fft=c.n_fft,
            n_mels=c.n_mels,
            f_min_hz=c.f_min_hz,
            f_max_hz=c.f_max_hz,
        )
        self.mel_fb.copy_(torch.from_numpy(fb))

    def log_mel(self, input_values: torch.Tensor) -> torch.Tensor:
        """Raw audio (batch, samples) -> normalised log-mel (batch, n_mels, frames), float32."""
        c = self.config
        audio = input_values.float()
        if audio.shape[-1] < c.n_fft:
            audio = F.pad(audio, (0, c.n_fft - audio.shape[-1]))
        spec = torch.stft(
            audio,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window.float(),
            center=True,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # (batch, bins, frames)
        mel = torch.matmul(self.mel_fb.float().t(), power)
        logmel = torch.log(mel + 1e-6)
        if self.config.feature_norm == "none":
            # Fixed affine map only: loudness and spectral tilt stay visible to the network.
            return (logmel + 5.0) / 5.0
        # Per-utterance normalisation removes loudness (global) or also the channel's and the
        # speaker's long-term spectrum (per band, mean and std over time).
        dims = (-1,) if self.config.feature_norm == "band" else (-2, -1)
        mean = logmel.mean(dim=dims, keepdim=True)
        std = logmel.std(dim=dims, keepdim=True) if logmel.shape[-1] > 1 else torch.ones_like(mean)
        return (logmel - mean) / (std + 1e-5)

    def classify(self, feats: torch.Tensor, fmask: torch.Tensor | None = None) -> torch.Tensor:
        """Log-mel features (batch, n_mels, frames) -> logits: the network after the front end
        (what ``emotion-monitor optimize`` exports to ONNX, then puts the front end ahead of as
        ONNX nodes, :mod:`streamer.offline.onnx_frontend`). ``fmask`` (batch, frames) keeps
        padding frames out of the pooled statistics."""
        if len(self.members) == 1:
            return self.members[0](feats, fmask)
        # Ensemble: average the members' probabilities; logits = log of that average.
        probs = torch.stack([F.softmax(m(feats, fmask).float(), dim=-1) for m in self.members])
        return torch.log(probs.mean(0).clamp(min=1e-12))

    def _spec_augment(self, feats: torch.Tensor) -> torch.Tensor:
        c = self.config
        batch, n_mels, frames = feats.shape
        feats = feats.clone()
        for _ in range(c.num_masks):
            if c.freq_mask_bands > 0:
                width = torch.randint(0, c.freq_mask_bands + 1, (batch,))
                start = (torch.rand(batch) * (n_mels - width).clamp(min=1)).long()
                idx = torch.arange(n_mels)[None, :]
                mask = (idx >= start[:, None]) & (idx < (start + width)[:, None])
                feats = feats.masked_fill(mask[:, :, None].to(feats.device), 0.0)
            if c.time_mask_frames > 0:
                width = torch.randint(0, min(c.time_mask_frames, frames) + 1, (batch,))
                start = (torch.rand(batch) * (frames - width).clamp(min=1)).long()
                idx = torch.arange(frames)[None, :]
                mask = (idx >= start[:, None]) & (idx < (start + width)[:, None])
                feats = feats.masked_fill(mask[:, None, :].to(feats.device), 0.0)
        return feats

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Classify raw audio; ``labels`` are class ids or (batch, n_labels) soft targets."""
        feats = self.log_mel(input_values)
        if self.training:
            feats = self._spec_augment(feats)
        frames = feats.shape[-1]
        fmask = None
        if attention_mask is not None and frames > 1:
            # Sample-level mask -> frame-level mask, so padding does not enter the pooled stats.
            valid = attention_mask.float().sum(-1) / self.config.hop_length + 1
            fmask = torch.arange(frames, device=feats.device)[None, :] < valid[:, None]
        logits = self.classify(feats, fmask)
        loss = None
        if labels is not None:
            if labels.dim() == 2:
                logp = F.log_softmax(logits.float(), dim=-1)
                n = logits.shape[-1]
                soft = labels.float() * (1 - self.config.label_smoothing)
                soft = soft + self.config.label_smoothing / n
                loss = -(soft * logp).sum(-1).mean()
            else:
                loss = F.cross_entropy(
                    logits.float(), labels, label_smoothing=self.config.label_smoothing
                )
        return SequenceClassifierOutput(loss=loss, logits=logits)


def register_compact() -> None:
    """Register the compact config/model with the transformers Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModelForAudioClassification

    AutoConfig.register(COMPACT_MODEL_TYPE, CompactEmotionConfig, exist_ok=True)
    AutoModelForAudioClassification.register(
        CompactEmotionConfig, CompactEmotionForAudioClassification, exist_ok=True
    )
