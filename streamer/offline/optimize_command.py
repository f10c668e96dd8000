"""The ``optimize`` subcommand (main thread).

``register`` imports nothing heavy; the handler imports torch, onnx and onnxruntime when it
runs. Bad input raises :class:`streamer.errors.StreamerError` (one line, exit code 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``optimize`` to the top-level parser."""
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
