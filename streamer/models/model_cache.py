"""Optimised on first use: the cache of ONNX copies of plain checkpoints (main thread, at
start-up, before the engine exists).

With ``--backend auto`` on CPU, :func:`streamer.models.loading.load_model` asks
:func:`first_use_folder` for an optimised copy of a plain Hugging Face checkpoint (a folder
without ``optimize.json``, or a hub id already downloaded: its local snapshot folder). The
first time, that is ``emotion-monitor optimize`` (export, int8 quantisation, agreement and speed
checks) run as a separate process, so that torch's export memory stays out of the monitor and
a crash there is only a failed build; later runs find the finished folder and load it.

Layout of the cache folder (:func:`default_cache_dir`, or ``--cache-dir``)::

    optimized/<key>/          a finished entry: an optimize folder plus complete.json
                              (or failed.json alone: why it could not be optimised)
    optimized/<key>.lock      flock(2) lock of that entry
    optimized/.build-<key>-*  an entry being built (moved into place when finished)
    digests.json              checkpoint file digests by path, size and mtime

``<key>`` hashes the checkpoint's content (config, preprocessor and weight files) with the
versions that change the export (torch, transformers, onnx, onnxruntime, onnxscript and
:data:`EXPORT_FORMAT`), so another copy of the same checkpoint finds the same entry and an
upgrade builds a new one.

Concurrency and crashes: readers take the entry's lock shared, the builder exclusive, so a
second process started at once waits and then finds the finished entry. An entry is built in
a temporary folder next to its final place and renamed into place only once its
``complete.json`` (the size and SHA-256 of every graph) is written, so a crash half way leaves
only a ``.build-*`` folder, removed by the next build. Every load checks the graphs against
``complete.json``; a truncated or corrupt one is rebuilt.

Bad input: a cache folder that cannot be written runs the checkpoint uncached with torch (one
warning); a checkpoint that fails to export, or whose ONNX graphs all miss the agreement bounds,
runs with torch (one warning saying why), and the failure is remembered in the entry (same key)
so later runs do not retry it until the checkpoint or the versions change. Without the export
tools installed (:data:`EXPORT_PACKAGES`) it runs with torch, saying what is missing.

Never imports :mod:`streamer.offline` (the runtime's layering rule): the build is a subprocess.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from streamer.errors import ModelError
from streamer.models.settings import MANIFEST_NAME, ONNX_PRECISIONS, read_manifest, within_bounds

__all__ = [
    "CACHE_APP_NAME",
    "EXPORT_FORMAT",
    "EXPORT_PACKAGES",
    "checkpoint_key",
    "default_cache_dir",
    "first_use_folder",
]

logger = logging.getLogger(__name__)

#: the folder under $XDG_CACHE_HOME (or ~/.cache)
CACHE_APP_NAME = "emotion-monitor"
#: our side of the export: raise it when optimize's graphs or manifest change meaning
EXPORT_FORMAT = 2  # 2: 7-bit int8 weights (reduce_range)
#: distributions whose versions change what the export writes (part of the key)
EXPORT_PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript")

_ENTRIES = "optimized"
_COMPLETE = "complete.json"
_FAILED = "failed.json"
_DIGESTS = "digests.json"
_DIGESTS_KEPT = 256
#: the checkpoint files that make its content: config, preprocessor, weights (and their index)
_KEY_NAMES = ("config.json", "preprocessor_config.json")
_KEY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack",
                 ".index.json")
_CHUNK = 1 << 20
#: optimize's log line announcing its checks; the bar's steps are the export plus one per setting
_CHECKING = re.compile(r"checking (\d+) settings")
_CHECKED = re.compile(r"\b((?:torch|onnx)/(?:fp32|bf16|int8)): ")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_REASON_CHARS = 400
#: the folder holding streamer/ and server/ (the child runs this copy's ``server.cli``)
_PACKAGES_ROOT = Path(__file__).resolve().parents[2]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/emotion-monitor``, or ``~/.cache/emotion-monitor`` (XDG base
    directories: an unset, empty or relative XDG_CACHE_HOME is ignored)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / CACHE_APP_NAME


def first_use_folder(
    source: str,
    folder: Path | None,
    *,
    cache_dir: Path,
    backend: str,
    precision: str,
    device: str,
) -> Path | None:
    """The optimised copy of a plain checkpoint in ``cache_dir``, built on first use; None
    when the checkpoint is to run with torch as it is (module docstring: not asked for, not
    on CPU, export tools missing, not downloaded, cache not writable, or optimising failed, each
    logged).

    ``source`` is what the user named (a folder or a hub id), ``folder`` its local folder (None
    for a hub id: its snapshot in the local Hugging Face cache is used).
    """
    if backend != "auto" or device != "cpu" or precision not in ("auto",) + ONNX_PRECISIONS:
        return None
    missing = [name for name, version in _versions().items() if version == "absent"]
    if missing:
        logger.warning("running %s with torch: optimising it on first use needs %s, not "
                       "installed", source, ", ".join(missing))
        return None
    if folder is None:
        folder = _hub_snapshot(source)
        if folder is None:
            logger.info("%s is not downloaded yet: this run uses torch; it is optimised on "
                        "first use once it is in the local Hugging Face cache", source)
            return None
    root = Path(cache_dir).expanduser() / _ENTRIES
    started = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _uncached(source, cache_dir, exc)
        return None
    key = checkpoint_key(folder, digests=Path(cache_dir).expanduser() / _DIGESTS)
    entry = root / key
    try:  # the lock file is the first thing written: it fails on a read-only cache folder
        with _locked(root / f"{key}.lock", source) as lock:
            state = _entry_state(entry)
            if state == "ok":
                return _hit(entry, folder, source, started)
            if state == "failed":
                _remembered_failure(entry, source)
                return None
            _exclusive(lock, source)
            state = _entry_state(entry)  # another process may have finished it meanwhile
            if state == "ok":
                return _hit(entry, folder, source, started)
            if state == "failed":
                _remembered_failure(entry, source)
                return None
            if state != "missing":
                logger.warning("the cached optimised copy of %s is damaged (%s): rebuilding it",
                               source, state)
            return _build(folder, source, root, key)
    except OSError as exc:  # the cache folder went read-only, or the disk is full
        _uncached(source, cache_dir, exc)
        return None


def checkpoint_key(folder: Path, *, digests: Path | None = None) -> str:
    """The cache key of a checkpoint folder: SHA-256 of its config, preprocessor and weight
    files (by name and content) and of :data:`EXPORT_PACKAGES`' versions and
    :data:`EXPORT_FORMAT`. ``digests`` is a file remembering file digests by path, size and
    modification time, so an unchanged multi-GB checkpoint is not hashed again."""
    memo = _read_digests(digests)
    files: dict[str, str] = {}
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or not (path.name in _KEY_NAMES
                                      or path.name.endswith(_KEY_SUFFIXES)):
            continue
        real = path.resolve()
        stat = real.stat()
        known = memo.get(str(real))
        if known is not None and known[:2] == [stat.st_size, stat.st_mtime_ns]:
            files[path.name] = str(known[2])
            continue
        files[path.name] = _sha256(real)
        memo[str(real)] = [stat.st_size, stat.st_mtime_ns, files[path.name]]
    if digests is not None:
        _write_digests(digests, memo)
    described = {"format": EXPORT_FORMAT, "files": files, "versions": _versions()}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


# -- states of an entry ----------------------------------------------------------------------


def _entry_state(entry: Path) -> str:
    """'ok', 'failed', 'missing', or what is wrong with it."""
    if not entry.is_dir():
        return "missing"
    if (entry / _FAILED).is_file():
        return "failed"
    try:
        complete = json.loads((entry / _COMPLETE).read_text())
        graphs: dict[str, dict[str, Any]] = complete["graphs"]
        manifest = read_manifest(entry)
    except (OSError, ValueError, KeyError, TypeError, ModelError) as exc:
        return f"incomplete ({type(exc).__name__}: {exc})"
    if manifest is None or not graphs:
        return "incomplete (no manifest or no graphs)"
    for name, expected in sorted(graphs.items()):
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} is truncated ({size} of {expected['bytes']} bytes)"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return "ok"


def _hit(entry: Path, folder: Path, source: str, started: float) -> Path:
    _point_at(entry, folder)
    logger.info("using the optimised copy of %s cached in %s (found and checked in %.1f s)",
                source, entry, time.monotonic() - started)
    return entry


def _point_at(entry: Path, folder: Path) -> None:
    """Make the manifest's ``source`` (the torch checkpoint, for torch settings) this copy of
    the checkpoint when the one it was built from is gone (same content, another place)."""
    manifest = read_manifest(entry) or {}
    recorded = Path(str(manifest.get("source", "")))
    if (recorded / "config.json").is_file():
        return
    manifest["source"] = str(folder.resolve())
    _write_json(entry / MANIFEST_NAME, manifest)


def _remembered_failure(entry: Path, source: str) -> None:
    try:
        reason = json.loads((entry / _FAILED).read_text()).get("reason", "unknown")
    except (OSError, ValueError, AttributeError):
        reason = "unknown"
    logger.warning("running %s with torch: it could not be optimised before (%s); delete %s "
                   "to try again", source, reason, entry)


def _uncached(source: str, cache_dir: Path, exc: OSError) -> None:
    logger.warning("cache folder %s is not writable (%s): running %s uncached with torch "
                   "(use --cache-dir DIR to optimise it once)", cache_dir,
                   exc.strerror or exc, source)


# -- building an entry -----------------------------------------------------------------------


def _build(folder: Path, source: str, root: Path, key: str) -> Path | None:
    """Optimise ``folder`` into a temporary folder next to the entry and move it into place;
    on failure remember why (an entry holding only failed.json) and return None."""
    for stale in root.glob(f".build-{key}-*"):  # left by a build that crashed
        shutil.rmtree(stale, ignore_errors=True)
    entry = root / key
    if entry.exists():
        _discard(entry)
    build = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
    try:
        logger.info("optimising %s on first use (ONNX export, int8 quantisation, agreement "
                    "checks; once per checkpoint, about a minute or more) into %s",
                    source, entry)
        started = time.monotonic()
        reason = _optimize(folder, build / "graphs")
        if reason is None:
            reason = _out_of_bounds(build / "graphs")
        seconds = time.monotonic() - started
        if reason is None:
            graphs = build / "graphs"
            _write_json(graphs / _COMPLETE, {
                "format": EXPORT_FORMAT, "key": key, "source": str(folder.resolve()),
                "versions": _versions(), "built_s": round(seconds, 1),
                "graphs": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                           for p in sorted(graphs.glob("*.onnx"))},
            })
            os.replace(graphs, entry)
            logger.info("optimised %s in %.0f s; cached in %s", source, seconds, entry)
            return entry
        failed = build / "failed"
        failed.mkdir()
        _write_json(failed / _FAILED, {
            "format": EXPORT_FORMAT, "key": key, "source": str(folder.resolve()),
            "versions": _versions(), "reason": reason,
        })
        os.replace(failed, entry)
        logger.warning("running %s with torch: it could not be optimised (%s; after %.0f s); "
                       "remembered in %s", source, reason, seconds, entry)
        return None
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _optimize(folder: Path, out: Path) -> str | None:
    """Run ``emotion-monitor optimize`` on ``folder`` into ``out`` in a child process, showing
    its progress; None when it succeeded, else why it failed (its error line)."""
    command = [sys.executable, "-m", "server.cli", "--log-level", "INFO", "optimize",
               "--model", str(folder), "--out", str(out)]
    # the child imports the same code as this process: our packages' folder comes first
    path = os.pathsep.join([str(_PACKAGES_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")]
                                                    if p])
    env = dict(os.environ, PYTHONPATH=path, HF_HUB_DISABLE_PROGRESS_BARS="1",
               PYTHONUNBUFFERED="1")
    tail: list[str] = []
    with _Progress() as progress, subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, text=True, errors="replace",
    ) as child:
        try:
            assert child.stderr is not None
            for raw in child.stderr:
                for line in _ANSI.sub("", raw).replace("\r", "\n").splitlines():
                    if line.strip():
                        logger.debug("optimize: %s", line)
                        tail = (tail + [line])[-40:]
                        progress.saw(line)
            code = child.wait()
        except BaseException:  # Ctrl-C or any error here: the child must not outlive us
            child.kill()
            child.wait()
            raise
    if code == 0:
        return None
    return _failure_line(tail, code)


def _failure_line(tail: list[str], code: int) -> str:
    """The child's own error line (``emotion-monitor optimize: error: ...``), else its last
    line and exit status."""
    for line in reversed(tail):
        if "error:" in line:
            text = line.split("error:", 1)[1].strip()
            return text[:_REASON_CHARS]
    last = tail[-1].strip() if tail else "no output"
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    return f"{how}: {last}"[:_REASON_CHARS]


def _out_of_bounds(out: Path) -> str | None:
    """None when some ONNX setting met the agreement bounds, else the measured figures."""
    manifest = read_manifest(out) or {}
    checks: dict[str, Any] = manifest.get("checks", {})
    onnx = {k: c for k, c in checks.items() if k.startswith("onnx/")}
    if any("top1_agreement" in c and within_bounds(c) for c in onnx.values()):
        return None
    found = "; ".join(
        f"{k}: {c['unavailable']}" if "unavailable" in c else
        f"{k}: top-1 agreement {c['top1_agreement']:.3f}, rel logit diff "
        f"{c['rel_logit_diff']:.4f}" for k, c in sorted(onnx.items())
    ) or "no ONNX setting was checked"
    return f"no ONNX setting within the agreement bounds ({found})"


def _discard(entry: Path) -> None:
    """Move a damaged entry out of the way first (a rename is atomic), then delete it."""
    doomed = entry.with_name(f".build-{entry.name}-discarded-{os.getpid()}")
    os.replace(entry, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


class _Progress:
    """A progress bar over optimize's steps on a terminal; INFO lines per step elsewhere."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._done = 0
        self._total: int | None = None  # known once optimize says how many settings it checks

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), console=Console(stderr=True),
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task("optimising: exporting to ONNX", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def saw(self, line: str) -> None:
        """Advance on the lines that end a step (the export, each setting's check)."""
        checking = _CHECKING.search(line)
        if checking is not None:
            self._total = 1 + int(checking.group(1))
            if self._bar is not None:
                self._bar.update(self._task, total=self._total)
            return
        checked = _CHECKED.search(line)
        if " exported " in line and " in " in line:
            self._step("optimising: checking agreement", "exported to ONNX")
        elif checked is not None and "loaded model" not in line:
            self._step(f"optimising: checked {checked.group(1)}", f"checked {checked.group(1)}")

    def _step(self, description: str, done: str) -> None:
        self._done += 1
        if self._total is not None:
            self._done = min(self._done, self._total)
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done, description=description)
        else:
            logger.info("optimising: %s (%d/%s)", done, self._done, self._total or "?")


# -- small helpers ---------------------------------------------------------------------------


@contextmanager
def _locked(path: Path, source: str) -> Iterator[IO[str]]:
    """The entry's lock file, held shared (readers); :func:`_exclusive` upgrades it."""
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process optimising %s", source)
            fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _exclusive(lock: IO[str], source: str) -> None:
    # Let go of the shared lock first: two readers upgrading at once would otherwise wait on
    # each other. Another process may build in between, so the caller checks the entry again.
    fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logger.info("waiting for another process optimising or checking %s", source)
        fcntl.flock(lock, fcntl.LOCK_EX)


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub id in the Hugging Face cache, or None."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # no transformers install: nothing to export with either
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _versions() -> dict[str, str]:
    found = {}
    for name in EXPORT_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_digests(path: Path | None) -> dict[str, list[Any]]:
    if path is None:
        return {}
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_digests(path: Path, memo: dict[str, list[Any]]) -> None:
    kept = dict(list(memo.items())[-_DIGESTS_KEPT:])
    try:
        _write_json(path, kept)
    except OSError as exc:  # only a speed-up: the next run hashes again
        logger.debug("cannot remember checkpoint digests in %s: %s", path, exc)


def _write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(value, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
