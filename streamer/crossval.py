"""Cross-validation of the compact recipe and the speaker-lookup baseline (main thread).

Fold builders are pure numpy functions:

- :func:`group_folds`: k folds grouped by speaker (a speaker never sits on both sides); groups
  are taken largest first (ties in seeded random order) and each goes to the fold that holds
  the fewest clips so far.
- :func:`stratified_folds`: k random folds with each class dealt evenly (seeded).
- :func:`reference_split`: the reference protocol, one stratified random 80/20 split (seed 42).

Each held-out clip is scored three ways: the whole clip in one pass (``model``), the mean of the
class probabilities of its 2 s windows (``windows_avg``; the windows of
:func:`~streamer.evaluation.clip_windows`, 1 s hop, as the live monitor sees them) and each
window on its own (``windows``, one prediction per window).

The baseline predicts each test clip with its speaker's majority label on the training side,
using no audio at all; a speaker absent from the training side gets the training side's
majority label. It shows how much of a score is speaker recognition.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .dataset import Dataset
from .errors import DataError
from .evaluation import Scores, clip_windows, predict_clips, score

__all__ = [
    "CrossvalResult",
    "FoldResult",
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


@dataclass(frozen=True)
class FoldResult:
    """One held-out fold: the model's (whole clips, window-averaged clips, single windows) and
    the baseline's scores."""

    fold: int
    n_train: int
    model: Scores
    baseline: Scores
    windows_avg: Scores
    windows: Scores


@dataclass(frozen=True)
class CrossvalResult:
    """Per-fold and pooled (all held-out predictions together) scores."""

    folds: tuple[FoldResult, ...]
    pooled: Scores
    pooled_baseline: Scores
    pooled_windows_avg: Scores
    pooled_windows: Scores

    @property
    def uar_mean(self) -> float:
        return float(np.mean([f.model.uar for f in self.folds]))

    @property
    def uar_std(self) -> float:
        return float(np.std([f.model.uar for f in self.folds]))


def run_crossval(
    data: Dataset,
    test_folds: list[NDArray[np.int64]],
    groups: list[str],
    config: object | None = None,
    *,
    progress: bool = True,
) -> CrossvalResult:
    """Train the compact recipe once per fold on the other clips and score the held-out clips
    (whole, window-averaged and window by window)."""
    import torch

    from .models import EmotionModel
    from .training import CompactTrainConfig, compact_feature_extractor, train_compact

    train_config = config if isinstance(config, CompactTrainConfig) else CompactTrainConfig()
    all_true: list[int] = []
    all_pred: list[int] = []
    all_base: list[int] = []
    all_avg: list[int] = []
    win_true: list[int] = []
    win_pred: list[int] = []
    results: list[FoldResult] = []
    extractor = compact_feature_extractor()
    for f, test_idx in enumerate(test_folds):
        mask = np.ones(len(data), dtype=bool)
        mask[test_idx] = False
        train_idx = np.flatnonzero(mask)
        if len(train_idx) == 0 or len(test_idx) == 0:
            raise DataError(f"fold {f + 1} has an empty training or test side")
        train, test = data.subset(train_idx), data.subset(test_idx)
        net = train_compact(
            train, train_config, progress=progress, description=f"fold {f + 1}/{len(test_folds)}"
        )
        model = EmotionModel(
            name=f"fold{f + 1}",
            labels=data.labels,
            sample_rate_hz=16000,
            device="cpu",
            model=net.to(torch.float32),
            feature_extractor=extractor,
        )
        pred = predict_clips(model, test.audio).argmax(axis=1)
        window_probs = [
            model.predict_proba(np.ascontiguousarray(clip_windows(clip))) for clip in test.audio
        ]
        avg = np.array([p.mean(axis=0).argmax() for p in window_probs], dtype=np.int64)
        fold_win_pred = np.concatenate([p.argmax(axis=1) for p in window_probs])
        fold_win_true = np.concatenate(
            [
                np.full(len(p), t, dtype=np.int64)
                for p, t in zip(window_probs, test.targets, strict=True)
            ]
        )
        base = speaker_majority(
            [groups[i] for i in train_idx], train.targets, [groups[i] for i in test_idx]
        )
        fold_scores = score(test.targets, pred, data.labels)
        results.append(
            FoldResult(
                fold=f + 1,
                n_train=len(train_idx),
                model=fold_scores,
                baseline=score(test.targets, base, data.labels),
                windows_avg=score(test.targets, avg, data.labels),
                windows=score(fold_win_true, fold_win_pred, data.labels),
            )
        )
        logger.info(
            "fold %d: n=%d accuracy %.3f UAR %.3f",
            f + 1,
            len(test_idx),
            fold_scores.accuracy,
            fold_scores.uar,
        )
        all_true.extend(int(t) for t in test.targets)
        all_pred.extend(int(p) for p in pred)
        all_base.extend(int(b) for b in base)
        all_avg.extend(int(a) for a in avg)
        win_true.extend(int(t) for t in fold_win_true)
        win_pred.extend(int(p) for p in fold_win_pred)
    return CrossvalResult(
        folds=tuple(results),
        pooled=score(np.array(all_true), np.array(all_pred), data.labels),
        pooled_baseline=score(np.array(all_true), np.array(all_base), data.labels),
        pooled_windows_avg=score(np.array(all_true), np.array(all_avg), data.labels),
        pooled_windows=score(np.array(win_true), np.array(win_pred), data.labels),
    )
