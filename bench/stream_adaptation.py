"""Prior correction at test time on leave-one-corpus-out predictions (no training, no audio).

Reads ``emotion-monitor crossval --group corpus --json`` output (each fold's ``predictions``:
file names, targets, whole-clip probabilities at 16 kHz and through the phone line) and
subtracts ``strength`` x a group's mean log-probability from each clip's log-probabilities
before the arg-max: a correction that assumes the classes equally likely within the group.
Groups, per held-out corpus:

- ``corpus``: all its clips (transductive: a live stream never has them);
- ``speaker``: each speaker's clips (transductive; the corpus's known speaker regex);
- ``running``: each speaker's running mean over their clips so far, in file-name order, the
  current one included (what one stream could do live);
- ``running>=5``: the same, applied from a speaker's sixth clip on.

Prints mean UAR over the held-out corpora and the smallest predicted-class share (over the
classes each corpus has) for each, as the model card's "What was tried" table.

    python bench/stream_adaptation.py loco.json [--strength 0.5]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamer.offline.dataset import KNOWN_SPEAKER_REGEX  # noqa: E402

GROUPINGS = ("none", "corpus", "speaker", "running", "running>=5")


def uar(y: NDArray[np.int64], pred: NDArray[np.int64], present: Sequence[int]) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in present]))


def min_share(pred: NDArray[np.int64], present: Sequence[int]) -> float:
    return min(float(np.mean(pred == c)) for c in present)


def corrected(logp: NDArray[np.float64], groups: Sequence[str], files: Sequence[str],
              grouping: str, strength: float) -> NDArray[np.float64]:
    """``logp`` minus ``strength`` x each group's (running) mean, per ``grouping``."""
    if grouping == "none":
        return logp
    out = logp.copy()
    members: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    for idx in members.values():
        idx.sort(key=lambda i: files[i])
        if grouping in ("corpus", "speaker"):
            out[idx] = logp[idx] - strength * logp[idx].mean(axis=0)
            continue
        start = 5 if grouping == "running>=5" else 0
        total = np.zeros(logp.shape[1])
        for n, i in enumerate(idx, start=1):
            total += logp[i]
            if n > start:
                out[i] = logp[i] - strength * total / n
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crossval_json", type=Path)
    parser.add_argument("--strength", type=float, default=1.0,
                        help="share of the group mean subtracted (default 1)")
    args = parser.parse_args()
    doc = json.loads(args.crossval_json.read_text())
    for side in ("probs", "phone_probs"):
        rows: list[tuple[str, dict[str, tuple[float, float]]]] = []
        for fold in doc["folds"]:
            pred = fold["predictions"]
            if pred.get(side) is None:
                continue
            files = pred["file"]
            y = np.asarray(pred["target"], dtype=np.int64)
            logp = np.log(np.clip(np.asarray(pred[side], dtype=np.float64), 1e-6, 1.0))
            present = sorted(set(y.tolist()))
            regex = re.compile(KNOWN_SPEAKER_REGEX.get(fold["name"].lower(), r"^(.*)$"))
            speakers = [m.group(1) if (m := regex.search(f)) else f for f in files]
            scores = {}
            for grouping in GROUPINGS:
                groups = ["all"] * len(files) if grouping == "corpus" else speakers
                out = corrected(logp, groups, files, grouping, args.strength).argmax(axis=1)
                scores[grouping] = (uar(y, out, present), min_share(out, present))
            rows.append((fold["name"], scores))
        if not rows:
            continue
        title = "16 kHz" if side == "probs" else "through the phone line"
        print(f"{title}, strength {args.strength:g}: UAR (smallest predicted share)")
        print(f"{'held out':<26}" + "".join(f"{g:>16}" for g in GROUPINGS))
        for name, scores in rows:
            print(f"{name:<26}" + "".join(f"{scores[g][0]:>9.3f} ({scores[g][1]:.2f})"
                                          for g in GROUPINGS))
        print(f"{'mean (smallest)':<26}" + "".join(
            f"{np.mean([s[g][0] for _, s in rows]):>9.3f} ({min(s[g][1] for _, s in rows):.2f})"
            for g in GROUPINGS))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
