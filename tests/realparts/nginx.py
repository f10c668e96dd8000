"""nginx from Debian's packages in front of monitor nodes, with the shipped deploy files.

:class:`NginxProxy` writes a main ``nginx.conf`` of its own (paths, logs and temp folders in a
private folder, the stream module loaded) that includes ``deploy/nginx/emotion-monitor.conf``
and ``deploy/nginx/emotion-monitor-stream.conf`` with only their placeholders replaced: the
node addresses, the listening ports, the certificate and the Asterisk allow-list. So a test
runs the configuration a call centre would paste, not a copy of it.

nginx runs in the foreground (``daemon off``) as one process (``master_process off``): it is
started and stopped by PID like every other process here (SIGTERM: nginx's fast shutdown), no
worker is left behind, and the worker-user question of a root run (workers as ``nobody``,
unable to enter pytest's 0700 temp folders) does not arise. The shipped files are the same
for one process or many; their ``zone`` directives share state among workers when there are.

Runs in pytest's thread; nginx's error log goes to its stderr, collected by
:class:`~tests.realparts.procs.OutputProcess`.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

from .procs import OutputProcess, require_binary, require_file, wait_until

__all__ = [
    "AUDIOSOCKET_PORT",
    "DEPLOY_DIR",
    "HTTP_PORT",
    "NginxNode",
    "NginxProxy",
    "STREAM_MODULE",
    "http_site",
    "listening_ports",
    "main_config",
    "node_lines",
    "replace_once",
    "stream_site",
]

DEPLOY_DIR = REPO / "deploy" / "nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
_NGINX_CANDIDATES = ("/usr/sbin/nginx",)
#: the node ports the deploy files are written for (each node's --port, --audiosocket-port)
HTTP_PORT, AUDIOSOCKET_PORT = 8765, 9092
# a "server NODE<n>_ADDRESS:<port> <parameters>;" line of an upstream block
_NODE_LINE = re.compile(r"^(?P<indent>\s*)server NODE(?P<n>\d+)_ADDRESS:(?P<port>\d+)(?P<rest>.*)$")
_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
_START_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class NginxNode:
    """One monitor node as nginx reaches it: ``host:port`` of its HTTP and AudioSocket ports."""

    http: str
    audiosocket: str | None = None


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with the one occurrence of ``old`` replaced; AssertionError unless exactly one.

    The deploy files are documentation too: if an edit there moves a placeholder, the test
    says so instead of running nginx with the example value.
    """
    count = text.count(old)
    assert count == 1, f"expected {old!r} once in the deploy file, found it {count} times"
    return text.replace(old, new)


def node_lines(text: str, port: int, addresses: Sequence[str]) -> str:
    """The upstream lines for node port ``port`` rewritten for ``addresses`` (pure).

    The ``NODE1_ADDRESS`` line is the template: one copy per address, parameters kept; the
    other ``NODE<n>_ADDRESS`` lines of that port are dropped. So any number of nodes works.
    """
    out: list[str] = []
    templates = 0
    for line in text.splitlines(keepends=True):
        match = _NODE_LINE.match(line.rstrip("\n"))
        if match is None or int(match["port"]) != port:
            out.append(line)
            continue
        if match["n"] == "1":
            templates += 1
            rest = match["rest"].split("#")[0].rstrip()  # the line's comment names node 1
            out.extend(f"{match['indent']}server {address}{rest}\n" for address in addresses)
    assert templates, f"no 'server NODE1_ADDRESS:{port} ...' line in the deploy file"
    return "".join(out)


