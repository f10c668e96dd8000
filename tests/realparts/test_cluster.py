"""The whole cluster on one machine: Redis, PostgreSQL, a Ray head with the tier, two ingest
nodes and nginx in front of them, every part a real process this module starts and stops.

Each node is ``emotion-monitor run --source none --bus redis://... --store postgresql://...
--inference ray:HOST:PORT`` in a child process. Calls go in through nginx's ``/ingest``
(``least_conn``: two concurrent calls land one on each node); one ``/ws`` client on each
node, connected directly, shows what a dashboard there would show. Which node ran a call is
read from the PostgreSQL store (the session its ``stream_open`` was recorded under).

The tests run in file order on one module-scoped cluster, one round of calls each: the
Ray replica is killed in the second, node B in the last (it stays dead). Every round ends by
checking that every event the clients received is in PostgreSQL, frame for frame.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, TIMEOUT_S

from client.push import push_file
from server.store import read_events
from server.store_pg import PostgresStoreConfig, PostgresTimelineReader
from streamer.audio import s16le_to_float32
from streamer.engine import Engine, EngineConfig
from streamer.events import StreamClosed
from streamer.protocol.messages import (
    Hello,
    Message,
    StatsMessage,
    StreamCloseMessage,
    WindowMessage,
    decode,
    encode,
)
from streamer.testing import FixedProbabilitiesModel, speech_like
from tests.pgserver import PostgresServer, postgres_binaries
from tests.test_bus import RedisServer, assert_bracketed_in_order, of_stream
from tests.test_tls import make_certificate

from .monitor import Monitor, Recorder, base_env
from .nginx import NginxNode, NginxProxy
from .procs import require_binary, require_module
from .rayhead import RayHead, ReplicaKiller
from .test_nginx_nodes import ADMIN, INGEST, ROLES, VIEW, Node, run, streams_of, until, watching

pytestmark = pytest.mark.slow

NODE_TTL_S = 1.0  # a SIGKILLed node is lost after this long
MAX_LAG_S = 10.0  # generous: a loaded 2-core machine still labels live windows


@dataclass(frozen=True)
class Cluster:
    """The running parts a test uses: nodes by name, nginx, its CA, the store, the killer."""

    nodes: dict[str, Node]
    proxy: NginxProxy
    ca: Path
    store: PostgresTimelineReader
    killer: ReplicaKiller
    folder: Path

    def owner(self, call: str) -> str:
        """The name of the node whose session recorded ``call``'s streams opening."""
        sessions = {session for stream in streams_of([call]) for session, _ in
                    read_events(self.store, stream=stream, types=("stream_open",))}
        names = [name for name, node in self.nodes.items() if node.session in sessions]
        assert len(names) == 1, f"call {call} recorded as opened by {names or 'no node'}"
        return names[0]


def _node_args(name: str, *, folder: Path, bus: str, store: str, ray: str) -> list[str]:
    return ["--source", "none", "--host", "127.0.0.1", "--port", "0",
            "--token-file", str(folder / "tokens"), "--tls-proxy",
            "--store", store, "--store-password-file", str(folder / "pg-password"),
            "--bus", bus, "--node-id", name, "--bus-node-ttl-s", str(NODE_TTL_S),
            "--inference", f"ray:{ray}", "--max-lag-s", str(MAX_LAG_S),
            "--stats-interval-s", "0.5"]


def _secret_files(folder: Path, pg_password: str) -> None:
    for name, text in (("tokens", f"ingest:{INGEST}\nview:{VIEW}\nadmin:{ADMIN}\n"),
                       ("pg-password", pg_password + "\n")):
        (folder / name).write_text(text)
        (folder / name).chmod(0o600)


