"""The shared inference tier on Ray Serve: the pure cores here, then a real local Ray cluster
(``num_cpus=2``) with the tier deployed (bundled model, ONNX) and real monitors using it.

The cluster tests are marked slow (a cluster and its replicas take some 15 s to start on two
cores) and need the ``ray`` extra, which the ``test`` extra includes; without it they skip,
saying so.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from client.push import push_file
from server.cli import main
from server.config import ServerConfig
from server.monitor import Monitor
from streamer.engine import Engine, EngineConfig
from streamer.errors import AudioError, ModelError
from streamer.events import StreamClosed
from streamer.models.loading import load_model
from streamer.models.protocol import SingleWorkerCpuModel
from streamer.models.ray_model import (
    RayInferenceConfig,
    RemoteInferenceError,
    call_with_retries,
    connect_ray_model,
    ray_address,
)
from streamer.models.ray_tier import (
    MAX_TIER_WINDOW_SAMPLES,
    RayTierConfig,
    check_tier_request,
    deploy_tier,
    predict_merged,
)
from streamer.protocol.messages import (
    Hello,
    IngestAck,
    IngestEnd,
    IngestStart,
    Message,
    StreamCloseMessage,
    WindowMessage,
    decode,
    encode,
)
from streamer.testing import speech_like
from tests.conftest import TIMEOUT_S

RATE = 16000


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT_S * 4))  # type: ignore[arg-type]


# -- pure cores --------------------------------------------------------------------------------


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _failing(errors: list[BaseException], result: str = "ok", clock: _Clock | None = None,
             step_s: float = 0.0) -> Any:
    """A call that raises ``errors`` in turn, then returns ``result``; records its budgets."""
    budgets: list[float] = []

    def call(remaining: float) -> str:
        budgets.append(remaining)
        if clock is not None:
            clock.now += step_s
        if errors:
            raise errors.pop(0)
        return result

    call.budgets = budgets  # type: ignore[attr-defined]
    return call


def test_a_failed_request_is_sent_once_more_within_the_same_deadline() -> None:
    """One failure then an answer: the answer, one retry, and the retry gets the time left."""
    clock = _Clock()
    call = _failing([ConnectionError("replica died")], clock=clock, step_s=0.5)
    result, retries = call_with_retries(call, timeout_s=2.0, retries=1,
                                        retryable=lambda exc: True, clock=clock)
    assert (result, retries) == ("ok", 1)
    assert call.budgets == [2.0, 1.5]


def test_two_failures_drop_the_request_with_the_last_error() -> None:
    """Failing again after the retry is a RemoteInferenceError naming the last failure."""
    call = _failing([ConnectionError("first"), ConnectionError("second")])
    with pytest.raises(RemoteInferenceError) as caught:
        call_with_retries(call, timeout_s=2.0, retries=1, retryable=lambda exc: True)
    assert isinstance(caught.value, ModelError)
    assert (caught.value.timed_out, caught.value.retries) == (False, 1)
    assert "(after 1 retry): second" in str(caught.value)
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_a_timeout_is_not_retried() -> None:
    """No answer by the deadline ends the call at once: its windows would be stale."""
    call = _failing([TimeoutError("late")])
    with pytest.raises(RemoteInferenceError) as caught:
        call_with_retries(call, timeout_s=2.0, retries=1, retryable=lambda exc: True)
    assert (caught.value.timed_out, caught.value.retries, len(call.budgets)) == (True, 0, 1)


def test_bad_input_and_a_spent_deadline_are_not_retried() -> None:
    """An error ``retryable`` rejects fails at once; a failure that used up the time too."""
    call = _failing([AudioError("bad windows"), ValueError("never reached")])
    with pytest.raises(RemoteInferenceError, match="bad windows"):
        call_with_retries(call, timeout_s=2.0, retries=1,
                          retryable=lambda exc: not isinstance(exc, AudioError))
    assert len(call.budgets) == 1
    clock = _Clock()
    slow = _failing([ConnectionError("slow death")], clock=clock, step_s=3.0)
    with pytest.raises(RemoteInferenceError, match="slow death"):
        call_with_retries(slow, timeout_s=2.0, retries=1, retryable=lambda exc: True,
                          clock=clock)
    assert len(slow.budgets) == 1


def test_requests_of_several_callers_run_as_one_call_per_window_length() -> None:
    """Same-length requests share one model call; each gets its own rows back, in order."""
    calls: list[tuple[int, ...]] = []

    def predict(windows: np.ndarray) -> np.ndarray:
        calls.append(windows.shape)
        first = windows[:, :1].astype(np.float32)
        return np.concatenate([first, 1 - first], axis=1)

    rng = np.random.default_rng(0)
    requests = [rng.random((n, length), dtype=np.float32) for n, length in
                ((2, 100), (1, 50), (3, 100))]
    results = predict_merged(predict, requests, 2)
    assert sorted(calls) == [(1, 50), (5, 100)]
    for request, result in zip(requests, results, strict=True):
        assert result.shape == (request.shape[0], 2)
        np.testing.assert_array_equal(result[:, 0], request[:, 0])
    with pytest.raises(ModelError, match="shape"):
        predict_merged(lambda w: np.zeros((1, 2), np.float32), requests[:1], 2)


def test_the_tier_checks_each_request_before_it_joins_a_batch() -> None:
    """Wrong type, shape, dtype, size or non-finite samples: an AudioError naming it."""
    good = np.zeros((2, 100), np.float32)
    assert check_tier_request(good, max_windows=2) is good
    bad = [
        ([0.0], "numpy array"),
        (np.zeros(100, np.float32), "2-D float32"),
        (np.zeros((1, 100), np.float64), "2-D float32"),
        (np.zeros((3, 100), np.float32), "1..2 windows"),
        (np.zeros((1, MAX_TIER_WINDOW_SAMPLES + 1), np.float32), "samples"),
        (np.full((1, 100), np.nan, np.float32), "NaN"),
    ]
    for windows, words in bad:
        with pytest.raises(AudioError, match=words):
            check_tier_request(windows, max_windows=2)


def test_inference_addresses() -> None:
    """--inference: local, ray:auto, ray:HOST:PORT, ray://HOST:PORT; anything else refused."""
    assert ray_address("local") is None
    assert ray_address("ray:auto") == "auto"
    assert ray_address("ray:10.0.0.5:6379") == "10.0.0.5:6379"
    assert ray_address("ray://head:10001") == "ray://head:10001"
    for text in ("ray:", "ray://", "grpc://x", ""):
        with pytest.raises(ValueError, match="--inference"):
            ray_address(text)
    with pytest.raises(ValueError, match="replicas"):
        RayTierConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="in_flight"):
        RayInferenceConfig(address="auto", in_flight=0)


