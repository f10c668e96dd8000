"""The Ray Serve inference tier against the in-process engine, same machine, same model, one run.

Starts a private Ray head (``ray start --head --block``: no dashboard, token auth with a
fresh token in the environment, its files in a temp folder), deploys the tier with the project's own
command (``emotion-monitor serve-ray``, bundled model, ``--replicas``), then runs the same
workload in "ingest node" processes, each an :class:`~streamer.engine.Engine` with
``--streams`` streams of continuous speech-like audio, first with its own model (``local``)
and then through the tier (``ray``), with 1 node and with ``--nodes`` nodes at once:

- throughput: every stream fed ``--throughput-s`` of audio as fast as the engine takes it
  (``realtime=False``: nothing dropped); windows per second over all nodes;
- label latency: every stream paced in real time for ``--seconds`` (live mode, drops counted):
  a label's arrival at the engine's sink minus the moment the window's last sample was fed,
  p50 and p99; windows dropped and failed.

It prints a table and the overhead ratios (Ray / in-process) at each node count. The nodes
wait at a barrier so they start together; every wait has a timeout. Needs
``emotion-monitor[ray]``.

    python bench/cluster.py [--streams 4] [--seconds 10] [--throughput-s 30] [--nodes 2]
        [--replicas 1] [--cpus-per-replica 1] [--ray-cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamer.engine import Engine, EngineConfig  # noqa: E402
from streamer.events import Event, WindowLabel  # noqa: E402
from streamer.testing import speech_like  # noqa: E402

RATE = 16000
CHUNK_S = 0.02
START_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 600.0


# -- one ingest node (a worker process) --------------------------------------------------------


def _model(mode: str, address: str) -> Any:
    if mode == "local":
        from streamer.models.loading import load_model

        return load_model(None, device="cpu")
    from streamer.models.ray_model import RayInferenceConfig, connect_ray_model

    return connect_ray_model(RayInferenceConfig(address=address, timeout_s=2.0))


class _Timing:
    """When each stream's audio reached each point (feeder threads) and when labels came back
    (the engine's sink, on its workers)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fed: dict[str, list[tuple[float, float]]] = {}  # stream -> (end_s, wall) per chunk
        self.labels: list[tuple[str, float, float]] = []  # (stream, end_s, wall)

    def sink(self, event: Event) -> None:
        if isinstance(event, WindowLabel):
            with self.lock:
                self.labels.append((event.stream, event.end_s, time.monotonic()))

    def latencies(self) -> list[float]:
        out = []
        for stream, end_s, wall in self.labels:
            points = self.fed[stream]
            ends = [p[0] for p in points]
            i = int(np.searchsorted(ends, end_s - 1e-6))
            if i < len(points):
                out.append(wall - points[i][1])
        return out


def _feed(engine: Engine, name: str, audio: np.ndarray, timing: _Timing, paced: bool) -> None:
    chunk = int(CHUNK_S * RATE)
    points: list[tuple[float, float]] = []
    timing.fed[name] = points
    start = time.monotonic()
    with engine.open_stream(name, sample_rate_hz=RATE) as feed:
        for i in range(0, audio.size, chunk):
            if paced:
                ahead = start + i / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            feed.feed(audio[i:i + chunk])
            points.append(((i + chunk) / RATE, time.monotonic()))


def _phase(model: Any, streams: int, seconds: float, *, paced: bool, node: int) -> dict[str, Any]:
    timing = _Timing()
    audio = [speech_like(seconds, seed=node * 100 + s, pitch_hz=110 + 15 * s)
             for s in range(streams)]
    config = EngineConfig(realtime=paced)
    started = time.monotonic()
    with Engine(model, config, timing.sink) as engine:
        threads = [threading.Thread(target=_feed, args=(engine, f"n{node}s{s}", audio[s],
                                                        timing, paced)) for s in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(RUN_TIMEOUT_S)
        engine.drain(RUN_TIMEOUT_S)
        elapsed = time.monotonic() - started
        stats = engine.stats()
    return {"windows": stats.windows_done, "dropped": stats.windows_dropped,
            "failed": stats.windows_failed, "elapsed_s": elapsed,
            "latencies": timing.latencies() if paced else []}


def _worker(args: argparse.Namespace) -> int:
    model = _model(args.worker, args.address)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    result = {"throughput": _phase(model, args.streams, args.throughput_s, paced=False,
                                   node=args.node)}
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    result["latency"] = _phase(model, args.streams, args.seconds, paced=True, node=args.node)
    close = getattr(model, "close", None)
    if close is not None:
        close()
    Path(args.out).write_text(json.dumps(result))
    return 0


# -- the driver ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def _start_head(folder: Path, cpus: int, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """A private Ray head (our child, in its own session); its GCS address."""
    port = _free_port()
    ray_cli = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    head = subprocess.Popen(
        [*ray_cli, "start", "--head", "--block", f"--port={port}", f"--num-cpus={cpus}",
         "--include-dashboard=false", f"--temp-dir={folder}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    assert head.stdout is not None
    for line in head.stdout:
        if "Ray runtime started" in line:
            # keep reading its output, or a full pipe would stall it
            threading.Thread(target=_drain, args=(head.stdout,), daemon=True).start()
            return head, f"127.0.0.1:{port}"
        if time.monotonic() > deadline:
            break
    head.kill()
    raise SystemExit("the Ray head did not start")


def _stop_head(head: subprocess.Popen[str]) -> None:
    """SIGTERM to ``ray start`` (it stops its processes), then SIGKILL to what is left of its
    session (only the head's own processes are in it)."""
    head.terminate()
    try:
        head.wait(30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _nodes(mode: str, count: int, address: str, args: argparse.Namespace, env: dict[str, str],
           folder: Path) -> list[dict[str, Any]]:
    """Run ``count`` ingest-node processes together (two barriers); their results."""
    procs = []
    outs = [folder / f"{mode}-{count}-{i}.json" for i in range(count)]
    for i in range(count):
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--worker", mode, "--address", address,
             "--streams", str(args.streams), "--seconds", str(args.seconds),
             "--throughput-s", str(args.throughput_s), "--node", str(i),
             "--out", str(outs[i])],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for _ in ("throughput", "latency"):
        for proc in procs:
            assert proc.stdout is not None and proc.stdin is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"a {mode} node failed to start")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
    for proc in procs:
        if proc.wait(RUN_TIMEOUT_S) != 0:
            raise SystemExit(f"a {mode} node failed")
    return [json.loads(out.read_text()) for out in outs]


def _summary(results: list[dict[str, Any]]) -> dict[str, float]:
    thr = [r["throughput"] for r in results]
    lat = [r["latency"] for r in results]
    latencies = np.asarray([x for r in lat for x in r["latencies"]])
    return {
        "windows_per_s": sum(r["windows"] for r in thr) / max(r["elapsed_s"] for r in thr),
        "throughput_dropped": sum(r["dropped"] for r in thr),
        "p50_ms": float(np.percentile(latencies, 50)) * 1000 if latencies.size else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) * 1000 if latencies.size else float("nan"),
        "live_windows": sum(r["windows"] for r in lat),
        "live_dropped": sum(r["dropped"] for r in lat),
        "live_failed": sum(r["failed"] for r in lat),
    }


def _print(rows: dict[tuple[str, int], dict[str, float]], nodes: list[int]) -> None:
    print(f"{'inference':<10}{'nodes':>6}{'windows/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'live labelled':>15}{'dropped':>9}{'failed':>8}")
    for (mode, count), row in rows.items():
        print(f"{mode:<10}{count:>6}{row['windows_per_s']:>11.1f}{row['p50_ms']:>9.0f}"
              f"{row['p99_ms']:>9.0f}{row['live_windows']:>15.0f}{row['live_dropped']:>9.0f}"
              f"{row['live_failed']:>8.0f}")
    for count in nodes:
        local, ray = rows[("local", count)], rows[("ray", count)]
        print(f"{count} node(s): Ray / in-process throughput "
              f"{ray['windows_per_s'] / local['windows_per_s']:.2f}x, p50 latency "
              f"{ray['p50_ms'] / local['p50_ms']:.2f}x, p99 latency "
              f"{ray['p99_ms'] / local['p99_ms']:.2f}x")


def _drive(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="rayb-", dir="/tmp"))  # socket paths stay short
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    head, address = _start_head(folder, args.ray_cpus, env)
    try:
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "server", "--log-level", "WARNING", "serve-ray",
             "--address", address, "--replicas", str(args.replicas),
             "--cpus-per-replica", str(args.cpus_per_replica)],
            env=env, check=True, timeout=START_TIMEOUT_S)
        print(f"tier deployed in {time.monotonic() - t0:.1f} s; {platform.processor() or ''} "
              f"{os.cpu_count()} CPU(s) on this machine; {args.streams} stream(s) per node, "
              f"{args.throughput_s:g} s (throughput) and {args.seconds:g} s (live) of audio per "
              "stream", flush=True)
        counts = sorted({1, args.nodes})
        rows = {}
        for count in counts:
            for mode in ("local", "ray"):
                rows[(mode, count)] = _summary(_nodes(mode, count, address, args, env, folder))
        _print(rows, counts)
    finally:
        _stop_head(head)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=4, help="streams per node (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="audio per stream in the live (latency) phase (default 10)")
    parser.add_argument("--throughput-s", type=float, default=30.0,
                        help="audio per stream in the throughput phase (default 30)")
    parser.add_argument("--nodes", type=int, default=2,
                        help="ingest nodes sharing the tier in the second round (default 2)")
    parser.add_argument("--replicas", type=int, default=1, help="tier replicas (default 1)")
    parser.add_argument("--cpus-per-replica", type=float, default=1.0,
                        help="CPUs per replica, also its model threads (default 1)")
    parser.add_argument("--ray-cpus", type=int, default=2, help="CPUs the Ray head offers")
    parser.add_argument("--worker", choices=["local", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    parser.add_argument("--node", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (1 <= args.streams <= 200 and 1 <= args.nodes <= 16 and 1 <= args.replicas <= 16
            and 0 < args.seconds <= 600 and 0 < args.throughput_s <= 600):
        parser.error("bounds: streams 1..200, nodes 1..16, replicas 1..16, seconds and "
                     "throughput-s (0, 600]")
    return _worker(args) if args.worker else _drive(args)


if __name__ == "__main__":
    raise SystemExit(main())
