"""Cross-validation of the compact recipe and the speaker-lookup baseline (main thread).

Fold builders are pure numpy functions:

- :func:`group_folds`: k folds grouped by speaker (a speaker never sits on both sides); groups
  are taken largest first (ties in seeded random order) and each goes to the fold that holds
  the fewest clips so far.
- :func:`stratified_folds`: k random folds with each class dealt evenly (seeded).
- :func:`reference_split`: the reference protocol, one stratified random 80/20 split (seed 42).
- :func:`corpus_folds`: leave-one-corpus-out, one fold per corpus of a multi-corpus dataset.

Each held-out clip is scored three ways: the whole clip in one pass (``model``), the mean of the
class probabilities of its 2 s windows (``windows_avg``; the windows of
:func:`~streamer.offline.evaluation.clip_windows`, 1 s hop, as the live monitor sees them) and each
window on its own (``windows``, one prediction per window).

The baseline predicts each test clip with its speaker's majority label on the training side,
using no audio at all; a speaker absent from the training side gets the training side's
majority label. It shows how much of a score is speaker recognition.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from streamer.errors import DataError
from streamer.offline.dataset import Dataset
from streamer.offline.evaluation import Scores, clip_windows, predict_clips, score

if TYPE_CHECKING:
    from streamer.models.protocol import ClassifierModel

__all__ = [
    "CrossvalResult",
    "FoldResult",
    "SideScores",
    "corpus_folds",
    "group_folds",
    "reference_split",
    "run_crossval",
    "speaker_majority",
    "stratified_folds",
]

logger = logging.getLogger(__name__)


def group_folds(groups: list[str], k: int, *, seed: int = 0) -> list[NDArray[np.int64]]:
    """Test indices of ``k`` folds with no group split across folds."""
    names = sorted(set(groups))
    if k < 2:
        raise DataError(f"--folds must be at least 2, got {k}")
    if len(names) < k:
        raise DataError(f"only {len(names)} groups (speakers) for {k} folds; use fewer folds")
    rng = np.random.default_rng(seed)
    sizes = Counter(groups)
    tiebreak = {name: float(r) for name, r in zip(names, rng.random(len(names)), strict=True)}
    order = sorted(names, key=lambda g: (-sizes[g], tiebreak[g]))
    fold_of: dict[str, int] = {}
    load = [0] * k
    for name in order:
        target = int(np.argmin(load))
        fold_of[name] = target
        load[target] += sizes[name]
    members = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(members == f).astype(np.int64) for f in range(k)]


def stratified_folds(
    targets: NDArray[np.int64], k: int, *, seed: int = 0
) -> list[NDArray[np.int64]]:
    """Test indices of ``k`` random folds, each class spread evenly across folds."""
    if k < 2:
        raise DataError(f"--folds must be at least 2, got {k}")
    if len(targets) < k:
        raise DataError(f"only {len(targets)} clips for {k} folds")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(targets), dtype=np.int64)
    offset = 0
    for cls in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == cls))
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return [np.flatnonzero(fold == f).astype(np.int64) for f in range(k)]


def reference_split(
    targets: NDArray[np.int64], *, test_fraction: float = 0.2, seed: int = 42
) -> NDArray[np.int64]:
    """Test indices of one stratified random split (per class, round(fraction * n) clips)."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for cls in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == cls))
        test.extend(int(i) for i in idx[: max(1, int(round(test_fraction * len(idx))))])
    return np.array(sorted(test), dtype=np.int64)


def speaker_majority(
    train_groups: list[str],
    train_targets: NDArray[np.int64],
    test_groups: list[str],
) -> NDArray[np.int64]:
    """Baseline: each test clip gets its speaker's majority training label (no audio used)."""
    fallback = Counter(int(t) for t in train_targets).most_common(1)[0][0]
    by_group: dict[str, Counter[int]] = {}
    for g, t in zip(train_groups, train_targets, strict=True):
        by_group.setdefault(g, Counter())[int(t)] += 1
    return np.array(
        [by_group[g].most_common(1)[0][0] if g in by_group else fallback for g in test_groups],
        dtype=np.int64,
    )


