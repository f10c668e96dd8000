"""The ``train``, ``evaluate`` and ``crossval`` subcommands (main thread).

``register`` imports nothing heavy; each handler imports torch and transformers when it runs and
returns an exit code. Bad input raises :class:`streamer.errors.StreamerError`, which the
top-level command turns into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]

_DEFAULT_GROUP_REGEX = r"^(S[MF]\d+)_"  # same as streamer.dataset.DEFAULT_GROUP_REGEX


def register(subparsers: Any) -> None:
    """Add ``train``, ``evaluate`` and ``crossval`` to the top-level parser."""
    train = subparsers.add_parser(
        "train",
        help="train the compact model or fine-tune a checkpoint on a folder-per-label dataset",
        description=(
            "Train on DIR/<label>/*.wav (any rate, mono or stereo; resampled to 16 kHz). "
            "--base compact trains the compact log-mel CNN; --base ID_OR_PATH fine-tunes a "
            "wav2vec2-family checkpoint with transformers Trainer (reference recipe: lr 5e-5, "
            "batch 32, Adam 0.9/0.999/1e-8, linear schedule, 50 epochs, seed 42, AMP on CUDA)."
        ),
    )
    train.add_argument(
        "--data", required=True, type=Path, help="dataset folder (one folder per label)"
    )
    train.add_argument("--out", required=True, type=Path, help="output checkpoint folder")
    train.add_argument(
        "--base", default="compact", help="'compact' (default) or a checkpoint folder / hub id"
    )
    train.add_argument(
        "--epochs", type=float, default=None, help="epochs (default: 40 compact, 50 fine-tune)"
    )
    train.add_argument(
        "--seed", type=int, default=None, help="random seed (default: 0 compact, 42 fine-tune)"
    )
    train.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    train.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: 3e-3 compact, 5e-5 fine-tune)",
    )
    train.add_argument(
        "--max-steps",
        type=int,
        default=-1,
        help="fine-tune: stop after N optimiser steps (default: no limit)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--group-regex",
        default=_DEFAULT_GROUP_REGEX,
        help="compact: speaker id = first group of this regex on the file name, for speaker "
        f"balance (default: {_DEFAULT_GROUP_REGEX})",
    )
    _add_compact_flags(train)
    train.set_defaults(handler=_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="score a model on a folder-per-label dataset (clips and 2 s windows)",
        description=(
            "Accuracy, UAR, per-class recall and confusion matrix on whole clips and on windows "
            "(each clip cut into --window-s windows every --hop-s; the last ends at the clip end)."
        ),
    )
    evaluate.add_argument(
        "--model", default=None, help="checkpoint folder or hub id (default: bundled)"
    )
    evaluate.add_argument(
        "--data", required=True, type=Path, help="dataset folder (one folder per label)"
    )
    evaluate.add_argument(
        "--report", type=Path, default=None, help="write confusion PNGs and scores.json here"
    )
    evaluate.add_argument(
        "--window-s", type=float, default=2.0, help="window length (default: 2.0)"
    )
    evaluate.add_argument("--hop-s", type=float, default=1.0, help="window hop (default: 1.0)")
    evaluate.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)"
    )
    evaluate.set_defaults(handler=_evaluate)

    crossval = subparsers.add_parser(
        "crossval",
        help="cross-validate the compact recipe and the speaker-lookup baseline",
        description=(
            "Trains the compact recipe once per fold and scores held-out whole clips. "
            "--protocol folds (default): --folds k folds grouped by speaker (--group speaker) or "
            "stratified random (--group random). --protocol reference: one stratified random "
            "80/20 split with seed 42, as the reference model reported."
        ),
    )
    crossval.add_argument(
        "--data", required=True, type=Path, help="dataset folder (one folder per label)"
    )
    crossval.add_argument(
        "--protocol",
        choices=["folds", "reference"],
        default="folds",
        help="folds (default) or reference",
    )
    crossval.add_argument("--folds", type=int, default=5, help="number of folds (default: 5)")
    crossval.add_argument(
        "--group",
        choices=["speaker", "random"],
        default="speaker",
        help="fold grouping (default: speaker)",
    )
    crossval.add_argument(
        "--group-regex",
        default=_DEFAULT_GROUP_REGEX,
        help="speaker id = first group of this regex on the file name "
        f"(default: {_DEFAULT_GROUP_REGEX})",
    )
    crossval.add_argument(
        "--seed", type=int, default=0, help="seed for folds and training (default: 0)"
    )
    crossval.add_argument(
        "--fold-seed",
        type=int,
        default=None,
        help="seed for the fold assignment only (default: --seed); keeps the folds fixed "
        "while --seed varies the training",
    )
    crossval.add_argument(
        "--epochs", type=int, default=None, help="training epochs per fold (default: 40)"
    )
    crossval.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use only every k-th clip so at most N clips (quick checks)",
    )
    crossval.add_argument(
        "--json", type=Path, default=None, help="also write the results as JSON here"
    )
    crossval.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    crossval.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    crossval.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default: 3e-3)"
    )
    _add_compact_flags(crossval)
    crossval.set_defaults(handler=_crossval)


# Compact-recipe flags: each maps onto the CompactTrainConfig field of the same name.
_COMPACT_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("crop_s", float, "random crop length in seconds (default: 2.0)"),
    ("freq_mask_bands", int, "SpecAugment: widest frequency mask in mel bands, 0 = off "
     "(default: 0)"),
    ("time_mask_frames", int, "SpecAugment: widest time mask in 10 ms frames, 0 = off "
     "(default: 0)"),
    ("mixup_alpha", float, "mixup Beta(alpha, alpha); 0 turns mixup off (default: 0.2)"),
    ("hidden_size", int, "CNN channels (default: 128)"),
    ("num_blocks", int, "dilated residual blocks (default: 3)"),
    ("dropout", float, "dropout (default: 0.3)"),
    ("label_smoothing", float, "label smoothing (default: 0.1)"),
    ("weight_decay", float, "AdamW weight decay (default: 0.01)"),
    ("feature_norm", str, "log-mel normalisation per utterance: none, band or global "
     "(default: none)"),
    ("members", int, "ensemble size: members trained with seeds seed..seed+N-1 (default: 1)"),
    ("speed_perturb", float, "speed perturbation: also train on clips played 1-x and 1+x "
     "times as fast (default: 0, off)"),
    ("gain_db", float, "random gain of up to +-x dB per training crop (default: 0, off)"),
    ("balance_speakers", int, "1: also give each speaker equal weight within a class, speaker "
     "ids from --group-regex; names that do not match turn it off (default: 1)"),
    ("balance_classes", int, "1: draw training clips with equal class weight, 0: plain shuffle "
     "(default: 1)"),
)


def _add_compact_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compact recipe (ignored when fine-tuning)")
    for name, kind, text in _COMPACT_FLAGS:
        group.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text
        )


def _compact_config(args: argparse.Namespace, **fixed: Any) -> Any:
    """CompactTrainConfig from the CLI flags; bad values become a one-line DataError."""
    from .errors import DataError
    from .training import CompactTrainConfig

    kwargs = {name: getattr(args, name) for name, _, _ in _COMPACT_FLAGS}
    kwargs.update(fixed)
    kwargs["batch_size"] = args.batch_size
    if getattr(args, "lr", None) is not None:
        kwargs["learning_rate"] = args.lr
    if getattr(args, "epochs", None) is not None:
        kwargs["epochs"] = int(args.epochs)
    if getattr(args, "seed", None) is not None:
        kwargs["seed"] = args.seed
    try:
        for flag in ("balance_classes", "balance_speakers"):
            if kwargs.get(flag) is not None:
                kwargs[flag] = bool(kwargs[flag])
        return CompactTrainConfig(**{k: v for k, v in kwargs.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise DataError(f"bad training option: {exc}") from exc


def _train(args: argparse.Namespace) -> int:
    from .dataset import load_dataset
    from .errors import DataError
    from .training import FineTuneConfig, fine_tune, save_compact, train_compact

    started = time.monotonic()
    if args.base == "compact":
        config = _compact_config(args, speaker_regex=args.group_regex)
    data = load_dataset(args.data)
    try:
        if args.base != "compact":
            kwargs: dict[str, Any] = {"batch_size": args.batch_size, "max_steps": args.max_steps}
            if args.epochs is not None:
                kwargs["epochs"] = args.epochs
            if args.seed is not None:
                kwargs["seed"] = args.seed
            if args.lr is not None:
                kwargs["learning_rate"] = args.lr
            ft_config = FineTuneConfig(**kwargs)
    except ValueError as exc:
        raise DataError(f"bad training option: {exc}") from exc
    if args.base == "compact":
        model = train_compact(data, config, progress=not args.no_progress)
        save_compact(model, args.out)
    else:
        fine_tune(data, args.base, args.out, ft_config, progress=not args.no_progress)
    skipped = f", skipped {len(data.skipped)} unusable file(s)" if data.skipped else ""
    print(
        f"trained on {len(data)} clips ({', '.join(data.labels)}){skipped} in "
        f"{time.monotonic() - started:.0f} s; saved to {args.out}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .dataset import load_dataset
    from .evaluation import evaluate_model, plot_confusion, render_scores
    from .models import load_model

    model = load_model(args.model, device=args.device)
    data = load_dataset(args.data, labels=model.labels, min_classes=1)
    result = evaluate_model(model, data, window_s=args.window_s, hop_s=args.hop_s)
    print(f"model {model.name} on {args.data}")
    print(render_scores(result.clips, "clips"))
    print(render_scores(result.windows, f"{args.window_s:g} s windows, hop {args.hop_s:g} s"))
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        plot_confusion(
            result.clips, args.report / "confusion_clips.png", title=f"{model.name}: clips"
        )
        plot_confusion(
            result.windows,
            args.report / "confusion_windows.png",
            title=f"{model.name}: {args.window_s:g} s windows",
        )
        (args.report / "scores.json").write_text(
            json.dumps(
                {
                    "model": model.name,
                    "data": str(args.data),
                    "clips": _scores_dict(result.clips),
                    "windows": _scores_dict(result.windows),
                },
                indent=2,
            )
            + "\n"
        )
        print(f"report written to {args.report}")
    return 0


def _crossval(args: argparse.Namespace) -> int:
    import numpy as np

    from .crossval import group_folds, reference_split, run_crossval, stratified_folds
    from .dataset import group_ids, load_dataset
    from .errors import DataError

    started = time.monotonic()
    config = _compact_config(args, speaker_regex=args.group_regex)
    data = load_dataset(args.data)
    if args.limit is not None:
        if args.limit < 10:
            raise DataError(f"--limit must be at least 10, got {args.limit}")
        step = max(1, int(np.ceil(len(data) / args.limit)))
        data = data.subset(list(range(0, len(data), step)))
    groups = (
        group_ids(data.clips, args.group_regex)
        if args.group == "speaker" or (args.protocol == "reference")
        else [str(i) for i in range(len(data))]
    )
    fold_seed = args.seed if args.fold_seed is None else args.fold_seed
    if args.protocol == "reference":
        folds = [reference_split(data.targets, test_fraction=0.2, seed=42)]
        title = "reference protocol: one stratified random 80/20 split, seed 42"
    elif args.group == "speaker":
        folds = group_folds(groups, args.folds, seed=fold_seed)
        title = (
            f"{args.folds} folds grouped by speaker (regex {args.group_regex!r}), "
            f"fold seed {fold_seed}, training seed {args.seed}"
        )
    else:
        folds = stratified_folds(data.targets, args.folds, seed=fold_seed)
        title = (
            f"{args.folds} stratified random folds, fold seed {fold_seed}, "
            f"training seed {args.seed}"
        )
    result = run_crossval(data, folds, groups, config, progress=not args.no_progress)
    elapsed = time.monotonic() - started
    print(f"crossval on {args.data}: {len(data)} clips, {title}")
    print(
        f"{'fold':>4} {'n_test':>6} {'acc':>6} {'UAR':>6} {'wavg_acc':>8} {'win_acc':>7} "
        f"{'lookup_acc':>10} {'lookup_UAR':>10}  classes in test"
    )
    for f in result.folds:
        present = ",".join(
            lab for lab, r in zip(f.model.labels, f.model.recall, strict=True) if r == r
        )
        print(
            f"{f.fold:>4} {f.model.n:>6} {f.model.accuracy:>6.3f} {f.model.uar:>6.3f} "
            f"{f.windows_avg.accuracy:>8.3f} {f.windows.accuracy:>7.3f} "
            f"{f.baseline.accuracy:>10.3f} {f.baseline.uar:>10.3f}  {present}"
        )
    print(
        f"pooled: accuracy {result.pooled.accuracy:.3f}  UAR {result.pooled.uar:.3f}  "
        f"(n={result.pooled.n}); per-fold UAR mean {result.uar_mean:.3f} std {result.uar_std:.3f}"
    )
    print(
        f"2 s windows (1 s hop) averaged per clip: accuracy "
        f"{result.pooled_windows_avg.accuracy:.3f}  UAR {result.pooled_windows_avg.uar:.3f}; "
        f"single 2 s windows: accuracy {result.pooled_windows.accuracy:.3f}  "
        f"UAR {result.pooled_windows.uar:.3f} (n={result.pooled_windows.n})"
    )
    print(
        f"speaker's-majority-label lookup (no audio): pooled accuracy "
        f"{result.pooled_baseline.accuracy:.3f}  UAR {result.pooled_baseline.uar:.3f}"
    )
    from .evaluation import render_scores

    print(render_scores(result.pooled, "pooled held-out clips"))
    print(f"time {elapsed:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "data": str(args.data),
                    "protocol": title,
                    "n": len(data),
                    "pooled": _scores_dict(result.pooled),
                    "pooled_baseline": _scores_dict(result.pooled_baseline),
                    "pooled_windows_avg": _scores_dict(result.pooled_windows_avg),
                    "pooled_windows": _scores_dict(result.pooled_windows),
                    "uar_mean": result.uar_mean,
                    "uar_std": result.uar_std,
                    "folds": [
                        {
                            "fold": f.fold,
                            "model": _scores_dict(f.model),
                            "baseline": _scores_dict(f.baseline),
                            "windows_avg": _scores_dict(f.windows_avg),
                            "windows": _scores_dict(f.windows),
                        }
                        for f in result.folds
                    ],
                    "seconds": elapsed,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def _scores_dict(scores: Any) -> dict[str, Any]:
    return {
        "n": scores.n,
        "accuracy": scores.accuracy,
        "uar": scores.uar,
        "recall": {
            lab: (None if r != r else r)
            for lab, r in zip(scores.labels, scores.recall, strict=True)
        },
        "labels": list(scores.labels),
        "confusion": scores.confusion.tolist(),
    }