def http_site(text: str, nodes: Sequence[NginxNode], *, port: int, certificate: Path,
              key: Path) -> str:
    """``emotion-monitor.conf`` for these nodes, listening on 127.0.0.1:``port`` (pure)."""
    text = node_lines(text, HTTP_PORT, [node.http for node in nodes])
    text = replace_once(text, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    text = replace_once(text, "/etc/ssl/certs/monitor.example.com.pem", str(certificate))
    return replace_once(text, "/etc/ssl/private/monitor.example.com.key", str(key))


def stream_site(text: str, nodes: Sequence[NginxNode], *, port: int,
                peers: Sequence[str]) -> str:
    """``emotion-monitor-stream.conf`` for these nodes, on 127.0.0.1:``port`` (pure)."""
    addresses = [node.audiosocket for node in nodes if node.audiosocket is not None]
    text = node_lines(text, AUDIOSOCKET_PORT, addresses)
    text = replace_once(text, "listen 9092;", f"listen 127.0.0.1:{port};")
    allow = "\n    ".join(f"allow {peer};" for peer in peers)
    return replace_once(text, "allow ASTERISK_ADDRESS;", allow)


def main_config(prefix: Path, *, http_conf: Path, stream_conf: Path | None) -> str:
    """The test's own ``nginx.conf``: one foreground process, every path under ``prefix``."""
    temp = "\n".join(f"    {name}_temp_path {prefix / 'temp' / name};" for name in _TEMP_DIRS)
    load = f"load_module {STREAM_MODULE};\n" if stream_conf is not None else ""
    stream = f"stream {{\n    include {stream_conf};\n}}\n" if stream_conf is not None else ""
    return (
        "# written by tests/realparts/nginx.py for one test run\n"
        f"{load}"
        "daemon off;\n"
        "master_process off;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        "error_log stderr notice;\n"
        "events {\n    worker_connections 1024;\n}\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        f"{temp}\n"
        f"    include {http_conf};\n"
        "}\n"
        f"{stream}"
    )


def listening_ports() -> set[int]:
    """Ports in LISTEN state on 127.0.0.1 (from /proc/net/tcp: no connection is made, so a
    readiness check never reaches a node through the proxy)."""
    ports: set[int] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port = fields[1].split(":")
        if fields[3] == "0A" and address in ("0100007F", "00000000"):
            ports.add(int(port, 16))
    return ports


def _free_port() -> int:
    """A port free on 127.0.0.1 just now (nginx cannot listen on port 0 and report it: the
    start is retried with new ports if another process takes one in between)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NginxProxy:
    """nginx with the deploy files in front of ``nodes``; ``url``/``ws_url`` once started.

    ``certificate``/``key``: the TLS pair nginx serves (clients verify it with their CA).
    ``peers``: the addresses the AudioSocket listener lets in. A context manager: leaving it
    stops nginx (SIGTERM, then SIGKILL), also when the test failed.
    """

    def __init__(self, folder: Path, nodes: Sequence[NginxNode], *, certificate: Path,
                 key: Path, timeout_s: float, peers: Sequence[str] = ("127.0.0.1",)) -> None:
        self.nginx = require_binary("nginx", "nginx-light", candidates=_NGINX_CANDIDATES)
        self.stream = any(node.audiosocket is not None for node in nodes)
        if self.stream:
            require_file(STREAM_MODULE, "libnginx-mod-stream")
        self.folder = folder
        self.nodes = list(nodes)
        self.certificate, self.key = certificate, key
        self.peers = list(peers)
        self.timeout_s = timeout_s
        self.port = 0
        self.stream_port: int | None = None
        self.process: OutputProcess | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def ws_url(self, path: str) -> str:
        """``wss://127.0.0.1:PORT`` + ``path``: the public URL of a WebSocket endpoint."""
        return f"wss://127.0.0.1:{self.port}{path}"

    def _write(self, port: int, stream_port: int | None) -> Path:
        """Write the three files for these ports; the main config's path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in _TEMP_DIRS:
            (self.folder / "temp" / name).mkdir(parents=True, exist_ok=True)
        http_conf = self.folder / "emotion-monitor.conf"
        http_conf.write_text(http_site(
            (DEPLOY_DIR / "emotion-monitor.conf").read_text(), self.nodes, port=port,
            certificate=self.certificate, key=self.key))
        stream_conf = None
        if stream_port is not None:
            stream_conf = self.folder / "emotion-monitor-stream.conf"
            stream_conf.write_text(stream_site(
                (DEPLOY_DIR / "emotion-monitor-stream.conf").read_text(), self.nodes,
                port=stream_port, peers=self.peers))
        main = self.folder / "nginx.conf"
        main.write_text(main_config(self.folder, http_conf=http_conf, stream_conf=stream_conf))
        return main

    def _started(self, process: OutputProcess, ports: set[int]) -> bool:
        """Wait until nginx listens on ``ports`` (True) or has exited (False)."""
        wait_until(lambda: process.proc.poll() is not None or ports <= listening_ports(),
                   timeout_s=self.timeout_s, what=f"nginx listening on {sorted(ports)}")
        return process.proc.poll() is None

    def start(self) -> NginxProxy:
        """Start nginx and wait until it listens; AssertionError with its log if it cannot."""
        for _ in range(_START_ATTEMPTS):
            port = _free_port()
            stream_port = _free_port() if self.stream else None
            main = self._write(port, stream_port)
            process = OutputProcess(
                [self.nginx, "-e", "stderr", "-p", str(self.folder), "-c", str(main)],
                log_path=self.folder / "nginx.log")
            ports = {port} | ({stream_port} if stream_port is not None else set())
            if self._started(process, ports):
                self.process, self.port, self.stream_port = process, port, stream_port
                return self
            process.stop()
            if "Address already in use" not in process.output():
                break
        raise AssertionError(f"nginx did not start\n{process.output()}")

    def output(self) -> str:
        """nginx's error log so far."""
        return self.process.output() if self.process is not None else ""

    def wait_for_log(self, pattern: str) -> str:
        """The first error-log line matching ``pattern`` (waits for it: the log is read by a
        thread, so a line nginx just wrote may not be collected yet)."""
        assert self.process is not None, "nginx is not running"
        return self.process.wait_for(pattern, timeout_s=self.timeout_s, stream="stderr")[0]

    def stop(self) -> None:
        """Stop nginx (safe to call twice)."""
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> NginxProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