def corpus_folds(data: Dataset) -> tuple[list[NDArray[np.int64]], list[str]]:
    """Leave-one-corpus-out: one fold per corpus, its test side that corpus's clips."""
    ids = data.corpus_ids
    present = [k for k in range(len(data.corpus_names)) if np.any(ids == k)]
    if len(present) < 2:
        raise DataError(
            f"--group corpus needs at least 2 corpora, got {len(present)} "
            "(give several --data folders, or a folder of corpora)"
        )
    return (
        [np.flatnonzero(ids == k).astype(np.int64) for k in present],
        [data.corpus_names[k] for k in present],
    )


@dataclass(frozen=True)
class SideScores:
    """One test side scored three ways: whole clips, window-averaged clips, single windows."""

    model: Scores
    windows_avg: Scores
    windows: Scores


@dataclass(frozen=True)
class FoldResult:
    """One held-out fold: the model's (whole clips, window-averaged clips, single windows) and
    the baseline's scores, at 16 kHz and (``phone``) through the phone line; ``probs`` are the
    whole-clip class probabilities of the test clips (``test_idx``), for calibration."""

    fold: int
    n_train: int
    model: Scores
    baseline: Scores
    windows_avg: Scores
    windows: Scores
    name: str = ""
    phone: SideScores | None = None
    test_idx: NDArray[np.int64] | None = None
    probs: NDArray[np.float32] | None = None
    phone_probs: NDArray[np.float32] | None = None


@dataclass(frozen=True)
class CrossvalResult:
    """Per-fold and pooled (all held-out predictions together) scores."""

    folds: tuple[FoldResult, ...]
    pooled: Scores
    pooled_baseline: Scores
    pooled_windows_avg: Scores
    pooled_windows: Scores
    pooled_phone: SideScores | None = None

    @property
    def uar_mean(self) -> float:
        return float(np.mean([f.model.uar for f in self.folds]))

    @property
    def uar_std(self) -> float:
        return float(np.std([f.model.uar for f in self.folds]))

    @property
    def phone_uar_mean(self) -> float | None:
        if any(f.phone is None for f in self.folds):
            return None
        return float(np.mean([f.phone.model.uar for f in self.folds if f.phone is not None]))


def _score_side(
    model: ClassifierModel, audio: tuple[NDArray[np.float32], ...], targets: NDArray[np.int64],
    labels: tuple[str, ...],
) -> tuple[SideScores, NDArray[np.float32], dict[str, list[int]]]:
    """Score clips three ways; returns the scores, the whole-clip probabilities and the raw
    (true, predicted) ids of each view for pooling."""
    probs = predict_clips(model, audio)
    pred = probs.argmax(axis=1)
    window_probs = [
        model.predict_proba(np.ascontiguousarray(clip_windows(clip)))
        for clip in audio
    ]
    avg = np.array([p.mean(axis=0).argmax() for p in window_probs], dtype=np.int64)
    win_pred = np.concatenate([p.argmax(axis=1) for p in window_probs])
    win_true = np.concatenate(
        [np.full(len(p), t, dtype=np.int64) for p, t in zip(window_probs, targets, strict=True)]
    )
    side = SideScores(
        model=score(targets, pred, labels),
        windows_avg=score(targets, avg, labels),
        windows=score(win_true, win_pred, labels),
    )
    raw = {
        "true": [int(t) for t in targets],
        "pred": [int(p) for p in pred],
        "avg": [int(a) for a in avg],
        "win_true": [int(t) for t in win_true],
        "win_pred": [int(p) for p in win_pred],
    }
    return side, probs.astype(np.float32), raw


class _Pool:
    """Raw (true, predicted) ids of every held-out fold of one side, pooled for scoring
    (``base``: the baseline's predictions, 16 kHz side only)."""

    def __init__(self) -> None:
        self.ids: dict[str, list[int]] = {}

    def add(self, raw: dict[str, list[int]]) -> None:
        for key, values in raw.items():
            self.ids.setdefault(key, []).extend(values)

    def scores(self, labels: tuple[str, ...]) -> SideScores:
        p = self.ids
        return SideScores(
            model=score(np.array(p["true"]), np.array(p["pred"]), labels),
            windows_avg=score(np.array(p["true"]), np.array(p["avg"]), labels),
            windows=score(np.array(p["win_true"]), np.array(p["win_pred"]), labels),
        )


