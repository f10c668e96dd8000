"""Concurrent Twilio Media Streams calls, real time on loopback, against the same calls on /ingest.

Starts ``emotion-monitor run --source none --no-store`` (bundled model, default settings, the
Twilio connector on with a random auth token) in a subprocess. Then, in one run:

1. ``--calls`` Twilio-style calls: each a signed WebSocket to ``/twilio`` sending ``connected``,
   ``start`` (tracks inbound and outbound, two custom parameters), then every 20 ms one
   ``media`` message per track (160 bytes of mu-law, base64, in compact JSON as Twilio writes
   it), and ``stop``;
2. the same calls pushed through ``/ingest`` (the project's own protocol, the reference path):
   ``ingest_start`` (8 kHz, 2 channels s16le, roles customer and agent), then every 20 ms one
   binary frame of both channels (the same samples: the mu-law decoded), and ``ingest_end``.

Each call is ``--seconds`` of turn-taking (customer 4 s, 0.5 s pause, agent 4 s, 0.5 s pause,
...), the same audio in every call, starts staggered over the first 0.5 s. One pacing task
sends every call's next 20 ms at each tick, so the bench's own cost stays small and equal for
both paths; one ``/ws`` client records every window. Per path it prints: windows labelled /
expected (expected: the same tracks through the engine offline, nothing dropped), the engine's
dropped windows (``stats`` delta), label lag (a window's ``wall_time`` minus the moment its last
sample was sent: p50, p95, max), and the server's CPU (``/proc``: cores busy over the phase,
and CPU ms per call-second), and how late the bench itself sent its latest tick (its share of
the lag); then the Twilio / ingest ratios.

    nice python bench/twilio_calls.py [--calls 50] [--seconds 30] [--model fixed]

``--model fixed`` serves the zero-cost ``FixedProbabilitiesModel`` in the same server (no
inference at all; ``serve`` is that subprocess): what is left is the receive path, VAD,
windowing and events, so the ratio is the connector's own cost against ``/ingest``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import shlex
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from capacity_ingest import cpu_model, server_urls  # noqa: E402
from pipeline import proc_cpu_s  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from server.connectors.twilio import twilio_signature  # noqa: E402
from streamer.audio import float32_to_int16, int16_to_float32  # noqa: E402
from streamer.engine import Engine, EngineConfig  # noqa: E402
from streamer.events import WindowLabel  # noqa: E402
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
from streamer.telephony import mulaw_decode, mulaw_encode  # noqa: E402
from streamer.testing import FixedProbabilitiesModel, speech_like  # noqa: E402

RATE = 8000
STEP = 160  # samples (and mu-law bytes) per 20 ms
TICK_S = STEP / RATE


@dataclass
class Phase:
    """What one path's run measured."""

    name: str
    calls: int
    expected: int = 0
    labelled: int = 0
    dropped: int = 0
    starved: int = 0
    lags: list[float] = field(default_factory=list)
    late_s: float = 0.0  # the bench's own lateness: the most a tick was sent after it was due
    cpu_s: float = 0.0
    wall_s: float = 0.0
    audio_s: float = 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.lags, q)) if self.lags else float("nan")

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else float("nan")

    @property
    def cpu_ms_per_call_s(self) -> float:
        return 1000 * self.cpu_s / (self.calls * self.audio_s) if self.audio_s else float("nan")


