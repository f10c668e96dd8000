"""Smoothing on calls made of labelled clips: does the smoothed label follow the speech?

Each call is ``--clips`` turns of one corpus (drawn at random, fixed seed, each turn's label
differing from the one before, so every boundary is a change), joined with ``--gap-s`` of
silence, with ``--gap-s`` of silence before and after. A turn is one clip, or with
``--turn-clips N`` N clips of its label 0.1 s apart (one VAD segment: a longer turn, as in a
conversation; clips of acted corpora are 1-4 s, one to three windows each, too short for an
average to matter). Calls are spread evenly over the
corpora found under ``--data`` (default: every corpus in ``../shared/data/corpora`` and
``../shared/data/urdu``). Each call runs through the real engine (VAD gate, windows, model,
smoother; ``realtime=False``, so nothing is dropped) once per smoothing setting, and every
labelled window is scored against the label of the clip it overlaps most:

- raw: the window's own arg-max label;
- smoothed acc: the rolling label (``"uncertain"`` counts as wrong; its share is shown too);
- smoothed class: the class under the rolling label (the EMA's arg-max where it says
  "uncertain"): what smoothing alone does, apart from the decision to abstain;
- shown acc: the rolling label's accuracy over the windows where it names a class;
- first after a change: the first window of each turn after the first one of a call;
- turns missed: turns none of whose windows shows the clip's label.

``--phone`` puts each whole call through the phone line first (8 kHz G.711,
:func:`streamer.telephony.phone_line`). Clips the model was trained on score high: the
bundled model was trained on all of URDU, so read the per-corpus lines.

    nice python bench/smoothing_calls.py [--model DIR] [--phone] [--calls 48] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
RATE = 16000
AUDIO_SUFFIXES = (".ogg", ".wav", ".flac")
#: silence between the clips of one turn (--turn-clips): a pause inside a sentence, under the
#: VAD's padding, so a turn is one speech segment
TURN_PAUSE_S = 0.1

# smoothing settings compared (SmoothingConfig fields; None = off)
SETTINGS: dict[str, dict[str, float | bool | None]] = {
    "old (no gap handling)": {"gap_reset_s": None, "gap_decay_s": None, "warmup": False},
    "reset, no warm-up": {"warmup": False},
    "new (defaults)": {},
    "decay 0.5 s, no reset": {"gap_reset_s": None, "gap_decay_s": 0.5},
}


@dataclass
class Call:
    corpus: str
    audio: np.ndarray
    clips: list[tuple[float, float, str]]  # (start s, end s, label) in call time


@dataclass
class Score:
    windows: int = 0
    raw: int = 0
    smoothed: int = 0
    smoothed_class: int = 0  # the smoothed class (the EMA's arg-max where "uncertain") right
    uncertain: int = 0
    changes: int = 0
    first_raw: int = 0
    first_smoothed: int = 0
    turns: int = 0
    missed_raw: int = 0
    missed_smoothed: int = 0
    segments: int = 0

    def add(self, other: Score) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def row(self) -> dict[str, Any]:
        n, c = max(self.windows, 1), max(self.changes, 1)
        return {
            "windows": self.windows, "raw_acc": self.raw / n, "smoothed_acc": self.smoothed / n,
            "smoothed_class_acc": self.smoothed_class / n,
            "shown_acc": self.smoothed / max(self.windows - self.uncertain, 1),
            "uncertain_share": self.uncertain / n, "changes": self.changes,
            "first_after_change_raw": self.first_raw / c,
            "first_after_change_smoothed": self.first_smoothed / c,
            "turns": self.turns, "turns_missed_raw": self.missed_raw,
            "turns_missed_smoothed": self.missed_smoothed, "vad_segments": self.segments,
        }


@dataclass
class Results:
    by_setting: dict[str, Score] = field(default_factory=dict)
    by_corpus: dict[str, dict[str, Score]] = field(default_factory=dict)


def corpora(roots: list[Path], labels: tuple[str, ...]) -> dict[str, dict[str, list[Path]]]:
    """corpus name -> label -> files, for each root that is a corpus or holds corpora."""
    found: dict[str, dict[str, list[Path]]] = {}
    for root in roots:
        candidates = [root] if any((root / lab).is_dir() for lab in labels) else sorted(
            p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        for folder in candidates:
            files = {
                lab: sorted(f for f in (folder / lab).iterdir() if f.suffix in AUDIO_SUFFIXES)
                for lab in labels if (folder / lab).is_dir()
            }
            files = {lab: fs for lab, fs in files.items() if fs}
            if len(files) >= 2:
                found[folder.name] = files
    return found


def build_calls(found: dict[str, dict[str, list[Path]]], *, calls: int, clips: int,
                gap_s: float, seed: int, turn_clips: int = 1) -> list[Call]:
    """Calls of ``clips`` turns, each turn ``turn_clips`` clips of one label (0.1 s apart)."""
    from streamer.audio import read_audio

    rng = np.random.default_rng(seed)
    names = sorted(found)
    gap = np.zeros(int(round(gap_s * RATE)), dtype=np.float32)
    pause = np.zeros(int(round(TURN_PAUSE_S * RATE)), dtype=np.float32)
    out = []
    for i in range(calls):
        corpus = names[i % len(names)]
        by_label = found[corpus]
        parts, spans, t, previous = [gap], [], gap.size / RATE, None
        for _ in range(clips):
            label = str(rng.choice([lab for lab in sorted(by_label) if lab != previous]))
            pieces = []
            for _ in range(turn_clips):
                path = by_label[label][int(rng.integers(len(by_label[label])))]
                pieces += [read_audio(path, target_rate_hz=RATE), pause]
            audio = np.concatenate(pieces[:-1])
            spans.append((t, t + audio.size / RATE, label))
            parts += [audio, gap]
            t += (audio.size + gap.size) / RATE
            previous = label
        out.append(Call(corpus, np.concatenate(parts), spans))
    return out


def run_call(model: Any, smoothing: Any, audio: np.ndarray
             ) -> tuple[list[Any], list[tuple[float, float]]]:
    """The call through a real engine: its WindowLabels and its speech segments (start, end)."""
    from streamer.engine import Engine, EngineConfig
    from streamer.events import Event, SpeechEnd, StreamClosed, WindowLabel

    events: list[Event] = []
    done = threading.Event()

    def sink(event: Event) -> None:
        events.append(event)  # one stream, one worker: delivered one at a time
        if isinstance(event, StreamClosed):
            done.set()

    config = EngineConfig(smoothing=smoothing, realtime=False, workers=1)
    with Engine(model, config, sink) as engine:
        feed = engine.open_stream("call", sample_rate_hz=RATE)
        for i in range(0, audio.size, RATE):
            feed.feed(audio[i:i + RATE])
        feed.close()
        if not done.wait(600):
            raise RuntimeError("the engine did not close the stream")
    windows = [e for e in events if isinstance(e, WindowLabel)]
    return windows, [(e.start_s, e.end_s) for e in events if isinstance(e, SpeechEnd)]


def _clip_of(call: Call, start_s: float, end_s: float) -> int:
    overlaps = [max(0.0, min(end_s, b) - max(start_s, a)) for a, b, _ in call.clips]
    return int(np.argmax(overlaps)) if max(overlaps) > 0.0 else -1


def vad_gaps(call: Call, segments: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Silences between consecutive VAD segments: (between two clips, inside one clip)."""
    between: list[float] = []
    inside: list[float] = []
    for (a0, e0), (s1, e1) in zip(segments, segments[1:], strict=False):
        same = _clip_of(call, a0, e0) == _clip_of(call, s1, e1)
        (inside if same else between).append(max(0.0, s1 - e0))
    return between, inside


