"""Training: the compact recipe and wav2vec2-family fine-tuning (main thread, CPU or one GPU).

:func:`train_compact` trains :class:`~streamer.models.compact.CompactEmotionForAudioClassification`
on an in-memory :class:`~streamer.offline.dataset.Dataset` with class- and speaker-balanced draws,
random 2 s crops, mixup and label smoothing, AdamW and a one-cycle schedule, with a tqdm progress
bar.
SpecAugment (inside the model), speed perturbation and random gain are options, off by default:
each lowered the speaker-independent URDU score (``docs/model-card.md``).
:func:`fine_tune` fine-tunes any transformers audio classifier with ``Trainer`` and the reference
recipe. Both save a folder that :func:`streamer.models.loading.load_model` reads.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ
from streamer.errors import DataError, ModelError
from streamer.offline.dataset import DEFAULT_GROUP_REGEX, Dataset

__all__ = [
    "CompactTrainConfig",
    "FineTuneConfig",
    "compact_feature_extractor",
    "crop_batch",
    "draw_weights",
    "fine_tune",
    "save_compact",
    "train_compact",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompactTrainConfig:
    """The compact recipe: optimisation, augmentation and network size."""

    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 1e-2
    crop_s: float = 2.0
    mixup_alpha: float = 0.2
    seed: int = 0
    hidden_size: int = 128
    num_blocks: int = 3
    dropout: float = 0.3
    label_smoothing: float = 0.1
    freq_mask_bands: int = 0
    time_mask_frames: int = 0
    feature_norm: str = "none"
    balance_classes: bool = True
    members: int = 1
    speed_perturb: float = 0.0
    gain_db: float = 0.0
    balance_speakers: bool = True
    speaker_regex: str = DEFAULT_GROUP_REGEX
    #: probability that a training clip is drawn through the phone line (8 kHz G.711)
    phone_prob: float = 0.0
    #: upper end of the mel filterbank (8000 = full band at 16 kHz, 4000 = telephone band)
    f_max_hz: float = 8000.0
    #: STFT window and FFT size in samples at 16 kHz (400 = 25 ms; longer resolves pitch
    #: harmonics better)
    fft_size: int = 400
    #: optimiser steps per epoch at most (an epoch is one pass over the clips, or this many
    #: steps on a large multi-corpus set)
    max_epoch_steps: int = 60
    #: balance draws across corpora too (each corpus weighs the same within a class)
    balance_corpora: bool = True

    def __post_init__(self) -> None:
        if self.feature_norm not in ("band", "global", "none"):
            raise ValueError(
                f"feature_norm must be band, global or none, got {self.feature_norm!r}"
            )
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.2 <= self.crop_s <= 30:
            raise ValueError(f"crop_s must be in [0.2, 30], got {self.crop_s}")
        if not 1 <= self.members <= 16:
            raise ValueError(f"members must be in [1, 16], got {self.members}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.speed_perturb < 0.5:
            raise ValueError(f"speed_perturb must be in [0, 0.5), got {self.speed_perturb}")
        if not 0 <= self.gain_db <= 40:
            raise ValueError(f"gain_db must be in [0, 40], got {self.gain_db}")
        if not 0 <= self.phone_prob <= 1:
            raise ValueError(f"phone_prob must be in [0, 1], got {self.phone_prob}")
        if not 1000 <= self.f_max_hz <= 8000:
            raise ValueError(f"f_max_hz must be in [1000, 8000], got {self.f_max_hz}")
        if not 200 <= self.fft_size <= 2048:
            raise ValueError(f"fft_size must be in [200, 2048], got {self.fft_size}")
        if self.max_epoch_steps < 1:
            raise ValueError(f"max_epoch_steps must be >= 1, got {self.max_epoch_steps}")
        try:
            re.compile(self.speaker_regex)
        except re.error as exc:
            raise ValueError(f"bad speaker regex {self.speaker_regex!r}: {exc}") from exc


@dataclass(frozen=True)
class FineTuneConfig:
    """The reference recipe (Talha/urdu-audio-emotions) for wav2vec2-family fine-tuning."""

    epochs: float = 50
    batch_size: int = 32
    learning_rate: float = 5e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    seed: int = 42
    max_s: float = 3.0
    max_steps: int = -1

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.max_s > 0:
            raise ValueError(f"max_s must be > 0, got {self.max_s}")


def crop_batch(
    audio: list[NDArray[np.float32]] | tuple[NDArray[np.float32], ...],
    n_samples: int,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """Random ``n_samples`` crops, one per clip; short clips are repeated (wrapped) to fit."""
    out = np.empty((len(audio), n_samples), dtype=np.float32)
    for row, clip in enumerate(audio):
        if clip.shape[0] >= n_samples:
            start = int(rng.integers(0, clip.shape[0] - n_samples + 1))
            out[row] = clip[start : start + n_samples]
        else:
            offset = int(rng.integers(0, clip.shape[0]))
            out[row] = np.resize(np.roll(clip, -offset), n_samples)
    return out


def compact_feature_extractor() -> Any:
    """Raw-audio pass-through extractor saved as preprocessor_config.json."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=MODEL_RATE_HZ,
        padding_value=0.0,
        do_normalize=False,
        return_attention_mask=False,
    )


