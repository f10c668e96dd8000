"""Two real monitor nodes behind Debian's nginx running the shipped deploy/nginx files.

Each node is ``emotion-monitor run --source none`` in a child process (bundled model, tokens,
``--tls-proxy``, the Twilio connector and an AudioSocket listener, one shared leg map); nginx
terminates TLS with a certificate the test makes. Calls go in through nginx as a platform
would send them; where each call landed is read from a ``/ws`` client on every node,
connected directly (without a shared event bus a node shows only its own calls). A new /ws
client also gets a replay of each node's recent streams: every check picks its calls by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, TIMEOUT_S
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from client.push import PushResult, push_file
from streamer.testing import speech_like
from tests.test_connector_audiosocket import HANGUP, audio_messages, uuid_message
from tests.test_connector_twilio import TOKEN as TWILIO_TOKEN
from tests.test_connector_twilio import TwilioSide, mulaw_payloads, sign
from tests.test_tls import make_certificate

from .monitor import Monitor, Recorder, base_env
from .nginx import NginxNode, NginxProxy

pytestmark = pytest.mark.slow

INGEST = "ingest-token-nginx-0123456789"
VIEW = "view-token-nginx-0123456789ab"
ADMIN = "admin-token-nginx-0123456789a"
ROLES = ("agent", "customer")


@dataclass(frozen=True)
class Node:
    """One running node: its process, server run id (``hello.session``) and ports."""

    monitor: Monitor
    session: str
    audiosocket_port: int

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.monitor.port}"


@dataclass(frozen=True)
class Cluster:
    """The nodes, nginx in front, the CA clients trust and the leg map the nodes read."""

    nodes: tuple[Node, ...]
    proxy: NginxProxy
    ca: Path
    leg_map: Path

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def other(self, session: str) -> Node:
        """The node that is not ``session``."""
        (node,) = [n for n in self.nodes if n.session != session]
        return node


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


def start_node(folder: Path, index: int, *, tokens: Path, twilio: Path, leg_map: Path
               ) -> Monitor:
    """``emotion-monitor run`` as a node behind the proxy (not waited for)."""
    home = folder / "home"
    home.mkdir(exist_ok=True)
    args = ["--source", "none", "--host", "127.0.0.1", "--port", "0",
            "--store", str(folder / f"node{index}.sqlite3"), "--token-file", str(tokens),
            "--tls-proxy", "--twilio-auth-token-file", str(twilio),
            "--audiosocket-port", "0", "--audiosocket-roles-file", str(leg_map)]
    return Monitor(args, env=base_env(home), cwd=REPO, log_path=folder / f"node{index}.log",
                   timeout_s=TIMEOUT_S * 4)


def ready(monitor: Monitor) -> Node:
    """Wait for a node's URL, run id and AudioSocket port on its output."""
    monitor.wait_ready()
    session = monitor.process.wait_for(r"^session:\s+(\S+)", timeout_s=TIMEOUT_S).group(1)
    port = monitor.process.wait_for(r"AudioSocket listening on 127\.0\.0\.1:(\d+)",
                                    timeout_s=TIMEOUT_S).group(1)
    return Node(monitor, session, int(port))


