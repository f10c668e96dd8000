"""Load: N ``/ws`` subscribers and M real-time pushed calls against one real server, T seconds.

Starts ``emotion-monitor run --source none`` (bundled model, a store in a temporary folder,
limits raised to fit N and M) in a subprocess, connects N subscribers spread over
``--workers`` worker processes (so the clients' own CPU is not one process's loop), then
pushes M calls of continuous speech-like audio (16 kHz mono s16le, 20 ms frames, paced in real
time, starts staggered over 1 s) for T seconds each, ends them with ``ingest_end``, and waits
until every subscriber has seen every call's ``stream_close``. It reports:

- per-subscriber window counts against the server's own total (``stats.windows_done``): how
  many subscribers received every window, the smallest count, and ``client_messages_dropped``
  (frames the server dropped for slow subscribers, counted rather than lost silently);
- delivery latency p50/p99 (a window's ``wall_time`` to its arrival at a subscriber, same
  machine clock; sampled on every 10th subscriber to keep the clients' CPU down), and the same
  for one extra subscriber in the bench's own process (its loop is nearly idle, so this one is
  mostly the server's delay; the workers' figure includes their own CPU starvation);
- calls cut (a sender whose connection ended other than with the server's 1000 after
  ``ingest_end``), windows dropped by the engine, the server's ``stats.refused``;
- the server's RSS over time (``/proc/<pid>/status``), and its growth after ``--warmup-s``.

Bounded: N <= 5000, M <= 200, T <= 3600 s; every wait has a timeout.

    python bench/load.py --subscribers 1000 --calls 20 --seconds 300 [--workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from capacity_ingest import server_urls  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from streamer.protocol.messages import (  # noqa: E402
    IngestAck,
    IngestEnd,
    IngestStart,
    StatsMessage,
    decode,
    encode,
)
from streamer.testing import speech_like  # noqa: E402

RATE = 16000
FRAME_MS = 20
LATENCY_EVERY = 10  # every 10th subscriber decodes windows for latency
MAX_SAMPLES = 20_000  # latency samples kept per worker (reservoir)
PROGRESS_EVERY_S = 30.0
_STREAM = re.compile(r'"stream":"([^"]*)"')


# -- subscriber workers (separate processes) --------------------------------------------------


async def _subscriber(url: str, index: int, calls: set[str], done: asyncio.Event,
                      out: dict[str, Any], rng: np.random.Generator) -> None:
    windows = 0
    closes: set[str] = set()
    lat: list[float] = out["latency"]  # a reservoir of at most MAX_SAMPLES per worker
    sample = index % LATENCY_EVERY == 0
    try:
        async with connect(url, max_size=1 << 22, open_timeout=120, ping_timeout=120) as ws:
            out["connected"] += 1
            async for frame in ws:
                assert isinstance(frame, str)
                if frame.startswith('{"type":"window"'):
                    windows += 1
                    if sample:
                        delay = time.time() - json.loads(frame)["wall_time"]
                        out["samples_seen"] += 1
                        if len(lat) < MAX_SAMPLES:
                            lat.append(delay)
                        else:
                            slot = int(rng.integers(out["samples_seen"]))
                            if slot < MAX_SAMPLES:
                                lat[slot] = delay
                elif frame.startswith('{"type":"stream_close"'):
                    match = _STREAM.search(frame)
                    if match and match.group(1) in calls:
                        closes.add(match.group(1))
                        if closes == calls:
                            break

    except (ConnectionClosed, OSError) as exc:
        out["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        out["windows"].append(windows)
        out["complete"] += closes == calls
        if len(out["windows"]) == out["n"]:
            done.set()


async def _worker(url: str, first: int, n: int, calls: set[str], timeout_s: float,
                  result: Path) -> None:
    """N subscribers until all saw every call end, "stop" arrives on stdin, or the timeout."""
    out: dict[str, Any] = {"n": n, "connected": 0, "windows": [], "latency": [], "errors": [],
                           "complete": 0, "samples_seen": 0, "stopped_early": False}
    done = asyncio.Event()
    rng = np.random.default_rng(first)
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(_subscriber(url, first + i, calls, done, out, rng)))
        if i % 50 == 49:
            await asyncio.sleep(0.2)  # do not open hundreds of handshakes at once
    print(json.dumps({"ready": n}), flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.readline)  # the parent says "stop" (or dies)
    finished = asyncio.ensure_future(done.wait())
    await asyncio.wait([stop, finished], timeout=timeout_s,
                       return_when=asyncio.FIRST_COMPLETED)
    out["stopped_early"] = not done.is_set()
    finished.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result.write_text(json.dumps(out))
    print(json.dumps({"result": str(result)}), flush=True)
    os._exit(0)  # the stdin reader thread may still be blocked


# -- senders ----------------------------------------------------------------------------------


async def _sender(url: str, call: str, pcm: bytes, seconds: float, offset_s: float,
                  result: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(offset_s)
    frame_bytes = RATE * FRAME_MS // 1000 * 2
    total = int(seconds * RATE) * 2
    try:
        async with connect(url, max_size=1 << 20) as ws:
            await ws.send(encode(IngestStart(stream=call, sample_rate_hz=RATE, channels=1,
                                             format="s16le")))
            ack = decode(await asyncio.wait_for(ws.recv(), 60))
            if not isinstance(ack, IngestAck):
                result["cut"].append(f"{call}: {ack}")
                return
            began = loop.time()
            sent = 0
            while sent < total:
                start = sent % len(pcm)
                chunk = pcm[start:start + frame_bytes]
                sent += len(chunk)
                due = began + sent / 2 / RATE
                await asyncio.sleep(max(0.0, due - loop.time()))
                await ws.send(chunk)
            await ws.send(encode(IngestEnd()))
            async for _ in ws:
                pass
            if ws.close_code != 1000:
                result["cut"].append(f"{call}: closed {ws.close_code}")
    except ConnectionClosed as exc:
        result["cut"].append(f"{call}: {exc}")
    except OSError as exc:
        result["cut"].append(f"{call}: {type(exc).__name__}: {exc}")


async def _watch(url: str, state: dict[str, Any], rss: list[tuple[float, float]],
                 t0: float) -> None:
    """One extra subscriber (not counted): keeps the latest stats and prints progress."""
    async with connect(url, max_size=1 << 22, ping_timeout=120) as ws:
        last = time.monotonic()
        async for frame in ws:
            if isinstance(frame, str) and frame.startswith('{"type":"window"'):
                if len(state["watch_latency"]) < 200_000:
                    state["watch_latency"].append(time.time() - json.loads(frame)["wall_time"])
            elif isinstance(frame, str) and frame.startswith('{"type":"stats"'):
                state["stats"] = frame
                now = time.monotonic()
                if now - last >= PROGRESS_EVERY_S:
                    last = now
                    st = json.loads(frame)
                    print(f"  t={now - t0:4.0f}s windows_done {st['windows_done']} dropped "
                          f"{st['windows_dropped']} lag {st['lag_s']:.2f}s clients "
                          f"{st['clients']} client_msgs_dropped "
                          f"{st['client_messages_dropped']} refused "
                          f"{sum(st.get('refused', {}).values())} RSS "
                          f"{rss[-1][1] if rss else float('nan'):.0f} MB", flush=True)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _rss_sampler(pid: int, every_s: float, samples: list[tuple[float, float]],
                       t0: float) -> None:
    while True:
        try:
            samples.append((time.monotonic() - t0, _rss_mb(pid)))
        except OSError:
            return
        await asyncio.sleep(every_s)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def _read_json_line(stream: asyncio.StreamReader, timeout_s: float) -> dict[str, Any]:
    while True:
        line = await asyncio.wait_for(stream.readline(), timeout_s)
        if not line:
            raise RuntimeError("worker ended without a result")
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value


async def main(args: argparse.Namespace) -> int:
    n, m, seconds = args.subscribers, args.calls, args.seconds
    print(f"command: python bench/load.py {shlex.join(sys.argv[1:])}")
    print(f"machine: {os.cpu_count()} CPU(s) ({_cpu_model()}), Python "
          f"{platform.python_version()}, load average at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    folder = Path(tempfile.mkdtemp(prefix="em-load-"))
    run_args = [
        "--port", "0", "--store", str(folder / "load.sqlite3"),
        "--max-ws-clients", str(n + 10), "--max-ingest-calls", str(m + 10),
        "--max-connections-per-address", str(n + m + 20), *shlex.split(args.run_args),
    ]
    profile = ["-m", "cProfile", "-o", str(args.profile)] if args.profile else []
    server = await asyncio.create_subprocess_exec(
        sys.executable, *profile, "-m", "server", "--log-level", "WARNING", "run", "--source",
        "none",
        *run_args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    workers: list[asyncio.subprocess.Process] = []
    rss: list[tuple[float, float]] = []
    result: dict[str, Any] = {"cut": []}
    state: dict[str, Any] = {"stats": None, "watch_latency": []}
    watcher: asyncio.Task[None] | None = None
    calls = [f"load-{i}" for i in range(m)]
    streams = {f"{c}/ch0" for c in calls}
    try:
        assert server.stdout is not None
        urls = await server_urls(server.stdout)
        t0 = time.monotonic()
        sampler = asyncio.create_task(_rss_sampler(server.pid, args.rss_every_s, rss, t0))
        per = [n // args.workers + (1 if i < n % args.workers else 0)
               for i in range(args.workers)]
        first = 0
        for count in per:
            workers.append(await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--worker", urls["events"], str(first), str(count),
                ",".join(sorted(streams)), str(seconds + 600), str(folder / f"w{first}.json"),
                stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE,
            ))
            first += count
        watcher = asyncio.create_task(_watch(urls["events"], state, rss, t0))
        for worker in workers:
            assert worker.stdout is not None
            await _read_json_line(worker.stdout, 300)  # its subscribers are connecting
        await asyncio.sleep(args.settle_s)  # let every handshake finish
        audio = speech_like(60.0, seed=1)
        pcm = (np.clip(audio * 32768.0, -32768, 32767).round().astype("<i2")).tobytes()
        print(f"{n} subscribers connecting/connected; pushing {m} calls for {seconds:g} s",
              flush=True)
        await asyncio.wait_for(asyncio.gather(*(
            _sender(urls["ingest"], call, pcm, seconds, i / max(1, m), result)
            for i, call in enumerate(calls)
        )), seconds + 300)
        print(f"senders done ({len(result['cut'])} cut); waiting for subscribers", flush=True)
        waits = [asyncio.create_task(w.wait()) for w in workers]
        await asyncio.wait(waits, timeout=120)  # everyone saw every call end, or stop them
        for worker in workers:
            if worker.returncode is None and worker.stdin is not None:
                worker.stdin.write(b"stop\n")
                await worker.stdin.drain()
        await asyncio.wait(waits, timeout=120)
        reports = []
        first = 0
        for count in per:
            path = folder / f"w{first}.json"
            first += count
            reports.append(json.loads(path.read_text()) if path.exists() else
                           {"n": count, "connected": 0, "windows": [], "latency": [],
                            "errors": ["no result"], "complete": 0, "stopped_early": True})
        await asyncio.sleep(2 * 1.0)  # one more stats tick after the last close
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(server.wait(), 60)
            except TimeoutError:
                server.kill()
                await server.wait()
        shutil.rmtree(folder, ignore_errors=True)  # the run's store and worker results
    counts = [w for r in reports for w in r["windows"]]
    latency = [x for r in reports for x in r["latency"]]
    stats_text = state["stats"]
    stats = decode(stats_text) if stats_text else None
    total = stats.windows_done if isinstance(stats, StatsMessage) else max(counts, default=0)
    full = sum(1 for c in counts if c >= total)
    warm = [mb for t, mb in rss if t >= args.warmup_s]
    print(f"subscribers: {len(counts)} reported, {sum(r['connected'] for r in reports)} "
          f"connected, {sum(r['complete'] for r in reports)} saw every call end, "
          f"{sum(len(r['errors']) for r in reports)} connection errors "
          f"{sorted({e for r in reports for e in r['errors']})[:3]}")
    print(f"windows: server labelled {total}; {full} of {len(counts)} subscribers got all, "
          f"fewest {min(counts, default=0)}, most {max(counts, default=0)}")
    if isinstance(stats, StatsMessage):
        print(f"server stats (last seen): windows_dropped {stats.windows_dropped}, "
              f"client_messages_dropped {stats.client_messages_dropped}, "
              f"refused {dict(stats.refused)}, store_errors {stats.store_errors}")
    if latency:
        print(f"delivery latency (window wall_time -> subscriber): p50 "
              f"{np.percentile(latency, 50) * 1000:.0f} ms, p99 "
              f"{np.percentile(latency, 99) * 1000:.0f} ms, max {max(latency) * 1000:.0f} ms "
              f"({len(latency)} samples)")
    watch = state["watch_latency"]
    if watch:
        print(f"delivery latency to one lightly loaded subscriber (the bench's own watcher): "
              f"p50 {np.percentile(watch, 50) * 1000:.0f} ms, p99 "
              f"{np.percentile(watch, 99) * 1000:.0f} ms ({len(watch)} windows)")
    print(f"calls cut: {len(result['cut'])} of {m}" +
          (f" ({'; '.join(result['cut'][:5])})" if result["cut"] else ""))
    if rss:
        line = ", ".join(f"{t:.0f}s {mb:.0f}" for t, mb in rss[:: max(1, len(rss) // 12)])
        print(f"server RSS MB over time: {line}")
    if warm:
        print(f"RSS after {args.warmup_s:g} s warm-up: {warm[0]:.0f} MB -> max {max(warm):.0f} "
              f"MB (growth {max(warm) - warm[0]:.0f} MB), end {warm[-1]:.0f} MB")
    print(f"load average at end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "subscribers": n, "calls": m, "seconds": seconds, "windows_total": total,
            "subscribers_all": full, "counts_min": min(counts, default=0),
            "latency_p50": float(np.percentile(latency, 50)) if latency else None,
            "latency_p99": float(np.percentile(latency, 99)) if latency else None,
            "calls_cut": result["cut"], "rss": rss,
            "stats": json.loads(stats_text) if stats_text else None,
        }, indent=1) + "\n")
    return 0


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--rss-every-s", type=float, default=5.0)
    parser.add_argument("--run-args", default="", help="extra 'emotion-monitor run' arguments")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the server under cProfile, writing its stats to this file")
    args = parser.parse_args()
    if not 1 <= args.subscribers <= 5000 or not 1 <= args.calls <= 200:
        parser.error("--subscribers must be 1-5000 and --calls 1-200")
    if not 1 <= args.seconds <= 3600 or not 1 <= args.workers <= 32:
        parser.error("--seconds must be 1-3600 and --workers 1-32")
    return args


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, url, first, count, names, timeout, out = sys.argv
        asyncio.run(_worker(url, int(first), int(count), set(names.split(",")), float(timeout),
                            Path(out)))
        raise SystemExit(0)
    raise SystemExit(asyncio.run(main(_parse())))
