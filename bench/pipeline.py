"""The pipeline outside the model: real-time streams one server sustains with a zero-cost model.

Starts the real server (``server.monitor.Monitor``: ingest, engine, hub, fan-out, the same parts
``emotion-monitor run --source none --no-store`` builds) in a subprocess with
:class:`~streamer.testing.FixedProbabilitiesModel` (no model cost at all), then ramps the
number of concurrent pushed calls. What is left is the engine's feeder path (frame decode, VAD,
windowing, outbox and smoothing, event conversion, JSON, fan-out) and the event loop.

The senders are cheap on purpose, so the server is what is measured: each call's ingest
handshake goes through ``websockets``, then one pacing task writes pre-encoded, masked binary
frames (16 kHz mono s16le, ``--frame-ms``) to every call's socket in real time (starts
staggered over 0.5 s), and ``ingest_end`` goes through ``websockets`` again. One ``/ws``
client records every window (lags, counts); ``--subscribers`` more ``/ws`` clients only read.

Per step: windows labelled / expected, dropped, label lag p50/p95/max (window ``wall_time``
minus the moment its last sample was due), the engine's ``stats.lag_s`` maximum, and the
server's CPU time per second of audio per stream (``/proc``; the naive reading of "capacity",
1 s of CPU / that, is printed next to the measured count). A step is *sustained* when every
stream got labels, at most ``--max-drop`` of the windows were lost and the p95 lag is at most
``--max-lag-s``.

    python bench/pipeline.py --steps 200,400,600,800,1000 --seconds 20
    python bench/pipeline.py --steps 300 --seconds 15 --profile /tmp/server.prof

``--profile`` runs the server under cProfile (its loop thread and the engine's worker threads)
and prints the top functions by own time and a breakdown by stage; profiling slows it down, so
use it on one step below the capacity. ``serve`` (first argument) is the server subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import shlex
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from capacity_ingest import cpu_model, expected_windows, server_urls  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.frames import Frame, Opcode  # noqa: E402

from streamer.protocol.messages import (  # noqa: E402
    IngestAck,
    IngestEnd,
    IngestStart,
    decode,
    encode,
)
from streamer.testing import speech_like  # noqa: E402

RATE = 16000
_CONNECT_AT_ONCE = 64


# -- the server subprocess ----------------------------------------------------------------------


def serve(argv: list[str]) -> int:
    """The real server with the zero-cost model; prints its URLs, stops on SIGTERM."""
    parser = argparse.ArgumentParser(prog="pipeline.py serve")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    profiles: list[cProfile.Profile] = []
    if args.profile is not None:
        main_profile = cProfile.Profile()
        profiles.append(main_profile)

        def per_thread(frame: object, event: str, arg: object) -> None:
            sys.setprofile(None)
            profile = cProfile.Profile()
            profiles.append(profile)
            profile.enable()

        threading.setprofile(per_thread)  # every thread started from now on: its own profile
        main_profile.enable()
    try:
        return asyncio.run(_serve(args.workers))
    finally:
        if profiles:
            profiles[0].disable()
            stats = pstats.Stats(profiles[0])
            for profile in profiles[1:]:
                stats.add(profile)
            stats.dump_stats(str(args.profile))


async def _serve(workers: int) -> int:
    import logging

    from server.config import IngestConfig, ServerConfig
    from server.limits import LimitsConfig
    from server.monitor import Monitor
    from streamer.engine import EngineConfig
    from streamer.testing import FixedProbabilitiesModel

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("server.websockets").setLevel(logging.ERROR)
    config = ServerConfig(
        port=0, store_path=None,
        ingest=IngestConfig(max_calls=100_000, idle_timeout_s=60.0),
        limits=LimitsConfig(max_connections_per_address=100_000, max_ws_clients=100_000),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    model = FixedProbabilitiesModel(workers=workers)
    async with Monitor(model, engine_config=EngineConfig(), server_config=config) as monitor:
        print(f"events:    {monitor.ws_url}", flush=True)
        print(f"ingest:    {monitor.ingest_url}", flush=True)
        await stop.wait()
    return 0


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Step:
    streams: int
    expected: int = 0
    labelled: int = 0
    dropped: int = 0
    starved: int = 0
    lags: list[float] = field(default_factory=list)
    engine_lag_max: float = 0.0
    server_cpu_s: float = 0.0
    bench_cpu_s: float = 0.0
    wall_s: float = 0.0
    subscriber_frames: int = 0
    client_drops: int = 0  # frames the server dropped for slow /ws clients
    unclosed: int = 0  # streams whose stream_close the recorder never saw

    def pct(self, q: float) -> float:
        return float(np.percentile(self.lags, q)) if self.lags else float("nan")

    @property
    def lost(self) -> float:
        return 1.0 - self.labelled / self.expected if self.expected else 1.0

    def ok(self, max_drop: float, max_lag_s: float) -> bool:
        return (self.starved == 0 and self.unclosed == 0 and self.lost <= max_drop
                and self.pct(95) <= max_lag_s)


def masked_frames(pcm: bytes, frame_bytes: int) -> list[bytes]:
    """The audio as client (masked) binary WebSocket frames, encoded once for every sender."""
    return [Frame(Opcode.BINARY, pcm[i : i + frame_bytes]).serialize(mask=True)
            for i in range(0, len(pcm), frame_bytes)]


async def open_call(url: str, call: str) -> tuple[ClientConnection, str]:
    ws = await connect(url, max_size=1 << 20, compression=None)
    await ws.send(encode(IngestStart(stream=call, sample_rate_hz=RATE, channels=1,
                                     format="s16le")))
    ack = decode(await ws.recv())
    assert isinstance(ack, IngestAck), ack
    return ws, ack.streams[0]


async def push_all(calls: list[tuple[ClientConnection, str]], frames: list[bytes],
                   frame_s: float, sent_at: dict[str, float]) -> None:
    """Write every call's frames in real time from one task; starts staggered over 0.5 s."""
    loop = asyncio.get_running_loop()
    n = len(calls)
    groups = max(1, round(0.5 / frame_s))
    offsets = [i * groups // n for i in range(n)]  # start offset in frames, 0..groups-1
    began = loop.time() + 0.05
    wall = time.time() + (began - loop.time())
    for (_, stream), g in zip(calls, offsets, strict=True):
        sent_at[stream] = wall + g * frame_s
    transports = [ws.transport for ws, _ in calls]
    for tick in range(len(frames) + groups):
        due = began + (tick + 1) * frame_s
        await asyncio.sleep(max(0.0, due - loop.time()))
        for transport, g in zip(transports, offsets, strict=True):
            k = tick - g
            if 0 <= k < len(frames):
                transport.write(frames[k])
    for ws, _ in calls:
        await ws.send(encode(IngestEnd()))


async def drain(ws: ClientConnection) -> None:
    async for _ in ws:  # until the server's close
        pass


async def count_frames(ws: ClientConnection, counter: list[int]) -> None:
    try:
        async for _ in ws:
            counter[0] += 1
    except Exception:
        pass


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_step(urls: dict[str, str], server_pid: int, n: int, step_no: int,
                   args: argparse.Namespace) -> Step:
    seconds, frame_ms = args.seconds, args.frame_ms
    audio = np.concatenate([speech_like(seconds, seed=step_no), np.zeros(RATE // 2, np.float32)])
    pcm = (np.clip(audio * 32768.0, -32768, 32767).round().astype("<i2")).tobytes()
    frames = masked_frames(pcm, RATE * frame_ms // 1000 * 2)
    result = Step(n)
    sent_at: dict[str, float] = {}
    names = {f"p{step_no}-{i}/ch0" for i in range(n)}
    labelled: dict[str, int] = dict.fromkeys(names, 0)
    subscribers = [await connect(urls["events"], max_size=1 << 22)
                   for _ in range(args.subscribers)]
    sub_counter = [0]
    sub_tasks = [asyncio.create_task(count_frames(ws, sub_counter)) for ws in subscribers]
    async with connect(urls["events"], max_size=1 << 22) as ws:
        await ws.recv()  # hello (backlog of earlier steps follows; ignored by name)
        calls: list[tuple[ClientConnection, str]] = []
        for i in range(0, n, _CONNECT_AT_ONCE):
            calls += await asyncio.gather(*(
                open_call(urls["ingest"], f"p{step_no}-{j}")
                for j in range(i, min(n, i + _CONNECT_AT_ONCE))))
        cpu0, bench0, t0 = proc_cpu_s(server_pid), time.process_time(), time.monotonic()
        pusher = asyncio.create_task(push_all(calls, frames, frame_ms / 1000, sent_at))
        closers = [asyncio.create_task(drain(c)) for c, _ in calls]
        dropped_at_start: int | None = None
        client_drops_at_start = 0
        open_ = set(names)
        last_stats: dict[str, Any] | None = None
        give_up: float | None = None  # the recorder may have lost a stream_close (slow client)
        while open_ and (give_up is None or time.monotonic() < give_up):
            if give_up is None and pusher.done():
                give_up = time.monotonic() + 30.0
            try:
                # plain json: the recorder must keep up with 1,000 streams' events
                message = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
            except TimeoutError:
                continue
            kind = message["type"]
            if kind == "stats":
                if dropped_at_start is None:
                    dropped_at_start = message["windows_dropped"]
                    client_drops_at_start = message["client_messages_dropped"]
                last_stats = message
                result.client_drops = message["client_messages_dropped"] - client_drops_at_start
                result.engine_lag_max = max(result.engine_lag_max, message["lag_s"])
            elif kind == "window" and message["stream"] in labelled:
                labelled[message["stream"]] += 1
                start = sent_at.get(message["stream"])
                if start is not None:
                    result.lags.append(message["wall_time"] - (start + message["end_s"]))
            elif kind == "stream_close":
                open_.discard(message["stream"])
        result.unclosed = len(open_)
        result.server_cpu_s = proc_cpu_s(server_pid) - cpu0
        result.bench_cpu_s = time.process_time() - bench0
        result.wall_s = time.monotonic() - t0
        await pusher
        await asyncio.gather(*closers)
        while last_stats is None or last_stats["wall_time"] < time.time() - 0.01:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message["type"] == "stats":
                last_stats = message
                break
    for sub in subscribers:
        await sub.close()
    await asyncio.gather(*sub_tasks)
    result.subscriber_frames = sub_counter[0]
    result.expected = n * expected_windows(seconds)
    result.labelled = sum(labelled.values())
    result.starved = sum(1 for v in labelled.values() if v == 0)
    result.dropped = last_stats["windows_dropped"] - (dropped_at_start or 0)
    return result


# -- the profile --------------------------------------------------------------------------------

#: stage -> substrings of a profiled function's "file:function" (first match wins)
_STAGES = (
    ("(idle: waiting on a lock or epoll)", ("method 'acquire' of '_thread.lock",
                                            "method 'poll' of 'select.epoll",
                                            "method 'wait' of")),
    ("websockets (frame parse, recv, send)", ("websockets/",)),
    ("ingest handler + frame decode", ("server/ingest.py", "streamer/audio.py")),
    ("VAD (webrtcvad + gate)", ("streamer/vad.py", "webrtcvad", "Vad' objects")),
    ("windowing + ring", ("streamer/windows.py", "streamer/ring.py")),
    ("engine feed/submit/settle + scheduler", ("streamer/engine.py", "streamer/scheduler.py",
                                               "threading.py")),
    ("outbox + smoothing", ("streamer/outbox.py", "streamer/smoothing.py")),
    ("event -> message", ("streamer/convert.py",)),
    ("JSON encode", ("streamer/protocol/", "json/", "orjson")),
    ("hub + fan-out + writers", ("server/hub.py", "server/fanout.py", "server/app.py",
                                 "server/session.py", "server/recorder.py",
                                 "server/bridge.py")),
    ("asyncio loop + sockets", ("asyncio/", "selectors.py", "socket", "select")),
    ("numpy", ("numpy",)),
)


def print_profile(path: Path, audio_s: float, top: int) -> None:
    stats = pstats.Stats(str(path))
    raw = stats.stats  # type: ignore[attr-defined]
    idle_stage = _STAGES[0]
    total = sum(v[2] for k, v in raw.items()
                if not any(n in f"{k[0]}:{k[2]}" for n in idle_stage[1]))
    by_stage: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in raw.items():
        key = f"{filename}:{name}"
        stage = next((s for s, needles in _STAGES if any(k in key for k in needles)), "other")
        by_stage[stage] += tottime
        rows.append((tottime, calls, cumtime, f"{_short(filename)}:{line}({name})"))
    print(f"profile: {total:.2f} s of own time (idle waits apart) for {audio_s:.0f} "
          "stream-seconds of audio "
          f"({1e6 * total / audio_s:.0f} us per stream-second, under cProfile)")
    print(f"{'stage':<42} {'s':>7} {'share':>6} {'us/stream-s':>12}")
    for stage, t in sorted(by_stage.items(), key=lambda kv: -kv[1]):
        print(f"{stage:<42} {t:>7.2f} {t / total:>6.1%} {1e6 * t / audio_s:>12.1f}")
    print(f"top {top} functions by own time:")
    print(f"{'own s':>7} {'calls':>9} {'cum s':>7}  function")
    busy = [r for r in rows if not any(n in r[3] for n in ("acquire' of", "poll' of"))]
    for tottime, calls, cumtime, where in sorted(busy, reverse=True)[:top]:
        print(f"{tottime:>7.2f} {calls:>9} {cumtime:>7.2f}  {where}")


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3", str(REPO) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# -- main ---------------------------------------------------------------------------------------


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="200,400,600,800,1000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--frame-ms", type=int, default=20)
    parser.add_argument("--subscribers", type=int, default=0,
                        help="extra /ws clients that only read (dashboards)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-drop", type=float, default=0.02)
    parser.add_argument("--max-lag-s", type=float, default=1.0)
    parser.add_argument("--keep-going", action="store_true",
                        help="run every step, even after one is not sustained")
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the server under cProfile, write its stats here, print them")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]
    command = "python bench/pipeline.py " + shlex.join(argv)
    print(f"command: {command.strip()}")
    print(f"machine: {os.cpu_count()} CPU(s) ({cpu_model()}), Python "
          f"{platform.python_version()}, load average at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    serve_args = ["--workers", str(args.workers)]
    if args.profile is not None:
        serve_args += ["--profile", str(args.profile)]
    server = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).resolve()), "serve", *serve_args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    results: list[Step] = []
    try:
        assert server.stdout is not None
        urls = await server_urls(server.stdout)
        print(f"{'streams':>7} {'windows':>8} {'expected':>8} {'lost':>6} {'dropped':>7} "
              f"{'starved':>7} {'lag p50':>7} {'p95':>6} {'max':>6} {'eng lag':>7} "
              f"{'srv cpu':>7} {'us/str-s':>8} {'naive est':>9} {'bench cpu':>9} "
              f"{'cl drop':>7}  ok")
        for k, n in enumerate(steps):
            step = await run_step(urls, server.pid, n, k, args)
            results.append(step)
            ok = step.ok(args.max_drop, args.max_lag_s)
            per_stream_s = step.server_cpu_s / (n * args.seconds)
            est = 1.0 / per_stream_s if per_stream_s else float("inf")
            print(f"{n:>7} {step.labelled:>8} {step.expected:>8} {step.lost:>6.1%} "
                  f"{step.dropped:>7} {step.starved:>7} {step.pct(50):>6.2f}s "
                  f"{step.pct(95):>5.2f}s {max(step.lags, default=float('nan')):>5.2f}s "
                  f"{step.engine_lag_max:>6.2f}s {step.server_cpu_s / step.wall_s:>6.0%}c "
                  f"{1e6 * per_stream_s:>8.0f} {est:>9.0f} "
                  f"{step.bench_cpu_s / step.wall_s:>8.0%}c {step.client_drops:>7}  "
                  f"{'yes' if ok else 'NO'}"
                  f"{f' ({step.unclosed} unclosed)' if step.unclosed else ''}",
                  flush=True)
            if not ok and not args.keep_going:
                break
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(server.wait(), 120)
            except TimeoutError:
                server.kill()
                await server.wait()
    best = max((s.streams for s in results if s.ok(args.max_drop, args.max_lag_s)), default=0)
    print("srv cpu: the server's CPU use (1 core = 100%); us/str-s: server CPU microseconds "
          "per second of audio per stream; naive est: 1 core / that; cl drop: frames the "
          "server dropped for slow /ws clients (the recorder among them)")
    print(f"load average at end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"result: {best} concurrent real-time streams sustained with the zero-cost model "
          f"(every stream labelled, <= {args.max_drop:.0%} windows lost, p95 label lag <= "
          f"{args.max_lag_s:g} s)")
    if args.profile is not None and args.profile.exists():
        audio_s = sum(s.streams for s in results) * args.seconds
        print_profile(args.profile, audio_s, args.top)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": command, "sustained_streams": best,
            "steps": [{"streams": s.streams, "labelled": s.labelled, "expected": s.expected,
                       "dropped": s.dropped, "starved": s.starved, "lag_p50": s.pct(50),
                       "lag_p95": s.pct(95), "engine_lag_max": s.engine_lag_max,
                       "server_cpu_s": s.server_cpu_s, "wall_s": s.wall_s}
                      for s in results],
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        raise SystemExit(serve(sys.argv[2:]))
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