def _required() -> str:
    """Skip (fail in CI) before starting anything when a part is missing; redis-server."""
    redis = require_binary("redis-server", "redis-server")
    require_binary("nginx", "nginx-light", candidates=("/usr/sbin/nginx",))
    postgres_binaries()
    for module, extra in (("redis", "redis"), ("psycopg", "postgres"), ("ray", "ray")):
        require_module(module, f"'emotion-monitor[{extra}]'")
    return redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis, PostgreSQL, Ray (2 CPUs, 2 replicas), nodes a and b, nginx; all stopped after."""
    redis_binary = _required()
    folder = tmp_path_factory.mktemp("cluster")
    (folder / "home").mkdir()
    with ExitStack() as stack:
        redis = RedisServer(redis_binary, folder / "redis")
        stack.callback(redis.stop)
        redis.start()
        pg = stack.enter_context(PostgresServer(timeout_s=TIMEOUT_S))
        store_url = pg.create_database("cluster")
        _secret_files(folder, pg.password)
        head = stack.enter_context(RayHead(cpus=2, replicas=2, cpus_per_replica=0.5,
                                           timeout_s=TIMEOUT_S * 4))
        monitors = {}
        for name in ("a", "b"):
            args = _node_args(name, folder=folder, bus=redis.url, store=store_url,
                              ray=head.address)
            monitors[name] = Monitor(args, env=head.env(base_env(folder / "home")), cwd=REPO,
                                     log_path=folder / f"node-{name}.log",
                                     timeout_s=TIMEOUT_S * 4)
            stack.callback(monitors[name].stop)
        killer = ReplicaKiller(head)
        stack.callback(killer.stop)
        nodes = {name: _ready(monitor) for name, monitor in monitors.items()}
        assert len(killer.wait_ready()) == 2
        ca, cert, key = make_certificate(folder)
        proxy = stack.enter_context(NginxProxy(
            folder / "nginx", [NginxNode(node.http) for node in nodes.values()],
            certificate=cert, key=key, timeout_s=TIMEOUT_S))
        store = PostgresTimelineReader(PostgresStoreConfig(store_url, password=pg.password))
        yield Cluster(nodes, proxy, ca, store, killer, folder)


def _ready(monitor: Monitor) -> Node:
    monitor.wait_ready()
    session = monitor.process.wait_for(r"^session:\s+(\S+)", timeout_s=TIMEOUT_S).group(1)
    return Node(monitor, session, 0)


# -- calls and what the clients saw ------------------------------------------------------------


def call_wav(folder: Path, name: str, seconds: float, seed: int) -> Path:
    """A stereo 16 kHz call: agent and customer speak at different pitches."""
    agent = speech_like(seconds, seed=seed, pitch_hz=120.0)
    customer = speech_like(seconds, seed=seed + 1, pitch_hz=210.0)
    path = folder / f"{name}.wav"
    sf.write(path, np.stack([agent, customer], axis=1), 16000, subtype="PCM_16")
    return path


def windows_cut(wav: Path) -> dict[str, int]:
    """Role -> the windows an engine cuts of that channel as pushed (s16le), none dropped."""
    audio, rate = sf.read(wav, dtype="int16")
    cut = {}
    for channel, role in enumerate(ROLES):
        samples = s16le_to_float32(np.ascontiguousarray(audio[:, channel]).tobytes())
        events: list[Any] = []
        with Engine(FixedProbabilitiesModel(), EngineConfig(realtime=False),
                    events.append) as engine:
            with engine.open_stream(role, sample_rate_hz=rate) as feed:
                feed.feed(samples)
            assert engine.drain(TIMEOUT_S)
        (closed,) = [e for e in events if isinstance(e, StreamClosed)]
        cut[role] = closed.windows + closed.windows_dropped
    return cut


async def push(cluster: Cluster, wav: Path, call: str) -> Any:
    """One call through nginx's /ingest, paced in real time; its result (or the error)."""
    return await push_file(wav, cluster.proxy.ws_url("/ingest"), stream=call, roles=ROLES,
                           token=INGEST, ca_file=cluster.ca)