def run_crossval(
    data: Dataset,
    test_folds: list[NDArray[np.int64]],
    groups: list[str],
    config: object | None = None,
    *,
    progress: bool = True,
    fold_names: list[str] | None = None,
    phone_law: str | None = None,
    on_fold: Callable[[FoldResult], None] | None = None,
) -> CrossvalResult:
    """Train the compact recipe once per fold on the other clips and score the held-out clips
    (whole, window-averaged and window by window), also through the phone line when
    ``phone_law`` is ``"mulaw"`` or ``"alaw"``. ``on_fold`` sees each fold as it finishes."""
    import torch

    from streamer.models.torch_runner import TorchRunner
    from streamer.offline.training import (
        CompactTrainConfig,
        compact_feature_extractor,
        train_compact,
    )

    train_config = config if isinstance(config, CompactTrainConfig) else CompactTrainConfig()
    wide, phone = _Pool(), _Pool()
    results: list[FoldResult] = []
    extractor = compact_feature_extractor()
    for f, test_idx in enumerate(test_folds):
        train_idx = _train_side(len(data), test_idx, fold=f + 1)
        name = fold_names[f] if fold_names is not None else f"fold {f + 1}"
        train = data.subset(train_idx)
        net = train_compact(
            train, train_config, progress=progress,
            description=f"{name} ({f + 1}/{len(test_folds)})",
        )
        model = TorchRunner(
            name=f"fold{f + 1}",
            labels=data.labels,
            sample_rate_hz=16000,
            device="cpu",
            model=net.to(torch.float32),
            feature_extractor=extractor,
        )
        base = speaker_majority(
            [groups[i] for i in train_idx], train.targets, [groups[i] for i in test_idx]
        )
        result = _score_fold(
            model, data.subset(test_idx), base, fold=f + 1, name=name, n_train=len(train_idx),
            test_idx=test_idx, phone_law=phone_law, wide=wide, phone=phone,
        )
        results.append(result)
        if on_fold is not None:
            on_fold(result)
    return _pooled(results, wide, phone if phone_law is not None else None, data.labels)


def _pooled(
    results: list[FoldResult], wide: _Pool, phone: _Pool | None, labels: tuple[str, ...]
) -> CrossvalResult:
    """The folds and the scores of all their held-out predictions together."""
    pooled = wide.scores(labels)
    return CrossvalResult(
        folds=tuple(results),
        pooled=pooled.model,
        pooled_baseline=score(np.array(wide.ids["true"]), np.array(wide.ids["base"]), labels),
        pooled_windows_avg=pooled.windows_avg,
        pooled_windows=pooled.windows,
        pooled_phone=phone.scores(labels) if phone is not None else None,
    )


def _train_side(n_clips: int, test_idx: NDArray[np.int64], *, fold: int) -> NDArray[np.int64]:
    """Indices of every clip not in ``test_idx``; a fold with an empty side is refused."""
    mask = np.ones(n_clips, dtype=bool)
    mask[test_idx] = False
    train_idx = np.flatnonzero(mask)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"fold {fold} has an empty training or test side")
    return train_idx


def _score_fold(
    model: ClassifierModel,
    test: Dataset,
    base: NDArray[np.int64],
    *,
    fold: int,
    name: str,
    n_train: int,
    test_idx: NDArray[np.int64],
    phone_law: str | None,
    wide: _Pool,
    phone: _Pool,
) -> FoldResult:
    """Score one fold's held-out clips (and the baseline's ``base`` labels); pool the raw ids."""
    side, probs, raw = _score_side(model, test.audio, test.targets, test.labels)
    wide.add({**raw, "base": [int(b) for b in base]})
    phone_side = phone_probs = None
    if phone_law is not None:
        from streamer.telephony import phone_line

        narrow = tuple(phone_line(a, law=phone_law) for a in test.audio)
        phone_side, phone_probs, raw = _score_side(model, narrow, test.targets, test.labels)
        phone.add(raw)
    extra = "" if phone_side is None else f" (phone UAR {phone_side.model.uar:.3f})"
    logger.info(
        "%s: n=%d accuracy %.3f UAR %.3f%s",
        name, len(test_idx), side.model.accuracy, side.model.uar, extra,
    )
    return FoldResult(
        fold=fold,
        n_train=n_train,
        model=side.model,
        baseline=score(test.targets, base, test.labels),
        windows_avg=side.windows_avg,
        windows=side.windows,
        name=name,
        phone=phone_side,
        test_idx=np.asarray(test_idx, dtype=np.int64),
        probs=probs,
        phone_probs=phone_probs,
    )