def turn_taking(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Customer and agent tracks (8 kHz float32, as heard through mu-law): 4 s turns."""
    n = int(seconds * RATE)
    tracks = [np.zeros(n, np.float32), np.zeros(n, np.float32)]
    turn, pause, at, who = int(4.0 * RATE), int(0.5 * RATE), 0, 0
    while at < n - int(0.5 * RATE):
        length = min(turn, n - int(0.5 * RATE) - at)
        tracks[who][at : at + length] = speech_like(length / RATE, rate_hz=RATE, seed=at,
                                                    pitch_hz=150.0 if who == 0 else 110.0)
        at += length + pause
        who = 1 - who
    # what the server gets either way: the samples a mu-law line carries
    return tuple(int16_to_float32(mulaw_decode(mulaw_encode(float32_to_int16(t))))
                 for t in tracks)  # type: ignore[return-value]


def offline_windows(track: np.ndarray) -> int:
    """Windows the engine makes for ``track`` when nothing is dropped (zero-cost model)."""
    count = 0

    def sink(event: object) -> None:
        nonlocal count
        count += isinstance(event, WindowLabel)

    engine = Engine(FixedProbabilitiesModel(), EngineConfig(realtime=False), sink)
    try:
        feed = engine.open_stream("offline", sample_rate_hz=RATE)
        for i in range(0, track.size, STEP):
            feed.feed(track[i : i + STEP])
        feed.close()
        engine.drain(None)
    finally:
        engine.close()
    return count


# -- the two senders: one step of 20 ms per call per tick ------------------------------------------


class TwilioCall:
    """One Twilio-style stream: messages formatted as Twilio writes them."""

    def __init__(self, ws: ClientConnection, call_sid: str, stream_sid: str,
                 payloads: tuple[list[str], list[str]]) -> None:
        self.ws, self.call_sid, self.stream_sid, self.payloads = ws, call_sid, stream_sid, payloads
        self.sequence = 0

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    async def begin(self) -> None:
        await self.ws.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await self.ws.send(
            f'{{"event":"start","sequenceNumber":"{self._next()}","start":{{"accountSid":'
            f'"AC{"0" * 32}","streamSid":"{self.stream_sid}","callSid":"{self.call_sid}",'
            '"tracks":["inbound","outbound"],"mediaFormat":{"encoding":"audio/x-mulaw",'
            '"sampleRate":8000,"channels":1},"customParameters":{"queue":"bench",'
            f'"agentId":"a-1"}}}},"streamSid":"{self.stream_sid}"}}')

    async def step(self, k: int) -> None:
        for track, payloads in zip(("inbound", "outbound"), self.payloads, strict=True):
            await self.ws.send(
                f'{{"event":"media","sequenceNumber":"{self._next()}","media":{{"track":'
                f'"{track}","chunk":"{k + 1}","timestamp":"{20 * (k + 1)}","payload":'
                f'"{payloads[k]}"}},"streamSid":"{self.stream_sid}"}}')

    async def end(self) -> None:
        await self.ws.send(
            f'{{"event":"stop","sequenceNumber":"{self._next()}","stop":{{"accountSid":'
            f'"AC{"0" * 32}","callSid":"{self.call_sid}"}},"streamSid":"{self.stream_sid}"}}')


class IngestCall:
    """The same call on /ingest: one stereo s16le frame per 20 ms."""

    def __init__(self, ws: ClientConnection, frames: list[bytes]) -> None:
        self.ws, self.frames = ws, frames

    async def step(self, k: int) -> None:
        await self.ws.send(self.frames[k])

    async def end(self) -> None:
        await self.ws.send(encode(IngestEnd()))


Sender = TwilioCall | IngestCall


async def pace(senders: list[Sender], steps: int, began: float, names: list[str],
               t0: dict[str, float]) -> float:
    """Every call's next 20 ms at each tick (call i starts ``i`` offsets in); fills ``t0``
    (each call's second 0 on the wall clock) before the first tick. Returns how late the
    latest tick was finished (the sender's share of the measured lag)."""
    loop = asyncio.get_running_loop()
    offsets = [round(i * 0.5 / TICK_S / len(senders)) for i in range(len(senders))]
    wall = time.time() + (began - loop.time())
    t0.update((name, wall + o * TICK_S) for name, o in zip(names, offsets, strict=True))
    late = 0.0
    for tick in range(steps + max(offsets)):
        due = began + (tick + 1) * TICK_S
        await asyncio.sleep(max(0.0, due - loop.time()))
        for sender, offset in zip(senders, offsets, strict=True):
            k = tick - offset
            if 0 <= k < steps:
                await sender.step(k)
        late = max(late, loop.time() - due)
    return late


# -- one phase ---------------------------------------------------------------------------------


async def record(events: str, streams: set[str], out: Phase, t0: dict[str, float],
                 ready: asyncio.Event) -> None:
    """Every window of ``streams`` from /ws until they all closed; dropped from stats."""
    counts = dict.fromkeys(streams, 0)
    first: StatsMessage | None = None
    async with connect(events, max_size=1 << 22) as ws:
        await ws.recv()  # hello
        ready.set()
        open_ = set(streams)
        while open_:
            message = decode(await asyncio.wait_for(ws.recv(), 120))
            if isinstance(message, StatsMessage) and first is None:
                first = message
            elif isinstance(message, WindowMessage) and message.stream in counts:
                counts[message.stream] += 1
                call = message.stream.split("/", 1)[0]
                if call in t0:
                    out.lags.append(message.wall_time - (t0[call] + message.end_s))
            elif isinstance(message, StreamCloseMessage):
                open_.discard(message.stream)
        while not isinstance(message, StatsMessage):  # the engine's count after the last close
            message = decode(await asyncio.wait_for(ws.recv(), 120))
    out.labelled = sum(counts.values())
    out.starved = sum(1 for v in counts.values() if v == 0)
    out.dropped = message.windows_dropped - (first.windows_dropped if first else 0)


async def run_phase(name: str, open_call: Callable[[int], Coroutine[Any, Any, tuple[str, Sender]]],
                    calls: int, steps: int, events: str, server_pid: int,
                    per_call_expected: int) -> Phase:
    out = Phase(name, calls, expected=calls * per_call_expected, audio_s=steps * TICK_S)
    opened = [await open_call(i) for i in range(calls)]
    names = [call for call, _ in opened]
    senders = [sender for _, sender in opened]
    streams = {f"{call}/{role}" for call in names for role in ("customer", "agent")}
    t0: dict[str, float] = {}
    ready = asyncio.Event()
    recorder = asyncio.create_task(record(events, streams, out, t0, ready))
    await ready.wait()
    cpu0, wall0 = proc_cpu_s(server_pid), time.monotonic()
    loop = asyncio.get_running_loop()
    out.late_s = await pace(senders, steps, loop.time() + 0.1, names, t0)
    for sender in senders:
        await sender.end()
    for sender in senders:
        async for _ in sender.ws:  # until the server's 1000 close
            pass
    await recorder
    out.cpu_s, out.wall_s = proc_cpu_s(server_pid) - cpu0, time.monotonic() - wall0
    return out


def show(phase: Phase) -> None:
    print(f"{phase.name:>7} {phase.labelled:>8} {phase.expected:>8} {phase.dropped:>7} "
          f"{phase.starved:>7} {phase.pct(50):>7.2f}s {phase.pct(95):>5.2f}s "
          f"{max(phase.lags, default=float('nan')):>5.2f}s {phase.cores:>6.2f} "
          f"{phase.cpu_ms_per_call_s:>9.1f} {phase.late_s:>9.2f}s", flush=True)


async def serve_fixed() -> int:
    """The server with the zero-cost model and the Twilio connector; prints its URLs."""
    import logging

    from server.config import ServerConfig
    from server.connectors.twilio import TWILIO_AUTH_TOKEN_ENV, TwilioConfig
    from server.monitor import Monitor

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("server.websockets").setLevel(logging.ERROR)
    config = ServerConfig(port=0, store_path=None, connectors=(
        TwilioConfig(auth_token=os.environ[TWILIO_AUTH_TOKEN_ENV]),))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Monitor(FixedProbabilitiesModel(), engine_config=EngineConfig(),
                       server_config=config) as monitor:
        print(f"events:    {monitor.ws_url}", flush=True)
        print(f"ingest:    {monitor.ingest_url}", flush=True)
        await stop.wait()
    return 0


async def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        return await serve_fixed()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--model", choices=("bundled", "fixed"), default="bundled")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    command = "nice python bench/twilio_calls.py " + shlex.join(sys.argv[1:])
    print(f"command: {command.strip()}")
    print(f"machine: {os.cpu_count()} CPU(s) ({cpu_model()}), no GPU used, Python "
          f"{platform.python_version()}, load average at start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    customer, agent = turn_taking(args.seconds)
    steps = customer.size // STEP
    per_call = offline_windows(customer) + offline_windows(agent)
    codes = [mulaw_encode(float32_to_int16(t)).tobytes() for t in (customer, agent)]
    payloads = tuple([base64.b64encode(c[i : i + STEP]).decode() for i in range(0, len(c), STEP)]
                     for c in codes)
    stereo = float32_to_int16(np.stack([customer, agent], 1)).astype("<i2").tobytes()
    frames = [stereo[i * 4 * STEP : (i + 1) * 4 * STEP] for i in range(steps)]
    token = secrets.token_hex(16)
    serve = ([str(Path(__file__).resolve()), "serve"] if args.model == "fixed" else
             ["-m", "server", "--log-level", "WARNING", "run", "--source", "none", "--port", "0",
              "--no-store"])
    server = await asyncio.create_subprocess_exec(
        sys.executable, *serve, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EMOTION_MONITOR_TWILIO_AUTH_TOKEN": token},
    )
    try:
        assert server.stdout is not None
        urls = await server_urls(server.stdout)
        base = urls["ingest"].rsplit("/", 1)[0]
        port = base.rsplit(":", 1)[1]
        signature = twilio_signature(token, f"wss://127.0.0.1:{port}/twilio")

        async def twilio(i: int) -> tuple[str, Sender]:
            call = f"CA{i:032x}"
            ws = await connect(f"{base}/twilio", additional_headers={
                "X-Twilio-Signature": signature})
            sender = TwilioCall(ws, call, f"MZ{i:032x}", payloads)  # type: ignore[arg-type]
            await sender.begin()
            return call, sender

        async def ingest(i: int) -> tuple[str, Sender]:
            call = f"ingest-{i}"
            ws = await connect(urls["ingest"])
            await ws.send(encode(IngestStart(call, RATE, 2, "s16le", ("customer", "agent"))))
            assert isinstance(decode(await ws.recv()), IngestAck)
            return call, IngestCall(ws, frames)

        print(f"{args.calls} calls x {steps * TICK_S:g} s, both parties (turn-taking), "
              f"{per_call} windows per call expected, {args.model} model")
        print(f"{'path':>7} {'windows':>8} {'expected':>8} {'dropped':>7} {'starved':>7} "
              f"{'lag p50':>8} {'p95':>6} {'max':>6} {'cores':>6} {'ms/call-s':>9} "
              f"{'send late':>10}")
        results = []
        for name, opener in (("twilio", twilio), ("ingest", ingest)):
            results.append(await run_phase(name, opener, args.calls, steps, urls["events"],
                                           server.pid, per_call))
            show(results[-1])
        health = json.loads(await asyncio.to_thread(
            lambda: urlopen(urls["events"].replace("ws://", "http://").rsplit("/", 1)[0]
                            + "/healthz", timeout=30).read()))
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(server.wait(), 60)
            except TimeoutError:
                server.kill()
                await server.wait()
    twilio_phase, ingest_phase = results
    print(f"twilio / ingest: server CPU x{twilio_phase.cpu_s / ingest_phase.cpu_s:.2f}, "
          f"windows x{twilio_phase.labelled / max(ingest_phase.labelled, 1):.3f}, "
          f"p95 lag {twilio_phase.pct(95):.2f} s vs {ingest_phase.pct(95):.2f} s")
    stats = health.get("connectors", {}).get("twilio", {})
    print(f"twilio connector: {json.dumps(stats, sort_keys=True)}")
    print(f"load average at end {' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work on "
          "the machine raises CPU and lag for both paths alike)")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": command, "connector": stats,
            "phases": [{"path": p.name, "calls": p.calls, "labelled": p.labelled,
                        "expected": p.expected, "dropped": p.dropped, "starved": p.starved,
                        "lag_p50": p.pct(50), "lag_p95": p.pct(95), "send_late_s": p.late_s,
                        "cpu_s": p.cpu_s,
                        "wall_s": p.wall_s} for p in results],
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
