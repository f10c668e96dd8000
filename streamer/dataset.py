"""Folder-per-label audio datasets (main thread; pure functions plus file reads).

A dataset is a folder whose sub-folders are the labels (``Angry/``, ``Happy/``, ...), each
holding audio files of any rate and channel count. :func:`scan_dataset` lists them,
:func:`load_dataset` reads every file once as mono float32 at 16 kHz and keeps it in memory.
Unreadable or empty files are skipped with a warning that names them; a dataset with nothing
usable, no label folders or fewer than two classes raises :class:`DataError`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .audio import MODEL_RATE_HZ, read_audio
from .errors import AudioError, DataError

__all__ = [
    "AUDIO_SUFFIXES",
    "DEFAULT_GROUP_REGEX",
    "Clip",
    "Dataset",
    "group_ids",
    "load_dataset",
    "scan_dataset",
]

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff"})
# URDU file names: S<G><N>_F<K>_<E><M>.wav -> speaker id S<G><N>, e.g. SM1, SF3.
DEFAULT_GROUP_REGEX = r"^(S[MF]\d+)_"


@dataclass(frozen=True)
class Clip:
    """One audio file and its label (the name of its folder)."""

    path: Path
    label: str


@dataclass(frozen=True)
class Dataset:
    """Clips read into memory: mono float32 at 16 kHz, label ids index ``labels``."""

    labels: tuple[str, ...]
    clips: tuple[Clip, ...]
    audio: tuple[NDArray[np.float32], ...]
    targets: NDArray[np.int64]
    skipped: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.clips) == len(self.audio) == len(self.targets):
            raise ValueError("clips, audio and targets must have the same length")

    def __len__(self) -> int:
        return len(self.clips)

    def subset(self, indices: NDArray[np.int64] | list[int]) -> Dataset:
        """The clips at ``indices``, same label set."""
        idx = [int(i) for i in indices]
        return Dataset(
            labels=self.labels,
            clips=tuple(self.clips[i] for i in idx),
            audio=tuple(self.audio[i] for i in idx),
            targets=self.targets[idx],
        )


def scan_dataset(root: str | Path) -> list[Clip]:
    """List audio files under ``root/<label>/``; sorted, hidden entries ignored."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such data folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one sub-folder per label)")
    label_dirs = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
    )
    if not label_dirs:
        raise DataError(f"{root}: no label folders (expected e.g. {root}/Angry/*.wav)")
    clips = [
        Clip(path=f, label=d.name)
        for d in label_dirs
        for f in sorted(d.iterdir())
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in AUDIO_SUFFIXES
    ]
    if not clips:
        suffixes = ", ".join(sorted(AUDIO_SUFFIXES))
        raise DataError(f"{root}: the label folders hold no audio files ({suffixes})")
    return clips


def load_dataset(
    root: str | Path,
    *,
    labels: tuple[str, ...] | None = None,
    min_classes: int = 2,
) -> Dataset:
    """Read a folder-per-label dataset at 16 kHz, skipping (and naming) unusable files.

    ``labels`` fixes the label set and its order (e.g. a model's labels for evaluation): a
    folder not in it is an error. Otherwise the labels are the sorted folder names with at least
    one usable file, and there must be at least ``min_classes`` of them.
    """
    root = Path(root)
    clips = scan_dataset(root)
    if labels is not None:
        unknown = sorted({c.label for c in clips} - set(labels))
        if unknown:
            raise DataError(
                f"{root}: unknown label folder(s) {', '.join(unknown)}; "
                f"the model knows {', '.join(labels)}"
            )
    kept: list[Clip] = []
    audio: list[NDArray[np.float32]] = []
    skipped: list[Path] = []
    for clip in clips:
        try:
            samples = read_audio(clip.path, target_rate_hz=MODEL_RATE_HZ)
        except AudioError as exc:
            logger.warning("skipping %s", exc)
            skipped.append(clip.path)
            continue
        if samples.size == 0 or not np.all(np.isfinite(samples)):
            logger.warning("skipping %s: empty or non-finite audio after resampling", clip.path)
            skipped.append(clip.path)
            continue
        kept.append(clip)
        audio.append(np.ascontiguousarray(samples, dtype=np.float32))
    if not kept:
        raise DataError(f"{root}: none of the {len(clips)} audio file(s) could be read")
    if labels is None:
        labels = tuple(sorted({c.label for c in kept}))
        if len(labels) < min_classes:
            raise DataError(
                f"{root}: need at least {min_classes} label folders with usable audio, "
                f"found {len(labels)} ({', '.join(labels)})"
            )
    index = {label: i for i, label in enumerate(labels)}
    targets = np.array([index[c.label] for c in kept], dtype=np.int64)
    if skipped:
        logger.warning("skipped %d unusable file(s) in %s", len(skipped), root)
    logger.info("loaded %d clips, %d labels from %s", len(kept), len(labels), root)
    return Dataset(
        labels=tuple(labels),
        clips=tuple(kept),
        audio=tuple(audio),
        targets=targets,
        skipped=tuple(skipped),
    )


def group_ids(
    clips: tuple[Clip, ...] | list[Clip], pattern: str = DEFAULT_GROUP_REGEX
) -> list[str]:
    """Group (speaker) id of each clip: the first capture group of ``pattern`` on the file name."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"bad --group-regex {pattern!r}: {exc}") from exc
    groups = []
    for clip in clips:
        match = regex.search(clip.path.name)
        if match is None:
            raise DataError(f"{clip.path.name}: file name does not match group regex {pattern!r}")
        groups.append(match.group(1) if regex.groups else match.group(0))
    return groups