def score(call: Call, windows: list[Any], segments: int, labels: tuple[str, ...]) -> Score:
    """Windows against the clip each overlaps most; "uncertain" counts as wrong in
    ``smoothed``, while ``smoothed_class`` scores the class under it (the EMA's arg-max)."""
    from streamer.protocol import UNCERTAIN

    s = Score(segments=segments, turns=len(call.clips), changes=len(call.clips) - 1)
    seen: set[int] = set()
    shown_raw: set[int] = set()
    shown_smoothed: set[int] = set()
    for w in windows:
        overlaps = [max(0.0, min(w.end_s, b) - max(w.start_s, a)) for a, b, _ in call.clips]
        k = int(np.argmax(overlaps))
        if overlaps[k] <= 0.0:
            continue  # a window of padding only (not seen with 1 s gaps)
        truth = call.clips[k][2]
        s.windows += 1
        s.raw += w.label == truth
        s.smoothed += w.smoothed_label == truth
        s.uncertain += w.smoothed_label == UNCERTAIN
        under = w.smoothed_label
        if under == UNCERTAIN and w.smoothed_probabilities:
            under = labels[int(np.argmax(w.smoothed_probabilities))]
        s.smoothed_class += under == truth
        if w.label == truth:
            shown_raw.add(k)
        if w.smoothed_label == truth:
            shown_smoothed.add(k)
        if k not in seen:
            seen.add(k)
            if k > 0:
                s.first_raw += w.label == truth
                s.first_smoothed += w.smoothed_label == truth
    s.missed_raw = len(call.clips) - len(shown_raw)
    s.missed_smoothed = len(call.clips) - len(shown_smoothed)
    return s


