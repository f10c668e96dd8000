"""Where an ``emotion-monitor optimize`` output spends its time: ONNX Runtime's per-operator
profile of one 2 s window, and ms/window at a few batch sizes (one intra-op thread).

For a split wav2vec2 output the conv encoder and the rest are profiled one after the other, as
the engine runs them; operator times are summed over both graphs.

    python bench/onnx_profile.py DIR [--precision int8] [--batches 1,2,4] [--runs 5]

DIR is an ``optimize`` output, e.g. of ``bench/inference.py``'s ``build_wav2vec2`` checkpoints.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WINDOW = 32000


def sessions(folder: Path, precision: str, *, profile: Path | None) -> list[object]:
    """The graphs of one window, in order: [encoder, head] or [full]."""
    import onnxruntime as ort

    from streamer.models.onnx_runner import onnx_session

    files = json.loads((folder / "optimize.json").read_text())["files"]
    names = [files[precision]]
    if files.get("encoder"):
        names.insert(0, files.get(f"encoder_{precision}") or files["encoder"])
    out = []
    for name in names:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        if profile is not None:  # ORT writes one JSON per session under this prefix
            options.enable_profiling = True
            options.profile_file_prefix = str(profile / name)
        out.append(onnx_session(folder / name, options))  # as the engine opens it
    return out


def run(graphs: list, x: np.ndarray) -> None:  # type: ignore[type-arg]
    value = x
    for graph in graphs:
        value = graph.run(None, {graph.get_inputs()[0].name: value})[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    scratch = Path(tempfile.mkdtemp(prefix="onnx-profile-"))
    graphs = sessions(args.folder, args.precision, profile=scratch)
    x = (0.1 * rng.standard_normal((1, WINDOW))).astype(np.float32)
    for _ in range(args.runs + 1):  # the first run allocates; it is counted like the others
        run(graphs, x)
    per_op: dict[str, float] = defaultdict(float)
    for graph in graphs:
        for event in json.loads(Path(graph.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_op[event["args"]["op_name"]] += event["dur"] / 1000.0 / (args.runs + 1)
    shutil.rmtree(scratch, ignore_errors=True)
    total = sum(per_op.values())
    print(f"{args.folder} {args.precision}: operator time per 2 s window, one thread "
          f"(profiled, {total:.1f} ms in kernels)")
    for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {op:<28} {ms:7.1f} ms  {100 * ms / total:5.1f} %")

    graphs = sessions(args.folder, args.precision, profile=None)
    for batch in (int(b) for b in args.batches.split(",")):
        xb = (0.1 * rng.standard_normal((batch, WINDOW))).astype(np.float32)
        run(graphs, xb)
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            run(graphs, xb)
            times.append(time.perf_counter() - started)
        print(f"batch {batch}: {np.median(times) * 1000 / batch:.1f} ms/window (median of "
              f"{args.runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
