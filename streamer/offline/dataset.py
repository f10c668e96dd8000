"""Folder-per-label audio datasets, one corpus or several (main thread; pure functions plus
file reads).

A corpus is a folder whose sub-folders are the labels (``Angry/``, ``Happy/``, ...), each
holding audio files of any rate and channel count. :func:`scan_dataset` lists them,
:func:`load_dataset` reads every file once as mono float32 at 16 kHz and keeps it in memory.
Unreadable or empty files are skipped with a warning that names them; a dataset with nothing
usable, no label folders or fewer than two classes raises :class:`DataError`.

Several corpora: :func:`resolve_corpora` turns ``--data`` folders (each a corpus, or a folder of
corpora such as ``../shared/data/corpora``) into :class:`CorpusSpec` s, each with its speaker-id
regex (:data:`KNOWN_SPEAKER_REGEX` for the six corpora this project trains on, or one given
explicitly), and :func:`load_corpora` reads them into one :class:`Dataset` that remembers each
clip's corpus and speaker. Label folders are matched through :data:`LABEL_ALIASES`
(``anger`` -> ``Angry``); a label no alias maps that only one of several corpora has, or a folder
name that looks like a misspelt label, is refused with a one-line :class:`DataError`.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from streamer.audio import MODEL_RATE_HZ, read_audio
from streamer.errors import AudioError, DataError

__all__ = [
    "AUDIO_SUFFIXES",
    "CANONICAL_LABELS",
    "DEFAULT_GROUP_REGEX",
    "KNOWN_SPEAKER_REGEX",
    "LABEL_ALIASES",
    "Clip",
    "CorpusSpec",
    "Dataset",
    "canonical_label",
    "group_ids",
    "is_corpus_folder",
    "load_corpora",
    "load_dataset",
    "resolve_corpora",
    "scan_dataset",
]

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff"})
# URDU file names: S<G><N>_F<K>_<E><M>.wav -> speaker id S<G><N>, e.g. SM1, SF3.
DEFAULT_GROUP_REGEX = r"^(S[MF]\d+)_"

#: speaker id (first group) of each corpus this project ships figures for, by folder name
#: (matched case-insensitively); ``../shared/data/corpora/README.md`` documents them.
KNOWN_SPEAKER_REGEX: dict[str, str] = {
    "urdu": DEFAULT_GROUP_REGEX,
    "tess": r"^([OY])AF?_",
    "ased": r"^[nhsaS]\d-\d\d-\d\d-\d\d-(\d\d)",
    "nemo": r"^([A-Z]{2}\d)_",
    "turev-db": r"^(\d{4})_",
    "emotiontts-opendb-korean": r"^([a-z]{3})\d{5}",
}

#: the four labels of the bundled model
CANONICAL_LABELS = ("Angry", "Happy", "Neutral", "Sad")
#: label folder names (lower case) that mean one of the canonical labels
LABEL_ALIASES: dict[str, str] = {
    "angry": "Angry", "anger": "Angry", "ang": "Angry", "mad": "Angry",
    "happy": "Happy", "happiness": "Happy", "hap": "Happy", "joy": "Happy",
    "neutral": "Neutral", "neu": "Neutral",
    "sad": "Sad", "sadness": "Sad",
}


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
    #: corpus names; ``corpora[i]`` indexes them (one corpus when not given)
    corpus_names: tuple[str, ...] = ("data",)
    corpora: NDArray[np.int64] | None = None
    #: speaker id of each clip ("corpus/speaker"), or None where the corpus has no speaker regex
    speakers: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if not len(self.clips) == len(self.audio) == len(self.targets):
            raise ValueError("clips, audio and targets must have the same length")
        if self.corpora is None:
            object.__setattr__(self, "corpora", np.zeros(len(self.clips), dtype=np.int64))
        elif len(self.corpora) != len(self.clips):
            raise ValueError("corpora must have one entry per clip")
        if self.speakers is not None and len(self.speakers) != len(self.clips):
            raise ValueError("speakers must have one entry per clip")

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def corpus_ids(self) -> NDArray[np.int64]:
        """Corpus index of each clip (into ``corpus_names``)."""
        assert self.corpora is not None  # set in __post_init__
        return self.corpora

    def corpus_labels(self, corpus: int) -> tuple[int, ...]:
        """Label ids that corpus ``corpus`` has clips of."""
        return tuple(int(t) for t in np.unique(self.targets[self.corpus_ids == corpus]))

    def subset(self, indices: NDArray[np.int64] | list[int]) -> Dataset:
        """The clips at ``indices``, same label set and corpus names."""
        idx = [int(i) for i in indices]
        return Dataset(
            labels=self.labels,
            clips=tuple(self.clips[i] for i in idx),
            audio=tuple(self.audio[i] for i in idx),
            targets=self.targets[idx],
            corpus_names=self.corpus_names,
            corpora=self.corpus_ids[idx],
            speakers=None if self.speakers is None else tuple(self.speakers[i] for i in idx),
        )

    def with_audio(self, audio: Sequence[NDArray[np.float32]]) -> Dataset:
        """The same clips with other audio (e.g. through a phone line)."""
        return Dataset(
            labels=self.labels,
            clips=self.clips,
            audio=tuple(audio),
            targets=self.targets,
            skipped=self.skipped,
            corpus_names=self.corpus_names,
            corpora=self.corpora,
            speakers=self.speakers,
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


def canonical_label(folder: str) -> str:
    """The label a folder name stands for: an alias's canonical label, else the name itself.

    A name that is no alias but close to one (``Angyr``, ``Nuetral``) is refused as misspelt.
    """
    key = folder.strip().lower()
    if key in LABEL_ALIASES:
        return LABEL_ALIASES[key]
    close = difflib.get_close_matches(key, list(LABEL_ALIASES), n=1, cutoff=0.75)
    if close:
        raise DataError(
            f"label folder {folder!r} looks like a misspelling of {LABEL_ALIASES[close[0]]!r}; "
            "rename it"
        )
    return folder


def _read_clips(
    clips: Sequence[Clip], *, progress: bool = False, description: str = "read"
) -> tuple[list[Clip], list[NDArray[np.float32]], list[Path]]:
    """Read each clip at 16 kHz; unusable files are skipped, named in a warning, and returned."""
    kept: list[Clip] = []
    audio: list[NDArray[np.float32]] = []
    skipped: list[Path] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(clips), desc=description, unit="clip", leave=False)
    try:
        for clip in clips:
            if bar is not None:
                bar.update(1)
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
    finally:
        if bar is not None:
            bar.close()
    return kept, audio, skipped


def _canonical_clips(root: Path, clips: list[Clip]) -> list[Clip]:
    """Clips with their label folder mapped through the aliases (misspellings refused)."""
    names: dict[str, str] = {}
    for folder in sorted({c.label for c in clips}):
        try:
            names[folder] = canonical_label(folder)
        except DataError as exc:
            raise DataError(f"{root}: {exc}") from None
    return [Clip(path=c.path, label=names[c.label]) for c in clips]


def load_dataset(
    root: str | Path,
    *,
    labels: tuple[str, ...] | None = None,
    min_classes: int = 2,
    progress: bool = False,
) -> Dataset:
    """Read a folder-per-label dataset at 16 kHz, skipping (and naming) unusable files.

    ``labels`` fixes the label set and its order (e.g. a model's labels for evaluation): a
    folder not in it is an error. Otherwise the labels are the sorted folder names with at least
    one usable file, and there must be at least ``min_classes`` of them. Folder names go through
    :func:`canonical_label`.
    """
    root = Path(root)
    clips = _canonical_clips(root, scan_dataset(root))
    if labels is not None:
        unknown = sorted({c.label for c in clips} - set(labels))
        if unknown:
            raise DataError(
                f"{root}: unknown label folder(s) {', '.join(unknown)}; "
                f"the model knows {', '.join(labels)}"
            )
    kept, audio, skipped = _read_clips(clips, progress=progress, description=root.name)
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
        corpus_names=(root.name or "data",),
    )


@dataclass(frozen=True)
class CorpusSpec:
    """One corpus folder, its name and its speaker-id regex (None: speakers unknown)."""

    path: Path
    name: str
    speaker_regex: str | None


def is_corpus_folder(folder: Path) -> bool:
    """True when ``folder`` holds label folders with audio (rather than corpus folders)."""
    for sub in folder.iterdir():
        if sub.is_dir() and not sub.name.startswith((".", "_")):
            if any(f.suffix.lower() in AUDIO_SUFFIXES for f in sub.iterdir() if f.is_file()):
                return True
    return False


def resolve_corpora(
    folders: Sequence[str | Path],
    *,
    speaker_regex: dict[str, str] | None = None,
    default_regex: str | None = None,
) -> list[CorpusSpec]:
    """``--data`` folders -> corpora. A folder with label folders is one corpus; a folder whose
    sub-folders are corpora (``../shared/data/corpora``) stands for all of them.

    Each corpus's speaker regex: ``speaker_regex[name]`` (names matched case-insensitively), else
    ``default_regex``, else :data:`KNOWN_SPEAKER_REGEX`, else None.
    """
    given = {k.lower(): v for k, v in (speaker_regex or {}).items()}
    specs: list[CorpusSpec] = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise DataError(f"{root}: no such data folder" if not root.exists() else
                            f"{root}: not a folder (expected one sub-folder per label)")
        if is_corpus_folder(root):
            roots = [root]
        else:
            roots = sorted(
                p for p in root.iterdir()
                if p.is_dir() and not p.name.startswith((".", "_")) and is_corpus_folder(p)
            )
            if not roots:
                raise DataError(
                    f"{root}: no label folders with audio, and no corpus folders holding them "
                    f"(expected {root}/Angry/*.wav or {root}/<corpus>/Angry/*.wav)"
                )
        for r in roots:
            name = r.name if r.name.lower() != "urdu" else "URDU"
            regex = given.get(name.lower(), default_regex or KNOWN_SPEAKER_REGEX.get(name.lower()))
            specs.append(CorpusSpec(path=r, name=name, speaker_regex=regex))
    names = [s.name.lower() for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"corpus {twice[0]!r} given more than once")
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise DataError(
            f"--speaker-regex names corpus {unknown[0]!r}, which is not among the data "
            f"({', '.join(s.name for s in specs)})"
        )
    return specs


def _corpus_speakers(spec: CorpusSpec, clips: Sequence[Clip]) -> list[str | None]:
    if spec.speaker_regex is None:
        return [None] * len(clips)
    try:
        regex = re.compile(spec.speaker_regex)
    except re.error as exc:
        raise DataError(f"corpus {spec.name}: bad speaker regex {spec.speaker_regex!r}: {exc}") \
            from exc
    out: list[str | None] = []
    for clip in clips:
        match = regex.search(clip.path.name)
        if match is None:
            some = any(regex.search(c.path.name) for c in clips)
            what = "does not match some file names" if some else "matches no file name"
            raise DataError(
                f"corpus {spec.name}: speaker regex {spec.speaker_regex!r} {what}, "
                f"e.g. {clip.path.name}"
            )
        out.append(f"{spec.name}/{match.group(1) if regex.groups else match.group(0)}")
    return out


def load_corpora(
    specs: Sequence[CorpusSpec],
    *,
    labels: tuple[str, ...] | None = None,
    progress: bool = False,
) -> Dataset:
    """Read several corpora into one dataset that knows each clip's corpus and speaker.

    Labels are the union of the corpora's (after aliases; sorted) unless ``labels`` fixes them.
    A corpus may lack a class the others have (TurEV-DB has no Neutral); a label that only one
    of several corpora has and no alias maps is refused (likely a different label scheme).
    """
    if not specs:
        raise DataError("no data folders given")
    per_corpus = [(spec, _canonical_clips(spec.path, scan_dataset(spec.path))) for spec in specs]
    _check_corpus_labels(per_corpus, labels)
    read = _read_corpora(per_corpus, progress=progress)
    if labels is None:
        labels = tuple(sorted({c.label for c in read.clips}))
        if len(labels) < 2:
            raise DataError(f"need at least 2 labels with usable audio, found {labels}")
    index = {label: i for i, label in enumerate(labels)}
    if read.skipped:
        logger.warning("skipped %d unusable file(s)", len(read.skipped))
    return Dataset(
        labels=tuple(labels),
        clips=tuple(read.clips),
        audio=tuple(read.audio),
        targets=np.array([index[c.label] for c in read.clips], dtype=np.int64),
        skipped=tuple(read.skipped),
        corpus_names=tuple(spec.name for spec in specs),
        corpora=np.array(read.corpora, dtype=np.int64),
        speakers=tuple(read.speakers),
    )


def _check_corpus_labels(
    per_corpus: Sequence[tuple[CorpusSpec, list[Clip]]], labels: tuple[str, ...] | None
) -> None:
    """Refuse label folders outside ``labels``, or (labels not fixed) a label folder only one of
    several corpora has that is no known alias."""
    if labels is None and len(per_corpus) > 1:
        canonical = set(LABEL_ALIASES.values())
        owners: dict[str, list[str]] = {}
        for spec, clips in per_corpus:
            for label in {c.label for c in clips}:
                owners.setdefault(label, []).append(spec.name)
        for label, names in sorted(owners.items()):
            if label not in canonical and len(names) == 1:
                others = sorted(set(owners) - {label})
                raise DataError(
                    f"corpus {names[0]}: label folder {label!r} is in no other corpus and is no "
                    f"known alias (the others have {', '.join(others)}); map or remove it"
                )
    if labels is not None:
        for spec, clips in per_corpus:
            unknown = sorted({c.label for c in clips} - set(labels))
            if unknown:
                raise DataError(
                    f"{spec.path}: unknown label folder(s) {', '.join(unknown)}; "
                    f"the model knows {', '.join(labels)}"
                )


@dataclass
class _CorporaRead:
    """The usable clips of every corpus, in corpus order, with their corpus and speaker."""

    clips: list[Clip] = field(default_factory=list)
    audio: list[NDArray[np.float32]] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    corpora: list[int] = field(default_factory=list)
    speakers: list[str | None] = field(default_factory=list)


def _read_corpora(
    per_corpus: Sequence[tuple[CorpusSpec, list[Clip]]], *, progress: bool
) -> _CorporaRead:
    """Read each corpus's clips; a corpus with no readable file is refused."""
    read = _CorporaRead()
    for k, (spec, clips) in enumerate(per_corpus):
        found = _corpus_speakers(spec, clips)  # before reading: a bad regex fails fast
        kept, audio, skipped = _read_clips(clips, progress=progress, description=spec.name)
        if not kept:
            raise DataError(f"{spec.path}: none of the {len(clips)} audio file(s) could be read")
        by_path = dict(zip((c.path for c in clips), found, strict=True))
        read.clips.extend(kept)
        read.audio.extend(audio)
        read.skipped.extend(skipped)
        read.corpora.extend([k] * len(kept))
        read.speakers.extend(by_path[c.path] for c in kept)
        logger.info("corpus %s: %d clips", spec.name, len(kept))
    return read


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