@contextmanager
def two_nodes_behind_nginx(folder: Path) -> Iterator[Cluster]:
    """Two nodes and nginx with the deploy files; every process stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = folder / "tokens"
    tokens.write_text(f"ingest:{INGEST}\nview:{VIEW}\nadmin:{ADMIN}\n")
    tokens.chmod(0o600)
    twilio = folder / "twilio-token"
    twilio.write_text(TWILIO_TOKEN + "\n")
    twilio.chmod(0o600)
    leg_map = folder / "audiosocket.map"
    leg_map.write_text("# UUID call role (appended by the tests, as the dialplan would)\n")
    ca, cert, key = make_certificate(folder)
    with ExitStack() as stack:
        starting = [start_node(folder, i, tokens=tokens, twilio=twilio, leg_map=leg_map)
                    for i in (1, 2)]
        for monitor in starting:
            stack.callback(monitor.stop)
        nodes = tuple(ready(monitor) for monitor in starting)
        proxy = stack.enter_context(NginxProxy(
            folder / "nginx",
            [NginxNode(n.http, f"127.0.0.1:{n.audiosocket_port}") for n in nodes],
            certificate=cert, key=key, timeout_s=TIMEOUT_S))
        yield Cluster(nodes, proxy, ca, leg_map)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two nodes behind nginx, shared by the tests that leave both nodes running."""
    with two_nodes_behind_nginx(tmp_path_factory.mktemp("nginx-cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def call_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2.5 s stereo call at 16 kHz: agent and customer speak at different pitches."""
    agent = speech_like(2.5, seed=1, pitch_hz=120.0)
    customer = speech_like(2.5, seed=2, pitch_hz=210.0)
    path = tmp_path_factory.mktemp("nginx-audio") / "call.wav"
    sf.write(path, np.stack([agent, customer], axis=1), 16000, subtype="PCM_16")
    return path


# -- watching every node ------------------------------------------------------------------------


@asynccontextmanager
async def watching(nodes: Sequence[Node]) -> AsyncIterator[dict[str, Recorder]]:
    """A /ws client on each node, directly (run id -> its messages), each past its hello."""
    recorders = {node.session: Recorder() for node in nodes}
    headers = {"Authorization": f"Bearer {VIEW}"}
    tasks = [asyncio.create_task(recorders[n.session].run(n.monitor.ws_url, headers=headers))
             for n in nodes]
    try:
        for recorder in recorders.values():
            await recorder.wait_for(lambda r: bool(r.of("hello")), timeout_s=TIMEOUT_S,
                                    what="hello")
        yield recorders
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(recorders: dict[str, Recorder], condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition()`` holds, woken by a message on any node."""
    async def loop() -> None:
        while True:
            for recorder in recorders.values():
                recorder.changed.clear()
            if condition():
                return
            waiters = [asyncio.ensure_future(r.changed.wait()) for r in recorders.values()]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    try:
        await asyncio.wait_for(loop(), TIMEOUT_S)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out after {TIMEOUT_S:.0f} s waiting for {what}") from None


def streams_of(calls: Sequence[str]) -> set[str]:
    return {f"{call}/{role}" for call in calls for role in ROLES}


def streams_seen(recorders: dict[str, Recorder], kind: str) -> dict[str, set[str]]:
    """Run id -> the streams it sent a ``kind`` message for."""
    return {session: {m["stream"] for m in r.of(kind)} for session, r in recorders.items()}


async def all_closed(recorders: dict[str, Recorder], calls: Sequence[str]) -> None:
    """Wait until every stream of ``calls`` has closed on some node."""
    def done() -> bool:
        closed = set().union(*streams_seen(recorders, "stream_close").values())
        return streams_of(calls) <= closed

    await until(recorders, done, f"every stream of {list(calls)} to close")


def placement(recorders: dict[str, Recorder], calls: Sequence[str]) -> dict[str, str]:
    """Call -> the run id of the one node that had all its streams, labelled; asserts that
    no other node opened any stream of it."""
    opened = streams_seen(recorders, "stream_open")
    labelled = streams_seen(recorders, "window")
    where: dict[str, str] = {}
    for call in calls:
        streams = streams_of([call])
        holders = [session for session, seen in opened.items() if streams & seen]
        assert len(holders) == 1, f"call {call} opened on nodes {holders}: {opened}"
        assert streams <= opened[holders[0]], f"call {call}: not all streams on one node"
        assert streams <= labelled[holders[0]], f"call {call}: a stream got no label"
        where[call] = holders[0]
    return where


# -- senders -----------------------------------------------------------------------------------


async def push_call(cluster: Cluster, wav: Path, call: str) -> PushResult:
    """One call pushed through nginx's /ingest, paced in real time, as a recorder would."""
    return await push_file(wav, cluster.proxy.ws_url("/ingest"), stream=call, roles=ROLES,
                           token=INGEST, ca_file=cluster.ca)


async def asterisk_call(cluster: Cluster, call: str) -> list[bytes]:
    """Both AudioSocket legs of one call through nginx's stream proxy, as Asterisk sends them:
    the dialplan writes the map lines, each leg sends its UUID, then both send a 20 ms audio
    message every 20 ms (so the two legs are live together, as in a call), then hang up.
    What the server sent back on each leg (nothing, for a clean end)."""
    legs = {role: str(uuid.uuid4()) for role in ("customer", "agent")}
    with cluster.leg_map.open("a") as lines:
        lines.writelines(f"{leg} {call} {role}\n" for role, leg in legs.items())
    pause = np.zeros(4000, np.float32)
    speech = {"customer": speech_like(3.0, rate_hz=8000, seed=3, pitch_hz=200.0),
              "agent": speech_like(3.0, rate_hz=8000, seed=4, pitch_hz=110.0)}
    opened = []
    for role, leg in legs.items():
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.proxy.stream_port)
        writer.write(uuid_message(leg))
        audio = np.concatenate([speech[role], pause])
        messages = [audio_messages(audio[i:i + 160]) for i in range(0, audio.size, 160)]
        opened.append((reader, writer, messages))
    loop = asyncio.get_running_loop()
    began = loop.time()
    for i in range(len(opened[0][2])):
        for _, writer, messages in opened:
            writer.write(messages[i])
        await asyncio.sleep(max(0.0, began + 0.02 * (i + 1) - loop.time()))
    answers = []
    for reader, writer, _ in opened:
        writer.write(HANGUP)
        answers.append(await asyncio.wait_for(reader.read(), TIMEOUT_S))
        writer.close()
        await writer.wait_closed()
    return answers


# -- the tests ---------------------------------------------------------------------------------


def test_concurrent_calls_spread_over_both_nodes_and_each_stays_on_one(
    cluster: Cluster, call_wav: Path
) -> None:
    """Six concurrent /ingest calls through nginx: both nodes used, each call whole on one."""
    calls = [f"nginx-ingest-{i}" for i in range(6)]

    async def scenario() -> tuple[list[PushResult], dict[str, str]]:
        async with watching(cluster.nodes) as recorders:
            results = await asyncio.gather(*(push_call(cluster, call_wav, c) for c in calls))
            await all_closed(recorders, calls)
            return list(results), placement(recorders, calls)

    results, where = run(scenario())
    assert [r.streams for r in results] == [(f"{c}/agent", f"{c}/customer") for c in calls]
    assert set(where.values()) == {node.session for node in cluster.nodes}, where


def test_twilio_signature_is_checked_over_the_public_url(cluster: Cluster) -> None:
    """Host passes through: Twilio's signature of the proxy's URL opens the call; a signature
    of the node's own URL is refused with 403 (the node checks the URL Twilio connected to)."""
    public = cluster.proxy.ws_url("/twilio")
    inbound = mulaw_payloads(speech_like(2.5, rate_hz=8000, seed=5, pitch_hz=200.0))
    outbound = mulaw_payloads(speech_like(2.5, rate_hz=8000, seed=6, pitch_hz=110.0))
    call = "CA" + "e" * 32

    async def scenario() -> tuple[int, dict[str, str]]:
        async with watching(cluster.nodes) as recorders:
            node_url = f"wss://{cluster.nodes[0].http}/twilio"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(public, ssl=cluster.tls(),
                                   additional_headers={"X-Twilio-Signature": sign(node_url)}):
                    pass
            async with connect(public, ssl=cluster.tls(),
                               additional_headers={"X-Twilio-Signature": sign(public)}) as ws:
                side = TwilioSide(ws, call=call)
                await side.connected()
                await side.start()
                await side.both(inbound, outbound)
                await side.stop()
                await asyncio.wait_for(ws.wait_closed(), TIMEOUT_S)
            await all_closed(recorders, [call])
            return refused.value.response.status_code, placement(recorders, [call])

    status, where = run(scenario())
    assert status == 403
    assert list(where) == [call]


def test_two_audiosocket_legs_of_a_call_meet_on_one_node(cluster: Cluster) -> None:
    """Customer and agent legs through the stream proxy: one node has both, both labelled."""
    call = "1712345678.77"

    async def scenario() -> tuple[list[bytes], dict[str, str], int]:
        async with watching(cluster.nodes) as recorders:
            answers = await asterisk_call(cluster, call)
            await all_closed(recorders, [call])
            opens = sum(m["stream"] in streams_of([call])
                        for r in recorders.values() for m in r.of("stream_open"))
            return answers, placement(recorders, [call]), opens

    answers, where, opens = run(scenario())
    assert answers == [b"", b""]  # no refusal (a refusal is a hangup message)
    assert list(where) == [call]
    assert opens == 2  # the second leg joined the first leg's call: each stream opened once


def test_audiosocket_from_an_address_not_allowed_never_reaches_a_node(cluster: Cluster) -> None:
    """A leg from 127.0.0.2 (not in the proxy's allow-list) is closed by nginx itself."""
    async def scenario() -> bytes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", cluster.proxy.stream_port, local_addr=("127.0.0.2", 0))
        writer.write(uuid_message(str(uuid.uuid4())))
        try:
            return await asyncio.wait_for(reader.read(), TIMEOUT_S)
        except ConnectionResetError:
            return b""  # nginx closed with the UUID unread, so the kernel sent a reset
        finally:
            writer.close()
            with contextlib.suppress(ConnectionResetError):
                await writer.wait_closed()

    assert run(scenario()) == b""
    cluster.proxy.wait_for_log(r"access forbidden by rule.*client: 127\.0\.0\.2,")


def test_a_dashboard_login_stays_on_the_node_that_holds_its_session(cluster: Cluster) -> None:
    """Login, page and /ws through nginx reach one node; the cookie means nothing elsewhere."""
    proxy = http.client.HTTPSConnection("127.0.0.1", cluster.proxy.port, context=cluster.tls(),
                                        timeout=TIMEOUT_S)
    try:
        proxy.request("POST", "/login", body=f"token={VIEW}",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        login = proxy.getresponse()
        login.read()
        set_cookie = login.getheader("Set-Cookie") or ""
        cookie = set_cookie.split(";")[0]
        proxy.request("GET", "/", headers={"Cookie": cookie})
        page = proxy.getresponse()
        page.read()
    finally:
        proxy.close()

    async def scenario() -> tuple[str, int]:
        async with connect(cluster.proxy.ws_url("/ws"), ssl=cluster.tls(),
                           additional_headers={"Cookie": cookie}) as ws:
            session = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))["session"]
        other = cluster.other(session)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(other.monitor.ws_url, additional_headers={"Cookie": cookie}):
                pass
        return session, refused.value.response.status_code

    session, status = run(scenario())
    assert login.status == 303 and "; Secure" in set_cookie  # --tls-proxy: a Secure cookie
    assert page.status == 200 and page.getheader("Content-Type", "").startswith("text/html")
    assert session in {node.session for node in cluster.nodes}
    assert status == 401


def test_health_goes_through_and_metrics_are_scraped_per_node(cluster: Cluster) -> None:
    """/healthz answers through nginx; /metrics only on each node directly (admin token)."""
    def get(connection: http.client.HTTPConnection, path: str,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def via_proxy() -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", cluster.proxy.port,
                                           context=cluster.tls(), timeout=TIMEOUT_S)

    health = get(via_proxy(), "/healthz")
    metrics = get(via_proxy(), "/metrics")
    node = cluster.nodes[0]
    direct = get(http.client.HTTPConnection("127.0.0.1", node.monitor.port, timeout=TIMEOUT_S),
                 "/metrics", {"Authorization": f"Bearer {ADMIN}"})
    assert health[0] == 200 and json.loads(health[1])["ok"] is True
    assert metrics[0] == 404 and b"each monitor node directly" in metrics[1]
    assert direct[0] == 200 and b"# TYPE" in direct[1]


def test_after_a_node_is_killed_new_calls_all_reach_the_survivor(
    tmp_path: Path, call_wav: Path
) -> None:
    """SIGKILL the node Asterisk's legs go to: new /ingest calls, AudioSocket calls and /ws
    through nginx all reach the other node and succeed."""
    calls = [f"nginx-failover-{i}" for i in range(4)]
    with two_nodes_behind_nginx(tmp_path / "cluster") as cluster:

        async def first_call() -> str:
            async with watching(cluster.nodes) as recorders:
                await asterisk_call(cluster, "failover.1")
                await all_closed(recorders, ["failover.1"])
                return placement(recorders, ["failover.1"])["failover.1"]

        victim = run(first_call())
        survivor = cluster.other(victim)
        [node for node in cluster.nodes if node.session == victim][0].monitor.kill()

        async def after() -> tuple[list[PushResult], list[bytes], dict[str, str], str]:
            async with watching([survivor]) as recorders:
                results = await asyncio.gather(*(push_call(cluster, call_wav, c) for c in calls))
                answers = await asterisk_call(cluster, "failover.2")
                await all_closed(recorders, [*calls, "failover.2"])
                where = placement(recorders, [*calls, "failover.2"])
            async with connect(cluster.proxy.ws_url("/ws"), ssl=cluster.tls(),
                               additional_headers={"Authorization": f"Bearer {VIEW}"}) as ws:
                session = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))["session"]
            return list(results), answers, where, session

        results, answers, where, session = run(after())
        # nginx met the dead node, took it out of the rotation and moved the call on
        cluster.proxy.wait_for_log(r"upstream server temporarily disabled while connecting")
    assert [r.streams for r in results] == [(f"{c}/agent", f"{c}/customer") for c in calls]
    assert answers == [b"", b""]
    assert set(where.values()) == {survivor.session} and session == survivor.session