def received(recorder: Recorder) -> list[Message]:
    """What one /ws client received, decoded."""
    return [decode(json.dumps(m)) for m in recorder.messages]


def closes(recorder: Recorder, streams: set[str]) -> dict[str, StreamCloseMessage]:
    return {m.stream: m for m in received(recorder)
            if isinstance(m, StreamCloseMessage) and m.stream in streams}


def last_seq(recorder: Recorder, stream: str) -> int:
    return max((m.seq for m in received(recorder)
                if isinstance(m, WindowMessage) and m.stream == stream), default=-1)


async def each_has_a_window(recorders: dict[str, Recorder], on: str, streams: set[str]) -> None:
    await until(recorders, lambda: all(last_seq(recorders[on], s) >= 0 for s in streams),
                f"a window of every stream of {sorted(streams)}")


async def all_closed_on(recorders: dict[str, Recorder], on: Sequence[str],
                        streams: set[str]) -> None:
    await until(recorders, lambda: all(set(closes(recorders[s], streams)) == streams
                                       for s in on), f"{sorted(streams)} to close")


def assert_stored(cluster: Cluster, recorders: dict[str, Recorder]) -> int:
    """Every event any client received is in PostgreSQL, frame for frame, the ``node_lost``
    closes too (stored by the survivor whose bus claim made them). Their count."""
    stored = {encode(message) for _, message in read_events(cluster.store)}
    lost = 0
    for session, recorder in recorders.items():
        for message in received(recorder):
            if isinstance(message, Hello):
                continue
            if isinstance(message, StreamCloseMessage) and message.reason == "node_lost":
                lost += 1
            assert encode(message) in stored, f"{session}: not in the store: {message}"
    return lost


def session_of(cluster: Cluster, name: str) -> str:
    return cluster.nodes[name].session


# -- the rounds ----------------------------------------------------------------------------------


def test_calls_through_nginx_land_on_both_nodes_and_every_client_sees_all_in_order(
    cluster: Cluster,
) -> None:
    """Two concurrent calls through nginx: one per node; the /ws client on A and the one on B
    each see both calls' streams opened, windows 0, 1, 2 ... and closed (end), in order."""
    calls = ["round1-x", "round1-y"]
    wav = call_wav(cluster.folder, "round1", 3.0, seed=1)
    a, b = session_of(cluster, "a"), session_of(cluster, "b")

    async def scenario() -> dict[str, Recorder]:
        async with watching(list(cluster.nodes.values())) as recorders:
            results = await asyncio.gather(*(push(cluster, wav, call) for call in calls))
            assert [r.streams for r in results] == [tuple(f"{c}/{r}" for r in ROLES) for c in calls]
            await all_closed_on(recorders, [a, b], streams_of(calls))
            return recorders

    recorders = run(scenario())
    assert {cluster.owner(call) for call in calls} == {"a", "b"}  # least_conn used both
    for session in (a, b):
        got = received(recorders[session])
        for stream in sorted(streams_of(calls)):
            assert_bracketed_in_order(got, stream, "end")
    assert assert_stored(cluster, recorders) == 0


