"""Capacity of live call monitoring: how many real-time pushed streams one server sustains.

Starts ``emotion-monitor run --source none --no-store`` (bundled model and default settings,
or what ``--run-args`` adds, e.g. ``--model DIR --backend onnx --precision int8``) in a
subprocess, then ramps the number of concurrent senders. At each step every sender pushes
``--seconds`` of continuous speech-like audio (16 kHz mono s16le, ``--frame-ms`` frames, paced
in real time, starts staggered over the first 0.5 s) to ``WS /ingest`` while one ``/ws`` client
records every window. Per step it reports:

- windows labelled / expected (continuous speech: one window at 2 s, then one per 0.5 s hop,
  plus the flush window) and the engine's dropped-window count (``stats`` delta);
- label lag: a window's ``wall_time`` minus the moment its last sample was sent (sender clock,
  same machine): p50, p95, max;
- the engine's ``stats.lag_s`` maximum (age of the oldest queued window).

A step is *sustained* when every stream got labels, at most ``--max-drop`` of the expected
windows were lost, and the p95 label lag stays under ``--max-lag-s``. The ramp stops after the
first step that is not sustained; the result is the largest sustained step.

    nice python bench/capacity_ingest.py [--steps 10,20,30,40,60,80] [--seconds 20]
        [--run-args "--model DIR --backend onnx --precision int8"] [--model fixed]

``--model fixed`` serves the zero-cost model instead (no model cost: the pipeline around it);
``bench/pipeline.py`` measures that with senders cheap enough for 1,000 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from websockets.asyncio.client import connect  # noqa: E402

from streamer.protocol.messages import (  # noqa: E402
    IngestAck,
    IngestEnd,
    IngestStart,
    StatsMessage,
    StreamCloseMessage,
    WindowMessage,
    decode,
    encode,
)
from streamer.testing import speech_like  # noqa: E402

RATE = 16000


@dataclass
class Step:
    streams: int
    expected: int = 0
    labelled: int = 0
    dropped: int = 0
    starved: int = 0
    lags: list[float] = field(default_factory=list)
    engine_lag_max: float = 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.lags, q)) if self.lags else float("nan")

    @property
    def lost(self) -> float:
        return 1.0 - self.labelled / self.expected if self.expected else 1.0


def expected_windows(seconds: float, window_s: float = 2.0, hop_s: float = 0.5) -> int:
    """Windows the engine makes for one continuous segment of ``seconds`` (see windows.py)."""
    if seconds < window_s:
        return 1
    regular = 1 + int((seconds - window_s) // hop_s + 1e-9)
    tail = seconds - (window_s + (regular - 1) * hop_s)
    return regular + (1 if tail >= 0.5 - 1e-9 else 0)


async def sender(url: str, call: str, pcm: bytes, frame_bytes: int, offset_s: float,
                 sent_at: dict[str, float]) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(offset_s)
    async with connect(url, max_size=1 << 20) as ws:
        await ws.send(encode(IngestStart(stream=call, sample_rate_hz=RATE, channels=1,
                                         format="s16le")))
        ack = decode(await ws.recv())
        if not isinstance(ack, IngestAck):
            raise RuntimeError(f"{call}: the server refused the call: {ack}")
        began = loop.time()
        sent_at[ack.streams[0]] = time.time()  # stream second 0 on the wall clock
        for i in range(0, len(pcm), frame_bytes):
            chunk = pcm[i : i + frame_bytes]
            due = began + (i + len(chunk)) / 2 / RATE
            await asyncio.sleep(max(0.0, due - loop.time()))
            await ws.send(chunk)
        await ws.send(encode(IngestEnd()))
        async for _ in ws:  # until the server's 1000 close
            pass


async def run_step(ingest: str, events: str, n: int, step_no: int, seconds: float,
                   frame_ms: int) -> Step:
    audio = np.concatenate([speech_like(seconds, seed=step_no), np.zeros(RATE // 2, np.float32)])
    pcm = (np.clip(audio * 32768.0, -32768, 32767).round().astype("<i2")).tobytes()
    frame_bytes = RATE * frame_ms // 1000 * 2
    result = Step(n)
    sent_at: dict[str, float] = {}
    names = {f"cap{step_no}-{i}/ch0" for i in range(n)}
    labelled: dict[str, int] = dict.fromkeys(names, 0)
    async with connect(events, max_size=1 << 22) as ws:
        await ws.recv()  # hello (backlog of earlier steps follows; ignored by name)
        dropped_at_start: int | None = None
        senders = asyncio.ensure_future(asyncio.gather(*(
            sender(ingest, f"cap{step_no}-{i}", pcm, frame_bytes, 0.5 * i / n, sent_at)
            for i in range(n)
        )))
        open_ = set(names)
        last_stats: StatsMessage | None = None
        while open_:
            if senders.done() and senders.exception() is not None:
                raise SystemExit(f"step of {n} streams: a sender failed: {senders.exception()!r}")
            message = decode(await asyncio.wait_for(ws.recv(), seconds + 120))
            if isinstance(message, StatsMessage):
                if dropped_at_start is None:
                    dropped_at_start = message.windows_dropped
                last_stats = message
                result.engine_lag_max = max(result.engine_lag_max, message.lag_s)
            elif isinstance(message, WindowMessage) and message.stream in names:
                labelled[message.stream] += 1
                start = sent_at.get(message.stream)
                if start is not None:
                    result.lags.append(message.wall_time - (start + message.end_s))
            elif isinstance(message, StreamCloseMessage):
                open_.discard(message.stream)
        await senders
        while last_stats is None or last_stats.wall_time < time.time() - 0.01:
            message = decode(await asyncio.wait_for(ws.recv(), 30))
            if isinstance(message, StatsMessage):
                last_stats = message
                break
    result.expected = n * expected_windows(seconds)
    result.labelled = sum(labelled.values())
    result.starved = sum(1 for v in labelled.values() if v == 0)
    result.dropped = last_stats.windows_dropped - (dropped_at_start or 0)
    return result


async def server_urls(stdout: asyncio.StreamReader, timeout_s: float = 120.0) -> dict[str, str]:
    """The ``events:`` and ``ingest:`` URLs a server started by a bench prints on stdout."""
    urls: dict[str, str] = {}
    while len(urls) < 2:
        line = (await asyncio.wait_for(stdout.readline(), timeout_s)).decode()
        if not line:
            raise SystemExit("the server exited before printing its URLs")
        match = re.match(r"^(events|ingest):\s+(\S+)", line)
        if match:
            urls[match.group(1)] = match.group(2)
    return urls


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,20,30,40,60,80,100")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--frame-ms", type=int, default=20)
    parser.add_argument("--max-drop", type=float, default=0.02)
    parser.add_argument("--max-lag-s", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--run-args", default="",
                        help="extra arguments for 'emotion-monitor run' (model, backend, workers)")
    parser.add_argument("--model", choices=("bundled", "fixed"), default="bundled",
                        help="fixed: the zero-cost FixedProbabilitiesModel in the same server "
                        "(bench/pipeline.py serve; --run-args is ignored), so only the pipeline "
                        "around the model is measured")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    command = "nice python bench/capacity_ingest.py " + shlex.join(sys.argv[1:])
    print(f"command: {command.strip()}")
    print(f"machine: {os.cpu_count()} CPU(s) ({cpu_model()}), no GPU used, "
          f"Python {platform.python_version()}, load average at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.model == "fixed":
        serve = [str(REPO / "bench" / "pipeline.py"), "serve"]
    else:
        # the server's own bounds (100 calls, connections per address) sized to the largest
        # step: every sender and the recorder connect from 127.0.0.1
        room = str(max(steps) + 10)
        serve = ["-m", "server", "--log-level", "WARNING", "run", "--source", "none",
                 "--port", "0", "--no-store", "--max-ingest-calls", room,
                 "--max-connections-per-address", room, "--max-ws-clients", room,
                 *shlex.split(args.run_args)]
    server = await asyncio.create_subprocess_exec(
        sys.executable, *serve, cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    results: list[Step] = []
    try:
        assert server.stdout is not None
        urls = await server_urls(server.stdout)
        print(f"{'streams':>7} {'windows':>9} {'expected':>8} {'lost':>6} {'dropped':>7} "
              f"{'starved':>7} {'lag p50':>8} {'p95':>6} {'max':>6} {'engine lag':>10}  ok")
        for k, n in enumerate(steps):
            step = await run_step(urls["ingest"], urls["events"], n, k, args.seconds,
                                  args.frame_ms)
            ok = (step.starved == 0 and step.lost <= args.max_drop
                  and step.pct(95) <= args.max_lag_s)
            results.append(step)
            print(f"{n:>7} {step.labelled:>9} {step.expected:>8} {step.lost:>6.1%} "
                  f"{step.dropped:>7} {step.starved:>7} {step.pct(50):>7.2f}s "
                  f"{step.pct(95):>5.2f}s {max(step.lags, default=float('nan')):>5.2f}s "
                  f"{step.engine_lag_max:>9.2f}s  {'yes' if ok else 'NO'}", flush=True)
            if not ok:
                break
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(server.wait(), 60)
            except TimeoutError:
                server.kill()
                await server.wait()
    sustained = [s.streams for s in results
                 if s.starved == 0 and s.lost <= args.max_drop and s.pct(95) <= args.max_lag_s]
    best = max(sustained, default=0)
    print(f"load average at end {' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work on "
          "the machine lowers the figure)")
    print(f"result: {best} concurrent real-time streams sustained (every stream labelled, "
          f"<= {args.max_drop:.0%} windows lost, p95 label lag <= {args.max_lag_s:g} s)")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": command, "sustained_streams": best,
            "steps": [{"streams": s.streams, "labelled": s.labelled, "expected": s.expected,
                       "dropped": s.dropped, "starved": s.starved, "lag_p50": s.pct(50),
                       "lag_p95": s.pct(95), "engine_lag_max": s.engine_lag_max}
                      for s in results],
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