def test_run_refuses_local_model_flags_with_the_tier(capsys: pytest.CaptureFixture[str]) -> None:
    """With --inference ray:... the tier owns the model: --model is a one-line error, exit 2."""
    assert main(["run", "--source", "none", "--no-store", "--inference", "ray:auto",
                 "--model", "somewhere"]) == 2
    assert "serve-ray --model" in capsys.readouterr().err
    assert main(["run", "--source", "none", "--no-store", "--inference", "tcp://x"]) == 2
    assert "--inference must be" in capsys.readouterr().err


class _DownTier(SingleWorkerCpuModel):
    """A model whose every call fails the way an unreachable tier does."""

    name = "down"
    labels = ("Angry", "Happy", "Neutral", "Sad")

    def predict_proba(self, windows: np.ndarray) -> np.ndarray:
        raise RemoteInferenceError("inference tier request failed: gone", timed_out=False,
                                   retries=1)


def test_failed_model_calls_are_dropped_counted_and_the_stream_closes() -> None:
    """The engine drops a failed call's windows, counts them as failed, and the stream goes on."""
    events: list[Any] = []
    with Engine(_DownTier(), EngineConfig(realtime=False), events.append) as engine:
        with engine.open_stream("s", sample_rate_hz=RATE) as feed:
            feed.feed(speech_like(3.0))
        assert engine.drain(TIMEOUT_S)
        stats = engine.stats()
    closed = [e for e in events if isinstance(e, StreamClosed)]
    assert [c.reason for c in closed] == ["end"]
    assert stats.windows_done == 0
    assert stats.windows_failed == stats.windows_dropped == closed[0].windows_dropped > 0


