"""Accuracy of the bundled model on telephony-band audio: URDU clips at 16 kHz vs via 8 kHz.

Each clip (read at 16 kHz) is downsampled to 8 kHz and brought back to 16 kHz with soxr, the
way the engine treats an 8 kHz pushed call. The bundled model was trained on all 400 URDU
clips, so its scores here are training-set figures, not held-out ones; the speaker-fold
cross-validation (``--crossval``) trains fresh compact models on band-limited audio and is the
honest figure.

    nice python bench/telephony_accuracy.py [--data ../shared/data/urdu] [--crossval]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def band_limited(data, rate_hz: int):  # type: ignore[no-untyped-def]
    from streamer.audio import MODEL_RATE_HZ, resample

    audio = tuple(
        resample(resample(clip, MODEL_RATE_HZ, rate_hz), rate_hz, MODEL_RATE_HZ)
        for clip in data.audio
    )
    return dataclasses.replace(data, audio=audio)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "urdu")
    parser.add_argument("--rate-hz", type=int, default=8000)
    parser.add_argument("--crossval", action="store_true",
                        help="also 5-fold speaker crossval of the compact recipe, both bands")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--members", type=int, default=None,
                        help="seed-ensemble size of the compact recipe (default: its own)")
    parser.add_argument("--bands", default="native,narrow",
                        help="which crossval runs: native, narrow or both (default both)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (args.data / "Angry").is_dir():
        print(f"URDU data not found at {args.data}; nothing measured")
        return 0

    from streamer.dataset import group_ids, load_dataset
    from streamer.evaluation import evaluate_model
    from streamer.models import load_model

    model = load_model(None, device="cpu")
    data = load_dataset(args.data, labels=model.labels, min_classes=1)
    narrow = band_limited(data, args.rate_hz)
    flag = " ".join(sys.argv[1:])
    print(f"command: nice python bench/telephony_accuracy.py {flag}".rstrip())
    print(f"model {model.name}, {len(data)} clips (the bundled model was trained on all of them)")
    for name, d in (("16 kHz native", data), (f"{args.rate_hz} Hz -> 16 kHz", narrow)):
        t0 = time.monotonic()
        ev = evaluate_model(model, d, window_s=2.0, hop_s=1.0)
        print(f"{name:>18}: clips acc {ev.clips.accuracy:.3f} UAR {ev.clips.uar:.3f} | "
              f"2 s windows acc {ev.windows.accuracy:.3f} UAR {ev.windows.uar:.3f} "
              f"(n={ev.windows.n}) [{time.monotonic() - t0:.0f} s]", flush=True)
    if args.crossval:
        from streamer.crossval import group_folds, run_crossval
        from streamer.training import CompactTrainConfig

        logging.getLogger("streamer.crossval").setLevel(logging.INFO)
        config = CompactTrainConfig() if args.members is None else CompactTrainConfig(
            members=args.members
        )
        groups = group_ids(data.clips)
        folds = group_folds(groups, args.folds, seed=0)
        runs = {"native": ("16 kHz native", data), "narrow": (f"{args.rate_hz} Hz band", narrow)}
        for band in args.bands.split(","):
            name, d = runs[band]
            t0 = time.monotonic()
            res = run_crossval(d, folds, groups, config, progress=False)
            print(f"{name:>18}: {args.folds}-fold speaker crossval (members "
                  f"{config.members}, seed {config.seed}) pooled acc "
                  f"{res.pooled.accuracy:.3f} UAR {res.pooled.uar:.3f}, per-fold UAR "
                  f"{res.uar_mean:.3f} +- {res.uar_std:.3f} [{time.monotonic() - t0:.0f} s]",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
