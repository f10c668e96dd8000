"""Tests with real parts: PulseAudio for capture, Debian's Chromium for the dashboard, crashes.

Needs the Debian packages pulseaudio, pulseaudio-utils, libasound2-plugins, libportaudio2,
espeak-ng, chromium, nginx-light and libnginx-mod-stream, and Playwright from PyPI
(``bash .ci/install`` installs them; never ``playwright install``). Locally a missing one
skips the tests that need it, naming the package; with ``CI`` set in the environment it fails
them instead.

Every program under test runs as a subprocess (the monitor must import sounddevice after the
private audio server is up, and in its environment); fixtures start each process by PID and
stop it with SIGTERM, then SIGKILL after 5 s, also when a test fails. Run them alone with
``python -m pytest tests/realparts``; all waits scale with EMOTION_MONITOR_TEST_TIMEOUT_S.
"""
