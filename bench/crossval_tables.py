"""Markdown tables from ``emotion-monitor crossval --json`` files (as in docs/model-card.md).

One row per held-out fold: clips, accuracy, UAR, per-class recall, the share of clips predicted
as each class, and (when the run had ``--phone``) the same through the phone line; then the mean
UAR over folds and the smallest predicted share over the classes each fold contains.

    python bench/crossval_tables.py RUN.json [RUN.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _smallest_share(scores: dict[str, Any]) -> float:
    present = [i for i, label in enumerate(scores["labels"]) if scores["recall"][label] is not None]
    return min(scores["predicted_share"][i] for i in present)


def table(doc: dict[str, Any], side: str) -> list[str]:
    labels = doc["labels"]
    short = [label[:3] for label in labels]
    lines = [
        "| held out | clips | accuracy | UAR | "
        + " | ".join(f"recall {s}" for s in short) + " | "
        + " | ".join(f"share {s}" for s in short) + " |",
        "|---|" + "---:|" * (3 + 2 * len(labels)),
    ]
    uars, smallest = [], []
    for fold in doc["folds"]:
        scores = fold["model"] if side == "16k" else fold["phone"]["model"]
        uars.append(scores["uar"])
        smallest.append(_smallest_share(scores))
        lines.append(
            f"| {fold['name']} | {scores['n']} | {scores['accuracy']:.3f} | "
            f"**{scores['uar']:.3f}** | "
            + " | ".join(_cell(scores["recall"][label]) for label in labels) + " | "
            + " | ".join(f"{s:.3f}" for s in scores["predicted_share"]) + " |"
        )
    lines.append(
        f"| **mean over {len(uars)} folds** | | | **{sum(uars) / len(uars):.3f}** | "
        f"smallest share {min(smallest):.3f} |" + " |" * (2 * len(labels) - 1)
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.runs:
        doc = json.loads(path.read_text())
        print(f"### {path.name}: {doc['protocol']}{'' if doc['complete'] else ' (INCOMPLETE)'}")
        print()
        print("\n".join(table(doc, "16k")))
        if doc["folds"] and doc["folds"][0].get("phone"):
            print()
            print("Through the phone line (8 kHz G.711, back to 16 kHz):")
            print()
            print("\n".join(table(doc, "phone")))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
