"""A private PulseAudio server with a virtual microphone (recipe: ../shared/TESTING.md).

A null sink ``virt`` that the tests play into with ``paplay``; a silent null source looped
into it so the idle sink is clocked in small blocks, not 2-second ones; ``virtmic``, a source
remapped from ``virt.monitor``, as the default source. Everything lives in a private runtime
folder (mode 0700) with its own HOME and a client config that never autospawns a server, so
nothing touches the user's audio setup. Started and stopped by PID.

The loopback is pinned to its source and sink (``*_dont_move``): otherwise PulseAudio 16 moves
it to the new default source, ``virtmic``, when that is set, and everything played into
``virt`` circulates through ``virt.monitor -> virtmic -> virt`` for ever (seen: a 1 s tone
grew to full scale and never died out). The recipe in ../shared/TESTING.md lacks this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .procs import OutputProcess, require_binary, require_file, require_library, wait_until

__all__ = ["PulseServer", "play"]

SCRIPT = """\
load-module module-native-protocol-unix auth-anonymous=1 socket={socket}
load-module module-null-sink sink_name=virt rate=48000 channels=1
load-module module-null-source source_name=silence rate=48000 channels=1
load-module module-loopback source=silence sink=virt latency_msec=10 {pinned}
load-module module-remap-source master=virt.monitor source_name=virtmic
set-default-sink virt
set-default-source virtmic
"""


class PulseServer:
    """One private ``pulseaudio`` process; ``env`` is what its clients need (plus os.environ)."""

    def __init__(self, root: Path, *, timeout_s: float) -> None:
        self.pulseaudio = require_binary("pulseaudio", "pulseaudio")
        self.pactl = require_binary("pactl", "pulseaudio-utils")
        self.paplay = require_binary("paplay", "pulseaudio-utils")
        # sounddevice reaches PulseAudio through PortAudio's ALSA host API and ALSA's pulse plugin.
        require_library("portaudio", "libportaudio2")
        require_file("/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so", "libasound2-plugins")
        self.timeout_s = timeout_s
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # The socket path must fit in sun_path (108 bytes): a short folder of its own, not one
        # under pytest's deep tmp_path. mkdtemp makes it mode 0700.
        short = "/tmp" if os.path.isdir("/tmp") else None
        self.runtime = Path(tempfile.mkdtemp(prefix="em-pulse-", dir=short))
        self.home = root / "home"
        (self.runtime / "pulse").mkdir(mode=0o700, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket = self.runtime / "pulse" / "native"
        client_conf = root / "client.conf"
        client_conf.write_text("autospawn = no\n")
        script = root / "server.pa"
        script.write_text(
            SCRIPT.format(socket=self.socket, pinned="source_dont_move=true sink_dont_move=true")
        )
        self.script = script
        self.env: dict[str, str] = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.runtime),
            "HOME": str(self.home),
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_SINK": "virt",
            "PULSE_SOURCE": "virtmic",
            "PULSE_CLIENTCONFIG": str(client_conf),
        }
        self.process: OutputProcess | None = None

    def start(self) -> PulseServer:
        self.process = OutputProcess(
            [
                self.pulseaudio, "--daemonize=no", "-n", "-F", str(self.script),
                "--exit-idle-time=-1", "--realtime=no", "--high-priority=no",
                "--use-pid-file=no", "--resample-method=speex-float-5",
                "--log-target=stderr",
            ],
            env=self.env,
            log_path=self.root / "pulseaudio.log",
        )
        try:
            wait_until(self._ready, timeout_s=self.timeout_s, what="PulseAudio to accept clients")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.process.output()}") from None
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.proc.poll() is not None:
            raise AssertionError(f"pulseaudio exited early\n{self.process.output()}")
        if not self.socket.exists():
            return False
        probe = subprocess.run(
            [self.pactl, "list", "short", "sources"],
            env=self.env, capture_output=True, text=True, timeout=self.timeout_s,
        )
        return probe.returncode == 0 and "virtmic" in probe.stdout

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server: the device disappears under its clients."""
        assert self.process is not None
        self.process.kill()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its runtime folder."""
        if self.process is not None:
            self.process.stop()
        shutil.rmtree(self.runtime, ignore_errors=True)

    def source_outputs(self) -> list[str]:
        """Recording streams connected right now (one line each, from ``pactl``)."""
        probe = subprocess.run(
            [self.pactl, "list", "short", "source-outputs"],
            env=self.env, capture_output=True, text=True, timeout=self.timeout_s,
        )
        return [line for line in probe.stdout.splitlines() if line.strip()]

    def play(self, wav: Path) -> None:
        play(self, wav)

    def __enter__(self) -> PulseServer:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a server that started but never got ready is stopped too
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def play(server: PulseServer, wav: Path) -> None:
    """Play a wav file into the null sink in real time; returns when it has been played."""
    # paplay blocks until the sink has played the stream; bounded by the file length + slack.
    subprocess.run(
        [server.paplay, "--device=virt", str(wav)],
        env=server.env, check=True, capture_output=True, timeout=server.timeout_s * 4,
    )