# -- a real local Ray cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster (2 CPUs, no dashboard, token auth from the environment, its files in
    a short temp folder) with the tier deployed: 2 replicas of the bundled model."""
    # Ray reads its auth mode when first imported: a token in the environment, none on disk
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # sockets need a short path
    ray: Any = None
    try:
        with warnings.catch_warnings():  # Ray's own modules warn about pydantic on import
            warnings.simplefilter("ignore", DeprecationWarning)
            ray = pytest.importorskip("ray", reason="the Ray tests need emotion-monitor[ray]")
            from ray import serve
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=folder)
        deploy_tier(RayTierConfig(min_replicas=2, max_replicas=2, cpus_per_replica=0.5,
                                  batch_wait_s=0.002))
        yield ray
    finally:
        if ray is not None and ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def tier_model(ray_cluster: Any) -> Iterator[Any]:
    """The engine's model on the tier (connected through the test's own Ray link)."""
    model = connect_ray_model(RayInferenceConfig(address="auto", timeout_s=TIMEOUT_S,
                                                 in_flight=4))
    yield model
    model.close()


async def _windows_of_pushed_calls(model: Any, files: dict[str, Path]) -> list[Message]:
    """Push each file as a call (unpaced) into a no-realtime monitor; its /ws messages."""
    config = ServerConfig(port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S)
    async with Monitor(model, engine_config=EngineConfig(realtime=False),
                       server_config=config) as running, connect(running.ws_url) as ws:
        assert isinstance(decode(await ws.recv()), Hello)
        await asyncio.gather(*(push_file(path, running.ingest_url, stream=name, fast=True)
                               for name, path in files.items()))
        return await _until_closed(ws, {f"{name}/ch0" for name in files})


async def _until_closed(ws: Any, streams: set[str]) -> list[Message]:
    got: list[Message] = []
    while streams:
        message = decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        got.append(message)
        if isinstance(message, StreamCloseMessage):
            streams.discard(message.stream)
    return got


def _probabilities(messages: list[Message]) -> dict[tuple[str, int], list[float]]:
    return {(m.stream, m.seq): list(m.probabilities.values())
            for m in messages if isinstance(m, WindowMessage)}


@pytest.mark.slow
def test_pushed_calls_through_the_tier_label_like_the_in_process_engine(
    tmp_path: Path, tier_model: Any
) -> None:
    """Two calls at once through the Ray tier: every window, same probabilities (ONNX, 1e-5)."""
    files = {}
    for i, name in enumerate(("agent", "customer")):
        files[name] = tmp_path / f"{name}.wav"
        sf.write(files[name], speech_like(5.0, seed=i, pitch_hz=120 + 60 * i), RATE)
    remote = run(_windows_of_pushed_calls(tier_model, files))
    local = run(_windows_of_pushed_calls(load_model(None, device="cpu"), files))
    got, want = _probabilities(remote), _probabilities(local)
    assert sorted(got) == sorted(want) and len(want) > 10
    for key, probs in want.items():
        np.testing.assert_allclose(got[key], probs, atol=1e-5)
    closes = [m for m in remote if isinstance(m, StreamCloseMessage)]
    assert [(c.reason, c.windows_dropped) for c in closes] == [("end", 0), ("end", 0)]
    assert tier_model.counters.failures == 0


def _replica_actors(ray: Any) -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::emotion-monitor#"))


@pytest.mark.slow
def test_killing_a_replica_mid_call_loses_no_stream(ray_cluster: Any, tier_model: Any) -> None:
    """A replica killed while a live call streams: its windows are retried or dropped and
    counted, later windows are labelled, and the call closes normally."""
    ray = ray_cluster
    audio = speech_like(8.0, seed=3)
    half = audio.size // 2
    config = ServerConfig(port=0, store_path=None, shutdown_timeout_s=TIMEOUT_S)
    before = tier_model.counters

    async def scenario() -> tuple[list[Message], Any]:
        async with Monitor(tier_model, engine_config=EngineConfig(),
                           server_config=config) as running, connect(running.ws_url) as ws:
            assert isinstance(decode(await ws.recv()), Hello)
            sender = await connect(running.ingest_url)
            await sender.send(encode(IngestStart("live", RATE, 1, "s16le")))
            assert isinstance(decode(await sender.recv()), IngestAck)
            await _send(sender, audio[:half])
            got: list[Message] = []
            while not any(isinstance(m, WindowMessage) for m in got):
                got.append(decode(await asyncio.wait_for(ws.recv(), TIMEOUT_S)))
            victim = ray.get_actor(_replica_actors(ray)[0], namespace="serve")
            ray.kill(victim, no_restart=True)
            await _send(sender, audio[half:])
            await sender.send(encode(IngestEnd()))
            got += await _until_closed(ws, {"live/ch0"})
            await sender.close()
            return got, running.engine.stats()

    got, stats = run(scenario())
    close = [m for m in got if isinstance(m, StreamCloseMessage)]
    assert [c.reason for c in close] == ["end"]
    windows = [m for m in got if isinstance(m, WindowMessage)]
    assert len(windows) == close[0].windows > 0
    assert max(w.end_s for w in windows) > half / RATE  # labelled after the kill
    assert close[0].windows + close[0].windows_dropped == _windows_in(audio)
    assert stats.windows_failed <= stats.windows_dropped == close[0].windows_dropped
    after = tier_model.counters
    assert after.failures - before.failures <= stats.windows_failed


async def _send(ws: Any, audio: np.ndarray) -> None:
    from streamer.audio import float32_to_int16

    for i in range(0, audio.size, 1600):
        await ws.send(float32_to_int16(audio[i:i + 1600]).tobytes())


def _windows_in(audio: np.ndarray) -> int:
    """How many windows the engine makes of ``audio`` sent as s16le (in-process, no drops)."""
    from streamer.audio import float32_to_int16, s16le_to_float32

    received = s16le_to_float32(float32_to_int16(audio).tobytes())
    events: list[Any] = []
    with Engine(load_model(None, device="cpu"), EngineConfig(realtime=False),
                events.append) as engine:
        with engine.open_stream("count", sample_rate_hz=RATE) as feed:
            feed.feed(received)
        assert engine.drain(TIMEOUT_S)
    closed = [e for e in events if isinstance(e, StreamClosed)]
    return closed[0].windows + closed[0].windows_dropped


@pytest.mark.slow
def test_serve_ray_deploys_a_tier_engines_can_use_and_deletes_it(
    ray_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """serve-ray deploys a named tier (printing how to reach it); --delete removes it."""
    assert main(["serve-ray", "--app", "cli-tier", "--replicas", "1",
                 "--cpus-per-replica", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "tier cli-tier: 1 replica(s) of model bundled on cpu" in out
    assert "--inference ray:auto --ray-app cli-tier" in out
    model = connect_ray_model(RayInferenceConfig(address="auto", app_name="cli-tier"))
    assert model.labels == ("Angry", "Happy", "Neutral", "Sad")
    assert model.predict_proba(speech_like(2.0)[np.newaxis, :]).shape == (1, 4)
    model.close()
    assert main(["serve-ray", "--delete", "--app", "cli-tier"]) == 0
    with pytest.raises(ModelError, match="no inference tier 'cli-tier'"):
        connect_ray_model(RayInferenceConfig(address="auto", app_name="cli-tier",
                                             connect_timeout_s=5.0))
