"""Scoring a model on a labelled dataset (main thread; scoring and windowing are pure functions).

Two views of the same data:

- **clips**: each whole clip is one input; its prediction is the arg-max of the model output.
- **windows**: each clip is cut into 2 s windows with a 1 s hop (the last window ends at the
  clip's end; a clip shorter than 2 s is one window of its own length); every window is scored
  on its own against its clip's label. This is what the live monitor sees.

Metrics: accuracy, UAR (unweighted average recall: the mean of per-class recall over the classes
present in the true labels), per-class recall and the confusion matrix (rows true, columns
predicted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ
from streamer.errors import DataError
from streamer.offline.dataset import Dataset

if TYPE_CHECKING:
    from streamer.models.protocol import ClassifierModel

__all__ = [
    "Evaluation",
    "Scores",
    "clip_windows",
    "evaluate_model",
    "plot_confusion",
    "predict_clips",
    "render_scores",
    "score",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    """Accuracy, UAR, per-class recall (NaN for a class absent from the truth), confusion."""

    labels: tuple[str, ...]
    confusion: NDArray[np.int64]
    accuracy: float
    uar: float
    recall: tuple[float, ...] = field(default=())

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def predicted_share(self) -> tuple[float, ...]:
        """Share of the predictions that went to each class (a class never predicted is 0)."""
        counts = self.confusion.sum(axis=0)
        return tuple(float(c) / max(1, self.n) for c in counts)

    @property
    def smallest_share(self) -> float:
        """The smallest predicted share over the classes present in the truth."""
        present = self.confusion.sum(axis=1) > 0
        return float(min(np.array(self.predicted_share)[present]))


def score(y_true: NDArray[np.int64], y_pred: NDArray[np.int64], labels: tuple[str, ...]) -> Scores:
    """Scores of predicted class ids against true ids (both index ``labels``)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ValueError(f"need equal, non-empty 1-D id arrays, got {y_true.shape} {y_pred.shape}")
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    present = support > 0
    return Scores(
        labels=tuple(labels),
        confusion=confusion,
        accuracy=float(np.mean(y_true == y_pred)),
        uar=float(np.mean(recall[present])),
        recall=tuple(float(r) for r in recall),
    )


def clip_windows(
    audio: NDArray[np.float32],
    *,
    window_s: float = 2.0,
    hop_s: float = 1.0,
    rate_hz: int = MODEL_RATE_HZ,
) -> NDArray[np.float32]:
    """Cut one clip into (k, window) windows; see the module docstring for the rule."""
    if window_s <= 0 or hop_s <= 0:
        raise ValueError(f"window_s and hop_s must be > 0, got {window_s}, {hop_s}")
    window = int(round(window_s * rate_hz))
    hop = int(round(hop_s * rate_hz))
    if audio.shape[0] <= window:
        return audio[None, :]
    starts = list(range(0, audio.shape[0] - window + 1, hop))
    if starts[-1] + window < audio.shape[0]:
        starts.append(audio.shape[0] - window)
    return np.stack([audio[s : s + window] for s in starts])


def predict_clips(model: ClassifierModel, audio: tuple[NDArray[np.float32], ...] | list) -> NDArray:
    """Class probabilities of each whole clip, shape (n_clips, n_labels); one clip per call."""
    return np.concatenate([model.predict_proba(clip[None, :]) for clip in audio])


@dataclass(frozen=True)
class Evaluation:
    """A model scored on whole clips and on 2 s windows."""

    model_name: str
    clips: Scores
    windows: Scores
    window_s: float
    hop_s: float


def evaluate_model(
    model: ClassifierModel, data: Dataset, *, window_s: float = 2.0, hop_s: float = 1.0
) -> Evaluation:
    """Score ``model`` on ``data`` (whose labels must be the model's labels, same order)."""
    if tuple(data.labels) != tuple(model.labels):
        raise DataError(
            f"dataset labels {', '.join(data.labels)} differ from the model's "
            f"{', '.join(model.labels)}"
        )
    clip_pred = predict_clips(model, data.audio).argmax(axis=1)
    win_true: list[int] = []
    win_pred: list[int] = []
    for clip, target in zip(data.audio, data.targets, strict=True):
        windows = np.ascontiguousarray(clip_windows(clip, window_s=window_s, hop_s=hop_s))
        pred = model.predict_proba(windows).argmax(axis=1)
        win_pred.extend(int(p) for p in pred)
        win_true.extend([int(target)] * len(pred))
    return Evaluation(
        model_name=model.name,
        clips=score(data.targets, clip_pred, data.labels),
        windows=score(np.array(win_true), np.array(win_pred), data.labels),
        window_s=window_s,
        hop_s=hop_s,
    )


def render_scores(scores: Scores, title: str) -> str:
    """Plain-text block: headline figures, per-class recall and the confusion matrix."""
    width = max(8, *(len(label) for label in scores.labels)) + 1
    lines = [
        f"{title}: n={scores.n}  accuracy={scores.accuracy:.3f}  UAR={scores.uar:.3f}",
        "  recall: "
        + "  ".join(
            f"{label}={'n/a' if np.isnan(r) else f'{r:.3f}'}"
            for label, r in zip(scores.labels, scores.recall, strict=True)
        ),
        "  predicted share: "
        + "  ".join(
            f"{label}={share:.3f}"
            for label, share in zip(scores.labels, scores.predicted_share, strict=True)
        ),
        "  confusion (rows true, columns predicted):",
        "  " + " " * width + "".join(f"{label:>{width}}" for label in scores.labels),
    ]
    for label, row in zip(scores.labels, scores.confusion, strict=True):
        lines.append(f"  {label:<{width}}" + "".join(f"{int(v):>{width}d}" for v in row))
    return "\n".join(lines)


def plot_confusion(scores: Scores, path: str | Path, *, title: str) -> Path:
    """Write the confusion matrix (row-normalised colours, counts as text) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = scores.confusion
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, np.maximum(rows, 1), dtype=np.float64)
    n = len(scores.labels)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1.5))
    try:
        ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(n), scores.labels, rotation=45, ha="right")
        ax.set_yticks(range(n), scores.labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}\naccuracy {scores.accuracy:.3f}, UAR {scores.uar:.3f}")
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(counts[i, j])),
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.5 else "black",
                )
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