def line(name: str, s: Score) -> str:
    r = s.row()
    return (f"{name:<24} {r['windows']:>6} {r['raw_acc']:>6.3f} {r['smoothed_acc']:>8.3f} "
            f"{r['smoothed_class_acc']:>8.3f} {r['shown_acc']:>8.3f} {r['uncertain_share']:>9.3f} "
            f"{r['first_after_change_raw']:>9.3f} "
            f"{r['first_after_change_smoothed']:>9.3f} {r['turns']:>6} {r['turns_missed_raw']:>7} "
            f"{r['turns_missed_smoothed']:>8} {r['vad_segments']:>5}")


HEADER = (f"{'':<24} {'windows':>6} {'raw':>6} {'smoothed':>8} {'smoothed':>8} {'shown':>8} "
          f"{'uncertain':>9} "
          f"{'1st raw':>9} {'1st smooth':>9} {'turns':>6} {'missed':>7} {'missed':>8} "
          f"{'segs':>5}\n{'':<24} {'':>6} {'acc':>6} {'acc':>8} {'class':>8} {'acc':>8} "
          f"{'share':>9} "
          f"{'after chg':>9} "
          f"{'after chg':>9} {'':>6} {'raw':>7} {'smoothed':>8} {'(VAD)':>5}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append",
                        help="a corpus folder or a folder of corpora (repeatable; default: "
                        "../shared/data/corpora and ../shared/data/urdu)")
    parser.add_argument("--model", default=None, help="model folder (default: the bundled one)")
    parser.add_argument("--calls", type=int, default=48, help="calls in all (default: 48)")
    parser.add_argument("--clips", type=int, default=8, help="clips per call (default: 8)")
    parser.add_argument("--gap-s", type=float, default=1.0,
                        help="silence between turns, seconds (default: 1.0)")
    parser.add_argument("--turn-clips", type=int, default=1,
                        help="clips of one label (and corpus) per turn, 0.1 s apart: longer "
                        "turns, as in a conversation (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phone", choices=("mulaw", "alaw"), nargs="?", const="mulaw",
                        help="put each call through the phone line (default law: mulaw)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--uncertain-below", type=float, default=None,
                        help="override the smoother's 'uncertain' threshold in every setting")
    return parser


@dataclass
class VadGaps:
    between: list[float] = field(default_factory=list)  # between two clips
    inside: list[float] = field(default_factory=list)  # inside one clip


def measure(model: Any, calls: list[Call], *, uncertain_below: float | None
            ) -> tuple[Results, VadGaps]:
    """Every call through the engine once per smoothing setting, scored; and the VAD's gaps."""
    from streamer.smoothing import SmoothingConfig

    results = Results()
    gaps = VadGaps()
    for name, fields in SETTINGS.items():
        if uncertain_below is not None:
            fields = {**fields, "uncertain_below": uncertain_below}
        smoothing = SmoothingConfig(**fields)  # type: ignore[arg-type]
        total = results.by_setting.setdefault(name, Score())
        for call in calls:
            windows, segments = run_call(model, smoothing, call.audio)
            if name == next(iter(SETTINGS)):  # the VAD does not depend on the smoothing
                b, i = vad_gaps(call, segments)
                gaps.between += b
                gaps.inside += i
            s = score(call, windows, len(segments), tuple(model.labels))
            total.add(s)
            results.by_corpus.setdefault(call.corpus, {}).setdefault(name, Score()).add(s)
    return results, gaps