def train_compact(
    data: Dataset,
    config: CompactTrainConfig | None = None,
    *,
    progress: bool = True,
    description: str = "train",
) -> Any:
    """Train the compact network on ``data``; returns the model in eval mode (CPU).

    With ``config.members`` > 1 the members are trained one after the other with seeds
    ``seed, seed + 1, ...`` and joined into one ensemble checkpoint.
    """
    config = config or CompactTrainConfig()
    if len(data) == 0:
        raise ModelError("nothing to train on: the dataset is empty")
    if config.members == 1:
        return _train_one(data, config, progress=progress, description=description)
    singles = [
        _train_one(
            data,
            replace(config, seed=config.seed + i, members=1),
            progress=progress,
            description=f"{description} [{i + 1}/{config.members}]",
        )
        for i in range(config.members)
    ]
    ensemble = _new_model(data.labels, config)
    for member, single in zip(ensemble.members, singles, strict=True):
        member.load_state_dict(single.members[0].state_dict())
    ensemble.eval()
    return ensemble


def _new_model(labels: tuple[str, ...], config: CompactTrainConfig) -> Any:
    from streamer.models.compact import CompactEmotionConfig, CompactEmotionForAudioClassification

    model_config = CompactEmotionConfig(
        hidden_size=config.hidden_size,
        num_blocks=config.num_blocks,
        dropout=config.dropout,
        label_smoothing=config.label_smoothing,
        freq_mask_bands=config.freq_mask_bands,
        time_mask_frames=config.time_mask_frames,
        feature_norm=config.feature_norm,
        f_max_hz=config.f_max_hz,
        n_fft=config.fft_size,
        win_length=config.fft_size,
        num_members=config.members,
        # trained through the phone line too: fit for 8 kHz calls (the engine reads this)
        narrowband=config.phone_prob > 0,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return CompactEmotionForAudioClassification(model_config)


@dataclass(frozen=True)
class _TrainingClips:
    """What each training step draws from: the clips in every version, their targets, the draw
    weights and the classes each clip's corpus has."""

    #: the clips as they are, then (speed perturbation) slower and faster
    versions: list[list[NDArray[np.float32]]]
    #: every clip through the phone line, or None when ``phone_prob`` is 0
    phone: list[NDArray[np.float32]] | None
    targets: NDArray[np.int64]
    weights: NDArray[np.float64] | None
    allowed: NDArray[np.bool_] | None
    n_labels: int


def _training_clips(data: Dataset, config: CompactTrainConfig) -> _TrainingClips:
    versions = _speed_versions(data.audio, config.speed_perturb)
    phone = _phone_versions(data.audio, config.phone_prob)
    groups = _speaker_groups(data, config.speaker_regex) if config.balance_speakers else None
    return _TrainingClips(
        versions=versions,
        phone=phone,
        targets=data.targets,
        weights=draw_weights(
            data.targets,
            corpora=data.corpus_ids if config.balance_corpora else None,
            groups=groups,
            balance_classes=config.balance_classes,
        ),
        # Classes each clip's corpus has: a corpus without (say) Neutral says nothing about
        # Neutral, so its clips only compete among the classes it has.
        allowed=_allowed_classes(data),
        n_labels=len(data.labels),
    )


def _train_one(
    data: Dataset, config: CompactTrainConfig, *, progress: bool, description: str
) -> Any:
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = _new_model(data.labels, config)
    model.train()
    batch = min(config.batch_size, len(data))
    steps_per_epoch = max(1, min(len(data) // batch, config.max_epoch_steps))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.learning_rate,
        total_steps=config.epochs * steps_per_epoch,
        pct_start=0.2,
    )
    clips = _training_clips(data, config)
    bar = tqdm(
        total=config.epochs * steps_per_epoch, desc=description, disable=not progress, unit="step"
    )
    running: float | None = None
    try:
        for epoch in range(config.epochs):
            order = _epoch_order(data.targets, rng, weights=clips.weights)
            losses = []
            for step in range(steps_per_epoch):
                idx = order[step * batch : (step + 1) * batch]
                loss = _batch_loss(model, clips, idx, config, rng)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                value = loss.detach().item()
                losses.append(value)
                running = value if running is None else 0.95 * running + 0.05 * value
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{running:.3f}")
            logger.debug("epoch %d loss %.4f", epoch + 1, float(np.mean(losses)))
    finally:
        bar.close()
    model.eval()
    return model


def _batch_crops(
    clips: _TrainingClips, idx: NDArray[np.int64], config: CompactTrainConfig,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """One batch of random crops: a speed version and (``phone_prob``) the phone line per clip,
    then a random gain per crop."""
    if len(clips.versions) == 1:  # no extra draw: the default recipe stays reproducible
        chosen = [clips.versions[0][i] for i in idx]
    else:
        pick = rng.integers(0, len(clips.versions), size=len(idx))
        chosen = [clips.versions[v][i] for v, i in zip(pick, idx, strict=True)]
    if clips.phone is not None:
        through = rng.random(len(idx)) < config.phone_prob
        chosen = [clips.phone[i] if t else c for c, i, t in zip(chosen, idx, through, strict=True)]
    crops = crop_batch(chosen, int(round(config.crop_s * MODEL_RATE_HZ)), rng)
    if config.gain_db > 0:
        gains = rng.uniform(-config.gain_db, config.gain_db, size=(len(idx), 1))
        crops = np.clip(crops * 10.0 ** (gains / 20.0), -1.0, 1.0).astype(np.float32)
    return crops


def _batch_loss(
    model: Any, clips: _TrainingClips, idx: NDArray[np.int64], config: CompactTrainConfig,
    rng: np.random.Generator,
) -> Any:
    """The loss of one batch, with mixup; a clip's loss covers only the classes its corpus has."""
    import torch
    from torch.nn import functional as F  # noqa: N812

    x = torch.from_numpy(_batch_crops(clips, idx, config, rng))
    y = torch.eye(clips.n_labels)[torch.from_numpy(clips.targets[idx])]
    mask = None if clips.allowed is None else torch.from_numpy(clips.allowed[idx])
    if config.mixup_alpha > 0:
        lam = float(rng.beta(config.mixup_alpha, config.mixup_alpha))
        perm = torch.from_numpy(rng.permutation(len(idx)))
        x = lam * x + (1 - lam) * x[perm]
        y = lam * y + (1 - lam) * y[perm]
        if mask is not None:
            mask = mask | mask[perm]
    if mask is None:
        return model(input_values=x, labels=y).loss
    smoothing = config.label_smoothing
    logits = model(input_values=x).logits.float()
    logits = logits.masked_fill(~mask, -1e4)
    soft = y * (1 - smoothing) + smoothing * mask.float() / mask.sum(-1, keepdim=True)
    return -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def _allowed_classes(data: Dataset) -> NDArray[np.bool_] | None:
    """Per clip, the classes its corpus has (None when every corpus has every class)."""
    n_labels = len(data.labels)
    has = np.zeros((len(data.corpus_names), n_labels), dtype=bool)
    for k in range(len(data.corpus_names)):
        has[k, list(data.corpus_labels(k))] = True
    present = has[np.unique(data.corpus_ids)]
    if present.all():
        return None
    return has[data.corpus_ids]


def _phone_versions(
    audio: tuple[NDArray[np.float32], ...] | list[NDArray[np.float32]], prob: float
) -> list[NDArray[np.float32]] | None:
    """Every clip through the phone line (mu-law and A-law alternating), or None when off."""
    if prob <= 0:
        return None
    from streamer.telephony import phone_line

    return [phone_line(c, law="mulaw" if i % 2 == 0 else "alaw") for i, c in enumerate(audio)]


def _speed_versions(
    audio: tuple[NDArray[np.float32], ...] | list[NDArray[np.float32]], amount: float
) -> list[list[NDArray[np.float32]]]:
    """The clips as they are, plus (``amount`` > 0) played ``1 - amount`` and ``1 + amount``
    times as fast (soxr resampling: tempo and pitch move together, like another speaker)."""
    clips = list(audio)
    if amount <= 0:
        return [clips]
    import soxr

    faster = [soxr.resample(c, MODEL_RATE_HZ, MODEL_RATE_HZ / (1 + amount)) for c in clips]
    slower = [soxr.resample(c, MODEL_RATE_HZ, MODEL_RATE_HZ / (1 - amount)) for c in clips]
    return [clips, [f.astype(np.float32) for f in faster], [s.astype(np.float32) for s in slower]]


def _speaker_groups(data: Dataset, pattern: str) -> list[str] | None:
    """Speaker ids (the dataset's own when it has them, else from the file names), or None (no
    speaker balance) when they carry none."""
    from streamer.offline.dataset import group_ids

    if data.speakers is not None:
        # A clip without a speaker id is its own speaker (class balance only for its corpus).
        return [s if s is not None else f"#{i}" for i, s in enumerate(data.speakers)]
    try:
        return group_ids(data.clips, pattern)
    except DataError as exc:
        logger.info("speaker balance off: %s", exc)
        return None


def draw_weights(
    targets: NDArray[np.int64],
    *,
    corpora: NDArray[np.int64] | None = None,
    groups: list[str] | None = None,
    balance_classes: bool = True,
) -> NDArray[np.float64] | None:
    """Draw probability of each clip, or None for a plain shuffle.

    Each class weighs the same (``balance_classes``); within a class each corpus that has it
    weighs the same (``corpora``: a corpus without a class is not counted for that class, so the
    class keeps its full weight); within a (corpus, class) each speaker weighs the same
    (``groups``). With one corpus this is the class- and speaker-balanced URDU recipe.
    """
    if corpora is not None and len(np.unique(corpora)) < 2:
        corpora = None
    if not balance_classes and groups is None and corpora is None:
        return None
    n = len(targets)
    corpus = np.zeros(n, dtype=np.int64) if corpora is None else np.asarray(corpora)
    speaker = list(range(n)) if groups is None else groups
    cells = Counter(zip(corpus.tolist(), targets.tolist(), strict=True))
    per_speaker = Counter(zip(corpus.tolist(), targets.tolist(), speaker, strict=True))
    speakers_in_cell = Counter((c, t) for c, t, _ in per_speaker)
    corpora_with_class = Counter(t for _, t in cells)
    weights = np.empty(n)
    for i, (c, t, g) in enumerate(zip(corpus.tolist(), targets.tolist(), speaker, strict=True)):
        w = 1.0
        if balance_classes:
            w /= corpora_with_class[t]
        else:  # keep each class's natural share, split across corpora by clip count
            w *= cells[(c, t)] / corpora_with_class[t]
        if groups is not None:
            w /= speakers_in_cell[(c, t)] * per_speaker[(c, t, g)]
        else:
            w /= cells[(c, t)]
        weights[i] = w
    return weights / weights.sum()


def _epoch_order(
    targets: NDArray[np.int64],
    rng: np.random.Generator,
    *,
    weights: NDArray[np.float64] | None,
) -> NDArray[np.int64]:
    """Clip indices for one epoch: a permutation, or draws with replacement by ``weights``.

    Balanced draws matter for speaker folds, where holding out one speaker can leave a class
    with a quarter of the clips of the others; speaker balance keeps one talkative speaker
    (SM5: 72 of the 100 Neutral clips) from standing for a whole class.
    """
    if weights is None:
        return rng.permutation(len(targets))
    return rng.choice(len(targets), size=len(targets), replace=True, p=weights)


def save_compact(model: Any, out: str | Path) -> Path:
    """Save a compact model plus its pass-through feature extractor as a checkpoint folder."""
    from streamer.models.loading import quiet_progress

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(out, safe_serialization=True)
    compact_feature_extractor().save_pretrained(out)
    logger.info("saved compact model to %s", out)
    return out


class _ClipDataset:
    """Torch-style map dataset over in-memory clips, for ``Trainer``."""

    def __init__(self, data: Dataset, max_samples: int) -> None:
        self.data = data
        self.max_samples = max_samples

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "input_values": self.data.audio[i][: self.max_samples],
            "labels": int(self.data.targets[i]),
        }


def fine_tune(
    data: Dataset,
    base: str | Path,
    out: str | Path,
    config: FineTuneConfig | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Fine-tune a transformers audio classifier (folder or cached hub id) with ``Trainer``."""
    from transformers import Trainer

    from streamer.models.loading import load_model, quiet_progress

    config = config or FineTuneConfig()
    loaded = load_model(base, device="cpu", backend="torch")
    extractor, model = loaded.feature_extractor, loaded.model
    if tuple(loaded.labels) != tuple(data.labels):
        logger.info("new classifier head for labels %s (base had %s)", data.labels, loaded.labels)
        model = _reset_head(model, data.labels)
    max_samples = int(config.max_s * MODEL_RATE_HZ)
    out = Path(out)
    model.train()
    trainer = Trainer(
        model=model,
        args=_training_arguments(config, out / "checkpoints", progress=progress),
        train_dataset=_ClipDataset(data, max_samples),
        data_collator=_Collator(extractor),
    )
    trainer.train()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    _remove_if_empty(out / "checkpoints")
    with quiet_progress():
        model.save_pretrained(out, safe_serialization=True)
    extractor.save_pretrained(out)
    logger.info("saved fine-tuned model to %s", out)
    return out


class _Collator:
    """Pads a batch of clips with the checkpoint's feature extractor, for ``Trainer``."""

    def __init__(self, extractor: Any) -> None:
        self.extractor = extractor

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.extractor(
            [item["input_values"] for item in items],
            sampling_rate=MODEL_RATE_HZ,
            padding=True,
            return_tensors="pt",
        )
        batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=torch.long)
        return dict(batch)


def _training_arguments(config: FineTuneConfig, output_dir: Path, *, progress: bool) -> Any:
    """``TrainingArguments`` of the reference recipe: no checkpoints, no evaluation, AMP on CUDA."""
    import torch
    from transformers import TrainingArguments

    use_cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        seed=config.seed,
        fp16=use_cuda,
        use_cpu=not use_cuda,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def _remove_if_empty(folder: Path) -> None:
    """Trainer creates its output_dir even with save_strategy='no'; drop it when empty."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _reset_head(model: Any, labels: tuple[str, ...]) -> Any:
    """Same backbone, a fresh classifier for ``labels`` (reloaded from the base weights)."""
    from transformers import AutoModelForAudioClassification

    config = model.config
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.num_labels = len(labels)
    fresh = AutoModelForAudioClassification.from_config(config)
    state = {k: v for k, v in model.state_dict().items() if fresh.state_dict()[k].shape == v.shape}
    fresh.load_state_dict(state, strict=False)
    return fresh
