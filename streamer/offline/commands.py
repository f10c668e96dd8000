"""The offline subcommands: train, evaluate, crossval, calibrate and optimize (main thread).

``server/cli.py`` calls :func:`register`, which imports nothing heavy (no numpy, torch or
transformers), so commands such as ``watch`` start fast; each handler imports what it needs when
it runs and returns an exit code. Bad input raises :class:`streamer.errors.StreamerError`, which
the top-level command turns into one line on stderr and exit code 2; so does a handler that
needs the ``torch`` extra where it is not installed (:func:`streamer.extras.require_extra`,
checked before anything heavy is imported).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]

_DATA_HELP = (
    "dataset folder: one corpus (DIR/<label>/*.wav) or a folder of corpora "
    "(DIR/<corpus>/<label>/*); repeat for several"
)
_SPEAKER_HELP = (
    "speaker id of corpus NAME = first group of REGEX on the file name (repeatable); the six "
    "corpora of ../shared/data have known defaults"
)
# streamer.telephony.G711_LAWS, spelt out: importing telephony here would load numpy and soxr.
_PHONE_LAWS = ("mulaw", "alaw")


def register(subparsers: Any) -> None:
    """Add ``train``, ``evaluate``, ``crossval``, ``calibrate`` and ``optimize`` to the parser."""
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_crossval(subparsers)
    _add_calibrate(subparsers)
    _add_optimize(subparsers)


def _add_train(subparsers: Any) -> None:
    train = subparsers.add_parser(
        "train",
        help="train the compact model or fine-tune a checkpoint on a folder-per-label dataset",
        description=(
            "Train on DIR/<label>/*.wav (any rate, mono or stereo; resampled to 16 kHz); "
            "repeat --data, or give a folder of corpora, to train on several corpora at once "
            "(draws balanced across corpora, classes and speakers; a class a corpus lacks is "
            "left out of that corpus's loss). --base compact trains the compact log-mel CNN; "
            "--base ID_OR_PATH fine-tunes a "
            "wav2vec2-family checkpoint with transformers Trainer (reference recipe: lr 5e-5, "
            "batch 32, Adam 0.9/0.999/1e-8, linear schedule, 50 epochs, seed 42, AMP on CUDA)."
        ),
    )
    _add_data_flags(train)
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
    _add_compact_flags(train)
    train.set_defaults(handler=_train)


def _add_evaluate(subparsers: Any) -> None:
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
    _add_data_flags(evaluate, speakers=False)
    _add_phone_flag(
        evaluate,
        text="put the test audio through a phone line first (8 kHz, G.711 LAW, back to 16 kHz)",
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


def _add_crossval(subparsers: Any) -> None:
    crossval = subparsers.add_parser(
        "crossval",
        help="cross-validate the compact recipe and the speaker-lookup baseline",
        description=(
            "Trains the compact recipe once per fold and scores held-out whole clips. "
            "--protocol folds (default): --group corpus holds out each corpus in turn "
            "(leave-one-corpus-out, several corpora), --group speaker makes --folds k folds "
            "grouped by speaker (over --test-corpus only when given; the other corpora always "
            "train), --group random stratified random folds. --protocol reference: one "
            "stratified random 80/20 split with seed 42, as the reference model reported."
        ),
    )
    _add_data_flags(crossval)
    _add_fold_flags(crossval)
    _add_phone_flag(
        crossval,
        text="also score each test side through a phone line (8 kHz, G.711 LAW, back to 16 kHz)",
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
        "--json",
        type=Path,
        default=None,
        help="also write the results as JSON here (rewritten after every fold, so a run cut "
        "short keeps the folds it finished)",
    )
    crossval.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    crossval.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    crossval.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default: 3e-3)"
    )
    _add_compact_flags(crossval)
    crossval.set_defaults(handler=_crossval)


def _add_fold_flags(parser: argparse.ArgumentParser) -> None:
    """How ``crossval`` makes its folds: --protocol, --folds, --group, --test-corpus."""
    parser.add_argument(
        "--protocol",
        choices=["folds", "reference"],
        default="folds",
        help="folds (default) or reference",
    )
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default: 5)")
    parser.add_argument(
        "--group",
        choices=["corpus", "speaker", "random"],
        default="speaker",
        help="fold grouping (default: speaker)",
    )
    parser.add_argument(
        "--test-corpus",
        default=None,
        metavar="NAME",
        help="--group speaker/random: folds over this corpus only; the others always train",
    )


def _add_calibrate(subparsers: Any) -> None:
    calibrate = subparsers.add_parser(
        "calibrate",
        help="fit a temperature on held-out crossval predictions; report calibration error",
        description=(
            "Reads the held-out whole-clip predictions that 'crossval --json' wrote (16 kHz and, "
            "when present, through the phone line), fits one temperature T (softmax(logits / T)) "
            "by minimising their negative log-likelihood, and reports expected calibration error "
            "(15 equal-width bins) before and after, also with T fitted on the other folds only "
            "(each fold's own predictions never seen). --model DIR writes T into DIR/config.json "
            "(logit_temperature)."
        ),
    )
    calibrate.add_argument(
        "--crossval-json", required=True, type=Path, help="a 'crossval --json' file"
    )
    calibrate.add_argument(
        "--model", type=Path, default=None,
        help="checkpoint folder whose config.json gets the fitted temperature",
    )
    calibrate.add_argument(
        "--bins", type=int, default=15, help="equal-width confidence bins (default: 15)"
    )
    calibrate.add_argument(
        "--json", type=Path, default=None, help="also write the figures as JSON here"
    )
    calibrate.set_defaults(handler=_calibrate)


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
    ("balance_corpora", int, "1: within a class, each corpus that has it weighs the same "
     "(default: 1)"),
    ("phone_prob", float, "probability that a training clip goes through a phone line "
     "(8 kHz G.711, mu-law or A-law) (default: 0)"),
    ("f_max_hz", float, "upper edge of the mel filterbank in Hz (default: 8000)"),
    ("fft_size", int, "STFT window and FFT size in samples at 16 kHz (default: 400 = 25 ms)"),
    ("max_epoch_steps", int, "optimiser steps per epoch at most (default: 60)"),
)


def _add_data_flags(parser: argparse.ArgumentParser, *, speakers: bool = True) -> None:
    parser.add_argument(
        "--data", required=True, type=Path, action="append", metavar="DIR", help=_DATA_HELP
    )
    if speakers:
        parser.add_argument(
            "--speaker-regex",
            action="append",
            default=[],
            metavar="NAME=REGEX",
            help=_SPEAKER_HELP,
        )
        parser.add_argument(
            "--group-regex",
            default=None,
            metavar="REGEX",
            help="speaker regex for every corpus without a --speaker-regex of its own "
            "(default: the known one per corpus)",
        )


def _add_phone_flag(parser: argparse.ArgumentParser, *, text: str) -> None:
    parser.add_argument("--phone", choices=list(_PHONE_LAWS), default=None, help=text)


def _load_data(args: argparse.Namespace, *, labels: tuple[str, ...] | None = None) -> Any:
    """The --data folders as one dataset (corpora and speakers known)."""
    from streamer.errors import DataError
    from streamer.offline.dataset import load_corpora, resolve_corpora

    regexes: dict[str, str] = {}
    for item in getattr(args, "speaker_regex", None) or []:
        name, sep, regex = item.partition("=")
        if not sep or not name or not regex:
            raise DataError(f"--speaker-regex takes NAME=REGEX, got {item!r}")
        regexes[name] = regex
    specs = resolve_corpora(
        args.data, speaker_regex=regexes, default_regex=getattr(args, "group_regex", None)
    )
    progress = not getattr(args, "no_progress", False)
    return load_corpora(specs, labels=labels, progress=progress)


def _add_compact_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compact recipe (ignored when fine-tuning)")
    for name, kind, text in _COMPACT_FLAGS:
        group.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text
        )


def _compact_config(args: argparse.Namespace, **fixed: Any) -> Any:
    """CompactTrainConfig from the CLI flags; bad values become a one-line DataError."""
    from streamer.errors import DataError
    from streamer.offline.training import CompactTrainConfig

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
    from streamer.extras import require_extra

    require_extra("torch", "transformers", purpose="training")
    if args.base != "compact":
        require_extra("accelerate", purpose="fine-tuning")  # transformers' Trainer needs it
    from streamer.errors import DataError
    from streamer.offline.training import FineTuneConfig, fine_tune, save_compact, train_compact

    started = time.monotonic()
    if args.base == "compact":
        config = _compact_config(args)
    data = _load_data(args)
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
    corpora = f" from {len(data.corpus_names)} corpora" if len(data.corpus_names) > 1 else ""
    print(
        f"trained on {len(data)} clips{corpora} ({', '.join(data.labels)}){skipped} in "
        f"{time.monotonic() - started:.0f} s; saved to {args.out}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    # torch only for torch models: load_model asks for it on that path, not for ONNX graphs
    if args.report is not None:
        from streamer.extras import require_extra

        require_extra("matplotlib", purpose="evaluate --report (confusion plots)")
    import numpy as np

    from streamer.models.loading import load_model
    from streamer.offline.evaluation import evaluate_model, plot_confusion, render_scores

    model = load_model(args.model, device=args.device)
    data = _load_data(args, labels=tuple(model.labels))
    where = ", ".join(str(d) for d in args.data)
    if args.phone is not None:
        from streamer.telephony import phone_line

        data = data.with_audio([phone_line(a, law=args.phone) for a in data.audio])
        where += f" through a phone line (8 kHz G.711 {args.phone})"
    parts = [("all", data)]
    if len(data.corpus_names) > 1:
        parts += [
            (name, data.subset(np.flatnonzero(data.corpus_ids == k)))
            for k, name in enumerate(data.corpus_names)
        ]
    print(f"model {model.name} on {where}")
    report: dict[str, Any] = {"model": model.name, "data": where}
    uars = []
    for name, part in parts:
        result = evaluate_model(model, part, window_s=args.window_s, hop_s=args.hop_s)
        prefix = "" if name == "all" else f"{name}: "
        print(render_scores(result.clips, f"{prefix}clips"))
        print(render_scores(
            result.windows, f"{prefix}{args.window_s:g} s windows, hop {args.hop_s:g} s"
        ))
        if name != "all":
            uars.append(result.clips.uar)
        report[name] = {
            "clips": _scores_dict(result.clips), "windows": _scores_dict(result.windows)
        }
        if args.report is not None and name == "all":
            args.report.mkdir(parents=True, exist_ok=True)
            plot_confusion(
                result.clips, args.report / "confusion_clips.png", title=f"{model.name}: clips"
            )
            plot_confusion(
                result.windows,
                args.report / "confusion_windows.png",
                title=f"{model.name}: {args.window_s:g} s windows",
            )
    if uars:
        print(f"mean clip UAR over {len(uars)} corpora: {np.mean(uars):.3f}")
        report["mean_corpus_uar"] = float(np.mean(uars))
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        flat = report if len(parts) > 1 else {
            "model": model.name, "data": where, **report["all"]
        }
        (args.report / "scores.json").write_text(json.dumps(flat, indent=2) + "\n")
        print(f"report written to {args.report}")
    return 0


def _crossval(args: argparse.Namespace) -> int:
    from streamer.extras import require_extra

    require_extra("torch", "transformers", purpose="cross-validation")
    from streamer.offline.crossval import run_crossval

    started = time.monotonic()
    config = _compact_config(args)
    data = _crossval_data(args)
    pool = _test_pool(args, data)
    groups = _fold_groups(args, data, pool)
    folds, fold_names, title = _make_folds(args, data, pool, groups)
    where = ", ".join(str(d) for d in args.data)
    finished: list[Any] = []

    def keep(fold: Any) -> None:
        finished.append(fold)
        if args.json is not None:
            _write_crossval_json(args.json, data, where, title, finished, None, started)

    result = run_crossval(
        data, folds, groups, config, progress=not args.no_progress, fold_names=fold_names,
        phone_law=args.phone, on_fold=keep,
    )
    elapsed = time.monotonic() - started
    print(f"crossval on {where}: {len(data)} clips, {title}")
    _print_crossval(result, data.labels)
    print(f"time {elapsed:.0f} s")
    if args.json is not None:
        _write_crossval_json(args.json, data, where, title, list(result.folds), result, started)
    return 0


def _crossval_data(args: argparse.Namespace) -> Any:
    """The --data folders, thinned to every k-th clip under --limit."""
    import numpy as np

    from streamer.errors import DataError

    data = _load_data(args)
    if args.limit is not None:
        if args.limit < 10:
            raise DataError(f"--limit must be at least 10, got {args.limit}")
        step = max(1, int(np.ceil(len(data) / args.limit)))
        data = data.subset(list(range(0, len(data), step)))
    return data


def _test_pool(args: argparse.Namespace, data: Any) -> Any:
    """Indices of the clips folds are made of (--test-corpus, else all); the rest always trains."""
    import numpy as np

    from streamer.errors import DataError

    if args.test_corpus is None:
        return np.arange(len(data))
    if args.group == "corpus" or args.protocol == "reference":
        raise DataError("--test-corpus goes with --group speaker or --group random")
    names = list(data.corpus_names)
    lowered = [n.lower() for n in names]
    if args.test_corpus.lower() not in lowered:
        raise DataError(f"--test-corpus {args.test_corpus!r} is not among {', '.join(names)}")
    return np.flatnonzero(data.corpus_ids == lowered.index(args.test_corpus.lower()))


def _fold_groups(args: argparse.Namespace, data: Any, pool: Any) -> list[str]:
    """Speaker of each clip (a clip without one is its own group); speaker folds need them all."""
    from streamer.errors import DataError

    speakers = data.speakers or (None,) * len(data)
    groups = [s if s is not None else f"clip{i}" for i, s in enumerate(speakers)]
    if args.group == "speaker" and args.protocol == "folds":
        names = data.corpus_names
        missing = sorted({names[int(data.corpus_ids[i])] for i in pool if speakers[i] is None})
        if missing:
            raise DataError(
                f"corpus {missing[0]} has no speaker ids: pass --speaker-regex "
                f"{missing[0]}=REGEX (or --group random)"
            )
    return groups


def _make_folds(
    args: argparse.Namespace, data: Any, pool: Any, groups: list[str]
) -> tuple[list[Any], list[str] | None, str]:
    """The test indices of each fold, the folds' names (None: numbered) and the run's title."""
    from streamer.offline.crossval import (
        corpus_folds,
        group_folds,
        reference_split,
        stratified_folds,
    )

    fold_seed = args.seed if args.fold_seed is None else args.fold_seed
    fold_names: list[str] | None = None
    if args.protocol == "reference":
        folds = [pool[reference_split(data.targets[pool], test_fraction=0.2, seed=42)]]
        title = "reference protocol: one stratified random 80/20 split, seed 42"
    elif args.group == "corpus":
        folds, fold_names = corpus_folds(data)
        title = f"leave-one-corpus-out over {len(folds)} corpora, training seed {args.seed}"
    elif args.group == "speaker":
        folds = [pool[f] for f in group_folds([groups[i] for i in pool], args.folds,
                                              seed=fold_seed)]
        title = (
            f"{args.folds} folds grouped by speaker, fold seed {fold_seed}, "
            f"training seed {args.seed}"
        )
    else:
        folds = [pool[f] for f in stratified_folds(data.targets[pool], args.folds,
                                                   seed=fold_seed)]
        title = (
            f"{args.folds} stratified random folds, fold seed {fold_seed}, "
            f"training seed {args.seed}"
        )
    if args.test_corpus is not None:
        corpus = data.corpus_names[int(data.corpus_ids[pool[0]])]
        title += f", over {corpus} (other corpora always train)"
    if args.phone is not None:
        title += f"; test sides also through a phone line (G.711 {args.phone})"
    return folds, fold_names, title


def _print_crossval(result: Any, labels: tuple[str, ...]) -> None:
    """The fold table, the pooled figures and the pooled confusion matrix."""
    from streamer.offline.evaluation import render_scores

    _print_folds(result, labels)
    print(
        f"pooled: accuracy {result.pooled.accuracy:.3f}  UAR {result.pooled.uar:.3f}  "
        f"(n={result.pooled.n}); per-fold UAR mean {result.uar_mean:.3f} std {result.uar_std:.3f}"
    )
    if result.phone_uar_mean is not None and result.pooled_phone is not None:
        print(
            f"through the phone line: pooled accuracy {result.pooled_phone.model.accuracy:.3f}  "
            f"UAR {result.pooled_phone.model.uar:.3f}; per-fold UAR mean "
            f"{result.phone_uar_mean:.3f}"
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
    print(render_scores(result.pooled, "pooled held-out clips"))


def _print_folds(result: Any, labels: tuple[str, ...]) -> None:
    width = max(6, *(len(f.name) for f in result.folds))
    short = [label[:3] for label in labels]
    phone = result.folds[0].phone is not None
    head = (
        f"{'fold':<{width}} {'n_test':>6} {'acc':>6} {'UAR':>6} "
        + (f"{'ph_acc':>6} {'ph_UAR':>6} " if phone else "")
        + " ".join(f"{'R_' + s:>6}" for s in short) + " "
        + " ".join(f"{'P_' + s:>6}" for s in short)
        + f" {'wavg':>6} {'win':>6} {'lookup':>6}"
    )
    print(head)
    for f in result.folds:
        recall = " ".join("   n/a" if r != r else f"{r:>6.3f}" for r in f.model.recall)
        share = " ".join(f"{p:>6.3f}" for p in f.model.predicted_share)
        ph = f"{f.phone.model.accuracy:>6.3f} {f.phone.model.uar:>6.3f} " if f.phone else ""
        print(
            f"{f.name:<{width}} {f.model.n:>6} {f.model.accuracy:>6.3f} {f.model.uar:>6.3f} "
            f"{ph}{recall} {share} {f.windows_avg.accuracy:>6.3f} {f.windows.accuracy:>6.3f} "
            f"{f.baseline.accuracy:>6.3f}"
        )
    print("(R_: recall per class, P_: share of clips predicted as each class; "
          "wavg/win: accuracy of window-averaged clips and of single 2 s windows)")


def _side_dict(side: Any) -> dict[str, Any] | None:
    if side is None:
        return None
    return {
        "model": _scores_dict(side.model),
        "windows_avg": _scores_dict(side.windows_avg),
        "windows": _scores_dict(side.windows),
    }


def _write_crossval_json(
    path: Path, data: Any, where: str, title: str, folds: list[Any], result: Any, started: float
) -> None:
    """Write what is known so far (``result`` None: folds still running); atomic replace."""
    import numpy as np

    doc: dict[str, Any] = {
        "data": where,
        "protocol": title,
        "complete": result is not None,
        "n": len(data),
        "labels": list(data.labels),
        "corpora": list(data.corpus_names),
        "folds": [
            {
                "fold": f.fold,
                "name": f.name,
                "n_train": f.n_train,
                "model": _scores_dict(f.model),
                "baseline": _scores_dict(f.baseline),
                "windows_avg": _scores_dict(f.windows_avg),
                "windows": _scores_dict(f.windows),
                "phone": _side_dict(f.phone),
                # whole-clip predictions of every held-out clip, for calibration
                "predictions": {
                    "file": [data.clips[int(i)].path.name for i in f.test_idx],
                    "target": [int(data.targets[int(i)]) for i in f.test_idx],
                    "probs": np.round(f.probs.astype(np.float64), 6).tolist(),
                    "phone_probs": None if f.phone_probs is None
                    else np.round(f.phone_probs.astype(np.float64), 6).tolist(),
                },
            }
            for f in folds
        ],
        "seconds": time.monotonic() - started,
    }
    if result is not None:
        doc.update(
            pooled=_scores_dict(result.pooled),
            pooled_baseline=_scores_dict(result.pooled_baseline),
            pooled_windows_avg=_scores_dict(result.pooled_windows_avg),
            pooled_windows=_scores_dict(result.pooled_windows),
            pooled_phone=_side_dict(result.pooled_phone),
            uar_mean=result.uar_mean,
            uar_std=result.uar_std,
            phone_uar_mean=result.phone_uar_mean,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def _calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from streamer.errors import DataError
    from streamer.models.calibration import fit_temperature, set_temperature

    doc, sides = _read_predictions(args.crossval_json)
    folds = doc["folds"]
    if not folds:
        raise DataError(f"{args.crossval_json}: holds no finished folds")
    if not 2 <= args.bins <= 1000:
        raise DataError(f"--bins must be 2-1000, got {args.bins}")
    # Both sides together: the one temperature the model gets serves 16 kHz and phone calls.
    parts = [p for side in sides.values() for p in side]
    y_all = np.concatenate([y for _, y in parts])
    temperature = fit_temperature(_log_probs(parts), y_all)
    print(f"{args.crossval_json}: {len(folds)} folds ({doc.get('protocol', '?')})")
    print(f"fitted temperature T = {temperature:.3f} on {len(y_all)} held-out predictions")
    report: dict[str, Any] = {"temperature": temperature, "bins": args.bins, "sides": {}}
    for name, side in sides.items():
        if not side:
            continue
        row = _calibration_row(side, temperature, bins=args.bins)
        report["sides"][name] = row
        _print_calibration_row(name, row)
    if args.model is not None:
        set_temperature(args.model, temperature)
        print(f"wrote logit_temperature {temperature:.3f} to {args.model / 'config.json'}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _read_predictions(path: Path) -> tuple[dict[str, Any], dict[str, list[tuple[Any, Any]]]]:
    """A 'crossval --json' file and its held-out (probabilities, targets) per fold and side."""
    import numpy as np

    from streamer.errors import DataError

    try:
        doc = json.loads(path.read_text())
        sides: dict[str, list[tuple[Any, Any]]] = {"16 kHz": [], "phone line": []}
        for fold in doc["folds"]:
            pred = fold["predictions"]
            y = np.asarray(pred["target"], dtype=np.int64)
            sides["16 kHz"].append((np.asarray(pred["probs"], dtype=np.float64), y))
            if pred.get("phone_probs") is not None:
                sides["phone line"].append((np.asarray(pred["phone_probs"]), y))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a 'crossval --json' file ({exc})") from exc
    return doc, sides


def _log_probs(parts: list[tuple[Any, Any]]) -> Any:
    """Log-probabilities act as logits: softmax(log p / T) = softmax(logits / T)."""
    import numpy as np

    return np.log(np.clip(np.concatenate([p for p, _ in parts]), 1e-12, 1.0))


def _calibration_row(
    side: list[tuple[Any, Any]], temperature: float, *, bins: int
) -> dict[str, Any]:
    """ECE and NLL of one side before and after ``temperature``, and with T from other folds."""
    import numpy as np

    from streamer.models.calibration import (
        expected_calibration_error,
        fit_temperature,
        nll,
        reliability_table,
        softmax,
    )

    z = _log_probs(side)
    y = np.concatenate([t for _, t in side])
    # Leave-one-fold-out temperature: each fold is scaled by a T fitted on the other folds.
    held = []
    for k in range(len(side)):
        others = [side[i] for i in range(len(side)) if i != k] or [side[k]]
        t_k = fit_temperature(_log_probs(others), np.concatenate([t for _, t in others]))
        held.append(softmax(_log_probs([side[k]]), t_k))
    held_probs = np.concatenate(held)
    before = softmax(z, 1.0)
    after = softmax(z, temperature)
    return {
        "n": int(len(y)),
        "ece_before": expected_calibration_error(before, y, bins),
        "ece_after": expected_calibration_error(after, y, bins),
        "ece_after_other_folds_t": expected_calibration_error(held_probs, y, bins),
        "nll_before": nll(z, y, 1.0),
        "nll_after": nll(z, y, temperature),
        "reliability_after": [
            {"lower": b.lower, "upper": b.upper, "count": b.count,
             "mean_confidence": b.mean_confidence, "accuracy": b.accuracy}
            for b in reliability_table(after, y, bins)
        ],
    }


def _print_calibration_row(name: str, row: dict[str, Any]) -> None:
    print(
        f"{name}: n={row['n']}  ECE {row['ece_before']:.3f} -> {row['ece_after']:.3f} "
        f"(T from the other folds: {row['ece_after_other_folds_t']:.3f}); "
        f"NLL {row['nll_before']:.3f} -> {row['nll_after']:.3f}"
    )
    print("  confidence bin   clips  mean confidence  observed accuracy")
    for b in row["reliability_after"]:
        if b["count"]:
            print(
                f"  {b['lower']:.2f}-{b['upper']:.2f}  {b['count']:>10}  "
                f"{b['mean_confidence']:>15.3f}  {b['accuracy']:>17.3f}"
            )


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
        "predicted_share": list(scores.predicted_share),
        "confusion": scores.confusion.tolist(),
    }


def _add_optimize(subparsers: Any) -> None:
    optimize = subparsers.add_parser(
        "optimize",
        help="export a model to ONNX (fp32 and int8) and check each backend against fp32 torch",
        description=(
            "Write DIR with the model's config, model.onnx (fp32) and model.int8.onnx (dynamic "
            "int8 MatMul) (wav2vec2: plus feature_encoder.onnx and feature_encoder.int8.onnx, "
            "the conv encoder with its convolutions as MatMul) and optimize.json: for torch "
            "fp32/bf16/int8 and onnx fp32/int8, the top-1 agreement and relative logit "
            "difference against fp32 torch on the checked windows and the time per window "
            "with one thread here. '--model DIR' then loads it; '--backend auto' picks the "
            "fastest setting within the agreement bounds."
        ),
    )
    optimize.add_argument(
        "--model", default=None,
        help="checkpoint folder to optimise (default: the bundled model)",
    )
    optimize.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    optimize.add_argument(
        "--data", type=Path, default=None,
        help="folder-per-label audio to check agreement on, e.g. the URDU data (default: "
        "synthetic voiced windows)",
    )
    optimize.add_argument(
        "--max-windows", type=int, default=160,
        help="2 s windows checked (default: 160)",
    )
    optimize.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out"
    )
    optimize.set_defaults(handler=_optimize)


def _optimize(args: argparse.Namespace) -> int:
    from streamer.extras import require_extra

    require_extra("torch", "transformers", "onnx", "onnxscript", purpose="ONNX export")
    from streamer.errors import ModelError
    from streamer.models.settings import within_bounds
    from streamer.offline.optimize import optimize_model

    if not 1 <= args.max_windows <= 10_000:
        raise ModelError(f"--max-windows must be 1..10000, got {args.max_windows}")
    if args.data is not None and not args.data.is_dir():
        raise ModelError(f"--data {args.data}: no such folder")
    manifest = optimize_model(
        args.model, args.out, data=args.data, max_windows=args.max_windows,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.out} ({manifest['checked_on']})")
    print(f"{'setting':<11} {'top-1 agree':>11} {'rel logit diff':>14} {'ms/window':>9}  ok")
    for key, check in manifest["checks"].items():
        if "unavailable" in check:
            print(f"{key:<11} {'-':>11} {'-':>14} {'-':>9}  {check['unavailable']}")
            continue
        print(f"{key:<11} {check['top1_agreement']:>11.3f} {check['rel_logit_diff']:>14.4f} "
              f"{check['ms_per_window']:>9.1f}  {'yes' if within_bounds(check) else 'no'}")
    return 0