def test_a_killed_ray_replica_loses_no_stream_and_its_windows_are_counted(
    cluster: Cluster,
) -> None:
    """A tier replica killed while a call streams on each node: every stream still closes
    with ``end``; each stream's labelled + dropped windows are the windows the engine cut, and
    the nodes' final stats count the drops (``windows_failed`` among ``windows_dropped``)."""
    calls = ["round2-x", "round2-y"]
    wav = call_wav(cluster.folder, "round2", 6.0, seed=3)
    cut = windows_cut(wav)
    a, b = session_of(cluster, "a"), session_of(cluster, "b")
    streams = streams_of(calls)

    async def scenario() -> tuple[dict[str, Recorder], dict[str, int]]:
        async with watching(list(cluster.nodes.values())) as recorders:
            pushes = asyncio.gather(*(push(cluster, wav, call) for call in calls))
            await each_has_a_window(recorders, a, streams)
            await asyncio.to_thread(cluster.killer.kill)
            before = {stream: last_seq(recorders[a], stream) for stream in streams}
            await pushes
            await all_closed_on(recorders, [a, b], streams)
            seen = len(recorders[a].messages)
            await until(recorders, lambda: {"a", "b"} <= {
                m.node for m in received(recorders[a])[seen:] if isinstance(m, StatsMessage)},
                "stats of both nodes after the calls")
            return recorders, before

    recorders, before = run(scenario())
    assert {cluster.owner(call) for call in calls} == {"a", "b"}
    got = received(recorders[a])
    final = {m.node: m for m in got if isinstance(m, StatsMessage)}
    for stream, close in closes(recorders[a], streams).items():
        assert_bracketed_in_order(got, stream, "end")
        windows = [m for m in of_stream(got, stream) if isinstance(m, WindowMessage)]
        assert len(windows) == close.windows
        assert close.windows + close.windows_dropped == cut[stream.rsplit("/", 1)[1]], close
        assert windows[-1].seq > before[stream], f"{stream}: nothing labelled after the kill"
    for name in ("a", "b"):
        dropped = sum(c.windows_dropped for s, c in closes(recorders[a], streams).items()
                      if cluster.owner(s.rsplit("/", 1)[0]) == name)
        stats = final[name]
        assert stats.windows_failed <= stats.windows_dropped and dropped <= stats.windows_dropped
    print(f"replica kill: windows dropped {({n: s.windows_dropped for n, s in final.items()})}, "
          f"failed {({n: s.windows_failed for n, s in final.items()})}")
    assert assert_stored(cluster, recorders) == 0


def test_a_killed_node_ends_its_calls_with_node_lost_while_the_other_goes_on(
    cluster: Cluster,
) -> None:
    """SIGKILL of node B mid-call: on A's /ws its streams close with ``node_lost`` (once),
    A's call keeps being labelled after that and closes with ``end``; everything the clients
    received before and after is in PostgreSQL (B committed each frame before sending it)."""
    calls = ["round3-x", "round3-y"]
    wav = call_wav(cluster.folder, "round3", 8.0, seed=5)
    a = session_of(cluster, "a")
    streams = streams_of(calls)

    async def scenario() -> tuple[dict[str, Recorder], list[Any], dict[str, int],
                                  dict[str, str]]:
        async with watching(list(cluster.nodes.values())) as recorders:
            pushes = asyncio.gather(*(push(cluster, wav, call) for call in calls),
                                    return_exceptions=True)
            await each_has_a_window(recorders, a, streams)
            owners = {call: cluster.owner(call) for call in calls}
            assert sorted(owners.values()) == ["a", "b"], owners
            cluster.nodes["b"].monitor.kill()  # SIGKILL: no goodbye
            lost = streams_of([c for c, n in owners.items() if n == "b"])
            await until(recorders, lambda: set(closes(recorders[a], lost)) == lost,
                        "node B's streams to close on A")
            at_loss = {s: last_seq(recorders[a], s) for s in streams - lost}
            results = await pushes
            await all_closed_on(recorders, [a], streams)
            return recorders, list(results), at_loss, owners

    recorders, results, at_loss, owners = run(scenario())
    got = received(recorders[a])
    for call, result in zip(calls, results, strict=True):
        reason = "node_lost" if owners[call] == "b" else "end"
        for stream in streams_of([call]):
            assert_bracketed_in_order(got, stream, reason)
            assert [c.reason for c in of_stream(got, stream)
                    if isinstance(c, StreamCloseMessage)] == [reason]  # closed once
        if owners[call] == "a":
            assert not isinstance(result, BaseException), result
    for stream, seq in at_loss.items():
        assert last_seq(recorders[a], stream) > seq, f"{stream} stopped with node B"
    assert assert_stored(cluster, recorders) == len(ROLES)  # B's two streams' closes, on A