def report(results: Results, gaps: VadGaps, *, uncertain_below: float | None) -> None:
    from streamer.smoothing import SmoothingConfig

    default = SmoothingConfig()
    shown = default.uncertain_below if uncertain_below is None else uncertain_below
    print(f"smoothing: alpha {default.alpha}, switch_margin {default.switch_margin}, "
          f"uncertain_below {shown}; new defaults gap_reset_s "
          f"{default.gap_reset_s}, gap_decay_s {default.gap_decay_s}")
    print("\nall calls\n" + HEADER)
    for name, s in results.by_setting.items():
        print(line(name, s))
    between, inside = gaps.between, gaps.inside
    reset = default.gap_reset_s if default.gap_reset_s is not None else float("inf")
    pct = " / ".join(f"{x:.2f}" for x in np.percentile(between or [0.0], [5, 25, 50]))
    print(f"\nVAD gaps (silence between segments) between clips: {len(between)}, "
          f"percentiles 5/25/50 {pct} s, {sum(g >= reset for g in between)} >= gap_reset_s; "
          f"inside one clip: {len(inside)}, {sum(g >= reset for g in inside)} >= gap_reset_s")
    print("\nper corpus: raw acc / smoothed acc / first-after-change smoothed")
    for corpus, by in sorted(results.by_corpus.items()):
        cells = "  ".join(
            f"{name.split(' ')[0]} {s.row()['raw_acc']:.3f}/{s.row()['smoothed_acc']:.3f}/"
            f"{s.row()['first_after_change_smoothed']:.3f}" for name, s in by.items())
        print(f"  {corpus:<26} {cells}")


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    if args.calls < 1 or args.clips < 2 or args.gap_s < 0 or args.turn_clips < 1:
        parser.error("need --calls >= 1, --clips >= 2, --turn-clips >= 1 and --gap-s >= 0")
    logging.basicConfig(level=logging.WARNING)
    roots = args.data or [DATA / "corpora", DATA / "urdu"]

    from streamer.models.loading import load_model

    model = load_model(args.model, device="cpu")
    found = corpora([r for r in roots if r.is_dir()], model.labels)
    if not found:
        print(f"no labelled corpora found under {', '.join(map(str, roots))}; nothing measured "
              "(the data lives outside the project: ../shared/data)")
        return 0
    print(f"command: nice python bench/smoothing_calls.py {' '.join(sys.argv[1:])}".rstrip())
    t0 = time.monotonic()
    calls = build_calls(found, calls=args.calls, clips=args.clips, gap_s=args.gap_s,
                        seed=args.seed, turn_clips=args.turn_clips)
    if args.phone:
        from streamer.telephony import phone_line

        calls = [Call(c.corpus, phone_line(c.audio, law=args.phone), c.clips) for c in calls]
    seconds = sum(c.audio.size for c in calls) / RATE
    print(f"model {model.name} (temperature {getattr(model, 'temperature', 1.0):g}); "
          f"{len(calls)} calls of {args.clips} turns of {args.turn_clips} clip(s), "
          f"{args.gap_s:g} s gaps, seed {args.seed}, "
          f"{seconds / 60:.1f} min of audio"
          f"{f', through the phone line ({args.phone})' if args.phone else ', 16 kHz'}; "
          f"corpora: {', '.join(sorted(found))}")
    results, gaps = measure(model, calls, uncertain_below=args.uncertain_below)
    report(results, gaps, uncertain_below=args.uncertain_below)
    print(f"[{time.monotonic() - t0:.0f} s]")
    if args.json:
        args.json.write_text(json.dumps({
            "command": sys.argv, "model": model.name, "phone": args.phone,
            "settings": {n: {**SETTINGS[n], **s.row()} for n, s in results.by_setting.items()},
            "vad_gaps_s": {"between_clips": gaps.between, "inside_clips": gaps.inside},
            "by_corpus": {c: {n: s.row() for n, s in by.items()}
                          for c, by in results.by_corpus.items()},
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
